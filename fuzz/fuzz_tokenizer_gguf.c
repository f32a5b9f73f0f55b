/*
 * fuzz_tokenizer_gguf.c — libFuzzer target for tokenizer construction from
 * GGUF metadata (xds_tokenizer_load_gguf): the tokens / merges / token_type
 * arrays, pre-tokenizer name, special ids, add_bos flag and chat template as
 * a GGUF carries them. The input is not a GGUF file but its fields, so that
 * mutations explore the tokenizer rather than the container:
 *
 *   byte 0: flags   bit0 token_type present   bit1 token_type as uint32
 *                   bit2 add_bos_token present (value: bit3)
 *                   bit4 bos id  bit5 eos id  bit6 eot id present
 *                   bit7 the rest of the input is a whole GGUF file instead
 *   then sections separated by NUL bytes:
 *     1 tokens, '\n'-separated     2 merges, '\n'-separated
 *     3 token types, one byte per token (missing ones: 1, normal)
 *     4 tokenizer.ggml.pre         5 tokenizer.chat_template
 *     6 tokenizer.ggml.model (empty or absent: "gpt2")
 *     7 (everything after the sixth NUL, NULs included) bos, eos, eot
 *       ids, 2 bytes each (little endian)
 *
 * The harness writes a GGUF v3 image of those keys, opens it with
 * xds_gguf_open_memory and loads the tokenizer; a failure must leave one
 * non-empty message line, a success is exercised by fuzz_tok_exercise.
 */
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "format/gguf.h"
#include "tokenizer/tokenizer.h"
#include "tok_exercise.h"

typedef struct {
    uint8_t *p;
    size_t n, cap;
} buf;

