/*
 * mla.c — DeepSeek multi-head latent attention (MLA) as the attention unit of
 * deepseek_v3 / kimi_k2 layers, with a compressed KV cache and the
 * weight-absorbed computation.
 *
 * Math (transformers' DeepseekV3Attention, eager, fp32), per token:
 *   q      = Wq_b . RMSNorm(Wq_a . n) * g_qa   (or Wq . n when q_lora_rank is null)
 *            split per head into q_nope (nope_dim) and q_rope (rope_dim)
 *   [c|kr] = Wkv_a . n;   c = RMSNorm(c) * g_kva (kv_lora_rank),  kr = RoPE(kr) (rope_dim, shared by heads)
 *   k_h    = [Wk_h . c, kr],  v_h = Wv_h . c   with Wkv_b = per head [Wk_h (nope_dim rows); Wv_h (v_dim rows)]
 *   o      = Wo . concat_h softmax(scale q_h . k_h) v_h,  scale = mscale^2 / sqrt(nope + rope)
 *            (mscale = 0.1 mscale_all_dim ln(factor) + 1 with YaRN scaling, else 1)
 * The cache stores only [c | kr] per token and layer (kv_lora_rank + rope_dim
 * floats, xds_model_kv_dims). Attention runs absorbed, for prefill and decode
 * alike: q_h . k_h = (Wk_h^T q_nope_h) . c + q_rope_h . kr, so the query
 * becomes [Wk_h^T q_nope_h | q_rope_h] and attends directly over the cached
 * rows; the weighted sum of cached latents c then goes through Wv_h. RoPE
 * uses interleaved pairs (rope_interleave, the default) or halves.
 *
 * All heads of a token attend over the same cached rows (MQA in latent
 * space). On AVX-512 one pool task takes a token and a chunk of
 * XDS_MLA_HEAD_CHUNK heads (mla_avx512.c: register tiles of 4 heads x 4 keys
 * for the scores, 4 heads x 64 floats for the values, so each row is read once
 * per tile rather than once per head); elsewhere one task per (token, head)
 * runs the portable xds_attn_head_ref. Scratch: S->scores holds
 * XDS_MLA_HEAD_CHUNK rows of max_pos floats per thread.
 *
 * Invariants: the units never allocate; the cache rows of the batch's tokens
 * are written before any token attends (tokens of one sequence in one batch
 * see each other causally); a (token, head)'s attention output is
 * bit-identical whatever the batch, the head chunk, or the thread (the head
 * chunking is fixed by the head count; mla_attn.h).
 */
#include <math.h>
#include <string.h>

#include "kernels/kernels.h"
#include "model/attn.h"
#include "model/mla_attn.h"
#include "model/moe.h"

static float mla_scale(const xds_model *m) {
    const xds_model_config *c = &m->cfg;
    const xds_rope_scaling *r = &c->rope_scaling;
    float s = 1.0f / sqrtf((float)c->head_dim);
    if (r->type != XDS_ROPE_SCALING_NONE && r->mscale_all_dim != 0 && r->factor > 1) {
        float ms = 0.1f * r->mscale_all_dim * logf(r->factor) + 1.0f;
        s = s * ms * ms;
    }
    return s;
}

static void rope_rot(const xds_model *m, float *v, const float *cs) {
    int half = m->cfg.rope_dim / 2;
    if (m->cfg.rope_mode == XDS_ROPE_MODE_NEOX) {
        for (int i = 0; i < half; i++) {
            float c = cs[2 * i], s = cs[2 * i + 1], x0 = v[i], x1 = v[i + half];
            v[i] = x0 * c - x1 * s;
            v[i + half] = x1 * c + x0 * s;
        }
    } else {
        for (int i = 0; i < half; i++) {
            float c = cs[2 * i], s = cs[2 * i + 1], x0 = v[2 * i], x1 = v[2 * i + 1];
            v[2 * i] = x0 * c - x1 * s;
            v[2 * i + 1] = x1 * c + x0 * s;
        }
    }
}

typedef struct {
    xds_moe_scratch *S;
    xds_kv_cache *kv;
    const xds_batch *b;
    int layer, H, Lw, R;
    int n_chunk; /* head chunks per token (AVX-512 path), 0: one task per head */
    float scale;
} mla_job;

static xds_attn_src mla_src(const mla_job *J, int t) {
    const xds_kv_cache *kv = J->kv;
    size_t layer_off = (size_t)J->layer * kv->n_blocks * kv->block_size * kv->k_dim;
    xds_attn_src src = {kv->k + layer_off, kv->k + layer_off, kv->seqs[J->b->seq[t]].blocks,
                        kv->block_size, kv->k_dim, 0, J->Lw};
    return src;
}

