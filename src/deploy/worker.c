/*
 * worker.c — `xds worker --role ROLE ...`: one process of a disaggregated
 * deployment, started by the `xds serve` supervisor (deploy/supervisor.c).
 *
 * Roles: `expert` — attach to the deployment's XCCL segment as rank R, load
 * the model (mmap: the weights are shared with the other processes through
 * the page cache), then run the expert loop of deploy/expert.h until the
 * attention rank says STOP (exit 0) or fails (exit 1 with one error line).
 * Exit status 2: bad invocation. A worker outlives its supervisor: it keeps
 * serving the front-ends, and ends when told (STOP from the supervisor,
 * SIGTERM) or when no front-end and no supervisor is left.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <xccl.h>

#include "deploy/worker.h"
#include "deploy/expert.h"
#include "deploy/pd.h"
#include "deploy/dp.h"
#include "deploy/pd_pick.h"
#include "format/weights.h"
#include "tokenizer/tokenizer.h"
#include <limits.h>
#include "model/model.h"

/* --quantize: the load-time weight conversion of every role (the deployment's
 * `xds serve --quantize`, passed on by the supervisor) */
static int g_quantize = XDS_QUANTIZE_NONE;

static void worker_usage(FILE *f) {
    fprintf(f,
            "usage: xds worker --role expert --segment NAME --rank R --worker W --placement P --attn-ranks A,B,..\n"
            "                  --max-tok N -m MODEL [-t THREADS]\n"
            "       xds worker --role prefill --segment NAME --rank R --front F[,F2,..] -m MODEL [-t THREADS]\n"
            "                  [--block-size B] [--pool-tokens N] [--max-seqs S] [--chunk C]\n"
            "                  [--pick-table SHM --instance I]\n"
            "       xds worker --role decode --segment NAME --rank R --front F[,F2,..] --group G --load-table SHM\n"
            "                  -m MODEL [-t THREADS] [--max-batch B] [--max-step-tokens N] [--ctx C]\n"
            "                  [--block-size B] [--kv-blocks N] [--no-prefix-cache]\n"
            "                  [--attn-rank R2 --expert-ranks A,B,.. --placement P [--micro-batches M]]\n"
            "Internal: started by 'xds serve --experts W / --prefill P / --decode-dp D'. An expert worker\n"
            "holds the routed experts of placement entry W (P: 'e,e,..;e,..' per worker) and computes them\n"
            "for every attention rank over XCCL; a prefill instance runs chunked prefill into a registered\n"
            "KV pool for the decode group at rank F; a decode group runs its own engine, with its MoE\n"
            "layers on the expert workers when --expert-ranks is given (attention traffic on rank R2).\n");
}

/* "1,2,3" -> ranks; returns the count, or -1 if malformed. */
static int parse_ranks(const char *v, int *out, int cap) {
    int n = 0;
    if (!v || !*v) return -1;
    while (*v) {
        char *end = NULL;
        long r = strtol(v, &end, 10);
        if (end == v || r < 0 || r >= XCCL_MAX_RANKS || n >= cap) return -1;
        out[n++] = (int)r;
        if (*end == ',') end++;
        else if (*end) return -1;
        v = end;
    }
    return n;
}

typedef struct pick_pub { /* where a prefill instance publishes its cached prefixes */
    xds_pd_table *t;
    int inst;
} pick_pub;

static void publish_cache(void *user, const struct xds_prefix_cache *pc) {
    pick_pub *pp = user;
    if (pc && xds_pd_pick_sync_cache(pp->t, pp->inst, pc) != XDS_OK)
        fprintf(stderr, "xds worker (prefill %d): warning: cache summary: %s\n", pp->inst, xds_err_msg());
}

