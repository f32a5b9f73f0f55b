/*
 * test_kernels.c — every kernel level the CPU supports (generic, AVX2,
 * AVX-512) against scalar references:
 *   - reference (de)quantization: hand-computed blocks, round trips;
 *   - activation quantization: each level bit-identical to a scalar model;
 *   - xds_matmul / xds_matmul_rows for F32, F16, BF16, Q8_0, Q4_0, Q4_1,
 *     Q4_K, Q6_K, odd shapes (n_out not a multiple of 4, odd block counts),
 *     n_tok = 1, 2, 3, 7, 64, 65, pools of 1..3 threads. Quantized types are
 *     compared (tight) with double sums over the dequantized weights and the
 *     dequantized Q8 activations, and (loosely, by the rounding bound) with the
 *     unquantized activations; float types with double sums, ~1e-5 relative;
 *   - xds_get_row and the elementwise ops against double references;
 *   - batch invariance: each token's output row bit-identical whatever
 *     n_tok, tile position, pool size or row range (memcmp);
 *   - Q8_0_R16 (row-interleaved Q8_0): get_row, accuracy, batch invariance
 *     for 1..70 tokens and group-cutting row ranges, same bits at every level;
 *   - W8A8 (per-channel int8 weights x per-token int8 activations): the
 *     quantizers, get_row, the product against a double reference, batch
 *     invariance and the same bits at every level, as for Q8_0_R16.
 */
#include <math.h>
#include <stdint.h>

#include "kernels/kern_impl.h"
#include "kernels/kernels.h"
#include "kernels/roofline.h"
#include "test.h"

/* Scalar model of the activation quantizer (kern_impl.h). */
static void act_quant_model(const float *x, int64_t n, float *xdq, float *dblk) {
    for (int64_t b = 0; b < n / 32; b++) {
        float amax = 0;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[b * 32 + j]));
        float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        for (int j = 0; j < 32; j++) xdq[b * 32 + j] = d * nearbyintf(x[b * 32 + j] * id);
        dblk[b] = d;
    }
}

static int is_q8x(xds_dtype t) {
    return t == XDS_DTYPE_Q8_0 || t == XDS_DTYPE_Q4_0 || t == XDS_DTYPE_Q4_1;
}

/* Random weights of type t, n_out rows of n_in values (+ dequantized copy). */
static void *make_weights(xds_dtype t, int64_t n_in, int64_t n_out, float *wdq) {
    size_t rb = xds_dtype_row_bytes(t, n_in);
    uint8_t *w = malloc(rb * n_out);
    float *row = malloc(n_in * sizeof(float));
    for (int64_t o = 0; o < n_out; o++) {
        if (t == XDS_DTYPE_Q4_K || t == XDS_DTYPE_Q6_K) {
            uint8_t *r = w + o * rb;
            for (size_t i = 0; i < rb; i++) r[i] = (uint8_t)rnd_u32();
            for (int64_t b = 0; b < n_in / 256; b++) {
                if (t == XDS_DTYPE_Q4_K) {
                    xds_block_q4_k *blk = (xds_block_q4_k *)r + b;
                    blk->d = xds_f32_to_f16(0.01f + 0.01f * fabsf(rnd_f()));
                    blk->dmin = xds_f32_to_f16(0.01f * fabsf(rnd_f()));
                } else {
                    ((xds_block_q6_k *)r + b)->d = xds_f32_to_f16(0.001f + 0.001f * fabsf(rnd_f()));
                }
            }
        } else {
            float scale = 0.5f + (o % 5) * 0.3f, off = (o % 3) * 0.1f;
            for (int64_t i = 0; i < n_in; i++) row[i] = rnd_f() * scale + off;
            xds_quant_row(t, row, w + o * rb, n_in);
        }
        xds_dequant_row(t, w + o * rb, wdq + o * n_in, n_in);
    }
    free(row);
    return w;
}

static int levels_n(void) {
    xds_cpu_level_set(XDS_CPU_AVX512);
    return (int)xds_cpu_level_get() + 1;
}

/* One matmul case at the current level: returns the number of failures. */
static int check_matmul(xds_pool *pool, xds_dtype t, int64_t n_in, int64_t n_out, int n_tok,
                        int64_t row0, int64_t row1) {
    float *wdq = malloc(n_in * n_out * sizeof(float));
    void *w = make_weights(t, n_in, n_out, wdq);
    xds_tensor wt = {.name = "w", .type = t, .n_dims = 2, .ne = {n_in, n_out, 1, 1}, .data = w,
                     .nbytes = xds_dtype_row_bytes(t, n_in) * n_out};
    float *x = malloc(n_tok * n_in * sizeof(float)), *xdq = malloc(n_tok * n_in * sizeof(float));
    float *dblk = malloc(n_tok * (n_in / 32 + 1) * sizeof(float));
    for (int64_t i = 0; i < n_tok * n_in; i++) x[i] = rnd_f() * (1.0f + (i % 7));
    for (int tk = 0; tk < n_tok; tk++) {
        if (tk == 1 && n_in >= 32)
            for (int j = 0; j < 32; j++) x[tk * n_in + j] = 0.0f; /* an all-zero block */
        act_quant_model(x + tk * n_in, n_in, xdq + tk * n_in, dblk + tk * (n_in / 32 + 1));
    }
    int64_t nr = row1 - row0, ldy = nr + 3;
    float *y = malloc(n_tok * ldy * sizeof(float));
    for (int64_t i = 0; i < n_tok * ldy; i++) y[i] = 12345.0f;
    xds_matmul_rows(pool, &wt, row0, row1, x, y, ldy, n_tok);
    int fails = 0;
    for (int tk = 0; tk < n_tok; tk++) {
        for (int64_t o = row0; o < row1; o++) {
            const float *wr = wdq + o * n_in;
            const float *xq = is_q8x(t) ? xdq + tk * n_in : x + tk * n_in;
            double ref = 0, mag = 0, exact = 0, bound = 0;
            for (int64_t i = 0; i < n_in; i++) {
                ref += (double)wr[i] * xq[i];
                mag += fabs((double)wr[i] * xq[i]);
                exact += (double)wr[i] * x[tk * n_in + i];
                if (is_q8x(t)) bound += fabs(wr[i]) * dblk[tk * (n_in / 32 + 1) + i / 32] * 0.5;
            }
            double got = y[tk * ldy + (o - row0)];
            double tol = 1e-5 * mag + 1e-6;
            if (!(fabs(got - ref) <= tol) || !(fabs(got - exact) <= bound + tol)) {
                if (fails < 3)
                    fprintf(stderr, "  %s %s n_in=%ld n_out=%ld n_tok=%d rows[%ld,%ld) t=%d o=%ld: got %.8g ref %.8g (mag %.3g) exact %.8g bound %.3g\n",
                            xds_cpu_level_name(xds_cpu_level_get()), xds_dtype_name(t), (long)n_in,
                            (long)n_out, n_tok, (long)row0, (long)row1, tk, (long)o, got, ref, mag,
                            exact, bound);
                fails++;
            }
        }
        for (int64_t k = nr; k < ldy; k++)
            if (y[tk * ldy + k] != 12345.0f) fails++; /* wrote outside [row0,row1) */
    }
    free(y);
    free(dblk);
    free(xdq);
    free(x);
    free(w);
    free(wdq);
    return fails;
}

