/*
 * mla_avx512.c — AVX-512F absorbed MLA attention for a chunk of query heads
 * of one token over the shared latent rows (see mla_attn.h). Compiled with
 * the AVX-512 flags; called only after a run-time CPU check.
 *
 * Register tiles, so that each cached row is read from L1/L2 once per tile
 * instead of once per head:
 *   scores: 4 heads x 4 keys = 16 zmm accumulators over the row in 16-float
 *           chunks (4 query + 4 row loads per 16 FMA), reduced by one shuffle
 *           tree that turns 4 accumulators into 4 sums;
 *   values: 4 heads x 64 floats (4 zmm of the row, the 4 probabilities
 *           broadcast) = 16 accumulators over the keys in ascending order.
 *
 * Batch invariance (tests/unit/test_mla_attn.c, test_batch_invariance.c):
 * every (head, key) dot starts from zero and runs the FMA chain over the
 * chunks 0, 1, ... (the tail chunk with zero-masked loads) in one accumulator,
 * then the same lane tree (lanes i + i+8, then i + i+4, then i + i+2, then
 * i + i+1) whatever the tile: an edge tile (fewer heads or keys) is the same
 * code with the unused accumulators left at zero, and lanes of different
 * accumulators never mix; the scale is applied after the sum. Every (head,
 * value float) sum starts from zero and adds p[j] * row_j by FMA for j = 0, 1,
 * ..., n - 1 in one lane whatever the tile. The softmax is xds_softmax on the
 * head's own row of n scores. So a head's output depends only on its query,
 * the rows and n.
 */
#include <immintrin.h>

#include "base/status.h"
#include "kernels/kernels.h"
#include "model/mla_attn.h"

#define INLINE static inline __attribute__((always_inline))
#define UNROLL _Pragma("GCC unroll 4")

/* The sums of the 16 lanes of a, b, c, d (lanes 0..3 of the result), each by
 * the fixed tree ((l_i + l_i+8) + (l_i+4 + l_i+12)) for i < 4, then
 * (e0 + e2) + (e1 + e3): no lane of one input meets a lane of another. */
INLINE __m128 hsum4(__m512 a, __m512 b, __m512 c, __m512 d) {
    __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
    __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(3, 2, 3, 2)));
    /* 128-bit block 0: a's 4 partial sums, 1: b's, 2: c's, 3: d's */
    __m512 x = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(3, 1, 3, 1)));
    x = _mm512_add_ps(x, _mm512_permute_ps(x, _MM_SHUFFLE(1, 0, 3, 2)));
    x = _mm512_add_ps(x, _mm512_permute_ps(x, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm512_castps512_ps128(
        _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), x));
}

/* Scores of NH heads (rows q[h]) x NK keys (rows k[j]) over nc full chunks
 * and a tail chunk of mask tm (0: none): s[h][j] = scale * dot. */
INLINE void score_tile(const float *const *q, const float *const *k, int NH, int NK, int nc, __mmask16 tm,
                       float scale, float *const *s) {
    __m512 acc[4][4];
    UNROLL
    for (int h = 0; h < 4; h++)
        UNROLL
        for (int j = 0; j < 4; j++) acc[h][j] = _mm512_setzero_ps();
    for (int c = 0; c < nc; c++) {
        __m512 kv[4];
        UNROLL
        for (int j = 0; j < NK; j++) kv[j] = _mm512_loadu_ps(k[j] + 16 * c);
        UNROLL
        for (int h = 0; h < NH; h++) {
            __m512 qv = _mm512_loadu_ps(q[h] + 16 * c);
            UNROLL
            for (int j = 0; j < NK; j++) acc[h][j] = _mm512_fmadd_ps(qv, kv[j], acc[h][j]);
        }
    }
    if (tm) {
        __m512 kv[4];
        UNROLL
        for (int j = 0; j < NK; j++) kv[j] = _mm512_maskz_loadu_ps(tm, k[j] + 16 * nc);
        UNROLL
        for (int h = 0; h < NH; h++) {
            __m512 qv = _mm512_maskz_loadu_ps(tm, q[h] + 16 * nc);
            UNROLL
            for (int j = 0; j < NK; j++) acc[h][j] = _mm512_fmadd_ps(qv, kv[j], acc[h][j]);
        }
    }
    const __m128 vs = _mm_set1_ps(scale);
    UNROLL
    for (int h = 0; h < NH; h++) {
        __m128 d4 = _mm_mul_ps(hsum4(acc[h][0], acc[h][1], acc[h][2], acc[h][3]), vs);
        if (NK == 4) {
            _mm_storeu_ps(s[h], d4);
        } else {
            float t[4];
            _mm_storeu_ps(t, d4);
            UNROLL
            for (int j = 0; j < NK; j++) s[h][j] = t[j];
        }
    }
}

/* out[h][d0 + 16 c + i] = sum_j p[h][j] row_j[d0 + 16 c + i] for h < NH,
 * c < NC (chunk c's lanes masked by m[c]). */
