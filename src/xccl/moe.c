/*
 * moe.c — MoE layout, dispatch and combine.
 *
 * Layout (local): for every (token t, choice j) pick a replica of expert
 * topk_ids[t][j] (rotation policy), giving a member d, a local expert slot and
 * a position in the (d, slot) list; counts per member and per (member, slot).
 *
 * Dispatch (shm, pull-based, one copy): the sender writes its token rows
 * once (quantized to int8 if asked; not at all if x already is its segment
 * send buffer) and, per destination member, the counts per local slot and
 * the token index lists into its own send buffer; it then publishes the event
 * in meta(me, d, DISP).prod (buffer index in prod_aux[0]). Each receiver waits
 * for every member's event, sizes its per-slot blocks, and gathers the rows it
 * needs straight out of the senders' buffers into its own recv buffer (per
 * local expert contiguous), writes the start table [member][slot], then acks
 * with meta(s, me, DISP).cons.
 *
 * Combine (zero-copy): the expert rank's outputs are already in its recv
 * buffer (recv[j].out) or are copied there; it publishes meta(me, s,
 * COMB).prod. Each token owner reads the output rows in place from the expert
 * ranks' buffers, weight-sums them in k order (f32), writes y, and acks with
 * meta(d, me, COMB).cons. A buffer is rewritten only after every reader acked
 * the event it last held (readers recorded as a mask; dead readers outside
 * the current group count as done). A failed dispatch/combine acks the event
 * on both channels (it reads no more) and sets err_seq so members fail fast.
 *
 * Non-shm transports (tcp) exchange counts and packed rows over p2p messages
 * instead, with the same row order and the same bit-exact weighted sum.
 */
#include "xccl_internal.h"

/* Sums must round the same on every path and in the reference of the tests:
 * never contract a*b+c into an FMA. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <stdlib.h>
#include <string.h>

static uint64_t a64(uint64_t x) { return (x + 63) / 64 * 64; }

/* --- layout ---------------------------------------------------------------- */

void xccl_moe_layout_free(xccl_moe_layout *l) {
    if (!l) return;
    free(l->num_tokens_per_rank);
    free(l->num_tokens_per_expert);
    free(l->route_member);
    free(l->route_slot);
    free(l->route_pos);
    memset(l, 0, sizeof *l);
}

xccl_status xccl_moe_layout_compute(xccl_moe_layout *out, const int32_t *ids, int T, int k,
                                    const xccl_expert_map *map, uint64_t round, xccl_comm *c,
                                    xccl_group *g) {
    if (!out || !map || !g || (T > 0 && !ids))
        return xccl_err(XCCL_ERR_INVALID, "xccl moe_layout: NULL argument");
    if (T < 0 || k < 1 || k > 64)
        return xccl_err(XCCL_ERR_INVALID, "xccl moe_layout: num_tokens %d / topk %d invalid", T, k);
    int E = map->num_experts, R = map->max_replicas, L = map->num_local_experts, n = g->n;
    if (E < 1 || R < 1 || L < 1 || L > 256 || !map->num_replicas || !map->replica_rank ||
        !map->replica_slot)
        return xccl_err(XCCL_ERR_INVALID,
                        "xccl moe_layout: expert map needs experts, replicas, 1..256 local experts");
    for (int e = 0; e < E; e++) {
        int nr = map->num_replicas[e];
        if (nr < 1 || nr > R)
            return xccl_err(XCCL_ERR_INVALID, "xccl moe_layout: expert %d has %d replicas (max %d)", e,
                            nr, R);
        for (int r = 0; r < nr; r++) {
            int rank = map->replica_rank[e * R + r], slot = map->replica_slot[e * R + r];
            if (xccl_group_index(g, rank) < 0)
                return xccl_err(XCCL_ERR_INVALID,
                                "xccl moe_layout: expert %d replica %d is on rank %d, not in the group",
                                e, r, rank);
            if (slot < 0 || slot >= L)
                return xccl_err(XCCL_ERR_INVALID,
                                "xccl moe_layout: expert %d replica %d slot %d not in 0..%d", e, r, slot,
                                L - 1);
        }
    }
    for (long i = 0; i < (long)T * k; i++)
        if (ids[i] < -1 || ids[i] >= E)
            return xccl_err(XCCL_ERR_RANGE,
                            "xccl moe_layout: topk_ids[%ld][%ld] = %d out of range [0, %d) (or -1)",
                            i / k, i % k, ids[i], E);
    xccl_moe_layout l = {0};
    l.num_tokens = T;
    l.topk = k;
    l.num_members = n;
    l.num_local_experts = L;
    size_t tk = (size_t)T * k + 1;
    l.num_tokens_per_rank = calloc((size_t)n, sizeof(int));
    l.num_tokens_per_expert = calloc((size_t)n * L, sizeof(int));
    l.route_member = malloc(tk * sizeof(int));
    l.route_slot = malloc(tk * sizeof(int));
    l.route_pos = malloc(tk * sizeof(int));
    uint32_t *rot = calloc((size_t)E, sizeof(uint32_t));
    if (!l.num_tokens_per_rank || !l.num_tokens_per_expert || !l.route_member || !l.route_slot ||
        !l.route_pos || !rot) {
        free(rot);
        xccl_moe_layout_free(&l);
        return xccl_err(XCCL_ERR_NOMEM, "xccl moe_layout: out of memory");
    }
    for (long i = 0; i < (long)T * k; i++) {
        int e = ids[i];
        if (e < 0) {
            l.route_member[i] = l.route_slot[i] = l.route_pos[i] = -1;
            continue;
        }
        int nr = map->num_replicas[e], r = 0;
        if (map->policy == XCCL_REPLICA_ROTATE && nr > 1)
            r = (int)((rot[e]++ + round + (uint64_t)c->rank) % (uint64_t)nr);
        int d = xccl_group_index(g, map->replica_rank[e * R + r]);
        int slot = map->replica_slot[e * R + r];
        l.route_member[i] = d;
        l.route_slot[i] = slot;
        l.route_pos[i] = l.num_tokens_per_expert[d * L + slot]++;
        l.num_tokens_per_rank[d]++;
    }
    free(rot);
    *out = l;
    return XCCL_OK;
}

/* --- shm buffer geometry ------------------------------------------------------ */

