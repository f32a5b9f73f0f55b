/*
 * kv_block.h — the KV block manager of a DP group: which of the n_blocks KV
 * blocks are free, how many sequences reference each, and (with prefix
 * caching on) which full blocks are kept cached after their last reference
 * is dropped, for later requests that share the prefix.
 *
 * The block manager only does bookkeeping over block ids; the memory behind
 * them is the model's paged KV cache (model/model.h), whose per-sequence block
 * tables the engine fills from the tables it builds with this manager.
 *
 * A block is in exactly one of three states:
 *   free       ref == 0, not cached, on the free stack;
 *   cached     ref == 0, cached, on the prefix cache's LRU list (evictable);
 *   in use     ref >= 1 (possibly also cached, then not on the LRU list).
 * Allocation takes a free block first and evicts the least recently released
 * cached block only when none is free. Only full blocks whose KV has been
 * written are cached, and a cached block is never written again (a sequence
 * that hits it only appends after it), so sharing needs no copy-on-write.
 * Not thread-safe (the engine thread owns it).
 */
#ifndef XDS_ENGINE_KV_BLOCK_H
#define XDS_ENGINE_KV_BLOCK_H

#include <stdint.h>

#include "base/status.h"
#include "engine/prefix_cache.h"

typedef struct xds_kv_blocks {
    int n_blocks;
    int block_size;       /* tokens per block */
    uint32_t *ref;        /* (n_blocks) reference counts */
    int32_t *free_stack;  /* (n_blocks) free block ids; top at n_free - 1 */
    int n_free;           /* free (not cached) blocks */
    xds_prefix_cache *pc; /* NULL when prefix caching is off */
    uint64_t n_evicted;   /* cached blocks evicted so far */
} xds_kv_blocks;

xds_status xds_kv_blocks_create(int n_blocks, int block_size, int enable_prefix_cache,
                                xds_kv_blocks **out);
void xds_kv_blocks_free(xds_kv_blocks *bm);

/* A block with ref 1 (a free one, else an evicted cached one), or -1. */
int32_t xds_kv_blocks_alloc(xds_kv_blocks *bm);
/* Take another reference on an in-use or cached block. */
void xds_kv_blocks_ref(xds_kv_blocks *bm, int32_t b);
/* Drop a reference. At 0 a cached block becomes evictable (LRU tail), any
 * other goes back to the free stack. XDS_ERR_INVALID on a block id out of
 * range or not referenced (a double free), with nothing changed. */
xds_status xds_kv_blocks_unref(xds_kv_blocks *bm, int32_t b);

/* Blocks an allocation could still get (free + evictable cached). */
int xds_kv_blocks_n_available(const xds_kv_blocks *bm);
/* Blocks referenced by at least one sequence. */
int xds_kv_blocks_n_used(const xds_kv_blocks *bm);

/* Prefix cache (no-ops / -1 when off). lookup: the cached block for (hash,
 * parent, tokens) with a reference taken, or -1. publish: cache in-use block
 * b, full with `tokens` (block_size of them) whose KV is written, under hash;
 * returns 1 if cached, 0 if another block already holds that hash. */
int32_t xds_kv_blocks_lookup(xds_kv_blocks *bm, uint64_t hash, uint64_t parent,
                             const int32_t *tokens);
int xds_kv_blocks_publish(xds_kv_blocks *bm, int32_t b, uint64_t hash, uint64_t parent,
                          const int32_t *tokens);

/* Check every invariant above (free stack, LRU list and refs agree);
 * XDS_ERR_INTERNAL naming the first violation. For tests. */
xds_status xds_kv_blocks_check(const xds_kv_blocks *bm);

#endif
