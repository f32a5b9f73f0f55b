/*
 * engine.h — FlowServe's DP group as seen by its callers (the HTTP server, the
 * CLI, tests): submit a tokenized request, receive its output as a stream of
 * events, cancel it. One engine = one DP group: scheduler (continuous
 * batching, chunked prefill), paged KV cache with block manager and prefix
 * cache, executor. The engine runs its step loop on its own thread; callbacks
 * are invoked from that thread and must not block (copy and signal).
 *
 * Output processing (streaming detokenization, stop strings, finish reasons)
 * lives here, not in the server, so a stop string ends the sequence and frees
 * its KV blocks at once.
 */
#ifndef XDS_ENGINE_ENGINE_H
#define XDS_ENGINE_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "sampler/sampler.h"

typedef struct xds_engine xds_engine;
struct xds_model;
struct xds_model_ctx;
struct xds_batch;
struct xds_tokenizer;

typedef struct xds_engine_opts {
    int n_threads;         /* compute threads */
    int max_batch;         /* max sequences running at once */
    int max_step_tokens;   /* token budget per step (chunked prefill + decodes) */
    int kv_blocks;         /* KV cache blocks (0: size from max_ctx * max_batch) */
    int kv_block_size;     /* tokens per block */
    int max_queue;         /* waiting requests beyond which submit says XDS_ERR_BUSY */
    int max_ctx;           /* max prompt + output tokens per sequence */
    int enable_prefix_cache;
    /* Executor override (NULL: xds_model_forward on the engine's context).
     * A disaggregated deployment passes deploy/expert.h's attention-side
     * executor (xds_deploy_forward_cb, user = the xds_deploy_attn). Called on
     * the engine thread only, with xds_model_forward's arguments. */
    xds_status (*forward)(void *user, struct xds_model_ctx *ctx, const struct xds_batch *b,
                          const int32_t *logit_rows, int n_rows, float *logits);
    void *forward_user;
} xds_engine_opts;

/* Defaults: n_threads = online CPUs, max_batch 16, max_step_tokens 256,
 * kv_block_size 16, max_queue 256, prefix cache on; max_ctx 0 = the model's
 * context (larger values are clamped to it); kv_blocks 0 = max_ctx tokens
 * per batch slot, at most 2 GiB of KV. max_step_tokens is raised to
 * max_batch if smaller. */
xds_engine_opts xds_engine_opts_default(void);

typedef enum xds_finish {
    XDS_FINISH_NONE = 0, /* not finished: more events follow */
    XDS_FINISH_STOP,     /* EOG token or a stop string */
    XDS_FINISH_LENGTH,   /* max_tokens or context reached */
    XDS_FINISH_ABORT,    /* cancelled */
    XDS_FINISH_ERROR,
    XDS_FINISH_UNAVAILABLE, /* a router (xds_server_engine_ops) gave up: no capacity left to
                             * finish it; the HTTP server answers 503 + Retry-After (the engine
                             * itself never ends a request so) */
} xds_finish;

typedef struct xds_gen_params {
    int max_tokens;               /* > 0 */
    xds_sampler_params sampling;
    const char *const *stop;      /* stop strings (copied at submit) */
    int n_stop;
    int ignore_eos;
} xds_gen_params;

typedef struct xds_gen_event {
    uint64_t req_id;
    const char *text;   /* new text (complete UTF-8; stop strings withheld/cut) */
    size_t text_len;
    int32_t token;      /* the token generated (-1 for a final event without one) */
    xds_finish finish;  /* != NONE on the last event of a request */
    int n_prompt;       /* prompt tokens */
    int n_cached;       /* prompt tokens served from the prefix cache */
    int n_gen;          /* generated tokens so far */
} xds_gen_event;

typedef void (*xds_gen_cb)(void *user, const xds_gen_event *ev);

xds_status xds_engine_create(struct xds_model *model, struct xds_tokenizer *tok,
                             const xds_engine_opts *opts, xds_engine **out);
/* Finish in-flight requests (drain = 1) or abort them, stop the loop, free. */
void xds_engine_free(xds_engine *e, int drain);

