/*
 * matmul_avx512.c — AVX-512 (F/BW/VL/DQ/VNNI) kernels: activation
 * quantization, quantized-weight GEMM with VPDPBUSD, float-weight GEMM with
 * FMA. Compiled with AVX-512 flags; called only after the run-time check.
 *
 * Quantized GEMM (see kern_impl.h for the u/dw/mw formulation): a register
 * tile of R (<= 4) weight rows x T (<= 4) tokens walks the row two 32-blocks
 * at a time. A zmm of weights holds [blk b: 32 u8 | blk b+1: 32 u8] in natural
 * element order, so the activations need no reordering; VPDPBUSD gives 16
 * int32 lanes (8 per block), which are converted and multiplied by the
 * per-lane scale [dw_b*dx_b x8 | dw_b1*dx_b1 x8]. The offset term mw*s is
 * added into the same accumulators (16 blocks per FMA). Per-row scales are
 * extracted once per row tile with a gather. When a row tile is used by more
 * than one token tile, its unpacked u8 weights are first written to an L1
 * buffer (repack) and reused.
 */
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kern_impl.h"

/* ---- activation quantization -------------------------------------------- */

void xds_act_quant_avx512(const float *x, int64_t nb, uint8_t *dst) {
    int8_t *qs = (int8_t *)dst;
    float *d = (float *)(dst + nb * 32), *s = (float *)(dst + nb * 36);
    for (int64_t b = 0; b < nb; b++) {
        __m512 v0 = _mm512_loadu_ps(x + b * 32), v1 = _mm512_loadu_ps(x + b * 32 + 16);
        float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        float db = amax / 127.0f, id = db != 0.0f ? 1.0f / db : 0.0f;
        __m512 vid = _mm512_set1_ps(id);
        __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, vid));
        __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, vid));
        int sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
        _mm_storeu_si128((__m128i *)(qs + b * 32), _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128((__m128i *)(qs + b * 32 + 16), _mm512_cvtepi32_epi8(q1));
        d[b] = db;
        s[b] = db * (float)sum;
    }
}

/* ---- quantized GEMM ------------------------------------------------------ */

enum { SRC_Q8_0 = 0, SRC_Q4_0 = 1, SRC_Q4_1 = 2, SRC_U8 = 3 };

static inline int src_of(xds_dtype t) {
    return t == XDS_DTYPE_Q8_0 ? SRC_Q8_0 : t == XDS_DTYPE_Q4_0 ? SRC_Q4_0 : SRC_Q4_1;
}

/* Unsigned weights of blocks 2p, 2p+1 of one row; `two` = both blocks exist. */
static inline __attribute__((always_inline)) __m512i load_w2(int src, const uint8_t *row, int64_t p,
                                                             int two) {
    if (src == SRC_U8) {
        if (two) return _mm512_loadu_si512(row + p * 64);
        return _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)(row + p * 64)));
    }
    if (src == SRC_Q8_0) {
        const uint8_t *b0 = row + 2 * p * 34 + 2;
        __m256i l0 = _mm256_loadu_si256((const __m256i *)b0);
        __m512i z = two ? _mm512_inserti64x4(_mm512_castsi256_si512(l0),
                                             _mm256_loadu_si256((const __m256i *)(b0 + 34)), 1)
                        : _mm512_zextsi256_si512(l0);
        z = _mm512_xor_si512(z, _mm512_set1_epi8((char)0x80));
        return two ? z : _mm512_maskz_mov_epi8(0xffffffffull, z);
    }
    int bs = src == SRC_Q4_0 ? 18 : 20, off = src == SRC_Q4_0 ? 2 : 4;
    const uint8_t *b0 = row + 2 * p * bs + off;
    __m128i l0 = _mm_loadu_si128((const __m128i *)b0);
    __m256i q = two ? _mm256_inserti128_si256(_mm256_castsi128_si256(l0),
                                              _mm_loadu_si128((const __m128i *)(b0 + bs)), 1)
                    : _mm256_zextsi128_si256(l0);
    /* [q0 | q1] -> [q0 | q0 | q1 | q1] -> [q0 | q0>>4 | q1 | q1>>4] & 0x0f */
    __m512i z = _mm512_permutexvar_epi64(_mm512_set_epi64(3, 2, 3, 2, 1, 0, 1, 0),
                                         _mm512_castsi256_si512(q));
    z = _mm512_srlv_epi64(z, _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0));
    return _mm512_and_si512(z, _mm512_set1_epi8(0x0f));
}

