/*
 * test_xccl_p2p.c — two-sided send/recv and one-sided get/put between real
 * processes: random sizes (0 B .. 300 KiB through 4 KiB slots, so messages
 * wrap the ring many times), all pairs at once with non-blocking requests,
 * blocking ping-pong, test()-driven completion, a too-small receive (error,
 * nothing consumed), and get/put on registered regions with notification,
 * each checked byte-exact against data regenerated from the same seeds.
 */
#include "xccl_testutil.h"

#include <sched.h>
#include <stdlib.h>
#include <unistd.h>

#define NR    4
#define NMSG  6
#define MAXSZ (300 * 1024)

static int seg_fd;

static size_t msg_size(int src, int dst, int m) {
    uint64_t s = tu_seed(src, dst, m);
    int kind = tu_range(&s, 0, 3);
    if (kind == 0) return (size_t)tu_range(&s, 0, 64);
    if (kind == 1) return (size_t)tu_range(&s, 0, 8192);
    return (size_t)tu_range(&s, 0, MAXSZ);
}

static int rank_main(int rank, int n, void *arg) {
    (void)arg;
    xccl_comm *c = NULL;
    XCHECK(xccl_comm_attach_fd(&c, seg_fd, rank, 7));
    if (!c) return 1;
    xccl_comm_set_timeout(c, 20000);

    /* 1. all pairs, non-blocking, NMSG messages per ordered pair */
    static uint8_t *sbuf[NR][NMSG], *rbuf[NR][NMSG];
    xccl_request sreq[NR][NMSG], rreq[NR][NMSG];
    for (int p = 0; p < n; p++) {
        if (p == rank) continue;
        for (int m = 0; m < NMSG; m++) {
            size_t sz = msg_size(rank, p, m);
            sbuf[p][m] = malloc(sz + 1);
            tu_fill(sbuf[p][m], sz, tu_seed(rank, p, m + 100));
            rbuf[p][m] = malloc(MAXSZ + 1);
            XCHECK(xccl_irecv(c, p, rbuf[p][m], MAXSZ, &rreq[p][m]));
            XCHECK(xccl_isend(c, p, sbuf[p][m], sz, &sreq[p][m]));
        }
    }
    /* complete with a mix of test() polling and wait() */
    for (int p = 0; p < n; p++) {
        if (p == rank) continue;
        for (int m = 0; m < NMSG; m++) {
            if (m % 2) {
                int done = 0;
                uint64_t t0 = tu_now_ns();
                while (!done && tu_now_ns() - t0 < 20000000000ull) {
                    XCHECK(xccl_test(c, &rreq[p][m], &done));
                    for (int q = 0; q < n; q++)
                        for (int k = 0; k < NMSG; k++)
                            if (q != rank) { int d2; xccl_test(c, &sreq[q][k], &d2); }
                    if (!done) sched_yield();
                }
                CHECK(done);
            } else {
                XCHECK(xccl_wait(c, &rreq[p][m]));
            }
            size_t sz = msg_size(p, rank, m);
            CHECK_MSG(xccl_request_len(&rreq[p][m]) == sz, "len %zu want %zu",
                      xccl_request_len(&rreq[p][m]), sz);
            uint8_t *want = malloc(sz + 1);
            tu_fill(want, sz, tu_seed(p, rank, m + 100));
            CHECK_MSG(memcmp(want, rbuf[p][m], sz) == 0, "payload %d->%d msg %d (%zu B)", p, rank, m, sz);
            free(want);
        }
    }
    for (int p = 0; p < n; p++) {
        if (p == rank) continue;
        for (int m = 0; m < NMSG; m++) {
            XCHECK(xccl_wait(c, &sreq[p][m]));
            free(sbuf[p][m]);
            free(rbuf[p][m]);
        }
    }
    XCHECK(xccl_barrier(c, xccl_comm_world(c)));

    /* 2. blocking ping-pong 0 <-> 1 with random sizes; too-small receive */
    if (rank < 2) {
        int peer = 1 - rank;
        uint8_t *b = malloc(MAXSZ), *w = malloc(MAXSZ);
        for (int i = 0; i < 20; i++) {
            uint64_t s = tu_seed(i, 77, 0);
            size_t sz = (size_t)tu_range(&s, 0, MAXSZ);
            if ((i % 2) == rank) {
                tu_fill(b, sz, tu_seed(i, 78, 0));
                XCHECK(xccl_send(c, peer, b, sz));
            } else {
                size_t got = 0;
                XCHECK(xccl_recv(&got, b, MAXSZ, c, peer));
                tu_fill(w, sz, tu_seed(i, 78, 0));
                CHECK(got == sz && memcmp(b, w, sz) == 0);
            }
        }
        /* large messages: split single-copy rendezvous (>= 1 MiB), both directions */
        size_t bigsz[3] = {(1u << 20) + 12345, 3u << 20, (2u << 20) + 1};
        uint8_t *bb = malloc(3u << 20), *bw = malloc(3u << 20);
        for (int i = 0; i < 6; i++) {
            size_t sz = bigsz[i % 3];
            if ((i % 2) == rank) {
                tu_fill(bb, sz, tu_seed(i, 79, 0));
                XCHECK(xccl_send(c, peer, bb, sz));
            } else {
                size_t got = 0;
                memset(bb, 0, sz);
                XCHECK(xccl_recv(&got, bb, 3u << 20, c, peer));
                tu_fill(bw, sz, tu_seed(i, 79, 0));
                CHECK_MSG(got == sz && memcmp(bb, bw, sz) == 0, "large message %d (%zu B)", i, sz);
            }
        }
        free(bb);
        free(bw);
        if (rank == 0) {
            tu_fill(b, 1000, 4242);
            XCHECK(xccl_send(c, 1, b, 1000));
        } else {
            size_t got = 12345;
            xccl_status s = xccl_recv(&got, b, 10, c, 0);
            CHECK(s == XCCL_ERR_TRUNCATED);
            CHECK(got == 12345); /* output untouched */
            CHECK(strstr(xccl_err_msg(), "1000 bytes") != NULL);
            CHECK(strstr(xccl_err_msg(), "10 bytes") != NULL);
            s = xccl_recv(&got, b, 1000, c, 0); /* the message is still there */
            CHECK(s == XCCL_OK && got == 1000);
            tu_fill(w, 1000, 4242);
            CHECK(memcmp(b, w, 1000) == 0);
        }
        free(b);
        free(w);
    }
    /* bad peer */
    CHECK(xccl_send(c, n, "x", 1) == XCCL_ERR_INVALID);
    XCHECK(xccl_barrier(c, xccl_comm_world(c)));

    /* 3. one-sided: each rank registers a region; the next rank puts into it,
     * the previous rank gets from it. */
    uint64_t s = tu_seed(rank, 500, 0);
    size_t rbytes = (size_t)tu_range(&s, 300000, 1 << 20);
    xccl_region reg;
    XCHECK(xccl_region_alloc(&reg, rbytes, c));
    tu_fill(reg.base, rbytes, tu_seed(rank, 501, 0)); /* initial contents */
    XCHECK(xccl_barrier(c, xccl_comm_world(c)));
    int to = (rank + 1) % n, from = (rank + n - 1) % n;
    uint64_t ts = tu_seed(to, 500, 0);
    size_t to_bytes = (size_t)tu_range(&ts, 300000, 1 << 20);
    /* get the whole region of `to` before anyone puts: known initial contents */
    uint8_t *g = malloc(to_bytes), *w = malloc(to_bytes);
    uint64_t before = 0;
    XCHECK(xccl_get(g, c, to, reg.id /* ids are allocated identically */, 0, to_bytes));
    tu_fill(w, to_bytes, tu_seed(to, 501, 0));
    CHECK(memcmp(g, w, to_bytes) == 0);
    /* send out of a registered region (zero-copy rendezvous) to `to`, receive from `from` */
    {
        uint64_t fs0 = tu_seed(from, 500, 0);
        size_t from_bytes = (size_t)tu_range(&fs0, 300000, 1 << 20);
        size_t sl = rbytes - 7, rl = from_bytes - 7, got = 0;
        uint8_t *rbuf = malloc(from_bytes), *want = malloc(from_bytes);
        xccl_request sr, rr;
        XCHECK(xccl_isend(c, to, (uint8_t *)reg.base + 7, sl, &sr));
        XCHECK(xccl_irecv(c, from, rbuf, from_bytes, &rr));
        XCHECK(xccl_wait(c, &rr));
        XCHECK(xccl_wait(c, &sr));
        got = xccl_request_len(&rr);
        tu_fill(want, from_bytes, tu_seed(from, 501, 0));
        CHECK_MSG(got == rl && memcmp(rbuf, want + 7, rl) == 0, "region send %d -> %d (%zu B)", from, rank, rl);
        free(rbuf);
        free(want);
    }
    XCHECK(xccl_barrier(c, xccl_comm_world(c)));
    /* put a random piece into `to` */
    size_t off = (size_t)tu_range(&ts, 0, (int)to_bytes / 2), len = (size_t)tu_range(&ts, 0, (int)(to_bytes - off));
    tu_fill(w, len, tu_seed(rank, 502, 0));
    XCHECK(xccl_put(c, to, reg.id, off, w, len));
    /* my region: wait for the put of `from` (after its get: 2 notifications) */
    before = 2;
    XCHECK(xccl_notify_wait(c, from, before));
    CHECK(xccl_notify_count(c, from) == 2);
    uint64_t fs = tu_seed(rank, 500, 0);
    (void)tu_range(&fs, 300000, 1 << 20);
    size_t foff = (size_t)tu_range(&fs, 0, (int)rbytes / 2), flen = (size_t)tu_range(&fs, 0, (int)(rbytes - foff));
    uint8_t *fw = malloc(rbytes);
    tu_fill(fw, rbytes, tu_seed(rank, 501, 0));
    tu_fill(fw + foff, flen, tu_seed(from, 502, 0));
    CHECK_MSG(memcmp(reg.base, fw, rbytes) == 0, "region of rank %d after put", rank);
    /* bad input */
    CHECK(xccl_get(g, c, to, reg.id, to_bytes - 1, 2) == XCCL_ERR_RANGE);
    CHECK(xccl_put(c, to, reg.id, (size_t)-1, w, 2) == XCCL_ERR_RANGE);
    CHECK(xccl_get(g, c, to, 999, 0, 1) == XCCL_ERR_INVALID);
    XCHECK(xccl_barrier(c, xccl_comm_world(c)));
    /* 5. waitany: rank 0 takes one message from every other rank in
     * whatever order they complete; then a receive with no sender times
     * out (nothing lost: it stays queued) and is cancelled */
    if (rank == 0) {
        xccl_request ar[NR];
        xccl_request *ap[NR] = {0};
        uint64_t got[NR] = {0};
        for (int p = 1; p < n; p++) {
            XCHECK(xccl_irecv(c, p, &got[p], sizeof got[p], &ar[p]));
            ap[p] = &ar[p];
        }
        int seen[NR] = {0};
        for (int k = 1; k < n; k++) {
            int idx = -2;
            XCHECK(xccl_waitany(c, ap, n, &idx));
            CHECK_MSG(idx >= 1 && idx < n && !seen[idx], "waitany index %d", idx);
            if (idx < 1 || idx >= n) break;
            seen[idx] = 1;
            CHECK_MSG(got[idx] == 1000u + (uint64_t)idx, "waitany payload from %d", idx);
            ap[idx] = NULL;
        }
        xccl_request lone;
        uint64_t none = 0;
        XCHECK(xccl_irecv(c, 1, &none, sizeof none, &lone));
        xccl_request *lp = &lone;
        xccl_comm_set_timeout(c, 100);
        int idx = 5;
        CHECK(xccl_waitany(c, &lp, 1, &idx) == XCCL_ERR_TIMEOUT);
        CHECK(idx == -1);
        CHECK(xccl_cancel(c, &lone) == XCCL_OK);
        xccl_comm_set_timeout(c, 20000);
        CHECK(xccl_waitany(c, &lp, 0, &idx) == XCCL_ERR_INVALID);
    } else {
        usleep((useconds_t)(n - rank) * 20000);
        uint64_t v = 1000u + (uint64_t)rank;
        XCHECK(xccl_send(c, 0, &v, sizeof v));
    }
    XCHECK(xccl_barrier(c, xccl_comm_world(c)));
    xccl_region_deregister(c, &reg);
    free(g);
    free(w);
    free(fw);
    xccl_comm_detach(c);
    return TU_CHILD_RESULT();
}

int main(void) {
    xccl_config cfg;
    xccl_config_default(&cfg, NR);
    cfg.slot_bytes = 4096;
    cfg.num_slots = 8;
    xccl_segment *seg = tu_segment(&cfg);
    seg_fd = xccl_segment_fd(seg);
    int failed = tu_run_ranks(NR, rank_main, NULL, 60);
    CHECK_MSG(failed == 0, "%d ranks failed", failed);
    xccl_segment_destroy(seg);
    TEST_MAIN_END();
}
