/*
 * worker.c — `xds worker --role ROLE ...`: one process of a disaggregated
 * deployment, started by the `xds serve` supervisor (cli/serve_deploy.c).
 *
 * Roles: `expert` — attach to the deployment's XCCL segment as rank R, load
 * the model (mmap: the weights are shared with the other processes through
 * the page cache), then run the expert loop of engine/deploy.h until the
 * attention rank says STOP (exit 0) or fails (exit 1 with one error line).
 * Exit status 2: bad invocation. The worker never outlives its supervisor:
 * it asks the kernel for SIGTERM when its parent dies, and its XCCL waits
 * fail when rank 0 is gone.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <xccl.h>

#include "cli/cli.h"
#include "engine/deploy.h"
#include "engine/deploy_pd.h"
#include "engine/deploy_dp.h"
#include "format/weights.h"
#include "tokenizer/tokenizer.h"
#include <limits.h>
#include "model/model.h"

static void worker_usage(FILE *f) {
    fprintf(f,
            "usage: xds worker --role expert --segment NAME --rank R --workers W -m MODEL [-t THREADS]\n"
            "       xds worker --role prefill --segment NAME --rank R --front F -m MODEL [-t THREADS]\n"
            "                  [--block-size B] [--pool-tokens N] [--max-seqs S] [--chunk C]\n"
            "       xds worker --role decode --segment NAME --rank R --front F --group G --load-table SHM\n"
            "                  -m MODEL [-t THREADS] [--max-batch B] [--max-step-tokens N] [--ctx C]\n"
            "                  [--block-size B] [--kv-blocks N] [--no-prefix-cache]\n"
            "Internal: started by 'xds serve --experts W / --prefill P'. An expert worker holds a block\n"
            "of routed experts and computes them for the attention rank over XCCL; a prefill instance\n"
            "runs chunked prefill into a registered KV pool for the decode group at rank F.\n");
}

/* A prefill instance: serve the front rank's requests until STOP. */
static int worker_prefill(const char *segment, const char *model_path, long rank, long front, long threads,
                          long block, long pool, long seqs, long chunk) {
    if (!segment || !model_path || rank < 0 || rank >= XCCL_MAX_RANKS || front < 0 || front >= XCCL_MAX_RANKS ||
        front == rank || threads < 1 || threads > 1024 || block < 1 || block > 4096 || pool < block ||
        pool > (1L << 26) || seqs < 1 || seqs > 4096 || chunk < 1 || chunk > (1 << 20)) {
        fprintf(stderr, "xds worker: error: prefill needs --segment, -m, --rank R, --front F (ranks 0..%d, R != F) "
                        "and sane --block-size/--pool-tokens/--max-seqs/--chunk\n", XCCL_MAX_RANKS - 1);
        return 2;
    }
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() == 1) return 1;
    xds_model *m = NULL;
    xds_status s = xds_model_load(model_path, NULL, &m);
    if (s != XDS_OK) {
        fprintf(stderr, "xds worker (prefill %ld): error: %s\n", rank, xds_err_msg());
        return 1;
    }
    xccl_comm *comm = NULL;
    xccl_status xs = xccl_comm_attach(&comm, segment, (int)rank, 3);
    if (xs != XCCL_OK) {
        fprintf(stderr, "xds worker (prefill %ld): error: attach to %s: %s\n", rank, segment, xccl_err_msg());
        xds_model_free(m);
        return 1;
    }
    xds_pd_prefill_opts o = {.pool_tokens = (int)pool, .block_size = (int)block, .max_seqs = (int)seqs,
                             .chunk = (int)chunk, .n_threads = (int)threads};
    xds_pd_prefill *p = NULL;
    s = xds_pd_prefill_create(m, &o, comm, &p);
    if (s == XDS_OK) s = xds_pd_prefill_serve(p, (int)front);
    if (p) {
        uint64_t cached = 0, computed = 0;
        xds_pd_prefill_token_stats(p, &cached, &computed);
        fprintf(stderr,
                "xds worker (prefill rank %ld): %llu prompt tokens computed, %llu from the prefix cache; %d transfer "
                "tasks still held at exit\n",
                rank, (unsigned long long)computed, (unsigned long long)cached, xds_pd_prefill_outstanding(p));
    }
    int rc = 0;
    if (s != XDS_OK) {
        fprintf(stderr, "xds worker (prefill %ld): error: %s\n", rank, xds_err_msg());
        rc = 1;
    }
    xds_pd_prefill_free(p);
    xccl_comm_detach(comm);
    xds_model_free(m);
    return rc;
}

