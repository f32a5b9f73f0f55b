/*
 * gguf_writer.c — see gguf_writer.h. Layout written: magic "GGUF", version 3,
 * tensor count, kv count, the kv pairs, the tensor infos (name, dims, ggml
 * type id, offset), padding to 32, then each tensor's data padded to 32.
 * Fill callbacks get chunks of whole blocks of the tensor's type.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/gguf_writer.h"

#define ALIGN 32

typedef struct {
    char *name;
    xds_dtype type;
    int n_dims;
    int64_t ne[4];
    const void *src;
    size_t nbytes_src;
    int repeat;
    xds_gguf_fill_fn fill;
    void *fill_user;
    size_t nbytes, offset;
} wtensor;

struct xds_gguf_writer {
    uint8_t *kv;
    size_t kv_len, kv_cap;
    uint64_t n_kv;
    wtensor *t;
    int n_t, cap_t;
};

static uint32_t ggml_id(xds_dtype t) {
    switch (t) {
    case XDS_DTYPE_F32: return 0;
    case XDS_DTYPE_F16: return 1;
    case XDS_DTYPE_Q4_0: return 2;
    case XDS_DTYPE_Q4_1: return 3;
    case XDS_DTYPE_Q8_0: return 8;
    case XDS_DTYPE_Q4_K: return 12;
    case XDS_DTYPE_Q6_K: return 14;
    case XDS_DTYPE_BF16: return 30;
    default: return 0xffffffffu;
    }
}

xds_status xds_gguf_writer_create(xds_gguf_writer **out) {
    xds_gguf_writer *w = calloc(1, sizeof *w);
    if (!w) return xds_err_set(XDS_ERR_NOMEM, "gguf writer: out of memory");
    *out = w;
    return XDS_OK;
}

void xds_gguf_writer_free(xds_gguf_writer *w) {
    if (!w) return;
    for (int i = 0; i < w->n_t; i++) free(w->t[i].name);
    free(w->t);
    free(w->kv);
    free(w);
}

static xds_status put(xds_gguf_writer *w, const void *p, size_t n) {
    if (w->kv_len + n > w->kv_cap) {
        size_t cap = w->kv_cap ? w->kv_cap * 2 : 4096;
        while (cap < w->kv_len + n) cap *= 2;
        uint8_t *nk = realloc(w->kv, cap);
        if (!nk) return xds_err_set(XDS_ERR_NOMEM, "gguf writer: out of memory");
        w->kv = nk;
        w->kv_cap = cap;
    }
    memcpy(w->kv + w->kv_len, p, n);
    w->kv_len += n;
    return XDS_OK;
}

static xds_status put_str(xds_gguf_writer *w, const char *s) {
    uint64_t n = strlen(s);
    XDS_TRY(put(w, &n, 8));
    return put(w, s, n);
}

xds_status xds_gguf_writer_kv_raw(xds_gguf_writer *w, const void *bytes, size_t n) {
    XDS_TRY(put(w, bytes, n));
    w->n_kv++;
    return XDS_OK;
}

xds_status xds_gguf_writer_kv_u32(xds_gguf_writer *w, const char *key, uint32_t v) {
    uint32_t ty = 4;
    XDS_TRY(put_str(w, key));
    XDS_TRY(put(w, &ty, 4));
    XDS_TRY(put(w, &v, 4));
    w->n_kv++;
    return XDS_OK;
}

xds_status xds_gguf_writer_kv_f32(xds_gguf_writer *w, const char *key, float v) {
    uint32_t ty = 6;
    XDS_TRY(put_str(w, key));
    XDS_TRY(put(w, &ty, 4));
    XDS_TRY(put(w, &v, 4));
    w->n_kv++;
    return XDS_OK;
}

xds_status xds_gguf_writer_kv_bool(xds_gguf_writer *w, const char *key, int v) {
    uint32_t ty = 7;
    uint8_t b = v != 0;
    XDS_TRY(put_str(w, key));
    XDS_TRY(put(w, &ty, 4));
    XDS_TRY(put(w, &b, 1));
    w->n_kv++;
    return XDS_OK;
}

xds_status xds_gguf_writer_kv_str(xds_gguf_writer *w, const char *key, const char *v) {
    uint32_t ty = 8;
    XDS_TRY(put_str(w, key));
    XDS_TRY(put(w, &ty, 4));
    XDS_TRY(put_str(w, v));
    w->n_kv++;
    return XDS_OK;
}

xds_status xds_gguf_writer_tensor(xds_gguf_writer *w, const char *name, xds_dtype type, int n_dims,
                                  const int64_t *ne, const void *src, size_t nbytes_src, int repeat,
                                  xds_gguf_fill_fn fill, void *fill_user) {
    if (ggml_id(type) == 0xffffffffu || n_dims < 1 || n_dims > 4 || (!src && !fill) || repeat < 1)
        return xds_err_set(XDS_ERR_INVALID, "gguf writer: tensor %s: bad arguments", name);
    int64_t rows = 1;
    for (int i = 1; i < n_dims; i++) rows *= ne[i];
    size_t nbytes = xds_dtype_row_bytes(type, ne[0]) * (size_t)rows;
    if (nbytes == 0) return xds_err_set(XDS_ERR_INVALID, "gguf writer: tensor %s: row not whole blocks", name);
    if (src && nbytes_src * (size_t)repeat != nbytes)
        return xds_err_set(XDS_ERR_INVALID, "gguf writer: tensor %s: %zu source bytes x %d != %zu", name, nbytes_src,
                           repeat, nbytes);
    if (w->n_t == w->cap_t) {
        int cap = w->cap_t ? w->cap_t * 2 : 64;
        wtensor *nt = realloc(w->t, sizeof *nt * cap);
        if (!nt) return xds_err_set(XDS_ERR_NOMEM, "gguf writer: out of memory");
        w->t = nt;
        w->cap_t = cap;
    }
    wtensor *t = &w->t[w->n_t];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    if (!t->name) return xds_err_set(XDS_ERR_NOMEM, "gguf writer: out of memory");
    t->type = type;
    t->n_dims = n_dims;
    for (int i = 0; i < 4; i++) t->ne[i] = i < n_dims ? ne[i] : 1;
    t->src = src;
    t->nbytes_src = nbytes_src;
    t->repeat = repeat;
    t->fill = fill;
    t->fill_user = fill_user;
    t->nbytes = nbytes;
    w->n_t++;
    return XDS_OK;
}

static int pad(FILE *f, size_t at) {
    static const uint8_t z[ALIGN];
    size_t p = (ALIGN - at % ALIGN) % ALIGN;
    return p ? fwrite(z, 1, p, f) == p : 1;
}

xds_status xds_gguf_writer_write(xds_gguf_writer *w, const char *path) {
    FILE *f = fopen(path, "wb");
    if (!f) return xds_err_set(XDS_ERR_IO, "gguf writer: cannot create %s: %s", path, strerror(errno));
    int ok = 1;
    uint32_t ver = 3;
    uint64_t nt = w->n_t;
    size_t at = 0;
#define W(p, n) (ok = ok && fwrite((p), 1, (n), f) == (size_t)(n), at += (n))
    W("GGUF", 4);
    W(&ver, 4);
    W(&nt, 8);
    W(&w->n_kv, 8);
    W(w->kv, w->kv_len);
    size_t off = 0;
    for (int i = 0; i < w->n_t; i++) {
        wtensor *t = &w->t[i];
        t->offset = off;
        off += (t->nbytes + ALIGN - 1) / ALIGN * ALIGN;
        uint64_t nl = strlen(t->name);
        uint32_t nd = t->n_dims, ty = ggml_id(t->type);
        W(&nl, 8);
        W(t->name, nl);
        W(&nd, 4);
        for (int d = 0; d < t->n_dims; d++) {
            uint64_t v = (uint64_t)t->ne[d];
            W(&v, 8);
        }
        W(&ty, 4);
        uint64_t o = t->offset;
        W(&o, 8);
    }
    ok = ok && pad(f, at);
    size_t chunk = 4 << 20;
    uint8_t *buf = NULL;
    for (int i = 0; ok && i < w->n_t; i++) {
        wtensor *t = &w->t[i];
        if (t->src) {
            for (int r = 0; ok && r < t->repeat; r++) ok = fwrite(t->src, 1, t->nbytes_src, f) == t->nbytes_src;
        } else {
            if (!buf && !(buf = malloc(chunk))) ok = 0;
            size_t bb = (size_t)xds_dtype_info(t->type)->block_bytes, ch = chunk / bb * bb; /* whole blocks */
            for (size_t o = 0; ok && o < t->nbytes; o += ch) {
                size_t n = t->nbytes - o < ch ? t->nbytes - o : ch;
                t->fill(t->fill_user, buf, o, n);
                ok = fwrite(buf, 1, n, f) == n;
            }
        }
        ok = ok && pad(f, t->nbytes);
    }
#undef W
    free(buf);
    if (fclose(f) != 0) ok = 0;
    if (!ok) {
        remove(path);
        return xds_err_set(XDS_ERR_IO, "gguf writer: writing %s failed: %s", path, strerror(errno));
    }
    return XDS_OK;
}
