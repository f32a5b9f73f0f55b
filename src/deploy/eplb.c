/*
 * eplb.c — expert-parallel load balancing (eplb.h): load files, the synthetic
 * skewed load, per-worker load prediction and the planner (replicas chosen
 * greedily, packed onto workers, refined by exchanges).
 *
 * Invariants of a plan: every worker holds exactly K = ceil(E / W) + S
 * distinct experts, every expert has 1 .. W replicas, the replicas of an
 * expert are on different workers; the tie-breaks are fixed (lowest ids), so
 * a plan is a function of its inputs.
 */
#include "deploy/eplb.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- load matrix ------------------------------------------------------- */

void xds_eplb_load_free(xds_eplb_load *l) {
    if (!l) return;
    free(l->count);
    memset(l, 0, sizeof *l);
}

xds_status xds_eplb_load_parse(const char *name, const char *text, size_t len, xds_eplb_load *out) {
    json_error_t jerr;
    json_t *root = json_loadb(text, len, 0, &jerr);
    if (!root) return xds_err_set(XDS_ERR_FORMAT, "%s: not JSON: %s (line %d)", name, jerr.text, jerr.line);
    xds_status st = XDS_OK;
    double *count = NULL;
    int L = 0, E = 0;
    if (!json_is_array(root)) {
        st = xds_err_set(XDS_ERR_FORMAT, "%s: expected an array of per-layer arrays of token counts", name);
        goto done;
    }
    L = (int)json_array_size(root);
    if (L < 1 || json_array_size(root) > XDS_EPLB_MAX_LAYERS) {
        st = xds_err_set(XDS_ERR_FORMAT, "%s: %zu layers (1..%d)", name, json_array_size(root), XDS_EPLB_MAX_LAYERS);
        goto done;
    }
    json_t *l0 = json_array_get(root, 0);
    if (!json_is_array(l0)) {
        st = xds_err_set(XDS_ERR_FORMAT, "%s: layer 0 is not an array of token counts", name);
        goto done;
    }
    if (json_array_size(l0) < 1 || json_array_size(l0) > XDS_EPLB_MAX_EXPERTS) {
        st = xds_err_set(XDS_ERR_FORMAT, "%s: layer 0 has %zu experts (1..%d)", name, json_array_size(l0),
                         XDS_EPLB_MAX_EXPERTS);
        goto done;
    }
    E = (int)json_array_size(l0);
    count = malloc(sizeof(double) * (size_t)L * (size_t)E);
    if (!count) {
        st = xds_err_set(XDS_ERR_NOMEM, "%s: out of memory", name);
        goto done;
    }
    for (int l = 0; l < L; l++) {
        json_t *row = json_array_get(root, (size_t)l);
        if (!json_is_array(row)) {
            st = xds_err_set(XDS_ERR_FORMAT, "%s: layer %d is not an array of token counts", name, l);
            goto done;
        }
        if ((int)json_array_size(row) != E) {
            st = xds_err_set(XDS_ERR_FORMAT, "%s: layer %d has %zu experts, layer 0 has %d (every layer needs one count per expert)",
                             name, l, json_array_size(row), E);
            goto done;
        }
        for (int e = 0; e < E; e++) {
            json_t *v = json_array_get(row, (size_t)e);
            double x;
            if (json_is_integer(v)) x = (double)json_integer_value(v);
            else if (json_is_real(v)) x = json_real_value(v);
            else {
                st = xds_err_set(XDS_ERR_FORMAT, "%s: layer %d, expert %d: not a number (token counts are integers)",
                                 name, l, e);
                goto done;
            }
            if (x < 0) {
                st = xds_err_set(XDS_ERR_FORMAT, "%s: layer %d, expert %d: negative token count %g", name, l, e, x);
                goto done;
            }
            if (x != floor(x)) {
                st = xds_err_set(XDS_ERR_FORMAT, "%s: layer %d, expert %d: %g is not an integer token count", name, l,
                                 e, x);
                goto done;
            }
            if (x > XDS_EPLB_MAX_COUNT) {
                st = xds_err_set(XDS_ERR_FORMAT, "%s: layer %d, expert %d: token count %g above %g", name, l, e, x,
                                 XDS_EPLB_MAX_COUNT);
                goto done;
            }
            count[(size_t)l * E + e] = x;
        }
    }
done:
    json_decref(root);
    if (st != XDS_OK) {
        free(count);
        return st;
    }
    out->n_layer = L;
    out->n_expert = E;
    out->count = count;
    return XDS_OK;
}

