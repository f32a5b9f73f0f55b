/*
 * test_scheduler.c — the step scheduler against a simulated model.
 *
 * The simulation keeps, for every KV slot of every block, the token whose
 * "KV" was written there. Each step it checks, for every scheduled item,
 * that the sequence's block table reads back exactly its tokens for all
 * positions before the chunk (so prefix-cache hits, preemption and recompute
 * are all checked to give the right context), that it never writes into a
 * shared or cached block, then writes the chunk. The "model" picks the next
 * token as a hash of the whole token history, so any wrong context or lost
 * token changes every later token; outputs are compared with the tokens the
 * same rule gives when iterated directly.
 */
#include "engine/scheduler.h"

#include <stdlib.h>
#include <string.h>

#include "test.h"

enum { VOCAB = 50 };

static int32_t next_token(const int32_t *t, int n) {
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < n; i++) h = (h ^ (uint32_t)t[i]) * 1099511628211ull;
    return (int32_t)(h % VOCAB);
}

typedef struct sim {
    xds_kv_blocks *bm;
    xds_sched *s;
    int32_t *kvtok; /* (n_blocks * block_size) token written at each KV slot, -1 if none */
    int bs;
    int bad;        /* context / write violations */
    int max_tok_seen, max_items_seen;
    int decode_stalls; /* steps where a decoding sequence got no token although budget allowed */
} sim;

typedef struct req {
    xds_sched_seq *seq;
    int max_gen;
    int n_gen;
    int done;
    int arrive; /* step at which it is submitted */
} req;

static void sim_init(sim *m, int n_blocks, int bs, int prefix, int max_batch, int budget) {
    memset(m, 0, sizeof(*m));
    CHECK(xds_kv_blocks_create(n_blocks, bs, prefix, &m->bm) == XDS_OK);
    xds_sched_opts o = {max_batch, budget};
    CHECK(xds_sched_create(&o, m->bm, &m->s) == XDS_OK);
    m->bs = bs;
    m->kvtok = malloc(sizeof(int32_t) * n_blocks * bs);
    for (int i = 0; i < n_blocks * bs; i++) m->kvtok[i] = -1;
}

static void sim_free(sim *m) {
    xds_sched_free(m->s);
    xds_kv_blocks_free(m->bm);
    free(m->kvtok);
}

/* Run one step: schedule, check/write KV, commit, sample. Returns items run. */
static int sim_step(sim *m, req *reqs, int n_reqs) {
    xds_sched_plan plan;
    xds_sched_schedule(m->s, &plan);
    if (plan.n_tok > m->max_tok_seen) m->max_tok_seen = plan.n_tok;
    if (plan.n_items > m->max_items_seen) m->max_items_seen = plan.n_items;
    int sum = 0;
    for (int i = 0; i < plan.n_items; i++) {
        xds_sched_item *it = &plan.items[i];
        xds_sched_seq *q = it->seq;
        sum += it->n;
        if (q->state != XDS_SEQ_RUNNING || q->slot < 0 || it->start != q->n_computed || it->n < 1 ||
            it->start + it->n > q->n_tokens || it->sample != (it->start + it->n == q->n_tokens) ||
            q->n_blocks * m->bs < it->start + it->n)
            m->bad++;
        for (int p = 0; p < it->start; p++) {
            int32_t b = q->blocks[p / m->bs];
            if (m->kvtok[b * m->bs + p % m->bs] != q->tokens[p]) {
                m->bad++;
                break;
            }
        }
        for (int p = it->start; p < it->start + it->n; p++) {
            int32_t b = q->blocks[p / m->bs];
            if (m->bm->ref[b] != 1 || (m->bm->pc && xds_prefix_cache_has(m->bm->pc, b))) m->bad++;
            m->kvtok[b * m->bs + p % m->bs] = q->tokens[p];
        }
    }
    if (sum != plan.n_tok) m->bad++;
    /* Two items never share a slot. */
    for (int i = 0; i < plan.n_items; i++)
        for (int j = i + 1; j < plan.n_items; j++)
            if (plan.items[i].seq->slot == plan.items[j].seq->slot) m->bad++;
    xds_sched_commit(m->s, &plan);
    for (int i = 0; i < plan.n_items; i++) {
        xds_sched_item *it = &plan.items[i];
        if (!it->sample) continue;
        req *r = it->seq->user;
        int32_t t = next_token(it->seq->tokens, it->seq->n_tokens);
        r->n_gen++;
        if (r->n_gen >= r->max_gen) {
            xds_sched_seq_append(it->seq, t); /* keep the token for the comparison */
            xds_sched_finish(m->s, it->seq);
            r->done = 1;
        } else {
            CHECK(xds_sched_seq_append(it->seq, t));
        }
    }
    if (xds_kv_blocks_check(m->bm) != XDS_OK) {
        fprintf(stderr, "%s\n", xds_err_msg());
        m->bad++;
    }
    (void)reqs;
    (void)n_reqs;
    return plan.n_items;
}