typedef struct geo {
    uint64_t counts, idxoff, rows, scales, idx;    /* send buffer offsets */
    uint64_t start, rrows, rscales, rout;          /* recv buffer offsets */
    int N, Lmax;
} geo;

static void geometry(geo *o, struct xccl_comm *c) {
    const xccl_seg_header *h = c->hdr;
    uint64_t N = h->num_ranks, L = h->moe_max_local_experts, T = h->moe_max_tokens;
    uint64_t H = h->moe_max_hidden, Rr = h->moe_max_recv_rows;
    o->N = (int)N;
    o->Lmax = (int)L;
    o->counts = 64;
    o->idxoff = 64 + N * L * 4;
    o->rows = 64 + a64((N * L + N) * 4);
    o->scales = o->rows + a64(T * H * 4);
    o->idx = o->scales + a64(T * 4);
    o->start = 0;
    o->rrows = a64(N * L * 4);
    o->rscales = o->rrows + a64(Rr * H * 4);
    o->rout = o->rscales + a64(Rr * 4);
}

/* Members' fields to wait on. */
typedef struct moe_arg {
    xccl_group *g;
    int ch;        /* channel */
    int cons;      /* 1: wait for cons (acks) of meta(me, d); 0: prod of meta(s, me) */
    uint64_t seq;  /* value to reach */
    int skip_old;  /* cons: only members whose recorded event is of this epoch */
} moe_arg;

static int moe_cond(struct xccl_comm *c, void *arg) {
    moe_arg *a = arg;
    for (int i = 0; i < a->g->n; i++) {
        int r = a->g->ranks[i];
        xccl_meta *m = a->cons ? xccl_meta_at(c, c->rank, r, a->ch) : xccl_meta_at(c, r, c->rank, a->ch);
        uint64_t v = atomic_load_explicit(a->cons ? &m->cons : &m->prod, memory_order_acquire);
        if (v >= a->seq) continue;
        if (r != c->rank &&
            atomic_load_explicit(&c->ranks[r].err_seq, memory_order_acquire) == a->seq) {
            xccl_err_peer(XCCL_ERR_PEER, r, "rank %d failed event %llu (see its log)", r,
                          (unsigned long long)(a->seq & ((1ull << 40) - 1)));
            return -(int)XCCL_ERR_PEER;
        }
        return 0;
    }
    return 1;
}

static xccl_status moe_wait(struct xccl_comm *c, xccl_group *g, int ch, int cons, uint64_t seq,
                            const char *what) {
    moe_arg a = {g, ch, cons, seq, 0};
    return xccl_wait_cond(c, moe_cond, &a, g->ranks, g->n, what);
}

static _Atomic uint64_t *disp_ack(struct xccl_comm *c, int r, void *arg) {
    (void)arg;
    return &xccl_meta_at(c, c->rank, r, XCCL_CH_DISP)->cons;
}
static _Atomic uint64_t *comb_ack(struct xccl_comm *c, int r, void *arg) {
    (void)arg;
    return &xccl_meta_at(c, c->rank, r, XCCL_CH_COMB)->cons;
}

/* A failed dispatch / combine: ack event ev to every member for both
 * channels (this rank reads their buffers no more) and publish err_seq so
 * that members waiting on this rank fail at once. */
static xccl_status moe_fail(struct xccl_comm *c, xccl_group *g, uint64_t ev, xccl_status s) {
    for (int i = 0; i < g->n; i++) {
        int r = g->ranks[i];
        _Atomic uint64_t *d = &xccl_meta_at(c, r, c->rank, XCCL_CH_DISP)->cons;
        _Atomic uint64_t *m = &xccl_meta_at(c, r, c->rank, XCCL_CH_COMB)->cons;
        if (atomic_load(d) < ev) atomic_store_explicit(d, ev, memory_order_release);
        if (atomic_load(m) < ev) atomic_store_explicit(m, ev, memory_order_release);
    }
    atomic_store_explicit(&c->ranks[c->rank].err_seq, ev, memory_order_release);
    xccl_wake_group(c, g);
    c->moe.active = 0;
    return s;
}

static xccl_status moe_check(struct xccl_comm *c, xccl_group *g, const char *op) {
    if (!g || g->me < 0 || g->ranks[g->me] != c->rank)
        return xccl_err(XCCL_ERR_INVALID, "xccl %s: rank %d is not in the group", op, c->rank);
    if (c->ops == &xccl_shm_ops && !c->hdr->moe_max_tokens)
        return xccl_err(XCCL_ERR_INVALID, "xccl %s: the segment has no MoE area (moe_max_tokens = 0)", op);
    return XCCL_OK;
}

xccl_status xccl_moe_send_buffer(void **out, xccl_comm *c, xccl_group *g) {
    xccl_status s = moe_check(c, g, "moe_send_buffer");
    if (s) return s;
    if (c->ops != &xccl_shm_ops)
        return xccl_err(XCCL_ERR_INVALID, "xccl moe_send_buffer: needs the shm transport");
    int b = c->moe_parity;
    s = xccl_wait_readers(c, g, c->moe_send_mask[b], c->moe_send_event[b], disp_ack, NULL,
                          "xccl moe_send_buffer");
    if (s) return s;
    geo G;
    geometry(&G, c);
    *out = xccl_moe_send_at(c, c->rank, b) + G.rows;
    return XCCL_OK;
}

/* acc[h] += w * row[h] (separate multiply and add, never fused, so every
 * path rounds like the scalar reference), and the final f32 -> out store.
 * AVX2 versions are picked at run time; results are bit-identical. */
static void axpy_scalar(float *restrict acc, const void *row, float w, int H, xccl_dtype dt) {
    if (dt == XCCL_F32) {
        const float *r = row;
        for (int h = 0; h < H; h++) acc[h] += w * r[h];
    } else {
        const uint16_t *r = row;
        for (int h = 0; h < H; h++) {
            uint32_t u = (uint32_t)r[h] << 16;
            float f;
            memcpy(&f, &u, 4);
            acc[h] += w * f;
        }
    }
}

static void store_scalar(void *out, const float *acc, int H, xccl_dtype dt) {
    if (dt == XCCL_F32) memcpy(out, acc, (size_t)H * 4);
    else
        for (int h = 0; h < H; h++) ((uint16_t *)out)[h] = xccl_f32_to_bf16(acc[h]);
}

