/*
 * test_upcycle.c — exact MoE upcycling of SmolLM2 (model/upcycle.h, `xds
 * upcycle`) with the real model (XDS_TEST_MODEL; skipped with a message when
 * unset). The upcycled GGUF (written to a temp dir, removed afterwards) must
 * load as a mixture of experts whose experts are byte-identical copies of the
 * dense FFN (no requantization), whose router really sends different tokens
 * to different experts, and whose greedy output is identical to the dense
 * model's on real prompts through the paged KV cache, for E=4/top-2 and
 * E=3/top-1: the combine renormalizes the weights exactly in double, so the
 * logits must be bit-identical at the default kernel level: the kernels are
 * batch-invariant (a row's result does not depend on how many rows are
 * multiplied together: dense runs all prompt rows at once, the upcycled layer
 * each expert's rows; tests/unit/test_kernels.c). Under the sanitizers
 * (Debug, -O0) only greedy identity and SMOL_TOL are checked, once.
 * Perturbed upcycling (--perturb 0.25, E=4): gate, up and router as in the
 * exact upcycle, expert e's down projection is s_e times the dense one
 * (s_e = 0.75, 0.917, 1.083, 1.25; within f16 rounding of the block scales,
 * every value checked; under the sanitizers those of the first and last
 * layer), the scales are recorded in the file, and the
 * logits differ from the dense model's (the output depends on the routing).
 * Bad input: k > E, a perturbation outside [0, 1), an MoE or a missing input.
 */
#include <jansson.h>

#include "format/gguf.h"
#include <stdint.h>
#include <unistd.h>

#include "kernels/kernels.h"
#include "model/model.h"
#include "model/moe.h"
#include "model/upcycle.h"
#include "sampler/sampler.h"
#include "test.h"

/* Under the sanitizers (ASan+UBSan, ~20x slower) one config, one prompt, 8 steps. */
#ifdef XDS_SANITIZE
#define STEPS 8
#define N_PROMPTS 1
#else
#define STEPS 16
#define N_PROMPTS 3
#endif
#define SMOL_TOL 2.0

/* Greedy continuation of ids[0..np) for STEPS tokens: tokens -> gen, every step's logits -> lg. */
static void greedy(const xds_model *m, const int32_t *ids, int np, int32_t *gen, float *lg) {
    int V = m->cfg.n_vocab;
    xds_kv_cache *kv;
    xds_model_ctx *ctx;
    CHECK(xds_model_kv_cache_create(m, np + STEPS + 16, 16, 1, &kv) == XDS_OK);
    CHECK(xds_model_ctx_create(m, kv, 2, 64, &ctx) == XDS_OK);
    int32_t pos[64], sq[64];
    for (int i = 0; i < np; i++) pos[i] = i, sq[i] = 0;
    CHECK(xds_kv_seq_reserve(kv, 0, np + STEPS) == XDS_OK);
    int32_t last = np - 1;
    xds_batch b = {np, ids, pos, sq};
    CHECK(xds_model_forward(ctx, &b, &last, 1, lg) == XDS_OK);
    for (int st = 0; st < STEPS; st++) {
        gen[st] = xds_argmax(lg + (size_t)st * V, V);
        if (st + 1 == STEPS) break;
        int32_t p = np + st, z = 0, r0 = 0;
        xds_batch b1 = {1, &gen[st], &p, &z};
        CHECK(xds_model_forward(ctx, &b1, &r0, 1, lg + (size_t)(st + 1) * V) == XDS_OK);
    }
    xds_model_ctx_free(ctx);
    xds_kv_cache_free(kv);
}

