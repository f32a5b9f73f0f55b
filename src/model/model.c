/*
 * model.c — the model loader: reads the configuration from GGUF metadata
 * (`llama.*` keys) or a Hugging Face config.json, binds every weight as a view
 * into the mapped files (GGUF `blk.N.attn_q.weight` or HF
 * `model.layers.N.self_attn.q_proj.weight` names), checks each tensor's shape
 * against the configuration (errors name the tensor), converts the norm
 * vectors to owned f32 copies, and precomputes the RoPE inverse frequencies
 * with the configured scaling (none / linear / llama3 / yarn, and GGUF
 * rope_freqs factors).
 *
 * Invariants: on success every xds_layer_weights matrix has ne = (in, out) as
 * model.h documents and a row size valid for its dtype; nothing is retained
 * on failure.
 */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "model/model.h"
#include "model/repack.h"
#include "model/moe.h"

const char *xds_arch_name(xds_arch a) {
    switch (a) {
    case XDS_ARCH_LLAMA: return "llama";
    case XDS_ARCH_QWEN3_MOE: return "qwen3_moe";
    case XDS_ARCH_MIXTRAL: return "mixtral";
    case XDS_ARCH_DEEPSEEK_V3: return "deepseek_v3";
    default: return "?";
    }
}

/* ------------------------------------------------------------------------ */
/* Configuration from GGUF metadata                                          */

static xds_status gguf_u32(const xds_gguf *g, const char *key, int req, int def, int *out) {
    uint32_t v;
    xds_status s = xds_gguf_get_u32(g, key, &v);
    if (s == XDS_ERR_NOT_FOUND && !req) {
        xds_err_clear();
        *out = def;
        return XDS_OK;
    }
    if (s != XDS_OK) return xds_err_prefix(s, "model: GGUF key %s", key);
    if (v > (uint32_t)INT32_MAX) return xds_err_set(XDS_ERR_FORMAT, "model: GGUF key %s: %u too large", key, v);
    *out = (int)v;
    return XDS_OK;
}

static xds_status gguf_f32(const xds_gguf *g, const char *key, float def, float *out) {
    xds_status s = xds_gguf_get_f32(g, key, out);
    if (s == XDS_ERR_NOT_FOUND) {
        xds_err_clear();
        *out = def;
        return XDS_OK;
    }
    return s == XDS_OK ? s : xds_err_prefix(s, "model: GGUF key %s", key);
}

