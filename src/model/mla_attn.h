/*
 * mla_attn.h — the attention inner loop of DeepSeek MLA (internal to
 * src/model): a chunk of query heads of ONE token attending, absorbed, over
 * the same cached latent rows [c | kr] (MQA in latent space). AVX-512F only
 * (mla_avx512.c); mla.c calls it when xds_cpu_level_get() is XDS_CPU_AVX512
 * and otherwise runs xds_attn_head_ref per head (attn.h), which it is tested
 * against (tests/unit/test_mla_attn.c).
 *
 * Batch invariance: a (head, key) score and a (head, value float) sum run the
 * same float operations in the same order whatever chunk of heads, position in
 * a register tile, or edge path computes them, so a head's output does not
 * depend on G, on the head's place in the chunk, or on n modulo the tile.
 */
#ifndef XDS_MODEL_MLA_ATTN_H
#define XDS_MODEL_MLA_ATTN_H

#include "model/attn.h"

/* Heads per mla.c task (and scratch rows per thread). */
#define XDS_MLA_HEAD_CHUNK 16

/*
 * For g < G: s[g][j] = scale * dot(q_g[0:s->hd], row_j[0:s->hd]) for j < n,
 * p[g] = softmax(s[g]), out_g[0:R] = sum_j p[g][j] row_j[0:R] (j ascending),
 * with row_j = s->k + blocks[j / B] * B * kvd + (j % B) * kvd + s->off
 * (s->v is not used: MLA values are the first R floats of the same rows).
 * q: G rows of ldq floats; out: G rows of ldo floats, R <= s->hd; out may
 * alias q (every q is read before any out is written). sc: G rows of
 * ldsc >= n floats of scratch. n >= 1.
 */
void xds_mla_attn_heads_avx512(const xds_attn_src *s, const float *q, int ldq, int G, int n, int R, float scale,
                               float *sc, int ldsc, float *out, int ldo);
/* The scores alone (the first step of the above): sc[g][j] = scale *
 * dot(q_g, row_j) for g < G, j < n. Exposed for the bit-identity test. */
void xds_mla_scores_avx512(const xds_attn_src *s, const float *q, int ldq, int G, int n, float scale, float *sc,
                           int ldsc);

#endif
