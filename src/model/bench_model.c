/*
 * bench_model.c — random-weight MoE benchmark checkpoints with the layer
 * shapes of real releases (xds_model_bench_write, `xds bench-model`), as GGUF
 * in llama.cpp's qwen3moe / deepseek2 layouts so the weights can be quantized
 * like the released GGUFs (Q8_0 by default; Q4_0 / Q4_1 / F16 / BF16 too).
 * Fewer layers (and, for DeepSeek-V3, fewer experts) than the real models so
 * a file fits a 24 GiB machine's page cache; every per-layer shape is real.
 *
 * Presets (per layer as released; reductions are the defaults below):
 *   qwen3-30b-a3b: hidden 2048, 32 q / 4 kv heads of 128, 128 experts top-8 of
 *     768, vocab 151936; 48 layers -> 12 by default (all 128 experts kept).
 *   deepseek-v3: hidden 7168, MLA (128 heads, q_lora 1536, kv_lora 512, nope
 *     128 / rope 64 / v 128), 256 experts top-8 of 2048 in 8 groups (top-4
 *     groups), 1 shared expert, first 3 layers dense (18432), vocab 129280,
 *     YaRN x40; 61 layers -> 4 (1 dense + 3 MoE) and 256 -> 32 experts by
 *     default (8 groups of 4).
 * Weights: norms 1, matrices uniform random quantized blocks of small scale
 * (activations stay finite), embeddings of scale 1 (so tokens, not the shared
 * attention average, decide routing), routers f32 N(0, 1/hidden):
 * deterministic for a seed. Files are written where the caller says (never into the repository).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/gguf_writer.h"
#include "model/upcycle.h"

typedef struct {
    uint64_t seed;
    xds_dtype type;
    int64_t ne0;   /* row length, for f32/f16/bf16 fills */
    float scale;   /* magnitude of the values */
    int ones;      /* norms: all 1 */
    int gauss;     /* f32 N(0, scale) */
} fill_spec;

static inline uint64_t mix(uint64_t x) {
    x ^= x >> 30, x *= 0xbf58476d1ce4e5b9ULL, x ^= x >> 27, x *= 0x94d049bb133111ebULL, x ^= x >> 31;
    return x;
}