static xds_status config_from_gguf(const xds_gguf *g, xds_model_config *c) {
    const char *arch;
    uint64_t alen;
    xds_status s = xds_gguf_get_str(g, "general.architecture", &arch, &alen);
    if (s != XDS_OK) return xds_err_prefix(s, "model: %s", xds_gguf_path(g));
    if ((alen == 8 && !memcmp(arch, "qwen3moe", 8)) || (alen == 9 && !memcmp(arch, "deepseek2", 9)))
        return xds_arch_config_from_gguf_arch(g, arch, c); /* model/arch_moe.c */
    if (!(alen == 5 && !memcmp(arch, "llama", 5)))
        return xds_err_set(XDS_ERR_UNSUPPORTED,
                           "model: %s: architecture '%.*s' is not supported (supported: llama, qwen3moe, deepseek2)",
                           xds_gguf_path(g), (int)(alen > 64 ? 64 : alen), arch);
    c->arch = XDS_ARCH_LLAMA;
    c->rope_mode = XDS_ROPE_MODE_NORM; /* converter permuted Q/K rows for adjacent pairs */
    XDS_TRY(gguf_u32(g, "llama.embedding_length", 1, 0, &c->n_embd));
    XDS_TRY(gguf_u32(g, "llama.block_count", 1, 0, &c->n_layer));
    XDS_TRY(gguf_u32(g, "llama.feed_forward_length", 1, 0, &c->n_ff));
    XDS_TRY(gguf_u32(g, "llama.attention.head_count", 1, 0, &c->n_head));
    XDS_TRY(gguf_u32(g, "llama.attention.head_count_kv", 0, c->n_head, &c->n_head_kv));
    XDS_TRY(gguf_u32(g, "llama.context_length", 0, 2048, &c->max_ctx));
    if (c->n_head <= 0) return xds_err_set(XDS_ERR_FORMAT, "model: GGUF llama.attention.head_count is 0");
    XDS_TRY(gguf_u32(g, "llama.attention.key_length", 0, c->n_embd / c->n_head, &c->head_dim));
    XDS_TRY(gguf_u32(g, "llama.rope.dimension_count", 0, c->head_dim, &c->rope_dim));
    XDS_TRY(gguf_f32(g, "llama.attention.layer_norm_rms_epsilon", 1e-5f, &c->rms_eps));
    XDS_TRY(gguf_f32(g, "llama.rope.freq_base", 10000.0f, &c->rope_theta));
    int nv = 0;
    XDS_TRY(gguf_u32(g, "llama.vocab_size", 0, 0, &nv));
    if (nv == 0) { /* older files: the tokenizer's token count */
        xds_gguf_type et;
        uint64_t n;
        const void *d;
        if (xds_gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n, &d) == XDS_OK && n < INT32_MAX) nv = (int)n;
        else xds_err_clear();
    }
    c->n_vocab = nv; /* 0: taken from token_embd below */
    const char *st;
    uint64_t slen;
    if (xds_gguf_get_str(g, "llama.rope.scaling.type", &st, &slen) == XDS_OK) {
        if (slen == 6 && !memcmp(st, "linear", 6)) c->rope_scaling.type = XDS_ROPE_SCALING_LINEAR;
        else if (slen == 4 && !memcmp(st, "yarn", 4)) c->rope_scaling.type = XDS_ROPE_SCALING_YARN;
        else if (!(slen == 4 && !memcmp(st, "none", 4)))
            return xds_err_set(XDS_ERR_UNSUPPORTED, "model: GGUF llama.rope.scaling.type '%.*s' is not supported",
                               (int)(slen > 32 ? 32 : slen), st);
    } else xds_err_clear();
    XDS_TRY(gguf_f32(g, "llama.rope.scaling.factor", 1.0f, &c->rope_scaling.factor));
    XDS_TRY(gguf_u32(g, "llama.rope.scaling.original_context_length", 0, c->max_ctx,
                     &c->rope_scaling.original_max_pos));
    XDS_TRY(gguf_f32(g, "llama.rope.scaling.yarn_beta_fast", 32.0f, &c->rope_scaling.beta_fast));
    XDS_TRY(gguf_f32(g, "llama.rope.scaling.yarn_beta_slow", 1.0f, &c->rope_scaling.beta_slow));
    c->rope_scaling.truncate = 1;
    if (c->rope_scaling.type == XDS_ROPE_SCALING_LINEAR && c->rope_scaling.factor == 1.0f)
        c->rope_scaling.type = XDS_ROPE_SCALING_NONE;
    int id;
    XDS_TRY(gguf_u32(g, "tokenizer.ggml.bos_token_id", 0, -1, &id));
    c->bos_id = id;
    XDS_TRY(gguf_u32(g, "tokenizer.ggml.eos_token_id", 0, -1, &id));
    c->eos_id = id;
    if (xds_gguf_find_kv(g, "llama.expert_count") >= 0) return xds_arch_config_from_gguf(g, c);
    return XDS_OK;
}

/* ------------------------------------------------------------------------ */
/* Configuration from a Hugging Face config.json                            */

static xds_status js_int(const json_t *o, const char *key, int req, int def, int *out) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        if (req) return xds_err_set(XDS_ERR_NOT_FOUND, "model: config.json: missing field '%s'", key);
        *out = def;
        return XDS_OK;
    }
    if (json_is_array(v) && json_array_size(v) > 0) v = json_array_get(v, 0); /* eos lists */
    if (!json_is_integer(v) || json_integer_value(v) < -1 || json_integer_value(v) > INT32_MAX)
        return xds_err_set(XDS_ERR_FORMAT, "model: config.json: field '%s' is not a valid integer", key);
    *out = (int)json_integer_value(v);
    return XDS_OK;
}

