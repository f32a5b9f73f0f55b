/*
 * model.h — model architectures as units, the model loader, and the paged KV
 * cache.
 *
 * A model is loaded from a GGUF file or a Hugging Face directory (through
 * format/weights.h); its weights stay views into the read-only mappings
 * (xds_tensor), only the small norm vectors are converted to owned f32
 * copies. Every tensor's shape is checked against the configuration at load
 * time, so the units below never meet a mis-shaped weight.
 *
 * The forward pass is a sequence of units the caller composes (DESIGN §3.1):
 *   embed -> for each layer: attention(layer), ffn(layer) -> lm_head
 * xds_model_forward() composes them for colocated execution; a disaggregated
 * deployment calls the same units in different processes. There is one
 * implementation of the math.
 *
 * Units are batched over tokens that may belong to different sequences
 * (continuous batching): a batch is n_tok tokens, each with its token id, its
 * position in its sequence and its sequence slot in the KV cache. Activations
 * are f32 row-major (n_tok, n_embd).
 *
 * The KV cache is paged: a pool of blocks of block_size tokens, and per
 * sequence slot a block table mapping position p to block
 * table[p / block_size], offset p % block_size. Blocks are reference counted
 * so that an engine can share prefix blocks between sequences. Before a batch
 * runs, every sequence's table must cover all positions of its tokens
 * (xds_kv_seq_reserve). The attention unit first writes the K/V of all batch
 * tokens, then each token attends over positions 0..pos of its own sequence
 * (earlier positions must have been written by earlier batches or this one).
 *
 * Invariants: a model is immutable after load and may be shared by several
 * contexts and threads; a context (scratch + thread pool) is used by one
 * thread at a time; no hidden globals.
 */
#ifndef XDS_MODEL_MODEL_H
#define XDS_MODEL_MODEL_H

#include <stdint.h>

#include "base/status.h"
#include "base/threadpool.h"
#include "format/weights.h"
#include "tensor/dtype.h"

/* ------------------------------------------------------------------------ */
/* Configuration                                                             */

typedef enum xds_arch {
    XDS_ARCH_LLAMA = 0, /* GGUF "llama", HF LlamaForCausalLM ("llama") */
    XDS_ARCH_QWEN3_MOE,   /* HF "qwen3_moe" (model/arch_moe.c) */
    XDS_ARCH_MIXTRAL,     /* HF "mixtral"; GGUF "llama" with expert_count > 0 */
    XDS_ARCH_DEEPSEEK_V3, /* HF "deepseek_v3" / "kimi_k2" (MLA, model/mla.c) */
    XDS_ARCH_COUNT
} xds_arch;

const char *xds_arch_name(xds_arch a);

typedef enum xds_rope_scaling_type {
    XDS_ROPE_SCALING_NONE = 0,
    XDS_ROPE_SCALING_LINEAR, /* inv_freq /= factor */
    XDS_ROPE_SCALING_LLAMA3, /* Llama 3.1 piecewise smoothing */
    XDS_ROPE_SCALING_YARN,   /* YaRN ramp + attention factor on cos/sin */
} xds_rope_scaling_type;

typedef enum xds_rope_mode {
    /* Rotate adjacent pairs (x[2i], x[2i+1]): GGML "normal" rope. GGUF llama
     * checkpoints have Q/K rows permuted by the converter for this mode. */
    XDS_ROPE_MODE_NORM = 0,
    /* Rotate halves (x[i], x[i + rope_dim/2]): HF rotate_half / GGML NeoX. */
    XDS_ROPE_MODE_NEOX = 1,
} xds_rope_mode;

typedef struct xds_rope_scaling {
    xds_rope_scaling_type type;
    float factor;               /* linear, llama3, yarn */
    float low_freq_factor;      /* llama3 */
    float high_freq_factor;     /* llama3 */
    int original_max_pos;       /* llama3, yarn: original_max_position_embeddings */
    float beta_fast, beta_slow; /* yarn (defaults 32, 1) */
    float mscale;               /* yarn (0 = absent) */
    float mscale_all_dim;       /* yarn (0 = absent) */
    float attn_factor;          /* yarn: multiplies cos/sin (0 = derive from factor) */
    int truncate;               /* yarn: floor/ceil the correction range (default 1) */
} xds_rope_scaling;

