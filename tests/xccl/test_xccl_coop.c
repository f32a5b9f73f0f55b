/*
 * test_xccl_coop.c — the cooperative rendezvous of large send/recv messages
 * (both ranks copy chunks of one message at once; src/xccl/shm.c) between
 * real processes:
 *
 * 1. Random traffic in both directions at once, blocking calls (both sides
 *    progress): sizes 0 B .. 3 MiB, many just around the rendezvous
 *    threshold and the chunk size, from ordinary memory and from a
 *    registered region, at random buffer offsets, receive buffers sometimes
 *    larger than the message. Every message is checked byte-exact and in
 *    order, the bytes after it in the receive buffer untouched. Run with
 *    16 KiB chunks (many chunks per message) and with the default. The chunk
 *    accounting must be exact: chunks pushed by the sender + pulled by the
 *    receiver = sum of ceil(len / chunk) over the rendezvous messages. Then
 *    6 messages of 8 MiB back to back (ordinary memory and region): where
 *    the kernel allows process_vm_writev, both sides copied chunks.
 * 2. The sender posts isend and sleeps 300 ms without progressing: the
 *    receiver completes alone (before the sender wakes; it pulled every
 *    chunk), then the sender's wait completes. Ordinary memory and region.
 * 3. A too-small receive of a large message fails (XCCL_ERR_TRUNCATED)
 *    without consuming it; the right-sized receive then gets it intact.
 * 4. A peer killed with SIGKILL 2 ms into a 128 MiB transfer (again with no
 *    delay if the transfer beat the kill): the survivor's call fails with
 *    XCCL_ERR_PEER naming it in < 1 s (receiver killed: the sender reports;
 *    sender killed: the receiver reports).
 */
#include "xccl_testutil.h"

#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/uio.h>
#include <unistd.h>

#define NMSG     48
#define MAXSZ    (3u << 20)
#define RNDV_MIN 262144u
#define BIG_KILL ((size_t)128 << 20)

typedef struct shared {
    xccl_p2p_stats st[2][2];      /* [phase][rank] at the end of phase 1 */
    uint64_t expect_chunks[2][2]; /* [phase][direction s->d]: sum of ceil(len/chunk) */
    uint64_t expect_rndv[2][2];
    _Atomic int cma_write_ok;
    _Atomic uint64_t recv_done_ns, sender_wake_ns;
    xccl_p2p_stats alone_before[2], alone_after[2];
    uint64_t stream_pushed, stream_pulled;
    _Atomic int in_call[2];
    _Atomic int finished[2];
    uint64_t kill_ns, err_ns;
    int err_code, err_rank;
    char err_msg[200];
} shared;

static shared *sh;
static int seg_fd;
static volatile uint64_t probe_word = 0x1234567890abcdefull;

static size_t msg_size(int src, int m, uint64_t phase) {
    uint64_t s = tu_seed(src, m, 77 + phase);
    switch (tu_range(&s, 0, 5)) {
    case 0:
        return (size_t)tu_range(&s, 0, 65536);
    case 1:
        return RNDV_MIN - 1 + (size_t)tu_range(&s, 0, 2); /* at the threshold */
    case 2:
        return (size_t)tu_range(&s, 1, 8) * 16384 + (size_t)tu_range(&s, 0, 2) - 1 +
               RNDV_MIN; /* chunk edges */
    case 3:
        return (size_t)tu_range(&s, 1, 24) * 131072 + (size_t)tu_range(&s, 0, 2) -
               1; /* default chunk edges */
    default:
        return (size_t)tu_range(&s, 0, (int)MAXSZ);
    }
}

/* Chunk size of a rendezvous (docs/XCCL.md): a region uses XCCL_COOP_CHUNK,
 * ordinary memory half the message, XCCL_COOP_CHUNK .. 4 MiB. */
static size_t chunk_for(size_t len, int region, size_t chunk) {
    if (region) return chunk;
    size_t q = (len / 2 + 4095) & ~(size_t)4095;
    return q < chunk ? chunk : q > ((size_t)4 << 20) ? (size_t)4 << 20 : q;
}

/* does message m of src come from the sender's registered region? */
static int from_region(int src, int m) {
    uint64_t s = tu_seed(src, m, 991);
    return tu_range(&s, 0, 2) == 0;
}

static size_t offset_of(int src, int m, int which) {
    uint64_t s = tu_seed(src, m, 555 + which);
    return (size_t)tu_range(&s, 0, 127);
}