#if defined(__x86_64__)
#include <immintrin.h>
__attribute__((target("avx2"))) static void axpy_avx2(float *restrict acc, const void *row, float w,
                                                       int H, xccl_dtype dt) {
    __m256 wv = _mm256_set1_ps(w);
    int h = 0;
    if (dt == XCCL_F32) {
        const float *r = row;
        for (; h + 8 <= H; h += 8)
            _mm256_storeu_ps(acc + h, _mm256_add_ps(_mm256_loadu_ps(acc + h),
                                                    _mm256_mul_ps(wv, _mm256_loadu_ps(r + h))));
    } else {
        const uint16_t *r = row;
        for (; h + 8 <= H; h += 8) {
            __m256i u = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(r + h))), 16);
            _mm256_storeu_ps(acc + h, _mm256_add_ps(_mm256_loadu_ps(acc + h),
                                                    _mm256_mul_ps(wv, _mm256_castsi256_ps(u))));
        }
    }
    if (h < H) axpy_scalar(acc + h, (const uint8_t *)row + (size_t)h * xccl_dtype_size(dt), w, H - h, dt);
}

__attribute__((target("avx2"))) static void store_avx2(void *out, const float *acc, int H, xccl_dtype dt) {
    if (dt == XCCL_F32) {
        memcpy(out, acc, (size_t)H * 4);
        return;
    }
    uint16_t *o = out;
    int h = 0;
    const __m256i one = _mm256_set1_epi32(1), bias = _mm256_set1_epi32(0x7fff);
    const __m256i absm = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000);
    const __m256i qbit = _mm256_set1_epi32(0x40);
    for (; h + 8 <= H; h += 8) {
        __m256i u = _mm256_castps_si256(_mm256_loadu_ps(acc + h));
        __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), one);
        __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(bias, lsb)), 16);
        __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, absm), inf);
        __m256i qn = _mm256_or_si256(_mm256_srli_epi32(u, 16), qbit);
        r = _mm256_blendv_epi8(r, qn, nan);
        __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
        _mm_storeu_si128((__m128i *)(o + h), _mm256_castsi256_si128(p));
    }
    for (; h < H; h++) o[h] = xccl_f32_to_bf16(acc[h]);
}
#endif

/* Register-tiled weighted sum of one token: out[h] = sum over the n rows (j
 * order) of w[j] * row_j[h], starting from 0, with the same separate
 * multiply and add per element as axpy_*, so the bits equal the axpy loop's;
 * the accumulators stay in registers for a tile of 64 (AVX-512) or 32 (AVX2)
 * values instead of going through memory once per row. */
#if defined(__x86_64__)
#define WS_TILE 64
__attribute__((target("avx512f,avx512bw"))) static void wsum_avx512(void *out, const void *const *rows,
                                                                     const float *w, int n, int H, xccl_dtype dt,
                                                                     float *tmp) {
    const size_t es = xccl_dtype_size(dt);
    int h = 0;
    for (; h + WS_TILE <= H; h += WS_TILE) {
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int j = 0; j < n; j++) {
            const __m512 wv = _mm512_set1_ps(w[j]);
            __m512 r0, r1, r2, r3;
            if (dt == XCCL_F32) {
                const float *r = (const float *)rows[j] + h;
                r0 = _mm512_loadu_ps(r), r1 = _mm512_loadu_ps(r + 16), r2 = _mm512_loadu_ps(r + 32),
                r3 = _mm512_loadu_ps(r + 48);
            } else {
                const uint16_t *r = (const uint16_t *)rows[j] + h;
#define WS_BF(o) _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(r + o))), 16))
                r0 = WS_BF(0), r1 = WS_BF(16), r2 = WS_BF(32), r3 = WS_BF(48);
#undef WS_BF
            }
            a0 = _mm512_add_ps(a0, _mm512_mul_ps(wv, r0));
            a1 = _mm512_add_ps(a1, _mm512_mul_ps(wv, r1));
            a2 = _mm512_add_ps(a2, _mm512_mul_ps(wv, r2));
            a3 = _mm512_add_ps(a3, _mm512_mul_ps(wv, r3));
        }
        _mm512_storeu_ps(tmp, a0), _mm512_storeu_ps(tmp + 16, a1), _mm512_storeu_ps(tmp + 32, a2),
            _mm512_storeu_ps(tmp + 48, a3);
        store_avx2((uint8_t *)out + (size_t)h * es, tmp, WS_TILE, dt);
    }
    if (h < H) { /* the tail through the axpy path: same operations */
        memset(tmp, 0, (size_t)(H - h) * sizeof(float));
        for (int j = 0; j < n; j++) axpy_avx2(tmp, (const uint8_t *)rows[j] + (size_t)h * es, w[j], H - h, dt);
        store_avx2((uint8_t *)out + (size_t)h * es, tmp, H - h, dt);
    }
}
#endif

/* y[t] = sum_j w[t][j] * out_j(t) in j order; rowp(t, j) gives the row or NULL.
 * acc: H floats of scratch (at least WS_TILE). */
typedef const void *(*row_fn)(void *ctx, int t, int j);
static void weighted_sum(void *y, const float *w, int T, int k, int H, xccl_dtype dt, float *acc,
                         row_fn rowp, void *ctx) {
    void (*axpy)(float *restrict, const void *, float, int, xccl_dtype) = axpy_scalar;
    void (*store)(void *, const float *, int, xccl_dtype) = store_scalar;
    int wide = 0;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx2")) {
        axpy = axpy_avx2;
        store = store_avx2;
    }
    wide = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && H >= WS_TILE &&
           k <= 64 && !getenv("XCCL_NO_AVX512");
#endif
    const size_t ob = (size_t)H * xccl_dtype_size(dt);
    for (int t = 0; t < T; t++) {
#if defined(__x86_64__)
        if (wide) {
            const void *rows[64];
            float wj[64];
            int n = 0;
            for (int j = 0; j < k; j++) {
                const void *row = rowp(ctx, t, j);
                if (row) rows[n] = row, wj[n++] = w[(size_t)t * k + j];
            }
            wsum_avx512((uint8_t *)y + (size_t)t * ob, rows, wj, n, H, dt, acc);
            continue;
        }
#endif
        memset(acc, 0, (size_t)H * sizeof(float));
        for (int j = 0; j < k; j++) {
            const void *row = rowp(ctx, t, j);
            if (row) axpy(acc, row, w[(size_t)t * k + j], H, dt);
        }
        store((uint8_t *)y + (size_t)t * ob, acc, H, dt);
    }
}

