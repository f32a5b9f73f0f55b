/*
 * bench_q8r_stream.c — the Q8_0_R16 kernel streaming its weights from DRAM,
 * against a plain read loop over the same memory in the same round.
 *
 * One 1 GiB anonymous mapping (2 MiB aligned, MADV_HUGEPAGE: where the
 * repacked model weights live) holds Q8_0_R16 groups of n_in-wide rows. Per
 * round and token count T, every thread (one per CPU, pinned) first sums
 * its share of one half of the buffer with 64-byte loads, then runs
 * xds_q8r_gemm_avx512 over its share of the other half, 64 groups per call
 * (1024 rows), T tokens. The VM this was written on changes its memory
 * bandwidth from one minute to the next (~35 <-> ~60 GB/s), so the figure
 * that means something is the per-round ratio kernel / read, printed as a
 * median with the medians of both rates.
 * Usage: bench_q8r_stream [rounds (default 8)] [n_in (default 7168)]
 * AVX-512 VNNI only (prints a message and exits 0 otherwise).
 */
#define _GNU_SOURCE
#include <immintrin.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "kernels/kern_impl.h"
#include "kernels/kernels.h"
#include "bench_util.h"

#define MAX_THREADS 8
#define MAX_ROUNDS 64
#define GROUPS_PER_CALL 64

static const int TOKENS[] = {1, 2, 3, 4, 8, 12};
#define N_T ((int)(sizeof TOKENS / sizeof TOKENS[0]))

typedef struct {
    uint8_t *w;        /* the mapping, n_groups groups of gbytes */
    size_t gbytes;     /* bytes per group of 16 rows */
    int64_t nb;        /* blocks per row */
    const uint8_t *xq; /* TOKENS max rows of quantized activations */
    size_t xs;
    int n_thr;
    /* the current pass */
    int kernel, T;
    int64_t g0, ng; /* groups of the half being read */
    int quit;
    pthread_barrier_t go, done;
    double t0[MAX_THREADS], t1[MAX_THREADS];
    long long sink[MAX_THREADS];
} ctx_t;

typedef struct {
    ctx_t *c;
    int id;
} arg_t;

/* the plain read loop: n 64-byte lines with 4 independent sums (the bench
 * is built without ISA flags; this function alone is AVX-512) */
__attribute__((target("avx512f"))) static long long read_sum(const uint8_t *p, size_t n) {
    const __m512i *v = (const __m512i *)p;
    __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = 0; i + 4 <= n; i += 4) {
        s0 = _mm512_add_epi64(s0, v[i]);
        s1 = _mm512_add_epi64(s1, v[i + 1]);
        s2 = _mm512_add_epi64(s2, v[i + 2]);
        s3 = _mm512_add_epi64(s3, v[i + 3]);
    }
    return _mm512_reduce_add_epi64(_mm512_add_epi64(_mm512_add_epi64(s0, s1), _mm512_add_epi64(s2, s3)));
}

static void *worker(void *p) {
    arg_t *a = p;
    ctx_t *c = a->c;
    cpu_set_t cs;
    CPU_ZERO(&cs);
    CPU_SET(a->id, &cs);
    pthread_setaffinity_np(pthread_self(), sizeof cs, &cs); /* advice: runs unpinned if refused */
    float *y = aligned_alloc(64, sizeof(float) * GROUPS_PER_CALL * 16 * 16);
    for (;;) {
        pthread_barrier_wait(&c->go);
        if (c->quit) break;
        int64_t per = c->ng / c->n_thr, g0 = c->g0 + per * a->id, g1 = a->id == c->n_thr - 1 ? c->g0 + c->ng : g0 + per;
        double t0 = bench_now_s();
        if (c->kernel) {
            for (int64_t g = g0; g < g1; g += GROUPS_PER_CALL) {
                int64_t n = g1 - g < GROUPS_PER_CALL ? g1 - g : GROUPS_PER_CALL;
                xds_q8r_gemm_avx512(c->w + g * c->gbytes, 0, n * 16, c->nb, c->xq, c->xs, c->T, y, n * 16);
            }
        } else {
            c->sink[a->id] = read_sum(c->w + g0 * c->gbytes, (size_t)(g1 - g0) * c->gbytes / 64);
        }
        c->t0[a->id] = t0;
        c->t1[a->id] = bench_now_s();
        pthread_barrier_wait(&c->done);
    }
    free(y);
    return NULL;
}

/* One pass over half h of the buffer; returns GB/s of weights read. */
static double pass(ctx_t *c, int kernel, int T, int half, int64_t n_groups) {
    c->kernel = kernel, c->T = T;
    c->ng = n_groups / 2, c->g0 = half ? n_groups / 2 : 0;
    pthread_barrier_wait(&c->go);
    pthread_barrier_wait(&c->done);
    double t0 = c->t0[0], t1 = c->t1[0];
    for (int i = 1; i < c->n_thr; i++) {
        if (c->t0[i] < t0) t0 = c->t0[i];
        if (c->t1[i] > t1) t1 = c->t1[i];
    }
    return (double)c->ng * c->gbytes / (t1 - t0) * 1e-9;
}