/* [s[0] x8 | s[1] x8] (s[1] read only if two). */
static inline __attribute__((always_inline)) __m512 pair_scale(const float *s, int two) {
    __m128 v = two ? _mm_castpd_ps(_mm_load_sd((const double *)s)) : _mm_load_ss(s);
    return _mm512_permutexvar_ps(_mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0),
                                 _mm512_castps128_ps512(v));
}

/* Per-row block scales dw[b], offsets mw[b] for rows of a quantized type. */
static void prep_scales(xds_dtype type, const uint8_t *row, int64_t nb, float *dw, float *mw) {
    int bs = type == XDS_DTYPE_Q8_0 ? 34 : type == XDS_DTYPE_Q4_0 ? 18 : 20;
    const __m512i idx = _mm512_mullo_epi32(
        _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), _mm512_set1_epi32(bs));
    __m512 mul = _mm512_set1_ps(type == XDS_DTYPE_Q8_0 ? -128.0f : -8.0f);
    for (int64_t b = 0; b < nb; b += 16) {
        __mmask16 m = nb - b >= 16 ? 0xffff : (__mmask16)((1u << (nb - b)) - 1);
        /* 4 bytes at each block start: d (and m for Q4_1) */
        __m512i v = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, idx, row + b * bs, 1);
        __m512 d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(v));
        _mm512_mask_storeu_ps(dw + b, m, d);
        __m512 o = type == XDS_DTYPE_Q4_1
                       ? _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(v, 16)))
                       : _mm512_mul_ps(d, mul);
        _mm512_mask_storeu_ps(mw + b, m, o);
    }
}

static inline __attribute__((always_inline)) void
qk_tile(const int R, const int T, const int src, const uint8_t *w, size_t w_stride, int64_t nb,
        const float *dw, const float *mw, size_t sc_stride, const uint8_t *xq, size_t xs, float *y,
        int64_t ldy) {
    __m512 acc[4][4];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r][t] = _mm512_setzero_ps();
    const int64_t np = nb / 2;
    for (int64_t p = 0; p < np; p++) {
        __m512i wv[4];
        __m512 dwv[4];
        for (int r = 0; r < R; r++) {
            wv[r] = load_w2(src, w + r * w_stride, p, 1);
            dwv[r] = pair_scale(dw + r * sc_stride + 2 * p, 1);
        }
        for (int t = 0; t < T; t++) {
            const uint8_t *xr = xq + t * xs;
            __m512i xv = _mm512_loadu_si512(xr + p * 64);
            __m512 dxv = pair_scale(xq_d(xr, nb) + 2 * p, 1);
            for (int r = 0; r < R; r++) {
                __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[r], xv);
                acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dwv[r], dxv),
                                            acc[r][t]);
            }
        }
    }
    if (nb & 1) { /* last single block */
        int64_t p = np;
        __m512i wv[4];
        __m512 dwv[4];
        for (int r = 0; r < R; r++) {
            wv[r] = load_w2(src, w + r * w_stride, p, 0);
            dwv[r] = pair_scale(dw + r * sc_stride + 2 * p, 0);
        }
        for (int t = 0; t < T; t++) {
            const uint8_t *xr = xq + t * xs;
            __m512i xv = _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)(xr + p * 64)));
            __m512 dxv = pair_scale(xq_d(xr, nb) + 2 * p, 0);
            for (int r = 0; r < R; r++) {
                __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[r], xv);
                acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dwv[r], dxv),
                                            acc[r][t]);
            }
        }
    }
    for (int64_t b = 0; b < nb; b += 16) { /* offsets: mw_b * s_b */
        __mmask16 m = nb - b >= 16 ? 0xffff : (__mmask16)((1u << (nb - b)) - 1);
        __m512 mv[4];
        for (int r = 0; r < R; r++) mv[r] = _mm512_maskz_loadu_ps(m, mw + r * sc_stride + b);
        for (int t = 0; t < T; t++) {
            __m512 sv = _mm512_maskz_loadu_ps(m, xq_s(xq + t * xs, nb) + b);
            for (int r = 0; r < R; r++) acc[r][t] = _mm512_fmadd_ps(mv[r], sv, acc[r][t]);
        }
    }
    for (int t = 0; t < T; t++)
        for (int r = 0; r < R; r++) y[t * ldy + r] = _mm512_reduce_add_ps(acc[r][t]);
}