xccl_status xccl_moe_dispatch_p2p(xccl_moe_recv *recv, xccl_moe_handle **handle, const void *x,
                                  xccl_dtype dtype, int hidden, unsigned flags,
                                  const xccl_moe_layout *l, xccl_comm *c, xccl_group *g);
xccl_status xccl_moe_combine_p2p(void *y, const float *w, const void *const *expert_out,
                                 xccl_moe_handle *h, xccl_comm *c, xccl_group *g);

static xccl_status common_checks(const xccl_moe_layout *l, xccl_dtype dtype, int hidden,
                                 struct xccl_comm *c, xccl_group *g) {
    if (!l || !l->route_member)
        return xccl_err(XCCL_ERR_INVALID, "xccl moe_dispatch: NULL or empty layout");
    if (l->num_members != g->n)
        return xccl_err(XCCL_ERR_INVALID, "xccl moe_dispatch: layout is for %d members, group has %d",
                        l->num_members, g->n);
    if (dtype != XCCL_F32 && dtype != XCCL_BF16)
        return xccl_err(XCCL_ERR_INVALID, "xccl moe_dispatch: dtype %d is not f32 or bf16", (int)dtype);
    if (hidden < 1) return xccl_err(XCCL_ERR_INVALID, "xccl moe_dispatch: hidden %d", hidden);
    if (c->moe.active)
        return xccl_err(XCCL_ERR_INVALID, "xccl moe_dispatch: the previous dispatch was not combined");
    if (c->ops == &xccl_shm_ops) {
        const xccl_seg_header *h = c->hdr;
        if ((uint32_t)l->num_tokens > h->moe_max_tokens || (uint32_t)hidden > h->moe_max_hidden ||
            (uint32_t)l->topk > h->moe_max_topk || (uint32_t)l->num_local_experts > h->moe_max_local_experts)
            return xccl_err(XCCL_ERR_RANGE,
                            "xccl moe_dispatch: tokens %d / hidden %d / topk %d / local experts %d exceed "
                            "the segment's %u / %u / %u / %u",
                            l->num_tokens, hidden, l->topk, l->num_local_experts, h->moe_max_tokens,
                            h->moe_max_hidden, h->moe_max_topk, h->moe_max_local_experts);
    }
    return XCCL_OK;
}

