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

/* Render every family; malloc'd, NUL-terminated; *len set. NULL on OOM. */
char *xds_metrics_render(xds_metrics *m, size_t *len);

#endif
