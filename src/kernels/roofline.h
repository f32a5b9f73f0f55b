/*
 * roofline.h — the machine's bounds, measured in the running process:
 * streaming read bandwidth, f32 FMA peak and int8 dot-product peak, all with
 * the threads of a pool. Benchmarks state their figures as fractions of these.
 */
#ifndef XDS_KERNELS_ROOFLINE_H
#define XDS_KERNELS_ROOFLINE_H

#include <stddef.h>

#include "base/threadpool.h"

/* Read bandwidth in GB/s (1e9 B/s): every pool thread streams its slice of a
 * `bytes` buffer (much larger than the LLC; 0 = 256 MiB) with several
 * independent accumulators; best of several passes. <= 0 on allocation failure. */
double xds_measure_read_bw(xds_pool *pool, size_t bytes);
/* f32 FMA peak in GFLOP/s (2 flops per lane per FMA), independent chains,
 * widest vectors of the current CPU level, all pool threads. */
double xds_measure_fma_peak(xds_pool *pool);
/* int8 dot-product peak in GOP/s (2 ops per int8 multiply-add): VPDPBUSD on
 * AVX-512 VNNI, VPMADDUBSW+VPMADDWD on AVX2, scalar otherwise. */
double xds_measure_int8_peak(xds_pool *pool);

#endif
