/*
 * bench_moe.c — `xds bench` on MoE models: decode steps at batch B (one
 * token of each of B sequences, each with c->ctx tokens of context already
 * in the paged KV cache), timed one by one, against the step's roofline bound
 *   bound = max(bytes read / measured bandwidth, flops / measured peaks)
 * (the bandwidth: a read-bandwidth probe runs before each timed step and one
 * after the last, and each step is bounded with the faster of the probes right
 * before and after it — on a shared VM the bandwidth moves with the
 * neighbours, and a probe at the start of the run alone misstates it; the
 * slowest and fastest probe of each batch size are printed)
 * where bytes are what the step actually reads: every non-expert matrix
 * (attention incl. MLA's absorbed-K copy and only the V rows of kv_b, dense
 * FFNs, routers, shared experts, the LM head), the routed experts the batch
 * hits (counted by the MoE units, each expert once per layer per step), and
 * the K/V (or MLA latent) rows attended over; flops are 2 per multiply-add of
 * the same matrices for B tokens (routed experts: per routed row) plus the
 * attention's (per position and head: q.k over the key width and the weighted
 * sum over the value width; MLA absorbed: the latent + rope key, then the
 * latent only). The compute time is the quantized matrices' flops at the
 * int8 dot-product peak plus the rest (float matrices, attention over the
 * f32 cache) at the f32 FMA peak: both run on the same vector pipes, and the
 * f32 work cannot use the int8 dot products.
 * Reported per B: median step time, bytes (and expert share), flops, the bound
 * and sum(bound) / sum(time) over the timed steps; and, as `xds bench` does for
 * shared machines, the same fraction with cpu-equivalent time (process CPU
 * time / threads) instead of wall time.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/bench_moe.h"
#include "cli/bench_util.h"
#include "kernels/roofline.h"
#include "model/moe.h"


static int is_q(xds_dtype t) {
    return t == XDS_DTYPE_Q8_0 || t == XDS_DTYPE_Q4_0 || t == XDS_DTYPE_Q4_1 || t == XDS_DTYPE_Q4_K ||
           t == XDS_DTYPE_Q6_K || t == XDS_DTYPE_Q8_0_R16 || t == XDS_DTYPE_W8A8;
}

typedef struct {
    double bytes, macs, qmacs;
} acc;

/* A matrix read in full by a step: frac = fraction of its rows used. */
static void mat(acc *a, const xds_tensor *t, double frac) {
    if (!t->data) return;
    double n = (double)t->ne[0] * t->ne[1] * frac;
    a->bytes += t->nbytes * frac;
    a->macs += n;
    if (is_q(t->type)) a->qmacs += n;
}

/* Bytes and multiply-adds per token of everything but the routed experts
 * (the LM head separately: read once per step, used by every row). */
static void base_cost(const xds_model *m, acc *a, acc *head) {
    const xds_model_config *c = &m->cfg;
    for (int l = 0; l < c->n_layer; l++) {
        const xds_layer_weights *w = &m->layers[l];
        if (w->mla) {
            const xds_mla_layer *x = w->mla;
            mat(a, &x->wq_a, 1), mat(a, &x->wq_b, 1), mat(a, &x->wq, 1), mat(a, &x->wkv_a, 1);
            mat(a, &x->wk_b_t, 1), mat(a, &x->wo, 1);
            mat(a, &x->wkv_b, (double)c->mla.v_dim / (c->mla.nope_dim + c->mla.v_dim));
            mat(a, &x->wv_b, 1); /* llama.cpp's split attn_v_b (then wkv_b is absent) */
        } else {
            mat(a, &w->wq, 1), mat(a, &w->wk, 1), mat(a, &w->wv, 1), mat(a, &w->wo, 1);
        }
        if (w->moe) {
            mat(a, &w->moe->router, 1);
            if (w->moe->has_shared)
                mat(a, &w->moe->shared.gate, 1), mat(a, &w->moe->shared.up, 1), mat(a, &w->moe->shared.down, 1);
        } else {
            mat(a, &w->w_gate, 1), mat(a, &w->w_up, 1), mat(a, &w->w_down, 1);
        }
    }
    mat(head, &m->output, 1);
}

double xds_bench_nonexpert_bytes(const xds_model *m) {
    acc base = {0}, head = {0};
    base_cost(m, &base, &head);
    return base.bytes + head.bytes;
}

double xds_bench_expert_bytes_all(const xds_model *m) {
    double n = 0;
    for (int l = 0; l < m->cfg.n_layer; l++)
        if (m->layers[l].moe)
            for (int e = 0; e < m->cfg.moe.n_expert; e++) {
                const xds_ffn_w *f = &m->layers[l].moe->experts[e];
                n += f->gate.nbytes + f->up.nbytes + f->down.nbytes;
            }
    return n;
}