/* A prefill instance: serve the front rank's requests until STOP. */
static int worker_prefill(const char *segment, const char *model_path, long rank, const char *front_s, long threads,
                          long block, long pool, long seqs, long chunk, const char *pick_table, long inst) {
    int fronts[XDS_PD_MAX_FRONTS];
    int n_fronts = parse_ranks(front_s, fronts, XDS_PD_MAX_FRONTS);
    long front = n_fronts > 0 ? fronts[0] : -1;
    for (int i = 1; i < n_fronts; i++)
        if (fronts[i] == rank) front = -1;
    if (!segment || !model_path || rank < 0 || rank >= XCCL_MAX_RANKS || front < 0 || front >= XCCL_MAX_RANKS ||
        front == rank || threads < 1 || threads > 1024 || block < 1 || block > 4096 || pool < block ||
        pool > (1L << 26) || seqs < 1 || seqs > 4096 || chunk < 1 || chunk > (1 << 20)) {
        fprintf(stderr, "xds worker: error: prefill needs --segment, -m, --rank R, --front F (ranks 0..%d, R != F) "
                        "and sane --block-size/--pool-tokens/--max-seqs/--chunk\n", XCCL_MAX_RANKS - 1);
        return 2;
    }
    if (getppid() == 1) return 1; /* started by a supervisor that is already gone */
    xds_model *m = NULL;
    xds_model_opts mo = {.quantize = g_quantize};
    xds_status s = xds_model_load(model_path, &mo, &m);
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
    pick_pub pp = {NULL, (int)inst};
    if (pick_table) {
        s = xds_pd_pick_table_open(pick_table, &pp.t);
        if (s != XDS_OK || inst < 0 || inst >= XDS_PD_PICK_MAX) {
            fprintf(stderr, "xds worker (prefill %ld): error: pick table %s / instance %ld: %s\n", rank, pick_table,
                    inst, s != XDS_OK ? xds_err_msg() : "bad instance");
            xds_pd_pick_table_close(pp.t);
            xccl_comm_detach(comm);
            xds_model_free(m);
            return 1;
        }
        o.after_submit = publish_cache, o.after_submit_user = &pp;
    }
    xds_pd_prefill *p = NULL;
    s = xds_pd_prefill_create(m, &o, comm, &p);
    /* alive only once the pool exists: the supervisor waits for it before serving */
    if (s == XDS_OK && pp.t) xds_pd_pick_set_alive(pp.t, (int)inst, (int)block, 1);
    if (s == XDS_OK) s = xds_pd_prefill_serve(p, fronts, n_fronts);
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
    if (pp.t) {
        xds_pd_pick_set_alive(pp.t, (int)inst, (int)block, 0);
        xds_pd_pick_table_close(pp.t);
    }
    xds_pd_prefill_free(p);
    xccl_comm_detach(comm);
    xds_model_free(m);
    return rc;
}

/* A decode DP group: its own engine, fed by the front-end at rank front. */
typedef struct decode_moe { /* a decode group whose MoE layers run on expert workers */
    long attn_rank;
    const char *expert_ranks, *placement;
    long micro_batches;
} decode_moe;

