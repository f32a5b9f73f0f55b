/*
 * supervisor.c — the supervisor of a disaggregated deployment and the
 * front-end's request router (supervisor.h).
 *
 * Ranks of the XCCL segment: 0 the supervisor (it only watches and sends
 * STOP), 1..E expert workers, then F front-ends, P prefill instances, D
 * decode groups, and with expert workers each group's attention rank. Every
 * child is exec'ed from /proc/self/exe with its command line kept for a
 * restart, in its own process group, without a parent-death signal.
 * Start-up: port claim (/dev/shm/xds-port-PORT) -> segment, load table, pick
 * table -> children -> wait until each serves (a child that exits first,
 * SIGTERM/SIGINT pending, or a 120 s deadline abort the start and stop
 * everything) -> topology file -> monitor thread.
 *
 * The monitor (every 50 ms): a child that exited unexpectedly has its
 * shared-memory records cleared (no new work goes there) and is restarted
 * after 0.25 s, doubling per recent exit up to 8 s; --restart-max exits
 * within --restart-window seconds leave it out. A live child whose XCCL
 * heartbeat is stale or that is stopped (SIGSTOP) becomes suspect; suspect
 * for --hang-timeout seconds, it is killed (and so restarted). A restarted
 * child re-attaches at its rank and is live again once it serves. One log
 * line per event names the process, its role and rank. With no front-end or
 * no decode group left the deployment stops (exit 1).
 *
 * Front-end side (serve_deploy_frontend, in each front-end process): a
 * request goes to the prefill instance picked from the pick table
 * (deploy/pd_pick.h), whose transfer task comes back here; the decode group
 * is then picked from the load table (deploy/dp.h) and imports the KV
 * itself, reporting FREED, which is forwarded to the prefill instance.
 * Without prefill instances the request goes straight to a decode group.
 */
#define _GNU_SOURCE
#include "deploy/supervisor.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <xccl.h>

#include "base/log.h"
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
    d->frontends = 2;
    d->expert_threads = 1;
    d->prefill_threads = 1;
    d->micro_batches = 2;
    atomic_init(&d->stopping, 0);
    atomic_init(&d->failed, 0);
    atomic_init(&d->signalled, 0);
    d->hang_s = 2.0;
    d->crash_n = 3;
    d->crash_window_s = 30.0;
    d->drain_s = 60.0;
    d->listen_fd = -1;
}

