/*
 * test_xccl_moe.c — MoE layout / dispatch / combine between real processes.
 *
 * Every round draws (from a seed all ranks share) the hidden size, dtype,
 * int8 quantization, top-k, an expert map with 1..3 replicas per expert on
 * random ranks, and per rank its tokens, top-k ids (some masked -1) and
 * weights. Each rank regenerates every other rank's inputs, recomputes the
 * routing with its own implementation of the rotation policy, and checks the
 * received rows per local expert and the combined output byte-exact. The
 * "expert" is out = in * (slot+1)/2 + rank, written in place or into separate
 * buffers. Bad input (expert ids out of range, a map naming a rank outside
 * the group, oversize hidden, combine without dispatch) must fail cleanly and
 * leave nothing half done.
 */
#include "xccl_testutil.h"

#include <stdlib.h>

#define MAXT 48
#define MAXH 300
#define MAXK 6
#define MAXL 4
#define MAXE 12
#define MAXR 3
#define ROUNDS 24

static int seg_fd;

typedef struct round_cfg {
    int H, k, E, L, quant, in_place, use_sendbuf, no_gather;
    xccl_dtype dt;
    int nrep[MAXE], rrank[MAXE * MAXR], rslot[MAXE * MAXR];
} round_cfg;

static void gen_round(round_cfg *rc, int round, int n) {
    uint64_t s = tu_seed(round, 1, 1);
    rc->H = tu_range(&s, 1, MAXH);
    rc->k = tu_range(&s, 1, MAXK);
    rc->E = tu_range(&s, 1, MAXE);
    rc->L = tu_range(&s, 1, MAXL);
    rc->dt = tu_range(&s, 0, 1) ? XCCL_BF16 : XCCL_F32;
    rc->quant = tu_range(&s, 0, 2) == 0;
    rc->in_place = tu_range(&s, 0, 1);
    rc->use_sendbuf = !rc->quant && tu_range(&s, 0, 3) == 0;
    rc->no_gather = tu_range(&s, 0, 1);
    for (int e = 0; e < rc->E; e++) {
        int maxr = n < MAXR ? n : MAXR;
        rc->nrep[e] = tu_range(&s, 1, maxr);
        int used[64] = {0};
        for (int r = 0; r < rc->nrep[e]; r++) {
            int rk;
            do rk = tu_range(&s, 0, n - 1);
            while (used[rk]);
            used[rk] = 1;
            rc->rrank[e * MAXR + r] = rk;
            rc->rslot[e * MAXR + r] = tu_range(&s, 0, rc->L - 1);
        }
    }
}

typedef struct rank_in {
    int T;
    int32_t ids[MAXT * MAXK];
    float w[MAXT * MAXK];
    uint8_t x[MAXT * MAXH * 4];
} rank_in;

static void gen_input(rank_in *in, const round_cfg *rc, int round, int rank) {
    uint64_t s = tu_seed(round, rank, 2);
    in->T = tu_range(&s, 0, MAXT);
    if (tu_range(&s, 0, 7) == 0) in->T = 0;
    for (int i = 0; i < in->T * rc->k; i++) {
        in->ids[i] = tu_range(&s, 0, 9) == 0 ? -1 : tu_range(&s, 0, rc->E - 1);
        in->w[i] = tu_float(&s);
    }
    for (int i = 0; i < in->T * rc->H; i++) {
        float v = tu_float(&s) * 3.0f;
        if (rc->dt == XCCL_F32) memcpy(in->x + (size_t)i * 4, &v, 4);
        else {
            uint16_t b = xccl_f32_to_bf16(v);
            memcpy(in->x + (size_t)i * 2, &b, 2);
        }
    }
}

static float ldv(const void *p, int i, xccl_dtype dt) {
    if (dt == XCCL_F32) return ((const float *)p)[i];
    return xccl_bf16_to_f32(((const uint16_t *)p)[i]);
}
static void stv(void *p, int i, xccl_dtype dt, float v) {
    if (dt == XCCL_F32) ((float *)p)[i] = v;
    else ((uint16_t *)p)[i] = xccl_f32_to_bf16(v);
}

