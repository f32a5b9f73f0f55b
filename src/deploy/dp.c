/*
 * dp.c — DP groups behind a front-end (dp.h): the load table,
 * the pick policy, the REQ/CANCEL/EVENT/STOP messages and a group's serving
 * loop.
 *
 * Invariants: a group's load record is written only by that group's process
 * (and the front-end's optimistic accounting is not used: figures are what
 * the group published); every request a group accepts ends with exactly one
 * final EVENT to the front-end, also when the engine refuses it.
 */
#define _GNU_SOURCE
#include "deploy/dp.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <xccl.h>

#include "base/log.h"

#define DP_MAGIC 0x58445352u /* "XDSR" */
#define TABLE_MAGIC 0x58445355u /* "XDSU": the layout with the fault counts */
enum { DP_REQ = 1, DP_CANCEL = 2, DP_EVENT = 3, DP_STOP = 4, DP_REQ_IMPORT = 5, DP_FREED = 6 };

static xds_status xerr(xccl_status s, const char *what) {
    xds_status code = s == XCCL_ERR_PEER ? XDS_ERR_PEER : s == XCCL_ERR_TIMEOUT ? XDS_ERR_TIMEOUT : XDS_ERR_IO;
    return xds_err_set(code, "deploy dp: %s: %s", what, xccl_err_msg());
}

/* ---- load table ------------------------------------------------------------ */

