/*
 * quant_ref.c — scalar reference (de)quantization of one row, bit-compatible
 * with ggml's reference code (dequantize_row_* / quantize_row_*_ref).
 *
 * These are the oracle for every SIMD kernel and are used where speed does
 * not matter (tests, get_row of odd types, converting weights). n must be a
 * multiple of the type's block size (asserted: a caller bug otherwise).
 */
#include <math.h>
#include <string.h>

#include "base/status.h"
#include "tensor/dtype.h"

/* ---- dequantization ---------------------------------------------------- */

static void dequant_q8_0(const xds_block_q8_0 *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        float d = xds_f16_to_f32(b[i].d);
        for (int j = 0; j < XDS_QK8_0; j++) y[i * XDS_QK8_0 + j] = d * (float)b[i].qs[j];
    }
}

static void dequant_q4_0(const xds_block_q4_0 *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        float d = xds_f16_to_f32(b[i].d);
        for (int j = 0; j < XDS_QK4_0 / 2; j++) {
            y[i * XDS_QK4_0 + j] = d * (float)((b[i].qs[j] & 0x0f) - 8);
            y[i * XDS_QK4_0 + j + 16] = d * (float)((b[i].qs[j] >> 4) - 8);
        }
    }
}

static void dequant_q4_1(const xds_block_q4_1 *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        float d = xds_f16_to_f32(b[i].d), m = xds_f16_to_f32(b[i].m);
        for (int j = 0; j < XDS_QK4_1 / 2; j++) {
            y[i * XDS_QK4_1 + j] = d * (float)(b[i].qs[j] & 0x0f) + m;
            y[i * XDS_QK4_1 + j + 16] = d * (float)(b[i].qs[j] >> 4) + m;
        }
    }
}

static void q4k_scale_min(int j, const uint8_t *q, uint8_t *d, uint8_t *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

static void dequant_q4_k(const xds_block_q4_k *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *q = b[i].qs;
        float d = xds_f16_to_f32(b[i].d), dmin = xds_f16_to_f32(b[i].dmin);
        int is = 0;
        for (int j = 0; j < XDS_QK_K; j += 64) {
            uint8_t sc, m;
            q4k_scale_min(is, b[i].scales, &sc, &m);
            float d1 = d * sc, m1 = dmin * m;
            q4k_scale_min(is + 1, b[i].scales, &sc, &m);
            float d2 = d * sc, m2 = dmin * m;
            for (int l = 0; l < 32; l++) *y++ = d1 * (float)(q[l] & 0xF) - m1;
            for (int l = 0; l < 32; l++) *y++ = d2 * (float)(q[l] >> 4) - m2;
            q += 32;
            is += 2;
        }
    }
}

static void dequant_q6_k(const xds_block_q6_k *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        float d = xds_f16_to_f32(b[i].d);
        const uint8_t *ql = b[i].ql, *qh = b[i].qh;
        const int8_t *sc = b[i].scales;
        for (int n = 0; n < XDS_QK_K; n += 128) {
            for (int l = 0; l < 32; l++) {
                int is = l / 16;
                int q1 = (int8_t)((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                int q2 = (int8_t)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                int q3 = (int8_t)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                int q4 = (int8_t)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l + 0] = d * sc[is + 0] * q1;
                y[l + 32] = d * sc[is + 2] * q2;
                y[l + 64] = d * sc[is + 4] * q3;
                y[l + 96] = d * sc[is + 6] * q4;
            }
            y += 128;
            ql += 64;
            qh += 32;
            sc += 8;
        }
    }
}

