/*
 * pd.c — disaggregated prefill / decode (pd.h).
 *
 * The prefill pool is an xds_kv_cache whose K and V arrays are swapped for
 * one registered XCCL region (K at offset 0, V after it) right after
 * creation, so the attention unit writes straight into memory the decode side
 * can read with xccl_get; the original arrays are put back before the cache
 * is freed. Block (layer l, block b) of K is the contiguous range
 * ((l * pool_blocks + b) * block_size) * k_dim floats. A pull is one
 * xccl_getv of one range per (K/V, layer, run of blocks consecutive on both
 * sides) — one liveness check and one completion notification per pull.
 */
#define _GNU_SOURCE
#include "deploy/pd.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <xccl.h>

#include "base/log.h"
#include "engine/kv_block.h"

#define PD_MAGIC 0x58445350u /* "XDSP" */
enum { PD_TASK = 1, PD_FREE = 2, PD_REQ = 3, PD_STOP = 4 };

typedef struct pd_free_msg {
    uint32_t magic, cmd;
    uint64_t req_id;
} pd_free_msg;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static xds_status xerr(xccl_status s, const char *what) {
    xds_status code = s == XCCL_ERR_PEER ? XDS_ERR_PEER : s == XCCL_ERR_TIMEOUT ? XDS_ERR_TIMEOUT : XDS_ERR_IO;
    return xds_err_set(code, "deploy pd: %s: %s", what, xccl_err_msg());
}

typedef struct pd_held {
    uint64_t req_id; /* 0: slot unused */
    double since;
} pd_held;

struct xds_pd_prefill {
    const xds_model *m;
    xccl_comm *comm;
    xds_pd_prefill_opts o;
    xds_kv_cache *kv;
    float *own_k, *own_v; /* the cache's own arrays, restored before free */
    xccl_region region;
    xds_model_ctx *ctx;
    pd_held *held;        /* (max_seqs) task per sequence slot */
    int n_held;
    float *logits;        /* (n_vocab) */
    int32_t *pos, *seq;   /* (chunk) */
    uint32_t timeout_ms;  /* the comm deadline restored after each poll */
    size_t logits_off;    /* region offset of the (max_seqs, n_vocab) logits area */
    xds_kv_blocks *bm;    /* block manager with prefix cache: blocks of released tasks stay cached */
    uint64_t cached_tokens, computed_tokens;
};

xds_status xds_pd_prefill_create(const xds_model *m, xds_pd_prefill_opts *o, xccl_comm *comm, xds_pd_prefill **out) {
    if (o->block_size <= 0 || o->pool_tokens <= 0 || o->max_seqs <= 0 || o->chunk <= 0)
        return xds_err_set(XDS_ERR_INVALID, "deploy pd: bad prefill options (pool %d, block %d, seqs %d, chunk %d)",
                           o->pool_tokens, o->block_size, o->max_seqs, o->chunk);
    xds_pd_prefill *p = calloc(1, sizeof *p);
    if (!p) return xds_err_set(XDS_ERR_NOMEM, "deploy pd: out of memory");
    p->m = m;
    p->comm = comm;
    p->o = *o;
    if (p->o.hold_s <= 0) p->o.hold_s = 60;
    {
        const char *e = getenv("XCCL_TIMEOUT_MS");
        long t = e ? strtol(e, NULL, 10) : 0;
        p->timeout_ms = t > 0 ? (uint32_t)t : 10000;
    }
    xds_status s = xds_model_kv_cache_create(m, o->pool_tokens, o->block_size, o->max_seqs, &p->kv);
    if (s != XDS_OK) {
        free(p);
        return s;
    }
    xds_kv_cache *kv = p->kv;
    size_t kb = sizeof(float) * (size_t)kv->n_layer * kv->n_blocks * kv->block_size * kv->k_dim;
    size_t vb = sizeof(float) * (size_t)kv->n_layer * kv->n_blocks * kv->block_size * kv->v_dim;
    size_t lb = sizeof(float) * (size_t)o->max_seqs * m->cfg.n_vocab; /* last-token logits per slot */
    xccl_status xs = xccl_region_alloc(&p->region, kb + vb + lb, comm);
    if (xs != XCCL_OK) {
        xds_kv_cache_free(p->kv);
        free(p);
        return xerr(xs, "register the prefill KV pool");
    }
    p->logits_off = kb + vb;
    p->own_k = kv->k;
    p->own_v = kv->v;
    kv->k = (float *)p->region.base;
    kv->v = kv->v_dim ? (float *)((char *)p->region.base + kb) : NULL;
    p->held = calloc((size_t)o->max_seqs, sizeof *p->held);
    p->logits = malloc(sizeof(float) * m->cfg.n_vocab);
    p->pos = malloc(sizeof(int32_t) * o->chunk);
    p->seq = malloc(sizeof(int32_t) * o->chunk);
    if (!p->held || !p->logits || !p->pos || !p->seq) {
        xds_pd_prefill_free(p);
        return xds_err_set(XDS_ERR_NOMEM, "deploy pd: out of memory");
    }
    s = xds_kv_blocks_create(kv->n_blocks, kv->block_size, 1, &p->bm);
    if (s != XDS_OK) {
        xds_pd_prefill_free(p);
        return s;
    }
    s = xds_model_ctx_create(m, kv, o->n_threads, o->chunk, &p->ctx);
    if (s != XDS_OK) {
        xds_pd_prefill_free(p);
        return s;
    }
    *out = p;
    return XDS_OK;
}

