/*
 * fuzz_safetensors.c — libFuzzer target for the safetensors reader (8-byte
 * header length, JSON header via jansson, data offsets). The input is parsed
 * by xds_safetensors_open_memory (the same parser as the file path); on
 * success every tensor is looked up by name and its first and last data byte
 * touched, so an out-of-bounds view shows up under ASan. Each input is also
 * parsed as "data length byte | header JSON" with the length prefix made
 * right here, which lets the fuzzer reach the JSON checks.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "format/safetensors.h"

static void parse_one(const uint8_t *data, size_t size) {
    xds_safetensors *f;
    if (xds_safetensors_open_memory(data, size, "fuzz.safetensors", &f) != XDS_OK) {
        const char *m = xds_err_msg(); /* errors are one non-empty line */
        if (!m[0] || strchr(m, '\n')) __builtin_trap();
        return;
    }
    volatile uint64_t sink = 0;
    for (int64_t i = 0; i < xds_safetensors_n_tensors(f); i++) {
        const xds_tensor *t = xds_safetensors_tensor(f, i);
        if (xds_safetensors_find(f, t->name) != t) __builtin_trap();
        int64_t n = xds_tensor_nelem(t);
        if (n < 0 || (uint64_t)n * (t->type == XDS_DTYPE_F32 ? 4 : 2) != t->nbytes)
            __builtin_trap();
        if (t->nbytes) {
            const uint8_t *d = t->data;
            sink += d[0] + d[t->nbytes - 1];
        }
    }
    (void)sink;
    xds_safetensors_close(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* 1: the input as a whole file. */
    parse_one(data, size);
    /* 2: the input as "data length byte | header JSON", framed here with a
     * correct header length, so mutations explore the JSON semantics. */
    if (size >= 1) {
        size_t hlen = size - 1, dlen = data[0];
        uint8_t *img = malloc(8 + hlen + dlen);
        if (!img) return 0;
        for (int i = 0; i < 8; i++) img[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
        memcpy(img + 8, data + 1, hlen);
        memset(img + 8 + hlen, 0x5a, dlen);
        parse_one(img, 8 + hlen + dlen);
        free(img);
    }
    return 0;
}