static void put(buf *b, const void *d, size_t n) {
    if (b->n + n > b->cap) {
        size_t c = b->cap ? b->cap : 4096;
        while (c < b->n + n) c *= 2;
        b->p = realloc(b->p, c);
        if (!b->p) abort();
        b->cap = c;
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void put_u32(buf *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(buf *b, uint64_t v) { put(b, &v, 8); }
static void put_str(buf *b, const void *s, size_t n) {
    put_u64(b, n);
    put(b, s, n);
}
static void put_key(buf *b, const char *k, uint32_t type) {
    put_str(b, k, strlen(k));
    put_u32(b, type);
}

/* Section i of the input (NUL-separated), or NULL. */
typedef struct {
    const uint8_t *p;
    size_t n;
} span;

static size_t count_lines(span s) {
    size_t k = 1;
    for (size_t i = 0; i < s.n; i++) k += s.p[i] == '\n';
    return k;
}

static void put_lines(buf *b, span s) {
    size_t start = 0;
    for (size_t i = 0; i <= s.n; i++)
        if (i == s.n || s.p[i] == '\n') {
            put_str(b, s.p + start, i - start);
            start = i + 1;
        }
}

static void load_and_exercise(const uint8_t *img, size_t n) {
    xds_gguf *g;
    if (xds_gguf_open_memory(img, n, "fuzz.gguf", &g) != XDS_OK) {
        if (getenv("XDS_FUZZ_VERBOSE")) fprintf(stderr, "gguf: %s\n", xds_err_msg());
        return;
    }
    xds_tokenizer *t;
    static int verbose = -1;
    if (verbose < 0) verbose = getenv("XDS_FUZZ_VERBOSE") != NULL;
    if (xds_tokenizer_load_gguf(g, &t) != XDS_OK) {
        const char *m = xds_err_msg(); /* errors are one non-empty line */
        if (verbose) fprintf(stderr, "load: %s\n", m);
        if (!m[0] || strchr(m, '\n')) __builtin_trap();
    } else {
        /* the tokenizer must not keep views into the GGUF: close it first */
        if (verbose) fprintf(stderr, "load: ok, %d ids, chat family %d\n", xds_tokenizer_n_vocab(t), xds_chat_family_of(t));
        xds_gguf_close(g);
        g = NULL;
        fuzz_tok_exercise(t);
        xds_tokenizer_free(t);
    }
    xds_gguf_close(g);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    uint8_t fl = data[0];
    if (fl & 0x80) { /* a whole GGUF file, in a buffer of its own so it can be freed before use */
        uint8_t *img = malloc(size - 1 ? size - 1 : 1);
        if (!img) return 0;
        memcpy(img, data + 1, size - 1);
        load_and_exercise(img, size - 1);
        free(img);
        return 0;
    }
    span sec[7] = {{0}};
    int ns = 0;
    size_t start = 1;
    for (size_t i = 1; i <= size && ns < 6; i++)
        if (i == size || data[i] == 0) {
            sec[ns++] = (span){data + start, i - start};
            start = i + 1;
        }
    if (ns == 6 && start <= size) sec[ns++] = (span){data + start, size - start};
    if (ns < 1) return 0;
    size_t n_tok = count_lines(sec[0]);
    if (n_tok > 70000) return 0;

    buf b = {0};
    uint64_t n_kv = 3 + !!(fl & 1) + !!(fl & 4) + !!(fl & 0x10) + !!(fl & 0x20) + !!(fl & 0x40) +
                    (ns > 3) + (ns > 4);
    put(&b, "GGUF", 4);
    put_u32(&b, 3);
    put_u64(&b, 0); /* tensors */
    put_u64(&b, n_kv);
    put_key(&b, "tokenizer.ggml.model", XDS_GGUF_STRING);
    if (ns > 5 && sec[5].n) put_str(&b, sec[5].p, sec[5].n);
    else put_str(&b, "gpt2", 4);
    put_key(&b, "tokenizer.ggml.tokens", XDS_GGUF_ARRAY);
    put_u32(&b, XDS_GGUF_STRING);
    put_u64(&b, n_tok);
    put_lines(&b, sec[0]);
    put_key(&b, "tokenizer.ggml.merges", XDS_GGUF_ARRAY);
    put_u32(&b, XDS_GGUF_STRING);
    if (ns > 1 && sec[1].n) {
        put_u64(&b, count_lines(sec[1]));
        put_lines(&b, sec[1]);
    } else {
        put_u64(&b, 0);
    }
    if (fl & 1) {
        put_key(&b, "tokenizer.ggml.token_type", XDS_GGUF_ARRAY);
        put_u32(&b, fl & 2 ? XDS_GGUF_UINT32 : XDS_GGUF_INT32);
        put_u64(&b, n_tok);
        for (size_t i = 0; i < n_tok; i++) put_u32(&b, ns > 2 && i < sec[2].n ? sec[2].p[i] : 1);
    }
    if (fl & 4) {
        put_key(&b, "tokenizer.ggml.add_bos_token", XDS_GGUF_BOOL);
        uint8_t v = !!(fl & 8);
        put(&b, &v, 1);
    }
    static const char *const id_keys[3] = {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                                           "tokenizer.ggml.eot_token_id"};
    for (int k = 0; k < 3; k++) {
        if (!(fl & (0x10 << k))) continue;
        uint32_t v = 0;
        if (ns > 6 && sec[6].n >= 2 * (size_t)k + 2) v = sec[6].p[2 * k] | (uint32_t)sec[6].p[2 * k + 1] << 8;
        put_key(&b, id_keys[k], XDS_GGUF_UINT32);
        put_u32(&b, v);
    }
    if (ns > 3) {
        put_key(&b, "tokenizer.ggml.pre", XDS_GGUF_STRING);
        put_str(&b, sec[3].p, sec[3].n);
    }
    if (ns > 4) {
        put_key(&b, "tokenizer.chat_template", XDS_GGUF_STRING);
        put_str(&b, sec[4].p, sec[4].n);
    }
    load_and_exercise(b.p, b.n);
    free(b.p);
    return 0;
}
