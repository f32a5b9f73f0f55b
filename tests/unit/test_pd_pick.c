/*
 * test_pd_pick.c — the prefill-instance pick (deploy/pd_pick.h):
 *  - the picker's block hashes are the prefix cache's: prompts run through
 *    the real scheduler + block manager + prefix cache, the summary synced
 *    from that cache, and the picker's expected cached tokens equal what the
 *    scheduler then actually takes from the cache (full, partial, none,
 *    block-aligned; after evictions too);
 *  - the policy: affinity wins when queues are equal, the queue wins over a
 *    short cached prefix, a dead instance is skipped, ties rotate, a block
 *    size mismatch gives no affinity;
 *  - the summary: publish / evict / full bucket / sync replaces exactly;
 *  - the table across processes (fork), and a writer thread syncing and
 *    publishing while reader threads pick and account (ASan/UBSan build).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine/kv_block.h"
#include "deploy/pd_pick.h"
#include "engine/prefix_cache.h"
#include "engine/scheduler.h"
#include "test.h"

static char g_name[64];

static xds_pd_table *make_table(int n) {
    snprintf(g_name, sizeof g_name, "/xds-test-pdpick-%d", (int)getpid());
    shm_unlink(g_name);
    xds_pd_table *t = NULL;
    CHECK(xds_pd_pick_table_create(g_name, n, &t) == XDS_OK);
    return t;
}

static void drop_table(xds_pd_table *t) {
    xds_pd_pick_table_close(t);
    shm_unlink(g_name);
}

static void fill(int32_t *p, int n, int seed) {
    for (int i = 0; i < n; i++) p[i] = (seed * 7919 + i * 31) % 1000;
}

/* ---- hashes against the real prefix cache ------------------------------ */

typedef struct eng {
    xds_kv_blocks *bm;
    xds_sched *s;
} eng;

/* Admit prompt (one step plans the admission), run its prefill to the end,
 * finish it: its full blocks stay cached. Returns the tokens the scheduler
 * took from the prefix cache. */
static int run_prefill(eng *e, uint64_t id, const int32_t *p, int n) {
    xds_sched_seq *q = NULL;
    CHECK(xds_sched_seq_create(id, p, n, n + 1, e->bm->block_size, &q) == XDS_OK);
    if (!q) return -1;
    xds_sched_add(e->s, q);
    for (int guard = 0; q->n_computed < n && guard < 100; guard++) {
        xds_sched_plan plan;
        xds_sched_schedule(e->s, &plan);
        xds_sched_commit(e->s, &plan);
    }
    CHECK(q->n_computed == n);
    int cached = q->n_cached;
    xds_sched_finish(e->s, q);
    xds_sched_seq_free(q);
    CHECK(xds_kv_blocks_check(e->bm) == XDS_OK);
    return cached;
}

