/*
 * gguf.c — GGUF v2/v3 reader.
 *
 * The file is mmap'ed read-only (MAP_SHARED, PROT_READ: processes loading the
 * same model share the page cache); xds_gguf_open_memory() runs the same
 * parser over a caller-owned buffer (fuzzer, tests).
 *
 * Layout (all little-endian):
 *   magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
 *   n_kv    x { string key | u32 type | value }
 *   n_tensors x { string name | u32 n_dims | u64 ne[n_dims] | u32 type | u64 offset }
 *   padding to general.alignment | tensor data (offsets relative to here)
 * where string = u64 len | len bytes (no NUL), array = u32 elem_type | u64 n | n values.
 *
 * Invariants after a successful open:
 *   - every read of the header went through a cursor that checks the bytes
 *     remaining first; counts are checked against the bytes remaining before
 *     anything is allocated for them;
 *   - keys and tensor names are unique, NUL-free, and copied NUL-terminated;
 *   - kv values (strings, arrays, string-array elements) lie inside the image;
 *   - every tensor has 1..4 dims, each >= 1, element count and byte size
 *     without overflow, ne[0] a multiple of its type's block size, offset a
 *     multiple of the alignment, and [data, data + nbytes) inside the image.
 */
#include "format/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_MAGIC             "GGUF"
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_N_TYPES           13 /* value types 0..12 */

typedef struct gguf_kv {
    char *key; /* NUL-terminated copy */
    xds_gguf_type type;
    xds_gguf_type elem;   /* arrays: element type */
    uint64_t n;           /* strings: byte length; arrays: element count */
    const uint8_t *data;  /* in the image: scalar bytes / string bytes / first array element */
    const uint8_t **strs; /* string arrays: n pointers at each element's u64 length prefix */
} gguf_kv;

struct xds_gguf {
    char *path;
    const uint8_t *base; /* the image (mapping or borrowed buffer) */
    size_t size;
    int mapped; /* 1: base is our mapping, unmapped on close */
    uint32_t version;
    uint32_t alignment;
    size_t data_start; /* file offset of the tensor data section */
    int64_t n_kv;
    gguf_kv *kv;         /* (n_kv) in file order */
    gguf_kv **kv_sorted; /* (n_kv) by key, for lookup */
    int64_t n_tensors;
    xds_tensor *tensors;         /* (n_tensors) in file order; names owned */
    const xds_tensor **t_sorted; /* (n_tensors) by name, for lookup */
};

/* ------------------------------------------------------------------------- */
/* Value types */

static const int type_size[GGUF_N_TYPES] = {
    [XDS_GGUF_UINT8] = 1,   [XDS_GGUF_INT8] = 1,  [XDS_GGUF_UINT16] = 2,  [XDS_GGUF_INT16] = 2,
    [XDS_GGUF_UINT32] = 4,  [XDS_GGUF_INT32] = 4, [XDS_GGUF_FLOAT32] = 4, [XDS_GGUF_BOOL] = 1,
    [XDS_GGUF_STRING] = 0,  [XDS_GGUF_ARRAY] = 0, [XDS_GGUF_UINT64] = 8,  [XDS_GGUF_INT64] = 8,
    [XDS_GGUF_FLOAT64] = 8,
};

const char *xds_gguf_type_name(xds_gguf_type t) {
    static const char *names[GGUF_N_TYPES] = {
        "uint8", "int8",   "uint16", "int16",  "uint32", "int32",   "float32",
        "bool",  "string", "array",  "uint64", "int64",  "float64",
    };
    return (unsigned)t < GGUF_N_TYPES ? names[t] : "?";
}

/* GGUF (ggml) tensor type ids. */
static int ggml_type_to_dtype(uint32_t id, xds_dtype *out) {
    switch (id) {
    case 0:
        *out = XDS_DTYPE_F32;
        return 1;
    case 1:
        *out = XDS_DTYPE_F16;
        return 1;
    case 2:
        *out = XDS_DTYPE_Q4_0;
        return 1;
    case 3:
        *out = XDS_DTYPE_Q4_1;
        return 1;
    case 8:
        *out = XDS_DTYPE_Q8_0;
        return 1;
    case 12:
        *out = XDS_DTYPE_Q4_K;
        return 1;
    case 14:
        *out = XDS_DTYPE_Q6_K;
        return 1;
    case 30:
        *out = XDS_DTYPE_BF16;
        return 1;
    }
    return 0;
}