const char *serve_deploy_usage(void) {
    return "Disaggregated deployment (this process: its supervisor; every role runs in a child process):\n"
           "  --experts E          E expert-worker processes hold the routed experts (MoE models)\n"
           "  --decode-dp D        D decode DP groups (each a process), picked per request\n"
           "                       from load figures in shared memory; with --experts they share the workers\n"
           "  --prefill P          P prefill-instance processes (KV pulled by the decode group)\n"
           "  --prefill-threads N  compute threads per prefill instance (default 1)\n"
           "  --frontends F        F front-end processes (default 2) accept from one listening socket that the\n"
           "                       supervisor holds, so the port stays open while one restarts; each picks prefill\n"
           "                       instances and decode groups from the tables in shared memory\n"
           "  --expert-threads N   compute threads per expert worker (default 1)\n"
           "  --expert-replicas R  each routed expert is held by R expert workers (default 2, at most E): tokens\n"
           "                       rotate over the replicas, and a dead worker's go to the other at once\n"
           "  --micro-batches M    1, or 2 (default): two halves of a decode batch ping-pong, one's attention\n"
           "                       overlapping the other's experts\n"
           "  --topology FILE      a JSON topology: per-process settings, explicit expert placement\n"
           "                       with replicas (docs/ARCHITECTURE.md); replaces the count flags\n"
           "  --restart-max N      a process that exits N times (default 3) within --restart-window S\n"
           "                       (default 30) seconds is left out; before that it is restarted with back-off\n"
           "  --hang-timeout S     a process suspect (no heartbeat, or stopped) for S seconds (default 2) is\n"
           "                       killed and restarted (a front-end after 5x S: it holds up no other process,\n"
           "                       and killing it cuts its streams)\n";
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
    else if (!strcmp(a, "--expert-replicas")) dst = &d->expert_replicas, lo = 1, hi = SERVE_DEPLOY_MAX_WORKERS;
    else if (!strcmp(a, "--micro-batches")) dst = &d->micro_batches, lo = 1, hi = XDS_DEPLOY_MAX_MB;
    else if (!strcmp(a, "--restart-max")) dst = &d->crash_n, lo = 1, hi = SERVE_DEPLOY_CRASH_N;
    else if (!strcmp(a, "--restart-window") || !strcmp(a, "--hang-timeout")) {
        char *end = NULL;
        double x = v ? strtod(v, &end) : 0;
        if (!v || !*v || *end || !(x >= 0.1 && x <= 86400)) {
            fprintf(stderr, "xds serve: error: %s wants seconds in 0.1..86400, got '%s'\n", a, v ? v : "");
            return -1;
        }
        if (a[2] == 'r') d->crash_window_s = x;
        else d->hang_s = x;
        return 2;
    }
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
    else if (!strcmp(a, "--listen-fd")) dst = &d->listen_fd, lo = 3, hi = 1 << 20;
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
    if (dst != &d->expert_threads && dst != &d->prefill_threads && dst != &d->micro_batches && dst != &d->fe_self_rank &&
        dst != &d->crash_n && dst != &d->listen_fd && dst != &d->expert_replicas)
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

/* The role's label in the fault counts (xds_fault_counts). */
static const char *child_metric_role(const serve_deploy *d, int i) {
    switch (d->kind_of[i]) {
    case 'e': return "expert";
    case 'p': return "prefill";
    case 'd': return "decode";
    default: return "frontend";
    }
}

static xds_fault_counts *dep_faults(serve_deploy *d) {
    return d->table ? &d->table->faults : NULL;
}

static const char *child_role(const serve_deploy *d, int i) {
    switch (d->kind_of[i]) {
    case 'e': return "expert worker";
    case 'p': return "prefill instance";
    case 'd': return "decode group";
    default: return "front-end";
    }
}

/* Attention rank of decode group g (its traffic with the expert workers): a
 * second rank of group g's process, after every group's request rank. */
static int grp_attn_rank(const serve_deploy *d, int g) {
    return d->experts + 1 + d->frontends + d->prefill + d->decode_dp + g;
}

/* Expert worker rank r, front-end k, prefill instance i, or decode group g of child i. */
static int child_number(const serve_deploy *d, int i) {
    int r = d->rank_of[i];
    switch (d->kind_of[i]) {
    case 'e': return r;
    case 'p': return r - d->prank[0];
    case 'd': return r - d->grank[0];
    default: return r - d->fe_rank[0];
    }
}

/* ---- the front-end's request router ------------------------------------------------ */

/* A request of this front-end. It is at a prefill instance (AT_PREFILL: its
 * prompt is being computed there, the transfer task comes back here), in a
 * decode group (IN_GROUP), or PENDING: its group or prefill instance died (or
 * none was free when its KV was ready) and it waits for a group to take it.
 * A pending request is re-submitted as prompt + the tokens generated so far
 * with max_tokens reduced by as many (re-prefill): greedy decoding then
 * continues with exactly the tokens the lost group would have produced, and
 * the client's stream goes on where it stopped. */
enum { FE_AT_PREFILL = 0, FE_IN_GROUP, FE_PENDING };

typedef struct serve_req {
    serve_deploy *d;
    uint64_t id;              /* the HTTP server's id */
    uint64_t wire;            /* the id of its current submission to a prefill instance or group: messages
                               * of an earlier one (a lost group's, a cancelled import's) are ignored */
    int32_t *toks;            /* the prompt, then every token generated so far */
    int n_prompt, n_gen, n_cached;
    xds_gen_params params;    /* as asked (max_tokens of the whole request) */
    char **stop;              /* owned copies of params.stop */
    xds_gen_cb cb;
    void *user;
    int where;                /* FE_* */
    int pi;                   /* AT_PREFILL: the instance */
    long long pick_work;      /* its work as accounted in the pick table */
    int group;                /* IN_GROUP: the decode group */
    int cancelled;            /* cancelled while at prefill (ABORT already delivered) */
    xds_pd_task task;         /* task_valid: the prompt KV held by a prefill instance */
    int task_valid, freed;    /* freed: FREE sent (or the group reported pulling it) */
    double pending_since;
    int failovers;            /* re-submissions to another group */
    struct serve_req *next;
} serve_req;

static double now_s(void);

static void req_free(serve_req *r) {
    if (!r) return;
    for (int i = 0; r->stop && i < r->params.n_stop; i++) free(r->stop[i]);
    free(r->stop);
    free(r->toks);
    free(r);
}

static void req_unlink(serve_deploy *d, serve_req *r) { /* under rmu */
    for (serve_req **pp = &d->reqs; *pp; pp = &(*pp)->next)
        if (*pp == r) {
            *pp = r->next;
            return;
        }
}

static serve_req *req_find(serve_deploy *d, uint64_t id) { /* under rmu */
    for (serve_req *x = d->reqs; x; x = x->next)
        if (x->id == id) return x;
    return NULL;
}

static serve_req *req_find_wire(serve_deploy *d, uint64_t wire) { /* under rmu */
    for (serve_req *x = d->reqs; x; x = x->next)
        if (x->wire == wire) return x;
    return NULL;
}

static void req_final(serve_req *r, xds_finish fin) {
    xds_gen_event ev = {.req_id = r->id, .text = "", .text_len = 0, .token = -1, .finish = fin,
                        .n_prompt = r->n_prompt, .n_cached = r->n_cached, .n_gen = r->n_gen};
    r->cb(r->user, &ev);
}

/* FREE the prompt KV at its prefill instance (once). */
static void req_send_free(serve_deploy *d, serve_req *r) {
    if (!r->task_valid || r->freed) return;
    r->freed = 1;
    pthread_mutex_lock(&d->cmu);
    if (xds_pd_task_free(d->rpc, &r->task) != XDS_OK) XDS_LOGW("front-end: %s", xds_err_msg());
    pthread_mutex_unlock(&d->cmu);
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
    for (int i = 0; i < n; i++)
        if (prompt[i] < 0 || prompt[i] >= d->n_vocab)
            return xds_err_set(XDS_ERR_INVALID, "request: prompt token %d: id %d outside the vocabulary [0, %d)", i,
                               prompt[i], d->n_vocab);
    return XDS_OK;
}

static void group_down(serve_deploy *d, int g, const char *why) { /* under rmu */
    if (d->gdown[g]) return;
    d->gdown[g] = 1;
    int n = 0;
    double now = now_s();
    for (serve_req *r = d->reqs; r; r = r->next)
        if (r->where == FE_IN_GROUP && r->group == g) {
            r->where = FE_PENDING;
            r->pending_since = now;
            n++;
        }
    fprintf(stderr, "xds serve: front-end (rank %d, pid %d): decode group %d (rank %d) lost (%s); %d requests "
                    "continue on another group\n", d->fe_self_rank, (int)getpid(), g, d->grank[g], why, n);
    if (n > 0 && d->table) {
        xds_fault_count_failover(&d->table->faults, "decode");
        xds_fault_count_replayed(&d->table->faults, n);
    }
}

/* Under rmu: send r to a decode group (prompt + tokens so far); 0 when a
 * group took it, -1 when none can (r stays as it was). */
static int req_place(serve_deploy *d, serve_req *r) {
    uint64_t skip = 0;
    for (int g = 0; g < d->decode_dp; g++)
        if (d->gdown[g]) skip |= 1ull << g;
    int n = r->n_prompt + r->n_gen;
    xds_gen_params p = r->params;
    p.max_tokens = r->params.max_tokens - r->n_gen;
    for (int tries = 0; tries < d->decode_dp; tries++) {
        int g = xds_dp_pick_skip(d->table, n + p.max_tokens, d->block_size, skip);
        if (g < 0) return -1;
        /* the prompt KV at a prefill instance is imported only by the first group */
        int imp = r->task_valid && !r->freed && r->n_gen == 0 && r->failovers == 0 && r->where != FE_PENDING;
        uint64_t wire = ++d->next_id;
        pthread_mutex_lock(&d->cmu);
        xds_status s = imp ? xds_dp_req_send_import(d->rpc, d->grank[g], wire, r->toks, n, &p, &r->task)
                           : xds_dp_req_send(d->rpc, d->grank[g], wire, r->toks, n, &p);
        pthread_mutex_unlock(&d->cmu);
        if (s == XDS_OK) {
            if (!imp) req_send_free(d, r); /* the group computes the prompt itself */
            if (r->where == FE_PENDING) {
                r->failovers++;
                fprintf(stderr, "xds serve: front-end (rank %d): request %llu continues on decode group %d after %d "
                                "tokens (%.2f s)\n", d->fe_self_rank, (unsigned long long)r->id, g,
                        r->n_gen, now_s() - r->pending_since);
            }
            r->where = FE_IN_GROUP;
            r->group = g;
            r->wire = wire;
            return 0;
        }
        group_down(d, g, xds_err_msg());
        skip |= 1ull << g;
    }
    return -1;
}

static xds_status fe_submit(void *self, const int32_t *prompt, int n, const xds_gen_params *p, xds_gen_cb cb,
                            void *user, uint64_t *req_id) {
    serve_deploy *d = self;
    xds_status cs = deploy_check_request(d, prompt, n, p, cb);
    if (cs) return cs;
    if (d->prefill > 0 && n > (int)(sizeof(((xds_pd_task *)0)->blocks) / sizeof(int32_t)) * d->block_size)
        return xds_err_set(XDS_ERR_INVALID, "request: prompt of %d tokens is longer than a transfer task holds", n);
    serve_req *r = calloc(1, sizeof *r);
    if (!r) return xds_err_set(XDS_ERR_NOMEM, "request: out of memory");
    r->d = d;
    r->n_prompt = n;
    r->params = *p;
    r->cb = cb;
    r->user = user;
    r->toks = malloc(sizeof(int32_t) * ((size_t)n + (size_t)p->max_tokens));
    r->stop = p->n_stop > 0 ? calloc((size_t)p->n_stop, sizeof(char *)) : NULL;
    int oom = !r->toks || (p->n_stop > 0 && !r->stop);
    for (int i = 0; !oom && i < p->n_stop; i++) oom = !(r->stop[i] = strdup(p->stop[i]));
    if (oom) {
        req_free(r);
        return xds_err_set(XDS_ERR_NOMEM, "request: out of memory");
    }
    memcpy(r->toks, prompt, sizeof(int32_t) * (size_t)n);
    r->params.stop = (const char *const *)r->stop;
    pthread_mutex_lock(&d->rmu);
    r->id = ++d->next_id;
    *req_id = r->id;
    r->next = d->reqs; /* linked first: the final event may come at once */
    d->reqs = r;
    int best = -1;
    if (d->prefill > 0) {
        /* the prefill instance where this prompt's KV is expected first: its
         * uncached tokens plus the work queued there (deploy/pd_pick.h) */
        xds_pd_choice pc;
        best = xds_pd_pick(d->pick, prompt, n, d->block_size, &pc);
        if (best >= 0 && d->pdown[best]) best = -1;
        if (best >= 0) {
            r->where = FE_AT_PREFILL;
            r->pi = best;
            r->pick_work = pc.work;
            xds_pd_pick_account(d->pick, best, pc.work, +1);
            d->at_prefill[best]++;
            pthread_mutex_lock(&d->cmu);
            r->wire = ++d->next_id;
            xds_status s = xds_pd_request_send(d->rpc, d->prank[best], r->wire, prompt, n);
            pthread_mutex_unlock(&d->cmu);
            if (s != XDS_OK) {
                fprintf(stderr, "xds serve: front-end (rank %d): prefill instance %d: %s; the decode group computes the "
                                "prompt\n", d->fe_self_rank, best, xds_err_msg());
                d->at_prefill[best]--;
                xds_pd_pick_account(d->pick, best, r->pick_work, -1);
                d->pdown[best] = 1;
                best = -1;
            }
        }
    }
    if (best < 0 && req_place(d, r) != 0) { /* no prefill instance: straight to a decode group */
        req_unlink(d, r);
        pthread_mutex_unlock(&d->rmu);
        req_free(r);
        return xds_err_set(XDS_ERR_UNAVAILABLE, "no decode DP group is serving (the deployment is recovering); "
                                                "retry later");
    }
    pthread_mutex_unlock(&d->rmu);
    return XDS_OK;
}

static void fe_cancel(void *self, uint64_t id) {
    serve_deploy *d = self;
    pthread_mutex_lock(&d->rmu);
    serve_req *r = req_find(d, id), *drop = NULL;
    int abort_now = 0;
    if (r && r->where == FE_IN_GROUP) {
        pthread_mutex_lock(&d->cmu);
        xds_dp_cancel_send(d->rpc, d->grank[r->group], r->wire); /* its final (ABORT) event follows */
        pthread_mutex_unlock(&d->cmu);
    } else if (r && r->where == FE_AT_PREFILL && !r->cancelled) {
        r->cancelled = abort_now = 1; /* the task is freed when it arrives */
    } else if (r && r->where == FE_PENDING) {
        req_unlink(d, r);
        req_send_free(d, r);
        drop = r;
        abort_now = 1;
    }
    pthread_mutex_unlock(&d->rmu);
    if (abort_now) req_final(r, XDS_FINISH_ABORT);
    req_free(drop);
}

static void fe_stats(void *self, xds_engine_stats *out) {
    serve_deploy *d = self;
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&d->rmu);
    for (int i = 0; i < d->prefill; i++) out->n_waiting += d->at_prefill[i];
    for (serve_req *r = d->reqs; r; r = r->next) out->n_waiting += r->where == FE_PENDING;
    pthread_mutex_unlock(&d->rmu);
    for (int g = 0; g < d->decode_dp; g++) {
        out->n_running += (int)atomic_load(&d->table->g[g].in_flight);
        out->kv_blocks_total += (int)atomic_load(&d->table->g[g].kv_blocks);
    }
}

/* A transfer task arrived: the request goes to a decode group (or is freed). */
static void task_arrived(serve_deploy *d, int pi, const xds_pd_task *t) {
    pthread_mutex_lock(&d->rmu);
    serve_req *r = req_find_wire(d, t->req_id);
    if (r && r->where != FE_AT_PREFILL) r = NULL;
    d->at_prefill[pi]--;
    if (r) xds_pd_pick_account(d->pick, pi, r->pick_work, -1);
    if (!r) {
        pthread_mutex_unlock(&d->rmu);
        if (t->n_prompt != -1) { /* its request moved on (failover) or is gone: release the KV */
            pthread_mutex_lock(&d->cmu);
            xds_pd_task_free(d->rpc, t);
            pthread_mutex_unlock(&d->cmu);
        }
        return;
    }
    if (t->n_prompt != -1) r->task = *t, r->task_valid = 1;
    if (r->cancelled) { /* ABORT already delivered */
        req_unlink(d, r);
        req_send_free(d, r);
        pthread_mutex_unlock(&d->rmu);
        req_free(r);
        return;
    }
    if (t->n_prompt == -1) { /* the instance could not compute it: a decode group will */
        r->where = FE_PENDING;
        r->pending_since = now_s();
    } else if (req_place(d, r) != 0) {
        r->where = FE_PENDING; /* no group now: one takes it when it is back */
        r->pending_since = now_s();
    }
    pthread_mutex_unlock(&d->rmu);
}

