/*
 * bench.c — `xds bench`: prefill and batch-1 decode speed of a model, stated
 * against bounds measured in the same run (docs: ../shared/BENCHMARKS.md):
 *   - read bandwidth (multi-threaded streaming read, independent accumulators),
 *     f32 FMA peak and int8 dot-product peak, with the same threads;
 *   - prefill of random prompts (fixed seed) of each --prompt-lens length, as one
 *     matrix-matrix batch: tokens/s and FLOP/s as a fraction of the peaks;
 *   - decode at batch 1 (--gen tokens from an empty context, like llama-bench
 *     tg): tokens/s, bytes read per token (weights of one step + the K/V read,
 *     averaged over the run; for MoE only the routed experts the steps hit, as
 *     counted by the MoE units, not all of them), bandwidth bound = bw / bytes,
 *     and the fraction.
 * Every figure is min / median over --reps repetitions after one warm-up.
 * Besides wall time, each result gives a "cpu-equivalent" rate: process CPU
 * time / threads. During a run every pool thread either works or spins (the
 * pool's workers spin ~0.5 ms before sleeping, longer than any gap between
 * runs of a forward pass), so on an otherwise idle machine this equals the wall time;
 * on a shared, oversubscribed machine it leaves out the time our threads sat
 * descheduled (an estimate of the idle-machine figure, labelled as such).
 * --json prints one JSON object per line (bounds, then one per result).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/bench_moe.h"
#include "cli/cli.h"
#include "kernels/kernels.h"
#include "cli/bench_util.h"
#include "kernels/roofline.h"
#include "model/model.h"


static void usage(FILE *f) {
    fprintf(f,
            "usage: xds bench -m MODEL [-t THREADS] [--json] [--prompt-lens 128,512] [--gen N]\n"
            "                 [--reps N]\n"
            "  -t THREADS       threads (default: number of CPUs)\n"
            "  --prompt-lens L  comma-separated prefill lengths (default 128,512)\n"
            "  --gen N          decode steps per repetition (default 64)\n"
            "  --reps N         timed repetitions after one warm-up (default 5, min 1)\n"
            "  --json           one JSON object per result line\n"
            "  --quantize MODE  convert the matmul weights at load: w8a8 or none (default)\n"
            "MoE models also get decode steps at several batch sizes against their roofline bound\n"
            "(bytes actually read incl. only the experts hit, bench_moe.c):\n"
            "  --moe-batches L  comma-separated decode batch sizes (default 1,8,32)\n"
            "  --moe-ctx N      context tokens per sequence before the timed steps (default 64)\n"
            "  --moe-only       skip the prefill / batch-1 sections above\n");
}

static int mm_is_quant(xds_dtype t) {
    return t == XDS_DTYPE_Q8_0 || t == XDS_DTYPE_Q4_0 || t == XDS_DTYPE_Q4_1 ||
           t == XDS_DTYPE_Q4_K || t == XDS_DTYPE_Q6_K || t == XDS_DTYPE_Q8_0_R16 || t == XDS_DTYPE_W8A8;
}

/* Multiply-adds per token of the dense matrices (all layers, no LM head) and
 * whether most of them are quantized (compare with the int8 peak then). */
static double model_macs_per_token(const xds_model *m, int *quant) {
    double macs = 0, qmacs = 0;
    for (int l = 0; l < m->cfg.n_layer; l++) {
        const xds_layer_weights *w = &m->layers[l];
        const xds_tensor *ts[7] = {&w->wq, &w->wk, &w->wv, &w->wo, &w->w_gate, &w->w_up, &w->w_down};
        for (int k = 0; k < 7; k++) {
            if (!ts[k]->data) continue;
            double n = (double)ts[k]->ne[0] * ts[k]->ne[1];
            macs += n;
            if (mm_is_quant(ts[k]->type)) qmacs += n;
        }
    }
    *quant = qmacs * 2 > macs;
    return macs;
}

typedef struct {
    int json, threads, reps, gen;
    const char *model;
    double bw, fma, int8;
} bench_cfg;

static xds_status run_forward(xds_model_ctx *ctx, xds_kv_cache *kv, const int32_t *tok, int pos0,
                              int n, float *logits) {
    int32_t *pos = malloc(n * sizeof(int32_t)), *seq = calloc(n, sizeof(int32_t));
    if (!pos || !seq) {
        free(pos), free(seq);
        return xds_err_set(XDS_ERR_NOMEM, "bench: out of memory");
    }
    for (int i = 0; i < n; i++) pos[i] = pos0 + i;
    xds_status st = xds_kv_seq_reserve(kv, 0, pos0 + n);
    xds_batch b = {n, tok, pos, seq};
    int32_t last = n - 1;
    if (st == XDS_OK) st = xds_model_forward(ctx, &b, &last, 1, logits);
    free(pos), free(seq);
    return st;
}

