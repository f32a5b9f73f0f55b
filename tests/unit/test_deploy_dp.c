/*
 * test_deploy_dp.c — decode DP groups behind front-ends (engine/deploy_dp.h)
 * on their own, without the HTTP server or the supervisor.
 *
 * Load table (one process, two mappings of one POSIX shm name): bad group
 * counts and names are refused with a clear error, a second create of the
 * same name fails, an object that is not a table is refused on open, what
 * one mapping writes the other reads; xds_dp_account's blocks (rounded up),
 * in-flight and served counts. xds_dp_pick: only live groups; groups at
 * their batch limit only when all are; otherwise the lowest KV load counting
 * the request's own blocks, relative to each pool (a larger pool with more
 * blocks in use can be the less loaded); a group that published no pool is
 * last; equal groups share the work round-robin.
 *
 * Messages and the serving loop (real processes on a real XCCL segment): the
 * test process is front-end rank 0; a forked child runs a DP group (its own
 * engine on the tiny llama fixture, 1 thread) at rank 1 with
 * xds_dp_group_serve; a second forked front-end at rank 2 sends its own
 * requests. Greedy requests give exactly the tokens of the colocated model
 * loop, each event stream counts n_gen 1, 2, ... and ends with exactly one
 * final event; each front-end receives only its own requests' events; the
 * group publishes its pool, batch limit and liveness, and its in-flight
 * count and KV load return to 0 (served counts every request); CANCEL ends a
 * running request with ABORT; a request the engine refuses (a token outside
 * the vocabulary, prompt + max_tokens beyond the context) gets one ERROR
 * event and the group goes on; then rank 2's requests are served too; STOP from a front-end other than the first is
 * ignored, a second front-end leaving is no error, STOP from the first ends
 * the loop with XDS_OK and liveness 0. Malformed events are refused by
 * xds_dp_event_recv (short, wrong command). In other runs the group ends
 * with a clear error for a malformed request and when the first front-end
 * is gone. Every child is reaped with a deadline; names are unique.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <xccl.h>

#include "deploy/expert.h"
#include "deploy/dp.h"
#include "engine/engine.h"
#include "model/model.h"
#include "proc_util.h"
#include "sampler/sampler.h"
#include "test.h"

#define TINY XDS_SOURCE_DIR "/tests/data/oracle/tiny/h64_gqa4_hd24_llama3"
#define BLOCK 16
#define MAX_BATCH 4
#define N_GEN 6

/* ---- load table ------------------------------------------------------------ */

static void set_group(xds_dp_table *t, int g, long long alive, long long kv, long long mb, long long in_flight,
                      long long load) {
    atomic_store(&t->g[g].alive, alive);
    atomic_store(&t->g[g].kv_blocks, kv);
    atomic_store(&t->g[g].max_batch, mb);
    atomic_store(&t->g[g].in_flight, in_flight);
    atomic_store(&t->g[g].load_blocks, load);
}

