/*
 * matmul_avx512.c — AVX-512 (F/BW/VL/DQ/VNNI) kernels: activation
 * quantization, quantized-weight GEMM with VPDPBUSD, float-weight GEMM with
 * FMA. Compiled with AVX-512 flags; called only after the run-time check.
 *
 * Quantized GEMM, Q4_0 / Q4_1 (see kern_impl.h for the u/dw/mw formulation
 * and the pair layout; the Q8_0 unpacking below is no longer reached). Weights
 * are unpacked two 32-blocks at a time into [lo | hi] halves matching the
 * activations' pair layout (Q4: one AND and one shift of the 32 packed bytes;
 * Q8_0: a 128-bit lane shuffle and XOR 0x80); two 256-bit
 * VPDPBUSD accumulate both halves into the same 8 int32 lanes (4 per block),
 * which are converted and scaled by [dw*dx of b0 x4 | of b1 x4].
 *   - one token (decode): rows are walked one after another (one sequential
 *     stream), scales read straight from the row ([d, m] via F16C);
 *   - 2..12 tokens (MoE experts, small batches): rows streamed as for one
 *     token, each unpacked pair dotted with up to 8 tokens held in registers,
 *     token scales spread once per call, software prefetch across pages;
 *   - more tokens: a register tile of R (<= 4) rows x T (<= 4) tokens; the
 *     row tile's scales are extracted once (prep_scales) and, when several
 *     token tiles reuse it, its unpacked u8 weights are written to an L1
 *     buffer (repack).
 * Q8_0 weights take their own formulation (q8g_*, below): whole-block
 * integer dots from groups of 8 blocks transposed in-lane, one float
 * convert / multiply / FMA per 8 blocks; one-token stream, 2..8-token stream
 * over row blocks and chunks of groups, 2 x 4 register tile over repacked
 * rows.
 * Batch invariance: both paths reduce each output in the same fixed order
 * (see qk_tile; Q8_0: q8g_step), so a token's row of y is bit-identical
 * whatever n_tok and wherever the token and the row fall in the tiles. The
 * float GEMM has one FMA chain per output in every tile shape, so it is
 * invariant too.
 * No gathers: they are slow on Zen 4.
 */
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kern_impl.h"

/* ---- activation quantization -------------------------------------------- */

void xds_act_quant_avx512(const float *x, int64_t nb, uint8_t *dst) {
    int8_t *qs = (int8_t *)dst;
    float *ds = (float *)(dst + xq_qs_bytes(nb));
    if (nb & 1) { /* the missing second block of the last pair */
        _mm_storeu_si128((__m128i *)(qs + xq_qs_index(nb, 0)), _mm_setzero_si128());
        _mm_storeu_si128((__m128i *)(qs + xq_qs_index(nb, 16)), _mm_setzero_si128());
    }
    for (int64_t b = 0; b < nb; b++) {
        __m512 v0 = _mm512_loadu_ps(x + b * 32), v1 = _mm512_loadu_ps(x + b * 32 + 16);
        float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        float db = amax / 127.0f, id = db != 0.0f ? 1.0f / db : 0.0f;
        __m512 vid = _mm512_set1_ps(id);
        __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, vid));
        __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, vid));
        int sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
        _mm_storeu_si128((__m128i *)(qs + xq_qs_index(b, 0)), _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128((__m128i *)(qs + xq_qs_index(b, 16)), _mm512_cvtepi32_epi8(q1));
        ds[2 * b] = db;
        ds[2 * b + 1] = db * (float)sum;
    }
}

/* ---- quantized GEMM ------------------------------------------------------ */

enum { SRC_Q8_0 = 0, SRC_Q4_0 = 1, SRC_Q4_1 = 2, SRC_U8 = 3 };

static inline int src_of(xds_dtype t) {
    return t == XDS_DTYPE_Q8_0 ? SRC_Q8_0 : t == XDS_DTYPE_Q4_0 ? SRC_Q4_0 : SRC_Q4_1;
}

/* Packed nibbles [q0 | q1] of blocks 2p, 2p+1 (q1 = 0 unless two). */
static inline __attribute__((always_inline)) __m256i load_q4_pair(int src, const uint8_t *row, int64_t p,
                                                                  int two) {
    int bs = src == SRC_Q4_0 ? 18 : 20, off = src == SRC_Q4_0 ? 2 : 4;
    const uint8_t *b0 = row + 2 * p * bs + off;
    __m128i l0 = _mm_loadu_si128((const __m128i *)b0);
    return two ? _mm256_inserti128_si256(_mm256_castsi128_si256(l0), _mm_loadu_si128((const __m128i *)(b0 + bs)), 1)
               : _mm256_zextsi128_si256(l0);
}

/* Unsigned weights of blocks 2p, 2p+1 of one row in the pair layout of the
 * activations: [b0 u[0:16] | b1 u[0:16] | b0 u[16:32] | b1 u[16:32]]. */
static inline __attribute__((always_inline)) __m512i load_w2(int src, const uint8_t *row, int64_t p,
                                                             int two) {
    if (src == SRC_U8) return _mm512_loadu_si512(row + p * 64);
    if (src == SRC_Q8_0) {
        const uint8_t *b0 = row + 2 * p * 34 + 2;
        __m256i w1 = two ? _mm256_loadu_si256((const __m256i *)(b0 + 34)) : _mm256_setzero_si256();
        __m512i z = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)b0)), w1, 1);
        z = _mm512_shuffle_i64x2(z, z, _MM_SHUFFLE(3, 1, 2, 0));
        return _mm512_xor_si512(z, _mm512_set1_epi8((char)0x80));
    }
    __m256i q = load_q4_pair(src, row, p, two);
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(q, m4)),
                              _mm256_and_si256(_mm256_srli_epi16(q, 4), m4), 1);
}

/* v = [d0 m0 d1 m1] (d1, m1 read only if two) */
static inline __attribute__((always_inline)) __m128 load_pair(const float *dm, int two) {
    return two ? _mm_loadu_ps(dm) : _mm_castpd_ps(_mm_load_sd((const double *)dm));
}

/* Per-row interleaved block scales dm[2b] = dw_b, dm[2b+1] = mw_b
 * (one F16C conversion per block, no gathers: they are slow on Zen 4). */
static void prep_scales(xds_dtype type, const uint8_t *row, int64_t nb, float *dm) {
    if (type == XDS_DTYPE_Q4_1) {
        for (int64_t b = 0; b < nb; b++) {
            int32_t dmw;
            memcpy(&dmw, row + b * 20, 4);
            _mm_storel_pi((__m64 *)(dm + 2 * b), _mm_cvtph_ps(_mm_cvtsi32_si128(dmw)));
        }
        return;
    }
    const int bs = type == XDS_DTYPE_Q8_0 ? 34 : 18;
    const __m128 mul = _mm_setr_ps(1.0f, type == XDS_DTYPE_Q8_0 ? -128.0f : -8.0f, 0.0f, 0.0f);
    for (int64_t b = 0; b < nb; b++) {
        uint16_t d;
        memcpy(&d, row + b * bs, 2);
        __m128 v = _mm_mul_ps(_mm_cvtph_ps(_mm_set1_epi16((short)d)), mul);
        _mm_storel_pi((__m64 *)(dm + 2 * b), v);
    }
}


/* [dw0 mw0 dw1 mw1] of blocks 2p, 2p+1 read from the weight row itself. */
static inline __attribute__((always_inline)) __m128 direct_pair(int src, const uint8_t *row, int64_t p,
                                                                int two) {
    if (src == SRC_Q4_1) {
        int32_t a, b = 0;
        memcpy(&a, row + 2 * p * 20, 4);
        if (two) memcpy(&b, row + (2 * p + 1) * 20, 4);
        return _mm_cvtph_ps(_mm_insert_epi32(_mm_cvtsi32_si128(a), b, 1));
    }
    const int bs = src == SRC_Q8_0 ? 34 : 18;
    uint16_t a, b = 0;
    memcpy(&a, row + 2 * p * bs, 2);
    if (two) memcpy(&b, row + (2 * p + 1) * bs, 2);
    __m128 v = _mm_cvtph_ps(_mm_cvtsi32_si128((int)((uint32_t)a | ((uint32_t)b << 16)))); /* [d0 d1 0 0] */
    const float k = src == SRC_Q8_0 ? -128.0f : -8.0f;
    return _mm_mul_ps(_mm_unpacklo_ps(v, v), _mm_setr_ps(1.0f, k, 1.0f, k));
}

/* ymm [v0 x4 | v2 x4]: per-lane scale of a pair's 256-bit dot products */
static inline __attribute__((always_inline)) __m256 spread_pair8(__m128 v) {
    return _mm256_permutevar8x32_ps(_mm256_castps128_ps256(v), _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2));
}

/* One token, one row, one pair of blocks (256-bit VNNI: the low and high
 * halves of the pair accumulate into the same 8 lanes, 4 per block). The
 * float ops on *acc are exactly qk_step's (see qk_tile); returns the pair's
 * [dw0 mw0 dw1 mw1] read from the row, for the offset chain. */
static inline __attribute__((always_inline)) __m128 qk_step1(const int src, const int two, int64_t p,
                                                             const uint8_t *row, const uint8_t *xq,
                                                             const float *ds, __m256 *acc) {
    __m256i lo, hi;
    if (src == SRC_Q8_0) {
        const uint8_t *b0 = row + 2 * p * 34 + 2;
        __m256i w0 = _mm256_loadu_si256((const __m256i *)b0);
        __m256i w1 = two ? _mm256_loadu_si256((const __m256i *)(b0 + 34)) : _mm256_setzero_si256();
        const __m256i k80 = _mm256_set1_epi8((char)0x80);
        lo = _mm256_xor_si256(_mm256_permute2x128_si256(w0, w1, 0x20), k80);
        hi = _mm256_xor_si256(_mm256_permute2x128_si256(w0, w1, 0x31), k80);
    } else {
        __m256i q = load_q4_pair(src, row, p, two);
        const __m256i m4 = _mm256_set1_epi8(0x0f);
        lo = _mm256_and_si256(q, m4);
        hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
    }
    __m256i dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), lo, _mm256_loadu_si256((const __m256i *)(xq + p * 64)));
    dot = _mm256_dpbusd_epi32(dot, hi, _mm256_loadu_si256((const __m256i *)(xq + p * 64 + 32)));
    __m128 dwp = direct_pair(src, row, p, two);
    __m256 sc = spread_pair8(_mm_mul_ps(dwp, load_pair(ds + 4 * p, two))); /* = spread(dw) * spread(dx), as qk_step */
    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), sc, *acc);
    return dwp;
}

