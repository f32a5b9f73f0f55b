/*
 * prefix_cache.h — the prefix cache of the KV block manager: a map from the
 * content hash of a full KV block to the block that holds it, and an LRU list
 * of cached blocks that no sequence references (the only blocks that may be
 * evicted).
 *
 * A block's hash is a chain: hash(parent_hash, tokens of the block), where
 * parent_hash is the hash of the previous block of the same sequence (a fixed
 * root value for the first block). Equal hashes therefore mean equal token
 * prefixes up to and including the block (barring a 64-bit collision, which
 * find() guards against further by comparing the parent hash and the block's
 * tokens).
 *
 * Invariants: a block is in the map at most once and a hash maps to at most
 * one block; a block is on the LRU list iff it is cached and unreferenced
 * (the block manager, kv_block.c, keeps that true); the LRU head is the least
 * recently released block. Not thread-safe (the engine thread owns it).
 */
#ifndef XDS_ENGINE_PREFIX_CACHE_H
#define XDS_ENGINE_PREFIX_CACHE_H

#include <stdint.h>

#include "base/status.h"

/* Parent hash of the first block of every sequence. */
#define XDS_PREFIX_HASH_ROOT 0x6a09e667f3bcc908ull

typedef struct xds_prefix_cache xds_prefix_cache;

/* A cache over block ids [0, n_blocks) of block_size tokens each. */
xds_status xds_prefix_cache_create(int n_blocks, int block_size, xds_prefix_cache **out);
void xds_prefix_cache_free(xds_prefix_cache *pc);

/* Chain hash of a block: parent hash and its n tokens. Never returns 0. */
uint64_t xds_prefix_hash(uint64_t parent, const int32_t *tokens, int n);

/* The block cached under `hash` whose parent hash and block_size tokens
 * match, or -1. Does not change references or LRU order. */
int32_t xds_prefix_cache_find(const xds_prefix_cache *pc, uint64_t hash, uint64_t parent,
                              const int32_t *tokens);
/* Cache block b (its KV holds `tokens`, block_size of them) under hash.
 * Returns 1 if cached, 0 if the hash is already cached (by another block) or
 * b already is cached (the caller keeps b uncached in that case). */
int xds_prefix_cache_insert(xds_prefix_cache *pc, int32_t b, uint64_t hash, uint64_t parent,
                            const int32_t *tokens);
/* Whether b is cached. */
int xds_prefix_cache_has(const xds_prefix_cache *pc, int32_t b);
/* Drop b from the map (and the LRU list if on it). No-op if not cached. */
void xds_prefix_cache_remove(xds_prefix_cache *pc, int32_t b);

/* LRU of unreferenced cached blocks. push: b (cached) becomes unreferenced,
 * goes to the tail (most recent). unlink: b is referenced again. */
void xds_prefix_cache_lru_push(xds_prefix_cache *pc, int32_t b);
void xds_prefix_cache_lru_unlink(xds_prefix_cache *pc, int32_t b);
/* Evict the least recently released block: removes it from the LRU list and
 * the map and returns it, or -1 if the list is empty. */
int32_t xds_prefix_cache_evict(xds_prefix_cache *pc);
/* Blocks on the LRU list / blocks cached in all. */
int xds_prefix_cache_n_evictable(const xds_prefix_cache *pc);
int xds_prefix_cache_n_cached(const xds_prefix_cache *pc);
/* The chain hashes of the cached blocks (in block id order), up to cap of
 * them; returns the count written. For summaries published to other
 * processes (deploy/pd_pick.h). */
int xds_prefix_cache_hashes(const xds_prefix_cache *pc, uint64_t *out, int cap);
/* The LRU list from least to most recent, up to cap ids; returns the count
 * written (for tests and debugging). */
int xds_prefix_cache_lru_list(const xds_prefix_cache *pc, int32_t *out, int cap);

#endif
