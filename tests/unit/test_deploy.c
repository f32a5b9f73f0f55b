/*
 * test_deploy.c — disaggregated MoE-attention in real processes
 * (deploy/expert.h): the test process is an attention rank; it forks the
 * expert-worker processes (and, for the shared-workers case, a second
 * attention rank, as two decode DP groups are) that attach to a real XCCL
 * segment (unique shm name). Greedy tokens of three sequences decoded
 * together must be identical to the colocated xds_model_forward loop, and the
 * logits bit-identical, for the tiny qwen3_moe, mixtral and deepseek_v3
 * fixtures and for SmolLM2 upcycled to 4 experts (XDS_TEST_MODEL; skipped
 * with a message when unset), in each topology: 1 attention rank + 2 workers
 * (one micro-batch), + 4 workers (two micro-batches, ping-pong), 2 attention
 * ranks sharing 2 workers, and 3 workers where every expert has a replica
 * (tokens rotate across replicas). SmolLM2 runs twice: the exact upcycle
 * (identical experts: blind to routing) and a perturbed one (`xds upcycle
 * --perturb`: each expert's down projection scaled differently, so a token
 * computed by the wrong expert changes the logits). Control: workers whose
 * experts 0 and 1 are swapped must give different logits on the perturbed
 * file, so the comparison there can see a wrong expert.
 *
 * Failover (issue 13), on the qwen3_moe fixture with each worker slot under
 * a small restarting supervisor: kill -9 of one of two workers holding every
 * expert between passes, then of the other in flight; kill -9 in flight of
 * the only holder of half the experts (the layer waits for the restart);
 * SIGSTOP of a replicated worker in flight (seen as a hang after the 1.5 s
 * heartbeat timeout, resumed later: declared dead, it exits and restarts).
 * Each run's greedy tokens and last logits equal the colocated run bit for
 * bit, with exactly one failover and one restart per fault, rows re-sent,
 * and every restarted worker re-entering (READY).
 * Every child is reaped with a deadline (SIGKILL after it), so no process is
 * left behind even when a check fails.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#include <xccl.h>

#include "deploy/expert.h"
#include "model/model.h"
#include "model/moe.h"
#include "model/upcycle.h"
#include "proc_util.h"
#include "test.h"

#define MOE XDS_SOURCE_DIR "/tests/data/oracle/moe/"
#define N_SEQ 3
#define MAX_W 4
#define MAX_A 2

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Greedy tokens of N_SEQ sequences (prompts of n_prompt tokens, then n_gen
 * decode steps of all sequences in one batch). forward: NULL = colocated. */
typedef void (*fault_fn)(int step, void *arg); /* called before each decode step */

static int greedy(const xds_model *m, xds_deploy_attn *a, int n_prompt, int n_gen, int32_t *out /* [N_SEQ][n_gen] */,
                  float *logit_out /* [N_SEQ][n_vocab] of the last step */, fault_fn fault, void *fault_arg) {
    int V = m->cfg.n_vocab, T = N_SEQ * n_prompt;
    xds_kv_cache *kv = NULL;
    xds_model_ctx *ctx = NULL;
    int rc = -1;
    if (xds_model_kv_cache_create(m, N_SEQ * (n_prompt + n_gen + 16), 16, N_SEQ, &kv) != XDS_OK) return -1;
    if (xds_model_ctx_create(m, kv, 1, T, &ctx) != XDS_OK) goto out;
    int32_t tok[128], pos[128], seq[128], rows[N_SEQ];
    float *logits = malloc(sizeof(float) * N_SEQ * V);
    for (int s = 0; s < N_SEQ; s++) {
        if (xds_kv_seq_reserve(kv, s, n_prompt + n_gen) != XDS_OK) goto out2;
        for (int i = 0; i < n_prompt; i++) {
            int k = s * n_prompt + i;
            tok[k] = (int32_t)((i * 37 + s * 101 + 11) % V);
            pos[k] = i;
            seq[k] = s;
        }
        rows[s] = s * n_prompt + n_prompt - 1;
    }
    int n = T;
    for (int step = 0; step < n_gen; step++) {
        if (fault) fault(step, fault_arg);
        xds_batch b = {n, tok, pos, seq};
        xds_status st = a ? xds_deploy_forward(a, ctx, &b, rows, N_SEQ, logits)
                          : xds_model_forward(ctx, &b, rows, N_SEQ, logits);
        if (st != XDS_OK) {
            rc = step + 1; /* failed at this step */
            goto out2;
        }
        for (int s = 0; s < N_SEQ; s++) {
            const float *lg = logits + (size_t)s * V;
            int best = 0;
            for (int v = 1; v < V; v++)
                if (lg[v] > lg[best]) best = v;
            out[s * n_gen + step] = best;
            tok[s] = best;
            pos[s] = n_prompt + step;
            seq[s] = s;
            rows[s] = s;
        }
        n = N_SEQ;
    }
    if (logit_out) memcpy(logit_out, logits, sizeof(float) * N_SEQ * V);
    rc = 0;
out2:
    free(logits);
out:
    if (ctx) xds_model_ctx_free(ctx);
    xds_kv_cache_free(kv);
    return rc;
}


static int seg_counter;

/* A deployment under test: attention ranks 0..n_attn-1, workers after them. */
typedef struct topo {
    const char *name;
    int n_attn, W, mb;
    int replicated; /* workers 0..W-2 hold blocks, worker W-1 holds every expert */
} topo;

static xds_status make_placement(const xds_model *m, const topo *t, xds_deploy_placement *pl) {
    int N = m->cfg.moe.n_expert;
    if (!t->replicated) return xds_deploy_placement_blocks(N, t->W, pl);
    int ids[256], per = (N + t->W - 2) / (t->W - 1);
    const int *lists[MAX_W];
    int n_lists[MAX_W];
    for (int e = 0; e < N; e++) ids[e] = e;
    for (int w = 0; w < t->W - 1; w++) {
        int a = w * per < N ? w * per : N, b = a + per < N ? a + per : N;
        lists[w] = ids + a, n_lists[w] = b - a;
    }
    lists[t->W - 1] = ids, n_lists[t->W - 1] = N;
    return xds_deploy_placement_lists(N, t->W, lists, n_lists, pl);
}

