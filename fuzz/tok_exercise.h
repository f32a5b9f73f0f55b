/*
 * tok_exercise.h — shared by the tokenizer fuzz targets: uses every table a
 * freshly loaded tokenizer built. Fixed texts are encoded with and without
 * special-token parsing (every id must be in the vocabulary), decoded,
 * streamed through the detokenizer with a small buffer, and a conversation is
 * rendered with the tokenizer's chat template and encoded; every piece of the
 * first ids is read whole, so a view past the loader's arena shows up under
 * ASan.
 */
#ifndef XDS_FUZZ_TOK_EXERCISE_H
#define XDS_FUZZ_TOK_EXERCISE_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tokenizer.h"

static const char *const fuzz_tok_texts[] = {
    "Hello world! It's 2024: 12345 caf\xc3\xa9 e\xcc\x81 \xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\x98\x80\xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd",
    "<|im_start|>user\n  spaces\t\ttabs\r\n<|im_end|><eos><s>",
    "",
    "\xff invalid",
};

static void fuzz_tok_exercise(xds_tokenizer *t) {
    int nv = xds_tokenizer_n_vocab(t);
    if (nv <= 0) __builtin_trap();
    volatile unsigned sink = 0;
    for (int32_t id = -1; id <= nv && id < 1024; id++) {
        size_t len;
        const char *p = xds_tokenizer_piece(t, id, &len);
        if ((id < 0 || id >= nv) && p) __builtin_trap();
        if (p && len) sink += (unsigned char)p[0] + (unsigned char)p[len - 1];
        sink += xds_tokenizer_is_eog(t, id) + xds_tokenizer_is_special(t, id);
    }
    for (size_t k = 0; k < sizeof fuzz_tok_texts / sizeof fuzz_tok_texts[0]; k++) {
        for (int ps = 0; ps < 2; ps++) {
            int32_t *ids;
            size_t n;
            if (xds_tokenizer_encode(t, fuzz_tok_texts[k], strlen(fuzz_tok_texts[k]), ps, &ids, &n) != XDS_OK)
                continue;
            for (size_t i = 0; i < n; i++)
                if (ids[i] < 0 || ids[i] >= nv) __builtin_trap();
            char *out;
            size_t len;
            if (xds_tokenizer_decode(t, ids, n, ps, &out, &len) == XDS_OK) {
                if (out[len] != 0) __builtin_trap();
                free(out);
            }
            xds_detok d;
            xds_detok_init(&d, ps);
            char buf[16];
            for (size_t i = 0; i < n; i++) {
                size_t w = xds_detok_push(&d, t, ids[i], buf, sizeof buf);
                while (w == sizeof buf) w = xds_detok_push(&d, t, -1, buf, sizeof buf);
            }
            while (xds_detok_flush(&d, buf, sizeof buf) == sizeof buf) {}
            xds_detok_free(&d);
            free(ids);
        }
    }
    xds_chat_msg m[3] = {{"system", "be brief"}, {"user", "hi"}, {"assistant", "<think>x</think>y"}};
    char *out;
    if (xds_chat_render(t, m, 3, 1, &out) == XDS_OK) {
        int32_t *ids;
        size_t n;
        if (xds_tokenizer_encode(t, out, strlen(out), 1, &ids, &n) == XDS_OK) free(ids);
        free(out);
    }
    int32_t bos = xds_tokenizer_bos(t), eos = xds_tokenizer_eos(t);
    if (bos < -1 || bos >= nv || eos < -1 || eos >= nv) __builtin_trap();
    sink += (unsigned)(bos + eos + xds_tokenizer_add_bos(t) + xds_chat_family_of(t));
    const char *tpl = xds_tokenizer_chat_template(t);
    if (tpl) sink += (unsigned char)tpl[0];
    (void)sink;
}

#endif