/* Phase 1: both ranks send NMSG messages to each other and receive NMSG,
 * interleaved send/recv order chosen so that blocking calls never deadlock
 * (rank 0 sends first, rank 1 receives first, per message index). */
static int traffic(xccl_comm *c, int rank, int phase, size_t chunk) {
    int peer = 1 - rank;
    xccl_region reg = {0};
    XCHECK(xccl_region_alloc(&reg, MAXSZ + 4096, c));
    uint8_t *plain = malloc(MAXSZ + 4096), *rbuf = malloc(MAXSZ + 8192);
    if (!plain || !rbuf || !reg.base) return 1;
    int bad = 0;
    for (int m = 0; m < NMSG; m++) {
        for (int step = 0; step < 2; step++) {
            int sending = (step == 0) == (rank == 0);
            if (sending) {
                size_t len = msg_size(rank, m, (uint64_t)phase);
                uint8_t *src =
                    (from_region(rank, m) ? (uint8_t *)reg.base : plain) + offset_of(rank, m, 0);
                tu_fill(src, len, tu_seed(rank, m, 100 + (uint64_t)phase));
                xccl_status s = xccl_send(c, peer, src, len);
                CHECK_MSG(s == XCCL_OK, "phase %d rank %d send %d (%zu B): %s", phase, rank, m, len,
                          xccl_err_msg());
                if (s) return 1;
            } else {
                size_t len = msg_size(peer, m, (uint64_t)phase);
                size_t off = offset_of(peer, m, 1), cap = len + (m % 3 == 0 ? 4096 : 0);
                memset(rbuf, 0xA5, MAXSZ + 8192);
                size_t got = 0;
                xccl_status s = xccl_recv(&got, rbuf + off, cap, c, peer);
                CHECK_MSG(s == XCCL_OK, "phase %d rank %d recv %d: %s", phase, rank, m,
                          xccl_err_msg());
                if (s) return 1;
                CHECK_MSG(got == len, "phase %d rank %d recv %d: %zu bytes, expected %zu", phase,
                          rank, m, got, len);
                uint8_t *want = malloc(len + 1);
                tu_fill(want, len, tu_seed(peer, m, 100 + (uint64_t)phase));
                int same = memcmp(rbuf + off, want, len) == 0;
                free(want);
                CHECK_MSG(same, "phase %d rank %d recv %d (%zu B): data differs", phase, rank, m,
                          len);
                int guard = 1;
                for (size_t i = 0; i < off; i++) guard &= rbuf[i] == 0xA5;
                for (size_t i = off + len; i < off + len + 4096 && i < MAXSZ + 8192; i++)
                    guard &= rbuf[i] == 0xA5;
                CHECK_MSG(guard, "phase %d rank %d recv %d: bytes outside the message were written",
                          phase, rank, m);
                bad |= !same || !guard;
                if (len >= RNDV_MIN) {
                    size_t ck = chunk_for(len, from_region(peer, m), chunk);
                    sh->expect_chunks[phase][peer] += (len + ck - 1) / ck;
                    sh->expect_rndv[phase][peer]++;
                }
            }
        }
    }
    xccl_region_deregister(c, &reg);
    free(plain);
    free(rbuf);
    return bad;
}

/* Streaming: 6 messages of 8 MiB back to back (the receiver reposts at once,
 * verifying only at the end), so both sides are inside their calls while the
 * message moves: both must have copied chunks. */
#define NSTREAM    6
#define STREAM_LEN ((size_t)8 << 20)
static int streaming(xccl_comm *c, int rank) {
    xccl_region reg = {0};
    XCHECK(xccl_region_alloc(&reg, STREAM_LEN, c));
    uint8_t *b = malloc(NSTREAM * STREAM_LEN);
    if (!b || !reg.base) return 1;
    xccl_p2p_stats before, after;
    xccl_p2p_stats_get(c, &before);
    XCHECK(xccl_barrier(c, xccl_comm_world(c)));
    for (int m = 0; m < NSTREAM; m++) {
        if (rank == 0 && m % 2 == 0) tu_fill(b + m * STREAM_LEN, STREAM_LEN, tu_seed(9, m, 1));
    }
    XCHECK(xccl_barrier(c, xccl_comm_world(c)));
    for (int m = 0; m < NSTREAM; m++) {
        if (rank == 0) {
            uint8_t *src = m % 2 ? (uint8_t *)reg.base : b + m * STREAM_LEN;
            if (m % 2) tu_fill(src, STREAM_LEN, tu_seed(9, m, 1)); /* the region is reused */
            XCHECK(xccl_send(c, 1, src, STREAM_LEN));
        } else {
            XCHECK(xccl_recv(NULL, b + m * STREAM_LEN, STREAM_LEN, c, 0));
        }
    }
    xccl_p2p_stats_get(c, &after);
    if (rank == 1) {
        uint8_t *want = malloc(STREAM_LEN);
        for (int m = 0; m < NSTREAM; m++) {
            tu_fill(want, STREAM_LEN, tu_seed(9, m, 1));
            CHECK_MSG(memcmp(b + m * STREAM_LEN, want, STREAM_LEN) == 0,
                      "stream message %d differs", m);
        }
        free(want);
        sh->stream_pulled = after.chunks_pulled - before.chunks_pulled;
    } else {
        sh->stream_pushed = after.chunks_pushed - before.chunks_pushed;
    }
    xccl_region_deregister(c, &reg);
    free(b);
    return 0;
}

