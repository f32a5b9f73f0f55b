/*
 * serve_deploy.h — the supervisor part of `xds serve`: with --experts E (and
 * --decode-dp / --prefill / --frontends / --topology) the serve process
 * becomes the supervisor of a disaggregated deployment (engine/deploy.h):
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

struct xds_model;
struct xccl_segment;
struct xccl_comm;
struct xds_deploy_attn;

#define SERVE_DEPLOY_MAX_WORKERS 63

typedef struct serve_deploy {
    int prefill, decode_dp, experts, frontends, expert_threads;
    const char *topology_file;
    int enabled; /* any deployment flag given */
    int n_expert; /* the model's routed experts per layer */
    char seg_name[64];
    unsigned long long seg_bytes;
    struct xccl_segment *seg;
    struct xccl_comm *comm;
    struct xds_deploy_attn *attn;
    pid_t pids[SERVE_DEPLOY_MAX_WORKERS]; /* expert worker r = pids[r - 1]; 0 once reaped */
    int status[SERVE_DEPLOY_MAX_WORKERS]; /* wait status once reaped */
    int n_pids;
    pthread_t monitor;
    int monitor_started;
    atomic_int stopping; /* set before workers are told to stop: exits are expected */
    atomic_int failed;   /* a worker died while serving */
    char *topology_json; /* owned */
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
/* Build and print the topology (after the engine exists: its KV capacity). */
xds_status serve_deploy_topology(serve_deploy *d, xds_engine *engine);
/* Tell the workers to stop, reap them (SIGKILL after a deadline), detach,
 * remove the segment. Call after the engine is freed. Idempotent. */
void serve_deploy_stop(serve_deploy *d);

#endif