static void prefill_down(serve_deploy *d, int pi, const char *why) { /* under rmu */
    if (d->pdown[pi]) return;
    d->pdown[pi] = 1;
    int n = 0;
    double now = now_s();
    for (serve_req *r = d->reqs; r; r = r->next) {
        if (r->where == FE_AT_PREFILL && r->pi == pi) {
            d->at_prefill[pi]--;
            xds_pd_pick_account(d->pick, pi, r->pick_work, -1);
            r->where = FE_PENDING;
            r->pending_since = now;
            n++;
        } else if (r->where == FE_IN_GROUP && r->task_valid && !r->freed && r->task.src_rank == d->prank[pi]) {
            /* its group has not pulled the prompt KV yet, and the instance that
             * held it is gone (a restarted one at its rank holds other data):
             * cancel that import; the request is submitted again, computed there */
            pthread_mutex_lock(&d->cmu);
            xds_dp_cancel_send(d->rpc, d->grank[r->group], r->wire);
            pthread_mutex_unlock(&d->cmu);
            r->where = FE_PENDING;
            r->pending_since = now;
            n++;
        }
        if (r->task_valid && r->task.src_rank == d->prank[pi]) r->task_valid = 0; /* nothing to FREE there */
    }
    fprintf(stderr, "xds serve: front-end (rank %d, pid %d): prefill instance %d (rank %d) lost (%s); %d requests "
                    "re-routed to the decode groups\n", d->fe_self_rank, (int)getpid(), pi, d->prank[pi], why, n);
    if (n > 0 && d->table) {
        xds_fault_count_failover(&d->table->faults, "prefill");
        xds_fault_count_replayed(&d->table->faults, n);
    }
}

/* One round over the prefill instances; 1 if a task arrived. */
static int poll_prefill(serve_deploy *d) {
    int got = 0;
    for (int i = 0; i < d->prefill; i++) {
        if (d->pdown[i]) continue;
        xds_pd_task t;
        pthread_mutex_lock(&d->cmu);
        xccl_comm_set_timeout(d->rpc, 1); /* a receive that times out consumes nothing */
        xds_status s = xds_pd_task_recv(d->rpc, d->prank[i], &t);
        xccl_comm_set_timeout(d->rpc, 10000);
        pthread_mutex_unlock(&d->cmu);
        if (s == XDS_OK) {
            got = 1;
            task_arrived(d, i, &t);
        } else if (s != XDS_ERR_TIMEOUT && !atomic_load(&d->receiver_stop)) {
            pthread_mutex_lock(&d->rmu);
            prefill_down(d, i, xds_err_msg());
            pthread_mutex_unlock(&d->rmu);
        }
    }
    return got;
}

/* Lost groups and instances that serve again (restarted: they re-attached at
 * their rank and marked themselves alive) are used again. */
/* Accept the incarnation of rank now serving: 1 when this comm talks to it. */
static int peer_back(serve_deploy *d, int rank) {
    if (xccl_peer_state(d->rpc, rank) != XCCL_RANK_ACTIVE) return 0;
    pthread_mutex_lock(&d->cmu);
    xccl_status rs = xccl_peer_reset(d->rpc, rank); /* XCCL_ERR_INVALID: still the one we knew */
    int ok = rs == XCCL_OK || (rs == XCCL_ERR_INVALID && xccl_peer_check(d->rpc, rank) == XCCL_OK);
    pthread_mutex_unlock(&d->cmu);
    return ok;
}

static void check_back(serve_deploy *d) {
    for (int g = 0; g < d->decode_dp; g++)
        if (d->gdown[g] && atomic_load(&d->table->g[g].alive) && peer_back(d, d->grank[g])) {
            d->gdown[g] = 0;
            fprintf(stderr, "xds serve: front-end (rank %d): decode group %d (rank %d) is back\n",
                    d->fe_self_rank, g, d->grank[g]);
        }
    for (int i = 0; i < d->prefill; i++)
        if (d->pdown[i] && atomic_load(&d->pick->inst[i].alive) && peer_back(d, d->prank[i])) {
            d->pdown[i] = 0;
            fprintf(stderr, "xds serve: front-end (rank %d): prefill instance %d (rank %d) is back\n",
                    d->fe_self_rank, i, d->prank[i]);
        }
}

/* Every decode group was left out (crash loops): nothing will take a request. */
static int all_removed(serve_deploy *d) {
    for (int g = 0; g < d->decode_dp; g++)
        if (!atomic_load(&d->table->g[g].removed)) return 0;
    return 1;
}

#define FE_PENDING_MAX_S 60.0 /* a request no group took for this long ends with an error */

/* Pending requests to a group; those waiting too long end (never a hang). */
static void place_pending(serve_deploy *d) {
    serve_req *failed = NULL;
    double now = now_s();
    pthread_mutex_lock(&d->rmu);
    for (serve_req **pp = &d->reqs; *pp;) {
        serve_req *r = *pp;
        if (r->where != FE_PENDING) {
            pp = &r->next;
            continue;
        }
        if (r->n_gen >= r->params.max_tokens || req_place(d, r) == 0) {
            if (r->where == FE_PENDING) { /* every token was out already: only the final event was lost */
                *pp = r->next;
                r->next = failed;
                failed = r;
                r->cancelled = 2;
                continue;
            }
        } else if (now - r->pending_since > FE_PENDING_MAX_S || all_removed(d)) {
            fprintf(stderr, "xds serve: front-end (rank %d): request %llu: no decode group %s; failing it\n",
                    d->fe_self_rank, (unsigned long long)r->id, all_removed(d) ? "is left" : "took it within 60 s");
            *pp = r->next;
            r->next = failed;
            failed = r;
            continue;
        }
        pp = &r->next;
    }
    for (serve_req *r = failed; r; r = r->next) req_send_free(d, r);
    pthread_mutex_unlock(&d->rmu);
    while (failed) {
        serve_req *r = failed;
        failed = r->next;
        req_final(r, r->cancelled == 2 ? XDS_FINISH_LENGTH : XDS_FINISH_ERROR);
        req_free(r);
    }
}

static void *fe_receiver_main(void *arg) {
    serve_deploy *d = arg;
    char *buf = malloc(XDS_DP_EVENT_MAX);
    double next_check = 0;
    while (buf && !atomic_load(&d->receiver_stop)) {
        int got = d->prefill > 0 ? poll_prefill(d) : 0;
        for (int g = 0; g < d->decode_dp; g++) {
            if (d->gdown[g]) continue;
            xds_gen_event ev;
            int freed = 0;
            pthread_mutex_lock(&d->cmu);
            xccl_comm_set_timeout(d->rpc, 1); /* a receive that times out consumes nothing */
            xds_status s = xds_dp_event_recv(d->rpc, d->grank[g], buf, XDS_DP_EVENT_MAX, &ev, &freed);
            xccl_comm_set_timeout(d->rpc, 10000);
            pthread_mutex_unlock(&d->cmu);
            if (s == XDS_ERR_TIMEOUT) continue;
            if (s != XDS_OK) {
                if (atomic_load(&d->receiver_stop)) break;
                pthread_mutex_lock(&d->rmu);
                group_down(d, g, xds_err_msg());
                pthread_mutex_unlock(&d->rmu);
                continue;
            }
            got = 1;
            pthread_mutex_lock(&d->rmu);
            serve_req *r = req_find_wire(d, ev.req_id);
            if (r && (r->where != FE_IN_GROUP || r->group != g)) r = NULL;
            if (freed) { /* group g pulled the KV: the prefill instance may free it */
                if (r && r->task_valid && !r->freed) {
                    r->freed = 1;
                    pthread_mutex_lock(&d->cmu);
                    if (xds_pd_task_free(d->rpc, &r->task) != XDS_OK) XDS_LOGW("front-end: %s", xds_err_msg());
                    pthread_mutex_unlock(&d->cmu);
                }
                pthread_mutex_unlock(&d->rmu);
                continue;
            }
            if (!r) {
                pthread_mutex_unlock(&d->rmu);
                continue;
            }
            xds_gen_event e2 = ev;
            e2.req_id = r->id;
            if (ev.token >= 0 && r->n_gen < r->params.max_tokens) r->toks[r->n_prompt + r->n_gen++] = ev.token;
            if (r->failovers == 0) r->n_cached = ev.n_cached;
            e2.n_prompt = r->n_prompt; /* the group's prompt grew by the tokens before a failover */
            e2.n_gen = r->n_gen;
            e2.n_cached = r->n_cached;
            if (ev.finish != XDS_FINISH_NONE) req_unlink(d, r);
            pthread_mutex_unlock(&d->rmu);
            r->cb(r->user, &e2);
            if (ev.finish != XDS_FINISH_NONE) req_free(r);
        }
        double now = now_s();
        if (now >= next_check) {
            check_back(d);
            next_check = now + 0.05;
        }
        place_pending(d);
        if (!got) usleep(200);
    }
    free(buf);
    return NULL;
}

/* A front-end's request path: the locks, the engine ops and the thread that
 * receives the prefill instances' tasks and the decode groups' events. */
static xds_status serve_front_ops(serve_deploy *d, const xds_server_engine_ops **ops) {
    pthread_mutex_init(&d->cmu, NULL);
    pthread_mutex_init(&d->rmu, NULL);
    d->mutexes = 1;
    d->ops = (xds_server_engine_ops){d, fe_submit, fe_cancel, fe_stats};
    if (pthread_create(&d->receiver, NULL, fe_receiver_main, d) != 0)
        return xds_err_set(XDS_ERR_INTERNAL, "cannot start the front-end's receiver thread");
    d->receiver_started = 1;
    *ops = &d->ops;
    return XDS_OK;
}

