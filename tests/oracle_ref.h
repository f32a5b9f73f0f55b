/*
 * oracle_ref.h — shared by the model tests: the transformers reference
 * fixtures (ref.json + ref.bin written by tools/oracle.py and
 * tools/oracle_moe.py) and the helpers that run a sequence through the model
 * in a chunk schedule and compare its logits and greedy tokens with them.
 */
#ifndef XDS_TESTS_ORACLE_REF_H
#define XDS_TESTS_ORACLE_REF_H

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "sampler/sampler.h"
#include "test.h"

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

#endif
