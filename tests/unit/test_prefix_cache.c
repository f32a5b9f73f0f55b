/*
 * test_prefix_cache.c — the prefix cache's hash chain, map (including
 * deletion inside probe runs), collision guards and LRU order, checked
 * against a brute-force model of the same operations.
 */
#include "engine/prefix_cache.h"

#include <stdint.h>

#include "test.h"

static void test_hash_chain(void) {
    int32_t a[4] = {1, 2, 3, 4}, b[4] = {1, 2, 3, 5};
    uint64_t ha = xds_prefix_hash(XDS_PREFIX_HASH_ROOT, a, 4);
    CHECK(ha == xds_prefix_hash(XDS_PREFIX_HASH_ROOT, a, 4)); /* deterministic */
    CHECK(ha != xds_prefix_hash(XDS_PREFIX_HASH_ROOT, b, 4)); /* content */
    /* The same block content under a different parent hashes differently. */
    uint64_t h1 = xds_prefix_hash(ha, a, 4);
    uint64_t h2 = xds_prefix_hash(xds_prefix_hash(XDS_PREFIX_HASH_ROOT, b, 4), a, 4);
    CHECK(h1 != h2);
    CHECK(h1 != ha);
    /* Order of tokens matters; length matters. */
    int32_t c[4] = {2, 1, 3, 4};
    CHECK(ha != xds_prefix_hash(XDS_PREFIX_HASH_ROOT, c, 4));
    CHECK(xds_prefix_hash(XDS_PREFIX_HASH_ROOT, a, 3) != xds_prefix_hash(XDS_PREFIX_HASH_ROOT, a, 4));
    CHECK(xds_prefix_hash(0, a, 0) != 0);
}

static void test_find_insert(void) {
    xds_prefix_cache *pc;
    CHECK(xds_prefix_cache_create(0, 4, &pc) == XDS_ERR_INVALID);
    CHECK(xds_prefix_cache_create(8, 4, &pc) == XDS_OK);
    int32_t t1[4] = {10, 11, 12, 13}, t2[4] = {20, 21, 22, 23};
    uint64_t h1 = xds_prefix_hash(XDS_PREFIX_HASH_ROOT, t1, 4);
    uint64_t h2 = xds_prefix_hash(h1, t2, 4);
    CHECK(xds_prefix_cache_find(pc, h1, XDS_PREFIX_HASH_ROOT, t1) == -1);
    CHECK(xds_prefix_cache_insert(pc, 3, h1, XDS_PREFIX_HASH_ROOT, t1) == 1);
    CHECK(xds_prefix_cache_insert(pc, 5, h2, h1, t2) == 1);
    CHECK(xds_prefix_cache_has(pc, 3) && xds_prefix_cache_has(pc, 5) && !xds_prefix_cache_has(pc, 4));
    CHECK(xds_prefix_cache_find(pc, h1, XDS_PREFIX_HASH_ROOT, t1) == 3);
    CHECK(xds_prefix_cache_find(pc, h2, h1, t2) == 5);
    /* Collision guards: same hash but other tokens or other parent: miss. */
    CHECK(xds_prefix_cache_find(pc, h2, h1, t1) == -1);
    CHECK(xds_prefix_cache_find(pc, h2, XDS_PREFIX_HASH_ROOT, t2) == -1);
    /* A hash maps to one block; a block is cached once. */
    CHECK(xds_prefix_cache_insert(pc, 6, h1, XDS_PREFIX_HASH_ROOT, t1) == 0);
    CHECK(!xds_prefix_cache_has(pc, 6));
    CHECK(xds_prefix_cache_insert(pc, 3, h2 + 1, h1, t2) == 0);
    CHECK(xds_prefix_cache_n_cached(pc) == 2);
    xds_prefix_cache_remove(pc, 3);
    CHECK(!xds_prefix_cache_has(pc, 3));
    CHECK(xds_prefix_cache_find(pc, h1, XDS_PREFIX_HASH_ROOT, t1) == -1);
    CHECK(xds_prefix_cache_find(pc, h2, h1, t2) == 5);
    xds_prefix_cache_remove(pc, 3); /* no-op */
    CHECK(xds_prefix_cache_n_cached(pc) == 1);
    xds_prefix_cache_free(pc);
}

