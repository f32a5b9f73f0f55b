/*
 * oracle_ref.h — shared by the model tests: the transformers reference
 * fixtures (ref.json + ref.bin written by tools/oracle.py and
 * tools/oracle_moe.py) and the helpers that run a sequence through the model
 * in a chunk schedule and compare its logits and greedy tokens with them.
 */
#ifndef XDS_TESTS_ORACLE_REF_H
#define XDS_TESTS_ORACLE_REF_H

#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/model.h"
#include "sampler/sampler.h"
#include "test.h"

#ifndef TOL_REL
#define TOL_REL 1e-4 /* max |delta| / max |ref| against transformers in fp32 */
#endif

typedef struct {
    int n_prompt, n_tok;
    int32_t *tokens; /* (n_tok) */
    float *logits;   /* (n_tok, n_vocab) */
} ref_case;

static inline int load_ref(const char *dir, int n_vocab, ref_case *cases, int max_cases) {
    char p[1024];
    snprintf(p, sizeof p, "%s/ref.json", dir);
    json_error_t err;
    json_t *j = json_load_file(p, 0, &err);
    if (!j) return -1;
    snprintf(p, sizeof p, "%s/ref.bin", dir);
    FILE *f = fopen(p, "rb");
    if (!f) return json_decref(j), -1;
    json_t *cs = json_object_get(j, "cases");
    int n = 0;
    for (size_t i = 0; i < json_array_size(cs) && n < max_cases; i++, n++) {
        json_t *c = json_array_get(cs, i);
        json_t *toks = json_object_get(c, "tokens");
        ref_case *r = &cases[n];
        r->n_prompt = (int)json_integer_value(json_object_get(c, "n_prompt"));
        r->n_tok = (int)json_array_size(toks);
        r->tokens = malloc(sizeof(int32_t) * r->n_tok);
        for (int t = 0; t < r->n_tok; t++) r->tokens[t] = (int32_t)json_integer_value(json_array_get(toks, t));
        r->logits = malloc(sizeof(float) * r->n_tok * n_vocab);
        long off = (long)json_integer_value(json_object_get(c, "logits_offset"));
        if (fseek(f, off * 4, SEEK_SET) || fread(r->logits, 4, (size_t)r->n_tok * n_vocab, f) != (size_t)r->n_tok * n_vocab)
            n = -1;
        if (n < 0) break;
    }
    fclose(f);
    json_decref(j);
    return n;
}

static inline double max_abs(const float *a, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs(a[i]));
    return m;
}

/* Compares rows of logits with the reference: returns max |delta| / scale. */
static inline double rel_err(const float *got, const float *ref, int n, double scale) {
    double m = 0;
    for (int i = 0; i < n; i++) m = fmax(m, fabs((double)got[i] - ref[i]));
    return m / scale;
}

/* Runs tokens [from, to) of a sequence as one batch, logits of every row into out (rows from..to). */
static inline xds_status run_chunk(xds_model_ctx *ctx, xds_kv_cache *kv, int seq, const int32_t *tokens, int from,
                            int to, float *out, int V) {
    int n = to - from;
    int32_t pos[256], sq[256], rows[256];
    for (int i = 0; i < n; i++) {
        pos[i] = from + i;
        sq[i] = seq;
        rows[i] = i;
    }
    XDS_TRY(xds_kv_seq_reserve(kv, seq, to));
    xds_batch b = {n, tokens + from, pos, sq};
    return xds_model_forward(ctx, &b, rows, n, out + (size_t)from * V);
}

/* Path with a chunk schedule: chunks[] are lengths over the prompt, then each
 * further step feeds our own greedy token. Logits of every position -> out. */
static inline int run_path(xds_model_ctx *ctx, xds_kv_cache *kv, int seq, const ref_case *r, const int *chunks,
                    int n_chunks, float *out, int V, const char *what) {
    int32_t toks[256];
    memcpy(toks, r->tokens, sizeof(int32_t) * r->n_prompt);
    int at = 0;
    for (int c = 0; c < n_chunks; c++) {
        if (run_chunk(ctx, kv, seq, toks, at, at + chunks[c], out, V) != XDS_OK) {
            fprintf(stderr, "%s: %s\n", what, xds_err_msg());
            return 0;
        }
        at += chunks[c];
    }
    int greedy_ok = 1;
    while (at < r->n_tok) {
        int32_t nxt = xds_argmax(out + (size_t)(at - 1) * V, V);
        if (nxt != r->tokens[at]) greedy_ok = 0;
        toks[at] = greedy_ok ? nxt : r->tokens[at]; /* keep following the reference */
        int step = (at == r->n_prompt && r->n_tok - at >= 2 && n_chunks > 1) ? 2 : 1;
        if (step == 2) { /* a 2-token chunk: needs the next token too */
            int32_t n2 = r->tokens[at + 1];
            toks[at + 1] = n2;
        }
        if (run_chunk(ctx, kv, seq, toks, at, at + step, out, V) != XDS_OK) {
            fprintf(stderr, "%s: %s\n", what, xds_err_msg());
            return 0;
        }
        if (step == 2 && xds_argmax(out + (size_t)at * V, V) != r->tokens[at + 1]) greedy_ok = 0;
        at += step;
    }
    CHECK_MSG(greedy_ok, "%s: greedy tokens differ from transformers", what);
    return 1;
}