/* A decode DP group: its own engine, fed by the front-end at rank front. */
static int worker_decode(const char *segment, const char *model_path, long rank, long front, long group,
                         const char *table, const xds_engine_opts *eo) {
    if (!segment || !model_path || !table || rank < 0 || rank >= XCCL_MAX_RANKS || front < 0 ||
        front >= XCCL_MAX_RANKS || front == rank || group < 1 || group >= XDS_DP_MAX_GROUPS || eo->n_threads < 1 ||
        eo->max_batch < 1 || eo->max_step_tokens < 1 || eo->max_ctx < 16 || eo->kv_block_size < 1) {
        fprintf(stderr, "xds worker: error: decode needs --segment, -m, --rank, --front, --group 1..%d, "
                        "--load-table and sane engine options\n", XDS_DP_MAX_GROUPS - 1);
        return 2;
    }
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() == 1) return 1;
    xds_model *m = NULL;
    xds_tokenizer *tok = NULL;
    xds_engine *engine = NULL;
    xds_dp_table *t = NULL;
    xccl_comm *comm = NULL;
    int rc = 1;
    xds_status s = xds_model_load(model_path, NULL, &m);
    if (s == XDS_OK) {
        if (xds_weights_is_gguf(m->weights)) s = xds_tokenizer_load_gguf(xds_weights_gguf(m->weights), &tok);
        else {
            char tj[PATH_MAX], tc[PATH_MAX];
            snprintf(tj, sizeof tj, "%s/tokenizer.json", model_path);
            snprintf(tc, sizeof tc, "%s/tokenizer_config.json", model_path);
            FILE *f = fopen(tc, "rb");
            if (f) fclose(f);
            s = xds_tokenizer_load_json(tj, f ? tc : NULL, &tok);
        }
    }
    if (s == XDS_OK) s = xds_engine_create(m, tok, eo, &engine);
    if (s == XDS_OK) s = xds_dp_table_open(table, &t);
    if (s == XDS_OK && xccl_comm_attach(&comm, segment, (int)rank, 5) != XCCL_OK)
        s = xds_err_set(XDS_ERR_IO, "attach to %s: %s", segment, xccl_err_msg());
    if (s == XDS_OK) {
        s = xds_dp_group_serve(engine, comm, (int)front, t, (int)group, eo->kv_block_size, eo->max_batch);
        engine = NULL; /* freed by the serving loop */
        if (s == XDS_OK) rc = 0;
    }
    if (s != XDS_OK) fprintf(stderr, "xds worker (decode group %ld): error: %s\n", group, xds_err_msg());
    if (engine) xds_engine_free(engine, 0);
    if (comm) xccl_comm_detach(comm);
    xds_dp_table_close(t);
    if (tok) xds_tokenizer_free(tok);
    if (m) xds_model_free(m);
    return rc;
}

