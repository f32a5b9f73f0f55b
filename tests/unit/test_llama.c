/*
 * test_llama.c — the llama units against transformers (tools/oracle.py).
 *
 * Tiny fp32 checkpoints (tests/data/oracle/tiny/<name>): for each fixed prompt
 * the logits at every position must match transformers to 1e-4 of the logit
 * scale (max |delta| / max |ref|), and greedy tokens must be identical, along
 * three paths through the paged KV cache (block size 4, non-contiguous block
 * tables): (A) whole-prompt prefill then token-by-token decode, (B) the prompt
 * in two chunks, then a 2-token chunk, then single tokens, (C) two sequences
 * batched together in every step, which must also equal path A's logits.
 * SmolLM2 Q4_1 (XDS_TEST_MODEL): greedy tokens identical to transformers'
 * dequantized reference for >= 32 steps on every counting prompt, top-20
 * logits within SMOL_TOL there and, teacher-forced, on ordinary text (prose, a
 * chat question, code: tokens the counting prompts never use). Bad input: unsupported architecture, missing tensor, wrong shape,
 * each with a clear error naming the field / tensor.
 * SmolLM2 with --quantize w8a8 (every matmul weight re-quantized from Q4_1 to
 * int8 per row, activations int8 per token): run in lockstep with the Q4_1
 * model, teacher-forced on the oracle's tokens, see test_smollm2_w8a8.
 */
#include <dirent.h>
#include <jansson.h>
#include <stdint.h>
#include <unistd.h>

#include "kernels/kernels.h"
#include "model/model.h"
#include "sampler/sampler.h"
#include "test.h"
#include "oracle_ref.h"

#define TINY_DIR XDS_SOURCE_DIR "/tests/data/oracle/tiny"

static void rmsnorm_ref_check(void) {
    /* The kernels' rmsnorm is what the units use; make sure eps placement is HF's. */
    float x[4] = {1, 2, 3, 4}, g[4] = {1, 1, 2, 1}, y[4];
    xds_rmsnorm(y, x, g, 4, 1e-5f);
    double ms = (1 + 4 + 9 + 16) / 4.0;
    CHECK_NEAR(y[2], 2 * 3 / sqrt(ms + 1e-5), 1e-5);
}


static void test_tiny_all(void) { oracle_check_all(TINY_DIR, 5); }

/* ------------------------------------------------------------------------ */
/* Paged KV cache allocator */

static void test_kv_cache(void) {
    xds_kv_cache *kv;
    CHECK(xds_kv_cache_create(2, 8, 8, 4, 16, 2, &kv) == XDS_OK);
    CHECK(xds_kv_seq_reserve(kv, 0, 33) == XDS_OK); /* 3 blocks */
    CHECK(kv->n_free == 1 && xds_kv_seq_capacity(kv, 0) == 48);
    CHECK(xds_kv_seq_reserve(kv, 1, 40) == XDS_ERR_NOMEM);
    CHECK(xds_kv_seq_capacity(kv, 1) == 0 && kv->n_free == 1);
    CHECK(xds_kv_seq_append_block(kv, 1, kv->seqs[0].blocks[0]) == XDS_OK); /* shared prefix */
    CHECK(kv->ref[kv->seqs[0].blocks[0]] == 2);
    xds_kv_seq_truncate(kv, 0, 0);
    CHECK(kv->n_free == 3); /* the shared block stays with seq 1 */
    xds_kv_seq_truncate(kv, 1, 0);
    CHECK(kv->n_free == 4);
    CHECK(xds_kv_seq_reserve(kv, 5, 1) == XDS_ERR_INVALID);
    xds_kv_cache_free(kv);
}

/* ------------------------------------------------------------------------ */
/* Bad input: edited copies of a tiny checkpoint */