/* Start the workers (and attention ranks 1..) of t on a fresh segment; rank
 * 0 attaches here. Attention rank a > 0 runs child_fn(a) in its process. */
/* When set, each forked expert worker loads this file itself with no_repack
 * and repacks only its own experts (xds_deploy_repack_worker), as `xds
 * worker --role expert` does, instead of using the parent's model. */
static const char *g_worker_path;
/* When set, each forked expert worker swaps experts 0 and 1 of every MoE
 * layer in its (copy-on-write) model: a worker computing the wrong expert. */
static int g_swap_experts;

static int start(const xds_model *m, const topo *t, const xds_deploy_placement *pl, int max_tok, char *name,
                 size_t name_cap, xccl_segment **seg, xccl_comm **comm, pid_t *pids,
                 int (*child_fn)(const char *name, int rank, void *arg), void *arg) {
    xccl_config cfg;
    xds_deploy_xccl_config(t->n_attn + t->W, &cfg);
    cfg.heartbeat_timeout_ms = 20000; /* slow sanitizer builds on 2 cores: liveness via pids */
    snprintf(name, name_cap, "/xds-test-deploy-%d-%d", (int)getpid(), seg_counter++);
    if (xccl_segment_create(seg, name, &cfg) != XCCL_OK) {
        fprintf(stderr, "segment: %s\n", xccl_err_msg());
        return -1;
    }
    fflush(NULL);
    int aranks[MAX_A];
    for (int a = 0; a < t->n_attn; a++) aranks[a] = a;
    /* fork before this process attaches: attaching starts a heartbeat thread,
     * and a child forked from a threaded process may inherit a held lock (the
     * workers wait for the attention ranks to attach) */
    for (int w = 0; w < t->W; w++) {
        pid_t p = fork();
        if (p == 0) {
            xccl_comm *c = NULL;
            if (xccl_comm_attach(&c, name, t->n_attn + w, 2) != XCCL_OK) _exit(3);
            const xds_model *wm = m;
            xds_model *own = NULL;
            if (g_worker_path) {
                xds_model_opts mo = {.no_repack = 1};
                if (xds_model_load(g_worker_path, &mo, &own) != XDS_OK ||
                    xds_deploy_repack_worker(own, pl, w) != XDS_OK) {
                    fprintf(stderr, "expert worker %d: %s\n", w, xds_err_msg());
                    _exit(5);
                }
                if (own->repacked) /* exactly this worker's experts took the repacked layout */
                    for (int e = 0; e < pl->n_expert; e++) {
                        int held = 0;
                        for (int i = 0; i < pl->n_local[w]; i++) held |= pl->slot_expert[w * pl->max_local + i] == e;
                        xds_dtype want = held ? XDS_DTYPE_Q8_0_R16 : XDS_DTYPE_Q8_0;
                        if (own->layers[0].moe->experts[e].gate.type != want) {
                            fprintf(stderr, "expert worker %d: expert %d has type %s\n", w, e,
                                    xds_dtype_name(own->layers[0].moe->experts[e].gate.type));
                            _exit(6);
                        }
                    }
                wm = own;
            }
            if (g_swap_experts) {
                xds_model *sw = (xds_model *)wm; /* this process's private copy (fork) */
                for (int l = 0; l < sw->cfg.n_layer; l++) {
                    xds_moe_layer *ml = sw->layers[l].moe;
                    if (!ml || sw->cfg.moe.n_expert < 2) continue;
                    xds_ffn_w tmp = ml->experts[0];
                    ml->experts[0] = ml->experts[1];
                    ml->experts[1] = tmp;
                }
            }
            xds_deploy_expert_stats es;
            xds_status s = xds_deploy_expert_run(wm, c, pl, w, aranks, t->n_attn, max_tok, 1, &es);
            if (s != XDS_OK) fprintf(stderr, "expert worker %d: %s\n", w, xds_err_msg());
            xccl_comm_detach(c);
            _exit(s == XDS_OK ? 0 : 4);
        }
        pids[w] = p;
    }
    for (int a = 1; a < t->n_attn; a++) {
        pid_t p = fork();
        if (p == 0) _exit(child_fn(name, a, arg));
        pids[t->W + a - 1] = p;
    }
    if (xccl_comm_attach(comm, name, 0, 1) != XCCL_OK) {
        fprintf(stderr, "attach rank 0: %s\n", xccl_err_msg());
        return -1;
    }
    return 0;
}

typedef struct run_arg {
    const xds_model *m;
    const topo *t;
    const xds_deploy_placement *pl;
    int n_prompt, n_gen;
    const int32_t *ref;
    const float *lref;
    double tol;
    int expect_wrong; /* the workers compute wrong experts (g_swap_experts): logits must differ */
} run_arg;

/* One attention rank's run: greedy through the deployment, compared with the
 * colocated reference. Returns 0 when tokens are identical and logits within
 * tol. */