xds_status xds_bench_moe(const xds_model *m, const xds_bench_moe_cfg *c) {
    const xds_model_config *mc = &m->cfg;
    acc base = {0}, head = {0};
    base_cost(m, &base, &head);
    double p_q = c->int8 * 1e9, p_f = c->fma * 1e9, bw = c->bw * 1e9;
    int exp_q = 0; /* routed experts quantized (their multiply-adds go to the int8 peak) */
    for (int l = 0; l < mc->n_layer && !exp_q; l++)
        if (m->layers[l].moe && mc->moe.n_expert > 0) exp_q = is_q(m->layers[l].moe->experts[0].gate.type);
    int kd, vd;
    xds_model_kv_dims(m, &kd, &vd);
    double exp_all = xds_bench_expert_bytes_all(m);
    int n_moe = 0;
    for (int l = 0; l < mc->n_layer; l++) n_moe += m->layers[l].moe != NULL;
    double huge = xds_model_repack_huge_share(m);
    if (!c->json) {
        printf("MoE decode (%s, %d routed experts top-%d per MoE layer, %d of %d layers MoE; context %d per "
               "sequence;\n  compute time: quantized matrices at the int8 peak + the rest at the f32 FMA peak;\n"
               "  bound per step by the faster of the bandwidth probes right before and after it)\n",
               xds_arch_name(mc->arch), mc->moe.n_expert, mc->moe.n_expert_used, n_moe, mc->n_layer, c->ctx);
        if (huge >= 0) printf("  repacked weights in huge pages: %.0f%% of their resident memory\n", 100 * huge);
        printf("  batch   step ms (med)   tok/s    MB read  (experts hit / all)   GFLOP   bound ms (by)    %% of bound "
               "(cpu-equiv)   bw GB/s min / max\n");
    }
    xds_status st = XDS_OK;
    int steps = 4 * c->reps;
    for (int bi = 0; bi < c->n_batches && st == XDS_OK; bi++) {
        int B = c->batches[bi];
        int n_pos = c->ctx + steps + 2;
        xds_kv_cache *kv = NULL;
        xds_model_ctx *ctx = NULL;
        float *logits = NULL;
        int32_t *tok = NULL, *pos = NULL, *seq = NULL, *rows = NULL;
        double *ts = NULL, *bound = NULL, *bytes = NULL, *flops = NULL, *eb = NULL, *ctime = NULL, cpu_sum = 0;
        int maxt = B > c->ctx ? B : c->ctx;
        st = xds_model_kv_cache_create(m, B * n_pos + 16 * B, 16, B, &kv);
        if (st == XDS_OK) st = xds_model_ctx_create(m, kv, c->threads, maxt, &ctx);
        if (st == XDS_OK) {
            logits = malloc(sizeof(float) * (size_t)maxt * mc->n_vocab);
            tok = malloc(sizeof(int32_t) * maxt), pos = malloc(sizeof(int32_t) * maxt);
            seq = malloc(sizeof(int32_t) * maxt), rows = malloc(sizeof(int32_t) * maxt);
            ts = malloc(sizeof(double) * steps * 6);
            if (!logits || !tok || !pos || !seq || !rows || !ts) st = xds_err_set(XDS_ERR_NOMEM, "bench: out of memory");
            else
                bound = ts + steps, bytes = ts + 2 * steps, flops = ts + 3 * steps, eb = ts + 4 * steps,
                ctime = ts + 5 * steps;
        }
        uint64_t rng = 0x9E3779B97F4A7C15ull ^ (uint64_t)B;
#define RND() (rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17, (int32_t)(rng % (uint64_t)mc->n_vocab))
        /* context: each sequence's prompt as one prefill batch (not timed) */
        for (int s = 0; s < B && st == XDS_OK; s++) {
            if ((st = xds_kv_seq_reserve(kv, s, n_pos)) != XDS_OK) break;
            for (int i = 0; i < c->ctx; i++) tok[i] = RND(), pos[i] = i, seq[i] = s;
            int32_t last = c->ctx - 1;
            xds_batch b = {c->ctx, tok, pos, seq};
            st = xds_model_forward(ctx, &b, &last, 1, logits);
        }
        /* this VM's memory bandwidth moves with its neighbours (35 <-> 65 GB/s
         * within a minute): probe it between every two timed steps and bound
         * each step by the faster of the probes right before and after it
         * (a step never gets the benefit of a slow probe) */
        double *bwp = malloc(sizeof(double) * (steps + 1));
        if (!bwp && st == XDS_OK) st = xds_err_set(XDS_ERR_NOMEM, "bench: out of memory");
        for (int it = -2; it < steps && st == XDS_OK; it++) {
            if (it >= 0) bwp[it] = xds_measure_read_bw(xds_model_ctx_pool(ctx), 0) * 1e9;
            int p = c->ctx + it + 2;
            for (int s = 0; s < B; s++) tok[s] = RND(), pos[s] = p, seq[s] = s, rows[s] = s;
            xds_batch b = {B, tok, pos, seq};
            xds_model_ctx_expert_stats(ctx, NULL, NULL, 1);
            double t0 = bench_now_s(), c0 = bench_cpu_s();
            st = xds_model_forward(ctx, &b, rows, B, logits);
            double dt = bench_now_s() - t0, dc = (bench_cpu_s() - c0) / c->threads;
            if (it < 0) continue;
            cpu_sum += dc;
            uint64_t ebytes;
            double emacs;
            xds_model_ctx_expert_stats(ctx, &ebytes, &emacs, 1);
            /* attention: every token attends over p + 1 positions in each layer */
            double kvb = (double)B * (p + 1) * mc->n_layer * (kd + vd) * sizeof(float);
            double attn_macs = mc->arch == XDS_ARCH_DEEPSEEK_V3
                                   ? (double)B * (p + 1) * mc->n_layer * mc->n_head * ((double)kd + mc->mla.kv_lora_rank)
                                   : (double)B * (p + 1) * mc->n_layer * mc->n_head * 2.0 * mc->head_dim;
            double fq = 2.0 * (B * (base.qmacs + head.qmacs) + (exp_q ? emacs : 0));
            double ff = 2.0 * (B * (base.macs - base.qmacs + head.macs - head.qmacs) + (exp_q ? 0 : emacs) + attn_macs);
            bytes[it] = base.bytes + head.bytes + (double)ebytes + kvb;
            flops[it] = fq + ff;
            eb[it] = (double)ebytes;
            ctime[it] = fq / p_q + ff / p_f;
            ts[it] = dt;
        }
#undef RND
        double bw0 = 0, bw1 = 0; /* slowest and fastest probe */
        if (st == XDS_OK) {
            bwp[steps] = xds_measure_read_bw(xds_model_ctx_pool(ctx), 0) * 1e9;
            bw0 = bw1 = bwp[0];
            for (int i = 0; i < steps; i++) {
                double b = fmax(bwp[i], bwp[i + 1]);
                if (b <= 0) b = bw;
                bound[i] = fmax(bytes[i] / b, ctime[i]);
                bw0 = fmin(bw0, bwp[i + 1]), bw1 = fmax(bw1, bwp[i + 1]);
            }
            bw0 /= 1e9, bw1 /= 1e9;
        }
        free(bwp);
        if (st == XDS_OK) {
            double sb = 0, st_ = 0, mb = 0, mf = 0, me = 0, mc_ = 0, nbw = 0;
            for (int i = 0; i < steps; i++) {
                sb += bound[i], st_ += ts[i], mb += bytes[i], mf += flops[i], me += eb[i], mc_ += ctime[i];
                nbw += bound[i] > ctime[i];
            }
            mb /= steps, mf /= steps, me /= steps, mc_ /= steps;
            double bmean = sb / steps;
            int by_bw = 2 * nbw >= steps; /* most steps bandwidth-bound */
            qsort(ts, steps, sizeof(double), bench_cmp_d);
            double med = ts[steps / 2], frac = sb / st_;
            if (c->json)
                printf("{\"bench\":\"xds\",\"kind\":\"moe_decode\",\"model\":\"%s\",\"threads\":%d,\"batch\":%d,"
                       "\"ctx\":%d,\"steps\":%d,\"t_med_s\":%.6f,\"t_min_s\":%.6f,\"bytes\":%.0f,\"expert_bytes\":%.0f,"
                       "\"expert_bytes_all\":%.0f,\"flops\":%.4g,\"bound_s\":%.6f,\"bound_by\":\"%s\","
                       "\"frac_bound\":%.4f,\"frac_bound_cpu_equiv\":%.4f,\"bw_gbs_min_max\":[%.2f,%.2f],"
                       "\"huge_share\":%.3f}\n",
                       c->model, c->threads, B, c->ctx, steps, med, ts[0], mb, me, exp_all, mf, bmean,
                       by_bw ? "bandwidth" : "compute", frac, sb / cpu_sum, bw0, bw1, huge);
            else
                printf("  %5d   %8.2f        %7.1f  %8.1f  (%7.1f / %7.1f)  %7.2f   %8.2f (%s)   %5.1f%%   %5.1f%%"
                       "   %5.1f / %5.1f\n", B,
                       med * 1e3, B / med, mb / 1e6, me / 1e6, exp_all / 1e6, mf / 1e9, bmean * 1e3,
                       by_bw ? "bw" : "flops", 100 * frac, 100 * sb / cpu_sum, bw0, bw1);
            fflush(stdout);
        }
        free(logits), free(tok), free(pos), free(seq), free(rows), free(ts);
        xds_model_ctx_free(ctx);
        xds_kv_cache_free(kv);
    }
    return st;
}
