/*
 * test_tokenizer.c — the tokenizer against Hugging Face references
 * (tests/data/tokenizer/ids_*.json and chat.json, made by tools/gen_tokenizer_fixtures.py):
 * ids of every fixture string (with and without special-token parsing),
 * decode == HF decode, the streaming detokenizer never emits broken UTF-8 and
 * reassembles the text, invalid UTF-8 input is rejected with its offset, chat
 * renders equal transformers' apply_chat_template, special ids, bad
 * tokenizer.json inputs, and long inputs (20 KB mixed, 100 KB adversarial)
 * round-tripping; their speed is bench/bench_tokenizer.c's.
 * SmolLM2 needs XDS_TEST_MODEL (the GGUF); Qwen3 / DeepSeek-V3 need
 * XDS_TEST_TOKENIZERS (default ../shared/tokenizers beside the repo); each
 * part skips with a message if its input is absent (a failure under CI=true).
 */
#include <jansson.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "format/gguf.h"
#include "test.h"
#include "tokenizer/tokenizer.h"

/* Strict UTF-8 check (no overlongs / surrogates / > U+10FFFF). */
static int valid_utf8(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned c = p[i];
        if (c < 0x80) { i++; continue; }
        int len;
        unsigned lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) len = 2;
        else if (c == 0xE0) { len = 3; lo = 0xA0; }
        else if (c >= 0xE1 && c <= 0xEC) len = 3;
        else if (c == 0xED) { len = 3; hi = 0x9F; }
        else if (c >= 0xEE && c <= 0xEF) len = 3;
        else if (c == 0xF0) { len = 4; lo = 0x90; }
        else if (c >= 0xF1 && c <= 0xF3) len = 4;
        else if (c == 0xF4) { len = 4; hi = 0x8F; }
        else return 0;
        if (i + len > n || p[i + 1] < lo || p[i + 1] > hi) return 0;
        for (int k = 2; k < len; k++)
            if ((p[i + k] & 0xC0) != 0x80) return 0;
        i += len;
    }
    return 1;
}

static int ids_equal(const int32_t *a, size_t na, json_t *arr) {
    if (na != json_array_size(arr)) return 0;
    for (size_t i = 0; i < na; i++)
        if (a[i] != json_integer_value(json_array_get(arr, i))) return 0;
    return 1;
}

static void print_ids(const char *what, const int32_t *a, size_t n) {
    fprintf(stderr, "  %s:", what);
    for (size_t i = 0; i < n && i < 40; i++) fprintf(stderr, " %d", a[i]);
    fprintf(stderr, n > 40 ? " ...\n" : "\n");
}

/* Stream ids through the detokenizer with a small output buffer; every chunk
 * must be valid UTF-8 on its own; returns the concatenation (malloc'ed). */
static char *stream_detok(const xds_tokenizer *t, const int32_t *ids, size_t n, int *chunks_ok, int *held,
                          size_t *out_len) {
    xds_detok d;
    xds_detok_init(&d, 0);
    size_t cap = 64, len = 0, acap = 1024;
    char *all = malloc(acap), buf[64];
    *chunks_ok = 1;
    *held = 0;
    for (size_t i = 0; i <= n; i++) {
        size_t w;
        int first = 1;
        do {
            w = i < n ? xds_detok_push(&d, t, first ? ids[i] : -1, buf, cap) : xds_detok_flush(&d, buf, cap);
            first = 0;
            if (!valid_utf8(buf, w)) *chunks_ok = 0;
            if (len + w + 1 > acap) all = realloc(all, acap = (len + w + 1) * 2);
            memcpy(all + len, buf, w);
            len += w;
        } while (w == cap);
        if (i < n && d.n > d.n_ready) *held = 1;
    }
    all[len] = 0;
    *out_len = len;
    xds_detok_free(&d);
    return all;
}

typedef struct {
    int n_cases, ids_ok, nospecial_ok, decode_ok, stream_ok, held_cases;
} stats;