void xds_pd_prefill_free(xds_pd_prefill *p) {
    if (!p) return;
    if (p->ctx) xds_model_ctx_free(p->ctx);
    if (p->bm) xds_kv_blocks_free(p->bm);
    if (p->kv) {
        p->kv->k = p->own_k;
        p->kv->v = p->own_v;
        xds_kv_cache_free(p->kv);
    }
    if (p->region.base) xccl_region_deregister(p->comm, &p->region);
    free(p->held), free(p->logits), free(p->pos), free(p->seq);
    free(p);
}

int xds_pd_prefill_outstanding(const xds_pd_prefill *p) {
    return p->n_held;
}

int xds_pd_prefill_free_blocks(const xds_pd_prefill *p) {
    return xds_kv_blocks_n_available(p->bm);
}

void xds_pd_prefill_token_stats(const xds_pd_prefill *p, uint64_t *cached, uint64_t *computed) {
    *cached = p->cached_tokens;
    *computed = p->computed_tokens;
}

/* Give a slot's blocks back (full ones stay cached for later prefixes). */
static void drop_blocks(xds_pd_prefill *p, int slot) {
    xds_kv_seq *q = &p->kv->seqs[slot];
    for (int i = 0; i < q->n_blocks; i++) xds_kv_blocks_unref(p->bm, q->blocks[i]);
    xds_kv_seq_set_blocks(p->kv, slot, NULL, 0);
}

static void release_slot(xds_pd_prefill *p, int slot) {
    drop_blocks(p, slot);
    p->held[slot].req_id = 0;
    p->n_held--;
}

