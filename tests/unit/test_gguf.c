/*
 * test_gguf.c — the GGUF reader: a small v3 file written here (metadata of
 * every type, string arrays, F32/F16/Q8_0/Q4_1 tensors with known values) is
 * read back through the file and the in-memory entry points and every value
 * checked; then one test per class of bad input (bad magic, bad version, every
 * truncation length, offsets past the end, absurd counts, unknown tensor
 * type, bad alignment, shape overflow, duplicates, nested arrays); then the
 * real model when XDS_TEST_MODEL is set.
 */
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "format/gguf.h"
#include "format/weights.h"
#include "test.h"

/* ------------------------------------------------------------------------- */
/* A tiny GGUF writer */

typedef struct buf {
    uint8_t *p;
    size_t n, cap;
} buf;

static void put(buf *b, const void *src, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}
static void put_u8(buf *b, uint8_t v) { put(b, &v, 1); }
static void put_u16(buf *b, uint16_t v) {
    uint8_t x[2] = {v, v >> 8};
    put(b, x, 2);
}
static void put_u32(buf *b, uint32_t v) {
    uint8_t x[4] = {v, v >> 8, v >> 16, v >> 24};
    put(b, x, 4);
}
static void put_u64(buf *b, uint64_t v) {
    for (int i = 0; i < 8; i++) put_u8(b, (uint8_t)(v >> (8 * i)));
}
static void put_f32(buf *b, float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    put_u32(b, u);
}
static void put_f64(buf *b, double f) {
    uint64_t u;
    memcpy(&u, &f, 8);
    put_u64(b, u);
}
static void put_str(buf *b, const char *s) {
    put_u64(b, strlen(s));
    put(b, s, strlen(s));
}
static void pad_to(buf *b, size_t align) {
    while (b->n % align) put_u8(b, 0);
}

static void hdr(buf *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    put(b, "GGUF", 4);
    put_u32(b, version);
    put_u64(b, n_tensors);
    put_u64(b, n_kv);
}
static void kv_head(buf *b, const char *key, uint32_t type) {
    put_str(b, key);
    put_u32(b, type);
}
static void kv_u32(buf *b, const char *key, uint32_t v) {
    kv_head(b, key, XDS_GGUF_UINT32);
    put_u32(b, v);
}
static void kv_str(buf *b, const char *key, const char *v) {
    kv_head(b, key, XDS_GGUF_STRING);
    put_str(b, v);
}
static void tinfo(buf *b, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type,
                  uint64_t off) {
    put_str(b, name);
    put_u32(b, n_dims);
    for (uint32_t i = 0; i < n_dims; i++) put_u64(b, ne[i]);
    put_u32(b, type);
    put_u64(b, off);
}

static char tmpdir[256];

static char *write_file(const char *name, const void *p, size_t n) {
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(1);
    }
    if (n) fwrite(p, 1, n, f);
    fclose(f);
    return path;
}

/* Open an image from an exactly-sized heap copy (so ASan sees any overread). */
static xds_status open_mem(const buf *b, size_t n, xds_gguf **g, void **copy) {
    *copy = malloc(n ? n : 1);
    memcpy(*copy, b->p, n);
    return xds_gguf_open_memory(*copy, n, "mem.gguf", g);
}

/* ------------------------------------------------------------------------- */
/* The valid file */

enum { GGML_F32 = 0, GGML_F16 = 1, GGML_Q4_0 = 2, GGML_Q4_1 = 3, GGML_Q8_0 = 8 };

#define N_KV 17
/* Tensor payloads (known values). */
static float t_f32[3][4];       /* ne = [4, 3] */
static xds_f16 t_f16[8];        /* ne = [8] */
static xds_block_q8_0 t_q8[2];  /* ne = [32, 2] */
static xds_block_q4_1 t_q41[2]; /* ne = [64]    */

static void make_payloads(void) {
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 4; c++) t_f32[r][c] = (float)(r * 4 + c) * 0.5f - 1.0f;
    for (int i = 0; i < 8; i++) t_f16[i] = xds_f32_to_f16((float)i * 0.25f - 0.75f);
    for (int b = 0; b < 2; b++) {
        t_q8[b].d = xds_f32_to_f16(0.5f + b);
        for (int j = 0; j < 32; j++) t_q8[b].qs[j] = (int8_t)(j - 16 + b);
        t_q41[b].d = xds_f32_to_f16(0.25f * (b + 1));
        t_q41[b].m = xds_f32_to_f16(-1.0f - b);
        for (int j = 0; j < 16; j++) t_q41[b].qs[j] = (uint8_t)((j & 15) | (((15 - j) & 15) << 4));
    }
}

