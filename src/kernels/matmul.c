/*
 * matmul.c — y = x W^T: the driver (work split over the pool, activation
 * quantization) and the portable C kernels.
 *
 * Driver invariants:
 *   - quantized weights (Q8_0/Q4_0/Q4_1): x is quantized once per call into
 *     the xq layout of kern_impl.h (pool scratch), then tasks of
 *     (row chunk) x (token chunk) call the level's qgemm;
 *   - float weights (F32/F16/BF16): tasks call the level's fgemm on f32 x;
 *   - Q8_0_R16 (16 rows interleaved, made at load): the AVX-512 or the
 *     portable row-group kernel (the AVX2 level uses the portable one); row
 *     chunks are whole groups of 16 rows;
 *   - W8A8 (per-row int8 weights, made at load by --quantize w8a8): x is
 *     quantized per token (one scale per token, xa layout of kern_impl.h)
 *     into a buffer of its own, then the level's W8A8 kernel (generic, AVX2,
 *     AVX-512 VNNI: the same bits) on whole groups of 16 rows;
 *   - Q4_K/Q6_K: every level uses the portable path (dequantize a row with
 *     the scalar reference, f32 dot products) — correct, not fast;
 *   - row chunks are contiguous (streaming reads) and multiples of 4 rows
 *     except the last; token chunks bound the activation working set (L2).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kern_impl.h"

/* ---- portable kernels --------------------------------------------------- */

void xds_act_quant_generic(const float *x, int64_t nb, uint8_t *dst) {
    int8_t *qs = (int8_t *)dst;
    float *ds = (float *)(dst + xq_qs_bytes(nb));
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * 32;
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(xb[j]));
        float db = amax / 127.0f, id = db != 0.0f ? 1.0f / db : 0.0f;
        int sum = 0;
        for (int j = 0; j < 32; j++) {
            int q = (int)nearbyintf(xb[j] * id);
            qs[xq_qs_index(b, j)] = (int8_t)q;
            sum += q;
        }
        ds[2 * b] = db;
        ds[2 * b + 1] = db * (float)sum;
    }
    if (nb & 1) /* the missing second block of the last pair */
        for (int j = 0; j < 32; j++) qs[xq_qs_index(nb, j)] = 0;
}

static float qdot_row_generic(xds_dtype type, const uint8_t *w, int64_t nb, const uint8_t *xr) {
    const int8_t *xq = xq_qs(xr);
    const float *ds = xq_ds(xr, nb);
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        int8_t q[32];
        for (int j = 0; j < 32; j++) q[j] = xq[xq_qs_index(b, j)];
        int isum = 0;
        switch (type) {
        case XDS_DTYPE_Q8_0: {
            const xds_block_q8_0 *blk = (const xds_block_q8_0 *)w + b;
            for (int j = 0; j < 32; j++) isum += blk->qs[j] * q[j];
            acc += xds_f16_to_f32(blk->d) * ds[2 * b] * (float)isum;
            break;
        }
        case XDS_DTYPE_Q4_0: {
            const xds_block_q4_0 *blk = (const xds_block_q4_0 *)w + b;
            for (int j = 0; j < 16; j++)
                isum += ((blk->qs[j] & 15) - 8) * q[j] + ((blk->qs[j] >> 4) - 8) * q[j + 16];
            acc += xds_f16_to_f32(blk->d) * ds[2 * b] * (float)isum;
            break;
        }
        case XDS_DTYPE_Q4_1: {
            const xds_block_q4_1 *blk = (const xds_block_q4_1 *)w + b;
            for (int j = 0; j < 16; j++) isum += (blk->qs[j] & 15) * q[j] + (blk->qs[j] >> 4) * q[j + 16];
            acc += xds_f16_to_f32(blk->d) * ds[2 * b] * (float)isum + xds_f16_to_f32(blk->m) * ds[2 * b + 1];
            break;
        }
        default: XDS_ASSERT(!"qgemm: not a q8/q4 type");
        }
    }
    return acc;
}

