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
 * (micro-batch, worker) and finishes a micro-batch's MoE layer before it
 * sends that micro-batch's next one, so a worker's output buffer for
 * (source, micro-batch) is free again (its send completed) by the time the
 * next message for it arrives. Every wait has a deadline: an idle worker
 * re-checks the liveness of its sources each time the XCCL deadline passes.
 * A failed pass leaves streams out of step, so the attention side refuses
 * further passes (the supervisor then stops the deployment).
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
    cfg->heartbeat_timeout_ms = 30000; /* a long prefill chunk must not look like a hang */
}

/* ---- attention side ------------------------------------------------------- */

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
    int broken; /* a failed pass leaves the streams out of step: refuse further passes */
    xds_deploy_stats st;
};

static void mb_cancel(xds_deploy_attn *a, mb_state *s) {
    for (int w = 0; w < a->n_workers && s->sreq; w++) {
        xccl_cancel(a->comm, &s->sreq[w]);
        xccl_cancel(a->comm, &s->rreq[w]);
    }
    s->pending = 0;
}

void xds_deploy_attn_free(xds_deploy_attn *a) {
    if (!a) return;
    for (int i = 0; i < XDS_DEPLOY_MAX_MB; i++) {
        mb_state *s = &a->mb[i];
        mb_cancel(a, s);
        free(s->xn), free(s->sh), free(s->ids), free(s->w), free(s->route_w), free(s->route_row);
        free(s->rows), free(s->woff), free(s->sreq), free(s->rreq);
        if (s->rbuf)
            for (int w = 0; w < a->n_workers; w++) free(s->rbuf[w]);
        free(s->rbuf);
    }
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
        s->send_off = (size_t)i * area;
        ok = s->xn && s->sh && s->ids && s->w && s->route_w && s->route_row && s->rows && s->woff && s->sreq &&
             s->rreq && s->rbuf;
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
        if (xccl_send(a->comm, a->wrank[w], &h, sizeof h) != XCCL_OK)
            XDS_LOGW("deploy: stop message to rank %d: %s", a->wrank[w], xccl_err_msg());
}

/* Worker and local slot of the replica that takes (token t, expert e): t
 * counts batch position plus pass number, so replicas share the tokens of
 * one batch and, over passes, the single token of a one-sequence batch. */