/* Writes the valid file into b. alignment 0 = no general.alignment key. */
static void make_valid_v(buf *b, uint32_t alignment, uint32_t version) {
    int n_kv = N_KV + (alignment ? 1 : 0);
    hdr(b, version, 4, (uint64_t)n_kv);
    kv_str(b, "general.architecture", "llama");
    kv_head(b, "t.u8", XDS_GGUF_UINT8);
    put_u8(b, 200);
    kv_head(b, "t.i8", XDS_GGUF_INT8);
    put_u8(b, (uint8_t)-100);
    kv_head(b, "t.u16", XDS_GGUF_UINT16);
    put_u16(b, 60000);
    kv_head(b, "t.i16", XDS_GGUF_INT16);
    put_u16(b, (uint16_t)-30000);
    kv_u32(b, "llama.block_count", 30);
    kv_head(b, "t.i32", XDS_GGUF_INT32);
    put_u32(b, (uint32_t)-2000000000);
    kv_head(b, "t.f32", XDS_GGUF_FLOAT32);
    put_f32(b, 1e-5f);
    kv_head(b, "t.bool", XDS_GGUF_BOOL);
    put_u8(b, 1);
    kv_head(b, "t.u64", XDS_GGUF_UINT64);
    put_u64(b, 0xfedcba9876543210ull);
    kv_head(b, "t.i64", XDS_GGUF_INT64);
    put_u64(b, (uint64_t)-5);
    kv_head(b, "t.f64", XDS_GGUF_FLOAT64);
    put_f64(b, 3.141592653589793);
    kv_head(b, "t.strs", XDS_GGUF_ARRAY);
    put_u32(b, XDS_GGUF_STRING);
    put_u64(b, 3);
    put_str(b, "a");
    put_str(b, "bc");
    put_str(b, "");
    kv_head(b, "t.i32s", XDS_GGUF_ARRAY);
    put_u32(b, XDS_GGUF_INT32);
    put_u64(b, 3);
    put_u32(b, 1);
    put_u32(b, (uint32_t)-2);
    put_u32(b, 3);
    kv_head(b, "t.empty", XDS_GGUF_ARRAY);
    put_u32(b, XDS_GGUF_FLOAT32);
    put_u64(b, 0);
    kv_str(b, "t.emptystr", "");
    kv_str(b, "t.utf8", "h\xc3\xa9llo");
    if (alignment) kv_u32(b, "general.alignment", alignment);
    uint32_t al = alignment ? alignment : 32;
    /* Data layout: each tensor at the next multiple of the alignment. */
    size_t sz[4] = {sizeof t_f32, sizeof t_f16, sizeof t_q8, sizeof t_q41}, off[4], o = 0;
    for (int i = 0; i < 4; i++) {
        off[i] = o;
        o = (o + sz[i] + al - 1) / al * al;
    }
    tinfo(b, "w.f32", 2, (uint64_t[]){4, 3}, GGML_F32, off[0]);
    tinfo(b, "w.f16", 1, (uint64_t[]){8}, GGML_F16, off[1]);
    tinfo(b, "w.q8_0", 2, (uint64_t[]){32, 2}, GGML_Q8_0, off[2]);
    tinfo(b, "w.q4_1", 1, (uint64_t[]){64}, GGML_Q4_1, off[3]);
    pad_to(b, al);
    size_t base = b->n;
    const void *src[4] = {t_f32, t_f16, t_q8, t_q41};
    for (int i = 0; i < 4; i++) {
        while (b->n < base + off[i]) put_u8(b, 0xAA);
        put(b, src[i], sz[i]); /* the last tensor ends exactly at end of file */
    }
}

static void make_valid(buf *b, uint32_t alignment) { make_valid_v(b, alignment, 3); }

