/*
 * deploy.c — disaggregated MoE-attention (deploy.h): the attention-side
 * executor and the expert-worker loop over one XCCL segment.
 *
 * Invariants: rank 0 is the only sender of control messages and the only
 * rank with tokens to dispatch; every rank goes through the same MoE layers
 * in the same order for each RUN, so the group collectives (layout-free
 * dispatch/combine) always pair up. A worker never waits without a deadline:
 * an idle wait for the next control message re-checks rank 0's liveness each
 * time the XCCL deadline passes, so a dead attention rank ends the loop.
 */
#define _GNU_SOURCE
#include "engine/deploy.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <xccl.h>

#include "base/log.h"
#include "kernels/kernels.h"
#include "model/moe.h"

#define CTL_MAGIC 0x58445344u /* "XDSD" */
enum { CTL_RUN = 1, CTL_STOP = 2, CTL_READY = 3 };

typedef struct ctl_msg {
    uint32_t magic, cmd;
    uint64_t step;
    int32_t n_tok, arg; /* READY: arg = local experts held */
} ctl_msg;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static xds_status xerr(xccl_status s, const char *what) {
    xds_status code = s == XCCL_ERR_PEER ? XDS_ERR_PEER : s == XCCL_ERR_TIMEOUT ? XDS_ERR_TIMEOUT : XDS_ERR_IO;
    return xds_err_set(code, "deploy: %s: %s", what, xccl_err_msg());
}

void xds_deploy_expert_owner(int n_expert, int n_workers, int e, int *worker, int *slot) {
    int per = xds_deploy_local_experts(n_expert, n_workers);
    *worker = e / per;
    *slot = e % per;
}

int xds_deploy_local_experts(int n_expert, int n_workers) {
    return n_workers > 0 ? (n_expert + n_workers - 1) / n_workers : 0;
}

xds_status xds_deploy_xccl_config(const xds_model *m, int n_workers, int max_tok, xccl_config *cfg) {
    const xds_model_config *c = &m->cfg;
    if (c->moe.n_expert <= 0)
        return xds_err_set(XDS_ERR_INVALID, "deploy: the model (%s) has no MoE layers to place on expert workers",
                           xds_arch_name(c->arch));
    if (n_workers < 1 || 1 + n_workers > XCCL_MAX_RANKS)
        return xds_err_set(XDS_ERR_INVALID, "deploy: %d expert workers (1..%d)", n_workers, XCCL_MAX_RANKS - 1);
    if (max_tok < 1) return xds_err_set(XDS_ERR_INVALID, "deploy: max_tok %d must be positive", max_tok);
    xccl_config_default(cfg, (uint32_t)(1 + n_workers));
    cfg->slot_bytes = 4096;
    cfg->num_slots = 8;
    cfg->coll_bytes = 4096;
    cfg->moe_max_tokens = (uint32_t)max_tok;
    cfg->moe_max_hidden = (uint32_t)c->n_embd;
    cfg->moe_max_topk = (uint32_t)c->moe.n_expert_used;
    cfg->moe_max_local_experts = (uint32_t)xds_deploy_local_experts(c->moe.n_expert, n_workers);
    /* only rank 0 sends rows: a rank receives at most one row per token per expert */
    uint64_t rows = (uint64_t)max_tok * (uint64_t)c->moe.n_expert_used;
    if (rows > 0x7fffffffu) return xds_err_set(XDS_ERR_INVALID, "deploy: %d tokens x top-%d too large", max_tok,
                                               c->moe.n_expert_used);
    cfg->moe_max_recv_rows = (uint32_t)rows;
    if (xccl_config_segment_bytes(cfg) == 0)
        return xds_err_set(XDS_ERR_INVALID, "deploy: XCCL rejects the segment configuration (hidden %d, top-%d)",
                           c->n_embd, c->moe.n_expert_used);
    return XDS_OK;
}

/* The expert map of n_workers workers on ranks 1..n_workers. */
typedef struct emap {
    xccl_expert_map map;
    int *nrep, *rrank, *rslot;
} emap;