static void check_upcycled(const char *dense_path, const xds_model *dense, const char *dir, int E, int k) {
    char path[1024];
    snprintf(path, sizeof path, "%s/moe_E%d_k%d.gguf", dir, E, k);
    xds_status s = xds_model_upcycle(dense_path, path, E, k, 7);
    CHECK_MSG(s == XDS_OK, "upcycle: %s", xds_err_msg());
    if (s != XDS_OK) return;
    xds_model *m = NULL;
    s = xds_model_load(path, NULL, &m);
    CHECK_MSG(s == XDS_OK, "load upcycled: %s", xds_err_msg());
    if (s != XDS_OK) {
        unlink(path);
        return;
    }
    CHECK(m->cfg.arch == XDS_ARCH_MIXTRAL && m->cfg.moe.n_expert == E && m->cfg.moe.n_expert_used == k);
    int all_moe = 1, same_bytes = 1;
    for (int l = 0; l < m->cfg.n_layer; l++) {
        all_moe &= xds_model_layer_is_moe(m, l);
        if (!m->layers[l].moe) continue;
        const xds_layer_weights *d = &dense->layers[l];
        for (int e = 0; e < E; e++) {
            const xds_ffn_w *f = &m->layers[l].moe->experts[e];
            same_bytes &= f->gate.type == d->w_gate.type && f->gate.nbytes == d->w_gate.nbytes &&
                          !memcmp(f->gate.data, d->w_gate.data, d->w_gate.nbytes) &&
                          !memcmp(f->up.data, d->w_up.data, d->w_up.nbytes) &&
                          !memcmp(f->down.data, d->w_down.data, d->w_down.nbytes);
        }
    }
    CHECK_MSG(all_moe, "upcycled: some layer is not MoE");
    CHECK_MSG(same_bytes, "upcycled experts are not byte copies of the dense FFN (%s)", xds_dtype_name(dense->layers[0].w_gate.type));
    /* routing varies: route the embeddings of many tokens through layer 0's router */
    {
        xds_model_ctx *ctx;
        CHECK(xds_model_ctx_create(m, NULL, 1, 64, &ctx) == XDS_OK);
        int32_t toks[64], pos[64], sq[64], ids[64 * 8];
        float *x = malloc(sizeof(float) * 64 * m->cfg.n_embd), *xn = malloc(sizeof(float) * 64 * m->cfg.n_embd);
        float w[64 * 8];
        for (int i = 0; i < 64; i++) toks[i] = (i * 797 + 13) % m->cfg.n_vocab, pos[i] = i, sq[i] = 0;
        xds_batch b = {64, toks, pos, sq};
        xds_model_embed(ctx, &b, x);
        xds_model_ffn_norm(ctx, 0, x, 64, xn);
        xds_model_moe_route(ctx, 0, xn, 64, ids, w);
        int hit[256] = {0}, n_hit = 0;
        for (int i = 0; i < 64 * k; i++) hit[ids[i]]++;
        for (int e = 0; e < E; e++) n_hit += hit[e] > 0;
        printf("upcycled E=%d k=%d: layer 0 routes 64 tokens to %d of %d experts\n", E, k, n_hit, E);
        CHECK_MSG(n_hit >= 2, "the random router sends every token to the same experts");
        free(x), free(xn);
        xds_model_ctx_free(ctx);
    }
    json_t *j = json_load_file(XDS_SOURCE_DIR "/tests/data/oracle/smollm2.json", 0, NULL);
    CHECK_MSG(j != NULL, "tests/data/oracle/smollm2.json missing");
    json_t *cs = json_object_get(j, "cases");
    int V = m->cfg.n_vocab;
    float *la = malloc(sizeof(float) * STEPS * V), *lb = malloc(sizeof(float) * STEPS * V);
    double worst = 0, scale = 0;
    for (size_t ci = 0; ci < json_array_size(cs) && ci < N_PROMPTS; ci++) {
        json_t *idj = json_object_get(json_array_get(cs, ci), "ids");
        int np = (int)json_array_size(idj);
        if (np > 48) np = 48;
        int32_t ids[64], ga[STEPS], gb[STEPS];
        for (int i = 0; i < np; i++) ids[i] = (int32_t)json_integer_value(json_array_get(idj, i));
        greedy(dense, ids, np, ga, la);
        greedy(m, ids, np, gb, lb);
        int same = !memcmp(ga, gb, sizeof ga);
        CHECK_MSG(same, "upcycled E=%d k=%d: greedy tokens differ from dense on prompt %zu", E, k, ci);
        for (size_t i = 0; i < (size_t)STEPS * V; i++) {
            worst = fmax(worst, fabs((double)la[i] - lb[i]));
            scale = fmax(scale, fabs((double)la[i]));
        }
    }
    printf("upcycled E=%d k=%d (%s kernels): %d greedy tokens x %d prompts identical to dense; max |logit delta| "
           "= %.4f (scale %.1f)\n",
           E, k, xds_cpu_level_name(xds_cpu_level_get()), STEPS, N_PROMPTS, worst, scale);
#ifndef XDS_SANITIZE
    CHECK_MSG(worst == 0, "upcycled E=%d k=%d logits are not bit-identical to dense (%.3g)", E, k, worst);
#else /* -O0: checked loosely */
    CHECK_MSG(worst <= SMOL_TOL, "upcycled logits differ by %.3g", worst);
#endif
    free(la), free(lb);
    json_decref(j);
    xds_model_free(m);
    /* upcycling an MoE is refused */
    char again[1100];
    snprintf(again, sizeof again, "%s/again.gguf", dir);
    CHECK(xds_model_upcycle(path, again, 2, 1, 1) == XDS_ERR_INVALID && strstr(xds_err_msg(), "already"));
    unlink(path);
}