static void check_valid(xds_gguf *g, uint32_t alignment, uint32_t version) {
    CHECK(xds_gguf_version(g) == version);
    CHECK(xds_gguf_alignment(g) == (alignment ? alignment : 32));
    CHECK(xds_gguf_data_offset(g) % xds_gguf_alignment(g) == 0);
    CHECK(xds_gguf_n_kv(g) == N_KV + (alignment ? 1 : 0));
    CHECK(!strcmp(xds_gguf_kv_key(g, 0), "general.architecture"));
    CHECK(xds_gguf_kv_type(g, 0) == XDS_GGUF_STRING);
    CHECK(xds_gguf_find_kv(g, "t.u16") == 3);
    CHECK(xds_gguf_find_kv(g, "nope") == -1);

    const char *s;
    uint64_t len, u64;
    uint32_t u32;
    int64_t i64;
    double f64;
    float f32;
    int bl;
    CHECK(xds_gguf_get_str(g, "general.architecture", &s, &len) == XDS_OK && len == 5 &&
          !memcmp(s, "llama", 5));
    CHECK(xds_gguf_get_u32(g, "t.u8", &u32) == XDS_OK && u32 == 200);
    CHECK(xds_gguf_get_i64(g, "t.i8", &i64) == XDS_OK && i64 == -100);
    CHECK(xds_gguf_get_u32(g, "t.u16", &u32) == XDS_OK && u32 == 60000);
    CHECK(xds_gguf_get_i64(g, "t.i16", &i64) == XDS_OK && i64 == -30000);
    CHECK(xds_gguf_get_u32(g, "llama.block_count", &u32) == XDS_OK && u32 == 30);
    CHECK(xds_gguf_get_u64(g, "llama.block_count", &u64) == XDS_OK && u64 == 30);
    CHECK(xds_gguf_get_i64(g, "t.i32", &i64) == XDS_OK && i64 == -2000000000);
    CHECK(xds_gguf_get_f32(g, "t.f32", &f32) == XDS_OK && f32 == 1e-5f);
    CHECK(xds_gguf_get_bool(g, "t.bool", &bl) == XDS_OK && bl == 1);
    CHECK(xds_gguf_get_u64(g, "t.u64", &u64) == XDS_OK && u64 == 0xfedcba9876543210ull);
    CHECK(xds_gguf_get_i64(g, "t.i64", &i64) == XDS_OK && i64 == -5);
    CHECK(xds_gguf_get_f64(g, "t.f64", &f64) == XDS_OK && f64 == 3.141592653589793);
    CHECK(xds_gguf_get_f64(g, "llama.block_count", &f64) == XDS_OK && f64 == 30.0);
    CHECK(xds_gguf_get_str(g, "t.emptystr", &s, &len) == XDS_OK && len == 0);
    CHECK(xds_gguf_get_str(g, "t.utf8", &s, &len) == XDS_OK && len == 6 &&
          !memcmp(s, "h\xc3\xa9llo", 6));

    /* Conversions that must fail, with the key in the message. */
    CHECK(xds_gguf_get_u64(g, "t.i64", &u64) == XDS_ERR_FORMAT);
    CHECK(strstr(xds_err_msg(), "t.i64") != NULL);
    CHECK(xds_gguf_get_u32(g, "t.u64", &u32) == XDS_ERR_FORMAT);
    CHECK(xds_gguf_get_u32(g, "general.architecture", &u32) == XDS_ERR_FORMAT);
    CHECK(strstr(xds_err_msg(), "general.architecture") && strstr(xds_err_msg(), "string"));
    CHECK(xds_gguf_get_str(g, "t.u8", &s, &len) == XDS_ERR_FORMAT);
    CHECK(xds_gguf_get_bool(g, "t.u8", &bl) == XDS_ERR_FORMAT);
    CHECK(xds_gguf_get_f32(g, "t.strs", &f32) == XDS_ERR_FORMAT);
    CHECK(xds_gguf_get_u32(g, "missing.key", &u32) == XDS_ERR_NOT_FOUND);
    CHECK(strstr(xds_err_msg(), "missing.key") != NULL);

    /* Arrays. */
    xds_gguf_type et;
    uint64_t n;
    const void *data;
    CHECK(xds_gguf_get_arr(g, "t.strs", &et, &n, &data) == XDS_OK && et == XDS_GGUF_STRING &&
          n == 3);
    CHECK(xds_gguf_get_arr_str(g, "t.strs", 0, &s, &len) == XDS_OK && len == 1 && s[0] == 'a');
    CHECK(xds_gguf_get_arr_str(g, "t.strs", 1, &s, &len) == XDS_OK && len == 2 &&
          !memcmp(s, "bc", 2));
    CHECK(xds_gguf_get_arr_str(g, "t.strs", 2, &s, &len) == XDS_OK && len == 0);
    CHECK(xds_gguf_get_arr_str(g, "t.strs", 3, &s, &len) == XDS_ERR_INVALID);
    CHECK(xds_gguf_get_arr_str(g, "t.i32s", 0, &s, &len) == XDS_ERR_FORMAT);
    CHECK(xds_gguf_get_arr(g, "t.i32s", &et, &n, &data) == XDS_OK && et == XDS_GGUF_INT32 &&
          n == 3);
    if (et == XDS_GGUF_INT32 && n == 3) {
        int32_t v[3];
        memcpy(v, data, sizeof v);
        CHECK(v[0] == 1 && v[1] == -2 && v[2] == 3);
    }
    CHECK(xds_gguf_get_arr(g, "t.empty", &et, &n, &data) == XDS_OK && et == XDS_GGUF_FLOAT32 &&
          n == 0);
    CHECK(xds_gguf_get_arr(g, "t.u8", &et, &n, &data) == XDS_ERR_FORMAT);
    int64_t ai = xds_gguf_find_kv(g, "t.strs");
    CHECK(xds_gguf_kv_arr(g, ai, &et, &n) == XDS_OK && et == XDS_GGUF_STRING && n == 3);

    /* Tensors. */
    CHECK(xds_gguf_n_tensors(g) == 4);
    const xds_tensor *t = xds_gguf_find_tensor(g, "w.f32");
    CHECK(t && t == xds_gguf_tensor(g, 0));
    if (t) {
        CHECK(t->type == XDS_DTYPE_F32 && t->n_dims == 2 && t->ne[0] == 4 && t->ne[1] == 3 &&
              t->ne[2] == 1 && t->ne[3] == 1 && t->nbytes == 48);
        CHECK(!memcmp(t->data, t_f32, sizeof t_f32));
        float v;
        memcpy(&v, (const float *)t->data + 7, 4);
        CHECK(v == 7 * 0.5f - 1.0f);
    }
    t = xds_gguf_find_tensor(g, "w.f16");
    CHECK(t && t->type == XDS_DTYPE_F16 && t->n_dims == 1 && t->ne[0] == 8 && t->nbytes == 16);
    if (t) {
        xds_f16 h;
        memcpy(&h, (const xds_f16 *)t->data + 5, 2);
        CHECK(xds_f16_to_f32(h) == 5 * 0.25f - 0.75f);
    }
    t = xds_gguf_find_tensor(g, "w.q8_0");
    CHECK(t && t->type == XDS_DTYPE_Q8_0 && t->ne[0] == 32 && t->ne[1] == 2 && t->nbytes == 68);
    if (t) {
        xds_block_q8_0 blk;
        memcpy(&blk, (const xds_block_q8_0 *)t->data + 1, sizeof blk);
        CHECK(xds_f16_to_f32(blk.d) == 1.5f && blk.qs[0] == -15 && blk.qs[31] == 16);
        CHECK(xds_f16_to_f32(blk.d) * blk.qs[3] == 1.5f * -12);
    }
    t = xds_gguf_find_tensor(g, "w.q4_1");
    CHECK(t && t->type == XDS_DTYPE_Q4_1 && t->ne[0] == 64 && t->ne[1] == 1 && t->nbytes == 40);
    if (t) {
        xds_block_q4_1 blk;
        memcpy(&blk, (const xds_block_q4_1 *)t->data + 1, sizeof blk);
        /* element 3 = low nibble of qs[3] = 3; element 16+3 = high nibble = 12 */
        float d = xds_f16_to_f32(blk.d), m = xds_f16_to_f32(blk.m);
        CHECK(d == 0.5f && m == -2.0f);
        CHECK(d * (blk.qs[3] & 15) + m == -0.5f);
        CHECK(d * (blk.qs[3] >> 4) + m == 4.0f);
        CHECK((const uint8_t *)t->data + t->nbytes == (const uint8_t *)xds_gguf_tensor(g, 0)->data -
                                                          xds_gguf_data_offset(g) +
                                                          xds_gguf_file_size(g));
    }
    CHECK(xds_gguf_find_tensor(g, "w.none") == NULL);
    CHECK(xds_gguf_tensor(g, 4) == NULL && xds_gguf_tensor(g, -1) == NULL);
    for (int64_t i = 0; i < xds_gguf_n_tensors(g); i++) {
        const xds_tensor *ti = xds_gguf_tensor(g, i);
        CHECK(((uintptr_t)ti->data - (uintptr_t)xds_gguf_tensor(g, 0)->data) %
                  xds_gguf_alignment(g) ==
              0);
        CHECK(xds_gguf_find_tensor(g, ti->name) == ti);
    }
}

