/*
 * test_deploy_pd.c — disaggregated prefill / decode in real processes
 * (deploy/pd.h), alone and combined with disaggregated MoE-attention
 * (deploy/expert.h).
 *
 * The test process is the decode rank 0; a forked prefill process (the last
 * rank) runs chunked prefill of three prompts into its registered KV pool and
 * registers a transfer task for each; for the combined topology 2 forked
 * expert workers (ranks 1, 2) hold the routed experts. The decode side pulls
 * each task's blocks with one-sided gets into a pool too small for two of the
 * requests at once, so the second pull must first be refused (XDS_ERR_BUSY,
 * back-pressure: the prefill side still holds the blocks) and succeed after
 * the first request finished. Greedy tokens (the prefill's first token and
 * the decode side's continuation) must equal the colocated model loop, and
 * so must the logits of every step, bit for bit: the prefill side's logits of
 * the last prompt token (read with xds_pd_get_logits) and every decode step's.
 * Bit-identical is the design (docs/ARCHITECTURE.md): the kernels are batch-
 * invariant, so KV rows computed in 8-token chunks equal the one-pass ones,
 * and expert workers return rows the attention side sums as the colocated
 * MoE does. (The fourth request repeats the first prompt and is served from
 * the prefill instance's prefix cache: only its last token is computed), for
 * tiny llama (GQA), qwen3_moe (GQA), deepseek_v3 (MLA latent KV) and SmolLM2
 * (XDS_TEST_MODEL, skipped when unset): dense, and upcycled to 4 experts with
 * the perturbed upcycle (model/upcycle.h: experts differ, so a routing error
 * shows) behind 2 expert workers. The prefill process checks that
 * every block came back to its pool once freed. Every child is reaped with a
 * deadline; segment names are unique.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <xccl.h>

#include "deploy/expert.h"
#include "deploy/pd.h"
#include "model/model.h"
#include "model/upcycle.h"
#include "proc_util.h"
#include "test.h"

#define ORA XDS_SOURCE_DIR "/tests/data/oracle/"
#define N_REQ 4
#define N_GEN 6
#define BLOCK 4
/* request 3 repeats request 0's prompt: served from the prefill prefix cache */
static const int prompt_len[N_REQ] = {33, 19, 5, 33};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void make_prompt(int r, int n, int V, int32_t *out) {
    if (r == 3) r = 0;
    for (int i = 0; i < n; i++) out[i] = (int32_t)((i * 53 + r * 17 + 3) % V);
}

static int argmax(const float *v, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[b]) b = i;
    return b;
}

/* Colocated greedy: whole prompt in one pass, then N_GEN - 1 decode steps;
 * every step's logits -> lout[N_GEN][n_vocab]. */
static int reference(const xds_model *m, const int32_t *prompt, int n, int32_t *out, float *lout) {
    xds_kv_cache *kv = NULL;
    xds_model_ctx *ctx = NULL;
    int V = m->cfg.n_vocab, rc = -1;
    float *lg = malloc(sizeof(float) * V);
    int32_t pos[64], seq[64] = {0};
    if (xds_model_kv_cache_create(m, n + N_GEN + BLOCK, BLOCK, 1, &kv) || xds_model_ctx_create(m, kv, 1, n, &ctx) ||
        xds_kv_seq_reserve(kv, 0, n + N_GEN))
        goto out;
    for (int i = 0; i < n; i++) pos[i] = i;
    xds_batch b = {n, prompt, pos, seq};
    int32_t row = n - 1;
    if (xds_model_forward(ctx, &b, &row, 1, lg)) goto out;
    out[0] = argmax(lg, V);
    memcpy(lout, lg, sizeof(float) * V);
    for (int g = 1; g < N_GEN; g++) {
        int32_t t = out[g - 1], p = n + g - 1, r0 = 0;
        xds_batch d = {1, &t, &p, seq};
        if (xds_model_forward(ctx, &d, &r0, 1, lg)) goto out;
        out[g] = argmax(lg, V);
        memcpy(lout + (size_t)g * V, lg, sizeof(float) * V);
    }
    rc = 0;
out:
    free(lg);
    if (ctx) xds_model_ctx_free(ctx);
    xds_kv_cache_free(kv);
    return rc;
}