static double median(double *v, int n) {
    qsort(v, n, sizeof(double), bench_cmp_d);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int main(int argc, char **argv) {
    if (xds_cpu_level_get() < XDS_CPU_AVX512) {
        printf("bench_q8r_stream: needs AVX-512 VNNI, skipped\n");
        return 0;
    }
    int rounds = argc > 1 ? atoi(argv[1]) : 8;
    int64_t n_in = argc > 2 ? atoll(argv[2]) : 7168;
    if (rounds < 1 || rounds > MAX_ROUNDS || n_in < 32 || n_in % 32) {
        fprintf(stderr, "usage: bench_q8r_stream [rounds 1..%d] [n_in, a multiple of 32]\n", MAX_ROUNDS);
        return 2;
    }
    ctx_t c = {0};
    c.nb = n_in / 32;
    c.gbytes = (size_t)c.nb * XDS_Q8R_GB;
    const size_t huge = (size_t)2 << 20;
    int64_t n_groups = (int64_t)(((size_t)1 << 30) / c.gbytes) & ~(int64_t)1;
    size_t bytes = (size_t)n_groups * c.gbytes;
    uint8_t *raw = mmap(NULL, bytes + huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) {
        perror("bench_q8r_stream: mmap");
        return 1;
    }
    c.w = (uint8_t *)(((uintptr_t)raw + huge - 1) & ~(uintptr_t)(huge - 1));
    madvise(c.w, bytes, MADV_HUGEPAGE);
    /* quants: any bytes; scales: small f16 values so the sums stay finite */
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < bytes; i += 8) {
        rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
        memcpy(c.w + i, &rng, 8);
    }
    for (int64_t g = 0; g < n_groups; g++)
        for (int64_t b = 0; b < c.nb; b++)
            for (int r = 0; r < 16; r++) {
                uint16_t h = 0x2000 + (uint16_t)(r * 7); /* ~2^-7 */
                memcpy(c.w + g * c.gbytes + b * XDS_Q8R_GB + 512 + 2 * r, &h, 2);
            }
    int t_max = TOKENS[N_T - 1];
    c.xs = xq_row_bytes(c.nb);
    uint8_t *xq = aligned_alloc(64, c.xs * t_max);
    float *x = malloc(sizeof(float) * n_in);
    for (int t = 0; t < t_max; t++) {
        for (int64_t i = 0; i < n_in; i++) x[i] = (float)((i * 7 + t * 13) % 17) - 8.0f;
        xds_act_quant_avx512(x, c.nb, xq + t * c.xs);
    }
    c.xq = xq;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    c.n_thr = ncpu < 1 ? 1 : ncpu > MAX_THREADS ? MAX_THREADS : (int)ncpu;
    pthread_barrier_init(&c.go, NULL, c.n_thr + 1);
    pthread_barrier_init(&c.done, NULL, c.n_thr + 1);
    pthread_t th[MAX_THREADS];
    arg_t args[MAX_THREADS];
    for (int i = 0; i < c.n_thr; i++) {
        args[i] = (arg_t){&c, i};
        pthread_create(&th[i], NULL, worker, &args[i]);
    }
    printf("Q8_0_R16 kernel streaming %.0f MiB per pass (rows of %lld, huge pages asked for), %d threads, %d rounds\n",
           bytes / 2 / 1048576.0, (long long)n_in, c.n_thr, rounds);
    printf("%6s %14s %16s %14s %14s\n", "tokens", "read GB/s", "kernel GB/s", "kernel/read", "kernel GOP/s");
    double rd[N_T][MAX_ROUNDS], kn[N_T][MAX_ROUNDS], ra[N_T][MAX_ROUNDS];
    int half = 0;
    for (int r = 0; r < rounds; r++)
        for (int k = 0; k < N_T; k++) {
            pass(&c, 0, 0, half, n_groups / 8 * 2); /* warm the threads up */
            rd[k][r] = pass(&c, 0, 0, half, n_groups);
            half ^= 1;
            kn[k][r] = pass(&c, 1, TOKENS[k], half, n_groups);
            half ^= 1;
            ra[k][r] = kn[k][r] / rd[k][r];
        }
    for (int k = 0; k < N_T; k++) {
        double mk = median(kn[k], rounds);
        /* 2 ops per weight per token; the bytes carry 34 per 32 weights */
        printf("%6d %14.1f %16.1f %14.2f %14.1f\n", TOKENS[k], median(rd[k], rounds), mk, median(ra[k], rounds),
               mk * 32.0 / 34.0 * 2.0 * TOKENS[k]);
    }
    c.quit = 1;
    pthread_barrier_wait(&c.go);
    for (int i = 0; i < c.n_thr; i++) pthread_join(th[i], NULL);
    munmap(raw, bytes + huge);
    free(xq), free(x);
    return 0;
}
