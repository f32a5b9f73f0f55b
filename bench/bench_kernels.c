/*
 * bench_kernels.c — kernel benchmark on the SmolLM2-135M shapes, with the
 * bounds measured in the same run (BENCHMARKS.md):
 *   - matvec (n_tok = 1): weight bytes streamed per second vs the measured read
 *     bandwidth (copies of the matrix are cycled so the weights come from DRAM,
 *     as in a decode step, not from cache);
 *   - matmul (n_tok = 64, 512): GFLOP/s vs the measured f32 FMA peak (float
 *     weights) or int8 dot-product peak (quantized weights);
 *   - decode_step: the whole SmolLM2 Q4_1 decode sequence of matmuls (30 layers
 *     x q,k,v,o,gate,up,down + the Q8_0 LM head), bytes/s vs bandwidth.
 * Usage: bench_kernels [-t THREADS] [--reps N] [--json] [--types q4_1,q8_0,...]
 *                      [--no-matmul] [--no-matvec]
 * Prints min/median over reps after a warm-up.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/kernels.h"
#include "kernels/roofline.h"
#include "bench_util.h"

/* A weight tensor of random values (quantized by the reference quantizer). */
static xds_tensor make_w(xds_dtype t, int64_t n_in, int64_t n_out) {
    size_t rb = xds_dtype_row_bytes(t, n_in);
    uint8_t *w = aligned_alloc(64, (rb * n_out + 63) & ~(size_t)63);
    float *row = malloc(n_in * sizeof(float));
    for (int64_t o = 0; o < n_out; o++) {
        for (int64_t i = 0; i < n_in; i++) row[i] = rnd_f() * 0.1f;
        xds_quant_row(t, row, w + o * rb, n_in);
    }
    free(row);
    return (xds_tensor){.name = "w", .type = t, .n_dims = 2, .ne = {n_in, n_out, 1, 1}, .data = w,
                        .nbytes = rb * n_out};
}

typedef struct {
    int json, reps, threads;
    double bw, fma, int8;
    const char *level;
} bench_env;

static void report(const bench_env *e, const char *kind, const char *type, int64_t n_in, int64_t n_out,
                   int n_tok, double tmin, double tmed, double bytes, double flops) {
    double gbs = bytes / tmin / 1e9, gfl = flops / tmin / 1e9;
    int quant = strncmp(type, "q", 1) == 0;
    double peak = quant ? e->int8 : e->fma;
    if (e->json) {
        printf("{\"bench\":\"kernels\",\"kind\":\"%s\",\"type\":\"%s\",\"n_in\":%ld,\"n_out\":%ld,"
               "\"n_tok\":%d,\"threads\":%d,\"level\":\"%s\",\"reps\":%d,\"t_min_us\":%.2f,"
               "\"t_med_us\":%.2f,\"bytes\":%.0f,\"gbps\":%.3f,\"bw_gbps\":%.3f,\"frac_bw\":%.4f,"
               "\"gflops\":%.3f,\"peak_gops\":%.3f,\"peak_kind\":\"%s\",\"frac_peak\":%.4f}\n",
               kind, type, (long)n_in, (long)n_out, n_tok, e->threads, e->level, e->reps, tmin * 1e6,
               tmed * 1e6, bytes, gbs, e->bw, gbs / e->bw, gfl, peak, quant ? "int8" : "fma",
               gfl / peak);
    } else if (n_tok == 1) {
        printf("%-11s %-5s %5ldx%-6ld tok %-3d  min %9.1f us  med %9.1f us  %6.2f GB/s = %5.1f%% of bw\n",
               kind, type, (long)n_in, (long)n_out, n_tok, tmin * 1e6, tmed * 1e6, gbs,
               100 * gbs / e->bw);
    } else {
        printf("%-11s %-5s %5ldx%-6ld tok %-3d  min %9.1f us  med %9.1f us  %7.1f GFLOP/s = %5.1f%% of %s peak\n",
               kind, type, (long)n_in, (long)n_out, n_tok, tmin * 1e6, tmed * 1e6, gfl,
               100 * gfl / peak, quant ? "int8" : "fma");
    }
    fflush(stdout);
}