static void test_bad_input(void) {
    const char *base = TINY_DIR "/h72_mqa_hd16_tied";
    expect_load_error(base, "model_type", json_string("mamba"), XDS_ERR_UNSUPPORTED, "mamba");
    expect_load_error(base, "num_hidden_layers", json_integer(4), XDS_ERR_NOT_FOUND,
                      "model.layers.3.input_layernorm.weight");
    expect_load_error(base, "intermediate_size", json_integer(100), XDS_ERR_FORMAT, "model.layers.0.mlp.gate_proj");
    expect_load_error(base, "tie_word_embeddings", json_false(), XDS_ERR_NOT_FOUND, "lm_head.weight");
    expect_load_error(base, "num_key_value_heads", json_integer(3), XDS_ERR_FORMAT, "kv head");
    expect_load_error(base, "hidden_size", json_string("big"), XDS_ERR_FORMAT, "hidden_size");
    /* found by fuzz_hf_config: a factor converted to int (rope dim) or to
     * float out of range was undefined behaviour, not an error */
    expect_load_error(base, "partial_rotary_factor", json_real(1e30), XDS_ERR_FORMAT, "partial_rotary_factor");
    expect_load_error(base, "partial_rotary_factor", json_real(0.0), XDS_ERR_FORMAT, "partial_rotary_factor");
    expect_load_error(base, "rope_theta", json_real(1e300), XDS_ERR_FORMAT, "rope_theta");
    expect_load_error(base, "rms_norm_eps", json_real(-1e300), XDS_ERR_FORMAT, "rms_norm_eps");
    /* yarn / llama3 divide by these: zero or negative gave NaN frequencies */
    expect_load_error(base, "rope_parameters",
                      json_pack("{s:s, s:f, s:i}", "rope_type", "yarn", "factor", 2.0,
                                "original_max_position_embeddings", -1),
                      XDS_ERR_FORMAT, "original_max_position_embeddings");
    expect_load_error(base, "rope_parameters",
                      json_pack("{s:s, s:f, s:f}", "rope_type", "yarn", "factor", 2.0, "beta_slow", 0.0),
                      XDS_ERR_FORMAT, "beta");
    expect_load_error(base, "rope_parameters",
                      json_pack("{s:s, s:f, s:f, s:f}", "rope_type", "llama3", "factor", 8.0, "low_freq_factor", 0.0,
                                "high_freq_factor", 4.0),
                      XDS_ERR_FORMAT, "low_freq_factor");
    xds_model *m = NULL;
    CHECK(xds_model_load("/nonexistent/model.gguf", NULL, &m) != XDS_OK);
    CHECK(strlen(xds_err_msg()) > 0);
}

/* ------------------------------------------------------------------------ */
/* SmolLM2 Q4_1 against transformers' dequantized reference */

/*
 * Tolerance on the top-20 logits of the Q4_1 model. transformers runs the
 * dequantized weights in f32; our Q4_1/Q8_0 matmuls quantize the activations
 * to 8-bit blocks of 32 (as llama.cpp does), so every one of the 30 layers adds
 * a small error. With the weights dequantized to f32 on our side too
 * (test_smollm2 f32=1 below) the same pass matches transformers to ~1e-6 of
 * the logit scale, so the remaining difference is that quantization alone.
 * Measured max |delta| on the committed counting prompts (logits of scale
 * ~30): 0.87 (XDS_CPU=generic), 0.78-0.92 (avx2), 0.74-0.78 (avx512); on the
 * committed ordinary-text prompts ("text_cases", 5 x 16 teacher-forced steps,
 * AMD EPYC Zen 4): 0.60 (generic), 0.70 (avx2), 0.74 (avx512), and 8.7e-7 of
 * the scale with f32 weights; on other natural-text prompts
 * tried while building the fixture up to 1.9, and an exact Q8_0
 * fake-quantization of the activations around f32 matmuls gives 0.6-1.15 on
 * those: this is the size of the effect, not a kernel bug. Bound 2.0 (> 2x the
 * committed prompts' figure); the f32 check is the one that catches subtle
 * math bugs (a wrong rope / norm moves logits by several units).
 */
#define SMOL_TOL 2.0
#define SMOL_TOL_F32_REL 1e-4
#define SMOL_F32_STEPS 8

