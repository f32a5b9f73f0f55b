/*
 * topology.c — the deployment topology (topology.h): the JSON file parser
 * and its validation, the flag form, and the expert placement derived from
 * either.
 *
 * Invariants: a function that fails leaves its output untouched and frees
 * everything it allocated; every message names the source (file name or
 * flag) and the field's position; a returned topology satisfies the
 * invariants listed in topology.h (checked in one place, topo_check_experts).
 */
#include "deploy/topology.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#define TOPO_MAX_THREADS 1024
#define TOPO_MAX_VALUE (1 << 30)

static const char *json_type_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "?";
}

/* An integer in [lo, hi] at field `path` of source `name`. */
static xds_status get_int(const char *name, const char *path, const json_t *v, long long lo, long long hi, int *out) {
    if (!json_is_integer(v))
        return xds_err_set(XDS_ERR_FORMAT, "%s: %s: expected an integer, got %s", name, path, json_type_name(v));
    json_int_t x = json_integer_value(v);
    if (x < lo)
        return xds_err_set(XDS_ERR_FORMAT, "%s: %s: must be >= %lld, got %lld", name, path, lo, (long long)x);
    if (x > hi)
        return xds_err_set(XDS_ERR_FORMAT, "%s: %s: must be at most %lld, got %lld", name, path, hi, (long long)x);
    *out = (int)x;
    return XDS_OK;
}

/* ---- entries: a table of integer keys per entry kind ----------------------- */

typedef struct field {
    const char *key;
    size_t off; /* of the int in the entry struct */
    long long hi;
} field;

static const field prefill_fields[] = {
    {"threads", offsetof(xds_topo_prefill, threads), TOPO_MAX_THREADS},
    {"kv_tokens", offsetof(xds_topo_prefill, kv_tokens), TOPO_MAX_VALUE},
    {"max_seqs", offsetof(xds_topo_prefill, max_seqs), 65536},
    {"chunk", offsetof(xds_topo_prefill, chunk), TOPO_MAX_VALUE},
};
static const field decode_fields[] = {
    {"threads", offsetof(xds_topo_decode, threads), TOPO_MAX_THREADS},
    {"max_batch", offsetof(xds_topo_decode, max_batch), 65536},
    {"kv_blocks", offsetof(xds_topo_decode, kv_blocks), TOPO_MAX_VALUE},
};
static const field expert_fields[] = {
    {"threads", offsetof(xds_topo_expert, threads), TOPO_MAX_THREADS},
};

typedef struct kind {
    const char *section;
    const field *fields;
    int n_fields;
    size_t entry_size;
    int max_entries;
    int has_ids; /* expert workers: the "experts" list */
} kind;

static const kind KIND_PREFILL = {"prefill", prefill_fields, 4, sizeof(xds_topo_prefill), XDS_TOPO_MAX_PREFILL, 0};
static const kind KIND_DECODE = {"decode", decode_fields, 3, sizeof(xds_topo_decode), XDS_TOPO_MAX_DECODE, 0};
static const kind KIND_EXPERT = {"experts", expert_fields, 1, sizeof(xds_topo_expert), XDS_TOPO_MAX_EXPERT_WORKERS,
                                 1};