static const char *ggml_type_name(uint32_t id) {
    static const char *names[] = {
        "f32",
        "f16",
        "q4_0",
        "q4_1",
        "q4_2 (removed)",
        "q4_3 (removed)",
        "q5_0",
        "q5_1",
        "q8_0",
        "q8_1",
        "q2_k",
        "q3_k",
        "q4_k",
        "q5_k",
        "q6_k",
        "q8_k",
        "iq2_xxs",
        "iq2_xs",
        "iq3_xxs",
        "iq1_s",
        "iq4_nl",
        "iq3_s",
        "iq2_s",
        "iq4_xs",
        "i8",
        "i16",
        "i32",
        "i64",
        "f64",
        "iq1_m",
        "bf16",
        "q4_0_4_4",
        "q4_0_4_8",
        "q4_0_8_8",
        "tq1_0",
        "tq2_0",
    };
    return id < sizeof names / sizeof names[0] ? names[id] : "unknown";
}

/* ------------------------------------------------------------------------- */
/* Bounds-checked cursor over the image */

typedef struct cursor {
    const uint8_t *base;
    size_t size, pos;
    const char *path;
    char ctx[160]; /* what is being read, for messages: "key 'x'", "tensor info #3" */
} cursor;

static size_t cur_left(const cursor *c) { return c->size - c->pos; }

static xds_status cur_truncated(const cursor *c, size_t need, const char *what) {
    return xds_err_set(XDS_ERR_FORMAT,
                       "%s: %s%s%s needs %zu bytes at offset %zu, past end of file (size %zu)",
                       c->path, c->ctx, c->ctx[0] ? ": " : "", what, need, c->pos, c->size);
}

static xds_status cur_bytes(cursor *c, size_t n, const char *what, const uint8_t **p) {
    if (cur_left(c) < n) return cur_truncated(c, n, what);
    *p = c->base + c->pos;
    c->pos += n;
    return XDS_OK;
}

static xds_status cur_u32(cursor *c, const char *what, uint32_t *v) {
    const uint8_t *p = NULL;
    XDS_TRY(cur_bytes(c, 4, what, &p));
    *v = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    return XDS_OK;
}

static uint64_t rd_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static xds_status cur_u64(cursor *c, const char *what, uint64_t *v) {
    const uint8_t *p = NULL;
    XDS_TRY(cur_bytes(c, 8, what, &p));
    *v = rd_u64(p);
    return XDS_OK;
}

/* A GGUF string: u64 length, then the bytes. The length is checked against
 * the bytes remaining before anything else is done with it. */
static xds_status cur_str(cursor *c, const char *what, const uint8_t **s, uint64_t *len) {
    size_t at = c->pos;
    XDS_TRY(cur_u64(c, what, len));
    if (*len > cur_left(c))
        return xds_err_set(XDS_ERR_FORMAT,
                           "%s: %s%s%s at offset %zu: length %llu exceeds the %zu bytes left in "
                           "the file",
                           c->path, c->ctx, c->ctx[0] ? ": " : "", what, at,
                           (unsigned long long)*len, cur_left(c));
    *s = c->base + c->pos;
    c->pos += (size_t)*len;
    return XDS_OK;
}

/* Copy a name (key / tensor name) NUL-terminated; rejects embedded NULs. */
static xds_status copy_name(const cursor *c, const uint8_t *s, uint64_t len, const char *what,
                            size_t at, char **out) {
    if (memchr(s, 0, (size_t)len))
        return xds_err_set(XDS_ERR_FORMAT, "%s: %s%s%s at offset %zu contains a NUL byte", c->path,
                           c->ctx, c->ctx[0] ? ": " : "", what, at);
    char *p = malloc((size_t)len + 1);
    if (!p) return xds_err_set(XDS_ERR_NOMEM, "%s: out of memory", c->path);
    memcpy(p, s, (size_t)len);
    p[len] = 0;
    *out = p;
    return XDS_OK;
}

/* ------------------------------------------------------------------------- */
/* Parsing */

static int cmp_kv(const void *a, const void *b) {
    return strcmp((*(gguf_kv *const *)a)->key, (*(gguf_kv *const *)b)->key);
}

static int cmp_tensor(const void *a, const void *b) {
    return strcmp((*(const xds_tensor *const *)a)->name, (*(const xds_tensor *const *)b)->name);
}

