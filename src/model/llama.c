/*
 * llama.c — the dense llama forward pass as units (model.h): embed,
 * attention(layer), ffn(layer), lm_head, and xds_model_forward composing them;
 * plus the context that holds the thread pool and the scratch buffers.
 *
 * Math (as transformers' LlamaForCausalLM, eager attention, fp32):
 *   h = x + Wo . Attn(RoPE(Wq . n), RoPE(Wk . n), Wv . n),  n = RMSNorm(x) * g_attn
 *   x' = h + Wdown . (silu(Wgate . m) * (Wup . m)),           m = RMSNorm(h) * g_ffn
 *   logits = Wout . (RMSNorm(x_last) * g_out)
 * Projections run as one matrix-matrix product over all batch tokens
 * (xds_matmul with n_tok > 1). Attention runs one task per (token, query
 * head) on the pool; each task reads its sequence's K/V through the block
 * table, so tokens of different sequences mix freely in one batch.
 *
 * Invariants: the context's buffers are sized for max_tok tokens and for the
 * KV cache's total capacity (the longest any sequence can be); units never
 * allocate.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "model/attn.h"
#include "model/model.h"
#include "model/moe.h"

struct xds_model_ctx {
    const xds_model *m;
    xds_kv_cache *kv;      /* borrowed; NULL: no attention */
    xds_pool *pool;        /* owned */
    int n_threads;
    int max_tok;
    int max_pos;           /* longest sequence the cache can hold */
    int attn_avx2;         /* use attn_avx2.c (CPU has AVX2+FMA, head_dim % 8 == 0) */
    int attn_group;        /* G = n_head / n_head_kv query heads per task (attn_avx2 only), else 1 */
    float *hidden;         /* (max_tok, n_embd) residual stream of xds_model_forward */
    float *xn;             /* (max_tok, max(n_embd, ...)) normed input / projection output */
    float *q;              /* (max_tok, n_head * head_dim) */
    float *k;              /* (max_tok, n_head_kv * head_dim) */
    float *v;              /* (max_tok, n_head_kv * head_dim) */
    float *att;            /* (max_tok, n_head * head_dim) attention output */
    float *gate;           /* (max_tok, n_ff) */
    float *up;             /* (max_tok, n_ff) */
    float *scores;         /* (n_threads, max_pos) per-thread softmax rows */
    float *rope;           /* (max_tok, rope_dim) cos/sin pairs per token */
    xds_moe_scratch *moe;  /* MoE / MLA scratch (moe.c); NULL for llama */
};

xds_status xds_model_ctx_create(const xds_model *m, xds_kv_cache *kv, int n_threads, int max_tok,
                                xds_model_ctx **out) {
    const xds_model_config *c = &m->cfg;
    if (max_tok <= 0) return xds_err_set(XDS_ERR_INVALID, "model ctx: max_tok %d must be positive", max_tok);
    int kdim, vdim;
    xds_model_kv_dims(m, &kdim, &vdim);
    if (kv && (kv->n_layer != c->n_layer || kv->k_dim != kdim || kv->v_dim != vdim))
        return xds_err_set(XDS_ERR_INVALID, "model ctx: KV cache shape does not match the model");
    xds_model_ctx *x = calloc(1, sizeof *x);
    if (!x) return xds_err_set(XDS_ERR_NOMEM, "model ctx: out of memory");
    x->m = m;
    x->kv = kv;
    x->max_tok = max_tok;
    xds_status s = xds_pool_create(n_threads > 0 ? n_threads : 1, &x->pool);
    if (s != XDS_OK) {
        free(x);
        return s;
    }
    x->n_threads = xds_pool_size(x->pool);
    x->max_pos = kv ? kv->n_blocks * kv->block_size : 1;
    x->attn_avx2 = xds_cpu_level_get() >= XDS_CPU_AVX2 && c->head_dim % 8 == 0 && c->head_dim <= 256;
    x->attn_group = 1;
    if (x->attn_avx2 && c->n_head / c->n_head_kv > 1 && c->n_head / c->n_head_kv <= XDS_ATTN_MAX_GROUP)
        x->attn_group = c->n_head / c->n_head_kv;
    size_t T = (size_t)max_tok, qd = (size_t)c->n_head * c->head_dim, kvd = (size_t)c->n_head_kv * c->head_dim;
    size_t xnw = c->n_embd;
    x->hidden = malloc(sizeof(float) * T * c->n_embd);
    x->xn = malloc(sizeof(float) * T * xnw);
    x->q = malloc(sizeof(float) * T * qd);
    x->k = malloc(sizeof(float) * T * kvd);
    x->v = malloc(sizeof(float) * T * kvd);
    x->att = malloc(sizeof(float) * T * qd);
    x->gate = malloc(sizeof(float) * T * c->n_ff);
    x->up = malloc(sizeof(float) * T * c->n_ff);
    x->scores = malloc(sizeof(float) * x->n_threads * x->max_pos * x->attn_group);
    x->rope = malloc(sizeof(float) * T * (c->rope_dim + 2));
    if (!x->hidden || !x->xn || !x->q || !x->k || !x->v || !x->att || !x->gate || !x->up || !x->scores ||
        !x->rope) {
        xds_model_ctx_free(x);
        return xds_err_set(XDS_ERR_NOMEM, "model ctx: out of memory for %d tokens", max_tok);
    }
    if (c->arch != XDS_ARCH_LLAMA && (s = xds_moe_scratch_create(m, kv, x->n_threads, max_tok, &x->moe)) != XDS_OK) {
        xds_model_ctx_free(x);
        return s;
    }
    *out = x;
    return XDS_OK;
}