static void test_table(void) {
    char name[96], other[96];
    snprintf(name, sizeof name, "/xds-test-dp-%d-load", (int)getpid());
    snprintf(other, sizeof other, "/xds-test-dp-%d-other", (int)getpid());
    xds_dp_table *t = NULL, *t2 = NULL;
    CHECK(xds_dp_table_create(name, 0, &t) == XDS_ERR_INVALID && strstr(xds_err_msg(), "0 groups"));
    CHECK(xds_dp_table_create(name, XDS_DP_MAX_GROUPS + 1, &t) == XDS_ERR_INVALID && t == NULL);
    CHECK(xds_dp_table_open(name, &t) == XDS_ERR_IO && strstr(xds_err_msg(), name)); /* not created yet */
    CHECK(xds_dp_table_create(name, 3, &t) == XDS_OK && t);
    if (!t) return;
    CHECK(xds_dp_table_create(name, 3, &t2) == XDS_ERR_IO && t2 == NULL); /* exists */
    CHECK(xds_dp_table_open(name, &t2) == XDS_OK && t2 && t2 != t);
    if (!t2) {
        xds_dp_table_close(t);
        shm_unlink(name);
        return;
    }
    CHECK(t2->n_groups == 3);
    /* a shm object of the right size that is not a table */
    int fd = shm_open(other, O_RDWR | O_CREAT | O_EXCL, 0600);
    CHECK(fd >= 0 && ftruncate(fd, sizeof(xds_dp_table)) == 0);
    if (fd >= 0) close(fd);
    xds_dp_table *t3 = NULL;
    CHECK(xds_dp_table_open(other, &t3) == XDS_ERR_FORMAT && strstr(xds_err_msg(), "not a load table") && !t3);
    shm_unlink(other);

    /* accounting, seen through the other mapping: blocks rounded up */
    xds_dp_account(t, 1, 50, BLOCK, +1); /* 4 blocks */
    xds_dp_account(t, 1, 16, BLOCK, +1); /* 1 block */
    CHECK(atomic_load(&t2->g[1].in_flight) == 2 && atomic_load(&t2->g[1].load_blocks) == 5);
    xds_dp_account(t, 1, 50, BLOCK, -1);
    CHECK(atomic_load(&t2->g[1].in_flight) == 1 && atomic_load(&t2->g[1].load_blocks) == 1 &&
          atomic_load(&t2->g[1].served) == 1);
    CHECK(atomic_load(&t2->g[0].in_flight) == 0 && atomic_load(&t2->g[2].load_blocks) == 0);

    /* pick: nothing alive */
    for (int g = 0; g < 3; g++) set_group(t, g, 0, 100, MAX_BATCH, 0, 0);
    CHECK(xds_dp_pick(t2, 10, BLOCK) == -1);
    /* equal groups: round-robin, each exactly once per round */
    for (int g = 0; g < 3; g++) set_group(t, g, 1, 100, MAX_BATCH, 0, 0);
    int hits[3] = {0};
    for (int i = 0; i < 30; i++) {
        int g = xds_dp_pick(t2, 10, BLOCK);
        CHECK(g >= 0 && g < 3);
        if (g >= 0 && g < 3) hits[g]++;
    }
    CHECK_MSG(hits[0] == 10 && hits[1] == 10 && hits[2] == 10, "round-robin: %d %d %d", hits[0], hits[1], hits[2]);
    /* the lowest load wins from every rotating start */
    set_group(t, 0, 1, 100, MAX_BATCH, 1, 30);
    set_group(t, 1, 1, 100, MAX_BATCH, 1, 10);
    set_group(t, 2, 1, 100, MAX_BATCH, 1, 20);
    int all = 1;
    for (int i = 0; i < 6; i++) all &= xds_dp_pick(t2, 10, BLOCK) == 1;
    CHECK_MSG(all, "lowest KV load not picked");
    /* load is relative to the pool: 100 of 1000 blocks (0.1) beats 20 of 100 (0.2) */
    set_group(t, 0, 1, 1000, MAX_BATCH, 1, 100);
    set_group(t, 1, 1, 100, MAX_BATCH, 1, 20);
    set_group(t, 2, 0, 100, MAX_BATCH, 0, 0); /* dead, though empty */
    all = 1;
    for (int i = 0; i < 6; i++) all &= xds_dp_pick(t2, 1, BLOCK) == 0;
    CHECK_MSG(all, "load must be relative to each pool; dead groups skipped");
    /* the request's own blocks count: 0 of 10 + 5 needed (0.5) loses to 40 of 100 + 5 (0.45) */
    set_group(t, 0, 1, 10, MAX_BATCH, 0, 0);
    set_group(t, 1, 1, 100, MAX_BATCH, 1, 40);
    all = 1;
    for (int i = 0; i < 6; i++) all &= xds_dp_pick(t2, 5 * BLOCK, BLOCK) == 1;
    CHECK_MSG(all, "the request's own blocks must count against each pool");
    /* a group at its batch limit is skipped while another is not, even if emptier */
    set_group(t, 0, 1, 100, 2, 2, 1);
    set_group(t, 1, 1, 100, 2, 1, 50);
    set_group(t, 2, 1, 100, 2, 2, 0);
    all = 1;
    for (int i = 0; i < 6; i++) all &= xds_dp_pick(t2, 10, BLOCK) == 1;
    CHECK_MSG(all, "a group at its batch limit was picked while another had room");
    /* all at their limit: the lowest load among them */
    set_group(t, 1, 1, 100, 2, 2, 50);
    all = 1;
    for (int i = 0; i < 6; i++) all &= xds_dp_pick(t2, 10, BLOCK) == 2;
    CHECK_MSG(all, "all groups full: the lowest load must be picked");
    /* max_batch 0: no batch limit published */
    set_group(t, 0, 1, 100, 0, 50, 0);
    set_group(t, 1, 1, 100, 2, 2, 0);
    set_group(t, 2, 1, 100, 2, 2, 0);
    all = 1;
    for (int i = 0; i < 6; i++) all &= xds_dp_pick(t2, 10, BLOCK) == 0;
    CHECK_MSG(all, "a group without a batch limit is never full");
    /* no pool published yet: last resort */
    set_group(t, 0, 1, 0, MAX_BATCH, 0, 0);
    set_group(t, 1, 1, 100, MAX_BATCH, 3, 90);
    set_group(t, 2, 0, 100, MAX_BATCH, 0, 0);
    all = 1;
    for (int i = 0; i < 6; i++) all &= xds_dp_pick(t2, 10, BLOCK) == 1;
    CHECK_MSG(all, "a group without a KV pool must come last");
    set_group(t, 1, 0, 100, MAX_BATCH, 0, 0);
    CHECK(xds_dp_pick(t2, 10, BLOCK) == 0); /* but it is picked when it is the only live one */
    xds_dp_table_close(t2);
    xds_dp_table_close(t);
    CHECK(shm_unlink(name) == 0);
}

