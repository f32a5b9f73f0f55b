/*
 * hfdir.c — a Hugging Face model directory: config.json plus either
 * model.safetensors or the shards listed in model.safetensors.index.json
 * ("weight_map": tensor name -> shard file name).
 *
 * Invariants after a successful open:
 *   - config.json parsed (a JSON object, kept for the model loader);
 *   - each shard file is opened (mmap'ed) once, whatever the number of
 *     tensors naming it; shard names are plain file names inside the directory;
 *   - every tensor of the index exists in the shard the index names (else an
 *     error naming both); tensors of a shard that the index does not list are
 *     not exposed;
 *   - tensors are ordered by (shard file name, data offset); names are unique.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "format/safetensors.h"

struct xds_hfdir {
    char *path;     /* directory, without trailing '/' */
    json_t *config; /* config.json */
    int n_files;
    xds_safetensors **files; /* (n_files) */
    int64_t n;
    const xds_tensor **tensors; /* (n) views into files[] */
    const xds_tensor **sorted;  /* (n) by name */
};

static char *path_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

static int file_exists(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

static int cmp_name(const void *a, const void *b) {
    return strcmp((*(const xds_tensor *const *)a)->name, (*(const xds_tensor *const *)b)->name);
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

typedef struct tensor_ref {
    int file;
    int64_t pos; /* index in the shard's data-offset order */
    const xds_tensor *t;
} tensor_ref;

static int cmp_ref(const void *a, const void *b) {
    const tensor_ref *x = a, *y = b;
    if (x->file != y->file) return x->file < y->file ? -1 : 1;
    return (x->pos > y->pos) - (x->pos < y->pos);
}

static xds_status load_json(const char *path, json_t **out) {
    json_error_t jerr;
    json_t *j = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!j) {
        if (!file_exists(path))
            return xds_err_set(XDS_ERR_NOT_FOUND, "%s: cannot open: %s", path, strerror(errno));
        return xds_err_set(XDS_ERR_FORMAT, "%s: invalid JSON: %s (line %d, column %d)", path,
                           jerr.text, jerr.line, jerr.column);
    }
    if (!json_is_object(j)) {
        json_decref(j);
        return xds_err_set(XDS_ERR_FORMAT, "%s: expected a JSON object", path);
    }
    *out = j;
    return XDS_OK;
}

static xds_status open_file(xds_hfdir *d, const char *name) {
    char *p = path_join(d->path, name);
    if (!p) return xds_err_set(XDS_ERR_NOMEM, "%s: out of memory", d->path);
    xds_status st = xds_safetensors_open(p, &d->files[d->n_files]);
    if (st == XDS_OK) d->n_files++;
    free(p);
    return st;
}

/* Sharded: read the index, open each distinct shard once, resolve every tensor. */
static xds_status open_sharded(xds_hfdir *d, const char *index_path) {
    json_t *index;
    XDS_TRY(load_json(index_path, &index));
    xds_status st = XDS_OK;
    const char **names = NULL;
    tensor_ref *ref = NULL;
    json_t *wm = json_object_get(index, "weight_map");
    if (!json_is_object(wm)) {
        st = xds_err_set(XDS_ERR_FORMAT, "%s: missing or non-object \"weight_map\"", index_path);
        goto out;
    }
    size_t n = json_object_size(wm);
    if (!n) {
        st = xds_err_set(XDS_ERR_FORMAT, "%s: \"weight_map\" is empty", index_path);
        goto out;
    }
    names = malloc(n * sizeof *names);
    d->tensors = malloc(n * sizeof *d->tensors);
    d->sorted = malloc(n * sizeof *d->sorted);
    if (!names || !d->tensors || !d->sorted) {
        st = xds_err_set(XDS_ERR_NOMEM, "%s: out of memory", index_path);
        goto out;
    }
    /* Distinct shard names, sorted. */
    size_t k = 0;
    const char *key;
    json_t *v;
    json_object_foreach(wm, key, v) {
        const char *s = json_string_value(v);
        if (!s || !*s || strchr(s, '/') || !strcmp(s, ".") || !strcmp(s, "..")) {
            st = xds_err_set(XDS_ERR_FORMAT,
                             "%s: weight_map['%.200s'] is not a file name in the directory",
                             index_path, key);
            goto out;
        }
        names[k++] = s;
    }
    qsort(names, k, sizeof *names, cmp_str);
    size_t u = 0;
    for (size_t i = 0; i < k; i++)
        if (!u || strcmp(names[u - 1], names[i])) names[u++] = names[i];
    d->files = calloc(u, sizeof *d->files);
    if (!d->files) {
        st = xds_err_set(XDS_ERR_NOMEM, "%s: out of memory", index_path);
        goto out;
    }
    for (size_t i = 0; i < u; i++)
        if ((st = open_file(d, names[i])) != XDS_OK) {
            if (st == XDS_ERR_NOT_FOUND)
                xds_err_prefix(st, "%s lists shard '%.200s'", index_path, names[i]);
            goto out;
        }
    /* Resolve every tensor in its shard; order by (shard, position in shard). */
    ref = malloc(n * sizeof *ref);
    if (!ref) {
        st = xds_err_set(XDS_ERR_NOMEM, "%s: out of memory", index_path);
        goto out;
    }
    json_object_foreach(wm, key, v) {
        const char *s = json_string_value(v);
        const char **hit = bsearch(&s, names, u, sizeof *names, cmp_str);
        XDS_ASSERT(hit);
        int f = (int)(hit - names);
        const xds_tensor *t = xds_safetensors_find(d->files[f], key);
        if (!t) {
            st = xds_err_set(
                XDS_ERR_FORMAT,
                "%s: tensor '%.200s' is listed in shard '%.200s' but %s/%s does not contain "
                "it",
                index_path, key, s, d->path, s);
            goto out;
        }
        ref[d->n].file = f;
        ref[d->n].pos = t - xds_safetensors_tensor(d->files[f], 0);
        ref[d->n].t = t;
        d->n++;
    }
    qsort(ref, (size_t)d->n, sizeof *ref, cmp_ref);
    for (int64_t i = 0; i < d->n; i++) d->tensors[i] = ref[i].t;
out:
    free(ref);
    free(names);
    json_decref(index);
    return st;
}

xds_status xds_hfdir_open(const char *dir, xds_hfdir **out) {
    struct stat sb;
    if (stat(dir, &sb) != 0)
        return xds_err_set(errno == ENOENT ? XDS_ERR_NOT_FOUND : XDS_ERR_IO, "%s: %s", dir,
                           strerror(errno));
    if (!S_ISDIR(sb.st_mode)) return xds_err_set(XDS_ERR_INVALID, "%s: not a directory", dir);
    xds_hfdir *d = calloc(1, sizeof *d);
    if (!d || !(d->path = strdup(dir))) {
        free(d);
        return xds_err_set(XDS_ERR_NOMEM, "%s: out of memory", dir);
    }
    size_t l = strlen(d->path);
    while (l > 1 && d->path[l - 1] == '/') d->path[--l] = 0;

    xds_status st;
    char *cfg = path_join(d->path, "config.json");
    char *single = path_join(d->path, "model.safetensors");
    char *index = path_join(d->path, "model.safetensors.index.json");
    if (!cfg || !single || !index) {
        st = xds_err_set(XDS_ERR_NOMEM, "%s: out of memory", dir);
        goto done;
    }
    if (!file_exists(cfg)) {
        st = xds_err_set(XDS_ERR_NOT_FOUND,
                         "%s: config.json not found (a Hugging Face model directory needs it)",
                         d->path);
        goto done;
    }
    if ((st = load_json(cfg, &d->config)) != XDS_OK) goto done;
    if (file_exists(single)) {
        d->files = calloc(1, sizeof *d->files);
        if (!d->files) {
            st = xds_err_set(XDS_ERR_NOMEM, "%s: out of memory", dir);
            goto done;
        }
        if ((st = open_file(d, "model.safetensors")) != XDS_OK) goto done;
        int64_t n = xds_safetensors_n_tensors(d->files[0]);
        d->tensors = malloc((n ? n : 1) * sizeof *d->tensors);
        d->sorted = malloc((n ? n : 1) * sizeof *d->sorted);
        if (!d->tensors || !d->sorted) {
            st = xds_err_set(XDS_ERR_NOMEM, "%s: out of memory", dir);
            goto done;
        }
        for (int64_t i = 0; i < n; i++) d->tensors[d->n++] = xds_safetensors_tensor(d->files[0], i);
    } else if (file_exists(index)) {
        if ((st = open_sharded(d, index)) != XDS_OK) goto done;
    } else {
        st = xds_err_set(XDS_ERR_NOT_FOUND,
                         "%s: neither model.safetensors nor model.safetensors.index.json found",
                         d->path);
        goto done;
    }
    for (int64_t i = 0; i < d->n; i++) d->sorted[i] = d->tensors[i];
    if (d->n) qsort(d->sorted, (size_t)d->n, sizeof *d->sorted, cmp_name);
    st = XDS_OK;
    for (int64_t i = 1; i < d->n; i++)
        if (!strcmp(d->sorted[i - 1]->name, d->sorted[i]->name)) {
            st = xds_err_set(XDS_ERR_FORMAT, "%s: duplicate tensor name '%.200s'", d->path,
                             d->sorted[i]->name);
            break;
        }
done:
    free(cfg);
    free(single);
    free(index);
    if (st != XDS_OK) {
        xds_hfdir_close(d);
        return st;
    }
    *out = d;
    return XDS_OK;
}

void xds_hfdir_close(xds_hfdir *d) {
    if (!d) return;
    for (int i = 0; i < d->n_files; i++) xds_safetensors_close(d->files[i]);
    free(d->files);
    free(d->tensors);
    free(d->sorted);
    json_decref(d->config);
    free(d->path);
    free(d);
}

const char *xds_hfdir_path(const xds_hfdir *d) { return d->path; }
const json_t *xds_hfdir_config(const xds_hfdir *d) { return d->config; }
int xds_hfdir_n_files(const xds_hfdir *d) { return d->n_files; }

const xds_safetensors *xds_hfdir_file(const xds_hfdir *d, int i) {
    return i >= 0 && i < d->n_files ? d->files[i] : NULL;
}

int64_t xds_hfdir_n_tensors(const xds_hfdir *d) { return d->n; }

const xds_tensor *xds_hfdir_tensor(const xds_hfdir *d, int64_t i) {
    return i >= 0 && i < d->n ? d->tensors[i] : NULL;
}

const xds_tensor *xds_hfdir_find(const xds_hfdir *d, const char *name) {
    int64_t lo = 0, hi = d->n - 1;
    while (lo <= hi) {
        int64_t mid = lo + (hi - lo) / 2;
        int c = strcmp(d->sorted[mid]->name, name);
        if (!c) return d->sorted[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return NULL;
}