/* Mixture-of-experts fields (model/moe.h; all 0 for a dense model). */
typedef enum xds_moe_scoring {
    XDS_MOE_SOFTMAX = 0, /* softmax over all experts, top-k (qwen3_moe, mixtral) */
    XDS_MOE_SIGMOID = 1, /* sigmoid + correction bias for selection (deepseek_v3) */
} xds_moe_scoring;

typedef struct xds_moe_config {
    int n_expert;        /* routed experts per MoE layer (0: dense model) */
    int n_expert_used;   /* top-k experts per token */
    int n_ff_exp;        /* intermediate size of one expert */
    int n_shared;        /* shared experts (one FFN of n_shared * n_ff_exp), 0: none */
    int n_group;         /* expert groups for group-limited selection (1: none) */
    int topk_group;      /* groups kept per token */
    int norm_topk_prob;  /* renormalize the top-k weights to sum 1 */
    float routed_scale;  /* routed_scaling_factor (1 unless deepseek) */
    xds_moe_scoring scoring;
    int first_dense;     /* first_k_dense_replace: layers [0, first_dense) are dense */
    int sparse_step;     /* qwen3_moe decoder_sparse_step (1: every layer) */
    uint64_t dense_mask; /* qwen3_moe mlp_only_layers (bit l: layer l dense), l < 64 */
    int n_mtp;           /* num_nextn_predict_layers (weights loaded, not run) */
} xds_moe_config;

/* DeepSeek multi-head latent attention (model/mla.h; 0 unless deepseek_v3). */
typedef struct xds_mla_config {
    int q_lora_rank;  /* 0: plain q_proj */
    int kv_lora_rank; /* latent width; the KV cache stores latent + rope key */
    int nope_dim;     /* qk_nope_head_dim */
    int v_dim;        /* v_head_dim (rope part: rope_dim; head_dim = nope + rope) */
} xds_mla_config;

typedef struct xds_model_config {
    xds_arch arch;
    int n_vocab;    /* vocabulary size (rows of token_embd) */
    int n_embd;     /* hidden size */
    int n_layer;    /* transformer blocks */
    int n_head;     /* query heads */
    int n_head_kv;  /* key/value heads (GQA: n_head % n_head_kv == 0) */
    int head_dim;   /* per-head dimension (not necessarily n_embd / n_head) */
    int n_ff;       /* FFN intermediate size */
    float rms_eps;  /* RMSNorm epsilon */
    float rope_theta;       /* RoPE base */
    int rope_dim;           /* rotated dims per head (<= head_dim, even) */
    xds_rope_mode rope_mode;
    xds_rope_scaling rope_scaling;
    int max_ctx;            /* max_position_embeddings / context_length */
    int tied_embd;          /* 1: LM head reuses token_embd */
    int32_t bos_id;         /* -1 if unknown */
    int32_t eos_id;         /* -1 if unknown */
    int qk_norm;            /* qwen3_moe: per-head RMSNorm of q and k before RoPE */
    xds_moe_config moe;
    xds_mla_config mla;
} xds_model_config;

/* ------------------------------------------------------------------------ */
/* Weights                                                                   */

/* One transformer block of a dense llama model. Matrices are GGUF-style
 * views: ne[0] = input dim (contiguous), ne[1] = output dim. */
typedef struct xds_layer_weights {
    float *attn_norm;     /* (n_embd) owned f32 */
    xds_tensor wq;        /* ne = (n_embd, n_head * head_dim) */
    xds_tensor wk;        /* ne = (n_embd, n_head_kv * head_dim) */
    xds_tensor wv;        /* ne = (n_embd, n_head_kv * head_dim) */
    xds_tensor wo;        /* ne = (n_head * head_dim, n_embd) */
    float *ffn_norm;      /* (n_embd) owned f32 */
    xds_tensor w_gate;    /* ne = (n_embd, n_ff) */
    xds_tensor w_up;      /* ne = (n_embd, n_ff) */
    xds_tensor w_down;    /* ne = (n_ff, n_embd) */
    float *q_norm;        /* (head_dim) owned f32, qk_norm models only, else NULL */
    float *k_norm;        /* (head_dim) owned f32, qk_norm models only, else NULL */
    struct xds_moe_layer *moe; /* MoE FFN (model/moe.h); NULL: dense FFN above */
    struct xds_mla_layer *mla; /* MLA attention (model/mla.h); NULL: wq/wk/wv/wo above */
} xds_layer_weights;

