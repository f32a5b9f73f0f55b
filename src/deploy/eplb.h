/*
 * eplb.h — expert-parallel load balancing (issue 14): from a measured (or
 * synthetic) load matrix — tokens per (MoE layer, logical expert) — choose
 * which experts get redundant replicas and where every replica goes, per
 * layer, for W expert workers with S redundant slots each.
 *
 * The plan of one layer (xds_eplb_plan_layer):
 *  1. budget: every worker has K = ceil(E / W) + S slots, W * K physical
 *     slots in all, and every slot is used;
 *  2. replicas: each expert starts with one; each further replica goes to the
 *     expert with the highest load per replica (load / replicas; ties: lowest
 *     id), at most W replicas per expert (one per worker) — the paper's rule,
 *     which minimises the hottest expert's per-replica load;
 *  3. packing: replicas sorted by per-replica load (descending; ties: expert
 *     id), each on the least-loaded worker (ties: lowest id) that has a free
 *     slot and does not hold that expert yet. When every worker with a free
 *     slot already holds it, one replica f on a full worker w2 that lacks it
 *     moves to the free slot (on a worker that lacks f) and the new replica
 *     takes f's slot on w2 — such a pair always exists;
 *  4. refinement: while exchanging one replica of the hottest worker with one
 *     of another worker (no worker ending with two copies of an expert) lowers
 *     the larger of the two loads below the hottest, make the best such
 *     exchange. Each exchange lowers the sum of squared worker loads, so it
 *     ends; it never leaves the hottest worker hotter than step 3 did.
 * A replica of expert e takes load[e] / replicas(e) tokens: the attention side
 * rotates a replicated expert's tokens across its replicas by batch position
 * (expert.h), so they split evenly. The predicted load of a worker is the sum
 * over its slots (xds_eplb_predict).
 *
 * The result is the existing xds_deploy_placement (expert.h) — one per layer
 * — so a plan can be handed to expert workers in the text form
 * xds_deploy_placement_format writes. Limits: W <= XDS_DEPLOY_MAX_WORKERS
 * (the placement type's), W <= E, K <= E (a worker holds an expert once).
 *
 * Load files (xds_eplb_load_parse): a JSON array of per-layer arrays of
 * per-expert token counts, every layer the same length; counts are integers
 * in 0 .. 1e12 (a JSON real is accepted when its value is integral). Errors
 * name the layer and expert.
 *
 * Synthetic load (xds_eplb_synthetic): per layer, a log-normal draw per
 * expert (seeded; which experts are hot differs by layer) whose spread is
 * fitted so that the paper's shape holds: `above` of the experts (default
 * 20%) above the layer's mean and the hottest `hot` times the mean (default
 * 30x); the draw is scaled to `tokens` token-expert pairs and rounded.
 *
 * Conventions: xds_status with a one-line message, outputs written only on
 * success, no globals.
 */
#ifndef XDS_DEPLOY_EPLB_H
#define XDS_DEPLOY_EPLB_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "deploy/expert.h"

#define XDS_EPLB_MAX_EXPERTS 4096
#define XDS_EPLB_MAX_LAYERS  4096
#define XDS_EPLB_MAX_COUNT   1e12

/* ---- load matrix ------------------------------------------------------- */

typedef struct xds_eplb_load {
    int n_layer, n_expert;
    double *count; /* (n_layer * n_expert) tokens of (layer, expert); integral values */
} xds_eplb_load;

/* Parse a load file's text; name is used in messages (the file's path). */
xds_status xds_eplb_load_parse(const char *name, const char *text, size_t len, xds_eplb_load *out);
/* Read and parse the file at path. */
xds_status xds_eplb_load_read(const char *path, xds_eplb_load *out);
/* malloc'ed JSON text in the load file's form (one layer per line); NULL when
 * out of memory or a count is outside 0 .. XDS_EPLB_MAX_COUNT. */
char *xds_eplb_load_format(const xds_eplb_load *l);
void xds_eplb_load_free(xds_eplb_load *l);

typedef struct xds_eplb_skew {
    double hot;     /* hottest expert / mean (default 30); needs n_expert > hot */
    double above;   /* fraction of experts above the mean (default 0.2), in (0, 0.5] */
    int64_t tokens; /* token-expert pairs per layer (default 1 << 20), 1 .. 1e12 */
} xds_eplb_skew;

/* The defaults above. */
xds_eplb_skew xds_eplb_skew_default(void);

/* A synthetic n_layer x n_expert load with the paper's skew (see the top). */
xds_status xds_eplb_synthetic(int n_expert, int n_layer, uint64_t seed, const xds_eplb_skew *skew,
                              xds_eplb_load *out);

/* The skew a layer's counts have: *above = fraction of experts above the
 * mean, *hot = hottest / mean (1 and 0 for an all-zero layer). */
void xds_eplb_layer_skew(const double *count, int n_expert, double *hot, double *above);

/* ---- prediction ---------------------------------------------------------- */

/* worker_load[w] (n_workers) = sum over worker w's slots of load[e] /
 * replicas(e), for p's n_expert loads. */
void xds_eplb_predict(const xds_deploy_placement *p, const double *load, double *worker_load);
/* max / mean of n loads (1 when they are all zero). */
double xds_eplb_max_mean(const double *worker_load, int n);

/* ---- planning ------------------------------------------------------------ */

/* The placement of one layer (steps 1-4 at the top): n_workers workers with
 * ceil(n_expert / n_workers) + redundant slots each, every slot filled. */
xds_status xds_eplb_plan_layer(const double *load, int n_expert, int n_workers, int redundant,
                               xds_deploy_placement *out);

typedef struct xds_eplb_plan {
    int n_layer, n_expert, n_workers;
    int redundant, slots;         /* S, and K = ceil(E / W) + S slots per worker */
    xds_deploy_placement *layer;  /* (n_layer) the plan's placements */
    double *before;               /* (n_layer * n_workers) predicted load, contiguous blocks, no replicas */
    double *after;                /* (n_layer * n_workers) predicted load of the plan */
} xds_eplb_plan;

/* Plan every layer of l; `before` is the deployment default without
 * redundancy (xds_deploy_placement_blocks). */
xds_status xds_eplb_plan_make(const xds_eplb_load *l, int n_workers, int redundant, xds_eplb_plan *out);
/* Over all layers: sum of each layer's hottest worker / sum of each layer's
 * mean (the MoE layers run one after another, so a step waits for each
 * layer's hottest worker); loads is n_layer x n_workers. */
double xds_eplb_max_mean_total(const double *loads, int n_layer, int n_workers);
void xds_eplb_plan_free(xds_eplb_plan *p);

#endif
