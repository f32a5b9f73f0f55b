/*
 * xccl_bench_common.h — what xccl_bench and its OpenMPI peer share, so they
 * move exactly the same payloads: the size list, the MoE configurations, the
 * routing generator (splitmix64; expert e lives on rank e / (E / n)), and
 * min/median statistics.
 */
#ifndef XCCL_BENCH_COMMON_H
#define XCCL_BENCH_COMMON_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BENCH_E      64 /* experts */
#define BENCH_TOPK   8
#define BENCH_REPS   5
#define BENCH_MAXT   256
#define BENCH_MAXH   7168

static const size_t bench_sizes[] = {8, 64, 512, 4096, 32768, 262144, 1 << 20, 4 << 20, 16 << 20, 64 << 20};
#define BENCH_NSIZES (sizeof bench_sizes / sizeof bench_sizes[0])
static const int bench_batches[] = {1, 8, 32, 128, 256};
static const int bench_hiddens[] = {2048, 7168};

static inline double bench_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline uint64_t bench_rand(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* top-k distinct expert ids [T][k] for `rank` in configuration cfg_id. */
static inline void bench_routing(int32_t *ids, int T, int k, int rank, int cfg_id) {
    uint64_t s = (uint64_t)rank * 7919u + (uint64_t)cfg_id * 104729u + 17;
    for (int t = 0; t < T; t++)
        for (int j = 0; j < k; j++) {
            int e, dup;
            do {
                e = (int)(bench_rand(&s) % BENCH_E);
                dup = 0;
                for (int q = 0; q < j; q++) dup |= ids[t * k + q] == e;
            } while (dup);
            ids[t * k + j] = e;
        }
}

static int bench_cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
static inline void bench_stats(double *v, int n, double *mn, double *med) {
    qsort(v, (size_t)n, sizeof *v, bench_cmp);
    *mn = v[0];
    *med = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

#endif
