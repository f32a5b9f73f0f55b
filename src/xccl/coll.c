/*
 * coll.c — barrier, allgather, allreduce (sum; f32 / bf16) among a group.
 *
 * shm: each rank owns two collective buffers in the segment (by seq parity)
 * and three monotonic seq fields in its rank entry: coll_pub (my input of seq
 * s is in my buffer), coll_red (my reduced chunk of s is there), coll_done (I
 * finished reading everyone's buffers for s, or gave up). Before rewriting
 * buffer s&1 a rank waits until every rank that read its previous content
 * (recorded as a mask) is done with it or dead. A failure publishes
 * coll_done = err_seq = s, so members fail fast and buffers are released. allreduce is
 * reduce-scatter + allgather through the buffers: member i sums chunk i over
 * all members in member order (f32 accumulation, starting from member 0's
 * value), so every rank gets bit-identical results, and large inputs are cut
 * into pieces that fit the buffers.
 *
 * tcp (and any non-shm transport): the same results through p2p exchange.
 */
#include "xccl_internal.h"

/* Sums must round the same on every rank and path: no FMA contraction. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <stdlib.h>
#include <string.h>

enum { F_PUB = 0, F_RED = 1, F_DONE = 2 };

static _Atomic uint64_t *field(struct xccl_comm *c, int rank, int f) {
    xccl_rank_entry *e = &c->ranks[rank];
    return f == F_PUB ? &e->coll_pub : f == F_RED ? &e->coll_red : &e->coll_done;
}

static void publish(struct xccl_comm *c, xccl_group *g, int f, uint64_t seq) {
    _Atomic uint64_t *p = field(c, c->rank, f);
    if (atomic_load_explicit(p, memory_order_relaxed) < seq)
        atomic_store_explicit(p, seq, memory_order_release);
    xccl_wake_group(c, g);
}

typedef struct {
    xccl_group *g;
    int f;
    uint64_t seq;
} seq_arg;

static int seq_cond(struct xccl_comm *c, void *arg) {
    seq_arg *a = arg;
    for (int i = 0; i < a->g->n; i++) {
        int r = a->g->ranks[i];
        if (r == c->rank) continue;
        if (atomic_load_explicit(field(c, r, a->f), memory_order_acquire) >= a->seq) continue;
        if (atomic_load_explicit(&c->ranks[r].err_seq, memory_order_acquire) == a->seq) {
            xccl_err_peer(XCCL_ERR_PEER, r, "rank %d failed this collective", r);
            return -(int)XCCL_ERR_PEER;
        }
        return 0;
    }
    return 1;
}

static xccl_status wait_all(struct xccl_comm *c, xccl_group *g, int f, uint64_t seq, const char *what) {
    seq_arg a = {g, f, seq};
    return xccl_wait_cond(c, seq_cond, &a, g->ranks, g->n, what);
}

static _Atomic uint64_t *done_ptr(struct xccl_comm *c, int r, void *arg) {
    (void)arg;
    return &c->ranks[r].coll_done;
}

/* Next seq of g; with_buf: also claim my buffer (seq & 1), waiting until every
 * rank that read its previous content is done with it. */
static xccl_status next_seq(uint64_t *seq_out, struct xccl_comm *c, xccl_group *g, int with_buf,
                            const char *what) {
    uint64_t seq = xccl_seq(g->epoch, ++g->coll_counter);
    if (with_buf) {
        int b = (int)(seq & 1);
        xccl_status s = xccl_wait_readers(c, g, c->coll_buf_mask[b], c->coll_buf_seq[b], done_ptr,
                                          NULL, what);
        if (s) return s;
        c->coll_buf_seq[b] = seq;
        c->coll_buf_mask[b] = xccl_group_mask(g);
    }
    *seq_out = seq;
    return XCCL_OK;
}

/* A failed collective: this rank reads no more (done = seq) and tells the
 * members (err_seq = seq) so that they fail at once instead of waiting. */
static xccl_status fail(struct xccl_comm *c, xccl_group *g, uint64_t seq, xccl_status s) {
    xccl_rank_entry *e = &c->ranks[c->rank];
    if (atomic_load(&e->coll_done) < seq) atomic_store_explicit(&e->coll_done, seq, memory_order_release);
    atomic_store_explicit(&e->err_seq, seq, memory_order_release);
    xccl_wake_group(c, g);
    return s;
}

