/*
 * upcycle.h — model tools that write checkpoints: exact MoE upcycling of a
 * dense llama GGUF (upcycle.c) and random-weight MoE benchmark models with
 * real layer shapes (bench_model.c).
 */
#ifndef XDS_MODEL_UPCYCLE_H
#define XDS_MODEL_UPCYCLE_H

#include <stdint.h>

#include "base/status.h"

/* Write `out`: the dense llama GGUF `in` with every FFN copied into n_expert
 * identical experts (same quantized bytes), a random f32 router (seed) and
 * top-n_used routing with normalized weights. Greedy output equals the dense
 * model's for any routing. */
xds_status xds_model_upcycle(const char *in, const char *out, int n_expert, int n_used, uint64_t seed);

/* Random-weight benchmark checkpoints (Hugging Face directory: config.json +
 * model.safetensors is not used: GGUF keeps the quantized layouts).
 * `preset`: "qwen3-30b-a3b" or "deepseek-v3"; n_layer / n_expert override the
 * preset's (0: preset default, reduced to fit memory). Writes dir/config.json
 * and dir/model-*.gguf?  See bench_model.c for the exact layout. */
xds_status xds_model_bench_write(const char *preset, const char *out_dir, int n_layer, int n_expert,
                                 uint64_t seed);

#endif