static void check_fixture(const xds_tokenizer *t, const char *name, const char *path) {
    json_error_t err;
    json_t *root = json_load_file(path, JSON_ALLOW_NUL, &err);
    CHECK_MSG(root != NULL, "%s: %s", path, err.text);
    if (!root) return;
    json_t *meta = json_object_get(root, "meta"), *cases = json_object_get(root, "cases");
    CHECK(json_array_size(cases) >= 300);
    CHECK_MSG(xds_tokenizer_bos(t) == json_integer_value(json_object_get(meta, "bos")), "%s bos %d", name, xds_tokenizer_bos(t));
    CHECK_MSG(xds_tokenizer_eos(t) == json_integer_value(json_object_get(meta, "eos")), "%s eos %d", name, xds_tokenizer_eos(t));
    CHECK_MSG(xds_tokenizer_add_bos(t) == json_integer_value(json_object_get(meta, "add_bos")), "%s add_bos", name);
    CHECK(xds_tokenizer_is_eog(t, xds_tokenizer_eos(t)));

    stats s = {0};
    size_t i;
    json_t *c;
    int shown = 0;
    json_array_foreach(cases, i, c) {
        json_t *jt = json_object_get(c, "text");
        const char *text = json_string_value(jt);
        size_t tlen = json_string_length(jt);
        json_t *dec = json_object_get(c, "decoded");
        const char *want_dec = dec ? json_string_value(dec) : text;
        size_t want_len = dec ? json_string_length(dec) : tlen;
        s.n_cases++;
        int32_t *ids = NULL;
        size_t n = 0;
        xds_status rc = xds_tokenizer_encode(t, text, tlen, 1, &ids, &n);
        if (rc) {
            CHECK_MSG(0, "%s case %zu: %s", name, i, xds_err_msg());
            continue;
        }
        if (ids_equal(ids, n, json_object_get(c, "ids"))) s.ids_ok++;
        else if (shown++ < 5) {
            fprintf(stderr, "%s case %zu ids differ for text \"%s\"\n", name, i, text);
            print_ids("got", ids, n);
        }
        json_t *ns = json_object_get(c, "ids_nospecial");
        if (ns) {
            int32_t *ids2 = NULL;
            size_t n2 = 0;
            if (xds_tokenizer_encode(t, text, tlen, 0, &ids2, &n2) == XDS_OK && ids_equal(ids2, n2, ns)) s.nospecial_ok++;
            else if (shown++ < 5) fprintf(stderr, "%s case %zu ids (parse_special=0) differ: \"%s\"\n", name, i, text);
            free(ids2);
        } else {
            s.nospecial_ok++;
        }
        char *out = NULL;
        size_t olen = 0;
        if (xds_tokenizer_decode(t, ids, n, 0, &out, &olen) == XDS_OK && olen == want_len &&
            !memcmp(out, want_dec, olen))
            s.decode_ok++;
        else if (shown++ < 5) fprintf(stderr, "%s case %zu decode differs: \"%s\"\n", name, i, out ? out : "(null)");
        free(out);
        int chunks_ok, held;
        size_t st_len;
        char *st = stream_detok(t, ids, n, &chunks_ok, &held, &st_len);
        if (chunks_ok && st_len == want_len && !memcmp(st, want_dec, want_len)) s.stream_ok++;
        else if (shown++ < 5) fprintf(stderr, "%s case %zu streaming detok differs: \"%s\"\n", name, i, st);
        s.held_cases += held;
        free(st);
        free(ids);
    }
    printf("%s: %d strings: ids %d, ids(parse_special=0) %d, decode %d, stream %d ok; %d streams held back a partial sequence\n",
           name, s.n_cases, s.ids_ok, s.nospecial_ok, s.decode_ok, s.stream_ok, s.held_cases);
    CHECK(s.ids_ok == s.n_cases);
    CHECK(s.nospecial_ok == s.n_cases);
    CHECK(s.decode_ok == s.n_cases);
    CHECK(s.stream_ok == s.n_cases);
    CHECK(s.held_cases > 0); /* the fixtures do split multi-byte characters across tokens */
    json_decref(root);
}