static void test_hashes_match_prefix_cache(void) {
    enum { BS = 4 };
    eng e;
    CHECK(xds_kv_blocks_create(16, BS, 1, &e.bm) == XDS_OK);
    xds_sched_opts o = {4, 256};
    CHECK(xds_sched_create(&o, e.bm, &e.s) == XDS_OK);
    xds_pd_table *t = make_table(2);
    xds_pd_pick_set_alive(t, 0, BS, 1);

    int32_t a[30];
    fill(a, 30, 1);
    CHECK(run_prefill(&e, 1, a, 30) == 0);
    /* the cache now holds a's 7 full blocks; the picker computes the same chain */
    uint64_t mine[16], theirs[16];
    int nm = xds_pd_pick_block_hashes(a, 30, BS, mine, 16);
    CHECK(nm == 7); /* full blocks within the first 29 tokens */
    int nt = xds_prefix_cache_hashes(e.bm->pc, theirs, 16);
    CHECK(nt == 7);
    int found = 0;
    for (int i = 0; i < nm; i++)
        for (int j = 0; j < nt; j++) found += mine[i] == theirs[j];
    CHECK(found == 7);
    uint64_t parent = XDS_PREFIX_HASH_ROOT;
    for (int i = 0; i < nm; i++) {
        parent = xds_prefix_hash(parent, a + i * BS, BS);
        CHECK(mine[i] == parent);
    }
    /* block-aligned: the last token is always computed, so 8 tokens -> 1 block */
    CHECK(xds_pd_pick_block_hashes(a, 8, BS, mine, 16) == 1);
    CHECK(xds_pd_pick_block_hashes(a, 1, BS, mine, 16) == 0);

    CHECK(xds_pd_pick_sync_cache(t, 0, e.bm->pc) == XDS_OK);
    CHECK(atomic_load(&t->inst[0].n_hashes) == 7);
    /* the picker's estimate equals what the scheduler takes from the cache */
    int32_t b[40];
    memcpy(b, a, sizeof(int32_t) * 18); /* shares 4 full blocks + 2 tokens */
    fill(b + 18, 22, 2);
    int32_t c[12];
    fill(c, 12, 3);                     /* nothing in common */
    int32_t d[28];
    memcpy(d, a, sizeof(int32_t) * 28); /* a's first 28 tokens: 7 blocks cached, 6 usable */
    struct { const int32_t *p; int n; int want; } cases[] = {{b, 40, 16}, {c, 12, 0}, {d, 28, 24}, {a, 30, 28}};
    for (int k = 0; k < 4; k++) {
        int est = xds_pd_pick_cached_tokens(t, 0, cases[k].p, cases[k].n, BS);
        int got = run_prefill(&e, 10 + k, cases[k].p, cases[k].n);
        CHECK_MSG(est == got && got == cases[k].want, "case %d: picker %d, scheduler %d, want %d", k, est, got,
                  cases[k].want);
        CHECK(xds_pd_pick_sync_cache(t, 0, e.bm->pc) == XDS_OK);
        CHECK(atomic_load(&t->inst[0].n_hashes) == xds_prefix_cache_n_cached(e.bm->pc));
    }
    /* evictions: a pool of 16 blocks; new prompts push a's blocks out (LRU) */
    for (int k = 0; k < 3; k++) {
        int32_t z[33];
        fill(z, 33, 100 + k);
        run_prefill(&e, 20 + k, z, 33);
    }
    CHECK(e.bm->n_evicted > 0);
    CHECK(xds_pd_pick_sync_cache(t, 0, e.bm->pc) == XDS_OK);
    CHECK(atomic_load(&t->inst[0].n_hashes) == xds_prefix_cache_n_cached(e.bm->pc));
    int est = xds_pd_pick_cached_tokens(t, 0, a, 30, BS);
    int got = run_prefill(&e, 30, a, 30);
    CHECK_MSG(est == got && est < 28, "after eviction: picker %d, scheduler %d", est, got);
    /* a NULL cache (prefix caching off) empties the summary */
    CHECK(xds_pd_pick_sync_cache(t, 0, NULL) == XDS_OK);
    CHECK(atomic_load(&t->inst[0].n_hashes) == 0 && xds_pd_pick_cached_tokens(t, 0, a, 30, BS) == 0);
    drop_table(t);
    xds_sched_free(e.s);
    xds_kv_blocks_free(e.bm);
}

/* ---- the policy --------------------------------------------------------- */

/* Publish the first n_blocks chain hashes of p on inst. */
static void cache_prefix(xds_pd_table *t, int inst, const int32_t *p, int n, int bs, int n_blocks) {
    uint64_t h[128];
    int k = xds_pd_pick_block_hashes(p, n, bs, h, 128);
    for (int i = 0; i < n_blocks && i < k; i++) CHECK(xds_pd_pick_publish_block(t, inst, h[i]) == 1);
}