static int attn_run(const run_arg *ra, xccl_comm *comm, const char *label) {
    const xds_model *m = ra->m;
    int V = m->cfg.n_vocab, W = ra->t->W;
    int wr[MAX_W];
    for (int w = 0; w < W; w++) wr[w] = ra->t->n_attn + w;
    xds_deploy_attn *a = NULL;
    double t0 = now_s();
    xds_status s = xds_deploy_attn_create(m, comm, wr, ra->pl, N_SEQ * ra->n_prompt, ra->t->mb, &a);
    CHECK_MSG(s == XDS_OK, "%s: attn create: %s", label, xds_err_msg());
    if (!a) return 1;
    int32_t got[N_SEQ * 32];
    float *lgot = malloc(sizeof(float) * N_SEQ * V);
    memset(got, 0xff, sizeof got);
    int r = greedy(m, a, ra->n_prompt, ra->n_gen, got, lgot, NULL, NULL);
    CHECK_MSG(r == 0, "%s: disaggregated run failed at step %d: %s", label, r, xds_err_msg());
    int same = !memcmp(ra->ref, got, sizeof(int32_t) * N_SEQ * ra->n_gen);
    double worst = 0;
    for (int i = 0; i < N_SEQ * V; i++) {
        double d = fabs((double)ra->lref[i] - lgot[i]);
        if (d > worst) worst = d;
    }
    if (ra->expect_wrong) {
        printf("%s: workers with experts 0 and 1 swapped: greedy tokens %s, max |logit delta| %.3g\n", label,
               same ? "identical" : "different", worst);
        CHECK_MSG(r == 0 && worst > 0, "%s: workers computing the wrong experts went unseen (logits identical)",
                  label);
        xds_deploy_attn_stop(a);
        xds_deploy_attn_free(a);
        free(lgot);
        fflush(stdout);
        return !(r == 0 && worst > 0);
    }
    CHECK_MSG(same, "%s: greedy tokens differ from the colocated engine", label);
    xds_deploy_stats ds;
    xds_deploy_attn_stats(a, &ds);
    printf("%s: %d x %d greedy tokens %s; max |logit delta| %.3g; %.2f s; %llu passes (%llu split in 2); "
           "attention %.3f s, dispatch %.3f s, combine %.3f s over %llu MoE calls\n",
           label, N_SEQ, ra->n_gen, same ? "identical" : "DIFFERENT", worst, now_s() - t0,
           (unsigned long long)ds.steps, (unsigned long long)ds.split_steps, ds.attn_s, ds.dispatch_s, ds.combine_s,
           (unsigned long long)ds.moe_calls);
    CHECK_MSG(worst <= ra->tol, "%s: logits differ by %.3g (tolerance %.3g)", label, worst, ra->tol);
    if (ra->t->mb == 2) CHECK_MSG(ds.split_steps == ds.steps, "%s: every pass should run as 2 micro-batches", label);
    xds_deploy_attn_stop(a);
    xds_deploy_attn_free(a);
    free(lgot);
    fflush(stdout);
    return !(r == 0 && same && worst <= ra->tol);
}

/* Attention rank > 0 in its own process (a second decode DP group). */
static int attn_child(const char *name, int rank, void *arg) {
    xccl_comm *c = NULL;
    if (xccl_comm_attach(&c, name, rank, 1) != XCCL_OK) return 3;
    char label[96];
    snprintf(label, sizeof label, "%s (attention rank %d)", ((run_arg *)arg)->t->name, rank);
    int rc = attn_run(arg, c, label);
    xccl_comm_detach(c);
    return rc ? 5 : (test_failed_ ? 6 : 0);
}

/* Colocated vs each disaggregated topology: identical greedy tokens. */
/* tol: max |logit delta|. The workers run the same kernels on the same rows
 * as moe_experts and return unweighted outputs that the attention rank sums
 * exactly as moe_experts does (double, k order), so the logits are
 * bit-identical (0). */
/* m: the colocated reference; m_attn (NULL = m): the model the attention
 * ranks use. */
static void check_model_ex(const char *label, const xds_model *m, const xds_model *m_attn, int n_prompt, int n_gen,
                           double tol, int expect_wrong) {
    int V = m->cfg.n_vocab;
    int32_t ref[N_SEQ * 32];
    float *lref = malloc(sizeof(float) * N_SEQ * V);
    CHECK_MSG(greedy(m, NULL, n_prompt, n_gen, ref, lref, NULL, NULL) == 0, "%s: colocated run: %s", label, xds_err_msg());
    const topo topos[] = {
        {"1 attention + 2 workers, 1 micro-batch", 1, 2, 1, 0},
        {"1 attention + 4 workers, 2 micro-batches", 1, 4, 2, 0},
        {"2 attention ranks sharing 2 workers, 2 micro-batches", 2, 2, 2, 0},
        {"1 attention + 3 workers, every expert replicated", 1, 3, 2, 1},
    };
    for (size_t ti = 0; ti < sizeof topos / sizeof topos[0]; ti++) {
        const topo *t = &topos[ti];
        if (t->W > m->cfg.moe.n_expert && !t->replicated) continue;
        char name[96], lab[160];
        snprintf(lab, sizeof lab, "%s: %s", label, t->name);
        xds_deploy_placement pl = {0};
        CHECK_MSG(make_placement(m, t, &pl) == XDS_OK, "%s: placement: %s", lab, xds_err_msg());
        xccl_segment *seg = NULL;
        xccl_comm *comm = NULL;
        pid_t pids[MAX_W + MAX_A] = {0};
        if (expect_wrong && ti > 0) break; /* the control: one topology is enough */
        run_arg ra = {m_attn ? m_attn : m, t, &pl, n_prompt, n_gen, ref, lref, tol, expect_wrong};
        int ok = start(m, t, &pl, N_SEQ * n_prompt, name, sizeof name, &seg, &comm, pids, attn_child, &ra) == 0;
        CHECK_MSG(ok, "%s: start", lab);
        if (ok) attn_run(&ra, comm, lab);
        if (comm) xccl_comm_detach(comm);
        int bad = tp_reap(pids, t->W + t->n_attn - 1, 30);
        CHECK_MSG(bad == 0, "%s: %d worker / attention processes did not exit cleanly", lab, bad);
        if (seg) xccl_segment_destroy(seg);
        xds_deploy_placement_free(&pl);
        fflush(stdout);
    }
    free(lref);
}