/* Invalid UTF-8 in text is an error naming the offset. */
static void check_invalid_utf8(const xds_tokenizer *t) {
    static const struct { const char *s; size_t n, off; } bad[] = {
        {"\xff", 1, 0}, {"ab\xc3", 3, 2}, {"ok \xed\xa0\x80", 6, 3}, {"\xc0\xaf", 2, 0},
        {"x\xf4\x90\x80\x80", 5, 1}, {"hello \x80 world", 13, 6}, {"\xe2\x82", 2, 0},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int32_t *ids = NULL;
        size_t n = 0;
        xds_status rc = xds_tokenizer_encode(t, bad[i].s, bad[i].n, 1, &ids, &n);
        char want[64];
        snprintf(want, sizeof want, "offset %zu", bad[i].off);
        CHECK_MSG(rc == XDS_ERR_INVALID && strstr(xds_err_msg(), want), "bad utf8 %zu: rc %d msg '%s'", i, rc, xds_err_msg());
        if (rc == XDS_OK) free(ids);
    }
    /* an embedded NUL is valid text */
    int32_t *ids = NULL;
    size_t n = 0;
    CHECK(xds_tokenizer_encode(t, "a\0b", 3, 1, &ids, &n) == XDS_OK && n >= 2);
    free(ids);
}

/* Detokenizer edge cases: a byte-level token that is a lone continuation byte
 * becomes U+FFFD; an emoji fed byte by byte comes out whole, once. */
static void check_detok_edges(const xds_tokenizer *t) {
    int32_t byte_tok[256];
    for (int b = 0; b < 256; b++) byte_tok[b] = -1;
    for (int32_t id = 0; id < xds_tokenizer_n_vocab(t); id++) {
        size_t l;
        const char *p = xds_tokenizer_piece(t, id, &l);
        if (p && l == 1 && byte_tok[(unsigned char)p[0]] < 0) byte_tok[(unsigned char)p[0]] = id;
    }
    const unsigned char emoji[4] = {0xF0, 0x9F, 0x98, 0x80}; /* U+1F600 */
    int have = 1;
    for (int k = 0; k < 4; k++) have &= byte_tok[emoji[k]] >= 0;
    CHECK(have && byte_tok['a'] >= 0);
    if (!have) return;
    xds_detok d;
    xds_detok_init(&d, 0);
    char out[64];
    size_t w = 0;
    for (int k = 0; k < 3; k++) CHECK(xds_detok_push(&d, t, byte_tok[emoji[k]], out, sizeof out) == 0);
    w = xds_detok_push(&d, t, byte_tok[emoji[3]], out, sizeof out);
    CHECK(w == 4 && !memcmp(out, emoji, 4));
    /* lone continuation byte, then an interrupted sequence, then text */
    w = xds_detok_push(&d, t, byte_tok[0x80], out, sizeof out);
    CHECK(w == 3 && !memcmp(out, "\xef\xbf\xbd", 3));
    CHECK(xds_detok_push(&d, t, byte_tok[0xF0], out, sizeof out) == 0);
    CHECK(xds_detok_push(&d, t, byte_tok[0x9F], out, sizeof out) == 0);
    w = xds_detok_push(&d, t, byte_tok['a'], out, sizeof out);
    CHECK(w == 4 && !memcmp(out, "\xef\xbf\xbd" "a", 4));
    /* incomplete at end of stream → one U+FFFD on flush */
    CHECK(xds_detok_push(&d, t, byte_tok[0xE2], out, sizeof out) == 0);
    w = xds_detok_flush(&d, out, sizeof out);
    CHECK(w == 3 && !memcmp(out, "\xef\xbf\xbd", 3));
    /* tiny output buffer: never cuts a character */
    for (int k = 0; k < 4; k++) xds_detok_push(&d, t, byte_tok[emoji[k]], out, 0);
    CHECK(xds_detok_push(&d, t, -1, out, 3) == 0); /* 4-byte char does not fit in 3 */
    CHECK(xds_detok_push(&d, t, -1, out, 4) == 4);
    xds_detok_free(&d);
    /* skip_special */
    int32_t sp = xds_tokenizer_find(t, "<|im_end|>");
    if (sp < 0) sp = xds_tokenizer_eos(t);
    xds_detok_init(&d, 1);
    CHECK(xds_detok_push(&d, t, sp, out, sizeof out) == 0);
    CHECK(xds_detok_push(&d, t, byte_tok['a'], out, sizeof out) == 1);
    xds_detok_free(&d);
    xds_detok_init(&d, 0);
    size_t l;
    xds_tokenizer_piece(t, sp, &l);
    CHECK(xds_detok_push(&d, t, sp, out, sizeof out) == l);
    xds_detok_free(&d);
}

/* Long inputs (the ones bench/bench_tokenizer.c times): ~20 KB of mixed
 * text, 100 KB of '<' (the first byte of most special tokens) and 100 KB of
 * one letter (a single 100 KB pre-token for BPE) encode, and decode back to
 * the same bytes. */
