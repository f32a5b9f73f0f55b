/*
 * arch_moe.c — configuration and weight binding of the MoE architectures
 * (qwen3_moe, mixtral, deepseek_v3 / kimi_k2), called by the loader in
 * model.c after it parsed the fields every architecture shares.
 *
 * Names bound (Hugging Face):
 *   attention  qwen3_moe/mixtral: self_attn.{q,k,v,o}_proj (+ q_norm, k_norm for qwen3_moe)
 *              deepseek_v3: self_attn.{q_a_proj, q_a_layernorm, q_b_proj | q_proj,
 *              kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj, o_proj}
 *   MoE FFN    mlp.gate.weight (+ mlp.gate.e_score_correction_bias), mlp.experts.E.{gate,up,down}_proj,
 *              mlp.shared_experts.{gate,up,down}_proj; mixtral: block_sparse_moe.gate,
 *              block_sparse_moe.experts.E.{w1 (gate), w3 (up), w2 (down)}
 *   dense FFN  mlp.{gate,up,down}_proj (qwen3 mlp_only / sparse_step layers, deepseek first_k_dense)
 *   MTP        model.layers.{L+i}.{enorm, hnorm, eh_proj, shared_head.norm, shared_head.head} plus a
 *              full decoder block, i < num_nextn_predict_layers
 * GGUF (llama.cpp's Mixtral-as-llama layout, e.g. `xds upcycle` output):
 *   blk.N.ffn_gate_inp.weight (router), blk.N.ffn_{gate,up,down}_exps.weight (3-D, one slice per expert).
 * GGUF qwen3moe / deepseek2 (llama.cpp's convert_hf_to_gguf.py names and keys): the same expert tensors,
 *   exp_probs_b.bias, *_shexp; deepseek2 MLA either as blk.N.attn_kv_b (older converters; key_length =
 *   nope + rope, value_length = v_dim) or, as the converter writes it since MLA absorption, split into
 *   blk.N.attn_k_b (ne = nope, kv_lora, n_head) + attn_v_b (ne = kv_lora, v_dim, n_head) with
 *   key_length_mla / value_length_mla holding the per-head dims (key_length / value_length then describe
 *   the latent MQA cache: kv_lora + rope / kv_lora).
 *
 * Invariants: config fields are checked for consistency before any tensor is
 * bound (errors name the field); every tensor's shape is checked against the
 * config (errors name the tensor); on failure everything bound so far is
 * released by xds_arch_free_layers (called from xds_model_free).
 */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "base/log.h"
#include "kernels/kernels.h"
#include "model/moe.h"

/* ------------------------------------------------------------------------ */
/* Configuration                                                             */

static xds_status jint(const json_t *o, const char *key, int req, int def, int *out) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        if (req) return xds_err_set(XDS_ERR_NOT_FOUND, "model: config.json: missing field '%s'", key);
        *out = def;
        return XDS_OK;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX)
        return xds_err_set(XDS_ERR_FORMAT, "model: config.json: field '%s' is not a valid non-negative integer",
                           key);
    *out = (int)json_integer_value(v);
    return XDS_OK;
}

static xds_status jnum(const json_t *o, const char *key, float def, float *out) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return XDS_OK;
    }
    if (!json_is_number(v)) return xds_err_set(XDS_ERR_FORMAT, "model: config.json: field '%s' is not a number", key);
    double d = json_number_value(v);
    if (!(fabs(d) <= FLT_MAX)) /* a float cannot hold it (the conversion would be undefined) */
        return xds_err_set(XDS_ERR_FORMAT, "model: config.json: field '%s' = %g is out of range", key, d);
    *out = (float)d;
    return XDS_OK;
}

static xds_status jbool(const json_t *o, const char *key, int def, int *out) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) *out = def;
    else if (json_is_boolean(v)) *out = json_is_true(v);
    else return xds_err_set(XDS_ERR_FORMAT, "model: config.json: field '%s' is not a boolean", key);
    return XDS_OK;
}

static xds_status moe_check(const xds_model_config *c) {
    const xds_moe_config *e = &c->moe;
#define BAD(cond, ...) \
    if (cond) return xds_err_set(XDS_ERR_FORMAT, "model: config.json: " __VA_ARGS__)
    BAD(e->n_expert <= 0 || e->n_expert > 65536, "expert count %d out of range (1..65536)", e->n_expert);
    BAD(e->n_expert_used <= 0, "num_experts_per_tok %d must be positive", e->n_expert_used);
    BAD(e->n_expert_used > e->n_expert, "num_experts_per_tok (%d) > number of routed experts (%d)",
        e->n_expert_used, e->n_expert);
    BAD(e->n_ff_exp <= 0 || e->n_ff_exp > (1 << 22), "moe_intermediate_size %d out of range", e->n_ff_exp);
    BAD(e->n_shared < 0 || e->n_shared > 64, "n_shared_experts %d out of range", e->n_shared);
    BAD(e->n_group <= 0, "n_group %d must be positive", e->n_group);
    BAD(e->n_expert % e->n_group, "number of routed experts (%d) is not divisible by n_group (%d)", e->n_expert,
        e->n_group);
    BAD(e->topk_group <= 0, "topk_group %d must be positive", e->topk_group);
    BAD(e->topk_group > e->n_group, "topk_group (%d) > n_group (%d)", e->topk_group, e->n_group);
    BAD(e->n_group > 1 && e->n_expert / e->n_group < 2,
        "n_group %d leaves fewer than 2 experts per group (group scores sum each group's top 2)", e->n_group);
    BAD(e->n_expert_used > e->topk_group * (e->n_expert / e->n_group),
        "num_experts_per_tok (%d) > experts in the topk_group (%d) selected groups (%d)", e->n_expert_used,
        e->topk_group, e->topk_group * (e->n_expert / e->n_group));
    BAD(e->first_dense < 0 || e->first_dense > c->n_layer, "first_k_dense_replace %d out of range [0, %d]",
        e->first_dense, c->n_layer);
    BAD(e->sparse_step <= 0, "decoder_sparse_step %d must be positive", e->sparse_step);
    BAD(!(e->routed_scale > 0) || !isfinite(e->routed_scale), "routed_scaling_factor must be positive");
    BAD(e->n_mtp < 0 || e->n_mtp > 16, "num_nextn_predict_layers %d out of range", e->n_mtp);
    if (c->arch == XDS_ARCH_DEEPSEEK_V3) {
        const xds_mla_config *a = &c->mla;
        BAD(a->kv_lora_rank <= 0 || a->kv_lora_rank > 65536, "kv_lora_rank %d out of range", a->kv_lora_rank);
        BAD(a->q_lora_rank < 0 || a->q_lora_rank > 65536, "q_lora_rank %d out of range", a->q_lora_rank);
        BAD(c->rope_dim <= 0 || c->rope_dim % 2 || c->rope_dim > 4096, "qk_rope_head_dim %d must be even and positive",
            c->rope_dim);
        BAD(a->nope_dim < 0 || a->nope_dim > 4096, "qk_nope_head_dim %d out of range", a->nope_dim);
        BAD(a->v_dim <= 0 || a->v_dim > 4096, "v_head_dim %d out of range", a->v_dim);
    }
#undef BAD
    return XDS_OK;
}