void xds_qgemm_generic(xds_dtype type, const uint8_t *w, size_t w_row_bytes, int64_t n_rows,
                       int64_t nb, const uint8_t *xq, size_t xq_stride, int n_tok, float *y,
                       int64_t ldy) {
    for (int64_t r = 0; r < n_rows; r++)
        for (int t = 0; t < n_tok; t++)
            y[t * ldy + r] = qdot_row_generic(type, w + r * w_row_bytes, nb, xq + t * xq_stride);
}

static float fdot_row_generic(xds_dtype type, const uint8_t *w, const float *x, int64_t n) {
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) {
            float wv = type == XDS_DTYPE_F32   ? ((const float *)w)[i + k]
                       : type == XDS_DTYPE_F16 ? xds_f16_to_f32(((const xds_f16 *)w)[i + k])
                                               : xds_bf16_to_f32(((const xds_bf16 *)w)[i + k]);
            acc[k] += wv * x[i + k];
        }
    for (; i < n; i++) {
        float wv = type == XDS_DTYPE_F32   ? ((const float *)w)[i]
                   : type == XDS_DTYPE_F16 ? xds_f16_to_f32(((const xds_f16 *)w)[i])
                                           : xds_bf16_to_f32(((const xds_bf16 *)w)[i]);
        acc[0] += wv * x[i];
    }
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

void xds_fgemm_generic(xds_dtype type, const uint8_t *w, size_t w_row_bytes, int64_t n_rows,
                       int64_t n_in, const float *x, int64_t ldx, int n_tok, float *y, int64_t ldy) {
    for (int64_t r = 0; r < n_rows; r++)
        for (int t = 0; t < n_tok; t++)
            y[t * ldy + r] = fdot_row_generic(type, w + r * w_row_bytes, x + t * ldx, n_in);
}

/* ---- Q8_0_R16 (layout: kern_impl.h) --------------------------------------- */

void xds_q8r_gemm_generic(const uint8_t *w, int64_t row0, int64_t n_rows, int64_t nb, const uint8_t *xq,
                          size_t xq_stride, int n_tok, float *y, int64_t ldy) {
    for (int64_t r = row0; r < row0 + n_rows; r++) {
        const uint8_t *g = w + (size_t)(r / 16) * (size_t)nb * XDS_Q8R_GB;
        int l = (int)(r % 16);
        for (int t = 0; t < n_tok; t++) {
            const uint8_t *xr = xq + t * xq_stride;
            const int8_t *qs = xq_qs(xr);
            const float *ds = xq_ds(xr, nb);
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *rec = g + b * XDS_Q8R_GB;
                int32_t isum = 0;
                for (int j = 0; j < 32; j++)
                    isum += ((int)rec[(j / 4) * 64 + l * 4 + (j % 4)] - 128) * qs[xq_qs_index(b, j)];
                xds_f16 d;
                memcpy(&d, rec + 512 + 2 * l, 2);
                acc = fmaf((float)isum, xds_f16_to_f32(d) * ds[2 * b], acc);
            }
            y[t * ldy + (r - row0)] = acc;
        }
    }
}

void xds_q8r_pack(const void *src, void *dst, int64_t n_rows, int64_t n_in) {
    XDS_ASSERT(n_rows % 16 == 0 && n_in % 32 == 0);
#if defined(__x86_64__)
    if (xds_cpu_level_get() == XDS_CPU_AVX512) {
        xds_q8r_pack_avx512(src, dst, n_rows, n_in);
        return;
    }
#endif
    xds_q8r_pack_generic(src, dst, n_rows, n_in);
}