/* ---- group serving loop ------------------------------------------------------ */

static xds_model *g_model;
static volatile atomic_int *g_slow; /* shared page: the group's forward sleeps per step while set */

static xds_status slow_forward(void *user, xds_model_ctx *ctx, const xds_batch *b, const int32_t *rows, int n_rows,
                               float *logits) {
    if (atomic_load(g_slow)) usleep(2000);
    return xds_model_forward(ctx, b, rows, n_rows, logits);
}

static xds_gen_params greedy_params(int max_tokens) {
    xds_gen_params p = {.max_tokens = max_tokens, .ignore_eos = 1};
    p.sampling = xds_sampler_params_default();
    p.sampling.temp = 0;
    return p;
}

static void make_prompt(int r, int n, int32_t *out) {
    for (int i = 0; i < n; i++) out[i] = (int32_t)((i * 29 + r * 41 + 7) % g_model->cfg.n_vocab);
}

/* Colocated greedy loop: prompt in one pass, then n_gen - 1 decode steps. */
static void direct_greedy(const int32_t *prompt, int n, int n_gen, int32_t *out) {
    const xds_model *m = g_model;
    xds_kv_cache *kv = NULL;
    xds_model_ctx *ctx = NULL;
    CHECK(xds_model_kv_cache_create(m, n + n_gen + BLOCK, BLOCK, 1, &kv) == XDS_OK);
    CHECK(kv && xds_model_ctx_create(m, kv, 1, n, &ctx) == XDS_OK);
    if (!ctx || xds_kv_seq_reserve(kv, 0, n + n_gen) != XDS_OK) {
        CHECK(0);
        goto out;
    }
    float *lg = malloc(sizeof(float) * m->cfg.n_vocab);
    int32_t pos[64], seq[64] = {0};
    for (int i = 0; i < n; i++) pos[i] = i;
    xds_batch b = {n, prompt, pos, seq};
    int32_t row = n - 1;
    CHECK(xds_model_forward(ctx, &b, &row, 1, lg) == XDS_OK);
    out[0] = xds_argmax(lg, m->cfg.n_vocab);
    for (int g = 1; g < n_gen; g++) {
        int32_t t = out[g - 1], p = n + g - 1, r0 = 0;
        xds_batch d = {1, &t, &p, seq};
        CHECK(xds_model_forward(ctx, &d, &r0, 1, lg) == XDS_OK);
        out[g] = xds_argmax(lg, m->cfg.n_vocab);
    }
    free(lg);
out:
    if (ctx) xds_model_ctx_free(ctx);
    xds_kv_cache_free(kv);
}

