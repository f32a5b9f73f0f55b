/*
 * supervisor.c — supervisor of a disaggregated deployment (supervisor.h).
 *
 * Process tree: the `xds serve` process (front-end + decode DP group 0 =
 * XCCL rank 0, and rank E+1 for prefill traffic when P > 0), E children
 * `xds worker --role expert` (ranks 1..E) and P children `xds worker --role
 * prefill` (ranks E+2..E+1+P), each exec'ed from /proc/self/exe with
 * PR_SET_PDEATHSIG so none outlives the supervisor. Start-up: segment (sized by xds_deploy_xccl_config) -> attach
 * rank 0 -> fork/exec workers -> wait until each has attached (a child that
 * exits first, SIGTERM/SIGINT pending, or a 120 s deadline abort the start)
 * -> READY handshake (xds_deploy_attn_create). While serving, a monitor thread
 * reaps children; an unexpected exit marks the deployment failed and raises
 * SIGTERM in the supervisor, whose shutdown path then stops the rest.
 *
 * Prefill/decode (P > 0): the HTTP server calls the router here instead of
 * the engine. A request goes to the prefill instance with the fewest
 * requests in flight (REQ); its transfer task comes back to rank E+1 (a
 * receiver thread polls the instances); the request then enters the engine
 * with xds_engine_submit_import, whose import callback pulls the prompt KV
 * (one-sided gets) when the engine has admitted it — i.e. when the decode
 * group has free blocks — and then sends FREE. Until then the blocks stay
 * on the prefill side (back-pressure).
 *
 * Decode DP groups (D > 1, decentralized scheduling): group 0 is this
 * process's engine, groups 1..D-1 are `xds worker --role decode` processes,
 * each with its own engine; every group publishes its load in a shared table
 * (deploy/dp.h) from which the front-end picks a group per request.
 *
 * With both --prefill and --decode-dp, the group is picked when the KV is
 * ready; a remote group imports it itself and reports FREED, which the
 * front-end forwards to the prefill instance.
 *
 * With --experts and --decode-dp D > 1, every decode group is an attention
 * rank of the same expert workers (group g > 0 attaches a second rank for
 * that traffic, after the groups' ranks): a worker serves the groups' streams
 * in arrival order (deploy/expert.h).
 *
 * Not yet supported (refused with a clear error): --frontends > 1.
 */
#define _GNU_SOURCE
#include "deploy/supervisor.h"

#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <xccl.h>

#include "deploy/expert.h"
#include "deploy/pd.h"
#include "deploy/dp.h"
#include "deploy/pd_pick.h"
#include "model/model.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void serve_deploy_init(serve_deploy *d) {
    memset(d, 0, sizeof *d);
    d->decode_dp = 1;
    d->frontends = 1;
    d->expert_threads = 1;
    d->prefill_threads = 1;
    d->micro_batches = 2;
    atomic_init(&d->stopping, 0);
    atomic_init(&d->failed, 0);
    atomic_init(&d->signalled, 0);
}

const char *serve_deploy_usage(void) {
    return "Disaggregated deployment (this process: supervisor, front-end, decode DP group):\n"
           "  --experts E          E expert-worker processes hold the routed experts (MoE models)\n"
           "  --decode-dp D        D decode DP groups (group 0 here, 1..D-1 as processes), picked per request\n"
           "                       from load figures in shared memory; with --experts they share the workers\n"
           "  --prefill P          P prefill-instance processes (KV pulled by the decode group)\n"
           "  --prefill-threads N  compute threads per prefill instance (default 1)\n"
           "  --frontends F        F front-end processes share the port (SO_REUSEPORT); each picks prefill\n"
           "                       instances and decode groups from the tables in shared memory\n"
           "  --expert-threads N   compute threads per expert worker (default 1)\n"
           "  --micro-batches M    1, or 2 (default): two halves of a decode batch ping-pong, one's attention\n"
           "                       overlapping the other's experts\n"
           "  --topology FILE      a JSON topology: per-process settings, explicit expert placement\n"
           "                       with replicas (docs/ARCHITECTURE.md); replaces the count flags\n";
}

int serve_deploy_opt(serve_deploy *d, const char *a, const char *v) {
    int *dst = NULL;
    long lo = 0, hi = 0;
    if (!strcmp(a, "--experts")) dst = &d->experts, lo = 1, hi = SERVE_DEPLOY_MAX_WORKERS;
    else if (!strcmp(a, "--decode-dp")) dst = &d->decode_dp, lo = 1, hi = 64;
    else if (!strcmp(a, "--prefill")) dst = &d->prefill, lo = 0, hi = SERVE_DEPLOY_MAX_PREFILL;
    else if (!strcmp(a, "--prefill-threads")) dst = &d->prefill_threads, lo = 1, hi = 1024;
    else if (!strcmp(a, "--frontends")) dst = &d->frontends, lo = 1, hi = 64;
    else if (!strcmp(a, "--expert-threads")) dst = &d->expert_threads, lo = 1, hi = 1024;
    else if (!strcmp(a, "--micro-batches")) dst = &d->micro_batches, lo = 1, hi = XDS_DEPLOY_MAX_MB;
    else if (!strcmp(a, "--frontend-of") || !strcmp(a, "--load-table") || !strcmp(a, "--group-ranks") ||
             !strcmp(a, "--prefill-ranks") || !strcmp(a, "--pick-table")) {
        if (!v) {
            fprintf(stderr, "xds serve: error: %s needs a value\n", a);
            return -1;
        }
        const char **dstp = a[2] == 'f' ? &d->fe_segment : a[2] == 'l' ? &d->fe_table : a[2] == 'g' ? &d->fe_granks
                            : a[3] == 'r' ? &d->fe_pranks : &d->fe_pick;
        *dstp = v;
        d->frontend_mode = 1;
        return 2;
    } else if (!strcmp(a, "--frontend-rank")) dst = &d->fe_self_rank, lo = 0, hi = XCCL_MAX_RANKS - 1;
    else if (!strcmp(a, "--topology")) {
        if (!v) {
            fprintf(stderr, "xds serve: error: --topology needs a value\n");
            return -1;
        }
        d->topology_file = v;
        d->enabled = 1;
        return 2;
    } else return 0;
    char *end = NULL;
    long x = v ? strtol(v, &end, 10) : 0;
    if (!v || !*v || *end || x < lo || x > hi) {
        fprintf(stderr, "xds serve: error: %s wants an integer in %ld..%ld, got '%s'\n", a, lo, hi, v ? v : "");
        return -1;
    }
    *dst = (int)x;
    if (dst != &d->expert_threads && dst != &d->prefill_threads && dst != &d->micro_batches && dst != &d->fe_self_rank)
        d->enabled = 1;
    return 2;
}

/* Reap worker i if it exited (block = 0) or wait for it (block = 1).
 * Returns 1 if it is (now) reaped. */
static int reap_one(serve_deploy *d, int i, int block) {
    if (d->pids[i] <= 0) return 1;
    int st = 0;
    pid_t r;
    do r = waitpid(d->pids[i], &st, block ? 0 : WNOHANG);
    while (r < 0 && errno == EINTR);
    if (r == d->pids[i] || (r < 0 && errno == ECHILD)) {
        d->status[i] = r == d->pids[i] ? st : -1;
        d->pids[i] = 0;
        return 1;
    }
    return 0;
}