/* The prefill process: submit all prompts, hold until every task is freed. */
static int prefill_main(const xds_model *m, const char *name, int rank) {
    xccl_comm *c = NULL;
    if (xccl_comm_attach(&c, name, rank, 3) != XCCL_OK) return 3;
    for (double end = now_s() + 30; xccl_peer_check(c, 0) != XCCL_OK;) { /* the decode rank attaches after forking */
        if (now_s() > end) return 10;
        usleep(2000);
    }
    xds_pd_prefill_opts o = {.pool_tokens = 128, .block_size = BLOCK, .max_seqs = N_REQ, .chunk = 8, .n_threads = 1};
    xds_pd_prefill *p = NULL;
    int rc = 0;
    if (xds_pd_prefill_create(m, &o, c, &p) != XDS_OK) {
        fprintf(stderr, "prefill create: %s\n", xds_err_msg());
        xccl_comm_detach(c);
        return 4;
    }
    int total = xds_pd_prefill_free_blocks(p);
    int32_t prompt[64];
    for (int r = 0; r < N_REQ && !rc; r++) {
        make_prompt(r, prompt_len[r], m->cfg.n_vocab, prompt);
        int32_t first;
        if (xds_pd_prefill_submit(p, (uint64_t)(r + 1), prompt, prompt_len[r], 0, &first) != XDS_OK) {
            fprintf(stderr, "prefill submit %d: %s\n", r, xds_err_msg());
            rc = 5;
        }
    }
    if (!rc && xds_pd_prefill_outstanding(p) != N_REQ) rc = 6;
    double end = now_s() + 60;
    while (!rc && xds_pd_prefill_outstanding(p) > 0) {
        if (xds_pd_prefill_poll(p, 0, 100) != XDS_OK) {
            fprintf(stderr, "prefill poll: %s\n", xds_err_msg());
            rc = 7;
        }
        if (now_s() > end) rc = 8;
    }
    uint64_t cached = 0, computed = 0;
    xds_pd_prefill_token_stats(p, &cached, &computed);
    if (!rc && cached != 32) { /* request 3: all full blocks of its 33 tokens but the last token's */
        fprintf(stderr, "prefill: %llu prompt tokens from the prefix cache, want 32\n", (unsigned long long)cached);
        rc = 11;
    }
    if (!rc && xds_pd_prefill_free_blocks(p) != total) {
        fprintf(stderr, "prefill: %d of %d blocks free after all tasks were freed\n", xds_pd_prefill_free_blocks(p),
                total);
        rc = 9;
    }
    xds_pd_prefill_free(p);
    xccl_comm_detach(c);
    return rc;
}

/* Decode n_gen - 1 tokens after the first for the pulled sequence in slot 0;
 * step g's logits -> lout[g] (g >= 1). */
static int decode_rest(const xds_model *m, xds_deploy_attn *a, xds_model_ctx *ctx, xds_kv_cache *kv, int n,
                       int32_t first, int32_t *out, float *lout) {
    int V = m->cfg.n_vocab;
    float *lg = malloc(sizeof(float) * V);
    out[0] = first;
    int rc = 0;
    if (xds_kv_seq_reserve(kv, 0, n + N_GEN) != XDS_OK) rc = -1;
    for (int g = 1; g < N_GEN && !rc; g++) {
        int32_t t = out[g - 1], p = n + g - 1, s0 = 0, r0 = 0;
        xds_batch d = {1, &t, &p, &s0};
        xds_status st = a ? xds_deploy_forward(a, ctx, &d, &r0, 1, lg) : xds_model_forward(ctx, &d, &r0, 1, lg);
        if (st != XDS_OK) rc = -1;
        else out[g] = argmax(lg, V), memcpy(lout + (size_t)g * V, lg, sizeof(float) * V);
    }
    free(lg);
    return rc;
}