static void test_policy(void) {
    enum { BS = 16, N = 200 };
    int32_t p[N];
    fill(p, N, 5);
    xds_pd_choice c;

    /* affinity wins when queues are equal (either instance holding it) */
    for (int holder = 0; holder < 2; holder++) {
        xds_pd_table *t = make_table(2);
        xds_pd_pick_set_alive(t, 0, BS, 1);
        xds_pd_pick_set_alive(t, 1, BS, 1);
        cache_prefix(t, holder, p, N, BS, 10);
        for (int k = 0; k < 4; k++) { /* every rotation start */
            CHECK(xds_pd_pick(t, p, N, BS, &c) == holder);
            CHECK(c.cached_tokens == 160 && c.work == 40 && c.cost == 40);
        }
        /* equal non-empty queues: still affinity */
        xds_pd_pick_account(t, 0, 300, +1);
        xds_pd_pick_account(t, 1, 300, +1);
        CHECK(xds_pd_pick(t, p, N, BS, &c) == holder);
        CHECK(c.cost == 40 + 300 + XDS_PD_PICK_REQ_TOKENS);
        drop_table(t);
    }

    /* the queue wins over a short cached prefix, not over a long one */
    xds_pd_table *t = make_table(2);
    xds_pd_pick_set_alive(t, 0, BS, 1);
    xds_pd_pick_set_alive(t, 1, BS, 1);
    cache_prefix(t, 0, p, N, BS, 1); /* 16 tokens cached on 0 */
    xds_pd_pick_account(t, 0, 150, +1);
    CHECK(xds_pd_pick(t, p, N, BS, &c) == 1); /* 184 + 150 + 16 > 200 */
    CHECK(c.cached_tokens == 0 && c.cost == 200);
    cache_prefix(t, 0, p, N, BS, 12); /* now 192 tokens cached on 0 */
    CHECK(xds_pd_pick(t, p, N, BS, &c) == 0); /* 8 + 150 + 16 < 200 */
    CHECK(c.cached_tokens == 192 && c.work == 8);
    /* a longer queue on 0 tips it back */
    xds_pd_pick_account(t, 0, 100, +1);
    CHECK(xds_pd_pick(t, p, N, BS, &c) == 1);
    /* the queue drains: back to 0 */
    xds_pd_pick_account(t, 0, 150, -1);
    xds_pd_pick_account(t, 0, 100, -1);
    CHECK(atomic_load(&t->inst[0].queued) == 0 && atomic_load(&t->inst[0].served) == 2);
    CHECK(xds_pd_pick(t, p, N, BS, &c) == 0);

    /* a dead instance is skipped, even with the best affinity */
    xds_pd_pick_set_alive(t, 0, BS, 0);
    CHECK(atomic_load(&t->inst[0].n_hashes) == 0); /* its summary is gone with it */
    cache_prefix(t, 0, p, N, BS, 12); /* a stale writer: still skipped while dead */
    for (int k = 0; k < 4; k++) CHECK(xds_pd_pick(t, p, N, BS, &c) == 1);
    xds_pd_pick_set_alive(t, 1, BS, 0);
    CHECK(xds_pd_pick(t, p, N, BS, &c) == -1 && c.inst == -1);
    xds_pd_pick_set_alive(t, 0, BS, 1);
    CHECK(xds_pd_pick(t, p, N, BS, &c) == 0 && c.cached_tokens == 192);
    /* a block size mismatch gives no affinity */
    CHECK(xds_pd_pick(t, p, N, 32, &c) == 0 && c.cached_tokens == 0);
    CHECK(xds_pd_pick_cached_tokens(t, 0, p, N, 32) == 0);
    drop_table(t);

    /* equal instances share the work (rotating tie-break) */
    t = make_table(3);
    for (int i = 0; i < 3; i++) xds_pd_pick_set_alive(t, i, BS, 1);
    int count[3] = {0};
    for (int k = 0; k < 30; k++) {
        int i = xds_pd_pick(t, p, N, BS, &c);
        CHECK(i >= 0 && i < 3);
        if (i >= 0) count[i]++;
    }
    CHECK(count[0] == 10 && count[1] == 10 && count[2] == 10);
    /* ... and with queues accounted as they go, never twice in a row on a loaded one */
    int last = -1, repeats = 0;
    for (int k = 0; k < 9; k++) {
        int i = xds_pd_pick(t, p, N, BS, &c);
        repeats += i == last;
        last = i;
        xds_pd_pick_account(t, i, c.work, +1);
    }
    CHECK(repeats == 0);
    for (int i = 0; i < 3; i++) CHECK(atomic_load(&t->inst[i].queued) == 3);
    drop_table(t);
}

/* ---- the summary ---------------------------------------------------------- */

