/*
 * matmul_avx2.c — AVX2+FMA+F16C kernels: activation quantization,
 * quantized-weight GEMM with VPMADDUBSW/VPMADDWD, float-weight GEMM with FMA.
 * Compiled with AVX2 flags; called only after the run-time check.
 *
 * Quantized GEMM: weights are unpacked two 32-blocks at a time into [lo | hi]
 * halves matching the activations' pair layout (kern_impl.h). Q4_0/Q4_1
 * nibbles are unsigned: maddubs(u, x) is exact (|pair sum| <= 2*15*127) and
 * the lo and hi halves add in int16 (<= 7620) before VPMADDWD; the offset
 * term mw*s is added 4 blocks per FMA. Q8_0 uses maddubs(|w|, sign(x, w))
 * (|pair sum| <= 2*128*127 < 32768, halves added in int32) and has no offset.
 * One token: rows one after another with scales read from the row; several
 * tokens: a register tile of R (<= 4) rows x T (<= 2) tokens. Both reduce each
 * output in the same fixed order (see qk_tile), so a token's results do not
 * depend on the other tokens of the call (batch invariance); the float GEMM
 * has one FMA chain per output in every tile shape.
 */
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kern_impl.h"

static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline int hsum256i(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

void xds_act_quant_avx2(const float *x, int64_t nb, uint8_t *dst) {
    int8_t *qs = (int8_t *)dst;
    float *ds = (float *)(dst + xq_qs_bytes(nb));
    if (nb & 1) { /* the missing second block of the last pair */
        _mm_storeu_si128((__m128i *)(qs + xq_qs_index(nb, 0)), _mm_setzero_si128());
        _mm_storeu_si128((__m128i *)(qs + xq_qs_index(nb, 16)), _mm_setzero_si128());
    }
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int64_t b = 0; b < nb; b++) {
        __m256 v[4];
        __m256 mx = _mm256_setzero_ps();
        for (int k = 0; k < 4; k++) {
            v[k] = _mm256_loadu_ps(x + b * 32 + k * 8);
            mx = _mm256_max_ps(mx, _mm256_and_ps(v[k], absmask));
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        float amax = _mm_cvtss_f32(m4);
        float db = amax / 127.0f, id = db != 0.0f ? 1.0f / db : 0.0f;
        __m256 vid = _mm256_set1_ps(id);
        __m256i q[4];
        for (int k = 0; k < 4; k++) q[k] = _mm256_cvtps_epi32(_mm256_mul_ps(v[k], vid));
        int sum = hsum256i(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
        /* pack 32 int32 -> 32 int8 in order */
        __m256i p01 = _mm256_packs_epi32(q[0], q[1]), p23 = _mm256_packs_epi32(q[2], q[3]);
        __m256i p = _mm256_packs_epi16(p01, p23);
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm_storeu_si128((__m128i *)(qs + xq_qs_index(b, 0)), _mm256_castsi256_si128(p));
        _mm_storeu_si128((__m128i *)(qs + xq_qs_index(b, 16)), _mm256_extracti128_si256(p, 1));
        ds[2 * b] = db;
        ds[2 * b + 1] = db * (float)sum;
    }
}

/* ---- quantized GEMM ------------------------------------------------------ */

/* Per-row interleaved block scales: dm[2b] = dw_b, dm[2b+1] = mw_b. */
static void prep_scales(xds_dtype type, const uint8_t *row, int64_t nb, float *dm) {
    for (int64_t b = 0; b < nb; b++) {
        if (type == XDS_DTYPE_Q4_1) {
            const xds_block_q4_1 *blk = (const xds_block_q4_1 *)row + b;
            dm[2 * b] = _cvtsh_ss(blk->d);
            dm[2 * b + 1] = _cvtsh_ss(blk->m);
        } else {
            float d = _cvtsh_ss(type == XDS_DTYPE_Q8_0 ? ((const xds_block_q8_0 *)row)[b].d
                                                       : ((const xds_block_q4_0 *)row)[b].d);
            dm[2 * b] = d;
            dm[2 * b + 1] = type == XDS_DTYPE_Q8_0 ? 0.0f : -8.0f * d;
        }
    }
}

/* Weights of blocks 2p, 2p+1 in the pair layout of the activations:
 * lo = [b0 w[0:16] | b1 w[0:16]], hi = [b0 w[16:32] | b1 w[16:32]] (b1 = 0
 * unless two). Q4: unsigned nibbles; Q8_0: signed bytes. */
static inline __attribute__((always_inline)) void load_w2(int type, const uint8_t *row, int64_t p, int two,
                                                          __m256i *lo, __m256i *hi) {
    if (type == XDS_DTYPE_Q8_0) {
        const uint8_t *b0 = row + 2 * p * 34 + 2;
        __m256i w0 = _mm256_loadu_si256((const __m256i *)b0);
        __m256i w1 = two ? _mm256_loadu_si256((const __m256i *)(b0 + 34)) : _mm256_setzero_si256();
        *lo = _mm256_permute2x128_si256(w0, w1, 0x20);
        *hi = _mm256_permute2x128_si256(w0, w1, 0x31);
        return;
    }
    int bs = type == XDS_DTYPE_Q4_0 ? 18 : 20, off = type == XDS_DTYPE_Q4_0 ? 2 : 4;
    const uint8_t *b0 = row + 2 * p * bs + off;
    __m128i l0 = _mm_loadu_si128((const __m128i *)b0);
    __m256i q = two ? _mm256_inserti128_si256(_mm256_castsi128_si256(l0), _mm_loadu_si128((const __m128i *)(b0 + bs)), 1)
                    : _mm256_zextsi128_si256(l0);
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    *lo = _mm256_and_si256(q, m4);
    *hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
}

/* 8 int32 lanes (4 per block) of the pair's dot products, as floats. */
static inline __attribute__((always_inline)) __m256 pair_dot(int type, __m256i lo, __m256i hi, __m256i xlo,
                                                             __m256i xhi) {
    const __m256i ones = _mm256_set1_epi16(1);
    if (type == XDS_DTYPE_Q8_0) {
        __m256i a = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(lo), _mm256_sign_epi8(xlo, lo)), ones);
        __m256i b = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(hi), _mm256_sign_epi8(xhi, hi)), ones);
        return _mm256_cvtepi32_ps(_mm256_add_epi32(a, b));
    }
    /* nibbles: each maddubs pair sum <= 2 * 15 * 127, two of them fit int16 */
    __m256i s = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xlo), _mm256_maddubs_epi16(hi, xhi));
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(s, ones));
}