static void check_model(const char *label, const xds_model *m, const xds_model *m_attn, int n_prompt, int n_gen,
                        double tol) {
    check_model_ex(label, m, m_attn, n_prompt, n_gen, tol, 0);
}

/* The control: workers that swap experts 0 and 1 (1 attention rank + 2
 * workers: worker 0 holds both). */
static void check_swapped(const char *label, const xds_model *m, int n_prompt, int n_gen) {
    g_swap_experts = 1;
    check_model_ex(label, m, NULL, n_prompt, n_gen, 0, 1);
    g_swap_experts = 0;
}

/* ---- failover (issue 13) ----------------------------------------------------
 * Each expert-worker slot runs under a small supervisor process that
 * restarts its worker whenever it dies, as the deployment's supervisor does;
 * the restarted process attaches the same rank (a new XCCL incarnation) and
 * says READY again. Faults are injected between and during passes; the
 * greedy tokens and the last step's logits must equal the colocated run bit
 * for bit (replicas compute identical rows, and the combine sums in k order
 * whichever worker answered). */

typedef struct fo_shared {
    _Atomic int pid[MAX_W];    /* the slot's current worker process */
    _Atomic int starts[MAX_W]; /* worker processes started in the slot */
    _Atomic int no_restart;
    _Atomic int apid, astarts; /* attention rank 1's process (check_attn_restart) */
    _Atomic int arc;           /* its last incarnation's result: 0 identical */
    _Atomic int apasses;       /* passes its first incarnation completed */
} fo_shared;
static fo_shared *fo;

static int slot_supervisor(const xds_model *m, int n_attn, const xds_deploy_placement *pl, int w, const char *name,
                           int max_tok) {
    int aranks[MAX_A];
    for (int a = 0; a < n_attn; a++) aranks[a] = a;
    for (;;) {
        fflush(NULL);
        atomic_fetch_add(&fo->starts[w], 1);
        pid_t p = fork();
        if (p == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlives its slot supervisor */
            if (getppid() == 1) _exit(7);
            xccl_comm *c = NULL;
            if (xccl_comm_attach(&c, name, n_attn + w, 2) != XCCL_OK) {
                fprintf(stderr, "expert worker %d: attach: %s\n", w, xccl_err_msg());
                _exit(3);
            }
            xds_status s = xds_deploy_expert_run(m, c, pl, w, aranks, n_attn, max_tok, 1, NULL);
            if (s != XDS_OK)
                fprintf(stderr, "expert worker %d (incarnation %u): %s\n", w, xccl_comm_incarnation(c), xds_err_msg());
            xccl_comm_detach(c);
            _exit(s == XDS_OK ? 0 : 4);
        }
        atomic_store(&fo->pid[w], p);
        int st = 0;
        while (waitpid(p, &st, 0) < 0 && errno == EINTR) {
        }
        if ((WIFEXITED(st) && WEXITSTATUS(st) == 0) || atomic_load(&fo->no_restart))
            return WIFEXITED(st) ? WEXITSTATUS(st) : 9;
        if (atomic_load(&fo->starts[w]) > 4) return 8; /* crash loop */
    }
}

typedef struct fo_case {
    const char *name;
    int replicated;      /* both workers hold every expert; else blocks (no replica) */
    int hang;            /* SIGSTOP without kill: detected as a hang, then SIGCONT */
    uint32_t hb_timeout; /* heartbeat timeout of the segment (ms) */
    pid_t helpers[4];    /* killer / continuer children to reap */
    int n_helpers;
} fo_case;

/* A child that sends sig to pid after ms. */
static pid_t delayed_signal(pid_t pid, int sig, int ms) {
    pid_t k = fork();
    if (k == 0) {
        usleep((useconds_t)ms * 1000);
        kill(pid, sig);
        _exit(0);
    }
    return k;
}

static void fo_fault(int step, void *arg) {
    fo_case *fc = arg;
    if (fc->hang) { /* worker 1 stops inside the pass; resumes after the hang was seen */
        if (step == 3) {
            pid_t v = atomic_load(&fo->pid[1]);
            if (v <= 0) return;
            kill(v, SIGSTOP);
            fc->helpers[fc->n_helpers++] = delayed_signal(v, SIGCONT, 4000);
        }
        return;
    }
    if (fc->replicated && step == 2 && atomic_load(&fo->pid[1]) > 0)
        kill(atomic_load(&fo->pid[1]), SIGKILL); /* between passes */
    if (step == (fc->replicated ? 5 : 3)) {
        /* in flight: stopped before the pass, so the pass's rows wait at it;
         * killed 50 ms into the pass */
        int w = fc->replicated ? 0 : 1;
        pid_t v = atomic_load(&fo->pid[w]);
        if (v <= 0) return;
        kill(v, SIGSTOP);
        fc->helpers[fc->n_helpers++] = delayed_signal(v, SIGKILL, 50);
    }
}