void xds_model_ctx_free(xds_model_ctx *x) {
    if (!x) return;
    xds_pool_free(x->pool);
    free(x->hidden);
    free(x->xn);
    free(x->q);
    free(x->k);
    free(x->v);
    free(x->att);
    free(x->gate);
    free(x->up);
    free(x->scores);
    free(x->rope);
    xds_moe_scratch_free(x->moe);
    free(x);
}

xds_pool *xds_model_ctx_pool(xds_model_ctx *ctx) { return ctx->pool; }
int xds_model_ctx_max_tok(const xds_model_ctx *ctx) { return ctx->max_tok; }
xds_moe_scratch *xds_model_ctx_moe(xds_model_ctx *ctx) { return ctx->moe; }
xds_kv_cache *xds_model_ctx_kv(xds_model_ctx *ctx) { return ctx->kv; }
const xds_model *xds_model_ctx_model(const xds_model_ctx *ctx) { return ctx->m; }

xds_status xds_model_batch_check(const xds_model_ctx *ctx, const xds_batch *b) {
    const xds_model_config *c = &ctx->m->cfg;
    if (b->n_tok <= 0 || b->n_tok > ctx->max_tok)
        return xds_err_set(XDS_ERR_INVALID, "model: batch of %d tokens (context holds 1..%d)", b->n_tok,
                           ctx->max_tok);
    for (int i = 0; i < b->n_tok; i++) {
        if (b->tokens[i] < 0 || b->tokens[i] >= c->n_vocab)
            return xds_err_set(XDS_ERR_INVALID, "model: batch token %d: id %d outside the vocabulary [0, %d)", i,
                               b->tokens[i], c->n_vocab);
        if (!ctx->kv) continue;
        if (b->seq[i] < 0 || b->seq[i] >= ctx->kv->max_seqs)
            return xds_err_set(XDS_ERR_INVALID, "model: batch token %d: sequence slot %d out of range", i,
                               b->seq[i]);
        if (b->pos[i] < 0 || b->pos[i] >= xds_kv_seq_capacity(ctx->kv, b->seq[i]))
            return xds_err_set(XDS_ERR_INVALID,
                               "model: batch token %d: position %d not covered by sequence %d's KV blocks "
                               "(%d positions)",
                               i, b->pos[i], b->seq[i], xds_kv_seq_capacity(ctx->kv, b->seq[i]));
    }
    return XDS_OK;
}

/* ------------------------------------------------------------------------ */

void xds_model_embed(xds_model_ctx *ctx, const xds_batch *b, float *x) {
    int E = ctx->m->cfg.n_embd;
    for (int t = 0; t < b->n_tok; t++) xds_get_row(&ctx->m->tok_embd, b->tokens[t], x + (size_t)t * E);
}

static void rmsnorm_rows(float *y, const float *x, const float *g, int n_tok, int n, float eps) {
    for (int t = 0; t < n_tok; t++) xds_rmsnorm(y + (size_t)t * n, x + (size_t)t * n, g, n, eps);
}

/* cos/sin for each batch token's position: rope[t*(rope_dim) + 2i] = cos, +1 = sin. */
static void rope_table(xds_model_ctx *ctx, const xds_batch *b) {
    const xds_model *m = ctx->m;
    int half = m->cfg.rope_dim / 2;
    for (int t = 0; t < b->n_tok; t++) {
        float *cs = ctx->rope + (size_t)t * m->cfg.rope_dim;
        float p = (float)b->pos[t];
        for (int i = 0; i < half; i++) {
            float a = p * m->rope_inv_freq[i]; /* f32 product, as torch */
            cs[2 * i] = cosf(a) * m->rope_attn_factor;
            cs[2 * i + 1] = sinf(a) * m->rope_attn_factor;
        }
    }
}