static xds_status parse_kv(xds_gguf *g, cursor *c, gguf_kv *kv) {
    const uint8_t *s;
    uint64_t len;
    size_t at = c->pos;
    XDS_TRY(cur_str(c, "metadata key", &s, &len));
    XDS_TRY(copy_name(c, s, len, "metadata key", at, &kv->key));
    snprintf(c->ctx, sizeof c->ctx, "key '%.100s'", kv->key);

    uint32_t type;
    XDS_TRY(cur_u32(c, "metadata value type", &type));
    if (type >= GGUF_N_TYPES)
        return xds_err_set(XDS_ERR_FORMAT, "%s: key '%.200s': invalid value type %u", g->path,
                           kv->key, type);
    kv->type = (xds_gguf_type)type;
    if (type == XDS_GGUF_STRING) {
        XDS_TRY(cur_str(c, "string value", &kv->data, &kv->n));
        return XDS_OK;
    }
    if (type != XDS_GGUF_ARRAY) {
        kv->n = 1;
        return cur_bytes(c, (size_t)type_size[type], "metadata value", &kv->data);
    }

    uint32_t elem;
    XDS_TRY(cur_u32(c, "array element type", &elem));
    if (elem == XDS_GGUF_ARRAY)
        return xds_err_set(XDS_ERR_FORMAT, "%s: key '%.200s': nested arrays are not supported",
                           g->path, kv->key);
    if (elem >= GGUF_N_TYPES)
        return xds_err_set(XDS_ERR_FORMAT, "%s: key '%.200s': invalid array element type %u",
                           g->path, kv->key, elem);
    kv->elem = (xds_gguf_type)elem;
    XDS_TRY(cur_u64(c, "array length", &kv->n));
    /* Each element takes at least min_size bytes: check the count first. */
    size_t min_size = elem == XDS_GGUF_STRING ? 8 : (size_t)type_size[elem];
    if (kv->n > cur_left(c) / min_size)
        return xds_err_set(
            XDS_ERR_FORMAT,
            "%s: key '%.200s': array of %llu %s values at offset %zu does not fit in "
            "the %zu bytes left in the file",
            g->path, kv->key, (unsigned long long)kv->n, xds_gguf_type_name(kv->elem), c->pos,
            cur_left(c));
    kv->data = c->base + c->pos;
    if (elem != XDS_GGUF_STRING) {
        c->pos += (size_t)kv->n * min_size;
        return XDS_OK;
    }
    if (kv->n) {
        kv->strs = malloc((size_t)kv->n * sizeof *kv->strs);
        if (!kv->strs) return xds_err_set(XDS_ERR_NOMEM, "%s: out of memory", g->path);
    }
    for (uint64_t i = 0; i < kv->n; i++) {
        kv->strs[i] = c->base + c->pos;
        if (cur_left(c) < 8 || rd_u64(c->base + c->pos) > cur_left(c) - 8)
            return xds_err_set(
                XDS_ERR_FORMAT,
                "%s: key '%.200s': string %llu of %llu at offset %zu runs past end of "
                "file (size %zu)",
                g->path, kv->key, (unsigned long long)i, (unsigned long long)kv->n, c->pos,
                c->size);
        c->pos += 8 + (size_t)rd_u64(c->base + c->pos);
    }
    return XDS_OK;
}

static int is_pow2(uint64_t v) { return v && !(v & (v - 1)); }

static xds_status kv_to_u64(const xds_gguf *g, const gguf_kv *kv, uint64_t *out);