xds_status xds_eplb_load_read(const char *path, xds_eplb_load *out) {
    FILE *f = fopen(path, "rb");
    if (!f) return xds_err_set(XDS_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (n < cap) break;
        char *nb = cap > ((size_t)1 << 31) ? NULL : realloc(buf, cap * 2);
        if (!nb) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = nb;
        cap *= 2;
    }
    int err = ferror(f);
    fclose(f);
    if (!buf) return xds_err_set(XDS_ERR_NOMEM, "%s: too large or out of memory", path);
    if (err) {
        free(buf);
        return xds_err_set(XDS_ERR_IO, "%s: read error", path);
    }
    xds_status s = xds_eplb_load_parse(path, buf, n, out);
    free(buf);
    return s;
}

char *xds_eplb_load_format(const xds_eplb_load *l) {
    /* a count is at most 1e12 (13 digits) + a comma; larger ones (not from
     * a parsed or synthetic load) are refused rather than overflow */
    size_t cap = (size_t)l->n_layer * (size_t)l->n_expert * 15 + (size_t)l->n_layer * 4 + 8, n = 0;
    for (size_t i = 0; i < (size_t)l->n_layer * (size_t)l->n_expert; i++)
        if (!(l->count[i] >= 0 && l->count[i] <= XDS_EPLB_MAX_COUNT)) return NULL;
    char *s = malloc(cap);
    if (!s) return NULL;
    s[n++] = '[';
    for (int i = 0; i < l->n_layer; i++) {
        n += (size_t)snprintf(s + n, cap - n, "%s\n[", i ? "," : "");
        for (int e = 0; e < l->n_expert; e++)
            n += (size_t)snprintf(s + n, cap - n, "%s%.0f", e ? "," : "", l->count[(size_t)i * l->n_expert + e]);
        s[n++] = ']';
    }
    snprintf(s + n, cap - n, "\n]\n");
    return s;
}

/* ---- synthetic skewed load ------------------------------------------------ */

xds_eplb_skew xds_eplb_skew_default(void) { return (xds_eplb_skew){.hot = 30, .above = 0.2, .tokens = 1 << 20}; }

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* uniform in (0, 1) */
static double unif(uint64_t *st) { return ((double)(splitmix64(st) >> 11) + 0.5) / 9007199254740992.0; }

static double gauss(uint64_t *st) {
    double u = unif(st), v = unif(st);
    return sqrt(-2 * log(u)) * cos(6.283185307179586 * v);
}

/* x[i] = exp(sigma z[i]), then the hottest set to hot x the mean of all;
 * returns how many are above the mean, or -1 when the hottest so set is not
 * the largest (the spread is too wide for `hot`). */
static int skew_draw(const double *z, int n, int imax, double sigma, double hot, double *x) {
    double rest = 0, second = 0;
    for (int i = 0; i < n; i++) {
        x[i] = exp(sigma * (z[i] - z[imax])); /* scaled by the max: no overflow */
        if (i != imax) {
            rest += x[i];
            if (x[i] > second) second = x[i];
        }
    }
    /* x_max = hot * (rest + x_max) / n */
    x[imax] = hot * rest / ((double)n - hot);
    if (x[imax] < second) return -1;
    double mean = (rest + x[imax]) / n;
    int above = 0;
    for (int i = 0; i < n; i++) above += x[i] > mean;
    return above;
}

