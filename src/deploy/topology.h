/*
 * topology.h — the shape of a disaggregated deployment (issue 6 item 1):
 * how many front-ends, prefill instances, decode DP groups and expert
 * workers `xds serve` starts, their per-process settings, and which routed
 * experts every expert worker holds. Built from the flags (--frontends,
 * --prefill, --decode-dp, --experts) or from a JSON topology file
 * (`xds serve --topology FILE`) for anything more:
 *
 *   {"frontends": 1,
 *    "block_size": 16,
 *    "prefill": [{"threads": 1, "kv_tokens": 8192, "max_seqs": 8, "chunk": 256}, ...],
 *    "decode":  [{"threads": 1, "max_batch": 16, "kv_blocks": 512}, ...],
 *    "experts": [{"threads": 1, "experts": [0, 1, 2, 3]}, {"threads": 1, "experts": [4, 5, 6, 7]}, ...]}
 *
 * Every key is optional. "prefill", "decode" and "experts" are each either a
 * list of entries or a count form {"count": N, <the entry's keys>} meaning N
 * equal entries; "experts" in the count form places contiguous blocks of
 * ceil(n_expert / N) routed experts per worker, exactly as --experts does
 * (xds_deploy_expert_owner). An expert worker entry in the list form names
 * its routed expert ids; the same expert on two workers is a replica. Entry
 * keys left out are 0 in the struct, meaning "the serve default" (e.g. the -t
 * thread count); given values must be >= 1. Absent "decode" means one group;
 * absent "prefill"/"experts" means none (the prompt is prefilled by the
 * decode group; the experts are computed in the decode group's process).
 *
 * Validation (one line each, naming the file and the field's position, e.g.
 * "t.json: experts[2].experts[5]: expert 300 out of range 0..255"): the file
 * is unreadable or not JSON (line and column), an unknown key, a wrong type,
 * a zero or negative value, too many entries, an expert id out of range, an
 * expert listed twice on one worker, expert workers for a model without
 * routed experts, and an expert that no worker holds.
 *
 * Invariants of a loaded xds_topology: 1 <= frontends <= XDS_TOPO_MAX_FRONTENDS;
 * 0 <= n_prefill <= XDS_TOPO_MAX_PREFILL; 1 <= n_decode <= XDS_TOPO_MAX_DECODE;
 * 0 <= n_expert_workers <= XDS_TOPO_MAX_EXPERT_WORKERS, and > 0 only when
 * n_expert > 0, in which case every expert in [0, n_expert) is on at least
 * one worker and no worker lists an expert twice.
 */
#ifndef XDS_ENGINE_TOPOLOGY_H
#define XDS_ENGINE_TOPOLOGY_H

#include <stddef.h>

#include "base/status.h"

#define XDS_TOPO_MAX_FRONTENDS 64
#define XDS_TOPO_MAX_PREFILL 8
#define XDS_TOPO_MAX_DECODE 16
#define XDS_TOPO_MAX_EXPERT_WORKERS 63
#define XDS_TOPO_MAX_FILE_BYTES (1 << 20)

/* Settings of one prefill instance (0: the serve default). */
typedef struct xds_topo_prefill {
    int threads;   /* compute threads */
    int kv_tokens; /* KV pool capacity in tokens */
    int max_seqs;  /* transfer tasks held at once */
    int chunk;     /* chunked prefill: tokens per forward pass */
} xds_topo_prefill;

/* Settings of one decode DP group (0: the serve default). */
typedef struct xds_topo_decode {
    int threads;
    int max_batch; /* running sequences at most */
    int kv_blocks; /* KV pool size in blocks */
} xds_topo_decode;

/* One expert worker: its routed experts, local slot i holding experts[i]. */
typedef struct xds_topo_expert {
    int threads;   /* 0: the serve default */
    int n_experts;
    int *experts;  /* (n_experts) routed expert ids, distinct, owned */
} xds_topo_expert;

typedef struct xds_topology {
    int frontends;
    int block_size; /* KV block size shared by prefill and decode pools (0: default) */
    int n_prefill;
    xds_topo_prefill prefill[XDS_TOPO_MAX_PREFILL];
    int n_decode;
    xds_topo_decode decode[XDS_TOPO_MAX_DECODE];
    int n_expert; /* routed experts of the model per MoE layer (0: not MoE) */
    int n_expert_workers;
    xds_topo_expert expert[XDS_TOPO_MAX_EXPERT_WORKERS];
    int contiguous; /* 1: experts placed in contiguous blocks (count form / --experts) */
} xds_topology;

/* Load a topology file for a model with n_expert routed experts (0 if not
 * MoE). On error *out is untouched and one message is set. Free with
 * xds_topology_free. */
xds_status xds_topology_load(const char *path, int n_expert, xds_topology *out);
/* The same from text in memory; name is used in messages. */
xds_status xds_topology_parse(const char *name, const char *text, size_t len, int n_expert, xds_topology *out);
/* The flag form: --frontends F --prefill P [--prefill-threads] --decode-dp D
 * --experts E [--expert-threads] (threads 0: the default). frontends and
 * decode_dp 0 mean 1. Same checks, messages name the flag. */
xds_status xds_topology_from_flags(int frontends, int prefill, int prefill_threads, int decode_dp, int experts,
                                   int expert_threads, int n_expert, xds_topology *out);
void xds_topology_free(xds_topology *t);

/* lists[w] = t->expert[w].experts, n_lists[w] = its length, for every expert
 * worker w (arrays of XDS_TOPO_MAX_EXPERT_WORKERS); returns the worker count.
 * The form xds_deploy_placement_lists takes. Borrowed from t. */
int xds_topology_expert_lists(const xds_topology *t, const int **lists, int *n_lists);

/* Where every routed expert lives: for expert e, replicas r < n_replicas[e]
 * are on worker replica_worker[e * max_replicas + r] (0-based expert worker
 * index) at local slot replica_slot[e * max_replicas + r]; replicas are in
 * worker order. n_local[w]: local slots of worker w; max_local: the largest
 * (XCCL's num_local_experts). The arrays map directly onto xccl_expert_map
 * once worker indices are turned into ranks. */
typedef struct xds_topo_placement {
    int n_expert, n_workers;
    int max_replicas;     /* R >= 1 */
    int *n_replicas;      /* (n_expert) */
    int *replica_worker;  /* (n_expert, max_replicas), -1 past n_replicas[e] */
    int *replica_slot;    /* (n_expert, max_replicas), -1 past n_replicas[e] */
    int n_local[XDS_TOPO_MAX_EXPERT_WORKERS];
    int max_local;
} xds_topo_placement;

/* The placement of t's experts. XDS_ERR_INVALID if t has no expert workers. */
xds_status xds_topology_placement(const xds_topology *t, xds_topo_placement *out);
void xds_topo_placement_free(xds_topo_placement *p);

#endif