/* Loads the HF checkpoint in dir and checks it against its transformers
 * reference through three paths (whole prompt then decode, prompt in chunks,
 * two sequences batched), each to TOL_REL of the logit scale with identical
 * greedy tokens; then that malformed batches are errors, not crashes. */
static inline void oracle_check_model(const char *dir, const char *name) {
    xds_model *m = NULL;
    xds_status s = xds_model_load(dir, NULL, &m);
    CHECK_MSG(s == XDS_OK, "%s: load: %s", name, xds_err_msg());
    if (s != XDS_OK) return;
    int V = m->cfg.n_vocab;
    ref_case rc[4];
    int nc = load_ref(dir, V, rc, 4);
    CHECK_MSG(nc >= 2, "%s: reference fixture unreadable", name);
    if (nc < 2) {
        xds_model_free(m);
        return;
    }
    xds_kv_cache *kv;
    CHECK(xds_model_kv_cache_create(m, 512, 4, 4, &kv) == XDS_OK);
    xds_model_ctx *ctx;
    CHECK(xds_model_ctx_create(m, kv, 2, 128, &ctx) == XDS_OK);
    int32_t dummy = xds_kv_block_alloc(kv); /* tables never start at block 0 */
    float *outA[4], *out = NULL;
    for (int ci = 0; ci < nc; ci++) {
        const ref_case *r = &rc[ci];
        double scale = max_abs(r->logits, (size_t)r->n_tok * V);
        size_t nl = (size_t)r->n_tok * V;
        /* (A) whole prompt, then token by token */
        outA[ci] = calloc(nl, sizeof(float));
        int whole[1] = {r->n_prompt};
        char what[400];
        snprintf(what, sizeof what, "%s case %d path A", name, ci);
        if (run_path(ctx, kv, 0, r, whole, 1, outA[ci], V, what)) {
            double e = rel_err(outA[ci], r->logits, (int)nl, scale);
            CHECK_MSG(e <= TOL_REL, "%s: max rel err %.3g", what, e);
            if (ci == 0) printf("%s: max |delta| / max |ref| = %.2e (scale %.2f)\n", name, e, scale);
        }
        xds_kv_seq_truncate(kv, 0, 0);
        /* (B) prompt in two chunks, a 2-token chunk, then single tokens */
        out = calloc(nl, sizeof(float));
        int half = r->n_prompt / 2 + 1;
        int two[2] = {half, r->n_prompt - half};
        snprintf(what, sizeof what, "%s case %d path B", name, ci);
        if (run_path(ctx, kv, 1, r, two, 2, out, V, what)) {
            double e = rel_err(out, r->logits, (int)nl, scale);
            CHECK_MSG(e <= TOL_REL, "%s: max rel err %.3g", what, e);
        }
        xds_kv_seq_truncate(kv, 1, 0);
        free(out);
    }
    /* (C) two sequences in every batch: both prompts at once, then one token of each per step */
    {
        const ref_case *r0 = &rc[0], *r1 = &rc[1];
        int32_t tok[256], pos[256], sq[256], rows[256];
        int n = 0;
        for (int i = 0; i < r1->n_prompt; i++) {
            if (i < r0->n_prompt) tok[n] = r0->tokens[i], pos[n] = i, sq[n] = 2, n++;
            tok[n] = r1->tokens[i], pos[n] = i, sq[n] = 3, n++;
        }
        CHECK(xds_kv_seq_reserve(kv, 2, r0->n_tok) == XDS_OK);
        CHECK(xds_kv_seq_reserve(kv, 3, r1->n_tok) == XDS_OK);
        for (int i = 0; i < n; i++) rows[i] = i;
        float *lg = malloc(sizeof(float) * (size_t)n * V);
        xds_batch b = {n, tok, pos, sq};
        CHECK(xds_model_forward(ctx, &b, rows, n, lg) == XDS_OK);
        double worst = 0, worst_alone = 0;
        for (int i = 0; i < n; i++) {
            const ref_case *r = sq[i] == 2 ? r0 : r1;
            float *alone = sq[i] == 2 ? outA[0] : outA[1];
            double scale = max_abs(r->logits, (size_t)r->n_tok * V);
            worst = fmax(worst, rel_err(lg + (size_t)i * V, r->logits + (size_t)pos[i] * V, V, scale));
            worst_alone = fmax(worst_alone, rel_err(lg + (size_t)i * V, alone + (size_t)pos[i] * V, V, scale));
        }
        /* decode: one token of each sequence per batch (reference tokens) */
        int steps = r0->n_tok - r0->n_prompt;
        for (int st = 0; st < steps; st++) {
            int32_t t2[2] = {r0->tokens[r0->n_prompt + st], r1->tokens[r1->n_prompt + st]};
            int32_t p2[2] = {r0->n_prompt + st, r1->n_prompt + st}, s2[2] = {2, 3}, rw[2] = {0, 1};
            xds_batch b2 = {2, t2, p2, s2};
            CHECK(xds_model_forward(ctx, &b2, rw, 2, lg) == XDS_OK);
            for (int k = 0; k < 2; k++) {
                const ref_case *r = k ? r1 : r0;
                double scale = max_abs(r->logits, (size_t)r->n_tok * V);
                worst = fmax(worst, rel_err(lg + (size_t)k * V, r->logits + (size_t)p2[k] * V, V, scale));
                worst_alone =
                    fmax(worst_alone, rel_err(lg + (size_t)k * V, outA[k] + (size_t)p2[k] * V, V, scale));
            }
        }
        CHECK_MSG(worst <= TOL_REL, "%s path C (batched): max rel err vs transformers %.3g", name, worst);
        /* bad batches are errors, not crashes */
        {
            int32_t bt = V, bp = 0, bs = 2, br = 0;
            xds_batch bad = {1, &bt, &bp, &bs};
            CHECK(xds_model_forward(ctx, &bad, &br, 1, lg) == XDS_ERR_INVALID); /* token id out of range */
            bt = 0, bp = xds_kv_seq_capacity(kv, 2);
            CHECK(xds_model_forward(ctx, &bad, &br, 1, lg) == XDS_ERR_INVALID); /* position not reserved */
            bp = 0, bs = 99;
            CHECK(xds_model_forward(ctx, &bad, &br, 1, lg) == XDS_ERR_INVALID); /* sequence slot */
            bs = 2, br = 1;
            CHECK(xds_model_forward(ctx, &bad, &br, 1, lg) == XDS_ERR_INVALID); /* logit row */
        }
        CHECK_MSG(worst_alone <= 1e-5, "%s path C: batched differs from alone by %.3g", name, worst_alone);
        free(lg);
    }
    for (int ci = 0; ci < nc; ci++) {
        free(outA[ci]);
        free(rc[ci].tokens);
        free(rc[ci].logits);
    }
    xds_kv_block_unref(kv, dummy);
    xds_model_ctx_free(ctx);
    xds_kv_cache_free(kv);
    xds_model_free(m);
}

