/*
 * fuzz_tokenizer_json.c — libFuzzer target for the tokenizer.json loader.
 * The input is a tokenizer.json (xds_tokenizer_load_json_mem, the same code
 * as loading from a file), optionally followed by a NUL byte and a
 * tokenizer_config.json; when it loads, fixed texts are encoded with and
 * without special-token parsing, decoded, streamed through the detokenizer
 * and rendered as a chat, so every table the loader built gets used.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tokenizer.h"

static const char *const texts[] = {
    "Hello world! It's 2024: 12345 caf\xc3\xa9 e\xcc\x81 \xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\x98\x80\xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd",
    "<|im_start|>user\n  spaces\t\ttabs\r\n<|im_end|><eos><s>",
    "",
    "\xff invalid",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    xds_tokenizer *t;
    const uint8_t *nul = memchr(data, 0, size);
    size_t len = nul ? (size_t)(nul - data) : size;
    const char *cfg = nul ? (const char *)nul + 1 : NULL;
    size_t cfg_len = nul ? size - len - 1 : 0;
    if (xds_tokenizer_load_json_mem((const char *)data, len, cfg, cfg_len, &t) != XDS_OK) return 0;
    for (size_t k = 0; k < sizeof texts / sizeof texts[0]; k++) {
        for (int ps = 0; ps < 2; ps++) {
            int32_t *ids;
            size_t n;
            if (xds_tokenizer_encode(t, texts[k], strlen(texts[k]), ps, &ids, &n) != XDS_OK) continue;
            for (size_t i = 0; i < n; i++)
                if (ids[i] < 0 || ids[i] >= xds_tokenizer_n_vocab(t)) __builtin_trap();
            char *out;
            size_t len;
            if (xds_tokenizer_decode(t, ids, n, ps, &out, &len) == XDS_OK) free(out);
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
    xds_chat_msg m[2] = {{"user", "hi"}, {"assistant", "<think>x</think>y"}};
    char *out;
    if (xds_chat_render(t, m, 2, 1, &out) == XDS_OK) free(out);
    volatile int sink = xds_tokenizer_bos(t) + xds_tokenizer_eos(t) + xds_tokenizer_add_bos(t);
    (void)sink;
    xds_tokenizer_free(t);
    return 0;
}