/* Queue a request. Errors: XDS_ERR_INVALID (empty prompt, prompt + max_tokens
 * beyond max_ctx, bad params), XDS_ERR_BUSY (the waiting queue is full). On
 * success *req_id identifies it and cb will receive its events, the last one
 * with finish != XDS_FINISH_NONE. (Also INVALID: a token id outside the
 * vocabulary, a request needing more KV blocks than the pool has; BUSY also
 * once xds_engine_free has begun. *req_id is written before any callback.)
 * Events: one per generated token (token >= 0; its text may be empty while
 * bytes or a possible stop string are withheld); the final event carries the
 * last token, or token -1 for ABORT / ERROR. */
xds_status xds_engine_submit(xds_engine *e, const int32_t *prompt, int n_prompt,
                             const xds_gen_params *params, xds_gen_cb cb, void *user,
                             uint64_t *req_id);
/* Disaggregated prefill (deploy/pd.h): a request whose prompt KV was
 * computed elsewhere. Before a step feeds prompt positions [from, to) of it
 * (to <= n_prompt), the engine thread calls import with the KV cache and the
 * sequence's slot, whose block table already covers them; it returns how many
 * leading positions it filled (0..to - from) and the engine computes the
 * rest. When to == n_prompt and the step samples there, logits is a row of
 * n_vocab floats: an import that covers position n_prompt - 1 must write
 * that position's logits into it (they are then sampled as if computed here);
 * with logits NULL an import may not cover n_prompt - 1. Must not block for
 * long (it runs inside the step). */
struct xds_kv_cache;
typedef int (*xds_kv_import_fn)(void *user, struct xds_kv_cache *kv, int slot, int from, int to, float *logits);
xds_status xds_engine_submit_import(xds_engine *e, const int32_t *prompt, int n_prompt,
                                    const xds_gen_params *params, xds_gen_cb cb, void *user,
                                    xds_kv_import_fn import, void *import_user, uint64_t *req_id);
/* Cancel: the request's last event (finish ABORT) is delivered later from the
 * engine thread; after it the callback is never called again for it. */
void xds_engine_cancel(xds_engine *e, uint64_t req_id);

typedef struct xds_engine_stats {
    int n_waiting, n_running;
    int kv_blocks_total, kv_blocks_used;
    uint64_t prefix_queries, prefix_hits; /* in tokens */
    uint64_t n_prompt_tokens, n_gen_tokens, n_steps;
    uint64_t n_preemptions;  /* sequences preempted (freed, recomputed later) */
    int max_queue;           /* the queue limit (n_waiting >= max_queue: submit says BUSY); 0: unknown */
    /* Liveness: seconds since the step loop last made progress (finished a
     * step or took its inbox) while it had work (requests queued, running or
     * to cancel); 0 while idle. A loop that is stuck (a forward that does not
     * return) shows as a growing value. */
    double stall_s;
} xds_engine_stats;

void xds_engine_stats_get(xds_engine *e, xds_engine_stats *out);

/* Expert load counters (EPLB, deploy/eplb.h): tokens the engine's passes
 * routed to each (layer, logical expert) since it was created — every
 * forwarded token adds one to each of its top-k experts (prefill, decode,
 * recomputation after preemption; prefix-cached tokens are not forwarded).
 * Copies the n_layer * n_expert counters (dense layers stay 0) into out and
 * returns n_expert; 0 for a model without routed experts (out untouched).
 * Any thread; counters read while a pass runs may be a step apart. */
int xds_engine_expert_load(xds_engine *e, uint64_t *out);
/* The same as malloc'ed JSON for GET /v1/experts/load:
 * {"experts":E,"top_k":K,"layers":[MoE layer indices],"load":[[count per
 * expert] per MoE layer]} — "load" is an `xds eplb-plan --load` file. NULL
 * for a model without routed experts or out of memory. */
char *xds_engine_expert_load_json(xds_engine *e);

/* Test hook (read once at xds_engine_create): with the environment variable
 * XDS_TEST_STALL_ENGINE_MS=N (N > 0), the step loop sleeps N ms in the first
 * step of every request, before its forward pass, so tests can watch a
 * stalled engine (stall_s above, the server's /health) and its recovery. A
 * warning is logged when it is set. */
#define XDS_ENGINE_TEST_STALL_ENV "XDS_TEST_STALL_ENGINE_MS"

#endif