static void check_failover(const xds_model *m, fo_case *fc) {
    int V = m->cfg.n_vocab, n_prompt = 4, n_gen = 8, W = 2, max_tok = N_SEQ * n_prompt;
    int32_t ref[N_SEQ * 8], got[N_SEQ * 8];
    float *lref = malloc(sizeof(float) * N_SEQ * V), *lgot = malloc(sizeof(float) * N_SEQ * V);
    CHECK(greedy(m, NULL, n_prompt, n_gen, ref, lref, NULL, NULL) == 0);
    memset(fo, 0, sizeof *fo);
    topo t = {fc->name, 1, W, 2, 0};
    xds_deploy_placement pl = {0};
    if (fc->replicated) {
        int ids[256], N = m->cfg.moe.n_expert;
        for (int e = 0; e < N; e++) ids[e] = e;
        const int *lists[2] = {ids, ids};
        int nl[2] = {N, N};
        CHECK(xds_deploy_placement_lists(N, W, lists, nl, &pl) == XDS_OK);
    } else {
        CHECK(make_placement(m, &t, &pl) == XDS_OK);
    }
    char name[96];
    snprintf(name, sizeof name, "/xds-test-deploy-t13x-%d-%d", (int)getpid(), seg_counter++);
    xccl_config cfg;
    xds_deploy_xccl_config(1 + W, &cfg);
    cfg.heartbeat_timeout_ms = fc->hb_timeout;
    xccl_segment *seg = NULL;
    xccl_comm *comm = NULL;
    pid_t sup[MAX_W] = {0};
    xds_deploy_attn *a = NULL;
    CHECK_MSG(xccl_segment_create(&seg, name, &cfg) == XCCL_OK, "segment: %s", xccl_err_msg());
    fflush(NULL);
    for (int w = 0; w < W && seg; w++) { /* before this process attaches (no threads yet) */
        sup[w] = fork();
        if (sup[w] == 0) _exit(slot_supervisor(m, 1, &pl, w, name, max_tok));
    }
    if (seg) CHECK_MSG(xccl_comm_attach(&comm, name, 0, 1) == XCCL_OK, "attach: %s", xccl_err_msg());
    int wr[2] = {1, 2};
    if (comm) CHECK_MSG(xds_deploy_attn_create(m, comm, wr, &pl, max_tok, 2, &a) == XDS_OK, "%s", xds_err_msg());
    if (a) {
        xds_deploy_attn_set_rejoin_timeout(a, 60);
        double t0 = now_s();
        int r = greedy(m, a, n_prompt, n_gen, got, lgot, fo_fault, fc);
        double dt = now_s() - t0;
        CHECK_MSG(r == 0, "%s: decoding failed at step %d: %s", fc->name, r, xds_err_msg());
        int same = r == 0 && !memcmp(ref, got, sizeof(int32_t) * N_SEQ * n_gen);
        int lsame = r == 0 && !memcmp(lref, lgot, sizeof(float) * N_SEQ * V);
        CHECK_MSG(same, "%s: greedy tokens differ from the fault-free run", fc->name);
        CHECK_MSG(lsame, "%s: last-step logits differ from the fault-free run", fc->name);
        /* the restarted workers come back (READY with the same experts) */
        double t1 = now_s();
        int out;
        while ((out = xds_deploy_attn_poll(a)) > 0 && now_s() - t1 < 30) usleep(2000);
        CHECK_MSG(out == 0, "%s: %d restarted workers did not re-enter within 30 s", fc->name, out);
        xds_deploy_stats ds;
        xds_deploy_attn_stats(a, &ds);
        /* exactly one failover and one restart per fault: a healthy or
         * restarted worker is never taken for failed */
        int want_fail = fc->replicated && !fc->hang ? 2 : 1;
        CHECK_MSG(ds.failovers == (uint64_t)want_fail, "%s: %llu failovers, want %d", fc->name,
                  (unsigned long long)ds.failovers, want_fail);
        int want0 = fc->replicated && !fc->hang ? 2 : 1;
        CHECK_MSG(atomic_load(&fo->starts[0]) == want0 && atomic_load(&fo->starts[1]) == 2,
                  "%s: worker processes started %d, %d (want %d, 2)", fc->name, atomic_load(&fo->starts[0]),
                  atomic_load(&fo->starts[1]), want0);
        CHECK_MSG(ds.rows_resent > 0, "%s: no rows were re-sent: the fault did not hit a pass in flight", fc->name);
        CHECK_MSG(ds.rejoins >= (uint64_t)want_fail, "%s: %llu workers rejoined, want %d", fc->name,
                  (unsigned long long)ds.rejoins, want_fail);
        if (!fc->replicated) CHECK_MSG(ds.rejoin_wait_s > 0, "%s: the layer should have waited for the restart", fc->name);
        printf("%s: %d x %d greedy tokens %s, logits %s; %.2f s; %llu failovers, %llu rows re-sent, %llu rejoins, "
               "%.3f s waiting for restarts; worker processes started: %d, %d\n",
               fc->name, N_SEQ, n_gen, same ? "identical" : "DIFFERENT", lsame ? "bit-identical" : "DIFFERENT", dt,
               (unsigned long long)ds.failovers, (unsigned long long)ds.rows_resent, (unsigned long long)ds.rejoins,
               ds.rejoin_wait_s, atomic_load(&fo->starts[0]), atomic_load(&fo->starts[1]));
        atomic_store(&fo->no_restart, 1);
        xds_deploy_attn_stop(a);
        xds_deploy_attn_free(a);
    }
    atomic_store(&fo->no_restart, 1);
    if (comm) xccl_comm_detach(comm);
    int bad = tp_reap(sup, W, 30);
    CHECK_MSG(bad == 0, "%s: %d worker slots did not end cleanly", fc->name, bad);
    tp_reap(fc->helpers, fc->n_helpers, 10);
    if (seg) xccl_segment_destroy(seg);
    xds_deploy_placement_free(&pl);
    free(lref), free(lgot);
    fflush(stdout);
}

static void count_pass(int step, void *arg) {
    (void)step, (void)arg;
    atomic_fetch_add(&fo->apasses, 1);
}

/* Attention rank 1 under a restarting supervisor: its first incarnation
 * decodes over and over until it is killed; the restarted one runs once and
 * compares with the reference. */