xds_status xds_arch_config_from_json(const void *json_obj, xds_model_config *c) {
    const json_t *j = json_obj;
    xds_moe_config *e = &c->moe;
    e->n_group = e->topk_group = 1;
    e->routed_scale = 1.0f;
    e->sparse_step = 1;
    e->scoring = XDS_MOE_SOFTMAX;
    switch (c->arch) {
    case XDS_ARCH_QWEN3_MOE: {
        c->qk_norm = 1;
        if (json_object_get(j, "num_experts")) XDS_TRY(jint(j, "num_experts", 1, 0, &e->n_expert));
        else XDS_TRY(jint(j, "num_local_experts", 1, 0, &e->n_expert));
        XDS_TRY(jint(j, "num_experts_per_tok", 1, 0, &e->n_expert_used));
        XDS_TRY(jint(j, "moe_intermediate_size", 1, 0, &e->n_ff_exp));
        XDS_TRY(jbool(j, "norm_topk_prob", 0, &e->norm_topk_prob));
        XDS_TRY(jint(j, "decoder_sparse_step", 0, 1, &e->sparse_step));
        json_t *ml = json_object_get(j, "mlp_only_layers");
        if (ml && !json_is_null(ml)) {
            if (!json_is_array(ml))
                return xds_err_set(XDS_ERR_FORMAT, "model: config.json: field 'mlp_only_layers' is not an array");
            for (size_t i = 0; i < json_array_size(ml); i++) {
                json_t *v = json_array_get(ml, i);
                if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= c->n_layer)
                    return xds_err_set(XDS_ERR_FORMAT, "model: config.json: mlp_only_layers[%zu] is not a layer index",
                                       i);
                if (json_integer_value(v) >= 64)
                    return xds_err_set(XDS_ERR_UNSUPPORTED, "model: config.json: mlp_only_layers entry %lld >= 64",
                                       (long long)json_integer_value(v));
                e->dense_mask |= 1ULL << json_integer_value(v);
            }
        }
        break;
    }
    case XDS_ARCH_MIXTRAL:
        XDS_TRY(jint(j, "num_local_experts", 1, 0, &e->n_expert));
        XDS_TRY(jint(j, "num_experts_per_tok", 0, 2, &e->n_expert_used));
        e->n_ff_exp = c->n_ff;
        e->norm_topk_prob = 1;
        break;
    case XDS_ARCH_DEEPSEEK_V3: {
        e->scoring = XDS_MOE_SIGMOID;
        XDS_TRY(jint(j, "n_routed_experts", 1, 0, &e->n_expert));
        XDS_TRY(jint(j, "num_experts_per_tok", 1, 0, &e->n_expert_used));
        XDS_TRY(jint(j, "moe_intermediate_size", 1, 0, &e->n_ff_exp));
        XDS_TRY(jint(j, "n_shared_experts", 0, 0, &e->n_shared));
        XDS_TRY(jint(j, "n_group", 0, 1, &e->n_group));
        XDS_TRY(jint(j, "topk_group", 0, 1, &e->topk_group));
        XDS_TRY(jbool(j, "norm_topk_prob", 0, &e->norm_topk_prob));
        XDS_TRY(jnum(j, "routed_scaling_factor", 1.0f, &e->routed_scale));
        XDS_TRY(jint(j, "first_k_dense_replace", 0, 0, &e->first_dense));
        XDS_TRY(jint(j, "num_nextn_predict_layers", 0, 0, &e->n_mtp));
        int freq;
        XDS_TRY(jint(j, "moe_layer_freq", 0, 1, &freq));
        if (freq != 1)
            return xds_err_set(XDS_ERR_UNSUPPORTED, "model: config.json: moe_layer_freq %d is not supported (1 only)",
                               freq);
        json_t *sf = json_object_get(j, "scoring_func");
        if (json_is_string(sf) && strcmp(json_string_value(sf), "sigmoid") != 0)
            return xds_err_set(XDS_ERR_UNSUPPORTED,
                               "model: config.json: scoring_func '%.32s' is not supported (sigmoid only)",
                               json_string_value(sf));
        json_t *tm = json_object_get(j, "topk_method");
        if (json_is_string(tm) && strcmp(json_string_value(tm), "noaux_tc") != 0)
            return xds_err_set(XDS_ERR_UNSUPPORTED,
                               "model: config.json: topk_method '%.32s' is not supported (noaux_tc only)",
                               json_string_value(tm));
        xds_mla_config *a = &c->mla;
        XDS_TRY(jint(j, "q_lora_rank", 0, 0, &a->q_lora_rank));
        XDS_TRY(jint(j, "kv_lora_rank", 1, 0, &a->kv_lora_rank));
        XDS_TRY(jint(j, "qk_nope_head_dim", 1, 0, &a->nope_dim));
        XDS_TRY(jint(j, "qk_rope_head_dim", 1, 0, &c->rope_dim));
        XDS_TRY(jint(j, "v_head_dim", 1, 0, &a->v_dim));
        int inter = 1;
        XDS_TRY(jbool(j, "rope_interleave", 1, &inter));
        c->rope_mode = inter ? XDS_ROPE_MODE_NORM : XDS_ROPE_MODE_NEOX;
        c->head_dim = a->nope_dim + c->rope_dim;
        c->n_head_kv = c->n_head; /* every head has its own K/V (expanded from the latent) */
        break;
    }
    default: return xds_err_set(XDS_ERR_INTERNAL, "model: architecture %d has no MoE config", (int)c->arch);
    }
    return moe_check(c);
}

