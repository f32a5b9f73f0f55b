/*
 * safetensors.c — one safetensors file.
 *
 * Layout: u64 (little-endian) header length N | N bytes of JSON | data.
 * The JSON object maps tensor names to {"dtype", "shape", "data_offsets":
 * [begin, end]} with offsets relative to the start of the data; the optional
 * "__metadata__" entry is ignored. The file is mmap'ed read-only (MAP_SHARED)
 * and tensor data is used in place; xds_safetensors_open_memory() runs the
 * same parser over a caller-owned buffer (fuzzer, tests).
 *
 * Invariants after a successful open:
 *   - N fits in the file; the header is a JSON object without duplicate keys;
 *   - every tensor has dtype F32/F16/BF16 (others: XDS_ERR_UNSUPPORTED naming
 *     the tensor), rank 0..4, non-negative dims whose product does not
 *     overflow, and begin <= end <= data size with end - begin equal to
 *     product(shape) * element size;
 *   - shapes are stored GGUF-style, reversed: HF [out, in] -> ne[0] = in,
 *     ne[1] = out; unused dims are 1; a rank-0 tensor has n_dims 1, ne[0] 1;
 *   - tensors are listed in data-offset order; names are unique.
 */
#include "format/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct xds_safetensors {
    char *path;
    const uint8_t *base; /* the image (mapping or borrowed buffer) */
    size_t size;
    int mapped; /* 1: base is our mapping, unmapped on close */
    int64_t n;
    xds_tensor *tensors;       /* (n) in data-offset order; names owned */
    const xds_tensor **sorted; /* (n) by name, for lookup */
};

/* Element size of a supported dtype; 0 for a known unsupported dtype; -1 unknown. */
static int dtype_from_str(const char *s, xds_dtype *out) {
    if (!strcmp(s, "F32")) {
        *out = XDS_DTYPE_F32;
        return 4;
    }
    if (!strcmp(s, "F16")) {
        *out = XDS_DTYPE_F16;
        return 2;
    }
    if (!strcmp(s, "BF16")) {
        *out = XDS_DTYPE_BF16;
        return 2;
    }
    static const char *known[] = {"F64",     "I64",     "I32",     "I16",  "I8",      "U64",
                                  "U32",     "U16",     "U8",      "BOOL", "F8_E4M3", "F8_E5M2",
                                  "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4",   "C64"};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (!strcmp(s, known[i])) return 0;
    return -1;
}