static xds_status parse_tensor_info(xds_gguf *g, cursor *c, xds_tensor *t, uint64_t *offset,
                                    uint32_t *type_id) {
    const uint8_t *s;
    uint64_t len;
    size_t at = c->pos;
    XDS_TRY(cur_str(c, "tensor name", &s, &len));
    char *name;
    XDS_TRY(copy_name(c, s, len, "tensor name", at, &name));
    t->name = name;
    snprintf(c->ctx, sizeof c->ctx, "tensor '%.100s'", name);

    uint32_t n_dims;
    XDS_TRY(cur_u32(c, "tensor n_dims", &n_dims));
    if (n_dims < 1 || n_dims > XDS_MAX_DIMS)
        return xds_err_set(XDS_ERR_FORMAT, "%s: tensor '%.200s': n_dims %u out of range 1..%d",
                           g->path, name, n_dims, XDS_MAX_DIMS);
    t->n_dims = (int)n_dims;
    int64_t nelem = 1;
    for (int d = 0; d < XDS_MAX_DIMS; d++) {
        t->ne[d] = 1;
        if (d >= (int)n_dims) continue;
        uint64_t ne;
        XDS_TRY(cur_u64(c, "tensor dimension", &ne));
        if (ne < 1 || ne > (uint64_t)INT64_MAX)
            return xds_err_set(XDS_ERR_FORMAT, "%s: tensor '%.200s': dimension %d is %llu", g->path,
                               name, d, (unsigned long long)ne);
        if ((int64_t)ne > INT64_MAX / nelem)
            return xds_err_set(XDS_ERR_FORMAT,
                               "%s: tensor '%.200s': shape overflows (element count > 2^63)",
                               g->path, name);
        t->ne[d] = (int64_t)ne;
        nelem *= (int64_t)ne;
    }
    XDS_TRY(cur_u32(c, "tensor type", type_id));
    XDS_TRY(cur_u64(c, "tensor offset", offset));
    if (!ggml_type_to_dtype(*type_id, &t->type))
        return xds_err_set(
            XDS_ERR_UNSUPPORTED,
            "%s: tensor '%.200s': tensor type id %u (%s) is not supported (supported: "
            "f32, f16, bf16, q8_0, q4_0, q4_1, q4_k, q6_k)",
            g->path, name, *type_id, ggml_type_name(*type_id));
    const xds_dtype_traits *tr = xds_dtype_info(t->type);
    if (t->ne[0] % tr->block_size)
        return xds_err_set(XDS_ERR_FORMAT,
                           "%s: tensor '%.200s': row length %lld is not a multiple of the %s block "
                           "size %d",
                           g->path, name, (long long)t->ne[0], tr->name, tr->block_size);
    uint64_t row = (uint64_t)(t->ne[0] / tr->block_size) * (uint64_t)tr->block_bytes;
    uint64_t rows = (uint64_t)(nelem / t->ne[0]);
    if (rows && row > SIZE_MAX / rows)
        return xds_err_set(XDS_ERR_FORMAT, "%s: tensor '%.200s': byte size overflows", g->path,
                           name);
    t->nbytes = (size_t)(row * rows);
    return XDS_OK;
}

