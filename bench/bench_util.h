/*
 * bench_util.h — helpers shared by the bench programs: the CLI benchmarks'
 * clocks and comparator (cli/bench_util.h), and xorshift64 test data (the
 * generator and seed the benchmarks' figures were measured with).
 */
#ifndef XDS_BENCH_UTIL_H
#define XDS_BENCH_UTIL_H

#include <stdint.h>

#include "cli/bench_util.h" /* bench_now_s, bench_cpu_s, bench_cmp_d */

static uint64_t bench_rng_ = 88172645463325252ull;
/* uniform in [-1, 1) */
static inline float rnd_f(void) {
    bench_rng_ ^= bench_rng_ << 13;
    bench_rng_ ^= bench_rng_ >> 7;
    bench_rng_ ^= bench_rng_ << 17;
    return (float)((bench_rng_ >> 40) / 16777216.0 * 2.0 - 1.0);
}

#endif
