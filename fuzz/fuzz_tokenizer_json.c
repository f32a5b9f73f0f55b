/*
 * fuzz_tokenizer_json.c — libFuzzer target for the tokenizer.json loader.
 * The input is a tokenizer.json (xds_tokenizer_load_json_mem, the same code
 * as loading from a file), optionally followed by a NUL byte and a
 * tokenizer_config.json; when it loads, fuzz_tok_exercise (tok_exercise.h)
 * encodes, decodes, streams and renders with it, so every table the loader
 * built gets used.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tokenizer.h"
#include "tok_exercise.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    xds_tokenizer *t;
    const uint8_t *nul = memchr(data, 0, size);
    size_t len = nul ? (size_t)(nul - data) : size;
    const char *cfg = nul ? (const char *)nul + 1 : NULL;
    size_t cfg_len = nul ? size - len - 1 : 0;
    if (xds_tokenizer_load_json_mem((const char *)data, len, cfg, cfg_len, &t) != XDS_OK) return 0;
    fuzz_tok_exercise(t);
    xds_tokenizer_free(t);
    return 0;
}
