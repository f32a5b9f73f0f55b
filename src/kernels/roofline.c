/*
 * roofline.c — measured machine bounds (see roofline.h). The read loop keeps
 * 8 independent 16-byte accumulators per thread (a single dependent chain
 * would measure about half the real bandwidth); every pass is timed around a
 * pool run in which each thread streams its own contiguous slice.
 * The bandwidth buffer is anonymous memory with transparent huge pages asked
 * for (madvise), like the repacked weights the steps read.
 */
#include "kernels/roofline.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
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

typedef unsigned long long v2di __attribute__((vector_size(16))); /* unsigned: wrapping adds */

/* Each pool thread takes part once per run (a thread that claims a second
 * task skips it): it waits at a start barrier (up to 200 ms, so that a
 * sleeping worker is not raced by the caller claiming every task), then
 * does its own share and records its start/end; the figure is the total
 * work over (last end - first start). */
#define ROOF_MAX_THREADS 64
typedef struct {
    int n;
    _Atomic int arrived;
    _Atomic unsigned long long joined; /* bit per thread */
    double t0[ROOF_MAX_THREADS], t1[ROOF_MAX_THREADS], work[ROOF_MAX_THREADS];
    /* bandwidth */
    const uint8_t *buf;
    size_t slice;
    /* peaks */
    int kind; /* 0 fma, 1 int8 */
    xds_cpu_level level;
    int64_t iters;
    volatile long long sink[ROOF_MAX_THREADS];
    volatile float fsink;
    volatile int isink;
} roof_ctx;

static int roof_join(roof_ctx *c, int thread) {
    if (thread >= ROOF_MAX_THREADS) return 0;
    unsigned long long bit = 1ull << thread;
    if (atomic_fetch_or(&c->joined, bit) & bit) return 0;
    atomic_fetch_add(&c->arrived, 1);
    double t = now_s();
    while (atomic_load(&c->arrived) < c->n && now_s() - t < 0.2) {
    }
    c->t0[thread] = now_s();
    return 1;
}

static void bw_task(void *vc, int task, int thread) {
    roof_ctx *c = vc;
    if (!roof_join(c, thread)) return;
    const v2di *p = (const v2di *)(c->buf + (size_t)thread * c->slice);
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
    c->sink[thread] = (long long)(s[0] ^ s[1]);
    c->work[thread] = (double)c->slice;
    c->t1[thread] = now_s();
}

/* Run one measured pass; returns work per second (0 if nobody ran). */
static double roof_pass(xds_pool *pool, roof_ctx *c, xds_pool_fn fn) {
    atomic_store(&c->arrived, 0);
    atomic_store(&c->joined, 0ull);
    for (int i = 0; i < ROOF_MAX_THREADS; i++) c->work[i] = 0;
    xds_pool_run(pool, fn, c, c->n);
    double first = 1e300, last = 0, work = 0;
    for (int i = 0; i < c->n && i < ROOF_MAX_THREADS; i++) {
        if (c->work[i] <= 0) continue;
        work += c->work[i];
        if (c->t0[i] < first) first = c->t0[i];
        if (c->t1[i] > last) last = c->t1[i];
    }
    return work > 0 && last > first ? work / (last - first) : 0;
}

double xds_measure_read_bw(xds_pool *pool, size_t bytes) {
    if (bytes == 0) bytes = (size_t)256 << 20;
    int n = xds_pool_size(pool);
    if (n > ROOF_MAX_THREADS) n = ROOF_MAX_THREADS;
    size_t slice = (bytes / (size_t)n) & ~(size_t)4095;
    /* 2 MiB-aligned anonymous memory with transparent huge pages asked for:
     * the best streaming case this machine offers (repacked weights live in
     * the same kind of memory), so the bound is not flattered by a slow probe. */
    size_t total = slice * (size_t)n, align = (size_t)2 << 20;
    uint8_t *raw = mmap(NULL, total + align, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    roof_ctx *c = calloc(1, sizeof *c);
    if (raw == MAP_FAILED || !c) {
        if (raw != MAP_FAILED) munmap(raw, total + align);
        free(c);
        return -1.0;
    }
    uint8_t *buf = (uint8_t *)(((uintptr_t)raw + align - 1) & ~(uintptr_t)(align - 1));
#ifdef MADV_HUGEPAGE
    madvise(buf, total, MADV_HUGEPAGE); /* advice only: 4 KiB pages if refused */
#endif
    memset(buf, 1, slice * (size_t)n); /* touch every page */
    c->n = n;
    c->buf = buf;
    c->slice = slice;
    double best = 0;
    for (int pass = 0; pass < 6; pass++) { /* pass 0 warms up */
        double r = roof_pass(pool, c, bw_task);
        if (pass > 0 && r > best) best = r;
    }
    munmap(raw, total + align);
    free(c);
    return best / 1e9;
}

static double peak_generic(int kind, int64_t iters, roof_ctx *c) {
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
    roof_ctx *c = vc;
    if (!roof_join(c, thread)) return;
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
    c->work[thread] = ops;
    c->t1[thread] = now_s();
}

static double measure_peak(xds_pool *pool, int kind) {
    roof_ctx *c = calloc(1, sizeof *c);
    if (!c) return -1.0;
    c->n = xds_pool_size(pool) < ROOF_MAX_THREADS ? xds_pool_size(pool) : ROOF_MAX_THREADS;
    c->kind = kind;
    c->level = xds_cpu_level_get();
    c->iters = 2000000;
    double best = 0;
    for (int pass = 0; pass < 4; pass++) {
        double r = roof_pass(pool, c, peak_task);
        if (pass > 0 && r > best) best = r;
    }
    free(c);
    return best / 1e9;
}

double xds_measure_fma_peak(xds_pool *pool) { return measure_peak(pool, 0); }
double xds_measure_int8_peak(xds_pool *pool) { return measure_peak(pool, 1); }
