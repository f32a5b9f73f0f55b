/*
 * test_safetensors.c — safetensors files and Hugging Face directories written
 * here into a temp dir: a single file (F32/F16/BF16 with known values,
 * __metadata__), a directory with model.safetensors, a sharded directory with
 * model.safetensors.index.json; every value read back. Then one test per class
 * of bad input: header length past end, every truncation length, bad JSON,
 * unsupported / unknown dtype, inconsistent data_offsets, bad shapes, missing
 * config.json, missing shard, tensor missing from its shard, a lone
 * .safetensors file given instead of the directory.
 */
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "format/safetensors.h"
#include "format/weights.h"
#include "test.h"

static char tmpdir[256];

static char *tpath(const char *rel) {
    static char bufs[4][512];
    static int k;
    char *p = bufs[k++ & 3];
    snprintf(p, 512, "%s/%s", tmpdir, rel);
    return p;
}

static void write_raw(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(1);
    }
    if (n) fwrite(p, 1, n, f);
    fclose(f);
}

static void write_text(const char *path, const char *s) { write_raw(path, s, strlen(s)); }

/* Builds a safetensors image: u64 header length | header | data. Caller frees. */
static uint8_t *make_st(const char *header, const void *data, size_t n, size_t *size) {
    size_t h = strlen(header);
    *size = 8 + h + n;
    uint8_t *p = malloc(*size);
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)((uint64_t)h >> (8 * i));
    memcpy(p + 8, header, h);
    if (n) memcpy(p + 8 + h, data, n);
    return p;
}

static void write_st(const char *path, const char *header, const void *data, size_t n) {
    size_t size;
    uint8_t *p = make_st(header, data, n, &size);
    write_raw(path, p, size);
    free(p);
}

/* ------------------------------------------------------------------------- */
/* Valid single file */

/* Data: "a" F32 HF [3, 4] at [0, 48); "b" F16 [5] at [48, 58); "c" BF16 [2, 2, 2] at [58, 74). */
static uint8_t payload[74];
static const char *header1 =
    "{\"__metadata__\": {\"format\": \"pt\"},"
    " \"c\": {\"dtype\": \"BF16\", \"shape\": [2, 2, 2], \"data_offsets\": [58, 74]},"
    " \"a\": {\"dtype\": \"F32\", \"shape\": [3, 4], \"data_offsets\": [0, 48]},"
    " \"b\": {\"dtype\": \"F16\", \"shape\": [5], \"data_offsets\": [48, 58]}}   ";

static void make_payload(void) {
    for (int i = 0; i < 12; i++) {
        float f = (float)i * 1.5f - 3.0f;
        memcpy(payload + 4 * i, &f, 4);
    }
    for (int i = 0; i < 5; i++) {
        xds_f16 h = xds_f32_to_f16((float)i - 2.0f);
        memcpy(payload + 48 + 2 * i, &h, 2);
    }
    for (int i = 0; i < 8; i++) {
        xds_bf16 h = xds_f32_to_bf16((float)i * 0.5f);
        memcpy(payload + 58 + 2 * i, &h, 2);
    }
}

static void check_single(const xds_safetensors *f) {
    CHECK(xds_safetensors_n_tensors(f) == 3);
    const xds_tensor *a = xds_safetensors_find(f, "a"), *b = xds_safetensors_find(f, "b"),
                     *c = xds_safetensors_find(f, "c");
    CHECK(a && b && c);
    CHECK(xds_safetensors_find(f, "__metadata__") == NULL && xds_safetensors_find(f, "d") == NULL);
    if (!a || !b || !c) return;
    /* data-offset order */
    CHECK(xds_safetensors_tensor(f, 0) == a && xds_safetensors_tensor(f, 1) == b &&
          xds_safetensors_tensor(f, 2) == c && xds_safetensors_tensor(f, 3) == NULL);
    /* HF [3, 4] -> ne = [4, 3] */
    CHECK(a->type == XDS_DTYPE_F32 && a->n_dims == 2 && a->ne[0] == 4 && a->ne[1] == 3 &&
          a->ne[2] == 1 && a->nbytes == 48);
    float v;
    memcpy(&v, (const float *)a->data + 5, 4); /* row 1, column 1 */
    CHECK(v == 5 * 1.5f - 3.0f);
    CHECK(b->type == XDS_DTYPE_F16 && b->n_dims == 1 && b->ne[0] == 5 && b->ne[1] == 1 &&
          b->nbytes == 10);
    xds_f16 h;
    memcpy(&h, (const uint8_t *)b->data + 8, 2);
    CHECK(xds_f16_to_f32(h) == 2.0f);
    CHECK(c->type == XDS_DTYPE_BF16 && c->n_dims == 3 && c->ne[0] == 2 && c->ne[1] == 2 &&
          c->ne[2] == 2 && c->nbytes == 16);
    memcpy(&h, (const uint8_t *)c->data + 14, 2);
    CHECK(xds_bf16_to_f32(h) == 3.5f);
    CHECK((const uint8_t *)c->data - (const uint8_t *)a->data == 58);
}