/* [d0 m0 d1 m1] of blocks 2p, 2p+1 read from the weight row (m = -8 d for
 * Q4_0; 0 for Q8_0, whose signed products need no offset). */
static inline __attribute__((always_inline)) __m128 direct_pair(int type, const uint8_t *row, int64_t p,
                                                                int two) {
    if (type == XDS_DTYPE_Q4_1) {
        int32_t a, b = 0;
        memcpy(&a, row + 2 * p * 20, 4);
        if (two) memcpy(&b, row + (2 * p + 1) * 20, 4);
        return _mm_cvtph_ps(_mm_insert_epi32(_mm_cvtsi32_si128(a), b, 1));
    }
    const int bs = type == XDS_DTYPE_Q8_0 ? 34 : 18;
    uint16_t a, b = 0;
    memcpy(&a, row + 2 * p * bs, 2);
    if (two) memcpy(&b, row + (2 * p + 1) * bs, 2);
    __m128 v = _mm_cvtph_ps(_mm_cvtsi32_si128((int)((uint32_t)a | ((uint32_t)b << 16))));
    const float k = type == XDS_DTYPE_Q8_0 ? 0.0f : -8.0f;
    return _mm_mul_ps(_mm_unpacklo_ps(v, v), _mm_setr_ps(1.0f, k, 1.0f, k));
}

static inline __attribute__((always_inline)) __m128 load_pair(const float *v, int two) {
    return two ? _mm_loadu_ps(v) : _mm_castpd_ps(_mm_load_sd((const double *)v));
}
/* [v0 x4 | v2 x4]: the per-lane scale of pair_dot's result */
static inline __attribute__((always_inline)) __m256 spread_pair(__m128 v) {
    return _mm256_permutevar8x32_ps(_mm256_castps128_ps256(v), _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2));
}