static xds_status emap_init(emap *em, int n_expert, int n_workers) {
    em->nrep = malloc(sizeof(int) * n_expert);
    em->rrank = malloc(sizeof(int) * n_expert);
    em->rslot = malloc(sizeof(int) * n_expert);
    if (!em->nrep || !em->rrank || !em->rslot) {
        free(em->nrep), free(em->rrank), free(em->rslot);
        return xds_err_set(XDS_ERR_NOMEM, "deploy: out of memory (expert map)");
    }
    for (int e = 0; e < n_expert; e++) {
        int w, s;
        xds_deploy_expert_owner(n_expert, n_workers, e, &w, &s);
        em->nrep[e] = 1;
        em->rrank[e] = 1 + w;
        em->rslot[e] = s;
    }
    em->map = (xccl_expert_map){.num_experts = n_expert, .max_replicas = 1, .num_replicas = em->nrep,
                                .replica_rank = em->rrank, .replica_slot = em->rslot,
                                .num_local_experts = xds_deploy_local_experts(n_expert, n_workers),
                                .policy = XCCL_REPLICA_FIRST};
    return XDS_OK;
}

static void emap_free(emap *em) {
    free(em->nrep), free(em->rrank), free(em->rslot);
}

/* The MoE group: ranks 0..n_workers (the world when the segment has no
 * other ranks, e.g. prefill instances; else a group of epoch 1, created by
 * every member). */
static xccl_status moe_group(xccl_group **g, xccl_comm *comm, int n_workers) {
    if (xccl_comm_size(comm) == 1 + n_workers) {
        *g = xccl_comm_world(comm);
        return XCCL_OK;
    }
    int ranks[XCCL_MAX_RANKS];
    for (int r = 0; r <= n_workers; r++) ranks[r] = r;
    return xccl_group_create(g, comm, ranks, 1 + n_workers, 1);
}

/* ---- attention side ------------------------------------------------------ */

struct xds_deploy_attn {
    const xds_model *m;
    xccl_comm *comm;
    int n_workers, max_tok, L;
    emap em;
    float *x;      /* (max_tok, n_embd) hidden */
    float *xn;     /* (max_tok, n_embd) normed FFN input */
    float *y;      /* (max_tok, n_embd) combined expert output */
    float *sh;     /* (max_tok, n_embd) shared experts' output */
    int32_t *ids;  /* (max_tok, k) */
    float *w;      /* (max_tok, k) routing weights */
    float *cw;     /* (max_tok, k) combine weights (renormalized as moe_experts does) */
    xccl_moe_recv *recv; /* (L) nothing arrives on rank 0 */
    xccl_group *g;       /* the MoE group: ranks 0..n_workers */
    float *obuf;         /* (max_tok * k, n_embd) unweighted expert outputs returned by the workers */
    size_t *slot_off;    /* ((1 + n_workers) * L) first obuf row of (worker, local expert) */
    double *acc;         /* (n_embd) */
    uint64_t step;
    int broken;    /* a failed pass leaves the group out of step: refuse further passes */
    xds_deploy_stats st;
};