static void test_single(void) {
    char *p = tpath("one.safetensors");
    write_st(p, header1, payload, sizeof payload);
    xds_safetensors *f = NULL;
    CHECK_MSG(xds_safetensors_open(p, &f) == XDS_OK, "%s", xds_err_msg());
    if (f) {
        CHECK(!strcmp(xds_safetensors_path(f), p));
        check_single(f);
        xds_safetensors_close(f);
    }
    size_t size;
    uint8_t *img = make_st(header1, payload, sizeof payload, &size);
    f = NULL;
    CHECK_MSG(xds_safetensors_open_memory(img, size, "mem.safetensors", &f) == XDS_OK, "%s",
              xds_err_msg());
    if (f) {
        check_single(f);
        xds_safetensors_close(f);
    }
    free(img);

    /* Empty header object, zero-size and scalar tensors are fine. */
    static const char *h2 =
        "{\"s\": {\"dtype\": \"F32\", \"shape\": [], \"data_offsets\": [0, 4]},"
        " \"z\": {\"dtype\": \"F16\", \"shape\": [0, 3], \"data_offsets\": [4, 4]}}";
    img = make_st(h2, payload, 4, &size);
    f = NULL;
    CHECK_MSG(xds_safetensors_open_memory(img, size, "m", &f) == XDS_OK, "%s", xds_err_msg());
    if (f) {
        const xds_tensor *s = xds_safetensors_find(f, "s"), *z = xds_safetensors_find(f, "z");
        CHECK(s && s->n_dims == 1 && s->ne[0] == 1 && s->nbytes == 4);
        CHECK(z && z->n_dims == 2 && z->ne[0] == 3 && z->ne[1] == 0 && z->nbytes == 0);
        xds_safetensors_close(f);
    }
    free(img);
    img = make_st("{}", NULL, 0, &size);
    f = NULL;
    CHECK(xds_safetensors_open_memory(img, size, "m", &f) == XDS_OK && f &&
          xds_safetensors_n_tensors(f) == 0);
    xds_safetensors_close(f);
    free(img);
}

/* ------------------------------------------------------------------------- */
/* Hugging Face directories */

static const char *config_json =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": 4,"
    " \"num_hidden_layers\": 2, \"rms_norm_eps\": 1e-05, \"tie_word_embeddings\": true}";

static void test_hfdir_single(void) {
    mkdir(tpath("hf1"), 0755);
    write_text(tpath("hf1/config.json"), config_json);
    write_st(tpath("hf1/model.safetensors"), header1, payload, sizeof payload);
    xds_hfdir *d = NULL;
    CHECK_MSG(xds_hfdir_open(tpath("hf1/"), &d) == XDS_OK, "%s", xds_err_msg());
    if (d) {
        CHECK(!strcmp(xds_hfdir_path(d), tpath("hf1"))); /* trailing '/' dropped */
        const json_t *cfg = xds_hfdir_config(d);
        CHECK(json_is_object(cfg));
        CHECK(json_integer_value(json_object_get(cfg, "hidden_size")) == 4);
        CHECK(!strcmp(json_string_value(json_object_get(cfg, "model_type")), "llama"));
        CHECK(json_real_value(json_object_get(cfg, "rms_norm_eps")) == 1e-05);
        CHECK(xds_hfdir_n_files(d) == 1);
        CHECK(xds_hfdir_n_tensors(d) == 3);
        CHECK(xds_hfdir_find(d, "a") == xds_hfdir_tensor(d, 0));
        const xds_tensor *a = xds_hfdir_find(d, "a");
        CHECK(a && a->ne[0] == 4 && a->ne[1] == 3);
        CHECK(xds_hfdir_find(d, "zz") == NULL);
        xds_hfdir_close(d);
    }
    xds_weights *w = NULL;
    CHECK_MSG(xds_weights_open(tpath("hf1"), &w) == XDS_OK, "%s", xds_err_msg());
    if (w) {
        CHECK(!xds_weights_is_gguf(w) && xds_weights_hfdir(w) && !xds_weights_gguf(w));
        CHECK(xds_weights_n_tensors(w) == 3);
        CHECK(xds_weights_find(w, "c") == xds_weights_tensor(w, 2));
        CHECK(!strcmp(xds_weights_path(w), tpath("hf1")));
        xds_weights_close(w);
    }
    /* The .safetensors file itself, with config.json beside it: the directory is opened. */
    w = NULL;
    CHECK_MSG(xds_weights_open(tpath("hf1/model.safetensors"), &w) == XDS_OK, "%s", xds_err_msg());
    if (w) CHECK(xds_weights_n_tensors(w) == 3 && !strcmp(xds_weights_path(w), tpath("hf1")));
    xds_weights_close(w);
}