/* Lanes of the offset group of blocks [b, b+4): the odd lanes (mw * s) of
 * the blocks that exist, as an all-ones / zero mask. */
static inline __m256i off_mask(int64_t nb, int64_t b) {
    int left = nb - b >= 4 ? 8 : (int)(nb - b) * 2;
    return _mm256_and_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32(left), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)),
                            _mm256_setr_epi32(0, -1, 0, -1, 0, -1, 0, -1));
}

/*
 * Every output y[t][r] is reduced in one fixed order, whatever the tile
 * shape, the number of tokens in the call or the row's position (so a token's
 * result does not depend on which other tokens share the call):
 *   A = sum over pairs p = 0, 1, ... of pair_dot_p * (dw_p * dx_p), one FMA
 *       chain of 8 lanes;
 *   B = sum over groups of 4 blocks of [.. mw_b ..] * [.. s_b ..] (odd
 *       lanes), one FMA chain (Q4_0/Q4_1 only; Q8_0 has no offset);
 *   y = hsum256(A + B).
 * One token streams the rows (scales from the row itself), several tokens
 * use the register tile with prepared scales: same values, same operations.
 */
static inline __attribute__((always_inline)) void
qk_tile(const int R, const int T, const int type, const uint8_t *w, size_t ws, int64_t nb,
        const float *dm, size_t scs, const uint8_t *xq, size_t xs, float *y, int64_t ldy) {
    const int64_t np = (nb + 1) / 2;
    if (T == 1) {
        /* One token: rows one after another (sequential stream), block scales
         * read from the row ([d, m] -> f32 with F16C). */
        const float *ds = xq_ds(xq, nb);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const uint8_t *row = w + r * ws;
            __m256 a = _mm256_setzero_ps(), o = _mm256_setzero_ps();
            __m128 prev = _mm_setzero_ps();
            for (int64_t p = 0; p < np; p++) {
                int two = 2 * p + 1 < nb;
                __m256i lo, hi;
                load_w2(type, row, p, two, &lo, &hi);
                __m256 dot = pair_dot(type, lo, hi, _mm256_loadu_si256((const __m256i *)(xq + p * 64)),
                                      _mm256_loadu_si256((const __m256i *)(xq + p * 64 + 32)));
                __m128 dwp = direct_pair(type, row, p, two);
                a = _mm256_fmadd_ps(dot, spread_pair(_mm_mul_ps(dwp, load_pair(ds + 4 * p, two))) /* = spread(dw) * spread(dx) */, a);
                if (type != XDS_DTYPE_Q8_0) {
                    if (p & 1) {
                        __m256i m = off_mask(nb, 2 * (p - 1));
                        o = _mm256_fmadd_ps(_mm256_and_ps(_mm256_set_m128(dwp, prev), _mm256_castsi256_ps(m)),
                                            _mm256_maskload_ps(ds + 2 * (2 * (p - 1)), m), o);
                    } else if (p + 1 == np) { /* a last group of one pair */
                        __m256i m = off_mask(nb, 2 * p);
                        o = _mm256_fmadd_ps(_mm256_and_ps(_mm256_set_m128(_mm_setzero_ps(), dwp), _mm256_castsi256_ps(m)),
                                            _mm256_maskload_ps(ds + 2 * (2 * p), m), o);
                    }
                    prev = dwp;
                }
            }
            y[r] = hsum256(type != XDS_DTYPE_Q8_0 ? _mm256_add_ps(a, o) : a);
        }
        return;
    }
    /* B: odd lanes of dm * ds are mw_b * s_b; the R x T chains run side by
     * side (each in its own fixed order), parked while the dot chains run. */
    __m256 off[4][2];
    if (type != XDS_DTYPE_Q8_0) {
        __m256 o[4][2];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++)
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) o[r][t] = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; b += 4) {
            __m256i m = off_mask(nb, b);
            __m256 mv[4];
#pragma GCC unroll 4
            for (int r = 0; r < R; r++)
                mv[r] = _mm256_and_ps(_mm256_maskload_ps(dm + r * scs + 2 * b, m), _mm256_castsi256_ps(m));
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) {
                __m256 sv = _mm256_maskload_ps(xq_ds(xq + t * xs, nb) + 2 * b, m);
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) o[r][t] = _mm256_fmadd_ps(mv[r], sv, o[r][t]);
            }
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; r++)
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) off[r][t] = o[r][t];
    }
    __m256 acc[4][2];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) acc[r][t] = _mm256_setzero_ps();
    for (int64_t p = 0; p < np; p++) {
        int two = 2 * p + 1 < nb;
        __m256i lo[4], hi[4];
        __m256 dwp[4];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            load_w2(type, w + r * ws, p, two, &lo[r], &hi[r]);
            dwp[r] = spread_pair(load_pair(dm + r * scs + 4 * p, two));
        }
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            const uint8_t *xr = xq + t * xs;
            __m256i xlo = _mm256_loadu_si256((const __m256i *)(xr + p * 64));
            __m256i xhi = _mm256_loadu_si256((const __m256i *)(xr + p * 64 + 32));
            __m256 dxp = spread_pair(load_pair(xq_ds(xr, nb) + 4 * p, two));