xds_status xds_eplb_synthetic(int n_expert, int n_layer, uint64_t seed, const xds_eplb_skew *skew,
                              xds_eplb_load *out) {
    xds_eplb_skew k = skew ? *skew : xds_eplb_skew_default();
    if (n_expert < 2 || n_expert > XDS_EPLB_MAX_EXPERTS)
        return xds_err_set(XDS_ERR_INVALID, "synthetic load: %d experts (2..%d)", n_expert, XDS_EPLB_MAX_EXPERTS);
    if (n_layer < 1 || n_layer > XDS_EPLB_MAX_LAYERS)
        return xds_err_set(XDS_ERR_INVALID, "synthetic load: %d layers (1..%d)", n_layer, XDS_EPLB_MAX_LAYERS);
    if (!(k.hot >= 1) || !(k.hot < n_expert))
        return xds_err_set(XDS_ERR_INVALID,
                           "synthetic load: the hottest expert at %g x the mean needs more than %g experts (have %d)",
                           k.hot, k.hot, n_expert);
    if (!(k.above > 0 && k.above <= 0.5))
        return xds_err_set(XDS_ERR_INVALID, "synthetic load: fraction above the mean %g (0 < f <= 0.5)", k.above);
    if (k.tokens < 1 || (double)k.tokens > XDS_EPLB_MAX_COUNT)
        return xds_err_set(XDS_ERR_INVALID, "synthetic load: %lld tokens per layer (1..%g)", (long long)k.tokens,
                           XDS_EPLB_MAX_COUNT);
    double *count = malloc(sizeof(double) * (size_t)n_layer * (size_t)n_expert);
    double *z = malloc(sizeof(double) * (size_t)n_expert), *x = malloc(sizeof(double) * (size_t)n_expert);
    if (!count || !z || !x) {
        free(count), free(z), free(x);
        return xds_err_set(XDS_ERR_NOMEM, "synthetic load: out of memory");
    }
    int target = (int)floor(k.above * n_expert + 0.5);
    if (target < 1) target = 1;
    uint64_t st = seed ^ 0x5eed5eed5eedull;
    for (int l = 0; l < n_layer; l++) {
        int imax = 0;
        for (int i = 0; i < n_expert; i++) {
            z[i] = gauss(&st);
            if (z[i] > z[imax]) imax = i;
        }
        /* the spread: the widest (sigma on a grid 4 .. 0.01) whose draw has
         * the count above the mean nearest the target and its hottest still
         * the hottest. The count rises, then falls with sigma; the falling
         * side is the heavy-tailed one (several hot experts, not one). */
        int best_d = 1 << 30, best_s = 1;
        for (int s = 400; s >= 1; s--) {
            int a = skew_draw(z, n_expert, imax, s * 0.01, k.hot, x);
            if (a >= 0 && abs(a - target) < best_d) best_d = abs(a - target), best_s = s;
        }
        skew_draw(z, n_expert, imax, best_s * 0.01, k.hot, x);
        double sum = 0;
        for (int i = 0; i < n_expert; i++) sum += x[i];
        for (int i = 0; i < n_expert; i++)
            count[(size_t)l * n_expert + i] = floor(x[i] / sum * (double)k.tokens + 0.5);
    }
    free(z), free(x);
    out->n_layer = n_layer;
    out->n_expert = n_expert;
    out->count = count;
    return XDS_OK;
}

void xds_eplb_layer_skew(const double *count, int n_expert, double *hot, double *above) {
    double sum = 0, mx = 0;
    for (int i = 0; i < n_expert; i++) {
        sum += count[i];
        if (count[i] > mx) mx = count[i];
    }
    if (sum <= 0) {
        *hot = 1, *above = 0;
        return;
    }
    double mean = sum / n_expert;
    int a = 0;
    for (int i = 0; i < n_expert; i++) a += count[i] > mean;
    *hot = mx / mean;
    *above = (double)a / n_expert;
}

/* ---- prediction ---------------------------------------------------------- */

void xds_eplb_predict(const xds_deploy_placement *p, const double *load, double *worker_load) {
    for (int w = 0; w < p->n_workers; w++) {
        double s = 0;
        for (int j = 0; j < p->n_local[w]; j++) {
            int e = p->slot_expert[w * p->max_local + j];
            s += load[e] / p->n_rep[e];
        }
        worker_load[w] = s;
    }
}

double xds_eplb_max_mean(const double *wl, int n) {
    double sum = 0, mx = 0;
    for (int i = 0; i < n; i++) {
        sum += wl[i];
        if (wl[i] > mx) mx = wl[i];
    }
    return sum > 0 ? mx / (sum / n) : 1.0;
}

double xds_eplb_max_mean_total(const double *loads, int n_layer, int n_workers) {
    double smax = 0, smean = 0;
    for (int l = 0; l < n_layer; l++) {
        double sum = 0, mx = 0;
        for (int w = 0; w < n_workers; w++) {
            double v = loads[(size_t)l * n_workers + w];
            sum += v;
            if (v > mx) mx = v;
        }
        smax += mx;
        smean += sum / n_workers;
    }
    return smean > 0 ? smax / smean : 1.0;
}

/* ---- planning ------------------------------------------------------------ */

typedef struct {
    int e;
    double load; /* per replica */
} eplb_rep;

static int rep_cmp(const void *a, const void *b) {
    const eplb_rep *x = a, *y = b;
    if (x->load != y->load) return x->load > y->load ? -1 : 1;
    return (x->e > y->e) - (x->e < y->e);
}