static xds_status js_num(const json_t *o, const char *key, float def, float *out) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return XDS_OK;
    }
    if (!json_is_number(v))
        return xds_err_set(XDS_ERR_FORMAT, "model: config.json: field '%s' is not a number", key);
    double d = json_number_value(v);
    if (!(fabs(d) <= FLT_MAX)) /* a float cannot hold it (the conversion would be undefined) */
        return xds_err_set(XDS_ERR_FORMAT, "model: config.json: field '%s' = %g is out of range", key, d);
    *out = (float)d;
    return XDS_OK;
}

static int js_bool(const json_t *o, const char *key, int def) {
    json_t *v = json_object_get(o, key);
    return json_is_boolean(v) ? json_is_true(v) : def;
}

static xds_status rope_from_json(const json_t *rp, xds_model_config *c) {
    json_t *t = json_object_get(rp, "rope_type");
    if (!t) t = json_object_get(rp, "type");
    const char *ty = json_is_string(t) ? json_string_value(t) : "default";
    xds_rope_scaling *r = &c->rope_scaling;
    if (!strcmp(ty, "default")) r->type = XDS_ROPE_SCALING_NONE;
    else if (!strcmp(ty, "linear")) r->type = XDS_ROPE_SCALING_LINEAR;
    else if (!strcmp(ty, "llama3")) r->type = XDS_ROPE_SCALING_LLAMA3;
    else if (!strcmp(ty, "yarn")) r->type = XDS_ROPE_SCALING_YARN;
    else
        return xds_err_set(XDS_ERR_UNSUPPORTED, "model: config.json: rope type '%s' is not supported", ty);
    XDS_TRY(js_num(rp, "factor", 1.0f, &r->factor));
    XDS_TRY(js_num(rp, "low_freq_factor", 1.0f, &r->low_freq_factor));
    XDS_TRY(js_num(rp, "high_freq_factor", 4.0f, &r->high_freq_factor));
    XDS_TRY(js_int(rp, "original_max_position_embeddings", 0, c->max_ctx, &r->original_max_pos));
    XDS_TRY(js_num(rp, "beta_fast", 32.0f, &r->beta_fast));
    XDS_TRY(js_num(rp, "beta_slow", 1.0f, &r->beta_slow));
    XDS_TRY(js_num(rp, "mscale", 0.0f, &r->mscale));
    XDS_TRY(js_num(rp, "mscale_all_dim", 0.0f, &r->mscale_all_dim));
    XDS_TRY(js_num(rp, "attention_factor", 0.0f, &r->attn_factor));
    r->truncate = js_bool(rp, "truncate", 1);
    if (json_object_get(rp, "rope_theta")) XDS_TRY(js_num(rp, "rope_theta", 10000.0f, &c->rope_theta));
    if (r->type != XDS_ROPE_SCALING_NONE && !(r->factor > 0))
        return xds_err_set(XDS_ERR_FORMAT, "model: config.json: rope scaling factor must be positive");
    if (r->type == XDS_ROPE_SCALING_LLAMA3 && !(r->high_freq_factor > r->low_freq_factor))
        return xds_err_set(XDS_ERR_FORMAT, "model: config.json: llama3 rope needs high_freq_factor > low_freq_factor");
    /* llama3 and yarn divide by these (rope_init): zero or negative gives NaN frequencies */
    if (r->type == XDS_ROPE_SCALING_LLAMA3 && !(r->low_freq_factor > 0))
        return xds_err_set(XDS_ERR_FORMAT, "model: config.json: llama3 rope needs low_freq_factor > 0");
    if ((r->type == XDS_ROPE_SCALING_LLAMA3 || r->type == XDS_ROPE_SCALING_YARN) && r->original_max_pos <= 0)
        return xds_err_set(XDS_ERR_FORMAT, "model: config.json: rope original_max_position_embeddings %d must be positive",
                           r->original_max_pos);
    if (r->type == XDS_ROPE_SCALING_YARN && !(r->beta_fast > 0 && r->beta_slow > 0))
        return xds_err_set(XDS_ERR_FORMAT, "model: config.json: yarn rope needs beta_fast and beta_slow > 0");
    return XDS_OK;
}

