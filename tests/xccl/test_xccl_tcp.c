/*
 * test_xccl_tcp.c — the TCP transport over 127.0.0.1, behind the same API:
 * random-size messages between all pairs (non-blocking, verified byte-exact),
 * a too-small receive (error, message kept), barrier / allgather / allreduce
 * checked against local sums, dispatch/combine (identity expert, verified
 * bit-exact), and a killed rank reported by name.
 */
#include "xccl_testutil.h"

#include <stdlib.h>

#define NR 3
#define NMSG 4

static int lfd[NR];
static uint16_t ports[NR];
static const char *hosts[NR] = {"127.0.0.1", "127.0.0.1", "127.0.0.1"};

static size_t msz(int s, int d, int m) {
    uint64_t x = tu_seed(s, d, m + 50);
    return (size_t)tu_range(&x, 0, m % 2 ? 300000 : 100);
}

static int rank_main(int rank, int n, void *arg) {
    (void)arg;
    for (int r = 0; r < n; r++)
        if (r != rank) close(lfd[r]);
    xccl_comm *c = NULL;
    XCHECK(xccl_comm_create_tcp(&c, rank, n, lfd[rank], hosts, ports, 20000));
    if (!c) return 1;
    CHECK(strcmp(xccl_comm_transport(c), "tcp") == 0);
    xccl_request sr[NR][NMSG], rr[NR][NMSG];
    uint8_t *sb[NR][NMSG], *rb[NR][NMSG];
    for (int p = 0; p < n; p++) {
        if (p == rank) continue;
        for (int m = 0; m < NMSG; m++) {
            size_t z = msz(rank, p, m);
            sb[p][m] = malloc(z + 1);
            rb[p][m] = malloc(300001);
            tu_fill(sb[p][m], z, tu_seed(rank, p, m));
            XCHECK(xccl_irecv(c, p, rb[p][m], 300000, &rr[p][m]));
            XCHECK(xccl_isend(c, p, sb[p][m], z, &sr[p][m]));
        }
    }
    for (int p = 0; p < n; p++) {
        if (p == rank) continue;
        for (int m = 0; m < NMSG; m++) {
            XCHECK(xccl_wait(c, &rr[p][m]));
            size_t z = msz(p, rank, m);
            uint8_t *w = malloc(z + 1);
            tu_fill(w, z, tu_seed(p, rank, m));
            CHECK(xccl_request_len(&rr[p][m]) == z && memcmp(w, rb[p][m], z) == 0);
            free(w);
        }
    }
    for (int p = 0; p < n; p++) {
        if (p == rank) continue;
        for (int m = 0; m < NMSG; m++) {
            XCHECK(xccl_wait(c, &sr[p][m]));
            free(sb[p][m]);
            free(rb[p][m]);
        }
    }
    xccl_group *g = xccl_comm_world(c);
    XCHECK(xccl_barrier(c, g));
    /* truncation */
    char big[500], small[10];
    if (rank == 0) {
        tu_fill(big, 500, 99);
        XCHECK(xccl_send(c, 1, big, 500));
    } else if (rank == 1) {
        size_t got = 0;
        CHECK(xccl_recv(&got, small, sizeof small, c, 0) == XCCL_ERR_TRUNCATED);
        CHECK(strstr(xccl_err_msg(), "500 bytes") != NULL);
        XCHECK(xccl_recv(&got, big, sizeof big, c, 0));
        char w[500];
        tu_fill(w, 500, 99);
        CHECK(got == 500 && memcmp(w, big, 500) == 0);
    }
    /* collectives */
    for (int it = 0; it < 5; it++) {
        uint64_t s = tu_seed(it, 3, 3);
        size_t cnt = (size_t)tu_range(&s, 0, 3000);
        float *in = malloc(cnt * 4 + 4), *out = malloc(cnt * 4 + 4);
        for (size_t i = 0; i < cnt; i++) in[i] = (float)(rank + 1) * 0.5f + (float)i;
        XCHECK(xccl_allreduce_sum(out, in, cnt, XCCL_F32, c, g));
        int ok = 1;
        for (size_t i = 0; i < cnt; i++) {
            float acc = 0;
            for (int r = 0; r < n; r++) acc = r == 0 ? (float)(r + 1) * 0.5f + (float)i : acc + ((float)(r + 1) * 0.5f + (float)i);
            ok &= out[i] == acc;
        }
        CHECK(ok);
        uint8_t *ag = malloc(cnt * n + 1), *mine = malloc(cnt + 1);
        tu_fill(mine, cnt, tu_seed(it, rank, 7));
        XCHECK(xccl_allgather(ag, mine, cnt, c, g));
        for (int r = 0; r < n; r++) {
            tu_fill(mine, cnt, tu_seed(it, r, 7));
            CHECK(memcmp(ag + (size_t)r * cnt, mine, cnt) == 0);
        }
        free(in);
        free(out);
        free(ag);
        free(mine);
    }
    /* dispatch / combine over tcp: identity expert, y = sum_k w * x */
    int nrep[6], rrank[12], rslot[12];
    for (int e = 0; e < 6; e++) {
        nrep[e] = 2;
        rrank[e * 2] = e % n;
        rrank[e * 2 + 1] = (e + 1) % n;
        rslot[e * 2] = rslot[e * 2 + 1] = e % 2;
    }
    xccl_expert_map map = {6, 2, nrep, rrank, rslot, 2, XCCL_REPLICA_ROTATE};
    for (int round = 0; round < 6; round++) {
        uint64_t s = tu_seed(round, rank, 21);
        int T = tu_range(&s, 0, 12), K = 3, H = 24;
        float x[12 * 24], w[12 * 3], y[12 * 24];
        int32_t ids[12 * 3];
        for (int i = 0; i < T * H; i++) x[i] = tu_float(&s);
        for (int i = 0; i < T * K; i++) {
            ids[i] = tu_range(&s, -1, 5);
            w[i] = tu_float(&s);
        }
        xccl_moe_layout lay;
        xccl_moe_recv recv[2];
        xccl_moe_handle *h = NULL;
        XCHECK(xccl_moe_layout_compute(&lay, ids, T, K, &map, (uint64_t)round, c, g));
        XCHECK(xccl_moe_dispatch(recv, &h, x, XCCL_F32, H, 0, &lay, c, g));
        if (!h) break;
        for (int j = 0; j < 2; j++) memcpy(recv[j].out, recv[j].rows, (size_t)recv[j].num_rows * H * 4);
        XCHECK(xccl_moe_combine(y, w, NULL, h, c, g));
        int ok = 1;
        for (int t = 0; t < T; t++)
            for (int hh = 0; hh < H; hh++) {
                float acc = 0;
                for (int j = 0; j < K; j++)
                    if (ids[t * K + j] >= 0) acc += w[t * K + j] * x[t * H + hh];
                ok &= memcmp(&acc, &y[t * H + hh], 4) == 0;
            }
        CHECK_MSG(ok, "tcp moe round %d rank %d", round, rank);
        xccl_moe_layout_free(&lay);
    }
    XCHECK(xccl_barrier(c, g));
    /* rank 2 dies; rank 0 waiting for it must hear about it, by name */
    if (rank == 2) _exit(test_failed_ ? 1 : 0); /* no detach: like a crash, the kernel closes the sockets */
    if (rank == 0) {
        char b[4];
        uint64_t t0 = tu_now_ns();
        xccl_status st = xccl_recv(NULL, b, sizeof b, c, 2);
        CHECK(st == XCCL_ERR_PEER && xccl_err_rank() == 2);
        CHECK((tu_now_ns() - t0) < 1000000000ull);
        /* survivors still talk */
        XCHECK(xccl_send(c, 1, "ok", 2));
    } else {
        char b[4];
        size_t got = 0;
        XCHECK(xccl_recv(&got, b, sizeof b, c, 0));
        CHECK(got == 2 && memcmp(b, "ok", 2) == 0);
    }
    xccl_comm_detach(c);
    return TU_CHILD_RESULT();
}

int main(void) {
    for (int r = 0; r < NR; r++) XCHECK(xccl_tcp_listen(&lfd[r], &ports[r], "127.0.0.1", 0));
    int failed = tu_run_ranks(NR, rank_main, NULL, 60);
    CHECK_MSG(failed == 0, "%d tcp ranks failed", failed);
    for (int r = 0; r < NR; r++) close(lfd[r]);
    TEST_MAIN_END();
}