static int worker_decode(const char *segment, const char *model_path, long rank, const char *front_s, long group,
                         const char *table, const xds_engine_opts *eo_in, const decode_moe *dm) {
    xds_engine_opts eo_copy = *eo_in, *eo = &eo_copy;
    int fronts[XDS_DP_MAX_FRONTS];
    int n_fronts = parse_ranks(front_s, fronts, XDS_DP_MAX_FRONTS);
    long front = n_fronts > 0 ? fronts[0] : -1;
    for (int i = 1; i < n_fronts; i++)
        if (fronts[i] == rank) n_fronts = -1;
    int wranks[XDS_DEPLOY_MAX_WORKERS], n_w = 0;
    if (dm->expert_ranks) {
        n_w = parse_ranks(dm->expert_ranks, wranks, XDS_DEPLOY_MAX_WORKERS);
        if (n_w < 1 || !dm->placement || dm->attn_rank < 0 || dm->attn_rank >= XCCL_MAX_RANKS ||
            dm->attn_rank == rank || dm->micro_batches < 1 || dm->micro_batches > XDS_DEPLOY_MAX_MB) {
            fprintf(stderr, "xds worker: error: decode with --expert-ranks needs a rank list, --placement, "
                            "--attn-rank (not --rank) and --micro-batches 1..%d\n", XDS_DEPLOY_MAX_MB);
            return 2;
        }
    }
    if (!segment || !model_path || !table || rank < 0 || rank >= XCCL_MAX_RANKS || front < 0 || n_fronts < 1 ||
        front >= XCCL_MAX_RANKS || front == rank || group < 0 || group >= XDS_DP_MAX_GROUPS || eo->n_threads < 1 ||
        eo->max_batch < 1 || eo->max_step_tokens < 1 || eo->max_ctx < 16 || eo->kv_block_size < 1) {
        fprintf(stderr, "xds worker: error: decode needs --segment, -m, --rank, --front, --group 0..%d, "
                        "--load-table and sane engine options\n", XDS_DP_MAX_GROUPS - 1);
        return 2;
    }
    if (getppid() == 1) return 1; /* started by a supervisor that is already gone */
    xds_model *m = NULL;
    xds_tokenizer *tok = NULL;
    xds_engine *engine = NULL;
    xds_dp_table *t = NULL;
    xccl_comm *comm = NULL, *acomm = NULL;
    xds_deploy_attn *attn = NULL;
    xds_deploy_placement pl = {0};
    int rc = 1;
    /* with remote experts this group runs every unit but the routed experts:
     * it repacks only those (the expert workers repack theirs) */
    xds_model_opts mo = {.no_repack = n_w > 0, .quantize = g_quantize};
    xds_status s = xds_model_load(model_path, &mo, &m);
    if (s == XDS_OK && n_w > 0) s = xds_model_repack_units(m, 1, NULL);
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
    if (s == XDS_OK && n_w > 0) {
        s = xds_deploy_placement_parse(dm->placement, m->cfg.moe.n_expert, &pl);
        if (s == XDS_OK && pl.n_workers != n_w)
            s = xds_err_set(XDS_ERR_INVALID, "--placement has %d workers, --expert-ranks %d", pl.n_workers, n_w);
        if (s == XDS_OK && xccl_comm_attach(&acomm, segment, (int)dm->attn_rank, 6) != XCCL_OK)
            s = xds_err_set(XDS_ERR_IO, "attach to %s as rank %ld: %s", segment, dm->attn_rank, xccl_err_msg());
        int max_tok = eo->max_step_tokens > eo->max_batch ? eo->max_step_tokens : eo->max_batch;
        if (s == XDS_OK) s = xds_deploy_attn_create(m, acomm, wranks, &pl, max_tok, (int)dm->micro_batches, &attn);
        if (s == XDS_OK) eo->forward = xds_deploy_forward_cb, eo->forward_user = attn;
    }
    if (s == XDS_OK) s = xds_engine_create(m, tok, eo, &engine);
    if (s == XDS_OK) s = xds_dp_table_open(table, &t);
    if (s == XDS_OK) xds_deploy_attn_set_fault_counts(attn, &t->faults); /* NULL attn: no expert workers */
    xds_deploy_attn_set_exit_on_break(attn, 1);
    if (s == XDS_OK && xccl_comm_attach(&comm, segment, (int)rank, 5) != XCCL_OK)
        s = xds_err_set(XDS_ERR_IO, "attach to %s: %s", segment, xccl_err_msg());
    if (s == XDS_OK) {
        xds_dp_serve_stats ds = {0};
        s = xds_dp_group_serve(engine, comm, fronts, n_fronts, t, (int)group, eo->kv_block_size, eo->max_batch, 1,
                               &ds);
        fprintf(stderr, "xds worker (decode group %ld): %llu requests; KV pulled from prefill instances: %llu bytes "
                        "in %.3f s\n", group, (unsigned long long)ds.requests, (unsigned long long)ds.kv_pulled_bytes,
                ds.kv_pull_s);
        engine = NULL; /* freed by the serving loop */
        if (s == XDS_OK) rc = 0;
    }
    if (s != XDS_OK) fprintf(stderr, "xds worker (decode group %ld): error: %s\n", group, xds_err_msg());
    if (engine) xds_engine_free(engine, 0);
    if (attn) {
        xds_deploy_stats st;
        xds_deploy_attn_stats(attn, &st);
        double tot = st.attn_s + st.dispatch_s + st.combine_s;
        fprintf(stderr,
                "xds worker (decode group %ld): %llu passes (%llu as 2 micro-batches), %llu tokens; "
                "attention+routing+shared+head %.3f s, dispatch %.3f s, combine (incl. waiting for experts) %.3f s; "
                "dispatch+combine %.0f%% of pass time\n",
                group, (unsigned long long)st.steps, (unsigned long long)st.split_steps,
                (unsigned long long)st.tokens, st.attn_s, st.dispatch_s, st.combine_s,
                tot > 0 ? 100.0 * (st.dispatch_s + st.combine_s) / tot : 0.0);
        xds_deploy_attn_stop(attn);
        xds_deploy_attn_free(attn);
    }
    if (acomm) xccl_comm_detach(acomm);
    xds_deploy_placement_free(&pl);
    if (comm) xccl_comm_detach(comm);
    xds_dp_table_close(t);
    if (tok) xds_tokenizer_free(tok);
    if (m) xds_model_free(m);
    return rc;
}