static void test_hfdir_sharded(void) {
    mkdir(tpath("hf2"), 0755);
    write_text(tpath("hf2/config.json"), config_json);
    /* Shard 1: "x" F32 HF [2, 3] (values 0..5), "y" BF16 [4]. Shard 2: "z" F16 [2],
     * plus "extra" not listed in the index (not exposed). */
    float x[6] = {0, 1, 2, 3, 4, 5};
    uint8_t d1[32];
    memcpy(d1, x, 24);
    for (int i = 0; i < 4; i++) {
        xds_bf16 h = xds_f32_to_bf16(-(float)i);
        memcpy(d1 + 24 + 2 * i, &h, 2);
    }
    write_st(tpath("hf2/model-00001-of-00002.safetensors"),
             "{\"y\": {\"dtype\": \"BF16\", \"shape\": [4], \"data_offsets\": [24, 32]},"
             " \"x\": {\"dtype\": \"F32\", \"shape\": [2, 3], \"data_offsets\": [0, 24]}}",
             d1, sizeof d1);
    uint8_t d2[8];
    xds_f16 h0 = xds_f32_to_f16(7.0f), h1 = xds_f32_to_f16(-0.5f);
    memcpy(d2, &h0, 2);
    memcpy(d2 + 2, &h1, 2);
    memset(d2 + 4, 0, 4);
    write_st(tpath("hf2/model-00002-of-00002.safetensors"),
             "{\"extra\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]},"
             " \"z\": {\"dtype\": \"F16\", \"shape\": [2], \"data_offsets\": [0, 4]}}",
             d2, sizeof d2);
    const char *index = "{\"metadata\": {\"total_size\": 36}, \"weight_map\": {"
                        "\"z\": \"model-00002-of-00002.safetensors\","
                        "\"x\": \"model-00001-of-00002.safetensors\","
                        "\"y\": \"model-00001-of-00002.safetensors\"}}";
    write_text(tpath("hf2/model.safetensors.index.json"), index);

    xds_hfdir *d = NULL;
    CHECK_MSG(xds_hfdir_open(tpath("hf2"), &d) == XDS_OK, "%s", xds_err_msg());
    if (d) {
        CHECK(xds_hfdir_n_files(d) == 2); /* each shard opened once */
        CHECK(xds_hfdir_n_tensors(d) == 3);
        const xds_tensor *tx = xds_hfdir_find(d, "x"), *ty = xds_hfdir_find(d, "y"),
                         *tz = xds_hfdir_find(d, "z");
        CHECK(tx && ty && tz && !xds_hfdir_find(d, "extra"));
        /* (shard, offset) order */
        CHECK(xds_hfdir_tensor(d, 0) == tx && xds_hfdir_tensor(d, 1) == ty &&
              xds_hfdir_tensor(d, 2) == tz);
        CHECK(xds_safetensors_find(xds_hfdir_file(d, 0), "x") == tx);
        CHECK(xds_safetensors_find(xds_hfdir_file(d, 1), "z") == tz);
        if (tx && ty && tz) {
            CHECK(tx->type == XDS_DTYPE_F32 && tx->ne[0] == 3 && tx->ne[1] == 2);
            float v;
            memcpy(&v, (const float *)tx->data + 4, 4);
            CHECK(v == 4.0f);
            xds_bf16 b;
            memcpy(&b, (const uint8_t *)ty->data + 6, 2);
            CHECK(ty->type == XDS_DTYPE_BF16 && xds_bf16_to_f32(b) == -3.0f);
            xds_f16 h;
            memcpy(&h, (const uint8_t *)tz->data + 2, 2);
            CHECK(tz->type == XDS_DTYPE_F16 && xds_f16_to_f32(h) == -0.5f);
        }
        xds_hfdir_close(d);
    }
}