static void fill(void *user, uint8_t *buf, size_t off, size_t n) {
    fill_spec *f = user;
    const xds_dtype_traits *tr = xds_dtype_info(f->type);
    if (f->type == XDS_DTYPE_F32) {
        float *p = (float *)buf;
        size_t i0 = off / 4;
        for (size_t i = 0; i < n / 4; i++) {
            if (f->ones) p[i] = 1.0f;
            else {
                uint64_t r = mix(f->seed ^ (i0 + i));
                double u1 = ((r >> 11) + 0.5) * (1.0 / 9007199254740992.0), u2 = ((mix(r) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
                p[i] = (float)(f->scale * sqrt(-2 * log(u1)) * cos(2 * M_PI * u2));
            }
        }
        return;
    }
    if (f->type == XDS_DTYPE_F16 || f->type == XDS_DTYPE_BF16) {
        uint16_t *p = (uint16_t *)buf;
        size_t i0 = off / 2;
        for (size_t i = 0; i < n / 2; i++) {
            float v = f->ones ? 1.0f : (float)(((int64_t)(mix(f->seed ^ (i0 + i)) & 0xffff) - 32768) / 32768.0 * f->scale);
            p[i] = f->type == XDS_DTYPE_F16 ? xds_f32_to_f16(v) : xds_f32_to_bf16(v);
        }
        return;
    }
    /* quantized: random quant bytes, then a fixed small scale (and min) per block */
    size_t bb = tr->block_bytes;
    uint64_t st = mix(f->seed ^ off);
    for (size_t i = 0; i + 8 <= n; i += 8) {
        st = mix(st + 0x9e3779b97f4a7c15ULL);
        memcpy(buf + i, &st, 8);
    }
    for (size_t i = n & ~(size_t)7; i < n; i++) buf[i] = (uint8_t)mix(st + i);
    /* zero-mean values (a common bias in every weight adds up over thousands of
     * inputs into one shared direction that would route every token alike):
     * Q8_0 -128 -> 0 (uniform on -127..127), Q4_0 nibble 0 (-8) -> 8 (0),
     * Q4_1 min = -7.5 d (symmetric) */
    float dv = f->type == XDS_DTYPE_Q8_0 ? f->scale / 127.0f : f->scale / 8.0f;
    xds_f16 d = xds_f32_to_f16(dv), mn = xds_f32_to_f16(-7.5f * xds_f16_to_f32(d));
    XDS_ASSERT(off % bb == 0);
    for (size_t b = 0; b + bb <= n; b += bb) {
        memcpy(buf + b, &d, 2);
        if (f->type == XDS_DTYPE_Q4_1) memcpy(buf + b + 2, &mn, 2);
        if (f->type == XDS_DTYPE_Q8_0)
            for (size_t j = b + 2; j < b + bb; j++) buf[j] = buf[j] == 0x80 ? 0 : buf[j];
        if (f->type == XDS_DTYPE_Q4_0)
            for (size_t j = b + 2; j < b + bb; j++) {
                uint8_t lo = buf[j] & 15, hi = buf[j] >> 4;
                buf[j] = (uint8_t)((lo ? lo : 8) | (hi ? hi : 8) << 4);
            }
    }
}

typedef struct {
    xds_gguf_writer *w;
    fill_spec *specs;
    int n_specs, cap;
    uint64_t seed;
    xds_dtype wtype;
} gen;

static xds_status add(gen *G, const char *name, xds_dtype type, int nd, int64_t ne0, int64_t ne1, int64_t ne2,
                      int ones, int gauss, float scale) {
    XDS_ASSERT(G->n_specs < G->cap);
    fill_spec *f = &G->specs[G->n_specs++];
    f->seed = mix(G->seed ^ (uint64_t)G->n_specs * 0x1234567ULL);
    f->type = type;
    f->ne0 = ne0;
    f->scale = scale;
    f->ones = ones;
    f->gauss = gauss;
    int64_t ne[3] = {ne0, ne1, ne2};
    return xds_gguf_writer_tensor(G->w, name, type, nd, ne, NULL, 0, 1, fill, f);
}

#define MAT(name, in, out) XDS_TRY(add(G, name, G->wtype, 2, in, out, 1, 0, 0, 0.02f))
#define EXPS(name, in, out, n) XDS_TRY(add(G, name, G->wtype, 3, in, out, n, 0, 0, 0.02f))
#define NORM(name, n) XDS_TRY(add(G, name, XDS_DTYPE_F32, 1, n, 1, 1, 1, 0, 0))

/* tiny: the qwen3moe layout at test sizes (every matrix's rows a multiple
 * of 16, so all of them take the repacked layout on AVX-512). */
static xds_status gen_qwen3(gen *G, int L, int NE, int tiny) {
    const int H = tiny ? 256 : 2048, NH = tiny ? 8 : 32, NKV = tiny ? 2 : 4, HD = tiny ? 32 : 128,
              FF = tiny ? 96 : 768, V = tiny ? 256 : 151936, K = tiny ? 2 : 8;
    xds_gguf_writer *w = G->w;
    char nb[128];
    XDS_TRY(xds_gguf_writer_kv_str(w, "general.architecture", "qwen3moe"));
    XDS_TRY(xds_gguf_writer_kv_str(w, "general.name", tiny ? "xds-bench qwen3moe tiny (random weights)"
                                                           : "xds-bench qwen3-30b-a3b shapes (random weights)"));
    XDS_TRY(xds_gguf_writer_kv_u32(w, "qwen3moe.block_count", L));
    XDS_TRY(xds_gguf_writer_kv_u32(w, "qwen3moe.context_length", 40960));
    XDS_TRY(xds_gguf_writer_kv_u32(w, "qwen3moe.embedding_length", H));
    XDS_TRY(xds_gguf_writer_kv_u32(w, "qwen3moe.feed_forward_length", tiny ? 512 : 6144));
    XDS_TRY(xds_gguf_writer_kv_u32(w, "qwen3moe.attention.head_count", NH));
    XDS_TRY(xds_gguf_writer_kv_u32(w, "qwen3moe.attention.head_count_kv", NKV));
    XDS_TRY(xds_gguf_writer_kv_u32(w, "qwen3moe.attention.key_length", HD));
    XDS_TRY(xds_gguf_writer_kv_u32(w, "qwen3moe.attention.value_length", HD));
    XDS_TRY(xds_gguf_writer_kv_f32(w, "qwen3moe.rope.freq_base", 1000000.0f));
    XDS_TRY(xds_gguf_writer_kv_f32(w, "qwen3moe.attention.layer_norm_rms_epsilon", 1e-6f));
    XDS_TRY(xds_gguf_writer_kv_u32(w, "qwen3moe.expert_count", NE));
    XDS_TRY(xds_gguf_writer_kv_u32(w, "qwen3moe.expert_used_count", K));
    XDS_TRY(xds_gguf_writer_kv_u32(w, "qwen3moe.expert_feed_forward_length", FF));
    XDS_TRY(xds_gguf_writer_kv_u32(w, "qwen3moe.vocab_size", V));
    XDS_TRY(add(G, "token_embd.weight", G->wtype, 2, H, V, 1, 0, 0, 1.0f)); /* token identity dominates */
    NORM("output_norm.weight", H);
    MAT("output.weight", H, V);
    for (int l = 0; l < L; l++) {
#define B(s) (snprintf(nb, sizeof nb, "blk.%d." s ".weight", l), nb)
        NORM(B("attn_norm"), H);
        MAT(B("attn_q"), H, NH * HD);
        MAT(B("attn_k"), H, NKV * HD);
        MAT(B("attn_v"), H, NKV * HD);
        MAT(B("attn_output"), NH * HD, H);
        NORM(B("attn_q_norm"), HD);
        NORM(B("attn_k_norm"), HD);
        NORM(B("ffn_norm"), H);
        XDS_TRY(add(G, B("ffn_gate_inp"), XDS_DTYPE_F32, 2, H, NE, 1, 0, 1, 1.0f / sqrtf(H)));
        EXPS(B("ffn_gate_exps"), H, FF, NE);
        EXPS(B("ffn_up_exps"), H, FF, NE);
        EXPS(B("ffn_down_exps"), FF, H, NE);
#undef B
    }
    return XDS_OK;
}

static xds_status gen_deepseek(gen *G, int L, int NE) {
    const int H = 7168, NH = 128, QR = 1536, KR = 512, NOPE = 128, ROPE = 64, VD = 128, FF = 2048, DFF = 18432;
    const int V = 129280, K = 8, NG = 8;
    int first_dense = L >= 4 ? 1 : 0, topk_group = 4;
    if (NE % NG || NE / NG < 2) return xds_err_set(XDS_ERR_INVALID, "bench model: deepseek-v3 needs experts = 8 x m (m >= 2)");
    xds_gguf_writer *w = G->w;
    char nb[128];
    const char *P = "deepseek2";
#define KU(k, v) XDS_TRY(xds_gguf_writer_kv_u32(w, k, v))
#define KF(k, v) XDS_TRY(xds_gguf_writer_kv_f32(w, k, v))
    XDS_TRY(xds_gguf_writer_kv_str(w, "general.architecture", P));
    XDS_TRY(xds_gguf_writer_kv_str(w, "general.name", "xds-bench deepseek-v3 shapes (random weights)"));
    KU("deepseek2.block_count", L);
    KU("deepseek2.context_length", 163840);
    KU("deepseek2.embedding_length", H);
    KU("deepseek2.feed_forward_length", DFF);
    KU("deepseek2.attention.head_count", NH);
    KU("deepseek2.attention.head_count_kv", NH);
    KF("deepseek2.rope.freq_base", 10000.0f);
    KF("deepseek2.attention.layer_norm_rms_epsilon", 1e-6f);
    KU("deepseek2.expert_used_count", K);
    KU("deepseek2.leading_dense_block_count", first_dense);
    KU("deepseek2.vocab_size", V);
    KU("deepseek2.attention.q_lora_rank", QR);
    KU("deepseek2.attention.kv_lora_rank", KR);
    KU("deepseek2.attention.key_length", NOPE + ROPE);
    KU("deepseek2.attention.value_length", VD);
    KU("deepseek2.expert_feed_forward_length", FF);
    KU("deepseek2.expert_count", NE);
    KU("deepseek2.expert_shared_count", 1);
    KF("deepseek2.expert_weights_scale", 2.5f);
    KU("deepseek2.expert_gating_func", 2);
    XDS_TRY(xds_gguf_writer_kv_bool(w, "deepseek2.expert_weights_norm", 1)); /* DeepSeek-V3: norm_topk_prob */
    KU("deepseek2.expert_group_count", NG);
    KU("deepseek2.expert_group_used_count", topk_group);
    KU("deepseek2.rope.dimension_count", ROPE);
    XDS_TRY(xds_gguf_writer_kv_str(w, "deepseek2.rope.scaling.type", "yarn"));
    KF("deepseek2.rope.scaling.factor", 40.0f);
    KU("deepseek2.rope.scaling.original_context_length", 4096);
    KF("deepseek2.rope.scaling.yarn_log_multiplier", 0.1f);
#undef KU
#undef KF
    XDS_TRY(add(G, "token_embd.weight", G->wtype, 2, H, V, 1, 0, 0, 1.0f)); /* token identity dominates */
    NORM("output_norm.weight", H);
    MAT("output.weight", H, V);
    for (int l = 0; l < L; l++) {
#define B(s) (snprintf(nb, sizeof nb, "blk.%d." s ".weight", l), nb)
        NORM(B("attn_norm"), H);
        MAT(B("attn_q_a"), H, QR);
        NORM(B("attn_q_a_norm"), QR);
        MAT(B("attn_q_b"), QR, NH * (NOPE + ROPE));
        MAT(B("attn_kv_a_mqa"), H, KR + ROPE);
        NORM(B("attn_kv_a_norm"), KR);
        MAT(B("attn_kv_b"), KR, NH * (NOPE + VD));
        MAT(B("attn_output"), NH * VD, H);
        NORM(B("ffn_norm"), H);
        if (l < first_dense) {
            MAT(B("ffn_gate"), H, DFF);
            MAT(B("ffn_up"), H, DFF);
            MAT(B("ffn_down"), DFF, H);
            continue;
        }
        XDS_TRY(add(G, B("ffn_gate_inp"), XDS_DTYPE_F32, 2, H, NE, 1, 0, 1, 1.0f / sqrtf(H)));
        snprintf(nb, sizeof nb, "blk.%d.exp_probs_b.bias", l);
        XDS_TRY(add(G, nb, XDS_DTYPE_F32, 1, NE, 1, 1, 0, 1, 0.01f));
        EXPS(B("ffn_gate_exps"), H, FF, NE);
        EXPS(B("ffn_up_exps"), H, FF, NE);
        EXPS(B("ffn_down_exps"), FF, H, NE);
        MAT(B("ffn_gate_shexp"), H, FF);
        MAT(B("ffn_up_shexp"), H, FF);
        MAT(B("ffn_down_shexp"), FF, H);
#undef B
    }
    return XDS_OK;
}

xds_status xds_model_bench_write(const char *preset, const char *out, int n_layer, int n_expert, xds_dtype type,
                                 uint64_t seed) {
    int ds = 0, tiny = 0;
    if (!strcmp(preset, "qwen3-30b-a3b")) ds = 0;
    else if (!strcmp(preset, "deepseek-v3")) ds = 1;
    else if (!strcmp(preset, "qwen3-tiny")) tiny = 1;
    else
        return xds_err_set(XDS_ERR_INVALID,
                           "bench model: unknown preset '%.64s' (qwen3-30b-a3b, deepseek-v3, qwen3-tiny)", preset);
    if (type != XDS_DTYPE_Q8_0 && type != XDS_DTYPE_Q4_0 && type != XDS_DTYPE_Q4_1 && type != XDS_DTYPE_F16 &&
        type != XDS_DTYPE_BF16)
        return xds_err_set(XDS_ERR_INVALID, "bench model: weight type %s not offered (q8_0, q4_0, q4_1, f16, bf16)",
                           xds_dtype_name(type));
    if (n_layer <= 0) n_layer = tiny ? 2 : ds ? 4 : 12;
    if (n_expert <= 0) n_expert = tiny ? 8 : ds ? 32 : 128;
    if (n_layer > 256 || n_expert > 512)
        return xds_err_set(XDS_ERR_INVALID, "bench model: %d layers / %d experts too many", n_layer, n_expert);
    gen G = {.seed = seed, .wtype = type, .cap = 32 + 24 * n_layer};
    G.specs = calloc(G.cap, sizeof *G.specs);
    if (!G.specs) return xds_err_set(XDS_ERR_NOMEM, "bench model: out of memory");
    xds_status s = xds_gguf_writer_create(&G.w);
    if (s == XDS_OK) s = ds ? gen_deepseek(&G, n_layer, n_expert) : gen_qwen3(&G, n_layer, n_expert, tiny);
    if (s == XDS_OK) s = xds_gguf_writer_write(G.w, out);
    xds_gguf_writer_free(G.w);
    free(G.specs);
    return s;
}