/* Replace a weight view by an owned f32 copy (freed by free_f32). */
static void to_f32(xds_tensor *t) {
    int64_t n0 = t->ne[0], n1 = t->ne[1];
    float *d = malloc(sizeof(float) * n0 * n1);
    size_t rb = xds_dtype_row_bytes(t->type, n0);
    for (int64_t r = 0; r < n1; r++) xds_dequant_row(t->type, (const char *)t->data + r * rb, d + r * n0, n0);
    t->type = XDS_DTYPE_F32;
    t->data = d;
    t->nbytes = sizeof(float) * n0 * n1;
}

static void model_to_f32(xds_model *m) {
    to_f32(&m->tok_embd);
    m->output = m->tok_embd; /* SmolLM2 is tied */
    for (int l = 0; l < m->cfg.n_layer; l++) {
        xds_layer_weights *w = &m->layers[l];
        xds_tensor *ts[] = {&w->wq, &w->wk, &w->wv, &w->wo, &w->w_gate, &w->w_up, &w->w_down};
        for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) to_f32(ts[i]);
    }
}

static void free_f32(xds_model *m) {
    free((void *)m->tok_embd.data);
    for (int l = 0; l < m->cfg.n_layer; l++) {
        xds_layer_weights *w = &m->layers[l];
        free((void *)w->wq.data), free((void *)w->wk.data), free((void *)w->wv.data), free((void *)w->wo.data);
        free((void *)w->w_gate.data), free((void *)w->w_up.data), free((void *)w->w_down.data);
    }
}