static int cmp_data(const void *a, const void *b) {
    const xds_tensor *x = a, *y = b;
    const uint8_t *px = x->data, *py = y->data;
    if (px != py) return px < py ? -1 : 1;
    if (x->nbytes != y->nbytes) return x->nbytes < y->nbytes ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int cmp_name(const void *a, const void *b) {
    return strcmp((*(const xds_tensor *const *)a)->name, (*(const xds_tensor *const *)b)->name);
}

static xds_status parse_entry(xds_safetensors *f, const char *name, json_t *v, size_t data_size,
                              const uint8_t *data, xds_tensor *t) {
    const char *p = f->path;
    if (!json_is_object(v))
        return xds_err_set(XDS_ERR_FORMAT, "%s: tensor '%.200s': header entry is not an object", p,
                           name);
    json_t *jd = json_object_get(v, "dtype"), *js = json_object_get(v, "shape"),
           *jo = json_object_get(v, "data_offsets");
    if (!json_is_string(jd))
        return xds_err_set(XDS_ERR_FORMAT, "%s: tensor '%.200s': missing or non-string \"dtype\"",
                           p, name);
    int esize = dtype_from_str(json_string_value(jd), &t->type);
    if (esize == 0)
        return xds_err_set(
            XDS_ERR_UNSUPPORTED,
            "%s: tensor '%.200s': dtype %s is not supported (supported: F32, F16, BF16)", p, name,
            json_string_value(jd));
    if (esize < 0)
        return xds_err_set(XDS_ERR_FORMAT, "%s: tensor '%.200s': unknown dtype \"%.40s\"", p, name,
                           json_string_value(jd));
    if (!json_is_array(js))
        return xds_err_set(XDS_ERR_FORMAT, "%s: tensor '%.200s': missing or non-array \"shape\"", p,
                           name);
    size_t rank = json_array_size(js);
    if (rank > XDS_MAX_DIMS)
        return xds_err_set(XDS_ERR_FORMAT, "%s: tensor '%.200s': rank %zu exceeds %d", p, name,
                           rank, XDS_MAX_DIMS);
    t->n_dims = rank ? (int)rank : 1;
    for (int d = 0; d < XDS_MAX_DIMS; d++) t->ne[d] = 1;
    uint64_t nelem = 1;
    for (size_t d = 0; d < rank; d++) {
        json_t *e = json_array_get(js, d);
        if (!json_is_integer(e) || json_integer_value(e) < 0)
            return xds_err_set(XDS_ERR_FORMAT,
                               "%s: tensor '%.200s': shape[%zu] is not a non-negative integer", p,
                               name, d);
        uint64_t ne = (uint64_t)json_integer_value(e);
        if (ne && nelem > (uint64_t)INT64_MAX / ne)
            return xds_err_set(XDS_ERR_FORMAT,
                               "%s: tensor '%.200s': shape overflows (element count > 2^63)", p,
                               name);
        nelem *= ne;
        t->ne[rank - 1 - d] = (int64_t)ne; /* reversed: ne[0] is the last HF dim */
    }
    if (!json_is_array(jo) || json_array_size(jo) != 2 || !json_is_integer(json_array_get(jo, 0)) ||
        !json_is_integer(json_array_get(jo, 1)))
        return xds_err_set(XDS_ERR_FORMAT,
                           "%s: tensor '%.200s': \"data_offsets\" is not an array of two integers",
                           p, name);
    json_int_t b = json_integer_value(json_array_get(jo, 0));
    json_int_t e = json_integer_value(json_array_get(jo, 1));
    if (b < 0 || e < b)
        return xds_err_set(XDS_ERR_FORMAT,
                           "%s: tensor '%.200s': data_offsets [%lld, %lld) are invalid", p, name,
                           (long long)b, (long long)e);
    if ((uint64_t)e > data_size)
        return xds_err_set(XDS_ERR_FORMAT,
                           "%s: tensor '%.200s': data_offsets [%lld, %lld) past end of data (%zu "
                           "bytes)",
                           p, name, (long long)b, (long long)e, data_size);
    if (nelem > (uint64_t)(e - b) / (uint64_t)esize || nelem * (uint64_t)esize != (uint64_t)(e - b))
        return xds_err_set(
            XDS_ERR_FORMAT,
            "%s: tensor '%.200s': data_offsets [%lld, %lld) hold %lld bytes, but the "
            "shape has %llu %s elements of %d bytes",
            p, name, (long long)b, (long long)e, (long long)(e - b), (unsigned long long)nelem,
            xds_dtype_name(t->type), esize);
    t->data = data + b;
    t->nbytes = (size_t)(e - b);
    return XDS_OK;
}

static xds_status st_parse(xds_safetensors *f) {
    const char *p = f->path;
    if (f->size < 8)
        return xds_err_set(
            XDS_ERR_FORMAT,
            "%s: too small for a safetensors file (%zu bytes, header length needs 8)", p, f->size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | f->base[i];
    if (hlen > f->size - 8)
        return xds_err_set(XDS_ERR_FORMAT, "%s: header length %llu past end of file (size %zu)", p,
                           (unsigned long long)hlen, f->size);
    json_error_t jerr;
    json_t *root =
        json_loadb((const char *)f->base + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return xds_err_set(XDS_ERR_FORMAT, "%s: header JSON: %s (line %d, column %d)", p, jerr.text,
                           jerr.line, jerr.column);
    xds_status st = XDS_OK;
    if (!json_is_object(root)) {
        st = xds_err_set(XDS_ERR_FORMAT, "%s: header JSON is not an object", p);
        goto out;
    }
    size_t n = json_object_size(root);
    if (n) {
        f->tensors = calloc(n, sizeof *f->tensors);
        f->sorted = malloc(n * sizeof *f->sorted);
        if (!f->tensors || !f->sorted) {
            st = xds_err_set(XDS_ERR_NOMEM, "%s: out of memory", p);
            goto out;
        }
    }
    const uint8_t *data = f->base + 8 + hlen;
    size_t data_size = f->size - 8 - (size_t)hlen;
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (!strcmp(key, "__metadata__")) continue;
        xds_tensor *t = &f->tensors[f->n];
        if (!(t->name = strdup(key))) {
            st = xds_err_set(XDS_ERR_NOMEM, "%s: out of memory", p);
            goto out;
        }
        f->n++;
        st = parse_entry(f, key, v, data_size, data, t);
        if (st != XDS_OK) goto out;
    }
    if (f->n) qsort(f->tensors, (size_t)f->n, sizeof *f->tensors, cmp_data);
    for (int64_t i = 0; i < f->n; i++) f->sorted[i] = &f->tensors[i];
    if (f->n) qsort(f->sorted, (size_t)f->n, sizeof *f->sorted, cmp_name);
    /* JSON_REJECT_DUPLICATES catches exact duplicates; names that differ only
     * after an escaped NUL ("a\u0000b" vs "a") collide once copied. */
    for (int64_t i = 1; i < f->n; i++)
        if (!strcmp(f->sorted[i - 1]->name, f->sorted[i]->name)) {
            st = xds_err_set(XDS_ERR_FORMAT, "%s: duplicate tensor name '%.200s'", p,
                             f->sorted[i]->name);
            goto out;
        }
out:
    json_decref(root);
    return st;
}

static xds_status st_new(const char *name, xds_safetensors **out) {
    xds_safetensors *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(name))) {
        free(f);
        return xds_err_set(XDS_ERR_NOMEM, "%s: out of memory", name);
    }
    *out = f;
    return XDS_OK;
}

