/*
 * kern_impl.h — internal interface between the matmul driver (matmul.c) and
 * the per-ISA kernels (matmul.c generic, matmul_avx2.c, matmul_avx512.c).
 * Not a public header: only src/kernels/ and the kernel tests include it.
 *
 * Quantized activations ("xq"): each token row of n_in = nb * 32 values is
 *   int8  qs[np * 64]   np = ceil(nb / 2) pairs of blocks; q = round_nearest_even(x / d),
 *                       |q| <= 127, pair-interleaved: pair p holds
 *                       [b0 q[0:16] | b1 q[0:16] | b0 q[16:32] | b1 q[16:32]]
 *                       with b0 = 2p, b1 = 2p + 1 (zeros if b1 == nb)
 *   float ds[2 * nb]    ds[2b] = d = max|x| / 127 over block b (0 if all zero),
 *                       ds[2b+1] = s = d * sum(q) over block b
 * followed by padding to 64 bytes; rows are xq_row_bytes(nb) apart. The pair
 * layout matches weights unpacked as [lo nibbles of b0 | of b1 | hi of b0 |
 * of b1] (one AND, one shift of 32 packed bytes), and d and s are interleaved
 * so that one 128-bit load gives both for a pair of blocks.
 *
 * Every quantized weight type is handled as "unsigned u8 weights u, scales
 * dw, offsets mw" per 32-block so that
 *   sum_j W[j] x[j] ~= sum_b dw_b * d_b * sum_j u_bj q_bj  +  mw_b * s_b
 *   Q4_0: u = nibble,         dw = d, mw = -8 d
 *   Q4_1: u = nibble,         dw = d, mw = m
 *   Q8_0: u = q xor 0x80 (=q+128), dw = d, mw = -128 d   (AVX-512 VNNI)
 * (the AVX2 Q8_0 path uses the signed |w| * sign(x, w) trick instead, mw = 0).
 * All paths compute the same sum up to f32 rounding.
 */
#ifndef XDS_KERNELS_KERN_IMPL_H
#define XDS_KERNELS_KERN_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kernels.h"

static inline size_t xq_qs_bytes(int64_t nb) { return (size_t)((nb + 1) / 2) * 64; }
static inline size_t xq_row_bytes(int64_t nb) {
    return (xq_qs_bytes(nb) + (size_t)nb * 8 + 63) & ~(size_t)63;
}
/* Offset of value j (< 32) of block b in qs. */
static inline size_t xq_qs_index(int64_t b, int j) {
    return (size_t)(b / 2) * 64 + (j >= 16 ? 32 : 0) + (b & 1) * 16 + (j & 15);
}
static inline const int8_t *xq_qs(const uint8_t *row) { return (const int8_t *)row; }
static inline const float *xq_ds(const uint8_t *row, int64_t nb) {
    return (const float *)(row + xq_qs_bytes(nb));
}

/* Quantize one activation row of nb*32 floats into xq layout at dst. */
typedef void (*xds_act_quant_fn)(const float *x, int64_t nb, uint8_t *dst);

/*
 * Quantized-weight GEMM on a row range: for r < n_rows, t < n_tok
 *   y[t * ldy + r] = sum over blocks (see above) of weight row r (at
 *   w + r * w_row_bytes, type `type`) and xq row t (at xq + t * xq_stride).
 */
typedef void (*xds_qgemm_fn)(xds_dtype type, const uint8_t *w, size_t w_row_bytes, int64_t n_rows,
                             int64_t nb, const uint8_t *xq, size_t xq_stride, int n_tok, float *y,
                             int64_t ldy);

/* Float-weight GEMM (F32/F16/BF16): y[t*ldy + r] = sum_i W[r][i] x[t*ldx + i]. */
typedef void (*xds_fgemm_fn)(xds_dtype type, const uint8_t *w, size_t w_row_bytes, int64_t n_rows,
                             int64_t n_in, const float *x, int64_t ldx, int n_tok, float *y,
                             int64_t ldy);

typedef struct xds_kern_table {
    xds_act_quant_fn act_quant;
    xds_qgemm_fn qgemm; /* Q8_0, Q4_0, Q4_1 */
    xds_fgemm_fn fgemm; /* F32, F16, BF16 */
} xds_kern_table;

