/*
 * kv_cache.c — the paged KV cache: one pool of blocks of block_size tokens per
 * layer, a reference-counted block allocator, and a block table per sequence
 * slot (see model.h).
 *
 * Invariants: a block is either free (ref 0, on the free stack) or referenced
 * by ref tables; a sequence's table never holds a free block; K/V rows of a
 * position live at block table[pos / block_size], slot pos % block_size.
 */
#include <stdlib.h>
#include <string.h>

#include "model/model.h"

xds_status xds_kv_cache_create(int n_layer, int k_dim, int v_dim, int n_blocks, int block_size,
                               int max_seqs, xds_kv_cache **out) {
    if (n_layer <= 0 || k_dim <= 0 || v_dim < 0 || n_blocks <= 0 || block_size <= 0 ||
        max_seqs <= 0 || n_blocks > INT32_MAX / block_size)
        return xds_err_set(XDS_ERR_INVALID,
                           "kv cache: invalid size (layers %d, k %d, v %d, blocks %d x %d, seqs %d)",
                           n_layer, k_dim, v_dim, n_blocks, block_size, max_seqs);
    xds_kv_cache *kv = calloc(1, sizeof *kv);
    if (!kv) return xds_err_set(XDS_ERR_NOMEM, "kv cache: out of memory");
    kv->n_layer = n_layer;
    kv->k_dim = k_dim;
    kv->v_dim = v_dim;
    kv->block_size = block_size;
    kv->n_blocks = n_blocks;
    kv->max_seqs = max_seqs;
    size_t per_layer = (size_t)n_blocks * block_size;
    kv->k = malloc(sizeof(float) * per_layer * k_dim * n_layer);
    kv->v = v_dim ? malloc(sizeof(float) * per_layer * v_dim * n_layer) : NULL;
    kv->ref = calloc(n_blocks, sizeof *kv->ref);
    kv->free = malloc(sizeof *kv->free * n_blocks);
    kv->seqs = calloc(max_seqs, sizeof *kv->seqs);
    if (!kv->k || (v_dim && !kv->v) || !kv->ref || !kv->free || !kv->seqs) {
        xds_kv_cache_free(kv);
        return xds_err_set(XDS_ERR_NOMEM, "kv cache: out of memory for %d blocks of %d tokens",
                           n_blocks, block_size);
    }
    /* stack with block 0 on top so allocation order is 0, 1, 2, ... */
    for (int i = 0; i < n_blocks; i++) kv->free[i] = n_blocks - 1 - i;
    kv->n_free = n_blocks;
    *out = kv;
    return XDS_OK;
}

xds_status xds_model_kv_cache_create(const xds_model *m, int n_ctx_total, int block_size,
                                     int max_seqs, xds_kv_cache **out) {
    if (block_size <= 0) block_size = 16;
    if (n_ctx_total <= 0)
        return xds_err_set(XDS_ERR_INVALID, "kv cache: context size %d must be positive",
                           n_ctx_total);
    int n_blocks = (n_ctx_total + block_size - 1) / block_size;
    int kd, vd;
    xds_model_kv_dims(m, &kd, &vd);
    return xds_kv_cache_create(m->cfg.n_layer, kd, vd, n_blocks, block_size, max_seqs, out);
}

void xds_kv_cache_free(xds_kv_cache *kv) {
    if (!kv) return;
    if (kv->seqs)
        for (int s = 0; s < kv->max_seqs; s++) free(kv->seqs[s].blocks);
    free(kv->seqs);
    free(kv->k);
    free(kv->v);
    free(kv->ref);
    free(kv->free);
    free(kv);
}

int32_t xds_kv_block_alloc(xds_kv_cache *kv) {
    if (kv->n_free == 0) return -1;
    int32_t b = kv->free[--kv->n_free];
    XDS_ASSERT(kv->ref[b] == 0);
    kv->ref[b] = 1;
    return b;
}

void xds_kv_block_ref(xds_kv_cache *kv, int32_t b) {
    XDS_ASSERT(b >= 0 && b < kv->n_blocks && kv->ref[b] > 0 && kv->ref[b] < UINT16_MAX);
    kv->ref[b]++;
}

void xds_kv_block_unref(xds_kv_cache *kv, int32_t b) {
    XDS_ASSERT(b >= 0 && b < kv->n_blocks && kv->ref[b] > 0);
    if (--kv->ref[b] == 0) kv->free[kv->n_free++] = b;
}