#pragma GCC unroll 4
            for (int r = 0; r < R; r++)
                acc[r][t] = _mm256_fmadd_ps(pair_dot(type, lo[r], hi[r], xlo, xhi), _mm256_mul_ps(dwp[r], dxp),
                                            acc[r][t]);
        }
    }
    if (type != XDS_DTYPE_Q8_0) /* offsets computed up front (below) */
#pragma GCC unroll 4
        for (int r = 0; r < R; r++)
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) acc[r][t] = _mm256_add_ps(acc[r][t], off[r][t]);
#pragma GCC unroll 4
    for (int t = 0; t < T; t++)
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) y[t * ldy + r] = hsum256(acc[r][t]);
}

#define QK2_T(R, TY)                                                      \
    if (T == 2) qk_tile(R, 2, TY, w, ws, nb, dm, scs, xq, xs, y, ldy);    \
    else qk_tile(R, 1, TY, w, ws, nb, dm, scs, xq, xs, y, ldy);
#define QK2_TY(R)                                                \
    switch (type) {                                              \
    case XDS_DTYPE_Q8_0: QK2_T(R, XDS_DTYPE_Q8_0) break;         \
    case XDS_DTYPE_Q4_0: QK2_T(R, XDS_DTYPE_Q4_0) break;         \
    default: QK2_T(R, XDS_DTYPE_Q4_1) break;                     \
    }

static void qk_call(int R, int T, xds_dtype type, const uint8_t *w, size_t ws, int64_t nb,
                    const float *dm, size_t scs, const uint8_t *xq, size_t xs, float *y,
                    int64_t ldy) {
    if (R == 4) {
        QK2_TY(4)
    } else {
        QK2_TY(1)
    }
}

void xds_qgemm_avx2(xds_dtype type, const uint8_t *w, size_t w_row_bytes, int64_t n_rows,
                    int64_t nb, const uint8_t *xq, size_t xq_stride, int n_tok, float *y,
                    int64_t ldy) {
    const size_t scs = (size_t)((2 * nb + 7) & ~7);
    float *dm = malloc(scs * 4 * sizeof(float));
    XDS_ASSERT(dm);
    for (int64_t r0 = 0; r0 < n_rows;) {
        int R = n_rows - r0 >= 4 ? 4 : 1;
        const uint8_t *wr = w + r0 * w_row_bytes;
        if (n_tok > 1) /* one token: qk_tile reads the scales directly */
            for (int r = 0; r < R; r++) prep_scales(type, wr + r * w_row_bytes, nb, dm + r * scs);
        for (int t0 = 0; t0 < n_tok; t0 += 2) {
            int T = n_tok - t0 >= 2 ? 2 : 1;
            qk_call(R, T, type, wr, w_row_bytes, nb, dm, scs, xq + t0 * xq_stride, xq_stride,
                    y + t0 * ldy + r0, ldy);
        }
        r0 += R;
    }
    free(dm);
}