xccl_status xccl_moe_dispatch(xccl_moe_recv *recv, xccl_moe_handle **handle, const void *x,
                              xccl_dtype dtype, int hidden, unsigned flags, const xccl_moe_layout *l,
                              xccl_comm *c, xccl_group *g) {
    xccl_status s = moe_check(c, g, "moe_dispatch");
    if (s) return s;
    s = common_checks(l, dtype, hidden, c, g);
    if (s) return s;
    if (!recv || !handle || (l->num_tokens && !x))
        return xccl_err(XCCL_ERR_INVALID, "xccl moe_dispatch: NULL argument");
    if (c->ops != &xccl_shm_ops)
        return xccl_moe_dispatch_p2p(recv, handle, x, dtype, hidden, flags, l, c, g);
    if (flags & ~(XCCL_MOE_INT8 | XCCL_MOE_IN_PLACE))
        return xccl_err(XCCL_ERR_INVALID, "xccl moe_dispatch: unknown flags 0x%x", flags);
    const int quant = (flags & XCCL_MOE_INT8) != 0, in_place = (flags & XCCL_MOE_IN_PLACE) != 0;
    if (!c->moe_row_ptrs) {
        c->moe_row_ptrs = malloc(((size_t)c->hdr->moe_max_recv_rows + 1) * sizeof(void *));
        if (!c->moe_row_ptrs) return xccl_err(XCCL_ERR_NOMEM, "xccl moe_dispatch: out of memory");
    }

    geo G;
    geometry(&G, c);
    const int n = g->n, L = l->num_local_experts, T = l->num_tokens, k = l->topk, me = g->me;
    const xccl_dtype wdt = quant ? XCCL_I8 : dtype;
    const size_t rb = (size_t)hidden * xccl_dtype_size(wdt), ob = (size_t)hidden * xccl_dtype_size(dtype);
    const int b = c->moe_parity;
    uint64_t cnt = ++g->moe_counter, ev = xccl_seq(g->epoch, cnt);

    /* 1. my send and recv buffers b must be free */
    s = xccl_wait_readers(c, g, c->moe_send_mask[b], c->moe_send_event[b], disp_ack, NULL,
                          "xccl moe_dispatch (send buffer)");
    if (!s)
        s = xccl_wait_readers(c, g, c->moe_recv_mask[b], c->moe_recv_event[b], comb_ack, NULL,
                              "xccl moe_dispatch (recv buffer)");
    if (s) return moe_fail(c, g, ev, s);

    /* 2. fill my send buffer */
    uint8_t *sb = xccl_moe_send_at(c, c->rank, b);
    xccl_moe_send_hdr *sh = (xccl_moe_send_hdr *)sb;
    int32_t *counts = (int32_t *)(sb + G.counts), *idxoff = (int32_t *)(sb + G.idxoff);
    int32_t *idx = (int32_t *)(sb + G.idx);
    uint8_t *rows = sb + G.rows;
    float *scales = (float *)(sb + G.scales);
    sh->event = ev;
    sh->dtype = wdt;
    sh->in_dtype = dtype;
    sh->hidden = hidden;
    sh->tokens = T;
    sh->members = n;
    sh->local = L;
    int off = 0;
    for (int d = 0; d < n; d++) {
        idxoff[d] = off;
        for (int j = 0; j < L; j++) {
            counts[d * L + j] = l->num_tokens_per_expert[d * L + j];
            off += l->num_tokens_per_expert[d * L + j];
        }
    }
    for (long i = 0; i < (long)T * k; i++) {
        int d = l->route_member[i];
        if (d < 0) continue;
        int slot = l->route_slot[i];
        int base = idxoff[d];
        for (int j = 0; j < slot; j++) base += counts[d * L + j];
        idx[base + l->route_pos[i]] = (int32_t)(i / k);
    }
    if (quant) {
        for (int t = 0; t < T; t++)
            xccl_quantize_row_i8((int8_t *)rows + (size_t)t * rb, &scales[t],
                                 (const uint8_t *)x + (size_t)t * ob, dtype, hidden);
    } else if (x != rows) {
        memcpy(rows, x, (size_t)T * rb);
    }
    c->moe_send_event[b] = ev;
    c->moe_send_mask[b] = xccl_group_mask(g);
    c->moe_parity ^= 1;
    for (int d = 0; d < n; d++) {
        xccl_meta *m = xccl_meta_at(c, c->rank, g->ranks[d], XCCL_CH_DISP);
        m->prod_aux[0] = (uint64_t)b;
        atomic_store_explicit(&m->prod, ev, memory_order_release);
    }
    xccl_wake_group(c, g);

    /* 3. wait for every member's send buffer */
    s = moe_wait(c, g, XCCL_CH_DISP, 0, ev, "xccl moe_dispatch");
    if (s) return moe_fail(c, g, ev, s);

    /* 4. size my per-slot blocks */
    const uint8_t *src_buf[XCCL_MAX_RANKS];
    int total = 0;
    int slot_rows[256];
    for (int j = 0; j < L; j++) slot_rows[j] = 0;
    for (int si = 0; si < n; si++) {
        xccl_meta *m = xccl_meta_at(c, g->ranks[si], c->rank, XCCL_CH_DISP);
        int sbuf = (int)(m->prod_aux[0] & 1);
        src_buf[si] = xccl_moe_send_at(c, g->ranks[si], sbuf);
        const xccl_moe_send_hdr *h = (const xccl_moe_send_hdr *)src_buf[si];
        if (h->event != ev || h->dtype != (int32_t)wdt || h->hidden != hidden || h->members != n ||
            h->local != L) {
            return moe_fail(c, g, ev, xccl_err_peer(XCCL_ERR_PEER, g->ranks[si],
                                 "xccl moe_dispatch: rank %d dispatched event %llu dtype %d hidden %d "
                                 "members %d local %d; this rank expects event %llu dtype %d hidden %d "
                                 "members %d local %d",
                                 g->ranks[si], (unsigned long long)(h->event & ((1ull << 40) - 1)),
                                 h->dtype, h->hidden, h->members, h->local,
                                 (unsigned long long)cnt, (int)wdt, hidden, n, L));
        }
        const int32_t *sc = (const int32_t *)(src_buf[si] + G.counts) + me * L;
        for (int j = 0; j < L; j++) {
            if (sc[j] < 0 || sc[j] > (int)c->hdr->moe_max_tokens * (int)c->hdr->moe_max_topk) {
                return moe_fail(c, g, ev, xccl_err_peer(XCCL_ERR_PEER, g->ranks[si],
                                     "xccl moe_dispatch: rank %d sent bad count %d", g->ranks[si], sc[j]));
            }
            slot_rows[j] += sc[j];
            total += sc[j];
        }
    }
    if ((uint32_t)total > c->hdr->moe_max_recv_rows) {
        return moe_fail(c, g, ev, xccl_err(XCCL_ERR_RANGE,
                        "xccl moe_dispatch: rank %d would receive %d rows, its buffer holds %u "
                        "(moe_max_recv_rows)",
                        c->rank, total, c->hdr->moe_max_recv_rows));
    }
    uint8_t *rbuf = xccl_moe_recv_at(c, c->rank, b);
    int32_t *start = (int32_t *)(rbuf + G.start);
    uint8_t *rrows = rbuf + G.rrows;
    float *rscales = (float *)(rbuf + G.rscales);
    uint8_t *rout = rbuf + G.rout;
    int slot_base[256] = {0};
    for (int j = 0, acc = 0; j < L; j++) {
        slot_base[j] = acc;
        acc += slot_rows[j];
    }

    /* 5. gather rows straight out of the senders' buffers */
    int fill[256];
    memcpy(fill, slot_base, sizeof(int) * (size_t)L);
    for (int si = 0; si < n; si++) {
        const uint8_t *sbp = src_buf[si];
        const int32_t *sc = (const int32_t *)(sbp + G.counts) + me * L;
        const int32_t *sidx = (const int32_t *)(sbp + G.idx) + ((const int32_t *)(sbp + G.idxoff))[me];
        const uint8_t *srows = sbp + G.rows;
        const float *sscales = (const float *)(sbp + G.scales);
        const int stok = ((const xccl_moe_send_hdr *)sbp)->tokens;
        for (int j = 0; j < L; j++) {
            start[si * L + j] = fill[j];
            for (int i = 0; i < sc[j]; i++) {
                int t = sidx[i];
                if (t < 0 || t >= stok) {
                    return moe_fail(c, g, ev, xccl_err_peer(XCCL_ERR_PEER, g->ranks[si],
                                         "xccl moe_dispatch: rank %d sent token index %d of %d",
                                         g->ranks[si], t, stok));
                }
                const uint8_t *src = srows + (size_t)t * rb;
                if (in_place) {
                    c->moe_row_ptrs[fill[j] + i] = src;
                } else {
                    uint8_t *dst = rrows + (size_t)(fill[j] + i) * rb;
                    memcpy(dst, src, rb);
                    c->moe_row_ptrs[fill[j] + i] = dst;
                }
                if (quant) rscales[fill[j] + i] = sscales[t];
            }
            fill[j] += sc[j];
            sidx += sc[j];
        }
    }
    c->moe_recv_event[b] = ev;
    c->moe_recv_mask[b] = xccl_group_mask(g);
    if (!in_place) { /* rows copied: the senders may reuse their buffers */
        for (int si = 0; si < n; si++) {
            xccl_meta *m = xccl_meta_at(c, g->ranks[si], c->rank, XCCL_CH_DISP);
            atomic_store_explicit(&m->cons, ev, memory_order_release);
        }
        xccl_wake_group(c, g);
    }

    /* 6. outputs */
    struct xccl_moe_handle *hd = &c->moe;
    hd->active = 1;
    hd->event = ev;
    hd->buf = b;
    hd->layout = l;
    hd->hidden = hidden;
    hd->in_dtype = dtype;
    hd->num_rows_total = total;
    hd->L = L;
    hd->group_epoch = (int)g->epoch;
    hd->me = me;
    hd->in_place = in_place;
    for (int j = 0; j < L; j++) {
        hd->slot_rows[j] = slot_rows[j];
        hd->slot_base[j] = slot_base[j];
        recv[j].num_rows = slot_rows[j];
        recv[j].rows = in_place ? NULL : rrows + (size_t)slot_base[j] * rb;
        recv[j].row_ptrs = c->moe_row_ptrs + slot_base[j];
        recv[j].scales = quant ? rscales + slot_base[j] : NULL;
        recv[j].out = rout + (size_t)slot_base[j] * ob;
    }
    *handle = hd;
    return XCCL_OK;
}

