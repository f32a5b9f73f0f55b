/*
 * moe.h — internal to src/model: the weights of MoE FFN layers and of DeepSeek
 * MLA attention, the MoE/MLA scratch a model context owns, and the hooks the
 * dense loader / units (model.c, llama.c) call for the non-llama
 * architectures (qwen3_moe, mixtral, deepseek_v3).
 *
 * Invariants: every tensor view here was shape-checked at load (errors name
 * the tensor); expert views are 2-D (ne = (in, out)) even when the file
 * stores all experts of a layer in one 3-D GGUF tensor (the view then points
 * at that expert's slice).
 */
#ifndef XDS_MODEL_MOE_H
#define XDS_MODEL_MOE_H

#include "model/model.h"

/* One SwiGLU FFN: down(silu(gate x) * up x). */
typedef struct xds_ffn_w {
    xds_tensor gate; /* ne = (n_embd, n_ff) */
    xds_tensor up;   /* ne = (n_embd, n_ff) */
    xds_tensor down; /* ne = (n_ff, n_embd) */
} xds_ffn_w;

typedef struct xds_moe_layer {
    xds_tensor router;  /* ne = (n_embd, n_expert) */
    float *score_bias;  /* (n_expert) owned e_score_correction_bias, or NULL */
    xds_ffn_w *experts; /* (n_expert) ne = (n_embd, n_ff_exp) / (n_ff_exp, n_embd) */
    int has_shared;     /* shared FFN present */
    xds_ffn_w shared;   /* ne = (n_embd, n_shared * n_ff_exp) / (..., n_embd) */
} xds_moe_layer;

typedef struct xds_mla_layer {
    xds_tensor wq_a;     /* ne = (n_embd, q_lora_rank); q_lora_rank > 0 only */
    float *q_a_norm;     /* (q_lora_rank) owned; q_lora_rank > 0 only */
    xds_tensor wq_b;     /* ne = (q_lora_rank, n_head * head_dim); q_lora_rank > 0 only */
    xds_tensor wq;       /* ne = (n_embd, n_head * head_dim); q_lora_rank == 0 only */
    xds_tensor wkv_a;    /* ne = (n_embd, kv_lora_rank + rope_dim) */
    float *kv_a_norm;    /* (kv_lora_rank) owned */
    xds_tensor wkv_b;    /* ne = (kv_lora_rank, n_head * (nope_dim + v_dim)); absent (data NULL) when the
                            file has llama.cpp's split attn_k_b / attn_v_b instead */
    xds_tensor wv_b;     /* split files only: attn_v_b as ne = (kv_lora_rank, n_head * v_dim), head h's
                            V rows h*v_dim.. (else data NULL: V rows are wkv_b's h*(nope+v)+nope..) */
    xds_tensor wk_b_t;   /* absorbed K: ne = (nope_dim, n_head * kv_lora_rank), row h*kv_lora_rank + c =
                            column c of head h's K-nope block of wkv_b; owned (f32 or wkv_b's type) when
                            made from wkv_b, the file's attn_k_b (same layout) otherwise */
    float *wk_b_t_data;  /* owner of wk_b_t.data (f32, or wkv_b's quantized type); NULL for attn_k_b */
    xds_tensor wo;       /* ne = (n_head * v_dim, n_embd) */
} xds_mla_layer;

/* A DeepSeek MTP (next-token prediction) layer: loaded for a later user. */
typedef struct xds_mtp_layer {
    float *enorm;         /* (n_embd) owned */
    float *hnorm;         /* (n_embd) owned */
    xds_tensor eh_proj;   /* ne = (2 * n_embd, n_embd) */
    float *head_norm;     /* (n_embd) owned shared_head.norm */
    xds_tensor head;      /* ne = (n_embd, n_vocab) shared_head.head (may be absent: tok output) */
    xds_layer_weights blk; /* the decoder block (MLA + MoE or dense FFN) */
} xds_mtp_layer;

/* ---- loader hooks (arch_moe.c) ---------------------------------------- */

/* Architecture-specific config.json fields after model.c parsed the common
 * ones; checks consistency (errors name the field). */