/* ---- float-weight GEMM ----------------------------------------------------- */

static inline __attribute__((always_inline)) __m256 load_f8(int type, const uint8_t *row, int64_t i) {
    if (type == XDS_DTYPE_F32) return _mm256_loadu_ps((const float *)row + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)row + i));
    if (type == XDS_DTYPE_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

static inline float wval(int type, const uint8_t *row, int64_t i) {
    if (type == XDS_DTYPE_F32) return ((const float *)row)[i];
    if (type == XDS_DTYPE_F16) return _cvtsh_ss(((const uint16_t *)row)[i]);
    return xds_bf16_to_f32(((const uint16_t *)row)[i]);
}

static inline __attribute__((always_inline)) void
fk_tile(const int R, const int T, const int type, const uint8_t *w, size_t ws, int64_t n,
        const float *x, int64_t ldx, float *y, int64_t ldy) {
    __m256 acc[4][3];
    #pragma GCC unroll 4
    for (int r = 0; r < R; r++)
        #pragma GCC unroll 4
        for (int t = 0; t < T; t++) acc[r][t] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 wv[4];
        #pragma GCC unroll 4
        for (int r = 0; r < R; r++) wv[r] = load_f8(type, w + r * ws, i);
        #pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            __m256 xv = _mm256_loadu_ps(x + t * ldx + i);
            #pragma GCC unroll 4
            for (int r = 0; r < R; r++) acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
        }
    }
    #pragma GCC unroll 4
    for (int t = 0; t < T; t++)
        #pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            float s = hsum256(acc[r][t]);
            for (int64_t j = i; j < n; j++) s += wval(type, w + r * ws, j) * x[t * ldx + j];
            y[t * ldy + r] = s;
        }
}

#define FK2_T(R, TY)                                             \
    switch (T) {                                                 \
    case 1: fk_tile(R, 1, TY, w, ws, n, x, ldx, y, ldy); break;  \
    case 2: fk_tile(R, 2, TY, w, ws, n, x, ldx, y, ldy); break;  \
    default: fk_tile(R, 3, TY, w, ws, n, x, ldx, y, ldy); break; \
    }
#define FK2_TY(R)                                       \
    switch (type) {                                     \
    case XDS_DTYPE_F32: FK2_T(R, XDS_DTYPE_F32) break;  \
    case XDS_DTYPE_F16: FK2_T(R, XDS_DTYPE_F16) break;  \
    default: FK2_T(R, XDS_DTYPE_BF16) break;            \
    }

static void fk_call(int R, int T, int type, const uint8_t *w, size_t ws, int64_t n, const float *x,
                    int64_t ldx, float *y, int64_t ldy) {
    if (R == 4) {
        FK2_TY(4)
    } else {
        FK2_TY(1)
    }
}

void xds_fgemm_avx2(xds_dtype type, const uint8_t *w, size_t w_row_bytes, int64_t n_rows,
                    int64_t n_in, const float *x, int64_t ldx, int n_tok, float *y, int64_t ldy) {
    for (int64_t r0 = 0; r0 < n_rows;) {
        /* one token: single rows, one sequential stream (see avx512) */
        int R = n_rows - r0 >= 4 && n_tok > 1 ? 4 : 1;
        for (int t0 = 0; t0 < n_tok; t0 += 3) {
            int T = n_tok - t0 >= 3 ? 3 : n_tok - t0;
            fk_call(R, T, type, w + r0 * w_row_bytes, w_row_bytes, n_in, x + t0 * ldx, ldx,
                    y + t0 * ldy + r0, ldy);
        }
        r0 += R;
    }
}