xds_status xds_pd_prefill_submit(xds_pd_prefill *p, uint64_t req_id, const int32_t *prompt, int n, int decode_rank,
                                 int32_t *first_token) {
    xds_kv_cache *kv = p->kv;
    if (req_id == 0 || n <= 0 || n > (int)(sizeof(((xds_pd_task *)0)->blocks) / sizeof(int32_t)) * kv->block_size)
        return xds_err_set(XDS_ERR_INVALID, "deploy pd: request %llu: prompt of %d tokens (1..%d), id must be > 0",
                           (unsigned long long)req_id, n,
                           (int)(sizeof(((xds_pd_task *)0)->blocks) / sizeof(int32_t)) * kv->block_size);
    int slot = -1;
    for (int i = 0; i < p->o.max_seqs && slot < 0; i++)
        if (!p->held[i].req_id) slot = i;
    if (slot < 0) return xds_err_set(XDS_ERR_BUSY, "deploy pd: all %d prefill slots hold unpulled KV", p->o.max_seqs);
    /* prefix cache: reuse the longest cached run of full blocks, always
     * computing at least the last prompt token (its logits are sent) */
    int bs = kv->block_size, nb = (n + bs - 1) / bs, c = 0;
    int32_t blocks[sizeof(((xds_pd_task *)0)->blocks) / sizeof(int32_t)];
    uint64_t parent = XDS_PREFIX_HASH_ROOT;
    int nbh = 0;
    while ((nbh + 1) * bs <= n - 1) {
        uint64_t h = xds_prefix_hash(parent, prompt + nbh * bs, bs);
        int32_t b = xds_kv_blocks_lookup(p->bm, h, parent, prompt + nbh * bs);
        if (b < 0) break;
        blocks[nbh++] = b;
        parent = h;
    }
    c = nbh * bs;
    for (int i = nbh; i < nb; i++) {
        blocks[i] = xds_kv_blocks_alloc(p->bm);
        if (blocks[i] < 0) {
            for (int j = 0; j < i; j++) xds_kv_blocks_unref(p->bm, blocks[j]);
            return xds_err_set(XDS_ERR_BUSY, "deploy pd: prefill pool full (%d blocks available, %d tokens needed)",
                               xds_kv_blocks_n_available(p->bm), n);
        }
    }
    xds_status s = xds_kv_seq_set_blocks(kv, slot, blocks, nb);
    if (s != XDS_OK) {
        for (int j = 0; j < nb; j++) xds_kv_blocks_unref(p->bm, blocks[j]);
        return s;
    }
    p->held[slot].req_id = req_id;
    p->held[slot].since = now_s();
    p->n_held++;
    p->cached_tokens += (uint64_t)c;
    p->computed_tokens += (uint64_t)(n - c);
    /* chunked prefill of [c, n): logits of the last prompt token only */
    for (int c0 = c; c0 < n; c0 += p->o.chunk) {
        int cn = n - c0 < p->o.chunk ? n - c0 : p->o.chunk;
        for (int i = 0; i < cn; i++) p->pos[i] = c0 + i, p->seq[i] = slot;
        xds_batch b = {cn, prompt + c0, p->pos, p->seq};
        int32_t row = cn - 1;
        int last = c0 + cn == n;
        s = xds_model_forward(p->ctx, &b, &row, last ? 1 : 0, p->logits);
        if (s != XDS_OK) {
            release_slot(p, slot);
            return s;
        }
    }
    /* publish the full blocks now written (a hash already held by another block keeps that one) */
    parent = XDS_PREFIX_HASH_ROOT;
    for (int i = 0; (i + 1) * bs <= n; i++) {
        uint64_t h = xds_prefix_hash(parent, prompt + i * bs, bs);
        if (i >= nbh) xds_kv_blocks_publish(p->bm, blocks[i], h, parent, prompt + i * bs);
        parent = h;
    }
    int V = p->m->cfg.n_vocab, best = 0;
    for (int v = 1; v < V; v++)
        if (p->logits[v] > p->logits[best]) best = v;
    *first_token = best;
    xds_pd_task t;
    memset(&t, 0, sizeof t);
    t.req_id = req_id;
    t.src_rank = xccl_comm_rank(p->comm);
    t.src_inc = xccl_comm_incarnation(p->comm);
    t.n_prompt = n;
    t.first_token = best;
    t.region = p->region.id;
    t.n_layer = kv->n_layer, t.k_dim = kv->k_dim, t.v_dim = kv->v_dim;
    t.block_size = kv->block_size, t.pool_blocks = kv->n_blocks;
    t.n_blocks = kv->seqs[slot].n_blocks;
    t.n_vocab = V;
    t.logits_off = p->logits_off + sizeof(float) * (size_t)slot * V;
    memcpy((char *)p->region.base + t.logits_off, p->logits, sizeof(float) * V);
    memcpy(t.blocks, kv->seqs[slot].blocks, sizeof(int32_t) * t.n_blocks);
    uint32_t hdr[2] = {PD_MAGIC, PD_TASK};
    size_t len = offsetof(xds_pd_task, blocks) + sizeof(int32_t) * t.n_blocks;
    char msg[sizeof hdr + sizeof t];
    memcpy(msg, hdr, sizeof hdr);
    memcpy(msg + sizeof hdr, &t, len);
    xccl_status xs = xccl_send(p->comm, decode_rank, msg, sizeof hdr + len);
    if (xs != XCCL_OK) {
        release_slot(p, slot);
        return xerr(xs, "send the transfer task");
    }
    return XDS_OK;
}

int xds_pd_prefill_release(xds_pd_prefill *p, uint64_t req_id) {
    for (int i = 0; i < p->o.max_seqs; i++)
        if (req_id && p->held[i].req_id == req_id) {
            release_slot(p, i);
            return 1;
        }
    return 0;
}