/* Lanes of the offset group of blocks [b, b+4): odd lanes (mw * s) of the
 * blocks that exist. */
static inline __mmask8 off_mask(int64_t nb, int64_t b) {
    return (__mmask8)((nb - b >= 4 ? 0xff : (1u << (2 * (nb - b))) - 1) & 0xaa);
}

/* The canonical sum of 8 lanes, ((v0+v1)+(v2+v3)) + ((v4+v5)+(v6+v7)); for
 * R == 4 rows at once by the hadd tree, which adds in the same order. */
static inline __attribute__((always_inline)) void hsum_rows(const int R, const __m256 *part, float *y) {
    if (R == 4) {
        __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(part[0], part[1]), _mm256_hadd_ps(part[2], part[3]));
        _mm_storeu_ps(y, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
        return;
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) {
        __m256 h = _mm256_hadd_ps(part[r], part[r]);
        h = _mm256_hadd_ps(h, h);
        y[r] = _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
    }
}

/* One pair (or the last single block) of blocks for an R x T tile. The two
 * 256-bit halves of the pair accumulate into the same 8 int32 lanes (two
 * VPDPBUSD), so conversion and scaling run on 8 lanes, not 16. */
static inline __attribute__((always_inline)) void
qk_step(const int R, const int T, const int src, const int two, int64_t p, const uint8_t *w,
        size_t w_stride, int64_t nb, const float *dm, size_t sc_stride, const uint8_t *xq, size_t xs,
        __m256 acc[4][4]) {
    __m256i wlo[4], whi[4];
    __m256 dwv[4];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) {
        if (src == SRC_U8) {
            wlo[r] = _mm256_loadu_si256((const __m256i *)(w + r * w_stride + p * 64));
            whi[r] = _mm256_loadu_si256((const __m256i *)(w + r * w_stride + p * 64 + 32));
        } else {
            __m512i z = load_w2(src, w + r * w_stride, p, two);
            wlo[r] = _mm512_castsi512_si256(z);
            whi[r] = _mm512_extracti64x4_epi64(z, 1);
        }
        dwv[r] = spread_pair8(load_pair(dm + r * sc_stride + 4 * p, two));
    }
#pragma GCC unroll 4
    for (int t = 0; t < T; t++) {
        const uint8_t *xr = xq + t * xs;
        __m256i xlo = _mm256_loadu_si256((const __m256i *)(xr + p * 64));
        __m256i xhi = _mm256_loadu_si256((const __m256i *)(xr + p * 64 + 32));
        __m256 dxv = spread_pair8(load_pair(xq_ds(xr, nb) + 4 * p, two));
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            __m256i dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), wlo[r], xlo);
            dot = _mm256_dpbusd_epi32(dot, whi[r], xhi);
            acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(dwv[r], dxv), acc[r][t]);
        }
    }
}

/*
 * Every output y[t][r] is reduced in one fixed order, whatever the tile
 * shape, the number of tokens in the call or the row's position (so a token's
 * result does not depend on which other tokens share the call):
 *   A = sum over pairs p = 0, 1, ... (the last one a single block if nb is
 *       odd) of cvt(dot_p) * (dw_p * dx_p), one FMA chain of 8 lanes;
 *   B = sum over groups of 4 blocks of [.. mw_b ..] * [.. s_b ..] (odd
 *       lanes), one FMA chain of 8 lanes;
 *   y = hsum_rows(A + B).
 * One token streams the rows (scales from the row itself), several tokens
 * use the register tile with prepared scales: same values, same operations.
 */
static inline __attribute__((always_inline)) void
qk_tile(const int R, const int T, const int src, const uint8_t *w, size_t w_stride, int64_t nb,
        const float *dm, size_t sc_stride, const uint8_t *xq, size_t xs, float *y, int64_t ldy) {
    if (T == 1 && src != SRC_U8) {
        /* One token: rows one after the other (a single sequential stream for
         * the hardware prefetcher; interleaving 4 rows' short streams measured
         * ~1.7x slower decode), scales read from the row directly. */
        __m256 part[4];
        const float *ds = xq_ds(xq, nb);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            __m256 a = _mm256_setzero_ps(), o = _mm256_setzero_ps();
            const uint8_t *wr = w + r * w_stride;
            int64_t p = 0;
            for (; p + 2 <= nb / 2; p += 2) {
                __m128 d0 = qk_step1(src, 1, p, wr, xq, ds, &a);
                __m128 d1 = qk_step1(src, 1, p + 1, wr, xq, ds, &a);
                const __mmask8 m = 0xaa; /* == off_mask(nb, 2 * p): four blocks */
                o = _mm256_fmadd_ps(_mm256_maskz_mov_ps(m, _mm256_set_m128(d1, d0)),
                                    _mm256_maskz_loadu_ps(m, ds + 4 * p), o);
            }
            if (p < (nb + 1) / 2) { /* one or two pairs left, the last maybe a single block */
                __m128 d0 = qk_step1(src, 2 * p + 1 < nb, p, wr, xq, ds, &a), d1 = _mm_setzero_ps();
                if (p + 1 < (nb + 1) / 2) d1 = qk_step1(src, 0, p + 1, wr, xq, ds, &a);
                __mmask8 m = off_mask(nb, 2 * p);
                o = _mm256_fmadd_ps(_mm256_maskz_mov_ps(m, _mm256_set_m128(d1, d0)),
                                    _mm256_maskz_loadu_ps(m, ds + 4 * p), o);
            }
            part[r] = _mm256_add_ps(a, o);
        }
        hsum_rows(R, part, y);
        return;
    }
    /* B first: the R x T offset chains run side by side (each still in its
     * own fixed order), parked in memory while the dot chains run. */
    __m256 off[4][4];
    {
        __m256 o[4][4];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++)
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) o[r][t] = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; b += 4) { /* odd lanes of dm * ds are mw_b * s_b */
            __mmask8 m = off_mask(nb, b);
            __m256 mv[4];
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) mv[r] = _mm256_maskz_loadu_ps(m, dm + r * sc_stride + 2 * b);
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) {
                __m256 sv = _mm256_maskz_loadu_ps(m, xq_ds(xq + t * xs, nb) + 2 * b);
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) o[r][t] = _mm256_fmadd_ps(mv[r], sv, o[r][t]);
            }
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; r++)
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) off[r][t] = o[r][t];
    }
    __m256 acc[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) acc[r][t] = _mm256_setzero_ps();
    const int64_t np = nb / 2;
    for (int64_t p = 0; p < np; p++) qk_step(R, T, src, 1, p, w, w_stride, nb, dm, sc_stride, xq, xs, acc);
    if (nb & 1) qk_step(R, T, src, 0, np, w, w_stride, nb, dm, sc_stride, xq, xs, acc);
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) acc[r][t] = _mm256_add_ps(acc[r][t], off[r][t]);
#pragma GCC unroll 4
    for (int t = 0; t < T; t++) {
        __m256 part[4];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) part[r] = acc[r][t];
        hsum_rows(R, part, y + t * ldy);
    }
}

/*
 * Few tokens (2..QS_TMAX per call): rows streamed one after another as in the
 * one-token path, each pair of blocks unpacked once and dotted with all T
 * tokens held in registers. Per output the float ops are exactly qk_step1's
 * (the one-token path): the A chain per pair, the B chain per group of 4
 * blocks, then hsum_rows(1) of A + B, so results are bit-identical to the
 * tile and to the one-token path.
 */
#define QS_TMAX 8
#ifndef QS_PF
#define QS_PF 2048
#endif
static inline __attribute__((always_inline)) void
qs_pair(const int T, const int src, const int two, int64_t p, const uint8_t *row, const uint8_t *xq,
        size_t xs, const float *dxs, int64_t np, __m256 *a, __m128 *dwp_out) {
    __m256i lo, hi;
    if (src == SRC_Q8_0) {
        const uint8_t *b0 = row + 2 * p * 34 + 2;
        __m256i w0 = _mm256_loadu_si256((const __m256i *)b0);
        __m256i w1 = two ? _mm256_loadu_si256((const __m256i *)(b0 + 34)) : _mm256_setzero_si256();
        const __m256i k80 = _mm256_set1_epi8((char)0x80);
        lo = _mm256_xor_si256(_mm256_permute2x128_si256(w0, w1, 0x20), k80);
        hi = _mm256_xor_si256(_mm256_permute2x128_si256(w0, w1, 0x31), k80);
    } else {
        __m256i q = load_q4_pair(src, row, p, two);
        const __m256i m4 = _mm256_set1_epi8(0x0f);
        lo = _mm256_and_si256(q, m4);
        hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
    }
    /* software prefetch QS_PF bytes ahead (rows are contiguous): the
     * hardware stream prefetcher stops at 4 KiB pages, which stalled this
     * compute-heavier loop on DRAM latency (~2x slower from DRAM than L3) */
    _mm_prefetch((const char *)row + p * (src == SRC_Q8_0 ? 68 : src == SRC_Q4_0 ? 36 : 40) + QS_PF, _MM_HINT_T0);
    __m128 dwp = direct_pair(src, row, p, two);
    __m256 dws = spread_pair8(dwp);
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) {
        const uint8_t *xr = xq + t * xs;
        __m256i dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), lo, _mm256_loadu_si256((const __m256i *)(xr + p * 64)));
        dot = _mm256_dpbusd_epi32(dot, hi, _mm256_loadu_si256((const __m256i *)(xr + p * 64 + 32)));
        /* spread(dw) * spread(dx) == spread(dw * dx) lane by lane */
        __m256 sc = _mm256_mul_ps(dws, _mm256_load_ps(dxs + ((size_t)t * np + p) * 8));
        a[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), sc, a[t]);
    }
    *dwp_out = dwp;
}