xds_status xds_safetensors_open_memory(const void *data, size_t size, const char *name,
                                       xds_safetensors **out) {
    xds_safetensors *f;
    XDS_TRY(st_new(name, &f));
    f->base = data;
    f->size = size;
    xds_status st = st_parse(f);
    if (st != XDS_OK) {
        xds_safetensors_close(f);
        return st;
    }
    *out = f;
    return XDS_OK;
}

xds_status xds_safetensors_open(const char *path, xds_safetensors **out) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* a FIFO must not block */
    if (fd < 0)
        return xds_err_set(errno == ENOENT ? XDS_ERR_NOT_FOUND : XDS_ERR_IO, "%s: cannot open: %s",
                           path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return xds_err_set(XDS_ERR_IO, "%s: not a regular file", path);
    }
    size_t size = (size_t)sb.st_size;
    if (size < 8) {
        close(fd);
        return xds_err_set(
            XDS_ERR_FORMAT,
            "%s: too small for a safetensors file (%zu bytes, header length needs 8)", path, size);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED) return xds_err_set(XDS_ERR_IO, "%s: cannot mmap: %s", path, strerror(e));
    xds_safetensors *f;
    xds_status st = st_new(path, &f);
    if (st != XDS_OK) {
        munmap(map, size);
        return st;
    }
    f->base = map;
    f->size = size;
    f->mapped = 1;
    st = st_parse(f);
    if (st != XDS_OK) {
        xds_safetensors_close(f);
        return st;
    }
    *out = f;
    return XDS_OK;
}

void xds_safetensors_close(xds_safetensors *f) {
    if (!f) return;
    for (int64_t i = 0; i < f->n; i++) free((char *)f->tensors[i].name);
    free(f->tensors);
    free(f->sorted);
    if (f->mapped) munmap((void *)f->base, f->size);
    free(f->path);
    free(f);
}

const char *xds_safetensors_path(const xds_safetensors *f) { return f->path; }
size_t xds_safetensors_file_size(const xds_safetensors *f) { return f->size; }
int64_t xds_safetensors_n_tensors(const xds_safetensors *f) { return f->n; }

const xds_tensor *xds_safetensors_tensor(const xds_safetensors *f, int64_t i) {
    return i >= 0 && i < f->n ? &f->tensors[i] : NULL;
}

const xds_tensor *xds_safetensors_find(const xds_safetensors *f, const char *name) {
    int64_t lo = 0, hi = f->n - 1;
    while (lo <= hi) {
        int64_t mid = lo + (hi - lo) / 2;
        int c = strcmp(f->sorted[mid]->name, name);
        if (!c) return f->sorted[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return NULL;
}