static int int_cmp(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

xds_status xds_eplb_plan_layer(const double *load, int E, int W, int S, xds_deploy_placement *out) {
    if (E < 1 || E > XDS_EPLB_MAX_EXPERTS)
        return xds_err_set(XDS_ERR_INVALID, "eplb: %d experts (1..%d)", E, XDS_EPLB_MAX_EXPERTS);
    if (W < 1 || W > XDS_DEPLOY_MAX_WORKERS)
        return xds_err_set(XDS_ERR_INVALID, "eplb: %d expert workers (1..%d)", W, XDS_DEPLOY_MAX_WORKERS);
    if (W > E)
        return xds_err_set(XDS_ERR_INVALID, "eplb: %d expert workers for %d experts: a worker would hold no expert",
                           W, E);
    int base = (E + W - 1) / W;
    if (S < 0 || S > E - base)
        return xds_err_set(XDS_ERR_INVALID,
                           "eplb: %d redundant slots per worker: with %d experts on %d workers a worker has %d + S "
                           "slots and holds an expert at most once, so S must be 0..%d",
                           S, E, W, base, E - base);
    for (int e = 0; e < E; e++)
        if (!(load[e] >= 0) || load[e] > XDS_EPLB_MAX_COUNT)
            return xds_err_set(XDS_ERR_INVALID, "eplb: expert %d: load %g (0..%g)", e, load[e], XDS_EPLB_MAX_COUNT);
    int K = base + S, R = W * K;
    int *nrep = malloc(sizeof(int) * (size_t)E);
    double *pl = malloc(sizeof(double) * (size_t)E);
    eplb_rep *reps = malloc(sizeof(eplb_rep) * (size_t)R);
    unsigned char *holds = calloc((size_t)W * (size_t)E, 1);
    int *lists = malloc(sizeof(int) * (size_t)R), *cnt = calloc((size_t)W, sizeof(int));
    double *wl = calloc((size_t)W, sizeof(double));
    xds_status st = XDS_OK;
    if (!nrep || !pl || !reps || !holds || !lists || !cnt || !wl) {
        st = xds_err_set(XDS_ERR_NOMEM, "eplb: out of memory");
        goto done;
    }
    /* 2. replicas: one each, then the rest to the highest load per replica */
    for (int e = 0; e < E; e++) nrep[e] = 1;
    for (int i = E; i < R; i++) {
        int best = -1;
        for (int e = 0; e < E; e++) {
            if (nrep[e] >= W) continue;
            /* load[e] / nrep[e] > load[best] / nrep[best], exact in doubles */
            if (best < 0 || load[e] * nrep[best] > load[best] * nrep[e]) best = e;
        }
        XDS_ASSERT(best >= 0); /* R <= W * E since K <= E */
        nrep[best]++;
    }
    int n = 0;
    for (int e = 0; e < E; e++) {
        pl[e] = load[e] / nrep[e];
        for (int r = 0; r < nrep[e]; r++) reps[n++] = (eplb_rep){e, pl[e]};
    }
    qsort(reps, (size_t)R, sizeof *reps, rep_cmp);
    /* 3. packing */
#define HOLDS(w, e) holds[(size_t)(w) * E + (e)]
#define SLOT(w, j)  lists[(size_t)(w) * K + (j)]
    for (int i = 0; i < R; i++) {
        int e = reps[i].e, w = -1;
        for (int v = 0; v < W; v++)
            if (cnt[v] < K && !HOLDS(v, e) && (w < 0 || wl[v] < wl[w])) w = v;
        if (w >= 0) {
            SLOT(w, cnt[w]++) = e;
            HOLDS(w, e) = 1;
            wl[w] += pl[e];
            continue;
        }
        /* every worker with a free slot holds e: move a replica f from a full
         * worker w2 lacking e to the free slot of w1 (which lacks f), put e
         * in f's place; w1 has fewer distinct experts than w2, so some f fits */
        int w1 = -1;
        for (int v = 0; v < W; v++)
            if (cnt[v] < K && (w1 < 0 || wl[v] < wl[w1])) w1 = v;
        XDS_ASSERT(w1 >= 0);
        int bw = -1, bj = -1;
        double bmax = 0;
        for (int v = 0; v < W; v++) {
            if (HOLDS(v, e)) continue;
            for (int j = 0; j < cnt[v]; j++) {
                int f = SLOT(v, j);
                if (HOLDS(w1, f)) continue;
                double a = wl[w1] + pl[f], b = wl[v] - pl[f] + pl[e], m = a > b ? a : b;
                if (bw < 0 || m < bmax) bw = v, bj = j, bmax = m;
            }
        }
        XDS_ASSERT(bw >= 0);
        int f = SLOT(bw, bj);
        SLOT(w1, cnt[w1]++) = f;
        HOLDS(w1, f) = 1;
        wl[w1] += pl[f];
        SLOT(bw, bj) = e;
        HOLDS(bw, f) = 0;
        HOLDS(bw, e) = 1;
        wl[bw] += pl[e] - pl[f];
    }
    /* 4. refinement: exchanges that cool the hottest worker */
    for (int it = 0; it < 100000; it++) {
        int h = 0;
        for (int v = 1; v < W; v++)
            if (wl[v] > wl[h]) h = v;
        double best = wl[h] - 1e-9 * wl[h];
        int bw = -1, ba = -1, bb = -1;
        for (int a = 0; a < K; a++) {
            int ea = SLOT(h, a);
            for (int v = 0; v < W; v++) {
                if (v == h || HOLDS(v, ea)) continue;
                for (int b = 0; b < K; b++) {
                    int eb = SLOT(v, b);
                    if (HOLDS(h, eb)) continue;
                    double d = pl[ea] - pl[eb];
                    if (d <= 0) continue;
                    double nh = wl[h] - d, nv = wl[v] + d, m = nh > nv ? nh : nv;
                    if (m < best) best = m, bw = v, ba = a, bb = b;
                }
            }
        }
        if (bw < 0) break;
        int ea = SLOT(h, ba), eb = SLOT(bw, bb);
        SLOT(h, ba) = eb, SLOT(bw, bb) = ea;
        HOLDS(h, ea) = 0, HOLDS(h, eb) = 1, HOLDS(bw, eb) = 0, HOLDS(bw, ea) = 1;
        wl[h] += pl[eb] - pl[ea];
        wl[bw] += pl[ea] - pl[eb];
    }
    {
        const int *lp[XDS_DEPLOY_MAX_WORKERS];
        int nl[XDS_DEPLOY_MAX_WORKERS];
        for (int w = 0; w < W; w++) {
            XDS_ASSERT(cnt[w] == K);
            qsort(&SLOT(w, 0), (size_t)K, sizeof(int), int_cmp);
            lp[w] = &SLOT(w, 0);
            nl[w] = K;
        }
        st = xds_deploy_placement_lists(E, W, lp, nl, out);
        if (st != XDS_OK) xds_err_prefix(st, "eplb");
    }
#undef HOLDS
#undef SLOT
done:
    free(nrep), free(pl), free(reps), free(holds), free(lists), free(cnt), free(wl);
    return st;
}

void xds_eplb_plan_free(xds_eplb_plan *p) {
    if (!p) return;
    if (p->layer)
        for (int l = 0; l < p->n_layer; l++) xds_deploy_placement_free(&p->layer[l]);
    free(p->layer), free(p->before), free(p->after);
    memset(p, 0, sizeof *p);
}

xds_status xds_eplb_plan_make(const xds_eplb_load *l, int W, int S, xds_eplb_plan *out) {
    xds_eplb_plan p = {.n_layer = l->n_layer, .n_expert = l->n_expert, .n_workers = W, .redundant = S};
    if (W < 1 || W > XDS_DEPLOY_MAX_WORKERS)
        return xds_err_set(XDS_ERR_INVALID, "eplb: %d expert workers (1..%d)", W, XDS_DEPLOY_MAX_WORKERS);
    if (W > l->n_expert)
        return xds_err_set(XDS_ERR_INVALID, "eplb: %d expert workers for %d experts: a worker would hold no expert",
                           W, l->n_expert);
    p.slots = (l->n_expert + W - 1) / W + S;
    p.layer = calloc((size_t)l->n_layer, sizeof *p.layer);
    p.before = malloc(sizeof(double) * (size_t)l->n_layer * (size_t)W);
    p.after = malloc(sizeof(double) * (size_t)l->n_layer * (size_t)W);
    if (!p.layer || !p.before || !p.after) {
        xds_eplb_plan_free(&p);
        return xds_err_set(XDS_ERR_NOMEM, "eplb: out of memory");
    }
    xds_deploy_placement blocks;
    xds_status st = xds_deploy_placement_blocks(l->n_expert, W, &blocks);
    if (st != XDS_OK) {
        xds_eplb_plan_free(&p);
        return st;
    }
    for (int i = 0; i < l->n_layer; i++) {
        const double *load = l->count + (size_t)i * l->n_expert;
        st = xds_eplb_plan_layer(load, l->n_expert, W, S, &p.layer[i]);
        if (st != XDS_OK) break;
        xds_eplb_predict(&blocks, load, p.before + (size_t)i * W);
        xds_eplb_predict(&p.layer[i], load, p.after + (size_t)i * W);
    }
    xds_deploy_placement_free(&blocks);
    if (st != XDS_OK) {
        xds_eplb_plan_free(&p);
        return st;
    }
    *out = p;
    return XDS_OK;
}
