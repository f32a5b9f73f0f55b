/*
 * prefix_cache.c — hash map (open addressing, linear probing, backward-shift
 * deletion) from chain hash to block id, plus an intrusive doubly linked LRU
 * list of unreferenced cached blocks. See prefix_cache.h for the invariants.
 *
 * The map stores block ids; the key of a slot is meta[id].hash. Its capacity
 * is a power of two at least twice the number of blocks, so it never fills.
 */
#include "engine/prefix_cache.h"

#include <stdlib.h>
#include <string.h>

typedef struct pc_meta {
    uint64_t hash;   /* chain hash (valid when cached) */
    uint64_t parent; /* parent chain hash */
    int32_t prev, next; /* LRU links (-1 = none) */
    uint8_t cached;
    uint8_t on_lru;
} pc_meta;

struct xds_prefix_cache {
    int n_blocks;
    int block_size;
    pc_meta *meta;    /* (n_blocks) */
    int32_t *tokens;  /* (n_blocks, block_size) tokens of each cached block */
    int32_t *slots;   /* (cap) block id or -1 */
    uint32_t mask;    /* cap - 1 */
    int32_t lru_head, lru_tail; /* head = least recently released */
    int n_lru;
    int n_cached;
};

static uint64_t mix64(uint64_t x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

uint64_t xds_prefix_hash(uint64_t parent, const int32_t *tokens, int n) {
    uint64_t h = mix64(parent ^ 0x9e3779b97f4a7c15ull) ^ (uint64_t)n;
    for (int i = 0; i < n; i++)
        h = mix64(h ^ ((uint64_t)(uint32_t)tokens[i] + 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1)));
    return h ? h : 1;
}

xds_status xds_prefix_cache_create(int n_blocks, int block_size, xds_prefix_cache **out) {
    if (n_blocks <= 0 || block_size <= 0)
        return xds_err_set(XDS_ERR_INVALID, "prefix cache: n_blocks %d / block_size %d must be > 0",
                           n_blocks, block_size);
    xds_prefix_cache *pc = calloc(1, sizeof(*pc));
    if (!pc) return xds_err_set(XDS_ERR_NOMEM, "prefix cache: out of memory");
    uint32_t cap = 16;
    while (cap < 2u * (uint32_t)n_blocks) cap <<= 1;
    pc->n_blocks = n_blocks;
    pc->block_size = block_size;
    pc->meta = calloc((size_t)n_blocks, sizeof(*pc->meta));
    pc->tokens = malloc((size_t)n_blocks * block_size * sizeof(int32_t));
    pc->slots = malloc(cap * sizeof(int32_t));
    if (!pc->meta || !pc->tokens || !pc->slots) {
        xds_prefix_cache_free(pc);
        return xds_err_set(XDS_ERR_NOMEM, "prefix cache: out of memory for %d blocks", n_blocks);
    }
    for (uint32_t i = 0; i < cap; i++) pc->slots[i] = -1;
    for (int b = 0; b < n_blocks; b++) pc->meta[b].prev = pc->meta[b].next = -1;
    pc->mask = cap - 1;
    pc->lru_head = pc->lru_tail = -1;
    *out = pc;
    return XDS_OK;
}

void xds_prefix_cache_free(xds_prefix_cache *pc) {
    if (!pc) return;
    free(pc->meta);
    free(pc->tokens);
    free(pc->slots);
    free(pc);
}

/* Slot holding hash, or the empty slot where it would go. */
static uint32_t pc_probe(const xds_prefix_cache *pc, uint64_t hash) {
    uint32_t i = (uint32_t)hash & pc->mask;
    while (pc->slots[i] >= 0 && pc->meta[pc->slots[i]].hash != hash) i = (i + 1) & pc->mask;
    return i;
}

int32_t xds_prefix_cache_find(const xds_prefix_cache *pc, uint64_t hash, uint64_t parent,
                              const int32_t *tokens) {
    int32_t b = pc->slots[pc_probe(pc, hash)];
    if (b < 0) return -1;
    if (pc->meta[b].parent != parent) return -1;
    if (memcmp(pc->tokens + (size_t)b * pc->block_size, tokens,
               (size_t)pc->block_size * sizeof(int32_t)) != 0)
        return -1;
    return b;
}