typedef struct comb_ctx {
    struct xccl_comm *c;
    const xccl_moe_layout *l;
    const uint8_t *out_base[XCCL_MAX_RANKS];  /* member's recv-out area */
    const int32_t *start[XCCL_MAX_RANKS];     /* member's start table row for me */
    size_t ob;
} comb_ctx;

static const void *comb_row(void *vctx, int t, int j) {
    comb_ctx *x = vctx;
    size_t i = (size_t)t * x->l->topk + j;
    int d = x->l->route_member[i];
    if (d < 0) return NULL;
    return x->out_base[d] + (size_t)(x->start[d][x->l->route_slot[i]] + x->l->route_pos[i]) * x->ob;
}

xccl_status xccl_moe_combine(void *y, const float *w, const void *const *expert_out,
                             xccl_moe_handle *h, xccl_comm *c, xccl_group *g) {
    xccl_status s = moe_check(c, g, "moe_combine");
    if (s) return s;
    if (!h || h != &c->moe || !h->active)
        return xccl_err(XCCL_ERR_INVALID, "xccl moe_combine: no dispatch to combine");
    if ((uint32_t)h->group_epoch != g->epoch || h->me != g->me)
        return xccl_err(XCCL_ERR_INVALID, "xccl moe_combine: handle belongs to another group");
    const xccl_moe_layout *l = h->layout;
    if ((l->num_tokens && (!y || !w)))
        return xccl_err(XCCL_ERR_INVALID, "xccl moe_combine: NULL argument");
    if (c->ops != &xccl_shm_ops) return xccl_moe_combine_p2p(y, w, expert_out, h, c, g);
    h->active = 0;
    geo G;
    geometry(&G, c);
    const int n = g->n, L = h->L, me = g->me;
    const size_t ob = (size_t)h->hidden * xccl_dtype_size(h->in_dtype);
    const uint64_t ev = h->event;
    uint8_t *rbuf = xccl_moe_recv_at(c, c->rank, h->buf);
    uint8_t *rout = rbuf + G.rout;
    if (expert_out) {
        for (int j = 0; j < L; j++) {
            uint8_t *dst = rout + (size_t)h->slot_base[j] * ob;
            if (h->slot_rows[j] && expert_out[j] != dst) {
                if (!expert_out[j])
                    return moe_fail(c, g, ev, xccl_err(XCCL_ERR_INVALID, "xccl moe_combine: expert_out[%d] NULL", j));
                memcpy(dst, expert_out[j], (size_t)h->slot_rows[j] * ob);
            }
        }
    }
    if (h->in_place) { /* the expert has consumed the rows in the senders' buffers */
        for (int si = 0; si < n; si++) {
            xccl_meta *m = xccl_meta_at(c, g->ranks[si], c->rank, XCCL_CH_DISP);
            atomic_store_explicit(&m->cons, ev, memory_order_release);
        }
    }
    for (int d = 0; d < n; d++) {
        xccl_meta *m = xccl_meta_at(c, c->rank, g->ranks[d], XCCL_CH_COMB);
        m->prod_aux[0] = (uint64_t)h->buf;
        atomic_store_explicit(&m->prod, ev, memory_order_release);
    }
    xccl_wake_group(c, g);
    s = moe_wait(c, g, XCCL_CH_COMB, 0, ev, "xccl moe_combine");
    if (s) return moe_fail(c, g, ev, s);
    if (!c->moe_acc) {
        c->moe_acc = malloc((size_t)c->hdr->moe_max_hidden * sizeof(float));
        if (!c->moe_acc) return moe_fail(c, g, ev, xccl_err(XCCL_ERR_NOMEM, "xccl moe_combine: out of memory"));
    }
    comb_ctx x = {.c = c, .l = l, .ob = ob};
    for (int d = 0; d < n; d++) {
        xccl_meta *m = xccl_meta_at(c, g->ranks[d], c->rank, XCCL_CH_COMB);
        const uint8_t *db = xccl_moe_recv_at(c, g->ranks[d], (int)(m->prod_aux[0] & 1));
        x.out_base[d] = db + G.rout;
        x.start[d] = (const int32_t *)(db + G.start) + me * L;
    }
    weighted_sum(y, w, l->num_tokens, l->topk, h->hidden, h->in_dtype, c->moe_acc, comb_row, &x);
    for (int d = 0; d < n; d++) {
        xccl_meta *m = xccl_meta_at(c, g->ranks[d], c->rank, XCCL_CH_COMB);
        atomic_store_explicit(&m->cons, ev, memory_order_release);
    }
    xccl_wake_group(c, g);
    return XCCL_OK;
}

/* --- p2p (tcp) version ----------------------------------------------------------
 * Two exchanges per dispatch: counts [L] per member, then per member one
 * message [scales (int8 only)][rows] with rows grouped by slot in route order.
 * The receiver concatenates, per slot, the sources in member order (the same
 * order as the shm path). Combine sends each source its output rows in the
 * same (slot, position) order; the source weight-sums them. */

static xccl_status p2p_alloc(struct xccl_comm *c, int n, int L, size_t total, size_t rb, size_t ob) {
    free(c->p2p_rows);
    free(c->p2p_out);
    free(c->p2p_scales);
    free(c->p2p_cnt);
    free(c->p2p_start);
    c->p2p_rows = malloc(total * rb + 1);
    c->p2p_out = malloc(total * ob + 1);
    c->p2p_scales = malloc(total * 4 + 4);
    c->p2p_cnt = calloc((size_t)n * L + 1, 4);
    c->p2p_start = calloc((size_t)n * L + 1, 4);
    if (!c->p2p_rows || !c->p2p_out || !c->p2p_scales || !c->p2p_cnt || !c->p2p_start)
        return xccl_err(XCCL_ERR_NOMEM, "xccl moe (p2p): out of memory");
    return XCCL_OK;
}

