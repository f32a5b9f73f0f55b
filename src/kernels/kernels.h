/*
 * kernels.h — CPU compute kernels used by the models.
 *
 * The implementation for each op is chosen at run time from the CPU's
 * features (AVX-512/VNNI, AVX2+FMA, or portable C), overridable with
 * XDS_CPU=generic|avx2|avx512 (for tests and benchmarks). All paths compute
 * the same math; tests compare every path with the scalar reference.
 *
 * Quantized weights (Q8_0/Q4_0/Q4_1/...) are multiplied by activations that
 * are quantized on the fly to 8-bit blocks (as ggml does); float weights
 * (F32/F16/BF16) by f32 activations; W8A8 weights (int8, one scale per row,
 * made at load) by activations quantized to int8 with one scale per token.
 */
#ifndef XDS_KERNELS_KERNELS_H
#define XDS_KERNELS_KERNELS_H

#include <stdint.h>

#include "base/threadpool.h"
#include "tensor/dtype.h"

typedef enum { XDS_CPU_GENERIC = 0, XDS_CPU_AVX2 = 1, XDS_CPU_AVX512 = 2 } xds_cpu_level;

/* The level in use (detected once, clamped by XDS_CPU). */
xds_cpu_level xds_cpu_level_get(void);
const char *xds_cpu_level_name(xds_cpu_level l);
/* Force a level (tests); clamped to what the CPU supports. */
void xds_cpu_level_set(xds_cpu_level l);

/*
 * y = x W^T for a weight matrix W (w->ne[0] = n_in, w->ne[1] = n_out rows):
 *   y[t * n_out + o] = sum_i W[o][i] * x[t * n_in + i],  t < n_tok.
 * x: f32 (n_tok, n_in) row-major, y: f32 (n_tok, n_out). n_tok == 1 is a
 * matrix-vector product; n_tok > 1 a blocked matrix-matrix product that reads
 * each weight block once per tile of tokens. Parallel over `pool`.
 */
void xds_matmul(xds_pool *pool, const xds_tensor *w, const float *x, float *y, int n_tok);

/* Same, for rows [row0, row1) of W only, writing y with row stride ldy
 * (y[t * ldy + (o - row0)]). For expert subsets and sharding. */
void xds_matmul_rows(xds_pool *pool, const xds_tensor *w, int64_t row0, int64_t row1,
                     const float *x, float *y, int64_t ldy, int n_tok);

/* Several products with the same input: y[i] = x w[i]^T (y[i] of shape
 * (n_tok, rows of w[i])) for i < n <= 8, all w[i] with the same ne[0]. x is
 * quantized once and all products share one pool run (e.g. q/k/v, gate/up):
 * fewer wake-ups per decode step than n separate xds_matmul calls. */
void xds_matmul_multi(xds_pool *pool, int n, const xds_tensor *const *w, const float *x,
                      float *const *y, int n_tok);

/* Q8_0 rows -> Q8_0_R16 (kern_impl.h): n_rows (a multiple of 16) rows of
 * n_in values from src to dst (same size; dst 64-byte aligned for the
 * AVX-512 kernel). Row 16 g starts at the same byte offset in both, so a
 * range of whole groups can be packed separately (in parallel). */
void xds_q8r_pack(const void *src, void *dst, int64_t n_rows, int64_t n_in);

/* W8A8 (kern_impl.h): bytes of a matrix of n_rows x n_in (whole groups of
 * 16 rows); 0 unless 1 <= n_in <= 65536. */
size_t xds_w8a8_bytes(int64_t n_rows, int64_t n_in);
/* Quantize rows [16 g0, 16 g1) of the f32 matrix src (n_rows x n_in,
 * row-major; rows past n_rows are zero) into groups g0..g1-1 of the W8A8
 * matrix at dst: per row s = max|w| / 127, q = round_nearest_even(w / s). */
void xds_w8a8_quant(const float *src, int64_t n_rows, int64_t n_in, int64_t g0, int64_t g1, void *dst);
/* The same from a matmul weight of any type (F32/F16/BF16, the GGUF
 * quantized types, Q8_0_R16; dequantized to f32 first, row by row):
 * groups g0..g1-1 of a matrix of w's rows. XDS_DTYPE_W8A8 input is copied.
 * Returns -1, or the first row (of the whole matrix) holding a NaN or an
 * infinity: such a weight has no int8 value (the caller reports the file
 * as corrupt; what was written for that group is not to be used). */
int64_t xds_w8a8_from_tensor(const xds_tensor *w, int64_t g0, int64_t g1, void *dst);

/* Row i of an embedding-like tensor (any dtype) dequantized to f32 (ne[0] values). */
void xds_get_row(const xds_tensor *w, int64_t i, float *dst);

/* Elementwise and normalization ops (f32, vectorized). */
void xds_rmsnorm(float *y, const float *x, const float *weight, int n, float eps);
void xds_softmax(float *x, int n);
void xds_silu_mul(float *gate, const float *up, int n); /* gate = silu(gate) * up */
void xds_add(float *y, const float *x, int n);          /* y += x */
float xds_dot_f32(const float *a, const float *b, int n);
void xds_axpy(float *y, float a, const float *x, int n); /* y += a * x */

#endif
