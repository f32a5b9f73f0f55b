/*
 * scheduler.h — the step scheduler of a DP group (continuous batching with
 * chunked prefill, prefix-cache reuse and preemption), as a pure policy over
 * sequences and the KV block manager; it runs no model.
 *
 * A sequence is a token list (prompt, then generated tokens) of which the
 * first n_computed have their KV in the cache. Every step, a running sequence
 * feeds tokens [n_computed, n_computed + n) for some n >= 1: the rest of its
 * prompt in chunks, or, once caught up, the one token it sampled last. An item
 * whose chunk reaches n_tokens produces logits to sample from. Recompute after
 * preemption is the same thing: n_computed drops to what the prefix cache
 * still holds and the sequence re-feeds prompt and generated tokens.
 *
 * Policy of xds_sched_schedule, per step, with a budget of max_step_tokens:
 *   1. running sequences that decode (one token each), oldest first;
 *   2. running sequences still prefilling, oldest first, a chunk each of what
 *      budget is left (so a long prompt never stalls the decodes);
 *   3. waiting sequences, FIFO, while budget and batch slots remain and no
 *      sequence was preempted this step: the longest cached prefix of full
 *      blocks is taken from the prefix cache (always leaving >= 1 token to
 *      compute), then a first chunk is scheduled.
 * When a running sequence needs a block and none is available, the newest
 * running sequence is preempted (vLLM's policy): its item (if any) is taken
 * out of the plan, its blocks are released (full ones stay in the prefix
 * cache for its recompute) and it goes back to the front of the waiting
 * queue. If the newest is the requester itself, it preempts itself. The oldest
 * running sequence is thus never preempted while others run, so as long as
 * every sequence fits in the pool alone (the engine checks it at submit),
 * every sequence completes.
 *
 * Invariants: a sequence is on exactly one of the waiting / running lists, or
 * finished (on none); a running sequence holds a KV slot in [0, max_batch)
 * and n_tokens > n_computed between steps; its block table covers
 * n_computed positions at least; blocks [0, n_pub) of its table are done with
 * publishing (cached or a duplicate of a cached block). Not thread-safe.
 */
#ifndef XDS_ENGINE_SCHEDULER_H
#define XDS_ENGINE_SCHEDULER_H

#include <stdint.h>

#include "base/status.h"
#include "engine/kv_block.h"

typedef enum xds_seq_state {
    XDS_SEQ_WAITING = 0,
    XDS_SEQ_RUNNING,
    XDS_SEQ_FINISHED,
} xds_seq_state;

typedef struct xds_sched_seq {
    uint64_t id;
    int32_t *tokens;   /* (cap_tokens) prompt, then generated tokens */
    int n_tokens;
    int n_prompt;
    int cap_tokens;    /* max prompt + generated tokens */
    int n_computed;    /* tokens whose KV is in the cache */
    int32_t *blocks;   /* (cap_blocks) block table: position p is in blocks[p / block_size] */
    int n_blocks;
    int cap_blocks;
    uint64_t *hashes;  /* (cap_blocks) chain hash of full block i, valid for i < n_hashed */
    int n_hashed;
    int n_pub;         /* leading blocks of the table done with publishing */
    int n_cached;      /* prompt tokens served by the prefix cache at first admission (-1: not yet admitted) */
    xds_seq_state state;
    int slot;          /* KV sequence slot while running, else -1 */
    int n_preempt;     /* times preempted */
    int preempted_at;  /* step number of the last preemption */
    void *user;        /* the engine's request */
    struct xds_sched_seq *prev, *next; /* list links (waiting or running) */
} xds_sched_seq;

/* A sequence of prompt[0..n_prompt) that may grow to cap_tokens tokens. */
xds_status xds_sched_seq_create(uint64_t id, const int32_t *prompt, int n_prompt, int cap_tokens,
                                int block_size, xds_sched_seq **out);
void xds_sched_seq_free(xds_sched_seq *s);
/* Append a sampled token; 0 if cap_tokens is reached (nothing appended). */
int xds_sched_seq_append(xds_sched_seq *s, int32_t token);

typedef struct xds_sched_opts {
    int max_batch;       /* running sequences at most (= KV slots) */
    int max_step_tokens; /* tokens per step at most */
} xds_sched_opts;

typedef struct xds_sched_item {
    xds_sched_seq *seq;
    int start;  /* first position fed: seq->n_computed at schedule time */
    int n;      /* tokens fed: tokens[start, start + n) */
    int sample; /* 1: start + n == n_tokens, sample from the last row */
} xds_sched_item;

typedef struct xds_sched_plan {
    xds_sched_item *items; /* (max_batch) */
    int n_items;
    int n_tok;             /* sum of n */
    int n_preempted;       /* sequences preempted while planning */
} xds_sched_plan;

typedef struct xds_sched {
    xds_sched_opts opts;
    xds_kv_blocks *bm;         /* borrowed */
    xds_sched_seq *wait_head, *wait_tail;
    xds_sched_seq *run_head, *run_tail; /* admission order, oldest first */
    int n_waiting, n_running;
    int32_t *free_slots;       /* (max_batch) stack of free KV slots */
    int n_free_slots;
    xds_sched_item *items;     /* (max_batch) the plan's storage */
    uint64_t n_steps;
    uint64_t n_preemptions;
    uint64_t prefix_queries, prefix_hits; /* tokens looked up / found in the prefix cache */
} xds_sched;

xds_status xds_sched_create(const xds_sched_opts *opts, xds_kv_blocks *bm, xds_sched **out);
/* Frees the scheduler only; sequences still on its lists belong to the caller
 * (finish them first). */
void xds_sched_free(xds_sched *s);

/* Queue a new sequence (tail of the waiting queue). */
void xds_sched_add(xds_sched *s, xds_sched_seq *seq);
/* Plan the next step (see the policy above). The plan's items are valid until
 * the next call. An empty plan means nothing to run. */
void xds_sched_schedule(xds_sched *s, xds_sched_plan *plan);
/* After the step ran: advance n_computed of every item and publish the blocks
 * that became full to the prefix cache. */
void xds_sched_commit(xds_sched *s, const xds_sched_plan *plan);
/* Take a sequence out (finished, cancelled, failed) wherever it is: release
 * its blocks and slot; state becomes FINISHED. */
void xds_sched_finish(xds_sched *s, xds_sched_seq *seq);

/* Blocks needed to hold n tokens. */
static inline int xds_sched_blocks_for(int n, int block_size) {
    return (n + block_size - 1) / block_size;
}

#endif
