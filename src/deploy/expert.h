/*
 * expert.h — disaggregated MoE-attention across processes over XCCL
 * (DESIGN §3.3, issue 6): the attention-side executor a decode DP group uses
 * instead of xds_model_forward, and the loop an expert worker process runs.
 *
 * Roles (ranks of one XCCL segment):
 *   attention ranks  one per decode DP group: embed, attention, dense FFN,
 *                    MoE routing, shared experts, LM head; at every MoE layer
 *                    each micro-batch dispatches its normed hidden rows to the
 *                    expert workers holding the chosen experts and combines
 *                    the rows that come back;
 *   expert workers   each holds a set of routed experts (a placement: lists
 *                    per worker; an expert on several workers is replicated)
 *                    and serves every attention rank: receive -> expert FFN
 *                    -> send back, in arrival order.
 *
 * Protocol: one FIFO stream per (attention rank, expert worker) pair over
 * XCCL send/recv. Dispatch = for every worker with rows, one message
 * {header: layer, micro-batch, rows per local slot; rows grouped by slot};
 * combine = the worker's message of output rows in the same order, weighted
 * and summed on the attention side. Send buffers live in registered XCCL
 * regions, so large messages are copied once, straight from the sender's
 * buffer (XCCL rendezvous); small ones run ahead through the pair's ring.
 * Because every stream is independent, DP groups run at their own pace (no
 * lock-step, no dummy passes) and an expert worker serves whichever group is
 * ready (xccl_waitany); why this and not XCCL's group dispatch/combine:
 * docs/ARCHITECTURE.md.
 *
 * Micro-batches: with micro_batches = 2 a batch of several sequences is split
 * in two at a sequence boundary and the two halves ping-pong through the
 * layers: while one half's rows are at the expert workers, the other half
 * runs its attention. Kernels are batch-invariant, so the split changes no
 * bit of the output.
 *
 * Placement decisions (docs/PERFORMANCE.md says why):
 *  - shared experts are computed on the attention side, while the routed
 *    experts are away: every token needs them, sending them would move every
 *    row for no routing benefit;
 *  - dense FFN layers (deepseek's first_k_dense, qwen3 mlp_only_layers) stay on
 *    the attention side: no routing, so they are data-parallel with attention.
 *  - a replicated expert's tokens rotate across its replicas by batch
 *    position and pass number (no communication needed to agree).
 *
 * Equivalence: expert workers run the same kernels on the same rows as the
 * colocated moe_experts, and the attention side weight-sums the returned rows
 * exactly as moe_experts does (double, k order, renormalized weights): logits
 * are bit-identical to the colocated engine (tests/unit/test_deploy.c).
 *
 * Failover: an expert worker that dies, hangs or restarts costs no pass:
 * the attention side re-sends the rows it owed to another replica (or waits,
 * bounded, for its restart) and takes the restarted process back between
 * passes (a new XCCL incarnation that says READY); the logits stay
 * bit-identical to a fault-free run. An expert worker runs in XCCL progress
 * mode (its heartbeat means its loop makes progress) and survives an
 * attention rank's restart the same way. See expert.c.
 *
 * Errors: every call returns xds_status with a one-line message; a dead or
 * hung peer that failover cannot replace surfaces as XDS_ERR_PEER naming the
 * rank, never as a hang; a malformed message is an error naming its sender.
 */
#ifndef XDS_ENGINE_DEPLOY_H
#define XDS_ENGINE_DEPLOY_H

#include <stdint.h>

#include "base/status.h"
#include "model/model.h"

struct xccl_comm;
struct xds_fault_counts;
struct xccl_config;

#define XDS_DEPLOY_MAX_WORKERS 63
#define XDS_DEPLOY_MAX_ATTN    32
#define XDS_DEPLOY_MAX_MB      2

/* ---- placement: which worker holds which routed experts ---------------- */

typedef struct xds_deploy_placement {
    int n_expert, n_workers;
    int max_local;       /* largest number of slots on one worker */
    int *n_local;        /* (n_workers) slots of each worker */
    int *slot_expert;    /* (n_workers * max_local) expert in (worker, slot); -1 past n_local */
    int max_rep;         /* most replicas of one expert */
    int *n_rep;          /* (n_expert) replicas of each expert (>= 1) */
    int *rep;            /* (n_expert * max_rep) replica r of e = worker * max_local + slot */
} xds_deploy_placement;

/* Contiguous blocks of ceil(n_expert / n_workers) experts per worker (the
 * last workers may hold fewer, or none). */
xds_status xds_deploy_placement_blocks(int n_expert, int n_workers, xds_deploy_placement *out);
/* Every block of ceil(n_expert / n_workers) experts on `replicas` workers
 * (worker w holds blocks w .. w+replicas-1, mod n_workers): the redundancy
 * that lets an expert worker die without a pause (its tokens go to the other
 * replica). replicas <= 1: the blocks above. */
xds_status xds_deploy_placement_replicated(int n_expert, int n_workers, int replicas, xds_deploy_placement *out);
/* Explicit lists: worker w holds lists[w][0..n_lists[w]). Checks ids, no
 * duplicate within a worker, and that every expert is on some worker. */
xds_status xds_deploy_placement_lists(int n_expert, int n_workers, const int *const *lists, const int *n_lists,
                                      xds_deploy_placement *out);
/* The text form "0,1,2;3,4,5" (workers separated by ';', "" = no experts) —
 * how the supervisor hands a placement to its workers. */