/* Logits of the last token of ids[0..np) (one forward pass). */
static void prompt_logits(const xds_model *m, const int32_t *ids, int np, float *lg) {
    xds_kv_cache *kv;
    xds_model_ctx *ctx;
    CHECK(xds_model_kv_cache_create(m, np + 16, 16, 1, &kv) == XDS_OK);
    CHECK(xds_model_ctx_create(m, kv, 2, 64, &ctx) == XDS_OK);
    int32_t pos[64], sq[64], last = np - 1;
    for (int i = 0; i < np; i++) pos[i] = i, sq[i] = 0;
    CHECK(xds_kv_seq_reserve(kv, 0, np) == XDS_OK);
    xds_batch b = {np, ids, pos, sq};
    CHECK(xds_model_forward(ctx, &b, &last, 1, lg) == XDS_OK);
    xds_model_ctx_free(ctx);
    xds_kv_cache_free(kv);
}

/* Perturbed upcycle E=4 top-2: experts differ only in the scale of the down projection. */
static void check_perturbed(const char *dense_path, const xds_model *dense, const char *dir) {
    const int E = 4, k = 2;
    const float S = 0.25f;
    char path[1024];
    snprintf(path, sizeof path, "%s/moe_perturbed.gguf", dir);
    xds_status s = xds_model_upcycle_perturbed(dense_path, path, E, k, 7, S);
    CHECK_MSG(s == XDS_OK, "perturbed upcycle: %s", xds_err_msg());
    if (s != XDS_OK) return;
    float want[4];
    for (int e = 0; e < E; e++) want[e] = (float)(1.0 + S * (2.0 * e / (E - 1) - 1.0));
    xds_gguf *g = NULL;
    CHECK(xds_gguf_open(path, &g) == XDS_OK);
    if (g) {
        xds_gguf_type et;
        uint64_t n = 0;
        const void *d = NULL;
        float pf = 0, got[4] = {0};
        CHECK(xds_gguf_get_arr(g, "xds.upcycle.down_scale", &et, &n, &d) == XDS_OK && et == XDS_GGUF_FLOAT32 &&
              n == (uint64_t)E);
        if (n == (uint64_t)E) memcpy(got, d, sizeof got);
        CHECK_MSG(!memcmp(got, want, sizeof got), "down_scale recorded %g %g %g %g", got[0], got[1], got[2], got[3]);
        CHECK(xds_gguf_get_f32(g, "xds.upcycle.perturb", &pf) == XDS_OK && pf == S);
        xds_gguf_close(g);
    }
    xds_model *m = NULL;
    s = xds_model_load(path, NULL, &m);
    CHECK_MSG(s == XDS_OK, "load perturbed: %s", xds_err_msg());
    if (!m) {
        unlink(path);
        return;
    }
    int n_ff = dense->cfg.n_ff, n_embd = dense->cfg.n_embd;
    float *a = malloc(sizeof(float) * n_ff), *b = malloc(sizeof(float) * n_ff);
    int copies = 1, scaled = 1;
    double worst_rel = 0;
    for (int l = 0; l < m->cfg.n_layer; l++) {
#ifdef XDS_SANITIZE /* -O0: the first and the last layer */
        if (l != 0 && l != m->cfg.n_layer - 1) continue;
#endif
        const xds_layer_weights *dl = &dense->layers[l];
        for (int e = 0; e < E && m->layers[l].moe; e++) {
            const xds_ffn_w *f = &m->layers[l].moe->experts[e];
            copies &= !memcmp(f->gate.data, dl->w_gate.data, dl->w_gate.nbytes) &&
                      !memcmp(f->up.data, dl->w_up.data, dl->w_up.nbytes);
            scaled &= f->down.type == dl->w_down.type && f->down.nbytes == dl->w_down.nbytes;
            if (!scaled) continue;
            size_t rb = xds_dtype_row_bytes(f->down.type, n_ff);
            for (int r = 0; r < n_embd; r++) { /* every value: |v_e - s_e v| within f16 rounding of d, m */
                xds_dequant_row(f->down.type, (const uint8_t *)dl->w_down.data + r * rb, a, n_ff);
                xds_dequant_row(f->down.type, (const uint8_t *)f->down.data + r * rb, b, n_ff);
                double mx = 0;
                for (int i = 0; i < n_ff; i++) mx = fmax(mx, fabs(a[i]));
                for (int i = 0; i < n_ff; i++) {
                    double rel = fabs(b[i] - (double)want[e] * a[i]) / (want[e] * mx + 1e-30);
                    worst_rel = fmax(worst_rel, rel);
                }
            }
        }
    }
    printf("perturbed E=%d (S=%g): down projections = s_e x dense within %.2g of each row's largest value\n", E, S,
           worst_rel);
    CHECK_MSG(copies, "perturbed: gate / up are not byte copies of the dense FFN");
    CHECK_MSG(scaled && worst_rel < 4e-3, "perturbed: expert down projections are not s_e x dense (%.3g)", worst_rel);
    free(a), free(b);
    /* the perturbation reaches the output */
    json_t *j = json_load_file(XDS_SOURCE_DIR "/tests/data/oracle/smollm2.json", 0, NULL);
    json_t *idj = json_object_get(json_array_get(json_object_get(j, "cases"), 0), "ids");
    int np = (int)json_array_size(idj), V = m->cfg.n_vocab;
    if (np > 48) np = 48;
    CHECK(np > 0);
    if (np > 0) {
        int32_t ids[64];
        for (int i = 0; i < np; i++) ids[i] = (int32_t)json_integer_value(json_array_get(idj, i));
        float *la = malloc(sizeof(float) * V), *lb = malloc(sizeof(float) * V);
        prompt_logits(dense, ids, np, la);
        prompt_logits(m, ids, np, lb);
        double worst = 0;
        for (int i = 0; i < V; i++) worst = fmax(worst, fabs((double)la[i] - lb[i]));
        printf("perturbed E=%d: max |logit delta| vs dense after the prompt %.3g\n", E, worst);
        CHECK_MSG(worst > 1e-3, "perturbed upcycle gives the dense logits (%.3g): the scales had no effect", worst);
        free(la), free(lb);
    }
    json_decref(j);
    xds_model_free(m);
    unlink(path);
}

