/*
 * metrics.c — the Prometheus registry of metrics.h and the reliability
 * counters built on it (xds_metrics_fault_*). Series live in a small array
 * per family (label sets are few: status codes, endpoints, roles); lookups
 * are linear. Everything is guarded by the registry mutex.
 */
#include "server/metrics.h"

#include <math.h>
#include <stdatomic.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct metric_series {
    char *labels;     /* "" for none */
    double value;     /* counter / gauge */
    double sum;       /* histogram */
    double count;     /* histogram */
    double *buckets;  /* (n_bounds) histogram, non-cumulative counts */
} metric_series;

struct xds_metric {
    xds_metrics *reg;
    xds_metric_type type;
    char *name, *help;
    double *bounds;   /* (n_bounds) */
    int n_bounds;
    metric_series *series; /* (n_series) */
    int n_series, cap_series;
};

struct xds_metrics {
    pthread_mutex_t mu;
    xds_metric **fams; /* (n_fams) */
    int n_fams;
};

xds_metrics *xds_metrics_create(void) {
    xds_metrics *m = calloc(1, sizeof *m);
    if (m) pthread_mutex_init(&m->mu, NULL);
    return m;
}

void xds_metrics_free(xds_metrics *m) {
    if (!m) return;
    for (int i = 0; i < m->n_fams; i++) {
        xds_metric *f = m->fams[i];
        for (int j = 0; j < f->n_series; j++) {
            free(f->series[j].labels);
            free(f->series[j].buckets);
        }
        free(f->series);
        free(f->name);
        free(f->help);
        free(f->bounds);
        free(f);
    }
    free(m->fams);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

static int metric_name_ok(const char *s) {
    if (!s || !*s) return 0;
    for (const char *p = s; *p; p++) {
        int ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || *p == '_' || *p == ':' ||
                 (p != s && *p >= '0' && *p <= '9');
        if (!ok) return 0;
    }
    return 1;
}

xds_metric *xds_metrics_add(xds_metrics *m, xds_metric_type type, const char *name, const char *help,
                            const double *bounds, int n_bounds) {
    if (!metric_name_ok(name) || (type == XDS_METRIC_HISTOGRAM && (!bounds || n_bounds <= 0))) return NULL;
    xds_metric *f = calloc(1, sizeof *f);
    if (!f) return NULL;
    f->reg = m;
    f->type = type;
    f->name = strdup(name);
    f->help = strdup(help ? help : "");
    if (type == XDS_METRIC_HISTOGRAM) {
        f->bounds = malloc(n_bounds * sizeof *f->bounds);
        if (f->bounds) memcpy(f->bounds, bounds, n_bounds * sizeof *f->bounds);
        f->n_bounds = n_bounds;
    }
    pthread_mutex_lock(&m->mu);
    xds_metric **nf = realloc(m->fams, (m->n_fams + 1) * sizeof *nf);
    int ok = nf && f->name && f->help && (type != XDS_METRIC_HISTOGRAM || f->bounds);
    if (nf) m->fams = nf;
    if (ok) m->fams[m->n_fams++] = f;
    pthread_mutex_unlock(&m->mu);
    if (!ok) {
        free(f->name);
        free(f->help);
        free(f->bounds);
        free(f);
        return NULL;
    }
    return f;
}

/* The series for labels, created on first use; NULL on OOM. Lock held. */
static metric_series *metric_series_get(xds_metric *f, const char *labels) {
    if (!labels) labels = "";
    for (int i = 0; i < f->n_series; i++)
        if (!strcmp(f->series[i].labels, labels)) return &f->series[i];
    if (f->n_series == f->cap_series) {
        int cap = f->cap_series ? f->cap_series * 2 : 4;
        metric_series *ns = realloc(f->series, cap * sizeof *ns);
        if (!ns) return NULL;
        f->series = ns;
        f->cap_series = cap;
    }
    metric_series *s = &f->series[f->n_series];
    memset(s, 0, sizeof *s);
    s->labels = strdup(labels);
    if (f->type == XDS_METRIC_HISTOGRAM) s->buckets = calloc(f->n_bounds, sizeof *s->buckets);
    if (!s->labels || (f->type == XDS_METRIC_HISTOGRAM && !s->buckets)) {
        free(s->labels);
        free(s->buckets);
        return NULL;
    }
    f->n_series++;
    return s;
}

void xds_metric_add(xds_metric *f, const char *labels, double v) {
    if (!f) return;
    pthread_mutex_lock(&f->reg->mu);
    metric_series *s = metric_series_get(f, labels);
    if (s) s->value += v;
    pthread_mutex_unlock(&f->reg->mu);
}

void xds_metric_set(xds_metric *f, const char *labels, double v) {
    if (!f) return;
    pthread_mutex_lock(&f->reg->mu);
    metric_series *s = metric_series_get(f, labels);
    if (s) s->value = v;
    pthread_mutex_unlock(&f->reg->mu);
}

void xds_metric_observe(xds_metric *f, const char *labels, double v) {
    if (!f || f->type != XDS_METRIC_HISTOGRAM || isnan(v)) return;
    pthread_mutex_lock(&f->reg->mu);
    metric_series *s = metric_series_get(f, labels);
    if (s) {
        s->sum += v;
        s->count += 1;
        for (int i = 0; i < f->n_bounds; i++)
            if (v <= f->bounds[i]) {
                s->buckets[i] += 1;
                break;
            }
    }
    pthread_mutex_unlock(&f->reg->mu);
}

double xds_metric_get(xds_metric *f, const char *labels) {
    if (!f) return 0;
    if (!labels) labels = "";
    double v = 0;
    pthread_mutex_lock(&f->reg->mu);
    for (int i = 0; i < f->n_series; i++)
        if (!strcmp(f->series[i].labels, labels))
            v = f->type == XDS_METRIC_HISTOGRAM ? f->series[i].count : f->series[i].value;
    pthread_mutex_unlock(&f->reg->mu);
    return v;
}

xds_metric *xds_metrics_find(xds_metrics *m, const char *name) {
    if (!m || !name) return NULL;
    xds_metric *f = NULL;
    pthread_mutex_lock(&m->mu);
    for (int i = 0; i < m->n_fams && !f; i++)
        if (!strcmp(m->fams[i]->name, name)) f = m->fams[i];
    pthread_mutex_unlock(&m->mu);
    return f;
}

/* ------------------------------------------------------------------------ */
/* Reliability counters                                                      */

#define FAULT_DETECTED "xds_fault_failures_detected_total"
#define FAULT_FAILOVERS "xds_fault_failovers_total"
#define FAULT_REPLAYED "xds_fault_requests_replayed_total"
#define FAULT_RESTARTS "xds_fault_restarts_total"
#define FAULT_RECOVERY "xds_fault_recovery_seconds"

/* A label value safe to print unescaped: [a-z0-9_]{1,32}, else "other". */
static const char *fault_label_value(const char *v) {
    if (!v || !*v || strlen(v) > 32) return "other";
    for (const char *p = v; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_')) return "other";
    return v;
}

static const double fault_rec_bounds[XDS_FAULT_N_BOUNDS] = {0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0};
static const char *const fault_roles[XDS_FAULT_N_ROLES] = {"frontend", "prefill", "decode", "expert", "supervisor"};

int xds_metrics_fault_register(xds_metrics *m) {
    const double *rec = fault_rec_bounds;
    const char *const *roles = fault_roles;
    if (!m) return -1;
    if (xds_metrics_find(m, FAULT_DETECTED)) return 0;
    xds_metric *d = xds_metrics_add(m, XDS_METRIC_COUNTER, FAULT_DETECTED,
                                    "Processes found dead or hung, by role and cause", NULL, 0);
    xds_metric *f = xds_metrics_add(m, XDS_METRIC_COUNTER, FAULT_FAILOVERS,
                                    "Failovers: a failed process's work moved to another, by role", NULL, 0);
    xds_metric *r = xds_metrics_add(m, XDS_METRIC_COUNTER, FAULT_REPLAYED,
                                    "Requests re-run on another process after a failure", NULL, 0);
    xds_metric *s = xds_metrics_add(m, XDS_METRIC_COUNTER, FAULT_RESTARTS, "Processes restarted, by role", NULL, 0);
    xds_metric *h = xds_metrics_add(m, XDS_METRIC_HISTOGRAM, FAULT_RECOVERY,
                                    "Seconds from detecting a failure to full capacity, by role", rec,
                                    XDS_FAULT_N_BOUNDS);
    if (!d || !f || !r || !s || !h) return -1;
    xds_metric_add(r, NULL, 0);
    char lbl[96];
    for (size_t i = 0; i < XDS_FAULT_N_ROLES; i++) {
        snprintf(lbl, sizeof lbl, "role=\"%s\",cause=\"exit\"", roles[i]);
        xds_metric_add(d, lbl, 0);
        snprintf(lbl, sizeof lbl, "role=\"%s\",cause=\"hang\"", roles[i]);
        xds_metric_add(d, lbl, 0);
        snprintf(lbl, sizeof lbl, "role=\"%s\"", roles[i]);
        xds_metric_add(f, lbl, 0);
        xds_metric_add(s, lbl, 0);
    }
    return 0;
}

static void fault_count(xds_metrics *m, const char *fam, const char *role, const char *cause, double v) {
    xds_metric *f = xds_metrics_find(m, fam);
    if (!f) return;
    char lbl[96];
    if (cause)
        snprintf(lbl, sizeof lbl, "role=\"%s\",cause=\"%s\"", fault_label_value(role), fault_label_value(cause));
    else
        snprintf(lbl, sizeof lbl, "role=\"%s\"", fault_label_value(role));
    if (f->type == XDS_METRIC_HISTOGRAM) xds_metric_observe(f, lbl, v);
    else xds_metric_add(f, lbl, v);
}

void xds_metrics_fault_detected(xds_metrics *m, const char *role, const char *cause) {
    fault_count(m, FAULT_DETECTED, role, cause, 1);
}
void xds_metrics_fault_failover(xds_metrics *m, const char *role) { fault_count(m, FAULT_FAILOVERS, role, NULL, 1); }
void xds_metrics_fault_replayed(xds_metrics *m, int n_requests) {
    if (n_requests > 0) xds_metric_add(xds_metrics_find(m, FAULT_REPLAYED), NULL, n_requests);
}
void xds_metrics_fault_restart(xds_metrics *m, const char *role) { fault_count(m, FAULT_RESTARTS, role, NULL, 1); }
void xds_metrics_fault_recovered(xds_metrics *m, const char *role, double seconds) {
    if (seconds >= 0) fault_count(m, FAULT_RECOVERY, role, NULL, seconds);
}

static int fault_role_index(const char *role) {
    for (int i = 0; role && i < XDS_FAULT_N_ROLES; i++)
        if (!strcmp(role, fault_roles[i])) return i;
    return -1;
}

void xds_fault_count_detected(xds_fault_counts *c, const char *role, const char *cause) {
    int r = fault_role_index(role), k = cause && !strcmp(cause, "exit") ? 0 : cause && !strcmp(cause, "hang") ? 1 : -1;
    if (c && r >= 0 && k >= 0) atomic_fetch_add(&c->detected[r][k], 1);
}
void xds_fault_count_failover(xds_fault_counts *c, const char *role) {
    int r = fault_role_index(role);
    if (c && r >= 0) atomic_fetch_add(&c->failovers[r], 1);
}
void xds_fault_count_replayed(xds_fault_counts *c, int n_requests) {
    if (c && n_requests > 0) atomic_fetch_add(&c->replayed, n_requests);
}
void xds_fault_count_restart(xds_fault_counts *c, const char *role) {
    int r = fault_role_index(role);
    if (c && r >= 0) atomic_fetch_add(&c->restarts[r], 1);
}
void xds_fault_count_recovered(xds_fault_counts *c, const char *role, double seconds) {
    int r = fault_role_index(role);
    if (!c || r < 0 || !(seconds >= 0)) return;
    int b = 0;
    while (b < XDS_FAULT_N_BOUNDS && seconds > fault_rec_bounds[b]) b++;
    atomic_fetch_add(&c->rec_bucket[r][b], 1);
    atomic_fetch_add(&c->rec_sum_us[r], (long long)(seconds * 1e6 + 0.5));
}

void xds_metrics_fault_load(xds_metrics *m, const xds_fault_counts *c) {
    if (!m || !c) return;
    xds_metric *d = xds_metrics_find(m, FAULT_DETECTED), *f = xds_metrics_find(m, FAULT_FAILOVERS),
               *rp = xds_metrics_find(m, FAULT_REPLAYED), *s = xds_metrics_find(m, FAULT_RESTARTS),
               *h = xds_metrics_find(m, FAULT_RECOVERY);
    if (!d || !f || !rp || !s || !h || h->n_bounds != XDS_FAULT_N_BOUNDS) return;
    char lbl[96];
    xds_metric_set(rp, NULL, (double)atomic_load(&c->replayed));
    for (int r = 0; r < XDS_FAULT_N_ROLES; r++) {
        snprintf(lbl, sizeof lbl, "role=\"%s\",cause=\"exit\"", fault_roles[r]);
        xds_metric_set(d, lbl, (double)atomic_load(&c->detected[r][0]));
        snprintf(lbl, sizeof lbl, "role=\"%s\",cause=\"hang\"", fault_roles[r]);
        xds_metric_set(d, lbl, (double)atomic_load(&c->detected[r][1]));
        snprintf(lbl, sizeof lbl, "role=\"%s\"", fault_roles[r]);
        xds_metric_set(f, lbl, (double)atomic_load(&c->failovers[r]));
        xds_metric_set(s, lbl, (double)atomic_load(&c->restarts[r]));
        long long n = 0;
        for (int b = 0; b <= XDS_FAULT_N_BOUNDS; b++) n += atomic_load(&c->rec_bucket[r][b]);
        if (!n) continue; /* a role that never recovered has no histogram series, as with observe */
        pthread_mutex_lock(&m->mu);
        metric_series *hs = metric_series_get(h, lbl);
        if (hs) {
            for (int b = 0; b < XDS_FAULT_N_BOUNDS; b++) hs->buckets[b] = (double)atomic_load(&c->rec_bucket[r][b]);
            hs->count = (double)n;
            hs->sum = (double)atomic_load(&c->rec_sum_us[r]) / 1e6;
        }
        pthread_mutex_unlock(&m->mu);
    }
}

/* ------------------------------------------------------------------------ */
/* Rendering                                                                 */

typedef struct { char *s; size_t n, cap; int oom; } mbuf;

static void mbuf_printf(mbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void mbuf_printf(mbuf *b, const char *fmt, ...) {
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->s + b->n, b->cap - b->n, fmt, ap);
        va_end(ap);
        if (k < 0) { b->oom = 1; return; }
        if ((size_t)k < b->cap - b->n) { b->n += k; return; }
        size_t cap = b->cap * 2 + k + 256;
        char *ns = realloc(b->s, cap);
        if (!ns) { b->oom = 1; return; }
        b->s = ns;
        b->cap = cap;
    }
}

/* Prometheus float: integers without exponent noise, +Inf/-Inf/NaN spelled out. */
static void fmt_num(char *out, size_t n, double v) {
    if (isnan(v)) snprintf(out, n, "NaN");
    else if (isinf(v)) snprintf(out, n, v > 0 ? "+Inf" : "-Inf");
    else if (v == floor(v) && fabs(v) < 1e15) snprintf(out, n, "%.0f", v);
    else snprintf(out, n, "%.9g", v);
}

static void render_sample(mbuf *b, const char *name, const char *suffix, const char *labels,
                          const char *extra, double v) {
    char num[64];
    fmt_num(num, sizeof num, v);
    int has_l = labels && *labels, has_e = extra && *extra;
    if (has_l || has_e)
        mbuf_printf(b, "%s%s{%s%s%s} %s\n", name, suffix, has_l ? labels : "", has_l && has_e ? "," : "",
                    has_e ? extra : "", num);
    else
        mbuf_printf(b, "%s%s %s\n", name, suffix, num);
}

char *xds_metrics_render(xds_metrics *m, size_t *len) {
    mbuf b = {.s = malloc(4096), .cap = 4096};
    if (!b.s) return NULL;
    b.s[0] = 0;
    static const char *tname[] = {"counter", "gauge", "histogram"};
    pthread_mutex_lock(&m->mu);
    for (int i = 0; i < m->n_fams; i++) {
        xds_metric *f = m->fams[i];
        mbuf_printf(&b, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help, f->name, tname[f->type]);
        for (int j = 0; j < f->n_series; j++) {
            metric_series *s = &f->series[j];
            if (f->type != XDS_METRIC_HISTOGRAM) {
                render_sample(&b, f->name, "", s->labels,
                              NULL, s->value);
                continue;
            }
            double cum = 0;
            char le[80], num[64];
            for (int k = 0; k < f->n_bounds; k++) {
                cum += s->buckets[k];
                fmt_num(num, sizeof num, f->bounds[k]);
                snprintf(le, sizeof le, "le=\"%s\"", num);
                render_sample(&b, f->name, "_bucket", s->labels, le, cum);
            }
            render_sample(&b, f->name, "_bucket", s->labels, "le=\"+Inf\"", s->count);
            render_sample(&b, f->name, "_sum", s->labels, NULL, s->sum);
            render_sample(&b, f->name, "_count", s->labels, NULL, s->count);
        }
    }
    pthread_mutex_unlock(&m->mu);
    if (b.oom) {
        free(b.s);
        return NULL;
    }
    if (len) *len = b.n;
    return b.s;
}
