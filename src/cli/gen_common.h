/*
 * gen_common.h — what `xds generate` and `xds chat` share: option parsing of
 * the sampling / model flags, loading a model with its tokenizer (progress bar
 * on a terminal only), and a single-sequence session that prefills only the
 * tokens not already in its KV cache and streams sampled tokens through the
 * streaming detokenizer.
 *
 * Invariant: a session's `hist` holds exactly the tokens whose K/V are in the
 * cache at positions [0, n_hist).
 */
#ifndef XDS_CLI_GEN_COMMON_H
#define XDS_CLI_GEN_COMMON_H

#include <stdint.h>
#include <stdio.h>

#include "model/model.h"
#include "sampler/sampler.h"
#include "tokenizer/tokenizer.h"

typedef struct gen_opts {
    const char *model;
    const char *prompt;  /* generate */
    const char *system;  /* chat */
    int n_predict;       /* -n; < 0: until the context is full */
    int n_threads;       /* -t */
    int n_ctx;           /* -c; 0: min(model context, 4096) */
    int no_bos, raw, quiet;
    int quantize;        /* --quantize: xds_quantize */
    int seed_set;
    xds_sampler_params sp;
} gen_opts;

/* Parses argv (argv[0] = subcommand); chat=1 accepts --system instead of -p.
 * Returns 0 on success, 1 on a usage error (message printed), 2 for --help. */
int gen_parse_args(int argc, char **argv, int chat, gen_opts *o);

typedef struct gen_session {
    const char *cmd;        /* "generate" / "chat", for error lines */
    xds_model *model;
    xds_tokenizer *tok;
    xds_kv_cache *kv;
    xds_model_ctx *ctx;
    xds_sampler *sampler;
    int n_ctx;
    int max_batch;          /* prefill chunk (tokens per forward) */
    int32_t *hist;          /* (n_ctx) tokens in the cache */
    int n_hist;
    float *logits;          /* (n_vocab) logits after the last fed token */
    double t_prefill, t_decode; /* seconds spent */
    int n_prefill, n_decode;    /* tokens */
} gen_session;

/* Loads model + tokenizer and allocates the cache; prints an error line and
 * returns nonzero on failure. */
int gen_session_open(gen_session *s, const char *cmd, const gen_opts *o);
void gen_session_close(gen_session *s);

/* Make the cache hold exactly ids[0..n): keep the longest common prefix with
 * hist, prefill the rest (in chunks), leaving logits of the last token.
 * Errors (context too small) print one line and return nonzero. */
int gen_session_feed(gen_session *s, const int32_t *ids, int n);

/* Sample up to n_max tokens (< 0: until the context is full), streaming text
 * to `out`; stops at an end-of-generation token (not fed, not printed).
 * Generated tokens are appended to *gen (malloc'ed, may be NULL). Returns 0, or
 * nonzero after printing an error line. */
int gen_session_generate(gen_session *s, int n_max, int skip_special, FILE *out, int32_t **gen,
                         int *n_gen);

/* Prints the prefill / decode figures since the last call, then resets them. */
void gen_print_speed(gen_session *s);

#endif