static void test_quant_ref(void) {
    /* Hand-computed Q4_1 block: d = 0.5, m = -1, nibbles j and 15-j. */
    xds_block_q4_1 b1;
    b1.d = xds_f32_to_f16(0.5f);
    b1.m = xds_f32_to_f16(-1.0f);
    for (int j = 0; j < 16; j++) b1.qs[j] = (uint8_t)(j | ((15 - j) << 4));
    float y[32];
    xds_dequant_row(XDS_DTYPE_Q4_1, &b1, y, 32);
    CHECK(y[0] == -1.0f && y[1] == -0.5f && y[15] == 6.5f && y[16] == 6.5f && y[31] == -1.0f);
    /* Q4_0: d = 2, nibble 0 -> -16, 8 -> 0, 15 -> 14 */
    xds_block_q4_0 b0;
    b0.d = xds_f32_to_f16(2.0f);
    memset(b0.qs, 0, 16);
    b0.qs[1] = 0x8f;
    xds_dequant_row(XDS_DTYPE_Q4_0, &b0, y, 32);
    CHECK(y[0] == -16.0f && y[1] == 14.0f && y[17] == 0.0f);
    /* Q8_0 */
    xds_block_q8_0 b8;
    b8.d = xds_f32_to_f16(0.25f);
    for (int j = 0; j < 32; j++) b8.qs[j] = (int8_t)(j - 16);
    xds_dequant_row(XDS_DTYPE_Q8_0, &b8, y, 32);
    CHECK(y[0] == -4.0f && y[31] == 3.75f);
    /* Q6_K: all ql = 0x21, qh = 0, scales = 2, d = 1 -> q = 1-32 (low) / 2-32 (high) */
    static xds_block_q6_k b6;
    memset(b6.ql, 0x21, sizeof b6.ql);
    memset(b6.qh, 0, sizeof b6.qh);
    memset(b6.scales, 2, sizeof b6.scales);
    b6.d = xds_f32_to_f16(1.0f);
    float y6[256];
    xds_dequant_row(XDS_DTYPE_Q6_K, &b6, y6, 256);
    CHECK(y6[0] == -62.0f && y6[64] == -60.0f && y6[255] == -60.0f);
    /* Q4_K: scales[0..3] = 1 (sc), scales[4..7] = 2 (min), d = 1, dmin = 0.5,
     * qs = 0x53: first 32 values 1*3 - 0.5*2 = 2, next 32 1*5 - 1 = 4 */
    static xds_block_q4_k b4;
    memset(&b4, 0, sizeof b4);
    for (int j = 0; j < 4; j++) b4.scales[j] = 1, b4.scales[j + 4] = 2;
    b4.d = xds_f32_to_f16(1.0f);
    b4.dmin = xds_f32_to_f16(0.5f);
    memset(b4.qs, 0x53, sizeof b4.qs);
    xds_dequant_row(XDS_DTYPE_Q4_K, &b4, y6, 256);
    CHECK(y6[0] == 2.0f && y6[31] == 2.0f && y6[32] == 4.0f && y6[64] == 2.0f);

    /* Round trips: error within half a quantization step. */
    const xds_dtype types[] = {XDS_DTYPE_F32, XDS_DTYPE_F16, XDS_DTYPE_BF16,
                               XDS_DTYPE_Q8_0, XDS_DTYPE_Q4_0, XDS_DTYPE_Q4_1};
    for (int k = 0; k < 6; k++) {
        float x[96], r[96];
        uint8_t buf[96 * 4];
        for (int i = 0; i < 96; i++) x[i] = rnd_f() * 3.0f;
        xds_quant_row(types[k], x, buf, 96);
        xds_dequant_row(types[k], buf, r, 96);
        int ok = 1;
        for (int i = 0; i < 96; i++) {
            float amax = 0, mn = 1e30f, mx = -1e30f;
            for (int j = i / 32 * 32; j < i / 32 * 32 + 32; j++) {
                amax = fmaxf(amax, fabsf(x[j]));
                mn = fminf(mn, x[j]);
                mx = fmaxf(mx, x[j]);
            }
            double tol = types[k] == XDS_DTYPE_F32    ? 0
                         : types[k] == XDS_DTYPE_F16  ? fabsf(x[i]) * 1e-3
                         : types[k] == XDS_DTYPE_BF16 ? fabsf(x[i]) * 4e-3
                         : types[k] == XDS_DTYPE_Q8_0 ? amax / 127 * 0.51 + amax * 1e-3
                         : types[k] == XDS_DTYPE_Q4_0 ? amax / 8 * 0.51 + amax * 2e-3 + amax / 8
                                                      : (mx - mn) / 15 * 0.51 + amax * 2e-3;
            if (fabs(r[i] - x[i]) > tol) ok = 0;
        }
        CHECK_MSG(ok, "round trip %s", xds_dtype_name(types[k]));
    }
}

static void test_act_quant(void) {
    int nl = levels_n();
    float x[32 * 7], xdq[32 * 7], dblk[7];
    for (int i = 0; i < 32 * 7; i++) x[i] = rnd_f() * (i < 32 ? 0.0f : (float)(i % 5));
    x[40] = 0.5f * (x[41] = 127.0f); /* exact ties: 63.5 rounds to even */
    act_quant_model(x, 32 * 7, xdq, dblk);
    for (int l = 0; l < nl; l++) {
        uint8_t buf[512];
        memset(buf, 0x55, sizeof buf);
        xds_kern_table_get((xds_cpu_level)l)->act_quant(x, 7, buf);
        int ok = 1;
        for (int b = 0; b < 7; b++) {
            int sum = 0;
            for (int j = 0; j < 32; j++) {
                int q = xq_qs(buf)[xq_qs_index(b, j)];
                sum += q;
                if (xq_ds(buf, 7)[2 * b] * q != xdq[b * 32 + j]) ok = 0;
            }
            if (xq_ds(buf, 7)[2 * b] != dblk[b] || xq_ds(buf, 7)[2 * b + 1] != dblk[b] * (float)sum) ok = 0;
        }
        for (int j = 0; j < 32; j++) ok &= xq_qs(buf)[xq_qs_index(7, j)] == 0; /* pad of the odd pair */
        CHECK_MSG(ok, "act quant level %s", xds_cpu_level_name((xds_cpu_level)l));
    }
}

