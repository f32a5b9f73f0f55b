/*
 * sampler.c — penalties, temperature, top-k/top-p/min-p and the seeded draw.
 *
 * Cost: a full sort of a 49k-151k vocabulary per token would cost more than a
 * decode step of a small model, so candidates are first cut to the tokens
 * whose probability is at least 1e-9 of the best one (after temperature).
 * What is cut carries at most n_vocab * 1e-9 of the mass (< 2e-4 for a 151k
 * vocabulary), so the distribution sampled differs from the exact one by less
 * than that in total variation; top-k/top-p/min-p then run on the survivors.
 */
#include "sampler/sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct xds_sampler {
    xds_sampler_params p;
    int n_vocab;
    uint64_t rng[4];
    int32_t *counts; /* (n_vocab) accepted occurrences, for presence/frequency */
    int32_t *recent; /* (penalty_last_n) ring of the last accepted tokens */
    int n_recent, recent_head;
    struct cand { int32_t id; float v; } *cand; /* (n_vocab) scratch */
};

xds_sampler_params xds_sampler_params_default(void) {
    xds_sampler_params p = {.temp = 0.8f, .top_k = 40, .top_p = 0.95f, .min_p = 0.05f,
                            .repeat_penalty = 1.0f, .penalty_last_n = 64,
                            .presence_penalty = 0.0f, .frequency_penalty = 0.0f, .seed = 0};
    return p;
}

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rng_next(uint64_t s[4]) { /* xoshiro256** */
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

/* Uniform double in [0, 1). */
static double rng_uniform(uint64_t s[4]) { return (double)(rng_next(s) >> 11) * 0x1.0p-53; }

void xds_sampler_reset(xds_sampler *s, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix64(&x);
    memset(s->counts, 0, sizeof(int32_t) * (size_t)s->n_vocab);
    s->n_recent = s->recent_head = 0;
}

xds_sampler *xds_sampler_create(const xds_sampler_params *p, int n_vocab) {
    if (n_vocab <= 0) return NULL;
    xds_sampler *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->p = *p;
    if (s->p.penalty_last_n < 0) s->p.penalty_last_n = 0;
    s->n_vocab = n_vocab;
    s->counts = calloc((size_t)n_vocab, sizeof *s->counts);
    s->recent = calloc((size_t)s->p.penalty_last_n + 1, sizeof *s->recent);
    s->cand = malloc(sizeof *s->cand * (size_t)n_vocab);
    if (!s->counts || !s->recent || !s->cand) {
        xds_sampler_free(s);
        return NULL;
    }
    xds_sampler_reset(s, p->seed);
    return s;
}

void xds_sampler_free(xds_sampler *s) {
    if (!s) return;
    free(s->counts);
    free(s->recent);
    free(s->cand);
    free(s);
}

void xds_sampler_accept(xds_sampler *s, int32_t token) {
    if (token < 0 || token >= s->n_vocab) return;
    s->counts[token]++;
    int n = s->p.penalty_last_n;
    if (n > 0) {
        s->recent[s->recent_head] = token;
        s->recent_head = (s->recent_head + 1) % n;
        if (s->n_recent < n) s->n_recent++;
    }
}

int32_t xds_argmax(const float *x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static void apply_penalties(xds_sampler *s, float *logits) {
    const xds_sampler_params *p = &s->p;
    if (p->repeat_penalty != 1.0f && p->repeat_penalty > 0.0f && s->n_recent > 0) {
        /* Each distinct token in the window is penalized once (the window is
         * short, so the quadratic duplicate check is cheap). */
        int n = p->penalty_last_n;
        for (int i = 0; i < s->n_recent; i++) {
            int32_t t = s->recent[(s->recent_head - 1 - i + n) % n];
            int dup = 0;
            for (int j = 0; j < i && !dup; j++) dup = s->recent[(s->recent_head - 1 - j + n) % n] == t;
            if (dup) continue;
            logits[t] = logits[t] > 0 ? logits[t] / p->repeat_penalty : logits[t] * p->repeat_penalty;
        }
    }
    if (p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f) {
        for (int i = 0; i < s->n_vocab; i++)
            if (s->counts[i])
                logits[i] -= p->presence_penalty + p->frequency_penalty * (float)s->counts[i];
    }
}

static int cand_desc(const void *a, const void *b) {
    const struct cand *x = a, *y = b;
    if (x->v != y->v) return x->v < y->v ? 1 : -1;
    return x->id < y->id ? -1 : x->id > y->id;
}

int32_t xds_sampler_sample(xds_sampler *s, float *logits) {
    const xds_sampler_params *p = &s->p;
    int nv = s->n_vocab;
    apply_penalties(s, logits);
    for (int i = 0; i < p->n_logit_bias && i < XDS_MAX_LOGIT_BIAS; i++)
        if (p->logit_bias_tok[i] >= 0 && p->logit_bias_tok[i] < nv) logits[p->logit_bias_tok[i]] += p->logit_bias[i];
    if (!(p->temp > 0.0f)) return xds_argmax(logits, nv);

    /* Temperature; keep candidates within ln(1e9) of the best (see header). */
    float inv_t = 1.0f / p->temp;
    float mx = logits[xds_argmax(logits, nv)];
    if (!isfinite(mx)) return xds_argmax(logits, nv);
    float cut = mx - 20.7232658f * p->temp; /* ln(1e9) */
    int n = 0;
    for (int i = 0; i < nv; i++)
        if (logits[i] >= cut) s->cand[n++] = (struct cand){i, (logits[i] - mx) * inv_t};
    qsort(s->cand, (size_t)n, sizeof *s->cand, cand_desc);
    if (p->top_k > 0 && p->top_k < n) n = p->top_k;

    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += (s->cand[i].v = expf(s->cand[i].v));
    if (p->top_p < 1.0f && p->top_p > 0.0f) {
        double acc = 0.0;
        for (int i = 0; i < n; i++) {
            acc += s->cand[i].v;
            if (acc >= p->top_p * sum) { n = i + 1; break; }
        }
    }
    if (p->min_p > 0.0f) {
        float thr = p->min_p * s->cand[0].v; /* cand[0] is the most likely */
        int m = 1;
        while (m < n && s->cand[m].v >= thr) m++;
        n = m;
    }
    sum = 0.0;
    for (int i = 0; i < n; i++) sum += s->cand[i].v;
    double r = rng_uniform(s->rng) * sum, acc = 0.0;
    for (int i = 0; i < n; i++) {
        acc += s->cand[i].v;
        if (r < acc) return s->cand[i].id;
    }
    return s->cand[n - 1].id;
}
