/*
 * sampler.h — turns a row of logits into the next token.
 *
 * Order (as vLLM / transformers apply them): repetition penalty over the last
 * `penalty_last_n` accepted tokens (llama.cpp semantics: positive logits are
 * divided by the penalty, negative ones multiplied), presence and frequency
 * penalties over all accepted tokens (OpenAI semantics: logit -= presence *
 * [count > 0] + frequency * count), then temperature, top-k, top-p, min-p, and
 * a draw from the renormalized distribution. temp <= 0 is greedy (argmax after
 * penalties; ties go to the lowest id).
 *
 * The RNG (xoshiro256**, seeded through splitmix64) lives in the sampler: the
 * same seed and the same logits give the same tokens. No global state.
 */
#ifndef XDS_SAMPLER_SAMPLER_H
#define XDS_SAMPLER_SAMPLER_H

#include <stdint.h>

#define XDS_MAX_LOGIT_BIAS 300 /* entries of logit_bias (OpenAI's limit) */

typedef struct xds_sampler_params {
    float temp;              /* <= 0: greedy */
    int top_k;               /* <= 0: off */
    float top_p;             /* >= 1: off */
    float min_p;             /* <= 0: off */
    float repeat_penalty;    /* 1: off */
    int penalty_last_n;      /* window of the repeat penalty (tokens) */
    float presence_penalty;  /* 0: off */
    float frequency_penalty; /* 0: off */
    uint64_t seed;
    /* OpenAI logit_bias: added to the logits of these token ids (after the
     * penalties, before temperature, so greedy decoding sees it too); ids
     * outside the vocabulary are refused at submit. Fixed arrays, so the
     * parameters stay a plain value (copied into requests and messages). */
    int n_logit_bias;
    int32_t logit_bias_tok[XDS_MAX_LOGIT_BIAS];
    float logit_bias[XDS_MAX_LOGIT_BIAS];
} xds_sampler_params;

typedef struct xds_sampler xds_sampler;

/* Defaults: temp 0.8, top_k 40, top_p 0.95, min_p 0.05, penalties off,
 * penalty_last_n 64, seed 0. */
xds_sampler_params xds_sampler_params_default(void);

/* NULL on allocation failure or n_vocab <= 0. */
xds_sampler *xds_sampler_create(const xds_sampler_params *p, int n_vocab);
void xds_sampler_free(xds_sampler *s);
/* Forget accepted tokens and reseed (for reusing a sampler). */
void xds_sampler_reset(xds_sampler *s, uint64_t seed);

/* Pick the next token. `logits` (n_vocab) is modified (penalties applied). */
int32_t xds_sampler_sample(xds_sampler *s, float *logits);
/* Record a token as generated (feeds the penalties). */
void xds_sampler_accept(xds_sampler *s, int32_t token);

/* Index of the largest value (lowest index on ties). */
int32_t xds_argmax(const float *x, int n);

#endif
