/*
 * test_kv_block.c — the KV block manager: reference counts, double free,
 * exhaustion, the free -> in use -> cached -> evicted life cycle, eviction of
 * unreferenced cached blocks only, LRU order, and a random workload checked
 * against the invariants after every operation.
 */
#include "engine/kv_block.h"

#include "test.h"

static void test_refcounts(void) {
    xds_kv_blocks *bm;
    CHECK(xds_kv_blocks_create(0, 16, 0, &bm) == XDS_ERR_INVALID);
    CHECK(xds_kv_blocks_create(4, 16, 0, &bm) == XDS_OK);
    CHECK(xds_kv_blocks_n_available(bm) == 4 && xds_kv_blocks_n_used(bm) == 0);
    int32_t a = xds_kv_blocks_alloc(bm), b = xds_kv_blocks_alloc(bm);
    CHECK(a == 0 && b == 1);
    xds_kv_blocks_ref(bm, a);
    CHECK(bm->ref[a] == 2);
    CHECK(xds_kv_blocks_n_used(bm) == 2);
    CHECK(xds_kv_blocks_unref(bm, a) == XDS_OK);
    CHECK(xds_kv_blocks_n_used(bm) == 2); /* still one reference */
    CHECK(xds_kv_blocks_unref(bm, a) == XDS_OK);
    CHECK(xds_kv_blocks_n_used(bm) == 1);
    /* Double free and bad ids are errors that change nothing. */
    CHECK(xds_kv_blocks_unref(bm, a) == XDS_ERR_INVALID);
    CHECK(xds_kv_blocks_unref(bm, -1) == XDS_ERR_INVALID);
    CHECK(xds_kv_blocks_unref(bm, 4) == XDS_ERR_INVALID);
    CHECK(xds_kv_blocks_n_available(bm) == 3);
    CHECK(xds_kv_blocks_check(bm) == XDS_OK);
    /* Exhaustion: 3 more allocations succeed, the 4th fails. */
    int32_t c = xds_kv_blocks_alloc(bm), d = xds_kv_blocks_alloc(bm), e = xds_kv_blocks_alloc(bm);
    CHECK(c >= 0 && d >= 0 && e >= 0 && c != d && d != e && c != e && c != b && d != b && e != b);
    CHECK(xds_kv_blocks_alloc(bm) == -1);
    CHECK(xds_kv_blocks_n_available(bm) == 0);
    /* Without a prefix cache, publish/lookup are inert. */
    int32_t t[16] = {0};
    CHECK(xds_kv_blocks_publish(bm, c, 42, XDS_PREFIX_HASH_ROOT, t) == 0);
    CHECK(xds_kv_blocks_lookup(bm, 42, XDS_PREFIX_HASH_ROOT, t) == -1);
    CHECK(xds_kv_blocks_check(bm) == XDS_OK);
    xds_kv_blocks_free(bm);
}

static void test_cached_lifecycle(void) {
    xds_kv_blocks *bm;
    CHECK(xds_kv_blocks_create(4, 2, 1, &bm) == XDS_OK);
    int32_t t0[2] = {5, 6}, t1[2] = {7, 8};
    uint64_t h0 = xds_prefix_hash(XDS_PREFIX_HASH_ROOT, t0, 2), h1 = xds_prefix_hash(h0, t1, 2);
    int32_t b0 = xds_kv_blocks_alloc(bm), b1 = xds_kv_blocks_alloc(bm);
    CHECK(xds_kv_blocks_publish(bm, b0, h0, XDS_PREFIX_HASH_ROOT, t0) == 1);
    CHECK(xds_kv_blocks_publish(bm, b1, h1, h0, t1) == 1);
    /* A second sequence shares both blocks. */
    CHECK(xds_kv_blocks_lookup(bm, h0, XDS_PREFIX_HASH_ROOT, t0) == b0);
    CHECK(xds_kv_blocks_lookup(bm, h1, h0, t1) == b1);
    CHECK(bm->ref[b0] == 2 && bm->ref[b1] == 2);
    /* Both sequences release (tail block first, as the scheduler does). */
    for (int s = 0; s < 2; s++) {
        CHECK(xds_kv_blocks_unref(bm, b1) == XDS_OK);
        CHECK(xds_kv_blocks_unref(bm, b0) == XDS_OK);
    }
    /* Cached, unreferenced: available but not free, still found. */
    CHECK(bm->n_free == 2 && xds_kv_blocks_n_available(bm) == 4 && xds_kv_blocks_n_used(bm) == 0);
    CHECK(xds_kv_blocks_check(bm) == XDS_OK);
    /* A hit revives a cached block out of the LRU list. */
    CHECK(xds_kv_blocks_lookup(bm, h0, XDS_PREFIX_HASH_ROOT, t0) == b0);
    CHECK(bm->ref[b0] == 1 && xds_prefix_cache_n_evictable(bm->pc) == 1);
    CHECK(xds_kv_blocks_check(bm) == XDS_OK);
    /* Allocation prefers free blocks over evicting cached ones. */
    int32_t f0 = xds_kv_blocks_alloc(bm), f1 = xds_kv_blocks_alloc(bm);
    CHECK(f0 != b0 && f0 != b1 && f1 != b0 && f1 != b1);
    CHECK(bm->n_evicted == 0);
    /* Now only b1 (cached, unreferenced) can be had: evicted and reused. */
    int32_t g = xds_kv_blocks_alloc(bm);
    CHECK(g == b1 && bm->n_evicted == 1);
    CHECK(xds_kv_blocks_lookup(bm, h1, h0, t1) == -1); /* its content is gone */
    /* b0 is referenced: never evicted. */
    CHECK(xds_kv_blocks_alloc(bm) == -1);
    CHECK(xds_prefix_cache_has(bm->pc, b0));
    CHECK(xds_kv_blocks_check(bm) == XDS_OK);
    /* A duplicate publish (same content computed twice) keeps the first. */
    int32_t t2[2] = {1, 1};
    uint64_t h2 = xds_prefix_hash(XDS_PREFIX_HASH_ROOT, t2, 2);
    CHECK(xds_kv_blocks_publish(bm, f0, h2, XDS_PREFIX_HASH_ROOT, t2) == 1);
    CHECK(xds_kv_blocks_publish(bm, f1, h2, XDS_PREFIX_HASH_ROOT, t2) == 0);
    CHECK(xds_kv_blocks_unref(bm, f1) == XDS_OK); /* uncached: straight to free */
    CHECK(bm->n_free == 1);
    CHECK(xds_kv_blocks_unref(bm, f0) == XDS_OK); /* cached: to the LRU */
    CHECK(bm->n_free == 1 && xds_prefix_cache_n_evictable(bm->pc) == 1);
    CHECK(xds_kv_blocks_check(bm) == XDS_OK);
    xds_kv_blocks_free(bm);
}

