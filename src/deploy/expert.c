/*
 * expert.c — disaggregated MoE-attention (expert.h): expert placement, the
 * attention-side executor (micro-batch ping-pong) and the expert-worker loop,
 * over per-pair XCCL streams.
 *
 * Message layout (both directions): a 64-byte header, then (attention ->
 * worker only) the rows per local slot as int32 [n_slots] padded to 64
 * bytes, then the rows f32 [n_rows][n_embd] grouped by local slot in slot
 * order. The worker's reply carries its output rows in the same order.
 *
 * Invariants: an attention rank has at most one outstanding message per
 * (micro-batch, worker) — or, after a failover, a second one that the
 * worker reads only after this rank took its first reply — and finishes a
 * micro-batch's MoE layer before it sends that micro-batch's next one, so a
 * worker's output buffer for (source, micro-batch) is free again (its send
 * completed) by the time the next message for it arrives. Every wait has a
 * deadline: an idle worker re-checks the liveness of its sources each time
 * the XCCL deadline passes.
 *
 * Failover (issue 13): a worker whose wait fails (dead: pidfd, at once;
 * hung: stale progress heartbeat, 1.5 s; restarted: new XCCL incarnation)
 * is left out and declared dead, and every (t, j) of the layer in flight
 * whose reply it owed is re-sent to the next live replica of its expert in
 * rotation order, or — when it was the only holder — after a bounded wait
 * (rejoin_s) for its restart; a restart is taken back between passes once
 * xccl_peer_reset accepted its new incarnation and it said READY with the
 * same experts. Replicas compute bit-identical rows and the combine sums in
 * k order whichever worker answered, so the logits equal the fault-free
 * run's. Each reply slot remembers the incarnation it was sent to, so news
 * about an old incarnation never marks a restarted worker failed. The worker
 * loop likewise survives an attention rank's failure: it serves the others
 * and says READY again to the restarted rank. Only what failover cannot
 * cure (no holder back within rejoin_s, a malformed reply, this rank
 * declared dead) fails a pass; then the attention side refuses further ones.
 */
#define _GNU_SOURCE
#include "deploy/expert.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <xccl.h>

#include "base/log.h"
#include "server/metrics.h"
#include "kernels/kernels.h"
#include "model/moe.h"

#define MSG_MAGIC 0x58445345u /* "XDSE" */
enum { CMD_MOE = 1, CMD_STOP = 2, CMD_READY = 3, CMD_OUT = 4 };

typedef struct msg_hdr {
    uint32_t magic, cmd;
    int32_t layer, mb;
    int32_t n_rows, n_slots;
    uint64_t seq;
    uint64_t check; /* READY: checksum of the worker's expert list */
    uint8_t pad[24];
} msg_hdr;
_Static_assert(sizeof(msg_hdr) == 64, "deploy message header is 64 bytes");

