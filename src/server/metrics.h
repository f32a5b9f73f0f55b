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

#endif