static void test_valid(void) {
    for (int k = 0; k < 4; k++) { /* default alignment, 64, 1; then version 2 */
        uint32_t al = k == 1 ? 64 : k == 2 ? 1 : 0, version = k == 3 ? 2 : 3;
        buf b = {0};
        make_valid_v(&b, al, version);
        xds_gguf *g;
        char name[32];
        snprintf(name, sizeof name, "valid%d.gguf", k);
        char *path = write_file(name, b.p, b.n);
        CHECK_MSG(xds_gguf_open(path, &g) == XDS_OK, "%s", xds_err_msg());
        if (g) {
            CHECK(!strcmp(xds_gguf_path(g), path));
            CHECK(xds_gguf_file_size(g) == b.n);
            check_valid(g, al, version);
            xds_gguf_close(g);
        }
        void *copy;
        g = NULL;
        CHECK_MSG(open_mem(&b, b.n, &g, &copy) == XDS_OK, "%s", xds_err_msg());
        if (g) {
            check_valid(g, al, version);
            xds_gguf_close(g);
        }
        free(copy);

        /* Through the format-independent handle. */
        xds_weights *w = NULL;
        CHECK_MSG(xds_weights_open(path, &w) == XDS_OK, "%s", xds_err_msg());
        if (w) {
            CHECK(xds_weights_is_gguf(w) && xds_weights_gguf(w) && !xds_weights_hfdir(w));
            CHECK(xds_weights_n_tensors(w) == 4);
            CHECK(xds_weights_find(w, "w.q8_0") == xds_weights_tensor(w, 2));
            CHECK(!strcmp(xds_weights_path(w), path));
            xds_weights_close(w);
        }
        free(b.p);
    }
}