static void describe_exit(char *buf, size_t cap, int st) {
    if (st == -1) snprintf(buf, cap, "is gone");
    else if (WIFEXITED(st)) snprintf(buf, cap, "exited with status %d", WEXITSTATUS(st));
    else if (WIFSIGNALED(st)) snprintf(buf, cap, "was killed by signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
    else snprintf(buf, cap, "ended (wait status %d)", st);
}

static const char *child_role(const serve_deploy *d, int i) {
    switch (d->kind_of[i]) {
    case 'e': return "expert worker";
    case 'p': return "prefill instance";
    case 'd': return "decode group";
    default: return "front-end";
    }
}

/* Rank that takes decode group g's requests: group g >= 1's process (after
 * the prefill instances); for group 0 the supervisor's service rank (only
 * front-ends other than the supervisor send there). */
static int grp_rank(const serve_deploy *d, int g) {
    return d->grank[g];
}

/* Requests go through the load table: several groups or several front-ends. */
static int dp_mode(const serve_deploy *d) {
    return d->decode_dp > 1 || d->frontends > 1 || d->frontend_mode;
}

/* Attention rank of decode group g (its traffic with the expert workers):
 * 0 for group 0, else a second rank of group g's process after all groups. */
static int grp_attn_rank(const serve_deploy *d, int g) {
    return g == 0 ? 0 : d->rpc_rank + d->prefill + d->decode_dp - 1 + g;
}

/* Expert worker r, prefill instance i, or decode group g of child i. */
static int child_number(const serve_deploy *d, int i) {
    int r = d->rank_of[i];
    switch (d->kind_of[i]) {
    case 'e': return r;
    case 'p': return r - d->rpc_rank - 1;
    case 'd': return r - d->rpc_rank - d->prefill;
    default:
        for (int k = 1; k < d->frontends; k++)
            if (d->fe_rank[k] == r) return k;
        return -1;
    }
}

static void *monitor_main(void *arg) {
    serve_deploy *d = arg;
    while (!atomic_load(&d->stopping)) {
        for (int i = 0; i < d->n_pids; i++) {
            pid_t pid = d->pids[i];
            if (pid <= 0 || !reap_one(d, i, 0) || atomic_load(&d->stopping)) continue;
            if (d->kind_of[i] == 'f' && atomic_load(&d->signalled) && WIFEXITED(d->status[i]) &&
                WEXITSTATUS(d->status[i]) == 0)
                continue; /* a front-end that drained after our signal */
            char how[96];
            describe_exit(how, sizeof how, d->status[i]);
            fprintf(stderr, "xds serve: error: %s %d (rank %d, pid %d) %s; stopping the deployment\n",
                    child_role(d, i), child_number(d, i), d->rank_of[i], (int)pid, how);
            if (!atomic_exchange(&d->failed, 1) && !atomic_load(&d->signalled)) kill(getpid(), SIGTERM);
        }
        usleep(50 * 1000);
    }
    return NULL;
}

/* ---- prefill/decode router ------------------------------------------------ */

typedef struct serve_pd_req {
    serve_deploy *d;
    uint64_t id;
    int32_t *prompt;
    int n;
    xds_gen_params params;
    char **stop;        /* owned copies of params.stop */
    xds_gen_cb cb;
    void *user;
    int pi;             /* prefill instance index */
    long long pick_work; /* its work as accounted in the pick table */
    int state;          /* 0: at prefill, 1: in the engine */
    int cancelled;      /* cancelled while at prefill (ABORT already delivered) */
    int freed;          /* FREE sent */
    uint64_t eng_id;
    xds_pd_task task;
    struct serve_pd_req *next;
} serve_pd_req;

static void pd_req_free(serve_pd_req *r) {
    if (!r) return;
    for (int i = 0; r->stop && i < r->params.n_stop; i++) free(r->stop[i]);
    free(r->stop);
    free(r->prompt);
    free(r);
}

static void pd_unlink(serve_deploy *d, serve_pd_req *r) { /* under rmu */
    for (serve_pd_req **pp = &d->reqs; *pp; pp = &(*pp)->next)
        if (*pp == r) {
            *pp = r->next;
            return;
        }
}

static void pd_final(serve_pd_req *r, xds_finish fin) {
    xds_gen_event ev = {.req_id = r->id, .text = "", .text_len = 0, .token = -1, .finish = fin, .n_prompt = r->n};
    r->cb(r->user, &ev);
}

static void pd_send_free(serve_pd_req *r) { /* tell the prefill instance (once) */
    serve_deploy *d = r->d;
    if (r->freed) return;
    r->freed = 1;
    pthread_mutex_lock(&d->cmu);
    if (xds_pd_task_free(d->rpc, &r->task) != XDS_OK) fprintf(stderr, "xds serve: %s\n", xds_err_msg());
    pthread_mutex_unlock(&d->cmu);
}

/* Engine thread: pull prompt positions [from, to) when the engine has placed
 * them, and the last prompt token's logits when the engine samples there. */
static int pd_import(void *user, struct xds_kv_cache *kv, int slot, int from, int to, float *logits) {
    serve_pd_req *r = user;
    serve_deploy *d = r->d;
    if (r->freed) return 0; /* already pulled and freed (a recompute after preemption): compute */
    if (to == r->task.n_prompt && !logits) to--; /* the engine computes the last token itself */
    if (to <= from) return 0;
    uint64_t bytes = 0;
    pthread_mutex_lock(&d->cmu);
    double t0 = now_s();
    xds_status s = xds_pd_pull_range(d->rpc, &r->task, kv, slot, from, to, &bytes);
    if (s == XDS_OK && to == r->task.n_prompt) s = xds_pd_get_logits(d->rpc, &r->task, logits);
    d->kv_pull_s += now_s() - t0;
    pthread_mutex_unlock(&d->cmu);
    if (s != XDS_OK) {
        fprintf(stderr, "xds serve: request %llu: KV pull failed (%s); computing the prompt here\n",
                (unsigned long long)r->id, xds_err_msg());
        pd_send_free(r);
        return 0;
    }
    d->kv_pulled_bytes += bytes;
    if (to >= r->task.n_prompt - 1) pd_send_free(r);
    return to - from;
}

/* The checks every front-end submit makes before taking a request. */
static xds_status deploy_check_request(const serve_deploy *d, const int32_t *prompt, int n, const xds_gen_params *p,
                                       xds_gen_cb cb) {
    if (!prompt || n <= 0) return xds_err_set(XDS_ERR_INVALID, "request: empty prompt");
    if (!p || !cb || p->max_tokens <= 0) return xds_err_set(XDS_ERR_INVALID, "request: bad parameters");
    if ((long)n + p->max_tokens > d->max_ctx)
        return xds_err_set(XDS_ERR_INVALID,
                           "request: prompt (%d tokens) + max_tokens (%d) exceeds the context of %d tokens", n,
                           p->max_tokens, d->max_ctx);
    return XDS_OK;
}

/* Engine thread: events of an imported request, renamed to the router's id. */
static void pd_on_event(void *user, const xds_gen_event *ev) {
    serve_pd_req *r = user;
    serve_deploy *d = r->d;
    xds_gen_event e2 = *ev;
    e2.req_id = r->id;
    r->cb(r->user, &e2);
    if (ev->finish == XDS_FINISH_NONE) return;
    if (!r->freed) pd_send_free(r); /* finished before its KV was pulled */
    if (d->table) xds_dp_account(d->table, 0, r->n + r->params.max_tokens, d->block_size, -1);
    pthread_mutex_lock(&d->rmu);
    pd_unlink(d, r);
    pthread_mutex_unlock(&d->rmu);
    pd_req_free(r);
}

static xds_status pd_submit(void *self, const int32_t *prompt, int n, const xds_gen_params *p, xds_gen_cb cb,
                            void *user, uint64_t *req_id) {
    serve_deploy *d = self;
    xds_status cs = deploy_check_request(d, prompt, n, p, cb);
    if (cs) return cs;
    if (n > (int)(sizeof(((xds_pd_task *)0)->blocks) / sizeof(int32_t)) * d->block_size)
        return xds_err_set(XDS_ERR_INVALID, "request: prompt of %d tokens is longer than a transfer task holds", n);
    for (int i = 0; i < n; i++)
        if (prompt[i] < 0 || prompt[i] >= d->n_vocab)
            return xds_err_set(XDS_ERR_INVALID, "request: prompt token %d: id %d outside the vocabulary [0, %d)", i,
                               prompt[i], d->n_vocab);
    serve_pd_req *r = calloc(1, sizeof *r);
    if (!r) return xds_err_set(XDS_ERR_NOMEM, "request: out of memory");
    r->d = d;
    r->n = n;
    r->params = *p;
    r->cb = cb;
    r->user = user;
    r->prompt = malloc(sizeof(int32_t) * (size_t)n);
    r->stop = p->n_stop > 0 ? calloc((size_t)p->n_stop, sizeof(char *)) : NULL;
    int oom = !r->prompt || (p->n_stop > 0 && !r->stop);
    for (int i = 0; !oom && i < p->n_stop; i++) oom = !(r->stop[i] = strdup(p->stop[i]));
    if (oom) {
        pd_req_free(r);
        return xds_err_set(XDS_ERR_NOMEM, "request: out of memory");
    }
    memcpy(r->prompt, prompt, sizeof(int32_t) * (size_t)n);
    r->params.stop = (const char *const *)r->stop;
    pthread_mutex_lock(&d->rmu);
    /* the prefill instance where this prompt's KV is expected first: its
     * uncached tokens plus the work queued there (deploy/pd_pick.h) */
    xds_pd_choice pc;
    int best = xds_pd_pick(d->pick, prompt, n, d->block_size, &pc);
    if (best < 0) {
        pthread_mutex_unlock(&d->rmu);
        pd_req_free(r);
        return xds_err_set(XDS_ERR_BUSY, "no prefill instance is alive");
    }
    r->pi = best;
    r->pick_work = pc.work;
    xds_pd_pick_account(d->pick, best, pc.work, +1);
    r->id = ++d->next_id;
    d->at_prefill[best]++;
    r->next = d->reqs;
    d->reqs = r;
    *req_id = r->id;
    pthread_mutex_lock(&d->cmu);
    xds_status s = xds_pd_request_send(d->rpc, d->prank[best], r->id, prompt, n);
    pthread_mutex_unlock(&d->cmu);
    if (s != XDS_OK) {
        d->at_prefill[best]--;
        xds_pd_pick_account(d->pick, best, r->pick_work, -1);
        pd_unlink(d, r);
        pthread_mutex_unlock(&d->rmu);
        pd_req_free(r);
        return xds_err_set(XDS_ERR_BUSY, "prefill instance %d: %s", best, xds_err_msg());
    }
    pthread_mutex_unlock(&d->rmu);
    return XDS_OK;
}

static void pd_cancel(void *self, uint64_t id) {
    serve_deploy *d = self;
    serve_pd_req *r = NULL;
    pthread_mutex_lock(&d->rmu);
    for (serve_pd_req *x = d->reqs; x; x = x->next)
        if (x->id == id) r = x;
    int abort_now = 0;
    if (r && r->state == 1) xds_engine_cancel(d->engine, r->eng_id);
    else if (r && !r->cancelled) r->cancelled = abort_now = 1;
    pthread_mutex_unlock(&d->rmu);
    if (abort_now) pd_final(r, XDS_FINISH_ABORT); /* the task is freed when it arrives */
}

static void pd_stats(void *self, xds_engine_stats *out) {
    serve_deploy *d = self;
    xds_engine_stats_get(d->engine, out);
    pthread_mutex_lock(&d->rmu);
    for (int i = 0; i < d->prefill; i++) out->n_waiting += d->at_prefill[i];
    pthread_mutex_unlock(&d->rmu);
}

static xds_finish forward_to_group(serve_deploy *d, serve_pd_req *r, const xds_pd_task *t);

/* A transfer task arrived: the request enters the engine (or is failed / freed). */
static void pd_task_arrived(serve_deploy *d, int pi, const xds_pd_task *t) {
    /* (fin: what to deliver if the request does not enter an engine) */
    pthread_mutex_lock(&d->rmu);
    serve_pd_req *r = NULL;
    for (serve_pd_req *x = d->reqs; x; x = x->next)
        if (x->id == t->req_id && x->state == 0) r = x;
    d->at_prefill[pi]--;
    if (r) xds_pd_pick_account(d->pick, pi, r->pick_work, -1);
    if (!r) {
        pthread_mutex_unlock(&d->rmu);
        fprintf(stderr, "xds serve: transfer task for unknown request %llu\n", (unsigned long long)t->req_id);
        return;
    }
    r->task = *t;
    xds_finish fin = XDS_FINISH_NONE;
    if (t->n_prompt == -1) {
        r->freed = 1;
        fin = r->cancelled ? XDS_FINISH_NONE : XDS_FINISH_ERROR;
    } else if (r->cancelled) {
        fin = XDS_FINISH_NONE;
    } else {
        /* several decode groups: pick one now that the KV is ready */
        fin = d->table ? forward_to_group(d, r, t) : XDS_FINISH_STOP;
        if (fin == XDS_FINISH_NONE) {
            pd_unlink(d, r); /* now a decode group's request */
            pthread_mutex_unlock(&d->rmu);
            pd_req_free(r);
            return;
        }
        if (fin == XDS_FINISH_STOP) { /* this process's engine takes it */
            fin = XDS_FINISH_NONE;
            r->state = 1;
            if (d->table) xds_dp_account(d->table, 0, r->n + r->params.max_tokens, d->block_size, +1);
            xds_status s = xds_engine_submit_import(d->engine, r->prompt, r->n, &r->params, pd_on_event, r, pd_import,
                                                    r, &r->eng_id);
            if (s == XDS_OK) {
                pthread_mutex_unlock(&d->rmu);
                return;
            }
            fprintf(stderr, "xds serve: request %llu: %s\n", (unsigned long long)r->id, xds_err_msg());
            r->state = 0;
            if (d->table) xds_dp_account(d->table, 0, r->n + r->params.max_tokens, d->block_size, -1);
            fin = XDS_FINISH_ERROR;
        }
    }
    pd_unlink(d, r);
    pthread_mutex_unlock(&d->rmu);
    if (t->n_prompt != -1) pd_send_free(r);
    if (fin != XDS_FINISH_NONE) pd_final(r, fin);
    pd_req_free(r);
}

/* One round over the prefill instances; 1 if a task arrived. */
static int poll_prefill(serve_deploy *d) {
    int got = 0;
    for (int i = 0; i < d->prefill; i++) {
            xds_pd_task t;
            pthread_mutex_lock(&d->cmu);
            xccl_comm_set_timeout(d->rpc, 1); /* a receive that times out consumes nothing */
            xds_status s = xds_pd_task_recv(d->rpc, d->prank[i], &t);
            xccl_comm_set_timeout(d->rpc, 10000);
            pthread_mutex_unlock(&d->cmu);
            if (s == XDS_OK) {
                got = 1;
                pd_task_arrived(d, i, &t);
            } else if (s != XDS_ERR_TIMEOUT && !atomic_load(&d->stopping)) {
                fprintf(stderr, "xds serve: prefill instance %d: %s\n", i, xds_err_msg());
                usleep(50 * 1000);
            }
    }
    return got;
}

static void *receiver_main(void *arg) {
    serve_deploy *d = arg;
    while (!atomic_load(&d->receiver_stop))
        if (!poll_prefill(d)) usleep(200);
    return NULL;
}

/* ---- decode DP groups (front-end side) --------------------------------------- */

typedef struct serve_dp_req {
    serve_deploy *d;
    uint64_t id, eng_id;
    int group, n_tokens;
    int pd_src; /* > 0: the prefill instance rank holding its prompt KV (FREED is forwarded there) */
    xds_gen_cb cb;
    void *user;
    struct serve_dp_req *next;
} serve_dp_req;

static void dp_unlink(serve_deploy *d, serve_dp_req *r) { /* under rmu */
    for (serve_dp_req **pp = &d->dreqs; *pp; pp = &(*pp)->next)
        if (*pp == r) {
            *pp = r->next;
            return;
        }
}

/* Under rmu: with several decode groups, the group for an imported request
 * is picked when its KV is ready. XDS_FINISH_NONE: sent to group g > 0 (the
 * caller drops r); XDS_FINISH_STOP: group 0 (this engine) takes it;
 * XDS_FINISH_ERROR: sending failed. */
static xds_finish forward_to_group(serve_deploy *d, serve_pd_req *r, const xds_pd_task *t) {
    int n_tokens = r->n + r->params.max_tokens;
    int g = xds_dp_pick(d->table, n_tokens, d->block_size);
    if (g < 0 && !d->engine) return XDS_FINISH_ERROR; /* a front-end with no group serving */
    if (g <= 0 && d->engine) return XDS_FINISH_STOP;  /* group 0 is this process's engine */
    serve_dp_req *q = calloc(1, sizeof *q);
    if (!q) return XDS_FINISH_ERROR;
    *q = (serve_dp_req){.d = d, .id = r->id, .group = g, .n_tokens = n_tokens, .pd_src = t->src_rank, .cb = r->cb,
                        .user = r->user, .next = d->dreqs};
    d->dreqs = q;
    pthread_mutex_lock(&d->cmu);
    xds_status s = xds_dp_req_send_import(d->rpc, grp_rank(d, g), r->id, r->prompt, r->n, &r->params, t);
    pthread_mutex_unlock(&d->cmu);
    if (s != XDS_OK) {
        fprintf(stderr, "xds serve: request %llu to decode group %d: %s\n", (unsigned long long)r->id, g, xds_err_msg());
        d->dreqs = q->next;
        free(q);
        return XDS_FINISH_ERROR;
    }
    return XDS_FINISH_NONE;
}

static void dp_local_event(void *user, const xds_gen_event *ev) { /* group 0: engine thread */
    serve_dp_req *r = user;
    serve_deploy *d = r->d;
    xds_gen_event e2 = *ev;
    e2.req_id = r->id;
    r->cb(r->user, &e2);
    if (ev->finish == XDS_FINISH_NONE) return;
    xds_dp_account(d->table, 0, r->n_tokens, d->block_size, -1);
    pthread_mutex_lock(&d->rmu);
    dp_unlink(d, r);
    pthread_mutex_unlock(&d->rmu);
    free(r);
}

static xds_status dp_submit(void *self, const int32_t *prompt, int n, const xds_gen_params *p, xds_gen_cb cb,
                            void *user, uint64_t *req_id) {
    serve_deploy *d = self;
    xds_status cs = deploy_check_request(d, prompt, n, p, cb);
    if (cs) return cs;
    serve_dp_req *r = calloc(1, sizeof *r);
    if (!r) return xds_err_set(XDS_ERR_NOMEM, "request: out of memory");
    r->d = d;
    r->cb = cb;
    r->user = user;
    r->n_tokens = n + p->max_tokens;
    int g = xds_dp_pick(d->table, r->n_tokens, d->block_size);
    if (g < 0) {
        free(r);
        return xds_err_set(XDS_ERR_BUSY, "no decode DP group is serving");
    }
    r->group = g;
    pthread_mutex_lock(&d->rmu);
    r->id = ++d->next_id;
    *req_id = r->id;
    xds_status s;
    if (g == 0 && d->engine) {
        xds_dp_account(d->table, 0, r->n_tokens, d->block_size, +1);
        r->next = d->dreqs; /* linked first: the final event may come at once */
        d->dreqs = r;
        s = xds_engine_submit(d->engine, prompt, n, p, dp_local_event, r, &r->eng_id);
        if (s != XDS_OK) {
            dp_unlink(d, r);
            xds_dp_account(d->table, 0, r->n_tokens, d->block_size, -1);
        }
    } else {
        r->next = d->dreqs;
        d->dreqs = r;
        pthread_mutex_lock(&d->cmu);
        s = xds_dp_req_send(d->rpc, grp_rank(d, g), r->id, prompt, n, p);
        pthread_mutex_unlock(&d->cmu);
        if (s != XDS_OK) dp_unlink(d, r);
    }
    pthread_mutex_unlock(&d->rmu);
    if (s != XDS_OK) free(r);
    return s;
}

static void dp_cancel(void *self, uint64_t id) {
    serve_deploy *d = self;
    pthread_mutex_lock(&d->rmu);
    for (serve_dp_req *r = d->dreqs; r; r = r->next)
        if (r->id == id) {
            if (r->group == 0 && d->engine) xds_engine_cancel(d->engine, r->eng_id);
            else {
                pthread_mutex_lock(&d->cmu);
                xds_dp_cancel_send(d->rpc, grp_rank(d, r->group), id);
                pthread_mutex_unlock(&d->cmu);
            }
            break;
        }
    pthread_mutex_unlock(&d->rmu);
}

static void pdp_cancel(void *self, uint64_t id) { /* at a prefill instance, or in a decode group */
    pd_cancel(self, id);
    dp_cancel(self, id);
}

static void dp_stats(void *self, xds_engine_stats *out) {
    serve_deploy *d = self;
    if (d->engine) xds_engine_stats_get(d->engine, out);
    else memset(out, 0, sizeof *out);
    pthread_mutex_lock(&d->rmu);
    for (int i = 0; i < d->prefill; i++) out->n_waiting += d->at_prefill[i];
    pthread_mutex_unlock(&d->rmu);
    for (int g = d->engine ? 1 : 0; g < d->decode_dp; g++) {
        out->n_running += (int)atomic_load(&d->table->g[g].in_flight);
        out->kv_blocks_total += (int)atomic_load(&d->table->g[g].kv_blocks);
    }
}

static int poll_prefill(serve_deploy *d);

static void *dp_receiver_main(void *arg) {
    serve_deploy *d = arg;
    char *buf = malloc(XDS_DP_EVENT_MAX);
    while (buf && !atomic_load(&d->receiver_stop)) {
        int got = d->prefill > 0 ? poll_prefill(d) : 0;
        for (int g = d->engine ? 1 : 0; g < d->decode_dp; g++) {
            xds_gen_event ev;
            int freed = 0;
            pthread_mutex_lock(&d->cmu);
            xccl_comm_set_timeout(d->rpc, 1); /* a receive that times out consumes nothing */
            xds_status s = xds_dp_event_recv(d->rpc, grp_rank(d, g), buf, XDS_DP_EVENT_MAX, &ev, &freed);
            xccl_comm_set_timeout(d->rpc, 10000);
            pthread_mutex_unlock(&d->cmu);
            if (s == XDS_ERR_TIMEOUT) continue;
            if (s != XDS_OK) {
                if (!atomic_load(&d->stopping)) fprintf(stderr, "xds serve: decode group %d: %s\n", g, xds_err_msg());
                usleep(50 * 1000);
                continue;
            }
            got = 1;
            serve_dp_req *r = NULL;
            pthread_mutex_lock(&d->rmu);
            for (serve_dp_req *x = d->dreqs; x; x = x->next)
                if (x->id == ev.req_id && x->group == g) r = x;
            if (freed) { /* group g pulled the KV: the prefill instance may free it */
                int src = r ? r->pd_src : 0;
                pthread_mutex_unlock(&d->rmu);
                if (src > 0) {
                    xds_pd_task t = {.req_id = ev.req_id, .src_rank = src};
                    pthread_mutex_lock(&d->cmu);
                    if (xds_pd_task_free(d->rpc, &t) != XDS_OK) fprintf(stderr, "xds serve: %s\n", xds_err_msg());
                    pthread_mutex_unlock(&d->cmu);
                }
                continue;
            }
            if (r && ev.finish != XDS_FINISH_NONE) dp_unlink(d, r);
            pthread_mutex_unlock(&d->rmu);
            if (!r) continue;
            r->cb(r->user, &ev);
            if (ev.finish != XDS_FINISH_NONE) free(r);
        }
        if (!got) usleep(200);
    }
    free(buf);
    return NULL;
}

/* A front-end's request path (front-end k >= 1, or group 0's own server when
 * several groups exist): the locks, the engine ops and the thread that
 * receives the decode groups' events. */
static xds_status serve_front_ops(serve_deploy *d, const xds_server_engine_ops **ops) {
    pthread_mutex_init(&d->cmu, NULL);
    pthread_mutex_init(&d->rmu, NULL);
    d->mutexes = 1;
    d->ops = d->prefill > 0 ? (xds_server_engine_ops){d, pd_submit, pdp_cancel, dp_stats}
                            : (xds_server_engine_ops){d, dp_submit, dp_cancel, dp_stats};
    if (pthread_create(&d->receiver, NULL, dp_receiver_main, d) != 0)
        return xds_err_set(XDS_ERR_INTERNAL, "cannot start the decode-group receiver thread");
    d->receiver_started = 1;
    *ops = &d->ops;
    return XDS_OK;
}

/* Group 0 (this process's engine) for the other front-ends: their requests
 * arrive at rank g0_rank; the supervisor's front-end calls the engine itself. */
static void *g0_service_main(void *arg) {
    serve_deploy *d = arg;
    int fronts[SERVE_DEPLOY_MAX_FRONTENDS];
    fronts[0] = d->rpc_rank; /* sends only STOP */
    for (int k = 1; k < d->frontends; k++) fronts[k] = d->fe_rank[k];
    xds_dp_serve_stats ds = {0};
    xds_status s = xds_dp_group_serve(d->engine, d->g0comm, fronts, d->frontends, d->table, 0, d->block_size,
                                      d->max_batch, 0, &ds);
    fprintf(stderr, "xds serve: group 0 service: %llu requests from the other front-ends; KV pulled: %llu bytes in "
                    "%.3f s\n", (unsigned long long)ds.requests, (unsigned long long)ds.kv_pulled_bytes, ds.kv_pull_s);
    if (s != XDS_OK && !atomic_load(&d->stopping))
        fprintf(stderr, "xds serve: group 0 service for the front-ends: %s\n", xds_err_msg());
    atomic_store(&d->table->g[0].alive, 1); /* still serves the supervisor's front-end */
    return NULL;
}

/* Front-ends k >= 1 finish their requests and exit (they got SIGTERM with
 * the supervisor's signal, or now), then group 0's service thread stops. */
static void stop_frontends(serve_deploy *d, double deadline_s) {
    if (!atomic_load(&d->signalled)) /* else serve_deploy_signalled sent it (a second one quits at once) */
        for (int i = 0; i < d->n_pids; i++)
            if (d->kind_of[i] == 'f' && d->pids[i] > 0) kill(d->pids[i], SIGTERM);
    double end = now_s() + deadline_s;
    for (int i = 0; i < d->n_pids; i++) {
        if (d->kind_of[i] != 'f') continue;
        while (d->pids[i] > 0 && now_s() < end) {
            if (!d->monitor_started) reap_one(d, i, 0);
            usleep(10 * 1000);
        }
        if (d->pids[i] > 0 && !d->monitor_started) {
            kill(d->pids[i], SIGKILL);
            reap_one(d, i, 1);
        }
    }
    if (d->g0_started) {
        pthread_mutex_lock(&d->cmu);
        if (xds_dp_stop_send(d->rpc, d->g0_rank) != XDS_OK)
            fprintf(stderr, "xds serve: stop the group-0 service: %s\n", xds_err_msg());
        pthread_mutex_unlock(&d->cmu);
        pthread_join(d->g0thread, NULL);
        d->g0_started = 0;
    }
}

/* ---- start / stop ----------------------------------------------------------- */

static void stop_workers(serve_deploy *d, double deadline_s) {
    atomic_store(&d->stopping, 1);
    if (d->monitor_started) {
        pthread_join(d->monitor, NULL);
        d->monitor_started = 0;
    }
    serve_deploy_quiesce(d);
    if (d->attn) xds_deploy_attn_stop(d->attn);
    if (d->rpc && d->started)
        for (int i = 0; i < d->prefill; i++) xds_pd_stop_send(d->rpc, d->prank[i]);
    if (d->rpc && d->started)
        for (int g = 1; g < d->decode_dp; g++) xds_dp_stop_send(d->rpc, grp_rank(d, g));
    if (!d->started) /* start-up failed: nobody waits for the workers' results */
        for (int i = 0; i < d->n_pids; i++)
            if (d->pids[i] > 0) kill(d->pids[i], SIGTERM);
    /* the attention side's buffers are registered with rank 0's comm */
    xds_deploy_attn_free(d->attn);
    d->attn = NULL;
    /* detaching makes any worker still in an XCCL wait on us fail at once */
    if (d->comm) {
        xccl_comm_detach(d->comm);
        d->comm = NULL;
    }
    if (d->rpc) {
        xccl_comm_detach(d->rpc);
        d->rpc = NULL;
    }
    if (d->g0comm) {
        xccl_comm_detach(d->g0comm);
        d->g0comm = NULL;
    }
    double end = now_s() + deadline_s;
    for (int i = 0; i < d->n_pids; i++) {
        while (!reap_one(d, i, 0)) {
            if (now_s() > end) {
                fprintf(stderr, "xds serve: %s at rank %d (pid %d) did not stop; killing it\n", child_role(d, i),
                        d->rank_of[i], (int)d->pids[i]);
                kill(d->pids[i], SIGKILL);
                reap_one(d, i, 1);
                break;
            }
            usleep(5000);
        }
    }
}

/* For the quit-at-once handler only (a signal handler has no argument):
 * paths and pids copied when the first signal arrives. */
static char quit_paths[4][96];
static pid_t quit_pids[SERVE_DEPLOY_MAX_WORKERS];
static volatile sig_atomic_t quit_n;

static void quit_now(int sig) {
    (void)sig;
    for (int i = 0; i < 4; i++)
        if (quit_paths[i][0]) unlink(quit_paths[i]);
    for (int i = 0; i < quit_n; i++)
        if (quit_pids[i] > 0) kill(quit_pids[i], SIGKILL);
    _exit(130);
}

void serve_deploy_signalled(serve_deploy *d) {
    atomic_store(&d->signalled, 1);
    if (!d->seg) return;
    for (int i = 0; i < d->n_pids; i++) /* the other front-ends drain alongside this one */
        if (d->kind_of[i] == 'f' && d->pids[i] > 0) kill(d->pids[i], SIGTERM);
    snprintf(quit_paths[0], sizeof quit_paths[0], "/dev/shm%s", d->seg_name);
    if (d->table_name[0]) snprintf(quit_paths[1], sizeof quit_paths[1], "/dev/shm%s", d->table_name);
    if (d->pick_name[0]) snprintf(quit_paths[2], sizeof quit_paths[2], "/dev/shm%s", d->pick_name);
    if (d->frontends > 1) snprintf(quit_paths[3], sizeof quit_paths[3], "/dev/shm%s.topology", d->seg_name);
    for (int i = 0; i < d->n_pids; i++) quit_pids[i] = d->pids[i];
    quit_n = d->n_pids;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = quit_now;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

xds_status serve_deploy_frontend(serve_deploy *d, const xds_model *m, int max_ctx, int block_size,
                                 const xds_server_engine_ops **ops) {
    int n = 0;
    const char *c = d->fe_granks;
    while (c && *c && n < XDS_DP_MAX_GROUPS) {
        char *end = NULL;
        long r = strtol(c, &end, 10);
        if (end == c || r < 0 || r >= XCCL_MAX_RANKS || (*end && *end != ',')) break;
        d->grank[n++] = (int)r;
        c = *end ? end + 1 : end;
    }
    if (!d->fe_segment || !d->fe_table || n < 1 || (c && *c))
        return xds_err_set(XDS_ERR_INVALID, "front-end mode needs --frontend-of SEG, --frontend-rank R, "
                                            "--load-table T and --group-ranks G0,G1,..");
    prctl(PR_SET_PDEATHSIG, SIGTERM); /* the supervisor gone: drain and exit */
    if (getppid() == 1) return xds_err_set(XDS_ERR_PEER, "the supervisor is gone");
    d->decode_dp = n;
    d->prefill = 0;
    for (c = d->fe_pranks; c && *c && d->prefill < SERVE_DEPLOY_MAX_PREFILL;) {
        char *end = NULL;
        long r = strtol(c, &end, 10);
        if (end == c || r < 0 || r >= XCCL_MAX_RANKS || (*end && *end != ',')) break;
        d->prank[d->prefill++] = (int)r;
        c = *end ? end + 1 : end;
    }
    if ((c && *c) || (d->prefill > 0) != (d->fe_pick != NULL))
        return xds_err_set(XDS_ERR_INVALID, "front-end mode: bad --prefill-ranks / --pick-table");
    if (d->prefill > 0) XDS_TRY(xds_pd_pick_table_open(d->fe_pick, &d->pick));
    d->next_id = (uint64_t)d->fe_self_rank << 48; /* request ids unique across the front-ends */
    d->engine = NULL;
    d->max_ctx = max_ctx;
    d->block_size = block_size;
    d->n_vocab = m->cfg.n_vocab;
    XDS_TRY(xds_dp_table_open(d->fe_table, &d->table));
    if (xccl_comm_attach(&d->rpc, d->fe_segment, d->fe_self_rank, 7) != XCCL_OK)
        return xds_err_set(XDS_ERR_IO, "attach to %s as rank %d: %s", d->fe_segment, d->fe_self_rank,
                           xccl_err_msg());
    /* GET /v1/topology: the supervisor writes it once every process is up */
    char path[96];
    snprintf(path, sizeof path, "/dev/shm%s.topology", d->fe_segment);
    for (int i = 0; i < 120 * 50; i++) {
        FILE *f = fopen(path, "r");
        if (f) {
            char *buf = malloc(1 << 20);
            size_t len = buf ? fread(buf, 1, (1 << 20) - 1, f) : 0;
            fclose(f);
            if (buf) buf[len] = 0;
            d->topology_json = buf;
            break;
        }
        if (getppid() == 1) return xds_err_set(XDS_ERR_PEER, "the supervisor is gone");
        usleep(20 * 1000);
    }
    if (!d->topology_json) return xds_err_set(XDS_ERR_TIMEOUT, "no topology from the supervisor within 120 s");
    return serve_front_ops(d, ops);
}

void serve_deploy_quiesce(serve_deploy *d) {
    if (d->frontends > 1 && !d->frontend_mode) stop_frontends(d, 90.0);
    if (d->receiver_started) {
        atomic_store(&d->receiver_stop, 1);
        pthread_join(d->receiver, NULL);
        d->receiver_started = 0;
    }
}

static xds_status spawn(serve_deploy *d, char *const *args, int rank, char kind) {
    pid_t pid = fork();
    if (pid < 0) return xds_err_set(XDS_ERR_IO, "fork for rank %d: %s", rank, strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        setpgid(0, 0); /* a terminal's Ctrl-C reaches the supervisor only; it stops the workers in order */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL); /* serve blocks SIGTERM/SIGINT for sigwait */
        const char *exe = getenv("XDS_WORKER_EXE"); /* tests: a worker that fails to start */
        execv(exe && *exe ? exe : "/proc/self/exe", args);
        fprintf(stderr, "xds serve: error: exec worker: %s\n", strerror(errno));
        _exit(127);
    }
    d->rank_of[d->n_pids] = rank;
    d->kind_of[d->n_pids] = kind;
    d->pids[d->n_pids++] = pid;
    return XDS_OK;
}

/* Front-end k >= 1: this serve command again (its HTTP and model options),
 * without the deployment flags, in front-end mode. */
static xds_status spawn_frontend(serve_deploy *d, int k) {
    static const char *const skip[] = {"--experts", "--decode-dp", "--prefill", "--prefill-threads", "--frontends",
                                       "--expert-threads", "--micro-batches", "--topology", "-t", "--threads", NULL};
    char **args = calloc((size_t)d->argc + 16, sizeof(char *));
    if (!args) return xds_err_set(XDS_ERR_NOMEM, "out of memory");
    int n = 0;
    args[n++] = "xds";
    args[n++] = "serve";
    for (int i = 1; i < d->argc; i++) {
        int drop = 0;
        for (int j = 0; skip[j]; j++) drop |= !strcmp(d->argv[i], skip[j]);
        if (drop) {
            i++; /* and its value */
            continue;
        }
        args[n++] = d->argv[i];
    }
    char rk[16], gl[16 * XDS_DP_MAX_GROUPS] = "";
    snprintf(rk, sizeof rk, "%d", d->fe_rank[k]);
    for (int g = 0; g < d->decode_dp; g++)
        snprintf(gl + strlen(gl), sizeof gl - strlen(gl), g ? ",%d" : "%d", g == 0 ? d->g0_rank : d->grank[g]);
    args[n++] = "--frontend-of", args[n++] = d->seg_name;
    args[n++] = "--frontend-rank", args[n++] = rk;
    args[n++] = "--load-table", args[n++] = d->table_name;
    args[n++] = "--group-ranks", args[n++] = gl;
    char pl[16 * SERVE_DEPLOY_MAX_PREFILL] = "";
    for (int i = 0; i < d->prefill; i++) snprintf(pl + strlen(pl), sizeof pl - strlen(pl), i ? ",%d" : "%d", d->prank[i]);
    if (d->prefill > 0) args[n++] = "--prefill-ranks", args[n++] = pl, args[n++] = "--pick-table", args[n++] = d->pick_name;
    args[n] = NULL;
    xds_status s = spawn(d, args, d->fe_rank[k], 'f');
    free(args);
    return s;
}

/* v if set (> 0) else the default. */
static int or_default(int v, int dflt) {
    return v > 0 ? v : dflt;
}

/* --topology FILE: the counts, the placement and group 0's settings (eo);
 * the other processes' settings are read from d->topo when they start. */
static xds_status apply_topology(serve_deploy *d, const xds_model *m, xds_engine_opts *eo) {
    int n_expert = m->cfg.moe.n_expert > 0 ? m->cfg.moe.n_expert : 0;
    XDS_TRY(xds_topology_load(d->topology_file, n_expert, &d->topo));
    d->have_topo = 1;
    d->frontends = d->topo.frontends;
    d->prefill = d->topo.n_prefill;
    d->decode_dp = d->topo.n_decode;
    d->experts = d->topo.n_expert_workers;
    if (d->experts > SERVE_DEPLOY_MAX_WORKERS || d->prefill > SERVE_DEPLOY_MAX_PREFILL)
        return xds_err_set(XDS_ERR_INVALID, "%s: too many processes", d->topology_file);
    eo->kv_block_size = or_default(d->topo.block_size, eo->kv_block_size);
    eo->n_threads = or_default(d->topo.decode[0].threads, eo->n_threads);
    eo->max_batch = or_default(d->topo.decode[0].max_batch, eo->max_batch);
    eo->kv_blocks = or_default(d->topo.decode[0].kv_blocks, eo->kv_blocks);
    if (d->experts > 0) {
        const int *lists[XDS_TOPO_MAX_EXPERT_WORKERS];
        int n_lists[XDS_TOPO_MAX_EXPERT_WORKERS];
        int w = xds_topology_expert_lists(&d->topo, lists, n_lists);
        xds_status s = xds_deploy_placement_lists(n_expert, w, lists, n_lists, &d->placement);
        if (s != XDS_OK) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", xds_err_msg());
            return xds_err_set(s, "%s: %s", d->topology_file, msg);
        }
    }
    return XDS_OK;
}