int main(void) {
    const char *mp = test_model_path();
    CHECK(xds_model_upcycle("/nonexistent.gguf", "/tmp/x.gguf", 4, 2, 1) != XDS_OK);
    if (!mp) {
        TEST_SKIP("upcycle of the real model: XDS_TEST_MODEL not set");
        TEST_MAIN_END();
    }
    CHECK(xds_model_upcycle(mp, "/tmp/never.gguf", 2, 3, 1) == XDS_ERR_INVALID && strstr(xds_err_msg(), "k (3)"));
    CHECK(xds_model_upcycle_perturbed(mp, "/tmp/never.gguf", 4, 2, 1, 1.0f) == XDS_ERR_INVALID &&
          strstr(xds_err_msg(), "outside [0, 1)"));
    CHECK(xds_model_upcycle_perturbed(mp, "/tmp/never.gguf", 4, 2, 1, -0.1f) == XDS_ERR_INVALID);
    CHECK(access("/tmp/never.gguf", F_OK) != 0);
    char tmpl[] = "/tmp/xds_upcycle_XXXXXX";
    char *dir = mkdtemp(tmpl);
    CHECK(dir != NULL);
    xds_model *dense = NULL;
    CHECK_MSG(xds_model_load(mp, NULL, &dense) == XDS_OK, "%s", xds_err_msg());
    if (dir && dense) {
        check_upcycled(mp, dense, dir, 4, 2);
        check_perturbed(mp, dense, dir);
#ifndef XDS_SANITIZE
        check_upcycled(mp, dense, dir, 3, 1);
#endif
    }
    xds_model_free(dense);
    if (dir) rmdir(dir);
    TEST_MAIN_END();
}