xds_status xds_arch_config_from_gguf(const xds_gguf *g, xds_model_config *c) {
    uint32_t v;
    xds_moe_config *e = &c->moe;
    XDS_TRY(xds_gguf_get_u32(g, "llama.expert_count", &v));
    if (v == 0) return XDS_OK; /* a dense llama */
    if (v > 65536) return xds_err_set(XDS_ERR_FORMAT, "model: GGUF llama.expert_count %u out of range", v);
    e->n_expert = (int)v;
    xds_status s = xds_gguf_get_u32(g, "llama.expert_used_count", &v);
    if (s != XDS_OK) return xds_err_prefix(s, "model: GGUF key llama.expert_used_count");
    if (v > 65536) return xds_err_set(XDS_ERR_FORMAT, "model: GGUF llama.expert_used_count %u out of range", v);
    e->n_expert_used = (int)v;
    e->n_ff_exp = c->n_ff;
    if (xds_gguf_get_u32(g, "llama.expert_feed_forward_length", &v) == XDS_OK && v > 0 && v < (1u << 22))
        e->n_ff_exp = (int)v;
    else xds_err_clear();
    c->arch = XDS_ARCH_MIXTRAL;
    e->norm_topk_prob = 1;
    e->n_group = e->topk_group = 1;
    e->routed_scale = 1.0f;
    e->sparse_step = 1;
    e->scoring = XDS_MOE_SOFTMAX;
    xds_status r = moe_check(c);
    if (r != XDS_OK) {
        /* name the GGUF keys, not config.json */
        return xds_err_set(r, "model: %s: llama.expert_count %d / llama.expert_used_count %d: inconsistent",
                           xds_gguf_path(g), e->n_expert, e->n_expert_used);
    }
    return XDS_OK;
}

int xds_arch_layer_moe(const xds_model_config *c, int l) {
    const xds_moe_config *e = &c->moe;
    if (e->n_expert <= 0) return 0;
    switch (c->arch) {
    case XDS_ARCH_QWEN3_MOE:
        return !(l < 64 && (e->dense_mask >> l) & 1) && (l + 1) % e->sparse_step == 0;
    case XDS_ARCH_MIXTRAL: return 1;
    case XDS_ARCH_DEEPSEEK_V3: return l >= e->first_dense;
    default: return 0;
    }
}

int xds_model_layer_is_moe(const xds_model *m, int layer) {
    return layer >= 0 && layer < m->cfg.n_layer && m->layers[layer].moe != NULL;
}

void xds_model_kv_dims(const xds_model *m, int *k_dim, int *v_dim) {
    const xds_model_config *c = &m->cfg;
    if (c->arch == XDS_ARCH_DEEPSEEK_V3) {
        *k_dim = c->mla.kv_lora_rank + c->rope_dim;
        *v_dim = 0;
    } else {
        *k_dim = *v_dim = c->n_head_kv * c->head_dim;
    }
}

/* ------------------------------------------------------------------------ */
/* Binding                                                                   */

typedef struct {
    xds_model *m;
    int gguf;
    const xds_model_opts *opts;
    volatile uint8_t sink;
} binder;

static void touch(binder *B, const void *data, size_t n) {
    if (!B->opts || !B->opts->prefault) return;
    const volatile uint8_t *p = data;
    uint8_t acc = 0;
    for (size_t o = 0; o < n; o += 4096) acc ^= p[o];
    if (n) acc ^= p[n - 1];
    B->sink ^= acc;
}

/* Tensor `name` with ne = (ne0, ne1, ne2) (ne1/ne2 < 0: fewer dims). */
static xds_status get3(binder *B, const char *name, int64_t ne0, int64_t ne1, int64_t ne2, const xds_tensor **out) {
    const xds_tensor *t = xds_weights_find(B->m->weights, name);
    if (!t)
        return xds_err_set(XDS_ERR_NOT_FOUND, "model: %s: missing tensor %s", xds_weights_path(B->m->weights), name);
    int64_t want[XDS_MAX_DIMS] = {ne0, ne1 < 0 ? 1 : ne1, ne2 < 0 ? 1 : ne2, 1};
    int ok = 1;
    for (int i = 0; i < XDS_MAX_DIMS; i++) ok = ok && t->ne[i] == want[i];
    if (!ok)
        return xds_err_set(XDS_ERR_FORMAT,
                           "model: tensor %s has shape [%lld, %lld, %lld] (ne0 = in) but the config expects "
                           "[%lld, %lld, %lld]",
                           name, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2], (long long)want[0],
                           (long long)want[1], (long long)want[2]);
    if (xds_dtype_row_bytes(t->type, t->ne[0]) == 0)
        return xds_err_set(XDS_ERR_FORMAT, "model: tensor %s: row of %lld values is not a whole number of %s blocks",
                           name, (long long)t->ne[0], xds_dtype_name(t->type));
    touch(B, t->data, t->nbytes);
    *out = t;
    return XDS_OK;
}