typedef struct xds_model {
    xds_model_config cfg;
    xds_weights *weights;      /* owned; the mappings all views point into */
    xds_tensor tok_embd;       /* ne = (n_embd, n_vocab) */
    xds_tensor output;         /* ne = (n_embd, n_vocab); == tok_embd when tied */
    float *output_norm;        /* (n_embd) owned f32 */
    xds_layer_weights *layers; /* (n_layer) */
    float *rope_inv_freq;      /* (rope_dim / 2) owned, scaling applied */
    float rope_attn_factor;    /* multiplies cos/sin (1 unless yarn) */
    float attn_scale;          /* softmax scale, 1/sqrt(head_dim) */
    struct xds_mtp_layer *mtp; /* (cfg.moe.n_mtp) next-token-prediction layers, loaded only */
    void *repacked;            /* owned anonymous mapping of the Q8_0_R16 / W8A8 copies (model/repack.c), or NULL */
    size_t repacked_bytes;
    int quantize;              /* xds_quantize: what the repack pass converts to (from xds_model_opts) */
} xds_model;

/* Load-time conversion of the matmul weights (xds_model_opts.quantize). */
typedef enum {
    XDS_QUANTIZE_NONE = 0, /* as in the file (Q8_0 -> Q8_0_R16 on AVX-512) */
    XDS_QUANTIZE_W8A8 = 1, /* every matmul weight -> W8A8 (int8, per-row scale; per-token int8 activations) */
} xds_quantize;

/* "w8a8" / "none" -> *out; -1 if the name is not one of them. */
int xds_quantize_parse(const char *name, int *out);

typedef struct xds_model_opts {
    /* Called during loading with frac in [0, 1] (NULL: none). */
    void (*progress)(void *user, float frac);
    void *progress_user;
    /* 1: read every weight page once while loading so the first forward pass
     * does not pay page faults (and progress is meaningful). */
    int prefault;
    /* 1: leave every weight in the file's layout; the caller may then call
     * xds_model_repack_units once for the units it runs (a deployment's
     * expert worker or attention rank). 0: repack the whole model. */
    int no_repack;
    /* xds_quantize: XDS_QUANTIZE_W8A8 converts every matmul weight (any
     * type the file holds) to W8A8 in the repack pass, at every CPU level. */
    int quantize;
} xds_model_opts;

/* Load a GGUF file or Hugging Face directory. opts may be NULL.
 * Errors: XDS_ERR_UNSUPPORTED naming an unknown architecture, XDS_ERR_NOT_FOUND
 * naming a missing tensor or config field, XDS_ERR_FORMAT naming a tensor whose
 * shape disagrees with the config, plus the format readers' errors. */
xds_status xds_model_load(const char *path, const xds_model_opts *opts, xds_model **out);
void xds_model_free(xds_model *m);

/* Repack (model/repack.c: Q8_0 -> Q8_0_R16 in one anonymous huge-page
 * mapping; a no-op unless the CPU level is AVX-512 and XDS_REPACK != "0";
 * with m->quantize == XDS_QUANTIZE_W8A8 every matmul weight -> W8A8, at any
 * level)
 * only the weights of the units this process runs, so that the processes of
 * one deployment on one host do not each hold a copy of the whole model.
 * dense: the non-routed weights (attention, dense FFN, router, shared
 * experts, LM head); experts: a flag per routed expert (cfg.moe.n_expert),
 * NULL = none. For a model loaded with no_repack; at most once per model. */
xds_status xds_model_repack_units(xds_model *m, int dense, const uint8_t *experts);
/* The same for every unit (what xds_model_load does without no_repack). */
xds_status xds_model_repack(xds_model *m);
/* Share of the repacked copies' resident memory in huge pages (from
 * /proc/self/smaps; for benchmarks), or -1 if nothing is repacked or the
 * file is unreadable. */
double xds_model_repack_huge_share(const xds_model *m);

/* Bytes of weights one decode step reads (all matrices + the LM head). */
size_t xds_model_weight_bytes(const xds_model *m);