static xds_status gguf_parse(xds_gguf *g) {
    cursor c = {g->base, g->size, 0, g->path, ""};
    const uint8_t *magic;
    if (g->size < 4 || memcmp(g->base, GGUF_MAGIC, 4)) {
        if (g->size < 4)
            return xds_err_set(XDS_ERR_FORMAT, "%s: not a GGUF file (only %zu bytes)", g->path,
                               g->size);
        return xds_err_set(XDS_ERR_FORMAT,
                           "%s: not a GGUF file (magic %02x %02x %02x %02x, expected \"GGUF\")",
                           g->path, g->base[0], g->base[1], g->base[2], g->base[3]);
    }
    XDS_TRY(cur_bytes(&c, 4, "magic", &magic));
    XDS_TRY(cur_u32(&c, "version", &g->version));
    if (g->version == 1)
        return xds_err_set(XDS_ERR_UNSUPPORTED,
                           "%s: GGUF version 1 is not supported (only versions 2 and 3)", g->path);
    if (g->version == 0x02000000u || g->version == 0x03000000u)
        return xds_err_set(XDS_ERR_UNSUPPORTED, "%s: big-endian GGUF files are not supported",
                           g->path);
    if (g->version != 2 && g->version != 3)
        return xds_err_set(XDS_ERR_UNSUPPORTED,
                           "%s: GGUF version %u is not supported (only versions 2 and 3)", g->path,
                           g->version);
    uint64_t n_tensors, n_kv;
    XDS_TRY(cur_u64(&c, "tensor count", &n_tensors));
    XDS_TRY(cur_u64(&c, "metadata count", &n_kv));
    /* Smallest kv: u64 key length + u32 type + 1-byte value = 13 bytes; smallest
     * tensor info: u64 name length + u32 n_dims + u64 dim + u32 type + u64 offset = 32. */
    if (n_kv > cur_left(&c) / 13)
        return xds_err_set(XDS_ERR_FORMAT,
                           "%s: metadata count %llu cannot fit in the %zu bytes left in the file",
                           g->path, (unsigned long long)n_kv, cur_left(&c));
    if (n_tensors > cur_left(&c) / 32)
        return xds_err_set(XDS_ERR_FORMAT,
                           "%s: tensor count %llu cannot fit in the %zu bytes left in the file",
                           g->path, (unsigned long long)n_tensors, cur_left(&c));

    /* Metadata. */
    if (n_kv) {
        g->kv = calloc((size_t)n_kv, sizeof *g->kv);
        g->kv_sorted = malloc((size_t)n_kv * sizeof *g->kv_sorted);
        if (!g->kv || !g->kv_sorted)
            return xds_err_set(XDS_ERR_NOMEM, "%s: out of memory", g->path);
    }
    for (uint64_t i = 0; i < n_kv; i++) {
        g->n_kv = (int64_t)i + 1; /* so close() frees what was allocated */
        snprintf(c.ctx, sizeof c.ctx, "metadata entry #%llu", (unsigned long long)i);
        XDS_TRY(parse_kv(g, &c, &g->kv[i]));
        g->kv_sorted[i] = &g->kv[i];
    }
    g->n_kv = (int64_t)n_kv;
    if (n_kv) qsort(g->kv_sorted, (size_t)n_kv, sizeof *g->kv_sorted, cmp_kv);
    for (uint64_t i = 1; i < n_kv; i++)
        if (!strcmp(g->kv_sorted[i - 1]->key, g->kv_sorted[i]->key))
            return xds_err_set(XDS_ERR_FORMAT, "%s: duplicate metadata key '%.200s'", g->path,
                               g->kv_sorted[i]->key);

    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    int64_t ai = xds_gguf_find_kv(g, "general.alignment");
    if (ai >= 0) {
        uint64_t a;
        if (kv_to_u64(g, &g->kv[ai], &a) != XDS_OK)
            return xds_err_set(XDS_ERR_FORMAT,
                               "%s: key 'general.alignment': expected an unsigned integer, got %s",
                               g->path, xds_gguf_type_name(g->kv[ai].type));
        if (!is_pow2(a) || a > (1u << 30))
            return xds_err_set(XDS_ERR_FORMAT,
                               "%s: key 'general.alignment': %llu is not a power of two in "
                               "1..2^30",
                               g->path, (unsigned long long)a);
        g->alignment = (uint32_t)a;
    }

    /* Tensor infos. */
    uint64_t *offsets = NULL;
    if (n_tensors) {
        g->tensors = calloc((size_t)n_tensors, sizeof *g->tensors);
        g->t_sorted = malloc((size_t)n_tensors * sizeof *g->t_sorted);
        offsets = malloc((size_t)n_tensors * sizeof *offsets);
        if (!g->tensors || !g->t_sorted || !offsets) {
            free(offsets);
            return xds_err_set(XDS_ERR_NOMEM, "%s: out of memory", g->path);
        }
    }
    xds_status st = XDS_OK;
    for (uint64_t i = 0; i < n_tensors && st == XDS_OK; i++) {
        g->n_tensors = (int64_t)i + 1;
        uint32_t type_id;
        snprintf(c.ctx, sizeof c.ctx, "tensor info #%llu", (unsigned long long)i);
        st = parse_tensor_info(g, &c, &g->tensors[i], &offsets[i], &type_id);
        g->t_sorted[i] = &g->tensors[i];
    }
    if (st != XDS_OK) {
        free(offsets);
        return st;
    }
    g->n_tensors = (int64_t)n_tensors;
    if (n_tensors) qsort(g->t_sorted, (size_t)n_tensors, sizeof *g->t_sorted, cmp_tensor);
    for (uint64_t i = 1; i < n_tensors; i++)
        if (!strcmp(g->t_sorted[i - 1]->name, g->t_sorted[i]->name)) {
            free(offsets);
            return xds_err_set(XDS_ERR_FORMAT, "%s: duplicate tensor name '%.200s'", g->path,
                               g->t_sorted[i]->name);
        }

    /* Data section: starts at the next multiple of the alignment. A file with
     * no tensors may end without the padding. */
    size_t pad = (g->alignment - c.pos % g->alignment) % g->alignment;
    g->data_start = c.pos + pad;
    if (n_tensors && pad > cur_left(&c)) {
        free(offsets);
        return xds_err_set(XDS_ERR_FORMAT,
                           "%s: truncated: tensor data section would start at offset %zu, past "
                           "the end of the file (size %zu)",
                           g->path, g->data_start, g->size);
    }
    if (!n_tensors && g->data_start > g->size) g->data_start = g->size;
    size_t data_size = n_tensors ? g->size - g->data_start : 0;
    for (uint64_t i = 0; i < n_tensors; i++) {
        xds_tensor *t = &g->tensors[i];
        uint64_t off = offsets[i];
        if (off % g->alignment) {
            st = xds_err_set(XDS_ERR_FORMAT,
                             "%s: tensor '%.200s': data offset %llu is not a multiple of the "
                             "alignment %u",
                             g->path, t->name, (unsigned long long)off, g->alignment);
            break;
        }
        if (off > data_size || t->nbytes > data_size - off) {
            unsigned long long b = (unsigned long long)g->data_start + off;
            unsigned long long e = b + t->nbytes;
            if (b < off || e < b) /* wrapped around 2^64 */
                st = xds_err_set(
                    XDS_ERR_FORMAT,
                    "%s: tensor '%.200s': data offset %llu (+%zu bytes) past end of file "
                    "(size %zu)",
                    g->path, t->name, (unsigned long long)off, t->nbytes, g->size);
            else
                st = xds_err_set(
                    XDS_ERR_FORMAT,
                    "%s: tensor '%.200s': data [%llu, %llu) past end of file (size %zu)", g->path,
                    t->name, b, e, g->size);
            break;
        }
        t->data = g->base + g->data_start + off;
    }
    free(offsets);
    return st;
}