void xds_dequant_row(xds_dtype t, const void *src, float *dst, int64_t n) {
    const xds_dtype_traits *tr = xds_dtype_info(t);
    XDS_ASSERT(tr && n % tr->block_size == 0);
    int64_t nb = n / tr->block_size;
    switch (t) {
    case XDS_DTYPE_F32: memcpy(dst, src, (size_t)n * 4); break;
    case XDS_DTYPE_F16:
        for (int64_t i = 0; i < n; i++) dst[i] = xds_f16_to_f32(((const xds_f16 *)src)[i]);
        break;
    case XDS_DTYPE_BF16:
        for (int64_t i = 0; i < n; i++) dst[i] = xds_bf16_to_f32(((const xds_bf16 *)src)[i]);
        break;
    case XDS_DTYPE_Q8_0: dequant_q8_0(src, dst, nb); break;
    case XDS_DTYPE_Q4_0: dequant_q4_0(src, dst, nb); break;
    case XDS_DTYPE_Q4_1: dequant_q4_1(src, dst, nb); break;
    case XDS_DTYPE_Q4_K: dequant_q4_k(src, dst, nb); break;
    case XDS_DTYPE_Q6_K: dequant_q6_k(src, dst, nb); break;
    default: XDS_ASSERT(!"unknown dtype");
    }
}

/* ---- quantization (ggml quantize_row_*_ref) ----------------------------- */

static void quant_q8_0(const float *x, xds_block_q8_0 *b, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += XDS_QK8_0) {
        float amax = 0.0f;
        for (int j = 0; j < XDS_QK8_0; j++) amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = xds_f32_to_f16(d);
        for (int j = 0; j < XDS_QK8_0; j++) b[i].qs[j] = (int8_t)roundf(x[j] * id);
    }
}

static void quant_q4_0(const float *x, xds_block_q4_0 *b, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += XDS_QK4_0) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < XDS_QK4_0; j++)
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        float d = max / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = xds_f32_to_f16(d);
        for (int j = 0; j < XDS_QK4_0 / 2; j++) {
            int q0 = (int)(x[j] * id + 8.5f), q1 = (int)(x[j + 16] * id + 8.5f);
            q0 = q0 > 15 ? 15 : q0;
            q1 = q1 > 15 ? 15 : q1;
            b[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

static void quant_q4_1(const float *x, xds_block_q4_1 *b, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += XDS_QK4_1) {
        float min = INFINITY, max = -INFINITY;
        for (int j = 0; j < XDS_QK4_1; j++) {
            min = fminf(min, x[j]);
            max = fmaxf(max, x[j]);
        }
        float d = (max - min) / 15.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = xds_f32_to_f16(d);
        b[i].m = xds_f32_to_f16(min);
        for (int j = 0; j < XDS_QK4_1 / 2; j++) {
            int q0 = (int)((x[j] - min) * id + 0.5f), q1 = (int)((x[j + 16] - min) * id + 0.5f);
            q0 = q0 > 15 ? 15 : q0;
            q1 = q1 > 15 ? 15 : q1;
            b[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

void xds_quant_row(xds_dtype t, const float *src, void *dst, int64_t n) {
    const xds_dtype_traits *tr = xds_dtype_info(t);
    XDS_ASSERT(tr && n % tr->block_size == 0);
    int64_t nb = n / tr->block_size;
    switch (t) {
    case XDS_DTYPE_F32: memcpy(dst, src, (size_t)n * 4); break;
    case XDS_DTYPE_F16:
        for (int64_t i = 0; i < n; i++) ((xds_f16 *)dst)[i] = xds_f32_to_f16(src[i]);
        break;
    case XDS_DTYPE_BF16:
        for (int64_t i = 0; i < n; i++) ((xds_bf16 *)dst)[i] = xds_f32_to_bf16(src[i]);
        break;
    case XDS_DTYPE_Q8_0: quant_q8_0(src, dst, nb); break;
    case XDS_DTYPE_Q4_0: quant_q4_0(src, dst, nb); break;
    case XDS_DTYPE_Q4_1: quant_q4_1(src, dst, nb); break;
    default: XDS_ASSERT(!"xds_quant_row: unsupported dtype");
    }
}