static void check_long_inputs(const xds_tokenizer *t, const char *name) {
    const char *unit = "The quick brown fox jumps over the lazy dog. It's 2024, 你好世界！ Привет, мир. "
                       "def f(x):\n    return x * 2  # 😀👍🏽\n\t\tfor i in range(10): print(i)\n";
    size_t ul = strlen(unit), reps = 20000 / ul + 1;
    char *buf = malloc(100000);
    for (int f = 0; f < 3; f++) {
        size_t n_in = f == 0 ? ul * reps : 100000;
        if (f == 0)
            for (size_t r = 0; r < reps; r++) memcpy(buf + r * ul, unit, ul);
        else memset(buf, f == 1 ? '<' : 'a', n_in);
        int32_t *ids = NULL;
        size_t n = 0, n_out = 0;
        char *out = NULL;
        CHECK_MSG(xds_tokenizer_encode(t, buf, n_in, 1, &ids, &n) == XDS_OK && n > 0, "%s long input %d: %s", name,
                  f, xds_err_msg());
        if (ids) CHECK(xds_tokenizer_decode(t, ids, n, 0, &out, &n_out) == XDS_OK);
        CHECK_MSG(out && n_out == n_in && memcmp(out, buf, n_in) == 0,
                  "%s long input %d (%zu bytes, %zu tokens): decode does not give the input back", name, f, n_in, n);
        if (f == 1) CHECK_MSG(n < n_in, "%s: 100 KB of '<' gave %zu tokens (no merges?)", name, n);
        free(out);
        free(ids);
    }
    free(buf);
}

/* ---- chat templates ----------------------------------------------------- */

static void check_chat(const xds_tokenizer *t, const char *family) {
    json_error_t err;
    json_t *root = json_load_file("tests/data/tokenizer/chat.json", 0, &err);
    CHECK_MSG(root != NULL, "chat.json: %s", err.text);
    if (!root) return;
    json_t *convs = json_object_get(root, "conversations"), *renders = json_object_get(root, "renders");
    size_t i;
    json_t *r;
    int n = 0, ok = 0;
    json_array_foreach(renders, i, r) {
        if (strcmp(json_string_value(json_object_get(r, "family")), family)) continue;
        json_t *conv = json_array_get(convs, json_integer_value(json_object_get(r, "conv")));
        size_t nm = json_array_size(conv);
        xds_chat_msg *msgs = calloc(nm ? nm : 1, sizeof *msgs);
        for (size_t k = 0; k < nm; k++) {
            msgs[k].role = json_string_value(json_object_get(json_array_get(conv, k), "role"));
            msgs[k].content = json_string_value(json_object_get(json_array_get(conv, k), "content"));
        }
        json_t *th = json_object_get(r, "enable_thinking");
        xds_chat_opts o = {.enable_thinking = json_is_boolean(th) ? json_is_true(th) : -1};
        char *out = NULL;
        xds_status rc = xds_chat_render_ex(t, msgs, nm, json_is_true(json_object_get(r, "add_generation_prompt")), &o, &out);
        const char *want = json_string_value(json_object_get(r, "text"));
        n++;
        if (rc == XDS_OK && !strcmp(out, want)) ok++;
        else fprintf(stderr, "%s chat render %zu differs:\n--- got\n%s\n--- want\n%s\n", family, i, out ? out : xds_err_msg(), want);
        free(out);
        free(msgs);
    }
    printf("%s: %d/%d chat renders equal transformers\n", family, ok, n);
    CHECK(n >= 30 && ok == n);
    json_decref(root);
}

/* ---- bad tokenizer.json ------------------------------------------------- */