static void test_smollm2(const char *path, int f32) {
    json_t *j = json_load_file(XDS_SOURCE_DIR "/tests/data/oracle/smollm2.json", 0, NULL);
    CHECK_MSG(j != NULL, "tests/data/oracle/smollm2.json missing");
    if (!j) return;
    xds_model *m = NULL;
    xds_status s = xds_model_load(path, NULL, &m);
    CHECK_MSG(s == XDS_OK, "load %s: %s", path, xds_err_msg());
    if (s != XDS_OK) return json_decref(j);
    if (f32) model_to_f32(m);
    int V = m->cfg.n_vocab;
    xds_kv_cache *kv;
    CHECK(xds_model_kv_cache_create(m, 256, 16, 1, &kv) == XDS_OK);
    xds_model_ctx *ctx;
    CHECK(xds_model_ctx_create(m, kv, 2, 64, &ctx) == XDS_OK);
    float *lg = malloc(sizeof(float) * V);
    json_t *cs = json_object_get(j, "cases");
    double worst = 0, scale = 0;
    const char *san = getenv("XDS_SANITIZED");
    int sanitized = san && *san && strcmp(san, "0") != 0;
    for (size_t ci = 0; ci < json_array_size(cs); ci++) {
        json_t *c = json_array_get(cs, ci);
        json_t *ids = json_object_get(c, "ids"), *greedy = json_object_get(c, "greedy"),
               *top = json_object_get(c, "top");
        int np = (int)json_array_size(ids), ng = (int)json_array_size(greedy);
        /* under the sanitizers (10-20x slower) a subset keeps the run short;
         * the release run checks every prompt and step */
        if (sanitized && ci >= (f32 ? 1u : 2u)) break;
        if (sanitized && ng > 32) ng = 32;
        /* f32 weights read 4.5x the bytes per step: 8 steps suffice to check the math */
        if (f32 && ng > SMOL_F32_STEPS) ng = SMOL_F32_STEPS;
        int32_t toks[256], pos[256], sq[256];
        for (int i = 0; i < np; i++) toks[i] = (int32_t)json_integer_value(json_array_get(ids, i)), pos[i] = i, sq[i] = 0;
        xds_kv_seq_truncate(kv, 0, 0);
        CHECK(xds_kv_seq_reserve(kv, 0, np + ng) == XDS_OK);
        int32_t last = np - 1;
        xds_batch b = {np, toks, pos, sq};
        CHECK(xds_model_forward(ctx, &b, &last, 1, lg) == XDS_OK);
        int match = 0, diverged = 0;
        for (int st = 0; st < ng; st++) {
            /* row st of "top": logits predicting token np + st */
            json_t *row = json_array_get(top, st);
            if (!diverged && row) {
                json_t *rid = json_object_get(row, "ids"), *rlg = json_object_get(row, "logits");
                for (size_t k = 0; k < json_array_size(rid); k++) {
                    int id = (int)json_integer_value(json_array_get(rid, k));
                    double ref = json_number_value(json_array_get(rlg, k));
                    worst = fmax(worst, fabs(lg[id] - ref));
                    scale = fmax(scale, fabs(ref));
                }
            }
            int32_t nxt = xds_argmax(lg, V);
            int32_t want = (int32_t)json_integer_value(json_array_get(greedy, st));
            if (nxt == want && !diverged) match++;
            else diverged = 1;
            int32_t p = np + st, sqz = 0, r0 = 0;
            xds_batch b1 = {1, &want, &p, &sqz};
            CHECK(xds_model_forward(ctx, &b1, &r0, 1, lg) == XDS_OK);
        }
        printf("smollm2%s case %zu: %d/%d greedy tokens identical\n", f32 ? " (f32)" : "", ci, match, ng);
        CHECK_MSG(match >= (f32 ? ng : 32), "smollm2 case %zu: greedy diverges at step %d", ci, match);
    }
    /* ordinary text (prose, a chat question, code; "text_cases"): greedy
     * margins there go down to ~0.07, so the sequence is teacher-forced
     * (transformers' tokens fed whatever our argmax) and only the logits are
     * checked, at every step, to the same tolerance */
    json_t *tcs = json_object_get(j, "text_cases");
    CHECK_MSG(json_array_size(tcs) >= 5, "smollm2.json: %zu text cases (want >= 5)", json_array_size(tcs));
    double tworst = 0, tscale = 0;
    int tsteps = 0;
    for (size_t ci = 0; ci < json_array_size(tcs); ci++) {
        if (sanitized && ci >= 1) break;
        json_t *c = json_array_get(tcs, ci);
        json_t *ids = json_object_get(c, "ids"), *fed = json_object_get(c, "tokens"), *top = json_object_get(c, "top");
        int np = (int)json_array_size(ids), ng = (int)json_array_size(fed);
        if (f32 && ng > SMOL_F32_STEPS) ng = SMOL_F32_STEPS;
        if (sanitized && ng > 4) ng = 4;
        CHECK_MSG(np > 0 && np <= 200 && (int)json_array_size(top) >= ng, "text case %zu: %d prompt ids", ci, np);
        if (np <= 0 || np > 200) continue;
        int32_t toks[256], pos[256], sq[256];
        for (int i = 0; i < np; i++) toks[i] = (int32_t)json_integer_value(json_array_get(ids, i)), pos[i] = i, sq[i] = 0;
        xds_kv_seq_truncate(kv, 0, 0);
        CHECK(xds_kv_seq_reserve(kv, 0, np + ng) == XDS_OK);
        int32_t last = np - 1;
        xds_batch b = {np, toks, pos, sq};
        CHECK(xds_model_forward(ctx, &b, &last, 1, lg) == XDS_OK);
        double cw = 0;
        for (int st = 0; st < ng; st++) {
            json_t *row = json_array_get(top, st);
            json_t *rid = json_object_get(row, "ids"), *rlg = json_object_get(row, "logits");
            CHECK(json_array_size(rid) == 20 && json_array_size(rlg) == 20);
            for (size_t k = 0; k < json_array_size(rid); k++) {
                int id = (int)json_integer_value(json_array_get(rid, k));
                double ref = json_number_value(json_array_get(rlg, k));
                if (id < 0 || id >= V) continue;
                cw = fmax(cw, fabs(lg[id] - ref));
                tscale = fmax(tscale, fabs(ref));
            }
            tsteps++;
            int32_t want = (int32_t)json_integer_value(json_array_get(fed, st));
            int32_t p = np + st, sqz = 0, r0 = 0;
            xds_batch b1 = {1, &want, &p, &sqz};
            CHECK(xds_model_forward(ctx, &b1, &r0, 1, lg) == XDS_OK);
        }
        printf("smollm2%s text case %zu: %d steps, max |delta| of top-20 logits %.4f\n", f32 ? " (f32)" : "", ci,
               ng, cw);
        tworst = fmax(tworst, cw);
    }
    if (f32) {
        printf("smollm2 (weights dequantized to f32) text prompts: %d steps, max |delta| / max |ref| = %.2e\n",
               tsteps, tworst / tscale);
        CHECK_MSG(tscale > 0 && tworst / tscale <= SMOL_TOL_F32_REL, "smollm2 f32 text logits differ by %.3g relative",
                  tworst / tscale);
    } else {
        printf("smollm2 text prompts: %d steps, max |delta| of top-20 logits = %.4f (bound %.2f)\n", tsteps, tworst,
               SMOL_TOL);
        CHECK_MSG(tsteps > 0 && tworst <= SMOL_TOL, "smollm2 text-prompt logits differ by %.4f", tworst);
    }
    if (f32) {
        printf("smollm2 (weights dequantized to f32): max |delta| / max |ref| of top-20 logits = %.2e\n",
               worst / scale);
        CHECK_MSG(worst / scale <= SMOL_TOL_F32_REL, "smollm2 f32 top logits differ by %.3g relative",
                  worst / scale);
        free_f32(m);
    } else {
        printf("smollm2: max |delta| of top-20 logits = %.4f (bound %.2f)\n", worst, SMOL_TOL);
        CHECK_MSG(worst <= SMOL_TOL, "smollm2 top logits differ by %.4f", worst);
    }
    free(lg);
    xds_model_ctx_free(ctx);
    xds_kv_cache_free(kv);
    xds_model_free(m);
    json_decref(j);
}

