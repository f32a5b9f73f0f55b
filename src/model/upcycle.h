/*
 * upcycle.h — model tools that write checkpoints: exact MoE upcycling of a
 * dense llama GGUF (upcycle.c) and random-weight MoE benchmark models with
 * real layer shapes (bench_model.c).
 */
#ifndef XDS_MODEL_UPCYCLE_H
#define XDS_MODEL_UPCYCLE_H

#include <stdint.h>

#include "base/status.h"
#include "tensor/dtype.h"

/* Write `out`: the dense llama GGUF `in` with every FFN copied into n_expert
 * identical experts (same quantized bytes), a random f32 router (seed) and
 * top-n_used routing with normalized weights. Greedy output equals the dense
 * model's for any routing. */
xds_status xds_model_upcycle(const char *in, const char *out, int n_expert, int n_used, uint64_t seed);
/* The same with expert e's down projection scaled by
 * s_e = 1 + perturb (2e / (n_expert - 1) - 1), perturb in [0, 1) (0: the exact
 * upcycle above): the output then depends on the routing (deployment tests
 * use it to see a token sent to the wrong expert). The scales are recorded in
 * the file (xds.upcycle.down_scale, xds.upcycle.perturb); see upcycle.c. */
xds_status xds_model_upcycle_perturbed(const char *in, const char *out, int n_expert, int n_used, uint64_t seed,
                                       float perturb);

/* Random-weight MoE benchmark checkpoint with real layer shapes, as a GGUF
 * at `out` (llama.cpp qwen3moe / deepseek2 layout; see bench_model.c).
 * preset: "qwen3-30b-a3b", "deepseek-v3" or "qwen3-tiny" (the qwen3moe layout
 * at test sizes, hidden 256, 256 tokens); n_layer / n_expert <= 0 take the
 * preset's reduced defaults; type: q8_0 (as the released GGUFs), q4_0, q4_1,
 * f16 or bf16 for the matrices. */
xds_status xds_model_bench_write(const char *preset, const char *out, int n_layer, int n_expert, xds_dtype type,
                                 uint64_t seed);

#endif