static inline void route_to(const xds_deploy_placement *pl, int e, int t, int *w, int *slot) {
    int r = pl->n_rep[e] > 1 ? t % pl->n_rep[e] : 0;
    int packed = pl->rep[e * pl->max_rep + r];
    *w = packed / pl->max_local;
    *slot = packed % pl->max_local;
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
    memset(a->cnt, 0, sizeof(int32_t) * (size_t)W * ML);
    for (int t = 0; t < n; t++)
        for (int j = 0; j < K; j++) {
            int e = s->ids[t * K + j], w, sl;
            if (e < 0 || e >= pl->n_expert) continue;
            route_to(pl, e, (int)(a->step % 65521) + s->t0 + t, &w, &sl);
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
        if (rows > 0) off += align64(rows_off(pl->n_local[w]) + sizeof(float) * (size_t)rows * E);
    }
    for (int t = 0; t < n; t++)
        for (int j = 0; j < K; j++) {
            int e = s->ids[t * K + j], w, sl;
            if (e < 0 || e >= pl->n_expert) {
                s->route_w[t * K + j] = -1;
                continue;
            }
            route_to(pl, e, (int)(a->step % 65521) + s->t0 + t, &w, &sl);
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
        xccl_status xs = xccl_irecv(a->comm, a->wrank[w], s->rbuf[w], a->rcap[w], &s->rreq[w]);
        if (xs == XCCL_OK) xs = xccl_isend(a->comm, a->wrank[w], msg, len, &s->sreq[w]);
        if (xs != XCCL_OK) {
            mb_cancel(a, s);
            return xerr(xs, "dispatch to an expert worker");
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

/* Wait for micro-batch i's expert rows and add the MoE output to its x. */
static xds_status moe_finish(xds_deploy_attn *a, int i) {
    mb_state *s = &a->mb[i];
    const xds_moe_config *mc = &a->m->cfg.moe;
    int n = s->n, K = a->K, E = a->E, l = s->layer;
    double t0 = now_s();
    for (int w = 0; w < a->n_workers; w++) {
        if (s->rows[w] == 0) continue;
        xccl_status xs = xccl_wait(a->comm, &s->rreq[w]);
        if (xs == XCCL_OK) xs = xccl_wait(a->comm, &s->sreq[w]);
        if (xs != XCCL_OK) {
            mb_cancel(a, s);
            return xerr(xs, "expert outputs");
        }
        size_t want = sizeof(msg_hdr) + sizeof(float) * (size_t)s->rows[w] * E;
        msg_hdr h;
        memcpy(&h, s->rbuf[w], sizeof h);
        if (xccl_request_len(&s->rreq[w]) != want || h.magic != MSG_MAGIC || h.cmd != CMD_OUT || h.layer != l ||
            h.mb != i || h.n_rows != s->rows[w] || h.seq != a->step) {
            mb_cancel(a, s);
            return xds_err_set(XDS_ERR_PEER, "deploy: rank %d returned a malformed reply for layer %d (%zu bytes, want %zu)",
                               a->wrank[w], l, xccl_request_len(&s->rreq[w]), want);
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
            int w = s->route_w[t * K + j];
            if (w < 0) continue;
            const float *yr = (const float *)(s->rbuf[w] + sizeof(msg_hdr)) + (size_t)s->route_row[t * K + j] * E;
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
    uint8_t *in;                          /* (in_cap) the message being received */
    xccl_request rreq;
    size_t out_off[XDS_DEPLOY_MAX_MB];    /* reply buffers in the worker's region */
    xccl_request sreq[XDS_DEPLOY_MAX_MB];
    int sending[XDS_DEPLOY_MAX_MB];
} src_state;

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
    /* the attention ranks may attach after us (the supervisor starts expert
     * workers first): wait for each, bounded, then say READY */
    for (int i = 0; i < n_attn; i++) {
        double end = now_s() + 120.0;
        while (xccl_peer_check(comm, src[i].rank) != XCCL_OK) {
            if (now_s() > end) {
                s = xds_err_set(XDS_ERR_TIMEOUT, "deploy: expert worker %d: attention rank %d did not attach within "
                                                 "120 s", worker, src[i].rank);
                goto out;
            }
            usleep(2000);
        }
        msg_hdr ready = {.magic = MSG_MAGIC, .cmd = CMD_READY, .n_slots = L, .check = placement_check(pl, worker)};
        xccl_status xs = xccl_send(comm, src[i].rank, &ready, sizeof ready);
        if (xs == XCCL_OK) xs = xccl_irecv(comm, src[i].rank, src[i].in, in_cap, &src[i].rreq);
        if (xs != XCCL_OK) {
            s = xerr(xs, "expert worker ready message");
            goto out;
        }
    }
    int live = n_attn;
    while (live > 0) {
        for (int i = 0; i < n_attn; i++) waits[i] = src[i].stopped ? NULL : &src[i].rreq;
        int idx = -1;
        double t0 = now_s();
        xccl_status xs = xccl_waitany(comm, waits, n_attn, &idx);
        st.wait_s += now_s() - t0;
        if (xs == XCCL_ERR_TIMEOUT) { /* idle: only a dead source ends the loop */
            for (int i = 0; i < n_attn && xs == XCCL_ERR_TIMEOUT; i++)
                if (!src[i].stopped && xccl_peer_check(comm, src[i].rank) != XCCL_OK) xs = XCCL_ERR_PEER;
            if (xs == XCCL_ERR_TIMEOUT) continue;
        }
        if (xs != XCCL_OK) {
            s = xerr(xs, "expert worker waiting for the attention ranks");
            goto out;
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
                s = xerr(xs, "expert worker reply");
                goto out;
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
            s = xerr(xs, "expert worker reply");
            goto out;
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
            if (!src[i].stopped && src[i].in) xccl_cancel(comm, &src[i].rreq);
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