/* One request as seen by a front-end. */
typedef struct fe_req {
    uint64_t id;
    int32_t toks[256];
    int n_tok, n_events, n_final, bad, n_prompt;
    xds_finish finish;
} fe_req;

/* Receive events from the group until every request in rq[0..n) has its
 * final event; 0 on success, -1 on a receive error or an event for an id not
 * in rq (counted in *foreign). */
static int recv_events(xccl_comm *comm, int grp, fe_req *rq, int n, int *foreign) {
    static char buf[XDS_DP_EVENT_MAX];
    for (;;) {
        int done = 1;
        for (int i = 0; i < n; i++) done &= rq[i].n_final > 0;
        if (done) return 0;
        xds_gen_event ev;
        int freed = 0;
        if (xds_dp_event_recv(comm, grp, buf, sizeof buf, &ev, &freed) != XDS_OK) return -1;
        fe_req *r = NULL;
        for (int i = 0; i < n; i++)
            if (rq[i].id == ev.req_id) r = &rq[i];
        if (!r || freed) {
            (*foreign)++;
            return -1;
        }
        if (r->n_final) r->bad++; /* nothing after the final event */
        r->n_events++;
        if (ev.token >= 0 && r->n_tok < 256) r->toks[r->n_tok++] = ev.token;
        if (ev.n_gen != r->n_tok) r->bad++;
        r->n_prompt = ev.n_prompt;
        if (ev.finish != XDS_FINISH_NONE) r->n_final++, r->finish = ev.finish;
    }
}

typedef struct grp_expect {
    xds_status status;   /* what xds_dp_group_serve must return */
    const char *msg;     /* a part of its error message (NULL: none checked) */
    int requests;        /* stats.requests, -1: not checked */
} grp_expect;

/* The DP group process: engine, table, rank 1, serve fronts {0, 2} (n_fronts). */
static int group_main(const char *seg, const char *table, int n_fronts, grp_expect ex) {
    xccl_comm *c = NULL;
    if (xccl_comm_attach(&c, seg, 1, 5) != XCCL_OK) return 3;
    /* the first front-end attaches after forking us: before that the loop would call it gone */
    for (double end = tp_now_s() + 30; xccl_peer_check(c, 0) != XCCL_OK;) {
        if (tp_now_s() > end) return 4;
        usleep(2000);
    }
    xds_engine_opts o = xds_engine_opts_default();
    o.n_threads = 1, o.max_batch = MAX_BATCH, o.kv_block_size = BLOCK, o.max_ctx = 256, o.max_step_tokens = 32;
    o.kv_blocks = 64, o.forward = slow_forward;
    xds_engine *e = NULL;
    if (xds_engine_create(g_model, NULL, &o, &e) != XDS_OK) return 5;
    /* forward_user unused: the engine's own context is passed in */
    xds_dp_table *t = NULL;
    if (xds_dp_table_open(table, &t) != XDS_OK) return 6;
    int fronts[2] = {0, 2};
    xds_dp_serve_stats st = {0};
    xds_status s = xds_dp_group_serve(e, c, fronts, n_fronts, t, 1, BLOCK, MAX_BATCH, 1, &st);
    int rc = 0;
    if (s != ex.status) {
        fprintf(stderr, "group: serve returned %d (want %d): %s\n", (int)s, (int)ex.status, xds_err_msg());
        rc = 7;
    } else if (ex.msg && !strstr(xds_err_msg(), ex.msg)) {
        fprintf(stderr, "group: error '%s' lacks '%s'\n", xds_err_msg(), ex.msg);
        rc = 8;
    } else if (ex.requests >= 0 && st.requests != (uint64_t)ex.requests) {
        fprintf(stderr, "group: took %llu requests, want %d\n", (unsigned long long)st.requests, ex.requests);
        rc = 9;
    } else if (atomic_load(&t->g[1].alive) != 0) {
        rc = 10;
    }
    if (s != XDS_OK && !rc) printf("group loop ended as expected: '%s'\n", xds_err_msg());
    fflush(stdout);
    xds_dp_table_close(t);
    xccl_comm_detach(c);
    return rc;
}

