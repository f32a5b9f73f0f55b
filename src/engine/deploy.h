/*
 * deploy.h — disaggregated MoE-attention across processes over XCCL
 * (DESIGN §3.3, issue 6): the attention-side executor a decode DP group uses
 * instead of xds_model_forward, and the loop an expert worker process runs.
 *
 * Roles in one XCCL segment (the MoE group is every rank of the segment):
 *   rank 0           attention (decode DP group): embed, attention, dense FFN,
 *                    MoE routing, shared experts, LM head; at every MoE layer
 *                    it dispatches the normed hidden rows to the expert
 *                    workers and combines their outputs;
 *   ranks 1..W       expert workers: each holds a contiguous block of routed
 *                    experts (xds_deploy_expert_owner) and loops
 *                    receive (dispatch) -> expert FFN -> combine.
 *
 * Protocol per forward pass: rank 0 sends every worker one control message
 * {magic, cmd, step, n_tok} (xccl_send, P2P channel); for cmd RUN both sides
 * then go through the model's MoE layers in order: layout + dispatch (the MoE
 * group collective), the workers compute and send their unweighted outputs
 * back per local expert (P2P), then combine completes the dispatch. cmd STOP
 * ends the worker loop.
 *
 * Placement decisions (docs/PERFORMANCE.md says why):
 *  - shared experts are computed on the attention side: every token needs
 *    them, so sending the rows out would move all of them for no routing
 *    benefit, and the attention process already holds xn;
 *  - dense FFN layers (deepseek's first_k_dense, qwen3 mlp_only_layers) stay on
 *    the attention side: no routing, so they are data-parallel with attention.
 *
 * Equivalence: the expert FFN runs the same kernels on the same rows as the
 * colocated moe_experts, and rank 0 weight-sums the returned rows exactly as
 * moe_experts does (double, k order, renormalized weights) instead of using
 * XCCL's f32 combine sum: logits are bit-identical to the colocated engine
 * (tests/unit/test_deploy.c). The cost is that the outputs travel twice (P2P
 * and combine, whose sum is discarded).
 *
 * Errors: every call returns xds_status with a one-line message; a dead or
 * hung peer surfaces as XDS_ERR_IO naming the rank (from XCCL's deadline /
 * liveness checks), never as a hang.
 */
#ifndef XDS_ENGINE_DEPLOY_H
#define XDS_ENGINE_DEPLOY_H

#include <stdint.h>

#include "base/status.h"
#include "model/model.h"

struct xccl_comm;
struct xccl_config;

/* Worker that holds routed expert e among n_workers (contiguous blocks of
 * ceil(n_expert / n_workers)); slot = its local index there. */
void xds_deploy_expert_owner(int n_expert, int n_workers, int e, int *worker, int *slot);
/* Local expert slots every rank has: ceil(n_expert / n_workers). */
int xds_deploy_local_experts(int n_expert, int n_workers);

/* Fill an XCCL config for 1 attention rank + n_workers expert workers of
 * model m with up to max_tok tokens per forward pass. Checks the model is
 * MoE and that every expert can be placed (n_workers >= 1). */
xds_status xds_deploy_xccl_config(const xds_model *m, int n_workers, int max_tok, struct xccl_config *cfg);

/* ---- attention side ---------------------------------------------------- */

typedef struct xds_deploy_attn xds_deploy_attn;

/* Per-step timing the attention side measures (seconds, cumulative). */
typedef struct xds_deploy_stats {
    double attn_s;     /* embed + attention + dense FFN + routing + shared + LM head */
    double dispatch_s; /* layout + dispatch */
    double combine_s;  /* combine (includes waiting for the expert compute) */
    uint64_t steps, tokens, moe_calls;
} xds_deploy_stats;

/* comm: attached as rank 0 of a segment with 1 + n_workers ranks (made with
 * xds_deploy_xccl_config); borrowed, used only from the thread calling
 * xds_deploy_forward. max_tok: largest batch. */
xds_status xds_deploy_attn_create(const xds_model *m, struct xccl_comm *comm, int n_workers, int max_tok,
                                  xds_deploy_attn **out);
/* The whole pass like xds_model_forward, with MoE layers computed by the
 * expert workers. Same checks and outputs. */
xds_status xds_deploy_forward(xds_deploy_attn *a, xds_model_ctx *ctx, const xds_batch *b,
                              const int32_t *logit_rows, int n_rows, float *logits);
/* Adapter with the engine's executor signature (user = the xds_deploy_attn). */
xds_status xds_deploy_forward_cb(void *user, xds_model_ctx *ctx, const xds_batch *b, const int32_t *logit_rows,
                                 int n_rows, float *logits);
/* Tell every worker to leave its loop (best effort; errors are logged). */
void xds_deploy_attn_stop(xds_deploy_attn *a);
void xds_deploy_attn_stats(const xds_deploy_attn *a, xds_deploy_stats *out);
void xds_deploy_attn_free(xds_deploy_attn *a);

/* ---- expert worker ----------------------------------------------------- */

/* Per-worker timing (seconds, cumulative). */
typedef struct xds_deploy_expert_stats {
    double wait_s;    /* idle: waiting for the next pass's control message */
    double recv_s;    /* layout + dispatch (waiting for rows) */
    double compute_s; /* expert FFN */
    double combine_s; /* combine */
    uint64_t steps, rows;
} xds_deploy_expert_stats;

/* The worker loop of rank `rank` (1..n_workers) until rank 0 sends STOP
 * (returns XDS_OK) or fails (error naming the peer). n_threads: compute
 * threads. stats may be NULL; filled on return. */
xds_status xds_deploy_expert_run(const xds_model *m, struct xccl_comm *comm, int n_workers, int n_threads,
                                 xds_deploy_expert_stats *stats);

#endif
