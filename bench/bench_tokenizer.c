/*
 * bench_tokenizer.c — tokenizer encoding speed: load time, ~20 KB of mixed
 * text (English, CJK, Cyrillic, code, emoji), and two adversarial inputs of
 * 100 KB (all '<', the first byte of most special tokens; all 'a', one 100 KB
 * pre-token for BPE). Each figure is the median of REPS encodes.
 * Usage: bench_tokenizer TOKENIZER [REPS]   (TOKENIZER: a .gguf file, or a
 * directory with tokenizer.json and tokenizer_config.json)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "bench_util.h"
#include "format/gguf.h"
#include "tokenizer/tokenizer.h"

/* Median seconds of reps encodes of buf[0..n); *n_ids: the token count. */
static int time_encode(const xds_tokenizer *t, const char *buf, size_t n, int reps, double *med, size_t *n_ids) {
    double *ts = malloc(sizeof(double) * (size_t)reps);
    if (!ts) return 1;
    for (int r = 0; r < reps; r++) {
        int32_t *ids = NULL;
        double t0 = bench_now_s();
        xds_status s = xds_tokenizer_encode(t, buf, n, 1, &ids, n_ids);
        ts[r] = bench_now_s() - t0;
        free(ids);
        if (s != XDS_OK) {
            fprintf(stderr, "bench_tokenizer: encode: %s\n", xds_err_msg());
            free(ts);
            return 1;
        }
    }
    qsort(ts, (size_t)reps, sizeof(double), bench_cmp_d);
    *med = ts[reps / 2];
    free(ts);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: bench_tokenizer TOKENIZER [REPS]  (a .gguf file or a tokenizer.json directory)\n");
        return 2;
    }
    int reps = argc == 3 ? atoi(argv[2]) : 5;
    if (reps < 1 || reps > 10000) {
        fprintf(stderr, "bench_tokenizer: REPS must be in [1, 10000]\n");
        return 2;
    }
    struct stat sb;
    if (stat(argv[1], &sb) != 0) {
        fprintf(stderr, "bench_tokenizer: %s: not found\n", argv[1]);
        return 1;
    }
    xds_tokenizer *t = NULL;
    xds_gguf *g = NULL;
    double t0 = bench_now_s();
    xds_status s;
    if (S_ISDIR(sb.st_mode)) {
        char tj[4096], tc[4096];
        snprintf(tj, sizeof tj, "%s/tokenizer.json", argv[1]);
        snprintf(tc, sizeof tc, "%s/tokenizer_config.json", argv[1]);
        s = xds_tokenizer_load_json(tj, tc, &t);
    } else {
        s = xds_gguf_open(argv[1], &g);
        if (s == XDS_OK) s = xds_tokenizer_load_gguf(g, &t);
    }
    double load = bench_now_s() - t0;
    if (s != XDS_OK) {
        fprintf(stderr, "bench_tokenizer: %s: %s\n", argv[1], xds_err_msg());
        xds_gguf_close(g);
        return 1;
    }
    printf("load %.1f ms (vocab %d)\n", load * 1e3, xds_tokenizer_n_vocab(t));

    const char *unit = "The quick brown fox jumps over the lazy dog. It's 2024, 你好世界！ Привет, мир. "
                       "def f(x):\n    return x * 2  # 😀👍🏽\n\t\tfor i in range(10): print(i)\n";
    size_t ul = strlen(unit), reps_u = 20000 / ul + 1, n = 0;
    char *buf = malloc(100000);
    int rc = !buf;
    double med = 0;
    if (!rc) {
        for (size_t r = 0; r < reps_u; r++) memcpy(buf + r * ul, unit, ul);
        rc = time_encode(t, buf, ul * reps_u, reps, &med, &n);
        if (!rc)
            printf("mixed text: %zu bytes -> %zu tokens in %.2f ms (%.1f MB/s), median of %d\n", ul * reps_u, n,
                   med * 1e3, ul * reps_u / med / 1e6, reps);
    }
    const char fills[2] = {'<', 'a'};
    for (int f = 0; f < 2 && !rc; f++) {
        memset(buf, fills[f], 100000);
        rc = time_encode(t, buf, 100000, reps, &med, &n);
        if (!rc) printf("100 KB of '%c': %zu tokens in %.1f ms, median of %d\n", fills[f], n, med * 1e3, reps);
    }
    free(buf);
    xds_tokenizer_free(t);
    xds_gguf_close(g);
    return rc;
}