/* Wait until child `child` (a prefill instance or decode group) marks itself
 * live in shared memory; an error if it exits first or `end` passes. */
static xds_status wait_live(serve_deploy *d, atomic_llong *alive, int child, const char *what, int idx, double end) {
    while (!atomic_load(alive)) {
        if (reap_one(d, child, 0)) {
            char how[96];
            describe_exit(how, sizeof how, d->status[child]);
            return xds_err_set(XDS_ERR_PEER, "%s %d %s before it became ready", what, idx, how);
        }
        if (now_s() > end) return xds_err_set(XDS_ERR_TIMEOUT, "%s %d did not start serving within 120 s", what, idx);
        usleep(5000);
    }
    return XDS_OK;
}

xds_status serve_deploy_start(serve_deploy *d, xds_model *m, const char *model_path, xds_engine_opts *eo) {
    if (d->topology_file) XDS_TRY(apply_topology(d, m, eo));
    if (d->decode_dp > XDS_DP_MAX_GROUPS)
        return xds_err_set(XDS_ERR_INVALID, "--decode-dp %d: at most %d groups", d->decode_dp, XDS_DP_MAX_GROUPS);
    if (d->frontends > SERVE_DEPLOY_MAX_FRONTENDS)
        return xds_err_set(XDS_ERR_INVALID, "--frontends %d: at most %d", d->frontends, SERVE_DEPLOY_MAX_FRONTENDS);
    if (d->frontends > 1 && d->port <= 0)
        return xds_err_set(XDS_ERR_INVALID, "--frontends %d needs a fixed --port (the front-ends share it)",
                           d->frontends);
    if (d->experts < 1 && d->prefill < 1 && d->decode_dp < 2 && d->frontends < 2)
        return xds_err_set(XDS_ERR_INVALID, "a disaggregated deployment needs --experts E (E >= 1), --prefill P "
                                            "(P >= 1), --decode-dp D (D >= 2) or --frontends F (F >= 2)");
    int n_expert = m->cfg.moe.n_expert;
    if (d->experts > 0 && n_expert > 0 && d->experts > n_expert)
        return xds_err_set(XDS_ERR_INVALID, "--experts %d: the model has only %d routed experts per layer", d->experts,
                           n_expert);
    d->n_expert = n_expert;
    int max_tok = eo->max_step_tokens > eo->max_batch ? eo->max_step_tokens : eo->max_batch;
    for (int g = 1; d->have_topo && g < d->decode_dp; g++)
        if (d->topo.decode[g].max_batch > max_tok) max_tok = d->topo.decode[g].max_batch;
    if (d->experts > 0) {
        if (n_expert <= 0)
            return xds_err_set(XDS_ERR_INVALID, "--experts %d: the model (%s) has no MoE layers to place on expert "
                                                "workers", d->experts, xds_arch_name(m->cfg.arch));
        if (!d->placement.n_workers) XDS_TRY(xds_deploy_placement_blocks(n_expert, d->experts, &d->placement));
        free(d->placement_text);
        if (!(d->placement_text = xds_deploy_placement_format(&d->placement)))
            return xds_err_set(XDS_ERR_NOMEM, "out of memory (placement)");
    }
    d->rpc_rank = d->experts + 1;
    int n_ranks = d->experts + 1 + (d->prefill > 0 || dp_mode(d) ? 1 + d->prefill : 0) +
                  (d->decode_dp > 1 ? d->decode_dp - 1 : 0) + (d->decode_dp > 1 && d->experts > 0 ? d->decode_dp - 1 : 0);
    d->grank[0] = -1;
    for (int g = 1; g < d->decode_dp; g++) d->grank[g] = d->rpc_rank + d->prefill + g;
    for (int i = 0; i < d->prefill; i++) d->prank[i] = d->rpc_rank + 1 + i;
    if (d->frontends > 1) { /* group 0's service rank, then the front-ends */
        d->g0_rank = n_ranks;
        for (int k = 1; k < d->frontends; k++) d->fe_rank[k] = n_ranks + k;
        n_ranks += d->frontends;
    }
    if (n_ranks > XCCL_MAX_RANKS)
        return xds_err_set(XDS_ERR_INVALID, "the deployment needs %d XCCL ranks, at most %d fit a segment", n_ranks,
                           XCCL_MAX_RANKS);
    xccl_config cfg;
    xds_deploy_xccl_config(n_ranks, &cfg);
    d->seg_bytes = (unsigned long long)xccl_config_segment_bytes(&cfg);
    snprintf(d->seg_name, sizeof d->seg_name, "/xds-serve-%d", (int)getpid());
    if (xccl_segment_create(&d->seg, d->seg_name, &cfg) != XCCL_OK)
        return xds_err_set(XDS_ERR_IO, "XCCL segment %s (%llu bytes): %s", d->seg_name, d->seg_bytes, xccl_err_msg());
    xds_status s = XDS_OK;
    if (xccl_comm_attach(&d->comm, d->seg_name, 0, 1) != XCCL_OK) {
        s = xds_err_set(XDS_ERR_IO, "attach to %s as rank 0: %s", d->seg_name, xccl_err_msg());
        goto fail;
    }
    if (dp_mode(d)) {
        snprintf(d->table_name, sizeof d->table_name, "/xds-load-%d", (int)getpid());
        shm_unlink(d->table_name);
        if ((s = xds_dp_table_create(d->table_name, d->decode_dp, &d->table)) != XDS_OK) goto fail;
    }
    if (d->prefill > 0) {
        snprintf(d->pick_name, sizeof d->pick_name, "/xds-pick-%d", (int)getpid());
        shm_unlink(d->pick_name);
        if ((s = xds_pd_pick_table_create(d->pick_name, d->prefill, &d->pick)) != XDS_OK) goto fail;
    }
    if (d->frontends > 1 && xccl_comm_attach(&d->g0comm, d->seg_name, d->g0_rank, 5) != XCCL_OK) {
        s = xds_err_set(XDS_ERR_IO, "attach to %s as rank %d: %s", d->seg_name, d->g0_rank, xccl_err_msg());
        goto fail;
    }
    if ((d->prefill > 0 || dp_mode(d)) && xccl_comm_attach(&d->rpc, d->seg_name, d->rpc_rank, 4) != XCCL_OK) {
        s = xds_err_set(XDS_ERR_IO, "attach to %s as rank %d: %s", d->seg_name, d->rpc_rank, xccl_err_msg());
        goto fail;
    }
    char wstr[16], tstr[16], rstr[16], fstr[16], bstr[16], pstr[16], cstr[16], ptstr[16], mtok[16], nmb[16];
    char aranks[16 * XDS_DEPLOY_MAX_ATTN] = "", wranks[8 * (SERVE_DEPLOY_MAX_WORKERS + 1)] = "";
    snprintf(tstr, sizeof tstr, "%d", d->expert_threads);
    snprintf(ptstr, sizeof ptstr, "%d", d->prefill_threads);
    snprintf(fstr, sizeof fstr, "%d", d->rpc_rank);
    snprintf(bstr, sizeof bstr, "%d", eo->kv_block_size);
    snprintf(pstr, sizeof pstr, "%d", eo->max_ctx > 0 ? 4 * eo->max_ctx : 16384);
    snprintf(cstr, sizeof cstr, "%d", eo->max_step_tokens);
    snprintf(mtok, sizeof mtok, "%d", max_tok);
    snprintf(nmb, sizeof nmb, "%d", d->micro_batches);
    for (int g = 0; g < d->decode_dp; g++)
        snprintf(aranks + strlen(aranks), sizeof aranks - strlen(aranks), g ? ",%d" : "%d", grp_attn_rank(d, g));
    for (int w = 0; w < d->experts; w++)
        snprintf(wranks + strlen(wranks), sizeof wranks - strlen(wranks), w ? ",%d" : "%d", 1 + w);
    fflush(NULL);
    for (int r = 1; r <= d->experts && s == XDS_OK; r++) {
        snprintf(rstr, sizeof rstr, "%d", r);
        snprintf(wstr, sizeof wstr, "%d", r - 1);
        snprintf(tstr, sizeof tstr, "%d",
                 or_default(d->have_topo ? d->topo.expert[r - 1].threads : 0, d->expert_threads));
        char *args[] = {"xds", "worker", "--role", "expert", "--segment", d->seg_name, "--rank", rstr,
                        "--worker", wstr, "--placement", d->placement_text, "--attn-ranks", aranks,
                        "--max-tok", mtok, "-t", tstr, "-m", (char *)model_path, NULL};
        s = spawn(d, args, r, 'e');
    }
    char frl[16 * SERVE_DEPLOY_MAX_FRONTENDS]; /* a group's / instance's front-ends: the supervisor's first */
    snprintf(frl, sizeof frl, "%d", d->rpc_rank);
    for (int k = 1; k < d->frontends; k++) snprintf(frl + strlen(frl), sizeof frl - strlen(frl), ",%d", d->fe_rank[k]);
    for (int i = 0; i < d->prefill && s == XDS_OK; i++) {
        char sqs[16], pcs[16], pps[16], pts[16];
        const xds_topo_prefill *tp = d->have_topo ? &d->topo.prefill[i] : NULL;
        snprintf(rstr, sizeof rstr, "%d", d->rpc_rank + 1 + i);
        snprintf(pts, sizeof pts, "%d", or_default(tp ? tp->threads : 0, d->prefill_threads));
        snprintf(pps, sizeof pps, "%d", or_default(tp ? tp->kv_tokens : 0, atoi(pstr)));
        snprintf(sqs, sizeof sqs, "%d", or_default(tp ? tp->max_seqs : 0, 16));
        snprintf(pcs, sizeof pcs, "%d", or_default(tp ? tp->chunk : 0, eo->max_step_tokens));
        char inst[16];
        snprintf(inst, sizeof inst, "%d", i);
        char *args[] = {"xds", "worker", "--role", "prefill", "--segment", d->seg_name, "--rank", rstr,
                        "--front", frl, "-t", pts, "--block-size", bstr, "--pool-tokens", pps,
                        "--max-seqs", sqs, "--chunk", pcs, "--pick-table", d->pick_name, "--instance", inst,
                        "-m", (char *)model_path, NULL};
        s = spawn(d, args, d->rpc_rank + 1 + i, 'p');
    }
    char mbs[16], mst[16], ctxs[16], kvb[16], thr[16], gs[16];
    snprintf(mbs, sizeof mbs, "%d", eo->max_batch);
    snprintf(mst, sizeof mst, "%d", eo->max_step_tokens);
    snprintf(ctxs, sizeof ctxs, "%d", eo->max_ctx);
    snprintf(kvb, sizeof kvb, "%d", eo->kv_blocks);
    snprintf(thr, sizeof thr, "%d", eo->n_threads);
    for (int g = 1; g < d->decode_dp && s == XDS_OK; g++) {
        snprintf(rstr, sizeof rstr, "%d", grp_rank(d, g));
        snprintf(gs, sizeof gs, "%d", g);
        const xds_topo_decode *td = d->have_topo ? &d->topo.decode[g] : NULL;
        snprintf(thr, sizeof thr, "%d", or_default(td ? td->threads : 0, eo->n_threads));
        snprintf(mbs, sizeof mbs, "%d", or_default(td ? td->max_batch : 0, eo->max_batch));
        snprintf(kvb, sizeof kvb, "%d", td && td->kv_blocks > 0 ? td->kv_blocks : eo->kv_blocks);
        char *args[] = {"xds", "worker", "--role", "decode", "--segment", d->seg_name, "--rank", rstr, "--front", frl,
                        "--group", gs, "--load-table", d->table_name, "-t", thr, "--max-batch", mbs,
                        "--max-step-tokens", mst, "--ctx", ctxs, "--block-size", bstr, "--kv-blocks", kvb,
                        "-m", (char *)model_path, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                        NULL, NULL};
        int na = 28;
        char arstr[16];
        if (d->experts > 0) {
            snprintf(arstr, sizeof arstr, "%d", grp_attn_rank(d, g));
            args[na++] = "--attn-rank", args[na++] = arstr, args[na++] = "--expert-ranks", args[na++] = wranks;
            args[na++] = "--placement", args[na++] = d->placement_text, args[na++] = "--micro-batches";
            args[na++] = nmb;
        }
        if (!eo->enable_prefix_cache) args[na++] = "--no-prefix-cache";
        s = spawn(d, args, grp_rank(d, g), 'd');
    }
    for (int k = 1; k < d->frontends && s == XDS_OK; k++) s = spawn_frontend(d, k);
    if (s != XDS_OK) goto fail;
    /* wait until every child has attached (they load the model first) */
    double end = now_s() + 120.0;
    for (int i = 0; i < d->n_pids; i++) {
        int r = d->rank_of[i];
        xccl_comm *probe = d->comm;
        while (xccl_peer_check(probe, r) != XCCL_OK) {
            if (reap_one(d, i, 0)) {
                char how[96];
                describe_exit(how, sizeof how, d->status[i]);
                s = xds_err_set(XDS_ERR_PEER, "%s %d %s before it became ready", child_role(d, i),
                                child_number(d, i), how);
                goto fail;
            }
            sigset_t pend;
            sigpending(&pend);
            if (sigismember(&pend, SIGTERM) || sigismember(&pend, SIGINT)) {
                s = xds_err_set(XDS_ERR_INTERNAL, "interrupted while starting the workers");
                goto fail;
            }
            if (now_s() > end) {
                s = xds_err_set(XDS_ERR_TIMEOUT, "%s at rank %d did not attach within 120 s", child_role(d, i), r);
                goto fail;
            }
            usleep(5000);
        }
    }
    for (int i = 0; i < d->prefill && s == XDS_OK; i++) /* attached; serving once its pool exists */
        s = wait_live(d, &d->pick->inst[i].alive, d->experts + i, "prefill instance", i, end);
    for (int g = 1; g < d->decode_dp && s == XDS_OK; g++) /* attached; serving once its load record is live */
        s = wait_live(d, &d->table->g[g].alive, d->experts + d->prefill + g - 1, "decode group", g, end);
    if (s != XDS_OK) goto fail;
    if (d->experts > 0) {
        int wr[SERVE_DEPLOY_MAX_WORKERS];
        for (int w = 0; w < d->experts; w++) wr[w] = 1 + w;
        s = xds_deploy_attn_create(m, d->comm, wr, &d->placement, max_tok, d->micro_batches, &d->attn);
        if (s != XDS_OK) goto fail;
        eo->forward = xds_deploy_forward_cb;
        eo->forward_user = d->attn;
    }
    d->block_size = eo->kv_block_size;
    d->max_batch = eo->max_batch;
    d->max_ctx = eo->max_ctx;
    d->n_vocab = m->cfg.n_vocab;
    if (pthread_create(&d->monitor, NULL, monitor_main, d) == 0) d->monitor_started = 1;
    d->started = 1;
    return XDS_OK;
fail:
    {
        /* keep the message: stopping may overwrite the thread's error */
        char msg[512];
        snprintf(msg, sizeof msg, "%s", xds_err_msg());
        serve_deploy_stop(d);
        return xds_err_set(s, "%s", msg);
    }
}