/* The second front-end (rank 2): two requests of its own, a STOP the group
 * must ignore, a malformed and a short message to rank 0, then it leaves. */
static int front2_main(const char *seg) {
    xccl_comm *c = NULL;
    if (xccl_comm_attach(&c, seg, 2, 7) != XCCL_OK) return 3;
    xccl_comm_set_timeout(c, 30000);
    for (double end = tp_now_s() + 30; xccl_peer_check(c, 1) != XCCL_OK || xccl_peer_check(c, 0) != XCCL_OK;) {
        if (tp_now_s() > end) return 4;
        usleep(2000);
    }
    char go;
    size_t len;
    if (xccl_recv(&len, &go, 1, c, 0) != XCCL_OK) return 11; /* rank 0's own requests are done */
    fe_req rq[2] = {{.id = 1001}, {.id = 1002}};
    int32_t prompt[2][24], want[2][N_GEN];
    xds_gen_params p = greedy_params(N_GEN);
    for (int i = 0; i < 2; i++) {
        make_prompt(10 + i, 9 + 7 * i, prompt[i]);
        direct_greedy(prompt[i], 9 + 7 * i, N_GEN, want[i]);
        if (xds_dp_req_send(c, 1, rq[i].id, prompt[i], 9 + 7 * i, &p) != XDS_OK) return 5;
    }
    int foreign = 0, rc = 0;
    if (recv_events(c, 1, rq, 2, &foreign) != 0) rc = 6;
    for (int i = 0; i < 2 && !rc; i++)
        if (rq[i].n_final != 1 || rq[i].bad || rq[i].finish != XDS_FINISH_LENGTH ||
            memcmp(rq[i].toks, want[i], sizeof want[i]) || rq[i].n_prompt != 9 + 7 * i)
            rc = 7;
    if (!rc && xds_dp_stop_send(c, 1) != XDS_OK) rc = 8; /* not the first front-end: ignored */
    /* to rank 0: a message with the right magic and a wrong command, then a short one */
    struct {
        uint32_t magic, cmd;
        uint64_t id;
        int32_t v[6];
        uint32_t text_len;
    } junk = {0x58445352u, 99, 5, {0}, 0};
    if (!rc && (xccl_send(c, 0, &junk, sizeof junk) != XCCL_OK || xccl_send(c, 0, &junk, 4) != XCCL_OK)) rc = 9;
    char ack;
    if (!rc && xccl_recv(&len, &ack, 1, c, 0) != XCCL_OK) rc = 10; /* rank 0 read them */
    if (rc) fprintf(stderr, "front-end 2: failed at step %d (foreign events %d)\n", rc, foreign);
    xccl_comm_detach(c); /* leaves: the group must go on serving rank 0 */
    return rc;
}

static int start(const char *tag, int n_ranks, char *seg, size_t cap, char *table, size_t tcap,
                 xccl_segment **sg, xds_dp_table **t) {
    static int counter;
    snprintf(seg, cap, "/xds-test-dp-%d-%s-%d", (int)getpid(), tag, counter);
    snprintf(table, tcap, "/xds-test-dp-%d-%s-%d-load", (int)getpid(), tag, counter++);
    xccl_config cfg;
    xds_deploy_xccl_config(n_ranks, &cfg);
    cfg.heartbeat_timeout_ms = 20000;
    if (xccl_segment_create(sg, seg, &cfg) != XCCL_OK) {
        fprintf(stderr, "segment: %s\n", xccl_err_msg());
        return -1;
    }
    if (xds_dp_table_create(table, 2, t) != XDS_OK) {
        xccl_segment_destroy(*sg);
        return -1;
    }
    fflush(NULL); /* fork before attaching: attaching starts a thread */
    return 0;
}