static inline __attribute__((always_inline)) void
qs_off(const int T, __mmask8 m, __m128 d0, __m128 d1, int64_t p, const uint8_t *xq, size_t xs,
       int64_t nb, __m256 *o) {
    __m256 mv = _mm256_maskz_mov_ps(m, _mm256_set_m128(d1, d0));
#pragma GCC unroll 8
    for (int t = 0; t < T; t++)
        o[t] = _mm256_fmadd_ps(mv, _mm256_maskz_loadu_ps(m, xq_ds(xq + t * xs, nb) + 4 * p), o[t]);
}

static inline __attribute__((always_inline)) void
qs_row(const int T, const int src, const uint8_t *wr, int64_t nb, const uint8_t *xq, size_t xs,
       const float *dxs, float *y, int64_t ldy) {
    const int64_t np = (nb + 1) / 2;
    __m256 a[QS_TMAX], o[QS_TMAX];
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) a[t] = o[t] = _mm256_setzero_ps();
    int64_t p = 0;
    for (; p + 2 <= nb / 2; p += 2) {
        __m128 d0, d1;
        qs_pair(T, src, 1, p, wr, xq, xs, dxs, np, a, &d0);
        qs_pair(T, src, 1, p + 1, wr, xq, xs, dxs, np, a, &d1);
        qs_off(T, 0xaa, d0, d1, p, xq, xs, nb, o);
    }
    if (p < (nb + 1) / 2) {
        __m128 d0, d1 = _mm_setzero_ps();
        qs_pair(T, src, 2 * p + 1 < nb, p, wr, xq, xs, dxs, np, a, &d0);
        if (p + 1 < (nb + 1) / 2) qs_pair(T, src, 0, p + 1, wr, xq, xs, dxs, np, a, &d1);
        qs_off(T, off_mask(nb, 2 * p), d0, d1, p, xq, xs, nb, o);
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) {
        __m256 part = _mm256_add_ps(a[t], o[t]);
        hsum_rows(1, &part, y + t * ldy);
    }
}

#define QS_T(S)                                                            \
    switch (T) {                                                           \
    case 1: qs_row(1, S, wr, nb, xq, xs, dxs, y, ldy); break;                   \
    case 2: qs_row(2, S, wr, nb, xq, xs, dxs, y, ldy); break;                   \
    case 3: qs_row(3, S, wr, nb, xq, xs, dxs, y, ldy); break;                   \
    case 4: qs_row(4, S, wr, nb, xq, xs, dxs, y, ldy); break;                   \
    case 5: qs_row(5, S, wr, nb, xq, xs, dxs, y, ldy); break;                   \
    case 6: qs_row(6, S, wr, nb, xq, xs, dxs, y, ldy); break;                   \
    case 7: qs_row(7, S, wr, nb, xq, xs, dxs, y, ldy); break;                   \
    default: qs_row(8, S, wr, nb, xq, xs, dxs, y, ldy); break;                  \
    }

static void qs_call(int T, int src, const uint8_t *wr, int64_t nb, const uint8_t *xq, size_t xs,
                    const float *dxs, float *y, int64_t ldy) {
    switch (src) {
    case SRC_Q8_0: QS_T(SRC_Q8_0) break;
    case SRC_Q4_0: QS_T(SRC_Q4_0) break;
    default: QS_T(SRC_Q4_1) break;
    }
}

#define QK_T(R, S)                                                                              \
    switch (T) {                                                                                \
    case 1: qk_tile(R, 1, S, w, ws, nb, dm, scs, xq, xs, y, ldy); break;                       \
    case 2: qk_tile(R, 2, S, w, ws, nb, dm, scs, xq, xs, y, ldy); break;                       \
    case 3: qk_tile(R, 3, S, w, ws, nb, dm, scs, xq, xs, y, ldy); break;                       \
    default: qk_tile(R, 4, S, w, ws, nb, dm, scs, xq, xs, y, ldy); break;                      \
    }
#define QK_S(R)                          \
    switch (src) {                       \
    case SRC_Q8_0: QK_T(R, SRC_Q8_0) break; \
    case SRC_Q4_0: QK_T(R, SRC_Q4_0) break; \
    case SRC_Q4_1: QK_T(R, SRC_Q4_1) break; \
    default: QK_T(R, SRC_U8) break;      \
    }

static void qk_call(int R, int T, int src, const uint8_t *w, size_t ws, int64_t nb, const float *dm,
                    size_t scs, const uint8_t *xq, size_t xs, float *y, int64_t ldy) {
    if (R == 4) {
        QK_S(4)
    } else {
        QK_S(1)
    }
}


/* ---- Q8_0: whole-block integer dots (groups of 8 blocks) ------------------
 *
 * Q8_0 weights run on their own formulation, which keeps the float work per
 * multiply-add low (on Zen 4 VPDPBUSD shares its two pipes with the float
 * mul / FMA: the pair formulation above spends 3 float ops per 64 multiply-
 * adds and tops out near a third of the VPDPBUSD peak). Blocks are taken 8 at
 * a time (a group); the weights and the activations of a group are
 * transposed into 4 zmm "Z" vectors whose lane j (and 8 + j) holds 4 bytes of
 * block j, so 4 VPDPBUSD leave each block's whole dot product, exactly, in
 * one int32 lane: I_j = D_j - 128 S_j (D: dot of the weights + 128, which
 * VPDPBUSD needs unsigned, S: the block's activation byte sum). The float
 * work is then, per group of 8 blocks (256 multiply-adds):
 *   A = fma(cvt(I), dw * dx, A)      (8 lanes, lane j = block 8g + j)
 * and y = hsum_rows(1) of A at the end. Every path (one token streamed, a few
 * tokens streamed, the 4 x 4 register tile over repacked rows) runs exactly
 * these ops per (row, token, group) in group order, so a token's result does
 * not depend on the batch (batch invariance). A last partial group is padded
 * with zero blocks (weights and scales copied to a zeroed buffer; the
 * activations' missing blocks are zero too), which adds fma(0, 0) the same
 * way in every path.
 */

/* The transposition uses only in-lane unpacks (lane-crossing permutes and
 * inserts share the VPDPBUSD pipes on Zen 4; in-lane shuffles, blends and
 * broadcast loads do not). A pair of blocks (a, b) is first put in the
 * activations' pair layout P = [a dw0-3 | b dw0-3 | a dw4-7 | b dw4-7] (the xq
 * rows already are; weights: 4 broadcast loads and blends); the 4 pairs of a
 * group are 4x4-transposed per 128-bit lane, Z_m lane L element i = P_i lane
 * L dword m. Summing the 4 VPDPBUSD and folding the two 256-bit halves leaves
 * lane i = block 2i, lane 4 + i = block 2i + 1 (i < 4): the group's blocks in
 * the order 0 2 4 6 1 3 5 7, which the scales follow. */
static inline __attribute__((always_inline)) void q8g_transpose(const __m512i *P, __m512i *z) {
    __m512i t0 = _mm512_unpacklo_epi32(P[0], P[1]), t1 = _mm512_unpackhi_epi32(P[0], P[1]);
    __m512i t2 = _mm512_unpacklo_epi32(P[2], P[3]), t3 = _mm512_unpackhi_epi32(P[2], P[3]);
    z[0] = _mm512_unpacklo_epi64(t0, t2);
    z[1] = _mm512_unpackhi_epi64(t0, t2);
    z[2] = _mm512_unpacklo_epi64(t1, t3);
    z[3] = _mm512_unpackhi_epi64(t1, t3);
}

/* Z vectors (u8: + 128) and the 8 scales (block order 0 2 4 6 1 3 5 7) of
 * one group of a Q8_0 row (g points at its first block) holding NB blocks
 * (1..8; only those are read, missing ones are zero weights of scale 0). */
static const uint16_t q8g_dpos[4] = {0, 34, 17, 51};

static inline __attribute__((always_inline)) void q8g_wgroup_n(const int NB, const uint8_t *g, __m512i *z,
                                                               __m256 *dw) {
    __m512i P[4];
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        const uint8_t *a = g + 68 * i + 2, *b = a + 34;
        __m512i v = _mm512_setzero_si512();
        if (2 * i < NB) {
            v = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)a));
            v = _mm512_mask_broadcast_i32x4(v, 0x0F00, _mm_loadu_si128((const __m128i *)(a + 16)));
            v = _mm512_maskz_mov_epi32(0x0F0F, v);
        }
        if (2 * i + 1 < NB) {
            v = _mm512_mask_broadcast_i32x4(v, 0x00F0, _mm_loadu_si128((const __m128i *)b));
            v = _mm512_mask_broadcast_i32x4(v, 0xF000, _mm_loadu_si128((const __m128i *)(b + 16)));
        }
        P[i] = v;
    }
    q8g_transpose(P, z);
    const __m512i k80 = _mm512_set1_epi8((char)0x80);
#pragma GCC unroll 4
    for (int m = 0; m < 4; m++) z[m] = _mm512_xor_si512(z[m], k80);
    /* the f16 scales (bytes 34 j) in block order 0 2 4 6 1 3 5 7, gathered
     * with scalar loads (integer pipes; vector permutes would share the
     * VPDPBUSD pipes) */
    uint16_t d[8];
#pragma GCC unroll 8
    for (int j = 0; j < 8; j++) {
        d[j] = 0;
        if (j < NB) memcpy(&d[j], g + 34 * j, 2);
    }
    uint64_t lo = d[0] | (uint64_t)d[2] << 16 | (uint64_t)d[4] << 32 | (uint64_t)d[6] << 48;
    uint64_t hi = d[1] | (uint64_t)d[3] << 16 | (uint64_t)d[5] << 32 | (uint64_t)d[7] << 48;
    *dw = _mm256_cvtph_ps(_mm_set_epi64x((long long)hi, (long long)lo));
}

