/*
 * bench_moe.h — the MoE part of `xds bench` (bench_moe.c): batched decode
 * steps against their roofline bound.
 */
#ifndef XDS_CLI_BENCH_MOE_H
#define XDS_CLI_BENCH_MOE_H

#include "model/model.h"

typedef struct xds_bench_moe_cfg {
    const char *model;
    int threads, reps, json;
    double bw, fma, int8;  /* measured bounds (GB/s, GFLOP/s, GOP/s) */
    const int *batches;    /* decode batch sizes */
    int n_batches;
    int ctx;               /* tokens of context each sequence has before the timed steps */
} xds_bench_moe_cfg;

/* Prints one line (or JSON object) per batch size; returns the status. */
xds_status xds_bench_moe(const xds_model *m, const xds_bench_moe_cfg *c);

#endif