static void expected_keys(const kind *k, int count_form, char *buf, size_t cap) {
    size_t n = 0;
    buf[0] = 0;
    if (count_form) n += (size_t)snprintf(buf + n, cap - n, "count");
    for (int i = 0; i < k->n_fields && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%s", n ? ", " : "", k->fields[i].key);
    if (k->has_ids && !count_form && n < cap) snprintf(buf + n, cap - n, "%s%s", n ? ", " : "", "experts");
}

/* The routed expert ids of one expert worker entry at `path`. */
static xds_status get_ids(const char *name, const char *path, const json_t *arr, int n_expert, xds_topo_expert *w) {
    if (!json_is_array(arr))
        return xds_err_set(XDS_ERR_FORMAT, "%s: %s: expected an array of routed expert ids, got %s", name, path,
                           json_type_name(arr));
    size_t n = json_array_size(arr);
    if (n == 0)
        return xds_err_set(XDS_ERR_FORMAT, "%s: %s: empty (an expert worker holds at least one expert)", name, path);
    if (n_expert > 0 && n > (size_t)n_expert)
        return xds_err_set(XDS_ERR_FORMAT, "%s: %s: %zu ids for a model with %d routed experts (one worker holds "
                           "each expert at most once)", name, path, n, n_expert);
    int *ids = malloc(sizeof(int) * n);
    int *first = n_expert > 0 ? malloc(sizeof(int) * (size_t)n_expert) : NULL;
    if (!ids || (n_expert > 0 && !first)) {
        free(ids), free(first);
        return xds_err_set(XDS_ERR_NOMEM, "%s: %s: out of memory", name, path);
    }
    for (int e = 0; e < n_expert; e++) first[e] = -1;
    for (size_t i = 0; i < n; i++) {
        const json_t *v = json_array_get(arr, i);
        char p[200];
        snprintf(p, sizeof p, "%s[%zu]", path, i);
        if (!json_is_integer(v)) {
            free(ids), free(first);
            return xds_err_set(XDS_ERR_FORMAT, "%s: %s: expected an expert id (integer), got %s", name, p,
                               json_type_name(v));
        }
        json_int_t e = json_integer_value(v);
        if (e < 0 || e >= n_expert) {
            free(ids), free(first);
            return xds_err_set(XDS_ERR_FORMAT, "%s: %s: expert %lld out of range 0..%d", name, p, (long long)e,
                               n_expert - 1);
        }
        if (first[e] >= 0) {
            int f = first[e];
            free(ids), free(first);
            return xds_err_set(XDS_ERR_FORMAT, "%s: %s: expert %lld listed twice on this worker (also at %s[%d])",
                               name, p, (long long)e, path, f);
        }
        first[e] = (int)i;
        ids[i] = (int)e;
    }
    free(first);
    w->experts = ids;
    w->n_experts = (int)n;
    return XDS_OK;
}

/* One entry object (or the count form's object, whose "count" the caller
 * has read) at `path` into *entry. */
static xds_status get_entry(const char *name, const char *path, const json_t *obj, const kind *k, int count_form,
                            int n_expert, void *entry) {
    if (!json_is_object(obj))
        return xds_err_set(XDS_ERR_FORMAT, "%s: %s: expected an object, got %s", name, path, json_type_name(obj));
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)obj, key, v) {
        char p[160];
        snprintf(p, sizeof p, "%s.%s", path, key);
        if (count_form && !strcmp(key, "count")) continue;
        int done = 0;
        for (int i = 0; i < k->n_fields && !done; i++)
            if (!strcmp(key, k->fields[i].key)) {
                XDS_TRY(get_int(name, p, v, 1, k->fields[i].hi, (int *)((char *)entry + k->fields[i].off)));
                done = 1;
            }
        if (!done && k->has_ids && !count_form && !strcmp(key, "experts")) {
            XDS_TRY(get_ids(name, p, v, n_expert, entry));
            done = 1;
        }
        if (!done) {
            char exp[128];
            expected_keys(k, count_form, exp, sizeof exp);
            return xds_err_set(XDS_ERR_FORMAT, "%s: %s: unknown key \"%s\" (expected %s)", name, path, key, exp);
        }
    }
    if (k->has_ids && !count_form && !json_object_get(obj, "experts"))
        return xds_err_set(XDS_ERR_FORMAT, "%s: %s: missing \"experts\" (the routed expert ids this worker holds)",
                           name, path);
    return XDS_OK;
}

/* Contiguous blocks of ceil(n_expert / n) experts, as xds_deploy_expert_owner. */
static xds_status place_contiguous(const char *name, const char *what, xds_topology *t, int n) {
    int per = (t->n_expert + n - 1) / n;
    for (int w = 0; w < n; w++) {
        int lo = w * per, hi = lo + per < t->n_expert ? lo + per : t->n_expert;
        int cnt = hi > lo ? hi - lo : 0;
        xds_topo_expert *x = &t->expert[w];
        x->n_experts = cnt;
        x->experts = cnt ? malloc(sizeof(int) * (size_t)cnt) : NULL;
        if (cnt && !x->experts) return xds_err_set(XDS_ERR_NOMEM, "%s: %s: out of memory", name, what);
        for (int i = 0; i < cnt; i++) x->experts[i] = lo + i;
    }
    t->contiguous = 1;
    return XDS_OK;
}