static void test_matmul(void) {
    int nl = levels_n();
    xds_pool *pools[3] = {NULL, NULL, NULL};
    XDS_ASSERT(xds_pool_create(2, &pools[1]) == XDS_OK);
    XDS_ASSERT(xds_pool_create(3, &pools[2]) == XDS_OK);
    const xds_dtype types[] = {XDS_DTYPE_F32,  XDS_DTYPE_F16,  XDS_DTYPE_BF16, XDS_DTYPE_Q8_0,
                               XDS_DTYPE_Q4_0, XDS_DTYPE_Q4_1, XDS_DTYPE_Q4_K, XDS_DTYPE_Q6_K};
    const int toks[] = {1, 2, 3, 7, 64, 65};
    for (int l = 0; l < nl; l++) {
        xds_cpu_level_set((xds_cpu_level)l);
        CHECK(xds_cpu_level_get() == (xds_cpu_level)l);
        for (int k = 0; k < 8; k++) {
            xds_dtype t = types[k];
            int kq = t == XDS_DTYPE_Q4_K || t == XDS_DTYPE_Q6_K;
            const int64_t ins[] = {kq ? 256 : 32, kq ? 512 : 96, kq ? 256 : 288, kq ? 768 : 576};
            const int64_t outs[] = {1, 5, 13, 67};
            int fails = 0;
            for (int s = 0; s < 4; s++)
                for (int tk = 0; tk < 6; tk++) {
                    if (s == 3 && toks[tk] > 7 && l == 0 && t != XDS_DTYPE_Q4_1) continue; /* keep generic fast */
                    fails += check_matmul(pools[(s + tk) % 3], t, ins[s], outs[(s + tk) % 4],
                                          toks[tk], 0, outs[(s + tk) % 4]);
                }
            CHECK_MSG(fails == 0, "matmul level %s type %s: %d mismatches",
                      xds_cpu_level_name((xds_cpu_level)l), xds_dtype_name(t), fails);
        }
    }
    for (int p = 1; p < 3; p++) xds_pool_free(pools[p]);
}

/* xds_matmul_rows on a sub-range equals the same rows of the full product. */
static void test_matmul_rows(void) {
    int nl = levels_n();
    xds_pool *pool;
    XDS_ASSERT(xds_pool_create(2, &pool) == XDS_OK);
    const xds_dtype types[] = {XDS_DTYPE_F32, XDS_DTYPE_BF16, XDS_DTYPE_Q8_0, XDS_DTYPE_Q4_1, XDS_DTYPE_Q6_K};
    for (int l = 0; l < nl; l++) {
        xds_cpu_level_set((xds_cpu_level)l);
        for (int k = 0; k < 5; k++) {
            xds_dtype t = types[k];
            int64_t n_in = t == XDS_DTYPE_Q6_K ? 256 : 160, n_out = 37;
            float *wdq = malloc(n_in * n_out * sizeof(float));
            void *w = make_weights(t, n_in, n_out, wdq);
            xds_tensor wt = {.name = "w", .type = t, .n_dims = 2, .ne = {n_in, n_out, 1, 1}, .data = w};
            const int toks[] = {1, 3, 9};
            int ok = 1;
            for (int ti = 0; ti < 3; ti++) {
                int n_tok = toks[ti];
                float *x = malloc(n_tok * n_in * sizeof(float));
                for (int64_t i = 0; i < n_tok * n_in; i++) x[i] = rnd_f();
                float *full = malloc(n_tok * n_out * sizeof(float));
                xds_matmul(pool, &wt, x, full, n_tok);
                const int64_t ranges[][2] = {{0, 1}, {3, 11}, {5, 37}, {36, 37}, {4, 4}};
                for (int r = 0; r < 5; r++) {
                    int64_t r0 = ranges[r][0], r1 = ranges[r][1], ldy = r1 - r0 + 2;
                    float *y = malloc((n_tok * ldy + 1) * sizeof(float));
                    for (int64_t i = 0; i < n_tok * ldy; i++) y[i] = -7.0f;
                    xds_matmul_rows(pool, &wt, r0, r1, x, y, ldy, n_tok);
                    for (int tk = 0; tk < n_tok; tk++) {
                        for (int64_t o = r0; o < r1; o++)
                            if (fabsf(y[tk * ldy + o - r0] - full[tk * n_out + o]) >
                                1e-5f * (1 + fabsf(full[tk * n_out + o])))
                                ok = 0;
                        for (int64_t o = r1 - r0; o < ldy; o++)
                            if (y[tk * ldy + o] != -7.0f) ok = 0;
                    }
                    free(y);
                }
                free(full);
                free(x);
            }
            CHECK_MSG(ok, "matmul_rows level %s type %s", xds_cpu_level_name((xds_cpu_level)l), xds_dtype_name(t));
            /* get_row equals the dequantized row */
            float row[512];
            xds_get_row(&wt, 17, row);
            CHECK(memcmp(row, wdq + 17 * n_in, n_in * sizeof(float)) == 0);
            free(w);
            free(wdq);
        }
    }
    xds_pool_free(pool);
}

/* xds_matmul_multi equals separate xds_matmul calls, for mixed types. */
static void test_matmul_multi(void) {
    int nl = levels_n();
    xds_pool *pool;
    XDS_ASSERT(xds_pool_create(2, &pool) == XDS_OK);
    const xds_dtype types[3] = {XDS_DTYPE_Q4_1, XDS_DTYPE_Q8_0, XDS_DTYPE_F16};
    const int64_t n_in = 192, outs[3] = {67, 8, 33};
    for (int l = 0; l < nl; l++) {
        xds_cpu_level_set((xds_cpu_level)l);
        xds_tensor wt[3];
        const xds_tensor *wp[3];
        float *wdq[3];
        for (int i = 0; i < 3; i++) {
            wdq[i] = malloc(n_in * outs[i] * sizeof(float));
            void *w = make_weights(types[i], n_in, outs[i], wdq[i]);
            wt[i] = (xds_tensor){.name = "w", .type = types[i], .n_dims = 2, .ne = {n_in, outs[i], 1, 1}, .data = w};
            wp[i] = &wt[i];
        }
        const int toks[] = {1, 5, 130};
        int ok = 1;
        for (int ti = 0; ti < 3; ti++) {
            int n_tok = toks[ti];
            float *x = malloc(n_tok * n_in * sizeof(float));
            for (int64_t i = 0; i < n_tok * n_in; i++) x[i] = rnd_f();
            float *ym[3], *ys[3];
            for (int i = 0; i < 3; i++) {
                ym[i] = malloc(n_tok * outs[i] * sizeof(float));
                ys[i] = malloc(n_tok * outs[i] * sizeof(float));
                xds_matmul(pool, &wt[i], x, ys[i], n_tok);
            }
            xds_matmul_multi(pool, 3, wp, x, ym, n_tok);
            for (int i = 0; i < 3; i++) {
                ok &= memcmp(ym[i], ys[i], n_tok * outs[i] * sizeof(float)) == 0;
                free(ym[i]), free(ys[i]);
            }
            free(x);
        }
        CHECK_MSG(ok, "matmul_multi level %s", xds_cpu_level_name((xds_cpu_level)l));
        for (int i = 0; i < 3; i++) free((void *)wt[i].data), free(wdq[i]);
    }
    xds_pool_free(pool);
}