static xds_status mat(binder *B, const char *name, int64_t in, int64_t out, xds_tensor *dst) {
    const xds_tensor *t;
    XDS_TRY(get3(B, name, in, out, -1, &t));
    *dst = *t;
    return XDS_OK;
}

static xds_status vec(binder *B, const char *name, int64_t n, float **dst) {
    const xds_tensor *t;
    XDS_TRY(get3(B, name, n, -1, -1, &t));
    float *v = malloc(sizeof(float) * n);
    if (!v) return xds_err_set(XDS_ERR_NOMEM, "model: out of memory for %s", name);
    xds_dequant_row(t->type, t->data, v, n);
    *dst = v;
    return XDS_OK;
}

/* Slice e of a 3-D expert tensor as a 2-D view. */
static xds_tensor slice3(const xds_tensor *t, int e) {
    xds_tensor v = *t;
    size_t per = xds_dtype_row_bytes(t->type, t->ne[0]) * (size_t)t->ne[1];
    v.data = (const uint8_t *)t->data + per * (size_t)e;
    v.nbytes = per;
    v.ne[2] = 1;
    v.n_dims = 2;
    return v;
}

#define NM(...) (snprintf(nb, sizeof nb, __VA_ARGS__), nb)

static xds_status bind_ffn(binder *B, const char *pre, int64_t E, int64_t F, xds_ffn_w *f, int mixtral) {
    char nb[320];
    XDS_TRY(mat(B, NM("%s.%s.weight", pre, mixtral ? "w1" : "gate_proj"), E, F, &f->gate));
    XDS_TRY(mat(B, NM("%s.%s.weight", pre, mixtral ? "w3" : "up_proj"), E, F, &f->up));
    XDS_TRY(mat(B, NM("%s.%s.weight", pre, mixtral ? "w2" : "down_proj"), F, E, &f->down));
    return XDS_OK;
}

static xds_status bind_moe(binder *B, int l, xds_layer_weights *w) {
    const xds_model_config *c = &B->m->cfg;
    const xds_moe_config *e = &c->moe;
    int64_t E = c->n_embd, F = e->n_ff_exp;
    char nb[320], pre[256];
    xds_moe_layer *moe = calloc(1, sizeof *moe);
    if (!moe) return xds_err_set(XDS_ERR_NOMEM, "model: out of memory");
    w->moe = moe;
    moe->experts = calloc(e->n_expert, sizeof *moe->experts);
    if (!moe->experts) return xds_err_set(XDS_ERR_NOMEM, "model: out of memory for %d experts", e->n_expert);
    if (B->gguf) {
        XDS_TRY(mat(B, NM("blk.%d.ffn_gate_inp.weight", l), E, e->n_expert, &moe->router));
        const xds_tensor *tg, *tu, *td;
        XDS_TRY(get3(B, NM("blk.%d.ffn_gate_exps.weight", l), E, F, e->n_expert, &tg));
        XDS_TRY(get3(B, NM("blk.%d.ffn_up_exps.weight", l), E, F, e->n_expert, &tu));
        XDS_TRY(get3(B, NM("blk.%d.ffn_down_exps.weight", l), F, E, e->n_expert, &td));
        for (int x = 0; x < e->n_expert; x++) {
            moe->experts[x].gate = slice3(tg, x);
            moe->experts[x].up = slice3(tu, x);
            moe->experts[x].down = slice3(td, x);
        }
        if (c->arch == XDS_ARCH_DEEPSEEK_V3) {
            const char *bn = NM("blk.%d.exp_probs_b.bias", l);
            if (xds_weights_find(B->m->weights, bn)) XDS_TRY(vec(B, bn, e->n_expert, &moe->score_bias));
            else if (!(moe->score_bias = calloc(e->n_expert, sizeof(float))))
                return xds_err_set(XDS_ERR_NOMEM, "model: out of memory");
        }
        if (e->n_shared > 0) {
            int64_t S = (int64_t)e->n_shared * F;
            XDS_TRY(mat(B, NM("blk.%d.ffn_gate_shexp.weight", l), E, S, &moe->shared.gate));
            XDS_TRY(mat(B, NM("blk.%d.ffn_up_shexp.weight", l), E, S, &moe->shared.up));
            XDS_TRY(mat(B, NM("blk.%d.ffn_down_shexp.weight", l), S, E, &moe->shared.down));
            moe->has_shared = 1;
        }
        return XDS_OK;
    }
    int mix = c->arch == XDS_ARCH_MIXTRAL;
    const char *blk = mix ? "block_sparse_moe" : "mlp";
    XDS_TRY(mat(B, NM("model.layers.%d.%s.gate.weight", l, blk), E, e->n_expert, &moe->router));
    if (c->arch == XDS_ARCH_DEEPSEEK_V3) {
        const char *bn = NM("model.layers.%d.mlp.gate.e_score_correction_bias", l);
        if (xds_weights_find(B->m->weights, bn)) XDS_TRY(vec(B, bn, e->n_expert, &moe->score_bias));
        else { /* absent = zeros, as transformers initializes it */
            moe->score_bias = calloc(e->n_expert, sizeof(float));
            if (!moe->score_bias) return xds_err_set(XDS_ERR_NOMEM, "model: out of memory");
        }
    }
    for (int x = 0; x < e->n_expert; x++) {
        snprintf(pre, sizeof pre, "model.layers.%d.%s.experts.%d", l, blk, x);
        XDS_TRY(bind_ffn(B, pre, E, F, &moe->experts[x], mix));
    }
    if (e->n_shared > 0) {
        snprintf(pre, sizeof pre, "model.layers.%d.mlp.shared_experts", l);
        XDS_TRY(bind_ffn(B, pre, E, (int64_t)e->n_shared * F, &moe->shared, 0));
        moe->has_shared = 1;
    }
    return XDS_OK;
}

