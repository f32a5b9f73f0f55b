/*
 * attn.h — the inner loop of attention for one query head over one
 * sequence's paged K/V (internal to src/model): out = softmax(scale * q K^T) V
 * over positions [0, n). A portable version and an AVX2+FMA one
 * (attn_avx2.c, used only when the CPU has it and head_dim % 8 == 0), chosen
 * at run time. Both compute the same math; results agree to f32 rounding.
 */
#ifndef XDS_MODEL_ATTN_H
#define XDS_MODEL_ATTN_H

#include <stdint.h>

typedef struct xds_attn_src {
    const float *k;        /* layer base of the K pool: (n_blocks, B, kvd) */
    const float *v;        /* layer base of the V pool: (n_blocks, B, kvd) */
    const int32_t *blocks; /* the sequence's block table */
    int B;                 /* tokens per block */
    int kvd;               /* floats per token row (n_head_kv * head_dim) */
    int off;               /* offset of this kv head in a row (kvh * head_dim) */
    int hd;                /* head dim */
} xds_attn_src;

/* sc: scratch of >= n floats. */
void xds_attn_head_ref(const xds_attn_src *s, const float *q, int n, float scale, float *sc, float *out);
void xds_attn_head_avx2(const xds_attn_src *s, const float *q, int n, float scale, float *sc, float *out);

/* The G (<= XDS_ATTN_MAX_GROUP) query heads that share one KV head, one
 * token: q and out hold G rows of head_dim, sc G rows of ldsc >= n floats.
 * Each K / V row is read from memory once for the whole group. */
#define XDS_ATTN_MAX_GROUP 16
void xds_attn_group_avx2(const xds_attn_src *s, const float *q, int G, int n, float scale, float *sc, int ldsc,
                         float *out);
/* The same over positions [lo, hi) only (lo a multiple of the block size);
 * with m_out / l_out non-NULL, out is left unnormalized (sum of exp(s - m) v)
 * and each head's max and sum are returned, for a split-K combine. The model
 * does not split keys: a split chosen per batch size would break batch
 * invariance (test_batch_invariance); a fixed, batch-independent split is a
 * possible later speed-up for long-context decode. */
void xds_attn_group_part_avx2(const xds_attn_src *s, const float *q, int G, int lo, int hi, float scale,
                              float *sc, int ldsc, float *out, float *m_out, float *l_out);

#endif