static void q8g_wgroup_part(int nbg, const uint8_t *g, __m512i *z, __m256 *dw) {
    switch (nbg) {
    case 1: q8g_wgroup_n(1, g, z, dw); break;
    case 2: q8g_wgroup_n(2, g, z, dw); break;
    case 3: q8g_wgroup_n(3, g, z, dw); break;
    case 4: q8g_wgroup_n(4, g, z, dw); break;
    case 5: q8g_wgroup_n(5, g, z, dw); break;
    case 6: q8g_wgroup_n(6, g, z, dw); break;
    default: q8g_wgroup_n(7, g, z, dw); break;
    }
}

/* Any group of a row of nb blocks (the last one may be partial). */
static inline __attribute__((always_inline)) void q8g_wgroup_any(const uint8_t *row, int64_t nb,
                                                                 int64_t g, __m512i *z, __m256 *dw) {
    if (8 * g + 8 <= nb) q8g_wgroup_n(8, row + g * 272, z, dw);
    else q8g_wgroup_part((int)(nb - 8 * g), row + g * 272, z, dw);
}

/* One (row, token, group): the only float ops of the Q8_0 path. */
static inline __attribute__((always_inline)) __m256 q8g_step(const __m512i *w, const __m512i *x, __m512i ncorr,
                                                             __m256 dw, __m256 dx, __m256 acc) {
    /* integer sums are exact: the chain starts from [-128 S | 0] */
    __m512i d = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(ncorr, w[0], x[0]), w[1], x[1]);
    d = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(d, w[2], x[2]), w[3], x[3]);
    __m256i i8 = _mm256_add_epi32(_mm512_castsi512_si256(d), _mm512_extracti64x4_epi64(d, 1));
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(i8), _mm256_mul_ps(dw, dx), acc);
}

/* Prepared activations of one token: per group 4 Z vectors (256 bytes), then
 * per group [-128 S[8] | 0[8]] (int32), then per group dx[8] (f32). */
typedef struct {
    const uint8_t *z;   /* (ng, 256) */
    const float *dx;    /* (ng, 8) */
    const int32_t *cr;  /* (ng, 16) */
} q8g_x;

static size_t q8g_x_bytes(int64_t ng) { return ((size_t)ng * (256 + 64 + 32) + 63) & ~(size_t)63; }

static void q8g_prep_x(const uint8_t *xq, int64_t nb, uint8_t *dst) {
    const int64_t ng = (nb + 7) / 8, np = (nb + 1) / 2;
    const float *ds = xq_ds(xq, nb);
    int32_t *cr = (int32_t *)(dst + (size_t)ng * 256);
    float *dx = (float *)(cr + ng * 16);
    const __m512i dsel = _mm512_setr_epi32(0, 4, 8, 12, 2, 6, 10, 14, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512i ones = _mm512_set1_epi8(1);
    for (int64_t g = 0; g < ng; g++) {
        __m512i P[4], z[4];
        for (int i = 0; i < 4; i++)
            P[i] = 4 * g + i < np ? _mm512_loadu_si512(xq + (4 * g + i) * 64) : _mm512_setzero_si512();
        q8g_transpose(P, z);
        __m512i s = _mm512_setzero_si512();
        for (int m = 0; m < 4; m++) {
            _mm512_store_si512(dst + g * 256 + m * 64, z[m]);
            s = _mm512_dpbusd_epi32(s, ones, z[m]);
        }
        __m256i S = _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64(s, 1));
        _mm512_store_si512(cr + g * 16, _mm512_zextsi256_si512(_mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(S, 7))));
        int64_t nbg = nb - 8 * g < 8 ? nb - 8 * g : 8;
        __m512 dsv = _mm512_maskz_loadu_ps((__mmask16)((1u << (2 * nbg)) - 1), ds + 16 * g);
        _mm256_store_ps(dx + g * 8, _mm512_castps512_ps256(_mm512_permutexvar_ps(dsel, dsv)));
    }
}

static inline q8g_x q8g_x_at(const uint8_t *base, int64_t ng, int t) {
    const uint8_t *b = base + (size_t)t * q8g_x_bytes(ng);
    q8g_x r = {b, (const float *)(b + (size_t)ng * 320), (const int32_t *)(b + (size_t)ng * 256)};
    return r;
}

#ifndef Q8G_PF
#define Q8G_PF 2048
#endif
/* Weights of a row's group: transposed from the row itself (RAW) or loaded
 * from a repack buffer holding per row the Z vectors of every group
 * (ng * 256 bytes) and then the scales (ng * 8 floats). */
static inline __attribute__((always_inline)) void q8g_wsrc(const int raw, const uint8_t *wr, int64_t nb,
                                                           int64_t ng, int64_t g, __m512i *w, __m256 *dw) {
    if (raw) {
        _mm_prefetch((const char *)wr + g * 272 + Q8G_PF, _MM_HINT_T0);
        _mm_prefetch((const char *)wr + g * 272 + Q8G_PF + 64, _MM_HINT_T0);
        _mm_prefetch((const char *)wr + g * 272 + Q8G_PF + 128, _MM_HINT_T0);
        _mm_prefetch((const char *)wr + g * 272 + Q8G_PF + 192, _MM_HINT_T0);
        _mm_prefetch((const char *)wr + g * 272 + Q8G_PF + 256, _MM_HINT_T0);
        q8g_wgroup_any(wr, nb, g, w, dw);
        return;
    }
    const __m512i *z = (const __m512i *)(wr + g * 256);
    w[0] = _mm512_load_si512(z), w[1] = _mm512_load_si512(z + 1);
    w[2] = _mm512_load_si512(z + 2), w[3] = _mm512_load_si512(z + 3);
    *dw = _mm256_load_ps((const float *)(wr + ng * 256) + g * 8);
}

/* R (<= 2) rows x T (<= 8) tokens over groups [g0, g1): per group the rows'
 * weights sit in registers and each token's activations are read once for
 * both rows. The 8-lane accumulators continue from acc (acc + r * ars + 8 t)
 * unless g0 == 0 (zero), and go back there unless g1 == ng, where they are
 * reduced into y: cutting the groups into chunks (to keep a chunk of the
 * activations in L1 across rows) keeps each output's operations and their
 * order. */
static inline __attribute__((always_inline)) void q8g_tile(const int R, const int T, const int raw, const uint8_t *wr,
                                                           size_t ws, int64_t nb, int64_t g0, int64_t g1,
                                                           const uint8_t *xp, float *acc, size_t ars, float *y,
                                                           int64_t ldy) {
    const int64_t ng = (nb + 7) / 8;
    __m256 a[2][8];
    q8g_x X[8];
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) X[t] = q8g_x_at(xp, ng, t);
#pragma GCC unroll 2
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) a[r][t] = g0 == 0 ? _mm256_setzero_ps() : _mm256_load_ps(acc + r * ars + 8 * t);
    for (int64_t g = g0; g < g1; g++) {
        __m512i w[2][4];
        __m256 dw[2];
#pragma GCC unroll 2
        for (int r = 0; r < R; r++) q8g_wsrc(raw, wr + r * ws, nb, ng, g, w[r], &dw[r]);
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) {
            const __m512i *xz = (const __m512i *)(X[t].z + g * 256);
            __m512i cr = _mm512_load_si512(X[t].cr + g * 16);
            __m256 dx = _mm256_load_ps(X[t].dx + g * 8);
            if (R == 1) {
                a[0][t] = q8g_step(w[0], xz, cr, dw[0], dx, a[0][t]);
            } else { /* the token's activations loaded once for both rows */
                __m512i x[4] = {_mm512_load_si512(xz), _mm512_load_si512(xz + 1), _mm512_load_si512(xz + 2),
                                _mm512_load_si512(xz + 3)};
                /* keep them in registers (GCC would fold the load into each
                 * row's VPDPBUSD, reading them R times) */
                __asm__("" : "+v"(x[0]), "+v"(x[1]), "+v"(x[2]), "+v"(x[3]));
#pragma GCC unroll 2
                for (int r = 0; r < R; r++) a[r][t] = q8g_step(w[r], x, cr, dw[r], dx, a[r][t]);
            }
        }
    }
    if (g1 < ng) {
#pragma GCC unroll 2
        for (int r = 0; r < R; r++)
#pragma GCC unroll 8
            for (int t = 0; t < T; t++) _mm256_store_ps(acc + r * ars + 8 * t, a[r][t]);
        return;
    }
#pragma GCC unroll 2
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) hsum_rows(1, &a[r][t], y + t * ldy + r);
}

#define Q8G_ARGS wr, ws, nb, g0, g1, xp, acc, ars, y, ldy
#define Q8G_T(R, RAW)                                    \
    switch (T) {                                         \
    case 1: q8g_tile(R, 1, RAW, Q8G_ARGS); break;        \
    case 2: q8g_tile(R, 2, RAW, Q8G_ARGS); break;        \
    case 3: q8g_tile(R, 3, RAW, Q8G_ARGS); break;        \
    case 4: q8g_tile(R, 4, RAW, Q8G_ARGS); break;        \
    case 5: q8g_tile(R, 5, RAW, Q8G_ARGS); break;        \
    case 6: q8g_tile(R, 6, RAW, Q8G_ARGS); break;        \
    case 7: q8g_tile(R, 7, RAW, Q8G_ARGS); break;        \
    default: q8g_tile(R, 8, RAW, Q8G_ARGS); break;       \
    }
#define Q8G_T4(R, RAW)                                   \
    switch (T) {                                         \
    case 1: q8g_tile(R, 1, RAW, Q8G_ARGS); break;        \
    case 2: q8g_tile(R, 2, RAW, Q8G_ARGS); break;        \
    case 3: q8g_tile(R, 3, RAW, Q8G_ARGS); break;        \
    default: q8g_tile(R, 4, RAW, Q8G_ARGS); break;       \
    }

/* raw: 1 rows transposed as they stream (software prefetch), 0 rows from the
 * repack buffer; R == 2 takes T <= 4 (registers: 8 weight, 4 activation, 8
 * accumulators). */