/* llama.cpp's deepseek2 name of an HF self_attn tensor. */
static const char *gguf_mla_name(char *nb, size_t cap, int l, const char *hf) {
    static const char *map[][2] = {{"q_a_proj", "attn_q_a"},           {"q_a_layernorm", "attn_q_a_norm"},
                                   {"q_b_proj", "attn_q_b"},           {"q_proj", "attn_q"},
                                   {"kv_a_proj_with_mqa", "attn_kv_a_mqa"}, {"kv_a_layernorm", "attn_kv_a_norm"},
                                   {"kv_b_proj", "attn_kv_b"},         {"o_proj", "attn_output"}};
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (!strcmp(hf, map[i][0])) {
            snprintf(nb, cap, "blk.%d.%s.weight", l, map[i][1]);
            return nb;
        }
    snprintf(nb, cap, "blk.%d.%s.weight", l, hf);
    return nb;
}

static xds_status bind_mla(binder *B, int l, xds_layer_weights *w) {
    const xds_model_config *c = &B->m->cfg;
    const xds_mla_config *a = &c->mla;
    int64_t E = c->n_embd, H = c->n_head, qk = c->head_dim, R = a->kv_lora_rank, nope = a->nope_dim;
    char nb[320];
    xds_mla_layer *t = calloc(1, sizeof *t);
    if (!t) return xds_err_set(XDS_ERR_NOMEM, "model: out of memory");
    w->mla = t;
#define HF(s) (B->gguf ? gguf_mla_name(nb, sizeof nb, l, s) : NM("model.layers.%d.self_attn." s ".weight", l))
    if (a->q_lora_rank > 0) {
        XDS_TRY(mat(B, HF("q_a_proj"), E, a->q_lora_rank, &t->wq_a));
        XDS_TRY(vec(B, HF("q_a_layernorm"), a->q_lora_rank, &t->q_a_norm));
        XDS_TRY(mat(B, HF("q_b_proj"), a->q_lora_rank, H * qk, &t->wq_b));
    } else {
        XDS_TRY(mat(B, HF("q_proj"), E, H * qk, &t->wq));
    }
    XDS_TRY(mat(B, HF("kv_a_proj_with_mqa"), E, R + c->rope_dim, &t->wkv_a));
    XDS_TRY(vec(B, HF("kv_a_layernorm"), R, &t->kv_a_norm));
    XDS_TRY(mat(B, HF("o_proj"), H * a->v_dim, E, &t->wo));
    if (B->gguf && xds_weights_find(B->m->weights, NM("blk.%d.attn_k_b.weight", l))) {
        /* llama.cpp's converter splits kv_b_proj per head into k_b (transposed:
         * ne = (nope, kv_lora, n_head), i.e. exactly the absorbed-K layout) and
         * v_b (ne = (kv_lora, v_dim, n_head)); used in place, as 2-D views */
        const xds_tensor *tk, *tv;
        XDS_TRY(get3(B, NM("blk.%d.attn_k_b.weight", l), nope, R, H, &tk));
        XDS_TRY(get3(B, NM("blk.%d.attn_v_b.weight", l), R, a->v_dim, H, &tv));
        t->wk_b_t = *tk;
        t->wv_b = *tv;
        t->wk_b_t.ne[1] = H * R;
        t->wv_b.ne[1] = H * a->v_dim;
        t->wk_b_t.ne[2] = t->wv_b.ne[2] = 1;
        t->wk_b_t.n_dims = t->wv_b.n_dims = 2;
        return XDS_OK;
    }
    XDS_TRY(mat(B, HF("kv_b_proj"), R, H * (nope + a->v_dim), &t->wkv_b));
#undef HF
    /* Absorbed K: wk_b_t row (h, c) = W_kv_b[h*(nope+v) + d][c] over d < nope. */
    if (nope > 0) {
        size_t n = (size_t)H * R * nope;
        t->wk_b_t_data = malloc(sizeof(float) * n);
        float *row = malloc(sizeof(float) * R);
        if (!t->wk_b_t_data || !row) {
            free(row);
            return xds_err_set(XDS_ERR_NOMEM, "model: out of memory for layer %d's absorbed K (%zu floats)", l, n);
        }
        for (int64_t h = 0; h < H; h++)
            for (int64_t d = 0; d < nope; d++) {
                xds_get_row(&t->wkv_b, h * (nope + a->v_dim) + d, row);
                for (int64_t cc = 0; cc < R; cc++) t->wk_b_t_data[(h * R + cc) * nope + d] = row[cc];
            }
        free(row);
        xds_tensor *k = &t->wk_b_t;
        k->name = "wk_b_t";
        k->type = XDS_DTYPE_F32;
        k->n_dims = 2;
        k->ne[0] = nope;
        k->ne[1] = H * R;
        k->ne[2] = k->ne[3] = 1;
        k->data = t->wk_b_t_data;
        k->nbytes = sizeof(float) * n;
        /* quantized checkpoints: keep the transposed copy in the weight's own
         * type (a quarter of the bytes for Q8_0) when its blocks fit a row */
        xds_dtype ty = t->wkv_b.type;
        int qable = ty == XDS_DTYPE_Q8_0 || ty == XDS_DTYPE_Q4_0 || ty == XDS_DTYPE_Q4_1 || ty == XDS_DTYPE_F16 ||
                    ty == XDS_DTYPE_BF16;
        size_t rb = qable ? xds_dtype_row_bytes(ty, nope) : 0;
        if (rb > 0) {
            uint8_t *qd = malloc(rb * (size_t)H * R);
            if (!qd) return xds_err_set(XDS_ERR_NOMEM, "model: out of memory for layer %d's absorbed K", l);
            for (int64_t r = 0; r < H * R; r++) xds_quant_row(ty, t->wk_b_t_data + r * nope, qd + r * rb, nope);
            free(t->wk_b_t_data);
            t->wk_b_t_data = (float *)qd;
            k->type = ty;
            k->data = qd;
            k->nbytes = rb * (size_t)H * R;
        }
    }
    return XDS_OK;
}