static void test_serve(void) {
    char seg[96], table[112];
    xccl_segment *sg = NULL;
    xds_dp_table *t = NULL;
    if (start("serve", 3, seg, sizeof seg, table, sizeof table, &sg, &t) != 0) {
        CHECK_MSG(0, "start: %s", xds_err_msg());
        return;
    }
    /* requests the group takes: 3 greedy + 1 cancelled + 2 refused + 2 from rank 2 + 1 after rank 2 left */
    grp_expect ex = {XDS_OK, NULL, 9};
    pid_t pids[2] = {0};
    pids[0] = fork();
    if (pids[0] == 0) _exit(group_main(seg, table, 2, ex));
    pids[1] = fork();
    if (pids[1] == 0) _exit(front2_main(seg));
    xccl_comm *c = NULL;
    CHECK(xccl_comm_attach(&c, seg, 0, 4) == XCCL_OK);
    if (!c) goto out;
    xccl_comm_set_timeout(c, 30000);
    /* the group publishes its pool, batch limit and liveness */
    for (double end = tp_now_s() + 30; !atomic_load(&t->g[1].alive) && tp_now_s() < end;) usleep(2000);
    CHECK(atomic_load(&t->g[1].alive) == 1 && atomic_load(&t->g[1].kv_blocks) == 64 &&
          atomic_load(&t->g[1].max_batch) == MAX_BATCH);

    /* three greedy requests at once */
    fe_req rq[3] = {{.id = 1}, {.id = 2}, {.id = 3}};
    const int plen[3] = {5, 21, 40};
    int32_t prompt[3][64], want[3][N_GEN];
    xds_gen_params p = greedy_params(N_GEN);
    for (int i = 0; i < 3; i++) {
        make_prompt(i, plen[i], prompt[i]);
        direct_greedy(prompt[i], plen[i], N_GEN, want[i]);
        CHECK(xds_dp_req_send(c, 1, rq[i].id, prompt[i], plen[i], &p) == XDS_OK);
    }
    int foreign = 0;
    CHECK_MSG(recv_events(c, 1, rq, 3, &foreign) == 0, "events: %s (foreign %d)", xds_err_msg(), foreign);
    for (int i = 0; i < 3; i++) {
        CHECK_MSG(rq[i].n_final == 1 && rq[i].bad == 0 && rq[i].finish == XDS_FINISH_LENGTH &&
                      rq[i].n_tok == N_GEN && rq[i].n_events == N_GEN && rq[i].n_prompt == plen[i],
                  "request %d: %d final, %d bad, finish %d, %d tokens, %d events, prompt %d", i, rq[i].n_final,
                  rq[i].bad, (int)rq[i].finish, rq[i].n_tok, rq[i].n_events, rq[i].n_prompt);
        CHECK_MSG(!memcmp(rq[i].toks, want[i], sizeof want[i]), "request %d: tokens differ from the colocated loop", i);
    }
    /* the load figures come back down (the final event may arrive before the group's accounting) */
    for (double end = tp_now_s() + 30; atomic_load(&t->g[1].served) < 3 && tp_now_s() < end;) usleep(1000);
    CHECK_MSG(atomic_load(&t->g[1].served) == 3 && atomic_load(&t->g[1].in_flight) == 0 &&
                  atomic_load(&t->g[1].load_blocks) == 0,
              "served %lld, in flight %lld, load %lld", (long long)atomic_load(&t->g[1].served),
              (long long)atomic_load(&t->g[1].in_flight), (long long)atomic_load(&t->g[1].load_blocks));

    /* CANCEL a running request (the group's steps are slowed meanwhile: 2 ms each) */
    atomic_store(g_slow, 1);
    fe_req cr = {.id = 4};
    xds_gen_params lp = greedy_params(200);
    CHECK(xds_dp_req_send(c, 1, cr.id, prompt[0], plen[0], &lp) == XDS_OK);
    CHECK(xds_dp_cancel_send(c, 1, 77) == XDS_OK); /* an id it does not have: ignored */
    {
        static char buf[XDS_DP_EVENT_MAX];
        xds_gen_event ev;
        int freed = 0;
        CHECK(xds_dp_event_recv(c, 1, buf, sizeof buf, &ev, &freed) == XDS_OK && ev.req_id == cr.id && !freed &&
              ev.n_gen == 1 && ev.finish == XDS_FINISH_NONE); /* it runs */
        cr.n_tok = 1, cr.toks[0] = ev.token, cr.n_events = 1;
    }
    CHECK(xds_dp_cancel_send(c, 1, cr.id) == XDS_OK);
    CHECK(recv_events(c, 1, &cr, 1, &foreign) == 0);
    atomic_store(g_slow, 0);
    CHECK_MSG(cr.n_final == 1 && cr.finish == XDS_FINISH_ABORT && cr.n_tok < 200 && cr.bad == 0,
              "cancel: finish %d after %d tokens (%d bad)", (int)cr.finish, cr.n_tok, cr.bad);
    printf("cancelled request: ABORT after %d of 200 tokens\n", cr.n_tok);

    /* requests the engine refuses: one ERROR event each, the group goes on */
    fe_req er[2] = {{.id = 5}, {.id = 6}};
    int32_t badtok[3] = {1, g_model->cfg.n_vocab + 5, 2};
    CHECK(xds_dp_req_send(c, 1, er[0].id, badtok, 3, &p) == XDS_OK);
    xds_gen_params toolong = greedy_params(250);
    CHECK(xds_dp_req_send(c, 1, er[1].id, prompt[2], plen[2], &toolong) == XDS_OK); /* 40 + 250 > 256 */
    CHECK(recv_events(c, 1, er, 2, &foreign) == 0);
    for (int i = 0; i < 2; i++)
        CHECK_MSG(er[i].n_final == 1 && er[i].n_events == 1 && er[i].finish == XDS_FINISH_ERROR && er[i].n_tok == 0,
                  "refused request %d: %d events, finish %d", i, er[i].n_events, (int)er[i].finish);
    CHECK(er[0].n_prompt == 3 && er[1].n_prompt == plen[2]);

    /* now rank 2: its requests, its STOP (ignored), then its malformed and
     * short messages, which the event reader refuses */
    CHECK(xccl_send(c, 2, "g", 1) == XCCL_OK);
    {
        static char buf[XDS_DP_EVENT_MAX];
        xds_gen_event ev;
        int freed = 0;
        CHECK(xds_dp_event_recv(c, 2, buf, sizeof buf, &ev, &freed) == XDS_ERR_PEER &&
              strstr(xds_err_msg(), "malformed event from rank 2"));
        CHECK(xds_dp_event_recv(c, 2, buf, sizeof buf, &ev, &freed) == XDS_ERR_PEER &&
              strstr(xds_err_msg(), "short event"));
        CHECK(xccl_send(c, 2, "k", 1) == XCCL_OK);
    }
    /* rank 2 served its own requests (its exit status says so) and left; rank 0 is still served */
    int bad2 = tp_reap(&pids[1], 1, 30);
    CHECK_MSG(bad2 == 0, "front-end 2 failed");
    fe_req last = {.id = 8};
    CHECK(xds_dp_req_send(c, 1, last.id, prompt[1], plen[1], &p) == XDS_OK);
    CHECK(recv_events(c, 1, &last, 1, &foreign) == 0);
    CHECK(last.n_final == 1 && last.finish == XDS_FINISH_LENGTH && !memcmp(last.toks, want[1], sizeof want[1]));
    CHECK_MSG(foreign == 0, "%d events for requests this front-end did not send", foreign);
    for (double end = tp_now_s() + 30; atomic_load(&t->g[1].served) < 9 && tp_now_s() < end;) usleep(1000);
    CHECK_MSG(atomic_load(&t->g[1].served) == 9 && atomic_load(&t->g[1].in_flight) == 0 &&
                  atomic_load(&t->g[1].load_blocks) == 0,
              "served %lld, in flight %lld, load %lld", (long long)atomic_load(&t->g[1].served),
              (long long)atomic_load(&t->g[1].in_flight), (long long)atomic_load(&t->g[1].load_blocks));
    CHECK(xds_dp_stop_send(c, 1) == XDS_OK); /* the first front-end: the loop ends with XDS_OK */
out:
    {
        int bad = tp_reap(pids, 2, 30);
        CHECK_MSG(bad == 0, "%d children failed", bad);
    }
    CHECK(atomic_load(&t->g[1].alive) == 0);
    if (c) xccl_comm_detach(c);
    xds_dp_table_close(t);
    shm_unlink(table);
    xccl_segment_destroy(sg);
}