/*
 * W8A8 against Q4_1 (the same file, loaded twice; the W8A8 model's weights are
 * the Q4_1 weights dequantized and re-quantized to int8 with one scale per
 * row). Both run in lockstep on every oracle prompt, teacher-forced on the
 * oracle's tokens (the counting prompts' greedy tokens, the text prompts'
 * tokens; <= 48 steps each, 240 in all). Per step: whether the two argmaxes
 * agree (top-1 agreement), max |delta| over all 49152 logits relative to the
 * Q4_1 step's max |logit|, and the top-20 logits against transformers (as
 * test_smollm2, whose Q4_1 bound is SMOL_TOL = 2.0).
 * Two runs separate the two errors W8A8 adds:
 *   - deq = 1: the W8A8 weights dequantized back to f32 (f32 activations):
 *     the load-time conversion alone. Measured (AMD EPYC Zen 4): top-1 0.996,
 *     worst relative 0.080, vs transformers 0.79 — Q4_1's own figure (its Q8
 *     block activations), i.e. int8 per-row weights lose next to nothing.
 *     Bounds: 0.98, 0.12, SMOL_TOL.
 *   - deq = 0: the W8A8 kernels (activations int8 with ONE scale per token):
 *     top-1 0.967, worst relative 0.27, vs transformers 3.36 (every level the
 *     same bits). The loss is the per-token activation scale: SmolLM2's
 *     activations have outlier channels that a scale per 32-block (Q8) hides
 *     and a scale per token does not — what SmoothQuant-style smoothing (not
 *     done here) addresses. Bounds at ~1.3x the measured error: 0.94, 0.35, 4.5.
 */