/* Phase 2: the sender posts isend and does not progress for 300 ms. */
static int alone(xccl_comm *c, int rank, size_t chunk) {
    const size_t len = (4u << 20) + 12345;
    xccl_region reg = {0};
    XCHECK(xccl_region_alloc(&reg, len, c));
    uint8_t *plain = malloc(len + 64), *rbuf = malloc(len + 64);
    for (int kind = 0; kind < 2; kind++) {
        XCHECK(xccl_barrier(c, xccl_comm_world(c)));
        if (rank == 0) {
            uint8_t *src = kind ? (uint8_t *)reg.base : plain + 8;
            tu_fill(src, len, tu_seed(5, kind, 0));
            xccl_p2p_stats_get(c, &sh->alone_before[0]);
            xccl_request req;
            XCHECK(xccl_isend(c, 1, src, len, &req));
            usleep(300000);
            atomic_store(&sh->sender_wake_ns, tu_now_ns());
            XCHECK(xccl_wait(c, &req));
            xccl_p2p_stats_get(c, &sh->alone_after[0]);
            CHECK_MSG(sh->alone_after[0].chunks_pushed == sh->alone_before[0].chunks_pushed,
                      "kind %d: the sleeping sender pushed chunks", kind);
            CHECK(sh->alone_after[0].rndv_sent == sh->alone_before[0].rndv_sent + 1);
        } else {
            xccl_p2p_stats_get(c, &sh->alone_before[1]);
            size_t got = 0;
            XCHECK(xccl_recv(&got, rbuf + 3, len, c, 0));
            uint64_t t = tu_now_ns();
            xccl_p2p_stats_get(c, &sh->alone_after[1]);
            uint8_t *want = malloc(len);
            tu_fill(want, len, tu_seed(5, kind, 0));
            CHECK_MSG(got == len && memcmp(rbuf + 3, want, len) == 0, "kind %d: data differs",
                      kind);
            free(want);
            /* the sender is still asleep: we completed alone */
            uint64_t wake = atomic_load(&sh->sender_wake_ns);
            CHECK_MSG(wake == 0 || t < wake,
                      "kind %d: receive completed only after the sender woke", kind);
            /* we copied every chunk ourselves */
            uint64_t pulled = sh->alone_after[1].chunks_pulled - sh->alone_before[1].chunks_pulled;
            size_t ck = chunk_for(len, kind, chunk);
            CHECK_MSG(pulled == (len + ck - 1) / ck, "kind %d: receiver pulled %llu chunks", kind,
                      (unsigned long long)pulled);
        }
        XCHECK(xccl_barrier(c, xccl_comm_world(c)));
        atomic_store(&sh->sender_wake_ns, 0);
    }
    xccl_region_deregister(c, &reg);
    free(plain);
    free(rbuf);
    return 0;
}

/* Phase 3: a receive too small for a large message. */
static int truncation(xccl_comm *c, int rank) {
    const size_t len = (2u << 20) + 7;
    uint8_t *b = malloc(len);
    if (rank == 0) {
        tu_fill(b, len, 4242);
        XCHECK(xccl_send(c, 1, b, len));
    } else {
        size_t got = 0;
        xccl_status s = xccl_recv(&got, b, len - 1, c, 0);
        CHECK_MSG(s == XCCL_ERR_TRUNCATED, "short receive of a rendezvous: %s", xccl_status_str(s));
        XCHECK(xccl_recv(&got, b, len, c, 0));
        uint8_t *want = malloc(len);
        tu_fill(want, len, 4242);
        CHECK(got == len && memcmp(b, want, len) == 0);
        free(want);
    }
    free(b);
    return 0;
}