static xds_status table_map(const char *name, int create, xds_dp_table **out) {
    int fd = shm_open(name, create ? O_RDWR | O_CREAT | O_EXCL : O_RDWR, 0600);
    if (fd < 0) return xds_err_set(XDS_ERR_IO, "deploy dp: shm_open %s: %s", name, strerror(errno));
    if (create && ftruncate(fd, sizeof(xds_dp_table)) != 0) {
        close(fd);
        shm_unlink(name);
        return xds_err_set(XDS_ERR_IO, "deploy dp: ftruncate %s: %s", name, strerror(errno));
    }
    void *p = mmap(NULL, sizeof(xds_dp_table), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return xds_err_set(XDS_ERR_IO, "deploy dp: mmap %s: %s", name, strerror(errno));
    *out = p;
    return XDS_OK;
}

xds_status xds_dp_table_create(const char *name, int n_groups, xds_dp_table **out) {
    if (n_groups < 1 || n_groups > XDS_DP_MAX_GROUPS)
        return xds_err_set(XDS_ERR_INVALID, "deploy dp: %d groups (1..%d)", n_groups, XDS_DP_MAX_GROUPS);
    xds_dp_table *t;
    XDS_TRY(table_map(name, 1, &t));
    memset(t, 0, sizeof *t);
    t->n_groups = (uint32_t)n_groups;
    t->magic = TABLE_MAGIC;
    *out = t;
    return XDS_OK;
}

xds_status xds_dp_table_open(const char *name, xds_dp_table **out) {
    xds_dp_table *t;
    XDS_TRY(table_map(name, 0, &t));
    if (t->magic != TABLE_MAGIC || t->n_groups < 1 || t->n_groups > XDS_DP_MAX_GROUPS) {
        munmap(t, sizeof *t);
        return xds_err_set(XDS_ERR_FORMAT, "deploy dp: %s is not a load table", name);
    }
    *out = t;
    return XDS_OK;
}

void xds_dp_table_close(xds_dp_table *t) {
    if (t) munmap(t, sizeof *t);
}

static long long blocks_for(int n, int bs) {
    return (n + bs - 1) / bs;
}

void xds_dp_account(xds_dp_table *t, int g, int n_tokens, int block_size, int sign) {
    atomic_fetch_add(&t->g[g].in_flight, sign);
    atomic_fetch_add(&t->g[g].load_blocks, sign * blocks_for(n_tokens, block_size));
    if (sign < 0) atomic_fetch_add(&t->g[g].served, 1);
}

int xds_dp_pick(xds_dp_table *t, int n_tokens, int block_size) {
    return xds_dp_pick_skip(t, n_tokens, block_size, 0);
}

int xds_dp_pick_skip(xds_dp_table *t, int n_tokens, int block_size, uint64_t skip) {
    int n = (int)t->n_groups, start = (int)(atomic_fetch_add(&t->rr, 1) % (unsigned)n);
    int best = -1, best_full = 1;
    double best_load = 0;
    long long need = blocks_for(n_tokens, block_size);
    for (int k = 0; k < n; k++) {
        int g = (start + k) % n;
        xds_dp_load *L = &t->g[g];
        if (!atomic_load(&L->alive) || (g < 64 && (skip >> g & 1))) continue;
        long long kv = atomic_load(&L->kv_blocks), mb = atomic_load(&L->max_batch);
        int full = mb > 0 && atomic_load(&L->in_flight) >= mb;
        double load = kv > 0 ? (double)(atomic_load(&L->load_blocks) + need) / (double)kv : 1e9;
        /* groups not at their batch limit first, then the lowest KV load incl. reserved output */
        if (best < 0 || (best_full && !full) || (full == best_full && load < best_load)) {
            best = g;
            best_full = full;
            best_load = load;
        }
    }
    return best;
}

/* ---- messages ---------------------------------------------------------------- */

typedef struct dp_req_hdr {
    uint32_t magic, cmd;
    uint64_t id;
    int32_t n, n_stop, max_tokens, ignore_eos;
    xds_sampler_params sampling;
    uint32_t stop_bytes, pad;
} dp_req_hdr;

typedef struct dp_ev_hdr {
    uint32_t magic, cmd;
    uint64_t id;
    int32_t token, finish, n_prompt, n_cached, n_gen;
    uint32_t text_len;
} dp_ev_hdr;

typedef struct dp_small {
    uint32_t magic, cmd;
    uint64_t id;
} dp_small;

static xds_status req_send(xccl_comm *comm, int rank, uint64_t id, const int32_t *prompt, int n,
                           const xds_gen_params *p, const xds_pd_task *task) {
    size_t sb = 0;
    for (int i = 0; i < p->n_stop; i++) sb += strlen(p->stop[i]) + 1;
    size_t len = sizeof(dp_req_hdr) + sb + sizeof(int32_t) * (size_t)n + (task ? sizeof *task : 0);
    char *msg = malloc(len);
    if (!msg) return xds_err_set(XDS_ERR_NOMEM, "deploy dp: out of memory");
    dp_req_hdr h = {DP_MAGIC, task ? DP_REQ_IMPORT : DP_REQ, id, n, p->n_stop, p->max_tokens, p->ignore_eos,
                    p->sampling, (uint32_t)sb, 0};
    memcpy(msg, &h, sizeof h);
    char *w = msg + sizeof h;
    for (int i = 0; i < p->n_stop; i++) {
        size_t l = strlen(p->stop[i]) + 1;
        memcpy(w, p->stop[i], l);
        w += l;
    }
    memcpy(w, prompt, sizeof(int32_t) * (size_t)n);
    if (task) memcpy(w + sizeof(int32_t) * (size_t)n, task, sizeof *task);
    xccl_status xs = xccl_send(comm, rank, msg, len);
    free(msg);
    return xs == XCCL_OK ? XDS_OK : xerr(xs, "send a request");
}

xds_status xds_dp_req_send(xccl_comm *comm, int rank, uint64_t id, const int32_t *prompt, int n,
                           const xds_gen_params *p) {
    return req_send(comm, rank, id, prompt, n, p, NULL);
}

xds_status xds_dp_req_send_import(xccl_comm *comm, int rank, uint64_t id, const int32_t *prompt, int n,
                                  const xds_gen_params *p, const xds_pd_task *task) {
    return req_send(comm, rank, id, prompt, n, p, task);
}

static xds_status send_small(xccl_comm *comm, int rank, uint32_t cmd, uint64_t id) {
    dp_small m = {DP_MAGIC, cmd, id};
    xccl_status xs = xccl_send(comm, rank, &m, sizeof m);
    return xs == XCCL_OK ? XDS_OK : xerr(xs, "send a control message");
}

xds_status xds_dp_cancel_send(xccl_comm *comm, int rank, uint64_t id) {
    return send_small(comm, rank, DP_CANCEL, id);
}

xds_status xds_dp_stop_send(xccl_comm *comm, int rank) {
    return send_small(comm, rank, DP_STOP, 0);
}

xds_status xds_dp_event_recv(xccl_comm *comm, int rank, void *buf, size_t cap, xds_gen_event *ev, int *freed) {
    size_t len = 0;
    xccl_status xs = xccl_recv(&len, buf, cap, comm, rank);
    if (xs != XCCL_OK) return xerr(xs, "receive an event");
    dp_ev_hdr h;
    if (len < sizeof h) return xds_err_set(XDS_ERR_PEER, "deploy dp: short event from rank %d", rank);
    memcpy(&h, buf, sizeof h);
    *freed = h.magic == DP_MAGIC && h.cmd == DP_FREED && len == sizeof h;
    if (*freed) {
        *ev = (xds_gen_event){.req_id = h.id, .text = "", .token = -1};
        return XDS_OK;
    }
    if (h.magic != DP_MAGIC || h.cmd != DP_EVENT || len != sizeof h + h.text_len)
        return xds_err_set(XDS_ERR_PEER, "deploy dp: malformed event from rank %d", rank);
    *ev = (xds_gen_event){.req_id = h.id, .text = (const char *)buf + sizeof h, .text_len = h.text_len,
                          .token = h.token, .finish = (xds_finish)h.finish, .n_prompt = h.n_prompt,
                          .n_cached = h.n_cached, .n_gen = h.n_gen};
    return XDS_OK;
}

/* ---- group serving loop ------------------------------------------------------ */

typedef struct grp_req {
    uint64_t front_id, eng_id;
    int front;            /* the front-end rank that sent it: its events go there */
    int n_tokens;
    struct grp_loop *L;
    int importing, freed; /* prompt KV from a prefill instance; pulled (FREED sent) */
    xds_pd_task task;
    struct grp_req *next;
} grp_req;

typedef struct ev_item {
    int dest; /* front-end rank */
    dp_ev_hdr h;
    char *text;
    struct ev_item *next;
} ev_item;

typedef struct grp_loop {
    xds_dp_serve_stats st; /* kv_* written by the engine thread under cmu */
    pthread_mutex_t mu;
    pthread_mutex_t cmu; /* the comm: serving loop + engine thread (imports) */
    xccl_comm *comm;
    ev_item *head, *tail; /* events to send, in order */
    grp_req *reqs;        /* requests in the engine */
    xds_dp_table *t;
    int group, block_size;
} grp_loop;

static void queue_event(grp_loop *L, int dest, const dp_ev_hdr *h, const char *text) {
    ev_item *it = calloc(1, sizeof *it);
    char *tx = h->text_len ? malloc(h->text_len) : NULL;
    if (!it || (h->text_len && !tx)) { /* out of memory: the event is lost, the final one never is skipped */
        free(it), free(tx);
        XDS_LOGE("deploy dp: out of memory queueing an event of request %llu", (unsigned long long)h->id);
        return;
    }
    it->h = *h;
    it->dest = dest;
    if (tx) memcpy(tx, text, h->text_len);
    it->text = tx;
    pthread_mutex_lock(&L->mu);
    if (L->tail) L->tail->next = it;
    else L->head = it;
    L->tail = it;
    pthread_mutex_unlock(&L->mu);
}

static void queue_freed(grp_req *r) { /* the front-end forwards it to the prefill instance */
    if (!r->importing || r->freed) return;
    r->freed = 1;
    dp_ev_hdr h = {DP_MAGIC, DP_FREED, r->front_id, -1, 0, 0, 0, 0, 0};
    queue_event(r->L, r->front, &h, NULL);
}

/* Engine thread: pull prompt positions [from, to) (+ the last token's logits). */
static int grp_import(void *user, struct xds_kv_cache *kv, int slot, int from, int to, float *logits) {
    grp_req *r = user;
    grp_loop *L = r->L;
    if (r->freed) return 0;
    if (to == r->task.n_prompt && !logits) to--;
    if (to <= from) return 0;
    /* test hook (XDS_TEST_KV_PULL_DELAY_MS=N): say a pull begins, then wait N
     * ms before reading the rows, so a test can fail the prefill instance in
     * the middle of a KV transfer */
    static int pull_delay_ms = -1;
    if (pull_delay_ms < 0) {
        const char *e = getenv("XDS_TEST_KV_PULL_DELAY_MS");
        pull_delay_ms = e ? atoi(e) : 0;
    }
    if (pull_delay_ms > 0) {
        fprintf(stderr, "xds worker (decode group %d): test hook: pulling the KV of request %llu, positions [%d, %d) "
                        "from rank %d in %d ms\n", L->group, (unsigned long long)r->front_id, from, to,
                r->task.src_rank, pull_delay_ms);
        usleep((useconds_t)pull_delay_ms * 1000);
    }
    pthread_mutex_lock(&L->cmu);
    uint64_t bytes = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    xds_status s = xds_pd_pull_range(L->comm, &r->task, kv, slot, from, to, &bytes);
    if (s == XDS_OK && to == r->task.n_prompt) s = xds_pd_get_logits(L->comm, &r->task, logits);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    L->st.kv_pulled_bytes += bytes;
    L->st.kv_pull_s += (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
    pthread_mutex_unlock(&L->cmu);
    if (s != XDS_OK) {
        XDS_LOGW("deploy dp: request %llu: KV pull failed (%s); computing the prompt here",
                 (unsigned long long)r->front_id, xds_err_msg());
        /* a prefill instance that died: accept its restart for the next imports */
        pthread_mutex_lock(&L->cmu);
        (void)xccl_peer_reset(L->comm, r->task.src_rank);
        pthread_mutex_unlock(&L->cmu);
        queue_freed(r);
        return 0;
    }
    if (to >= r->task.n_prompt - 1) queue_freed(r);
    return to - from;
}

static void on_event(void *user, const xds_gen_event *ev) { /* engine thread: copy and queue */
    grp_req *r = user;
    grp_loop *L = r->L;
    if (ev->finish != XDS_FINISH_NONE) queue_freed(r); /* ended before its KV was pulled */
    dp_ev_hdr h = {DP_MAGIC, DP_EVENT, r->front_id, ev->token, (int32_t)ev->finish, ev->n_prompt, ev->n_cached,
                   ev->n_gen, (uint32_t)(ev->text_len < XDS_DP_EVENT_MAX - sizeof h ? ev->text_len : 0)};
    queue_event(L, r->front, &h, ev->text);
    if (ev->finish == XDS_FINISH_NONE) return;
    xds_dp_account(L->t, L->group, r->n_tokens, L->block_size, -1);
    pthread_mutex_lock(&L->mu);
    for (grp_req **pp = &L->reqs; *pp; pp = &(*pp)->next)
        if (*pp == r) {
            *pp = r->next;
            break;
        }
    pthread_mutex_unlock(&L->mu);
    free(r);
}

static xds_status flush_events(grp_loop *L, xccl_comm *comm) {
    for (;;) {
        pthread_mutex_lock(&L->mu);
        ev_item *it = L->head;
        if (it) {
            L->head = it->next;
            if (!L->head) L->tail = NULL;
        }
        pthread_mutex_unlock(&L->mu);
        if (!it) return XDS_OK;
        size_t len = sizeof it->h + it->h.text_len;
        char small[1024], *msg = len <= sizeof small ? small : malloc(len);
        if (msg) { /* to a front-end that left, it fails: its requests are cancelled, their events dropped */
            memcpy(msg, &it->h, sizeof it->h);
            if (it->h.text_len) memcpy(msg + sizeof it->h, it->text, it->h.text_len);
            pthread_mutex_lock(&L->cmu);
            (void)xccl_send(comm, it->dest, msg, len);
            pthread_mutex_unlock(&L->cmu);
            if (msg != small) free(msg);
        }
        free(it->text);
        free(it);
    }
}

xds_status xds_dp_group_serve(xds_engine *engine, xccl_comm *comm, const int *fronts, int n_fronts, xds_dp_table *t,
                              int group, int block_size, int max_batch, int own_engine, xds_dp_serve_stats *stats) {
    if (n_fronts < 1 || n_fronts > XDS_DP_MAX_FRONTS) {
        if (own_engine) xds_engine_free(engine, 0);
        return xds_err_set(XDS_ERR_INVALID, "deploy dp: %d front-ends (1..%d)", n_fronts, XDS_DP_MAX_FRONTS);
    }
    grp_loop L = {.t = t, .group = group, .block_size = block_size, .comm = comm};
    pthread_mutex_init(&L.mu, NULL);
    pthread_mutex_init(&L.cmu, NULL);
    xds_engine_stats es;
    xds_engine_stats_get(engine, &es);
    atomic_store(&t->g[group].kv_blocks, es.kv_blocks_total);
    atomic_store(&t->g[group].max_batch, max_batch);
    atomic_store(&t->g[group].alive, 1);
    size_t cap = sizeof(dp_req_hdr) + (1u << 20);
    /* one posted receive per front-end; a message is handled from `buf`
     * after the next receive of that front-end was posted into its buffer */
    char *bufs[XDS_DP_MAX_FRONTS] = {0}, *buf = malloc(cap);
    xccl_request rq[XDS_DP_MAX_FRONTS];
    xccl_request *rp[XDS_DP_MAX_FRONTS] = {0};
    int seen[XDS_DP_MAX_FRONTS] = {0}; /* attached once: a later failed check means it is gone */
    unsigned retry[XDS_DP_MAX_FRONTS] = {0};
    xds_status s = buf ? XDS_OK : xds_err_set(XDS_ERR_NOMEM, "deploy dp: out of memory");
    for (int i = 0; i < n_fronts && s == XDS_OK; i++) {
        bufs[i] = malloc(cap);
        if (!bufs[i]) s = xds_err_set(XDS_ERR_NOMEM, "deploy dp: out of memory");
        else if (xccl_irecv(comm, fronts[i], bufs[i], cap, &rq[i]) != XCCL_OK) s = xerr(XCCL_ERR_INVALID, "receive");
        else rp[i] = &rq[i];
    }
    int32_t *prompt_copy = NULL;
    while (s == XDS_OK) {
        s = flush_events(&L, comm);
        if (s != XDS_OK) break;
        int fi = -1;
        pthread_mutex_lock(&L.cmu);
        xccl_comm_set_timeout(comm, 1);
        xccl_status xs = xccl_waitany(comm, rp, n_fronts, &fi);
        xccl_comm_set_timeout(comm, 10000);
        if (xs == XCCL_OK) { /* take the message, post the next receive */
            char *tmp = buf;
            buf = bufs[fi];
            bufs[fi] = tmp;
        }
        size_t len = xs == XCCL_OK ? xccl_request_len(&rq[fi]) : 0;
        if (xs == XCCL_OK && xccl_irecv(comm, fronts[fi], bufs[fi], cap, &rq[fi]) != XCCL_OK) xs = XCCL_ERR_INVALID;
        pthread_mutex_unlock(&L.cmu);
        if (xs == XCCL_ERR_TIMEOUT || xs == XCCL_ERR_PEER) {
            /* a sender that left or died: cancel its requests, stop listening
             * until it is back (a restarted front-end re-attaches at its
             * rank); with none left, not even the supervisor (fronts[0]),
             * the deployment is gone and the group ends */
            int alive = 0;
            for (int i = 0; i < n_fronts; i++) {
                int ok = xccl_peer_check(comm, fronts[i]) == XCCL_OK;
                alive += ok;
                if (!rp[i]) {
                    /* back (a restarted front-end re-attached at its rank: accept
                     * the new incarnation), at most every 50 ms: listen again */
                    if (seen[i] && ++retry[i] % 50 == 0 && xccl_peer_state(comm, fronts[i]) == XCCL_RANK_ACTIVE) {
                        pthread_mutex_lock(&L.cmu);
                        xccl_status rs = xccl_peer_reset(comm, fronts[i]);
                        if ((rs == XCCL_OK || (rs == XCCL_ERR_INVALID && xccl_peer_check(comm, fronts[i]) == XCCL_OK)) &&
                            xccl_irecv(comm, fronts[i], bufs[i], cap, &rq[i]) == XCCL_OK)
                            rp[i] = &rq[i];
                        pthread_mutex_unlock(&L.cmu);
                        if (rp[i]) XDS_LOGI("deploy dp: group %d: rank %d is back", group, fronts[i]);
                    }
                    continue;
                }
                if (ok) {
                    seen[i] = 1;
                    continue;
                }
                if (!seen[i]) continue; /* still starting: it has not attached yet */
                pthread_mutex_lock(&L.cmu);
                xccl_cancel(comm, &rq[i]);
                pthread_mutex_unlock(&L.cmu);
                rp[i] = NULL;
                pthread_mutex_lock(&L.mu);
                for (grp_req *r = L.reqs; r; r = r->next)
                    if (r->front == fronts[i]) xds_engine_cancel(engine, r->eng_id);
                pthread_mutex_unlock(&L.mu);
            }
            if (!alive && seen[0]) {
                XDS_LOGW("deploy dp: group %d: no front-end and no supervisor left; stopping", group);
                break;
            }
            continue;
        }
        if (xs != XCCL_OK) {
            s = xerr(xs, "receive from the front-end");
            break;
        }
        int front = fronts[fi];
        dp_small sm;
        if (len < sizeof sm) {
            s = xds_err_set(XDS_ERR_PEER, "deploy dp: short message from rank %d", front);
            break;
        }
        memcpy(&sm, buf, sizeof sm);
        if (sm.magic != DP_MAGIC) {
            s = xds_err_set(XDS_ERR_PEER, "deploy dp: malformed message from rank %d", front);
            break;
        }
        if (sm.cmd == DP_STOP) {
            if (fi == 0) break; /* only the supervisor (fronts[0]) stops the group */
            continue;
        }
        if (sm.cmd == DP_CANCEL) {
            pthread_mutex_lock(&L.mu);
            for (grp_req *r = L.reqs; r; r = r->next)
                if (r->front_id == sm.id && r->front == front) xds_engine_cancel(engine, r->eng_id);
            pthread_mutex_unlock(&L.mu);
            continue;
        }
        dp_req_hdr h;
        int imp = sm.cmd == DP_REQ_IMPORT;
        if ((sm.cmd != DP_REQ && !imp) || len < sizeof h) {
            s = xds_err_set(XDS_ERR_PEER, "deploy dp: unknown message %u from rank %d", sm.cmd, front);
            break;
        }
        memcpy(&h, buf, sizeof h);
        if (h.n <= 0 || h.n_stop < 0 || h.n_stop > 64 ||
            len != sizeof h + h.stop_bytes + sizeof(int32_t) * (size_t)h.n + (imp ? sizeof(xds_pd_task) : 0)) {
            s = xds_err_set(XDS_ERR_PEER, "deploy dp: bad request from rank %d", front);
            break;
        }
        const char *stops[64];
        const char *sp = buf + sizeof h, *send = sp + h.stop_bytes;
        int ok = 1;
        for (int i = 0; i < h.n_stop; i++) {
            const char *z = memchr(sp, 0, (size_t)(send - sp));
            if (!z) ok = 0;
            if (!ok) break;
            stops[i] = sp;
            sp = z + 1;
        }
        free(prompt_copy);
        prompt_copy = malloc(sizeof(int32_t) * (size_t)h.n);
        if (!ok || !prompt_copy) {
            s = xds_err_set(ok ? XDS_ERR_NOMEM : XDS_ERR_PEER, "deploy dp: request %llu unusable",
                            (unsigned long long)h.id);
            break;
        }
        memcpy(prompt_copy, send, sizeof(int32_t) * (size_t)h.n);
        xds_gen_params p = {.max_tokens = h.max_tokens, .sampling = h.sampling, .stop = stops, .n_stop = h.n_stop,
                            .ignore_eos = h.ignore_eos};
        grp_req *r = calloc(1, sizeof *r);
        if (!r) {
            s = xds_err_set(XDS_ERR_NOMEM, "deploy dp: out of memory");
            break;
        }
        r->front_id = h.id;
        r->front = front;
        L.st.requests++;
        r->n_tokens = h.n + h.max_tokens;
        r->L = &L;
        if (imp) {
            memcpy(&r->task, send + sizeof(int32_t) * (size_t)h.n, sizeof r->task);
            r->importing = r->task.n_prompt == h.n;
        }
        xds_dp_account(t, group, r->n_tokens, block_size, +1);
        pthread_mutex_lock(&L.mu); /* before submit: the final event may come at once */
        r->next = L.reqs;
        L.reqs = r;
        xds_status es2 = r->importing ? xds_engine_submit_import(engine, prompt_copy, h.n, &p, on_event, r, grp_import,
                                                                 r, &r->eng_id)
                                      : xds_engine_submit(engine, prompt_copy, h.n, &p, on_event, r, &r->eng_id);
        if (es2 != XDS_OK) {
            L.reqs = r->next;
            pthread_mutex_unlock(&L.mu);
            XDS_LOGW("deploy dp: request %llu refused: %s", (unsigned long long)h.id, xds_err_msg());
            xds_dp_account(t, group, r->n_tokens, block_size, -1);
            dp_ev_hdr eh = {DP_MAGIC, DP_EVENT, h.id, -1, XDS_FINISH_ERROR, h.n, 0, 0, 0};
            queue_freed(r);
            queue_event(&L, front, &eh, NULL);
            free(r);
            continue;
        }
        pthread_mutex_unlock(&L.mu);
    }
    atomic_store(&t->g[group].alive, 0);
    free(prompt_copy);
    free(buf);
    pthread_mutex_lock(&L.cmu);
    for (int i = 0; i < n_fronts; i++) {
        if (rp[i]) xccl_cancel(comm, &rq[i]);
        free(bufs[i]);
    }
    pthread_mutex_unlock(&L.cmu);
    /* abort what is left (its callbacks still use L), then drop unsent events */
    if (own_engine) {
        xds_engine_free(engine, 0);
    } else { /* a borrowed engine: cancel ours and wait (bounded) for their final events */
        pthread_mutex_lock(&L.mu);
        for (grp_req *r = L.reqs; r; r = r->next) xds_engine_cancel(engine, r->eng_id);
        pthread_mutex_unlock(&L.mu);
        for (int i = 0; i < 10000; i++) {
            pthread_mutex_lock(&L.mu);
            int left = L.reqs != NULL;
            pthread_mutex_unlock(&L.mu);
            if (!left) break;
            usleep(1000);
        }
    }
    pthread_mutex_destroy(&L.cmu);
    pthread_mutex_lock(&L.mu);
    while (L.head) {
        ev_item *it = L.head;
        L.head = it->next;
        free(it->text);
        free(it);
    }
    pthread_mutex_unlock(&L.mu);
    if (stats) *stats = L.st;
    return s;
}