static void q8g_tile_call(int R, int T, int raw, const uint8_t *wr, size_t ws, int64_t nb, int64_t g0, int64_t g1,
                          const uint8_t *xp, float *acc, size_t ars, float *y, int64_t ldy) {
    if (raw) {
        Q8G_T(1, 1)
    } else if (R == 2) {
        Q8G_T4(2, 0)
    } else {
        Q8G_T4(1, 0)
    }
}
#undef Q8G_T
#undef Q8G_T4
#undef Q8G_ARGS

#ifndef Q8G_KC
#define Q8G_KC 8 /* groups per chunk: 2 KiB of activations per token */
#endif
#ifndef Q8G_RB
#define Q8G_RB 8 /* rows per block sharing an activation chunk */
#endif

/* One token, one row: the same integers and float ops as q8g_step, with the
 * integers computed the way one token streams fastest: each pair of blocks
 * (activations in their xq pair layout as they are) gives 8 lanes of partial
 * dots, 4 per block ([b0 x4 | b1 x4], two 256-bit VPDPBUSD), and three
 * in-lane VPHADDD turn the 4 pairs of a group into [b0 b2 b4 b6 | b1 b3 b5 b7]
 * whole-block dots, the group's lane order. A partial last group goes
 * through the transposed path (same integers). */
static void q8g_row1(const uint8_t *wr, int64_t nb, const uint8_t *xq, const uint8_t *xp, float *y) {
    const int64_t ng = (nb + 7) / 8, nfull = nb / 8;
    const q8g_x X = q8g_x_at(xp, ng, 0);
    const __m256i k80 = _mm256_set1_epi8((char)0x80);
    const __m512i iw16 = _mm512_maskz_loadu_epi16(0xf, q8g_dpos);
    __m256 a = _mm256_setzero_ps();
    for (int64_t g = 0; g < nfull; g++) {
        const uint8_t *gb = wr + g * 272;
        __m256i D[4];
#pragma GCC unroll 4
        for (int p = 0; p < 4; p++) {
            const uint8_t *b0 = gb + 68 * p + 2;
            __m256i w0 = _mm256_loadu_si256((const __m256i *)b0), w1 = _mm256_loadu_si256((const __m256i *)(b0 + 34));
            __m256i lo = _mm256_xor_si256(_mm256_permute2x128_si256(w0, w1, 0x20), k80);
            __m256i hi = _mm256_xor_si256(_mm256_permute2x128_si256(w0, w1, 0x31), k80);
            const uint8_t *xr = xq + (4 * g + p) * 64;
            __m256i d = _mm256_dpbusd_epi32(_mm256_setzero_si256(), lo, _mm256_loadu_si256((const __m256i *)xr));
            D[p] = _mm256_dpbusd_epi32(d, hi, _mm256_loadu_si256((const __m256i *)(xr + 32)));
        }
        __m256i i8 = _mm256_hadd_epi32(_mm256_hadd_epi32(D[0], D[1]), _mm256_hadd_epi32(D[2], D[3]));
        i8 = _mm256_add_epi32(i8, _mm256_load_si256((const __m256i *)(X.cr + g * 16)));
        __m512i s0 = _mm512_permutex2var_epi16(_mm512_loadu_si512(gb), iw16, _mm512_loadu_si512(gb + 64));
        __m512i s1 = _mm512_permutex2var_epi16(_mm512_loadu_si512(gb + 136), iw16, _mm512_loadu_si512(gb + 200));
        __m256 dw = _mm256_cvtph_ps(_mm_unpacklo_epi32(_mm512_castsi512_si128(s0), _mm512_castsi512_si128(s1)));
        a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i8), _mm256_mul_ps(dw, _mm256_load_ps(X.dx + g * 8)), a);
    }
    if (nfull < ng) {
        __m512i w[4];
        __m256 dw;
        q8g_wgroup_any(wr, nb, nfull, w, &dw);
        a = q8g_step(w, (const __m512i *)(X.z + nfull * 256), _mm512_load_si512(X.cr + nfull * 16), dw,
                     _mm256_load_ps(X.dx + nfull * 8), a);
    }
    hsum_rows(1, &a, y);
}

/* One token: rows streamed one after another (q8g_row1). 2..8 tokens: blocks
 * of Q8G_RB rows streamed chunk by chunk (Q8G_KC groups; the tokens' chunk
 * stays in L1 across the block's rows). More tokens: blocks of Q8G_RB rows
 * transposed once into a buffer, then per chunk, per 4 tokens, pairs of rows
 * in registers. */
static void q8g_gemm(const uint8_t *w, size_t w_row_bytes, int64_t n_rows, int64_t nb, const uint8_t *xq,
                     size_t xq_stride, int n_tok, float *y, int64_t ldy) {
    const int64_t ng = (nb + 7) / 8;
    const size_t xb = q8g_x_bytes(ng);
    uint8_t *xp = aligned_alloc(64, xb * (size_t)n_tok);
    XDS_ASSERT(xp);
    for (int t = 0; t < n_tok; t++) q8g_prep_x(xq + t * xq_stride, nb, xp + t * xb);
    float *acc = aligned_alloc(64, sizeof(float) * 8 * Q8G_RB * (size_t)n_tok);
    XDS_ASSERT(acc);
    const size_t ars = (size_t)8 * n_tok;
    if (n_tok == 1) {
        /* rows are contiguous and short: prefetch QS_PF bytes ahead of the
         * stream, one line per 64 bytes of this row (the hardware stream
         * prefetcher stops at 4 KiB pages; a lone token is DRAM-bound) */
        for (int64_t r = 0; r < n_rows; r++) {
            const uint8_t *wr = w + r * w_row_bytes;
            for (size_t o = 0; o < w_row_bytes; o += 64) _mm_prefetch((const char *)wr + o + QS_PF, _MM_HINT_T0);
            q8g_row1(wr, nb, xq, xp, y + r);
        }
    } else if (n_tok <= 8) {
        for (int64_t r0 = 0; r0 < n_rows; r0 += Q8G_RB) {
            int64_t rb = n_rows - r0 < Q8G_RB ? n_rows - r0 : Q8G_RB;
            for (int64_t g0 = 0; g0 < ng; g0 += Q8G_KC) {
                int64_t g1 = g0 + Q8G_KC < ng ? g0 + Q8G_KC : ng;
                for (int64_t r = 0; r < rb; r++)
                    q8g_tile_call(1, n_tok, 1, w + (r0 + r) * w_row_bytes, w_row_bytes, nb, g0, g1, xp, acc + r * ars,
                                  ars, y + r0 + r, ldy);
            }
        }
    } else {
        const size_t us = ((size_t)ng * (256 + 32) + 63) & ~(size_t)63;
        uint8_t *ub = aligned_alloc(64, us * Q8G_RB);
        XDS_ASSERT(ub);
        for (int64_t r0 = 0; r0 < n_rows; r0 += Q8G_RB) {
            int64_t rb = n_rows - r0 < Q8G_RB ? n_rows - r0 : Q8G_RB;
            for (int64_t r = 0; r < rb; r++) {
                const uint8_t *wr = w + (r0 + r) * w_row_bytes;
                for (int64_t g = 0; g < ng; g++) {
                    __m512i z[4];
                    __m256 dw;
                    q8g_wgroup_any(wr, nb, g, z, &dw);
                    for (int m = 0; m < 4; m++) _mm512_store_si512(ub + r * us + g * 256 + m * 64, z[m]);
                    _mm256_store_ps((float *)(ub + r * us + ng * 256) + g * 8, dw);
                }
            }
            for (int64_t g0 = 0; g0 < ng; g0 += Q8G_KC) {
                int64_t g1 = g0 + Q8G_KC < ng ? g0 + Q8G_KC : ng;
                for (int t0 = 0; t0 < n_tok; t0 += 4)
                    for (int64_t r = 0; r < rb; r += 2)
                        q8g_tile_call(rb - r >= 2 ? 2 : 1, n_tok - t0 >= 4 ? 4 : n_tok - t0, 0, ub + r * us, us, nb,
                                      g0, g1, xp + t0 * xb, acc + r * ars + 8 * t0, ars, y + t0 * ldy + r0 + r, ldy);
            }
        }
        free(ub);
    }
    free(acc);
    free(xp);
}