void xds_pd_prefill_expire(xds_pd_prefill *p) {
    double t = now_s();
    for (int i = 0; i < p->o.max_seqs; i++)
        if (p->held[i].req_id && t - p->held[i].since > p->o.hold_s) {
            XDS_LOGW("deploy pd: request %llu not pulled within %.0f s; its KV is dropped",
                     (unsigned long long)p->held[i].req_id, p->o.hold_s);
            release_slot(p, i);
        }
}

xds_status xds_pd_prefill_poll(xds_pd_prefill *p, int decode_rank, int wait_ms) {
    /* a receive that times out consumes nothing, so waiting with a short
     * deadline is a safe poll; the first wait is wait_ms, then 1 ms to drain */
    int timeout = wait_ms > 0 ? wait_ms : 1;
    while (p->n_held > 0) {
        pd_free_msg msg;
        size_t len = 0;
        xccl_comm_set_timeout(p->comm, (uint32_t)timeout);
        xccl_status xs = xccl_recv(&len, &msg, sizeof msg, p->comm, decode_rank);
        xccl_comm_set_timeout(p->comm, p->timeout_ms);
        if (xs == XCCL_ERR_TIMEOUT) break;
        if (xs != XCCL_OK) return xerr(xs, "FREE message");
        timeout = 1;
        if (len != sizeof msg || msg.magic != PD_MAGIC || msg.cmd != PD_FREE)
            return xds_err_set(XDS_ERR_PEER, "deploy pd: malformed message from decode rank %d", decode_rank);
        if (!xds_pd_prefill_release(p, msg.req_id))
            XDS_LOGW("deploy pd: FREE of request %llu that is not held (expired?)", (unsigned long long)msg.req_id);
    }
    xds_pd_prefill_expire(p);
    return XDS_OK;
}

xds_status xds_pd_task_recv(xccl_comm *comm, int src_rank, xds_pd_task *t) {
    char msg[8 + sizeof *t];
    size_t len = 0;
    xccl_status xs = xccl_recv(&len, msg, sizeof msg, comm, src_rank);
    if (xs != XCCL_OK) return xerr(xs, "receive a transfer task");
    uint32_t hdr[2];
    memcpy(hdr, msg, sizeof hdr);
    size_t fixed = offsetof(xds_pd_task, blocks);
    if (len < 8 + fixed || hdr[0] != PD_MAGIC || hdr[1] != PD_TASK)
        return xds_err_set(XDS_ERR_PEER, "deploy pd: malformed transfer task from rank %d", src_rank);
    memset(t, 0, sizeof *t);
    memcpy(t, msg + 8, len - 8);
    if (t->n_prompt == -1 && t->n_blocks == 0) { /* the prefill instance could not serve this request */
        t->src_rank = src_rank;
        return XDS_OK;
    }
    int max_b = (int)(sizeof t->blocks / sizeof t->blocks[0]);
    if (t->n_blocks < 0 || t->n_blocks > max_b || len != 8 + fixed + sizeof(int32_t) * (size_t)t->n_blocks ||
        t->block_size <= 0 || t->n_prompt <= 0 || (t->n_prompt + t->block_size - 1) / t->block_size != t->n_blocks)
        return xds_err_set(XDS_ERR_PEER, "deploy pd: inconsistent transfer task from rank %d", src_rank);
    t->src_rank = src_rank;
    return XDS_OK;
}

/* The process that holds t's KV is still the one at t->src_rank: a
 * restarted prefill instance registers its region under the same id, so
 * a stale task must fail here instead of reading the newcomer's memory.
 * (The check adopts the current incarnation; the get's own check then
 * fails if the rank changes hands again before it reads.) */
static xds_status task_source_check(xccl_comm *comm, const xds_pd_task *t, const char *what) {
    xccl_status xs = xccl_peer_check(comm, t->src_rank);
    if (xs != XCCL_OK) return xerr(xs, what);
    uint32_t inc = xccl_peer_incarnation(comm, t->src_rank);
    if (inc != t->src_inc)
        return xds_err_set(XDS_ERR_PEER, "deploy pd: %s of request %llu: prefill rank %d is incarnation %u now; "
                                         "incarnation %u that held the KV is gone",
                           what, (unsigned long long)t->req_id, t->src_rank, inc, t->src_inc);
    return XDS_OK;
}