static void run_topology(const char *label, const xds_model *m, int W) {
    int V = m->cfg.n_vocab;
    int32_t ref[N_REQ][N_GEN], prompt[64];
    float *lref = malloc(sizeof(float) * N_REQ * N_GEN * V), *lgot = malloc(sizeof(float) * N_GEN * V);
    for (int r = 0; r < N_REQ; r++) {
        make_prompt(r, prompt_len[r], V, prompt);
        CHECK_MSG(reference(m, prompt, prompt_len[r], ref[r], lref + (size_t)r * N_GEN * V) == 0, "%s: reference: %s",
                  label, xds_err_msg());
    }
    double worst = 0; /* max |logit delta| over every request and step */
    int logit_steps = 0;
    int n_ranks = 1 + W + 1, pre_rank = 1 + W;
    xccl_config cfg;
    xds_deploy_xccl_config(n_ranks, &cfg);
    cfg.heartbeat_timeout_ms = 20000;
    xds_deploy_placement pl = {0};
    if (W > 0) CHECK(xds_deploy_placement_blocks(m->cfg.moe.n_expert, W, &pl) == XDS_OK);
    int attn0 = 0, wr[8];
    for (int w = 0; w < W; w++) wr[w] = 1 + w;
    char name[96];
    static int counter;
    snprintf(name, sizeof name, "/xds-test-pd-%d-%d", (int)getpid(), counter++);
    xccl_segment *seg = NULL;
    if (xccl_segment_create(&seg, name, &cfg) != XCCL_OK) {
        CHECK_MSG(0, "%s: segment: %s", label, xccl_err_msg());
        return;
    }
    xccl_comm *comm = NULL;
    pid_t pids[8] = {0};
    fflush(NULL); /* children first: attaching starts a thread, and fork after threads may inherit held locks */
    for (int w = 0; w < W; w++) {
        pid_t p = fork();
        if (p == 0) {
            xccl_comm *c = NULL;
            if (xccl_comm_attach(&c, name, 1 + w, 2) != XCCL_OK) _exit(3);
            xds_status s = xds_deploy_expert_run(m, c, &pl, w, &attn0, 1, 8, 1, NULL);
            if (s != XDS_OK) fprintf(stderr, "expert %d: %s\n", 1 + w, xds_err_msg());
            xccl_comm_detach(c);
            _exit(s == XDS_OK ? 0 : 4);
        }
        pids[w] = p;
    }
    pid_t pp = fork();
    if (pp == 0) _exit(prefill_main(m, name, pre_rank));
    pids[W] = pp;
    CHECK(xccl_comm_attach(&comm, name, 0, 1) == XCCL_OK);
    if (comm) xccl_comm_set_timeout(comm, 60000); /* prefill under sanitizers on 2 busy cores is slow */

    xds_deploy_attn *a = NULL;
    if (comm && W > 0)
        CHECK_MSG(xds_deploy_attn_create(m, comm, wr, &pl, 8, 2, &a) == XDS_OK, "%s: attn: %s", label,
                  xds_err_msg());
    /* decode pool: the 33-token request + its output (10 blocks) + 2 spare */
    xds_kv_cache *kv = NULL;
    xds_model_ctx *ctx = NULL;
    CHECK(xds_model_kv_cache_create(m, 12 * BLOCK, BLOCK, 2, &kv) == XDS_OK);
    CHECK(kv && xds_model_ctx_create(m, kv, 1, 8, &ctx) == XDS_OK);
    xds_pd_task t[N_REQ];
    int ok = comm && ctx && (W == 0 || a);
    for (int r = 0; r < N_REQ && ok; r++) {
        xds_status s = xds_pd_task_recv(comm, pre_rank, &t[r]);
        CHECK_MSG(s == XDS_OK, "%s: task %d: %s", label, r, xds_err_msg());
        ok = s == XDS_OK;
        if (ok) CHECK(t[r].req_id == (uint64_t)(r + 1) && t[r].n_prompt == prompt_len[r]);
    }
    uint64_t bytes = 0;
    double pull_s = 0;
    int busy_seen = 0;
    if (ok) {
        /* a task of another incarnation of the prefill rank (the instance
         * restarted after handing it out): refused before anything is read */
        xds_pd_task stale = t[0];
        stale.src_inc++;
        xds_status s1 = xds_pd_get_logits(comm, &stale, lgot);
        CHECK_MSG(s1 == XDS_ERR_PEER && strstr(xds_err_msg(), "incarnation"), "%s: stale task logits: %s", label,
                  xds_err_msg());
        xds_status s2 = xds_pd_pull(comm, &stale, kv, 0, NULL);
        CHECK_MSG(s2 == XDS_ERR_PEER && strstr(xds_err_msg(), "incarnation") && kv->seqs[0].n_blocks == 0,
                  "%s: stale task pull: %s", label, xds_err_msg());
    }
    for (int r = 0; r < N_REQ && ok; r++) {
        /* the prefill side's logits of the last prompt token: read while the task holds them */
        xds_status sl = xds_pd_get_logits(comm, &t[r], lgot);
        CHECK_MSG(sl == XDS_OK && t[r].n_vocab == V, "%s: logits of request %d: %s", label, r, xds_err_msg());
        double t0 = now_s();
        xds_status s = xds_pd_pull(comm, &t[r], kv, 0, &bytes);
        pull_s += now_s() - t0;
        CHECK_MSG(s == XDS_OK, "%s: pull %d: %s", label, r, xds_err_msg());
        if (s != XDS_OK) break;
        if (r == 0) {
            /* request 1 (19 tokens, 5 blocks) cannot be pulled into the free
             * slot while request 0 holds 9 of 12 blocks: refused, nothing read */
            xds_status s2 = xds_pd_pull(comm, &t[1], kv, 1, NULL);
            busy_seen = s2 == XDS_ERR_BUSY && kv->seqs[1].n_blocks == 0;
        }
        int32_t got[N_GEN];
        int dr = sl == XDS_OK ? decode_rest(m, a, ctx, kv, prompt_len[r], t[r].first_token, got, lgot) : -1;
        CHECK_MSG(dr == 0, "%s: decode %d: %s", label, r, xds_err_msg());
        CHECK_MSG(!memcmp(got, ref[r], sizeof got), "%s: request %d: greedy tokens differ from colocated", label, r);
        for (int g = 0; g < N_GEN && dr == 0; g++) {
            const float *a0 = lref + ((size_t)r * N_GEN + g) * V, *b0 = lgot + (size_t)g * V;
            double w = 0;
            for (int v = 0; v < V; v++) w = fmax(w, fabs((double)a0[v] - b0[v]));
            CHECK_MSG(w == 0, "%s: request %d step %d (%s): logits differ from colocated by %.3g", label, r, g,
                      g ? "decode" : "prefill side", w);
            worst = fmax(worst, w);
            logit_steps++;
        }
        xds_kv_seq_truncate(kv, 0, 0);
    }
    CHECK_MSG(busy_seen, "%s: a pull beyond the free decode blocks must say XDS_ERR_BUSY (back-pressure)", label);
    CHECK_MSG(logit_steps == N_REQ * N_GEN, "%s: logits compared at %d of %d steps", label, logit_steps,
              N_REQ * N_GEN);
    printf("%s (%s KV, %d expert workers): %d requests x %d tokens identical to colocated, logits of all %d steps "
           "max |delta| %.3g; pulled %llu bytes in %.3f ms\n",
           label, m->cfg.mla.kv_lora_rank ? "MLA latent" : "GQA", W, N_REQ, N_GEN, logit_steps, worst,
           (unsigned long long)bytes, pull_s * 1e3);
    free(lref), free(lgot);
    if (ctx) xds_model_ctx_free(ctx);
    xds_kv_cache_free(kv);
    if (a) {
        xds_deploy_attn_stop(a);
        xds_deploy_attn_free(a);
    }
    if (comm) xccl_comm_detach(comm);
    int bad = tp_reap(pids, W + 1, 30);
    CHECK_MSG(bad == 0, "%s: %d children failed", label, bad);
    xccl_segment_destroy(seg);
    xds_deploy_placement_free(&pl);
    fflush(stdout);
}