/* A section: a list of entries or {"count": N, ...}. */
static xds_status get_section(const char *name, const json_t *v, const kind *k, xds_topology *t, void *entries,
                              int *n_out) {
    const char *sec = k->section;
    if (json_is_array(v)) {
        size_t n = json_array_size(v);
        if (n > (size_t)k->max_entries)
            return xds_err_set(XDS_ERR_FORMAT, "%s: %s: %zu entries (at most %d)", name, sec, n, k->max_entries);
        if (k->has_ids && n > 0 && t->n_expert <= 0)
            return xds_err_set(XDS_ERR_INVALID, "%s: %s: %zu expert workers given, but the model has no routed "
                               "experts (not MoE)", name, sec, n);
        for (size_t i = 0; i < n; i++) {
            char p[64];
            snprintf(p, sizeof p, "%s[%zu]", sec, i);
            *n_out = (int)i + 1; /* so the caller frees what this entry allocated */
            XDS_TRY(get_entry(name, p, json_array_get(v, i), k, 0, t->n_expert,
                              (char *)entries + i * k->entry_size));
        }
        *n_out = (int)n;
        return XDS_OK;
    }
    if (!json_is_object(v))
        return xds_err_set(XDS_ERR_FORMAT, "%s: %s: expected a list of entries or {\"count\": N, ...}, got %s", name,
                           sec, json_type_name(v));
    const json_t *c = json_object_get(v, "count");
    if (!c)
        return xds_err_set(XDS_ERR_FORMAT, "%s: %s: an object needs \"count\" (or give a list of entries)", name,
                           sec);
    char p[64];
    snprintf(p, sizeof p, "%s.count", sec);
    int n;
    XDS_TRY(get_int(name, p, c, 1, k->max_entries, &n));
    char proto[sizeof(xds_topo_prefill) + sizeof(xds_topo_decode) + sizeof(xds_topo_expert)];
    memset(proto, 0, sizeof proto);
    XDS_TRY(get_entry(name, sec, v, k, 1, t->n_expert, proto));
    for (int i = 0; i < n; i++) memcpy((char *)entries + (size_t)i * k->entry_size, proto, k->entry_size);
    *n_out = n;
    if (k->has_ids) {
        if (t->n_expert <= 0)
            return xds_err_set(XDS_ERR_INVALID, "%s: %s: %d expert workers given, but the model has no routed "
                               "experts (not MoE)", name, sec, n);
        if (n > t->n_expert)
            return xds_err_set(XDS_ERR_INVALID, "%s: %s: %d expert workers for the model's %d routed experts (a "
                               "worker would hold none)", name, p, n, t->n_expert);
        XDS_TRY(place_contiguous(name, sec, t, n));
    }
    return XDS_OK;
}

/* Every expert of [0, n_expert) on some worker; expert workers only for MoE. */
static xds_status topo_check_experts(const char *name, const char *what, const xds_topology *t) {
    if (t->n_expert_workers == 0) return XDS_OK;
    if (t->n_expert <= 0)
        return xds_err_set(XDS_ERR_INVALID, "%s: %s: %d expert workers given, but the model has no routed experts "
                           "(not MoE)", name, what, t->n_expert_workers);
    unsigned char *held = calloc((size_t)t->n_expert, 1);
    if (!held) return xds_err_set(XDS_ERR_NOMEM, "%s: out of memory", name);
    for (int w = 0; w < t->n_expert_workers; w++)
        for (int i = 0; i < t->expert[w].n_experts; i++) held[t->expert[w].experts[i]] = 1;
    int missing = -1;
    for (int e = 0; e < t->n_expert && missing < 0; e++)
        if (!held[e]) missing = e;
    free(held);
    if (missing >= 0)
        return xds_err_set(XDS_ERR_INVALID, "%s: cannot place every expert: expert %d is on no worker", name, missing);
    return XDS_OK;
}

void xds_topology_free(xds_topology *t) {
    if (!t) return;
    for (int w = 0; w < XDS_TOPO_MAX_EXPERT_WORKERS; w++) {
        free(t->expert[w].experts);
        t->expert[w].experts = NULL;
        t->expert[w].n_experts = 0;
    }
    t->n_expert_workers = 0;
}

static void topo_init(xds_topology *t, int n_expert) {
    memset(t, 0, sizeof *t);
    t->frontends = 1;
    t->n_decode = 1;
    t->n_expert = n_expert > 0 ? n_expert : 0;
}