void xds_q8r_pack_generic(const void *src, void *dst, int64_t n_rows, int64_t n_in) {
    const int64_t nb = n_in / 32;
    const size_t rb = (size_t)nb * sizeof(xds_block_q8_0);
    for (int64_t g = 0; g < n_rows / 16; g++)
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *rec = (uint8_t *)dst + ((size_t)g * nb + b) * XDS_Q8R_GB;
            for (int r = 0; r < 16; r++) {
                const uint8_t *blk = (const uint8_t *)src + (size_t)(16 * g + r) * rb + b * sizeof(xds_block_q8_0);
                memcpy(rec + 512 + 2 * r, blk, 2);
                for (int k = 0; k < 8; k++) {
                    uint32_t v;
                    memcpy(&v, blk + 2 + 4 * k, 4);
                    v ^= 0x80808080u;
                    memcpy(rec + 64 * k + 4 * r, &v, 4);
                }
            }
        }
}

static void q8r_get_row(const uint8_t *w, int64_t nb, int64_t i, float *dst) {
    const uint8_t *g = w + (size_t)(i / 16) * (size_t)nb * XDS_Q8R_GB;
    int l = (int)(i % 16);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *rec = g + b * XDS_Q8R_GB;
        xds_f16 d;
        memcpy(&d, rec + 512 + 2 * l, 2);
        float df = xds_f16_to_f32(d);
        for (int j = 0; j < 32; j++) dst[b * 32 + j] = df * (float)(int8_t)(rec[(j / 4) * 64 + l * 4 + (j % 4)] ^ 0x80);
    }
}

/* ---- W8A8 (layout: kern_impl.h) ------------------------------------------- */

void xds_act_quant8_generic(const float *x, int64_t n_in, uint8_t *dst) {
    int8_t *q = (int8_t *)dst;
    float amax = 0.0f;
    for (int64_t j = 0; j < n_in; j++) amax = fmaxf(amax, fabsf(x[j]));
    float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    int32_t sum = 0;
    for (int64_t j = 0; j < n_in; j++) {
        int v = (int)nearbyintf(x[j] * id);
        v = v > 127 ? 127 : v < -127 ? -127 : v;
        q[j] = (int8_t)v;
        sum += v;
    }
    memset(q + n_in, 0, xa_q_bytes(n_in) - (size_t)n_in);
    memcpy(dst + xa_q_bytes(n_in), &d, 4);
    memcpy(dst + xa_q_bytes(n_in) + 4, &sum, 4);
}

void xds_w8a8_gemm_generic(const uint8_t *w, int64_t row0, int64_t n_rows, int64_t n_in, const uint8_t *xa,
                           size_t xa_stride, int n_tok, float *y, int64_t ldy) {
    const size_t gb = XDS_W8A8_GB(n_in);
    for (int64_t r = row0; r < row0 + n_rows; r++) {
        const uint8_t *g = w + (size_t)(r / 16) * gb;
        int l = (int)(r % 16);
        float sw;
        memcpy(&sw, g + (size_t)16 * XDS_W8A8_K(n_in) + 4 * l, 4);
        for (int t = 0; t < n_tok; t++) {
            const uint8_t *xr = xa + t * xa_stride;
            const int8_t *q = (const int8_t *)xr;
            int32_t isum = 0;
            for (int64_t j = 0; j < n_in; j++) isum += ((int)g[(j / 4) * 64 + l * 4 + (j % 4)] - 128) * q[j];
            y[t * ldy + (r - row0)] = (float)isum * (sw * *xa_d(xr, n_in));
        }
    }
}

size_t xds_w8a8_bytes(int64_t n_rows, int64_t n_in) {
    if (n_rows < 0 || n_in <= 0 || n_in > XDS_W8A8_MAX_IN) return 0;
    return (size_t)((n_rows + 15) / 16) * XDS_W8A8_GB(n_in);
}

/* One group of 16 f32 rows (rows[r] NULL: a padding row) -> W8A8 group.
 * Portable C at every level (so the bytes never depend on it), written to
 * vectorize: the max as a compare (a NaN is skipped, like fmaxf), the
 * division exact, and round-to-nearest-even by the 1.5 * 2^23 trick (exact
 * for |q| <= 2^22; here |q| <= 127), as nearbyintf in the default mode
 * but without its libm call. */