static xds_status seq_grow(xds_kv_cache *kv, xds_kv_seq *s, int need) {
    if (need <= s->cap) return XDS_OK;
    int cap = s->cap ? s->cap : 8;
    while (cap < need) cap *= 2;
    int32_t *nb = realloc(s->blocks, sizeof *nb * cap);
    if (!nb) return xds_err_set(XDS_ERR_NOMEM, "kv cache: out of memory for a block table");
    s->blocks = nb;
    s->cap = cap;
    return XDS_OK;
}

xds_status xds_kv_seq_reserve(xds_kv_cache *kv, int seq, int n_pos) {
    if (seq < 0 || seq >= kv->max_seqs)
        return xds_err_set(XDS_ERR_INVALID, "kv cache: sequence slot %d out of range [0, %d)", seq,
                           kv->max_seqs);
    xds_kv_seq *s = &kv->seqs[seq];
    int need = (n_pos + kv->block_size - 1) / kv->block_size;
    if (need <= s->n_blocks) return XDS_OK;
    if (need - s->n_blocks > kv->n_free)
        return xds_err_set(XDS_ERR_NOMEM,
                           "kv cache: %d positions need %d more blocks, only %d of %d free", n_pos,
                           need - s->n_blocks, kv->n_free, kv->n_blocks);
    XDS_TRY(seq_grow(kv, s, need));
    while (s->n_blocks < need) s->blocks[s->n_blocks++] = xds_kv_block_alloc(kv);
    return XDS_OK;
}

xds_status xds_kv_seq_append_block(xds_kv_cache *kv, int seq, int32_t block) {
    if (seq < 0 || seq >= kv->max_seqs || block < 0 || block >= kv->n_blocks || kv->ref[block] == 0)
        return xds_err_set(XDS_ERR_INVALID, "kv cache: cannot append block %d to sequence %d",
                           block, seq);
    xds_kv_seq *s = &kv->seqs[seq];
    XDS_TRY(seq_grow(kv, s, s->n_blocks + 1));
    xds_kv_block_ref(kv, block);
    s->blocks[s->n_blocks++] = block;
    return XDS_OK;
}

void xds_kv_seq_truncate(xds_kv_cache *kv, int seq, int n_pos) {
    XDS_ASSERT(seq >= 0 && seq < kv->max_seqs);
    xds_kv_seq *s = &kv->seqs[seq];
    if (n_pos < 0) n_pos = 0;
    int keep = (n_pos + kv->block_size - 1) / kv->block_size;
    while (s->n_blocks > keep) xds_kv_block_unref(kv, s->blocks[--s->n_blocks]);
}

xds_status xds_kv_seq_set_blocks(xds_kv_cache *kv, int seq, const int32_t *blocks, int n) {
    if (seq < 0 || seq >= kv->max_seqs || n < 0)
        return xds_err_set(XDS_ERR_INVALID, "kv cache: cannot set %d blocks on sequence %d", n, seq);
    for (int i = 0; i < n; i++)
        if (blocks[i] < 0 || blocks[i] >= kv->n_blocks)
            return xds_err_set(XDS_ERR_INVALID, "kv cache: block %d of sequence %d out of range [0, %d)",
                               blocks[i], seq, kv->n_blocks);
    xds_kv_seq *s = &kv->seqs[seq];
    XDS_TRY(seq_grow(kv, s, n));
    if (n) memcpy(s->blocks, blocks, sizeof *blocks * n);
    s->n_blocks = n;
    return XDS_OK;
}

int xds_kv_seq_capacity(const xds_kv_cache *kv, int seq) {
    if (seq < 0 || seq >= kv->max_seqs) return 0;
    return kv->seqs[seq].n_blocks * kv->block_size;
}

static inline size_t kv_row(const xds_kv_cache *kv, int layer, int seq, int pos) {
    const xds_kv_seq *s = &kv->seqs[seq];
    int bi = pos / kv->block_size;
    XDS_ASSERT(layer >= 0 && layer < kv->n_layer && bi < s->n_blocks);
    return ((size_t)layer * kv->n_blocks + s->blocks[bi]) * kv->block_size + pos % kv->block_size;
}

float *xds_kv_k(xds_kv_cache *kv, int layer, int seq, int pos) {
    return kv->k + kv_row(kv, layer, seq, pos) * kv->k_dim;
}

float *xds_kv_v(xds_kv_cache *kv, int layer, int seq, int pos) {
    return kv->v + kv_row(kv, layer, seq, pos) * kv->v_dim;
}