/* One decoder block with HF names (index l may be an MTP layer >= n_layer). */
static xds_status bind_block(binder *B, int l, xds_layer_weights *w) {
    const xds_model_config *c = &B->m->cfg;
    int64_t E = c->n_embd, qd = (int64_t)c->n_head * c->head_dim, kvd = (int64_t)c->n_head_kv * c->head_dim;
    char nb[320];
    int g = B->gguf;
#define N2(gg, hf) (g ? NM("blk.%d." gg ".weight", l) : NM("model.layers.%d." hf ".weight", l))
    XDS_TRY(vec(B, N2("attn_norm", "input_layernorm"), E, &w->attn_norm));
    if (c->arch == XDS_ARCH_DEEPSEEK_V3) {
        XDS_TRY(bind_mla(B, l, w));
    } else {
        XDS_TRY(mat(B, N2("attn_q", "self_attn.q_proj"), E, qd, &w->wq));
        XDS_TRY(mat(B, N2("attn_k", "self_attn.k_proj"), E, kvd, &w->wk));
        XDS_TRY(mat(B, N2("attn_v", "self_attn.v_proj"), E, kvd, &w->wv));
        XDS_TRY(mat(B, N2("attn_output", "self_attn.o_proj"), qd, E, &w->wo));
        if (c->qk_norm) {
            XDS_TRY(vec(B, N2("attn_q_norm", "self_attn.q_norm"), c->head_dim, &w->q_norm));
            XDS_TRY(vec(B, N2("attn_k_norm", "self_attn.k_norm"), c->head_dim, &w->k_norm));
        }
    }
    XDS_TRY(vec(B, N2("ffn_norm", "post_attention_layernorm"), E, &w->ffn_norm));
    if (xds_arch_layer_moe(c, l < c->n_layer ? l : c->n_layer - 1)) {
        XDS_TRY(bind_moe(B, l, w));
    } else {
        XDS_TRY(mat(B, N2("ffn_gate", "mlp.gate_proj"), E, c->n_ff, &w->w_gate));
        XDS_TRY(mat(B, N2("ffn_up", "mlp.up_proj"), E, c->n_ff, &w->w_up));
        XDS_TRY(mat(B, N2("ffn_down", "mlp.down_proj"), c->n_ff, E, &w->w_down));
    }
#undef N2
    return XDS_OK;
}

xds_status xds_arch_bind_layers(xds_model *m, int gguf, const xds_model_opts *opts) {
    binder B = {.m = m, .gguf = gguf, .opts = opts};
    xds_model_config *c = &m->cfg;
    for (int l = 0; l < c->n_layer; l++) {
        XDS_TRY(bind_block(&B, l, &m->layers[l]));
        if (opts && opts->progress) opts->progress(opts->progress_user, (float)(l + 1) / (float)(c->n_layer + 1));
    }
    if (c->moe.n_mtp > 0 && !gguf) {
        char nb[320];
        if (!xds_weights_find(m->weights, NM("model.layers.%d.eh_proj.weight", c->n_layer))) {
            XDS_LOGW("model: %s: config.json says num_nextn_predict_layers = %d but the checkpoint has no %s; "
                     "MTP layers not loaded",
                     xds_weights_path(m->weights), c->moe.n_mtp, nb);
            c->moe.n_mtp = 0;
            return XDS_OK;
        }
        m->mtp = calloc(c->moe.n_mtp, sizeof *m->mtp);
        if (!m->mtp) return xds_err_set(XDS_ERR_NOMEM, "model: out of memory");
        int64_t E = c->n_embd;
        for (int i = 0; i < c->moe.n_mtp; i++) {
            int l = c->n_layer + i;
            xds_mtp_layer *t = &m->mtp[i];
            XDS_TRY(vec(&B, NM("model.layers.%d.enorm.weight", l), E, &t->enorm));
            XDS_TRY(vec(&B, NM("model.layers.%d.hnorm.weight", l), E, &t->hnorm));
            XDS_TRY(mat(&B, NM("model.layers.%d.eh_proj.weight", l), 2 * E, E, &t->eh_proj));
            XDS_TRY(vec(&B, NM("model.layers.%d.shared_head.norm.weight", l), E, &t->head_norm));
            if (xds_weights_find(m->weights, NM("model.layers.%d.shared_head.head.weight", l)))
                XDS_TRY(mat(&B, nb, E, c->n_vocab, &t->head));
            else t->head = m->output;
            XDS_TRY(bind_block(&B, l, &t->blk));
        }
    } else if (c->moe.n_mtp > 0) {
        c->moe.n_mtp = 0; /* GGUF: no MTP naming handled */
    }
    return XDS_OK;
}