/* ------------------------------------------------------------------------- */
/* Bad input */

static void expect_mem(const char *what, const char *header, size_t data_n, xds_status want,
                       const char *needle) {
    static uint8_t zeros[256];
    size_t size;
    uint8_t *img = make_st(header, zeros, data_n, &size);
    xds_safetensors *f = NULL;
    xds_status st = xds_safetensors_open_memory(img, size, "bad.safetensors", &f);
    if (getenv("XDS_TEST_VERBOSE")) printf("%-28s %s\n", what, xds_err_msg());
    CHECK_MSG(st == want && !f, "%s: got %d (%s), want %d", what, st, xds_err_msg(), want);
    CHECK_MSG(!strchr(xds_err_msg(), '\n'), "%s: multi-line message", what);
    CHECK_MSG(strstr(xds_err_msg(), "bad.safetensors") && strstr(xds_err_msg(), needle),
              "%s: message lacks file or '%s': %s", what, needle, xds_err_msg());
    free(img);
}

static void test_bad_file(void) {
    /* Header length past end (file path, mmap). */
    uint8_t raw[16] = {100, 0, 0, 0, 0, 0, 0, 0, '{', '}'};
    char *p = tpath("hl.safetensors");
    write_raw(p, raw, 10);
    xds_safetensors *f = NULL;
    CHECK(xds_safetensors_open(p, &f) == XDS_ERR_FORMAT && !f);
    CHECK_MSG(strstr(xds_err_msg(), p) && strstr(xds_err_msg(), "header length 100 past end"), "%s",
              xds_err_msg());
    raw[7] = 0x80; /* 2^63 + 100 */
    write_raw(p, raw, 10);
    CHECK(xds_safetensors_open(p, &f) == XDS_ERR_FORMAT && strstr(xds_err_msg(), "header length"));
    write_raw(p, raw, 5);
    CHECK(xds_safetensors_open(p, &f) == XDS_ERR_FORMAT && strstr(xds_err_msg(), "too small"));
    CHECK(xds_safetensors_open(tpath("nope.safetensors"), &f) == XDS_ERR_NOT_FOUND &&
          strstr(xds_err_msg(), "nope.safetensors"));

    /* Every truncation of a valid file fails cleanly (the last tensor ends at EOF). */
    size_t size;
    uint8_t *img = make_st(header1, payload, sizeof payload, &size);
    int accepted = 0, named = 0;
    for (size_t n = 0; n < size; n++) {
        uint8_t *cut = malloc(n ? n : 1);
        memcpy(cut, img, n);
        f = NULL;
        if (xds_safetensors_open_memory(cut, n, "cut.safetensors", &f) == XDS_OK) {
            accepted++;
            xds_safetensors_close(f);
        } else if (strstr(xds_err_msg(), "cut.safetensors")) {
            named++;
        }
        free(cut);
    }
    CHECK_MSG(accepted == 0 && named == (int)size, "%d accepted, %d of %zu named", accepted, named,
              size);
    free(img);

    expect_mem("bad JSON", "{\"a\": {\"dtype\": \"F32\",", 0, XDS_ERR_FORMAT, "header JSON");
    expect_mem("JSON not object", "[1, 2]", 0, XDS_ERR_FORMAT, "not an object");
    expect_mem("trailing garbage", "{} x", 0, XDS_ERR_FORMAT, "header JSON");
    expect_mem("duplicate key",
               "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
               " \"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}",
               4, XDS_ERR_FORMAT, "duplicate");
    expect_mem("entry not object", "{\"a\": 3}", 0, XDS_ERR_FORMAT, "tensor 'a'");
    expect_mem("unsupported dtype",
               "{\"ids\": {\"dtype\": \"I64\", \"shape\": [1], \"data_offsets\": [0, 8]}}", 8,
               XDS_ERR_UNSUPPORTED, "tensor 'ids': dtype I64 is not supported");
    expect_mem("newline in a name",
               "{\"a\\nb\": {\"dtype\": \"I64\", \"shape\": [1], \"data_offsets\": [0, 8]}}", 8,
               XDS_ERR_UNSUPPORTED, "tensor 'a?b'");
    expect_mem("unknown dtype",
               "{\"w\": {\"dtype\": \"Q9\", \"shape\": [1], \"data_offsets\": [0, 8]}}", 8,
               XDS_ERR_FORMAT, "tensor 'w': unknown dtype");
    expect_mem("missing dtype", "{\"w\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 4,
               XDS_ERR_FORMAT, "tensor 'w'");
    expect_mem("size mismatch",
               "{\"w\": {\"dtype\": \"F32\", \"shape\": [2, 3], \"data_offsets\": [0, 20]}}", 24,
               XDS_ERR_FORMAT, "tensor 'w': data_offsets [0, 20)");
    expect_mem("begin > end",
               "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [8, 4]}}", 24,
               XDS_ERR_FORMAT, "tensor 'w': data_offsets [8, 4) are invalid");
    expect_mem("negative offset",
               "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [-4, 0]}}", 24,
               XDS_ERR_FORMAT, "tensor 'w'");
    expect_mem("offsets past end",
               "{\"w\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [16, 32]}}", 24,
               XDS_ERR_FORMAT, "past end of data (24 bytes)");
    expect_mem("offsets huge",
               "{\"w\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": "
               "[9223372036854775800, 9223372036854775807]}}",
               24, XDS_ERR_FORMAT, "tensor 'w'");
    expect_mem("offsets not 2",
               "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0]}}", 4,
               XDS_ERR_FORMAT, "data_offsets");
    expect_mem("rank 5",
               "{\"w\": {\"dtype\": \"F32\", \"shape\": [1,1,1,1,1], \"data_offsets\": [0, 4]}}", 4,
               XDS_ERR_FORMAT, "rank 5");
    expect_mem("negative dim",
               "{\"w\": {\"dtype\": \"F32\", \"shape\": [-1, 4], \"data_offsets\": [0, 16]}}", 16,
               XDS_ERR_FORMAT, "shape[0]");
    expect_mem("float dim",
               "{\"w\": {\"dtype\": \"F32\", \"shape\": [1.5], \"data_offsets\": [0, 4]}}", 4,
               XDS_ERR_FORMAT, "shape[0]");
    expect_mem("shape overflow",
               "{\"w\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296], "
               "\"data_offsets\": [0, 16]}}",
               16, XDS_ERR_FORMAT, "shape overflows");
    expect_mem("bytes overflow",
               "{\"w\": {\"dtype\": \"F32\", \"shape\": [4611686018427387904], "
               "\"data_offsets\": [0, 16]}}",
               16, XDS_ERR_FORMAT, "tensor 'w'");
    expect_mem("NUL-collision names",
               "{\"a\\u0000b\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
               " \"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}",
               4, XDS_ERR_FORMAT, "");
}