static xds_status config_from_json(const json_t *j, xds_model_config *c) {
    if (!json_is_object(j)) return xds_err_set(XDS_ERR_FORMAT, "model: config.json is not an object");
    json_t *mt = json_object_get(j, "model_type");
    const char *mtype = json_is_string(mt) ? json_string_value(mt) : NULL;
    if (!mtype) return xds_err_set(XDS_ERR_NOT_FOUND, "model: config.json: missing field 'model_type'");
    if (!strcmp(mtype, "llama")) c->arch = XDS_ARCH_LLAMA;
    else if (!strcmp(mtype, "qwen3_moe")) c->arch = XDS_ARCH_QWEN3_MOE;
    else if (!strcmp(mtype, "mixtral")) c->arch = XDS_ARCH_MIXTRAL;
    else if (!strcmp(mtype, "deepseek_v3") || !strcmp(mtype, "kimi_k2")) c->arch = XDS_ARCH_DEEPSEEK_V3;
    else
        return xds_err_set(XDS_ERR_UNSUPPORTED,
                           "model: config.json: architecture '%.64s' is not supported (supported: llama, "
                           "qwen3_moe, mixtral, deepseek_v3, kimi_k2)",
                           mtype);
    c->rope_mode = XDS_ROPE_MODE_NEOX; /* HF rotate_half */
    XDS_TRY(js_int(j, "vocab_size", 1, 0, &c->n_vocab));
    XDS_TRY(js_int(j, "hidden_size", 1, 0, &c->n_embd));
    XDS_TRY(js_int(j, "num_hidden_layers", 1, 0, &c->n_layer));
    XDS_TRY(js_int(j, "intermediate_size", 1, 0, &c->n_ff));
    XDS_TRY(js_int(j, "num_attention_heads", 1, 0, &c->n_head));
    XDS_TRY(js_int(j, "num_key_value_heads", 0, c->n_head, &c->n_head_kv));
    if (c->n_head <= 0) return xds_err_set(XDS_ERR_FORMAT, "model: config.json: num_attention_heads must be positive");
    XDS_TRY(js_int(j, "head_dim", 0, c->n_embd / c->n_head, &c->head_dim));
    XDS_TRY(js_int(j, "max_position_embeddings", 0, 2048, &c->max_ctx));
    XDS_TRY(js_num(j, "rms_norm_eps", 1e-6f, &c->rms_eps));
    XDS_TRY(js_num(j, "rope_theta", 10000.0f, &c->rope_theta));
    float prf = 1.0f;
    XDS_TRY(js_num(j, "partial_rotary_factor", 1.0f, &prf));
    json_t *rp = json_object_get(j, "rope_parameters"); /* transformers >= 5 */
    if (!json_is_object(rp)) rp = json_object_get(j, "rope_scaling");
    if (json_is_object(rp)) {
        XDS_TRY(rope_from_json(rp, c));
        float p2;
        XDS_TRY(js_num(rp, "partial_rotary_factor", prf, &p2));
        prf = p2;
    }
    if (!(prf > 0 && prf <= 1))
        return xds_err_set(XDS_ERR_FORMAT, "model: config.json: partial_rotary_factor %g must be in (0, 1]", (double)prf);
    c->rope_dim = (int)(c->head_dim * prf);
    c->tied_embd = js_bool(j, "tie_word_embeddings", 0);
    int id;
    XDS_TRY(js_int(j, "bos_token_id", 0, -1, &id));
    c->bos_id = id;
    XDS_TRY(js_int(j, "eos_token_id", 0, -1, &id));
    c->eos_id = id;
    json_t *act = json_object_get(j, "hidden_act");
    if (json_is_string(act) && strcmp(json_string_value(act), "silu") != 0)
        return xds_err_set(XDS_ERR_UNSUPPORTED, "model: config.json: hidden_act '%.32s' is not supported (silu only)",
                           json_string_value(act));
    if (js_bool(j, "attention_bias", 0) || js_bool(j, "mlp_bias", 0))
        return xds_err_set(XDS_ERR_UNSUPPORTED, "model: config.json: attention_bias / mlp_bias are not supported");
    if (c->arch != XDS_ARCH_LLAMA) return xds_arch_config_from_json(j, c);
    return XDS_OK;
}

