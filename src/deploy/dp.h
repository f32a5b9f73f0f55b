/*
 * dp.h — several decode DP groups behind a front-end, with
 * decentralized scheduling (DESIGN §3.3, issue 6 item 4).
 *
 * Each DP group is self-contained (its own engine: scheduler, KV cache,
 * prefix cache, output processing). It publishes its load figures in a small
 * shared-memory table (one cache-line record per group, written only by that
 * group); a front-end reads the table and picks the group for each request —
 * no central scheduler process. Policy (xds_dp_pick): skip groups at their
 * batch limit (in-flight >= max_batch) unless all are; then the lowest KV
 * load counting the space reserved for the remaining output (blocks of
 * prompt + max_tokens of every in-flight request, over the pool); ties go
 * round-robin from a rotating start so equal groups share the work.
 *
 * A remote group talks to its front-end over XCCL P2P: REQ {id, params,
 * stop strings, prompt} and CANCEL {id} one way, EVENT {id, token, finish,
 * counts, text} the other. Events are queued by the engine callback (which
 * must not block) and sent by the group's serving loop.
 */
#ifndef XDS_ENGINE_DEPLOY_DP_H
#define XDS_ENGINE_DEPLOY_DP_H

#include <stdatomic.h>
#include <stdint.h>

#include "base/status.h"
#include "engine/engine.h"
#include "deploy/pd.h"
#include "server/metrics.h"

struct xccl_comm;

#define XDS_DP_MAX_GROUPS 16

typedef struct xds_dp_load {
    _Alignas(64) atomic_llong in_flight; /* requests submitted and not finished */
    atomic_llong load_blocks;            /* sum of blocks for prompt + max_tokens of in-flight requests */
    atomic_llong kv_blocks;              /* pool size */
    atomic_llong max_batch;
    atomic_llong served;                 /* requests finished */
    atomic_llong alive;                  /* 1 while the group serves */
    atomic_llong removed;                /* set by the supervisor: left out for good (crash loop) */
} xds_dp_load;

typedef struct xds_dp_table {
    uint32_t magic, n_groups;
    atomic_uint rr; /* rotating tie-break start */
    xds_dp_load g[XDS_DP_MAX_GROUPS];
    /* the deployment's fault counts (every process adds; a front-end's
     * GET /metrics shows them): here because every process maps this table */
    _Alignas(64) xds_fault_counts faults;
} xds_dp_table;

/* Create (supervisor) / open (group, front-end) the table at a POSIX shm name. */
xds_status xds_dp_table_create(const char *name, int n_groups, xds_dp_table **out);
xds_status xds_dp_table_open(const char *name, xds_dp_table **out);
void xds_dp_table_close(xds_dp_table *t);
/* The group for a request of n_prompt + max_tokens tokens (block_size tokens per block). */
int xds_dp_pick(xds_dp_table *t, int n_tokens, int block_size);
/* The same, never a group g with bit g of skip set (-1: none is left). */
int xds_dp_pick_skip(xds_dp_table *t, int n_tokens, int block_size, uint64_t skip);
/* Account a request of n_tokens on group g (+1) or its end (-1). */
void xds_dp_account(xds_dp_table *t, int g, int n_tokens, int block_size, int sign);

/* ---- front-end side ---- */
xds_status xds_dp_req_send(struct xccl_comm *comm, int rank, uint64_t id, const int32_t *prompt, int n,
                           const xds_gen_params *p);
/* A request whose prompt KV waits on a prefill instance (task): the group
 * imports it (engine import) and reports FREED to the front-end, which tells
 * the prefill instance. */
xds_status xds_dp_req_send_import(struct xccl_comm *comm, int rank, uint64_t id, const int32_t *prompt, int n,
                                  const xds_gen_params *p, const xds_pd_task *task);
xds_status xds_dp_cancel_send(struct xccl_comm *comm, int rank, uint64_t id);
xds_status xds_dp_stop_send(struct xccl_comm *comm, int rank);
/* Receive one message from group rank (comm deadline): an event (*ev points
 * into buf, text too; *freed = 0) or a FREED notice for ev->req_id (*freed = 1:
 * the group pulled that request's KV; tell its prefill instance). */
xds_status xds_dp_event_recv(struct xccl_comm *comm, int rank, void *buf, size_t cap, xds_gen_event *ev, int *freed);
#define XDS_DP_EVENT_MAX 65536

/* ---- group side ---- */
#define XDS_DP_MAX_FRONTS 16
/* Serve the requests of front-end ranks fronts[0..n_fronts) on engine until
 * fronts[0] (the supervisor's) sends STOP (XDS_OK) or an error; each
 * request's events go back to the front-end that sent it. Publishes load
 * figures in t->g[group]. own_engine: the engine is freed (remaining requests
 * aborted) before returning; else it is borrowed (another front-end feeds it
 * directly) and only this loop's requests are cancelled and waited for. */
typedef struct xds_dp_serve_stats {
    uint64_t requests;         /* requests taken */
    uint64_t kv_pulled_bytes;  /* prompt KV pulled from prefill instances */
    double kv_pull_s;          /* time the engine thread spent pulling it */
} xds_dp_serve_stats;
/* stats may be NULL; filled on return. */
xds_status xds_dp_group_serve(xds_engine *engine, struct xccl_comm *comm, const int *fronts, int n_fronts,
                              xds_dp_table *t, int group, int block_size, int max_batch, int own_engine,
                              xds_dp_serve_stats *stats);

#endif
