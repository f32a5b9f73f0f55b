/*
 * test_quant_ref.c — the reference (de)quantizers (src/tensor/quant_ref.c,
 * f16/bf16 conversion in dtype.c) against an external implementation: the
 * `gguf` Python package's numpy (de)quantizers, through the fixture
 * tests/data/quant/ref.gguf made by tools/gen_quant_fixtures.py.
 *
 * The fixture is itself a GGUF file written by gguf.GGUFWriter, so it is read
 * with the project's GGUF reader: each case's blocks arrive with their ggml
 * type id as a file from llama.cpp's tooling would carry them. For every case
 * (every type the loader accepts: f32, f16, bf16, q8_0, q4_0, q4_1, q4_k,
 * q6_k) the dequantized floats must be bit-identical to gguf's (gguf computes
 * in float32 in ggml's operation order, so there is no rounding slack to
 * allow); for every type the project can quantize (f16, bf16, q8_0, q4_0,
 * q4_1) xds_quant_row of the case's source floats must give gguf's bytes.
 * Q4_K blocks carry 8 distinct scales and mins with sub-blocks 4-7 in the
 * packed high-bit path; a mismatch names the block and sub-block.
 */
#include <math.h>

#include "format/gguf.h"
#include "tensor/dtype.h"
#include "test.h"

#define FIXTURE XDS_SOURCE_DIR "/tests/data/quant/ref.gguf"

static int bits_equal(float a, float b) { return !memcmp(&a, &b, sizeof a); }

static const xds_tensor *find(const xds_gguf *g, const char *c, const char *suffix) {
    char name[160];
    snprintf(name, sizeof name, "%s.%s", c, suffix);
    return xds_gguf_find_tensor(g, name);
}

int main(void) {
    xds_gguf *g = NULL;
    xds_status s = xds_gguf_open(FIXTURE, &g);
    CHECK_MSG(s == XDS_OK, "open %s: %s", FIXTURE, xds_err_msg());
    if (s != XDS_OK) TEST_MAIN_END();
    xds_gguf_type et;
    uint64_t n_cases = 0;
    const void *arr;
    CHECK(xds_gguf_get_arr(g, "xds.quant_ref.cases", &et, &n_cases, &arr) == XDS_OK);
    CHECK_MSG(n_cases >= 15, "fixture lists %llu cases", (unsigned long long)n_cases);
    int deq_seen[XDS_DTYPE_COUNT] = {0}, quant_seen[XDS_DTYPE_COUNT] = {0};
    for (uint64_t i = 0; i < n_cases; i++) {
        const char *cs;
        uint64_t cl;
        char c[128];
        CHECK(xds_gguf_get_arr_str(g, "xds.quant_ref.cases", i, &cs, &cl) == XDS_OK);
        snprintf(c, sizeof c, "%.*s", (int)(cl < 100 ? cl : 100), cs);
        const xds_tensor *raw = find(g, c, "raw"), *deq = find(g, c, "deq"), *src = find(g, c, "src");
        CHECK_MSG(raw && deq, "case %s: tensors missing", c);
        if (!raw || !deq) continue;
        int64_t n = xds_tensor_nelem(raw);
        CHECK_MSG(deq->type == XDS_DTYPE_F32 && xds_tensor_nelem(deq) == n, "case %s: bad reference tensor", c);
        CHECK_MSG(raw->nbytes == xds_dtype_row_bytes(raw->type, n), "case %s: %zu bytes for %lld %s values", c,
                  raw->nbytes, (long long)n, xds_dtype_name(raw->type));
        if (deq->type != XDS_DTYPE_F32 || xds_tensor_nelem(deq) != n) continue;
        const float *want = deq->data;
        float *got = malloc(sizeof(float) * (size_t)n);
        xds_dequant_row(raw->type, raw->data, got, n);
        int64_t bad = -1, n_bad = 0;
        for (int64_t j = 0; j < n; j++)
            if (!bits_equal(got[j], want[j])) {
                if (bad < 0) bad = j;
                n_bad++;
            }
        int bs = xds_dtype_info(raw->type)->block_size;
        CHECK_MSG(n_bad == 0, "%s (%s): %lld of %lld values differ from gguf's; first at %lld (block %lld, "
                  "sub-block of 32: %lld): %.9g, gguf %.9g", c, xds_dtype_name(raw->type), (long long)n_bad,
                  (long long)n, (long long)bad, (long long)(bad / bs), (long long)(bad % bs / 32),
                  bad >= 0 ? got[bad] : 0.0, bad >= 0 ? want[bad] : 0.0);
        deq_seen[raw->type]++;
        printf("%-12s %-5s %5lld values: dequantized bit-identical to gguf: %s\n", c, xds_dtype_name(raw->type),
               (long long)n, n_bad ? "NO" : "yes");
        if (src) {
            CHECK_MSG(src->type == XDS_DTYPE_F32 && xds_tensor_nelem(src) == n, "case %s: bad source tensor", c);
            uint8_t *q = calloc(1, raw->nbytes);
            xds_quant_row(raw->type, src->data, q, n);
            size_t first = raw->nbytes;
            for (size_t b = 0; b < raw->nbytes && first == raw->nbytes; b++)
                if (q[b] != ((const uint8_t *)raw->data)[b]) first = b;
            size_t bb = (size_t)xds_dtype_info(raw->type)->block_bytes;
            CHECK_MSG(first == raw->nbytes, "%s: xds_quant_row differs from gguf.quants.quantize at byte %zu "
                      "(block %zu): %02x vs %02x", c, first, first / bb, first < raw->nbytes ? q[first] : 0,
                      first < raw->nbytes ? ((const uint8_t *)raw->data)[first] : 0);
            quant_seen[raw->type]++;
            printf("%-12s %-5s %5lld values: quantized byte-identical to gguf: %s\n", c, xds_dtype_name(raw->type),
                   (long long)n, first == raw->nbytes ? "yes" : "NO");
            free(q);
        }
        free(got);
    }
    /* every type the GGUF loader accepts was dequantized; every type the
     * project quantizes (but the f32 copy) was quantized */
    const xds_dtype accepted[] = {XDS_DTYPE_F32, XDS_DTYPE_F16, XDS_DTYPE_BF16, XDS_DTYPE_Q8_0,
                                  XDS_DTYPE_Q4_0, XDS_DTYPE_Q4_1, XDS_DTYPE_Q4_K, XDS_DTYPE_Q6_K};
    for (size_t i = 0; i < sizeof accepted / sizeof accepted[0]; i++)
        CHECK_MSG(deq_seen[accepted[i]] > 0, "no reference case for %s", xds_dtype_name(accepted[i]));
    const xds_dtype quantized[] = {XDS_DTYPE_F16, XDS_DTYPE_BF16, XDS_DTYPE_Q8_0, XDS_DTYPE_Q4_0, XDS_DTYPE_Q4_1};
    for (size_t i = 0; i < sizeof quantized / sizeof quantized[0]; i++)
        CHECK_MSG(quant_seen[quantized[i]] > 0, "no quantizer case for %s", xds_dtype_name(quantized[i]));
    /* Q4_K / Q6_K: both the layout-packed and the random-byte cases */
    CHECK(deq_seen[XDS_DTYPE_Q4_K] >= 2 && deq_seen[XDS_DTYPE_Q6_K] >= 2);
    xds_gguf_close(g);
    TEST_MAIN_END();
}