/* Independent int8 quantizer (same spec as the library's). */
static void ref_quant(int8_t *q, float *scale, const void *x, xccl_dtype dt, int H) {
    float amax = 0;
    for (int i = 0; i < H; i++) {
        float a = ldv(x, i, dt);
        a = a < 0 ? -a : a;
        if (a > amax) amax = a;
    }
    float s = amax / 127.f, inv = s > 0 ? 1.f / s : 0.f;
    for (int i = 0; i < H; i++) {
        float r = roundf(ldv(x, i, dt) * inv);
        q[i] = (int8_t)(r > 127 ? 127 : r < -127 ? -127 : r);
    }
    *scale = s;
}

/* Routing for rank `rank`'s tokens: member and slot per (t,j). */
static void ref_route(int *dst, int *slot, const rank_in *in, const round_cfg *rc, int round, int rank) {
    uint32_t rot[MAXE] = {0};
    for (int i = 0; i < in->T * rc->k; i++) {
        int e = in->ids[i];
        if (e < 0) { dst[i] = slot[i] = -1; continue; }
        int r = (int)((rot[e]++ + (uint64_t)round + (uint64_t)rank) % (uint64_t)rc->nrep[e]);
        dst[i] = rc->rrank[e * MAXR + r];
        slot[i] = rc->rslot[e * MAXR + r];
    }
}

/* The expert: out[h] = v[h] * (slot+1)/2 + rank (f32), stored in dt. */
static void expert(void *out, const float *v, int H, int slot, int rank, xccl_dtype dt) {
    for (int h = 0; h < H; h++) stv(out, h, dt, v[h] * (float)(slot + 1) * 0.5f + (float)rank);
}

/* The row a receiver sees for token t of `in`, as f32 values (after the int8 round trip). */
static void seen_row(float *v, const rank_in *in, int t, const round_cfg *rc) {
    const uint8_t *x = in->x + (size_t)t * rc->H * (rc->dt == XCCL_F32 ? 4 : 2);
    if (rc->quant) {
        int8_t q[MAXH];
        float sc;
        ref_quant(q, &sc, x, rc->dt, rc->H);
        for (int h = 0; h < rc->H; h++) v[h] = (float)q[h] * sc;
    } else {
        for (int h = 0; h < rc->H; h++) v[h] = ldv(x, h, rc->dt);
    }
}

static rank_in all_in[8];