static void w8a8_quant_group(const float *const rows[16], int64_t n_in, uint8_t *g) {
    const int64_t K = XDS_W8A8_K(n_in);
    float *sc = (float *)(g + (size_t)16 * K); /* 4-aligned when g is */
    XDS_ASSERT(K > 0 && K <= XDS_W8A8_MAX_IN);
    if (K <= 0 || K > XDS_W8A8_MAX_IN) return; /* (for the compiler's size analysis) */
    int8_t *q = malloc((size_t)K);
    XDS_ASSERT(q);
    for (int r = 0; r < 16; r++) {
        float amax = 0.0f;
        const float *x = rows[r];
        if (x)
            for (int64_t j = 0; j < n_in; j++) {
                float a = fabsf(x[j]);
                amax = a > amax ? a : amax;
            }
        float s = amax / 127.0f;
        memcpy(&sc[r], &s, 4);
        memset(q, 0, (size_t)K);
        if (x && s != 0.0f)
            for (int64_t j = 0; j < n_in; j++) {
                const float m = 12582912.0f; /* 1.5 * 2^23 (no -ffast-math: (a + m) - m is not folded) */
                float v = (x[j] / s + m) - m;
                v = v >= -127.0f ? (v <= 127.0f ? v : 127.0f) : -127.0f; /* a NaN weight gives -127 */
                q[j] = (int8_t)(int)v;
            }
        for (int64_t j = 0; j < K; j++) g[(j / 4) * 64 + r * 4 + (j % 4)] = (uint8_t)(q[j] ^ 0x80);
    }
    free(q);
}

void xds_w8a8_quant(const float *src, int64_t n_rows, int64_t n_in, int64_t g0, int64_t g1, void *dst) {
    XDS_ASSERT(xds_w8a8_bytes(n_rows, n_in) > 0 && 0 <= g0 && g0 <= g1 && g1 * 16 < n_rows + 16);
    for (int64_t g = g0; g < g1; g++) {
        const float *rows[16];
        for (int r = 0; r < 16; r++) rows[r] = 16 * g + r < n_rows ? src + (16 * g + r) * n_in : NULL;
        w8a8_quant_group(rows, n_in, (uint8_t *)dst + (size_t)(g - g0) * XDS_W8A8_GB(n_in));
    }
}

static void w8a8_get_row(const uint8_t *w, int64_t n_in, int64_t i, float *dst) {
    const uint8_t *g = w + (size_t)(i / 16) * XDS_W8A8_GB(n_in);
    int l = (int)(i % 16);
    float s;
    memcpy(&s, g + (size_t)16 * XDS_W8A8_K(n_in) + 4 * l, 4);
    for (int64_t j = 0; j < n_in; j++) dst[j] = s * (float)((int)g[(j / 4) * 64 + l * 4 + (j % 4)] - 128);
}

int64_t xds_w8a8_from_tensor(const xds_tensor *w, int64_t g0, int64_t g1, void *dst) {
    int64_t n_in = w->ne[0], n_rows = xds_tensor_nelem(w) / n_in, bad = -1;
    XDS_ASSERT(xds_w8a8_bytes(n_rows, n_in) > 0 && 0 <= g0 && g0 <= g1 && g1 * 16 < n_rows + 16);
    if (w->type == XDS_DTYPE_W8A8) {
        memcpy(dst, (const uint8_t *)w->data + (size_t)g0 * XDS_W8A8_GB(n_in), (size_t)(g1 - g0) * XDS_W8A8_GB(n_in));
        return -1;
    }
    float *buf = malloc(sizeof(float) * 16 * (size_t)n_in);
    XDS_ASSERT(buf);
    for (int64_t g = g0; g < g1; g++) {
        const float *rows[16];
        for (int r = 0; r < 16; r++) {
            int64_t i = 16 * g + r;
            rows[r] = NULL;
            if (i < n_rows) {
                xds_get_row(w, i, buf + r * n_in);
                rows[r] = buf + r * n_in;
                /* x - x is 0 for a finite x, NaN for NaN and +-Inf */
                float acc = 0.0f;
                for (int64_t k = 0; k < n_in; k++) acc += rows[r][k] - rows[r][k];
                if (acc != 0.0f && bad < 0) bad = i;
            }
        }
        w8a8_quant_group(rows, n_in, (uint8_t *)dst + (size_t)(g - g0) * XDS_W8A8_GB(n_in));
    }
    free(buf);
    return bad;
}

