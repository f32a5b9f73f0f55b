/*
 * pd.h — disaggregated prefill / decode over XCCL (DESIGN §3.3,
 * issue 6 item 2): a prefill instance runs chunked prefill into a KV pool
 * that lives in a registered XCCL region, then registers a transfer task
 * (request id, prompt length, first token, the block ids — metadata only) with
 * the chosen decode rank. The decode side pulls the blocks with one one-sided
 * xccl_getv only once it has free blocks of its own (back-pressure: until then
 * the blocks stay on the prefill side), and then tells the prefill side to
 * free them. Works for GQA K/V rows and for MLA's latent rows (v_dim 0: K only).
 *
 * Messages (P2P channel, in order per pair): prefill -> decode TASK
 * {header, block ids}; decode -> prefill FREE {req_id}. A task not pulled
 * within hold_s is dropped by the prefill side (its blocks freed) and the
 * decode side's later pull of it fails cleanly (the FREE names an unknown id).
 *
 * Prefix caching on the prefill side: the pool's blocks are managed by a
 * block manager with a prefix cache (engine/kv_block.h); a released task's
 * full blocks stay cached, and a later prompt with the same prefix reuses them
 * (only [cached, n) is computed; at least the last token always is).
 *
 * Invariants: the prefill pool's block ids and geometry (layers, k/v dims,
 * block size, pool blocks) travel with each task and are checked against the
 * decode cache before any byte is read; a pull reads whole blocks of
 * [0, n_prompt) positions, so both pools must use the same block size.
 */
#ifndef XDS_ENGINE_DEPLOY_PD_H
#define XDS_ENGINE_DEPLOY_PD_H

#include <stdint.h>

#include "base/status.h"
#include "model/model.h"

struct xccl_comm;
struct xds_prefix_cache;

/* ---- prefill instance --------------------------------------------------- */

typedef struct xds_pd_prefill xds_pd_prefill;

typedef struct xds_pd_prefill_opts {
    int pool_tokens; /* KV pool capacity in tokens (rounded up to blocks) */
    int block_size;  /* tokens per block */
    int max_seqs;    /* tasks held at once */
    int chunk;       /* chunked prefill: tokens per forward pass */
    int n_threads;
    double hold_s;   /* drop a task not pulled within this (0: 60 s) */
    /* Called by xds_pd_prefill_serve after every submit attempt (blocks are
     * cached or evicted only there) with the instance's prefix cache (NULL
     * when off): how it publishes its cached prefixes (deploy/pd_pick.h). */
    void (*after_submit)(void *user, const struct xds_prefix_cache *pc);
    void *after_submit_user;
} xds_pd_prefill_opts;

xds_status xds_pd_prefill_create(const xds_model *m, struct xds_pd_prefill_opts *o, struct xccl_comm *comm,
                                 xds_pd_prefill **out);
void xds_pd_prefill_free(xds_pd_prefill *p);
/* Prefill prompt[0..n) (chunked), take the greedy first token, keep the
 * blocks and send the transfer task to decode_rank. XDS_ERR_BUSY: no free
 * sequence slot or blocks (call xds_pd_prefill_poll first). */
xds_status xds_pd_prefill_submit(xds_pd_prefill *p, uint64_t req_id, const int32_t *prompt, int n, int decode_rank,
                                 int32_t *first_token);
/* Handle FREE messages from decode_rank (waiting up to wait_ms for the first
 * one when tasks are outstanding; 0: don't wait) and drop expired tasks. */
xds_status xds_pd_prefill_poll(xds_pd_prefill *p, int decode_rank, int wait_ms);
/* Release the blocks of req_id (its FREE arrived); 0 if it is not held. */
int xds_pd_prefill_release(xds_pd_prefill *p, uint64_t req_id);
/* Drop tasks held longer than hold_s (their blocks are freed). */
void xds_pd_prefill_expire(xds_pd_prefill *p);
/* Tasks registered and not yet freed. */
int xds_pd_prefill_outstanding(const xds_pd_prefill *p);
/* Blocks an allocation could get (free + cached, unreferenced). */
int xds_pd_prefill_free_blocks(const xds_pd_prefill *p);
/* Prompt tokens served from the prefill prefix cache / computed so far. */
void xds_pd_prefill_token_stats(const xds_pd_prefill *p, uint64_t *cached, uint64_t *computed);

/* ---- decode side -------------------------------------------------------- */

typedef struct xds_pd_task {
    uint64_t req_id;
    int src_rank;
    int n_prompt;
    int32_t first_token;
    uint32_t region;      /* prefill's KV region id */
    int n_layer, k_dim, v_dim, block_size, pool_blocks;
    uint64_t logits_off;  /* region offset of the last prompt token's logits (n_vocab floats) */
    int n_vocab;
    int n_blocks;
    uint32_t src_inc;     /* XCCL incarnation of the prefill process that holds the KV: a pull
                           * from a later one (restarted at src_rank) is refused, never read */
    int32_t blocks[1024]; /* prefill block ids of positions [0, n_prompt) */
} xds_pd_task;

/* Receive the next transfer task from src_rank (comm deadline). n_prompt -1:
 * the prefill instance failed that request (it logged why; nothing is held). */
xds_status xds_pd_task_recv(struct xccl_comm *comm, int src_rank, xds_pd_task *t);
/* Pull t's blocks into kv sequence slot seq (positions [0, n_prompt)), then
 * send FREE to the prefill side. XDS_ERR_BUSY (nothing read, the task stays
 * valid): kv has not enough free blocks — back-pressure, try again later.
 * bytes (may be NULL) += bytes copied. */
xds_status xds_pd_pull(struct xccl_comm *comm, const xds_pd_task *t, xds_kv_cache *kv, int seq, uint64_t *bytes);

/* Copy prompt positions [from, to) of t into kv sequence slot seq, whose
 * block table must already cover them (an engine's import callback); sends
 * nothing. bytes (may be NULL) += bytes copied. */
xds_status xds_pd_pull_range(struct xccl_comm *comm, const xds_pd_task *t, xds_kv_cache *kv, int seq, int from, int to,
                             uint64_t *bytes);
/* The prefill side's logits of the last prompt token (t->n_vocab floats). */
xds_status xds_pd_get_logits(struct xccl_comm *comm, const xds_pd_task *t, float *logits);
/* Tell the prefill side it may free t's blocks. */
xds_status xds_pd_task_free(struct xccl_comm *comm, const xds_pd_task *t);

/* ---- serving loop of a prefill instance --------------------------------- */

/* Front side: ask prefill_rank to prefill tokens[0..n) as req_id (> 0); the
 * transfer task goes back to the sender. */
xds_status xds_pd_request_send(struct xccl_comm *comm, int prefill_rank, uint64_t req_id, const int32_t *tokens,
                               int n);
/* Front side: end prefill_rank's serving loop. */
xds_status xds_pd_stop_send(struct xccl_comm *comm, int prefill_rank);
#define XDS_PD_MAX_FRONTS 16
/* Prefill instance: serve requests from the front-end ranks fronts[0..n)
 * (REQ -> chunked prefill -> TASK back to the sender; FREE -> release; STOP
 * from fronts[0], the supervisor's, -> return XDS_OK) until STOP or an error.
 * Request ids must be unique across the front-ends. Requests that find the
 * pool full wait (in order) for FREEs. A front-end other than fronts[0] that
 * leaves is no longer heard; fronts[0] gone is an error. */
xds_status xds_pd_prefill_serve(xds_pd_prefill *p, const int *fronts, int n_fronts);

#endif
