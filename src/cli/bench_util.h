/*
 * bench_util.h — clocks and a sort comparator shared by the benchmark
 * subcommands (bench.c, bench_moe.c).
 */
#ifndef XDS_CLI_BENCH_UTIL_H
#define XDS_CLI_BENCH_UTIL_H

#include <time.h>

/* Wall-clock seconds (monotonic). */
static inline double bench_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* CPU seconds of the whole process (all threads). */
static inline double bench_cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* qsort comparator for doubles, ascending. */
static inline int bench_cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

#endif