static void test_ops(void) {
    const int ns[] = {1, 7, 33, 576, 1537};
    int nl = levels_n();
    for (int kk = 0; kk < 5 * nl; kk++) {
        int k = kk % 5, n = ns[k];
        xds_cpu_level_set((xds_cpu_level)(kk / 5));
        float *a = malloc(n * 4), *b = malloc(n * 4), *y = malloc(n * 4), *w = malloc(n * 4);
        for (int i = 0; i < n; i++) a[i] = rnd_f() * 4, b[i] = rnd_f() * 4, w[i] = 1 + rnd_f() * 0.5f;
        if (n > 7) a[3] = -100.0f, a[5] = 95.0f, a[6] = -87.5f; /* exp range ends */
        double dot = 0, mag = 0, ss = 0;
        for (int i = 0; i < n; i++) dot += (double)a[i] * b[i], mag += fabs((double)a[i] * b[i]), ss += (double)a[i] * a[i];
        CHECK_NEAR(xds_dot_f32(a, b, n), dot, 2e-6 * mag + 1e-7);
        /* rmsnorm */
        xds_rmsnorm(y, a, w, n, 1e-5f);
        double sc = 1.0 / sqrt(ss / n + 1e-5);
        int ok = 1;
        for (int i = 0; i < n; i++) ok &= fabs(y[i] - a[i] * sc * w[i]) <= 1e-5 * fabs(a[i] * sc * w[i]) + 1e-6;
        CHECK_MSG(ok, "rmsnorm n=%d", n);
        /* softmax */
        memcpy(y, a, n * 4);
        xds_softmax(y, n);
        double mx = a[0], z = 0;
        for (int i = 1; i < n; i++) mx = fmax(mx, a[i]);
        for (int i = 0; i < n; i++) z += exp(a[i] - mx);
        ok = 1;
        double ysum = 0;
        for (int i = 0; i < n; i++) ok &= fabs(y[i] - exp(a[i] - mx) / z) <= 1e-6 + 1e-5 * exp(a[i] - mx) / z, ysum += y[i];
        CHECK_MSG(ok && fabs(ysum - 1) < 1e-5, "softmax n=%d level %d", n, kk / 5);
        /* silu_mul */
        memcpy(y, a, n * 4);
        xds_silu_mul(y, b, n);
        ok = 1;
        for (int i = 0; i < n; i++) {
            double r = a[i] / (1 + exp(-(double)a[i])) * b[i];
            ok &= fabs(y[i] - r) <= 1e-5 * fabs(r) + 1e-6;
        }
        CHECK_MSG(ok, "silu_mul n=%d level %d", n, kk / 5);
        /* add, axpy */
        memcpy(y, a, n * 4);
        xds_add(y, b, n);
        ok = 1;
        for (int i = 0; i < n; i++) ok &= y[i] == a[i] + b[i];
        CHECK_MSG(ok, "add n=%d", n);
        memcpy(y, a, n * 4);
        xds_axpy(y, 0.75f, b, n);
        ok = 1;
        for (int i = 0; i < n; i++) ok &= fabs(y[i] - (a[i] + 0.75 * b[i])) <= 1e-6 * (fabs(a[i]) + fabs(b[i]));
        CHECK_MSG(ok, "axpy n=%d level %d", n, kk / 5);
        free(a), free(b), free(y), free(w);
    }
    for (int l = 0; l < nl; l++) { /* masked scores: -inf gives exactly 0 */
        xds_cpu_level_set((xds_cpu_level)l);
        float v[19];
        for (int i = 0; i < 19; i++) v[i] = i % 3 == 1 ? -INFINITY : (float)(i % 3);
        xds_softmax(v, 19);
        double zz = 0;
        for (int i = 0; i < 19; i++) zz += i % 3 == 1 ? 0 : exp((double)(i % 3) - 2.0);
        int ok = 1;
        for (int i = 0; i < 19; i++) {
            double r = i % 3 == 1 ? 0 : exp((double)(i % 3) - 2.0) / zz;
            ok &= (i % 3 == 1) ? v[i] == 0.0f : fabs(v[i] - r) <= 1e-6;
        }
        CHECK_MSG(ok, "softmax with -inf, level %d", l);
    }
}

/* The bound measurements run on 1 and 2 threads and give finite positive
 * figures (no timing is asserted: benchmarks are not tests). */
static void test_roofline(void) {
    for (int nt = 1; nt <= 2; nt++) {
        xds_pool *pool;
        XDS_ASSERT(xds_pool_create(nt, &pool) == XDS_OK);
        double bw = xds_measure_read_bw(pool, (size_t)8 << 20);
        double fma = xds_measure_fma_peak(pool), i8 = xds_measure_int8_peak(pool);
        CHECK_MSG(bw > 0 && isfinite(bw) && fma > 0 && isfinite(fma) && i8 > 0 && isfinite(i8),
                  "threads %d: bw %g fma %g int8 %g", nt, bw, fma, i8);
        xds_pool_free(pool);
    }
}

/* Batch invariance: a token's row of y is bit-identical whatever other
 * tokens share the call (n_tok = 1, 2, 3, 5, 8, 17, 64), wherever it sits in
 * the kernels' token tiles, for any pool size (row chunking), and a row range
 * of xds_matmul_rows gives bit-identical values to the same rows of the full
 * product (rows land at other positions in the row tiles). Also the
 * elementwise silu_mul: each element the same in a long call as in a short. */