typedef struct run_arg {
    int phase;
    size_t chunk;
} run_arg;

static int rank_main(int rank, int n, void *varg) {
    (void)n;
    run_arg *a = varg;
    char v[32];
    snprintf(v, sizeof v, "%zu", a->chunk);
    setenv("XCCL_COOP_CHUNK", v, 1);
    xccl_comm *c = NULL;
    XCHECK(xccl_comm_attach_fd(&c, seg_fd, rank, 0));
    if (!c) return 1;
    xccl_comm_set_timeout(c, 20000);
    if (rank == 1 && a->phase == 0) { /* can we write into a sibling (process_vm_writev)? */
        uint64_t x = 0x1234567890abcdefull;
        struct iovec lv = {&x, 8}, rv = {(void *)&probe_word, 8};
        pid_t sib = getppid(); /* the parent has probe_word at the same address */
        atomic_store(&sh->cma_write_ok, process_vm_writev(sib, &lv, 1, &rv, 1, 0) == 8);
    }
    int bad = traffic(c, rank, a->phase, a->chunk);
    XCHECK(xccl_barrier(c, xccl_comm_world(c)));
    xccl_p2p_stats_get(c, &sh->st[a->phase][rank]);
    if (a->phase == 1) {
        bad |= streaming(c, rank);
        bad |= alone(c, rank, a->chunk);
        bad |= truncation(c, rank);
    }
    XCHECK(xccl_barrier(c, xccl_comm_world(c)));
    xccl_comm_detach(c);
    return bad || test_failed_;
}

/* Phase 4: victim is killed 2 ms into a 128 MiB transfer. */
static int kill_main(int rank, int n, void *varg) {
    (void)n;
    int victim = *(int *)varg;
    xccl_comm *c = NULL;
    XCHECK(xccl_comm_attach_fd(&c, seg_fd, rank, 0));
    if (!c) return 1;
    xccl_comm_set_timeout(c, 20000);
    uint8_t *b = malloc(BIG_KILL);
    memset(b, rank + 1, BIG_KILL);
    XCHECK(xccl_barrier(c, xccl_comm_world(c)));
    atomic_store(&sh->in_call[rank], 1);
    xccl_status s = rank == 0 ? xccl_send(c, 1, b, BIG_KILL) : xccl_recv(NULL, b, BIG_KILL, c, 0);
    if (rank != victim) {
        sh->err_ns = tu_now_ns();
        sh->err_code = (int)s;
        sh->err_rank = xccl_err_rank();
        snprintf(sh->err_msg, sizeof sh->err_msg, "%s", xccl_err_msg());
    }
    atomic_store(&sh->finished[rank], 1);
    if (rank == victim)
        for (;;) pause(); /* killed by the parent */
    free(b);
    xccl_comm_detach(c);
    return 0;
}

/* Kill victim delay_us after both ranks entered their call. Returns 1 if
 * the transfer completed before the kill (inconclusive: run it again), else
 * checks that the survivor reported the victim. */
static int kill_case(int victim, int delay_us) {
    xccl_config cfg;
    xccl_config_default(&cfg, 2);
    xccl_segment *seg = NULL;
    XCHECK(xccl_segment_create(&seg, NULL, &cfg));
    if (!seg) return 0;
    seg_fd = xccl_segment_fd(seg);
    memset(sh, 0, sizeof *sh);
    pid_t pids[2];
    tu_spawn(2, kill_main, &victim, pids);
    uint64_t t0 = tu_now_ns();
    while (!(atomic_load(&sh->in_call[0]) && atomic_load(&sh->in_call[1])) &&
           tu_now_ns() - t0 < 20000000000ull)
        usleep(100);
    if (delay_us) usleep((useconds_t)delay_us);
    sh->kill_ns = tu_now_ns();
    kill(pids[victim], SIGKILL);
    int st[2];
    tu_wait_ranks(2, pids, 30, st);
    xccl_segment_destroy(seg);
    int surv = 1 - victim;
    CHECK_MSG(WIFEXITED(st[surv]) && WEXITSTATUS(st[surv]) == 0, "survivor rank %d failed", surv);
    if (sh->err_code == XCCL_OK && atomic_load(&sh->finished[victim])) {
        printf("victim %d finished the 128 MiB transfer before the kill (%d us): again\n", victim,
               delay_us);
        return 1;
    }
    CHECK_MSG(sh->err_code == XCCL_ERR_PEER, "victim %d: survivor got %s (%s)", victim,
              xccl_status_str((xccl_status)sh->err_code), sh->err_msg);
    CHECK_MSG(sh->err_rank == victim, "victim %d: error names rank %d (%s)", victim, sh->err_rank,
              sh->err_msg);
    double ms = (double)(sh->err_ns - sh->kill_ns) / 1e6;
    CHECK_MSG(sh->err_ns > sh->kill_ns && ms < 1000, "victim %d: error %.1f ms after the kill",
              victim, ms);
    printf("rank %d killed %d us into a 128 MiB transfer: rank %d reports it after %.2f ms: %s\n",
           victim, delay_us, surv, ms, sh->err_msg);
    return 0;
}