xds_status xds_deploy_attn_create(const xds_model *m, xccl_comm *comm, int n_workers, int max_tok,
                                  xds_deploy_attn **out) {
    xccl_config cfg;
    XDS_TRY(xds_deploy_xccl_config(m, n_workers, max_tok, &cfg));
    if (xccl_comm_rank(comm) != 0 || xccl_comm_size(comm) < 1 + n_workers)
        return xds_err_set(XDS_ERR_INVALID, "deploy: attention must be rank 0 of >= %d ranks (is rank %d of %d)",
                           1 + n_workers, xccl_comm_rank(comm), xccl_comm_size(comm));
    xds_deploy_attn *a = calloc(1, sizeof *a);
    if (!a) return xds_err_set(XDS_ERR_NOMEM, "deploy: out of memory");
    a->m = m;
    a->comm = comm;
    a->n_workers = n_workers;
    a->max_tok = max_tok;
    a->L = (int)cfg.moe_max_local_experts;
    size_t E = (size_t)m->cfg.n_embd, K = (size_t)m->cfg.moe.n_expert_used, T = (size_t)max_tok;
    xds_status s = emap_init(&a->em, m->cfg.moe.n_expert, n_workers);
    if (s != XDS_OK) {
        free(a);
        return s;
    }
    a->x = malloc(sizeof(float) * T * E);
    a->xn = malloc(sizeof(float) * T * E);
    a->y = malloc(sizeof(float) * T * E);
    a->sh = malloc(sizeof(float) * T * E);
    a->ids = malloc(sizeof(int32_t) * T * K);
    a->w = malloc(sizeof(float) * T * K);
    a->cw = malloc(sizeof(float) * T * K);
    a->recv = calloc((size_t)a->L, sizeof(xccl_moe_recv));
    a->obuf = malloc(sizeof(float) * T * K * E);
    a->slot_off = calloc((size_t)(1 + n_workers) * a->L, sizeof(size_t));
    a->acc = malloc(sizeof(double) * E);
    if (!a->obuf || !a->slot_off || !a->acc || !a->x || !a->xn || !a->y || !a->sh || !a->ids || !a->w || !a->cw || !a->recv) {
        xds_deploy_attn_free(a);
        return xds_err_set(XDS_ERR_NOMEM, "deploy: out of memory (%zu tokens)", T);
    }
    /* every worker says READY once it has attached and loaded its experts */
    for (int r = 1; r <= n_workers; r++) {
        ctl_msg msg;
        size_t len = 0;
        xccl_status xs = xccl_recv(&len, &msg, sizeof msg, comm, r);
        if (xs != XCCL_OK) {
            xds_deploy_attn_free(a);
            return xerr(xs, "waiting for an expert worker to become ready");
        }
        if (len != sizeof msg || msg.magic != CTL_MAGIC || msg.cmd != CTL_READY) {
            xds_deploy_attn_free(a);
            return xds_err_set(XDS_ERR_PEER, "deploy: rank %d sent a malformed ready message", r);
        }
    }
    xccl_status gs = moe_group(&a->g, comm, n_workers);
    if (gs != XCCL_OK) {
        xds_deploy_attn_free(a);
        return xerr(gs, "MoE group");
    }
    *out = a;
    return XDS_OK;
}

void xds_deploy_attn_free(xds_deploy_attn *a) {
    if (!a) return;
    emap_free(&a->em);
    if (a->g && a->g != xccl_comm_world(a->comm)) xccl_group_destroy(a->g);
    free(a->x), free(a->xn), free(a->y), free(a->sh);
    free(a->ids), free(a->w), free(a->cw), free(a->recv);
    free(a->obuf), free(a->slot_off), free(a->acc);
    free(a);
}

void xds_deploy_attn_stats(const xds_deploy_attn *a, xds_deploy_stats *out) {
    *out = a->st;
}

static xds_status send_ctl(xds_deploy_attn *a, uint32_t cmd, int n_tok) {
    ctl_msg msg = {CTL_MAGIC, cmd, a->step, n_tok, 0};
    for (int r = 1; r <= a->n_workers; r++) {
        xccl_status xs = xccl_send(a->comm, r, &msg, sizeof msg);
        if (xs != XCCL_OK) return xerr(xs, "control message to an expert worker");
    }
    return XDS_OK;
}

void xds_deploy_attn_stop(xds_deploy_attn *a) {
    if (!a) return;
    ctl_msg msg = {CTL_MAGIC, CTL_STOP, a->step, 0, 0};
    for (int r = 1; r <= a->n_workers; r++) /* each worker on its own: a dead one does not stop the rest */
        if (xccl_send(a->comm, r, &msg, sizeof msg) != XCCL_OK)
            XDS_LOGW("deploy: stop message to rank %d: %s", r, xccl_err_msg());
}