static void test_batch_invariance(void) {
    int nl = levels_n();
    xds_pool *pools[2] = {NULL, NULL};
    XDS_ASSERT(xds_pool_create(3, &pools[1]) == XDS_OK);
    const xds_dtype types[] = {XDS_DTYPE_F32,  XDS_DTYPE_F16,  XDS_DTYPE_BF16, XDS_DTYPE_Q8_0,
                               XDS_DTYPE_Q4_0, XDS_DTYPE_Q4_1, XDS_DTYPE_Q4_K, XDS_DTYPE_Q6_K};
    const int toks[] = {1, 2, 3, 5, 8, 17, 64};
    for (int l = 0; l < nl; l++) {
        xds_cpu_level_set((xds_cpu_level)l);
        for (int k = 0; k < 8; k++) {
            xds_dtype t = types[k];
            int kq = t == XDS_DTYPE_Q4_K || t == XDS_DTYPE_Q6_K;
            /* block counts: 18 (even pairs count 9), 5 and 3 (odd), 1; 73
             * (AVX-512 Q8_0 cuts its 10 groups of 8 blocks into chunks) */
            const int64_t ins[] = {kq ? 512 : 576, kq ? 256 : 160, kq ? 256 : 96, kq ? 256 : 32, kq ? 2304 : 2336};
            for (int s = 0; s < 5; s++) {
                int64_t n_in = ins[s], n_out = s == 0 ? 67 : 13 + s;
                float *wdq = malloc(n_in * n_out * sizeof(float));
                void *w = make_weights(t, n_in, n_out, wdq);
                xds_tensor wt = {.name = "w", .type = t, .n_dims = 2, .ne = {n_in, n_out, 1, 1}, .data = w};
                float *x = malloc(64 * n_in * sizeof(float));
                for (int64_t i = 0; i < 64 * n_in; i++) x[i] = rnd_f() * (1 + (i / n_in) % 3);
                float *solo = malloc(64 * n_out * sizeof(float)), *y = malloc(64 * n_out * sizeof(float));
                for (int tk = 0; tk < 64; tk++) xds_matmul(NULL, &wt, x + tk * n_in, solo + tk * n_out, 1);
                int bad = 0, bad_rows = 0;
                for (int ti = 0; ti < 7; ti++) {
                    int n_tok = toks[ti];
                    for (int pi = 0; pi < 2; pi++) {
                        /* tokens from an offset, so each one also meets other tile positions */
                        int t0 = (ti * 7 + pi * 3) % (65 - n_tok);
                        xds_matmul(pools[pi], &wt, x + t0 * n_in, y, n_tok);
                        for (int tk = 0; tk < n_tok; tk++)
                            if (memcmp(y + tk * n_out, solo + (t0 + tk) * n_out, n_out * sizeof(float))) bad++;
                    }
                    /* rows [r0, r1) at every alignment mod 4 */
                    for (int r0 = 1; r0 < 4 && r0 < n_out; r0++) {
                        int64_t r1 = n_out - (r0 == 2), ldy = r1 - r0 + 1;
                        float *yr = malloc(n_tok * ldy * sizeof(float));
                        xds_matmul_rows(pools[r0 & 1], &wt, r0, r1, x, yr, ldy, n_tok);
                        for (int tk = 0; tk < n_tok; tk++)
                            if (memcmp(yr + tk * ldy, solo + tk * n_out + r0, (r1 - r0) * sizeof(float))) bad_rows++;
                        free(yr);
                    }
                }
                CHECK_MSG(bad == 0 && bad_rows == 0,
                          "batch invariance level %s type %s n_in %lld: %d matmul rows, %d matmul_rows rows differ",
                          xds_cpu_level_name((xds_cpu_level)l), xds_dtype_name(t), (long long)n_in, bad, bad_rows);
                free(solo);
                free(y);
                free(x);
                free(w);
                free(wdq);
            }
        }
        /* silu_mul: rows of F values (F not a multiple of 8 / 16) */
        const int F = 37;
        float g[8 * 37], u[8 * 37], g1[8 * 37];
        for (int i = 0; i < 8 * F; i++) g[i] = g1[i] = rnd_f() * 6, u[i] = rnd_f();
        xds_silu_mul(g, u, 8 * F);
        int same = 1;
        for (int r = 0; r < 8; r++) {
            xds_silu_mul(g1 + r * F, u + r * F, F);
            same &= memcmp(g1 + r * F, g + r * F, F * sizeof(float)) == 0;
        }
        CHECK_MSG(same, "silu_mul level %s: an element differs between one call and per-row calls",
                  xds_cpu_level_name((xds_cpu_level)l));
    }
    xds_pool_free(pools[1]);
}


/* Q8_0_R16 (16 rows interleaved, made at load from Q8_0): per level,
 *   - xds_get_row gives the Q8_0 row's values exactly;
 *   - the product is the Q8_0 weights' (double reference, tight);
 *   - batch invariance: n_tok = 1..70 (pools of 1 and 3 threads) and row
 *     ranges that cut groups of 16 give each token's outputs bit-identical
 *     to one token at a time (memcmp), odd block counts included;
 *   - every level gives the same bits as the generic kernel (the AVX-512
 *     kernel does the same operations in the same order);
 *   - xds_matmul_multi mixing Q8_0_R16 and Q8_0 == separate products. */