/* ------------------------------------------------------------------------- */
/* Open / close */

static xds_status gguf_new(const char *name, xds_gguf **out) {
    xds_gguf *g = calloc(1, sizeof *g);
    if (!g || !(g->path = strdup(name))) {
        free(g);
        return xds_err_set(XDS_ERR_NOMEM, "%s: out of memory", name);
    }
    *out = g;
    return XDS_OK;
}

xds_status xds_gguf_open_memory(const void *data, size_t size, const char *name, xds_gguf **out) {
    xds_gguf *g;
    XDS_TRY(gguf_new(name, &g));
    g->base = data;
    g->size = size;
    xds_status st = gguf_parse(g);
    if (st != XDS_OK) {
        xds_gguf_close(g);
        return st;
    }
    *out = g;
    return XDS_OK;
}

xds_status xds_gguf_open(const char *path, xds_gguf **out) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* a FIFO must not block */
    if (fd < 0) return xds_err_set(XDS_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return xds_err_set(XDS_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return xds_err_set(XDS_ERR_IO, "%s: not a regular file", path);
    }
    size_t size = (size_t)sb.st_size;
    if (size < 4) {
        close(fd);
        return xds_err_set(XDS_ERR_FORMAT, "%s: not a GGUF file (only %zu bytes)", path, size);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED) return xds_err_set(XDS_ERR_IO, "%s: cannot mmap: %s", path, strerror(e));
    xds_gguf *g;
    xds_status st = gguf_new(path, &g);
    if (st != XDS_OK) {
        munmap(map, size);
        return st;
    }
    g->base = map;
    g->size = size;
    g->mapped = 1;
    st = gguf_parse(g);
    if (st != XDS_OK) {
        xds_gguf_close(g);
        return st;
    }
    *out = g;
    return XDS_OK;
}

void xds_gguf_close(xds_gguf *g) {
    if (!g) return;
    for (int64_t i = 0; i < g->n_kv; i++) {
        free(g->kv[i].key);
        free(g->kv[i].strs);
    }
    free(g->kv);
    free(g->kv_sorted);
    for (int64_t i = 0; i < g->n_tensors; i++) free((char *)g->tensors[i].name);
    free(g->tensors);
    free(g->t_sorted);
    if (g->mapped) munmap((void *)g->base, g->size);
    free(g->path);
    free(g);
}

/* ------------------------------------------------------------------------- */
/* Accessors */

const char *xds_gguf_path(const xds_gguf *g) { return g->path; }
uint32_t xds_gguf_version(const xds_gguf *g) { return g->version; }
size_t xds_gguf_file_size(const xds_gguf *g) { return g->size; }
uint32_t xds_gguf_alignment(const xds_gguf *g) { return g->alignment; }
size_t xds_gguf_data_offset(const xds_gguf *g) { return g->data_start; }
int64_t xds_gguf_n_kv(const xds_gguf *g) { return g->n_kv; }

const char *xds_gguf_kv_key(const xds_gguf *g, int64_t i) {
    return i >= 0 && i < g->n_kv ? g->kv[i].key : NULL;
}

xds_gguf_type xds_gguf_kv_type(const xds_gguf *g, int64_t i) {
    XDS_ASSERT(i >= 0 && i < g->n_kv);
    return g->kv[i].type;
}