xccl_status xccl_moe_dispatch_p2p(xccl_moe_recv *recv, xccl_moe_handle **handle, const void *x,
                                  xccl_dtype dtype, int hidden, unsigned flags,
                                  const xccl_moe_layout *l, xccl_comm *c, xccl_group *g) {
    if (flags & ~(XCCL_MOE_INT8 | XCCL_MOE_IN_PLACE))
        return xccl_err(XCCL_ERR_INVALID, "xccl moe_dispatch: unknown flags 0x%x", flags);
    const int quant = (flags & XCCL_MOE_INT8) != 0;
    const int n = g->n, L = l->num_local_experts, T = l->num_tokens, k = l->topk;
    if (L > 256) return xccl_err(XCCL_ERR_INVALID, "xccl moe_dispatch: %d local experts > 256", L);
    const xccl_dtype wdt = quant ? XCCL_I8 : dtype;
    const size_t rb = (size_t)hidden * xccl_dtype_size(wdt), ob = (size_t)hidden * xccl_dtype_size(dtype);
    xccl_status s = XCCL_OK;
    /* 1. counts */
    int32_t *scnt = calloc((size_t)n * L + 1, 4), *rcnt = calloc((size_t)n * L + 1, 4);
    uint8_t **sbuf = calloc((size_t)n, sizeof *sbuf);
    size_t *slen = calloc((size_t)n, sizeof *slen), *rlen = calloc((size_t)n, sizeof *rlen);
    size_t *rcap = calloc((size_t)n, sizeof *rcap);
    void **rbuf = calloc((size_t)n, sizeof *rbuf);
    const void **sptr = calloc((size_t)n, sizeof *sptr);
    if (!scnt || !rcnt || !sbuf || !slen || !rlen || !rcap || !rbuf || !sptr) {
        s = xccl_err(XCCL_ERR_NOMEM, "xccl moe_dispatch (p2p): out of memory");
        goto out;
    }
    memcpy(scnt, l->num_tokens_per_expert, (size_t)n * L * 4);
    for (int d = 0; d < n; d++) {
        rbuf[d] = rcnt + (size_t)d * L;
        rcap[d] = (size_t)L * 4;
        sptr[d] = scnt + (size_t)d * L;
        slen[d] = (size_t)L * 4;
    }
    s = xccl_p2p_exchange(c, g, rbuf, rcap, rlen, sptr, slen);
    if (s) goto out;
    memcpy(rcnt + (size_t)g->me * L, scnt + (size_t)g->me * L, (size_t)L * 4);
    /* 2. pack rows per member: [scales][rows], slot-major, route order */
    size_t total = 0;
    for (int d = 0; d < n; d++)
        for (int j = 0; j < L; j++) {
            if (rcnt[d * L + j] < 0 || rcnt[d * L + j] > (1 << 24)) {
                s = xccl_err_peer(XCCL_ERR_PEER, g->ranks[d], "xccl moe_dispatch: rank %d sent bad count %d",
                                  g->ranks[d], rcnt[d * L + j]);
                goto out;
            }
            total += (size_t)rcnt[d * L + j];
        }
    for (int d = 0; d < n; d++) {
        size_t rows = (size_t)l->num_tokens_per_rank[d];
        sbuf[d] = malloc(rows * (rb + 4) + 1);
        if (!sbuf[d]) {
            s = xccl_err(XCCL_ERR_NOMEM, "xccl moe_dispatch (p2p): out of memory");
            goto out;
        }
        slen[d] = rows * ((quant ? 4 : 0) + rb);
        sptr[d] = sbuf[d];
    }
    for (long i = 0; i < (long)T * k; i++) {
        int d = l->route_member[i];
        if (d < 0) continue;
        size_t rows = (size_t)l->num_tokens_per_rank[d];
        size_t pos = (size_t)l->route_pos[i];
        for (int j = 0; j < l->route_slot[i]; j++) pos += (size_t)l->num_tokens_per_expert[d * L + j];
        uint8_t *dst = sbuf[d] + (quant ? rows * 4 : 0) + pos * rb;
        const uint8_t *src = (const uint8_t *)x + (size_t)(i / k) * ob;
        if (quant) xccl_quantize_row_i8((int8_t *)dst, (float *)sbuf[d] + pos, src, dtype, hidden);
        else memcpy(dst, src, rb);
    }
    s = p2p_alloc(c, n, L, total, rb, ob);
    if (s) goto out;
    /* receive straight into per-source staging, then place per slot */
    for (int sidx = 0; sidx < n; sidx++) {
        size_t rows = 0;
        for (int j = 0; j < L; j++) rows += (size_t)rcnt[sidx * L + j];
        rcap[sidx] = rows * ((quant ? 4 : 0) + rb);
        rbuf[sidx] = malloc(rcap[sidx] + 1);
        if (!rbuf[sidx]) {
            s = xccl_err(XCCL_ERR_NOMEM, "xccl moe_dispatch (p2p): out of memory");
            goto out_rbuf;
        }
    }
    s = xccl_p2p_exchange(c, g, rbuf, rcap, rlen, sptr, slen);
    if (s) goto out_rbuf;
    memcpy(rbuf[g->me], sbuf[g->me], slen[g->me]);
    rlen[g->me] = slen[g->me];
    int slot_rows[256] = {0}, slot_base[256] = {0};
    for (int j = 0; j < L; j++) {
        slot_rows[j] = 0;
        for (int si = 0; si < n; si++) slot_rows[j] += rcnt[si * L + j];
    }
    for (int j = 0, acc = 0; j < L; j++) {
        slot_base[j] = acc;
        acc += slot_rows[j];
    }
    int fill[256];
    memcpy(fill, slot_base, sizeof(int) * (size_t)L);
    for (int si = 0; si < n; si++) {
        if (rlen[si] != rcap[si]) {
            s = xccl_err_peer(XCCL_ERR_PEER, g->ranks[si], "xccl moe_dispatch: rank %d sent %zu bytes, want %zu",
                              g->ranks[si], rlen[si], rcap[si]);
            goto out_rbuf;
        }
        size_t rows = rcap[si] / ((quant ? 4 : 0) + rb), r = 0;
        const uint8_t *src = (const uint8_t *)rbuf[si] + (quant ? rows * 4 : 0);
        for (int j = 0; j < L; j++) {
            c->p2p_cnt[si * L + j] = rcnt[si * L + j];
            c->p2p_start[si * L + j] = fill[j];
            for (int q = 0; q < rcnt[si * L + j]; q++, r++) {
                memcpy(c->p2p_rows + (size_t)(fill[j] + q) * rb, src + r * rb, rb);
                if (quant) c->p2p_scales[fill[j] + q] = ((const float *)rbuf[si])[r];
            }
            fill[j] += rcnt[si * L + j];
        }
    }
    void *np = realloc(c->moe_row_ptrs, (total + 1) * sizeof(void *));
    if (!np) {
        s = xccl_err(XCCL_ERR_NOMEM, "xccl moe_dispatch (p2p): out of memory");
        goto out_rbuf;
    }
    c->moe_row_ptrs = np;
    for (size_t r = 0; r < total; r++) c->moe_row_ptrs[r] = c->p2p_rows + r * rb;
    struct xccl_moe_handle *hd = &c->moe;
    hd->active = 1;
    hd->layout = l;
    hd->hidden = hidden;
    hd->in_dtype = dtype;
    hd->num_rows_total = (int)total;
    hd->L = L;
    hd->group_epoch = (int)g->epoch;
    hd->me = g->me;
    hd->in_place = 0;
    for (int j = 0; j < L; j++) {
        hd->slot_rows[j] = slot_rows[j];
        hd->slot_base[j] = slot_base[j];
        recv[j].num_rows = slot_rows[j];
        recv[j].rows = c->p2p_rows + (size_t)slot_base[j] * rb;
        recv[j].row_ptrs = c->moe_row_ptrs + slot_base[j];
        recv[j].scales = quant ? c->p2p_scales + slot_base[j] : NULL;
        recv[j].out = c->p2p_out + (size_t)slot_base[j] * ob;
    }
    *handle = hd;
out_rbuf:
    for (int si = 0; si < n; si++) free(rbuf[si]);
out:
    if (sbuf)
        for (int d = 0; d < n; d++) free(sbuf[d]);
    free(scnt);
    free(rcnt);
    free(sbuf);
    free(slen);
    free(rlen);
    free(rcap);
    free(rbuf);
    free(sptr);
    return s;
}

