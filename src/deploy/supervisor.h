/*
 * supervisor.h — the supervisor part of `xds serve`: with --experts E (and
 * --decode-dp / --prefill / --frontends / --topology) the serve process
 * becomes the supervisor of a disaggregated deployment (deploy/expert.h):
 * it sizes and creates the XCCL segment, starts E `xds worker --role expert`
 * processes, waits until every one is ready, runs the front-end and the
 * decode DP group (attention rank 0) itself, prints the topology and serves
 * it at GET /v1/topology, and stops every worker on shutdown, when a worker
 * fails to start, or (by raising SIGTERM in itself) when a worker dies.
 * Without these flags serve.c never calls in here.
 */
#ifndef XDS_CLI_SERVE_DEPLOY_H
#define XDS_CLI_SERVE_DEPLOY_H

#include <pthread.h>
#include <stdatomic.h>
#include <sys/types.h>

#include "base/status.h"
#include "engine/engine.h"
#include "deploy/expert.h"
#include "deploy/topology.h"
#include "server/http.h"

struct xds_model;
struct xccl_segment;
struct xccl_comm;
struct xds_deploy_attn;

#define SERVE_DEPLOY_MAX_WORKERS 63
#define SERVE_DEPLOY_MAX_FRONTENDS 8
#define SERVE_DEPLOY_MAX_PREFILL 8

struct serve_pd_req;
struct serve_dp_req;
struct xds_dp_table;

typedef struct serve_deploy {
    int prefill, decode_dp, experts, frontends, expert_threads, prefill_threads;
    const char *fe_segment, *fe_table, *fe_granks; /* front-end mode: from the supervisor */
    const char *fe_pranks, *fe_pick;
    int fe_self_rank;
    int micro_batches; /* per decode group with expert workers: 1 or 2 (ping-pong) */
    const char *topology_file;
    int enabled; /* any deployment flag given */
    int started; /* every worker came up */
    int n_expert; /* the model's routed experts per layer */
    char seg_name[64];
    unsigned long long seg_bytes;
    struct xccl_segment *seg;
    struct xccl_comm *comm;
    struct xds_deploy_attn *attn;
    xds_deploy_placement placement; /* routed experts of each expert worker */
    char *placement_text;           /* its text form, handed to the workers (owned) */
    xds_topology topo;              /* from --topology FILE (have_topo): per-process settings */
    int have_topo;
    /* children: experts first (rank 1..E), then prefill instances (ranks E+2..) */
    pid_t pids[SERVE_DEPLOY_MAX_WORKERS]; /* 0 once reaped */
    int status[SERVE_DEPLOY_MAX_WORKERS]; /* wait status once reaped */
    int rank_of[SERVE_DEPLOY_MAX_WORKERS];
    char kind_of[SERVE_DEPLOY_MAX_WORKERS]; /* 'e' expert, 'p' prefill, 'd' decode group, 'f' front-end */
    int n_pids;
    /* prefill/decode router (P > 0): rank E+1 of this process talks to the prefill instances */
    struct xccl_comm *rpc;
    int rpc_rank;
    pthread_mutex_t cmu; /* rpc comm: HTTP threads, the receiver thread, the engine thread (import) */
    pthread_mutex_t rmu; /* the request table */
    int mutexes;
    struct serve_pd_req *reqs;
    uint64_t next_id;
    int at_prefill[SERVE_DEPLOY_MAX_PREFILL]; /* requests sent and not yet returned, per instance */
    int prank[SERVE_DEPLOY_MAX_PREFILL];      /* rank of each prefill instance */
    xds_engine *engine;
    int max_ctx, n_vocab, block_size, max_batch;
    xds_server_engine_ops ops;
    pthread_t receiver;
    int receiver_started;
    atomic_int receiver_stop;
    unsigned long long kv_pulled_bytes;
    double kv_pull_s; /* time the engine thread spent pulling it */
    /* decode DP groups (D > 1): group 0 is this process's engine, groups 1..D-1 are
     * `xds worker --role decode` processes at ranks rpc_rank+1.. ; load table in shm */
    char table_name[64];
    struct xds_dp_table *table;
    char pick_name[64];         /* prefill instances (P > 0): queue + cached-prefix table in shm */
    struct xds_pd_table *pick;
    struct serve_dp_req *dreqs;
    pthread_t monitor;
    int monitor_started;
    atomic_int stopping; /* set before workers are told to stop: exits are expected */
    atomic_int failed;   /* a worker died while serving */
    atomic_int signalled; /* SIGTERM/SIGINT arrived: shutdown is under way, a dying worker raises none */
    char *topology_json; /* owned */
    /* several front-ends (F > 1) on one port (SO_REUSEPORT): front-end k >= 1 is an
     * `xds serve --frontend-of ...` process at rank fe_rank[k]; group 0 takes their
     * requests through a service thread at rank g0_rank */
    int grank[64];          /* rank of decode group g's requests (-1: this process's engine) */
    int fe_rank[SERVE_DEPLOY_MAX_FRONTENDS], g0_rank;
    struct xccl_comm *g0comm;
    pthread_t g0thread;
    int g0_started;
    int port;               /* the port every front-end listens on */
    int argc;               /* serve's arguments, handed to the front-ends */
    char **argv;
    int frontend_mode;      /* this process is front-end k >= 1 (no engine, no children) */
} serve_deploy;

void serve_deploy_init(serve_deploy *d);
/* Parse deployment option a (value v, may be NULL): 0 = not one of ours, -1 =
 * bad value (message printed), else the argv entries consumed (2). */
int serve_deploy_opt(serve_deploy *d, const char *a, const char *v);
/* Usage lines for serve's --help. */
const char *serve_deploy_usage(void);
/* Create the segment, start and wait for the workers, attach rank 0 and point
 * eo's executor at the attention side. On error everything started is
 * stopped again (no process left) and one message is set. */
xds_status serve_deploy_start(serve_deploy *d, struct xds_model *m, const char *model_path, xds_engine_opts *eo);
/* Build and print the topology (after the engine exists: its KV capacity);
 * with prefill instances also start the request router: *ops is then the
 * router for xds_server_opts.engine_ops (NULL without prefill instances). */
xds_status serve_deploy_topology(serve_deploy *d, xds_engine *engine, const xds_server_engine_ops **ops);
/* The supervisor got SIGTERM/SIGINT: from now on a second one quits at
 * once, but still removes the shared-memory names and kills the workers
 * (async-signal-safe handler), so nothing is left behind. */
void serve_deploy_signalled(serve_deploy *d);
/* Front-end mode (`--frontend-of SEG --frontend-rank R --load-table T
 * --group-ranks G0,G1,..`, set by the supervisor): route this process's HTTP
 * requests to the decode groups; *ops for xds_server_opts.engine_ops. */
xds_status serve_deploy_frontend(serve_deploy *d, const struct xds_model *m, int max_ctx, int block_size,
                                 const xds_server_engine_ops **ops);
/* Stop feeding the engine (prefill receiver thread); call before freeing it. */
void serve_deploy_quiesce(serve_deploy *d);
/* Tell the workers to stop, reap them (SIGKILL after a deadline), detach,
 * remove the segment. Call after the engine is freed. Idempotent. */
void serve_deploy_stop(serve_deploy *d);

#endif