void xds_qgemm_avx512(xds_dtype type, const uint8_t *w, size_t w_row_bytes, int64_t n_rows,
                      int64_t nb, const uint8_t *xq, size_t xq_stride, int n_tok, float *y,
                      int64_t ldy) {
    if (type == XDS_DTYPE_Q8_0) {
        q8g_gemm(w, w_row_bytes, n_rows, nb, xq, xq_stride, n_tok, y, ldy);
        return;
    }
    const int src = src_of(type);
    if (n_tok > 1 && n_tok <= 12) {
        /* few tokens: stream each row once, its tokens in chunks of <= 8
         * (the row stays in L1 across chunks). Measured (768 x 2048 Q8_0, one
         * core): 1.3-1.45x the tile at 2-8 tokens, even at 16, behind at 32. */
        /* dxs[t][p] = spread_pair8 of token t's [d0 s0 d1 s1] of pair p
         * (the single last block's d1 lane 0, as load_pair gives) */
        const int64_t np = (nb + 1) / 2;
        float *dxs = aligned_alloc(64, ((size_t)n_tok * np * 8 * sizeof(float) + 63) & ~(size_t)63);
        XDS_ASSERT(dxs);
        for (int t = 0; t < n_tok; t++) {
            const float *ds = xq_ds(xq + t * xq_stride, nb);
            for (int64_t p = 0; p < np; p++)
                _mm256_store_ps(dxs + ((size_t)t * np + p) * 8, spread_pair8(load_pair(ds + 4 * p, 2 * p + 1 < nb)));
        }
        for (int64_t r = 0; r < n_rows; r++)
            for (int t0 = 0; t0 < n_tok; t0 += QS_TMAX) {
                int T = n_tok - t0 < QS_TMAX ? n_tok - t0 : QS_TMAX;
                qs_call(T, src, w + r * w_row_bytes, nb, xq + t0 * xq_stride, xq_stride,
                        dxs + (size_t)t0 * np * 8, y + t0 * ldy + r, ldy);
            }
        free(dxs);
        return;
    }
    const size_t scs = (size_t)((2 * nb + 15) & ~15);
    float *dm = aligned_alloc(64, scs * 4 * sizeof(float));
    XDS_ASSERT(dm);
    /* Repack the row tile's u8 weights when several token tiles reuse them. */
    const int repack = n_tok > 4;
    const size_t us = (size_t)nb * 32 + 64;
    uint8_t *ub = repack ? aligned_alloc(64, us * 4) : NULL;
    XDS_ASSERT(!repack || ub);
    for (int64_t r0 = 0; r0 < n_rows;) {
        int R = n_rows - r0 >= 4 ? 4 : 1;
        const uint8_t *wr = w + r0 * w_row_bytes;
        if (n_tok > 1) /* with one token, qk_tile reads the scales directly */
            for (int r = 0; r < R; r++) prep_scales(type, wr + r * w_row_bytes, nb, dm + r * scs);
        const uint8_t *wsrc = wr;
        size_t wstride = w_row_bytes;
        int s = src;
        if (repack) {
            #pragma GCC unroll 4
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
            qk_call(R, T, s, wsrc, wstride, nb, dm, scs, xq + t0 * xq_stride, xq_stride,
                    y + t0 * ldy + r0, ldy);
        }
        r0 += R;
    }
    free(ub);
    free(dm);
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
    #pragma GCC unroll 4
    for (int r = 0; r < R; r++)
        #pragma GCC unroll 4
        for (int t = 0; t < T; t++) acc[r][t] = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        __m512 wv[4];
        #pragma GCC unroll 4
        for (int r = 0; r < R; r++) wv[r] = load_f16(type, w + r * ws, i, m);
        #pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            __m512 xv = _mm512_maskz_loadu_ps(m, x + t * ldx + i);
            #pragma GCC unroll 4
            for (int r = 0; r < R; r++) acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
        }
    }
    #pragma GCC unroll 4
    for (int t = 0; t < T; t++)
        #pragma GCC unroll 4
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
        /* one token: single rows, one sequential stream (4 interleaved rows
         * measured 2x slower streaming F16 weights) */
        int R = n_rows - r0 >= 4 && n_tok > 1 ? 4 : 1;
        for (int t0 = 0; t0 < n_tok; t0 += 4) {
            int T = n_tok - t0 >= 4 ? 4 : n_tok - t0;
            fk_call(R, T, type, w + r0 * w_row_bytes, w_row_bytes, n_in, x + t0 * ldx, ldx,
                    y + t0 * ldy + r0, ldy);
        }
        r0 += R;
    }
}

/* ---- Q8_0_R16: row-interleaved Q8_0 (see kern_impl.h) ----------------------
 *
 * 16 rows in the 16 int32 lanes: per (group, block) the 8 weight vectors are
 * loaded once and each token adds, per vector q, VPDPBUSD(weights, the
 * token's 4 activation bytes of quad q broadcast to every lane) — the
 * activation is an embedded {1to16} memory broadcast, so there is no
 * shuffle, transpose or horizontal sum. Per (16 rows, token, block):
 *   I = -128 S_tb + sum_q VPDPBUSD(W_q, x_q)    exact int32
 *   A = fma(cvt(I), sw_b * dx_tb, A)            16 lanes = 16 rows
 * and y = A (16 outputs per token stored directly). Every tile shape, the
 * one-token path and a partial group (lanes outside the requested rows
 * computed and dropped) run exactly these operations in block order, so
 * each output is bit-identical whatever n_tok, tile or row range
 * (batch invariance); the generic C kernel does the same operations in the
 * same order and so gives the same bits.
 */
#ifndef Q8R_TT
#define Q8R_TT 12 /* tokens per register tile */
#endif
/* software prefetch Q8R_PF bytes ahead into L2 for tiles of 2 or more
 * tokens: the hardware prefetchers stop at 4 KiB pages and one core keeps
 * too few L1 misses in flight; measured (7168 x 8192 from DRAM, one core):
 * 8 tokens 144 GOP/s without, 150-226 with 2-4 KiB into L1, 290-312 with
 * 16 KiB into L2. One token: the 9 prefetches per block cost more than they
 * bring (in cache 143 -> 189 GOP/s without them; whole MoE decode steps at
 * batch 1 12-20% faster: Qwen3 shapes 29.2-37.6 -> 24.6-26.8 ms, DeepSeek
 * shapes 84.9-93.5 -> 74.0-75.8 ms), so the weights in huge pages are left
 * to the hardware prefetchers. */
#ifndef Q8R_PF
#define Q8R_PF 16384
#endif
/* tiles of fewer tokens than this interleave their sums (see q8r_tile) and
 * prefetch Q8R_PF_IL bytes ahead into L1 instead: measured streaming from
 * DRAM on two cores (7168-wide rows, a 1 GiB matrix) while a plain read
 * loop gave 56 GB/s, 2 and 3 tokens went from 42 GB/s (16 KiB ahead, T1)
 * to 53 GB/s (4 KiB, T0); 4-8 tokens with their chains lose with T0 (24-34
 * against 40-45 GB/s), so they keep the L2 prefetch. */
#ifndef Q8R_IL
#define Q8R_IL 4
#endif
#ifndef Q8R_PF_IL
#define Q8R_PF_IL 4096
#endif
/* 4-12 tokens also pull the blocks Q8R_PF_L1 bytes ahead from L2 into L1:
 * from DRAM (same harness, 4-12 tokens) 0.85-0.90 -> 0.92-0.96 of the read
 * loop at ~33 GB/s and 0.51-0.87 -> 0.53-0.93 at ~55 GB/s; in cache no
 * change (8-32 tokens 351-358 vs 353-356 GOP/s). */
#ifndef Q8R_PF_L1
#define Q8R_PF_L1 2048
#endif
#ifndef Q8R_PFT
#define Q8R_PFT 1
#endif
#ifndef Q8R_HINT
#define Q8R_HINT _MM_HINT_T1
#endif

/* a += VPDPBUSD(w, the int32 at p broadcast to 16 lanes), with the broadcast
 * embedded in the instruction's memory operand ({1to16}): gcc otherwise emits
 * a separate VPBROADCASTD per step (measured in cache, one core, 8-32
 * tokens: 330-346 -> 338-349 GOP/s). */
static inline __attribute__((always_inline)) __m512i dpb_bcast(__m512i a, __m512i w, const int32_t *p) {
    __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(a) : "v"(w), "m"(*p));
    return a;
}

static inline __attribute__((always_inline)) void q8r_tile(const int T, const uint8_t *g, int64_t nb,
                                                           const uint8_t *xq, size_t xs, const int32_t *corr,
                                                           size_t cs, float *y, int64_t ldy, int64_t l0,
                                                           int64_t l1) {
    __m512 acc[Q8R_TT];
#pragma GCC unroll 16
    for (int t = 0; t < T; t++) acc[t] = _mm512_setzero_ps();
    const float *ds[Q8R_TT];
#pragma GCC unroll 16
    for (int t = 0; t < T; t++) ds[t] = xq_ds(xq + t * xs, nb);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *gb = g + b * XDS_Q8R_GB;
        /* (none in q8r_one: there they cost more than they bring, see above) */
        if (T < Q8R_IL)
#pragma GCC unroll 9
            for (int k = 0; k < 9; k++) _mm_prefetch((const char *)gb + Q8R_PF_IL + 64 * k, _MM_HINT_T0);
        else if (Q8R_PFT) {
#pragma GCC unroll 9
            for (int k = 0; k < 9; k++) _mm_prefetch((const char *)gb + Q8R_PF + 64 * k, Q8R_HINT);
#pragma GCC unroll 9
            for (int k = 0; k < 9; k++) _mm_prefetch((const char *)gb + Q8R_PF_L1 + 64 * k, _MM_HINT_T0);
        }
        const __m512 sw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(gb + 512)));
        const size_t xo = (size_t)(b >> 1) * 64 + (size_t)(b & 1) * 16;
        if (T < Q8R_IL) {
            /* few tokens: the tokens' sums interleaved per weight vector, so
             * consecutive VPDPBUSDs are independent (one chain of 8 per
             * token leaves too little to run in parallel) */
            __m512i a[Q8R_IL];
#pragma GCC unroll 16
            for (int t = 0; t < T; t++) a[t] = _mm512_set1_epi32(corr[t * cs + b]);
#pragma GCC unroll 8
            for (int q = 0; q < 8; q++) {
                const __m512i wq = _mm512_loadu_si512(gb + 64 * q);
                const int qo = q < 4 ? q : q + 4; /* int32 index of quad q in the xq pair layout */
#pragma GCC unroll 16
                for (int t = 0; t < T; t++) a[t] = dpb_bcast(a[t], wq, (const int32_t *)(xq + t * xs + xo) + qo);
            }
#pragma GCC unroll 16
            for (int t = 0; t < T; t++)
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a[t]), _mm512_mul_ps(sw, _mm512_set1_ps(ds[t][2 * b])),
                                         acc[t]);
            continue;
        }
        __m512i w[8];
#pragma GCC unroll 8
        for (int q = 0; q < 8; q++) w[q] = _mm512_loadu_si512(gb + 64 * q);
#pragma GCC unroll 16
        for (int t = 0; t < T; t++) {
            const int32_t *xr = (const int32_t *)(xq + t * xs + xo);
            __m512i a = _mm512_set1_epi32(corr[t * cs + b]);
            a = dpb_bcast(a, w[0], xr + 0);
            a = dpb_bcast(a, w[1], xr + 1);
            a = dpb_bcast(a, w[2], xr + 2);
            a = dpb_bcast(a, w[3], xr + 3);
            a = dpb_bcast(a, w[4], xr + 8);
            a = dpb_bcast(a, w[5], xr + 9);
            a = dpb_bcast(a, w[6], xr + 10);
            a = dpb_bcast(a, w[7], xr + 11);
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a), _mm512_mul_ps(sw, _mm512_set1_ps(ds[t][2 * b])), acc[t]);
        }
    }
    if (l0 == 0 && l1 == 16) {
#pragma GCC unroll 16
        for (int t = 0; t < T; t++) _mm512_storeu_ps(y + t * ldy, acc[t]);
    } else {
        /* y points at output row l0 of the group: lane l goes to y[l - l0] */
#pragma GCC unroll 16
        for (int t = 0; t < T; t++) {
            float tmp[16];
            _mm512_storeu_ps(tmp, acc[t]);
            memcpy(y + t * ldy, tmp + l0, (size_t)(l1 - l0) * sizeof(float));
        }
    }
}