/* Copy rows [from, to) of t (all layers, K then V) into kv slot seq, whose
 * table covers them, with one xccl_getv: one range per (layer, K/V, run of
 * rows contiguous on both sides — within a block, or whole blocks with
 * consecutive ids on both sides; fresh pools hand out consecutive ids, so
 * usually one run). K ranges of all layers come first, then V, so both sides
 * are walked in address order. *moved += bytes copied. */
static xds_status pd_get_rows(xccl_comm *comm, const xds_pd_task *t, const xds_kv_cache *kv, int seq, int from, int to,
                              uint64_t *moved, const char *what) {
    if (to <= from) return XDS_OK;
    int bs = kv->block_size;
    const int32_t *db = kv->seqs[seq].blocks;
    int n_runs = 0, cap = (to - 1) / bs - from / bs + 1;
    int32_t *run = malloc(sizeof(int32_t) * 2 * cap); /* (cap, 2) {first row, rows} */
    int n_kv = kv->v_dim ? 2 : 1;
    xccl_iov *iov = malloc(sizeof *iov * (size_t)cap * kv->n_layer * n_kv);
    if (!run || !iov) {
        free(run), free(iov);
        return xds_err_set(XDS_ERR_NOMEM, "deploy pd: %s: %d transfer ranges", what, cap * kv->n_layer * n_kv);
    }
    for (int p = from; p < to;) {
        int bi = p / bs, end = (bi + 1) * bs;
        while (end < to && p % bs == 0 && t->blocks[end / bs] == t->blocks[bi] + (end / bs - bi) &&
               db[end / bs] == db[bi] + (end / bs - bi))
            end += bs;
        if (end > to) end = to;
        run[2 * n_runs] = p, run[2 * n_runs + 1] = end - p, n_runs++;
        p = end;
    }
    size_t off_v = sizeof(float) * (size_t)t->n_layer * t->pool_blocks * bs * t->k_dim; /* V after K */
    int n = 0;
    for (int kvi = 0; kvi < n_kv; kvi++) {
        size_t dim = kvi ? (size_t)kv->v_dim : (size_t)kv->k_dim, base = kvi ? off_v : 0;
        float *dst_pool = kvi ? kv->v : kv->k;
        for (int l = 0; l < kv->n_layer; l++)
            for (int r = 0; r < n_runs; r++) {
                int p = run[2 * r], bi = p / bs;
                size_t src = ((size_t)l * t->pool_blocks + t->blocks[bi]) * bs + p % bs;
                size_t dst = ((size_t)l * kv->n_blocks + db[bi]) * bs + p % bs;
                size_t len = sizeof(float) * dim * run[2 * r + 1];
                iov[n++] = (xccl_iov){.buf = dst_pool + dst * dim, .offset = base + src * dim * sizeof(float), .len = len};
                *moved += len;
            }
    }
    xds_status ts = task_source_check(comm, t, what);
    if (ts != XDS_OK) {
        free(run), free(iov);
        return ts;
    }
    xccl_status xs = xccl_getv(comm, t->src_rank, t->region, iov, n);
    free(run), free(iov);
    return xs == XCCL_OK ? XDS_OK : xerr(xs, what);
}