xds_status xds_topology_parse(const char *name, const char *text, size_t len, int n_expert, xds_topology *out) {
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return xds_err_set(XDS_ERR_FORMAT, "%s:%d:%d: invalid JSON: %s", name, jerr.line, jerr.column, jerr.text);
    xds_topology t;
    topo_init(&t, n_expert);
    xds_status s = XDS_OK;
    if (!json_is_object(root)) {
        s = xds_err_set(XDS_ERR_FORMAT, "%s: expected a JSON object at the top, got %s", name,
                        json_type_name(root));
        goto out;
    }
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (!strcmp(key, "frontends")) s = get_int(name, key, v, 1, XDS_TOPO_MAX_FRONTENDS, &t.frontends);
        else if (!strcmp(key, "block_size")) s = get_int(name, key, v, 1, 65536, &t.block_size);
        else if (!strcmp(key, "prefill")) s = get_section(name, v, &KIND_PREFILL, &t, t.prefill, &t.n_prefill);
        else if (!strcmp(key, "decode")) {
            s = get_section(name, v, &KIND_DECODE, &t, t.decode, &t.n_decode);
            if (s == XDS_OK && t.n_decode == 0)
                s = xds_err_set(XDS_ERR_FORMAT, "%s: decode: no entries (at least one decode DP group)", name);
        } else if (!strcmp(key, "experts")) {
            s = get_section(name, v, &KIND_EXPERT, &t, t.expert, &t.n_expert_workers);
            if (s == XDS_OK) s = topo_check_experts(name, "experts", &t);
        } else
            s = xds_err_set(XDS_ERR_FORMAT, "%s: unknown key \"%s\" (expected frontends, block_size, prefill, "
                            "decode, experts)", name, key);
        if (s != XDS_OK) break;
    }
out:
    json_decref(root);
    if (s != XDS_OK) {
        xds_topology_free(&t);
        return s;
    }
    *out = t;
    return XDS_OK;
}

xds_status xds_topology_load(const char *path, int n_expert, xds_topology *out) {
    FILE *f = fopen(path, "rb");
    if (!f) return xds_err_set(XDS_ERR_IO, "%s: cannot read the topology file: %s", path, strerror(errno));
    char *buf = malloc((size_t)XDS_TOPO_MAX_FILE_BYTES + 1);
    if (!buf) {
        fclose(f);
        return xds_err_set(XDS_ERR_NOMEM, "%s: out of memory", path);
    }
    size_t n = fread(buf, 1, (size_t)XDS_TOPO_MAX_FILE_BYTES + 1, f);
    int err = ferror(f) ? errno : 0;
    fclose(f);
    xds_status s;
    if (err) s = xds_err_set(XDS_ERR_IO, "%s: cannot read the topology file: %s", path, strerror(err));
    else if (n > (size_t)XDS_TOPO_MAX_FILE_BYTES)
        s = xds_err_set(XDS_ERR_FORMAT, "%s: larger than %d bytes; not a topology file", path,
                        XDS_TOPO_MAX_FILE_BYTES);
    else s = xds_topology_parse(path, buf, n, n_expert, out);
    free(buf);
    return s;
}

xds_status xds_topology_from_flags(int frontends, int prefill, int prefill_threads, int decode_dp, int experts,
                                   int expert_threads, int n_expert, xds_topology *out) {
    const char *name = "xds serve";
    if (frontends == 0) frontends = 1;
    if (decode_dp == 0) decode_dp = 1;
    if (frontends < 1 || frontends > XDS_TOPO_MAX_FRONTENDS)
        return xds_err_set(XDS_ERR_INVALID, "%s: --frontends %d: 1..%d", name, frontends, XDS_TOPO_MAX_FRONTENDS);
    if (prefill < 0 || prefill > XDS_TOPO_MAX_PREFILL)
        return xds_err_set(XDS_ERR_INVALID, "%s: --prefill %d: 0..%d", name, prefill, XDS_TOPO_MAX_PREFILL);
    if (decode_dp < 1 || decode_dp > XDS_TOPO_MAX_DECODE)
        return xds_err_set(XDS_ERR_INVALID, "%s: --decode-dp %d: 1..%d", name, decode_dp, XDS_TOPO_MAX_DECODE);
    if (experts < 0 || experts > XDS_TOPO_MAX_EXPERT_WORKERS)
        return xds_err_set(XDS_ERR_INVALID, "%s: --experts %d: 0..%d", name, experts, XDS_TOPO_MAX_EXPERT_WORKERS);
    if (prefill_threads < 0 || prefill_threads > TOPO_MAX_THREADS)
        return xds_err_set(XDS_ERR_INVALID, "%s: --prefill-threads %d: 1..%d", name, prefill_threads,
                           TOPO_MAX_THREADS);
    if (expert_threads < 0 || expert_threads > TOPO_MAX_THREADS)
        return xds_err_set(XDS_ERR_INVALID, "%s: --expert-threads %d: 1..%d", name, expert_threads,
                           TOPO_MAX_THREADS);
    if (experts > 0 && n_expert <= 0)
        return xds_err_set(XDS_ERR_INVALID, "%s: --experts %d: the model has no routed experts (not MoE)", name,
                           experts);
    if (experts > n_expert && experts > 0)
        return xds_err_set(XDS_ERR_INVALID, "%s: --experts %d: more expert workers than the model's %d routed "
                           "experts", name, experts, n_expert);
    xds_topology t;
    topo_init(&t, n_expert);
    t.frontends = frontends;
    t.n_prefill = prefill;
    for (int i = 0; i < prefill; i++) t.prefill[i].threads = prefill_threads;
    t.n_decode = decode_dp;
    t.n_expert_workers = experts;
    for (int w = 0; w < experts; w++) t.expert[w].threads = expert_threads;
    xds_status s = experts > 0 ? place_contiguous(name, "--experts", &t, experts) : XDS_OK;
    if (s == XDS_OK) s = topo_check_experts(name, "--experts", &t);
    if (s != XDS_OK) {
        xds_topology_free(&t);
        return s;
    }
    *out = t;
    return XDS_OK;
}