/* One token: the 8 VPDPBUSD of a block in two dependency chains (int32 sums
 * are exact, so the bits are those of q8r_tile). One chain of 8 holds each
 * block ~40 cycles in the scheduler and fewer weight loads stay in flight:
 * measured streaming 1 GiB from DRAM on two cores, 46-56 GB/s with one
 * chain against 63-67 with two, when a plain read loop gives 60-62. */
static void q8r_one(const uint8_t *g, int64_t nb, const uint8_t *xq, const int32_t *corr, float *y, int64_t l0,
                    int64_t l1) {
    const float *ds = xq_ds(xq, nb);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *gb = g + b * XDS_Q8R_GB;
        const int32_t *xr = (const int32_t *)(xq + (size_t)(b >> 1) * 64 + (size_t)(b & 1) * 16);
        __m512i a = _mm512_set1_epi32(corr[b]), c = _mm512_setzero_si512();
        a = _mm512_dpbusd_epi32(a, _mm512_loadu_si512(gb), _mm512_set1_epi32(xr[0]));
        c = _mm512_dpbusd_epi32(c, _mm512_loadu_si512(gb + 64), _mm512_set1_epi32(xr[1]));
        a = _mm512_dpbusd_epi32(a, _mm512_loadu_si512(gb + 128), _mm512_set1_epi32(xr[2]));
        c = _mm512_dpbusd_epi32(c, _mm512_loadu_si512(gb + 192), _mm512_set1_epi32(xr[3]));
        a = _mm512_dpbusd_epi32(a, _mm512_loadu_si512(gb + 256), _mm512_set1_epi32(xr[8]));
        c = _mm512_dpbusd_epi32(c, _mm512_loadu_si512(gb + 320), _mm512_set1_epi32(xr[9]));
        a = _mm512_dpbusd_epi32(a, _mm512_loadu_si512(gb + 384), _mm512_set1_epi32(xr[10]));
        c = _mm512_dpbusd_epi32(c, _mm512_loadu_si512(gb + 448), _mm512_set1_epi32(xr[11]));
        a = _mm512_add_epi32(a, c);
        const __m512 sw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(gb + 512)));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a), _mm512_mul_ps(sw, _mm512_set1_ps(ds[2 * b])), acc);
    }
    if (l0 == 0 && l1 == 16) {
        _mm512_storeu_ps(y, acc);
    } else {
        float tmp[16];
        _mm512_storeu_ps(tmp, acc);
        memcpy(y, tmp + l0, (size_t)(l1 - l0) * sizeof(float));
    }
}

static void q8r_tile_call(int T, const uint8_t *g, int64_t nb, const uint8_t *xq, size_t xs, const int32_t *corr,
                          size_t cs, float *y, int64_t ldy, int64_t l0, int64_t l1) {
#define Q8R_C(n) \
    case n: q8r_tile(n, g, nb, xq, xs, corr, cs, y, ldy, l0, l1); break;
    switch (T) {
    case 1: q8r_one(g, nb, xq, corr, y, l0, l1); break;
        Q8R_C(2) Q8R_C(3) Q8R_C(4) Q8R_C(5) Q8R_C(6) Q8R_C(7) Q8R_C(8) Q8R_C(9) Q8R_C(10) Q8R_C(11)
    default: q8r_tile(Q8R_TT, g, nb, xq, xs, corr, cs, y, ldy, l0, l1); break;
    }
#undef Q8R_C
}

void xds_q8r_gemm_avx512(const uint8_t *w, int64_t row0, int64_t n_rows, int64_t nb, const uint8_t *xq,
                         size_t xq_stride, int n_tok, float *y, int64_t ldy) {
    /* -128 S per (token, block): the byte sums of the xq pair layout */
    const size_t cs = (size_t)((nb + 15) & ~15);
    int32_t *corr = aligned_alloc(64, cs * (size_t)n_tok * sizeof(int32_t));
    XDS_ASSERT(corr);
    const __m512i ones = _mm512_set1_epi8(1);
    for (int t = 0; t < n_tok; t++) {
        const uint8_t *xr = xq + t * xq_stride;
        for (int64_t p = 0; p < (nb + 1) / 2; p++) {
            /* lanes 0-3: b0 q[0:16], 4-7: b1 q[0:16], 8-11: b0 q[16:32], 12-15: b1 q[16:32] */
            __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, _mm512_loadu_si512(xr + p * 64));
            __m256i h = _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64(s, 1));
            __m128i q = _mm_hadd_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
            q = _mm_hadd_epi32(q, q); /* [b0 b1 b0 b1] */
            corr[t * cs + 2 * p] = -128 * _mm_extract_epi32(q, 0);
            if (2 * p + 1 < nb) corr[t * cs + 2 * p + 1] = -128 * _mm_extract_epi32(q, 1);
        }
    }
    const size_t gbytes = (size_t)nb * XDS_Q8R_GB;
    for (int64_t r = row0; r < row0 + n_rows;) {
        int64_t g = r / 16, l0 = r % 16, l1 = row0 + n_rows - g * 16;
        if (l1 > 16) l1 = 16;
        const uint8_t *gp = w + g * gbytes;
        float *yr = y + (r - row0);
        /* tiles of at most Q8R_TT tokens, balanced (16 -> 8 + 8, not 12 + 4) */
        const int n_tiles = (n_tok + Q8R_TT - 1) / Q8R_TT, per = (n_tok + n_tiles - 1) / n_tiles;
        for (int t0 = 0; t0 < n_tok; t0 += per) {
            int T = n_tok - t0 < per ? n_tok - t0 : per;
            q8r_tile_call(T, gp, nb, xq + t0 * xq_stride, xq_stride, corr + t0 * cs, cs, yr + t0 * ldy, ldy, l0, l1);
        }
        r = g * 16 + l1;
    }
    free(corr);
}

/* Q8_0 -> Q8_0_R16 (the same bytes as xds_q8r_pack_generic): per record the
 * 16 rows' 4-byte quads k gathered into vector k (load time only). */
void xds_q8r_pack_avx512(const void *src, void *dst, int64_t n_rows, int64_t n_in) {
    const int64_t nb = n_in / 32;
    const size_t rb = (size_t)nb * 34;
    const __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                           _mm512_set1_epi32((int)rb));
    const __m512i k80 = _mm512_set1_epi8((char)0x80);
    for (int64_t g = 0; g < n_rows / 16; g++) {
        const uint8_t *s0 = (const uint8_t *)src + (size_t)g * 16 * rb;
        uint8_t *d = (uint8_t *)dst + (size_t)g * nb * XDS_Q8R_GB;
        for (int64_t b = 0; b < nb; b++, d += XDS_Q8R_GB) {
            const uint8_t *blk = s0 + b * 34;
#pragma GCC unroll 8
            for (int k = 0; k < 8; k++)
                _mm512_storeu_si512(d + 64 * k, _mm512_xor_si512(_mm512_i32gather_epi32(idx, blk + 2 + 4 * k, 1), k80));
            /* the f16 scales: the low halves of 16 gathered dwords (the
             * last row's dword ends inside its block: bytes d, q0, q1) */
            _mm256_storeu_si256((__m256i *)(d + 512), _mm512_cvtepi32_epi16(_mm512_i32gather_epi32(idx, blk, 1)));
        }
    }
}

/* ---- W8A8: int8 weights x per-token int8 activations (see kern_impl.h) -----
 *
 * The Q8_0_R16 scheme without blocks: 16 rows in the 16 int32 lanes, per
 * quad k of the row one weight vector (64 bytes) and, per token, one
 * VPDPBUSD with the token's 4 activation bytes of quad k as an embedded
 * {1to16} broadcast. The int32 sums run over the whole row (exact), so the
 * float work is one convert and two multiplies per (16 rows, token) — the
 * loop is VPDPBUSD and loads only. Few tokens split the quads over U
 * independent accumulators per token (the VPDPBUSD latency would otherwise
 * bound one chain); they are added in int32 at the end, exact, so every
 * tile shape gives the bits of the generic kernel.
 */
/* Tokens per register tile: 8 measured best in cache (one core, 2048- and
 * 7168-wide rows, 32-128 tokens: 81-83% of the VPDPBUSD peak against 77-80%
 * with 12 — 12 token pointers do not fit the general registers with the
 * loop's own and gcc spills two of them). */
#ifndef W8_TT
#define W8_TT 8
#endif
/* Software prefetch W8_PF bytes ahead into L1, only while the first token
 * tile of a group (pair) streams it from memory: the later tiles find it in
 * cache, where the prefetches cost load slots (in cache, 8-128 tokens:
 * 80-83% of the peak with them on every tile, 83-88% without). */
#ifndef W8_PF
#define W8_PF 4096
#endif

static inline __mmask16 tail16(int64_t n, int64_t j) {
    return n - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - j)) - 1);
}

void xds_act_quant8_avx512(const float *x, int64_t n_in, uint8_t *dst) {
    __m512 vm = _mm512_setzero_ps();
    for (int64_t j = 0; j < n_in; j += 16) vm = _mm512_max_ps(vm, _mm512_abs_ps(_mm512_maskz_loadu_ps(tail16(n_in, j), x + j)));
    float amax = _mm512_reduce_max_ps(vm); /* max is exact: the same value as the generic loop */
    float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    const __m512 vid = _mm512_set1_ps(id);
    const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
    __m512i vs = _mm512_setzero_si512();
    int8_t *q = (int8_t *)dst;
    for (int64_t j = 0; j < n_in; j += 16) {
        const __mmask16 m = tail16(n_in, j);
        __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + j), vid));
        v = _mm512_min_epi32(_mm512_max_epi32(v, lo), hi); /* masked-off lanes: 0 */
        vs = _mm512_add_epi32(vs, v);
        _mm_mask_storeu_epi8(q + j, m, _mm512_cvtepi32_epi8(v));
    }
    memset(q + n_in, 0, xa_q_bytes(n_in) - (size_t)n_in);
    int32_t sum = _mm512_reduce_add_epi32(vs);
    memcpy(dst + xa_q_bytes(n_in), &d, 4);
    memcpy(dst + xa_q_bytes(n_in) + 4, &sum, 4);
}