static xds_status config_check(const xds_model_config *c) {
#define BAD(cond, ...) \
    if (cond) return xds_err_set(XDS_ERR_FORMAT, "model: " __VA_ARGS__)
    BAD(c->n_embd <= 0 || c->n_embd > (1 << 20), "hidden size %d out of range", c->n_embd);
    BAD(c->n_layer <= 0 || c->n_layer > 4096, "layer count %d out of range", c->n_layer);
    BAD(c->n_ff <= 0 || c->n_ff > (1 << 22), "FFN size %d out of range", c->n_ff);
    BAD(c->n_head <= 0 || c->n_head > 4096, "head count %d out of range", c->n_head);
    BAD(c->n_head_kv <= 0 || c->n_head % c->n_head_kv, "kv head count %d does not divide head count %d",
        c->n_head_kv, c->n_head);
    BAD(c->head_dim <= 0 || c->head_dim > 4096, "head dim %d out of range", c->head_dim);
    BAD(c->rope_dim < 0 || c->rope_dim > c->head_dim || c->rope_dim % 2, "rope dim %d invalid for head dim %d",
        c->rope_dim, c->head_dim);
    BAD(c->n_vocab <= 0 || c->n_vocab > (1 << 24), "vocabulary size %d out of range", c->n_vocab);
    BAD(!(c->rms_eps > 0) || !(c->rope_theta > 0) || !isfinite(c->rms_eps) || !isfinite(c->rope_theta),
        "rms eps / rope theta must be positive and finite");
    /* rope_init divides by these (config.json names them in rope_from_json; GGUF values land here) */
    const xds_rope_scaling *r = &c->rope_scaling;
    BAD(r->type != XDS_ROPE_SCALING_NONE && !(r->factor > 0 && isfinite(r->factor)),
        "rope scaling factor must be positive and finite");
    BAD((r->type == XDS_ROPE_SCALING_LLAMA3 || r->type == XDS_ROPE_SCALING_YARN) && r->original_max_pos <= 0,
        "rope scaling original context length %d must be positive", r->original_max_pos);
    BAD(r->type == XDS_ROPE_SCALING_YARN && !(r->beta_fast > 0 && r->beta_slow > 0 && isfinite(r->beta_fast) &&
                                             isfinite(r->beta_slow)),
        "yarn rope beta_fast / beta_slow must be positive and finite");
    BAD(c->max_ctx <= 0, "context length %d invalid", c->max_ctx);
#undef BAD
    return XDS_OK;
}

/* ------------------------------------------------------------------------ */
/* RoPE frequencies (as transformers' modeling_rope_utils computes them)    */

static float yarn_mscale(float scale, float mscale) {
    return scale <= 1.0f ? 1.0f : 0.1f * mscale * logf(scale) + 1.0f;
}

