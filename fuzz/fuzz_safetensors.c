/*
 * fuzz_safetensors.c — libFuzzer target for the safetensors reader (8-byte
 * header length, JSON header via jansson, data offsets). The input is parsed
 * by xds_safetensors_open_memory (the same parser as the file path); on
 * success every tensor is looked up by name and its first and last data byte
 * touched, so an out-of-bounds view shows up under ASan.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "format/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    xds_safetensors *f;
    if (xds_safetensors_open_memory(data, size, "fuzz.safetensors", &f) != XDS_OK) {
        const char *m = xds_err_msg(); /* errors are one non-empty line */
        if (!m[0] || strchr(m, '\n')) __builtin_trap();
        return 0;
    }
    volatile uint64_t sink = 0;
    for (int64_t i = 0; i < xds_safetensors_n_tensors(f); i++) {
        const xds_tensor *t = xds_safetensors_tensor(f, i);
        if (xds_safetensors_find(f, t->name) != t) __builtin_trap();
        int64_t n = xds_tensor_nelem(t);
        if (n < 0 || (uint64_t)n * (t->type == XDS_DTYPE_F32 ? 4 : 2) != t->nbytes) __builtin_trap();
        if (t->nbytes) {
            const uint8_t *d = t->data;
            sink += d[0] + d[t->nbytes - 1];
        }
    }
    (void)sink;
    xds_safetensors_close(f);
    return 0;
}