static int do_round(xccl_comm *c, int round, int n, int rank) {
    xccl_group *g = xccl_comm_world(c);
    round_cfg rc;
    gen_round(&rc, round, n);
    for (int r = 0; r < n; r++) gen_input(&all_in[r], &rc, round, r);
    rank_in *mine = &all_in[rank];
    xccl_expert_map map = {.num_experts = rc.E, .max_replicas = MAXR, .num_replicas = rc.nrep,
                           .replica_rank = rc.rrank, .replica_slot = rc.rslot,
                           .num_local_experts = rc.L, .policy = XCCL_REPLICA_ROTATE};
    xccl_moe_layout lay;
    XCHECK(xccl_moe_layout_compute(&lay, mine->ids, mine->T, rc.k, &map, (uint64_t)round, c, g));
    /* layout counts vs reference routing */
    int dst[MAXT * MAXK], slot[MAXT * MAXK];
    ref_route(dst, slot, mine, &rc, round, rank);
    int cnt[8 * MAXL] = {0};
    for (int i = 0; i < mine->T * rc.k; i++)
        if (dst[i] >= 0) cnt[dst[i] * rc.L + slot[i]]++;
    int ok = 1;
    for (int i = 0; i < n * rc.L; i++) ok &= lay.num_tokens_per_expert[i] == cnt[i];
    CHECK_MSG(ok, "round %d: layout counts differ from the reference", round);

    const size_t es = rc.dt == XCCL_F32 ? 4 : 2;
    const void *x = mine->x;
    if (rc.use_sendbuf) {
        void *sb = NULL;
        XCHECK(xccl_moe_send_buffer(&sb, c, g));
        if (sb) {
            memcpy(sb, mine->x, (size_t)mine->T * rc.H * es);
            x = sb;
        }
    }
    xccl_moe_recv recv[MAXL];
    xccl_moe_handle *h = NULL;
    unsigned flags = (rc.quant ? XCCL_MOE_INT8 : 0u) | (rc.no_gather ? XCCL_MOE_IN_PLACE : 0u);
    xccl_status st = xccl_moe_dispatch(recv, &h, x, rc.dt, rc.H, flags, &lay, c, g);
    CHECK_MSG(st == XCCL_OK, "round %d dispatch: %s", round, xccl_err_msg());
    if (st) { xccl_moe_layout_free(&lay); return 1; }

    /* expected rows per local slot: sources in rank order, (t,j) ascending */
    float v[MAXH];
    void *outs[MAXL];
    const size_t rbytes = (size_t)rc.H * (rc.quant ? 1 : es);
    for (int j = 0; j < rc.L; j++) {
        int row = 0, bad = 0;
        if (rc.no_gather) CHECK(recv[j].rows == NULL);
        else
            for (int r = 0; r < recv[j].num_rows; r++)
                bad |= recv[j].row_ptrs[r] != (const uint8_t *)recv[j].rows + (size_t)r * rbytes;
        for (int s = 0; s < n; s++) {
            int sd[MAXT * MAXK], ss[MAXT * MAXK];
            ref_route(sd, ss, &all_in[s], &rc, round, s);
            for (int i = 0; i < all_in[s].T * rc.k; i++) {
                if (sd[i] != rank || ss[i] != j) continue;
                int t = i / rc.k;
                if (row >= recv[j].num_rows) { bad = 1; row++; continue; }
                const uint8_t *x_t = all_in[s].x + (size_t)t * rc.H * es;
                if (rc.quant) {
                    int8_t q[MAXH];
                    float sc;
                    ref_quant(q, &sc, x_t, rc.dt, rc.H);
                    if (memcmp(q, recv[j].row_ptrs[row], (size_t)rc.H) ||
                        memcmp(&sc, &recv[j].scales[row], 4))
                        bad = 1;
                } else if (memcmp(x_t, recv[j].row_ptrs[row], (size_t)rc.H * es)) {
                    bad = 1;
                }
                row++;
            }
        }
        CHECK_MSG(!bad && row == recv[j].num_rows, "round %d rank %d slot %d: %d rows, want %d%s", round,
                  rank, j, recv[j].num_rows, row, bad ? " (content differs)" : "");
        /* run the expert */
        outs[j] = rc.in_place ? recv[j].out : malloc((size_t)(recv[j].num_rows + 1) * rc.H * es);
        for (int r = 0; r < recv[j].num_rows; r++) {
            for (int hh = 0; hh < rc.H; hh++)
                v[hh] = rc.quant ? (float)((const int8_t *)recv[j].row_ptrs[r])[hh] * recv[j].scales[r]
                                 : ldv(recv[j].row_ptrs[r], hh, rc.dt);
            expert((uint8_t *)outs[j] + (size_t)r * rc.H * es, v, rc.H, j, rank, rc.dt);
        }
    }
    uint8_t *y = malloc((size_t)(mine->T + 1) * rc.H * es);
    st = xccl_moe_combine(y, mine->w, rc.in_place ? NULL : (const void *const *)outs, h, c, g);
    CHECK_MSG(st == XCCL_OK, "round %d combine: %s", round, xccl_err_msg());
    /* reference combine */
    uint8_t *ref = malloc((size_t)(mine->T + 1) * rc.H * es);
    for (int t = 0; t < mine->T; t++) {
        float acc[MAXH] = {0}, o[MAXH];
        uint8_t ob[MAXH * 4];
        seen_row(v, mine, t, &rc);
        for (int j = 0; j < rc.k; j++) {
            int i = t * rc.k + j;
            if (dst[i] < 0) continue;
            expert(ob, v, rc.H, slot[i], dst[i], rc.dt);
            for (int hh = 0; hh < rc.H; hh++) o[hh] = ldv(ob, hh, rc.dt);
            for (int hh = 0; hh < rc.H; hh++) acc[hh] += mine->w[i] * o[hh];
        }
        for (int hh = 0; hh < rc.H; hh++) stv(ref + (size_t)t * rc.H * es, hh, rc.dt, acc[hh]);
    }
    CHECK_MSG(st || memcmp(y, ref, (size_t)mine->T * rc.H * es) == 0,
              "round %d rank %d: combined output differs (T=%d H=%d dt=%d quant=%d)", round, rank,
              mine->T, rc.H, rc.dt, rc.quant);
    free(y);
    free(ref);
    if (!rc.in_place)
        for (int j = 0; j < rc.L; j++) free(outs[j]);
    xccl_moe_layout_free(&lay);
    return 0;
}