/* ---- front-end mode ------------------------------------------------------------ */

/* GET /v1/topology of a front-end: the supervisor rewrites the file whenever a
 * process changes state, so each request reads it again (NULL: not there). */
static char *frontend_topology(void *user) {
    serve_deploy *d = user;
    char path[96];
    snprintf(path, sizeof path, "/dev/shm%s.topology", d->fe_segment);
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    char *buf = malloc(1 << 20);
    size_t len = buf ? fread(buf, 1, (1 << 20) - 1, f) : 0;
    fclose(f);
    if (buf) buf[len] = 0;
    return buf;
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
    /* no PR_SET_PDEATHSIG: a front-end keeps serving when the supervisor dies */
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
    return serve_front_ops(d, ops);
}

char *serve_deploy_topology_get(void *user) {
    return frontend_topology(user);
}

void serve_deploy_metrics_load(void *user, xds_metrics *m) {
    serve_deploy *d = user;
    if (d && d->table) xds_metrics_fault_load(m, &d->table->faults);
}

void serve_deploy_quiesce(serve_deploy *d) {
    if (d->receiver_started) {
        atomic_store(&d->receiver_stop, 1);
        pthread_join(d->receiver, NULL);
        d->receiver_started = 0;
    }
}

/* ---- supervisor: children ---------------------------------------------------------- */

/* For the quit-at-once handler only (a signal handler has no argument):
 * paths and pids copied when the first signal arrives. */
static char quit_paths[5][96];
static pid_t quit_pids[SERVE_DEPLOY_MAX_WORKERS];
static volatile sig_atomic_t quit_n;

static const char *state_name(int st) {
    switch (st) {
    case SERVE_CHILD_LIVE: return "live";
    case SERVE_CHILD_SUSPECT: return "suspect";
    case SERVE_CHILD_RESTARTING: return "restarting";
    case SERVE_CHILD_REMOVED: return "removed";
    default: return "starting";
    }
}

static char **args_dup(char *const *args) {
    int n = 0;
    while (args[n]) n++;
    char **a = calloc((size_t)n + 1, sizeof *a);
    for (int i = 0; a && i < n; i++)
        if (!(a[i] = strdup(args[i]))) {
            while (i-- > 0) free(a[i]);
            free(a);
            return NULL;
        }
    return a;
}

static void args_free(char **a) {
    for (int i = 0; a && a[i]; i++) free(a[i]);
    free(a);
}

/* fork/exec child i from its saved command line. The child runs in its own
 * process group (a terminal's Ctrl-C reaches the supervisor only, which
 * stops the children in order) and has no parent-death signal: it keeps
 * serving if the supervisor dies. */
static xds_status spawn_at(serve_deploy *d, int i) {
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) return xds_err_set(XDS_ERR_IO, "fork for rank %d: %s", d->rank_of[i], strerror(errno));
    if (pid == 0) {
        setpgid(0, 0);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL); /* serve blocks SIGTERM/SIGINT for sigwait */
        /* only the front-ends hold the listening socket: were a worker to keep it,
         * a port whose front-ends are all gone would queue connections forever */
        if (d->kind_of[i] == 'f' && d->listen_fd >= 0) fcntl(d->listen_fd, F_SETFD, 0);
        const char *exe = getenv("XDS_WORKER_EXE"); /* tests: a worker that fails to start */
        execv(exe && *exe ? exe : "/proc/self/exe", d->args_of[i]);
        fprintf(stderr, "xds serve: error: exec worker: %s\n", strerror(errno));
        _exit(127);
    }
    d->pids[i] = pid;
    d->status[i] = 0;
    return XDS_OK;
}

static xds_status spawn(serve_deploy *d, char *const *args, int rank, char kind) {
    if (d->n_pids >= SERVE_DEPLOY_MAX_WORKERS)
        return xds_err_set(XDS_ERR_INVALID, "too many processes (at most %d)", SERVE_DEPLOY_MAX_WORKERS);
    int i = d->n_pids;
    if (!(d->args_of[i] = args_dup(args))) return xds_err_set(XDS_ERR_NOMEM, "out of memory");
    d->rank_of[i] = rank;
    d->kind_of[i] = kind;
    d->state_of[i] = SERVE_CHILD_STARTING;
    d->n_pids++;
    return spawn_at(d, i);
}

/* Front-end k: this serve command again (its HTTP and model options), without
 * the deployment flags, in front-end mode, on the deployment's port. */