static void free_block(xds_layer_weights *w) {
    free(w->q_norm);
    free(w->k_norm);
    w->q_norm = w->k_norm = NULL;
    if (w->moe) {
        free(w->moe->experts);
        free(w->moe->score_bias);
        free(w->moe);
        w->moe = NULL;
    }
    if (w->mla) {
        free(w->mla->q_a_norm);
        free(w->mla->kv_a_norm);
        free(w->mla->wk_b_t_data);
        free(w->mla);
        w->mla = NULL;
    }
}

void xds_arch_free_layers(xds_model *m) {
    if (m->layers)
        for (int l = 0; l < m->cfg.n_layer; l++) free_block(&m->layers[l]);
    if (m->mtp) {
        for (int i = 0; i < m->cfg.moe.n_mtp; i++) {
            xds_mtp_layer *t = &m->mtp[i];
            free(t->enorm);
            free(t->hnorm);
            free(t->head_norm);
            free(t->blk.attn_norm);
            free(t->blk.ffn_norm);
            free_block(&t->blk);
        }
        free(m->mtp);
        m->mtp = NULL;
    }
}

size_t xds_arch_weight_bytes(const xds_model *m) {
    size_t n = 0;
    if (!m->layers) return 0;
    for (int l = 0; l < m->cfg.n_layer; l++) {
        const xds_layer_weights *w = &m->layers[l];
        if (w->moe) {
            n += w->moe->router.nbytes;
            for (int e = 0; e < m->cfg.moe.n_expert; e++)
                n += w->moe->experts[e].gate.nbytes + w->moe->experts[e].up.nbytes + w->moe->experts[e].down.nbytes;
            if (w->moe->has_shared)
                n += w->moe->shared.gate.nbytes + w->moe->shared.up.nbytes + w->moe->shared.down.nbytes;
        }
        if (w->mla) {
            const xds_mla_layer *a = w->mla;
            n += a->wq_a.nbytes + a->wq_b.nbytes + a->wq.nbytes + a->wkv_a.nbytes + a->wkv_b.nbytes + a->wo.nbytes;
            if (!a->wkv_b.data) n += a->wk_b_t.nbytes + a->wv_b.nbytes; /* llama.cpp's split k_b / v_b */
        }
    }
    return n;
}

/* ------------------------------------------------------------------------ */
/* GGUF qwen3moe / deepseek2 (llama.cpp naming)                              */

static xds_status gk_u32(const xds_gguf *g, const char *pre, const char *key, int req, int def, int *out) {
    char k[128];
    snprintf(k, sizeof k, "%s.%s", pre, key);
    uint32_t v;
    xds_status s = xds_gguf_get_u32(g, k, &v);
    if (s == XDS_ERR_NOT_FOUND && !req) {
        xds_err_clear();
        *out = def;
        return XDS_OK;
    }
    if (s != XDS_OK) return xds_err_prefix(s, "model: GGUF key %s", k);
    if (v > (uint32_t)INT32_MAX) return xds_err_set(XDS_ERR_FORMAT, "model: GGUF key %s: %u too large", k, v);
    *out = (int)v;
    return XDS_OK;
}

static xds_status gk_f32(const xds_gguf *g, const char *pre, const char *key, float def, float *out) {
    char k[128];
    snprintf(k, sizeof k, "%s.%s", pre, key);
    xds_status s = xds_gguf_get_f32(g, k, out);
    if (s == XDS_ERR_NOT_FOUND) {
        xds_err_clear();
        *out = def;
        return XDS_OK;
    }
    return s == XDS_OK ? s : xds_err_prefix(s, "model: GGUF key %s", k);
}