static void rope_init(xds_model *m, const float *freq_factors) {
    const xds_model_config *c = &m->cfg;
    const xds_rope_scaling *r = &c->rope_scaling;
    int d = c->rope_dim, half = d / 2;
    double base = c->rope_theta;
    m->rope_attn_factor = 1.0f;
    for (int i = 0; i < half; i++) {
        float expo = (float)(2 * i) / (float)d;
        float pos_freq = (float)pow(base, (double)expo);
        float inv = 1.0f / pos_freq;
        switch (r->type) {
        case XDS_ROPE_SCALING_NONE: break;
        case XDS_ROPE_SCALING_LINEAR: inv /= r->factor; break;
        case XDS_ROPE_SCALING_LLAMA3: {
            double old = r->original_max_pos;
            double lo_wl = old / r->low_freq_factor, hi_wl = old / r->high_freq_factor;
            double wl = 2 * M_PI / inv;
            if (wl > lo_wl) inv = inv / r->factor;
            else if (!(wl < hi_wl)) {
                float sm = (float)((old / wl - r->low_freq_factor) / (r->high_freq_factor - r->low_freq_factor));
                inv = (1 - sm) * inv / r->factor + sm * inv;
            }
            break;
        }
        case XDS_ROPE_SCALING_YARN: {
            double lowd = d * log(r->original_max_pos / (r->beta_fast * 2 * M_PI)) / (2 * log(base));
            double highd = d * log(r->original_max_pos / (r->beta_slow * 2 * M_PI)) / (2 * log(base));
            if (r->truncate) {
                lowd = floor(lowd);
                highd = ceil(highd);
            }
            if (lowd < 0) lowd = 0;
            if (highd > d - 1) highd = d - 1;
            if (lowd == highd) highd += 0.001;
            float ramp = (float)(((float)i - (float)lowd) / (float)(highd - lowd));
            ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
            float extra = 1.0f - ramp; /* extrapolation weight */
            float interp = 1.0f / (r->factor * pos_freq);
            inv = interp * (1.0f - extra) + inv * extra;
            break;
        }
        }
        if (freq_factors) inv /= freq_factors[i];
        m->rope_inv_freq[i] = inv;
    }
    if (r->type == XDS_ROPE_SCALING_YARN) {
        if (r->attn_factor > 0) m->rope_attn_factor = r->attn_factor;
        else if (r->mscale > 0 && r->mscale_all_dim > 0)
            m->rope_attn_factor = yarn_mscale(r->factor, r->mscale) / yarn_mscale(r->factor, r->mscale_all_dim);
        else m->rope_attn_factor = yarn_mscale(r->factor, 1.0f);
    }
}

/* ------------------------------------------------------------------------ */
/* Tensor binding                                                            */

typedef struct {
    xds_model *m;
    int gguf;
    const xds_model_opts *opts;
    int64_t done, total; /* tensors bound, for progress */
    volatile uint8_t sink;
} loader;

static void progress(loader *L) {
    L->done++;
    if (L->opts && L->opts->progress && L->total > 0)
        L->opts->progress(L->opts->progress_user, (float)L->done / (float)L->total);
}

static void prefault(loader *L, const xds_tensor *t) {
    if (!L->opts || !L->opts->prefault) return;
    const volatile uint8_t *p = t->data;
    uint8_t acc = 0;
    for (size_t o = 0; o < t->nbytes; o += 4096) acc ^= p[o];
    if (t->nbytes) acc ^= p[t->nbytes - 1];
    L->sink ^= acc;
}

/* Find `name`, check (ne0[, ne1]) (ne1 < 0: 1-D), copy the view into *dst. */
static xds_status bind(loader *L, const char *name, int64_t ne0, int64_t ne1, xds_tensor *dst) {
    const xds_tensor *t = xds_weights_find(L->m->weights, name);
    if (!t)
        return xds_err_set(XDS_ERR_NOT_FOUND, "model: %s: missing tensor %s",
                           xds_weights_path(L->m->weights), name);
    int want_dims = ne1 < 0 ? 1 : 2;
    int ok = t->ne[0] == ne0 && (ne1 < 0 ? 1 : t->ne[1] == ne1);
    for (int i = want_dims; i < XDS_MAX_DIMS; i++) ok = ok && t->ne[i] == 1;
    if (!ok) {
        if (ne1 < 0)
            return xds_err_set(XDS_ERR_FORMAT,
                               "model: tensor %s has shape [%lld, %lld] but the config expects [%lld]", name,
                               (long long)t->ne[0], (long long)t->ne[1], (long long)ne0);
        return xds_err_set(XDS_ERR_FORMAT,
                           "model: tensor %s has shape [%lld, %lld] (ne0 = in, ne1 = out) but the config "
                           "expects [%lld, %lld]",
                           name, (long long)t->ne[0], (long long)t->ne[1], (long long)ne0, (long long)ne1);
    }
    if (xds_dtype_row_bytes(t->type, t->ne[0]) == 0)
        return xds_err_set(XDS_ERR_FORMAT, "model: tensor %s: row of %lld values is not a whole number of %s blocks",
                           name, (long long)t->ne[0], xds_dtype_name(t->type));
    *dst = *t;
    prefault(L, t);
    progress(L);
    return XDS_OK;
}