/* ------------------------------------------------------------------------- */
/* Bad input */

/* Expect open (from a file and from memory) to fail with `want`, and the
 * message to name the file and contain `needle`. */
static void expect_fail(const char *what, const buf *b, xds_status want, const char *needle) {
    char *path = write_file("bad.gguf", b->p, b->n);
    xds_gguf *g = NULL;
    xds_status st = xds_gguf_open(path, &g);
    if (getenv("XDS_TEST_VERBOSE")) printf("%-32s %s\n", what, xds_err_msg());
    CHECK_MSG(st == want, "%s: got status %d (%s), want %d", what, st, xds_err_msg(), want);
    CHECK_MSG(g == NULL, "%s: handle written on failure", what);
    CHECK_MSG(strstr(xds_err_msg(), path) != NULL, "%s: message does not name the file: %s", what,
              xds_err_msg());
    CHECK_MSG(strstr(xds_err_msg(), needle) != NULL, "%s: message lacks '%s': %s", what, needle,
              xds_err_msg());
    CHECK_MSG(strchr(xds_err_msg(), '\n') == NULL, "%s: multi-line message", what);
    void *copy;
    st = open_mem(b, b->n, &g, &copy);
    CHECK_MSG(st == want && strstr(xds_err_msg(), "mem.gguf"), "%s (memory): %d %s", what, st,
              xds_err_msg());
    free(copy);
}

static void test_truncations(void) {
    buf b = {0};
    make_valid(&b, 0);
    int ok = 0, failed_ok = 0;
    for (size_t n = 0; n < b.n; n++) {
        xds_gguf *g = NULL;
        void *copy;
        xds_status st = open_mem(&b, n, &g, &copy);
        if (st == XDS_OK) {
            ok++;
            fprintf(stderr, "truncated to %zu of %zu bytes: accepted\n", n, b.n);
            xds_gguf_close(g);
        } else if (strstr(xds_err_msg(), "mem.gguf")) {
            failed_ok++;
        }
        free(copy);
    }
    CHECK_MSG(ok == 0, "%d truncations accepted", ok);
    CHECK_MSG(failed_ok == (int)b.n, "%d of %zu truncation errors name the file", failed_ok, b.n);
    /* Some truncation lengths through real files too (mmap path). */
    size_t cuts[] = {0, 3, 4, 7, 23, 40, 100, b.n / 2, b.n - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        buf c = {b.p, cuts[i], cuts[i]};
        char *path = write_file("trunc.gguf", c.p, c.n);
        xds_gguf *g = NULL;
        CHECK_MSG(xds_gguf_open(path, &g) == XDS_ERR_FORMAT && strstr(xds_err_msg(), path),
                  "cut %zu: %s", cuts[i], xds_err_msg());
    }
    /* The last cut leaves the last tensor one byte short: the message says so. */
    xds_gguf *g = NULL;
    void *copy;
    CHECK(open_mem(&b, b.n - 1, &g, &copy) == XDS_ERR_FORMAT);
    CHECK_MSG(strstr(xds_err_msg(), "tensor 'w.q4_1'") && strstr(xds_err_msg(), "past end of file"),
              "%s", xds_err_msg());
    free(copy);
    free(b.p);
}