static xds_status spawn_frontend(serve_deploy *d, int k) {
    static const char *const skip[] = {"--experts", "--decode-dp", "--prefill", "--prefill-threads", "--frontends",
                                       "--expert-threads", "--expert-replicas", "--micro-batches", "--topology", "-t", "--threads",
                                       "--port", "--restart-max", "--restart-window", "--hang-timeout", "--listen-fd", NULL};
    char **args = calloc((size_t)d->argc + 20, sizeof(char *));
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
    char rk[16], port[16], gl[16 * XDS_DP_MAX_GROUPS] = "";
    snprintf(rk, sizeof rk, "%d", d->fe_rank[k]);
    snprintf(port, sizeof port, "%d", d->port);
    for (int g = 0; g < d->decode_dp; g++) snprintf(gl + strlen(gl), sizeof gl - strlen(gl), g ? ",%d" : "%d", d->grank[g]);
    char lfd[16];
    snprintf(lfd, sizeof lfd, "%d", d->listen_fd);
    args[n++] = "--port", args[n++] = port;
    if (d->listen_fd >= 0) args[n++] = "--listen-fd", args[n++] = lfd;
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

/* --topology FILE: the counts, the placement and the decode groups' settings. */
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

/* Child i (a prefill instance or decode group) serves: its record in shared
 * memory says so. Front-ends and expert workers: attached is ready. */
static int child_serving(serve_deploy *d, int i) {
    xccl_rank_info ri;
    if (xccl_segment_rank_info(d->seg, d->rank_of[i], &ri) != XCCL_OK || ri.state != XCCL_RANK_ACTIVE ||
        ri.pid != (int32_t)d->pids[i] || ri.hung)
        return 0;
    if (d->kind_of[i] == 'p') return (int)atomic_load(&d->pick->inst[child_number(d, i)].alive);
    if (d->kind_of[i] == 'd') return (int)atomic_load(&d->table->g[child_number(d, i)].alive);
    return 1;
}

/* 'T' in /proc/PID/stat: stopped (SIGSTOP) or traced. */
static int pid_stopped(pid_t pid) {
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *p = strrchr(buf, ')');
    return p && p[1] == ' ' && (p[2] == 'T' || p[2] == 't');
}

/* The topology as JSON: every process with its role, pid, state and restart
 * count; written to /dev/shm<segment>.topology (the front-ends serve it). */
static xds_status write_topology(serve_deploy *d, int print) {
    json_t *root = json_object(), *ranks = json_array();
    json_object_set_new(root, "mode", json_string(d->experts > 0 && d->prefill > 0 ? "prefill-decode+moe-attention"
                                                  : d->experts > 0                   ? "moe-attention"
                                                  : d->prefill > 0                   ? "prefill-decode"
                                                                                     : "dp-groups"));
    json_object_set_new(root, "segment", json_string(d->seg_name));
    json_object_set_new(root, "segment_bytes", json_integer((json_int_t)d->seg_bytes));
    json_object_set_new(root, "port", json_integer(d->port));
    json_object_set_new(root, "prefill", json_integer(d->prefill));
    json_object_set_new(root, "decode_dp", json_integer(d->decode_dp));
    json_object_set_new(root, "experts", json_integer(d->experts));
    json_object_set_new(root, "frontends", json_integer(d->frontends));
    json_object_set_new(root, "dense_ffn", json_string("attention"));
    json_object_set_new(root, "shared_experts", json_string("attention"));
    json_t *shm = json_array();
    json_array_append_new(shm, json_string(d->seg_name));
    if (d->table_name[0]) json_array_append_new(shm, json_string(d->table_name));
    if (d->pick_name[0]) json_array_append_new(shm, json_string(d->pick_name));
    json_object_set_new(root, "shm", shm);
    json_t *r0 = json_object();
    json_object_set_new(r0, "rank", json_integer(0));
    json_object_set_new(r0, "role", json_string("supervisor"));
    json_object_set_new(r0, "pid", json_integer((json_int_t)getpid()));
    json_object_set_new(r0, "state", json_string("live"));
    json_object_set_new(r0, "restarts", json_integer(0));
    json_array_append_new(ranks, r0);
    if (print)
        printf("xds serve: topology: segment %s (%llu bytes); rank 0 pid %d: supervisor (runs no model)\n", d->seg_name,
               d->seg_bytes, (int)getpid());
    for (int i = 0; i < d->n_pids; i++) {
        int r = d->rank_of[i], k = child_number(d, i);
        json_t *o = json_object();
        json_object_set_new(o, "rank", json_integer(r));
        json_object_set_new(o, "pid", json_integer((json_int_t)d->pids[i]));
        json_object_set_new(o, "state", json_string(state_name(d->state_of[i])));
        json_object_set_new(o, "restarts", json_integer(d->restarts[i]));
        if (d->kind_of[i] == 'f') {
            json_object_set_new(o, "role", json_string("frontend"));
            json_object_set_new(o, "frontend", json_integer(k));
            if (print)
                printf("xds serve: topology: rank %d pid %d: front-end %d (port %d, shared listening socket)\n", r,
                       (int)d->pids[i], k, d->port);
        } else if (d->kind_of[i] == 'd') {
            json_object_set_new(o, "role", json_string("decode"));
            json_object_set_new(o, "dp_group", json_integer(k));
            if (d->experts > 0) json_object_set_new(o, "attn_rank", json_integer(grp_attn_rank(d, k)));
            json_object_set_new(o, "kv_blocks", json_integer(atomic_load(&d->table->g[k].kv_blocks)));
            if (print) {
                char arbuf[16];
                printf("xds serve: topology: rank %d pid %d: decode DP group %d (own engine; KV %lld blocks%s%s)\n", r,
                       (int)d->pids[i], k, (long long)atomic_load(&d->table->g[k].kv_blocks),
                       d->experts > 0 ? "; MoE layers on the expert workers through rank " : "",
                       d->experts > 0 ? (snprintf(arbuf, sizeof arbuf, "%d", grp_attn_rank(d, k)), arbuf) : "");
            }
        } else if (d->kind_of[i] == 'p') {
            json_object_set_new(o, "role", json_string("prefill"));
            json_object_set_new(o, "instance", json_integer(k));
            if (print) printf("xds serve: topology: rank %d pid %d: prefill instance %d\n", r, (int)d->pids[i], k);
        } else {
            json_t *ex = json_array();
            json_object_set_new(o, "role", json_string("expert"));
            int w = r - 1;
            char list[256] = "";
            for (int j = 0; j < d->placement.n_local[w]; j++) {
                int e = d->placement.slot_expert[w * d->placement.max_local + j];
                json_array_append_new(ex, json_integer(e));
                size_t used = strlen(list);
                if (used < sizeof list - 16) snprintf(list + used, sizeof list - used, j ? ",%d" : "%d", e);
                else if (used < sizeof list - 4) strcat(list, ",...");
            }
            if (print)
                printf("xds serve: topology: rank %d pid %d: expert worker %d, %d routed experts of %d: %s\n", r,
                       (int)d->pids[i], w, d->placement.n_local[w], d->n_expert, list[0] ? list : "(none)");
            json_object_set_new(o, "experts", ex);
        }
        json_array_append_new(ranks, o);
    }
    json_object_set_new(root, "ranks", ranks);
    char *txt = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (!txt) return xds_err_set(XDS_ERR_NOMEM, "topology: out of memory");
    if (print) fflush(stdout);
    char path[96], tmp[112];
    snprintf(path, sizeof path, "/dev/shm%s.topology", d->seg_name);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    int ok = f && fputs(txt, f) >= 0;
    if (f && fclose(f) != 0) ok = 0;
    if (!ok || rename(tmp, path) != 0) {
        free(txt);
        return xds_err_set(XDS_ERR_IO, "cannot write %s", path);
    }
    free(d->topology_json);
    d->topology_json = txt;
    return XDS_OK;
}

/* Child i is gone for good or for now: its shared-memory records stop
 * attracting work (they were written by it; nobody else will clear them). */
static void child_gone(serve_deploy *d, int i) {
    int k = child_number(d, i);
    if (d->kind_of[i] == 'd' && d->table) {
        atomic_store(&d->table->g[k].alive, 0);
        atomic_store(&d->table->g[k].in_flight, 0);
        atomic_store(&d->table->g[k].load_blocks, 0);
    } else if (d->kind_of[i] == 'p' && d->pick) {
        atomic_store(&d->pick->inst[k].alive, 0);
    }
}

static int live_of_kind(const serve_deploy *d, char kind) {
    int n = 0;
    for (int i = 0; i < d->n_pids; i++) n += d->kind_of[i] == kind && d->state_of[i] != SERVE_CHILD_REMOVED;
    return n;
}

/* An unexpected exit of child i (reaped, status in d->status[i]): restart it
 * after a back-off, or leave it out when it keeps crashing. */
static void child_crashed(serve_deploy *d, int i, pid_t pid) {
    double now = now_s();
    char how[96];
    describe_exit(how, sizeof how, d->status[i]);
    child_gone(d, i);
    if (!d->hang_killed[i]) xds_fault_count_detected(dep_faults(d), child_metric_role(d, i), "exit");
    d->hang_killed[i] = 0;
    if (d->fault_t[i] <= 0) d->fault_t[i] = now; /* a hang's recovery counts from its suspicion */
    int n = 0;
    for (int j = 0; j < SERVE_DEPLOY_CRASH_N; j++) n += d->crash_t[i][j] > 0 && now - d->crash_t[i][j] < d->crash_window_s;
    memmove(&d->crash_t[i][1], &d->crash_t[i][0], sizeof(double) * (SERVE_DEPLOY_CRASH_N - 1));
    d->crash_t[i][0] = now;
    n++;
    if (n >= d->crash_n) {
        d->state_of[i] = SERVE_CHILD_REMOVED;
        if (d->kind_of[i] == 'd') atomic_store(&d->table->g[child_number(d, i)].removed, 1);
        fprintf(stderr, "xds serve: %s %d (rank %d, pid %d) %s: %d exits within %.0f s; left out, the deployment "
                        "shrinks\n", child_role(d, i), child_number(d, i), d->rank_of[i], (int)pid, how, n,
                d->crash_window_s);
    } else {
        double delay = 0.25;
        for (int j = 1; j < n && delay < 8.0; j++) delay *= 2;
        d->state_of[i] = SERVE_CHILD_RESTARTING;
        d->restart_at[i] = now + delay;
        d->since[i] = now;
        fprintf(stderr, "xds serve: %s %d (rank %d, pid %d) %s; restarting it in %.2f s (restart %d)\n",
                child_role(d, i), child_number(d, i), d->rank_of[i], (int)pid, how, delay, d->restarts[i] + 1);
    }
    if (live_of_kind(d, 'f') == 0) {
        fprintf(stderr, "xds serve: error: no front-end is left; stopping the deployment\n");
        if (!atomic_exchange(&d->failed, 1) && !atomic_load(&d->signalled)) kill(getpid(), SIGTERM);
    } else if (live_of_kind(d, 'd') == 0 && d->kind_of[i] == 'd') {
        fprintf(stderr, "xds serve: error: no decode group is left: the front-ends answer 503 until the deployment "
                        "is restarted\n");
    }
}

static void *monitor_main(void *arg) {
    serve_deploy *d = arg;
    while (!atomic_load(&d->stopping)) {
        int changed = 0;
        double now = now_s();
        for (int i = 0; i < d->n_pids && !atomic_load(&d->stopping); i++) {
            pid_t pid = d->pids[i];
            int st = d->state_of[i];
            if (st == SERVE_CHILD_REMOVED) continue;
            if (pid > 0 && reap_one(d, i, 0)) {
                /* while the front-ends drain (SIGTERM), their exits are expected; the
                 * others are still restarted so that the streams in recovery finish */
                if (atomic_load(&d->stopping) || (d->kind_of[i] == 'f' && atomic_load(&d->signalled))) continue;
                child_crashed(d, i, pid);
                changed = 1;
                continue;
            }
            if (pid <= 0) { /* restarting: its back-off ends */
                if (st == SERVE_CHILD_RESTARTING && now >= d->restart_at[i]) {
                    if (spawn_at(d, i) == XDS_OK) {
                        d->restarts[i]++;
                        xds_fault_count_restart(dep_faults(d), child_metric_role(d, i));
                        if (quit_n > i) quit_pids[i] = d->pids[i]; /* the quit-at-once handler's copy */
                        fprintf(stderr, "xds serve: %s %d (rank %d): restarted as pid %d\n", child_role(d, i),
                                child_number(d, i), d->rank_of[i], (int)d->pids[i]);
                    } else {
                        fprintf(stderr, "xds serve: %s %d: restart failed: %s\n", child_role(d, i),
                                child_number(d, i), xds_err_msg());
                        d->restart_at[i] = now + 1.0;
                    }
                    changed = 1;
                }
                continue;
            }
            /* running: ready, live, or hung */
            int serving = child_serving(d, i);
            if ((st == SERVE_CHILD_RESTARTING || st == SERVE_CHILD_STARTING) && serving) {
                d->state_of[i] = SERVE_CHILD_LIVE;
                if (st == SERVE_CHILD_RESTARTING)
                    fprintf(stderr, "xds serve: %s %d (rank %d, pid %d) rejoined after %.2f s\n", child_role(d, i),
                            child_number(d, i), d->rank_of[i], (int)pid, now - d->since[i]);
                if (d->fault_t[i] > 0) /* a restart, or a start again after a kill while starting */
                    xds_fault_count_recovered(dep_faults(d), child_metric_role(d, i), now - d->fault_t[i]);
                d->fault_t[i] = 0;
                changed = 1;
            } else if (st == SERVE_CHILD_LIVE && (!serving || pid_stopped(pid))) {
                d->state_of[i] = SERVE_CHILD_SUSPECT;
                d->since[i] = now;
                d->fault_t[i] = now; /* cleared if it proves live again */
                fprintf(stderr, "xds serve: %s %d (rank %d, pid %d) is suspect: %s\n", child_role(d, i),
                        child_number(d, i), d->rank_of[i], (int)pid, serving ? "stopped" : "no heartbeat");
                changed = 1;
            } else if (st == SERVE_CHILD_SUSPECT) {
                if (serving && !pid_stopped(pid)) {
                    d->state_of[i] = SERVE_CHILD_LIVE;
                    d->fault_t[i] = 0;
                    fprintf(stderr, "xds serve: %s %d (rank %d, pid %d) is live again\n", child_role(d, i),
                            child_number(d, i), d->rank_of[i], (int)pid);
                    changed = 1;
                } else if (now - d->since[i] >= (d->kind_of[i] == 'f' ? 5.0 * d->hang_s : d->hang_s)) {
                    /* a stopped front-end holds nobody up (the others accept on
                     * the shared socket) and killing it cuts its streams: it
                     * gets 5x the hang timeout to come back */
                    fprintf(stderr, "xds serve: %s %d (rank %d, pid %d) hung for %.1f s; killing it\n",
                            child_role(d, i), child_number(d, i), d->rank_of[i], (int)pid, now - d->since[i]);
                    /* its peers' waits on it fail at once, then the rank can be rejoined */
                    xccl_segment_declare_dead(d->seg, d->rank_of[i], 0);
                    xds_fault_count_detected(dep_faults(d), child_metric_role(d, i), "hang");
                    d->hang_killed[i] = 1;
                    kill(pid, SIGKILL); /* reaped (and restarted) on a later round */
                    d->since[i] = now + 3600;
                }
            }
        }
        if (changed && write_topology(d, 0) != XDS_OK) fprintf(stderr, "xds serve: %s\n", xds_err_msg());
        usleep(50 * 1000);
    }
    return NULL;
}

/* ---- supervisor: stop -------------------------------------------------------------- */

/* Reap children of kind (0: all) until `end`, then SIGKILL what is left. */
static void reap_kind(serve_deploy *d, char kind, double end) {
    for (int i = 0; i < d->n_pids; i++) {
        if (kind && d->kind_of[i] != kind) continue;
        while (!reap_one(d, i, 0)) {
            if (now_s() > end) {
                fprintf(stderr, "xds serve: %s %d (rank %d, pid %d) did not stop; killing it\n", child_role(d, i),
                        child_number(d, i), d->rank_of[i], (int)d->pids[i]);
                kill(d->pids[i], SIGKILL);
                reap_one(d, i, 1);
                break;
            }
            usleep(5000);
        }
    }
}

static void stop_workers(serve_deploy *d, double deadline_s) {
    /* 1. the front-ends finish their streams and exit (SIGTERM: drain); the
     * monitor meanwhile restarts any other child that dies */
    atomic_store(&d->signalled, 1);
    for (int i = 0; i < d->n_pids; i++)
        if (d->kind_of[i] == 'f' && d->pids[i] > 0) kill(d->pids[i], SIGTERM);
    double end = now_s() + (d->started ? d->drain_s + 10.0 : deadline_s);
    for (int i = 0; i < d->n_pids; i++)
        while (d->kind_of[i] == 'f' && d->pids[i] > 0 && now_s() < end) {
            if (!d->monitor_started) reap_one(d, i, 0);
            usleep(5000);
        }
    atomic_store(&d->stopping, 1);
    if (d->monitor_started) {
        pthread_join(d->monitor, NULL);
        d->monitor_started = 0;
    }
    reap_kind(d, 'f', now_s());
    /* 2. prefill instances and decode groups: STOP from rank 0 (a group then
     * stops its attention traffic, which ends the expert workers) */
    for (int i = 0; i < d->n_pids; i++) {
        if (d->pids[i] <= 0 || (d->kind_of[i] != 'p' && d->kind_of[i] != 'd')) continue;
        xds_status s = XDS_ERR_PEER;
        if (d->comm) (void)xccl_peer_reset(d->comm, d->rank_of[i]); /* a restarted child: talk to its incarnation */
        if (d->comm && d->state_of[i] != SERVE_CHILD_STARTING && xccl_peer_check(d->comm, d->rank_of[i]) == XCCL_OK)
            s = d->kind_of[i] == 'p' ? xds_pd_stop_send(d->comm, d->rank_of[i]) : xds_dp_stop_send(d->comm, d->rank_of[i]);
        if (s != XDS_OK) kill(d->pids[i], SIGTERM); /* not serving yet (or not answering) */
    }
    reap_kind(d, 'p', now_s() + deadline_s);
    reap_kind(d, 'd', now_s() + deadline_s);
    /* 3. expert workers end when every attention rank said STOP; one still
     * waiting for a group that never came is told directly */
    double end_e = now_s() + (d->started ? 2.0 : 0.0);
    for (int i = 0; i < d->n_pids; i++)
        while (d->kind_of[i] == 'e' && !reap_one(d, i, 0) && now_s() < end_e) usleep(5000);
    for (int i = 0; i < d->n_pids; i++)
        if (d->pids[i] > 0) kill(d->pids[i], SIGTERM);
    reap_kind(d, 0, now_s() + deadline_s);
    if (d->comm) {
        xccl_comm_detach(d->comm);
        d->comm = NULL;
    }
}


static void quit_now(int sig) {
    (void)sig;
    for (int i = 0; i < 5; i++)
        if (quit_paths[i][0]) unlink(quit_paths[i]);
    for (int i = 0; i < quit_n; i++)
        if (quit_pids[i] > 0) kill(quit_pids[i], SIGKILL);
    _exit(130);
}

void serve_deploy_signalled(serve_deploy *d) {
    atomic_store(&d->signalled, 1);
    if (!d->seg) return;
    snprintf(quit_paths[0], sizeof quit_paths[0], "/dev/shm%s", d->seg_name);
    if (d->table_name[0]) snprintf(quit_paths[1], sizeof quit_paths[1], "/dev/shm%s", d->table_name);
    if (d->pick_name[0]) snprintf(quit_paths[2], sizeof quit_paths[2], "/dev/shm%s", d->pick_name);
    snprintf(quit_paths[3], sizeof quit_paths[3], "/dev/shm%s.topology", d->seg_name);
    if (d->port_lock[0]) snprintf(quit_paths[4], sizeof quit_paths[4], "%s", d->port_lock);
    for (int i = 0; i < d->n_pids; i++) quit_pids[i] = d->pids[i];
    quit_n = d->n_pids;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = quit_now;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

/* ---- supervisor: the port's owner ------------------------------------------------- */

/* Is pid alive and one of deployment seg's processes (its command line names
 * the segment), or its supervisor (any pid given as sup)? */
static int pid_in_deployment(pid_t pid, const char *seg, int sup) {
    if (pid <= 0 || (kill(pid, 0) != 0 && errno == ESRCH)) return 0;
    if (sup) return 1;
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%d/cmdline", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    for (size_t i = 0; i < n; i++)
        if (!buf[i]) buf[i] = ' ';
    buf[n] = 0;
    return strstr(buf, seg) != NULL;
}

/* /dev/shm/xds-port-PORT names the deployment serving the port (its
 * supervisor, segment, shared-memory names and processes). A deployment
 * still running there (even without its supervisor) is refused with a clear
 * message; one that crashed is cleaned up (its shared memory removed). */
static xds_status claim_port(serve_deploy *d) {
    char lock[96]; /* d->port_lock once ours (it is removed at stop) */
    snprintf(lock, sizeof lock, "/dev/shm/xds-port-%d", d->port);
    json_error_t je;
    json_t *j = json_load_file(lock, 0, &je);
    if (j) {
        int sup = (int)json_integer_value(json_object_get(j, "supervisor"));
        const char *seg = json_string_value(json_object_get(j, "segment"));
        char topo[128];
        snprintf(topo, sizeof topo, "/dev/shm%s.topology", seg ? seg : "/none");
        json_t *t = json_load_file(topo, 0, &je);
        json_t *ranks = t ? json_object_get(t, "ranks") : NULL;
        char live[256] = "";
        int n_live = 0;
        if (pid_in_deployment(sup, "", 1)) n_live++, snprintf(live, sizeof live, "%d (supervisor)", sup);
        for (size_t i = 0; seg && i < json_array_size(ranks); i++) {
            int pid = (int)json_integer_value(json_object_get(json_array_get(ranks, i), "pid"));
            if (pid == sup || !pid_in_deployment(pid, seg, 0)) continue;
            size_t u = strlen(live);
            if (u < sizeof live - 16) snprintf(live + u, sizeof live - u, "%s%d", n_live ? " " : "", pid);
            n_live++;
        }
        if (n_live > 0) {
            xds_status s = xds_err_set(XDS_ERR_BUSY,
                                       "port %d is already served by deployment %s (supervisor pid %d%s); its "
                                       "processes still running: %s. Stop them first (kill -TERM), or use another "
                                       "--port", d->port, seg ? seg : "?", sup,
                                       pid_in_deployment(sup, "", 1) ? "" : ", gone", live);
            json_decref(t);
            json_decref(j);
            return s;
        }
        /* a crashed deployment: remove what it left in /dev/shm */
        json_t *shm = t ? json_object_get(t, "shm") : NULL;
        fprintf(stderr, "xds serve: removing the shared memory of a crashed deployment on port %d (supervisor pid %d):",
                d->port, sup);
        for (size_t i = 0; i < json_array_size(shm); i++) {
            const char *nm = json_string_value(json_array_get(shm, i));
            if (nm && !strncmp(nm, "/xds-", 5) && shm_unlink(nm) == 0) fprintf(stderr, " %s", nm);
        }
        if (seg && !strncmp(seg, "/xds-", 5)) {
            if (shm_unlink(seg) == 0) fprintf(stderr, " %s", seg);
            unlink(topo);
        }
        fprintf(stderr, "\n");
        json_decref(t);
        json_decref(j);
        unlink(lock);
    }
    json_t *o = json_object();
    json_object_set_new(o, "supervisor", json_integer(getpid()));
    json_object_set_new(o, "segment", json_string(d->seg_name));
    char tmp[128];
    snprintf(tmp, sizeof tmp, "%s.%d", lock, (int)getpid());
    int ok = json_dump_file(o, tmp, JSON_COMPACT) == 0;
    json_decref(o);
    /* link(): fails if another supervisor claimed the port meanwhile */
    if (!ok || link(tmp, lock) != 0) {
        int e = errno;
        unlink(tmp);
        return xds_err_set(XDS_ERR_BUSY, "cannot claim port %d (/dev/shm/xds-port-%d): %s", d->port, d->port,
                           ok ? strerror(e) : "write failed");
    }
    unlink(tmp);
    snprintf(d->port_lock, sizeof d->port_lock, "%s", lock);
    return XDS_OK;
}

/* ---- supervisor: start ------------------------------------------------------------- */

/* The deployment's listening socket, made here once and inherited by every
 * front-end (MHD_OPTION_LISTEN_SOCKET): the front-ends share one accept
 * queue, which stays open while the supervisor or any front-end lives, so a
 * front-end's death or restart refuses no new connection (with SO_REUSEPORT
 * each front-end had its own queue, and the connections in a dead one's queue
 * were reset). Close-on-exec except in the front-ends (spawn_at). */
static xds_status open_listener(serve_deploy *d) {
    const char *host = d->host && *d->host ? d->host : "127.0.0.1";
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t sl;
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET, a4->sin_port = htons((uint16_t)(d->port > 0 ? d->port : 0)), sl = sizeof *a4;
    } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6, a6->sin6_port = htons((uint16_t)(d->port > 0 ? d->port : 0)), sl = sizeof *a6;
    } else {
        return xds_err_set(XDS_ERR_INVALID, "--host '%s' is not a numeric IPv4 or IPv6 address", host);
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return xds_err_set(XDS_ERR_IO, "socket: %s", strerror(errno));
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ss.ss_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&ss, sl) != 0 || listen(fd, SOMAXCONN) != 0) {
        int e = errno;
        close(fd);
        return xds_err_set(XDS_ERR_IO, "cannot listen on %s:%d (%s)", host, d->port, strerror(e));
    }
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
        d->port = ntohs(ss.ss_family == AF_INET6 ? a6->sin6_port : a4->sin_port);
    d->listen_fd = fd;
    return XDS_OK;
}