xds_status serve_deploy_topology(serve_deploy *d, xds_engine *engine, const xds_server_engine_ops **ops) {
    xds_engine_stats es;
    xds_engine_stats_get(engine, &es);
    json_t *root = json_object(), *ranks = json_array();
    json_object_set_new(root, "mode", json_string(dp_mode(d)                            ? "dp-groups"
                                                  : d->experts > 0 && d->prefill > 0 ? "prefill-decode+moe-attention"
                                                  : d->experts > 0                   ? "moe-attention"
                                                                                     : "prefill-decode"));
    json_object_set_new(root, "segment", json_string(d->seg_name));
    json_object_set_new(root, "segment_bytes", json_integer((json_int_t)d->seg_bytes));
    json_object_set_new(root, "prefill", json_integer(d->prefill));
    json_object_set_new(root, "decode_dp", json_integer(d->decode_dp));
    json_object_set_new(root, "experts", json_integer(d->experts));
    json_object_set_new(root, "frontends", json_integer(d->frontends));
    json_object_set_new(root, "dense_ffn", json_string("attention"));
    json_object_set_new(root, "shared_experts", json_string("attention"));
    json_t *r0 = json_object();
    json_object_set_new(r0, "rank", json_integer(0));
    json_object_set_new(r0, "role", json_string("frontend+decode"));
    json_object_set_new(r0, "dp_group", json_integer(0));
    json_object_set_new(r0, "pid", json_integer((json_int_t)getpid()));
    json_object_set_new(r0, "kv_blocks", json_integer(es.kv_blocks_total));
    if (d->prefill > 0) json_object_set_new(r0, "prefill_rank", json_integer(d->rpc_rank));
    json_array_append_new(ranks, r0);
    printf("xds serve: topology: segment %s (%llu bytes); rank 0 pid %d: front-end + decode DP group 0 "
           "(attention, routing, shared experts, dense FFN; KV %d blocks)\n",
           d->seg_name, d->seg_bytes, (int)getpid(), es.kv_blocks_total);
    char arbuf[16];
    for (int i = 0; i < d->n_pids; i++) {
        int r = d->rank_of[i];
        json_t *o = json_object();
        json_object_set_new(o, "rank", json_integer(r));
        json_object_set_new(o, "pid", json_integer((json_int_t)d->pids[i]));
        if (d->kind_of[i] == 'f') {
            json_object_set_new(o, "role", json_string("frontend"));
            json_object_set_new(o, "frontend", json_integer(child_number(d, i)));
            printf("xds serve: topology: rank %d pid %d: front-end %d (same port, SO_REUSEPORT)\n", r, (int)d->pids[i],
                   child_number(d, i));
            json_array_append_new(ranks, o);
            continue;
        }
        if (d->kind_of[i] == 'd') {
            int g = r - d->rpc_rank - d->prefill;
            json_object_set_new(o, "role", json_string("decode"));
            json_object_set_new(o, "dp_group", json_integer(g));
            if (d->experts > 0) json_object_set_new(o, "attn_rank", json_integer(grp_attn_rank(d, g)));
            json_object_set_new(o, "kv_blocks", json_integer(atomic_load(&d->table->g[g].kv_blocks)));
            printf("xds serve: topology: rank %d pid %d: decode DP group %d (own engine; KV %lld blocks%s%s)\n", r,
                   (int)d->pids[i], g, (long long)atomic_load(&d->table->g[g].kv_blocks),
                   d->experts > 0 ? "; MoE layers on the expert workers through rank " : "",
                   d->experts > 0 ? (snprintf(arbuf, sizeof arbuf, "%d", grp_attn_rank(d, g)), arbuf) : "");
            json_array_append_new(ranks, o);
            continue;
        }
        if (d->kind_of[i] == 'p') {
            json_object_set_new(o, "role", json_string("prefill"));
            json_object_set_new(o, "instance", json_integer(r - d->rpc_rank - 1));
            printf("xds serve: topology: rank %d pid %d: prefill instance %d\n", r, (int)d->pids[i],
                   r - d->rpc_rank - 1);
            json_array_append_new(ranks, o);
            continue;
        }
        json_t *ex = json_array();
        json_object_set_new(o, "role", json_string("expert"));
        int w = r - 1;
        char list[256] = "";
        for (int k = 0; k < d->placement.n_local[w]; k++) {
            int e = d->placement.slot_expert[w * d->placement.max_local + k];
            json_array_append_new(ex, json_integer(e));
            size_t used = strlen(list);
            if (used < sizeof list - 16) snprintf(list + used, sizeof list - used, k ? ",%d" : "%d", e);
            else if (used < sizeof list - 4) strcat(list, ",...");
        }
        printf("xds serve: topology: rank %d pid %d: expert worker %d, %d routed experts of %d: %s\n", r,
               (int)d->pids[i], w, d->placement.n_local[w], d->n_expert, list[0] ? list : "(none)");
        json_object_set_new(o, "experts", ex);
        json_array_append_new(ranks, o);
    }
    json_object_set_new(root, "ranks", ranks);
    free(d->topology_json);
    d->topology_json = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (!d->topology_json) return xds_err_set(XDS_ERR_NOMEM, "topology: out of memory");
    fflush(stdout);
    if (d->frontends > 1) { /* the other front-ends serve it too: a file they read at start */
        char path[96], tmp[112];
        snprintf(path, sizeof path, "/dev/shm%s.topology", d->seg_name);
        snprintf(tmp, sizeof tmp, "%s.tmp", path);
        FILE *f = fopen(tmp, "w");
        int ok = f && fputs(d->topology_json, f) >= 0;
        if (f && fclose(f) != 0) ok = 0;
        if (!ok || rename(tmp, path) != 0) return xds_err_set(XDS_ERR_IO, "cannot write %s", path);
    }
    *ops = NULL;
    if (dp_mode(d)) {
        d->engine = engine;
        atomic_store(&d->table->g[0].kv_blocks, es.kv_blocks_total);
        atomic_store(&d->table->g[0].max_batch, d->max_batch);
        atomic_store(&d->table->g[0].alive, 1);
        XDS_TRY(serve_front_ops(d, ops));
        if (d->frontends > 1) {
            if (pthread_create(&d->g0thread, NULL, g0_service_main, d) != 0)
                return xds_err_set(XDS_ERR_INTERNAL, "cannot start the group-0 service thread");
            d->g0_started = 1;
        }
    } else if (d->prefill > 0) {
        d->engine = engine;
        pthread_mutex_init(&d->cmu, NULL);
        pthread_mutex_init(&d->rmu, NULL);
        d->mutexes = 1;
        d->ops = (xds_server_engine_ops){d, pd_submit, pd_cancel, pd_stats};
        if (pthread_create(&d->receiver, NULL, receiver_main, d) != 0)
            return xds_err_set(XDS_ERR_INTERNAL, "cannot start the prefill receiver thread");
        d->receiver_started = 1;
        *ops = &d->ops;
    }
    return XDS_OK;
}