xds_status xds_pd_pull(xccl_comm *comm, const xds_pd_task *t, xds_kv_cache *kv, int seq, uint64_t *bytes) {
    if (t->n_layer != kv->n_layer || t->k_dim != kv->k_dim || t->v_dim != kv->v_dim || t->block_size != kv->block_size)
        return xds_err_set(XDS_ERR_INVALID,
                           "deploy pd: request %llu: prefill KV geometry (layers %d, k %d, v %d, block %d) differs "
                           "from the decode cache (%d, %d, %d, %d)",
                           (unsigned long long)t->req_id, t->n_layer, t->k_dim, t->v_dim, t->block_size, kv->n_layer,
                           kv->k_dim, kv->v_dim, kv->block_size);
    for (int i = 0; i < t->n_blocks; i++)
        if (t->blocks[i] < 0 || t->blocks[i] >= t->pool_blocks)
            return xds_err_set(XDS_ERR_PEER, "deploy pd: request %llu: block id %d outside the prefill pool of %d",
                               (unsigned long long)t->req_id, t->blocks[i], t->pool_blocks);
    if (seq < 0 || seq >= kv->max_seqs) return xds_err_set(XDS_ERR_INVALID, "deploy pd: sequence slot %d", seq);
    if (kv->seqs[seq].n_blocks != 0)
        return xds_err_set(XDS_ERR_INVALID, "deploy pd: sequence slot %d is not empty", seq);
    /* back-pressure: only pull when the blocks are there */
    if (kv->n_free < t->n_blocks)
        return xds_err_set(XDS_ERR_BUSY, "deploy pd: %d free decode blocks, request %llu needs %d", kv->n_free,
                           (unsigned long long)t->req_id, t->n_blocks);
    XDS_TRY(xds_kv_seq_reserve(kv, seq, t->n_prompt));
    /* whole blocks: rows [0, n_blocks * block_size) */
    uint64_t moved = 0;
    xds_status s = pd_get_rows(comm, t, kv, seq, 0, t->n_blocks * kv->block_size, &moved, "pull KV blocks");
    if (s != XDS_OK) {
        xds_kv_seq_truncate(kv, seq, 0);
        return s;
    }
    if (bytes) *bytes += moved;
    pd_free_msg msg = {PD_MAGIC, PD_FREE, t->req_id};
    xccl_status xs = xccl_send(comm, t->src_rank, &msg, sizeof msg);
    if (xs != XCCL_OK) return xerr(xs, "send FREE");
    return XDS_OK;
}

xds_status xds_pd_pull_range(xccl_comm *comm, const xds_pd_task *t, xds_kv_cache *kv, int seq, int from, int to,
                             uint64_t *bytes) {
    if (t->n_layer != kv->n_layer || t->k_dim != kv->k_dim || t->v_dim != kv->v_dim || t->block_size != kv->block_size)
        return xds_err_set(XDS_ERR_INVALID, "deploy pd: request %llu: prefill KV geometry differs from the decode cache",
                           (unsigned long long)t->req_id);
    if (from < 0 || to > t->n_prompt || from > to || seq < 0 || seq >= kv->max_seqs ||
        (to + kv->block_size - 1) / kv->block_size > kv->seqs[seq].n_blocks)
        return xds_err_set(XDS_ERR_INVALID, "deploy pd: request %llu: positions [%d, %d) not covered", 
                           (unsigned long long)t->req_id, from, to);
    uint64_t moved = 0;
    XDS_TRY(pd_get_rows(comm, t, kv, seq, from, to, &moved, "pull KV rows"));
    if (bytes) *bytes += moved;
    return XDS_OK;
}

xds_status xds_pd_get_logits(xccl_comm *comm, const xds_pd_task *t, float *logits) {
    if (t->n_vocab <= 0) return xds_err_set(XDS_ERR_INVALID, "deploy pd: task without logits");
    XDS_TRY(task_source_check(comm, t, "pull the last token's logits"));
    xccl_status xs = xccl_get(logits, comm, t->src_rank, t->region, t->logits_off, sizeof(float) * t->n_vocab);
    return xs == XCCL_OK ? XDS_OK : xerr(xs, "pull the last token's logits");
}

xds_status xds_pd_task_free(xccl_comm *comm, const xds_pd_task *t) {
    pd_free_msg msg = {PD_MAGIC, PD_FREE, t->req_id};
    xccl_status xs = xccl_send(comm, t->src_rank, &msg, sizeof msg);
    return xs == XCCL_OK ? XDS_OK : xerr(xs, "send FREE");
}

typedef struct pd_req_hdr {
    uint32_t magic, cmd;
    uint64_t req_id;
    int32_t n, pad;
} pd_req_hdr;

xds_status xds_pd_request_send(xccl_comm *comm, int prefill_rank, uint64_t req_id, const int32_t *tokens, int n) {
    if (n <= 0 || req_id == 0) return xds_err_set(XDS_ERR_INVALID, "deploy pd: empty request");
    size_t len = sizeof(pd_req_hdr) + sizeof(int32_t) * (size_t)n;
    char *msg = malloc(len);
    if (!msg) return xds_err_set(XDS_ERR_NOMEM, "deploy pd: out of memory");
    pd_req_hdr h = {PD_MAGIC, PD_REQ, req_id, n, 0};
    memcpy(msg, &h, sizeof h);
    memcpy(msg + sizeof h, tokens, sizeof(int32_t) * (size_t)n);
    xccl_status xs = xccl_send(comm, prefill_rank, msg, len);
    free(msg);
    return xs == XCCL_OK ? XDS_OK : xerr(xs, "send a prefill request");
}