/* ---- driver -------------------------------------------------------------- */

typedef struct {
    const xds_kern_table *kt;
    xds_dtype type;
    const uint8_t *w; /* row row0 of W */
    size_t w_row_bytes;
    int64_t n_rows, n_in, nb;
    const float *x;    /* (n_tok, n_in) */
    const uint8_t *xq; /* (n_tok, xq_row_bytes(nb)) */
    size_t xq_stride;
    float *y;
    int64_t ldy;
    int n_tok;
    int64_t row_chunk; /* rows per task */
    int tok_chunk;     /* tokens per task */
    int n_row_chunks;
    int64_t row0;      /* Q8_0_R16: first row (w is then the matrix's group 0) */
    void (*q8r)(const uint8_t *, int64_t, int64_t, int64_t, const uint8_t *, size_t, int, float *, int64_t);
    const uint8_t *xa; /* W8A8: (n_tok, xa_row_bytes(n_in)) per-token int8 x */
    size_t xa_stride;
    xds_w8a8_gemm_fn w8;
} mm_ctx;

static void mm_task(void *vctx, int task, int thread) {
    const mm_ctx *c = vctx;
    int rc = task % c->n_row_chunks, tc = task / c->n_row_chunks;
    int64_t r0 = rc * c->row_chunk, r1 = r0 + c->row_chunk;
    if (r1 > c->n_rows) r1 = c->n_rows;
    int t0 = tc * c->tok_chunk, t1 = t0 + c->tok_chunk;
    if (t1 > c->n_tok) t1 = c->n_tok;
    if (r0 >= r1 || t0 >= t1) return;
    const uint8_t *w = c->w + r0 * c->w_row_bytes;
    float *y = c->y + t0 * c->ldy + r0;
    switch (c->type) {
    case XDS_DTYPE_Q8_0:
    case XDS_DTYPE_Q4_0:
    case XDS_DTYPE_Q4_1:
        c->kt->qgemm(c->type, w, c->w_row_bytes, r1 - r0, c->nb, c->xq + t0 * c->xq_stride,
                     c->xq_stride, t1 - t0, y, c->ldy);
        break;
    case XDS_DTYPE_W8A8:
        c->w8(c->w, c->row0 + r0, r1 - r0, c->n_in, c->xa + t0 * c->xa_stride, c->xa_stride, t1 - t0, y, c->ldy);
        break;
    case XDS_DTYPE_Q8_0_R16:
        c->q8r(c->w, c->row0 + r0, r1 - r0, c->nb, c->xq + t0 * c->xq_stride, c->xq_stride, t1 - t0, y, c->ldy);
        break;
    case XDS_DTYPE_F32:
    case XDS_DTYPE_F16:
    case XDS_DTYPE_BF16:
        c->kt->fgemm(c->type, w, c->w_row_bytes, r1 - r0, c->n_in, c->x + t0 * c->n_in, c->n_in,
                     t1 - t0, y, c->ldy);
        break;
    default: { /* Q4_K, Q6_K: dequantize a row, then f32 dots */
        float *buf = malloc((size_t)c->n_in * sizeof(float));
        XDS_ASSERT(buf);
        for (int64_t r = r0; r < r1; r++) {
            xds_dequant_row(c->type, c->w + r * c->w_row_bytes, buf, c->n_in);
            for (int t = t0; t < t1; t++)
                c->y[t * c->ldy + r] = xds_dot_f32(buf, c->x + (int64_t)t * c->n_in, (int)c->n_in);
        }
        free(buf);
    }
    }
}

typedef struct {
    xds_act_quant_fn quant;
    const float *x;
    int64_t n_in, nb;
    uint8_t *xq;
    size_t stride;
    int n_tok, per_task;
} aq_ctx;