static void check_bad_json(void) {
    static const struct { const char *json; xds_status want; } bad[] = {
        {"", XDS_ERR_FORMAT},
        {"{", XDS_ERR_FORMAT},
        {"[]", XDS_ERR_FORMAT},
        {"{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}", XDS_ERR_UNSUPPORTED},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a b\"]}, \"pre_tokenizer\": {\"type\": \"ByteLevel\"}}", XDS_ERR_FORMAT},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -4}, \"merges\": []}}", XDS_ERR_FORMAT},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 99999999999}, \"merges\": []}}", XDS_ERR_FORMAT},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 0}, \"merges\": []}, \"pre_tokenizer\": {\"type\": \"ByteLevel\"}}", XDS_ERR_FORMAT},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a\"]}, \"pre_tokenizer\": {\"type\": \"ByteLevel\"}}", XDS_ERR_FORMAT},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}", XDS_ERR_UNSUPPORTED}, /* not byte-level */
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"(\"}}, \"decoder\": {\"type\": \"ByteLevel\"}}", XDS_ERR_FORMAT},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, \"pre_tokenizer\": {\"type\": \"Metaspace\"}}", XDS_ERR_UNSUPPORTED},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, \"normalizer\": {\"type\": \"Lowercase\"}, \"pre_tokenizer\": {\"type\": \"ByteLevel\"}}", XDS_ERR_UNSUPPORTED},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, \"added_tokens\": [{\"id\": 0, \"content\": \"zz\"}], \"pre_tokenizer\": {\"type\": \"ByteLevel\"}}", XDS_ERR_FORMAT},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        xds_tokenizer *t = NULL;
        xds_status rc = xds_tokenizer_load_json_mem(bad[i].json, strlen(bad[i].json), NULL, 0, &t);
        CHECK_MSG(rc == bad[i].want && t == NULL && xds_err_msg()[0], "bad json %zu: rc %d (%s)", i, rc, xds_err_msg());
        if (!rc) xds_tokenizer_free(t);
    }
    xds_tokenizer *t = NULL;
    CHECK(xds_tokenizer_load_json("/nonexistent/tokenizer.json", NULL, &t) == XDS_ERR_IO && t == NULL);

    /* a tiny valid one: merges in both forms; an added token; Digits; encode works */
    const char *tiny =
        "{\"added_tokens\": [{\"id\": 6, \"content\": \"<eos>\", \"special\": true}],"
        " \"normalizer\": null,"
        " \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Digits\", \"individual_digits\": true},"
        "   {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": true}]},"
        " \"decoder\": {\"type\": \"ByteLevel\"},"
        " \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2, \"abb\": 3, \"1\": 4, \"\\u0120\": 5},"
        "   \"merges\": [\"a b\", [\"ab\", \"b\"]]}}";
    CHECK(xds_tokenizer_load_json_mem(tiny, strlen(tiny), "{\"eos_token\": \"<eos>\"}", 22, &t) == XDS_OK);
    if (t) {
        int32_t *ids = NULL;
        size_t n = 0;
        CHECK(xds_tokenizer_encode(t, "abb ab11<eos>", 13, 1, &ids, &n) == XDS_OK);
        int32_t want[] = {3, 5, 2, 4, 4, 6};
        CHECK(n == 6 && !memcmp(ids, want, sizeof want));
        free(ids);
        CHECK(xds_tokenizer_eos(t) == 6 && xds_tokenizer_is_eog(t, 6) && xds_tokenizer_is_special(t, 6));
        /* characters outside the vocabulary are dropped (no unk), like HF */
        CHECK(xds_tokenizer_encode(t, "zab", 3, 1, &ids, &n) == XDS_OK && n == 1 && ids[0] == 2);
        free(ids);
        CHECK(xds_chat_family_of(t) == XDS_CHAT_NONE);
        char *out = NULL;
        xds_chat_msg m = {"user", "hi"};
        CHECK(xds_chat_render(t, &m, 1, 1, &out) == XDS_ERR_UNSUPPORTED && out == NULL);
        xds_tokenizer_free(t);
    }
    /* tokenizer_config.json as transformers writes it: model_max_length is
     * int(1e30), beyond int64 (the file of any tokenizer saved without a limit) */
    const char *cfg_big = "{\"eos_token\": \"<eos>\", \"model_max_length\": 1000000000000000019884624838656}";
    t = NULL;
    CHECK_MSG(xds_tokenizer_load_json_mem(tiny, strlen(tiny), cfg_big, strlen(cfg_big), &t) == XDS_OK,
              "config with int(1e30): %s", xds_err_msg());
    if (t) {
        CHECK(xds_tokenizer_eos(t) == 6);
        xds_tokenizer_free(t);
    }
}


/* Token texts that are not byte-level (SentencePiece's U+2581, any char past
 * the byte alphabet) are kept as they are; in a vocabulary large enough to
 * grow the text arena while the pieces are stored, the piece pointed into the
 * arena being reallocated (a use-after-free ASan reports here). */