#define QK_T(R, S)                                                                              \
    switch (T) {                                                                                \
    case 1: qk_tile(R, 1, S, w, ws, nb, dw, mw, scs, xq, xs, y, ldy); break;                   \
    case 2: qk_tile(R, 2, S, w, ws, nb, dw, mw, scs, xq, xs, y, ldy); break;                   \
    case 3: qk_tile(R, 3, S, w, ws, nb, dw, mw, scs, xq, xs, y, ldy); break;                   \
    default: qk_tile(R, 4, S, w, ws, nb, dw, mw, scs, xq, xs, y, ldy); break;                  \
    }
#define QK_S(R)                          \
    switch (src) {                       \
    case SRC_Q8_0: QK_T(R, SRC_Q8_0) break; \
    case SRC_Q4_0: QK_T(R, SRC_Q4_0) break; \
    case SRC_Q4_1: QK_T(R, SRC_Q4_1) break; \
    default: QK_T(R, SRC_U8) break;      \
    }

static void qk_call(int R, int T, int src, const uint8_t *w, size_t ws, int64_t nb, const float *dw,
                    const float *mw, size_t scs, const uint8_t *xq, size_t xs, float *y,
                    int64_t ldy) {
    if (R == 4) {
        QK_S(4)
    } else {
        QK_S(1)
    }
}

void xds_qgemm_avx512(xds_dtype type, const uint8_t *w, size_t w_row_bytes, int64_t n_rows,
                      int64_t nb, const uint8_t *xq, size_t xq_stride, int n_tok, float *y,
                      int64_t ldy) {
    const int src = src_of(type);
    const size_t scs = (size_t)((nb + 15) & ~15);
    float *sc = aligned_alloc(64, scs * 8 * sizeof(float));
    XDS_ASSERT(sc);
    float *dw = sc, *mw = sc + 4 * scs;
    /* Repack the row tile's u8 weights when several token tiles reuse them. */
    const int repack = n_tok > 4;
    const size_t us = (size_t)nb * 32 + 64;
    uint8_t *ub = repack ? aligned_alloc(64, us * 4) : NULL;
    XDS_ASSERT(!repack || ub);
    for (int64_t r0 = 0; r0 < n_rows;) {
        int R = n_rows - r0 >= 4 ? 4 : 1;
        const uint8_t *wr = w + r0 * w_row_bytes;
        for (int r = 0; r < R; r++)
            prep_scales(type, wr + r * w_row_bytes, nb, dw + r * scs, mw + r * scs);
        const uint8_t *wsrc = wr;
        size_t wstride = w_row_bytes;
        int s = src;
        if (repack) {
            for (int r = 0; r < R; r++) {
                for (int64_t p = 0; p < nb / 2; p++)
                    _mm512_storeu_si512(ub + r * us + p * 64,
                                        src == SRC_Q8_0   ? load_w2(SRC_Q8_0, wr + r * w_row_bytes, p, 1)
                                        : src == SRC_Q4_0 ? load_w2(SRC_Q4_0, wr + r * w_row_bytes, p, 1)
                                                          : load_w2(SRC_Q4_1, wr + r * w_row_bytes, p, 1));
                if (nb & 1)
                    _mm512_storeu_si512(ub + r * us + (nb / 2) * 64,
                                        src == SRC_Q8_0   ? load_w2(SRC_Q8_0, wr + r * w_row_bytes, nb / 2, 0)
                                        : src == SRC_Q4_0 ? load_w2(SRC_Q4_0, wr + r * w_row_bytes, nb / 2, 0)
                                                          : load_w2(SRC_Q4_1, wr + r * w_row_bytes, nb / 2, 0));
            }
            wsrc = ub;
            wstride = us;
            s = SRC_U8;
        }
        for (int t0 = 0; t0 < n_tok; t0 += 4) {
            int T = n_tok - t0 >= 4 ? 4 : n_tok - t0;
            qk_call(R, T, s, wsrc, wstride, nb, dw, mw, scs, xq + t0 * xq_stride, xq_stride,
                    y + t0 * ldy + r0, ldy);
        }
        r0 += R;
    }
    free(ub);
    free(sc);
}