/* time reps runs of fn over `copies` weight copies; returns min/median */
static void bench_matvec(const bench_env *e, xds_pool *pool, xds_dtype t, int64_t n_in, int64_t n_out) {
    size_t one = xds_dtype_row_bytes(t, n_in) * n_out;
    int copies = (int)((size_t)160 << 20) / one + 1;
    if (copies > 512) copies = 512;
    xds_tensor *w = malloc(copies * sizeof *w);
    for (int c = 0; c < copies; c++) w[c] = make_w(t, n_in, n_out);
    float *x = malloc(n_in * sizeof(float)), *y = malloc(n_out * sizeof(float));
    for (int64_t i = 0; i < n_in; i++) x[i] = rnd_f();
    /* one rep = one pass over all copies (the weights never stay in cache) */
    int reps = e->reps < 5 ? 5 : e->reps;
    double *ts = malloc(reps * sizeof(double));
    for (int r = -1; r < reps; r++) {
        double t0 = bench_now_s();
        for (int c = 0; c < copies; c++) xds_matmul(pool, &w[c], x, y, 1);
        double dt = (bench_now_s() - t0) / copies;
        if (r >= 0) ts[r] = dt;
    }
    qsort(ts, reps, sizeof(double), bench_cmp_d);
    report(e, "matvec", xds_dtype_name(t), n_in, n_out, 1, ts[0], ts[reps / 2], (double)one,
           2.0 * n_in * n_out);
    for (int c = 0; c < copies; c++) free((void *)w[c].data);
    free(w), free(x), free(y), free(ts);
}

static void bench_matmul(const bench_env *e, xds_pool *pool, xds_dtype t, int64_t n_in, int64_t n_out,
                         int n_tok) {
    xds_tensor w = make_w(t, n_in, n_out);
    float *x = malloc((size_t)n_tok * n_in * sizeof(float)), *y = malloc((size_t)n_tok * n_out * sizeof(float));
    for (int64_t i = 0; i < (int64_t)n_tok * n_in; i++) x[i] = rnd_f();
    int reps = e->reps < 5 ? 5 : e->reps;
    double *ts = malloc(reps * sizeof(double));
    for (int r = -1; r < reps; r++) {
        double t0 = bench_now_s();
        xds_matmul(pool, &w, x, y, n_tok);
        if (r >= 0) ts[r] = bench_now_s() - t0;
    }
    qsort(ts, reps, sizeof(double), bench_cmp_d);
    report(e, "matmul", xds_dtype_name(t), n_in, n_out, n_tok, ts[0], ts[reps / 2],
           (double)w.nbytes, 2.0 * n_in * n_out * n_tok);
    free((void *)w.data), free(x), free(y), free(ts);
}

/* The SmolLM2 decode sequence of matmuls (weights only, n_tok = 1). */
static void bench_decode_step(const bench_env *e, xds_pool *pool, int n_tok) {
    enum { L = 30 };
    const int64_t shapes[7][2] = {{576, 576}, {576, 192}, {576, 192}, {576, 576},
                                  {576, 1536}, {576, 1536}, {1536, 576}};
    xds_tensor w[L][7];
    double bytes = 0;
    for (int l = 0; l < L; l++)
        for (int k = 0; k < 7; k++) {
            w[l][k] = make_w(XDS_DTYPE_Q4_1, shapes[k][0], shapes[k][1]);
            bytes += w[l][k].nbytes;
        }
    xds_tensor head = make_w(XDS_DTYPE_Q8_0, 576, 49152);
    bytes += head.nbytes;
    float *x = malloc((size_t)n_tok * 1536 * 4), *y = malloc((size_t)n_tok * 49152 * 4);
    for (int i = 0; i < n_tok * 1536; i++) x[i] = rnd_f();
    int reps = e->reps < 5 ? 5 : e->reps;
    double *ts = malloc(reps * sizeof(double));
    for (int r = -1; r < reps; r++) {
        double t0 = bench_now_s();
        for (int l = 0; l < L; l++)
            for (int k = 0; k < 7; k++) xds_matmul(pool, &w[l][k], x, y, n_tok);
        xds_matmul(pool, &head, x, y, n_tok);
        if (r >= 0) ts[r] = bench_now_s() - t0;
    }
    qsort(ts, reps, sizeof(double), bench_cmp_d);
    double flops = 0;
    for (int k = 0; k < 7; k++) flops += 2.0 * shapes[k][0] * shapes[k][1] * L;
    flops = (flops + 2.0 * 576 * 49152) * n_tok;
    report(e, "decode_step", "q4_1+q8_0", 576, 0, n_tok, ts[0], ts[reps / 2], bytes, flops);
    if (!e->json)
        printf("  -> %.1f steps/s (min time), bandwidth bound %.1f steps/s\n", 1.0 / ts[0], e->bw * 1e9 / bytes);
    for (int l = 0; l < L; l++)
        for (int k = 0; k < 7; k++) free((void *)w[l][k].data);
    free((void *)head.data), free(x), free(y), free(ts);
}