static void test_bad(void) {
    buf b = {0};

    make_valid(&b, 0);
    memcpy(b.p, "GGUX", 4);
    expect_fail("bad magic", &b, XDS_ERR_FORMAT, "not a GGUF file");
    b.n = 0;

    hdr(&b, 1, 0, 0);
    expect_fail("version 1", &b, XDS_ERR_UNSUPPORTED, "version 1");
    b.n = 0;
    hdr(&b, 4, 0, 0);
    expect_fail("version 4", &b, XDS_ERR_UNSUPPORTED, "version 4");
    b.n = 0;
    hdr(&b, 0x03000000u, 0, 0);
    expect_fail("big-endian", &b, XDS_ERR_UNSUPPORTED, "big-endian");
    b.n = 0;

    /* Empty but valid: no kv, no tensors. */
    hdr(&b, 2, 0, 0);
    {
        xds_gguf *g = NULL;
        void *copy;
        CHECK_MSG(open_mem(&b, b.n, &g, &copy) == XDS_OK, "%s", xds_err_msg());
        if (g)
            CHECK(xds_gguf_n_kv(g) == 0 && xds_gguf_n_tensors(g) == 0 && xds_gguf_version(g) == 2);
        xds_gguf_close(g);
        free(copy);
    }
    b.n = 0;

    hdr(&b, 3, 0, 1ull << 60);
    kv_u32(&b, "a", 1);
    expect_fail("absurd n_kv", &b, XDS_ERR_FORMAT, "metadata count 1152921504606846976");
    b.n = 0;
    hdr(&b, 3, UINT64_MAX, 0);
    expect_fail("absurd n_tensors", &b, XDS_ERR_FORMAT, "tensor count");
    b.n = 0;
    hdr(&b, 3, 0, 1);
    put_u64(&b, 1ull << 62);
    put(&b, "key.key.key.key.", 16);
    expect_fail("absurd key length", &b, XDS_ERR_FORMAT, "length 4611686018427387904");
    b.n = 0;
    hdr(&b, 3, 0, 1);
    kv_head(&b, "s", XDS_GGUF_STRING);
    put_u64(&b, UINT64_MAX);
    put(&b, "abcd", 4);
    expect_fail("absurd string length", &b, XDS_ERR_FORMAT, "key 's'");
    b.n = 0;
    hdr(&b, 3, 0, 1);
    kv_head(&b, "arr", XDS_GGUF_ARRAY);
    put_u32(&b, XDS_GGUF_UINT64);
    put_u64(&b, 1ull << 61); /* x 8 bytes overflows 64 bits */
    put_u64(&b, 0);
    expect_fail("absurd array length", &b, XDS_ERR_FORMAT, "key 'arr'");
    b.n = 0;
    hdr(&b, 3, 0, 1);
    kv_head(&b, "sarr", XDS_GGUF_ARRAY);
    put_u32(&b, XDS_GGUF_STRING);
    put_u64(&b, 3);
    put_str(&b, "x");
    put_u64(&b, 1000);
    put(&b, "yyyyyyyyyyyyyyyyyyyy", 20);
    expect_fail("string array element past end", &b, XDS_ERR_FORMAT, "key 'sarr': string 1 of 3");
    b.n = 0;
    hdr(&b, 3, 0, 1);
    kv_head(&b, "nest", XDS_GGUF_ARRAY);
    put_u32(&b, XDS_GGUF_ARRAY);
    put_u64(&b, 1);
    put_u32(&b, XDS_GGUF_UINT8);
    put_u64(&b, 1);
    put_u8(&b, 1);
    expect_fail("nested array", &b, XDS_ERR_FORMAT, "nested");
    b.n = 0;
    hdr(&b, 3, 0, 1);
    kv_head(&b, "badtype", 13);
    put_u64(&b, 0);
    expect_fail("bad value type", &b, XDS_ERR_FORMAT, "key 'badtype': invalid value type 13");
    b.n = 0;
    hdr(&b, 3, 0, 1);
    put_u64(&b, 3);
    put(&b, "a\0b", 3);
    put_u32(&b, XDS_GGUF_UINT8);
    put_u8(&b, 0);
    expect_fail("NUL in key", &b, XDS_ERR_FORMAT, "NUL");
    b.n = 0;
    hdr(&b, 3, 0, 2);
    kv_u32(&b, "dup", 1);
    kv_u32(&b, "dup", 2);
    expect_fail("duplicate key", &b, XDS_ERR_FORMAT, "duplicate metadata key 'dup'");
    b.n = 0;

    /* Alignment. */
    const uint32_t bad_al[] = {0, 48, 3, 0x80000000u};
    for (int i = 0; i < 4; i++) {
        hdr(&b, 3, 0, 1);
        kv_u32(&b, "general.alignment", bad_al[i]);
        expect_fail("non-power-of-two alignment", &b, XDS_ERR_FORMAT, "general.alignment");
        b.n = 0;
    }
    hdr(&b, 3, 0, 1);
    kv_str(&b, "general.alignment", "32");
    expect_fail("string alignment", &b, XDS_ERR_FORMAT, "general.alignment");
    b.n = 0;

    /* Tensor infos. A helper: one tensor, data section of `data` bytes. */
#define ONE_TENSOR(name, nd, dims, type, off, data)                                                \
    do {                                                                                           \
        b.n = 0;                                                                                   \
        hdr(&b, 3, 1, 0);                                                                          \
        tinfo(&b, name, nd, (uint64_t[])dims, type, off);                                          \
        pad_to(&b, 32);                                                                            \
        for (size_t i_ = 0; i_ < (data); i_++) put_u8(&b, (uint8_t)i_);                            \
    } while (0)
#define A(...) {__VA_ARGS__}

    ONE_TENSOR("ok", 1, A(8), GGML_F32, 0, 32);
    {
        xds_gguf *g = NULL;
        void *copy;
        CHECK_MSG(open_mem(&b, b.n, &g, &copy) == XDS_OK, "one-tensor control: %s", xds_err_msg());
        xds_gguf_close(g);
        free(copy);
    }
    ONE_TENSOR("blk.3.attn_q.weight", 1, A(8), GGML_F32, 64, 32);
    expect_fail("offset past end", &b, XDS_ERR_FORMAT, "tensor 'blk.3.attn_q.weight': data [");
    CHECK(strstr(xds_err_msg(), "past end of file (size"));
    ONE_TENSOR("big", 1, A(9), GGML_F32, 0, 32);
    expect_fail("size past end", &b, XDS_ERR_FORMAT, "tensor 'big': data [");
    ONE_TENSOR("huge_off", 1, A(8), GGML_F32, UINT64_MAX - 31, 32);
    expect_fail("offset near 2^64", &b, XDS_ERR_FORMAT, "tensor 'huge_off'");
    ONE_TENSOR("mis", 1, A(8), GGML_F32, 16, 64);
    expect_fail("misaligned offset", &b, XDS_ERR_FORMAT, "not a multiple of the alignment 32");
    ONE_TENSOR("q5", 1, A(32), 6, 0, 64);
    expect_fail("unknown type", &b, XDS_ERR_UNSUPPORTED, "tensor 'q5': tensor type id 6");
    ONE_TENSOR("bad\nname", 1, A(32), 6, 0, 64);
    expect_fail("newline in a tensor name", &b, XDS_ERR_UNSUPPORTED, "tensor 'bad?name'");
    ONE_TENSOR("t999", 1, A(32), 999, 0, 64);
    expect_fail("invalid type", &b, XDS_ERR_UNSUPPORTED, "type id 999");
    ONE_TENSOR("ovf", 2, A(1ull << 32, 1ull << 32), GGML_F32, 0, 64);
    expect_fail("shape overflow", &b, XDS_ERR_FORMAT, "tensor 'ovf': shape overflows");
    ONE_TENSOR("ovf2", 4, A(1ull << 20, 1ull << 20, 1ull << 20, 1ull << 20), GGML_F32, 0, 64);
    expect_fail("shape overflow 4d", &b, XDS_ERR_FORMAT, "tensor 'ovf2': shape overflows");
    ONE_TENSOR("bytes", 2, A(1ull << 31, 1ull << 31), GGML_F32, 0, 64);
    expect_fail("byte size overflow / past end", &b, XDS_ERR_FORMAT, "tensor 'bytes'");
    ONE_TENSOR("zero", 2, A(8, 0), GGML_F32, 0, 64);
    expect_fail("zero dim", &b, XDS_ERR_FORMAT, "tensor 'zero': dimension 1 is 0");
    ONE_TENSOR("dims5", 5, A(1, 1, 1, 1, 1), GGML_F32, 0, 64);
    expect_fail("n_dims 5", &b, XDS_ERR_FORMAT, "tensor 'dims5': n_dims 5");
    ONE_TENSOR("dims0", 0, A(0), GGML_F32, 0, 64);
    expect_fail("n_dims 0", &b, XDS_ERR_FORMAT, "n_dims 0");
    ONE_TENSOR("row33", 2, A(33, 2), GGML_Q8_0, 0, 256);
    expect_fail("row not multiple of block", &b, XDS_ERR_FORMAT, "row length 33");

    b.n = 0;
    hdr(&b, 3, 2, 0);
    tinfo(&b, "same", 1, (uint64_t[]){8}, GGML_F32, 0);
    tinfo(&b, "same", 1, (uint64_t[]){8}, GGML_F32, 32);
    pad_to(&b, 32);
    for (int i = 0; i < 64; i++) put_u8(&b, 0);
    expect_fail("duplicate tensor", &b, XDS_ERR_FORMAT, "duplicate tensor name 'same'");

    /* Tensor info ends exactly at EOF: no room for padding/data. */
    b.n = 0;
    hdr(&b, 3, 1, 0);
    tinfo(&b, "nodata", 1, (uint64_t[]){8}, GGML_F32, 0);
    expect_fail("no data section", &b, XDS_ERR_FORMAT, "data section");

    /* Not a regular file / missing. */
    xds_gguf *g = NULL;
    CHECK(xds_gguf_open(tmpdir, &g) == XDS_ERR_IO && strstr(xds_err_msg(), tmpdir));
    CHECK(xds_gguf_open("/nonexistent/x.gguf", &g) == XDS_ERR_IO &&
          strstr(xds_err_msg(), "/nonexistent/x.gguf"));
    xds_weights *w = NULL;
    CHECK(xds_weights_open("/nonexistent/x.gguf", &w) == XDS_ERR_NOT_FOUND && !w);
    char *path = write_file("junk.bin", "hello world, not a model", 24);
    CHECK(xds_weights_open(path, &w) == XDS_ERR_FORMAT && strstr(xds_err_msg(), "not a GGUF file"));
    free(b.p);
}