/* The group's loop ends: with a clear error on a malformed request (how =
 * 0); cleanly when its only front-end is gone and no supervisor is left
 * (how = 1). */
static void test_serve_error(int how) {
    char seg[96], table[112];
    xccl_segment *sg = NULL;
    xds_dp_table *t = NULL;
    if (start(how ? "gone" : "bad", 2, seg, sizeof seg, table, sizeof table, &sg, &t) != 0) {
        CHECK_MSG(0, "start: %s", xds_err_msg());
        return;
    }
    /* the first front-end gone, with no supervisor in the table: the group
     * stops cleanly (it outlives a dead supervisor while a front-end serves) */
    grp_expect ex = how ? (grp_expect){XDS_OK, NULL, 0} : (grp_expect){XDS_ERR_PEER, "bad request from rank 0", 1};
    pid_t pid = fork();
    if (pid == 0) _exit(group_main(seg, table, 1, ex));
    xccl_comm *c = NULL;
    CHECK(xccl_comm_attach(&c, seg, 0, 4) == XCCL_OK);
    for (double end = tp_now_s() + 30; !atomic_load(&t->g[1].alive) && tp_now_s() < end;) usleep(2000);
    CHECK(atomic_load(&t->g[1].alive) == 1);
    if (c && !how) {
        /* one good request, then one with an empty prompt */
        int32_t prompt[8];
        make_prompt(0, 8, prompt);
        xds_gen_params p = greedy_params(N_GEN);
        fe_req r = {.id = 1};
        int foreign = 0;
        CHECK(xds_dp_req_send(c, 1, r.id, prompt, 8, &p) == XDS_OK);
        CHECK(recv_events(c, 1, &r, 1, &foreign) == 0 && r.finish == XDS_FINISH_LENGTH);
        CHECK(xds_dp_req_send(c, 1, 2, prompt, 0, &p) == XDS_OK);
    }
    if (c && !how) {
        int bad = tp_reap(&pid, 1, 30); /* the group exits on its own; rank 0 stays attached */
        CHECK_MSG(bad == 0, "the group did not end with the expected error");
    }
    if (c) xccl_comm_detach(c); /* how = 1: the group must notice */
    if (pid > 0) {
        int bad = tp_reap(&pid, 1, 30);
        CHECK_MSG(bad == 0, "the group did not end with the expected error");
    }
    CHECK(atomic_load(&t->g[1].alive) == 0);
    xds_dp_table_close(t);
    shm_unlink(table);
    xccl_segment_destroy(sg);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    test_table();
    CHECK_MSG(xds_model_load(TINY, NULL, &g_model) == XDS_OK, "load %s: %s", TINY, xds_err_msg());
    void *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(page != MAP_FAILED);
    if (g_model && page != MAP_FAILED) {
        g_slow = page;
        test_serve();
        test_serve_error(0);
        test_serve_error(1);
    }
    if (page != MAP_FAILED) munmap(page, 4096);
    xds_model_free(g_model);
    TEST_MAIN_END();
}