int main(int argc, char **argv) {
    bench_env e = {.reps = 5, .threads = 2};
    const char *types = "f32,f16,bf16,q8_0,q4_0,q4_1";
    int do_mv = 1, do_mm = 1, do_step = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) e.json = 1;
        else if (!strcmp(argv[i], "-t") && i + 1 < argc) e.threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) e.reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--types") && i + 1 < argc) types = argv[++i];
        else if (!strcmp(argv[i], "--no-matvec")) do_mv = 0;
        else if (!strcmp(argv[i], "--no-matmul")) do_mm = 0;
        else if (!strcmp(argv[i], "--no-step")) do_step = 0;
        else if (!strcmp(argv[i], "--only-step")) do_mv = do_mm = 0;
        else {
            fprintf(stderr, "usage: %s [-t THREADS] [--reps N] [--json] [--types a,b] [--no-matvec] [--no-matmul] [--no-step] [--only-step]\n", argv[0]);
            return 2;
        }
    }
    if (e.threads < 1) e.threads = 1;
    xds_pool *pool;
    if (xds_pool_create(e.threads, &pool) != XDS_OK) {
        fprintf(stderr, "bench_kernels: %s\n", xds_err_msg());
        return 1;
    }
    e.level = xds_cpu_level_name(xds_cpu_level_get());
    e.bw = xds_measure_read_bw(pool, 0);
    e.fma = xds_measure_fma_peak(pool);
    e.int8 = xds_measure_int8_peak(pool);
    if (e.json)
        printf("{\"bench\":\"kernels\",\"kind\":\"bounds\",\"threads\":%d,\"level\":\"%s\",\"bw_gbps\":%.3f,"
               "\"fma_gflops\":%.3f,\"int8_gops\":%.3f}\n", e.threads, e.level, e.bw, e.fma, e.int8);
    else
        printf("threads %d, level %s: read bandwidth %.2f GB/s, f32 FMA peak %.1f GFLOP/s, int8 peak %.1f GOP/s\n",
               e.threads, e.level, e.bw, e.fma, e.int8);

    const int64_t shapes[5][2] = {{576, 576}, {576, 192}, {576, 1536}, {1536, 576}, {576, 49152}};
    const xds_dtype all[] = {XDS_DTYPE_F32, XDS_DTYPE_F16, XDS_DTYPE_BF16, XDS_DTYPE_Q8_0, XDS_DTYPE_Q4_0, XDS_DTYPE_Q4_1};
    for (int k = 0; k < 6; k++) {
        const char *nm = xds_dtype_name(all[k]);
        const char *p = strstr(types, nm);
        if (!p || (p[strlen(nm)] != ',' && p[strlen(nm)] != 0)) continue;
        for (int s = 0; s < 5; s++) {
            if (do_mv) bench_matvec(&e, pool, all[k], shapes[s][0], shapes[s][1]);
            if (do_mm && s < 4) {
                bench_matmul(&e, pool, all[k], shapes[s][0], shapes[s][1], 64);
                bench_matmul(&e, pool, all[k], shapes[s][0], shapes[s][1], 512);
            }
        }
    }
    if (do_step) bench_decode_step(&e, pool, 1);
    xds_pool_free(pool);
    return 0;
}
