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

/* Bytes one decode step reads besides the routed experts and the KV cache:
 * every non-expert matrix as the step reads it (attention, MLA's absorbed-K
 * copy and only kv_b's V rows, dense FFNs, routers, shared experts, the LM
 * head). For a dense model: all its matrices. */
double xds_bench_nonexpert_bytes(const xds_model *m);

/* Bytes of all routed experts of all MoE layers (0 for a dense model). */
double xds_bench_expert_bytes_all(const xds_model *m);

/* Prints one line (or JSON object) per batch size; returns the status. */
xds_status xds_bench_moe(const xds_model *m, const xds_bench_moe_cfg *c);

#endif