#define W8_DEQ_TOP1_MIN 0.98
#define W8_DEQ_REL_MAX 0.12
#define W8_TOP1_MIN 0.94
#define W8_REL_MAX 0.35
#define W8_ORACLE_TOL 4.5
static void test_smollm2_w8a8(const char *path, int deq) {
    json_t *j = json_load_file(XDS_SOURCE_DIR "/tests/data/oracle/smollm2.json", 0, NULL);
    CHECK_MSG(j != NULL, "tests/data/oracle/smollm2.json missing");
    if (!j) return;
    xds_model *m[2] = {NULL, NULL};
    xds_model_opts mo = {.quantize = XDS_QUANTIZE_W8A8};
    CHECK(xds_model_load(path, NULL, &m[0]) == XDS_OK);
    xds_status s = xds_model_load(path, &mo, &m[1]);
    CHECK_MSG(s == XDS_OK, "load %s with w8a8: %s", path, xds_err_msg());
    if (!m[0] || !m[1]) {
        xds_model_free(m[0]), xds_model_free(m[1]);
        return json_decref(j);
    }
    CHECK(m[1]->cfg.n_layer == 30 && m[1]->layers[0].wq.type == XDS_DTYPE_W8A8 && m[1]->layers[29].w_down.type == XDS_DTYPE_W8A8 &&
          m[1]->output.type == XDS_DTYPE_W8A8 && m[1]->tok_embd.type == m[0]->tok_embd.type &&
          m[1]->tok_embd.type != XDS_DTYPE_W8A8 && m[1]->output.data != m[1]->tok_embd.data);
    xds_model_opts bad = {.quantize = 7};
    xds_model *mb = NULL;
    CHECK(xds_model_load(path, &bad, &mb) == XDS_ERR_INVALID && mb == NULL);
    float *deq_data[8 * 30 + 1];
    int n_deq = 0;
    for (int l = 0; deq && l < m[1]->cfg.n_layer; l++) { /* the W8A8 weights back to f32 */
        xds_layer_weights *w = &m[1]->layers[l];
        xds_tensor *ts[] = {&w->wq, &w->wk, &w->wv, &w->wo, &w->w_gate, &w->w_up, &w->w_down, &m[1]->output};
        for (int i = 0; i < (l == 0 ? 8 : 7) && n_deq < 8 * 30 + 1; i++) {
            if (ts[i]->type != XDS_DTYPE_W8A8) continue;
            int64_t n0 = ts[i]->ne[0], n1 = ts[i]->ne[1];
            float *d = malloc(sizeof(float) * n0 * n1);
            for (int64_t r = 0; r < n1; r++) xds_get_row(ts[i], r, d + r * n0);
            ts[i]->type = XDS_DTYPE_F32, ts[i]->data = d, ts[i]->nbytes = sizeof(float) * n0 * n1;
            deq_data[n_deq++] = d;
        }
    }
    int V = m[0]->cfg.n_vocab;
    xds_kv_cache *kv[2];
    xds_model_ctx *ctx[2];
    float *lg[2];
    for (int k = 0; k < 2; k++) {
        CHECK(xds_model_kv_cache_create(m[k], 256, 16, 1, &kv[k]) == XDS_OK);
        CHECK(xds_model_ctx_create(m[k], kv[k], 2, 64, &ctx[k]) == XDS_OK);
        lg[k] = malloc(sizeof(float) * V);
    }
    const char *san = getenv("XDS_SANITIZED");
    int sanitized = san && *san && strcmp(san, "0") != 0;
    int steps = 0, agree = 0;
    double worst_rel = 0, oracle_worst = 0;
    const char *sets[2] = {"cases", "text_cases"}, *fedk[2] = {"greedy", "tokens"};
    for (int set = 0; set < 2; set++) {
        json_t *cs = json_object_get(j, sets[set]);
        for (size_t ci = 0; ci < json_array_size(cs); ci++) {
            if (sanitized && ci >= 1) break;
            json_t *c = json_array_get(cs, ci);
            json_t *ids = json_object_get(c, "ids"), *fed = json_object_get(c, fedk[set]), *top = json_object_get(c, "top");
            int np = (int)json_array_size(ids), ng = (int)json_array_size(fed);
            if (np <= 0 || np > 200) continue;
            if (ng > 48) ng = 48;
            if (sanitized && ng > 4) ng = 4;
            int32_t toks[256], pos[256], sq[256];
            for (int i = 0; i < np; i++) toks[i] = (int32_t)json_integer_value(json_array_get(ids, i)), pos[i] = i, sq[i] = 0;
            for (int k = 0; k < 2; k++) {
                xds_kv_seq_truncate(kv[k], 0, 0);
                CHECK(xds_kv_seq_reserve(kv[k], 0, np + ng) == XDS_OK);
                int32_t last = np - 1;
                xds_batch b = {np, toks, pos, sq};
                CHECK(xds_model_forward(ctx[k], &b, &last, 1, lg[k]) == XDS_OK);
            }
            for (int st = 0; st < ng; st++) {
                double mx = 0, d = 0;
                for (int v = 0; v < V; v++) {
                    mx = fmax(mx, fabs(lg[0][v]));
                    d = fmax(d, fabs(lg[1][v] - lg[0][v]));
                }
                worst_rel = fmax(worst_rel, d / mx);
                agree += xds_argmax(lg[0], V) == xds_argmax(lg[1], V);
                steps++;
                json_t *row = json_array_get(top, st);
                json_t *rid = json_object_get(row, "ids"), *rlg = json_object_get(row, "logits");
                for (size_t k = 0; k < json_array_size(rid); k++) {
                    int id = (int)json_integer_value(json_array_get(rid, k));
                    if (id >= 0 && id < V)
                        oracle_worst = fmax(oracle_worst, fabs(lg[1][id] - json_number_value(json_array_get(rlg, k))));
                }
                int32_t want = (int32_t)json_integer_value(json_array_get(fed, st));
                int32_t p = np + st, sqz = 0, r0 = 0;
                for (int k = 0; k < 2; k++) {
                    xds_batch b1 = {1, &want, &p, &sqz};
                    CHECK(xds_model_forward(ctx[k], &b1, &r0, 1, lg[k]) == XDS_OK);
                }
            }
        }
    }
    double share = steps ? (double)agree / steps : 0;
    double top1_min = deq ? W8_DEQ_TOP1_MIN : W8_TOP1_MIN, rel_max = deq ? W8_DEQ_REL_MAX : W8_REL_MAX,
           oracle_tol = deq ? SMOL_TOL : W8_ORACLE_TOL;
    const char *what = deq ? "w8a8 weights in f32" : "w8a8";
    printf("smollm2 %s vs q4_1: %d steps, top-1 agreement %.4f (min %.2f), worst max|delta|/max|logit| %.4f "
           "(max %.2f); top-20 vs transformers max |delta| %.4f (max %.2f)\n",
           what, steps, share, top1_min, worst_rel, rel_max, oracle_worst, oracle_tol);
    /* a share needs many steps: the sanitized subset (8 steps) checks the logit bounds only */
    CHECK_MSG(steps > 0 && (sanitized || share >= top1_min), "%s top-1 agreement with q4_1 %.4f", what, share);
    if (!sanitized) CHECK(steps >= 200);
    CHECK_MSG(worst_rel <= rel_max, "%s logits differ from q4_1 by %.4f of the logit scale", what, worst_rel);
    CHECK_MSG(oracle_worst <= oracle_tol, "%s top-20 logits differ from transformers by %.4f", what, oracle_worst);
    for (int i = 0; i < n_deq; i++) free(deq_data[i]);
    for (int k = 0; k < 2; k++) {
        free(lg[k]);
        xds_model_ctx_free(ctx[k]);
        xds_kv_cache_free(kv[k]);
        xds_model_free(m[k]);
    }
    json_decref(j);
}

int main(void) {
    rmsnorm_ref_check();
    test_kv_cache();
    test_tiny_all();
    test_bad_input();
    const char *mp = test_model_path();
    if (mp) {
        test_smollm2(mp, 0);
        test_smollm2(mp, 1);
        test_smollm2_w8a8(mp, 1);
        test_smollm2_w8a8(mp, 0);
    }
    else TEST_SKIP("smollm2 oracle: XDS_TEST_MODEL not set");
    TEST_MAIN_END();
}