static size_t align64(size_t x) {
    return (x + 63) & ~(size_t)63;
}
/* Offset of the rows in an attention -> worker message with n_slots slots. */
static size_t rows_off(int n_slots) {
    return sizeof(msg_hdr) + align64(sizeof(int32_t) * (size_t)n_slots);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static xds_status xerr(xccl_status s, const char *what) {
    xds_status code = s == XCCL_ERR_PEER ? XDS_ERR_PEER : s == XCCL_ERR_TIMEOUT ? XDS_ERR_TIMEOUT : XDS_ERR_IO;
    return xds_err_set(code, "deploy: %s: %s", what, xccl_err_msg());
}

/* ---- placement ------------------------------------------------------------ */

void xds_deploy_placement_free(xds_deploy_placement *p) {
    if (!p) return;
    free(p->n_local), free(p->slot_expert), free(p->n_rep), free(p->rep);
    memset(p, 0, sizeof *p);
}

xds_status xds_deploy_placement_lists(int n_expert, int n_workers, const int *const *lists, const int *n_lists,
                                      xds_deploy_placement *out) {
    if (n_expert < 1) return xds_err_set(XDS_ERR_INVALID, "placement: the model has no routed experts to place");
    if (n_workers < 1 || n_workers > XDS_DEPLOY_MAX_WORKERS)
        return xds_err_set(XDS_ERR_INVALID, "placement: %d expert workers (1..%d)", n_workers,
                           XDS_DEPLOY_MAX_WORKERS);
    xds_deploy_placement p = {.n_expert = n_expert, .n_workers = n_workers};
    for (int w = 0; w < n_workers; w++) {
        if (n_lists[w] < 0 || n_lists[w] > n_expert)
            return xds_err_set(XDS_ERR_INVALID, "placement: worker %d holds %d experts (0..%d)", w, n_lists[w],
                               n_expert);
        if (n_lists[w] > p.max_local) p.max_local = n_lists[w];
    }
    if (p.max_local == 0) p.max_local = 1;
    p.n_local = calloc((size_t)n_workers, sizeof(int));
    p.slot_expert = malloc(sizeof(int) * (size_t)n_workers * (size_t)p.max_local);
    p.n_rep = calloc((size_t)n_expert, sizeof(int));
    if (!p.n_local || !p.slot_expert || !p.n_rep) {
        xds_deploy_placement_free(&p);
        return xds_err_set(XDS_ERR_NOMEM, "placement: out of memory");
    }
    for (int w = 0; w < n_workers; w++) {
        p.n_local[w] = n_lists[w];
        for (int s = 0; s < p.max_local; s++) {
            int e = s < n_lists[w] ? lists[w][s] : -1;
            if (s < n_lists[w]) {
                if (e < 0 || e >= n_expert) {
                    xds_deploy_placement_free(&p);
                    return xds_err_set(XDS_ERR_INVALID, "placement: worker %d: expert %d out of range 0..%d", w, e,
                                       n_expert - 1);
                }
                for (int s2 = 0; s2 < s; s2++)
                    if (lists[w][s2] == e) {
                        xds_deploy_placement_free(&p);
                        return xds_err_set(XDS_ERR_INVALID, "placement: worker %d lists expert %d twice", w, e);
                    }
                p.n_rep[e]++;
            }
            p.slot_expert[w * p.max_local + s] = e;
        }
    }
    for (int e = 0; e < n_expert; e++) {
        if (p.n_rep[e] == 0) {
            xds_deploy_placement_free(&p);
            return xds_err_set(XDS_ERR_INVALID, "placement: cannot place every expert: expert %d is on no worker", e);
        }
        if (p.n_rep[e] > p.max_rep) p.max_rep = p.n_rep[e];
    }
    p.rep = malloc(sizeof(int) * (size_t)n_expert * (size_t)p.max_rep);
    if (!p.rep) {
        xds_deploy_placement_free(&p);
        return xds_err_set(XDS_ERR_NOMEM, "placement: out of memory");
    }
    memset(p.n_rep, 0, sizeof(int) * (size_t)n_expert);
    for (int w = 0; w < n_workers; w++)
        for (int s = 0; s < p.n_local[w]; s++) {
            int e = p.slot_expert[w * p.max_local + s];
            p.rep[e * p.max_rep + p.n_rep[e]++] = w * p.max_local + s;
        }
    *out = p;
    return XDS_OK;
}

xds_status xds_deploy_placement_blocks(int n_expert, int n_workers, xds_deploy_placement *out) {
    if (n_workers < 1 || n_workers > XDS_DEPLOY_MAX_WORKERS)
        return xds_err_set(XDS_ERR_INVALID, "placement: %d expert workers (1..%d)", n_workers,
                           XDS_DEPLOY_MAX_WORKERS);
    if (n_expert < 1) return xds_err_set(XDS_ERR_INVALID, "placement: the model has no routed experts to place");
    int per = (n_expert + n_workers - 1) / n_workers;
    int *ids = malloc(sizeof(int) * (size_t)n_expert);
    const int *lists[XDS_DEPLOY_MAX_WORKERS];
    int n_lists[XDS_DEPLOY_MAX_WORKERS];
    if (!ids) return xds_err_set(XDS_ERR_NOMEM, "placement: out of memory");
    for (int e = 0; e < n_expert; e++) ids[e] = e;
    for (int w = 0; w < n_workers; w++) {
        int first = w * per < n_expert ? w * per : n_expert;
        int last = first + per < n_expert ? first + per : n_expert;
        lists[w] = ids + first;
        n_lists[w] = last - first;
    }
    xds_status s = xds_deploy_placement_lists(n_expert, n_workers, lists, n_lists, out);
    free(ids);
    return s;
}

xds_status xds_deploy_placement_replicated(int n_expert, int n_workers, int replicas, xds_deploy_placement *out) {
    if (replicas <= 1 || n_workers <= 1) return xds_deploy_placement_blocks(n_expert, n_workers, out);
    if (n_workers > XDS_DEPLOY_MAX_WORKERS)
        return xds_err_set(XDS_ERR_INVALID, "placement: %d expert workers (1..%d)", n_workers,
                           XDS_DEPLOY_MAX_WORKERS);
    if (n_expert < 1) return xds_err_set(XDS_ERR_INVALID, "placement: the model has no routed experts to place");
    if (replicas > n_workers) replicas = n_workers;
    int per = (n_expert + n_workers - 1) / n_workers;
    int *ids = malloc(sizeof(int) * (size_t)n_expert * (size_t)n_workers);
    if (!ids) return xds_err_set(XDS_ERR_NOMEM, "placement: out of memory");
    const int *lists[XDS_DEPLOY_MAX_WORKERS];
    int n_lists[XDS_DEPLOY_MAX_WORKERS];
    for (int w = 0; w < n_workers; w++) {
        int *l = ids + (size_t)w * (size_t)n_expert, n = 0;
        /* blocks w, w+1, ..., w+replicas-1 (mod workers), in expert order */
        for (int e = 0; e < n_expert; e++) {
            int b = e / per, d = (b - w + n_workers) % n_workers;
            if (d < replicas) l[n++] = e;
        }
        lists[w] = l;
        n_lists[w] = n;
    }
    xds_status s = xds_deploy_placement_lists(n_expert, n_workers, lists, n_lists, out);
    free(ids);
    return s;
}

xds_status xds_deploy_placement_parse(const char *text, int n_expert, xds_deploy_placement *out) {
    int n_workers = 1;
    for (const char *c = text; *c; c++) n_workers += *c == ';';
    if (n_workers > XDS_DEPLOY_MAX_WORKERS)
        return xds_err_set(XDS_ERR_INVALID, "placement '%.40s': more than %d workers", text, XDS_DEPLOY_MAX_WORKERS);
    size_t len = strlen(text);
    int *ids = malloc(sizeof(int) * (len + 1));
    if (!ids) return xds_err_set(XDS_ERR_NOMEM, "placement: out of memory");
    const int *lists[XDS_DEPLOY_MAX_WORKERS];
    int n_lists[XDS_DEPLOY_MAX_WORKERS] = {0};
    int n = 0, w = 0;
    const char *c = text;
    lists[0] = ids;
    while (*c) {
        if (*c == ';') {
            lists[++w] = ids + n;
            c++;
            continue;
        }
        if (*c == ',' && n_lists[w] > 0) c++;
        char *end = NULL;
        long v = strtol(c, &end, 10);
        if (end == c || v < 0 || v > 1 << 20 || (*end && *end != ',' && *end != ';')) {
            free(ids);
            return xds_err_set(XDS_ERR_INVALID, "placement '%.40s': bad expert list at '%.10s'", text, c);
        }
        ids[n++] = (int)v;
        n_lists[w]++;
        c = end;
    }
    xds_status s = xds_deploy_placement_lists(n_expert, n_workers, lists, n_lists, out);
    free(ids);
    return s;
}

char *xds_deploy_placement_format(const xds_deploy_placement *p) {
    size_t cap = 16 + (size_t)p->n_workers + (size_t)p->n_workers * (size_t)p->max_local * 8, len = 0;
    char *s = malloc(cap);
    if (!s) return NULL;
    s[0] = 0;
    for (int w = 0; w < p->n_workers; w++) {
        if (w) s[len++] = ';';
        for (int k = 0; k < p->n_local[w]; k++)
            len += (size_t)snprintf(s + len, cap - len, k ? ",%d" : "%d", p->slot_expert[w * p->max_local + k]);
        s[len] = 0;
    }
    return s;
}

/* What a worker reports in READY, so a mismatched placement is caught. */
static uint64_t placement_check(const xds_deploy_placement *p, int w) {
    uint64_t h = 1469598103934665603ull ^ (uint64_t)p->n_local[w];
    for (int s = 0; s < p->n_local[w]; s++) h = (h ^ (uint64_t)(uint32_t)p->slot_expert[w * p->max_local + s]) *
                                                1099511628211ull;
    return h;
}

void xds_deploy_xccl_config(int n_ranks, xccl_config *cfg) {
    xccl_config_default(cfg, (uint32_t)n_ranks);
    cfg->slot_bytes = 32768;
    cfg->num_slots = 8;
    cfg->coll_bytes = 4096;
    /* issue 13's bounds: a death is seen at once (pidfd), a hang within
     * 1.5 s + one beat (< 2 s). Loops in progress mode (the expert workers)
     * call xccl_comm_progress between experts, so a long batch is not a hang.
     * XDS_HANG_MS overrides (e.g. for sanitizer builds on a loaded host). */
    const char *v = getenv("XDS_HANG_MS");
    long ms = v ? atol(v) : 0;
    cfg->heartbeat_timeout_ms = ms >= 100 && ms <= 600000 ? (uint32_t)ms : 1500;
}

/* ---- attention side ------------------------------------------------------- */

/* A re-sent part of an MoE layer (failover): the rows of (t, j) whose
 * worker failed, sent to another replica of their expert or to the
 * restarted worker. Own buffers in ordinary memory: a rare path. */
typedef struct sup_slot {
    int worker, rows;
    int st;                /* 0 in flight, 1 reply taken, 2 failed */
    uint32_t inc;          /* the worker's incarnation it was sent to */
    uint8_t *send, *recv;
    size_t send_cap, recv_cap;
    xccl_request sreq, rreq;
} sup_slot;

typedef struct mb_state {
    int t0, n;             /* token range of the batch */
    int pending;           /* an MoE layer is at the workers */
    int layer;             /* ... this one */
    float *xn;             /* (max_tok, n_embd) normed FFN input, then the combined output */
    float *sh;             /* (max_tok, n_embd) shared experts' output */
    int32_t *ids;          /* (max_tok, k) */
    float *w;              /* (max_tok, k) routing weights */
    int32_t *route_w;      /* (max_tok, k) worker of (t, j) */
    int32_t *route_row;    /* (max_tok, k) row of (t, j) in that worker's reply */
    size_t send_off;       /* this micro-batch's part of the send region */
    int32_t *rows;         /* (n_workers) rows sent to each worker */
    size_t *woff;          /* (n_workers) message offset in the send region */
    uint8_t **rbuf;        /* (n_workers) reply buffers */
    xccl_request *sreq, *rreq; /* (n_workers) */
    int *pst;              /* (n_workers) 0 in flight, 1 reply taken, 2 failed */
    uint32_t *pinc;        /* (n_workers) the worker's incarnation the message went to */
    sup_slot *sup;         /* re-sent parts of this layer: route_w = n_workers + index */
    int n_sup, cap_sup;
} mb_state;

struct xds_deploy_attn {
    const xds_model *m;
    xccl_comm *comm;
    const xds_deploy_placement *pl; /* copied: owned */
    xds_deploy_placement own;
    int n_workers, max_tok, n_mb, K, E;
    int wrank[XDS_DEPLOY_MAX_WORKERS];
    size_t rcap[XDS_DEPLOY_MAX_WORKERS]; /* reply buffer bytes of each worker */
    float *x;                            /* (max_tok, n_embd) hidden */
    int32_t *cnt;                        /* (n_workers * max_local) rows per (worker, slot) */
    int32_t *fill;                       /* (n_workers * max_local) */
    double *acc;                         /* (n_embd) */
    xccl_region reg;                     /* send buffers of both micro-batches */
    int reg_ok;
    mb_state mb[XDS_DEPLOY_MAX_MB];
    uint64_t step;
    int broken; /* a pass failed beyond failover (no live replica and no rejoin, malformed reply) */
    /* failover: a worker that failed is left out (and declared dead) until
     * its restarted process has been accepted (xccl_peer_reset) and said READY */
    int wdead[XDS_DEPLOY_MAX_WORKERS];
    msg_hdr wready_buf[XDS_DEPLOY_MAX_WORKERS];
    xccl_request wready[XDS_DEPLOY_MAX_WORKERS];
    int wready_posted[XDS_DEPLOY_MAX_WORKERS];
    double rejoin_s; /* how long a layer waits for a restart of the only holders of an expert */
    xds_deploy_stats st;
    xds_fault_counts *faults; /* the deployment's shared counts (borrowed; may be NULL) */
    int exit_on_break;        /* end the process when a pass fails beyond failover */
};

static void mb_cancel(xds_deploy_attn *a, mb_state *s) {
    for (int w = 0; w < a->n_workers && s->sreq; w++) {
        xccl_cancel(a->comm, &s->sreq[w]);
        xccl_cancel(a->comm, &s->rreq[w]);
    }
    for (int k = 0; k < s->n_sup; k++) {
        xccl_cancel(a->comm, &s->sup[k].sreq);
        xccl_cancel(a->comm, &s->sup[k].rreq);
    }
    s->n_sup = 0;
    s->pending = 0;
}

void xds_deploy_attn_set_fault_counts(xds_deploy_attn *a, xds_fault_counts *c) {
    if (a) a->faults = c;
}

void xds_deploy_attn_set_exit_on_break(xds_deploy_attn *a, int on) {
    if (a) a->exit_on_break = on != 0;
}

void xds_deploy_attn_free(xds_deploy_attn *a) {
    if (!a) return;
    for (int i = 0; i < XDS_DEPLOY_MAX_MB; i++) {
        mb_state *s = &a->mb[i];
        mb_cancel(a, s);
        free(s->xn), free(s->sh), free(s->ids), free(s->w), free(s->route_w), free(s->route_row);
        free(s->rows), free(s->woff), free(s->sreq), free(s->rreq), free(s->pst), free(s->pinc);
        for (int k = 0; k < s->cap_sup; k++) free(s->sup[k].send), free(s->sup[k].recv);
        free(s->sup);
        if (s->rbuf)
            for (int w = 0; w < a->n_workers; w++) free(s->rbuf[w]);
        free(s->rbuf);
    }
    for (int w = 0; w < a->n_workers; w++)
        if (a->wready_posted[w]) xccl_cancel(a->comm, &a->wready[w]);
    if (a->reg_ok) xccl_region_deregister(a->comm, &a->reg);
    free(a->x), free(a->cnt), free(a->fill), free(a->acc);
    xds_deploy_placement_free(&a->own);
    free(a);
}

static xds_status copy_placement(const xds_deploy_placement *src, xds_deploy_placement *dst) {
    const int *lists[XDS_DEPLOY_MAX_WORKERS];
    for (int w = 0; w < src->n_workers; w++) lists[w] = src->slot_expert + w * src->max_local;
    return xds_deploy_placement_lists(src->n_expert, src->n_workers, lists, src->n_local, dst);
}

xds_status xds_deploy_attn_create(const xds_model *m, xccl_comm *comm, const int *worker_ranks,
                                  const xds_deploy_placement *pl, int max_tok, int micro_batches,
                                  xds_deploy_attn **out) {
    const xds_model_config *c = &m->cfg;
    if (c->moe.n_expert <= 0)
        return xds_err_set(XDS_ERR_INVALID, "deploy: the model (%s) has no MoE layers to place on expert workers",
                           xds_arch_name(c->arch));
    if (pl->n_expert != c->moe.n_expert)
        return xds_err_set(XDS_ERR_INVALID, "deploy: the placement is for %d experts, the model has %d", pl->n_expert,
                           c->moe.n_expert);
    if (max_tok < 1 || max_tok > (1 << 20))
        return xds_err_set(XDS_ERR_INVALID, "deploy: max_tok %d out of range", max_tok);
    if (micro_batches < 1 || micro_batches > XDS_DEPLOY_MAX_MB)
        return xds_err_set(XDS_ERR_INVALID, "deploy: %d micro-batches (1..%d)", micro_batches, XDS_DEPLOY_MAX_MB);
    for (int w = 0; w < pl->n_workers; w++)
        if (worker_ranks[w] < 0 || worker_ranks[w] >= xccl_comm_size(comm) || worker_ranks[w] == xccl_comm_rank(comm))
            return xds_err_set(XDS_ERR_INVALID, "deploy: expert worker %d at rank %d (segment of %d ranks, I am %d)",
                               w, worker_ranks[w], xccl_comm_size(comm), xccl_comm_rank(comm));
    xds_deploy_attn *a = calloc(1, sizeof *a);
    if (!a) return xds_err_set(XDS_ERR_NOMEM, "deploy: out of memory");
    a->m = m;
    a->comm = comm;
    xds_status st = copy_placement(pl, &a->own);
    if (st != XDS_OK) {
        free(a);
        return st;
    }
    a->pl = &a->own;
    a->n_workers = pl->n_workers;
    a->max_tok = max_tok;
    a->n_mb = micro_batches;
    a->K = c->moe.n_expert_used;
    a->E = c->n_embd;
    const char *rj = getenv("XDS_EXPERT_REJOIN_S");
    a->rejoin_s = rj && atof(rj) > 0 ? atof(rj) : 10.0;
    size_t E = (size_t)a->E, K = (size_t)a->K, T = (size_t)max_tok, W = (size_t)a->n_workers;
    for (int w = 0; w < a->n_workers; w++) {
        a->wrank[w] = worker_ranks[w];
        size_t per = (size_t)(pl->n_local[w] < a->K ? pl->n_local[w] : a->K);
        a->rcap[w] = sizeof(msg_hdr) + T * per * E * sizeof(float);
    }
    a->x = malloc(sizeof(float) * T * E);
    a->cnt = malloc(sizeof(int32_t) * W * (size_t)pl->max_local);
    a->fill = malloc(sizeof(int32_t) * W * (size_t)pl->max_local);
    a->acc = malloc(sizeof(double) * E);
    int ok = a->x && a->cnt && a->fill && a->acc;
    /* one micro-batch's send area: every worker's header + counts, and at
     * most T*K rows in all */
    size_t area = W * (rows_off(pl->max_local) + 64) + T * K * E * sizeof(float);
    area = align64(area);
    for (int i = 0; i < micro_batches && ok; i++) {
        mb_state *s = &a->mb[i];
        s->xn = malloc(sizeof(float) * T * E);
        s->sh = malloc(sizeof(float) * T * E);
        s->ids = malloc(sizeof(int32_t) * T * K);
        s->w = malloc(sizeof(float) * T * K);
        s->route_w = malloc(sizeof(int32_t) * T * K);
        s->route_row = malloc(sizeof(int32_t) * T * K);
        s->rows = calloc(W, sizeof(int32_t));
        s->woff = calloc(W, sizeof(size_t));
        s->sreq = calloc(W, sizeof(xccl_request));
        s->rreq = calloc(W, sizeof(xccl_request));
        s->rbuf = calloc(W, sizeof(uint8_t *));
        s->pst = calloc(W, sizeof(int));
        s->pinc = calloc(W, sizeof(uint32_t));
        s->send_off = (size_t)i * area;
        ok = s->xn && s->sh && s->ids && s->w && s->route_w && s->route_row && s->rows && s->woff && s->sreq &&
             s->rreq && s->rbuf && s->pst && s->pinc;
        for (int w = 0; w < a->n_workers && ok; w++) ok = (s->rbuf[w] = malloc(a->rcap[w])) != NULL;
    }
    if (!ok) {
        xds_deploy_attn_free(a);
        return xds_err_set(XDS_ERR_NOMEM, "deploy: out of memory (%zu tokens)", T);
    }
    xccl_status xs = xccl_region_alloc(&a->reg, area * (size_t)micro_batches, comm);
    if (xs != XCCL_OK) {
        xds_deploy_attn_free(a);
        return xerr(xs, "send region");
    }
    a->reg_ok = 1;
    /* every worker says READY once it has attached and loaded its experts */
    for (int w = 0; w < a->n_workers; w++) {
        msg_hdr h;
        size_t len = 0;
        double end = now_s() + 120.0; /* the workers may still be loading the model */
        while ((xs = xccl_recv(&len, &h, sizeof h, comm, a->wrank[w])) == XCCL_ERR_TIMEOUT && now_s() < end)
            if (xccl_peer_check(comm, a->wrank[w]) != XCCL_OK) break;
        if (xs != XCCL_OK) {
            xds_deploy_attn_free(a);
            return xerr(xs, "waiting for an expert worker to become ready");
        }
        if (len != sizeof h || h.magic != MSG_MAGIC || h.cmd != CMD_READY) {
            xds_deploy_attn_free(a);
            return xds_err_set(XDS_ERR_PEER, "deploy: rank %d sent a malformed ready message", worker_ranks[w]);
        }
        if (h.n_slots != pl->n_local[w] || h.check != placement_check(pl, w)) {
            xds_deploy_attn_free(a);
            return xds_err_set(XDS_ERR_PEER,
                               "deploy: expert worker %d (rank %d) holds other experts (%d) than this placement "
                               "gives it (%d): the two sides were started with different placements",
                               w, worker_ranks[w], h.n_slots, pl->n_local[w]);
        }
    }
    *out = a;
    return XDS_OK;
}

void xds_deploy_attn_stats(const xds_deploy_attn *a, xds_deploy_stats *out) {
    *out = a->st;
}

void xds_deploy_attn_stop(xds_deploy_attn *a) {
    if (!a) return;
    msg_hdr h = {.magic = MSG_MAGIC, .cmd = CMD_STOP, .seq = a->step};
    for (int w = 0; w < a->n_workers; w++) /* each worker on its own: a dead one does not stop the rest */
        if (!a->wdead[w] && xccl_send(a->comm, a->wrank[w], &h, sizeof h) != XCCL_OK)
            XDS_LOGW("deploy: stop message to rank %d: %s", a->wrank[w], xccl_err_msg());
}

void xds_deploy_attn_set_rejoin_timeout(xds_deploy_attn *a, double seconds) {
    if (a && seconds > 0) a->rejoin_s = seconds;
}

int xds_deploy_attn_worker_alive(const xds_deploy_attn *a, int w) {
    return a && w >= 0 && w < a->n_workers && !a->wdead[w];
}

static void poll_rejoin(xds_deploy_attn *a);

int xds_deploy_attn_poll(xds_deploy_attn *a) {
    if (!a) return 0;
    poll_rejoin(a);
    int out = 0;
    for (int w = 0; w < a->n_workers; w++) out += a->wdead[w];
    return out;
}

/* ---- failover ------------------------------------------------------------- */

/* Worker w failed (died, hung, or its stream broke): leave it out, declare
 * it dead (a hung process must not come back as itself: it fails its next
 * XCCL call and exits, and its supervisor restarts it), and drop what is in
 * flight with it; the rows it had are re-sent by moe_finish. */
static void worker_failed(xds_deploy_attn *a, int w, uint32_t inc, const char *why) {
    if (a->wdead[w] || inc != xccl_peer_incarnation(a->comm, a->wrank[w])) return; /* news of an old incarnation */
    a->wdead[w] = 1;
    a->wready_posted[w] = 0;
    a->st.failovers++;
    xds_fault_count_failover(a->faults, "expert");
    xccl_peer_declare_dead(a->comm, a->wrank[w]);
    XDS_LOGW("deploy: expert worker %d (rank %d) failed: %s; its rows go to other replicas or to its restart", w,
             a->wrank[w], why);
    for (int i = 0; i < a->n_mb; i++) {
        mb_state *s = &a->mb[i];
        if (!s->sreq) continue;
        xccl_cancel(a->comm, &s->sreq[w]);
        xccl_cancel(a->comm, &s->rreq[w]);
        for (int k = 0; k < s->n_sup; k++)
            if (s->sup[k].worker == w) {
                xccl_cancel(a->comm, &s->sup[k].sreq);
                xccl_cancel(a->comm, &s->sup[k].rreq);
            }
    }
}

/* Take back failed workers whose restarted process has attached (a new
 * incarnation, accepted with xccl_peer_reset) and said READY with the same
 * experts. Never blocks. */
static void poll_rejoin(xds_deploy_attn *a) {
    for (int w = 0; w < a->n_workers; w++) {
        if (!a->wdead[w]) continue;
        if (!a->wready_posted[w]) {
            if (xccl_peer_reset(a->comm, a->wrank[w]) != XCCL_OK) continue; /* not back yet */
            if (xccl_irecv(a->comm, a->wrank[w], &a->wready_buf[w], sizeof(msg_hdr), &a->wready[w]) != XCCL_OK)
                continue;
            a->wready_posted[w] = 1;
        }
        int done = 0;
        xccl_status xs = xccl_test(a->comm, &a->wready[w], &done);
        if (!done) continue;
        a->wready_posted[w] = 0;
        if (xs != XCCL_OK) continue; /* the newcomer failed as well: reset again later */
        const msg_hdr *h = &a->wready_buf[w];
        if (xccl_request_len(&a->wready[w]) != sizeof *h || h->magic != MSG_MAGIC || h->cmd != CMD_READY ||
            h->n_slots != a->pl->n_local[w] || h->check != placement_check(a->pl, w)) {
            XDS_LOGW("deploy: restarted expert worker %d (rank %d) sent no READY for its experts: left out", w,
                     a->wrank[w]);
            xccl_peer_declare_dead(a->comm, a->wrank[w]);
            continue;
        }
        a->wdead[w] = 0;
        a->st.rejoins++;
        XDS_LOGI("deploy: expert worker %d (rank %d, incarnation %u) rejoined", w, a->wrank[w],
                 xccl_peer_incarnation(a->comm, a->wrank[w]));
    }
}

/* Worker and local slot of the replica that takes (token t, expert e): t
 * counts batch position plus pass number, so replicas share the tokens of
 * one batch and, over passes, the single token of a one-sequence batch. A
 * failed replica's turn goes to the next live one. -1 if none is live. */
static inline int route_to(const xds_deploy_attn *a, int e, int t, int *w, int *slot) {
    const xds_deploy_placement *pl = a->pl;
    int n = pl->n_rep[e], r0 = n > 1 ? t % n : 0;
    for (int i = 0; i < n; i++) {
        int packed = pl->rep[e * pl->max_rep + (r0 + i) % n];
        if (a->wdead[packed / pl->max_local]) continue;
        *w = packed / pl->max_local;
        *slot = packed % pl->max_local;
        return 0;
    }
    return -1;
}

/* Wait (bounded by rejoin_s) until some worker holding expert e is live
 * again: the only holders failed, so the layer waits for a restart. */
static xds_status wait_expert(xds_deploy_attn *a, int e) {
    const xds_deploy_placement *pl = a->pl;
    int w0 = pl->rep[e * pl->max_rep] / pl->max_local, w = 0, sl = 0;
    double t0 = now_s(), end = t0 + a->rejoin_s;
    XDS_LOGW("deploy: expert %d has no live worker: waiting up to %.0f s for rank %d to restart", e, a->rejoin_s,
             a->wrank[w0]);
    for (;;) {
        poll_rejoin(a);
        if (route_to(a, e, 0, &w, &sl) == 0) {
            a->st.rejoin_wait_s += now_s() - t0;
            return XDS_OK;
        }
        if (now_s() > end)
            return xds_err_set(XDS_ERR_PEER,
                               "deploy: expert %d has no live worker: rank %d failed and did not rejoin within %.0f s",
                               e, a->wrank[w0], a->rejoin_s);
        xccl_comm_progress(a->comm);
        usleep(1000);
    }
}

/* Make sure every expert micro-batch i routes to (over the failed reply
 * slots, when failed_only) has a live replica, waiting for restarts. */
static xds_status ensure_routable(xds_deploy_attn *a, mb_state *s, int failed_only);

static int slot_failed(const xds_deploy_attn *a, const mb_state *s, int r) {
    return r >= a->n_workers ? s->sup[r - a->n_workers].st == 2 : s->pst[r] == 2;
}

static xds_status ensure_routable(xds_deploy_attn *a, mb_state *s, int failed_only) {
    int K = a->K, w = 0, sl = 0;
    for (int t = 0; t < s->n; t++)
        for (int j = 0; j < K; j++) {
            int e = s->ids[t * K + j];
            if (e < 0 || e >= a->pl->n_expert) continue;
            if (failed_only && (s->route_w[t * K + j] < 0 || !slot_failed(a, s, s->route_w[t * K + j]))) continue;
            if (route_to(a, e, 0, &w, &sl) != 0) XDS_TRY(wait_expert(a, e));
        }
    return XDS_OK;
}

/* Route micro-batch i's rows of layer l and send them to the workers; the
 * shared experts run while they are away. */
static xds_status moe_start(xds_deploy_attn *a, xds_model_ctx *ctx, int i, int l) {
    mb_state *s = &a->mb[i];
    const xds_deploy_placement *pl = a->pl;
    int n = s->n, K = a->K, E = a->E, W = a->n_workers, ML = pl->max_local;
    float *x = a->x + (size_t)s->t0 * E;
    double t0 = now_s();
    xds_model_ffn_norm(ctx, l, x, n, s->xn);
    xds_model_moe_route(ctx, l, s->xn, n, s->ids, s->w);
    double t1 = now_s();
    s->n_sup = 0;
    XDS_TRY(ensure_routable(a, s, 0));
    memset(a->cnt, 0, sizeof(int32_t) * (size_t)W * ML);
    for (int t = 0; t < n; t++)
        for (int j = 0; j < K; j++) {
            int e = s->ids[t * K + j], w = 0, sl = 0;
            if (e < 0 || e >= pl->n_expert) continue;
            route_to(a, e, (int)(a->step % 65521) + s->t0 + t, &w, &sl);
            a->cnt[w * ML + sl]++;
        }
    /* message of worker w: header, counts, rows grouped by slot */
    uint8_t *base = (uint8_t *)a->reg.base + s->send_off;
    size_t off = 0;
    for (int w = 0; w < W; w++) {
        int rows = 0;
        for (int sl = 0; sl < ML; sl++) {
            a->fill[w * ML + sl] = rows;
            rows += a->cnt[w * ML + sl];
        }
        s->rows[w] = rows;
        s->woff[w] = off;
        s->pst[w] = 0;
        if (rows > 0) off += align64(rows_off(pl->n_local[w]) + sizeof(float) * (size_t)rows * E);
    }
    for (int t = 0; t < n; t++)
        for (int j = 0; j < K; j++) {
            int e = s->ids[t * K + j], w = 0, sl = 0;
            if (e < 0 || e >= pl->n_expert) {
                s->route_w[t * K + j] = -1;
                continue;
            }
            route_to(a, e, (int)(a->step % 65521) + s->t0 + t, &w, &sl);
            int row = a->fill[w * ML + sl]++;
            s->route_w[t * K + j] = w;
            s->route_row[t * K + j] = row;
            float *dst = (float *)(base + s->woff[w] + rows_off(pl->n_local[w])) + (size_t)row * E;
            memcpy(dst, s->xn + (size_t)t * E, sizeof(float) * E);
        }
    for (int w = 0; w < W; w++) {
        if (s->rows[w] == 0) continue;
        uint8_t *msg = base + s->woff[w];
        msg_hdr h = {.magic = MSG_MAGIC, .cmd = CMD_MOE, .layer = l, .mb = i, .n_rows = s->rows[w],
                     .n_slots = pl->n_local[w], .seq = a->step};
        memcpy(msg, &h, sizeof h);
        int32_t *counts = (int32_t *)(msg + sizeof h);
        for (int sl = 0; sl < pl->n_local[w]; sl++) counts[sl] = a->cnt[w * ML + sl];
        size_t len = rows_off(pl->n_local[w]) + sizeof(float) * (size_t)s->rows[w] * E;
        s->pinc[w] = xccl_peer_incarnation(a->comm, a->wrank[w]);
        xccl_status xs = xccl_irecv(a->comm, a->wrank[w], s->rbuf[w], a->rcap[w], &s->rreq[w]);
        if (xs == XCCL_OK) xs = xccl_isend(a->comm, a->wrank[w], msg, len, &s->sreq[w]);
        if (xs != XCCL_OK) { /* the worker failed since the last look: moe_finish re-sends its rows */
            if (xccl_err_rank() == xccl_comm_rank(a->comm)) {
                mb_cancel(a, s);
                return xerr(xs, "dispatch to an expert worker");
            }
            worker_failed(a, w, s->pinc[w], xccl_err_msg());
            s->pst[w] = 2;
        }
    }
    s->pending = 1;
    s->layer = l;
    double t2 = now_s();
    if (a->m->layers[l].moe->has_shared) xds_model_moe_shared(ctx, l, s->xn, n, s->sh);
    a->st.attn_s += (t1 - t0) + (now_s() - t2);
    a->st.dispatch_s += t2 - t1;
    a->st.moe_calls++;
    return XDS_OK;
}

/* Re-send the rows of micro-batch i whose reply slot failed to live
 * replicas (or restarted workers): one new message per target worker,
 * a second one for this (layer, micro-batch) if it already had one — the
 * worker takes it after its first reply (which this rank has taken). */
static xds_status resend(xds_deploy_attn *a, int i) {
    mb_state *s = &a->mb[i];
    const xds_deploy_placement *pl = a->pl;
    int n = s->n, K = a->K, E = a->E, W = a->n_workers, ML = pl->max_local;
    XDS_TRY(ensure_routable(a, s, 1));
    memset(a->cnt, 0, sizeof(int32_t) * (size_t)W * ML);
    int any = 0;
    for (int t = 0; t < n; t++)
        for (int j = 0; j < K; j++) {
            int r = s->route_w[t * K + j], w = 0, sl = 0;
            if (r < 0 || !slot_failed(a, s, r)) continue;
            route_to(a, s->ids[t * K + j], (int)(a->step % 65521) + s->t0 + t, &w, &sl);
            a->cnt[w * ML + sl]++;
            any = 1;
        }
    if (!any) return XDS_OK;
    int first_new = s->n_sup, sup_of[XDS_DEPLOY_MAX_WORKERS];
    for (int w = 0; w < W; w++) {
        int rows = 0;
        for (int sl = 0; sl < ML; sl++) {
            a->fill[w * ML + sl] = rows;
            rows += a->cnt[w * ML + sl];
        }
        sup_of[w] = -1;
        if (!rows) continue;
        if (s->n_sup == s->cap_sup) {
            int cap = s->cap_sup ? 2 * s->cap_sup : 4;
            sup_slot *ns = realloc(s->sup, sizeof *ns * (size_t)cap);
            if (!ns) return xds_err_set(XDS_ERR_NOMEM, "deploy: out of memory (failover)");
            memset(ns + s->cap_sup, 0, sizeof *ns * (size_t)(cap - s->cap_sup));
            s->sup = ns, s->cap_sup = cap;
        }
        sup_slot *q = &s->sup[s->n_sup];
        size_t scap = rows_off(pl->n_local[w]) + sizeof(float) * (size_t)rows * E;
        size_t rcap = sizeof(msg_hdr) + sizeof(float) * (size_t)rows * E;
        if (q->send_cap < scap) {
            free(q->send);
            q->send_cap = (q->send = malloc(scap)) ? scap : 0;
        }
        if (q->recv_cap < rcap) {
            free(q->recv);
            q->recv_cap = (q->recv = malloc(rcap)) ? rcap : 0;
        }
        if (!q->send || !q->recv) return xds_err_set(XDS_ERR_NOMEM, "deploy: out of memory (failover)");
        q->worker = w, q->rows = rows, q->st = 0;
        sup_of[w] = s->n_sup++;
    }
    for (int t = 0; t < n; t++)
        for (int j = 0; j < K; j++) {
            int r = s->route_w[t * K + j], w = 0, sl = 0;
            if (r < 0 || !slot_failed(a, s, r)) continue;
            route_to(a, s->ids[t * K + j], (int)(a->step % 65521) + s->t0 + t, &w, &sl);
            sup_slot *q = &s->sup[sup_of[w]];
            int row = a->fill[w * ML + sl]++;
            s->route_w[t * K + j] = W + sup_of[w];
            s->route_row[t * K + j] = row;
            memcpy((float *)(q->send + rows_off(pl->n_local[w])) + (size_t)row * E, s->xn + (size_t)t * E,
                   sizeof(float) * E);
        }
    for (int k = first_new; k < s->n_sup; k++) {
        sup_slot *q = &s->sup[k];
        int w = q->worker;
        msg_hdr h = {.magic = MSG_MAGIC, .cmd = CMD_MOE, .layer = s->layer, .mb = i, .n_rows = q->rows,
                     .n_slots = pl->n_local[w], .seq = a->step};
        memcpy(q->send, &h, sizeof h);
        int32_t *counts = (int32_t *)(q->send + sizeof h);
        for (int sl = 0; sl < pl->n_local[w]; sl++) counts[sl] = a->cnt[w * ML + sl];
        size_t len = rows_off(pl->n_local[w]) + sizeof(float) * (size_t)q->rows * E;
        q->inc = xccl_peer_incarnation(a->comm, a->wrank[w]);
        xccl_status xs = xccl_irecv(a->comm, a->wrank[w], q->recv, q->recv_cap, &q->rreq);
        if (xs == XCCL_OK) xs = xccl_isend(a->comm, a->wrank[w], q->send, len, &q->sreq);
        a->st.rows_resent += (uint64_t)q->rows;
        if (xs != XCCL_OK) {
            if (xccl_err_rank() == xccl_comm_rank(a->comm)) return xerr(xs, "re-sending rows to an expert worker");
            worker_failed(a, w, q->inc, xccl_err_msg());
            q->st = 2;
        }
    }
    return XDS_OK;
}

/* Wait for one reply (primary slot w < n_workers, else a re-sent part):
 * 1 taken, 0 the worker failed (then marked failed), or an error that
 * failover cannot cure (this rank was declared dead, a malformed reply). */
static int take_reply(xds_deploy_attn *a, int i, int r, xds_status *err) {
    mb_state *s = &a->mb[i];
    int W = a->n_workers, w = r < W ? r : s->sup[r - W].worker;
    int rows = r < W ? s->rows[r] : s->sup[r - W].rows;
    xccl_request *rq = r < W ? &s->rreq[r] : &s->sup[r - W].rreq, *sq = r < W ? &s->sreq[r] : &s->sup[r - W].sreq;
    const uint8_t *buf = r < W ? s->rbuf[r] : s->sup[r - W].recv;
    int *st = r < W ? &s->pst[r] : &s->sup[r - W].st;
    uint32_t inc = r < W ? s->pinc[r] : s->sup[r - W].inc;
    if (a->wdead[w] || inc != xccl_peer_incarnation(a->comm, a->wrank[w])) {
        *st = 2; /* its worker failed meanwhile (the requests were cancelled; it may be back already): re-send */
        return 0;
    }
    xccl_status xs = xccl_wait(a->comm, rq);
    if (xs == XCCL_OK) xs = xccl_wait(a->comm, sq);
    if (xs != XCCL_OK) {
        if (xccl_err_rank() == xccl_comm_rank(a->comm)) {
            *err = xerr(xs, "expert outputs");
            return -1;
        }
        worker_failed(a, w, inc, xccl_err_msg());
        *st = 2;
        return 0;
    }
    size_t want = sizeof(msg_hdr) + sizeof(float) * (size_t)rows * a->E;
    msg_hdr h;
    memcpy(&h, buf, sizeof h);
    if (xccl_request_len(rq) != want || h.magic != MSG_MAGIC || h.cmd != CMD_OUT || h.layer != s->layer ||
        h.mb != i || h.n_rows != rows || h.seq != a->step) {
        *err = xds_err_set(XDS_ERR_PEER, "deploy: rank %d returned a malformed reply for layer %d (%zu bytes, want %zu)",
                           a->wrank[w], s->layer, xccl_request_len(rq), want);
        return -1;
    }
    *st = 1;
    return 1;
}

/* Wait for micro-batch i's expert rows and add the MoE output to its x. A
 * worker that fails meanwhile has its rows re-sent (resend) until every
 * (t, j) has a reply; replicas compute bit-identical rows, so the sum is the
 * fault-free one. */
static xds_status moe_finish(xds_deploy_attn *a, int i) {
    mb_state *s = &a->mb[i];
    const xds_moe_config *mc = &a->m->cfg.moe;
    int n = s->n, K = a->K, E = a->E, l = s->layer, W = a->n_workers;
    double t0 = now_s();
    for (;;) {
        int failed = 0;
        xds_status err = XDS_OK;
        for (int r = 0; r < W + s->n_sup; r++) {
            int pending = r < W ? s->rows[r] > 0 && s->pst[r] == 0 : s->sup[r - W].st == 0;
            if (pending && take_reply(a, i, r, &err) < 0) {
                mb_cancel(a, s);
                return err;
            }
            failed |= slot_failed(a, s, r) && (r < W ? s->rows[r] > 0 : 1);
        }
        if (!failed) break;
        int referenced = 0; /* does any (t, j) still point at a failed slot? */
        for (int q = 0; q < n * K && !referenced; q++) referenced = s->route_w[q] >= 0 && slot_failed(a, s, s->route_w[q]);
        if (!referenced) break;
        xds_status rs = resend(a, i);
        if (rs != XDS_OK) {
            mb_cancel(a, s);
            return rs;
        }
    }
    s->pending = 0;
    double t1 = now_s();
    /* weighted sum exactly as moe_experts does it: per token in k order, in
     * double, with the renormalization factor — so results match the
     * colocated engine bit for bit */
    double *acc = a->acc;
    float *y = s->xn;
    for (int t = 0; t < n; t++) {
        const float *wt = s->w + (size_t)t * K;
        double f = 1.0;
        if (mc->norm_topk_prob) {
            double c = 0;
            for (int j = 0; j < K; j++) c += wt[j];
            if (c > 0) f = (double)mc->routed_scale / c;
        }
        memset(acc, 0, sizeof(double) * E);
        int any = 0;
        for (int j = 0; j < K; j++) {
            int r = s->route_w[t * K + j];
            if (r < 0) continue;
            const uint8_t *rb = r < W ? s->rbuf[r] : s->sup[r - W].recv;
            const float *yr = (const float *)(rb + sizeof(msg_hdr)) + (size_t)s->route_row[t * K + j] * E;
            double wj = wt[j] * f;
            for (int d = 0; d < E; d++) acc[d] += wj * yr[d];
            any = 1;
        }
        float *o = y + (size_t)t * E;
        if (!any) memset(o, 0, sizeof(float) * E);
        else for (int d = 0; d < E; d++) o[d] = (float)acc[d];
    }
    if (a->m->layers[l].moe->has_shared) xds_add(y, s->sh, n * E);
    xds_add(a->x + (size_t)s->t0 * E, y, n * E);
    a->st.combine_s += t1 - t0;
    a->st.attn_s += now_s() - t1;
    return XDS_OK;
}

/* Split point for two micro-batches: the sequence boundary nearest the
 * middle; 0 = do not split. */
static int split_point(const xds_batch *b) {
    int best = 0, bd = b->n_tok;
    for (int k = 1; k < b->n_tok; k++) {
        if (b->seq[k] == b->seq[k - 1]) continue;
        int d = abs(2 * k - b->n_tok);
        if (d < bd) bd = d, best = k;
    }
    return best;
}

xds_status xds_deploy_forward(xds_deploy_attn *a, xds_model_ctx *ctx, const xds_batch *b,
                              const int32_t *logit_rows, int n_rows, float *logits) {
    if (a->broken)
        return xds_err_set(XDS_ERR_PEER, "deploy: the expert workers failed earlier; this deployment cannot run");
    for (int w = 0; w < a->n_workers; w++)
        if (a->wdead[w]) { /* take back restarted workers between passes */
            poll_rejoin(a);
            break;
        }
    XDS_TRY(xds_model_batch_check(ctx, b));
    if (b->n_tok > a->max_tok)
        return xds_err_set(XDS_ERR_INVALID, "deploy: batch of %d tokens beyond the deployment's %d", b->n_tok,
                           a->max_tok);
    for (int i = 0; i < n_rows; i++)
        if (logit_rows[i] < 0 || logit_rows[i] >= b->n_tok)
            return xds_err_set(XDS_ERR_INVALID, "deploy: logit row %d outside the batch of %d tokens", logit_rows[i],
                               b->n_tok);
    const xds_model *m = a->m;
    int n = b->n_tok, E = a->E;
    a->step++;
    int k = a->n_mb > 1 ? split_point(b) : 0;
    int M = k > 0 ? 2 : 1;
    a->mb[0].t0 = 0, a->mb[0].n = M == 2 ? k : n;
    if (M == 2) a->mb[1].t0 = k, a->mb[1].n = n - k;
    xds_batch sub[XDS_DEPLOY_MAX_MB];
    for (int i = 0; i < M; i++) {
        int t0 = a->mb[i].t0;
        sub[i] = (xds_batch){.n_tok = a->mb[i].n, .tokens = b->tokens + t0, .pos = b->pos + t0, .seq = b->seq + t0};
    }
    double t0 = now_s();
    double moe0 = a->st.dispatch_s + a->st.combine_s + a->st.attn_s;
    xds_status s = XDS_OK;
    xds_model_embed(ctx, b, a->x);
    for (int l = 0; l < m->cfg.n_layer && s == XDS_OK; l++) {
        int moe = xds_model_layer_is_moe(m, l);
        for (int i = 0; i < M && s == XDS_OK; i++) {
            mb_state *st = &a->mb[i];
            if (st->pending) s = moe_finish(a, i);
            if (s != XDS_OK) break;
            float *x = a->x + (size_t)st->t0 * E;
            xds_model_attention(ctx, l, &sub[i], x);
            if (moe) s = moe_start(a, ctx, i, l);
            else xds_model_ffn(ctx, l, x, st->n);
        }
    }
    for (int i = 0; i < M && s == XDS_OK; i++)
        if (a->mb[i].pending) s = moe_finish(a, i);
    if (s != XDS_OK) {
        for (int i = 0; i < M; i++) mb_cancel(a, &a->mb[i]);
        a->broken = 1;
        if (a->exit_on_break) {
            /* a decode group of a deployment: failing every request from now
             * on would be a permanent outage; ending the process instead lets
             * the front-ends continue its requests on another group and the
             * supervisor restart it */
            XDS_LOGE("deploy: %s; this decode group exits (its requests continue on another group)", xds_err_msg());
            fflush(NULL);
            _exit(3);
        }
        return s;
    }
    if (n_rows > 0) xds_model_lm_head(ctx, a->x, logit_rows, n_rows, logits);
    double moe1 = a->st.dispatch_s + a->st.combine_s + a->st.attn_s;
    a->st.attn_s += (now_s() - t0) - (moe1 - moe0);
    a->st.steps++;
    a->st.split_steps += M == 2;
    a->st.tokens += (uint64_t)n;
    return XDS_OK;
}

xds_status xds_deploy_forward_cb(void *user, xds_model_ctx *ctx, const xds_batch *b, const int32_t *logit_rows,
                                 int n_rows, float *logits) {
    return xds_deploy_forward((xds_deploy_attn *)user, ctx, b, logit_rows, n_rows, logits);
}

/* ---- expert worker -------------------------------------------------------- */

typedef struct src_state {
    int rank, stopped;
    int rejoining;                        /* it failed: waiting for its restart (xccl_peer_reset) */
    uint8_t *in;                          /* (in_cap) the message being received */
    xccl_request rreq;
    size_t out_off[XDS_DEPLOY_MAX_MB];    /* reply buffers in the worker's region */
    xccl_request sreq[XDS_DEPLOY_MAX_MB];
    int sending[XDS_DEPLOY_MAX_MB];
} src_state;

/* An attention rank failed (died, restarted, hung): drop what is in flight
 * with it and wait for its restart; the other ranks are served meanwhile. */
static void source_failed(xccl_comm *comm, src_state *q, int worker, const char *why) {
    XDS_LOGW("deploy: expert worker %d: attention rank %d failed (%s): serving the others until it rejoins", worker,
             q->rank, why);
    xccl_cancel(comm, &q->rreq);
    for (int b = 0; b < XDS_DEPLOY_MAX_MB; b++)
        if (q->sending[b]) xccl_cancel(comm, &q->sreq[b]), q->sending[b] = 0;
    /* as the attention side does with a hung worker: a hung rank must not
     * come back as itself (it fails its next XCCL call, exits and is
     * restarted; the new incarnation is taken back by source_rejoin) */
    xccl_peer_declare_dead(comm, q->rank);
    q->rejoining = 1;
}

/* A failed source restarted: accept its new incarnation, say READY again.
 * 1 done, 0 not yet, -1 error (recorded). */
static int source_rejoin(xccl_comm *comm, src_state *q, int worker, int L, uint64_t check, size_t in_cap) {
    /* not restarted yet, or the old incarnation still runs (declared dead,
     * about to fail and exit): look again on the next round */
    xccl_status xs = xccl_peer_reset(comm, q->rank);
    if (xs != XCCL_OK) return 0;
    msg_hdr ready = {.magic = MSG_MAGIC, .cmd = CMD_READY, .n_slots = L, .check = check};
    xs = xccl_send(comm, q->rank, &ready, sizeof ready);
    if (xs == XCCL_OK) xs = xccl_irecv(comm, q->rank, q->in, in_cap, &q->rreq);
    if (xs != XCCL_OK) return 0; /* it failed again: next time */
    q->rejoining = 0;
    XDS_LOGI("deploy: expert worker %d: attention rank %d (incarnation %u) rejoined", worker, q->rank,
             xccl_peer_incarnation(comm, q->rank));
    return 1;
}

xds_status xds_deploy_repack_worker(xds_model *m, const xds_deploy_placement *pl, int worker) {
    if (pl->n_expert != m->cfg.moe.n_expert || worker < 0 || worker >= pl->n_workers)
        return xds_err_set(XDS_ERR_INVALID, "deploy: worker %d is not in the placement (%d workers, %d experts)",
                           worker, pl->n_workers, pl->n_expert);
    uint8_t *mine = calloc((size_t)pl->n_expert, 1);
    if (!mine) return xds_err_set(XDS_ERR_NOMEM, "deploy: out of memory (expert list)");
    for (int i = 0; i < pl->n_local[worker]; i++) mine[pl->slot_expert[worker * pl->max_local + i]] = 1;
    xds_status s = xds_model_repack_units(m, 0, mine);
    free(mine);
    return s;
}

xds_status xds_deploy_expert_run(const xds_model *m, xccl_comm *comm, const xds_deploy_placement *pl, int worker,
                                 const int *attn_ranks, int n_attn, int max_tok, int n_threads,
                                 xds_deploy_expert_stats *stats) {
    const xds_model_config *c = &m->cfg;
    xds_deploy_expert_stats st = {0};
    if (c->moe.n_expert <= 0) return xds_err_set(XDS_ERR_INVALID, "deploy: expert worker: the model has no experts");
    if (pl->n_expert != c->moe.n_expert || worker < 0 || worker >= pl->n_workers)
        return xds_err_set(XDS_ERR_INVALID, "deploy: expert worker %d of a placement of %d workers / %d experts "
                                            "(the model has %d)", worker, pl->n_workers, pl->n_expert,
                           c->moe.n_expert);
    if (n_attn < 1 || n_attn > XDS_DEPLOY_MAX_ATTN || max_tok < 1 || max_tok > (1 << 20))
        return xds_err_set(XDS_ERR_INVALID, "deploy: expert worker: %d attention ranks (1..%d), max_tok %d", n_attn,
                           XDS_DEPLOY_MAX_ATTN, max_tok);
    for (int i = 0; i < n_attn; i++)
        if (attn_ranks[i] < 0 || attn_ranks[i] >= xccl_comm_size(comm) || attn_ranks[i] == xccl_comm_rank(comm))
            return xds_err_set(XDS_ERR_INVALID, "deploy: expert worker: attention rank %d out of range", attn_ranks[i]);
    int L = pl->n_local[worker], E = c->n_embd, F = c->moe.n_ff_exp, K = c->moe.n_expert_used;
    const int *held = pl->slot_expert + worker * pl->max_local;
    size_t per = (size_t)(L < K ? L : K), T = (size_t)max_tok;
    size_t in_cap = rows_off(L) + T * per * E * sizeof(float);
    size_t out_cap = align64(sizeof(msg_hdr) + T * per * E * sizeof(float));
    src_state *src = calloc((size_t)n_attn, sizeof *src);
    xds_model_ctx *ctx = NULL;
    xccl_region reg = {0};
    int reg_ok = 0;
    float *gg = malloc(sizeof(float) * T * (F > 0 ? F : 1)), *gu = malloc(sizeof(float) * T * (F > 0 ? F : 1));
    xccl_request *waits[XDS_DEPLOY_MAX_ATTN];
    xds_status s = src && gg && gu ? xds_model_ctx_create(m, NULL, n_threads, 1, &ctx)
                                   : xds_err_set(XDS_ERR_NOMEM, "deploy: expert worker: out of memory");
    for (int i = 0; i < n_attn && s == XDS_OK; i++) {
        src[i].rank = attn_ranks[i];
        if (!(src[i].in = malloc(in_cap))) s = xds_err_set(XDS_ERR_NOMEM, "deploy: expert worker: out of memory");
    }
    if (s != XDS_OK) goto out;
    {
        xccl_status xs = xccl_region_alloc(&reg, out_cap * (size_t)n_attn * XDS_DEPLOY_MAX_MB, comm);
        if (xs != XCCL_OK) {
            s = xerr(xs, "expert worker reply region");
            goto out;
        }
        reg_ok = 1;
        for (int i = 0; i < n_attn; i++)
            for (int b = 0; b < XDS_DEPLOY_MAX_MB; b++) src[i].out_off[b] = ((size_t)i * XDS_DEPLOY_MAX_MB + b) * out_cap;
    }
    xds_pool *pool = xds_model_ctx_pool(ctx);
    /* the heartbeat means "this loop makes progress": a hung loop shows as
     * hung to the attention ranks, which then fail over */
    xccl_comm_set_progress_mode(comm, 1);
    const uint32_t timeout_ms = xccl_comm_get_timeout(comm);
    const char *rj = getenv("XDS_EXPERT_REJOIN_S");
    const double orphan_s = 2.0 * (rj && atof(rj) > 0 ? atof(rj) : 30.0); /* 60 s: decode groups can take longer to restart than workers */
    /* the attention ranks may attach after us (the supervisor starts expert
     * workers first): wait, bounded, until each has attached once, and say
     * READY to each that serves. One that is hung, dead or restarted (this
     * worker is a restart, started while a decode group is in trouble) is
     * taken as a failed source: source_rejoin says READY once it is back,
     * while the others are served — never wait for them in order. */
    {
        double end = now_s() + 120.0;
        int pending = n_attn;
        int done[XDS_DEPLOY_MAX_ATTN] = {0};
        while (pending > 0) {
            for (int i = 0; i < n_attn; i++) {
                if (done[i]) continue;
                uint32_t pst = xccl_peer_state(comm, src[i].rank);
                if (pst == XCCL_RANK_FREE) continue; /* not attached yet (or attaching right now) */
                if (xccl_peer_check(comm, src[i].rank) == XCCL_OK) {
                    msg_hdr ready = {.magic = MSG_MAGIC, .cmd = CMD_READY, .n_slots = L,
                                     .check = placement_check(pl, worker)};
                    xccl_status xs = xccl_send(comm, src[i].rank, &ready, sizeof ready);
                    if (xs == XCCL_OK) xs = xccl_irecv(comm, src[i].rank, src[i].in, in_cap, &src[i].rreq);
                    if (xs != XCCL_OK) source_failed(comm, &src[i], worker, xccl_err_msg());
                } else {
                    source_failed(comm, &src[i], worker, xccl_err_msg());
                }
                done[i] = 1;
                pending--;
            }
            if (!pending) break;
            xccl_comm_progress(comm);
            if (now_s() > end) {
                for (int i = 0; i < n_attn; i++)
                    if (!done[i]) {
                        s = xds_err_set(XDS_ERR_TIMEOUT, "deploy: expert worker %d: attention rank %d did not attach "
                                                         "within 120 s", worker, src[i].rank);
                        goto out;
                    }
            }
            usleep(2000);
        }
    }
    int live = n_attn;
    double orphan_end = 0;
    while (live > 0) {
        xccl_status xs = xccl_comm_progress(comm); /* also: were we declared dead? */
        if (xs != XCCL_OK) {
            s = xerr(xs, "expert worker");
            goto out;
        }
        int serving = 0, rejoining = 0;
        for (int i = 0; i < n_attn; i++) {
            if (!src[i].stopped && src[i].rejoining &&
                source_rejoin(comm, &src[i], worker, L, placement_check(pl, worker), in_cap) < 0) {
                s = xds_err_set(XDS_ERR_PEER, "%s", xds_err_msg());
                goto out;
            }
            waits[i] = src[i].stopped || src[i].rejoining ? NULL : &src[i].rreq;
            serving += waits[i] != NULL;
            rejoining += !src[i].stopped && src[i].rejoining;
        }
        if (!serving) { /* every remaining source failed: wait for a restart, bounded */
            if (!orphan_end) orphan_end = now_s() + orphan_s;
            if (now_s() > orphan_end) {
                s = xds_err_set(XDS_ERR_PEER, "deploy: expert worker %d: no attention rank came back within %.0f s",
                                worker, orphan_s);
                goto out;
            }
            usleep(2000);
            continue;
        }
        orphan_end = 0;
        int idx = -1;
        double t0 = now_s();
        if (rejoining) xccl_comm_set_timeout(comm, 50); /* come back soon to look for the restart */
        xs = xccl_waitany(comm, waits, n_attn, &idx);
        if (rejoining) xccl_comm_set_timeout(comm, timeout_ms);
        st.wait_s += now_s() - t0;
        if (xs == XCCL_ERR_TIMEOUT) { /* idle: look at the sources */
            for (int i = 0; i < n_attn; i++)
                if (waits[i] && xccl_peer_check(comm, src[i].rank) != XCCL_OK) {
                    if (xccl_peer_state(comm, src[i].rank) == XCCL_RANK_LEFT) {
                        s = xds_err_set(XDS_ERR_PEER, "deploy: expert worker %d: attention rank %d left without STOP",
                                        worker, src[i].rank);
                        goto out;
                    }
                    source_failed(comm, &src[i], worker, xccl_err_msg());
                }
            continue;
        }
        if (xs != XCCL_OK) {
            int r = xccl_err_rank(), qi = -1;
            for (int i = 0; i < n_attn; i++)
                if (src[i].rank == r && waits[i]) qi = i;
            if (r == xccl_comm_rank(comm) || qi < 0 || xs != XCCL_ERR_PEER ||
                xccl_peer_state(comm, r) == XCCL_RANK_LEFT) {
                s = xerr(xs, "expert worker waiting for the attention ranks");
                goto out;
            }
            source_failed(comm, &src[qi], worker, xccl_err_msg());
            continue;
        }
        src_state *q = &src[idx];
        size_t len = xccl_request_len(&q->rreq);
        msg_hdr h;
        if (len < sizeof h) {
            s = xds_err_set(XDS_ERR_PEER, "deploy: expert worker %d: %zu-byte message from rank %d", worker, len,
                            q->rank);
            goto out;
        }
        memcpy(&h, q->in, sizeof h);
        if (h.magic == MSG_MAGIC && h.cmd == CMD_STOP) {
            q->stopped = 1;
            live--;
            continue;
        }
        int bad = h.magic != MSG_MAGIC || h.cmd != CMD_MOE || h.layer < 0 || h.layer >= c->n_layer ||
                  !xds_model_layer_is_moe(m, h.layer) || h.mb < 0 || h.mb >= XDS_DEPLOY_MAX_MB || h.n_slots != L ||
                  h.n_rows < 1 || (size_t)h.n_rows > T * per ||
                  len != rows_off(L) + sizeof(float) * (size_t)h.n_rows * E;
        const int32_t *counts = (const int32_t *)(q->in + sizeof h);
        long sum = 0;
        for (int j = 0; j < L && !bad; j++) {
            bad = counts[j] < 0 || counts[j] > max_tok;
            sum += counts[j];
        }
        if (bad || sum != h.n_rows) {
            s = xds_err_set(XDS_ERR_PEER, "deploy: expert worker %d: malformed message from rank %d (%zu bytes)", worker,
                            q->rank, len);
            goto out;
        }
        double a0 = now_s();
        if (q->sending[h.mb]) { /* its last reply was taken before this message was sent */
            xs = xccl_wait(comm, &q->sreq[h.mb]);
            q->sending[h.mb] = 0;
            if (xs != XCCL_OK) {
                if (xccl_err_rank() == xccl_comm_rank(comm)) {
                    s = xerr(xs, "expert worker reply");
                    goto out;
                }
                source_failed(comm, q, worker, xccl_err_msg());
                continue;
            }
        }
        double a1 = now_s();
        const xds_moe_layer *ML = m->layers[h.layer].moe;
        const float *rows = (const float *)(q->in + rows_off(L));
        uint8_t *ob = (uint8_t *)reg.base + q->out_off[h.mb];
        float *outr = (float *)(ob + sizeof(msg_hdr));
        size_t r0 = 0;
        for (int j = 0; j < L; j++) {
            int nr = counts[j];
            if (nr == 0) continue;
            const xds_ffn_w *f = &ML->experts[held[j]];
            const xds_tensor *ws[2] = {&f->gate, &f->up};
            float *ys[2] = {gg, gu};
            xds_matmul_multi(pool, 2, ws, rows + r0 * E, ys, nr);
            xds_silu_mul(gg, gu, nr * F);
            xds_matmul(pool, &f->down, gg, outr + r0 * E, nr);
            r0 += (size_t)nr;
            xccl_comm_progress(comm);
        }
        st.rows += r0;
        st.msgs++;
        double a2 = now_s();
        msg_hdr oh = {.magic = MSG_MAGIC, .cmd = CMD_OUT, .layer = h.layer, .mb = h.mb, .n_rows = h.n_rows,
                      .seq = h.seq};
        memcpy(ob, &oh, sizeof oh);
        xs = xccl_isend(comm, q->rank, ob, sizeof oh + sizeof(float) * r0 * E, &q->sreq[h.mb]);
        if (xs == XCCL_OK) q->sending[h.mb] = 1, xs = xccl_irecv(comm, q->rank, q->in, in_cap, &q->rreq);
        if (xs != XCCL_OK) {
            if (xccl_err_rank() == xccl_comm_rank(comm)) {
                s = xerr(xs, "expert worker reply");
                goto out;
            }
            source_failed(comm, q, worker, xccl_err_msg());
            continue;
        }
        st.send_s += (a1 - a0) + (now_s() - a2);
        st.compute_s += a2 - a1;
    }
    /* every source said STOP: its last replies were taken before that */
    for (int i = 0; i < n_attn; i++)
        for (int b = 0; b < XDS_DEPLOY_MAX_MB; b++)
            if (src[i].sending[b] && xccl_wait(comm, &src[i].sreq[b]) == XCCL_OK) src[i].sending[b] = 0;
out:
    if (src)
        for (int i = 0; i < n_attn; i++) {
            if (!src[i].stopped && !src[i].rejoining && src[i].in) xccl_cancel(comm, &src[i].rreq);
            for (int b = 0; b < XDS_DEPLOY_MAX_MB; b++)
                if (src[i].sending[b]) xccl_cancel(comm, &src[i].sreq[b]);
            free(src[i].in);
        }
    if (reg_ok) xccl_region_deregister(comm, &reg);
    if (stats) *stats = st;
    free(gg), free(gu), free(src);
    if (ctx) xds_model_ctx_free(ctx);
    return s;
}
