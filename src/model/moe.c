/*
 * moe.c — the mixture-of-experts units (model.h): ffn_norm, moe_route,
 * moe_experts (any subset of experts), moe_shared, and xds_moe_ffn composing
 * them; plus the per-head q/k RMSNorm of qwen3 and the scratch a context owns
 * for MoE and MLA layers.
 *
 * Routing (as transformers):
 *   softmax (qwen3_moe, mixtral): p = softmax(router . xn); top-k of p;
 *     weights = p[top-k], divided by their sum when norm_topk_prob.
 *   sigmoid (deepseek_v3): s = sigmoid(router . xn), c = s + bias; with
 *     n_group > 1 each group scores the sum of its top-2 c and only the
 *     topk_group best groups stay eligible; top-k of c; weights = s[top-k]
 *     (/ (sum + 1e-20) when norm_topk_prob) * routed_scaling_factor.
 * Grouped expert compute: the (token, slot) assignments are sorted by expert,
 * each expert's input rows gathered into one contiguous block and run as one
 * matrix-matrix product per weight (xds_matmul_rows with n_tok = its rows).
 * Threads spread over (expert, row chunk) tasks in two pool runs per layer
 * (gate+up of all active experts, then down), so small experts (decode: one
 * row each) and big ones (prefill) both keep every thread busy. Every
 * assignment's output has its own row, combined per token in slot order, so
 * the result does not depend on the thread schedule.
 *
 * Invariants: units only use the context's scratch and the caller's buffers;
 * they never allocate (except the kernels' own per-call activation buffers in
 * serial matmuls).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "model/mla_attn.h"
#include "model/moe.h"

static int imax(int a, int b) { return a > b ? a : b; }

xds_status xds_moe_scratch_create(const xds_model *m, const xds_kv_cache *kv, int n_threads, int max_tok,
                                  xds_moe_scratch **out) {
    const xds_model_config *c = &m->cfg;
    xds_moe_scratch *s = calloc(1, sizeof *s);
    if (!s) return xds_err_set(XDS_ERR_NOMEM, "model ctx: out of memory");
    size_t T = (size_t)max_tok, E = c->n_embd;
    int k = c->moe.n_expert_used > 0 ? c->moe.n_expert_used : 1;
    int ne = c->moe.n_expert > 0 ? c->moe.n_expert : 1;
    s->max_tok = max_tok;
    s->n_threads = n_threads;
    s->k = k;
    s->max_pos = kv ? kv->n_blocks * kv->block_size : 1;
    size_t A = T * k;
    size_t ff = (size_t)imax(1, c->moe.n_ff_exp);
    size_t gsz = A * ff;
    if (T * (size_t)c->moe.n_shared * ff > gsz) gsz = T * (size_t)c->moe.n_shared * ff;
    if (gsz < 2 * (size_t)ne) gsz = 2 * (size_t)ne; /* routing's per-token selection / group scores */
    int ok = 1;
#define AL(p, n) ok = ok && ((p) = malloc(sizeof(*(p)) * (n))) != NULL
    AL(s->xn, T * E);
    AL(s->ids, A);
    AL(s->w, A);
    AL(s->out, T * E);
    AL(s->sh, T * E);
    AL(s->logits, T * ne);
    AL(s->cnt, ne + 1);
    AL(s->order, A);
    AL(s->slot, A);
    AL(s->active, ne);
    AL(s->gx, A * E);
    AL(s->gy, A * E);
    AL(s->gg, gsz);
    AL(s->gu, gsz);
    AL(s->accd, E);
    if (c->arch == XDS_ARCH_DEEPSEEK_V3) {
        const xds_mla_config *a = &c->mla;
        size_t H = c->n_head, L = (size_t)a->kv_lora_rank + c->rope_dim;
        AL(s->q, T * H * c->head_dim);
        AL(s->qa, T * imax(a->q_lora_rank, (int)L));
        AL(s->kva, T * L);
        AL(s->qcat, T * H * L);
        s->tmp_w = imax(imax(a->nope_dim, a->kv_lora_rank), 1);
        AL(s->tmp, (size_t)n_threads * T * s->tmp_w);
        AL(s->att, T * H * a->v_dim);
        AL(s->proj, T * E);
        AL(s->rope, T * (c->rope_dim + 2));
        AL(s->scores, (size_t)n_threads * XDS_MLA_HEAD_CHUNK * s->max_pos); /* mla.c: a head chunk per thread */
    }