int cli_bench(int argc, char **argv) {
    bench_cfg c = {.reps = 5, .gen = 64};
    const char *lens_s = "128,512", *moe_batches_s = "1,8,32";
    int moe_ctx = 64, moe_only = 0, quantize = XDS_QUANTIZE_NONE;
    long nproc = sysconf(_SC_NPROCESSORS_ONLN);
    c.threads = nproc > 0 ? (int)nproc : 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int more = i + 1 < argc;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--json")) c.json = 1;
        else if (!strcmp(a, "-m") && more) c.model = argv[++i];
        else if (!strcmp(a, "-t") && more) c.threads = atoi(argv[++i]);
        else if (!strcmp(a, "--prompt-lens") && more) lens_s = argv[++i];
        else if (!strcmp(a, "--gen") && more) c.gen = atoi(argv[++i]);
        else if (!strcmp(a, "--reps") && more) c.reps = atoi(argv[++i]);
        else if (!strcmp(a, "--moe-batches") && more) moe_batches_s = argv[++i];
        else if (!strcmp(a, "--moe-ctx") && more) moe_ctx = atoi(argv[++i]);
        else if (!strcmp(a, "--moe-only")) moe_only = 1;
        else if (!strcmp(a, "--quantize") && more) {
            if (xds_quantize_parse(argv[++i], &quantize)) {
                fprintf(stderr, "xds bench: error: --quantize expects w8a8 or none, got '%s'\n", argv[i]);
                return 2;
            }
        } else {
            fprintf(stderr, "xds bench: error: unknown or incomplete option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!c.model) {
        fprintf(stderr, "xds bench: error: no model given (-m MODEL)\n");
        usage(stderr);
        return 2;
    }
    if (c.threads < 1 || c.threads > 1024 || c.reps < 1 || c.gen < 1) {
        fprintf(stderr, "xds bench: error: -t, --reps and --gen must be positive\n");
        return 2;
    }
    int lens[16], n_lens = 0;
    for (const char *p = lens_s; *p && n_lens < 16;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 1 || v > 1 << 20 || (*end && *end != ',')) {
            fprintf(stderr, "xds bench: error: bad --prompt-lens '%s'\n", lens_s);
            return 2;
        }
        lens[n_lens++] = (int)v;
        p = *end ? end + 1 : end;
    }
    int moe_b[16], n_moe_b = 0;
    for (const char *p = moe_batches_s; *p && n_moe_b < 16;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 1 || v > 4096 || (*end && *end != ',')) {
            fprintf(stderr, "xds bench: error: bad --moe-batches '%s'\n", moe_batches_s);
            return 2;
        }
        moe_b[n_moe_b++] = (int)v;
        p = *end ? end + 1 : end;
    }
    if (moe_ctx < 1 || moe_ctx > 1 << 16) {
        fprintf(stderr, "xds bench: error: --moe-ctx must be in 1..65536\n");
        return 2;
    }
    int max_len = 1;
    for (int i = 0; i < n_lens; i++) max_len = lens[i] > max_len ? lens[i] : max_len;

    xds_model_opts mo = {.prefault = 1, .quantize = quantize};
    xds_model *m = NULL;
    xds_kv_cache *kv = NULL;
    xds_model_ctx *ctx = NULL;
    xds_status st = xds_model_load(c.model, &mo, &m);
    int n_ctx = (max_len > c.gen ? max_len : c.gen) + 16;
    if (st == XDS_OK && moe_only && m->cfg.moe.n_expert > 0) n_ctx = 32, max_len = 16; /* those sections skipped */
    if (st == XDS_OK && n_ctx > m->cfg.max_ctx && m->cfg.max_ctx > 0) {
        st = xds_err_set(XDS_ERR_INVALID, "prompt length %d + 16 exceeds the model context %d",
                         n_ctx - 16, m->cfg.max_ctx);
    }
    if (st == XDS_OK) st = xds_model_kv_cache_create(m, n_ctx, 16, 1, &kv);
    if (st == XDS_OK) st = xds_model_ctx_create(m, kv, c.threads, max_len, &ctx);
    float *logits = st == XDS_OK ? malloc((size_t)m->cfg.n_vocab * sizeof(float)) : NULL;
    int32_t *tok = st == XDS_OK ? malloc((size_t)n_ctx * sizeof(int32_t)) : NULL;
    double *ts = malloc((size_t)c.reps * sizeof(double)), *cs = malloc((size_t)c.reps * sizeof(double));
    if (st == XDS_OK && (!logits || !tok || !ts || !cs)) st = xds_err_set(XDS_ERR_NOMEM, "out of memory");
    if (st != XDS_OK) {
        fprintf(stderr, "xds bench: error: %s\n", xds_err_msg());
        goto out;
    }
    uint64_t rng = 0x2545F4914F6CDD1Dull; /* fixed seed: same prompts every run */
    for (int i = 0; i < n_ctx; i++) {
        rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
        tok[i] = (int32_t)(rng % (uint64_t)m->cfg.n_vocab);
    }

    xds_pool *pool = xds_model_ctx_pool(ctx);
    c.bw = xds_measure_read_bw(pool, 0);
    c.fma = xds_measure_fma_peak(pool);
    c.int8 = xds_measure_int8_peak(pool);
    int quant = 0;
    double macs = model_macs_per_token(m, &quant);
    int k_dim, v_dim;
    xds_model_kv_dims(m, &k_dim, &v_dim);
    double wbytes = (double)xds_model_weight_bytes(m);
    const char *lvl = xds_cpu_level_name(xds_cpu_level_get());
    if (c.json)
        printf("{\"bench\":\"xds\",\"kind\":\"bounds\",\"model\":\"%s\",\"threads\":%d,\"level\":\"%s\","
               "\"bw_gbps\":%.3f,\"fma_gflops\":%.3f,\"int8_gops\":%.3f,\"weight_bytes\":%.0f}\n",
               c.model, c.threads, lvl, c.bw, c.fma, c.int8, wbytes);
    else
        printf("model %s, %d threads, kernels %s\nmeasured: read bandwidth %.2f GB/s, f32 FMA peak %.1f GFLOP/s, "
               "int8 dot peak %.1f GOP/s\n",
               c.model, c.threads, lvl, c.bw, c.fma, c.int8);
    fflush(stdout);

    /* ---- prefill ---- */
    if (moe_only && m->cfg.moe.n_expert > 0) n_lens = 0, c.gen = 0;
    for (int li = 0; li < n_lens; li++) {
        int L = lens[li];
        for (int r = -1; r < c.reps && st == XDS_OK; r++) {
            xds_kv_seq_truncate(kv, 0, 0);
            double t0 = bench_now_s(), c0 = bench_cpu_s();
            st = run_forward(ctx, kv, tok, 0, L, logits);
            if (r >= 0) ts[r] = bench_now_s() - t0, cs[r] = (bench_cpu_s() - c0) / c.threads;
        }
        if (st != XDS_OK) break;
        qsort(ts, c.reps, sizeof(double), bench_cmp_d);
        qsort(cs, c.reps, sizeof(double), bench_cmp_d);
        double tmin = ts[0], tmed = ts[c.reps / 2];
        /* FLOPs: 2 per multiply-add of the matrices, attention QK^T and PV over
         * the causal prefix, and the LM head for the one logits row. */
        double attn = 2.0 * 2.0 * m->cfg.n_layer * m->cfg.n_head * m->cfg.head_dim * (double)L * (L + 1) / 2;
        double flops = 2.0 * macs * L + attn + 2.0 * m->cfg.n_embd * (double)m->cfg.n_vocab;
        double peak = quant ? c.int8 : c.fma;
        if (c.json)
            printf("{\"bench\":\"xds\",\"kind\":\"prefill\",\"model\":\"%s\",\"threads\":%d,\"n_prompt\":%d,"
                   "\"reps\":%d,\"t_min_s\":%.6f,\"t_med_s\":%.6f,\"tok_s_max\":%.2f,\"tok_s_med\":%.2f,"
                   "\"flops\":%.4g,\"gflops\":%.3f,\"peak_kind\":\"%s\",\"peak_gops\":%.3f,\"frac_peak\":%.4f,"
                   "\"frac_fma_peak\":%.4f,\"cpu_equiv_tok_s_max\":%.2f}\n",
                   c.model, c.threads, L, c.reps, tmin, tmed, L / tmin, L / tmed, flops, flops / tmin / 1e9,
                   quant ? "int8" : "fma", peak, flops / tmin / 1e9 / peak, flops / tmin / 1e9 / c.fma, L / cs[0]);
        else
            printf("prefill %4d tokens: %8.1f tok/s (median %8.1f), %6.1f GFLOP/s = %4.1f%% of %s peak "
                   "(%4.1f%% of f32 FMA peak); cpu-equivalent %.1f tok/s\n",
                   L, L / tmin, L / tmed, flops / tmin / 1e9, 100 * flops / tmin / 1e9 / peak,
                   quant ? "int8" : "fma", 100 * flops / tmin / 1e9 / c.fma, L / cs[0]);
        fflush(stdout);
    }

    /* ---- decode, batch 1, from an empty context ---- */
    /* bytes per step: the non-expert matrices, plus for MoE the routed experts
     * the steps actually hit (counted by the MoE units over every step run,
     * warm-up included), not all experts */
    double nonexp = xds_bench_nonexpert_bytes(m), exp_all = xds_bench_expert_bytes_all(m);
    xds_model_ctx_expert_stats(ctx, NULL, NULL, 1);
    for (int r = -1; r < c.reps && st == XDS_OK; r++) {
        xds_kv_seq_truncate(kv, 0, 0);
        double t0 = bench_now_s(), c0 = bench_cpu_s();
        for (int i = 0; i < c.gen && st == XDS_OK; i++) st = run_forward(ctx, kv, tok + i, i, 1, logits);
        if (r >= 0) ts[r] = bench_now_s() - t0, cs[r] = (bench_cpu_s() - c0) / c.threads;
    }
    if (st == XDS_OK && c.gen > 0) {
        qsort(ts, c.reps, sizeof(double), bench_cmp_d);
        qsort(cs, c.reps, sizeof(double), bench_cmp_d);
        double cps = c.gen / cs[0];
        double tmin = ts[0], tmed = ts[c.reps / 2];
        /* step i reads K and V of positions 0..i */
        double kv_bytes = (double)m->cfg.n_layer * (k_dim + v_dim) * sizeof(float) * (c.gen + 1) / 2.0;
        uint64_t ehit = 0;
        xds_model_ctx_expert_stats(ctx, &ehit, NULL, 1);
        double exp_tok = (double)ehit / ((double)(c.reps + 1) * c.gen);
        double wtok = nonexp + exp_tok; /* weights read per token */
        double bytes = wtok + kv_bytes;
        double bound = c.bw * 1e9 / bytes;
        double tps = c.gen / tmin, tps_med = c.gen / tmed;
        if (c.json)
            printf("{\"bench\":\"xds\",\"kind\":\"decode\",\"model\":\"%s\",\"threads\":%d,\"batch\":1,"
                   "\"n_gen\":%d,\"reps\":%d,\"t_min_s\":%.6f,\"t_med_s\":%.6f,\"tok_s_max\":%.2f,"
                   "\"tok_s_med\":%.2f,\"bytes_per_tok\":%.0f,\"weight_bytes\":%.0f,\"kv_bytes_per_tok\":%.0f,"
                   "\"bw_gbps\":%.3f,\"bound_tok_s\":%.2f,\"frac_bound\":%.4f,\"frac_bound_med\":%.4f,"
                   "\"cpu_equiv_tok_s_max\":%.2f,\"cpu_equiv_frac_bound\":%.4f,\"n_expert\":%d,"
                   "\"n_expert_used\":%d,\"expert_bytes_per_tok\":%.0f,\"expert_bytes_all\":%.0f}\n",
                   c.model, c.threads, c.gen, c.reps, tmin, tmed, tps, tps_med, bytes, wtok, kv_bytes,
                   c.bw, bound, tps / bound, tps_med / bound, cps, cps / bound, m->cfg.moe.n_expert,
                   m->cfg.moe.n_expert_used, exp_tok, exp_all);
        else {
            printf("decode  %4d tokens: %8.1f tok/s (median %8.1f); %.1f MB read per token "
                   "(weights %.1f + KV %.2f); bound %.1f tok/s at %.2f GB/s -> %.1f%% of bound (median %.1f%%); "
                   "cpu-equivalent %.1f tok/s = %.1f%%\n",
                   c.gen, tps, tps_med, bytes / 1e6, wtok / 1e6, kv_bytes / 1e6, bound, c.bw,
                   100 * tps / bound, 100 * tps_med / bound, cps, 100 * cps / bound);
            if (exp_all > 0)
                printf("        weights per token include the routed experts hit: %.1f MB of %.1f MB\n",
                       exp_tok / 1e6, exp_all / 1e6);
        }
    }
    if (st == XDS_OK && m->cfg.moe.n_expert > 0) {
        xds_bench_moe_cfg mc = {c.model, c.threads, c.reps, c.json, c.bw, c.fma, c.int8, moe_b, n_moe_b, moe_ctx};
        st = xds_bench_moe(m, &mc);
    }
    if (st != XDS_OK) fprintf(stderr, "xds bench: error: %s\n", xds_err_msg());
out:
    free(cs);
    free(ts);
    free(tok);
    free(logits);
    xds_model_ctx_free(ctx);
    xds_kv_cache_free(kv);
    xds_model_free(m);
    return st == XDS_OK ? 0 : 1;
}
