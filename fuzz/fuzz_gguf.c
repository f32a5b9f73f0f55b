/*
 * fuzz_gguf.c — libFuzzer target for the GGUF reader. The input is parsed by
 * xds_gguf_open_memory (the same parser as xds_gguf_open); on success every
 * kv is read through every typed getter and every tensor's first and last
 * data byte is touched, so an out-of-bounds view shows up under ASan.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "format/gguf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    xds_gguf *g;
    if (xds_gguf_open_memory(data, size, "fuzz.gguf", &g) != XDS_OK) {
        const char *m = xds_err_msg(); /* errors are one non-empty line */
        if (!m[0] || strchr(m, '\n')) __builtin_trap();
        return 0;
    }
    volatile uint64_t sink = 0;
    for (int64_t i = 0; i < xds_gguf_n_kv(g); i++) {
        const char *key = xds_gguf_kv_key(g, i);
        uint64_t u64, len, n;
        uint32_t u32;
        int64_t i64;
        double f64;
        float f32;
        int b;
        const char *s;
        const void *p;
        xds_gguf_type et;
        if (xds_gguf_find_kv(g, key) != i) __builtin_trap();
        if (xds_gguf_get_u64(g, key, &u64) == XDS_OK) sink += u64;
        if (xds_gguf_get_u32(g, key, &u32) == XDS_OK) sink += u32;
        if (xds_gguf_get_i64(g, key, &i64) == XDS_OK) sink += (uint64_t)i64;
        if (xds_gguf_get_f64(g, key, &f64) == XDS_OK) sink += (uint64_t)(f64 != f64);
        if (xds_gguf_get_f32(g, key, &f32) == XDS_OK) sink += (uint64_t)(f32 != f32);
        if (xds_gguf_get_bool(g, key, &b) == XDS_OK) sink += (uint64_t)b;
        if (xds_gguf_get_str(g, key, &s, &len) == XDS_OK && len)
            sink += (uint8_t)(s[0] + s[len - 1]);
        if (xds_gguf_get_arr(g, key, &et, &n, &p) == XDS_OK) {
            if (xds_gguf_kv_arr(g, i, &et, &n) != XDS_OK) __builtin_trap();
            if (et == XDS_GGUF_STRING) {
                for (uint64_t k = 0; k < n; k++)
                    if (xds_gguf_get_arr_str(g, key, k, &s, &len) == XDS_OK && len)
                        sink += (uint8_t)(s[0] + s[len - 1]);
                    else if (!len)
                        sink++;
                    else
                        __builtin_trap();
            } else if (n) {
                sink += ((const uint8_t *)p)[0];
            }
        }
    }
    for (int64_t i = 0; i < xds_gguf_n_tensors(g); i++) {
        const xds_tensor *t = xds_gguf_tensor(g, i);
        if (xds_gguf_find_tensor(g, t->name) != t) __builtin_trap();
        if (xds_tensor_nelem(t) <= 0 || t->nbytes == 0) __builtin_trap();
        const uint8_t *d = t->data;
        sink += d[0] + d[t->nbytes - 1];
    }
    (void)sink;
    xds_gguf_close(g);
    return 0;
}