/* The table for a level (AVX2/AVX-512 only if compiled on x86-64). */
const xds_kern_table *xds_kern_table_get(xds_cpu_level l);

/* Per-ISA entry points. */
void xds_act_quant_generic(const float *x, int64_t nb, uint8_t *dst);
void xds_qgemm_generic(xds_dtype type, const uint8_t *w, size_t w_row_bytes, int64_t n_rows,
                       int64_t nb, const uint8_t *xq, size_t xq_stride, int n_tok, float *y,
                       int64_t ldy);
void xds_fgemm_generic(xds_dtype type, const uint8_t *w, size_t w_row_bytes, int64_t n_rows,
                       int64_t n_in, const float *x, int64_t ldx, int n_tok, float *y, int64_t ldy);
/*
 * Q8_0_R16 (XDS_DTYPE_Q8_0_R16): Q8_0 weights with 16 rows interleaved, for
 * VPDPBUSD with the rows in the 16 int32 lanes. A matrix of n_rows (a
 * multiple of 16) x nb blocks is n_rows / 16 groups, each nb records of
 * XDS_Q8R_GB bytes (record (g, b) at (g * nb + b) * XDS_Q8R_GB):
 *   u8  q[8][16][4]   q[k][r][i] = W[16 g + r][32 b + 4 k + i] xor 0x80
 *   f16 d[16]         the 16 rows' block scales
 * = 34 bytes per row and block, the size of Q8_0; rows r0 = 16 g start at
 * r0 * (nb * 34) as in Q8_0. Records are 32-byte aligned when the data is 64-aligned.
 * The kernels compute rows [row0, row0 + n_rows) of the matrix at w (group
 * 0; any row range, partial groups computed whole and the extra lanes
 * dropped): per (row, token) and block b in order,
 *   I = sum_j W[j] q[j] (exact int32), acc = fma((float)I, d_w * d_x, acc)
 * from acc = 0; y = acc. The generic and the AVX-512 kernel give the same bits.
 */
#define XDS_Q8R_GB 544
/* xds_q8r_pack per level (the same bytes) */
void xds_q8r_pack_generic(const void *src, void *dst, int64_t n_rows, int64_t n_in);
void xds_q8r_gemm_generic(const uint8_t *w, int64_t row0, int64_t n_rows, int64_t nb, const uint8_t *xq,
                          size_t xq_stride, int n_tok, float *y, int64_t ldy);

/*
 * W8A8 (XDS_DTYPE_W8A8): int8 weights, one f32 scale per output row; int8
 * activations, one f32 scale per token; exact int32 dot products.
 *
 * Weights: 16 rows interleaved per group as Q8_0_R16, but with no blocks: a
 * matrix of n_rows x n_in (1 <= n_in <= 65536; K = n_in rounded up to a
 * multiple of 4) is ceil(n_rows / 16) groups of XDS_W8A8_GB(n_in) =
 * 16 (K + 4) bytes, group g at g * XDS_W8A8_GB(n_in) (= row 16 g * (K + 4),
 * as if a row were K + 4 bytes):
 *   u8  q[K / 4][16][4]      q[k][r][i] = W[16 g + r][4 k + i] + 128
 *                            (W in [-127, 127]; the u8 operand of VPDPBUSD;
 *                            W = 0 for columns n_in..K-1)
 *   f32 s[16]                the 16 rows' scales (amax / 127)
 * Rows of the last group past n_rows hold W = 0, s = 0. The interleave puts
 * the 16 rows in the 16 int32 lanes of one VPDPBUSD and makes the group one
 * contiguous stream (one token reads the matrix front to back).
 *
 * Activations ("xa"): per token row, xa_row_bytes(n_in) apart,
 *   int8  q[n_in]   q = round_nearest_even(x / d) with d = max|x| / 127
 *                   (computed as x * (1 / d); 0 if all x are 0), |q| <= 127,
 *                   padded with zeros to a multiple of 64 bytes (>= K)
 *   f32   d         at xa_d(row, n_in)
 *   int32 S         sum of q (the -128 S correction of the u8 weights)
 * Per output (row r, token t), every level computes
 *   I = sum_j (u_rj - 128) q_tj   (exact int32: |I| <= 255 * 127 * n_in < 2^31)
 *   y = (float)I * (s_r * d_t)    (two f32 roundings, in this order)
 * so all levels, tile shapes, batch sizes and thread splits give the same bits.
 */