int64_t xds_gguf_find_kv(const xds_gguf *g, const char *key) {
    int64_t lo = 0, hi = g->n_kv - 1;
    while (lo <= hi) {
        int64_t mid = lo + (hi - lo) / 2;
        int c = strcmp(g->kv_sorted[mid]->key, key);
        if (!c) return g->kv_sorted[mid] - g->kv;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -1;
}

xds_status xds_gguf_kv_arr(const xds_gguf *g, int64_t i, xds_gguf_type *elem_type, uint64_t *n) {
    if (i < 0 || i >= g->n_kv)
        return xds_err_set(XDS_ERR_INVALID, "%s: metadata index %lld out of range", g->path,
                           (long long)i);
    const gguf_kv *kv = &g->kv[i];
    if (kv->type != XDS_GGUF_ARRAY)
        return xds_err_set(XDS_ERR_FORMAT, "%s: key '%.200s': expected an array, got %s", g->path,
                           kv->key, xds_gguf_type_name(kv->type));
    *elem_type = kv->elem;
    *n = kv->n;
    return XDS_OK;
}

static xds_status lookup(const xds_gguf *g, const char *key, const gguf_kv **kv) {
    int64_t i = xds_gguf_find_kv(g, key);
    if (i < 0) return xds_err_set(XDS_ERR_NOT_FOUND, "%s: key '%.200s' not found", g->path, key);
    *kv = &g->kv[i];
    return XDS_OK;
}

static xds_status wrong_type(const xds_gguf *g, const gguf_kv *kv, const char *want) {
    return xds_err_set(XDS_ERR_FORMAT, "%s: key '%.200s': expected %s, got %s", g->path, kv->key,
                       want, xds_gguf_type_name(kv->type));
}

/* Integer value as sign + magnitude; 0 if not an integer type. */
static int kv_int(const gguf_kv *kv, int *neg, uint64_t *mag) {
    const uint8_t *p = kv->data;
    int64_t s;
    *neg = 0;
    switch (kv->type) {
    case XDS_GGUF_UINT8:
        *mag = p[0];
        return 1;
    case XDS_GGUF_UINT16:
        *mag = (uint64_t)p[0] | (uint64_t)p[1] << 8;
        return 1;
    case XDS_GGUF_UINT32:
        *mag = (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24;
        return 1;
    case XDS_GGUF_UINT64:
        *mag = rd_u64(p);
        return 1;
    case XDS_GGUF_INT8:
        s = (int8_t)p[0];
        break;
    case XDS_GGUF_INT16:
        s = (int16_t)((uint16_t)p[0] | (uint16_t)p[1] << 8);
        break;
    case XDS_GGUF_INT32:
        s = (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                      (uint32_t)p[3] << 24);
        break;
    case XDS_GGUF_INT64:
        s = (int64_t)rd_u64(p);
        break;
    default:
        return 0;
    }
    *neg = s < 0;
    *mag = s < 0 ? (uint64_t)0 - (uint64_t)s : (uint64_t)s;
    return 1;
}

static xds_status kv_to_u64(const xds_gguf *g, const gguf_kv *kv, uint64_t *out) {
    int neg;
    uint64_t mag;
    if (!kv_int(kv, &neg, &mag)) return wrong_type(g, kv, "an integer");
    if (neg)
        return xds_err_set(XDS_ERR_FORMAT, "%s: key '%.200s': negative value -%llu", g->path,
                           kv->key, (unsigned long long)mag);
    *out = mag;
    return XDS_OK;
}

xds_status xds_gguf_get_u64(const xds_gguf *g, const char *key, uint64_t *out) {
    const gguf_kv *kv = NULL;
    XDS_TRY(lookup(g, key, &kv));
    return kv_to_u64(g, kv, out);
}

xds_status xds_gguf_get_u32(const xds_gguf *g, const char *key, uint32_t *out) {
    const gguf_kv *kv = NULL;
    uint64_t v;
    XDS_TRY(lookup(g, key, &kv));
    XDS_TRY(kv_to_u64(g, kv, &v));
    if (v > UINT32_MAX)
        return xds_err_set(XDS_ERR_FORMAT, "%s: key '%.200s': value %llu does not fit in 32 bits",
                           g->path, key, (unsigned long long)v);
    *out = (uint32_t)v;
    return XDS_OK;
}

xds_status xds_gguf_get_i64(const xds_gguf *g, const char *key, int64_t *out) {
    const gguf_kv *kv = NULL;
    int neg;
    uint64_t mag;
    XDS_TRY(lookup(g, key, &kv));
    if (!kv_int(kv, &neg, &mag)) return wrong_type(g, kv, "an integer");
    if (mag > (uint64_t)INT64_MAX + (uint64_t)neg)
        return xds_err_set(XDS_ERR_FORMAT, "%s: key '%.200s': value out of int64 range", g->path,
                           key);
    *out = neg ? (int64_t)(0 - mag) : (int64_t)mag;
    return XDS_OK;
}

xds_status xds_gguf_get_f64(const xds_gguf *g, const char *key, double *out) {
    const gguf_kv *kv = NULL;
    int neg;
    uint64_t mag;
    XDS_TRY(lookup(g, key, &kv));
    if (kv->type == XDS_GGUF_FLOAT32) {
        float f;
        uint32_t u = (uint32_t)kv->data[0] | (uint32_t)kv->data[1] << 8 |
                     (uint32_t)kv->data[2] << 16 | (uint32_t)kv->data[3] << 24;
        memcpy(&f, &u, 4);
        *out = f;
        return XDS_OK;
    }
    if (kv->type == XDS_GGUF_FLOAT64) {
        uint64_t u = rd_u64(kv->data);
        memcpy(out, &u, 8);
        return XDS_OK;
    }
    if (!kv_int(kv, &neg, &mag)) return wrong_type(g, kv, "a number");
    *out = neg ? -(double)mag : (double)mag;
    return XDS_OK;
}

xds_status xds_gguf_get_f32(const xds_gguf *g, const char *key, float *out) {
    double d;
    XDS_TRY(xds_gguf_get_f64(g, key, &d));
    *out = (float)d;
    return XDS_OK;
}

xds_status xds_gguf_get_bool(const xds_gguf *g, const char *key, int *out) {
    const gguf_kv *kv = NULL;
    XDS_TRY(lookup(g, key, &kv));
    if (kv->type != XDS_GGUF_BOOL) return wrong_type(g, kv, "bool");
    *out = kv->data[0] != 0;
    return XDS_OK;
}

xds_status xds_gguf_get_str(const xds_gguf *g, const char *key, const char **s, uint64_t *len) {
    const gguf_kv *kv = NULL;
    XDS_TRY(lookup(g, key, &kv));
    if (kv->type != XDS_GGUF_STRING) return wrong_type(g, kv, "string");
    *s = (const char *)kv->data;
    *len = kv->n;
    return XDS_OK;
}

xds_status xds_gguf_get_arr(const xds_gguf *g, const char *key, xds_gguf_type *elem_type,
                            uint64_t *n, const void **data) {
    const gguf_kv *kv = NULL;
    XDS_TRY(lookup(g, key, &kv));
    if (kv->type != XDS_GGUF_ARRAY) return wrong_type(g, kv, "array");
    *elem_type = kv->elem;
    *n = kv->n;
    *data = kv->data;
    return XDS_OK;
}

xds_status xds_gguf_get_arr_str(const xds_gguf *g, const char *key, uint64_t i, const char **s,
                                uint64_t *len) {
    const gguf_kv *kv = NULL;
    XDS_TRY(lookup(g, key, &kv));
    if (kv->type != XDS_GGUF_ARRAY || kv->elem != XDS_GGUF_STRING)
        return wrong_type(g, kv, "array of strings");
    if (i >= kv->n)
        return xds_err_set(XDS_ERR_INVALID,
                           "%s: key '%.200s': index %llu out of range (%llu strings)", g->path, key,
                           (unsigned long long)i, (unsigned long long)kv->n);
    *len = rd_u64(kv->strs[i]);
    *s = (const char *)kv->strs[i] + 8;
    return XDS_OK;
}

int64_t xds_gguf_n_tensors(const xds_gguf *g) { return g->n_tensors; }

const xds_tensor *xds_gguf_tensor(const xds_gguf *g, int64_t i) {
    return i >= 0 && i < g->n_tensors ? &g->tensors[i] : NULL;
}

const xds_tensor *xds_gguf_find_tensor(const xds_gguf *g, const char *name) {
    int64_t lo = 0, hi = g->n_tensors - 1;
    while (lo <= hi) {
        int64_t mid = lo + (hi - lo) / 2;
        int c = strcmp(g->t_sorted[mid]->name, name);
        if (!c) return g->t_sorted[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return NULL;
}