static void finish(struct xccl_comm *c, xccl_group *g, uint64_t seq) {
    xccl_rank_entry *e = &c->ranks[c->rank];
    if (atomic_load(&e->coll_red) < seq) atomic_store_explicit(&e->coll_red, seq, memory_order_release);
    publish(c, g, F_DONE, seq);
}

static xccl_status check_group(struct xccl_comm *c, xccl_group *g, const char *op) {
    if (!g) return xccl_err(XCCL_ERR_INVALID, "xccl %s: NULL group", op);
    if (g->me < 0 || g->me >= g->n || g->ranks[g->me] != c->rank)
        return xccl_err(XCCL_ERR_INVALID, "xccl %s: rank %d is not in the group", op, c->rank);
    return XCCL_OK;
}

/* --- generic p2p versions (tcp) ------------------------------------------ */

static xccl_status p2p_allgather(void *out, const void *in, size_t bytes, struct xccl_comm *c,
                                 xccl_group *g) {
    void *rb[XCCL_MAX_RANKS];
    size_t rc[XCCL_MAX_RANKS], rl[XCCL_MAX_RANKS], sl[XCCL_MAX_RANKS];
    const void *sb[XCCL_MAX_RANKS];
    for (int i = 0; i < g->n; i++) {
        rb[i] = (uint8_t *)out + (size_t)i * bytes;
        rc[i] = bytes;
        sb[i] = in;
        sl[i] = bytes;
    }
    xccl_status s = xccl_p2p_exchange(c, g, rb, rc, rl, sb, sl);
    if (s) return s;
    memmove((uint8_t *)out + (size_t)g->me * bytes, in, bytes);
    for (int i = 0; i < g->n; i++)
        if (i != g->me && rl[i] != bytes)
            return xccl_err_peer(XCCL_ERR_PEER, g->ranks[i], "xccl allgather: rank %d sent %zu bytes, want %zu",
                                 g->ranks[i], rl[i], bytes);
    return XCCL_OK;
}

/* --- reductions ------------------------------------------------------------ */

/* out[e] = sum_j src[j][e] in j order (f32 accumulation, from src[0]). */
static void reduce_sum(void *out, const void *const *src, int n, size_t lo, size_t hi, xccl_dtype dt) {
    if (dt == XCCL_F32) {
        float *o = out;
        for (size_t e = lo; e < hi; e++) {
            float acc = ((const float *)src[0])[e];
            for (int j = 1; j < n; j++) acc += ((const float *)src[j])[e];
            o[e - lo] = acc;
        }
    } else {
        uint16_t *o = out;
        for (size_t e = lo; e < hi; e++) {
            float acc = xccl_bf16_to_f32(((const uint16_t *)src[0])[e]);
            for (int j = 1; j < n; j++) acc += xccl_bf16_to_f32(((const uint16_t *)src[j])[e]);
            o[e - lo] = xccl_f32_to_bf16(acc);
        }
    }
}

/* --- public ------------------------------------------------------------------ */

xccl_status xccl_barrier(xccl_comm *c, xccl_group *g) {
    xccl_status s = check_group(c, g, "barrier");
    if (s) return s;
    if (c->ops != &xccl_shm_ops) {
        uint8_t in = 1, out[XCCL_MAX_RANKS];
        return p2p_allgather(out, &in, 1, c, g);
    }
    uint64_t seq;
    s = next_seq(&seq, c, g, 0, "xccl barrier");
    if (s) return s;
    publish(c, g, F_PUB, seq);
    s = wait_all(c, g, F_PUB, seq, "xccl barrier");
    if (s) return fail(c, g, seq, s);
    finish(c, g, seq);
    return XCCL_OK;
}