static void rope_apply(const xds_model *m, float *v, const float *cs) {
    int d = m->cfg.rope_dim, half = d / 2;
    if (m->cfg.rope_mode == XDS_ROPE_MODE_NEOX) {
        for (int i = 0; i < half; i++) {
            float c = cs[2 * i], s = cs[2 * i + 1];
            float x0 = v[i], x1 = v[i + half];
            v[i] = x0 * c - x1 * s;
            v[i + half] = x1 * c + x0 * s;
        }
    } else {
        for (int i = 0; i < half; i++) {
            float c = cs[2 * i], s = cs[2 * i + 1];
            float x0 = v[2 * i], x1 = v[2 * i + 1];
            v[2 * i] = x0 * c - x1 * s;
            v[2 * i + 1] = x1 * c + x0 * s;
        }
    }
}

typedef struct {
    xds_model_ctx *ctx;
    const xds_batch *b;
    int layer;
} attn_job;


/* One (token, query head): softmax(q . K^T * scale) . V over positions 0..pos. */
static void attn_task(void *arg, int task, int thread) {
    attn_job *J = arg;
    xds_model_ctx *ctx = J->ctx;
    const xds_model_config *c = &ctx->m->cfg;
    xds_kv_cache *kv = ctx->kv;
    int H = c->n_head, hd = c->head_dim, grp = c->n_head / c->n_head_kv;
    int t = task / H, h = task % H, kvh = h / grp;
    int qd = H * hd, kvd = c->n_head_kv * hd;
    size_t layer_off = (size_t)J->layer * kv->n_blocks * kv->block_size * kvd;
    xds_attn_src src = {kv->k + layer_off, kv->v + layer_off, kv->seqs[J->b->seq[t]].blocks,
                        kv->block_size, kvd, kvh * hd, hd};
    const float *q = ctx->q + (size_t)t * qd + (size_t)h * hd;
    float *o = ctx->att + (size_t)t * qd + (size_t)h * hd;
    float *sc = ctx->scores + (size_t)thread * ctx->max_pos;
    int n = J->b->pos[t] + 1;
    if (ctx->attn_avx2) xds_attn_head_avx2(&src, q, n, ctx->m->attn_scale, sc, o);
    else xds_attn_head_ref(&src, q, n, ctx->m->attn_scale, sc, o);
}

/* One (token, KV head): its G query heads at once, K/V read once per group. */
static void attn_group_task(void *arg, int task, int thread) {
    attn_job *J = arg;
    xds_model_ctx *ctx = J->ctx;
    const xds_model_config *c = &ctx->m->cfg;
    xds_kv_cache *kv = ctx->kv;
    int HK = c->n_head_kv, hd = c->head_dim, G = ctx->attn_group;
    int t = task / HK, kvh = task % HK;
    int qd = c->n_head * hd, kvd = HK * hd;
    size_t layer_off = (size_t)J->layer * kv->n_blocks * kv->block_size * kvd;
    xds_attn_src src = {kv->k + layer_off, kv->v + layer_off, kv->seqs[J->b->seq[t]].blocks,
                        kv->block_size, kvd, kvh * hd, hd};
    size_t q0 = (size_t)t * qd + (size_t)kvh * G * hd;
    float *sc = ctx->scores + (size_t)thread * ctx->max_pos * G;
    xds_attn_group_avx2(&src, ctx->q + q0, G, J->b->pos[t] + 1, ctx->m->attn_scale, sc, ctx->max_pos,
                        ctx->att + q0);
}