xds_status xds_arch_config_from_gguf_arch(const xds_gguf *g, const char *arch, xds_model_config *c) {
    int ds = !strncmp(arch, "deepseek2", 9);
    const char *P = ds ? "deepseek2" : "qwen3moe";
    xds_moe_config *e = &c->moe;
    c->arch = ds ? XDS_ARCH_DEEPSEEK_V3 : XDS_ARCH_QWEN3_MOE;
    c->rope_mode = ds ? XDS_ROPE_MODE_NORM : XDS_ROPE_MODE_NEOX;
    XDS_TRY(gk_u32(g, P, "embedding_length", 1, 0, &c->n_embd));
    XDS_TRY(gk_u32(g, P, "block_count", 1, 0, &c->n_layer));
    XDS_TRY(gk_u32(g, P, "feed_forward_length", 1, 0, &c->n_ff));
    XDS_TRY(gk_u32(g, P, "attention.head_count", 1, 0, &c->n_head));
    XDS_TRY(gk_u32(g, P, "attention.head_count_kv", 0, c->n_head, &c->n_head_kv));
    XDS_TRY(gk_u32(g, P, "context_length", 0, 4096, &c->max_ctx));
    if (c->n_head <= 0) return xds_err_set(XDS_ERR_FORMAT, "model: GGUF %s.attention.head_count is 0", P);
    XDS_TRY(gk_f32(g, P, "attention.layer_norm_rms_epsilon", 1e-6f, &c->rms_eps));
    XDS_TRY(gk_f32(g, P, "rope.freq_base", 10000.0f, &c->rope_theta));
    XDS_TRY(gk_u32(g, P, "expert_count", 1, 0, &e->n_expert));
    XDS_TRY(gk_u32(g, P, "expert_used_count", 1, 0, &e->n_expert_used));
    XDS_TRY(gk_u32(g, P, "expert_feed_forward_length", 1, 0, &e->n_ff_exp));
    e->n_group = e->topk_group = 1;
    e->routed_scale = 1.0f;
    e->sparse_step = 1;
    e->norm_topk_prob = !ds; /* llama.cpp: qwen3moe always renormalizes; deepseek2 only with
                                expert_weights_norm = true (absent: false) */
    int id;
    XDS_TRY(gk_u32(g, "tokenizer.ggml", "bos_token_id", 0, -1, &id));
    c->bos_id = id;
    XDS_TRY(gk_u32(g, "tokenizer.ggml", "eos_token_id", 0, -1, &id));
    c->eos_id = id;
    c->rope_scaling.truncate = 1;
    c->rope_scaling.beta_fast = 32.0f;
    c->rope_scaling.beta_slow = 1.0f;
    if (!ds) {
        c->qk_norm = 1;
        e->scoring = XDS_MOE_SOFTMAX;
        XDS_TRY(gk_u32(g, P, "attention.key_length", 0, c->n_embd / c->n_head, &c->head_dim));
        c->rope_dim = c->head_dim;
    } else {
        xds_mla_config *a = &c->mla;
        e->scoring = XDS_MOE_SIGMOID;
        int gating, norm, kl;
        /* absent: llama.cpp reads softmax (DeepSeek-V2 files made before the key existed) */
        XDS_TRY(gk_u32(g, P, "expert_gating_func", 0, 0, &gating));
        if (gating != 2)
            return xds_err_set(XDS_ERR_UNSUPPORTED,
                               "model: GGUF deepseek2.expert_gating_func %d%s (sigmoid = 2 only)", gating,
                               gating == 0 ? " (absent: llama.cpp reads softmax)" : "");
        XDS_TRY(gk_u32(g, P, "expert_shared_count", 0, 0, &e->n_shared));
        XDS_TRY(gk_u32(g, P, "leading_dense_block_count", 0, 0, &e->first_dense));
        XDS_TRY(gk_u32(g, P, "expert_group_count", 0, 1, &e->n_group));
        XDS_TRY(gk_u32(g, P, "expert_group_used_count", 0, 1, &e->topk_group));
        XDS_TRY(gk_f32(g, P, "expert_weights_scale", 1.0f, &e->routed_scale));
        char k[64];
        snprintf(k, sizeof k, "%s.expert_weights_norm", P);
        if (xds_gguf_get_bool(g, k, &norm) == XDS_OK) e->norm_topk_prob = norm;
        else xds_err_clear();
        XDS_TRY(gk_u32(g, P, "nextn_predict_layers", 0, 0, &e->n_mtp));
        XDS_TRY(gk_u32(g, P, "attention.q_lora_rank", 0, 0, &a->q_lora_rank));
        XDS_TRY(gk_u32(g, P, "attention.kv_lora_rank", 1, 0, &a->kv_lora_rank));
        XDS_TRY(gk_u32(g, P, "rope.dimension_count", 1, 0, &c->rope_dim));
        /* per-head dims: key_length_mla / value_length_mla where the converter wrote them (then
         * key_length / value_length are the latent cache's kv_lora + rope / kv_lora), else the
         * older files' key_length / value_length */
        int kl_mla, vl_mla;
        XDS_TRY(gk_u32(g, P, "attention.key_length_mla", 0, 0, &kl_mla));
        XDS_TRY(gk_u32(g, P, "attention.value_length_mla", 0, 0, &vl_mla));
        if (kl_mla > 0) kl = kl_mla;
        else XDS_TRY(gk_u32(g, P, "attention.key_length", 1, 0, &kl));
        if (vl_mla > 0) a->v_dim = vl_mla;
        else XDS_TRY(gk_u32(g, P, "attention.value_length", 1, 0, &a->v_dim));
        a->nope_dim = kl - c->rope_dim;
        c->head_dim = kl;
        c->n_head_kv = c->n_head;
        snprintf(k, sizeof k, "%s.rope.scaling.type", P);
        const char *st;
        uint64_t sl;
        if (xds_gguf_get_str(g, k, &st, &sl) == XDS_OK && sl == 4 && !memcmp(st, "yarn", 4)) {
            xds_rope_scaling *r = &c->rope_scaling;
            r->type = XDS_ROPE_SCALING_YARN;
            XDS_TRY(gk_f32(g, P, "rope.scaling.factor", 1.0f, &r->factor));
            XDS_TRY(gk_u32(g, P, "rope.scaling.original_context_length", 0, c->max_ctx, &r->original_max_pos));
            XDS_TRY(gk_f32(g, P, "rope.scaling.yarn_beta_fast", 32.0f, &r->beta_fast));
            XDS_TRY(gk_f32(g, P, "rope.scaling.yarn_beta_slow", 1.0f, &r->beta_slow));
            float lm;
            XDS_TRY(gk_f32(g, P, "rope.scaling.yarn_log_multiplier", 0.0f, &lm));
            r->mscale = r->mscale_all_dim = lm / 0.1f; /* converter writes 0.1 * mscale_all_dim */
            if (!(r->factor > 0)) return xds_err_set(XDS_ERR_FORMAT, "model: GGUF %s.rope.scaling.factor invalid", P);
        } else xds_err_clear();
        if (e->n_mtp > 0) {
            XDS_LOGW("model: %s: GGUF MTP layers (nextn_predict_layers = %d) are not loaded", xds_gguf_path(g), e->n_mtp);
            e->n_mtp = 0;
        }
        if (kl <= c->rope_dim)
            return xds_err_set(XDS_ERR_FORMAT, "model: GGUF deepseek2.attention.key_length %d <= rope dims %d", kl,
                               c->rope_dim);
    }
    xds_status r = moe_check(c);
    if (r != XDS_OK) return xds_err_prefix(r, "model: %s (GGUF %s)", xds_gguf_path(g), P);
    return XDS_OK;
}