/* ------------------------------------------------------------------------ */
/* Paged KV cache                                                            */

typedef struct xds_kv_seq {
    int32_t *blocks; /* (cap) block ids; the first n_blocks are valid */
    int n_blocks;
    int cap;
} xds_kv_seq;

typedef struct xds_kv_cache {
    int n_layer;
    int k_dim;       /* floats of K per token per layer (n_head_kv * head_dim) */
    int v_dim;       /* floats of V per token per layer */
    int block_size;  /* tokens per block */
    int n_blocks;    /* blocks in the pool */
    int max_seqs;    /* sequence slots */
    float *k;        /* (n_layer, n_blocks, block_size, k_dim) */
    float *v;        /* (n_layer, n_blocks, block_size, v_dim) */
    uint16_t *ref;   /* (n_blocks) reference counts; 0 = free */
    int32_t *free;   /* (n_blocks) stack of free block ids */
    int n_free;
    xds_kv_seq *seqs; /* (max_seqs) block tables */
} xds_kv_cache;

xds_status xds_kv_cache_create(int n_layer, int k_dim, int v_dim, int n_blocks, int block_size,
                               int max_seqs, xds_kv_cache **out);
/* Floats per token per layer of the cache for model m: K and V rows of
 * n_head_kv * head_dim, or for MLA one row of kv_lora_rank + rope_dim
 * (latent, rope key) and no V (v_dim 0). */
void xds_model_kv_dims(const xds_model *m, int *k_dim, int *v_dim);
/* A cache for model m holding n_ctx_total tokens in all (rounded up to blocks). */
xds_status xds_model_kv_cache_create(const xds_model *m, int n_ctx_total, int block_size,
                                     int max_seqs, xds_kv_cache **out);
void xds_kv_cache_free(xds_kv_cache *kv);

/* Block allocator: returns a block id with ref 1, or -1 when the pool is empty. */
int32_t xds_kv_block_alloc(xds_kv_cache *kv);
void xds_kv_block_ref(xds_kv_cache *kv, int32_t b);
void xds_kv_block_unref(xds_kv_cache *kv, int32_t b); /* back to the pool at 0 */

/* Make seq's table cover positions [0, n_pos), allocating blocks as needed.
 * XDS_ERR_NOMEM (cache full) leaves the table unchanged. */
xds_status xds_kv_seq_reserve(xds_kv_cache *kv, int seq, int n_pos);
/* Append an existing block (its ref is taken) — for shared prefix blocks. */
xds_status xds_kv_seq_append_block(xds_kv_cache *kv, int seq, int32_t block);
/* Keep positions [0, n_pos) only; unref blocks no longer needed. */
void xds_kv_seq_truncate(xds_kv_cache *kv, int seq, int n_pos);
/* Positions seq's table covers (n_blocks * block_size). */
int xds_kv_seq_capacity(const xds_kv_cache *kv, int seq);

/* Set seq's table to blocks[0, n) without touching any reference count: for
 * an engine that owns block allocation itself (engine/kv_block.h) and only
 * uses this cache's memory; it must then not mix in the allocator above. */
xds_status xds_kv_seq_set_blocks(xds_kv_cache *kv, int seq, const int32_t *blocks, int n);

/* K / V rows of (layer, seq, pos): k_dim / v_dim floats. pos must be covered. */
float *xds_kv_k(xds_kv_cache *kv, int layer, int seq, int pos);
float *xds_kv_v(xds_kv_cache *kv, int layer, int seq, int pos);

/* ------------------------------------------------------------------------ */
/* Context and units                                                         */

typedef struct xds_batch {
    int n_tok;
    const int32_t *tokens; /* (n_tok) token ids */
    const int32_t *pos;    /* (n_tok) position of each token in its sequence */
    const int32_t *seq;    /* (n_tok) sequence slot of each token in the KV cache */
} xds_batch;

/* Scratch buffers sized for up to max_tok tokens per batch, the thread pool
 * (n_threads, counting the caller), and the KV cache the units write (borrowed;
 * may be NULL for a context that runs only embed / ffn / lm_head). */
typedef struct xds_model_ctx xds_model_ctx;

xds_status xds_model_ctx_create(const xds_model *m, xds_kv_cache *kv, int n_threads, int max_tok,
                                xds_model_ctx **out);