static inline __attribute__((always_inline)) void w8_tile(const int T, const int U, const uint8_t *g, int64_t n_in,
                                                          const uint8_t *xa, size_t xs, float *y, int64_t ldy,
                                                          int64_t l0, int64_t l1, const int pf) {
    __m512i acc[8][W8_TT];
    const int32_t *xr[W8_TT];
#pragma GCC unroll 16
    for (int t = 0; t < T; t++) {
        xr[t] = (const int32_t *)(xa + t * xs);
        acc[0][t] = _mm512_set1_epi32(-128 * *xa_sum(xa + t * xs, n_in));
#pragma GCC unroll 8
        for (int u = 1; u < U; u++) acc[u][t] = _mm512_setzero_si512();
    }
    const int64_t nq = XDS_W8A8_K(n_in) / 4;
    int64_t k = 0;
    for (; k + U <= nq; k += U) {
        const uint8_t *gk = g + 64 * k;
        if (T >= 2 && pf && W8_PF)
#pragma GCC unroll 8
            for (int u = 0; u < U; u++) _mm_prefetch((const char *)gk + W8_PF + 64 * u, _MM_HINT_T0);
#pragma GCC unroll 8
        for (int u = 0; u < U; u++) {
            const __m512i w = _mm512_loadu_si512(gk + 64 * u);
#pragma GCC unroll 16
            for (int t = 0; t < T; t++) acc[u][t] = dpb_bcast(acc[u][t], w, xr[t] + k + u);
        }
    }
    for (; k < nq; k++) { /* the last quads when U does not divide nq */
        const __m512i w = _mm512_loadu_si512(g + 64 * k);
#pragma GCC unroll 16
        for (int t = 0; t < T; t++) acc[0][t] = dpb_bcast(acc[0][t], w, xr[t] + k);
    }
    const __m512 sw = _mm512_loadu_ps((const float *)(g + 16 * XDS_W8A8_K(n_in)));
#pragma GCC unroll 16
    for (int t = 0; t < T; t++) {
        __m512i a = acc[0][t];
#pragma GCC unroll 8
        for (int u = 1; u < U; u++) a = _mm512_add_epi32(a, acc[u][t]);
        __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(a), _mm512_mul_ps(sw, _mm512_set1_ps(*xa_d(xa + t * xs, n_in))));
        if (l0 == 0 && l1 == 16) {
            _mm512_storeu_ps(y + t * ldy, v);
        } else { /* y points at output row l0 of the group: lane l goes to y[l - l0] */
            float tmp[16];
            _mm512_storeu_ps(tmp, v);
            memcpy(y + t * ldy, tmp + l0, (size_t)(l1 - l0) * sizeof(float));
        }
    }
}

/* Two whole groups (32 rows) x T tokens: per quad 2 weight loads and T
 * broadcasts feed 2 T VPDPBUSD (one group: 1 + T loads for T), and 2 T
 * independent chains hide the VPDPBUSD latency; 2 x W8_TT accumulators fit
 * the 32 zmm registers. Same int32 sums, same float epilogue as w8_tile. */
static inline __attribute__((always_inline)) void w8_tile_2g(const int T, const uint8_t *g, size_t gbytes, int64_t n_in,
                                                             const uint8_t *xa, size_t xs, float *y, int64_t ldy,
                                                             const int pf) {
    __m512i acc[2][W8_TT];
    const int32_t *xr[W8_TT];
    const uint8_t *g1 = g + gbytes;
#pragma GCC unroll 16
    for (int t = 0; t < T; t++) {
        xr[t] = (const int32_t *)(xa + t * xs);
        acc[0][t] = acc[1][t] = _mm512_set1_epi32(-128 * *xa_sum(xa + t * xs, n_in));
    }
    const int64_t nq = XDS_W8A8_K(n_in) / 4;
    for (int64_t k = 0; k < nq; k++) {
        if (pf && W8_PF) {
            _mm_prefetch((const char *)g + 64 * k + W8_PF, _MM_HINT_T0);
            _mm_prefetch((const char *)g1 + 64 * k + W8_PF, _MM_HINT_T0);
        }
        const __m512i w0 = _mm512_loadu_si512(g + 64 * k), w1 = _mm512_loadu_si512(g1 + 64 * k);
#pragma GCC unroll 16
        for (int t = 0; t < T; t++) {
            acc[0][t] = dpb_bcast(acc[0][t], w0, xr[t] + k);
            acc[1][t] = dpb_bcast(acc[1][t], w1, xr[t] + k);
        }
    }
    const int64_t K = XDS_W8A8_K(n_in);
    const __m512 sw0 = _mm512_loadu_ps((const float *)(g + 16 * K)), sw1 = _mm512_loadu_ps((const float *)(g1 + 16 * K));
#pragma GCC unroll 16
    for (int t = 0; t < T; t++) {
        const __m512 dx = _mm512_set1_ps(*xa_d(xa + t * xs, n_in));
        _mm512_storeu_ps(y + t * ldy, _mm512_mul_ps(_mm512_cvtepi32_ps(acc[0][t]), _mm512_mul_ps(sw0, dx)));
        _mm512_storeu_ps(y + t * ldy + 16, _mm512_mul_ps(_mm512_cvtepi32_ps(acc[1][t]), _mm512_mul_ps(sw1, dx)));
    }
}

static void w8_tile_2g_call(int T, const uint8_t *g, size_t gbytes, int64_t n_in, const uint8_t *xa, size_t xs, float *y,
                            int64_t ldy, int pf) {
#define W8_C2(n)                                                    \
    case n:                                                         \
        if (pf) w8_tile_2g(n, g, gbytes, n_in, xa, xs, y, ldy, 1);  \
        else w8_tile_2g(n, g, gbytes, n_in, xa, xs, y, ldy, 0);     \
        break;
    switch (T < W8_TT ? T : W8_TT) {
        W8_C2(4) W8_C2(5) W8_C2(6) W8_C2(7)
#if W8_TT > 8
        W8_C2(8) W8_C2(9) W8_C2(10) W8_C2(11)
#endif
    default:
        if (pf) w8_tile_2g(W8_TT, g, gbytes, n_in, xa, xs, y, ldy, 1);
        else w8_tile_2g(W8_TT, g, gbytes, n_in, xa, xs, y, ldy, 0);
        break;
    }
#undef W8_C2
}

static void w8_tile_call(int T, const uint8_t *g, int64_t n_in, const uint8_t *xa, size_t xs, float *y, int64_t ldy,
                         int64_t l0, int64_t l1, int pf) {
#define W8_C(n, u)                                                  \
    case n:                                                         \
        if (pf) w8_tile(n, u, g, n_in, xa, xs, y, ldy, l0, l1, 1);  \
        else w8_tile(n, u, g, n_in, xa, xs, y, ldy, l0, l1, 0);     \
        break;
    switch (T < W8_TT ? T : W8_TT) {
        W8_C(1, 8) W8_C(2, 4) W8_C(3, 4) W8_C(4, 2) W8_C(5, 2) W8_C(6, 2) W8_C(7, 1)
#if W8_TT > 8
        W8_C(8, 1) W8_C(9, 1) W8_C(10, 1) W8_C(11, 1)
#endif
    default:
        if (pf) w8_tile(W8_TT, 1, g, n_in, xa, xs, y, ldy, l0, l1, 1);
        else w8_tile(W8_TT, 1, g, n_in, xa, xs, y, ldy, l0, l1, 0);
        break;
    }
#undef W8_C
}

void xds_w8a8_gemm_avx512(const uint8_t *w, int64_t row0, int64_t n_rows, int64_t n_in, const uint8_t *xa,
                          size_t xa_stride, int n_tok, float *y, int64_t ldy) {
    const size_t gbytes = XDS_W8A8_GB(n_in);
    /* tiles of at most W8_TT tokens, balanced (12 -> 6 + 6, not 8 + 4) */
    const int n_tiles = (n_tok + W8_TT - 1) / W8_TT, per = n_tiles ? (n_tok + n_tiles - 1) / n_tiles : 1;
    for (int64_t r = row0; r < row0 + n_rows;) {
        int64_t g = r / 16, l0 = r % 16, l1 = row0 + n_rows - g * 16;
        if (l1 > 16) l1 = 16;
        const uint8_t *gp = w + g * gbytes;
        float *yr = y + (r - row0);
        if (l0 == 0 && l1 == 16 && row0 + n_rows - r >= 32 && per >= 4) { /* two whole groups */
            for (int t0 = 0; t0 < n_tok; t0 += per) {
                int T = n_tok - t0 < per ? n_tok - t0 : per;
                if (T >= 4) w8_tile_2g_call(T, gp, gbytes, n_in, xa + t0 * xa_stride, xa_stride, yr + t0 * ldy, ldy, t0 == 0);
                else
                    for (int h = 0; h < 2; h++)
                        w8_tile_call(T, gp + h * gbytes, n_in, xa + t0 * xa_stride, xa_stride, yr + t0 * ldy + 16 * h,
                                     ldy, 0, 16, t0 == 0);
            }
            r += 32;
            continue;
        }
        for (int t0 = 0; t0 < n_tok; t0 += per) {
            int T = n_tok - t0 < per ? n_tok - t0 : per;
            w8_tile_call(T, gp, n_in, xa + t0 * xa_stride, xa_stride, yr + t0 * ldy, ldy, l0, l1, t0 == 0);
        }
        r = g * 16 + l1;
    }
}