static void make_req(req *r, sim *m, uint64_t id, const int32_t *prompt, int n, int max_gen) {
    memset(r, 0, sizeof(*r));
    CHECK(xds_sched_seq_create(id, prompt, n, n + max_gen, m->bs, &r->seq) == XDS_OK);
    r->seq->user = r;
    r->max_gen = max_gen;
}

/* The expected full token list of a request. */
static int check_output(const req *r) {
    const xds_sched_seq *q = r->seq;
    if (q->n_tokens != q->n_prompt + r->max_gen) return 0;
    for (int i = q->n_prompt; i < q->n_tokens; i++)
        if (q->tokens[i] != next_token(q->tokens, i)) return 0;
    return 1;
}

/* Three sequences, ample resources: one prefill step each, then a decode per
 * step; the batch shrinks as they finish. */
static void test_continuous_batching(void) {
    sim m;
    sim_init(&m, 64, 4, 0, 8, 64);
    req r[3];
    int32_t p[10];
    for (int i = 0; i < 10; i++) p[i] = i + 1;
    make_req(&r[0], &m, 0, p, 10, 3);
    make_req(&r[1], &m, 1, p, 5, 5);
    make_req(&r[2], &m, 2, p + 3, 7, 1);
    for (int i = 0; i < 3; i++) xds_sched_add(m.s, r[i].seq);
    xds_sched_plan plan;
    xds_sched_schedule(m.s, &plan);
    CHECK(plan.n_items == 3 && plan.n_tok == 22);
    for (int i = 0; i < plan.n_items; i++) CHECK(plan.items[i].sample && plan.items[i].start == 0);
    xds_sched_commit(m.s, &plan);
    for (int i = 0; i < 3; i++) {
        CHECK(r[i].seq->n_computed == r[i].seq->n_prompt);
        CHECK(r[i].seq->n_cached == 0);
        xds_sched_seq_append(r[i].seq, 7);
    }
    xds_sched_finish(m.s, r[2].seq); /* max_gen 1 */
    CHECK(m.s->n_running == 2);
    xds_sched_schedule(m.s, &plan);
    CHECK(plan.n_items == 2 && plan.n_tok == 2);
    for (int i = 0; i < plan.n_items; i++) CHECK(plan.items[i].n == 1 && plan.items[i].sample);
    xds_sched_commit(m.s, &plan);
    /* A new arrival joins the running batch at the next step. */
    req r3;
    make_req(&r3, &m, 3, p, 6, 2);
    xds_sched_add(m.s, r3.seq);
    for (int i = 0; i < 2; i++) xds_sched_seq_append(r[i].seq, 8);
    xds_sched_schedule(m.s, &plan);
    CHECK(plan.n_items == 3 && plan.n_tok == 2 + 6);
    xds_sched_commit(m.s, &plan);
    for (int i = 0; i < 2; i++) xds_sched_finish(m.s, r[i].seq);
    xds_sched_finish(m.s, r3.seq);
    CHECK(m.s->n_running == 0 && m.s->n_waiting == 0);
    CHECK(xds_kv_blocks_n_used(m.bm) == 0);
    xds_sched_schedule(m.s, &plan);
    CHECK(plan.n_items == 0);
    for (int i = 0; i < 3; i++) xds_sched_seq_free(r[i].seq);
    xds_sched_seq_free(r3.seq);
    sim_free(&m);
}

/* A long prompt arrives while others decode: it is prefilled in chunks of
 * what the budget leaves, and every decoding sequence gets its token every
 * step. */
