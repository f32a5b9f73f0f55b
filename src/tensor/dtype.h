/*
 * dtype.h — element types of weights and activations, their block layouts,
 * and the tensor view shared by the format readers, kernels and models.
 *
 * Quantized types use ggml's block layouts bit for bit, so GGUF data is used
 * in place (mmap, no copy):
 *   Q8_0 : 32 values  = f16 d, int8 qs[32]                  value = d * q
 *   Q4_0 : 32 values  = f16 d, u8 qs[16]                    value = d * (q - 8)
 *   Q4_1 : 32 values  = f16 d, f16 m, u8 qs[16]             value = d * q + m
 *          (Q4_x: element j < 16 is the low nibble of qs[j], element j+16 the high)
 *   Q4_K, Q6_K: 256-value super-blocks as in ggml (optional kernels).
 * A tensor's ne[0] is the contiguous (row) dimension, as in GGUF: a weight of a
 * linear layer y = W x with W of HF shape [out, in] has ne[0] = in, ne[1] = out.
 */
#ifndef XDS_TENSOR_DTYPE_H
#define XDS_TENSOR_DTYPE_H

#include <stddef.h>
#include <stdint.h>

typedef enum xds_dtype {
    XDS_DTYPE_F32 = 0,
    XDS_DTYPE_F16,
    XDS_DTYPE_BF16,
    XDS_DTYPE_Q8_0,
    XDS_DTYPE_Q4_0,
    XDS_DTYPE_Q4_1,
    XDS_DTYPE_Q4_K,
    XDS_DTYPE_Q6_K,
    /* Q8_0 with 16 rows interleaved (src/kernels/kern_impl.h): made at load
     * from Q8_0 matmul weights for the AVX-512 kernels, never in a file;
     * legal only as a matmul weight (xds_matmul*, xds_get_row), not for
     * xds_dequant_row / xds_quant_row. Same bytes per row as Q8_0. */
    XDS_DTYPE_Q8_0_R16,
    /* W8A8 (src/kernels/kern_impl.h): int8 weights with one f32 scale per
     * output row (symmetric), 16 rows interleaved for VPDPBUSD; multiplied
     * by activations quantized per token (int8, one scale per token). Made at
     * load (--quantize w8a8) from any matmul weight, never in a file; legal
     * only as a matmul weight (xds_matmul*, xds_get_row). A row is K + 4
     * bytes (K = n_in rounded up to 4, n_in <= 65536); a matrix of n_rows is
     * ceil(n_rows / 16) whole groups (xds_w8a8_bytes). */
    XDS_DTYPE_W8A8,
    XDS_DTYPE_COUNT
} xds_dtype;

typedef uint16_t xds_f16;  /* IEEE half, raw bits */
typedef uint16_t xds_bf16; /* bfloat16, raw bits */

#define XDS_QK8_0 32
#define XDS_QK4_0 32
#define XDS_QK4_1 32
#define XDS_QK_K 256

typedef struct { xds_f16 d; int8_t qs[XDS_QK8_0]; } xds_block_q8_0;
typedef struct { xds_f16 d; uint8_t qs[XDS_QK4_0 / 2]; } xds_block_q4_0;
typedef struct { xds_f16 d; xds_f16 m; uint8_t qs[XDS_QK4_1 / 2]; } xds_block_q4_1;
typedef struct { xds_f16 d; xds_f16 dmin; uint8_t scales[12]; uint8_t qs[XDS_QK_K / 2]; } xds_block_q4_k;
typedef struct { uint8_t ql[XDS_QK_K / 2]; uint8_t qh[XDS_QK_K / 4]; int8_t scales[XDS_QK_K / 16]; xds_f16 d; } xds_block_q6_k;

_Static_assert(sizeof(xds_block_q8_0) == 34, "q8_0 layout");
_Static_assert(sizeof(xds_block_q4_0) == 18, "q4_0 layout");
_Static_assert(sizeof(xds_block_q4_1) == 20, "q4_1 layout");
_Static_assert(sizeof(xds_block_q4_k) == 144, "q4_k layout");
_Static_assert(sizeof(xds_block_q6_k) == 210, "q6_k layout");

typedef struct xds_dtype_traits {
    const char *name;  /* "f32", "q4_1", ... */
    int block_size;    /* values per block (1 for float types) */
    int block_bytes;   /* bytes per block */
} xds_dtype_traits;

const xds_dtype_traits *xds_dtype_info(xds_dtype t);
const char *xds_dtype_name(xds_dtype t);

/* Bytes of a row of n values; 0 if n is not a multiple of the block size. */
size_t xds_dtype_row_bytes(xds_dtype t, int64_t n);

float xds_f16_to_f32(xds_f16 h);
xds_f16 xds_f32_to_f16(float f);
float xds_bf16_to_f32(xds_bf16 h);
xds_bf16 xds_f32_to_bf16(float f); /* round to nearest even */

/* Reference (scalar) dequantization of one row of n values of type t. */
void xds_dequant_row(xds_dtype t, const void *src, float *dst, int64_t n);
/* Reference (scalar) quantization of one row (types F32/F16/BF16/Q8_0/Q4_0/Q4_1). */
void xds_quant_row(xds_dtype t, const float *src, void *dst, int64_t n);

#define XDS_MAX_DIMS 4

/* A view of a tensor's data (mapped from a file or owned elsewhere). */
typedef struct xds_tensor {
    const char *name;
    xds_dtype type;
    int n_dims;
    int64_t ne[XDS_MAX_DIMS]; /* ne[0] contiguous; unused dims are 1 */
    const void *data;
    size_t nbytes;
} xds_tensor;

int64_t xds_tensor_nelem(const xds_tensor *t);

#endif
