/*
 * kv_block.c — reference-counted KV block allocator with a prefix cache
 * behind it. See kv_block.h for the three block states and the invariants.
 */
#include "engine/kv_block.h"

#include <stdlib.h>
#include <string.h>

xds_status xds_kv_blocks_create(int n_blocks, int block_size, int enable_prefix_cache,
                                xds_kv_blocks **out) {
    if (n_blocks <= 0 || block_size <= 0)
        return xds_err_set(XDS_ERR_INVALID, "kv blocks: n_blocks %d / block_size %d must be > 0",
                           n_blocks, block_size);
    xds_kv_blocks *bm = calloc(1, sizeof(*bm));
    if (!bm) return xds_err_set(XDS_ERR_NOMEM, "kv blocks: out of memory");
    bm->n_blocks = n_blocks;
    bm->block_size = block_size;
    bm->ref = calloc((size_t)n_blocks, sizeof(*bm->ref));
    bm->free_stack = malloc((size_t)n_blocks * sizeof(*bm->free_stack));
    if (!bm->ref || !bm->free_stack) {
        xds_kv_blocks_free(bm);
        return xds_err_set(XDS_ERR_NOMEM, "kv blocks: out of memory for %d blocks", n_blocks);
    }
    if (enable_prefix_cache) {
        xds_status s = xds_prefix_cache_create(n_blocks, block_size, &bm->pc);
        if (s != XDS_OK) {
            xds_kv_blocks_free(bm);
            return s;
        }
    }
    /* Lowest ids on top, so allocation order is 0, 1, 2, ... */
    for (int i = 0; i < n_blocks; i++) bm->free_stack[i] = n_blocks - 1 - i;
    bm->n_free = n_blocks;
    *out = bm;
    return XDS_OK;
}

void xds_kv_blocks_free(xds_kv_blocks *bm) {
    if (!bm) return;
    xds_prefix_cache_free(bm->pc);
    free(bm->ref);
    free(bm->free_stack);
    free(bm);
}

int32_t xds_kv_blocks_alloc(xds_kv_blocks *bm) {
    int32_t b = -1;
    if (bm->n_free > 0) {
        b = bm->free_stack[--bm->n_free];
    } else if (bm->pc) {
        b = xds_prefix_cache_evict(bm->pc);
        if (b >= 0) bm->n_evicted++;
    }
    if (b < 0) return -1;
    XDS_ASSERT(bm->ref[b] == 0);
    bm->ref[b] = 1;
    return b;
}

void xds_kv_blocks_ref(xds_kv_blocks *bm, int32_t b) {
    XDS_ASSERT(b >= 0 && b < bm->n_blocks);
    if (bm->ref[b] == 0) {
        /* Only a cached block may be revived from ref 0. */
        XDS_ASSERT(bm->pc && xds_prefix_cache_has(bm->pc, b));
        xds_prefix_cache_lru_unlink(bm->pc, b);
    }
    bm->ref[b]++;
}

xds_status xds_kv_blocks_unref(xds_kv_blocks *bm, int32_t b) {
    if (b < 0 || b >= bm->n_blocks)
        return xds_err_set(XDS_ERR_INVALID, "kv blocks: unref of block %d out of range [0, %d)",
                           (int)b, bm->n_blocks);
    if (bm->ref[b] == 0)
        return xds_err_set(XDS_ERR_INVALID, "kv blocks: unref of unreferenced block %d (double free)",
                           (int)b);
    if (--bm->ref[b] == 0) {
        if (bm->pc && xds_prefix_cache_has(bm->pc, b)) xds_prefix_cache_lru_push(bm->pc, b);
        else bm->free_stack[bm->n_free++] = b;
    }
    return XDS_OK;
}

int xds_kv_blocks_n_available(const xds_kv_blocks *bm) {
    return bm->n_free + (bm->pc ? xds_prefix_cache_n_evictable(bm->pc) : 0);
}

int xds_kv_blocks_n_used(const xds_kv_blocks *bm) {
    return bm->n_blocks - xds_kv_blocks_n_available(bm);
}

int32_t xds_kv_blocks_lookup(xds_kv_blocks *bm, uint64_t hash, uint64_t parent,
                             const int32_t *tokens) {
    if (!bm->pc) return -1;
    int32_t b = xds_prefix_cache_find(bm->pc, hash, parent, tokens);
    if (b >= 0) xds_kv_blocks_ref(bm, b);
    return b;
}

int xds_kv_blocks_publish(xds_kv_blocks *bm, int32_t b, uint64_t hash, uint64_t parent,
                          const int32_t *tokens) {
    if (!bm->pc) return 0;
    XDS_ASSERT(b >= 0 && b < bm->n_blocks && bm->ref[b] > 0);
    return xds_prefix_cache_insert(bm->pc, b, hash, parent, tokens);
}

xds_status xds_kv_blocks_check(const xds_kv_blocks *bm) {
    xds_status s = XDS_OK;
    uint8_t *seen = calloc((size_t)bm->n_blocks, 1);
    int32_t *lru = malloc((size_t)bm->n_blocks * sizeof(int32_t));
    if (!seen || !lru) {
        free(seen);
        free(lru);
        return xds_err_set(XDS_ERR_NOMEM, "kv blocks check: out of memory");
    }
    for (int i = 0; i < bm->n_free && s == XDS_OK; i++) {
        int32_t b = bm->free_stack[i];
        if (b < 0 || b >= bm->n_blocks || seen[b])
            s = xds_err_set(XDS_ERR_INTERNAL, "kv blocks: free stack entry %d (block %d) bad or repeated", i, (int)b);
        else if (bm->ref[b] != 0)
            s = xds_err_set(XDS_ERR_INTERNAL, "kv blocks: free block %d has ref %u", (int)b, bm->ref[b]);
        else if (bm->pc && xds_prefix_cache_has(bm->pc, b))
            s = xds_err_set(XDS_ERR_INTERNAL, "kv blocks: free block %d is cached", (int)b);
        else
            seen[b] = 1;
    }
    int n_lru = bm->pc ? xds_prefix_cache_lru_list(bm->pc, lru, bm->n_blocks) : 0;
    if (s == XDS_OK && bm->pc && n_lru != xds_prefix_cache_n_evictable(bm->pc))
        s = xds_err_set(XDS_ERR_INTERNAL, "kv blocks: LRU list length %d != count %d", n_lru,
                        xds_prefix_cache_n_evictable(bm->pc));
    for (int i = 0; i < n_lru && s == XDS_OK; i++) {
        int32_t b = lru[i];
        if (seen[b])
            s = xds_err_set(XDS_ERR_INTERNAL, "kv blocks: block %d both free and evictable", (int)b);
        else if (bm->ref[b] != 0)
            s = xds_err_set(XDS_ERR_INTERNAL, "kv blocks: evictable block %d has ref %u", (int)b, bm->ref[b]);
        else if (!xds_prefix_cache_has(bm->pc, b))
            s = xds_err_set(XDS_ERR_INTERNAL, "kv blocks: evictable block %d is not cached", (int)b);
        else
            seen[b] = 1;
    }
    for (int b = 0; b < bm->n_blocks && s == XDS_OK; b++)
        if (!seen[b] && bm->ref[b] == 0)
            s = xds_err_set(XDS_ERR_INTERNAL, "kv blocks: block %d has ref 0 but is neither free nor evictable", b);
    free(seen);
    free(lru);
    return s;
}
