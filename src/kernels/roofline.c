/*
 * roofline.c — measured machine bounds (see roofline.h). The read loop keeps
 * 8 independent 16-byte accumulators per thread (a single dependent chain
 * would measure about half the real bandwidth); every pass is timed around a
 * pool run in which each thread streams its own contiguous slice.
 */
#include "kernels/roofline.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/kernels.h"

double xds_roof_fma_avx512(int64_t iters, float *sink);
double xds_roof_int8_avx512(int64_t iters, int *sink);
double xds_roof_fma_avx2(int64_t iters, float *sink);
double xds_roof_int8_avx2(int64_t iters, int *sink);

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef long long v2di __attribute__((vector_size(16)));

typedef struct {
    const uint8_t *buf;
    size_t slice;
    int n;
    volatile long long sink[64];
} bw_ctx;

static void bw_task(void *vc, int task, int thread) {
    bw_ctx *c = vc;
    const v2di *p = (const v2di *)(c->buf + (size_t)task * c->slice);
    size_t n = c->slice / sizeof(v2di);
    v2di a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0}, a6 = {0}, a7 = {0};
    for (size_t i = 0; i + 8 <= n; i += 8) {
        a0 += p[i];
        a1 += p[i + 1];
        a2 += p[i + 2];
        a3 += p[i + 3];
        a4 += p[i + 4];
        a5 += p[i + 5];
        a6 += p[i + 6];
        a7 += p[i + 7];
    }
    v2di s = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7));
    c->sink[task & 63] = s[0] + s[1];
}

double xds_measure_read_bw(xds_pool *pool, size_t bytes) {
    if (bytes == 0) bytes = (size_t)256 << 20;
    int n = xds_pool_size(pool);
    size_t slice = (bytes / (size_t)n) & ~(size_t)4095;
    uint8_t *buf = aligned_alloc(4096, slice * (size_t)n);
    if (!buf) return -1.0;
    memset(buf, 1, slice * (size_t)n); /* touch every page */
    bw_ctx c = {.buf = buf, .slice = slice, .n = n};
    double best = 1e30;
    for (int pass = 0; pass < 6; pass++) { /* pass 0 warms up */
        double t0 = now_s();
        xds_pool_run(pool, bw_task, &c, n);
        double dt = now_s() - t0;
        if (pass > 0 && dt < best) best = dt;
    }
    free(buf);
    return (double)(slice * (size_t)n) / best / 1e9;
}

typedef struct {
    int kind; /* 0 fma, 1 int8 */
    xds_cpu_level level;
    int64_t iters;
    double ops[64];
    volatile float fsink;
    volatile int isink;
} peak_ctx;

static double peak_generic(int kind, int64_t iters, peak_ctx *c) {
    if (kind == 0) {
        float a[16];
        for (int k = 0; k < 16; k++) a[k] = (float)k;
        for (int64_t i = 0; i < iters; i++)
            for (int k = 0; k < 16; k++) a[k] = a[k] * 0.999999f + 1e-7f;
        c->fsink = a[0] + a[15];
        return (double)iters * 16 * 2;
    }
    int a[16] = {0};
    for (int64_t i = 0; i < iters; i++)
        for (int k = 0; k < 16; k++) a[k] += (int8_t)(k + i) * 3;
    c->isink = a[0] + a[15];
    return (double)iters * 16 * 2;
}

static void peak_task(void *vc, int task, int thread) {
    peak_ctx *c = vc;
    double ops = 0;
    float fs = 0;
    int is = 0;
#if defined(__x86_64__)
    if (c->level == XDS_CPU_AVX512)
        ops = c->kind == 0 ? xds_roof_fma_avx512(c->iters, &fs) : xds_roof_int8_avx512(c->iters, &is);
    else if (c->level == XDS_CPU_AVX2)
        ops = c->kind == 0 ? xds_roof_fma_avx2(c->iters, &fs) : xds_roof_int8_avx2(c->iters, &is);
    else
#endif
        ops = peak_generic(c->kind, c->iters, c);
    c->fsink = fs;
    c->isink = is;
    c->ops[task & 63] = ops;
}

static double measure_peak(xds_pool *pool, int kind) {
    int n = xds_pool_size(pool);
    peak_ctx c = {.kind = kind, .level = xds_cpu_level_get(), .iters = 2000000};
    double best = 0;
    for (int pass = 0; pass < 4; pass++) {
        double t0 = now_s();
        xds_pool_run(pool, peak_task, &c, n);
        double dt = now_s() - t0;
        double ops = 0;
        for (int i = 0; i < n && i < 64; i++) ops += c.ops[i];
        if (pass > 0 && ops / dt > best) best = ops / dt;
    }
    return best / 1e9;
}

double xds_measure_fma_peak(xds_pool *pool) { return measure_peak(pool, 0); }
double xds_measure_int8_peak(xds_pool *pool) { return measure_peak(pool, 1); }