#undef AL
    if (!ok) {
        xds_moe_scratch_free(s);
        return xds_err_set(XDS_ERR_NOMEM, "model ctx: out of memory for MoE/MLA scratch of %d tokens", max_tok);
    }
    *out = s;
    return XDS_OK;
}

void xds_moe_scratch_free(xds_moe_scratch *s) {
    if (!s) return;
    free(s->xn);
    free(s->ids);
    free(s->w);
    free(s->out);
    free(s->sh);
    free(s->logits);
    free(s->cnt);
    free(s->order);
    free(s->slot);
    free(s->active);
    free(s->gx);
    free(s->gy);
    free(s->gg);
    free(s->gu);
    free(s->accd);
    free(s->q);
    free(s->qa);
    free(s->kva);
    free(s->qcat);
    free(s->tmp);
    free(s->att);
    free(s->proj);
    free(s->rope);
    free(s->scores);
    free(s);
}

void xds_qk_norm(const xds_model *m, const xds_layer_weights *w, float *q, float *k, int n_tok) {
    const xds_model_config *c = &m->cfg;
    int hd = c->head_dim;
    for (int t = 0; t < n_tok; t++) {
        for (int h = 0; h < c->n_head; h++) {
            float *v = q + ((size_t)t * c->n_head + h) * hd;
            xds_rmsnorm(v, v, w->q_norm, hd, c->rms_eps);
        }
        for (int h = 0; h < c->n_head_kv; h++) {
            float *v = k + ((size_t)t * c->n_head_kv + h) * hd;
            xds_rmsnorm(v, v, w->k_norm, hd, c->rms_eps);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Units                                                                     */

void xds_model_ffn_norm(xds_model_ctx *ctx, int layer, const float *x, int n_tok, float *xn) {
    const xds_model *m = xds_model_ctx_model(ctx);
    int E = m->cfg.n_embd;
    for (int t = 0; t < n_tok; t++)
        xds_rmsnorm(xn + (size_t)t * E, x + (size_t)t * E, m->layers[layer].ffn_norm, E, m->cfg.rms_eps);
}

/* Index of the largest v[i] among i with ok[i] (first on ties); -1 if none. */
static int argmax_masked(const float *v, const uint8_t *ok, int n) {
    int best = -1;
    for (int i = 0; i < n; i++)
        if (ok[i] && (best < 0 || v[i] > v[best])) best = i;
    return best;
}

void xds_model_moe_route(xds_model_ctx *ctx, int layer, const float *xn, int n_tok, int32_t *ids,
                         float *weights) {
    const xds_model *m = xds_model_ctx_model(ctx);
    xds_moe_scratch *S = xds_model_ctx_moe(ctx);
    const xds_moe_config *e = &m->cfg.moe;
    const xds_moe_layer *L = m->layers[layer].moe;
    int N = e->n_expert, K = e->n_expert_used;
    XDS_ASSERT(L && n_tok <= S->max_tok);
    xds_matmul(xds_model_ctx_pool(ctx), &L->router, xn, S->logits, n_tok);
    uint8_t *elig = (uint8_t *)S->active; /* N eligibility bytes (active holds N int32s) */
    for (int t = 0; t < n_tok; t++) {
        float *lg = S->logits + (size_t)t * N;
        int32_t *id = ids + (size_t)t * K;
        float *wt = weights + (size_t)t * K;
        memset(elig, 1, N);
        if (e->scoring == XDS_MOE_SOFTMAX) {
            xds_softmax(lg, N); /* lg = probabilities */
            double sum = 0;
            for (int j = 0; j < K; j++) {
                int b = argmax_masked(lg, elig, N);
                elig[b] = 0;
                id[j] = b;
                wt[j] = lg[b];
                sum += lg[b];
            }
            if (e->norm_topk_prob)
                for (int j = 0; j < K; j++) wt[j] = (float)(wt[j] / (float)sum);
        } else {
            /* lg = s (sigmoid scores), sc = selection scores (s + bias), gsc = group scores */
            for (int i = 0; i < N; i++) lg[i] = 1.0f / (1.0f + expf(-lg[i]));
            const float *bias = L->score_bias;
            float *sc = S->gg; /* N floats (gg holds >= 2N) */
            for (int i = 0; i < N; i++) sc[i] = lg[i] + (bias ? bias[i] : 0.0f);
            if (e->n_group > 1 && e->topk_group < e->n_group) {
                int gs = N / e->n_group;
                float *gsc = S->gu; /* n_group floats (gu holds >= 2N) */
                for (int g = 0; g < e->n_group; g++) {
                    float a = -INFINITY, b2 = -INFINITY;
                    for (int i = g * gs; i < (g + 1) * gs; i++) {
                        float v = sc[i];
                        if (v > a) {
                            b2 = a;
                            a = v;
                        } else if (v > b2) b2 = v;
                    }
                    gsc[g] = a + b2;
                }
                memset(elig, 0, N);
                for (int r = 0; r < e->topk_group; r++) {
                    int bg = -1;
                    for (int g = 0; g < e->n_group; g++)
                        if (gsc[g] != -INFINITY && (bg < 0 || gsc[g] > gsc[bg])) bg = g;
                    if (bg < 0) break;
                    gsc[bg] = -INFINITY;
                    memset(elig + (size_t)bg * gs, 1, gs);
                }
            }
            double sum = 0;
            for (int j = 0; j < K; j++) {
                int b = argmax_masked(sc, elig, N);
                XDS_ASSERT(b >= 0);
                elig[b] = 0;
                id[j] = b;
                wt[j] = lg[b];
                sum += lg[b];
            }
            if (e->norm_topk_prob) {
                float den = (float)sum + 1e-20f;
                for (int j = 0; j < K; j++) wt[j] /= den;
            }
            for (int j = 0; j < K; j++) wt[j] *= e->routed_scale;
        }
    }
    if (S->expert_count) { /* load counters (EPLB): one writer, relaxed so readers may look */
        uint64_t *c = S->expert_count + (size_t)layer * N;
        for (int i = 0; i < n_tok * K; i++) {
            uint64_t *p = c + ids[i];
            __atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) + 1, __ATOMIC_RELAXED);
        }
    }
}

void xds_model_ctx_set_expert_counts(xds_model_ctx *ctx, uint64_t *counts) {
    xds_moe_scratch *S = xds_model_ctx_moe(ctx);
    if (S && xds_model_ctx_model(ctx)->cfg.moe.n_expert > 0) S->expert_count = counts;
}

typedef struct {
    const xds_moe_layer *L;
    xds_moe_scratch *S;
    int E, F;
    int ch_up, nc_up; /* rows per task and tasks per expert of gate / up (each) */
    int ch_dn, nc_dn; /* rows per task and tasks per expert of down */
} exp_job;

/* Phase 1 task: rows [r0, r1) of one expert's gate or up for all its routed
 * rows (one matrix-matrix product over the expert's gathered inputs). */
static void up_task(void *arg, int task, int thread) {
    exp_job *J = arg;
    xds_moe_scratch *S = J->S;
    int per = 2 * J->nc_up, i = task / per, r = task % per, which = r / J->nc_up, c = r % J->nc_up;
    int e = S->active[i], off = S->cnt[e], n = S->cnt[e + 1] - off;
    const xds_ffn_w *f = &J->L->experts[e];
    int64_t r0 = (int64_t)c * J->ch_up, r1 = r0 + J->ch_up < J->F ? r0 + J->ch_up : J->F;
    float *y = (which ? S->gu : S->gg) + (size_t)off * J->F + r0;
    xds_matmul_rows(NULL, which ? &f->up : &f->gate, r0, r1, S->gx + (size_t)off * J->E, y, J->F, n);
}

/* Phase 2 task: rows [r0, r1) of one expert's down projection. */
static void down_task(void *arg, int task, int thread) {
    exp_job *J = arg;
    xds_moe_scratch *S = J->S;
    int i = task / J->nc_dn, c = task % J->nc_dn;
    int e = S->active[i], off = S->cnt[e], n = S->cnt[e + 1] - off;
    int64_t r0 = (int64_t)c * J->ch_dn, r1 = r0 + J->ch_dn < J->E ? r0 + J->ch_dn : J->E;
    xds_matmul_rows(NULL, &J->L->experts[e].down, r0, r1, S->gg + (size_t)off * J->F, S->gy + (size_t)off * J->E + r0,
                    J->E, n);
}

/* Rows per task: about `want` rows, a multiple of 4, so that n_mat * chunks >= 4 per thread. */
static int chunk_rows(int rows, int n_mat, int nth, int want) {
    int ch = want;
    while (ch > 16 && (int64_t)n_mat * ((rows + ch - 1) / ch) < 4 * nth) ch /= 2;
    ch = (ch + 3) & ~3;
    return ch < rows ? ch : rows;
}

void xds_model_moe_experts(xds_model_ctx *ctx, int layer, const float *xn, int n_tok, const int32_t *ids,
                           const float *weights, const uint8_t *expert_mask, float *out) {
    const xds_model *m = xds_model_ctx_model(ctx);
    xds_moe_scratch *S = xds_model_ctx_moe(ctx);
    xds_pool *pool = xds_model_ctx_pool(ctx);
    const xds_moe_config *e = &m->cfg.moe;
    const xds_moe_layer *L = m->layers[layer].moe;
    int N = e->n_expert, K = e->n_expert_used, E = m->cfg.n_embd, A = n_tok * K;
    XDS_ASSERT(L && n_tok <= S->max_tok);
    /* group assignments by expert (counting sort, stable in (t, j)) */
    memset(S->cnt, 0, sizeof(int32_t) * (N + 1));
    for (int a = 0; a < A; a++) {
        int x = ids[a];
        XDS_ASSERT(x >= 0 && x < N);
        if (!expert_mask || expert_mask[x]) S->cnt[x + 1]++;
    }
    int n_active = 0, max_rows = 0;
    for (int x = 0; x < N; x++) {
        if (S->cnt[x + 1] > 0) S->active[n_active++] = x;
        if (S->cnt[x + 1] > max_rows) max_rows = S->cnt[x + 1];
        S->cnt[x + 1] += S->cnt[x];
    }
    /* cnt[x] = offset of expert x's rows; place each assignment */
    for (int a = 0; a < A; a++) S->slot[a] = -1;
    {
        int32_t *cur = (int32_t *)S->logits; /* N int32 cursors (logits is free after routing) */
        for (int x = 0; x < N; x++) cur[x] = S->cnt[x];
        for (int a = 0; a < A; a++) {
            int x = ids[a];
            if (expert_mask && !expert_mask[x]) continue;
            int p = cur[x]++;
            S->order[p] = a;
            S->slot[a] = p;
        }
    }
    int n_rows = S->cnt[N];
    for (int i = 0; i < n_active; i++) { /* statistics: bytes / multiply-adds of the experts hit */
        const xds_ffn_w *f = &L->experts[S->active[i]];
        S->stat_bytes += f->gate.nbytes + f->up.nbytes + f->down.nbytes;
    }
    S->stat_macs += 3.0 * n_rows * (double)E * e->n_ff_exp;
    for (int p = 0; p < n_rows; p++)
        memcpy(S->gx + (size_t)p * E, xn + (size_t)(S->order[p] / K) * E, sizeof(float) * E);
    /* two pool runs per layer: gate+up of every active expert split in row
     * chunks, then down; each task one matrix-matrix product over the expert's
     * rows (xds_matmul_rows, serial inside the task) */
    exp_job J = {L, S, E, e->n_ff_exp, 0, 0, 0, 0};
    int nth = xds_pool_size(pool);
    (void)max_rows;
    /* whole matrices per task unless that leaves < 4 tasks per thread: each
     * task quantizes its activations again and re-dispatches the kernel, which
     * cost ~20% of the expert time at 2-8 rows per expert with 128-row chunks */
    J.ch_up = chunk_rows(J.F, 2 * n_active, nth, J.F);
    J.nc_up = (J.F + J.ch_up - 1) / J.ch_up;
    J.ch_dn = chunk_rows(E, n_active, nth, E);
    J.nc_dn = (E + J.ch_dn - 1) / J.ch_dn;
    if (n_active > 0) {
        xds_pool_run(pool, up_task, &J, n_active * 2 * J.nc_up);
        xds_silu_mul(S->gg, S->gu, n_rows * J.F);
        xds_pool_run(pool, down_task, &J, n_active * J.nc_dn);
    }
    /* combine per token in slot order, in double, with normalized weights
     * renormalized exactly (their f32 sum is 1 only to rounding): identical
     * experts then give exactly their common output (exact upcycling) */
    double *acc = S->accd;
    for (int t = 0; t < n_tok; t++) {
        const float *wt = weights + (size_t)t * K;
        double f = 1.0;
        if (e->norm_topk_prob) {
            double c = 0;
            for (int j = 0; j < K; j++) c += wt[j];
            if (c > 0) f = (double)e->routed_scale / c;
        }
        memset(acc, 0, sizeof(double) * E);
        int any = 0;
        for (int j = 0; j < K; j++) {
            int p = S->slot[t * K + j];
            if (p < 0) continue;
            double wj = wt[j] * f;
            const float *y = S->gy + (size_t)p * E;
            for (int i = 0; i < E; i++) acc[i] += wj * y[i];
            any = 1;
        }
        float *o = out + (size_t)t * E;
        if (!any) memset(o, 0, sizeof(float) * E);
        else for (int i = 0; i < E; i++) o[i] = (float)acc[i];
    }
}

void xds_model_ctx_expert_stats(xds_model_ctx *ctx, uint64_t *bytes, double *macs, int reset) {
    xds_moe_scratch *S = xds_model_ctx_moe(ctx);
    if (bytes) *bytes = S ? S->stat_bytes : 0;
    if (macs) *macs = S ? S->stat_macs : 0;
    if (S && reset) S->stat_bytes = 0, S->stat_macs = 0;
}

void xds_model_moe_shared(xds_model_ctx *ctx, int layer, const float *xn, int n_tok, float *out) {
    const xds_model *m = xds_model_ctx_model(ctx);
    xds_moe_scratch *S = xds_model_ctx_moe(ctx);
    xds_pool *pool = xds_model_ctx_pool(ctx);
    const xds_moe_layer *L = m->layers[layer].moe;
    int E = m->cfg.n_embd;
    XDS_ASSERT(L && n_tok <= S->max_tok);
    if (!L->has_shared) {
        memset(out, 0, sizeof(float) * n_tok * E);
        return;
    }
    int F = m->cfg.moe.n_shared * m->cfg.moe.n_ff_exp;
    xds_matmul(pool, &L->shared.gate, xn, S->gg, n_tok);
    xds_matmul(pool, &L->shared.up, xn, S->gu, n_tok);
    xds_silu_mul(S->gg, S->gu, n_tok * F);
    xds_matmul(pool, &L->shared.down, S->gg, out, n_tok);
}

void xds_moe_ffn(xds_model_ctx *ctx, int layer, float *x, int n_tok) {
    const xds_model *m = xds_model_ctx_model(ctx);
    xds_moe_scratch *S = xds_model_ctx_moe(ctx);
    int E = m->cfg.n_embd;
    xds_model_ffn_norm(ctx, layer, x, n_tok, S->xn);
    xds_model_moe_route(ctx, layer, S->xn, n_tok, S->ids, S->w);
    xds_model_moe_experts(ctx, layer, S->xn, n_tok, S->ids, S->w, NULL, S->out);
    if (m->layers[layer].moe->has_shared) {
        xds_model_moe_shared(ctx, layer, S->xn, n_tok, S->sh);
        xds_add(S->out, S->sh, n_tok * E);
    }
    xds_add(x, S->out, n_tok * E);
}
