/*
 * test_xccl_stress.c — 8 ranks on however few cores, thousands of rounds:
 * each round a dispatch/combine with random routing (verified), an
 * allreduce (verified), and a p2p message around the ring (verified). With
 * futex waiting the oversubscribed ranks sleep instead of spinning, so this
 * finishes in seconds. XCCL_STRESS_ROUNDS overrides the round count.
 */
#include "xccl_testutil.h"

#include <stdlib.h>

#define NR 8
#define H  16
#define T  6
#define K  3
#define E  16

static int seg_fd, rounds;

static int rank_main(int rank, int n, void *arg) {
    (void)arg;
    xccl_comm *c = NULL;
    XCHECK(xccl_comm_attach_fd(&c, seg_fd, rank, 0));
    if (!c) return 1;
    xccl_comm_set_timeout(c, 30000);
    xccl_group *g = xccl_comm_world(c);
    int nrep[E], rrank[E * 2], rslot[E * 2];
    for (int e = 0; e < E; e++) {
        nrep[e] = 2;
        rrank[e * 2] = e % n;
        rrank[e * 2 + 1] = (e + 3) % n;
        rslot[e * 2] = rslot[e * 2 + 1] = e % 2;
    }
    xccl_expert_map map = {E, 2, nrep, rrank, rslot, 2, XCCL_REPLICA_ROTATE};
    int bad = 0;
    for (int round = 0; round < rounds && !bad; round++) {
        uint64_t s = tu_seed(round, rank, 8);
        float x[T * H], w[T * K], y[T * H];
        int32_t ids[T * K];
        int tn = tu_range(&s, 0, T);
        for (int i = 0; i < tn * H; i++) x[i] = tu_float(&s);
        for (int i = 0; i < tn * K; i++) {
            ids[i] = tu_range(&s, -1, E - 1);
            w[i] = tu_float(&s);
        }
        xccl_moe_layout lay;
        xccl_moe_recv recv[2];
        xccl_moe_handle *h;
        xccl_status st = xccl_moe_layout_compute(&lay, ids, tn, K, &map, (uint64_t)round, c, g);
        if (!st) st = xccl_moe_dispatch(recv, &h, x, XCCL_F32, H, 0, &lay, c, g);
        if (!st) {
            /* expert: out = 2 * in */
            for (int j = 0; j < 2; j++)
                for (int i = 0; i < recv[j].num_rows * H; i++)
                    ((float *)recv[j].out)[i] = 2.0f * ((float *)recv[j].rows)[i];
            st = xccl_moe_combine(y, w, NULL, h, c, g);
        }
        CHECK_MSG(st == XCCL_OK, "round %d: %s", round, xccl_err_msg());
        if (st) { bad = 1; break; }
        for (int t = 0; t < tn && !bad; t++)
            for (int hh = 0; hh < H; hh++) {
                float acc = 0;
                for (int j = 0; j < K; j++)
                    if (ids[t * K + j] >= 0) acc += w[t * K + j] * (2.0f * x[t * H + hh]);
                if (memcmp(&acc, &y[t * H + hh], 4)) { bad = 1; break; }
            }
        CHECK_MSG(!bad, "round %d rank %d: combine differs", round, rank);
        xccl_moe_layout_free(&lay);

        float v[8], out[8];
        for (int i = 0; i < 8; i++) v[i] = (float)(rank * 8 + i + round % 5);
        st = xccl_allreduce_sum(out, v, 8, XCCL_F32, c, g);
        for (int i = 0; i < 8 && !st; i++) {
            float want = 0;
            for (int r = 0; r < n; r++) want = r == 0 ? (float)(i + round % 5) : want + (float)(r * 8 + i + round % 5);
            if (out[i] != want) bad = 1;
        }
        CHECK_MSG(st == XCCL_OK && !bad, "round %d allreduce: %s", round, xccl_err_msg());

        uint64_t msg = ((uint64_t)round << 8) | (uint64_t)rank, got = 0;
        xccl_request sr, rr;
        st = xccl_isend(c, (rank + 1) % n, &msg, sizeof msg, &sr);
        if (!st) st = xccl_irecv(c, (rank + n - 1) % n, &got, sizeof got, &rr);
        if (!st) st = xccl_wait(c, &rr);
        if (!st) st = xccl_wait(c, &sr);
        CHECK_MSG(st == XCCL_OK && got == (((uint64_t)round << 8) | (uint64_t)((rank + n - 1) % n)),
                  "round %d p2p: %s", round, xccl_err_msg());
        if (st) bad = 1;
    }
    XCHECK(xccl_barrier(c, g));
    xccl_comm_detach(c);
    return TU_CHILD_RESULT();
}

int main(void) {
    rounds = getenv("XCCL_STRESS_ROUNDS") ? atoi(getenv("XCCL_STRESS_ROUNDS")) : 2000;
    xccl_config cfg;
    xccl_config_default(&cfg, NR);
    cfg.slot_bytes = 1024;
    cfg.num_slots = 4;
    cfg.coll_bytes = 4096;
    cfg.moe_max_tokens = T;
    cfg.moe_max_hidden = H;
    cfg.moe_max_topk = K;
    cfg.moe_max_local_experts = 2;
    xccl_segment *seg = tu_segment(&cfg);
    seg_fd = xccl_segment_fd(seg);
    uint64_t t0 = tu_now_ns();
    int failed = tu_run_ranks(NR, rank_main, NULL, 120);
    printf("%d rounds x %d ranks in %.2f s\n", rounds, NR, (double)(tu_now_ns() - t0) / 1e9);
    CHECK_MSG(failed == 0, "%d ranks failed", failed);
    xccl_segment_destroy(seg);
    TEST_MAIN_END();
}