static void test_summary(void) {
    xds_pd_table *t = make_table(1);
    xds_pd_pick_set_alive(t, 0, 4, 1);
    /* WAYS + 1 hashes of one bucket: the last one does not fit */
    uint64_t h[XDS_PD_PICK_WAYS + 1];
    for (int i = 0; i <= XDS_PD_PICK_WAYS; i++) h[i] = (7ull << 32) | (uint64_t)(i + 1);
    for (int i = 0; i < XDS_PD_PICK_WAYS; i++) CHECK(xds_pd_pick_publish_block(t, 0, h[i]) == 1);
    CHECK(xds_pd_pick_publish_block(t, 0, h[0]) == 1); /* already there: no double entry */
    CHECK(atomic_load(&t->inst[0].n_hashes) == XDS_PD_PICK_WAYS);
    CHECK(xds_pd_pick_publish_block(t, 0, h[XDS_PD_PICK_WAYS]) == 0);
    CHECK(atomic_load(&t->inst[0].n_dropped) == 1);
    xds_pd_pick_evict_block(t, 0, h[3]);
    CHECK(atomic_load(&t->inst[0].n_hashes) == XDS_PD_PICK_WAYS - 1);
    CHECK(xds_pd_pick_publish_block(t, 0, h[XDS_PD_PICK_WAYS]) == 1);
    xds_pd_pick_evict_block(t, 0, 12345); /* not there: nothing changes */
    CHECK(atomic_load(&t->inst[0].n_hashes) == XDS_PD_PICK_WAYS);
    CHECK(xds_pd_pick_publish_block(t, 0, 0) == 0); /* 0 is the empty mark */

    /* sync replaces exactly: old-only hashes go, shared stay, new come */
    uint64_t set2[] = {h[1], h[2], 99ull << 32 | 5, 99ull << 32 | 5, 1000};
    CHECK(xds_pd_pick_sync(t, 0, set2, 5) == XDS_OK);
    CHECK(atomic_load(&t->inst[0].n_hashes) == 4 && atomic_load(&t->inst[0].n_dropped) == 0);
    int present = 0, total = 0;
    for (int b = 0; b < XDS_PD_PICK_BUCKETS; b++)
        for (int w = 0; w < XDS_PD_PICK_WAYS; w++) {
            uint64_t v = atomic_load(&t->inst[0].set[b][w]);
            if (!v) continue;
            total++;
            present += v == set2[0] || v == set2[1] || v == set2[2] || v == set2[4];
            CHECK((size_t)b == (size_t)((v >> 32) % XDS_PD_PICK_BUCKETS));
        }
    CHECK(total == 4 && present == 4);
    CHECK(xds_pd_pick_sync(t, 0, h, XDS_PD_PICK_WAYS + 1) == XDS_OK);
    CHECK(atomic_load(&t->inst[0].n_hashes) == XDS_PD_PICK_WAYS && atomic_load(&t->inst[0].n_dropped) == 1);
    CHECK(xds_pd_pick_sync(t, 0, NULL, 0) == XDS_OK);
    CHECK(atomic_load(&t->inst[0].n_hashes) == 0);
    drop_table(t);
}

static void test_table_errors(void) {
    xds_pd_table *t = NULL;
    CHECK(xds_pd_pick_table_create("/xds-test-pdpick-bad", 0, &t) == XDS_ERR_INVALID && t == NULL);
    CHECK(xds_pd_pick_table_create("/xds-test-pdpick-bad", XDS_PD_PICK_MAX + 1, &t) == XDS_ERR_INVALID);
    CHECK(xds_pd_pick_table_open("/xds-test-pdpick-missing", &t) == XDS_ERR_IO && t == NULL);
    CHECK(strstr(xds_err_msg(), "/xds-test-pdpick-missing") != NULL);
    /* a shm object of the wrong kind */
    char name[64];
    snprintf(name, sizeof name, "/xds-test-pdpick-other-%d", (int)getpid());
    int fd = shm_open(name, O_RDWR | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0);
    if (fd >= 0) {
        CHECK(ftruncate(fd, 4096) == 0);
        close(fd);
        CHECK(xds_pd_pick_table_open(name, &t) == XDS_ERR_FORMAT);
        fd = shm_open(name, O_RDWR, 0600);
        CHECK(ftruncate(fd, sizeof(xds_pd_table)) == 0);
        close(fd);
        CHECK(xds_pd_pick_table_open(name, &t) == XDS_ERR_FORMAT); /* right size, no magic */
        CHECK(strstr(xds_err_msg(), "is not a prefill pick table") != NULL);
        shm_unlink(name);
    }
    /* an existing name is not silently reused */
    xds_pd_table *a = make_table(1), *b = NULL;
    CHECK(xds_pd_pick_table_create(g_name, 1, &b) == XDS_ERR_IO && b == NULL);
    drop_table(a);
}