xds_status xds_arch_config_from_json(const void *json_obj, xds_model_config *c);
/* GGUF "qwen3moe" / "deepseek2" (llama.cpp's keys and tensor names). */
xds_status xds_arch_config_from_gguf_arch(const xds_gguf *g, const char *arch, xds_model_config *c);
/* GGUF llama with llama.expert_count > 0 (mixtral layout). */
xds_status xds_arch_config_from_gguf(const xds_gguf *g, xds_model_config *c);
/* Bind every layer (m->layers allocated, zeroed) and the MTP layers. */
xds_status xds_arch_bind_layers(xds_model *m, int gguf, const xds_model_opts *opts);
/* Free what xds_arch_bind_layers owns (safe on partially bound models). */
void xds_arch_free_layers(xds_model *m);
/* Bytes of the non-llama matrices a decode step could read (all experts). */
size_t xds_arch_weight_bytes(const xds_model *m);
int xds_arch_layer_moe(const xds_model_config *c, int layer);

/* ---- context scratch (moe.c) ------------------------------------------ */

typedef struct xds_moe_scratch {
    int max_tok, n_threads, max_pos;
    int k;            /* n_expert_used */
    /* MoE FFN (xds_moe_ffn) */
    float *xn;        /* (max_tok, n_embd) normed input */
    int32_t *ids;     /* (max_tok, k) */
    float *w;         /* (max_tok, k) */
    float *out;       /* (max_tok, n_embd) routed experts' sum */
    float *sh;        /* (max_tok, n_embd) shared experts' output */
    /* units */
    float *logits;    /* (max_tok, n_expert) router logits / scores */
    int32_t *cnt;     /* (n_expert + 1) rows per expert, then offsets */
    int32_t *order;   /* (max_tok * k) assignment t*k+j, grouped by expert */
    int32_t *slot;    /* (max_tok * k) position of assignment t*k+j in order, -1: not computed here */
    int32_t *active;  /* (n_expert) experts with rows */
    float *gx;        /* (max_tok * k, n_embd) gathered inputs */
    float *gy;        /* (max_tok * k, n_embd) expert outputs */
    float *gg, *gu;   /* (max(max_tok * k * n_ff_exp, max_tok * n_shared * n_ff_exp, 2 n_expert)) */
    double *accd;     /* (n_embd) one token's combine accumulator */
    uint64_t *expert_count; /* (n_layer * n_expert) tokens routed to (layer, expert) since set, borrowed
                             * (xds_model_ctx_set_expert_counts); NULL: not counted. Written only by the
                             * thread running the forward pass (relaxed atomics: readable from others) */
    uint64_t stat_bytes; /* routed-expert weight bytes read by moe_experts since reset */
    double stat_macs;    /* routed-expert multiply-adds since reset */
    /* MLA (mla.c) */
    float *q;         /* (max_tok, n_head * head_dim) */
    float *qa;        /* (max_tok, max(q_lora_rank, kv_lora + rope)) */
    float *kva;       /* (max_tok, kv_lora + rope) latent + rope key of the batch's tokens */
    float *qcat;      /* (max_tok, n_head, kv_lora + rope) absorbed query / attention output */
    float *tmp;       /* (n_threads, max_tok, tmp_w) per-thread per-head gather */
    int tmp_w;        /* max(nope, kv_lora) */
    float *att;       /* (max_tok, n_head * v_dim) */
    float *proj;      /* (max_tok, n_embd) */
    float *rope;      /* (max_tok, rope_dim) cos/sin pairs */
    float *scores;    /* (n_threads, XDS_MLA_HEAD_CHUNK, max_pos) */
} xds_moe_scratch;
xds_status xds_moe_scratch_create(const xds_model *m, const xds_kv_cache *kv, int n_threads, int max_tok,
                                  xds_moe_scratch **out);
void xds_moe_scratch_free(xds_moe_scratch *s);

/* Accessors into the context (llama.c). */
xds_moe_scratch *xds_model_ctx_moe(xds_model_ctx *ctx);
xds_kv_cache *xds_model_ctx_kv(xds_model_ctx *ctx);
const xds_model *xds_model_ctx_model(const xds_model_ctx *ctx);

/* x += MoE FFN of layer (norm, route, experts, shared). */
void xds_moe_ffn(xds_model_ctx *ctx, int layer, float *x, int n_tok);
/* x += MLA attention of layer (mla.c). */
void xds_mla_attention(xds_model_ctx *ctx, int layer, const xds_batch *b, float *x);
/* Per-head RMSNorm of q (n_tok, n_head*hd) and k rows in place (qwen3). */
void xds_qk_norm(const xds_model *m, const xds_layer_weights *w, float *q, float *k, int n_tok);

#endif