xccl_status xccl_allgather(void *out, const void *in, size_t bytes, xccl_comm *c, xccl_group *g) {
    xccl_status s = check_group(c, g, "allgather");
    if (s) return s;
    if (bytes && (!out || !in)) return xccl_err(XCCL_ERR_INVALID, "xccl allgather: NULL buffer");
    if (c->ops != &xccl_shm_ops) return p2p_allgather(out, in, bytes, c, g);
    size_t piece = c->hdr->coll_bytes;
    size_t off = 0;
    do {
        size_t len = bytes - off < piece ? bytes - off : piece;
        uint64_t seq;
        s = next_seq(&seq, c, g, 1, "xccl allgather");
        if (s) return fail(c, g, xccl_seq(g->epoch, g->coll_counter), s);
        int b = (int)(seq & 1);
        memcpy(xccl_coll_at(c, c->rank, b), (const uint8_t *)in + off, len);
        publish(c, g, F_PUB, seq);
        s = wait_all(c, g, F_PUB, seq, "xccl allgather");
        if (s) return fail(c, g, seq, s);
        for (int i = 0; i < g->n; i++)
            memcpy((uint8_t *)out + (size_t)i * bytes + off, xccl_coll_at(c, g->ranks[i], b), len);
        finish(c, g, seq);
        off += len;
    } while (off < bytes);
    return XCCL_OK;
}

xccl_status xccl_allreduce_sum(void *out, const void *in, size_t count, xccl_dtype dt, xccl_comm *c,
                               xccl_group *g) {
    xccl_status s = check_group(c, g, "allreduce");
    if (s) return s;
    if (dt != XCCL_F32 && dt != XCCL_BF16)
        return xccl_err(XCCL_ERR_INVALID, "xccl allreduce: dtype %d is not f32 or bf16", (int)dt);
    if (count && (!out || !in)) return xccl_err(XCCL_ERR_INVALID, "xccl allreduce: NULL buffer");
    size_t es = xccl_dtype_size(dt);
    int n = g->n;
    if (c->ops != &xccl_shm_ops) {
        uint8_t *all = malloc((size_t)n * count * es + 1);
        if (!all) return xccl_err(XCCL_ERR_NOMEM, "xccl allreduce: out of memory");
        s = p2p_allgather(all, in, count * es, c, g);
        if (!s) {
            const void *src[XCCL_MAX_RANKS];
            for (int j = 0; j < n; j++) src[j] = all + (size_t)j * count * es;
            reduce_sum(out, src, n, 0, count, dt);
        }
        free(all);
        return s;
    }
    /* piece P elements: input P*es + reduced chunk ceil(P/n)*es must fit coll_bytes */
    size_t cap = c->hdr->coll_bytes / es;
    size_t P = (cap - 64) * (size_t)n / (size_t)(n + 1);
    P -= P % 16;
    if (P < 16) P = 16;
    size_t off = 0;
    do {
        size_t len = count - off < P ? count - off : P;
        size_t chunk = (len + n - 1) / n;
        size_t in_bytes = (len * es + 63) / 64 * 64;
        uint64_t seq;
        s = next_seq(&seq, c, g, 1, "xccl allreduce");
        if (s) return fail(c, g, xccl_seq(g->epoch, g->coll_counter), s);
        int b = (int)(seq & 1);
        uint8_t *mine = xccl_coll_at(c, c->rank, b);
        memcpy(mine, (const uint8_t *)in + off * es, len * es);
        publish(c, g, F_PUB, seq);
        s = wait_all(c, g, F_PUB, seq, "xccl allreduce");
        if (s) return fail(c, g, seq, s);
        size_t lo = (size_t)g->me * chunk, hi = lo + chunk;
        if (hi > len) hi = len;
        if (lo < hi) {
            const void *src[XCCL_MAX_RANKS];
            for (int j = 0; j < n; j++) src[j] = xccl_coll_at(c, g->ranks[j], b);
            reduce_sum(mine + in_bytes, src, n, lo, hi, dt);
        }
        publish(c, g, F_RED, seq);
        s = wait_all(c, g, F_RED, seq, "xccl allreduce");
        if (s) return fail(c, g, seq, s);
        for (int j = 0; j < n; j++) {
            size_t jlo = (size_t)j * chunk, jhi = jlo + chunk;
            if (jhi > len) jhi = len;
            if (jlo >= jhi) continue;
            memcpy((uint8_t *)out + (off + jlo) * es, xccl_coll_at(c, g->ranks[j], b) + in_bytes,
                   (jhi - jlo) * es);
        }
        finish(c, g, seq);
        off += len;
    } while (off < count);
    return XCCL_OK;
}