/* ---- float-weight GEMM ----------------------------------------------------- */

static inline __attribute__((always_inline)) __m512 load_f16(int type, const uint8_t *row, int64_t i,
                                                             __mmask16 m) {
    if (type == XDS_DTYPE_F32) return _mm512_maskz_loadu_ps(m, (const float *)row + i);
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)row + i);
    if (type == XDS_DTYPE_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

static inline __attribute__((always_inline)) void
fk_tile(const int R, const int T, const int type, const uint8_t *w, size_t ws, int64_t n,
        const float *x, int64_t ldx, float *y, int64_t ldy) {
    __m512 acc[4][4];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r][t] = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        __m512 wv[4];
        for (int r = 0; r < R; r++) wv[r] = load_f16(type, w + r * ws, i, m);
        for (int t = 0; t < T; t++) {
            __m512 xv = _mm512_maskz_loadu_ps(m, x + t * ldx + i);
            for (int r = 0; r < R; r++) acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
        }
    }
    for (int t = 0; t < T; t++)
        for (int r = 0; r < R; r++) y[t * ldy + r] = _mm512_reduce_add_ps(acc[r][t]);
}

#define FK_T(R, TY)                                             \
    switch (T) {                                                \
    case 1: fk_tile(R, 1, TY, w, ws, n, x, ldx, y, ldy); break;  \
    case 2: fk_tile(R, 2, TY, w, ws, n, x, ldx, y, ldy); break;  \
    case 3: fk_tile(R, 3, TY, w, ws, n, x, ldx, y, ldy); break;  \
    default: fk_tile(R, 4, TY, w, ws, n, x, ldx, y, ldy); break; \
    }
#define FK_TY(R)                                        \
    switch (type) {                                     \
    case XDS_DTYPE_F32: FK_T(R, XDS_DTYPE_F32) break;   \
    case XDS_DTYPE_F16: FK_T(R, XDS_DTYPE_F16) break;   \
    default: FK_T(R, XDS_DTYPE_BF16) break;             \
    }

static void fk_call(int R, int T, int type, const uint8_t *w, size_t ws, int64_t n, const float *x,
                    int64_t ldx, float *y, int64_t ldy) {
    if (R == 4) {
        FK_TY(4)
    } else {
        FK_TY(1)
    }
}

void xds_fgemm_avx512(xds_dtype type, const uint8_t *w, size_t w_row_bytes, int64_t n_rows,
                      int64_t n_in, const float *x, int64_t ldx, int n_tok, float *y,
                      int64_t ldy) {
    for (int64_t r0 = 0; r0 < n_rows;) {
        int R = n_rows - r0 >= 4 ? 4 : 1;
        for (int t0 = 0; t0 < n_tok; t0 += 4) {
            int T = n_tok - t0 >= 4 ? 4 : n_tok - t0;
            fk_call(R, T, type, w + r0 * w_row_bytes, w_row_bytes, n_in, x + t0 * ldx, ldx,
                    y + t0 * ldy + r0, ldy);
        }
        r0 += R;
    }
}