/* ---- W8A8 (see kern_impl.h) -------------------------------------------------
 * No VNNI here: per quad k the group's 64 bytes are two vectors of 8 rows x
 * 4 bytes; the signed weights w = u xor 0x80 enter maddubs(|w|, sign(x, w))
 * (|pair sum| <= 2 * 127 * 127 < 32768, exact) and VPMADDWD with ones turns
 * each row's 4 products into one int32 lane. A tile of up to 4 tokens keeps
 * 2 x T int32 accumulators (rows 0-7, 8-15); the sums are exact, the float
 * ops are the generic kernel's, so the bits are the same. */
static inline __attribute__((always_inline)) void w8_tile2(const int T, const uint8_t *g, int64_t n_in,
                                                           const uint8_t *xa, size_t xs, float *y, int64_t ldy,
                                                           int64_t l0, int64_t l1) {
    __m256i acc[2][4];
    const int32_t *xr[4];
#pragma GCC unroll 4
    for (int t = 0; t < T; t++) {
        xr[t] = (const int32_t *)(xa + t * xs);
        acc[0][t] = acc[1][t] = _mm256_setzero_si256();
    }
    const __m256i k80 = _mm256_set1_epi8((char)0x80), ones = _mm256_set1_epi16(1);
    const int64_t nq = XDS_W8A8_K(n_in) / 4;
    for (int64_t k = 0; k < nq; k++) {
        const uint8_t *gk = g + 64 * k;
        __m256i w0 = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)gk), k80);
        __m256i w1 = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(gk + 32)), k80);
        __m256i a0 = _mm256_abs_epi8(w0), a1 = _mm256_abs_epi8(w1);
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            __m256i xb = _mm256_set1_epi32(xr[t][k]);
            acc[0][t] = _mm256_add_epi32(acc[0][t], _mm256_madd_epi16(_mm256_maddubs_epi16(a0, _mm256_sign_epi8(xb, w0)), ones));
            acc[1][t] = _mm256_add_epi32(acc[1][t], _mm256_madd_epi16(_mm256_maddubs_epi16(a1, _mm256_sign_epi8(xb, w1)), ones));
        }
    }
    const float *sw = (const float *)(g + 16 * XDS_W8A8_K(n_in));
#pragma GCC unroll 4
    for (int t = 0; t < T; t++) {
        const __m256 dx = _mm256_set1_ps(*xa_d(xa + t * xs, n_in));
        float tmp[16];
        _mm256_storeu_ps(tmp, _mm256_mul_ps(_mm256_cvtepi32_ps(acc[0][t]), _mm256_mul_ps(_mm256_loadu_ps(sw), dx)));
        _mm256_storeu_ps(tmp + 8, _mm256_mul_ps(_mm256_cvtepi32_ps(acc[1][t]), _mm256_mul_ps(_mm256_loadu_ps(sw + 8), dx)));
        memcpy(y + t * ldy, tmp + l0, (size_t)(l1 - l0) * sizeof(float));
    }
}

void xds_w8a8_gemm_avx2(const uint8_t *w, int64_t row0, int64_t n_rows, int64_t n_in, const uint8_t *xa,
                        size_t xa_stride, int n_tok, float *y, int64_t ldy) {
    const size_t gbytes = XDS_W8A8_GB(n_in);
    for (int64_t r = row0; r < row0 + n_rows;) {
        int64_t g = r / 16, l0 = r % 16, l1 = row0 + n_rows - g * 16;
        if (l1 > 16) l1 = 16;
        const uint8_t *gp = w + g * gbytes;
        float *yr = y + (r - row0);
        for (int t0 = 0; t0 < n_tok; t0 += 4) {
            int T = n_tok - t0 < 4 ? n_tok - t0 : 4;
            const uint8_t *x0 = xa + t0 * xa_stride;
            float *y0 = yr + t0 * ldy;
            switch (T) {
            case 1: w8_tile2(1, gp, n_in, x0, xa_stride, y0, ldy, l0, l1); break;
            case 2: w8_tile2(2, gp, n_in, x0, xa_stride, y0, ldy, l0, l1); break;
            case 3: w8_tile2(3, gp, n_in, x0, xa_stride, y0, ldy, l0, l1); break;
            default: w8_tile2(4, gp, n_in, x0, xa_stride, y0, ldy, l0, l1); break;
            }
        }
        r = g * 16 + l1;
    }
}