xds_status xds_pd_stop_send(xccl_comm *comm, int prefill_rank) {
    pd_req_hdr h = {PD_MAGIC, PD_STOP, 0, 0, 0};
    xccl_status xs = xccl_send(comm, prefill_rank, &h, sizeof h);
    return xs == XCCL_OK ? XDS_OK : xerr(xs, "send STOP");
}

typedef struct pd_queued {
    uint64_t id;
    int32_t *tok;
    int n;
    int front; /* the front-end rank that sent it: its task goes back there */
} pd_queued;

xds_status xds_pd_prefill_serve(xds_pd_prefill *p, const int *fronts, int n_fronts) {
    if (n_fronts < 1 || n_fronts > XDS_PD_MAX_FRONTS)
        return xds_err_set(XDS_ERR_INVALID, "deploy pd: %d front-ends (1..%d)", n_fronts, XDS_PD_MAX_FRONTS);
    size_t cap = sizeof(pd_req_hdr) + sizeof(int32_t) * (size_t)(sizeof(((xds_pd_task *)0)->blocks) /
                                                                    sizeof(int32_t)) * p->kv->block_size;
    /* one posted receive per front-end; a message is handled from `buf`
     * after the next receive of its front-end was posted */
    char *buf = malloc(cap), *bufs[XDS_PD_MAX_FRONTS] = {0};
    xccl_request rq[XDS_PD_MAX_FRONTS];
    xccl_request *rp[XDS_PD_MAX_FRONTS] = {0};
    int seen[XDS_PD_MAX_FRONTS] = {0}; /* attached once: a later failed check means it is gone */
    pd_queued *q = calloc(256, sizeof *q);
    int nq = 0;
    xds_status s = XDS_OK;
    if (!buf || !q) {
        free(buf), free(q);
        return xds_err_set(XDS_ERR_NOMEM, "deploy pd: out of memory");
    }
    for (int i = 0; i < n_fronts && s == XDS_OK; i++) {
        if (!(bufs[i] = malloc(cap))) s = xds_err_set(XDS_ERR_NOMEM, "deploy pd: out of memory");
        else if (xccl_irecv(p->comm, fronts[i], bufs[i], cap, &rq[i]) != XCCL_OK) s = xerr(XCCL_ERR_INVALID, "receive");
        else rp[i] = &rq[i];
    }
    if (s != XDS_OK) goto out;
    for (;;) {
        /* submit queued requests in order while the pool has room */
        while (nq > 0) {
            int32_t first;
            s = xds_pd_prefill_submit(p, q[0].id, q[0].tok, q[0].n, q[0].front, &first);
            if (p->o.after_submit) p->o.after_submit(p->o.after_submit_user, p->bm ? p->bm->pc : NULL);
            if (s == XDS_ERR_BUSY && p->n_held > 0) {
                s = XDS_OK;
                break; /* wait for a FREE */
            }
            if (s != XDS_OK) {
                /* this request cannot be prefilled: an empty task (n_blocks 0) tells the front */
                XDS_LOGE("deploy pd: request %llu: %s", (unsigned long long)q[0].id, xds_err_msg());
                uint32_t hdr[2] = {PD_MAGIC, PD_TASK};
                char msg[8 + offsetof(xds_pd_task, blocks)];
                xds_pd_task t;
                memset(&t, 0, sizeof t);
                t.req_id = q[0].id;
                t.n_prompt = -1;
                memcpy(msg, hdr, 8);
                memcpy(msg + 8, &t, offsetof(xds_pd_task, blocks));
                xccl_status xs = xccl_send(p->comm, q[0].front, msg, sizeof msg);
                s = XDS_OK;
                if (xs != XCCL_OK) s = xerr(xs, "send a failed task");
            }
            free(q[0].tok);
            memmove(q, q + 1, sizeof *q * (size_t)(nq - 1));
            nq--;
            if (s != XDS_OK) goto out;
        }
        int fi = -1;
        xccl_comm_set_timeout(p->comm, 200);
        xccl_status xs = xccl_waitany(p->comm, rp, n_fronts, &fi);
        xccl_comm_set_timeout(p->comm, p->timeout_ms);
        if (xs == XCCL_ERR_TIMEOUT || xs == XCCL_ERR_PEER) {
            /* a sender that left stops being heard until it is back (a
             * restarted front-end re-attaches at its rank); with none left,
             * not even the supervisor (fronts[0]), the deployment is gone */
            int alive = 0;
            for (int i = 0; i < n_fronts; i++) {
                int ok = xccl_peer_check(p->comm, fronts[i]) == XCCL_OK;
                alive += ok;
                if (!rp[i]) { /* a restarted front-end: accept its new incarnation, listen again */
                    if (seen[i] && xccl_peer_state(p->comm, fronts[i]) == XCCL_RANK_ACTIVE) {
                        xccl_status rs = xccl_peer_reset(p->comm, fronts[i]);
                        if ((rs == XCCL_OK || (rs == XCCL_ERR_INVALID && ok)) &&
                            xccl_irecv(p->comm, fronts[i], bufs[i], cap, &rq[i]) == XCCL_OK)
                            rp[i] = &rq[i];
                    }
                    continue;
                }
                if (ok) seen[i] = 1;
                else if (seen[i]) xccl_cancel(p->comm, &rq[i]), rp[i] = NULL;
            }
            if (!alive && seen[0]) {
                XDS_LOGW("deploy pd: prefill: no front-end and no supervisor left; stopping");
                break;
            }
            xds_pd_prefill_expire(p);
            continue;
        }
        if (xs != XCCL_OK) {
            s = xerr(xs, "prefill: receive");
            goto out;
        }
        int front_rank = fronts[fi];
        size_t len = xccl_request_len(&rq[fi]);
        {
            char *tmp = buf;
            buf = bufs[fi];
            bufs[fi] = tmp;
        }
        if (xccl_irecv(p->comm, front_rank, bufs[fi], cap, &rq[fi]) != XCCL_OK) {
            s = xerr(XCCL_ERR_INVALID, "prefill: receive");
            goto out;
        }
        uint32_t hdr[2] = {0, 0};
        if (len >= 8) memcpy(hdr, buf, 8);
        if (hdr[0] != PD_MAGIC) {
            s = xds_err_set(XDS_ERR_PEER, "deploy pd: prefill: malformed message from rank %d", front_rank);
            goto out;
        }
        if (hdr[1] == PD_STOP) {
            if (fi == 0) break; /* only the supervisor (fronts[0]) stops the instance */
            continue;
        }
        if (hdr[1] == PD_FREE && len == sizeof(pd_free_msg)) {
            pd_free_msg m;
            memcpy(&m, buf, sizeof m);
            xds_pd_prefill_release(p, m.req_id);
            continue;
        }
        pd_req_hdr h;
        if (hdr[1] != PD_REQ || len < sizeof h) {
            s = xds_err_set(XDS_ERR_PEER, "deploy pd: prefill: unknown message %u from rank %d", hdr[1], front_rank);
            goto out;
        }
        memcpy(&h, buf, sizeof h);
        if (h.n <= 0 || len != sizeof h + sizeof(int32_t) * (size_t)h.n || nq == 256) {
            s = xds_err_set(XDS_ERR_PEER, "deploy pd: prefill: bad request from rank %d", front_rank);
            goto out;
        }
        q[nq].id = h.req_id;
        q[nq].n = h.n;
        q[nq].front = front_rank;
        q[nq].tok = malloc(sizeof(int32_t) * (size_t)h.n);
        if (!q[nq].tok) {
            s = xds_err_set(XDS_ERR_NOMEM, "deploy pd: out of memory");
            goto out;
        }
        memcpy(q[nq].tok, buf + sizeof h, sizeof(int32_t) * (size_t)h.n);
        nq++;
    }
out:
    for (int i = 0; i < nq; i++) free(q[i].tok);
    for (int i = 0; i < n_fronts; i++) {
        if (rp[i]) xccl_cancel(p->comm, &rq[i]);
        free(bufs[i]);
    }
    free(q);
    free(buf);
    return s;
}