xds_status xds_deploy_placement_parse(const char *s, int n_expert, xds_deploy_placement *out);
/* malloc'ed text form; NULL when out of memory. */
char *xds_deploy_placement_format(const xds_deploy_placement *p);
void xds_deploy_placement_free(xds_deploy_placement *p);

/* An XCCL config for n_ranks ranks suited to these streams: rings that let
 * a decode step's rows run ahead (256 KiB per pair); a hang is reported
 * after 1.5 s without a heartbeat (XDS_HANG_MS overrides). */
void xds_deploy_xccl_config(int n_ranks, struct xccl_config *cfg);

/* ---- attention side ---------------------------------------------------- */

typedef struct xds_deploy_attn xds_deploy_attn;

/* Per-step timing the attention side measures (seconds, cumulative). */
typedef struct xds_deploy_stats {
    double attn_s;     /* embed + attention + dense FFN + routing + shared experts + LM head */
    double dispatch_s; /* grouping rows by worker + posting the sends */
    double combine_s;  /* waiting for the returned rows (expert compute not hidden) + weighted sum */
    uint64_t steps, tokens, moe_calls, split_steps; /* split_steps: passes run as 2 micro-batches */
    /* failover: workers that failed, rows re-sent to replicas or restarts,
     * workers taken back after a restart, time layers waited for one */
    uint64_t failovers, rows_resent, rejoins;
    double rejoin_wait_s;
} xds_deploy_stats;

/* comm: this rank's attachment; borrowed, used only from the thread calling
 * xds_deploy_forward. worker_ranks[w]: the rank of placement worker w.
 * max_tok: largest batch. micro_batches: 1 or 2. Waits until every worker
 * has said READY (and checks it holds what the placement says). */
xds_status xds_deploy_attn_create(const xds_model *m, struct xccl_comm *comm, const int *worker_ranks,
                                  const xds_deploy_placement *pl, int max_tok, int micro_batches,
                                  xds_deploy_attn **out);
/* The whole pass like xds_model_forward, with MoE layers computed by the
 * expert workers. Same checks and outputs. */
xds_status xds_deploy_forward(xds_deploy_attn *a, xds_model_ctx *ctx, const xds_batch *b,
                              const int32_t *logit_rows, int n_rows, float *logits);
/* Adapter with the engine's executor signature (user = the xds_deploy_attn). */
xds_status xds_deploy_forward_cb(void *user, xds_model_ctx *ctx, const xds_batch *b, const int32_t *logit_rows,
                                 int n_rows, float *logits);
/* Tell every worker this rank is done (best effort; errors are logged). A
 * worker leaves its loop once every attention rank has said so. */
void xds_deploy_attn_stop(xds_deploy_attn *a);
void xds_deploy_attn_stats(const xds_deploy_attn *a, xds_deploy_stats *out);
/* How long an MoE layer waits for a restarted worker when every holder of
 * one of its experts failed (default 10 s, or XDS_EXPERT_REJOIN_S); past it
 * the pass fails (XDS_ERR_PEER) and the executor refuses further passes. */
void xds_deploy_attn_set_rejoin_timeout(xds_deploy_attn *a, double seconds);
/* Count each failover (a worker left out, its rows sent elsewhere) in the
 * deployment's shared fault counts (borrowed; NULL: not counted). */
void xds_deploy_attn_set_fault_counts(xds_deploy_attn *a, struct xds_fault_counts *c);
/* A pass that fails beyond failover (an expert with no live copy past the
 * rejoin timeout, a malformed reply) ends the process (_exit(3)) instead of
 * failing this and every later pass: for a deployment's decode group, whose
 * requests the front-ends then continue elsewhere and whose supervisor
 * restarts it. Off by default. */
void xds_deploy_attn_set_exit_on_break(xds_deploy_attn *a, int on);
/* 1 while placement worker w is in use (not failed, or rejoined). */
int xds_deploy_attn_worker_alive(const xds_deploy_attn *a, int w);
/* Take back failed workers whose restart has attached and said READY (never
 * blocks; xds_deploy_forward does it before every pass; an idle loop may
 * call it). Returns how many workers are still out. */
int xds_deploy_attn_poll(xds_deploy_attn *a);
void xds_deploy_attn_free(xds_deploy_attn *a);

/* ---- expert worker ----------------------------------------------------- */

/* Per-worker timing (seconds, cumulative). */
typedef struct xds_deploy_expert_stats {
    double wait_s;    /* idle: no stream had rows */
    double compute_s; /* expert FFN */
    double send_s;    /* returning outputs (waiting for a buffer to be free) */
    uint64_t msgs, rows;
} xds_deploy_expert_stats;

/* Repack (xds_model_repack_units) only the routed experts that `worker`
 * holds in pl: an expert worker's weights, and nothing it does not run. For
 * a model loaded with no_repack. */
xds_status xds_deploy_repack_worker(xds_model *m, const xds_deploy_placement *pl, int worker);

/* The loop of placement worker `worker` serving attn_ranks[0..n_attn) until
 * every one has said STOP (XDS_OK) or on an error naming the peer. max_tok:
 * the largest batch an attention rank sends. n_threads: compute threads.
 * stats may be NULL; filled on return. */
xds_status xds_deploy_expert_run(const xds_model *m, struct xccl_comm *comm, const xds_deploy_placement *pl,
                                 int worker, const int *attn_ranks, int n_attn, int max_tok, int n_threads,
                                 xds_deploy_expert_stats *stats);

#endif