void xds_model_attention(xds_model_ctx *ctx, int layer, const xds_batch *b, float *x) {
    const xds_model *m = ctx->m;
    const xds_model_config *c = &m->cfg;
    const xds_layer_weights *w = &m->layers[layer];
    int T = b->n_tok, E = c->n_embd, hd = c->head_dim;
    int qd = c->n_head * hd, kvd = c->n_head_kv * hd;
    XDS_ASSERT(ctx->kv && T <= ctx->max_tok);
    if (w->mla) {
        xds_mla_attention(ctx, layer, b, x);
        return;
    }
    rmsnorm_rows(ctx->xn, x, w->attn_norm, T, E, c->rms_eps);
    {   /* q, k, v share the normed input: one quantization, one pool run */
        const xds_tensor *ws[3] = {&w->wq, &w->wk, &w->wv};
        float *ys[3] = {ctx->q, ctx->k, ctx->v};
        xds_matmul_multi(ctx->pool, 3, ws, ctx->xn, ys, T);
    }
    if (w->q_norm) xds_qk_norm(m, w, ctx->q, ctx->k, T);
    rope_table(ctx, b);
    for (int t = 0; t < T; t++) {
        const float *cs = ctx->rope + (size_t)t * c->rope_dim;
        for (int h = 0; h < c->n_head; h++) rope_apply(m, ctx->q + (size_t)t * qd + (size_t)h * hd, cs);
        for (int h = 0; h < c->n_head_kv; h++) rope_apply(m, ctx->k + (size_t)t * kvd + (size_t)h * hd, cs);
        memcpy(xds_kv_k(ctx->kv, layer, b->seq[t], b->pos[t]), ctx->k + (size_t)t * kvd, sizeof(float) * kvd);
        memcpy(xds_kv_v(ctx->kv, layer, b->seq[t], b->pos[t]), ctx->v + (size_t)t * kvd, sizeof(float) * kvd);
    }
    attn_job J = {ctx, b, layer};
    /* whole GQA groups read K/V once per group (faster prefill), but give only
     * n_head_kv tasks per token: single-token decode keeps one task per query
     * head so every thread has work (measured: grouped decode was slower on 2
     * threads with 3 KV heads) */
    if (ctx->attn_group > 1 && T * c->n_head_kv >= 2 * ctx->n_threads)
        xds_pool_run(ctx->pool, attn_group_task, &J, T * c->n_head_kv);
    else xds_pool_run(ctx->pool, attn_task, &J, T * c->n_head);
    xds_matmul(ctx->pool, &w->wo, ctx->att, ctx->xn, T);
    xds_add(x, ctx->xn, T * E);
}

void xds_model_ffn(xds_model_ctx *ctx, int layer, float *x, int n_tok) {
    const xds_model *m = ctx->m;
    const xds_model_config *c = &m->cfg;
    const xds_layer_weights *w = &m->layers[layer];
    int E = c->n_embd;
    XDS_ASSERT(n_tok <= ctx->max_tok);
    if (w->moe) {
        xds_moe_ffn(ctx, layer, x, n_tok);
        return;
    }
    rmsnorm_rows(ctx->xn, x, w->ffn_norm, n_tok, E, c->rms_eps);
    {
        const xds_tensor *ws[2] = {&w->w_gate, &w->w_up};
        float *ys[2] = {ctx->gate, ctx->up};
        xds_matmul_multi(ctx->pool, 2, ws, ctx->xn, ys, n_tok);
    }
    xds_silu_mul(ctx->gate, ctx->up, n_tok * c->n_ff);
    xds_matmul(ctx->pool, &w->w_down, ctx->gate, ctx->xn, n_tok);
    xds_add(x, ctx->xn, n_tok * E);
}

void xds_model_lm_head(xds_model_ctx *ctx, const float *x, const int32_t *rows, int n_rows, float *logits) {
    const xds_model *m = ctx->m;
    int E = m->cfg.n_embd;
    XDS_ASSERT(n_rows <= ctx->max_tok);
    for (int i = 0; i < n_rows; i++)
        xds_rmsnorm(ctx->xn + (size_t)i * E, x + (size_t)rows[i] * E, m->output_norm, E, m->cfg.rms_eps);
    xds_matmul(ctx->pool, &m->output, ctx->xn, logits, n_rows);
}

xds_status xds_model_forward(xds_model_ctx *ctx, const xds_batch *b, const int32_t *logit_rows, int n_rows,
                             float *logits) {
    if (!ctx->kv) return xds_err_set(XDS_ERR_INVALID, "model: forward needs a KV cache");
    XDS_TRY(xds_model_batch_check(ctx, b));
    if (n_rows < 0 || n_rows > ctx->max_tok)
        return xds_err_set(XDS_ERR_INVALID, "model: %d logit rows (context holds 0..%d)", n_rows, ctx->max_tok);
    for (int i = 0; i < n_rows; i++)
        if (logit_rows[i] < 0 || logit_rows[i] >= b->n_tok)
            return xds_err_set(XDS_ERR_INVALID, "model: logit row %d outside the batch of %d tokens",
                               logit_rows[i], b->n_tok);
    xds_model_embed(ctx, b, ctx->hidden);
    for (int l = 0; l < ctx->m->cfg.n_layer; l++) {
        xds_model_attention(ctx, l, b, ctx->hidden);
        xds_model_ffn(ctx, l, ctx->hidden, b->n_tok);
    }
    if (n_rows > 0) xds_model_lm_head(ctx, ctx->hidden, logit_rows, n_rows, logits);
    return XDS_OK;
}