static void test_q8r(void) {
    int nl = levels_n();
    xds_pool *pools[2] = {NULL, NULL};
    XDS_ASSERT(xds_pool_create(3, &pools[1]) == XDS_OK);
    const int64_t ins[] = {32, 96, 160, 576, 2336}; /* 1, 3, 5, 18, 73 blocks */
    const int64_t outs[] = {16, 48, 32, 64, 32};
    for (int s = 0; s < 5; s++) {
        int64_t n_in = ins[s], n_out = outs[s], nb = n_in / 32;
        float *wdq = malloc(n_in * n_out * sizeof(float));
        void *w = make_weights(XDS_DTYPE_Q8_0, n_in, n_out, wdq);
        size_t nbytes = xds_dtype_row_bytes(XDS_DTYPE_Q8_0, n_in) * n_out;
        CHECK(xds_dtype_row_bytes(XDS_DTYPE_Q8_0_R16, n_in) * n_out == nbytes);
        uint8_t *wr = aligned_alloc(64, (nbytes + 63) & ~(size_t)63);
        xds_q8r_pack_generic(w, wr, n_out, n_in);
        if (nl > XDS_CPU_AVX512) { /* the AVX-512 packer writes the same bytes */
            uint8_t *w2 = aligned_alloc(64, (nbytes + 63) & ~(size_t)63);
            xds_q8r_pack_avx512(w, w2, n_out, n_in);
            CHECK_MSG(memcmp(w2, wr, nbytes) == 0, "q8_0_r16 pack n_in %lld: avx512 != generic", (long long)n_in);
            free(w2);
        }
        xds_tensor wt = {.name = "w", .type = XDS_DTYPE_Q8_0_R16, .n_dims = 2, .ne = {n_in, n_out, 1, 1},
                         .data = wr, .nbytes = nbytes};
        xds_tensor wq = wt;
        wq.type = XDS_DTYPE_Q8_0, wq.data = w;
        float *row = malloc(n_in * sizeof(float));
        int rows_ok = 1;
        for (int64_t o = 0; o < n_out; o++) {
            xds_get_row(&wt, o, row);
            rows_ok &= memcmp(row, wdq + o * n_in, n_in * sizeof(float)) == 0;
        }
        CHECK_MSG(rows_ok, "q8_0_r16 get_row n_in %lld differs from the q8_0 row", (long long)n_in);
        const int NT = 70;
        float *x = malloc(NT * n_in * sizeof(float)), *xdq = malloc(n_in * sizeof(float));
        float *dblk = malloc((nb + 1) * sizeof(float));
        for (int64_t i = 0; i < NT * n_in; i++) x[i] = rnd_f() * (1 + (i / n_in) % 3);
        for (int j = 0; j < 32; j++) x[3 * n_in + j] = 0.0f; /* an all-zero block */
        float *solo = malloc(NT * n_out * sizeof(float)), *solo0 = malloc(NT * n_out * sizeof(float));
        float *y = malloc(NT * n_out * sizeof(float)), *y2 = malloc(NT * n_out * sizeof(float));
        for (int l = 0; l < nl; l++) {
            xds_cpu_level_set((xds_cpu_level)l);
            for (int tk = 0; tk < NT; tk++) xds_matmul(NULL, &wt, x + tk * n_in, solo + tk * n_out, 1);
            if (l == 0) {
                memcpy(solo0, solo, NT * n_out * sizeof(float));
                int fails = 0;
                for (int tk = 0; tk < NT; tk++) {
                    act_quant_model(x + tk * n_in, n_in, xdq, dblk);
                    for (int64_t o = 0; o < n_out; o++) {
                        double ref = 0, mag = 0;
                        for (int64_t i = 0; i < n_in; i++) {
                            ref += (double)wdq[o * n_in + i] * xdq[i];
                            mag += fabs((double)wdq[o * n_in + i] * xdq[i]);
                        }
                        if (!(fabs(solo[tk * n_out + o] - ref) <= 1e-5 * mag + 1e-6)) fails++;
                    }
                }
                CHECK_MSG(fails == 0, "q8_0_r16 n_in %lld: %d outputs off the double reference", (long long)n_in,
                          fails);
            }
            CHECK_MSG(memcmp(solo, solo0, NT * n_out * sizeof(float)) == 0,
                      "q8_0_r16 n_in %lld: level %s differs from generic", (long long)n_in,
                      xds_cpu_level_name((xds_cpu_level)l));
            int bad = 0, bad_rows = 0;
            for (int n_tok = 1; n_tok <= NT; n_tok++) {
                int t0 = (n_tok * 7) % (NT + 1 - n_tok);
                xds_matmul(pools[n_tok & 1], &wt, x + t0 * n_in, y, n_tok);
                for (int tk = 0; tk < n_tok; tk++)
                    if (memcmp(y + tk * n_out, solo + (t0 + tk) * n_out, n_out * sizeof(float))) bad++;
                if (n_tok % 7 == 1) { /* row ranges cutting groups */
                    const int64_t rr[][2] = {{1, n_out - 1}, {5, 16}, {16, n_out}, {17, n_out - 3}, {0, 3}};
                    for (int k = 0; k < 5; k++) {
                        int64_t r0 = rr[k][0], r1 = rr[k][1], ldy = r1 - r0 + 2;
                        if (r1 <= r0 || r1 > n_out) continue;
                        float *yr = malloc(n_tok * ldy * sizeof(float));
                        for (int64_t i = 0; i < n_tok * ldy; i++) yr[i] = 12345.0f;
                        xds_matmul_rows(pools[k & 1], &wt, r0, r1, x, yr, ldy, n_tok);
                        for (int tk = 0; tk < n_tok; tk++) {
                            if (memcmp(yr + tk * ldy, solo + tk * n_out + r0, (r1 - r0) * sizeof(float))) bad_rows++;
                            if (yr[tk * ldy + r1 - r0] != 12345.0f || yr[tk * ldy + r1 - r0 + 1] != 12345.0f)
                                bad_rows++; /* wrote outside [r0, r1) */
                        }
                        free(yr);
                    }
                }
            }
            CHECK_MSG(bad == 0 && bad_rows == 0,
                      "q8_0_r16 batch invariance level %s n_in %lld: %d matmul rows, %d matmul_rows rows differ",
                      xds_cpu_level_name((xds_cpu_level)l), (long long)n_in, bad, bad_rows);
            /* multi: the same input through a Q8_0_R16 and a Q8_0 weight */
            const xds_tensor *ws[2] = {&wt, &wq};
            float *ys[2] = {y, y2};
            xds_matmul_multi(pools[1], 2, ws, x, ys, 9);
            float *yq = malloc(9 * n_out * sizeof(float));
            xds_matmul(NULL, &wq, x, yq, 9);
            CHECK_MSG(memcmp(y, solo, 9 * n_out * sizeof(float)) == 0 && memcmp(y2, yq, 9 * n_out * sizeof(float)) == 0,
                      "q8_0_r16 matmul_multi level %s n_in %lld differs from separate products",
                      xds_cpu_level_name((xds_cpu_level)l), (long long)n_in);
            free(yq);
        }
        free(y2), free(y), free(solo0), free(solo), free(dblk), free(xdq), free(x), free(row), free(wr), free(w),
            free(wdq);
    }
    xds_pool_free(pools[1]);
}

/* Scalar model of the per-token activation quantizer (kern_impl.h, W8A8). */
static float act_quant8_model(const float *x, int64_t n, float *xdq) {
    float amax = 0;
    for (int64_t j = 0; j < n; j++) amax = fmaxf(amax, fabsf(x[j]));
    float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int64_t j = 0; j < n; j++) xdq[j] = d * nearbyintf(x[j] * id);
    return d;
}

/* W8A8 (per-row int8 weights, made at load): per level,
 *   - the sizes (whole groups; n_in a multiple of 32 up to 65536, else 0);
 *   - xds_w8a8_quant from f32 rows: every value within half a step (s / 2)
 *     of the f32 weight, s = max|row| / 127, xds_get_row gives s * q; from an
 *     F32 tensor the same bytes; from Q8_0 the bytes of its dequantized rows;
 *   - each level's activation quantizer writes the generic one's bytes, and
 *     those match the scalar model (values d * q, d = max|x| / 127);
 *   - the product equals the double sum over the dequantized weights and
 *     activations (tight: exact int32 sums, two f32 roundings);
 *   - batch invariance: n_tok = 1..70 (pools of 1 and 3 threads), row ranges
 *     cutting groups, n_out not a multiple of 16: each token's outputs
 *     bit-identical to one token at a time, and to the generic kernel at
 *     every level;
 *   - xds_matmul_multi mixing W8A8 and Q8_0 == separate products. */