/* A 1-D vector of n values as an owned f32 copy. */
static xds_status bind_vec(loader *L, const char *name, int64_t n, float **dst) {
    xds_tensor t;
    XDS_TRY(bind(L, name, n, -1, &t));
    float *v = malloc(sizeof(float) * n);
    if (!v) return xds_err_set(XDS_ERR_NOMEM, "model: out of memory for %s", name);
    xds_dequant_row(t.type, t.data, v, n);
    *dst = v;
    return XDS_OK;
}

static const char *nm(char *buf, size_t cap, const loader *L, int layer, const char *gguf, const char *hf) {
    if (L->gguf) snprintf(buf, cap, "blk.%d.%s.weight", layer, gguf);
    else snprintf(buf, cap, "model.layers.%d.%s.weight", layer, hf);
    return buf;
}

static xds_status bind_all(loader *L) {
    xds_model *m = L->m;
    xds_model_config *c = &m->cfg;
    int g = L->gguf;
    char b[256];
    int64_t E = c->n_embd, qd = (int64_t)c->n_head * c->head_dim, kvd = (int64_t)c->n_head_kv * c->head_dim;
    L->total = 3 + 9LL * c->n_layer;
    XDS_TRY(bind(L, g ? "token_embd.weight" : "model.embed_tokens.weight", E, c->n_vocab, &m->tok_embd));
    XDS_TRY(bind_vec(L, g ? "output_norm.weight" : "model.norm.weight", E, &m->output_norm));
    const char *out_name = g ? "output.weight" : "lm_head.weight";
    if (g) c->tied_embd = xds_weights_find(m->weights, out_name) == NULL;
    if (c->tied_embd) {
        m->output = m->tok_embd;
        progress(L);
    } else XDS_TRY(bind(L, out_name, E, c->n_vocab, &m->output));
    m->layers = calloc(c->n_layer, sizeof *m->layers);
    if (!m->layers) return xds_err_set(XDS_ERR_NOMEM, "model: out of memory");
    if (c->arch != XDS_ARCH_LLAMA) XDS_TRY(xds_arch_bind_layers(m, g, L->opts));
    else for (int l = 0; l < c->n_layer; l++) {
        xds_layer_weights *w = &m->layers[l];
        XDS_TRY(bind_vec(L, nm(b, sizeof b, L, l, "attn_norm", "input_layernorm"), E, &w->attn_norm));
        XDS_TRY(bind(L, nm(b, sizeof b, L, l, "attn_q", "self_attn.q_proj"), E, qd, &w->wq));
        XDS_TRY(bind(L, nm(b, sizeof b, L, l, "attn_k", "self_attn.k_proj"), E, kvd, &w->wk));
        XDS_TRY(bind(L, nm(b, sizeof b, L, l, "attn_v", "self_attn.v_proj"), E, kvd, &w->wv));
        XDS_TRY(bind(L, nm(b, sizeof b, L, l, "attn_output", "self_attn.o_proj"), qd, E, &w->wo));
        XDS_TRY(bind_vec(L, nm(b, sizeof b, L, l, "ffn_norm", "post_attention_layernorm"), E, &w->ffn_norm));
        XDS_TRY(bind(L, nm(b, sizeof b, L, l, "ffn_gate", "mlp.gate_proj"), E, c->n_ff, &w->w_gate));
        XDS_TRY(bind(L, nm(b, sizeof b, L, l, "ffn_up", "mlp.up_proj"), E, c->n_ff, &w->w_up));
        XDS_TRY(bind(L, nm(b, sizeof b, L, l, "ffn_down", "mlp.down_proj"), c->n_ff, E, &w->w_down));
    }
    /* RoPE */
    m->rope_inv_freq = calloc(c->rope_dim / 2 + 1, sizeof(float));
    if (!m->rope_inv_freq) return xds_err_set(XDS_ERR_NOMEM, "model: out of memory");
    float *ff = NULL;
    if (g && xds_weights_find(m->weights, "rope_freqs.weight"))
        XDS_TRY(bind_vec(L, "rope_freqs.weight", c->rope_dim / 2, &ff));
    rope_init(m, ff);
    free(ff);
    m->attn_scale = 1.0f / sqrtf((float)c->head_dim);
    return XDS_OK;
}