static void test_lru(void) {
    xds_prefix_cache *pc;
    CHECK(xds_prefix_cache_create(6, 2, &pc) == XDS_OK);
    int32_t t[6][2];
    uint64_t h[6];
    for (int b = 0; b < 6; b++) {
        t[b][0] = b;
        t[b][1] = 100 + b;
        h[b] = xds_prefix_hash(XDS_PREFIX_HASH_ROOT, t[b], 2);
        CHECK(xds_prefix_cache_insert(pc, b, h[b], XDS_PREFIX_HASH_ROOT, t[b]) == 1);
    }
    CHECK(xds_prefix_cache_evict(pc) == -1); /* nothing released yet */
    int order[6] = {4, 1, 5, 0, 3, 2};
    for (int i = 0; i < 6; i++) xds_prefix_cache_lru_push(pc, order[i]);
    CHECK(xds_prefix_cache_n_evictable(pc) == 6);
    xds_prefix_cache_lru_unlink(pc, 5); /* re-referenced */
    xds_prefix_cache_lru_unlink(pc, 4); /* the head */
    xds_prefix_cache_lru_unlink(pc, 2); /* the tail */
    int32_t got[6];
    int n = xds_prefix_cache_lru_list(pc, got, 6);
    CHECK(n == 3 && got[0] == 1 && got[1] == 0 && got[2] == 3);
    xds_prefix_cache_lru_push(pc, 5); /* released again: most recent */
    CHECK(xds_prefix_cache_evict(pc) == 1);
    CHECK(!xds_prefix_cache_has(pc, 1));
    CHECK(xds_prefix_cache_find(pc, h[1], XDS_PREFIX_HASH_ROOT, t[1]) == -1);
    CHECK(xds_prefix_cache_evict(pc) == 0);
    CHECK(xds_prefix_cache_evict(pc) == 3);
    CHECK(xds_prefix_cache_evict(pc) == 5);
    CHECK(xds_prefix_cache_evict(pc) == -1);
    /* Blocks still referenced (4, 2) stay cached. */
    CHECK(xds_prefix_cache_find(pc, h[4], XDS_PREFIX_HASH_ROOT, t[4]) == 4);
    CHECK(xds_prefix_cache_find(pc, h[2], XDS_PREFIX_HASH_ROOT, t[2]) == 2);
    CHECK(xds_prefix_cache_n_cached(pc) == 2);
    xds_prefix_cache_free(pc);
}

/* Random inserts / removes against a brute-force table, with hashes forced
 * into few home slots so deletion inside probe runs (and wrap-around) is
 * exercised. */
static void test_map_random(void) {
    enum { NB = 64 };
    xds_prefix_cache *pc;
    CHECK(xds_prefix_cache_create(NB, 1, &pc) == XDS_OK);
    uint64_t key[NB];
    int cached[NB] = {0};
    uint64_t rng = 12345;
    int bad = 0;
    for (int it = 0; it < 20000; it++) {
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        int b = (int)((rng >> 33) % NB);
        if (!cached[b]) {
            /* few distinct low bits -> long probe runs; the high bits keep keys distinct */
            uint64_t k = ((uint64_t)it << 20) | (((rng >> 13) % 5) + 125);
            int32_t tok = (int32_t)b;
            if (xds_prefix_cache_insert(pc, b, k, 7, &tok) != 1) bad++;
            key[b] = k;
            cached[b] = 1;
        } else {
            xds_prefix_cache_remove(pc, b);
            cached[b] = 0;
        }
        if (it % 97 == 0) {
            int n = 0;
            for (int j = 0; j < NB; j++) {
                int32_t tok = j;
                if (cached[j]) {
                    n++;
                    if (xds_prefix_cache_find(pc, key[j], 7, &tok) != j) bad++;
                } else if (xds_prefix_cache_has(pc, j)) bad++;
            }
            if (n != xds_prefix_cache_n_cached(pc)) bad++;
        }
    }
    CHECK_MSG(bad == 0, "%d mismatches against the brute-force map", bad);
    xds_prefix_cache_free(pc);
}

int main(void) {
    test_hash_chain();
    test_find_insert();
    test_lru();
    test_map_random();
    TEST_MAIN_END();
}