/* ------------------------------------------------------------------------- */
/* The real model */

static void test_real_model(void) {
    const char *path = test_model_path();
    if (!path) {
        TEST_SKIP("real-model GGUF checks: XDS_TEST_MODEL not set");
        return;
    }
    xds_gguf *g = NULL;
    CHECK_MSG(xds_gguf_open(path, &g) == XDS_OK, "%s", xds_err_msg());
    if (!g) return;
    const char *s;
    uint64_t len;
    uint32_t u;
    CHECK(xds_gguf_version(g) == 3);
    CHECK(xds_gguf_get_str(g, "general.architecture", &s, &len) == XDS_OK && len == 5 &&
          !memcmp(s, "llama", 5));
    CHECK(xds_gguf_get_u32(g, "llama.block_count", &u) == XDS_OK && u == 30);
    CHECK(xds_gguf_get_u32(g, "llama.embedding_length", &u) == XDS_OK && u == 576);
    CHECK(xds_gguf_n_kv(g) == 33);
    CHECK(xds_gguf_n_tensors(g) == 272);
    xds_gguf_type et;
    uint64_t n;
    const void *data;
    CHECK(xds_gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n, &data) == XDS_OK &&
          et == XDS_GGUF_STRING && n == 49152);
    CHECK(xds_gguf_get_arr(g, "tokenizer.ggml.merges", &et, &n, &data) == XDS_OK && n == 48900);
    /* Values as read by the gguf Python package (GGUFReader). */
    const xds_tensor *t = xds_gguf_find_tensor(g, "token_embd.weight");
    CHECK(t && t->type == XDS_DTYPE_Q8_0 && t->ne[0] == 576 && t->ne[1] == 49152 &&
          t->nbytes == 30081024);
    CHECK(xds_gguf_data_offset(g) == 1785664);
    const xds_tensor *t2 = xds_gguf_find_tensor(g, "blk.0.attn_norm.weight");
    CHECK(t && t2 && t2->type == XDS_DTYPE_F32 && t2->ne[0] == 576 && t2->n_dims == 1);
    if (t && t2) CHECK((const uint8_t *)t2->data - (const uint8_t *)t->data == 31866688 - 1785664);
    t = xds_gguf_find_tensor(g, "blk.0.ffn_down.weight");
    CHECK(t && t->type == XDS_DTYPE_Q4_1 && t->ne[0] == 1536 && t->ne[1] == 576 &&
          t->nbytes == 552960);
    int n_q41 = 0, n_f32 = 0, n_q8 = 0;
    for (int64_t i = 0; i < xds_gguf_n_tensors(g); i++) {
        xds_dtype ty = xds_gguf_tensor(g, i)->type;
        n_q41 += ty == XDS_DTYPE_Q4_1;
        n_f32 += ty == XDS_DTYPE_F32;
        n_q8 += ty == XDS_DTYPE_Q8_0;
    }
    CHECK(n_q41 == 210 && n_f32 == 61 && n_q8 == 1);
    CHECK(xds_gguf_get_arr_str(g, "tokenizer.ggml.tokens", 1, &s, &len) == XDS_OK);
    xds_gguf_close(g);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/xds_test_gguf_XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    make_payloads();
    test_valid();
    test_truncations();
    test_bad();
    test_real_model();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", tmpdir);
    TEST_MAIN_END();
}