typedef struct p2p_comb_ctx {
    const xccl_moe_layout *l;
    uint8_t **back; /* [n] rows returned by member d, slot-major */
    size_t ob;
} p2p_comb_ctx;

static const void *p2p_comb_row(void *vctx, int t, int j) {
    p2p_comb_ctx *x = vctx;
    size_t i = (size_t)t * x->l->topk + j;
    int d = x->l->route_member[i];
    if (d < 0) return NULL;
    size_t pos = (size_t)x->l->route_pos[i];
    for (int q = 0; q < x->l->route_slot[i]; q++)
        pos += (size_t)x->l->num_tokens_per_expert[d * x->l->num_local_experts + q];
    return x->back[d] + pos * x->ob;
}

xccl_status xccl_moe_combine_p2p(void *y, const float *w, const void *const *expert_out,
                                 xccl_moe_handle *h, xccl_comm *c, xccl_group *g) {
    h->active = 0;
    const xccl_moe_layout *l = h->layout;
    const int n = g->n, L = h->L;
    const size_t ob = (size_t)h->hidden * xccl_dtype_size(h->in_dtype);
    xccl_status s = XCCL_OK;
    if (expert_out)
        for (int j = 0; j < L; j++) {
            if (!h->slot_rows[j]) continue;
            if (!expert_out[j]) return xccl_err(XCCL_ERR_INVALID, "xccl moe_combine: expert_out[%d] NULL", j);
            memcpy(c->p2p_out + (size_t)h->slot_base[j] * ob, expert_out[j], (size_t)h->slot_rows[j] * ob);
        }
    uint8_t **sb = calloc((size_t)n, sizeof *sb), **back = calloc((size_t)n, sizeof *back);
    size_t *sl = calloc((size_t)n, sizeof *sl), *rc = calloc((size_t)n, sizeof *rc), *rl = calloc((size_t)n, sizeof *rl);
    if (!sb || !back || !sl || !rc || !rl) {
        s = xccl_err(XCCL_ERR_NOMEM, "xccl moe_combine (p2p): out of memory");
        goto out;
    }
    for (int si = 0; si < n; si++) {
        size_t rows = 0;
        for (int j = 0; j < L; j++) rows += (size_t)c->p2p_cnt[si * L + j];
        sb[si] = malloc(rows * ob + 1);
        back[si] = malloc((size_t)l->num_tokens_per_rank[si] * ob + 1);
        if (!sb[si] || !back[si]) {
            s = xccl_err(XCCL_ERR_NOMEM, "xccl moe_combine (p2p): out of memory");
            goto out;
        }
        size_t r = 0;
        for (int j = 0; j < L; j++) {
            size_t cnt = (size_t)c->p2p_cnt[si * L + j];
            memcpy(sb[si] + r * ob, c->p2p_out + (size_t)c->p2p_start[si * L + j] * ob, cnt * ob);
            r += cnt;
        }
        sl[si] = rows * ob;
        rc[si] = (size_t)l->num_tokens_per_rank[si] * ob;
    }
    s = xccl_p2p_exchange(c, g, (void *const *)back, rc, rl, (const void *const *)sb, sl);
    if (s) goto out;
    memcpy(back[g->me], sb[g->me], sl[g->me]);
    for (int d = 0; d < n; d++)
        if (d != g->me && rl[d] != rc[d]) {
            s = xccl_err_peer(XCCL_ERR_PEER, g->ranks[d], "xccl moe_combine: rank %d returned %zu bytes, want %zu",
                              g->ranks[d], rl[d], rc[d]);
            goto out;
        }
    if (!c->moe_acc) c->moe_acc = malloc((size_t)h->hidden * sizeof(float) + 4);
    else {
        void *np = realloc(c->moe_acc, (size_t)h->hidden * sizeof(float) + 4);
        if (np) c->moe_acc = np;
        else { free(c->moe_acc); c->moe_acc = NULL; }
    }
    if (!c->moe_acc) {
        s = xccl_err(XCCL_ERR_NOMEM, "xccl moe_combine (p2p): out of memory");
        goto out;
    }
    p2p_comb_ctx x = {l, back, ob};
    weighted_sum(y, w, l->num_tokens, l->topk, h->hidden, h->in_dtype, c->moe_acc, p2p_comb_row, &x);
out:
    for (int d = 0; sb && back && d < n; d++) {
        free(sb[d]);
        free(back[d]);
    }
    free(sb);
    free(back);
    free(sl);
    free(rc);
    free(rl);
    return s;
}