/* x += MoE(RMSNorm(x)) for layer l with the routed experts on the workers. */
static xds_status moe_layer(xds_deploy_attn *a, xds_model_ctx *ctx, int l, float *x, int n) {
    const xds_model *m = a->m;
    const xds_moe_config *mc = &m->cfg.moe;
    int E = m->cfg.n_embd, K = mc->n_expert_used;
    double t0 = now_s();
    xds_model_ffn_norm(ctx, l, x, n, a->xn);
    xds_model_moe_route(ctx, l, a->xn, n, a->ids, a->w);
    /* the factor moe_experts applies: renormalize the top-k weights exactly */
    for (int t = 0; t < n; t++) {
        const float *wt = a->w + (size_t)t * K;
        double f = 1.0;
        if (mc->norm_topk_prob) {
            double c = 0;
            for (int j = 0; j < K; j++) c += wt[j];
            if (c > 0) f = (double)mc->routed_scale / c;
        }
        for (int j = 0; j < K; j++) a->cw[(size_t)t * K + j] = (float)(wt[j] * f);
    }
    double t1 = now_s();
    xccl_group *g = a->g;
    xccl_moe_layout lay;
    xccl_status xs = xccl_moe_layout_compute(&lay, a->ids, n, K, &a->em.map, a->step, a->comm, g);
    if (xs != XCCL_OK) return xerr(xs, "MoE layout");
    xccl_moe_handle *h = NULL;
    xs = xccl_moe_dispatch(a->recv, &h, a->xn, XCCL_F32, E, 0, &lay, a->comm, g);
    double t2 = now_s();
    if (xs != XCCL_OK) {
        xccl_moe_layout_free(&lay);
        return xerr(xs, "MoE dispatch");
    }
    /* the shared experts run here while the workers compute */
    int has_shared = m->layers[l].moe->has_shared;
    if (has_shared) xds_model_moe_shared(ctx, l, a->xn, n, a->sh);
    double t3 = now_s();
    /* the unweighted expert outputs come back per (worker, local expert), in
     * the order the worker received the rows */
    int L = a->L;
    size_t off = 0;
    for (int w = 1; w <= a->n_workers && xs == XCCL_OK; w++)
        for (int j = 0; j < L && xs == XCCL_OK; j++) {
            int cnt = lay.num_tokens_per_expert[w * L + j];
            a->slot_off[w * L + j] = off;
            if (cnt == 0) continue;
            size_t len = 0, want = sizeof(float) * (size_t)cnt * E;
            xs = xccl_recv(&len, a->obuf + off * E, want, a->comm, w);
            if (xs == XCCL_OK && len != want) {
                xccl_moe_layout_free(&lay);
                return xds_err_set(XDS_ERR_PEER, "deploy: rank %d returned %zu bytes for expert slot %d, want %zu", w,
                                   len, j, want);
            }
            off += (size_t)cnt;
        }
    if (xs != XCCL_OK) {
        xccl_moe_layout_free(&lay);
        return xerr(xs, "MoE expert outputs");
    }
    /* completes the dispatch handle (buffers acked); its f32 sum is not used */
    xs = xccl_moe_combine(a->y, a->cw, NULL, h, a->comm, g);
    if (xs != XCCL_OK) {
        xccl_moe_layout_free(&lay);
        return xerr(xs, "MoE combine");
    }
    /* weighted sum exactly as moe_experts does it: per token in k order, in
     * double, with the renormalization factor — so identical experts give
     * exactly their common output and results match the colocated engine */
    double *acc = a->acc;
    for (int t = 0; t < n; t++) {
        const float *wt = a->w + (size_t)t * K;
        double f = 1.0;
        if (mc->norm_topk_prob) {
            double c = 0;
            for (int j = 0; j < K; j++) c += wt[j];
            if (c > 0) f = (double)mc->routed_scale / c;
        }
        memset(acc, 0, sizeof(double) * E);
        int any = 0;
        for (int j = 0; j < K; j++) {
            int mem = lay.route_member[t * K + j];
            if (mem < 0) continue;
            const float *yr = a->obuf + (a->slot_off[mem * L + lay.route_slot[t * K + j]] +
                                         (size_t)lay.route_pos[t * K + j]) * E;
            double wj = wt[j] * f;
            for (int i = 0; i < E; i++) acc[i] += wj * yr[i];
            any = 1;
        }
        float *o = a->y + (size_t)t * E;
        if (!any) memset(o, 0, sizeof(float) * E);
        else for (int i = 0; i < E; i++) o[i] = (float)acc[i];
    }
    xccl_moe_layout_free(&lay);
    double t4 = now_s();
    if (has_shared) xds_add(a->y, a->sh, n * E);
    xds_add(x, a->y, n * E);
    a->st.attn_s += (t1 - t0) + (t3 - t2) + (now_s() - t4);
    a->st.dispatch_s += t2 - t1;
    a->st.combine_s += t4 - t3;
    a->st.moe_calls++;
    return XDS_OK;
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
    int n = b->n_tok;
    a->step++;
    xds_status s = send_ctl(a, CTL_RUN, n);
    if (s != XDS_OK) {
        a->broken = 1;
        return s;
    }
    double t0 = now_s();
    double moe0 = a->st.dispatch_s + a->st.combine_s + a->st.attn_s;
    xds_model_embed(ctx, b, a->x);
    for (int l = 0; l < m->cfg.n_layer; l++) {
        xds_model_attention(ctx, l, b, a->x);
        if (xds_model_layer_is_moe(m, l)) {
            s = moe_layer(a, ctx, l, a->x, n);
            if (s != XDS_OK) {
                a->broken = 1;
                return s;
            }
        } else {
            xds_model_ffn(ctx, l, a->x, n);
        }
    }
    if (n_rows > 0) xds_model_lm_head(ctx, a->x, logit_rows, n_rows, logits);
    double moe1 = a->st.dispatch_s + a->st.combine_s + a->st.attn_s;
    a->st.attn_s += (now_s() - t0) - (moe1 - moe0);
    a->st.steps++;
    a->st.tokens += (uint64_t)n;
    return XDS_OK;
}