int xds_topology_expert_lists(const xds_topology *t, const int **lists, int *n_lists) {
    for (int w = 0; w < t->n_expert_workers; w++) {
        lists[w] = t->expert[w].experts;
        n_lists[w] = t->expert[w].n_experts;
    }
    return t->n_expert_workers;
}

/* ---- placement ----------------------------------------------------------------- */

void xds_topo_placement_free(xds_topo_placement *p) {
    if (!p) return;
    free(p->n_replicas), free(p->replica_worker), free(p->replica_slot);
    p->n_replicas = p->replica_worker = p->replica_slot = NULL;
}

xds_status xds_topology_placement(const xds_topology *t, xds_topo_placement *out) {
    if (t->n_expert_workers <= 0 || t->n_expert <= 0)
        return xds_err_set(XDS_ERR_INVALID, "topology: no expert workers to place %d routed experts on",
                           t->n_expert);
    xds_topo_placement p;
    memset(&p, 0, sizeof p);
    p.n_expert = t->n_expert;
    p.n_workers = t->n_expert_workers;
    p.n_replicas = calloc((size_t)p.n_expert, sizeof(int));
    if (!p.n_replicas) return xds_err_set(XDS_ERR_NOMEM, "topology: out of memory (placement)");
    for (int w = 0; w < p.n_workers; w++) {
        p.n_local[w] = t->expert[w].n_experts;
        if (p.n_local[w] > p.max_local) p.max_local = p.n_local[w];
        for (int i = 0; i < t->expert[w].n_experts; i++) {
            int e = t->expert[w].experts[i];
            XDS_ASSERT(e >= 0 && e < p.n_expert);
            if (++p.n_replicas[e] > p.max_replicas) p.max_replicas = p.n_replicas[e];
        }
    }
    for (int e = 0; e < p.n_expert; e++)
        if (p.n_replicas[e] == 0) {
            free(p.n_replicas);
            return xds_err_set(XDS_ERR_INVALID, "topology: cannot place every expert: expert %d is on no worker", e);
        }
    size_t cells = (size_t)p.n_expert * (size_t)p.max_replicas;
    p.replica_worker = malloc(sizeof(int) * cells);
    p.replica_slot = malloc(sizeof(int) * cells);
    if (!p.replica_worker || !p.replica_slot) {
        xds_topo_placement_free(&p);
        return xds_err_set(XDS_ERR_NOMEM, "topology: out of memory (placement)");
    }
    for (size_t c = 0; c < cells; c++) p.replica_worker[c] = p.replica_slot[c] = -1;
    memset(p.n_replicas, 0, sizeof(int) * (size_t)p.n_expert);
    for (int w = 0; w < p.n_workers; w++)
        for (int i = 0; i < t->expert[w].n_experts; i++) {
            int e = t->expert[w].experts[i], r = p.n_replicas[e]++;
            p.replica_worker[(size_t)e * p.max_replicas + r] = w;
            p.replica_slot[(size_t)e * p.max_replicas + r] = i;
        }
    *out = p;
    return XDS_OK;
}