static void check_arena_growth(void) {
    const int n = 40000;
    size_t cap = (size_t)n * 40 + 1024, o = 0;
    char *js = malloc(cap);
    CHECK(js != NULL);
    if (!js) return;
    o += (size_t)snprintf(js + o, cap - o,
                          "{\"added_tokens\": [], \"normalizer\": null, \"pre_tokenizer\": {\"type\": \"ByteLevel\","
                          " \"add_prefix_space\": false, \"use_regex\": true}, \"decoder\": {\"type\": \"ByteLevel\"},"
                          " \"model\": {\"type\": \"BPE\", \"merges\": [], \"vocab\": {\"a\": 0");
    for (int i = 1; i < n; i++) o += (size_t)snprintf(js + o, cap - o, ", \"\\u2581w%05d\": %d", i, i);
    o += (size_t)snprintf(js + o, cap - o, "}}}");
    xds_tokenizer *t = NULL;
    CHECK_MSG(xds_tokenizer_load_json_mem(js, o, NULL, 0, &t) == XDS_OK, "%s", xds_err_msg());
    if (t) {
        CHECK(xds_tokenizer_n_vocab(t) == n);
        /* the piece of a late token is its own text, byte for byte */
        char *txt = NULL;
        int32_t id = n - 1;
        size_t tl = 0;
        CHECK(xds_tokenizer_decode(t, &id, 1, 0, &txt, &tl) == XDS_OK);
        CHECK_MSG(txt && !strcmp(txt, "\xe2\x96\x81w39999"), "decode(%d) = \"%s\"", (int)id, txt ? txt : "(null)");
        free(txt);
        xds_tokenizer_free(t);
    }
    free(js);
}

/* ---- GGUF path == JSON path --------------------------------------------- */

/* A GGUF image holding only tokenizer metadata, written the way llama.cpp's
 * converter writes it: tokens, token_type (3 control = special added, 4
 * user-defined = other added, 1 normal), merges as "a b", pre. */
typedef struct {
    unsigned char *b;
    size_t n, cap;
} wbuf;

static void wb_put(wbuf *w, const void *p, size_t n) {
    if (w->n + n > w->cap) w->b = realloc(w->b, w->cap = (w->n + n) * 2 + 1024);
    memcpy(w->b + w->n, p, n);
    w->n += n;
}
static void wb_u32(wbuf *w, uint32_t v) { wb_put(w, &v, 4); }
static void wb_u64(wbuf *w, uint64_t v) { wb_put(w, &v, 8); }
static void wb_str(wbuf *w, const char *s, size_t n) { wb_u64(w, n); wb_put(w, s, n); }
static void wb_key(wbuf *w, const char *k, uint32_t type) { wb_str(w, k, strlen(k)); wb_u32(w, type); }