static void aq_task(void *vctx, int task, int thread) {
    const aq_ctx *c = vctx;
    int t0 = task * c->per_task, t1 = t0 + c->per_task;
    if (t1 > c->n_tok) t1 = c->n_tok;
    for (int t = t0; t < t1; t++) c->quant(c->x + (int64_t)t * c->n_in, c->nb, c->xq + t * c->stride);
}

static int is_q8x(xds_dtype t) {
    return t == XDS_DTYPE_Q8_0 || t == XDS_DTYPE_Q4_0 || t == XDS_DTYPE_Q4_1 || t == XDS_DTYPE_Q8_0_R16;
}

static xds_w8a8_gemm_fn w8a8_kernel(const xds_kern_table *kt) {
#if defined(__x86_64__)
    if (kt == xds_kern_table_get(XDS_CPU_AVX512)) return xds_w8a8_gemm_avx512;
    if (kt == xds_kern_table_get(XDS_CPU_AVX2)) return xds_w8a8_gemm_avx2;
#endif
    return xds_w8a8_gemm_generic;
}

static xds_act_quant8_fn act_quant8(const xds_kern_table *kt) {
#if defined(__x86_64__)
    if (kt == xds_kern_table_get(XDS_CPU_AVX512)) return xds_act_quant8_avx512;
#endif
    return xds_act_quant8_generic;
}

/* Fill c for rows [row0, row1) of w and choose its work split; returns the
 * number of tasks. xq: the quantized x (NULL unless w is Q8_0/Q4_0/Q4_1);
 * xa: the per-token quantized x (NULL unless w is W8A8). */
static int mm_plan(mm_ctx *c, const xds_kern_table *kt, int nth, const xds_tensor *w, int64_t row0,
                   int64_t row1, const float *x, const uint8_t *xq, const uint8_t *xa, float *y, int64_t ldy,
                   int n_tok) {
    const xds_dtype_traits *tr = xds_dtype_info(w->type);
    XDS_ASSERT(tr && w->data);
    int64_t n_in = w->ne[0], total_rows = xds_tensor_nelem(w) / (n_in ? n_in : 1);
    XDS_ASSERT(n_in > 0 && n_in % tr->block_size == 0);
    XDS_ASSERT(0 <= row0 && row0 <= row1 && row1 <= total_rows && n_tok >= 0);
    XDS_ASSERT(ldy >= row1 - row0);
    memset(c, 0, sizeof *c);
    c->kt = kt;
    c->type = w->type;
    c->w_row_bytes = xds_dtype_row_bytes(w->type, n_in);
    c->w = (const uint8_t *)w->data + row0 * c->w_row_bytes;
    if (w->type == XDS_DTYPE_Q8_0_R16) { /* the kernel addresses groups from the matrix start */
        XDS_ASSERT(total_rows % 16 == 0);
        c->w = w->data;
        c->row0 = row0;
        c->q8r = xds_q8r_gemm_generic;
#if defined(__x86_64__)
        if (kt == xds_kern_table_get(XDS_CPU_AVX512)) c->q8r = xds_q8r_gemm_avx512;
#endif
    }
    if (w->type == XDS_DTYPE_W8A8) {
        XDS_ASSERT(w->nbytes >= xds_w8a8_bytes(total_rows, n_in) && xds_w8a8_bytes(total_rows, n_in) > 0);
        c->w = w->data;
        c->row0 = row0;
        c->w8 = w8a8_kernel(kt);
        c->xa = xa;
        c->xa_stride = xa_row_bytes(n_in);
    }
    c->n_rows = row1 - row0;
    c->n_in = n_in;
    c->nb = n_in / 32;
    c->x = x;
    c->xq = xq;
    c->xq_stride = xq_row_bytes(c->nb);
    c->y = y;
    c->ldy = ldy;
    c->n_tok = n_tok;
    if (c->n_rows == 0 || n_tok == 0) return 0;
    /* Token chunks of <= 128 tokens (activations stay in L2). Row chunks are
     * multiples of 4 rows. One token (decode): each task should stream
     * >= ~128 KiB so a task's claim and wake-up stay small next to its reads,
     * and there are k * nth chunks (k <= 4) for balance. Several tokens: 4 * nth
     * chunks of >= 16 rows. */
    c->tok_chunk = n_tok <= 128 ? n_tok : 128;
    int n_tok_chunks = (n_tok + c->tok_chunk - 1) / c->tok_chunk;
    int want = nth * 4;
    if (nth == 1) want = 1;
    else if (n_tok == 1) {
        size_t bytes = c->w_row_bytes * (size_t)c->n_rows;
        size_t k = bytes / ((size_t)nth << 17);
        want = nth * (int)(k < 1 ? 1 : k > 4 ? 4 : k);
    }
    int64_t per = (c->n_rows + want - 1) / want;
    if (n_tok > 1 && per < 16) per = 16;
    per = (per + 3) & ~(int64_t)3;
    if (w->type == XDS_DTYPE_Q8_0_R16 || w->type == XDS_DTYPE_W8A8) per = (per + 15) & ~(int64_t)15; /* whole groups */
    c->row_chunk = per;
    c->n_row_chunks = (int)((c->n_rows + per - 1) / per);
    return c->n_row_chunks * n_tok_chunks;
}