int main(void) {
    sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(sh != MAP_FAILED);
    if (sh == MAP_FAILED) TEST_MAIN_END();
    memset(sh, 0, sizeof *sh);
    unsetenv("XCCL_CMA");
    unsetenv("XCCL_COOP_PUSH");
    unsetenv("XCCL_RNDV_MIN");
    unsetenv("XCCL_COOP_REGION_LEFT");
    size_t chunks[2] = {16384, 131072};
    for (int phase = 0; phase < 2; phase++) {
        xccl_config cfg;
        xccl_config_default(&cfg, 2);
        xccl_segment *seg = NULL;
        XCHECK(xccl_segment_create(&seg, NULL, &cfg));
        if (!seg) break;
        seg_fd = xccl_segment_fd(seg);
        run_arg a = {phase, chunks[phase]};
        CHECK_MSG(tu_run_ranks(2, rank_main, &a, 60) == 0, "phase %d: a rank failed", phase);
        xccl_segment_destroy(seg);
        for (int s = 0; s < 2; s++) {
            int d = 1 - s;
            uint64_t copied = sh->st[phase][s].chunks_pushed + sh->st[phase][d].chunks_pulled;
            CHECK_MSG(copied == sh->expect_chunks[phase][s],
                      "phase %d %d->%d: %llu chunks pushed + %llu pulled, expected %llu in all",
                      phase, s, d, (unsigned long long)sh->st[phase][s].chunks_pushed,
                      (unsigned long long)sh->st[phase][d].chunks_pulled,
                      (unsigned long long)sh->expect_chunks[phase][s]);
            CHECK(sh->st[phase][s].rndv_sent == sh->expect_rndv[phase][s]);
            CHECK(sh->st[phase][d].rndv_recv == sh->expect_rndv[phase][s]);
            printf("phase %d (chunk %zu) %d->%d: %llu rendezvous, %llu chunks pushed by the "
                   "sender, %llu pulled by "
                   "the receiver\n",
                   phase, chunks[phase], s, d, (unsigned long long)sh->expect_rndv[phase][s],
                   (unsigned long long)sh->st[phase][s].chunks_pushed,
                   (unsigned long long)sh->st[phase][d].chunks_pulled);
        }
        if (!atomic_load(&sh->cma_write_ok) && phase == 0)
            printf("note: process_vm_writev refused here; the receivers copied alone\n");
        if (phase == 1) {
            printf("streaming %d x %zu MiB: %llu chunks pushed by the sender, %llu pulled by the "
                   "receiver\n",
                   NSTREAM, STREAM_LEN >> 20, (unsigned long long)sh->stream_pushed,
                   (unsigned long long)sh->stream_pulled);
            CHECK(sh->stream_pulled > 0);
            if (atomic_load(&sh->cma_write_ok))
                CHECK_MSG(sh->stream_pushed > 0,
                          "streaming: the sender copied no chunk (pulled %llu)",
                          (unsigned long long)sh->stream_pulled);
        }
        if (phase == 0) {
            memset(sh->st, 0, sizeof sh->st);
        }
    }
    /* receiver killed (the sender reports it), then sender killed (the
     * receiver reports it); a run in which the transfer beat the kill is
     * repeated with the kill right after both entered their calls */
    for (int victim = 1; victim >= 0; victim--) {
        int again = kill_case(victim, 2000);
        for (int t = 0; t < 3 && again; t++) again = kill_case(victim, 0);
        CHECK_MSG(!again, "victim %d: the transfer always finished before the kill", victim);
    }
    TEST_MAIN_END();
}