xds_status xds_deploy_forward_cb(void *user, xds_model_ctx *ctx, const xds_batch *b, const int32_t *logit_rows,
                                 int n_rows, float *logits) {
    return xds_deploy_forward((xds_deploy_attn *)user, ctx, b, logit_rows, n_rows, logits);
}

/* ---- expert worker ------------------------------------------------------- */

xds_status xds_deploy_expert_run(const xds_model *m, xccl_comm *comm, int n_workers, int n_threads,
                                 xds_deploy_expert_stats *stats) {
    const xds_model_config *c = &m->cfg;
    xds_deploy_expert_stats st = {0};
    int rank = xccl_comm_rank(comm);
    if (c->moe.n_expert <= 0) return xds_err_set(XDS_ERR_INVALID, "deploy: expert worker: the model has no experts");
    if (rank < 1 || rank > n_workers || xccl_comm_size(comm) < 1 + n_workers)
        return xds_err_set(XDS_ERR_INVALID, "deploy: expert worker rank %d of %d ranks (want 1..%d of >= %d)", rank,
                           xccl_comm_size(comm), n_workers, 1 + n_workers);
    int L = xds_deploy_local_experts(c->moe.n_expert, n_workers);
    int first = (rank - 1) * L;
    int held = c->moe.n_expert - first < L ? c->moe.n_expert - first : L;
    if (held < 0) held = 0;
    int E = c->n_embd, F = c->moe.n_ff_exp;
    /* a local expert receives at most one row per token of rank 0's batch */
    xccl_config cfg;
    XDS_TRY(xds_deploy_xccl_config(m, n_workers, 1, &cfg));
    emap em;
    XDS_TRY(emap_init(&em, c->moe.n_expert, n_workers));
    xds_model_ctx *ctx = NULL;
    xccl_group *g = NULL;
    xccl_moe_recv *recv = calloc((size_t)L, sizeof *recv);
    float *gg = NULL, *gu = NULL;
    size_t cap_rows = 0;
    xds_status s = recv ? xds_model_ctx_create(m, NULL, n_threads, 1, &ctx)
                        : xds_err_set(XDS_ERR_NOMEM, "deploy: out of memory");
    if (s != XDS_OK) goto out;
    xds_pool *pool = xds_model_ctx_pool(ctx);
    {
        /* rank 0 may attach after us (a supervisor starts workers first): wait
         * for it, bounded, before the first message */
        double end = now_s() + 30.0;
        while (xccl_peer_check(comm, 0) != XCCL_OK) {
            if (now_s() > end) {
                s = xds_err_set(XDS_ERR_TIMEOUT, "deploy: expert worker %d: rank 0 did not attach within 30 s", rank);
                goto out;
            }
            usleep(2000);
        }
        ctl_msg ready = {CTL_MAGIC, CTL_READY, 0, 0, held};
        xccl_status xs = xccl_send(comm, 0, &ready, sizeof ready);
        if (xs != XCCL_OK) {
            s = xerr(xs, "expert worker ready message");
            goto out;
        }
    }
    {
        xccl_status gs = moe_group(&g, comm, n_workers);
        if (gs != XCCL_OK) {
            s = xerr(gs, "expert worker MoE group");
            goto out;
        }
    }
    int32_t dummy_id = 0;
    float dummy = 0;
    for (;;) {
        ctl_msg msg;
        size_t len = 0;
        double t0 = now_s();
        xccl_status xs;
        for (;;) { /* idle: wait for the next pass; a deadline only re-checks rank 0 */
            xs = xccl_recv(&len, &msg, sizeof msg, comm, 0);
            if (xs != XCCL_ERR_TIMEOUT) break;
            if (xccl_peer_check(comm, 0) != XCCL_OK) break;
        }
        st.wait_s += now_s() - t0;
        if (xs != XCCL_OK) {
            if (xs == XCCL_ERR_TIMEOUT) xs = XCCL_ERR_PEER;
            s = xerr(xs, "expert worker waiting for the attention rank");
            goto out;
        }
        if (len != sizeof msg || msg.magic != CTL_MAGIC || (msg.cmd != CTL_RUN && msg.cmd != CTL_STOP)) {
            s = xds_err_set(XDS_ERR_PEER, "deploy: expert worker %d: malformed control message", rank);
            goto out;
        }
        if (msg.cmd == CTL_STOP) break;
        if (msg.n_tok > 0 && (size_t)msg.n_tok > cap_rows) {
            free(gg), free(gu);
            cap_rows = (size_t)msg.n_tok;
            gg = malloc(sizeof(float) * cap_rows * F);
            gu = malloc(sizeof(float) * cap_rows * F);
            if (!gg || !gu) {
                s = xds_err_set(XDS_ERR_NOMEM, "deploy: expert worker: out of memory (%zu rows)", cap_rows);
                goto out;
            }
        }
        for (int l = 0; l < c->n_layer; l++) {
            if (!xds_model_layer_is_moe(m, l)) continue;
            const xds_moe_layer *ML = m->layers[l].moe;
            double a0 = now_s();
            xccl_moe_layout lay;
            xs = xccl_moe_layout_compute(&lay, &dummy_id, 0, c->moe.n_expert_used, &em.map, msg.step, comm, g);
            if (xs != XCCL_OK) {
                s = xerr(xs, "expert worker MoE layout");
                goto out;
            }
            xccl_moe_handle *h = NULL;
            xs = xccl_moe_dispatch(recv, &h, &dummy, XCCL_F32, E, 0, &lay, comm, g);
            xccl_moe_layout_free(&lay);
            if (xs != XCCL_OK) {
                s = xerr(xs, "expert worker MoE dispatch");
                goto out;
            }
            double a1 = now_s();
            for (int j = 0; j < L; j++) {
                int nr = recv[j].num_rows;
                if (nr == 0) continue;
                int e = first + j;
                if (j >= held || (size_t)nr > cap_rows) {
                    s = xds_err_set(XDS_ERR_PEER, "deploy: expert worker %d got %d rows for slot %d it cannot take",
                                    rank, nr, j);
                    goto out;
                }
                const xds_ffn_w *f = &ML->experts[e];
                const xds_tensor *ws[2] = {&f->gate, &f->up};
                float *ys[2] = {gg, gu};
                xds_matmul_multi(pool, 2, ws, (const float *)recv[j].rows, ys, nr);
                xds_silu_mul(gg, gu, nr * F);
                xds_matmul(pool, &f->down, gg, (float *)recv[j].out, nr);
                st.rows += (uint64_t)nr;
            }
            for (int j = 0; j < L && xs == XCCL_OK; j++) /* the unweighted outputs, slot order */
                if (recv[j].num_rows > 0)
                    xs = xccl_send(comm, 0, recv[j].out, sizeof(float) * (size_t)recv[j].num_rows * E);
            if (xs != XCCL_OK) {
                s = xerr(xs, "expert worker returning outputs");
                goto out;
            }
            double a2 = now_s();
            xs = xccl_moe_combine(&dummy, &dummy, NULL, h, comm, g);
            if (xs != XCCL_OK) {
                s = xerr(xs, "expert worker MoE combine");
                goto out;
            }
            st.recv_s += a1 - a0;
            st.compute_s += a2 - a1;
            st.combine_s += now_s() - a2;
        }
        st.steps++;
    }
out:
    if (g && g != xccl_comm_world(comm)) xccl_group_destroy(g);
    if (stats) *stats = st;
    free(gg), free(gu), free(recv);
    if (ctx) xds_model_ctx_free(ctx);
    emap_free(&em);
    return s;
}