/* Portable path, one (token, head): attends with the absorbed query over the
 * cached [c | kr] rows; the output (weighted sum of rows) overwrites the
 * query in place (the reference kernel finishes reading q before writing out). */
static void mla_task(void *arg, int task, int thread) {
    mla_job *J = arg;
    int t = task / J->H, h = task % J->H;
    xds_attn_src src = mla_src(J, t);
    float *q = J->S->qcat + ((size_t)t * J->H + h) * J->Lw;
    float *sc = J->S->scores + (size_t)thread * XDS_MLA_HEAD_CHUNK * J->S->max_pos;
    xds_attn_head_ref(&src, q, J->b->pos[t] + 1, J->scale, sc, q);
}

/* AVX-512 path, one (token, chunk of XDS_MLA_HEAD_CHUNK heads): the chunk's
 * heads share every cached row read (mla_avx512.c); outputs overwrite the
 * queries' first R floats in place (the kernel reads all of q first). */
static void mla_chunk_task(void *arg, int task, int thread) {
    mla_job *J = arg;
    int t = task / J->n_chunk, h0 = (task % J->n_chunk) * XDS_MLA_HEAD_CHUNK;
    int G = J->H - h0 < XDS_MLA_HEAD_CHUNK ? J->H - h0 : XDS_MLA_HEAD_CHUNK;
    xds_attn_src src = mla_src(J, t);
    float *q = J->S->qcat + ((size_t)t * J->H + h0) * J->Lw;
    float *sc = J->S->scores + (size_t)thread * XDS_MLA_HEAD_CHUNK * J->S->max_pos;
    xds_mla_attn_heads_avx512(&src, q, J->Lw, G, J->b->pos[t] + 1, J->R, J->scale, sc, J->S->max_pos, q, J->Lw);
}

typedef struct {
    const xds_mla_layer *a;
    xds_moe_scratch *S;
    int T, H, nope, vd, qk, R, Lw;
} head_job;

typedef struct {
    const xds_model *m;
    const xds_mla_layer *a;
    xds_moe_scratch *S;
    xds_kv_cache *kv;
    const xds_batch *b;
    int layer;
} rope_job;

/* Token t: its RoPE table, the normed latent and rotated rope key (kva row
 * t) written to the cache, every head's rope query part rotated and copied
 * into qcat[t][h][R:]. Tokens touch disjoint rows (cache rows included). */
static void rope_task(void *arg, int t, int thread) {
    (void)thread;
    rope_job *J = arg;
    const xds_model *m = J->m;
    const xds_model_config *c = &m->cfg;
    xds_moe_scratch *S = J->S;
    int H = c->n_head, R = c->mla.kv_lora_rank, rd = c->rope_dim, nope = c->mla.nope_dim, qk = c->head_dim;
    int Lw = R + rd, half = rd / 2;
    float *cs = S->rope + (size_t)t * rd;
    float p = (float)J->b->pos[t];
    for (int i = 0; i < half; i++) {
        float ang = p * m->rope_inv_freq[i];
        cs[2 * i] = cosf(ang) * m->rope_attn_factor;
        cs[2 * i + 1] = sinf(ang) * m->rope_attn_factor;
    }
    float *row = S->kva + (size_t)t * Lw;
    xds_rmsnorm(row, row, J->a->kv_a_norm, R, c->rms_eps);
    rope_rot(m, row + R, cs);
    memcpy(xds_kv_k(J->kv, J->layer, J->b->seq[t], J->b->pos[t]), row, sizeof(float) * Lw);
    for (int h = 0; h < H; h++) {
        float *qh = S->q + ((size_t)t * H + h) * qk;
        rope_rot(m, qh + nope, cs);
        memcpy(S->qcat + ((size_t)t * H + h) * Lw + R, qh + nope, sizeof(float) * rd);
    }
}

/* Head h's absorbed query for every token (serial matmul on this thread's
 * gather buffer): qcat[t][h][0:R] = Wk_h^T q_nope[t][h]. */
static void absorb_task(void *arg, int h, int thread) {
    head_job *J = arg;
    xds_moe_scratch *S = J->S;
    int T = J->T, H = J->H;
    float *tmp = S->tmp + (size_t)thread * S->max_tok * S->tmp_w;
    for (int t = 0; t < T; t++) memcpy(tmp + (size_t)t * J->nope, S->q + ((size_t)t * H + h) * J->qk, sizeof(float) * J->nope);
    xds_matmul_rows(NULL, &J->a->wk_b_t, (int64_t)h * J->R, (int64_t)(h + 1) * J->R, tmp, S->qcat + (size_t)h * J->Lw,
                    (int64_t)H * J->Lw, T);
}

