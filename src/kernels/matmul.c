/*
 * matmul.c — y = x W^T: the driver (work split over the pool, activation
 * quantization) and the portable C kernels.
 *
 * Driver invariants:
 *   - quantized weights (Q8_0/Q4_0/Q4_1): x is quantized once per call into
 *     the xq layout of kern_impl.h (pool scratch), then tasks of
 *     (row chunk) x (token chunk) call the level's qgemm;
 *   - float weights (F32/F16/BF16): tasks call the level's fgemm on f32 x;
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
    float *ds = (float *)(dst + nb * 32);
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * 32;
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(xb[j]));
        float db = amax / 127.0f, id = db != 0.0f ? 1.0f / db : 0.0f;
        int sum = 0;
        for (int j = 0; j < 32; j++) {
            int q = (int)nearbyintf(xb[j] * id);
            qs[b * 32 + j] = (int8_t)q;
            sum += q;
        }
        ds[2 * b] = db;
        ds[2 * b + 1] = db * (float)sum;
    }
}

static float qdot_row_generic(xds_dtype type, const uint8_t *w, int64_t nb, const uint8_t *xr) {
    const int8_t *xq = xq_qs(xr);
    const float *ds = xq_ds(xr, nb);
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const int8_t *q = xq + b * 32;
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

void xds_matmul_rows(xds_pool *pool, const xds_tensor *w, int64_t row0, int64_t row1,
                     const float *x, float *y, int64_t ldy, int n_tok) {
    const xds_dtype_traits *tr = xds_dtype_info(w->type);
    XDS_ASSERT(tr && w->data);
    int64_t n_in = w->ne[0], total_rows = xds_tensor_nelem(w) / (n_in ? n_in : 1);
    XDS_ASSERT(n_in > 0 && n_in % tr->block_size == 0);
    XDS_ASSERT(0 <= row0 && row0 <= row1 && row1 <= total_rows && n_tok >= 0);
    XDS_ASSERT(ldy >= row1 - row0);
    if (row0 == row1 || n_tok == 0) return;

    mm_ctx c = {0};
    c.kt = xds_kern_table_get(xds_cpu_level_get());
    c.type = w->type;
    c.w_row_bytes = xds_dtype_row_bytes(w->type, n_in);
    c.w = (const uint8_t *)w->data + row0 * c.w_row_bytes;
    c.n_rows = row1 - row0;
    c.n_in = n_in;
    c.nb = n_in / 32;
    c.x = x;
    c.y = y;
    c.ldy = ldy;
    c.n_tok = n_tok;
    int nth = xds_pool_size(pool);

    void *owned = NULL;
    if (w->type == XDS_DTYPE_Q8_0 || w->type == XDS_DTYPE_Q4_0 || w->type == XDS_DTYPE_Q4_1) {
        c.xq_stride = xq_row_bytes(c.nb);
        size_t need = c.xq_stride * (size_t)n_tok;
        uint8_t *xq = xds_pool_scratch(pool, need);
        if (!xq) {
            xq = owned = aligned_alloc(64, need);
            XDS_ASSERT(xq);
        }
        aq_ctx a = {c.kt->act_quant, x, n_in, c.nb, xq, c.xq_stride, n_tok, n_tok};
        if (nth > 1 && (int64_t)n_tok * n_in >= 32768) {
            a.per_task = (n_tok + nth * 2 - 1) / (nth * 2);
            xds_pool_run(pool, aq_task, &a, (n_tok + a.per_task - 1) / a.per_task);
        } else {
            aq_task(&a, 0, 0);
        }
        c.xq = xq;
    }

    /* Work split: token chunks of <= 128 tokens (activations stay in L2), row
     * chunks (multiples of 4 rows) so that every thread gets several tasks. */
    c.tok_chunk = n_tok <= 128 ? n_tok : 128;
    int n_tok_chunks = (n_tok + c.tok_chunk - 1) / c.tok_chunk;
    int want = nth == 1 ? 1 : nth * 4;
    int64_t per = (c.n_rows + want - 1) / want;
    int64_t min_rows = n_tok == 1 ? 32 : 16;
    if (per < min_rows) per = min_rows;
    per = (per + 3) & ~(int64_t)3;
    c.row_chunk = per;
    c.n_row_chunks = (int)((c.n_rows + per - 1) / per);
    xds_pool_run(pool, mm_task, &c, c.n_row_chunks * n_tok_chunks);
    free(owned);
}

void xds_matmul(xds_pool *pool, const xds_tensor *w, const float *x, float *y, int n_tok) {
    int64_t n_out = xds_tensor_nelem(w) / w->ne[0];
    xds_matmul_rows(pool, w, 0, n_out, x, y, n_out, n_tok);
}

void xds_get_row(const xds_tensor *w, int64_t i, float *dst) {
    size_t rb = xds_dtype_row_bytes(w->type, w->ne[0]);
    XDS_ASSERT(rb > 0 && i >= 0 && i < xds_tensor_nelem(w) / w->ne[0]);
    xds_dequant_row(w->type, (const uint8_t *)w->data + i * rb, dst, w->ne[0]);
}