static void test_chunked_prefill(void) {
    sim m;
    sim_init(&m, 128, 4, 0, 4, 8);
    req r[3];
    int32_t p[40];
    for (int i = 0; i < 40; i++) p[i] = (i * 7) % VOCAB;
    make_req(&r[0], &m, 0, p, 3, 30);
    make_req(&r[1], &m, 1, p + 5, 2, 30);
    xds_sched_add(m.s, r[0].seq);
    xds_sched_add(m.s, r[1].seq);
    sim_step(&m, r, 2); /* both prefill (5 tokens) */
    sim_step(&m, r, 2); /* both decode */
    make_req(&r[2], &m, 2, p, 40, 3);
    xds_sched_add(m.s, r[2].seq);
    int steps_prefill = 0;
    while (!r[2].done) {
        xds_sched_plan plan;
        int n_dec_before = 0;
        for (xds_sched_seq *q = m.s->run_head; q; q = q->next)
            n_dec_before += q->n_tokens - q->n_computed == 1;
        int computed_before = r[2].seq->n_computed;
        (void)plan;
        sim_step(&m, r, 3);
        /* Every decoding sequence progressed by one token this step. */
        CHECK(m.max_tok_seen <= 8);
        if (r[2].seq->n_computed < 40 && !r[2].done) {
            steps_prefill++;
            /* the chunk is what the decodes left of the budget */
            CHECK_MSG(r[2].seq->n_computed - computed_before == 8 - n_dec_before,
                      "chunk %d, decodes %d", r[2].seq->n_computed - computed_before, n_dec_before);
        }
    }
    CHECK(steps_prefill >= 5); /* 40 tokens in chunks of <= 6 */
    CHECK(r[0].n_gen == r[1].n_gen); /* decodes never skipped: they stay in lockstep */
    while (!r[0].done || !r[1].done) sim_step(&m, r, 3);
    for (int i = 0; i < 3; i++) {
        CHECK(check_output(&r[i]));
        xds_sched_seq_free(r[i].seq);
    }
    CHECK(m.bad == 0);
    CHECK(xds_kv_blocks_n_used(m.bm) == 0);
    sim_free(&m);
}

/* Prefix caching: the second request with the same prefix reuses the full
 * blocks (shared while both run), computes only the rest, and the result is
 * the same. An exactly block-aligned fully cached prompt still computes its
 * last block. */
static void test_prefix_reuse(void) {
    sim m;
    sim_init(&m, 64, 4, 1, 4, 64);
    int32_t p[12];
    for (int i = 0; i < 12; i++) p[i] = 3 + i;
    req a, b, c, d;
    make_req(&a, &m, 0, p, 10, 4);
    xds_sched_add(m.s, a.seq);
    sim_step(&m, &a, 1);
    CHECK(a.seq->n_cached == 0);
    /* b shares a's first 2 full blocks (8 tokens) and differs after. */
    int32_t q[11];
    memcpy(q, p, sizeof(int32_t) * 8);
    q[8] = 40, q[9] = 41, q[10] = 42;
    make_req(&b, &m, 1, q, 11, 4);
    xds_sched_add(m.s, b.seq);
    sim_step(&m, &a, 1);
    CHECK(b.seq->n_cached == 8);
    CHECK(b.seq->blocks[0] == a.seq->blocks[0] && b.seq->blocks[1] == a.seq->blocks[1]);
    CHECK(b.seq->blocks[2] != a.seq->blocks[2]);
    CHECK(m.bm->ref[a.seq->blocks[0]] == 2);
    CHECK(m.s->prefix_hits == 8);
    while (!a.done || !b.done) sim_step(&m, &a, 1);
    CHECK(check_output(&a) && check_output(&b));
    CHECK(xds_kv_blocks_n_used(m.bm) == 0);
    /* Exactly 8 tokens, all cached: only the first block is reused. */
    make_req(&c, &m, 2, p, 8, 2);
    xds_sched_add(m.s, c.seq);
    sim_step(&m, &c, 1);
    CHECK(c.seq->n_cached == 4);
    while (!c.done) sim_step(&m, &c, 1);
    CHECK(check_output(&c));
    /* a's whole sequence (prompt + generated, 14 tokens) is cached in full
     * blocks: a request continuing it (multi-turn) hits 12 tokens. */
    int32_t e[16];
    memcpy(e, a.seq->tokens, sizeof(int32_t) * 14);
    e[14] = 1, e[15] = 2;
    make_req(&d, &m, 3, e, 16, 2);
    xds_sched_add(m.s, d.seq);
    sim_step(&m, &d, 1);
    CHECK(d.seq->n_cached == 12);
    while (!d.done) sim_step(&m, &d, 1);
    CHECK(check_output(&d));
    CHECK(m.bad == 0);
    xds_sched_seq_free(a.seq);
    xds_sched_seq_free(b.seq);
    xds_sched_seq_free(c.seq);
    xds_sched_seq_free(d.seq);
    sim_free(&m);
}

/* Preemption: a pool too small for everyone. The newest is preempted, goes
 * back to the front of the queue, recomputes, and everyone completes with
 * the right tokens; the oldest is never preempted. */