/* Head h's output for every token: att[t][h] = Wv_h . (weighted latent). */
static void value_task(void *arg, int h, int thread) {
    head_job *J = arg;
    xds_moe_scratch *S = J->S;
    int T = J->T, H = J->H;
    float *tmp = S->tmp + (size_t)thread * S->max_tok * S->tmp_w;
    for (int t = 0; t < T; t++) memcpy(tmp + (size_t)t * J->R, S->qcat + ((size_t)t * H + h) * J->Lw, sizeof(float) * J->R);
    const xds_tensor *wv = J->a->wv_b.data ? &J->a->wv_b : &J->a->wkv_b;
    int64_t r0 = J->a->wv_b.data ? (int64_t)h * J->vd : (int64_t)h * (J->nope + J->vd) + J->nope;
    xds_matmul_rows(NULL, wv, r0, r0 + J->vd, tmp, S->att + (size_t)h * J->vd, (int64_t)H * J->vd, T);
}

void xds_mla_attention(xds_model_ctx *ctx, int layer, const xds_batch *b, float *x) {
    const xds_model *m = xds_model_ctx_model(ctx);
    const xds_model_config *c = &m->cfg;
    const xds_layer_weights *w = &m->layers[layer];
    const xds_mla_layer *a = w->mla;
    xds_moe_scratch *S = xds_model_ctx_moe(ctx);
    xds_pool *pool = xds_model_ctx_pool(ctx);
    xds_kv_cache *kv = xds_model_ctx_kv(ctx);
    int T = b->n_tok, E = c->n_embd, H = c->n_head, R = c->mla.kv_lora_rank, rd = c->rope_dim;
    int nope = c->mla.nope_dim, vd = c->mla.v_dim, qk = c->head_dim, Lw = R + rd;
    XDS_ASSERT(kv && T <= S->max_tok && kv->k_dim == Lw);
    float *xn = S->proj;
    for (int t = 0; t < T; t++) xds_rmsnorm(xn + (size_t)t * E, x + (size_t)t * E, w->attn_norm, E, c->rms_eps);
    /* the first query projection and the latent + rope key share the normed
     * input: one quantization, one pool run */
    {
        const xds_tensor *ws[2] = {c->mla.q_lora_rank > 0 ? &a->wq_a : &a->wq, &a->wkv_a};
        float *ys[2] = {c->mla.q_lora_rank > 0 ? S->qa : S->q, S->kva};
        xds_matmul_multi(pool, 2, ws, xn, ys, T);
    }
    if (c->mla.q_lora_rank > 0) {
        int QR = c->mla.q_lora_rank;
        for (int t = 0; t < T; t++)
            xds_rmsnorm(S->qa + (size_t)t * QR, S->qa + (size_t)t * QR, a->q_a_norm, QR, c->rms_eps);
        xds_matmul(pool, &a->wq_b, S->qa, S->q, T);
    }
    /* per token: RoPE, the latent + rope key into the cache, the rope part
     * of every head's query into qcat */
    rope_job RJ = {m, a, S, kv, b, layer};
    xds_pool_run(pool, rope_task, &RJ, T);
    /* absorbed query: qcat[t][h][0:R] = Wk_h^T q_nope[t][h], one task per head */
    head_job HJ = {a, S, T, H, nope, vd, qk, R, Lw};
    if (nope == 0)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < H; h++) memset(S->qcat + ((size_t)t * H + h) * Lw, 0, sizeof(float) * R);
    else xds_pool_run(pool, absorb_task, &HJ, H);
    /* attention: per (token, head chunk) on AVX-512, else per (token, head);
     * the chunking never changes a head's bits (mla_attn.h) */
    mla_job J = {S, kv, b, layer, H, Lw, R, 0, mla_scale(m)};
    if (xds_cpu_level_get() == XDS_CPU_AVX512) {
        J.n_chunk = (H + XDS_MLA_HEAD_CHUNK - 1) / XDS_MLA_HEAD_CHUNK;
        xds_pool_run(pool, mla_chunk_task, &J, T * J.n_chunk);
    } else {
        xds_pool_run(pool, mla_task, &J, T * H);
    }
    /* values: att[t][h] = Wv_h . (weighted latent), one task per head */
    xds_pool_run(pool, value_task, &HJ, H);
    xds_matmul(pool, &a->wo, S->att, S->proj, T);
    xds_add(x, S->proj, T * E);
}