INLINE void value_tile(const xds_attn_src *s, int n, int d0, const float *const *p, int NH, int NC,
                       const __mmask16 *m, float *const *out) {
    const int B = s->B, kvd = s->kvd;
    __m512 acc[4][4];
    UNROLL
    for (int h = 0; h < 4; h++)
        UNROLL
        for (int c = 0; c < 4; c++) acc[h][c] = _mm512_setzero_ps();
    for (int p0 = 0, bi = 0; p0 < n; p0 += B, bi++) {
        const float *kb = s->k + (size_t)s->blocks[bi] * B * kvd + s->off + d0;
        int cnt = n - p0 < B ? n - p0 : B;
        for (int j = 0; j < cnt; j++) {
            const float *r = kb + (size_t)j * kvd;
            __m512 rv[4];
            UNROLL
            for (int c = 0; c < NC; c++) rv[c] = _mm512_maskz_loadu_ps(m[c], r + 16 * c);
            UNROLL
            for (int h = 0; h < NH; h++) {
                __m512 pv = _mm512_set1_ps(p[h][p0 + j]);
                UNROLL
                for (int c = 0; c < NC; c++) acc[h][c] = _mm512_fmadd_ps(pv, rv[c], acc[h][c]);
            }
        }
    }
    UNROLL
    for (int h = 0; h < NH; h++)
        UNROLL
        for (int c = 0; c < NC; c++) _mm512_mask_storeu_ps(out[h] + d0 + 16 * c, m[c], acc[h][c]);
}

static inline const float *row_at(const xds_attn_src *s, int j) {
    return s->k + (size_t)s->blocks[j / s->B] * s->B * s->kvd + (size_t)(j % s->B) * s->kvd + s->off;
}

void xds_mla_scores_avx512(const xds_attn_src *s, const float *q, int ldq, int G, int n, float scale, float *sc,
                           int ldsc) {
    XDS_ASSERT(n >= 1 && G >= 1 && ldsc >= n);
    const int nc = s->hd / 16;
    const __mmask16 tm = (__mmask16)((1u << (s->hd % 16)) - 1);
    /* scores: key tiles outer (4 rows stay in L1 while every head tile uses them) */
    for (int j = 0; j < n; j += 4) {
        int nk = n - j < 4 ? n - j : 4;
        const float *k[4];
        for (int i = 0; i < 4; i++) k[i] = row_at(s, j + (i < nk ? i : 0));
        for (int g = 0; g < G; g += 4) {
            int nh = G - g < 4 ? G - g : 4;
            const float *qh[4];
            float *sh[4];
            for (int h = 0; h < 4; h++) {
                int hh = g + (h < nh ? h : 0);
                qh[h] = q + (size_t)hh * ldq;
                sh[h] = sc + (size_t)hh * ldsc + j;
            }
#define ST(NH, NK) score_tile(qh, k, NH, NK, nc, tm, scale, sh)
#define ST_NK(NH)                                                                                          \
    switch (nk) {                                                                                          \
    case 4: ST(NH, 4); break;                                                                              \
    case 3: ST(NH, 3); break;                                                                              \
    case 2: ST(NH, 2); break;                                                                              \
    default: ST(NH, 1); break;                                                                             \
    }
            switch (nh) {
            case 4: ST_NK(4); break;
            case 3: ST_NK(3); break;
            case 2: ST_NK(2); break;
            default: ST_NK(1); break;
            }
#undef ST_NK
#undef ST
        }
    }
}

void xds_mla_attn_heads_avx512(const xds_attn_src *s, const float *q, int ldq, int G, int n, int R, float scale,
                               float *sc, int ldsc, float *out, int ldo) {
    XDS_ASSERT(n >= 1 && G >= 1 && ldsc >= n && R >= 1 && R <= s->hd);
    xds_mla_scores_avx512(s, q, ldq, G, n, scale, sc, ldsc);
    for (int g = 0; g < G; g++) xds_softmax(sc + (size_t)g * ldsc, n);
    /* values: 64-float slices of the rows outer (a slice of all n rows stays
     * in L1 while every head tile uses it); every q was read above */
    for (int d0 = 0; d0 < R; d0 += 64) {
        __mmask16 m[4];
        int ncv = 0;
        for (int c = 0; c < 4 && d0 + 16 * c < R; c++, ncv++) {
            int left = R - d0 - 16 * c;
            m[c] = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
        }
        for (int g = 0; g < G; g += 4) {
            int nh = G - g < 4 ? G - g : 4;
            const float *ph[4];
            float *oh[4];
            for (int h = 0; h < 4; h++) {
                int hh = g + (h < nh ? h : 0);
                ph[h] = sc + (size_t)hh * ldsc;
                oh[h] = out + (size_t)hh * ldo;
            }
#define VT(NH, NC) value_tile(s, n, d0, ph, NH, NC, m, oh)
#define VT_NC(NH)                                                                                          \
    switch (ncv) {                                                                                         \
    case 4: VT(NH, 4); break;                                                                              \
    case 3: VT(NH, 3); break;                                                                              \
    case 2: VT(NH, 2); break;                                                                              \
    default: VT(NH, 1); break;                                                                             \
    }
            switch (nh) {
            case 4: VT_NC(4); break;
            case 3: VT_NC(3); break;
            case 2: VT_NC(2); break;
            default: VT_NC(1); break;
            }
#undef VT_NC
#undef VT
        }
    }
}