static void test_preemption(int prefix) {
    sim m;
    sim_init(&m, 10, 4, prefix, 4, 32);
    req r[4];
    int32_t p[16];
    for (int i = 0; i < 16; i++) p[i] = (5 * i + 1) % VOCAB;
    for (int i = 0; i < 4; i++) {
        make_req(&r[i], &m, (uint64_t)i, p + i, 6, 10); /* 16 tokens = 4 blocks each at the end */
        xds_sched_add(m.s, r[i].seq);
    }
    int steps = 0;
    for (;;) {
        int all = 1;
        for (int i = 0; i < 4; i++) all &= r[i].done;
        if (all || steps > 500) break;
        sim_step(&m, r, 4);
        steps++;
    }
    CHECK(steps <= 500);
    CHECK(m.s->n_preemptions > 0);
    CHECK(r[0].seq->n_preempt == 0);
    for (int i = 0; i < 4; i++) {
        CHECK_MSG(check_output(&r[i]), "request %d (prefix cache %d)", i, prefix);
        xds_sched_seq_free(r[i].seq);
    }
    CHECK(m.bad == 0);
    CHECK(xds_kv_blocks_n_used(m.bm) == 0);
    sim_free(&m);
}

/* Finishing (cancelling) a waiting or running sequence releases everything. */
static void test_finish_anywhere(void) {
    sim m;
    sim_init(&m, 16, 4, 1, 1, 64);
    int32_t p[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    req a, b;
    make_req(&a, &m, 0, p, 9, 5);
    make_req(&b, &m, 1, p, 9, 5);
    xds_sched_add(m.s, a.seq);
    xds_sched_add(m.s, b.seq);
    sim_step(&m, &a, 1);
    CHECK(a.seq->state == XDS_SEQ_RUNNING && b.seq->state == XDS_SEQ_WAITING); /* max_batch 1 */
    CHECK(xds_kv_blocks_n_used(m.bm) == 3);
    xds_sched_finish(m.s, b.seq);
    CHECK(b.seq->state == XDS_SEQ_FINISHED && m.s->n_waiting == 0);
    xds_sched_finish(m.s, a.seq);
    CHECK(m.s->n_running == 0 && xds_kv_blocks_n_used(m.bm) == 0);
    CHECK(m.s->n_free_slots == 1);
    /* a's two full blocks remain cached (evictable), its tail block first in
     * line for eviction. */
    int32_t lru[4];
    CHECK(xds_prefix_cache_lru_list(m.bm->pc, lru, 4) == 2);
    CHECK(lru[0] == 1 && lru[1] == 0); /* a had blocks 0, 1, 2 */
    CHECK(xds_kv_blocks_check(m.bm) == XDS_OK);
    xds_sched_seq_free(a.seq);
    xds_sched_seq_free(b.seq);
    sim_free(&m);
}

/* Random workload: arrivals over time, shared prefixes, tiny pool and budget,
 * max_batch limit; every output must equal the direct iteration. */
static void test_random_workload(int prefix, uint64_t seed) {
    enum { NR = 24 };
    sim m;
    sim_init(&m, 24, 4, prefix, 5, 12);
    req r[NR];
    uint64_t rng = seed;
    int32_t base[64];
    for (int i = 0; i < 64; i++) base[i] = (int32_t)((i * 13 + 5) % VOCAB);
    for (int i = 0; i < NR; i++) {
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        int n = 1 + (int)((rng >> 33) % 40);
        int gen = 1 + (int)((rng >> 45) % 20);
        int32_t p[64];
        memcpy(p, base, sizeof(int32_t) * n);
        if ((rng >> 20) & 1) p[n - 1] = (int32_t)(i % VOCAB); /* vary the tail */
        make_req(&r[i], &m, (uint64_t)i, p, n, gen);
        r[i].arrive = (int)((rng >> 52) % 40);
    }
    int steps = 0, n_done = 0;
    while (n_done < NR && steps < 5000) {
        for (int i = 0; i < NR; i++)
            if (r[i].arrive == steps) xds_sched_add(m.s, r[i].seq);
        sim_step(&m, r, NR);
        if (m.s->n_running > 5) m.bad++;
        steps++;
        n_done = 0;
        for (int i = 0; i < NR; i++) n_done += r[i].done;
    }
    CHECK_MSG(n_done == NR, "%d of %d done after %d steps", n_done, NR, steps);
    CHECK(m.max_tok_seen <= 12 && m.max_items_seen <= 5);
    int ok = 1;
    for (int i = 0; i < NR; i++) {
        ok &= check_output(&r[i]);
        xds_sched_seq_free(r[i].seq);
    }
    CHECK_MSG(ok, "outputs differ (prefix %d seed %llu)", prefix, (unsigned long long)seed);
    CHECK_MSG(m.bad == 0, "%d violations", m.bad);
    CHECK(xds_kv_blocks_n_used(m.bm) == 0);
    if (prefix) CHECK(m.s->prefix_hits > 0);
    sim_free(&m);
}

/* A newer sequence that needs blocks while an older one decodes preempts
 * itself (never the older one), and leaves the plan without its tokens. */
static void test_preempt_scheduled(void) {
    sim m;
    sim_init(&m, 4, 2, 0, 2, 5);
    int32_t p[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    req a, b;
    make_req(&a, &m, 0, p, 8, 1);
    make_req(&b, &m, 1, p, 1, 6);
    xds_sched_add(m.s, a.seq);
    xds_sched_add(m.s, b.seq);
    /* step 1: a takes 5 tokens (3 blocks); b cannot be admitted (no budget) */
    sim_step(&m, &a, 1);
    CHECK(a.seq->n_computed == 5 && b.seq->state == XDS_SEQ_WAITING);
    xds_sched_finish(m.s, a.seq); /* restart a later with b running first */
    xds_sched_seq_free(a.seq);
    make_req(&a, &m, 2, p, 8, 1);
    xds_sched_add(m.s, a.seq);
    /* b is now the head of the queue: b admitted (1 block), then a (4 tokens, 2 blocks) */
    sim_step(&m, &a, 1);
    CHECK(b.seq->state == XDS_SEQ_RUNNING && a.seq->state == XDS_SEQ_RUNNING);
    CHECK(b.seq->n_computed == 1 && a.seq->n_computed == 4);
    /* b (older) decodes; a (newer) needs 2 more blocks, only 1 is free: a
     * preempts itself. */
    xds_sched_plan plan;
    xds_sched_schedule(m.s, &plan);
    CHECK(plan.n_preempted == 1 && a.seq->state == XDS_SEQ_WAITING && a.seq->n_preempt == 1);
    CHECK(plan.n_items == 1 && plan.items[0].seq == b.seq && plan.n_tok == 1);
    xds_sched_commit(m.s, &plan);
    xds_sched_seq_append(b.seq, 9);
    xds_sched_finish(m.s, b.seq);
    xds_sched_seq_free(b.seq);
    xds_sched_finish(m.s, a.seq);
    xds_sched_seq_free(a.seq);
    CHECK(xds_kv_blocks_n_used(m.bm) == 0 && xds_kv_blocks_check(m.bm) == XDS_OK);
    sim_free(&m);
}

/* Admission keeps a watermark of 1% of the pool free while others run, but
 * a sequence alone is always admitted. */
static void test_watermark(void) {
    sim m;
    sim_init(&m, 100, 1, 0, 4, 256);
    int32_t p[60];
    for (int i = 0; i < 60; i++) p[i] = i % VOCAB;
    req a, b;
    make_req(&a, &m, 0, p, 50, 3);
    make_req(&b, &m, 1, p + 1, 49, 3);
    xds_sched_add(m.s, a.seq);
    sim_step(&m, &a, 1); /* a: 50 blocks */
    xds_sched_add(m.s, b.seq);
    sim_step(&m, &a, 1); /* a decodes (51 blocks); b would take the last 49 */
    CHECK(b.seq->state == XDS_SEQ_WAITING);
    CHECK(xds_kv_blocks_n_available(m.bm) == 49);
    while (!a.done) sim_step(&m, &a, 1);
    sim_step(&m, &b, 1); /* alone now */
    CHECK(b.seq->state == XDS_SEQ_RUNNING || b.done);
    while (!b.done) sim_step(&m, &b, 1);
    CHECK(check_output(&a) && check_output(&b));
    CHECK(m.s->n_preemptions == 0 && m.bad == 0);
    xds_sched_seq_free(a.seq);
    xds_sched_seq_free(b.seq);
    sim_free(&m);
}

int main(void) {
    test_watermark();
    test_preempt_scheduled();
    test_continuous_batching();
    test_chunked_prefill();
    test_prefix_reuse();
    test_preemption(0);
    test_preemption(1);
    test_finish_anywhere();
    for (uint64_t seed = 1; seed <= 20; seed++) {
        test_random_workload(0, seed);
        test_random_workload(1, seed);
    }
    TEST_MAIN_END();
}