/* The instance in another process publishes; the front-end here sees it. */
static void test_across_processes(void) {
    enum { BS = 8, N = 64 };
    int32_t p[N];
    fill(p, N, 9);
    xds_pd_table *t = make_table(2);
    pid_t pid = fork();
    if (pid == 0) {
        xds_pd_table *c = NULL;
        if (xds_pd_pick_table_open(g_name, &c) != XDS_OK) _exit(1);
        xds_pd_pick_set_alive(c, 1, BS, 1);
        uint64_t h[16];
        int k = xds_pd_pick_block_hashes(p, N, BS, h, 16);
        if (xds_pd_pick_sync(c, 1, h, k) != XDS_OK) _exit(2);
        xds_pd_pick_set_alive(c, 0, BS, 1);
        xds_pd_pick_account(c, 0, 10, +1);
        xds_pd_pick_table_close(c);
        _exit(0);
    }
    int st = -1;
    CHECK(pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    xds_pd_choice c;
    CHECK(xds_pd_pick(t, p, N, BS, &c) == 1 && c.cached_tokens == 56);
    CHECK(atomic_load(&t->inst[0].queued) == 1);
    drop_table(t);
}

/* ---- concurrency: one writer per instance, many readers ----------------------- */

typedef struct conc {
    xds_pd_table *t;
    const int32_t *p;
    int n, bs, iters;
    int bad;
} conc;

static void *writer_main(void *arg) {
    conc *c = arg;
    uint64_t h[64];
    int k = xds_pd_pick_block_hashes(c->p, c->n, c->bs, h, 64);
    for (int it = 0; it < c->iters; it++) {
        if (xds_pd_pick_sync(c->t, 0, h, it % 2 ? k : k / 2) != XDS_OK) c->bad++;
        xds_pd_pick_evict_block(c->t, 0, h[k - 1]);
        xds_pd_pick_publish_block(c->t, 0, h[k - 1]);
        xds_pd_pick_set_alive(c->t, 1, c->bs, it % 3 != 0);
    }
    return NULL;
}

static void *reader_main(void *arg) {
    conc *c = arg;
    for (int it = 0; it < c->iters; it++) {
        xds_pd_choice ch;
        int i = xds_pd_pick(c->t, c->p, c->n, c->bs, &ch);
        if (i < 0 || i > 1 || ch.cached_tokens < 0 || ch.cached_tokens > c->n - 1 || ch.cached_tokens % c->bs)
            c->bad++;
        else {
            xds_pd_pick_account(c->t, i, ch.work, +1);
            xds_pd_pick_account(c->t, i, ch.work, -1);
        }
    }
    return NULL;
}

static void test_concurrent(void) {
    enum { BS = 4, N = 129 };
    int32_t p[N];
    fill(p, N, 11);
    xds_pd_table *t = make_table(2);
    xds_pd_pick_set_alive(t, 0, BS, 1);
    xds_pd_pick_set_alive(t, 1, BS, 1);
    conc w = {t, p, N, BS, 3000, 0}, r1 = w, r2 = w;
    pthread_t tw, t1, t2;
    CHECK(pthread_create(&tw, NULL, writer_main, &w) == 0);
    CHECK(pthread_create(&t1, NULL, reader_main, &r1) == 0);
    CHECK(pthread_create(&t2, NULL, reader_main, &r2) == 0);
    pthread_join(tw, NULL);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    CHECK(w.bad == 0 && r1.bad == 0 && r2.bad == 0);
    for (int i = 0; i < 2; i++)
        CHECK(atomic_load(&t->inst[i].queued) == 0 && atomic_load(&t->inst[i].queued_work) == 0);
    CHECK(atomic_load(&t->inst[0].served) + atomic_load(&t->inst[1].served) == 6000);
    /* the writer's last sync (iteration 2999: odd, all 32 blocks) is what a pick now sees */
    CHECK(xds_pd_pick_cached_tokens(t, 0, p, N, BS) == 128);
    drop_table(t);
}

int main(void) {
    test_hashes_match_prefix_cache();
    test_policy();
    test_summary();
    test_table_errors();
    test_across_processes();
    test_concurrent();
    TEST_MAIN_END();
}