xds_status xds_model_load(const char *path, const xds_model_opts *opts, xds_model **out) {
    if (opts && opts->quantize != XDS_QUANTIZE_NONE && opts->quantize != XDS_QUANTIZE_W8A8)
        return xds_err_set(XDS_ERR_INVALID, "model: unknown quantize mode %d", opts->quantize);
    xds_model *m = calloc(1, sizeof *m);
    if (!m) return xds_err_set(XDS_ERR_NOMEM, "model: out of memory");
    xds_status s = xds_weights_open(path, &m->weights);
    if (s != XDS_OK) {
        free(m);
        return s;
    }
    loader L = {.m = m, .gguf = xds_weights_is_gguf(m->weights), .opts = opts};
    m->quantize = opts ? opts->quantize : XDS_QUANTIZE_NONE;
    if (L.gguf) s = config_from_gguf(xds_weights_gguf(m->weights), &m->cfg);
    else s = config_from_json(xds_hfdir_config(xds_weights_hfdir(m->weights)), &m->cfg);
    if (s == XDS_OK && L.gguf && m->cfg.n_vocab == 0) {
        const xds_tensor *te = xds_weights_find(m->weights, "token_embd.weight");
        if (te && te->ne[1] < INT32_MAX) m->cfg.n_vocab = (int)te->ne[1];
    }
    if (s == XDS_OK) s = config_check(&m->cfg);
    if (s == XDS_OK) s = bind_all(&L);
    if (s == XDS_OK && !(opts && opts->no_repack))
        s = xds_model_repack(m); /* Q8_0 matmul weights -> Q8_0_R16 (AVX-512), or all -> W8A8 */
    if (s != XDS_OK) {
        xds_model_free(m);
        return s;
    }
    *out = m;
    return XDS_OK;
}

void xds_model_free(xds_model *m) {
    if (!m) return;
    xds_arch_free_layers(m);
    if (m->layers) {
        for (int l = 0; l < m->cfg.n_layer; l++) {
            free(m->layers[l].attn_norm);
            free(m->layers[l].ffn_norm);
        }
        free(m->layers);
    }
    free(m->output_norm);
    free(m->rope_inv_freq);
    xds_model_repack_free(m);
    xds_weights_close(m->weights);
    free(m);
}

size_t xds_model_weight_bytes(const xds_model *m) {
    size_t n = m->output.nbytes + xds_arch_weight_bytes(m);
    for (int l = 0; l < m->cfg.n_layer; l++) {
        const xds_layer_weights *w = &m->layers[l];
        n += w->wq.nbytes + w->wk.nbytes + w->wv.nbytes + w->wo.nbytes + w->w_gate.nbytes +
             w->w_up.nbytes + w->w_down.nbytes;
    }
    return n;
}

int xds_quantize_parse(const char *name, int *out) {
    if (!name) return -1;
    if (!strcmp(name, "w8a8")) *out = XDS_QUANTIZE_W8A8;
    else if (!strcmp(name, "none")) *out = XDS_QUANTIZE_NONE;
    else return -1;
    return 0;
}