/* Back-pressure proper: a second slot exists but the pool lacks blocks. */
static void check_busy(const xds_model *m) {
    xds_kv_cache *kv = NULL;
    CHECK(xds_model_kv_cache_create(m, 4 * BLOCK, BLOCK, 2, &kv) == XDS_OK);
    if (!kv) return;
    xds_pd_task t;
    memset(&t, 0, sizeof t);
    t.req_id = 1, t.n_prompt = 5 * BLOCK, t.n_blocks = 5, t.block_size = BLOCK, t.pool_blocks = 8;
    t.n_layer = kv->n_layer, t.k_dim = kv->k_dim, t.v_dim = kv->v_dim;
    CHECK(xds_pd_pull(NULL, &t, kv, 0, NULL) == XDS_ERR_BUSY && kv->n_free == 4 && kv->seqs[0].n_blocks == 0);
    t.k_dim++;
    CHECK(xds_pd_pull(NULL, &t, kv, 0, NULL) == XDS_ERR_INVALID && strstr(xds_err_msg(), "geometry"));
    t.k_dim--;
    t.blocks[0] = 99;
    t.n_blocks = 1, t.n_prompt = 2;
    CHECK(xds_pd_pull(NULL, &t, kv, 0, NULL) == XDS_ERR_PEER && strstr(xds_err_msg(), "outside"));
    xds_kv_cache_free(kv);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    struct {
        const char *label, *path;
        int W;
    } cases[] = {
        {"llama", ORA "tiny/h64_gqa4_hd24_llama3", 0},
        {"qwen3_moe", ORA "moe/qwen3moe_gqa_sparse", 0},
        {"deepseek_v3", ORA "moe/ds_qlora_yarn_groups", 0},
        {"qwen3_moe+experts", ORA "moe/qwen3moe_gqa_sparse", 2},
        {"deepseek_v3+experts", ORA "moe/ds_qlora_yarn_groups", 2},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        xds_model *m = NULL;
        xds_status s = xds_model_load(cases[i].path, NULL, &m);
        CHECK_MSG(s == XDS_OK, "load %s: %s", cases[i].path, xds_err_msg());
        if (!m) continue;
        if (i == 0) check_busy(m);
        run_topology(cases[i].label, m, cases[i].W);
        xds_model_free(m);
    }
    const char *smol = test_model_path();
#if defined(__SANITIZE_ADDRESS__)
    smol = NULL; /* the same code paths run on the tiny models above; SmolLM2 in the release build */
    TEST_SKIP_BUILD("SmolLM2 under AddressSanitizer (too slow; the release build runs it)");
#endif
    if (!smol) {
#if !defined(__SANITIZE_ADDRESS__)
        TEST_SKIP("SmolLM2: XDS_TEST_MODEL is not set");
#endif
    } else {
        xds_model *m = NULL;
        CHECK_MSG(xds_model_load(smol, NULL, &m) == XDS_OK, "load %s: %s", smol, xds_err_msg());
        if (m) run_topology("smollm2", m, 0);
        xds_model_free(m);
        m = NULL;
        char dir[] = "/tmp/xds-test-pd-XXXXXX", path[300];
        if (mkdtemp(dir)) {
            snprintf(path, sizeof path, "%s/smol-e4p.gguf", dir);
            xds_status s = xds_model_upcycle_perturbed(smol, path, 4, 2, 3, 0.5f);
            CHECK_MSG(s == XDS_OK, "upcycle: %s", xds_err_msg());
            if (s == XDS_OK) CHECK_MSG(xds_model_load(path, NULL, &m) == XDS_OK, "load %s: %s", path, xds_err_msg());
            if (m) run_topology("smollm2-upcycled-perturbed+experts", m, 2);
            xds_model_free(m);
            unlink(path);
            rmdir(dir);
        }
    }
    TEST_MAIN_END();
}
