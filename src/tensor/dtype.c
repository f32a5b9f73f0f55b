/* dtype.c — type traits and scalar float conversions. Reference
 * (de)quantization lives in quant_ref.c. */
#include "tensor/dtype.h"

#include <string.h>

static const xds_dtype_traits traits[XDS_DTYPE_COUNT] = {
    [XDS_DTYPE_F32] = {"f32", 1, 4},
    [XDS_DTYPE_F16] = {"f16", 1, 2},
    [XDS_DTYPE_BF16] = {"bf16", 1, 2},
    [XDS_DTYPE_Q8_0] = {"q8_0", XDS_QK8_0, sizeof(xds_block_q8_0)},
    [XDS_DTYPE_Q4_0] = {"q4_0", XDS_QK4_0, sizeof(xds_block_q4_0)},
    [XDS_DTYPE_Q4_1] = {"q4_1", XDS_QK4_1, sizeof(xds_block_q4_1)},
    [XDS_DTYPE_Q4_K] = {"q4_k", XDS_QK_K, sizeof(xds_block_q4_k)},
    [XDS_DTYPE_Q6_K] = {"q6_k", XDS_QK_K, sizeof(xds_block_q6_k)},
    [XDS_DTYPE_Q8_0_R16] = {"q8_0_r16", XDS_QK8_0, sizeof(xds_block_q8_0)},
    [XDS_DTYPE_W8A8] = {"w8a8", 1, 1}, /* (n rounded up to 4) + 4 bytes of scale per row: xds_dtype_row_bytes */
};

const xds_dtype_traits *xds_dtype_info(xds_dtype t) {
    if ((unsigned)t >= XDS_DTYPE_COUNT) return NULL;
    return &traits[t];
}

const char *xds_dtype_name(xds_dtype t) {
    const xds_dtype_traits *tr = xds_dtype_info(t);
    return tr ? tr->name : "?";
}

size_t xds_dtype_row_bytes(xds_dtype t, int64_t n) {
    const xds_dtype_traits *tr = xds_dtype_info(t);
    if (!tr || n < 0 || n % tr->block_size) return 0;
    if (t == XDS_DTYPE_W8A8) return n <= 0 || n > 65536 ? 0 : (size_t)((n + 3) & ~(int64_t)3) + 4;
    return (size_t)(n / tr->block_size) * (size_t)tr->block_bytes;
}

int64_t xds_tensor_nelem(const xds_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < XDS_MAX_DIMS; i++) n *= t->ne[i];
    return n;
}

static inline uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

float xds_f16_to_f32(xds_f16 h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    if (exp == 0) {
        if (mant == 0) return bits_f32(sign);
        /* subnormal: value = mant * 2^-24 */
        float v = (float)mant * (1.0f / 16777216.0f);
        return sign ? -v : v;
    }
    if (exp == 31) return bits_f32(sign | 0x7f800000u | (mant << 13));
    return bits_f32(sign | ((exp + 112) << 23) | (mant << 13));
}

xds_f16 xds_f32_to_f16(float f) {
    uint32_t x = f32_bits(f);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t exp = (x >> 23) & 0xff;
    uint32_t mant = x & 0x7fffff;
    if (exp == 0xff) return (xds_f16)(sign | 0x7c00 | (mant ? 0x200 : 0));
    int32_t e = (int32_t)exp - 127 + 15;
    if (e >= 31) return (xds_f16)(sign | 0x7c00);
    if (e <= 0) {
        if (e < -10) return (xds_f16)sign;
        mant |= 0x800000;
        uint32_t shift = (uint32_t)(14 - e);
        uint32_t half = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (xds_f16)(sign | half);
    }
    uint32_t half = sign | ((uint32_t)e << 10) | (mant >> 13);
    uint32_t rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (half & 1))) half++; /* may carry into exp: correct */
    return (xds_f16)half;
}

float xds_bf16_to_f32(xds_bf16 h) { return bits_f32((uint32_t)h << 16); }

xds_bf16 xds_f32_to_bf16(float f) {
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffff) > 0x7f800000) return (xds_bf16)((x >> 16) | 0x40); /* quiet NaN */
    x += 0x7fff + ((x >> 16) & 1);
    return (xds_bf16)(x >> 16);
}