static void test_w8a8(void) {
    int nl = levels_n();
    CHECK(xds_w8a8_bytes(16, 65536 + 4) == 0 && xds_w8a8_bytes(16, 0) == 0 && xds_w8a8_bytes(16, 65536) > 0);
    CHECK(xds_w8a8_bytes(17, 64) == 2 * 16 * (64 + 4) && xds_w8a8_bytes(16, 64) == 16 * (64 + 4));
    CHECK(xds_w8a8_bytes(16, 6) == 16 * (8 + 4));
    CHECK(xds_dtype_row_bytes(XDS_DTYPE_W8A8, 64) == 68 && xds_dtype_row_bytes(XDS_DTYPE_W8A8, 6) == 12 &&
          xds_dtype_row_bytes(XDS_DTYPE_W8A8, 0) == 0);
    xds_pool *pools[2] = {NULL, NULL};
    XDS_ASSERT(xds_pool_create(3, &pools[1]) == XDS_OK);
    /* n_in: whole quads in any count (56: 14 quads, not a multiple of the
     * one-token kernel's 8-way split), and 6 / 101 (padded to 8 / 104) */
    const int64_t ins[] = {32, 96, 576, 2336, 56, 6, 101};
    const int64_t outs[] = {16, 40, 7, 64, 33, 48, 20};
    for (int s = 0; s < 7; s++) {
        int64_t n_in = ins[s], n_out = outs[s];
        const xds_dtype other = n_in % 32 ? XDS_DTYPE_F16 : XDS_DTYPE_Q8_0; /* a second weight type for this n_in */
        float *wf = malloc(n_in * n_out * sizeof(float));
        for (int64_t o = 0; o < n_out; o++)
            for (int64_t i = 0; i < n_in; i++) wf[o * n_in + i] = rnd_f() * (0.5f + (o % 5) * 0.3f);
        for (int64_t i = 0; i < n_in; i++) wf[(n_out - 1) * n_in + i] = 0.0f; /* an all-zero row */
        size_t nbytes = xds_w8a8_bytes(n_out, n_in);
        CHECK(nbytes == (size_t)((n_out + 15) / 16) * 16 * (((n_in + 3) & ~3) + 4));
        uint8_t *w8 = aligned_alloc(64, (nbytes + 63) & ~(size_t)63), *w8b = aligned_alloc(64, (nbytes + 63) & ~(size_t)63);
        xds_w8a8_quant(wf, n_out, n_in, 0, (n_out + 15) / 16, w8);
        xds_tensor wt = {.name = "w", .type = XDS_DTYPE_W8A8, .n_dims = 2, .ne = {n_in, n_out, 1, 1},
                         .data = w8, .nbytes = nbytes};
        xds_tensor tf = {.name = "wf", .type = XDS_DTYPE_F32, .n_dims = 2, .ne = {n_in, n_out, 1, 1},
                         .data = wf, .nbytes = n_in * n_out * sizeof(float)};
        CHECK(xds_w8a8_from_tensor(&tf, 0, (n_out + 15) / 16, w8b) == -1); /* every weight finite */
        CHECK_MSG(memcmp(w8, w8b, nbytes) == 0, "w8a8 n_in %lld: from an F32 tensor != from f32 rows", (long long)n_in);
        /* a NaN or an infinity has no int8 value: the first such row is named */
        if (n_out > 20) {
            float keep = wf[17 * n_in + n_in - 1], keep2 = wf[19 * n_in];
            wf[19 * n_in] = INFINITY;
            CHECK(xds_w8a8_from_tensor(&tf, 0, (n_out + 15) / 16, w8b) == 19);
            wf[17 * n_in + n_in - 1] = NAN;
            CHECK(xds_w8a8_from_tensor(&tf, 0, (n_out + 15) / 16, w8b) == 17);
            CHECK(xds_w8a8_from_tensor(&tf, 0, 1, w8b) == -1); /* groups outside the bad rows */
            wf[17 * n_in + n_in - 1] = keep, wf[19 * n_in] = keep2;
        }
        /* get_row and the quantization error */
        float *wdq = malloc(n_in * n_out * sizeof(float));
        int q_ok = 1;
        for (int64_t o = 0; o < n_out; o++) {
            xds_get_row(&wt, o, wdq + o * n_in);
            float amax = 0;
            for (int64_t i = 0; i < n_in; i++) amax = fmaxf(amax, fabsf(wf[o * n_in + i]));
            float st = amax / 127.0f;
            for (int64_t i = 0; i < n_in; i++) {
                float v = wdq[o * n_in + i], q = st != 0.0f ? v / st : 0.0f;
                q_ok &= fabsf(v - wf[o * n_in + i]) <= 0.5f * st * (1 + 1e-5f) && fabsf(q - nearbyintf(q)) < 1e-3f;
            }
        }
        CHECK_MSG(q_ok, "w8a8 n_in %lld: a dequantized weight is off by more than half a step", (long long)n_in);
        /* from Q8_0: the bytes of its dequantized rows */
        {
            float *qdq = malloc(n_in * n_out * sizeof(float));
            void *wq8 = make_weights(other, n_in, n_out, qdq);
            xds_tensor tq = {.name = "wq", .type = other, .n_dims = 2, .ne = {n_in, n_out, 1, 1},
                             .data = wq8, .nbytes = xds_dtype_row_bytes(other, n_in) * n_out};
            xds_w8a8_from_tensor(&tq, 0, (n_out + 15) / 16, w8b);
            uint8_t *w8c = aligned_alloc(64, (nbytes + 63) & ~(size_t)63);
            xds_w8a8_quant(qdq, n_out, n_in, 0, (n_out + 15) / 16, w8c);
            CHECK_MSG(memcmp(w8c, w8b, nbytes) == 0, "w8a8 n_in %lld: from Q8_0 / F16 != from its f32 rows", (long long)n_in);
            free(w8c), free(wq8), free(qdq);
        }
        const int NT = 70;
        float *x = malloc(NT * n_in * sizeof(float)), *xdq = malloc(n_in * sizeof(float));
        for (int64_t i = 0; i < NT * n_in; i++) x[i] = rnd_f() * (1 + (i / n_in) % 3);
        for (int64_t i = 0; i < n_in; i++) x[3 * n_in + i] = 0.0f; /* an all-zero token */
        /* activation quantizer: the scalar model, the same bytes at every level */
        {
            size_t xs = xa_row_bytes(n_in);
            uint8_t *a0 = aligned_alloc(64, xs), *a1 = aligned_alloc(64, xs);
            int aq_ok = 1;
            for (int tk = 0; tk < 5; tk++) {
                xds_act_quant8_generic(x + tk * n_in, n_in, a0);
                float d = act_quant8_model(x + tk * n_in, n_in, xdq);
                int32_t sum = 0;
                for (int64_t i = 0; i < n_in; i++) {
                    aq_ok &= xdq[i] == d * (float)((const int8_t *)a0)[i];
                    sum += ((const int8_t *)a0)[i];
                }
                aq_ok &= *xa_d(a0, n_in) == d && *xa_sum(a0, n_in) == sum;
#if defined(__x86_64__)
                if (nl > XDS_CPU_AVX512) {
                    memset(a1, 0x55, xs);
                    xds_act_quant8_avx512(x + tk * n_in, n_in, a1);
                    aq_ok &= memcmp(a0, a1, xa_q_bytes(n_in) + 8) == 0;
                }
#endif
            }
            CHECK_MSG(aq_ok, "w8a8 n_in %lld: activation quantization differs from the model", (long long)n_in);
            free(a0), free(a1);
        }
        float *solo = malloc(NT * n_out * sizeof(float)), *solo0 = malloc(NT * n_out * sizeof(float));
        float *y = malloc(NT * n_out * sizeof(float)), *y2 = malloc(NT * n_out * sizeof(float));
        for (int l = 0; l < nl; l++) {
            xds_cpu_level_set((xds_cpu_level)l);
            for (int tk = 0; tk < NT; tk++) xds_matmul(NULL, &wt, x + tk * n_in, solo + tk * n_out, 1);
            if (l == 0) {
                memcpy(solo0, solo, NT * n_out * sizeof(float));
                int fails = 0;
                for (int tk = 0; tk < NT; tk++) {
                    act_quant8_model(x + tk * n_in, n_in, xdq);
                    for (int64_t o = 0; o < n_out; o++) {
                        double ref = 0, mag = 0;
                        for (int64_t i = 0; i < n_in; i++) {
                            ref += (double)wdq[o * n_in + i] * xdq[i];
                            mag += fabs((double)wdq[o * n_in + i] * xdq[i]);
                        }
                        if (!(fabs(solo[tk * n_out + o] - ref) <= 1e-6 * mag + 1e-7)) fails++;
                    }
                }
                CHECK_MSG(fails == 0, "w8a8 n_in %lld: %d outputs off the double reference", (long long)n_in, fails);
            }
            CHECK_MSG(memcmp(solo, solo0, NT * n_out * sizeof(float)) == 0, "w8a8 n_in %lld: level %s differs from generic",
                      (long long)n_in, xds_cpu_level_name((xds_cpu_level)l));
            int bad = 0, bad_rows = 0;
            for (int n_tok = 1; n_tok <= NT; n_tok++) {
                int t0 = (n_tok * 7) % (NT + 1 - n_tok);
                xds_matmul(pools[n_tok & 1], &wt, x + t0 * n_in, y, n_tok);
                for (int tk = 0; tk < n_tok; tk++)
                    if (memcmp(y + tk * n_out, solo + (t0 + tk) * n_out, n_out * sizeof(float))) bad++;
                if (n_tok % 7 == 1) { /* row ranges cutting groups */
                    const int64_t rr[][2] = {{1, n_out - 1}, {5, 16}, {16, n_out}, {17, n_out - 3}, {0, 3}};
                    for (int k = 0; k < 5; k++) {
                        int64_t r0 = rr[k][0], r1 = rr[k][1], ldy = r1 - r0 + 2;
                        if (r1 <= r0 || r1 > n_out) continue;
                        float *yr = malloc(n_tok * ldy * sizeof(float));
                        for (int64_t i = 0; i < n_tok * ldy; i++) yr[i] = 12345.0f;
                        xds_matmul_rows(pools[k & 1], &wt, r0, r1, x, yr, ldy, n_tok);
                        for (int tk = 0; tk < n_tok; tk++) {
                            if (memcmp(yr + tk * ldy, solo + tk * n_out + r0, (r1 - r0) * sizeof(float))) bad_rows++;
                            if (yr[tk * ldy + r1 - r0] != 12345.0f || yr[tk * ldy + r1 - r0 + 1] != 12345.0f)
                                bad_rows++; /* wrote outside [r0, r1) */
                        }
                        free(yr);
                    }
                }
            }
            CHECK_MSG(bad == 0 && bad_rows == 0,
                      "w8a8 batch invariance level %s n_in %lld: %d matmul rows, %d matmul_rows rows differ",
                      xds_cpu_level_name((xds_cpu_level)l), (long long)n_in, bad, bad_rows);
            /* multi: the same input through a W8A8 and a Q8_0 weight */
            float *qdq = malloc(n_in * n_out * sizeof(float));
            void *wq8 = make_weights(other, n_in, n_out, qdq);
            xds_tensor wq = {.name = "wq", .type = other, .n_dims = 2, .ne = {n_in, n_out, 1, 1},
                             .data = wq8, .nbytes = xds_dtype_row_bytes(other, n_in) * n_out};
            const xds_tensor *ws[2] = {&wt, &wq};
            float *ys[2] = {y, y2};
            xds_matmul_multi(pools[1], 2, ws, x, ys, 9);
            float *yq = malloc(9 * n_out * sizeof(float));
            xds_matmul(NULL, &wq, x, yq, 9);
            CHECK_MSG(memcmp(y, solo, 9 * n_out * sizeof(float)) == 0 && memcmp(y2, yq, 9 * n_out * sizeof(float)) == 0,
                      "w8a8 matmul_multi level %s n_in %lld differs from separate products",
                      xds_cpu_level_name((xds_cpu_level)l), (long long)n_in);
            free(yq), free(wq8), free(qdq);
        }
        free(y2), free(y), free(solo0), free(solo), free(xdq), free(x), free(wdq), free(w8b), free(w8), free(wf);
    }
    xds_pool_free(pools[1]);
}

int main(void) {
    /* XDS_CPU is read once, at the first use of the level */
    setenv("XDS_CPU", "generic", 1);
    CHECK(xds_cpu_level_get() == XDS_CPU_GENERIC);
    CHECK(strcmp(xds_cpu_level_name(xds_cpu_level_get()), "generic") == 0);
    unsetenv("XDS_CPU");
    int nl = levels_n();
    xds_cpu_level_set((xds_cpu_level)7); /* clamped to what the CPU has */
    CHECK((int)xds_cpu_level_get() == nl - 1);
    /* the summary of scripts/test.sh reads this line: which levels ran */
    printf("CPU levels:");
    for (int l = 0; l < nl; l++) printf(" %s", xds_cpu_level_name((xds_cpu_level)l));
    printf("\n");
    for (int l = nl; l <= XDS_CPU_AVX512; l++)
        TEST_SKIP("CPU level %s: this CPU lacks it, its kernels are not tested", xds_cpu_level_name((xds_cpu_level)l));
    test_quant_ref();
    test_act_quant();
    test_matmul();
    test_matmul_rows();
    test_matmul_multi();
    test_batch_invariance();
    test_q8r();
    test_w8a8();
    test_ops();
    test_roofline();
    TEST_MAIN_END();
}