static int attn_slot(const run_arg *ra, const char *name) {
    for (;;) {
        fflush(NULL);
        atomic_fetch_add(&fo->astarts, 1); /* before the fork: the child reads it */
        pid_t p = fork();
        if (p == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() == 1) _exit(7);
            xccl_comm *c = NULL;
            if (xccl_comm_attach(&c, name, 1, 1) != XCCL_OK) _exit(3);
            int rc = 0;
            if (atomic_load(&fo->astarts) == 1) {
                int wr[2] = {2, 3};
                xds_deploy_attn *a = NULL;
                if (xds_deploy_attn_create(ra->m, c, wr, ra->pl, N_SEQ * ra->n_prompt, 2, &a) != XDS_OK) _exit(5);
                int32_t got[N_SEQ * 32];
                for (;;) {
                    if (greedy(ra->m, a, ra->n_prompt, ra->n_gen, got, NULL, count_pass, NULL) != 0) _exit(6);
                }
            }
            rc = attn_run(ra, c, "attention rank 1, restarted");
            xccl_comm_detach(c);
            _exit(rc ? 5 : (test_failed_ ? 6 : 0));
        }
        atomic_store(&fo->apid, p);
        int st = 0;
        while (waitpid(p, &st, 0) < 0 && errno == EINTR) {
        }
        if (!(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) || atomic_load(&fo->astarts) > 2) {
            atomic_store(&fo->arc, WIFEXITED(st) ? WEXITSTATUS(st) : 9);
            return WIFEXITED(st) ? WEXITSTATUS(st) : 9;
        }
    }
}

/* Rank 0's step 2: kill rank 1 once it is decoding (bounded wait). */
static void kill_attn1(int step, void *arg) {
    (void)arg;
    if (step != 2) return;
    double t0 = now_s();
    while (atomic_load(&fo->apasses) < 2 && now_s() - t0 < 60) usleep(1000);
    pid_t p = atomic_load(&fo->apid);
    if (p > 0 && atomic_load(&fo->apasses) >= 2) kill(p, SIGKILL);
}

/* An attention rank (a decode DP group) killed mid-decode and restarted: the
 * expert workers serve rank 0 meanwhile, take the restart back (it attaches
 * as a new incarnation; they say READY again), and never exit; both ranks'
 * greedy tokens and logits equal the colocated run. */
static void check_attn_restart(const xds_model *m) {
    int V = m->cfg.n_vocab, n_prompt = 4, n_gen = 8, W = 2, max_tok = N_SEQ * n_prompt;
    int32_t ref[N_SEQ * 8], got[N_SEQ * 8];
    float *lref = malloc(sizeof(float) * N_SEQ * V), *lgot = malloc(sizeof(float) * N_SEQ * V);
    CHECK(greedy(m, NULL, n_prompt, n_gen, ref, lref, NULL, NULL) == 0);
    memset(fo, 0, sizeof *fo);
    topo t = {"attention restart", 2, W, 2, 0};
    xds_deploy_placement pl = {0};
    CHECK(make_placement(m, &t, &pl) == XDS_OK);
    run_arg ra = {m, &t, &pl, n_prompt, n_gen, ref, lref, 0, 0};
    char name[96];
    snprintf(name, sizeof name, "/xds-test-deploy-t13x-%d-%d", (int)getpid(), seg_counter++);
    xccl_config cfg;
    xds_deploy_xccl_config(2 + W, &cfg);
    cfg.heartbeat_timeout_ms = 20000;
    xccl_segment *seg = NULL;
    xccl_comm *comm = NULL;
    pid_t sup[MAX_W + 1] = {0};
    CHECK_MSG(xccl_segment_create(&seg, name, &cfg) == XCCL_OK, "segment: %s", xccl_err_msg());
    fflush(NULL);
    for (int w = 0; w < W && seg; w++) {
        sup[w] = fork();
        if (sup[w] == 0) _exit(slot_supervisor(m, 2, &pl, w, name, max_tok));
    }
    if (seg) {
        sup[W] = fork();
        if (sup[W] == 0) _exit(attn_slot(&ra, name));
    }
    if (seg) CHECK_MSG(xccl_comm_attach(&comm, name, 0, 1) == XCCL_OK, "attach: %s", xccl_err_msg());
    int wr[2] = {2, 3};
    xds_deploy_attn *a = NULL;
    if (comm) CHECK_MSG(xds_deploy_attn_create(m, comm, wr, &pl, max_tok, 2, &a) == XDS_OK, "%s", xds_err_msg());
    if (a) {
        int r = greedy(m, a, n_prompt, n_gen, got, lgot, kill_attn1, NULL);
        CHECK_MSG(r == 0, "attention rank 0: decoding failed at step %d: %s", r, xds_err_msg());
        CHECK_MSG(r == 0 && !memcmp(ref, got, sizeof ref) && !memcmp(lref, lgot, sizeof(float) * N_SEQ * V),
                  "attention rank 0: tokens or logits differ while rank 1 was killed and restarted");
        xds_deploy_stats ds;
        xds_deploy_attn_stats(a, &ds);
        CHECK_MSG(ds.failovers == 0, "attention rank 0: %llu expert failovers (no worker failed)",
                  (unsigned long long)ds.failovers);
        /* rank 1's restart finishes its own run before rank 0 stops */
        double t0 = now_s();
        while (atomic_load(&fo->astarts) < 2 && now_s() - t0 < 30) usleep(2000);
        pid_t ap = sup[W];
        int bad1 = tp_reap(&ap, 1, 60);
        sup[W] = 0;
        CHECK_MSG(bad1 == 0 && atomic_load(&fo->astarts) == 2 && atomic_load(&fo->arc) == 0,
                  "attention rank 1: %d incarnations, the restarted one returned %d", atomic_load(&fo->astarts),
                  atomic_load(&fo->arc));
        printf("attention rank 1 killed mid-decode and restarted: rank 0 and the restart identical to the colocated "
               "run; expert worker processes started: %d, %d\n", atomic_load(&fo->starts[0]),
               atomic_load(&fo->starts[1]));
        CHECK_MSG(atomic_load(&fo->starts[0]) == 1 && atomic_load(&fo->starts[1]) == 1,
                  "the expert workers should survive an attention rank's death (started %d, %d)",
                  atomic_load(&fo->starts[0]), atomic_load(&fo->starts[1]));
        atomic_store(&fo->no_restart, 1);
        xds_deploy_attn_stop(a);
        xds_deploy_attn_free(a);
    }
    atomic_store(&fo->no_restart, 1);
    if (comm) xccl_comm_detach(comm);
    int bad = tp_reap(sup, W, 30);
    CHECK_MSG(bad == 0, "attention restart: %d expert-worker slots did not end cleanly", bad);
    if (sup[W]) tp_reap(&sup[W], 1, 10);
    if (seg) xccl_segment_destroy(seg);
    xds_deploy_placement_free(&pl);
    free(lref), free(lgot);
    fflush(stdout);
}