int cli_worker(int argc, char **argv) {
    const char *role = NULL, *segment = NULL, *model_path = NULL;
    long rank = -1, workers = 0, threads = 1, front = -1, block = 16, pool = 8192, seqs = 16, chunk = 256;
    long group = -1, max_batch = 16, step_tokens = 256, ctx = 4096, kv_blocks = 0;
    int prefix_cache = 1;
    const char *table = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            worker_usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--no-prefix-cache")) {
            prefix_cache = 0;
            continue;
        }
        if (!v) {
            fprintf(stderr, "xds worker: error: %s needs a value\n", a);
            return 2;
        }
        char *end = NULL;
        if (!strcmp(a, "--role")) role = v;
        else if (!strcmp(a, "--segment")) segment = v;
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) model_path = v;
        else if (!strcmp(a, "--rank")) rank = strtol(v, &end, 10);
        else if (!strcmp(a, "--workers")) workers = strtol(v, &end, 10);
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) threads = strtol(v, &end, 10);
        else if (!strcmp(a, "--front")) front = strtol(v, &end, 10);
        else if (!strcmp(a, "--block-size")) block = strtol(v, &end, 10);
        else if (!strcmp(a, "--pool-tokens")) pool = strtol(v, &end, 10);
        else if (!strcmp(a, "--max-seqs")) seqs = strtol(v, &end, 10);
        else if (!strcmp(a, "--chunk")) chunk = strtol(v, &end, 10);
        else if (!strcmp(a, "--group")) group = strtol(v, &end, 10);
        else if (!strcmp(a, "--load-table")) table = v;
        else if (!strcmp(a, "--max-batch")) max_batch = strtol(v, &end, 10);
        else if (!strcmp(a, "--max-step-tokens")) step_tokens = strtol(v, &end, 10);
        else if (!strcmp(a, "--ctx")) ctx = strtol(v, &end, 10);
        else if (!strcmp(a, "--kv-blocks")) kv_blocks = strtol(v, &end, 10);
        else {
            fprintf(stderr, "xds worker: error: unknown option '%s'\n", a);
            worker_usage(stderr);
            return 2;
        }
        if (end && *end) {
            fprintf(stderr, "xds worker: error: %s wants an integer, got '%s'\n", a, v);
            return 2;
        }
        i++;
    }
    if (role && !strcmp(role, "decode")) {
        xds_engine_opts eo = xds_engine_opts_default();
        eo.n_threads = (int)threads, eo.max_batch = (int)max_batch, eo.max_step_tokens = (int)step_tokens;
        eo.max_ctx = (int)ctx, eo.kv_block_size = (int)block, eo.kv_blocks = (int)kv_blocks;
        eo.enable_prefix_cache = prefix_cache;
        return worker_decode(segment, model_path, rank, front, group, table, &eo);
    }
    if (role && !strcmp(role, "prefill")) return worker_prefill(segment, model_path, rank, front, threads, block, pool,
                                                                seqs, chunk);
    if (!role || strcmp(role, "expert") != 0) {
        fprintf(stderr, "xds worker: error: --role must be 'expert' or 'prefill' (got '%s')\n", role ? role : "");
        return 2;
    }
    if (!segment || !model_path || workers < 1 || workers >= XCCL_MAX_RANKS || rank < 1 || rank > workers ||
        threads < 1 || threads > 1024) {
        fprintf(stderr, "xds worker: error: need --segment, -m, --workers W (1..%d), --rank R (1..W), -t 1..1024\n",
                XCCL_MAX_RANKS - 1);
        return 2;
    }
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() == 1) return 1; /* the supervisor is already gone */

    xds_model *m = NULL;
    xds_status s = xds_model_load(model_path, NULL, &m);
    if (s != XDS_OK) {
        fprintf(stderr, "xds worker (expert %ld): error: %s\n", rank, xds_err_msg());
        return 1;
    }
    xccl_comm *comm = NULL;
    xccl_status xs = xccl_comm_attach(&comm, segment, (int)rank, 2);
    if (xs != XCCL_OK) {
        fprintf(stderr, "xds worker (expert %ld): error: attach to %s: %s\n", rank, segment, xccl_err_msg());
        xds_model_free(m);
        return 1;
    }
    xds_deploy_expert_stats st;
    s = xds_deploy_expert_run(m, comm, (int)workers, (int)threads, &st);
    int rc = 0;
    if (s != XDS_OK) {
        fprintf(stderr, "xds worker (expert %ld): error: %s\n", rank, xds_err_msg());
        rc = 1;
    } else {
        double busy = st.recv_s + st.compute_s + st.combine_s;
        fprintf(stderr,
                "xds worker (expert %ld): %llu passes, %llu rows; idle %.3f s, dispatch wait %.3f s, "
                "expert compute %.3f s, combine %.3f s (compute %.0f%% of busy time)\n",
                rank, (unsigned long long)st.steps, (unsigned long long)st.rows, st.wait_s, st.recv_s,
                st.compute_s, st.combine_s, busy > 0 ? 100.0 * st.compute_s / busy : 0.0);
    }
    xccl_comm_detach(comm);
    xds_model_free(m);
    return rc;
}