/* Quantize x (n_tok, n_in) for the quantized kernels, in parallel when large. */
static uint8_t *mm_quant_x(xds_pool *pool, const xds_kern_table *kt, const float *x, int64_t n_in,
                           int n_tok, void **owned) {
    int64_t nb = n_in / 32;
    size_t stride = xq_row_bytes(nb), need = stride * (size_t)n_tok;
    uint8_t *xq = xds_pool_scratch(pool, need);
    *owned = NULL;
    if (!xq) {
        xq = *owned = aligned_alloc(64, (need + 63) & ~(size_t)63);
        XDS_ASSERT(xq);
    }
    int nth = xds_pool_size(pool);
    aq_ctx a = {kt->act_quant, x, n_in, nb, xq, stride, n_tok, n_tok};
    if (nth > 1 && (int64_t)n_tok * n_in >= 32768) {
        a.per_task = (n_tok + nth * 2 - 1) / (nth * 2);
        xds_pool_run(pool, aq_task, &a, (n_tok + a.per_task - 1) / a.per_task);
    } else {
        aq_task(&a, 0, 0);
    }
    return xq;
}

typedef struct {
    xds_act_quant8_fn quant;
    const float *x;
    int64_t n_in;
    uint8_t *xa;
    size_t stride;
    int n_tok, per_task;
} aq8_ctx;

static void aq8_task(void *vctx, int task, int thread) {
    const aq8_ctx *c = vctx;
    int t0 = task * c->per_task, t1 = t0 + c->per_task;
    if (t1 > c->n_tok) t1 = c->n_tok;
    for (int t = t0; t < t1; t++) c->quant(c->x + (int64_t)t * c->n_in, c->n_in, c->xa + t * c->stride);
}

/* Quantize x per token (W8A8 activations) into a buffer of its own (the
 * pool scratch may hold the block-quantized x of the same call). */
static uint8_t *mm_quant_x8(xds_pool *pool, const xds_kern_table *kt, const float *x, int64_t n_in, int n_tok) {
    size_t stride = xa_row_bytes(n_in), need = stride * (size_t)n_tok;
    uint8_t *xa = aligned_alloc(64, need);
    XDS_ASSERT(xa);
    int nth = xds_pool_size(pool);
    aq8_ctx a = {act_quant8(kt), x, n_in, xa, stride, n_tok, n_tok};
    if (nth > 1 && (int64_t)n_tok * n_in >= 32768) {
        a.per_task = (n_tok + nth * 2 - 1) / (nth * 2);
        xds_pool_run(pool, aq8_task, &a, (n_tok + a.per_task - 1) / a.per_task);
    } else {
        aq8_task(&a, 0, 0);
    }
    return xa;
}