/* LRU order: blocks released earlier are evicted first. */
static void test_lru_order(void) {
    enum { N = 6 };
    xds_kv_blocks *bm;
    CHECK(xds_kv_blocks_create(N, 1, 1, &bm) == XDS_OK);
    int32_t blk[N], tok[N];
    uint64_t h[N];
    for (int i = 0; i < N; i++) {
        blk[i] = xds_kv_blocks_alloc(bm);
        tok[i] = 1000 + i;
        h[i] = xds_prefix_hash(XDS_PREFIX_HASH_ROOT, &tok[i], 1);
        CHECK(xds_kv_blocks_publish(bm, blk[i], h[i], XDS_PREFIX_HASH_ROOT, &tok[i]) == 1);
    }
    int rel[N] = {3, 0, 5, 1, 4, 2};
    for (int i = 0; i < N; i++) CHECK(xds_kv_blocks_unref(bm, blk[rel[i]]) == XDS_OK);
    /* Touch 3 (hit + release): it becomes most recent. */
    CHECK(xds_kv_blocks_lookup(bm, h[3], XDS_PREFIX_HASH_ROOT, &tok[3]) == blk[3]);
    CHECK(xds_kv_blocks_unref(bm, blk[3]) == XDS_OK);
    int want[N] = {0, 5, 1, 4, 2, 3};
    for (int i = 0; i < N; i++) {
        int32_t b = xds_kv_blocks_alloc(bm);
        CHECK_MSG(b == blk[want[i]], "eviction %d: got block %d, want %d", i, b, blk[want[i]]);
    }
    CHECK(xds_kv_blocks_alloc(bm) == -1);
    CHECK(bm->n_evicted == N);
    CHECK(xds_kv_blocks_check(bm) == XDS_OK);
    xds_kv_blocks_free(bm);
}

/* Random alloc / ref / unref / publish / lookup; the invariants are checked
 * after every operation and the shadow reference counts must agree. */
static void test_random(void) {
    enum { N = 32, BS = 2 };
    xds_kv_blocks *bm;
    CHECK(xds_kv_blocks_create(N, BS, 1, &bm) == XDS_OK);
    int shadow[N] = {0};
    int published[N] = {0};
    int32_t toks[N][BS];
    uint64_t rng = 99;
    int bad = 0;
    for (int it = 0; it < 5000 && !bad; it++) {
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        int op = (int)((rng >> 33) % 5);
        int b = (int)((rng >> 40) % N);
        if (op == 0) {
            int32_t a = xds_kv_blocks_alloc(bm);
            if (a >= 0) {
                if (shadow[a] != 0) bad++;
                shadow[a] = 1;
                published[a] = 0; /* evicted or fresh: content gone */
            } else if (xds_kv_blocks_n_available(bm) != 0) bad++;
        } else if (op == 1) {
            if (shadow[b] > 0) {
                xds_kv_blocks_ref(bm, b);
                shadow[b]++;
            }
        } else if (op == 2) {
            xds_status s = xds_kv_blocks_unref(bm, b);
            if (shadow[b] > 0) {
                if (s != XDS_OK) bad++;
                shadow[b]--;
            } else if (s != XDS_ERR_INVALID) bad++;
        } else if (op == 3) {
            if (shadow[b] > 0 && !published[b]) {
                toks[b][0] = it;
                toks[b][1] = b;
                uint64_t h = xds_prefix_hash(XDS_PREFIX_HASH_ROOT, toks[b], BS);
                if (xds_kv_blocks_publish(bm, b, h, XDS_PREFIX_HASH_ROOT, toks[b]) != 1) bad++;
                published[b] = 1;
            }
        } else {
            if (published[b]) {
                uint64_t h = xds_prefix_hash(XDS_PREFIX_HASH_ROOT, toks[b], BS);
                int32_t got = xds_kv_blocks_lookup(bm, h, XDS_PREFIX_HASH_ROOT, toks[b]);
                if (got != b) bad++;
                else shadow[b]++;
            }
        }
        for (int i = 0; i < N; i++)
            if ((int)bm->ref[i] != shadow[i]) bad++;
        if (xds_kv_blocks_check(bm) != XDS_OK) {
            fprintf(stderr, "after op %d: %s\n", it, xds_err_msg());
            bad++;
        }
    }
    CHECK_MSG(bad == 0, "%d mismatches", bad);
    xds_kv_blocks_free(bm);
}

int main(void) {
    test_refcounts();
    test_cached_lifecycle();
    test_lru_order();
    test_random();
    TEST_MAIN_END();
}