static int rank_main(int rank, int n, void *arg) {
    (void)arg;
    xccl_comm *c = NULL;
    XCHECK(xccl_comm_attach_fd(&c, seg_fd, rank, 1));
    if (!c) return 1;
    xccl_comm_set_timeout(c, 20000);
    xccl_group *g = xccl_comm_world(c);

    /* bad input first: must leave no state behind */
    int nrep[2] = {1, 1}, rrank[2] = {0, 1 % n}, rslot[2] = {0, 0};
    xccl_expert_map map = {.num_experts = 2, .max_replicas = 1, .num_replicas = nrep,
                           .replica_rank = rrank, .replica_slot = rslot, .num_local_experts = 1};
    int32_t bad_ids[4] = {0, 1, 2, 0};
    xccl_moe_layout lay;
    memset(&lay, 0, sizeof lay);
    CHECK(xccl_moe_layout_compute(&lay, bad_ids, 2, 2, &map, 0, c, g) == XCCL_ERR_RANGE);
    CHECK(strstr(xccl_err_msg(), "topk_ids[1][0] = 2") != NULL);
    CHECK(lay.route_member == NULL);
    bad_ids[2] = -2;
    CHECK(xccl_moe_layout_compute(&lay, bad_ids, 2, 2, &map, 0, c, g) == XCCL_ERR_RANGE);
    rrank[1] = n; /* not in the group */
    bad_ids[2] = 1;
    CHECK(xccl_moe_layout_compute(&lay, bad_ids, 2, 2, &map, 0, c, g) == XCCL_ERR_INVALID);
    rrank[1] = 1 % n;
    XCHECK(xccl_moe_layout_compute(&lay, bad_ids, 2, 2, &map, 0, c, g));
    xccl_moe_recv recv[1];
    xccl_moe_handle *h = NULL;
    static float xx[2 * (MAXH + 1)];
    CHECK(xccl_moe_dispatch(recv, &h, xx, XCCL_F32, MAXH + 1, 0, &lay, c, g) == XCCL_ERR_RANGE);
    CHECK(xccl_moe_dispatch(recv, &h, xx, XCCL_I8, 8, 0, &lay, c, g) == XCCL_ERR_INVALID);
    CHECK(xccl_moe_dispatch(recv, &h, xx, XCCL_F32, 8, 0x100, &lay, c, g) == XCCL_ERR_INVALID);
    CHECK(h == NULL);
    CHECK(xccl_moe_combine(xx, xx, NULL, h, c, g) == XCCL_ERR_INVALID);
    xccl_moe_layout_free(&lay);

    for (int round = 0; round < ROUNDS; round++)
        if (do_round(c, round, n, rank)) break;
    XCHECK(xccl_barrier(c, g));
    xccl_comm_detach(c);
    return TU_CHILD_RESULT();
}

int main(void) {
    int sizes[] = {2, 3, 4};
    for (int si = 0; si < 3; si++) {
        int n = sizes[si];
        xccl_config cfg;
        xccl_config_default(&cfg, (uint32_t)n);
        cfg.moe_max_tokens = MAXT;
        cfg.moe_max_hidden = MAXH;
        cfg.moe_max_topk = MAXK;
        cfg.moe_max_local_experts = MAXL;
        xccl_segment *seg = tu_segment(&cfg);
        seg_fd = xccl_segment_fd(seg);
        int failed = tu_run_ranks(n, rank_main, NULL, 60);
        CHECK_MSG(failed == 0, "%d of %d ranks failed", failed, n);
        xccl_segment_destroy(seg);
    }
    TEST_MAIN_END();
}