static void free_config(serve_deploy *d) {
    free(d->topology_json);
    d->topology_json = NULL;
    xds_deploy_placement_free(&d->placement);
    free(d->placement_text);
    d->placement_text = NULL;
    if (d->have_topo) xds_topology_free(&d->topo);
    d->have_topo = 0;
}

void serve_deploy_stop(serve_deploy *d) {
    if (!d->seg && !d->n_pids && !d->comm && !d->rpc) {
        free_config(d);
        return;
    }
    if (d->attn) {
        xds_deploy_stats st;
        xds_deploy_attn_stats(d->attn, &st);
        double tot = st.attn_s + st.dispatch_s + st.combine_s;
        fprintf(stderr,
                "xds serve: decode group 0 (rank 0): %llu passes, %llu tokens; attention+routing+shared+head %.3f s, "
                "dispatch %.3f s, combine (incl. waiting for experts) %.3f s; dispatch+combine %.0f%% of pass time\n",
                (unsigned long long)st.steps, (unsigned long long)st.tokens, st.attn_s, st.dispatch_s, st.combine_s,
                tot > 0 ? 100.0 * (st.dispatch_s + st.combine_s) / tot : 0.0);
    }
    if (d->prefill > 0 && d->kv_pulled_bytes)
        fprintf(stderr, "xds serve: KV pulled from prefill instances: %llu bytes in %.3f s (%.2f GB/s, in the "
                        "engine thread: part of decode group 0's step time)\n",
                d->kv_pulled_bytes, d->kv_pull_s, d->kv_pull_s > 0 ? d->kv_pulled_bytes / d->kv_pull_s * 1e-9 : 0.0);
    if (d->frontend_mode)
        fprintf(stderr, "xds serve: front-end (rank %d): %llu requests routed to the decode groups\n",
                d->fe_self_rank, (unsigned long long)(d->next_id & ((1ull << 48) - 1)));
    if (d->table && !d->frontend_mode) {
        fprintf(stderr, "xds serve: requests served per decode DP group:");
        for (int g = 0; g < d->decode_dp; g++)
            fprintf(stderr, " group %d: %lld", g, (long long)atomic_load(&d->table->g[g].served));
        fprintf(stderr, "\n");
    }
    stop_workers(d, 10.0);
    xds_deploy_attn_free(d->attn);
    d->attn = NULL;
    d->n_pids = 0;
    /* requests still at a prefill instance (the HTTP server is stopped by now) */
    while (d->reqs) {
        serve_pd_req *r = d->reqs;
        d->reqs = r->next;
        pd_req_free(r);
    }
    while (d->dreqs) {
        serve_dp_req *r = d->dreqs;
        d->dreqs = r->next;
        free(r);
    }
    if (d->table) {
        xds_dp_table_close(d->table);
        d->table = NULL;
        shm_unlink(d->table_name);
    }
    if (d->pick) {
        xds_pd_pick_table_close(d->pick);
        d->pick = NULL;
        shm_unlink(d->pick_name);
    }
    if (d->mutexes) {
        pthread_mutex_destroy(&d->cmu);
        pthread_mutex_destroy(&d->rmu);
        d->mutexes = 0;
    }
    if (d->seg) {
        if (d->frontends > 1) {
            char path[96];
            snprintf(path, sizeof path, "/dev/shm%s.topology", d->seg_name);
            unlink(path);
        }
        xccl_segment_destroy(d->seg);
        d->seg = NULL;
    }
    free(d->topology_json);
    d->topology_json = NULL;
    xds_deploy_placement_free(&d->placement);
    free(d->placement_text);
    d->placement_text = NULL;
    if (d->have_topo) xds_topology_free(&d->topo);
    d->have_topo = 0;
}
