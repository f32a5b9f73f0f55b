/*
 * supervisor.h — `xds serve` with --experts E, --prefill P, --decode-dp D,
 * --frontends F or --topology: a disaggregated deployment. The serve process
 * becomes its supervisor: a small process that runs no model and holds no
 * request state. It sizes and creates the XCCL segment and the load tables,
 * starts every other process as a child (E `xds worker --role expert`, F
 * front-ends `xds serve --frontend-of ...` sharing the port with
 * SO_REUSEPORT, P `xds worker --role prefill`, D `xds worker --role
 * decode`), waits until each serves, writes the topology (GET /v1/topology of
 * every front-end), and then watches them: a child that exits unexpectedly is
 * restarted with back-off, one that keeps crashing is left out (the
 * deployment shrinks), one that stops answering (no heartbeat, or stopped) is
 * killed and restarted. Children do not die with it: without a supervisor
 * they keep serving. SIGTERM: the front-ends drain their streams, then the
 * groups, prefill instances and expert workers are stopped in order.
 *
 * The front-end's request router lives here too (serve_deploy_frontend):
 * it picks a prefill instance and a decode group per request from the tables
 * in shared memory.
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
#define SERVE_DEPLOY_CRASH_N 8

/* A child's state (GET /v1/topology, the supervisor's log). */
enum { SERVE_CHILD_STARTING = 0, SERVE_CHILD_LIVE, SERVE_CHILD_SUSPECT, SERVE_CHILD_RESTARTING, SERVE_CHILD_REMOVED };

struct serve_req;
struct xds_dp_table;

typedef struct serve_deploy {
    int prefill, decode_dp, experts, frontends, expert_threads, prefill_threads;
    int expert_replicas;    /* --expert-replicas (0: default 2, capped at experts) */
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
    /* children: experts, front-ends, prefill instances, decode groups (in rank order) */
    pid_t pids[SERVE_DEPLOY_MAX_WORKERS]; /* 0 once reaped */
    int status[SERVE_DEPLOY_MAX_WORKERS]; /* wait status once reaped */
    int rank_of[SERVE_DEPLOY_MAX_WORKERS];
    char kind_of[SERVE_DEPLOY_MAX_WORKERS]; /* 'e' expert, 'p' prefill, 'd' decode group, 'f' front-end */
    char **args_of[SERVE_DEPLOY_MAX_WORKERS]; /* its command line (owned), for a restart */
    int state_of[SERVE_DEPLOY_MAX_WORKERS];   /* SERVE_CHILD_* */
    int restarts[SERVE_DEPLOY_MAX_WORKERS];   /* restarts so far */
    double crash_t[SERVE_DEPLOY_MAX_WORKERS][SERVE_DEPLOY_CRASH_N]; /* its last crash times (ring) */
    double restart_at[SERVE_DEPLOY_MAX_WORKERS]; /* restarting: when to start it again */
    double since[SERVE_DEPLOY_MAX_WORKERS];      /* suspect / restarting since */
    double fault_t[SERVE_DEPLOY_MAX_WORKERS];    /* > 0: a failure detected then, not yet recovered */
    int hang_killed[SERVE_DEPLOY_MAX_WORKERS];   /* killed by us as hung: its exit is not a new failure */
    int quantize;                                /* xds_quantize of every role's weights (serve --quantize) */
    int n_pids;
    double hang_s;         /* a child whose heartbeat is missing this long is killed and restarted */
    int crash_n;           /* crash_n exits within crash_window_s: left out (the deployment shrinks) */
    double crash_window_s;
    double drain_s;        /* the front-ends' --shutdown-timeout */
    char port_lock[96];    /* /dev/shm/xds-port-PORT: which deployment serves the port */
    /* prefill/decode router (P > 0): rank E+1 of this process talks to the prefill instances */
    struct xccl_comm *rpc;
    int rpc_rank;
    pthread_mutex_t cmu; /* rpc comm: HTTP threads, the receiver thread, the engine thread (import) */
    pthread_mutex_t rmu; /* the request table */
    int mutexes;
    struct serve_req *reqs;     /* a front-end's requests */
    int gdown[64], pdown[SERVE_DEPLOY_MAX_PREFILL]; /* a front-end's view: group / instance lost */
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
    pthread_t monitor;
    int monitor_started;
    atomic_int stopping; /* set before workers are told to stop: exits are expected */
    atomic_int failed;   /* a worker died while serving */
    atomic_int signalled; /* SIGTERM/SIGINT arrived: shutdown is under way, a dying worker raises none */
    char *topology_json; /* owned */
    /* front-end k is an `xds serve --frontend-of ...` process at rank fe_rank[k] */
    int grank[64];          /* rank of decode group g's requests */
    int fe_rank[SERVE_DEPLOY_MAX_FRONTENDS];
    int port;               /* the port every front-end listens on */
    const char *host;       /* its address (serve's --host) */
    int listen_fd;          /* supervisor: the listening socket every front-end inherits and accepts
                             * from (one accept queue, held while a front-end restarts); front-end:
                             * the inherited descriptor (--listen-fd), -1 if none */
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
/* Claim the port, create the segment and tables, start every child and wait
 * until each serves, start the monitor. m: the model's configuration only
 * (the supervisor computes nothing). On error everything started is stopped
 * again (no process left) and one message is set. */
xds_status serve_deploy_start(serve_deploy *d, struct xds_model *m, const char *model_path, xds_engine_opts *eo);
/* Wait for SIGTERM/SIGINT (blocked in sigs), or the deployment failing for
 * good (no front-end or decode group left); returns the signal. */
int serve_deploy_run(serve_deploy *d, const sigset_t *sigs);
/* A front-end's GET /v1/topology (xds_server_opts.topology_fn): the
 * supervisor's current file, malloc'ed (NULL: none). */
char *serve_deploy_topology_get(void *user);
/* GET /metrics of a front-end: the deployment's fault counts (from the load table) into m. */
void serve_deploy_metrics_load(void *user, xds_metrics *m);
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
/* Supervisor: stop the front-ends (they drain), then the other children,
 * reap them (SIGKILL after a deadline), remove the segment and tables.
 * Front-end: stop its receiver, free its request state. Idempotent. */
void serve_deploy_stop(serve_deploy *d);

#endif