static void test_bad_dir(void) {
    xds_hfdir *d = NULL;
    xds_weights *w = NULL;

    /* Missing config.json. */
    mkdir(tpath("nocfg"), 0755);
    write_st(tpath("nocfg/model.safetensors"), header1, payload, sizeof payload);
    CHECK(xds_hfdir_open(tpath("nocfg"), &d) == XDS_ERR_NOT_FOUND && !d);
    CHECK_MSG(strstr(xds_err_msg(), tpath("nocfg")) && strstr(xds_err_msg(), "config.json"), "%s",
              xds_err_msg());
    CHECK(xds_weights_open(tpath("nocfg"), &w) == XDS_ERR_NOT_FOUND && !w);
    /* A lone .safetensors file: the error asks for the directory. */
    CHECK(xds_weights_open(tpath("nocfg/model.safetensors"), &w) != XDS_OK && !w);
    CHECK_MSG(strstr(xds_err_msg(), "model.safetensors") && strstr(xds_err_msg(), "directory"),
              "%s", xds_err_msg());
    CHECK(xds_weights_open(tpath("one.safetensors"), &w) != XDS_OK &&
          strstr(xds_err_msg(), "directory"));

    /* config.json not JSON / not an object. */
    mkdir(tpath("badcfg"), 0755);
    write_text(tpath("badcfg/config.json"), "{\"model_type\": llama}");
    write_st(tpath("badcfg/model.safetensors"), header1, payload, sizeof payload);
    CHECK(xds_hfdir_open(tpath("badcfg"), &d) == XDS_ERR_FORMAT &&
          strstr(xds_err_msg(), "badcfg/config.json") && strstr(xds_err_msg(), "line 1"));
    write_text(tpath("badcfg/config.json"), "[]");
    CHECK(xds_hfdir_open(tpath("badcfg"), &d) == XDS_ERR_FORMAT &&
          strstr(xds_err_msg(), "badcfg/config.json"));

    /* No weights. */
    mkdir(tpath("now"), 0755);
    write_text(tpath("now/config.json"), config_json);
    CHECK(xds_hfdir_open(tpath("now"), &d) == XDS_ERR_NOT_FOUND &&
          strstr(xds_err_msg(), "model.safetensors.index.json"));

    /* Corrupt model.safetensors: the error names it. */
    mkdir(tpath("corrupt"), 0755);
    write_text(tpath("corrupt/config.json"), config_json);
    write_st(tpath("corrupt/model.safetensors"), header1, payload, sizeof payload - 1);
    CHECK(xds_hfdir_open(tpath("corrupt"), &d) == XDS_ERR_FORMAT &&
          strstr(xds_err_msg(), "corrupt/model.safetensors") &&
          strstr(xds_err_msg(), "tensor 'c'"));

    /* Missing shard; tensor missing from its shard; bad index. */
    mkdir(tpath("sh"), 0755);
    write_text(tpath("sh/config.json"), config_json);
    write_st(tpath("sh/s1.safetensors"),
             "{\"x\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}", payload, 4);
    write_text(tpath("sh/model.safetensors.index.json"),
               "{\"weight_map\": {\"x\": \"s1.safetensors\", \"y\": \"s2.safetensors\"}}");
    CHECK(xds_hfdir_open(tpath("sh"), &d) == XDS_ERR_NOT_FOUND && !d);
    CHECK_MSG(strstr(xds_err_msg(), "s2.safetensors") && strstr(xds_err_msg(), "index.json"), "%s",
              xds_err_msg());
    write_text(tpath("sh/model.safetensors.index.json"),
               "{\"weight_map\": {\"x\": \"s1.safetensors\", \"w\": \"s1.safetensors\"}}");
    CHECK(xds_hfdir_open(tpath("sh"), &d) == XDS_ERR_FORMAT);
    CHECK_MSG(strstr(xds_err_msg(), "tensor 'w'") && strstr(xds_err_msg(), "s1.safetensors"), "%s",
              xds_err_msg());
    write_text(tpath("sh/model.safetensors.index.json"),
               "{\"weight_map\": {\"x\": \"../s1.safetensors\"}}");
    CHECK(xds_hfdir_open(tpath("sh"), &d) == XDS_ERR_FORMAT &&
          strstr(xds_err_msg(), "weight_map['x']"));
    write_text(tpath("sh/model.safetensors.index.json"), "{\"weight_map\": {\"x\": 3}}");
    CHECK(xds_hfdir_open(tpath("sh"), &d) == XDS_ERR_FORMAT);
    write_text(tpath("sh/model.safetensors.index.json"), "{\"weights\": {}}");
    CHECK(xds_hfdir_open(tpath("sh"), &d) == XDS_ERR_FORMAT && strstr(xds_err_msg(), "weight_map"));
    write_text(tpath("sh/model.safetensors.index.json"), "{\"weight_map\": {}");
    CHECK(xds_hfdir_open(tpath("sh"), &d) == XDS_ERR_FORMAT &&
          strstr(xds_err_msg(), "model.safetensors.index.json"));
    write_text(tpath("sh/model.safetensors.index.json"),
               "{\"weight_map\": {\"x\": \"s1.safetensors\"}}");
    CHECK_MSG(xds_hfdir_open(tpath("sh"), &d) == XDS_OK, "control: %s", xds_err_msg());
    xds_hfdir_close(d);
    d = NULL;

    /* Not a directory / missing. */
    CHECK(xds_hfdir_open(tpath("one.safetensors"), &d) == XDS_ERR_INVALID);
    CHECK(xds_hfdir_open(tpath("missing"), &d) == XDS_ERR_NOT_FOUND &&
          strstr(xds_err_msg(), "missing"));
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/xds_test_st_XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    make_payload();
    test_single();
    test_hfdir_single();
    test_hfdir_sharded();
    test_bad_file();
    test_bad_dir();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", tmpdir);
    TEST_MAIN_END();
}