static unsigned char *gguf_from_tokenizer_json(const char *tj, const char *pre, int32_t bos, int32_t eos,
                                               size_t *size) {
    json_error_t err;
    json_t *root = json_load_file(tj, 0, &err);
    if (!root) return NULL;
    json_t *model = json_object_get(root, "model"), *vocab = json_object_get(model, "vocab");
    json_t *merges = json_object_get(model, "merges"), *added = json_object_get(root, "added_tokens");
    size_t n = 0, i;
    const char *key;
    json_t *v, *e;
    json_object_foreach(vocab, key, v) if ((size_t)json_integer_value(v) + 1 > n) n = json_integer_value(v) + 1;
    json_array_foreach(added, i, e) if ((size_t)json_integer_value(json_object_get(e, "id")) + 1 > n)
        n = json_integer_value(json_object_get(e, "id")) + 1;
    const char **txt = calloc(n, sizeof *txt);
    int32_t *type = calloc(n, sizeof *type);
    json_object_foreach(vocab, key, v) { txt[json_integer_value(v)] = key; type[json_integer_value(v)] = 1; }
    json_array_foreach(added, i, e) {
        int64_t id = json_integer_value(json_object_get(e, "id"));
        txt[id] = json_string_value(json_object_get(e, "content"));
        type[id] = json_is_true(json_object_get(e, "special")) ? 3 : 4;
    }
    wbuf w = {0};
    wb_put(&w, "GGUF", 4);
    wb_u32(&w, 3);
    wb_u64(&w, 0);
    wb_u64(&w, 5 + (bos >= 0) + (eos >= 0));
    wb_key(&w, "tokenizer.ggml.model", 8); wb_str(&w, "gpt2", 4);
    wb_key(&w, "tokenizer.ggml.pre", 8); wb_str(&w, pre, strlen(pre));
    wb_key(&w, "tokenizer.ggml.tokens", 9); wb_u32(&w, 8); wb_u64(&w, n);
    for (size_t k = 0; k < n; k++) wb_str(&w, txt[k] ? txt[k] : "", txt[k] ? strlen(txt[k]) : 0);
    wb_key(&w, "tokenizer.ggml.token_type", 9); wb_u32(&w, 5); wb_u64(&w, n);
    for (size_t k = 0; k < n; k++) wb_u32(&w, (uint32_t)(type[k] ? type[k] : 5));
    wb_key(&w, "tokenizer.ggml.merges", 9); wb_u32(&w, 8); wb_u64(&w, json_array_size(merges));
    json_array_foreach(merges, i, e) {
        char buf[1024];
        if (json_is_string(e)) snprintf(buf, sizeof buf, "%s", json_string_value(e));
        else snprintf(buf, sizeof buf, "%s %s", json_string_value(json_array_get(e, 0)), json_string_value(json_array_get(e, 1)));
        wb_str(&w, buf, strlen(buf));
    }
    if (bos >= 0) { wb_key(&w, "tokenizer.ggml.bos_token_id", 4); wb_u32(&w, (uint32_t)bos); }
    if (eos >= 0) { wb_key(&w, "tokenizer.ggml.eos_token_id", 4); wb_u32(&w, (uint32_t)eos); }
    while (w.n % 32) wb_put(&w, "", 1);
    free(txt);
    free(type);
    json_decref(root);
    *size = w.n;
    return w.b;
}

/* The GGUF path with llama.cpp's pre name must give the fixture's ids too. */
static void check_gguf_equivalence(const char *name, const char *tj, const char *pre, const char *fixture) {
    size_t size;
    unsigned char *img = gguf_from_tokenizer_json(tj, pre, -1, -1, &size);
    CHECK(img != NULL);
    if (!img) return;
    xds_gguf *g = NULL;
    xds_tokenizer *t = NULL;
    CHECK_MSG(xds_gguf_open_memory(img, size, "test.gguf", &g) == XDS_OK, "%s", xds_err_msg());
    if (g) CHECK_MSG(xds_tokenizer_load_gguf(g, &t) == XDS_OK, "%s", xds_err_msg());
    json_t *root = t ? json_load_file(fixture, JSON_ALLOW_NUL, NULL) : NULL;
    size_t i, ok = 0, total = 0;
    json_t *c;
    json_array_foreach(json_object_get(root, "cases"), i, c) {
        json_t *jt = json_object_get(c, "text");
        int32_t *ids = NULL;
        size_t n = 0;
        total++;
        if (xds_tokenizer_encode(t, json_string_value(jt), json_string_length(jt), 1, &ids, &n) == XDS_OK &&
            ids_equal(ids, n, json_object_get(c, "ids")))
            ok++;
        else if (total - ok <= 3)
            fprintf(stderr, "%s via GGUF pre '%s': case %zu differs: \"%s\"\n", name, pre, i, json_string_value(jt));
        free(ids);
    }
    printf("%s via GGUF (pre '%s'): %zu/%zu strings match\n", name, pre, ok, total);
    CHECK(total >= 300 && ok == total);
    json_decref(root);
    xds_tokenizer_free(t);
    xds_gguf_close(g);
    free(img);
}

/* Small trained tokenizers exercising Split behaviors, invert, literal
 * patterns, ByteLevel prefix space, Digits runs, lstrip/rstrip and normalized
 * added tokens, ignore_merges (tests/data/tokenizer/variants.json). */