xds_status serve_deploy_start(serve_deploy *d, xds_model *m, const char *model_path, xds_engine_opts *eo) {
    if (d->topology_file) XDS_TRY(apply_topology(d, m, eo));
    if (d->decode_dp > XDS_DP_MAX_GROUPS)
        return xds_err_set(XDS_ERR_INVALID, "--decode-dp %d: at most %d groups", d->decode_dp, XDS_DP_MAX_GROUPS);
    if (d->frontends > SERVE_DEPLOY_MAX_FRONTENDS)
        return xds_err_set(XDS_ERR_INVALID, "--frontends %d: at most %d", d->frontends, SERVE_DEPLOY_MAX_FRONTENDS);
    if (d->experts < 1 && d->prefill < 1 && d->decode_dp < 2 && d->frontends < 2)
        return xds_err_set(XDS_ERR_INVALID, "a disaggregated deployment needs --experts E (E >= 1), --prefill P "
                                            "(P >= 1), --decode-dp D (D >= 2) or --frontends F (F >= 2)");
    int n_expert = m->cfg.moe.n_expert;
    if (d->experts > 0 && n_expert > 0 && d->experts > n_expert)
        return xds_err_set(XDS_ERR_INVALID, "--experts %d: the model has only %d routed experts per layer", d->experts,
                           n_expert);
    d->n_expert = n_expert;
    int max_tok = eo->max_step_tokens > eo->max_batch ? eo->max_step_tokens : eo->max_batch;
    for (int g = 0; d->have_topo && g < d->decode_dp; g++) {
        int mb = or_default(d->topo.decode[g].max_batch, eo->max_batch);
        if (mb > max_tok) max_tok = mb;
    }
    if (d->experts > 0) {
        if (n_expert <= 0)
            return xds_err_set(XDS_ERR_INVALID, "--experts %d: the model (%s) has no MoE layers to place on expert "
                                                "workers", d->experts, xds_arch_name(m->cfg.arch));
        if (!d->placement.n_workers) { /* default: every expert on two workers (--expert-replicas) */
            int R = d->expert_replicas > 0 ? d->expert_replicas : 2;
            if (R > d->experts) R = d->experts;
            XDS_TRY(xds_deploy_placement_replicated(n_expert, d->experts, R, &d->placement));
        }
        free(d->placement_text);
        if (!(d->placement_text = xds_deploy_placement_format(&d->placement)))
            return xds_err_set(XDS_ERR_NOMEM, "out of memory (placement)");
    }
    if (d->port <= 0) XDS_TRY(open_listener(d)); /* port 0: the kernel picks one now */
    /* ranks: 0 supervisor, 1..E expert workers, then the front-ends, the
     * prefill instances, the decode groups, and (with expert workers) each
     * group's attention rank */
    int E = d->experts, F = d->frontends, P = d->prefill, D = d->decode_dp;
    for (int k = 0; k < F; k++) d->fe_rank[k] = E + 1 + k;
    for (int i = 0; i < P; i++) d->prank[i] = E + 1 + F + i;
    for (int g = 0; g < D; g++) d->grank[g] = E + 1 + F + P + g;
    d->rpc_rank = E + 1; /* the first front-end's rank */
    int n_ranks = E + 1 + F + P + D + (E > 0 ? D : 0);
    if (n_ranks > XCCL_MAX_RANKS || E + F + P + D > SERVE_DEPLOY_MAX_WORKERS)
        return xds_err_set(XDS_ERR_INVALID, "the deployment needs %d XCCL ranks, at most %d fit a segment", n_ranks,
                           XCCL_MAX_RANKS < SERVE_DEPLOY_MAX_WORKERS + 1 ? XCCL_MAX_RANKS : SERVE_DEPLOY_MAX_WORKERS + 1);
    xccl_config cfg;
    xds_deploy_xccl_config(n_ranks, &cfg);
    d->seg_bytes = (unsigned long long)xccl_config_segment_bytes(&cfg);
    snprintf(d->seg_name, sizeof d->seg_name, "/xds-serve-%d", (int)getpid());
    xds_status s = claim_port(d);
    if (s == XDS_OK && d->listen_fd < 0) s = open_listener(d);
    if (s != XDS_OK) {
        if (d->port_lock[0]) unlink(d->port_lock), d->port_lock[0] = 0;
        if (d->listen_fd >= 0) close(d->listen_fd), d->listen_fd = -1;
        return s;
    }
    if (xccl_segment_create(&d->seg, d->seg_name, &cfg) != XCCL_OK) {
        s = xds_err_set(XDS_ERR_IO, "XCCL segment %s (%llu bytes): %s", d->seg_name, d->seg_bytes, xccl_err_msg());
        goto fail;
    }
    if (xccl_comm_attach(&d->comm, d->seg_name, 0, 1) != XCCL_OK) {
        s = xds_err_set(XDS_ERR_IO, "attach to %s as rank 0: %s", d->seg_name, xccl_err_msg());
        goto fail;
    }
    snprintf(d->table_name, sizeof d->table_name, "/xds-load-%d", (int)getpid());
    shm_unlink(d->table_name);
    if ((s = xds_dp_table_create(d->table_name, D, &d->table)) != XDS_OK) goto fail;
    if (P > 0) {
        snprintf(d->pick_name, sizeof d->pick_name, "/xds-pick-%d", (int)getpid());
        shm_unlink(d->pick_name);
        if ((s = xds_pd_pick_table_create(d->pick_name, P, &d->pick)) != XDS_OK) goto fail;
    }
    if ((s = write_topology(d, 0)) != XDS_OK) goto fail; /* the shm names, for a later clean-up */
    char wstr[16], tstr[16], rstr[16], bstr[16], pstr[16], mtok[16], nmb[16];
    char aranks[16 * XDS_DEPLOY_MAX_ATTN] = "", wranks[8 * (SERVE_DEPLOY_MAX_WORKERS + 1)] = "";
    snprintf(bstr, sizeof bstr, "%d", eo->kv_block_size);
    snprintf(pstr, sizeof pstr, "%d", eo->max_ctx > 0 ? 4 * eo->max_ctx : 16384);
    snprintf(mtok, sizeof mtok, "%d", max_tok);
    snprintf(nmb, sizeof nmb, "%d", d->micro_batches);
    for (int g = 0; g < D; g++)
        snprintf(aranks + strlen(aranks), sizeof aranks - strlen(aranks), g ? ",%d" : "%d", grp_attn_rank(d, g));
    for (int w = 0; w < E; w++) snprintf(wranks + strlen(wranks), sizeof wranks - strlen(wranks), w ? ",%d" : "%d", 1 + w);
    /* --quantize: every role converts its weights at load (NULL: the list ends there) */
    char *qa = d->quantize == XDS_QUANTIZE_W8A8 ? "--quantize" : NULL, *qv = qa ? "w8a8" : NULL;
    for (int r = 1; r <= E && s == XDS_OK; r++) {
        snprintf(rstr, sizeof rstr, "%d", r);
        snprintf(wstr, sizeof wstr, "%d", r - 1);
        snprintf(tstr, sizeof tstr, "%d",
                 or_default(d->have_topo ? d->topo.expert[r - 1].threads : 0, d->expert_threads));
        char *args[] = {"xds", "worker", "--role", "expert", "--segment", d->seg_name, "--rank", rstr,
                        "--worker", wstr, "--placement", d->placement_text, "--attn-ranks", aranks,
                        "--max-tok", mtok, "-t", tstr, "-m", (char *)model_path, qa, qv, NULL};
        s = spawn(d, args, r, 'e');
    }
    /* a group's / instance's senders: rank 0 (STOP only), then the front-ends */
    char frl[16 * (SERVE_DEPLOY_MAX_FRONTENDS + 1)] = "0";
    for (int k = 0; k < F; k++) snprintf(frl + strlen(frl), sizeof frl - strlen(frl), ",%d", d->fe_rank[k]);
    for (int i = 0; i < P && s == XDS_OK; i++) {
        char sqs[16], pcs[16], pps[16], pts[16], inst[16];
        const xds_topo_prefill *tp = d->have_topo ? &d->topo.prefill[i] : NULL;
        snprintf(rstr, sizeof rstr, "%d", d->prank[i]);
        snprintf(pts, sizeof pts, "%d", or_default(tp ? tp->threads : 0, d->prefill_threads));
        snprintf(pps, sizeof pps, "%d", or_default(tp ? tp->kv_tokens : 0, atoi(pstr)));
        snprintf(sqs, sizeof sqs, "%d", or_default(tp ? tp->max_seqs : 0, 16));
        snprintf(pcs, sizeof pcs, "%d", or_default(tp ? tp->chunk : 0, eo->max_step_tokens));
        snprintf(inst, sizeof inst, "%d", i);
        char *args[] = {"xds", "worker", "--role", "prefill", "--segment", d->seg_name, "--rank", rstr,
                        "--front", frl, "-t", pts, "--block-size", bstr, "--pool-tokens", pps,
                        "--max-seqs", sqs, "--chunk", pcs, "--pick-table", d->pick_name, "--instance", inst,
                        "-m", (char *)model_path, qa, qv, NULL};
        s = spawn(d, args, d->prank[i], 'p');
    }
    char mbs[16], mst[16], ctxs[16], kvb[16], thr[16], gs[16], arstr[16];
    snprintf(mst, sizeof mst, "%d", eo->max_step_tokens);
    snprintf(ctxs, sizeof ctxs, "%d", eo->max_ctx);
    for (int g = 0; g < D && s == XDS_OK; g++) {
        snprintf(rstr, sizeof rstr, "%d", d->grank[g]);
        snprintf(gs, sizeof gs, "%d", g);
        const xds_topo_decode *td = d->have_topo ? &d->topo.decode[g] : NULL;
        snprintf(thr, sizeof thr, "%d", or_default(td ? td->threads : 0, eo->n_threads));
        snprintf(mbs, sizeof mbs, "%d", or_default(td ? td->max_batch : 0, eo->max_batch));
        snprintf(kvb, sizeof kvb, "%d", td && td->kv_blocks > 0 ? td->kv_blocks : eo->kv_blocks);
        char *args[40] = {"xds", "worker", "--role", "decode", "--segment", d->seg_name, "--rank", rstr, "--front", frl,
                          "--group", gs, "--load-table", d->table_name, "-t", thr, "--max-batch", mbs,
                          "--max-step-tokens", mst, "--ctx", ctxs, "--block-size", bstr, "--kv-blocks", kvb,
                          "-m", (char *)model_path};
        int na = 28;
        if (E > 0) {
            snprintf(arstr, sizeof arstr, "%d", grp_attn_rank(d, g));
            args[na++] = "--attn-rank", args[na++] = arstr, args[na++] = "--expert-ranks", args[na++] = wranks;
            args[na++] = "--placement", args[na++] = d->placement_text, args[na++] = "--micro-batches";
            args[na++] = nmb;
        }
        if (!eo->enable_prefix_cache) args[na++] = "--no-prefix-cache";
        if (qa) args[na++] = qa, args[na++] = qv;
        args[na] = NULL;
        s = spawn(d, args, d->grank[g], 'd');
    }
    if (s != XDS_OK) goto fail;
    /* wait until every child serves (they load the model first); the
     * front-ends start last, so the port answers once all of it serves */
    double end = now_s() + 120.0;
    int n_back = d->n_pids; /* the children behind the front-ends */
    for (int i = 0; i < d->n_pids; i++) {
        while (!child_serving(d, i)) {
            /* a child killed by a signal while starting (not one that failed
             * on its own: its error is the user's to read at once) is started
             * again, at most --restart-max times */
            int k_died = -1;
            pid_t died_pid = 0;
            for (int k = 0; k < d->n_pids && k_died < 0; k++) {
                pid_t kp = d->pids[k];
                if (kp > 0 && reap_one(d, k, 0)) k_died = k, died_pid = kp; /* starting, or serving already */
            }
            if (k_died >= 0) {
                int k = k_died;
                char how[96];
                describe_exit(how, sizeof how, d->status[k]);
                if (!WIFSIGNALED(d->status[k]) || d->restarts[k] + 1 >= d->crash_n) {
                    s = xds_err_set(XDS_ERR_PEER, "%s %d %s before it became ready%s", child_role(d, k),
                                    child_number(d, k), how,
                                    WIFSIGNALED(d->status[k]) ? " (again: giving up)" : "");
                    goto fail;
                }
                xds_fault_count_detected(dep_faults(d), child_metric_role(d, k), "exit");
                if (d->fault_t[k] <= 0) d->fault_t[k] = now_s();
                fprintf(stderr, "xds serve: %s %d (rank %d, pid %d) %s while starting; starting it again (restart %d)\n",
                        child_role(d, k), child_number(d, k), d->rank_of[k], (int)died_pid, how, d->restarts[k] + 1);
                if (d->seg) xccl_segment_declare_dead(d->seg, d->rank_of[k], 0); /* peers' waits on it fail */
                child_gone(d, k);
                usleep(100 * 1000);
                if ((s = spawn_at(d, k)) != XDS_OK) goto fail;
                d->state_of[k] = SERVE_CHILD_STARTING; /* the monitor sees it live once it serves */
                d->restarts[k]++;
                xds_fault_count_restart(dep_faults(d), child_metric_role(d, k));
                continue;
            }
            sigset_t pend;
            sigpending(&pend);
            if (sigismember(&pend, SIGTERM) || sigismember(&pend, SIGINT)) {
                s = xds_err_set(XDS_ERR_INTERNAL, "interrupted while starting the workers");
                goto fail;
            }
            if (now_s() > end) {
                s = xds_err_set(XDS_ERR_TIMEOUT, "%s at rank %d did not start serving within 120 s", child_role(d, i),
                                d->rank_of[i]);
                goto fail;
            }
            usleep(5000);
        }
        d->state_of[i] = SERVE_CHILD_LIVE;
        if (d->fault_t[i] > 0) { /* started again after a kill while starting */
            xds_fault_count_recovered(dep_faults(d), child_metric_role(d, i), now_s() - d->fault_t[i]);
            d->fault_t[i] = 0;
        }
        if (i == n_back - 1) { /* every other child serves: now the front-ends */
            for (int k = 0; k < F && s == XDS_OK; k++) s = spawn_frontend(d, k);
            if (s != XDS_OK) goto fail;
        }
    }
    d->block_size = eo->kv_block_size;
    d->max_batch = eo->max_batch;
    d->max_ctx = eo->max_ctx;
    d->n_vocab = m->cfg.n_vocab;
    if ((s = write_topology(d, 1)) != XDS_OK) goto fail;
    d->started = 1;
    if (pthread_create(&d->monitor, NULL, monitor_main, d) == 0) d->monitor_started = 1;
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

int serve_deploy_run(serve_deploy *d, const sigset_t *sigs) {
    int sig = 0;
    while (sigwait(sigs, &sig) != 0) {
    }
    if (!atomic_load(&d->failed))
        fprintf(stderr, "xds serve: %s received; the front-ends finish their streams (send it again to quit at once)\n",
                sig == SIGINT ? "SIGINT" : "SIGTERM");
    /* no new connection: the front-ends close their copies as they quiesce */
    if (d->listen_fd >= 0) close(d->listen_fd), d->listen_fd = -1;
    return sig;
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
    if (d->frontend_mode) { /* a front-end: its request path only */
        serve_deploy_quiesce(d);
        fprintf(stderr, "xds serve: front-end (rank %d): %llu requests routed to the decode groups\n",
                d->fe_self_rank, (unsigned long long)(d->next_id & ((1ull << 48) - 1)));
    }
    if (d->seg || d->n_pids) stop_workers(d, 10.0);
    if (d->seg && d->table) { /* the groups' final counts */
        fprintf(stderr, "xds serve: requests served per decode DP group:");
        for (int g = 0; g < d->decode_dp; g++)
            fprintf(stderr, " group %d: %lld", g, (long long)atomic_load(&d->table->g[g].served));
        fprintf(stderr, "\n");
    }
    for (int i = 0; i < d->n_pids; i++) {
        args_free(d->args_of[i]);
        d->args_of[i] = NULL;
    }
    d->n_pids = 0;
    if (d->rpc) {
        xccl_comm_detach(d->rpc);
        d->rpc = NULL;
    }
    /* requests still at a prefill instance (the HTTP server is stopped by now) */
    while (d->reqs) {
        serve_req *r = d->reqs;
        d->reqs = r->next;
        req_free(r);
    }
    if (d->table) {
        xds_dp_table_close(d->table);
        d->table = NULL;
        if (d->seg) shm_unlink(d->table_name);
    }
    if (d->pick) {
        xds_pd_pick_table_close(d->pick);
        d->pick = NULL;
        if (d->seg) shm_unlink(d->pick_name);
    }
    if (d->mutexes) {
        pthread_mutex_destroy(&d->cmu);
        pthread_mutex_destroy(&d->rmu);
        d->mutexes = 0;
    }
    if (d->seg) {
        char path[96];
        snprintf(path, sizeof path, "/dev/shm%s.topology", d->seg_name);
        unlink(path);
        xccl_segment_destroy(d->seg);
        d->seg = NULL;
    }
    if (d->port_lock[0]) {
        unlink(d->port_lock);
        d->port_lock[0] = 0;
    }
    if (d->listen_fd >= 0 && !d->frontend_mode) close(d->listen_fd), d->listen_fd = -1;
    free_config(d);
}