int xds_prefix_cache_insert(xds_prefix_cache *pc, int32_t b, uint64_t hash, uint64_t parent,
                            const int32_t *tokens) {
    XDS_ASSERT(b >= 0 && b < pc->n_blocks);
    if (pc->meta[b].cached) return 0;
    uint32_t i = pc_probe(pc, hash);
    if (pc->slots[i] >= 0) return 0;
    pc->slots[i] = b;
    pc->meta[b].hash = hash;
    pc->meta[b].parent = parent;
    pc->meta[b].cached = 1;
    memcpy(pc->tokens + (size_t)b * pc->block_size, tokens, (size_t)pc->block_size * sizeof(int32_t));
    pc->n_cached++;
    return 1;
}

int xds_prefix_cache_has(const xds_prefix_cache *pc, int32_t b) {
    return b >= 0 && b < pc->n_blocks && pc->meta[b].cached;
}

void xds_prefix_cache_lru_unlink(xds_prefix_cache *pc, int32_t b) {
    pc_meta *m = &pc->meta[b];
    if (!m->on_lru) return;
    if (m->prev >= 0) pc->meta[m->prev].next = m->next;
    else pc->lru_head = m->next;
    if (m->next >= 0) pc->meta[m->next].prev = m->prev;
    else pc->lru_tail = m->prev;
    m->prev = m->next = -1;
    m->on_lru = 0;
    pc->n_lru--;
}

void xds_prefix_cache_lru_push(xds_prefix_cache *pc, int32_t b) {
    XDS_ASSERT(b >= 0 && b < pc->n_blocks && pc->meta[b].cached && !pc->meta[b].on_lru);
    pc_meta *m = &pc->meta[b];
    m->prev = pc->lru_tail;
    m->next = -1;
    if (pc->lru_tail >= 0) pc->meta[pc->lru_tail].next = b;
    else pc->lru_head = b;
    pc->lru_tail = b;
    m->on_lru = 1;
    pc->n_lru++;
}

void xds_prefix_cache_remove(xds_prefix_cache *pc, int32_t b) {
    if (!xds_prefix_cache_has(pc, b)) return;
    xds_prefix_cache_lru_unlink(pc, b);
    uint32_t i = pc_probe(pc, pc->meta[b].hash);
    XDS_ASSERT(pc->slots[i] == b);
    /* Backward-shift deletion: move later entries of the probe run into the
     * hole when their home slot does not lie cyclically in (hole, j]. */
    uint32_t hole = i, j = i;
    for (;;) {
        j = (j + 1) & pc->mask;
        int32_t c = pc->slots[j];
        if (c < 0) break;
        uint32_t home = (uint32_t)pc->meta[c].hash & pc->mask;
        int in_range = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!in_range) {
            pc->slots[hole] = c;
            hole = j;
        }
    }
    pc->slots[hole] = -1;
    pc->meta[b].cached = 0;
    pc->n_cached--;
}

int32_t xds_prefix_cache_evict(xds_prefix_cache *pc) {
    int32_t b = pc->lru_head;
    if (b < 0) return -1;
    xds_prefix_cache_remove(pc, b);
    return b;
}

int xds_prefix_cache_n_evictable(const xds_prefix_cache *pc) { return pc->n_lru; }
int xds_prefix_cache_n_cached(const xds_prefix_cache *pc) { return pc->n_cached; }

int xds_prefix_cache_lru_list(const xds_prefix_cache *pc, int32_t *out, int cap) {
    int n = 0;
    for (int32_t b = pc->lru_head; b >= 0 && n < cap; b = pc->meta[b].next) out[n++] = b;
    return n;
}

int xds_prefix_cache_hashes(const xds_prefix_cache *pc, uint64_t *out, int cap) {
    int n = 0;
    for (int b = 0; b < pc->n_blocks && n < cap; b++)
        if (pc->meta[b].cached) out[n++] = pc->meta[b].hash;
    return n;
}
