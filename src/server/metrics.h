/*
 * metrics.h — a small Prometheus registry: counters, gauges and histograms,
 * each a family with a name, help text and series keyed by a label string
 * (already formatted, e.g. `code="200"`; "" for none), rendered in the
 * Prometheus text exposition format (version 0.0.4).
 *
 * Invariants: families are registered once, before concurrent use; updates
 * and rendering are thread-safe (one mutex per registry; an update is a few
 * adds under it). Histogram buckets are cumulative on output, with +Inf, _sum
 * and _count. Label strings are copied.
 */
#ifndef XDS_SERVER_METRICS_H
#define XDS_SERVER_METRICS_H

#include <stddef.h>

typedef struct xds_metrics xds_metrics;
typedef struct xds_metric xds_metric; /* one family */

typedef enum xds_metric_type { XDS_METRIC_COUNTER, XDS_METRIC_GAUGE, XDS_METRIC_HISTOGRAM } xds_metric_type;

xds_metrics *xds_metrics_create(void); /* NULL on allocation failure */
void xds_metrics_free(xds_metrics *m);

/* Register a family. For a histogram, bounds (n_bounds, ascending upper
 * bounds, copied) are required. NULL on allocation failure or a bad name. */
xds_metric *xds_metrics_add(xds_metrics *m, xds_metric_type type, const char *name, const char *help,
                            const double *bounds, int n_bounds);

/* Counter: add v (>= 0). Gauge: add v (any sign). labels may be NULL. */
void xds_metric_add(xds_metric *f, const char *labels, double v);
/* Gauge: set to v. */
void xds_metric_set(xds_metric *f, const char *labels, double v);
/* Histogram: record one observation. */
void xds_metric_observe(xds_metric *f, const char *labels, double v);
/* Current value of a counter/gauge series, or the count of a histogram series (0 if absent). */
double xds_metric_get(xds_metric *f, const char *labels);

/* The family registered under name, or NULL. */
xds_metric *xds_metrics_find(xds_metrics *m, const char *name);

/* Render every family; malloc'd, NUL-terminated; *len set. NULL on OOM. */
char *xds_metrics_render(xds_metrics *m, size_t *len);

/* ---- Reliability (fault tolerance) counters -------------------------------
 * For the deployment layer's supervisor, router and membership code. The
 * families (all exported from registration on, so a scrape sees 0 before the
 * first fault):
 *   xds_fault_failures_detected_total{role,cause}  a process found dead or hung
 *   xds_fault_failovers_total{role}                its work moved to another process
 *   xds_fault_requests_replayed_total              requests re-run elsewhere (re-prefill)
 *   xds_fault_restarts_total{role}                 processes restarted
 *   xds_fault_recovery_seconds{role}               detection to full capacity (histogram)
 * role and cause are label values: [a-z0-9_] only, at most 32 characters
 * (e.g. role "expert", "decode", "prefill", "frontend", "supervisor"; cause
 * "exit", "hang", "link"); anything else is counted as "other", so the
 * exposition stays valid. The five roles above are pre-created with causes
 * "exit" and "hang". Register once before concurrent use (the HTTP server
 * registers them on its registry: xds_server_metrics); the update functions
 * are thread-safe and do nothing on a registry without them. */
int xds_metrics_fault_register(xds_metrics *m); /* 0, or -1 on allocation failure; idempotent */
void xds_metrics_fault_detected(xds_metrics *m, const char *role, const char *cause);
void xds_metrics_fault_failover(xds_metrics *m, const char *role);
void xds_metrics_fault_replayed(xds_metrics *m, int n_requests);
void xds_metrics_fault_restart(xds_metrics *m, const char *role);
void xds_metrics_fault_recovered(xds_metrics *m, const char *role, double seconds);

/* ---- The same counts across processes --------------------------------------
 * A deployment's processes each see part of a fault: the supervisor detects
 * deaths and hangs, restarts and sees the process rejoin; a front-end moves
 * its requests off a lost decode group or prefill instance; a decode group
 * moves its rows off a lost expert worker. They add to one xds_fault_counts
 * in shared memory (plain lock-free atomics, no pointers: it lives in the
 * deployment's load table), and whichever front-end answers GET /metrics
 * loads the totals into its registry (xds_metrics_fault_load). Roles and
 * causes outside the five roles / "exit" and "hang" are not counted. */
#define XDS_FAULT_N_ROLES 5   /* frontend, prefill, decode, expert, supervisor */
#define XDS_FAULT_N_BOUNDS 11 /* the recovery histogram's bounds (0.1 .. 300 s) */
typedef struct xds_fault_counts {
    _Atomic long long detected[XDS_FAULT_N_ROLES][2]; /* [role][0 exit, 1 hang] */
    _Atomic long long failovers[XDS_FAULT_N_ROLES];
    _Atomic long long restarts[XDS_FAULT_N_ROLES];
    _Atomic long long replayed;
    _Atomic long long rec_bucket[XDS_FAULT_N_ROLES][XDS_FAULT_N_BOUNDS + 1]; /* non-cumulative; last: +Inf */
    _Atomic long long rec_sum_us[XDS_FAULT_N_ROLES];
} xds_fault_counts;
void xds_fault_count_detected(xds_fault_counts *c, const char *role, const char *cause);
void xds_fault_count_failover(xds_fault_counts *c, const char *role);
void xds_fault_count_replayed(xds_fault_counts *c, int n_requests);
void xds_fault_count_restart(xds_fault_counts *c, const char *role);
void xds_fault_count_recovered(xds_fault_counts *c, const char *role, double seconds);
/* Set m's xds_fault_* families (registered: xds_metrics_fault_register) to
 * c's totals: counters and histogram replaced, not added to. */
void xds_metrics_fault_load(xds_metrics *m, const xds_fault_counts *c);

#endif