#define XDS_W8A8_MAX_IN 65536
static inline int64_t XDS_W8A8_K(int64_t n_in) { return (n_in + 3) & ~(int64_t)3; }
static inline size_t XDS_W8A8_GB(int64_t n_in) { return (size_t)16 * ((size_t)XDS_W8A8_K(n_in) + 4); }
static inline size_t xa_q_bytes(int64_t n_in) { return ((size_t)n_in + 63) & ~(size_t)63; }
static inline size_t xa_row_bytes(int64_t n_in) { return xa_q_bytes(n_in) + 64; }
static inline const float *xa_d(const uint8_t *row, int64_t n_in) { return (const float *)(row + xa_q_bytes(n_in)); }
static inline const int32_t *xa_sum(const uint8_t *row, int64_t n_in) {
    return (const int32_t *)(row + xa_q_bytes(n_in) + 4);
}

/* Quantize one activation row of n_in floats into xa layout at dst. */
typedef void (*xds_act_quant8_fn)(const float *x, int64_t n_in, uint8_t *dst);
/* W8A8 GEMM: rows [row0, row0 + n_rows) of the matrix at w (group 0), xa
 * rows t < n_tok at xa + t * xa_stride: y[t * ldy + (r - row0)]. */
typedef void (*xds_w8a8_gemm_fn)(const uint8_t *w, int64_t row0, int64_t n_rows, int64_t n_in, const uint8_t *xa,
                                 size_t xa_stride, int n_tok, float *y, int64_t ldy);
void xds_act_quant8_generic(const float *x, int64_t n_in, uint8_t *dst);
void xds_w8a8_gemm_generic(const uint8_t *w, int64_t row0, int64_t n_rows, int64_t n_in, const uint8_t *xa,
                           size_t xa_stride, int n_tok, float *y, int64_t ldy);
#if defined(__x86_64__)
void xds_act_quant8_avx512(const float *x, int64_t n_in, uint8_t *dst);
void xds_w8a8_gemm_avx512(const uint8_t *w, int64_t row0, int64_t n_rows, int64_t n_in, const uint8_t *xa,
                          size_t xa_stride, int n_tok, float *y, int64_t ldy);
void xds_w8a8_gemm_avx2(const uint8_t *w, int64_t row0, int64_t n_rows, int64_t n_in, const uint8_t *xa,
                        size_t xa_stride, int n_tok, float *y, int64_t ldy);
#endif

#if defined(__x86_64__)
void xds_q8r_pack_avx512(const void *src, void *dst, int64_t n_rows, int64_t n_in);
void xds_q8r_gemm_avx512(const uint8_t *w, int64_t row0, int64_t n_rows, int64_t nb, const uint8_t *xq,
                         size_t xq_stride, int n_tok, float *y, int64_t ldy);
void xds_act_quant_avx2(const float *x, int64_t nb, uint8_t *dst);
void xds_qgemm_avx2(xds_dtype type, const uint8_t *w, size_t w_row_bytes, int64_t n_rows,
                    int64_t nb, const uint8_t *xq, size_t xq_stride, int n_tok, float *y,
                    int64_t ldy);
void xds_fgemm_avx2(xds_dtype type, const uint8_t *w, size_t w_row_bytes, int64_t n_rows,
                    int64_t n_in, const float *x, int64_t ldx, int n_tok, float *y, int64_t ldy);
void xds_act_quant_avx512(const float *x, int64_t nb, uint8_t *dst);
void xds_qgemm_avx512(xds_dtype type, const uint8_t *w, size_t w_row_bytes, int64_t n_rows,
                      int64_t nb, const uint8_t *xq, size_t xq_stride, int n_tok, float *y,
                      int64_t ldy);
void xds_fgemm_avx512(xds_dtype type, const uint8_t *w, size_t w_row_bytes, int64_t n_rows,
                      int64_t n_in, const float *x, int64_t ldx, int n_tok, float *y,
                      int64_t ldy);
#endif

#endif