void xds_matmul_rows(xds_pool *pool, const xds_tensor *w, int64_t row0, int64_t row1,
                     const float *x, float *y, int64_t ldy, int n_tok) {
    if (row0 == row1 || n_tok == 0) return;
    const xds_kern_table *kt = xds_kern_table_get(xds_cpu_level_get());
    void *owned = NULL;
    const uint8_t *xq = is_q8x(w->type) ? mm_quant_x(pool, kt, x, w->ne[0], n_tok, &owned) : NULL;
    uint8_t *xa = w->type == XDS_DTYPE_W8A8 ? mm_quant_x8(pool, kt, x, w->ne[0], n_tok) : NULL;
    mm_ctx c;
    int n_tasks = mm_plan(&c, kt, xds_pool_size(pool), w, row0, row1, x, xq, xa, y, ldy, n_tok);
    xds_pool_run(pool, mm_task, &c, n_tasks);
    free(owned);
    free(xa);
}

#define MM_MULTI_MAX 8

typedef struct {
    int n;
    mm_ctx c[MM_MULTI_MAX];
    int first[MM_MULTI_MAX + 1]; /* task index ranges per product */
} mm_multi_ctx;

static void mm_multi_task(void *vctx, int task, int thread) {
    const mm_multi_ctx *m = vctx;
    int i = 0;
    while (task >= m->first[i + 1]) i++;
    mm_task((void *)&m->c[i], task - m->first[i], thread);
}

void xds_matmul_multi(xds_pool *pool, int n, const xds_tensor *const *w, const float *x,
                      float *const *y, int n_tok) {
    XDS_ASSERT(n >= 0 && n <= MM_MULTI_MAX);
    if (n == 0 || n_tok == 0) return;
    const xds_kern_table *kt = xds_kern_table_get(xds_cpu_level_get());
    int64_t n_in = w[0]->ne[0];
    int any_q = 0, any_w8 = 0;
    for (int i = 0; i < n; i++) {
        XDS_ASSERT(w[i]->ne[0] == n_in);
        any_q |= is_q8x(w[i]->type);
        any_w8 |= w[i]->type == XDS_DTYPE_W8A8;
    }
    void *owned = NULL;
    const uint8_t *xq = any_q ? mm_quant_x(pool, kt, x, n_in, n_tok, &owned) : NULL;
    uint8_t *xa = any_w8 ? mm_quant_x8(pool, kt, x, n_in, n_tok) : NULL;
    mm_multi_ctx m;
    m.n = n;
    m.first[0] = 0;
    for (int i = 0; i < n; i++) {
        int64_t rows = xds_tensor_nelem(w[i]) / n_in;
        m.first[i + 1] = m.first[i] + mm_plan(&m.c[i], kt, xds_pool_size(pool), w[i], 0, rows, x,
                                              is_q8x(w[i]->type) ? xq : NULL,
                                              w[i]->type == XDS_DTYPE_W8A8 ? xa : NULL, y[i], rows, n_tok);
    }
    xds_pool_run(pool, mm_multi_task, &m, m.first[n]);
    free(owned);
    free(xa);
}

void xds_matmul(xds_pool *pool, const xds_tensor *w, const float *x, float *y, int n_tok) {
    int64_t n_out = xds_tensor_nelem(w) / w->ne[0];
    xds_matmul_rows(pool, w, 0, n_out, x, y, n_out, n_tok);
}

void xds_get_row(const xds_tensor *w, int64_t i, float *dst) {
    size_t rb = xds_dtype_row_bytes(w->type, w->ne[0]);
    XDS_ASSERT(rb > 0 && i >= 0 && i < xds_tensor_nelem(w) / w->ne[0]);
    if (w->type == XDS_DTYPE_Q8_0_R16) {
        q8r_get_row(w->data, w->ne[0] / 32, i, dst);
        return;
    }
    if (w->type == XDS_DTYPE_W8A8) {
        w8a8_get_row(w->data, w->ne[0], i, dst);
        return;
    }
    xds_dequant_row(w->type, (const uint8_t *)w->data + i * rb, dst, w->ne[0]);
}