/* Runs oracle_check_model on every fixture directory under root (one per
 * checkpoint; dot entries skipped) and checks there are at least min_n. */
static inline void oracle_check_all(const char *root, int min_n) {
    DIR *d = opendir(root);
    CHECK_MSG(d != NULL, "no fixtures at %s", root);
    if (!d) return;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char p[512]; /* the fixture files' names are appended to it */
        snprintf(p, sizeof p, "%s/%s", root, e->d_name);
        oracle_check_model(p, e->d_name);
        n++;
    }
    closedir(d);
    CHECK_MSG(n >= min_n, "only %d fixtures under %s", n, root);
}

static inline int write_file(const char *path, const char *s) {
    FILE *f = fopen(path, "w");
    if (!f) return 0;
    fputs(s, f);
    return fclose(f) == 0;
}

/* Copies the checkpoint in base with config.json's `key` set to val (the
 * weights symlinked), loads it, and expects status `want` with an error that
 * mentions must_mention. */
static inline void expect_load_error(const char *base, const char *key, json_t *val, xds_status want,
                              const char *must_mention) {
    char tmpl[] = "/tmp/xds_test_model_XXXXXX";
    char *dir = mkdtemp(tmpl);
    CHECK(dir != NULL);
    if (!dir) return;
    char src[1024], dst[1024];
    snprintf(src, sizeof src, "%s/config.json", base);
    json_t *cfg = json_load_file(src, 0, NULL);
    CHECK(cfg != NULL);
    json_object_set_new(cfg, key, val);
    char *txt = json_dumps(cfg, JSON_INDENT(1));
    snprintf(dst, sizeof dst, "%s/config.json", dir);
    CHECK(write_file(dst, txt));
    free(txt);
    json_decref(cfg);
    snprintf(src, sizeof src, "%s/model.safetensors", base);
    snprintf(dst, sizeof dst, "%s/model.safetensors", dir);
    CHECK(symlink(src, dst) == 0);
    xds_model *m = NULL;
    xds_status s = xds_model_load(dir, NULL, &m);
    CHECK_MSG(s == want, "%s edited: got status %d (%s), want %d", key, s, xds_err_msg(), want);
    CHECK_MSG(strstr(xds_err_msg(), must_mention) != NULL, "error '%s' does not mention '%s'", xds_err_msg(),
              must_mention);
    printf("bad input (%s): %s\n", key, xds_err_msg());
    if (s == XDS_OK) xds_model_free(m);
    unlink(dst);
    snprintf(dst, sizeof dst, "%s/config.json", dir);
    unlink(dst);
    rmdir(dir);
}

#endif