static void check_variants(void) {
    json_error_t err;
    json_t *root = json_load_file("tests/data/tokenizer/variants.json", JSON_ALLOW_NUL, &err);
    CHECK_MSG(root != NULL, "variants.json: %s", err.text);
    size_t i, k;
    json_t *v, *c;
    json_array_foreach(json_object_get(root, "variants"), i, v) {
        const char *name = json_string_value(json_object_get(v, "name"));
        json_t *tj = json_object_get(v, "tokenizer_json");
        xds_tokenizer *t = NULL;
        CHECK_MSG(xds_tokenizer_load_json_mem(json_string_value(tj), json_string_length(tj), NULL, 0, &t) == XDS_OK,
                  "%s: %s", name, xds_err_msg());
        if (!t) continue;
        int ok = 0, n_cases = 0;
        json_array_foreach(json_object_get(v, "cases"), k, c) {
            json_t *jt = json_object_get(c, "text");
            int32_t *ids = NULL;
            size_t n = 0;
            n_cases++;
            if (xds_tokenizer_encode(t, json_string_value(jt), json_string_length(jt), 1, &ids, &n) == XDS_OK &&
                ids_equal(ids, n, json_object_get(c, "ids")))
                ok++;
            else if (n_cases - ok <= 2) {
                fprintf(stderr, "variant %s: \"%s\" differs\n", name, json_string_value(jt));
                print_ids("got", ids, n);
            }
            free(ids);
        }
        printf("variant %s: %d/%d strings match\n", name, ok, n_cases);
        CHECK(n_cases >= 50 && ok == n_cases);
        xds_tokenizer_free(t);
    }
    json_decref(root);
}

static int file_exists(const char *p) { return access(p, R_OK) == 0; }

int main(void) {
    check_bad_json();
    check_arena_growth();
    check_variants();

    const char *model = test_model_path();
    if (!model) {
        TEST_SKIP("SmolLM2 tokenizer: XDS_TEST_MODEL not set");
    } else {
        xds_gguf *g = NULL;
        xds_tokenizer *t = NULL;
        CHECK_MSG(xds_gguf_open(model, &g) == XDS_OK, "%s", xds_err_msg());
        if (g) CHECK_MSG(xds_tokenizer_load_gguf(g, &t) == XDS_OK, "%s", xds_err_msg());
        if (t) {
            CHECK(xds_tokenizer_n_vocab(t) == 49152);
            CHECK(xds_chat_family_of(t) == XDS_CHAT_CHATML);
            CHECK(xds_tokenizer_is_eog(t, xds_tokenizer_find(t, "<|endoftext|>")));
            CHECK(!xds_tokenizer_is_eog(t, xds_tokenizer_find(t, "<|im_start|>")));
            CHECK(xds_tokenizer_is_special(t, xds_tokenizer_find(t, "<|im_start|>")));
            check_fixture(t, "smollm2", "tests/data/tokenizer/ids_smollm2.json");
            check_invalid_utf8(t);
            check_detok_edges(t);
            check_chat(t, "smollm2");
            check_long_inputs(t, "smollm2");
            xds_tokenizer_free(t);
        }
        xds_gguf_close(g);
    }

    static const struct { const char *name; xds_chat_family fam; int n_vocab; const char *gguf_pre; } hf[] = {
        {"qwen3", XDS_CHAT_QWEN3, 151669, "qwen2"},
        {"deepseek_v3", XDS_CHAT_DEEPSEEK_V3, 128815, "deepseek-v3"},
    };
    for (size_t k = 0; k < 2; k++) {
        char tj[4096], tc[4096], fx[256];
        snprintf(tj, sizeof tj, "%s/%s/tokenizer.json", test_tokenizers_dir(), hf[k].name);
        snprintf(tc, sizeof tc, "%s/%s/tokenizer_config.json", test_tokenizers_dir(), hf[k].name);
        snprintf(fx, sizeof fx, "tests/data/tokenizer/ids_%s.json", hf[k].name);
        if (!file_exists(tj) || !file_exists(tc)) {
            TEST_SKIP("%s tokenizer: %s not found (XDS_TEST_TOKENIZERS, default ../shared/tokenizers beside the repo)",
                      hf[k].name, tj);
            continue;
        }
        xds_tokenizer *t = NULL;
        CHECK_MSG(xds_tokenizer_load_json(tj, tc, &t) == XDS_OK, "%s", xds_err_msg());
        if (!t) continue;
        CHECK(xds_tokenizer_n_vocab(t) == hf[k].n_vocab);
        CHECK(xds_chat_family_of(t) == hf[k].fam);
        check_fixture(t, hf[k].name, fx);
        check_invalid_utf8(t);
        check_detok_edges(t);
        check_chat(t, hf[k].name);
        check_long_inputs(t, hf[k].name);
        xds_tokenizer_free(t);
        check_gguf_equivalence(hf[k].name, tj, hf[k].gguf_pre, fx);
    }
    TEST_MAIN_END();
}