int xds_deploy_worker_main(int argc, char **argv) {
    const char *role = NULL, *segment = NULL, *model_path = NULL;
    long rank = -1, threads = 1, block = 16, pool = 8192, seqs = 16, chunk = 256;
    long group = -1, max_batch = 16, step_tokens = 256, ctx = 4096, kv_blocks = 0;
    int prefix_cache = 1;
    const char *table = NULL, *placement = NULL, *attn_ranks = NULL, *expert_ranks = NULL;
    long worker = -1, max_tok = 0, attn_rank = -1, micro_batches = 2, inst = 0;
    const char *pick_table = NULL, *front_s = NULL;
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
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) threads = strtol(v, &end, 10);
        else if (!strcmp(a, "--front")) front_s = v; /* a rank list, the supervisor's front-end first */
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
        else if (!strcmp(a, "--worker")) worker = strtol(v, &end, 10);
        else if (!strcmp(a, "--pick-table")) pick_table = v;
        else if (!strcmp(a, "--instance")) inst = strtol(v, &end, 10);
        else if (!strcmp(a, "--placement")) placement = v;
        else if (!strcmp(a, "--attn-ranks")) attn_ranks = v;
        else if (!strcmp(a, "--expert-ranks")) expert_ranks = v;
        else if (!strcmp(a, "--attn-rank")) attn_rank = strtol(v, &end, 10);
        else if (!strcmp(a, "--max-tok")) max_tok = strtol(v, &end, 10);
        else if (!strcmp(a, "--micro-batches")) micro_batches = strtol(v, &end, 10);
        else if (!strcmp(a, "--quantize")) {
            if (xds_quantize_parse(v, &g_quantize)) {
                fprintf(stderr, "xds worker: error: --quantize expects w8a8 or none, got '%s'\n", v);
                return 2;
            }
        } else {
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
        decode_moe dm = {attn_rank, expert_ranks, placement, micro_batches};
        return worker_decode(segment, model_path, rank, front_s, group, table, &eo, &dm);
    }
    if (role && !strcmp(role, "prefill")) return worker_prefill(segment, model_path, rank, front_s, threads, block, pool,
                                                                seqs, chunk, pick_table, inst);
    if (!role || strcmp(role, "expert") != 0) {
        fprintf(stderr, "xds worker: error: --role must be 'expert' or 'prefill' (got '%s')\n", role ? role : "");
        return 2;
    }
    int aranks[XDS_DEPLOY_MAX_ATTN];
    int n_attn = parse_ranks(attn_ranks, aranks, XDS_DEPLOY_MAX_ATTN);
    if (!segment || !model_path || !placement || n_attn < 1 || worker < 0 || worker >= XDS_DEPLOY_MAX_WORKERS ||
        rank < 0 || rank >= XCCL_MAX_RANKS || threads < 1 || threads > 1024 || max_tok < 1 || max_tok > (1 << 20)) {
        fprintf(stderr, "xds worker: error: need --segment, -m, --rank R (0..%d), --worker W, --placement P, "
                        "--attn-ranks A,B,.. (up to %d), --max-tok N, -t 1..1024\n",
                XCCL_MAX_RANKS - 1, XDS_DEPLOY_MAX_ATTN);
        return 2;
    }
    if (getppid() == 1) return 1; /* the supervisor is already gone */

    xds_model *m = NULL;
    xds_model_opts mo = {.no_repack = 1, .quantize = g_quantize}; /* only this worker's experts, below */
    xds_status s = xds_model_load(model_path, &mo, &m);
    if (s != XDS_OK) {
        fprintf(stderr, "xds worker (expert %ld): error: %s\n", worker, xds_err_msg());
        return 1;
    }
    xds_deploy_placement pl = {0};
    s = xds_deploy_placement_parse(placement, m->cfg.moe.n_expert, &pl);
    if (s == XDS_OK) s = xds_deploy_repack_worker(m, &pl, (int)worker);
    if (s != XDS_OK) {
        fprintf(stderr, "xds worker (expert %ld): error: %s\n", worker, xds_err_msg());
        xds_model_free(m);
        return 1;
    }
    xccl_comm *comm = NULL;
    xccl_status xs = xccl_comm_attach(&comm, segment, (int)rank, 2);
    if (xs != XCCL_OK) {
        fprintf(stderr, "xds worker (expert %ld): error: attach to %s: %s\n", worker, segment, xccl_err_msg());
        xds_deploy_placement_free(&pl);
        xds_model_free(m);
        return 1;
    }
    xds_deploy_expert_stats st;
    s = xds_deploy_expert_run(m, comm, &pl, (int)worker, aranks, n_attn, (int)max_tok, (int)threads, &st);
    int rc = 0;
    if (s != XDS_OK) {
        fprintf(stderr, "xds worker (expert %ld): error: %s\n", worker, xds_err_msg());
        rc = 1;
    } else {
        double busy = st.compute_s + st.send_s;
        fprintf(stderr,
                "xds worker (expert %ld, rank %ld): %llu messages, %llu rows; idle %.3f s, expert compute %.3f s, "
                "reply %.3f s (compute %.0f%% of busy time)\n",
                worker, rank, (unsigned long long)st.msgs, (unsigned long long)st.rows, st.wait_s, st.compute_s,
                st.send_s, busy > 0 ? 100.0 * st.compute_s / busy : 0.0);
    }
    xccl_comm_detach(comm);
    xds_deploy_placement_free(&pl);
    xds_model_free(m);
    return rc;
}