static void check_failovers(const xds_model *m) {
    fo = mmap(NULL, sizeof *fo, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (fo == MAP_FAILED) return;
    fo_case cases[] = {
        {"kill -9 of replicated workers (between passes, then in flight)", 1, 0, 20000, {0}, 0},
        {"kill -9 of the only holder in flight: wait for its restart", 0, 0, 20000, {0}, 0},
        {"SIGSTOP of a replicated worker in flight: a hang", 1, 1, 1500, {0}, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check_failover(m, &cases[i]);
    check_attn_restart(m);
    munmap(fo, sizeof *fo);
}

static void check_mismatch(const xds_model *m) {
    char name[96];
    xccl_segment *seg = NULL;
    xccl_comm *comm = NULL;
    pid_t pids[MAX_W] = {0};
    topo t = {"mismatch", 1, 2, 1, 0};
    xds_deploy_placement pl = {0}, other = {0};
    int N = m->cfg.moe.n_expert;
    CHECK(make_placement(m, &t, &pl) == XDS_OK);
    int ids[256];
    for (int e = 0; e < N; e++) ids[e] = N - 1 - e;
    const int *lists[2] = {ids, ids + N / 2};
    int n_lists[2] = {N / 2, N - N / 2};
    CHECK(xds_deploy_placement_lists(N, 2, lists, n_lists, &other) == XDS_OK);
    int wr[2] = {1, 2};
    xds_deploy_attn *a = NULL;
    if (start(m, &t, &pl, 8, name, sizeof name, &seg, &comm, pids, NULL, NULL) == 0) {
        CHECK(xds_deploy_attn_create(m, comm, wr, &other, 8, 1, &a) == XDS_ERR_PEER);
        CHECK_MSG(strstr(xds_err_msg(), "different placements") != NULL, "mismatch message: %s", xds_err_msg());
        printf("mismatched placement: '%s'\n", xds_err_msg());
    }
    xds_deploy_attn_free(a);
    if (comm) xccl_comm_detach(comm);
    tp_reap(pids, 2, 15); /* they exit with an error once rank 0 leaves */
    if (seg) xccl_segment_destroy(seg);
    xds_deploy_placement_free(&pl);
    xds_deploy_placement_free(&other);
}

static void check_errors(const xds_model *dense, const xds_model *moe) {
    xds_deploy_placement pl = {0};
    /* contiguous blocks: every expert on exactly one worker slot */
    for (int N = 1; N <= 9; N++)
        for (int W = 1; W <= 5; W++) {
            CHECK(xds_deploy_placement_blocks(N, W, &pl) == XDS_OK);
            int seen[9] = {0}, ok = pl.n_workers == W && pl.max_rep == 1;
            for (int w = 0; w < W; w++)
                for (int k = 0; k < pl.n_local[w]; k++) {
                    int e = pl.slot_expert[w * pl.max_local + k];
                    ok &= e >= 0 && e < N && !seen[e]++ && pl.rep[e * pl.max_rep] == w * pl.max_local + k;
                }
            for (int e = 0; e < N; e++) ok &= seen[e] == 1;
            CHECK_MSG(ok, "placement N=%d W=%d", N, W);
            /* the text form the supervisor hands to workers round-trips */
            char *txt = xds_deploy_placement_format(&pl);
            xds_deploy_placement back = {0};
            CHECK(txt && xds_deploy_placement_parse(txt, N, &back) == XDS_OK && back.n_workers == W &&
                  !memcmp(back.n_local, pl.n_local, sizeof(int) * W));
            free(txt);
            xds_deploy_placement_free(&back);
            xds_deploy_placement_free(&pl);
        }
    CHECK(xds_deploy_placement_parse("0,1;2,3;1", 4, &pl) == XDS_OK && pl.n_rep[1] == 2 && pl.max_rep == 2);
    xds_deploy_placement_free(&pl);
    CHECK(xds_deploy_placement_parse("0,1;;2,3", 4, &pl) == XDS_OK && pl.n_local[1] == 0);
    xds_deploy_placement_free(&pl);
    CHECK(xds_deploy_placement_parse("0,1;2", 4, &pl) == XDS_ERR_INVALID && strstr(xds_err_msg(), "expert 3 is on no"));
    CHECK(xds_deploy_placement_parse("0,1;2,3,4", 4, &pl) == XDS_ERR_INVALID && strstr(xds_err_msg(), "out of range"));
    CHECK(xds_deploy_placement_parse("0,1,1;2,3", 4, &pl) == XDS_ERR_INVALID && strstr(xds_err_msg(), "twice"));
    CHECK(xds_deploy_placement_parse("0,x;2,3", 4, &pl) == XDS_ERR_INVALID);
    CHECK(xds_deploy_placement_parse("0,-1;2,3", 4, &pl) == XDS_ERR_INVALID);
    CHECK(xds_deploy_placement_blocks(4, 0, &pl) == XDS_ERR_INVALID);
    CHECK(xds_deploy_placement_blocks(0, 2, &pl) == XDS_ERR_INVALID);
    /* attention side: a dense model, a placement for another expert count */
    CHECK(xds_deploy_placement_blocks(moe->cfg.moe.n_expert + 1, 2, &pl) == XDS_OK);
    int wr[2] = {1, 2};
    xds_deploy_attn *a = NULL;
    CHECK(xds_deploy_attn_create(dense, NULL, wr, &pl, 8, 1, &a) == XDS_ERR_INVALID && strstr(xds_err_msg(), "no MoE"));
    CHECK(xds_deploy_attn_create(moe, NULL, wr, &pl, 8, 1, &a) == XDS_ERR_INVALID &&
          strstr(xds_err_msg(), "placement is for"));
    xds_deploy_placement_free(&pl);
}

/* A Q8_0 MoE (qwen3moe layout, every matrix repackable): the reference
 * repacks the whole model; the deployment's attention rank repacks only the
 * non-routed weights and each expert worker only its own experts. On AVX-512
 * the repacked and the file layout round differently, so a unit left
 * unrepacked (or repacked where the reference is not) shows as a logit
 * delta; the logits must be bit-identical. */
static void check_scoped_repack(void) {
    char dir[] = "/tmp/xds-test-deploy-XXXXXX", path[256];
    if (!mkdtemp(dir)) return;
    snprintf(path, sizeof path, "%s/qwen3-tiny-q8_0.gguf", dir);
    xds_status s = xds_model_bench_write("qwen3-tiny", path, 2, 8, XDS_DTYPE_Q8_0, 11);
    CHECK_MSG(s == XDS_OK, "bench model: %s", xds_err_msg());
    xds_model *m = NULL, *ma = NULL;
    xds_model_opts mo = {.no_repack = 1};
    if (s == XDS_OK) CHECK(xds_model_load(path, NULL, &m) == XDS_OK);
    if (s == XDS_OK) CHECK(xds_model_load(path, &mo, &ma) == XDS_OK);
    if (m && ma) {
        CHECK(xds_model_repack_units(ma, 1, NULL) == XDS_OK);
        if (ma->repacked) CHECK_MSG(xds_model_repack_units(ma, 1, NULL) != XDS_OK, "a second repack must be refused");
        const xds_moe_layer *full = m->layers[0].moe, *attn = ma->layers[0].moe;
        CHECK(full && attn);
        if (m->repacked) { /* AVX-512: the reference is repacked, the attention rank not its experts */
            CHECK(full && full->experts[0].gate.type == XDS_DTYPE_Q8_0_R16);
            CHECK(attn && attn->experts[0].gate.type == XDS_DTYPE_Q8_0);
            CHECK(ma->layers[0].wq.type == XDS_DTYPE_Q8_0_R16);
            CHECK(ma->repacked && ma->repacked_bytes > 0);
        } else {
            printf("note: weights not repacked here (CPU level or XDS_REPACK=0); the check runs unrepacked\n");
        }
        g_worker_path = path;
        check_model("qwen3-tiny q8_0, repacked per process", m, ma, 5, 8, 0);
        g_worker_path = NULL;
    }
    if (ma) xds_model_free(ma);
    if (m) xds_model_free(m);
    unlink(path);
    rmdir(dir);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    const char *fixtures[][2] = {
        {"qwen3_moe", MOE "qwen3moe_gqa_sparse"},
        {"mixtral", MOE "mixtral_top2"},
        {"deepseek_v3", MOE "ds_qlora_yarn_groups"},
    };
    xds_model *dense = NULL;
    CHECK(xds_model_load(XDS_SOURCE_DIR "/tests/data/oracle/tiny/h72_mha_untied", NULL, &dense) == XDS_OK);
    for (size_t i = 0; i < sizeof fixtures / sizeof fixtures[0]; i++) {
        xds_model *m = NULL;
        xds_status s = xds_model_load(fixtures[i][1], NULL, &m);
        CHECK_MSG(s == XDS_OK, "load %s: %s", fixtures[i][1], xds_err_msg());
        if (!m) continue;
        check_model(fixtures[i][0], m, NULL, 5, 8, 0);
        if (i == 0) {
            if (dense) check_errors(dense, m);
            check_failovers(m);
            check_mismatch(m);
        }
        xds_model_free(m);
    }
    if (dense) xds_model_free(dense);
    check_scoped_repack();

    const char *smol = test_model_path();
#if defined(__SANITIZE_ADDRESS__)
    smol = NULL; /* same code paths as the tiny models; the release build runs SmolLM2 */
    TEST_SKIP_BUILD("upcycled SmolLM2 under AddressSanitizer (too slow; the release build runs it)");
#endif
    if (!smol) {
#if !defined(__SANITIZE_ADDRESS__)
        TEST_SKIP("upcycled SmolLM2: XDS_TEST_MODEL is not set");
#endif
    } else {
        char dir[] = "/tmp/xds-test-deploy-XXXXXX", path[256];
        if (mkdtemp(dir)) {
            /* exact upcycle (identical experts), then perturbed (0.5: scales 0.5, 0.83, 1.17, 1.5) */
            for (int pi = 0; pi < 2; pi++) {
                snprintf(path, sizeof path, "%s/smol-moe4-%d.gguf", dir, pi);
                xds_status s = xds_model_upcycle_perturbed(smol, path, 4, 2, 5, pi ? 0.5f : 0.0f);
                CHECK_MSG(s == XDS_OK, "upcycle: %s", xds_err_msg());
                xds_model *m = NULL;
                if (s == XDS_OK) {
                    s = xds_model_load(path, NULL, &m);
                    CHECK_MSG(s == XDS_OK, "load upcycled: %s", xds_err_msg());
                }
                if (m) {
                    const char *lab = pi ? "smollm2-upcycled-e4k2-perturbed" : "smollm2-upcycled-e4k2";
                    check_model(lab, m, NULL, 6, 5, 0);
                    if (pi) check_swapped(lab, m, 6, 5);
                    xds_model_free(m);
                }
                unlink(path);
            }
            rmdir(dir);
        }
    }
    TEST_MAIN_END();
}
