/*
 * bench_util.h — small helpers shared by the bench programs: a monotonic
 * clock, a double comparator for qsort, and xorshift64 test data (the
 * generator and seed the benchmarks' figures were measured with).
 */
#ifndef XDS_BENCH_UTIL_H
#define XDS_BENCH_UTIL_H

#include <stdint.h>
#include <time.h>

static inline double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static inline int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static uint64_t bench_rng_ = 88172645463325252ull;
/* uniform in [-1, 1) */
static inline float rnd_f(void) {
    bench_rng_ ^= bench_rng_ << 13;
    bench_rng_ ^= bench_rng_ >> 7;
    bench_rng_ ^= bench_rng_ << 17;
    return (float)((bench_rng_ >> 40) / 16777216.0 * 2.0 - 1.0);
}

#endif