void xds_model_ctx_free(xds_model_ctx *ctx);
xds_pool *xds_model_ctx_pool(xds_model_ctx *ctx);
int xds_model_ctx_max_tok(const xds_model_ctx *ctx);

/* Validate a batch against the context (n_tok <= max_tok, ids < n_vocab,
 * seq slots, positions covered by the block tables). */
xds_status xds_model_batch_check(const xds_model_ctx *ctx, const xds_batch *b);

/* x (n_tok, n_embd) = token embeddings of the batch. */
void xds_model_embed(xds_model_ctx *ctx, const xds_batch *b, float *x);
/* x += Attn(RMSNorm(x)) for layer `layer`; writes the batch's K/V into the
 * cache, each token attends causally over its own sequence. */
void xds_model_attention(xds_model_ctx *ctx, int layer, const xds_batch *b, float *x);
/* x += FFN(RMSNorm(x)) (SwiGLU) for layer `layer`, x: (n_tok, n_embd). */
void xds_model_ffn(xds_model_ctx *ctx, int layer, float *x, int n_tok);
/* logits (n_rows, n_vocab) = head(RMSNorm(x[rows[i]])) for the selected rows. */
void xds_model_lm_head(xds_model_ctx *ctx, const float *x, const int32_t *rows, int n_rows,
                       float *logits);

/* Mixture-of-experts units (model/moe.c). An MoE layer's FFN is
 *   x += shared(xn) + sum_j weights[t, j] * expert_{ids[t, j]}(xn),  xn = RMSNorm(x)
 * split so that a process holding only some experts computes its share:
 * route once, then moe_experts over each process's expert subset, and the
 * partial outputs summed give the whole layer (up to f32 summation order).
 * Experts are computed grouped: the rows routed to one expert are gathered
 * and multiplied as one matrix-matrix product. */
int xds_model_layer_is_moe(const xds_model *m, int layer);
/* xn (n_tok, n_embd) = RMSNorm(x) with the layer's FFN norm weights. */
void xds_model_ffn_norm(xds_model_ctx *ctx, int layer, const float *x, int n_tok, float *xn);
/* Top-k routing of xn (n_tok, n_embd): ids, weights (n_tok, n_expert_used),
 * weights already normalized / scaled as the architecture says. */
void xds_model_moe_route(xds_model_ctx *ctx, int layer, const float *xn, int n_tok, int32_t *ids,
                         float *weights);
/* out (n_tok, n_embd) = sum over the routed (t, j) whose expert e = ids[t, j]
 * has expert_mask[e] != 0 (NULL: all experts) of weights[t, j] * FFN_e(xn[t]). */
void xds_model_moe_experts(xds_model_ctx *ctx, int layer, const float *xn, int n_tok, const int32_t *ids,
                           const float *weights, const uint8_t *expert_mask, float *out);
/* out (n_tok, n_embd) = shared experts' FFN(xn) (zeros when the model has none). */
void xds_model_moe_shared(xds_model_ctx *ctx, int layer, const float *xn, int n_tok, float *out);
/* Routed-expert weight bytes read (each expert hit counted once per call) and
 * multiply-adds done by moe_experts on this context since the last reset. */
void xds_model_ctx_expert_stats(xds_model_ctx *ctx, uint64_t *bytes, double *macs, int reset);
/* Count tokens routed per (layer, logical expert) into counts (n_layer *
 * cfg.moe.n_expert, borrowed; NULL: stop counting): xds_model_moe_route adds
 * one per token to each of its top-k experts, a plain increment done with
 * relaxed atomics so another thread may read the counters with
 * __atomic_load_n(..., __ATOMIC_RELAXED) while passes run (one writer: the
 * thread running this context's passes). No-op for a model without routed
 * experts. */
void xds_model_ctx_set_expert_counts(xds_model_ctx *ctx, uint64_t *counts);

/* The whole pass: embed, every layer, lm_head for rows logit_rows[0..n_rows)
 * of the batch (e.g. the last token of each sequence), logits (n_rows, n_vocab).
 * Checks the batch first (xds_model_batch_check). */
xds_status xds_model_forward(xds_model_ctx *ctx, const xds_batch *b, const int32_t *logit_rows,
                             int n_rows, float *logits);

#endif
