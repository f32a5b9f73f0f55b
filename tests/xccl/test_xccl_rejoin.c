/*
 * test_xccl_rejoin.c — failover in real processes: a rank killed with
 * SIGKILL is rejoined by a restarted process (a new incarnation), twice in a
 * row; heartbeats that mean progress; a supervisor declaring a rank dead.
 *
 * (1) Ranks 0 and 1 survive; rank 2 is the victim. Every incarnation of rank
 *     2 exchanges verified small (ring) and 1 MiB (rendezvous) messages with
 *     both survivors, then leaves stale traffic behind — a small and a 1 MiB
 *     message to rank 0 that rank 0 never receives, while rank 0 leaves one
 *     to it — and streams 4 MiB messages to rank 1, which is receiving them
 *     when the parent kills the victim. Survivors must report XCCL_ERR_PEER
 *     naming rank 2 (< 1 s); xccl_peer_reset before the newcomer attached
 *     says "not rejoined"; once it attached, a send to rank 2 fails
 *     ("restarted") until the reset; after it, the first messages each side
 *     receives are the new incarnation's (stale ones refused, the contents
 *     carry the incarnation), and a group with a new epoch runs an allreduce
 *     with the newcomer. Resetting a live peer is refused and changes
 *     nothing. Two faults in a row: incarnations 1, 2, 3.
 * (2) Progress mode: a loop that computes for 3x the heartbeat timeout but
 *     calls xccl_comm_progress is not reported hung, nor is one sitting in an
 *     XCCL wait; a loop that stops calling it is reported hung (its
 *     heartbeat thread still runs) within a generous bound; declared dead by
 *     its peer, its next xccl_comm_progress fails naming itself.
 * (3) Supervisor: xccl_segment_declare_dead of a SIGSTOPped rank makes a
 *     waiting peer fail at once (heartbeat timeout 30 s, so not by the
 *     heartbeat); a newcomer cannot attach while the stopped process exists;
 *     after SIGKILL it can, and xccl_segment_rank_info reports incarnation 2.
 * (4) A rank left CLAIMING by a process killed mid-attach is taken over by
 *     the next attach (after 50 ms); a live claimer's is still refused.
 * No timing assertions beyond generous detection deadlines.
 */
#include "xccl_testutil.h"
#include "../../src/xccl/xccl_internal.h"

#include <sys/stat.h>

#include <stdatomic.h>

#define SMALL 200
#define BIG   (1u << 20)
#define STREAM (4u << 20)

typedef struct shared {
    _Atomic int victim_ready[4];  /* per incarnation: stale traffic posted */
    _Atomic int stale0_sent[4];   /* rank 0 left its stale message for that incarnation */
    _Atomic int detected[3][4];   /* [rank][inc]: saw it die and tried an early reset */
    _Atomic int newcomer_up;      /* incarnation of rank 2 now attached */
    _Atomic int streamed;         /* 4 MiB messages rank 1 received verified */
    _Atomic uint64_t kill_ns[4];
    double detect_ms[3][4];
    /* scenario 2/3 */
    _Atomic int step;
    _Atomic int hang;
} shared;

static shared *sh;
static int seg_fd;

/* Content of a message: who sent it to whom, which incarnation, what kind. */
static uint64_t mseed(int kind, int src, int dst, uint32_t inc, uint64_t i) {
    return tu_seed((uint64_t)kind * 131 + (uint64_t)inc, (uint64_t)src * 64 + (uint64_t)dst, i);
}

static int verify(const uint8_t *buf, size_t len, uint64_t seed) {
    uint8_t *want = malloc(len ? len : 1);
    tu_fill(want, len, seed);
    int ok = memcmp(buf, want, len) == 0;
    free(want);
    return ok;
}

/* Verified small + 1 MiB messages both ways with peer; inc = rank 2's
 * incarnation (names the contents). */
static void exchange(xccl_comm *c, int peer, uint32_t inc, const char *what) {
    int me = xccl_comm_rank(c);
    uint8_t *ss = malloc(SMALL), *sb = malloc(BIG), *rs = malloc(SMALL + 64), *rb = malloc(BIG + 64);
    tu_fill(ss, SMALL, mseed(1, me, peer, inc, 0));
    tu_fill(sb, BIG, mseed(2, me, peer, inc, 0));
    xccl_request r1, r2;
    XCHECK(xccl_isend(c, peer, ss, SMALL, &r1));
    XCHECK(xccl_isend(c, peer, sb, BIG, &r2));
    size_t n = 0;
    xccl_status s = xccl_recv(&n, rs, SMALL + 64, c, peer);
    CHECK_MSG(s == XCCL_OK && n == SMALL && verify(rs, SMALL, mseed(1, peer, me, inc, 0)),
              "%s: rank %d: first small message from rank %d is not incarnation %u's (%s, %zu bytes: %s)", what, me,
              peer, inc, xccl_status_str(s), n, xccl_err_msg());
    s = xccl_recv(&n, rb, BIG + 64, c, peer);
    CHECK_MSG(s == XCCL_OK && n == BIG && verify(rb, BIG, mseed(2, peer, me, inc, 0)),
              "%s: rank %d: 1 MiB message from rank %d is not incarnation %u's (%s, %zu bytes: %s)", what, me, peer,
              inc, xccl_status_str(s), n, xccl_err_msg());
    XCHECK(xccl_wait(c, &r1));
    XCHECK(xccl_wait(c, &r2));
    free(ss), free(sb), free(rs), free(rb);
}

/* Allreduce over a fresh group of all three ranks (epoch = inc). */
static void group_check(xccl_comm *c, uint32_t epoch) {
    int all[3] = {0, 1, 2};
    xccl_group *g = NULL;
    XCHECK(xccl_group_create(&g, c, all, 3, epoch));
    if (!g) return;
    float v[64], out[64];
    for (int i = 0; i < 64; i++) v[i] = (float)(xccl_comm_rank(c) + 1) * (float)i;
    XCHECK(xccl_allreduce_sum(out, v, 64, XCCL_F32, c, g));
    int ok = 1;
    for (int i = 0; i < 64; i++) ok &= out[i] == 6.0f * (float)i;
    CHECK_MSG(ok, "allreduce with incarnation %u of rank 2 is wrong", epoch);
    xccl_group_destroy(g);
}

static void wait_flag(_Atomic int *f, int want) {
    uint64_t t0 = tu_now_ns();
    while (atomic_load(f) < want && tu_now_ns() - t0 < 60000000000ull) usleep(500);
}

/* Rank 2, incarnation inc (1..3). The last one finishes cleanly. */
static int victim_main(uint32_t inc) {
    xccl_comm *c = NULL;
    XCHECK(xccl_comm_attach_fd(&c, seg_fd, 2, 0));
    if (!c) return 1;
    CHECK_MSG(xccl_comm_incarnation(c) == inc, "rank 2 attached as incarnation %u, want %u",
              xccl_comm_incarnation(c), inc);
    xccl_comm_set_timeout(c, 20000);
    atomic_store(&sh->newcomer_up, (int)inc);
    exchange(c, 0, inc, "victim");
    exchange(c, 1, inc, "victim");
    if (inc > 1) group_check(c, inc);
    if (inc == 3) {
        xccl_comm_detach(c);
        return TU_CHILD_RESULT();
    }
    /* stale traffic to rank 0: a small message and a 1 MiB rendezvous it never takes */
    uint8_t *ss = malloc(SMALL), *sb = malloc(BIG), *st = malloc(STREAM);
    tu_fill(ss, SMALL, mseed(9, 2, 0, inc, 0));
    tu_fill(sb, BIG, mseed(9, 2, 0, inc, 1));
    xccl_request r1, r2;
    XCHECK(xccl_isend(c, 0, ss, SMALL, &r1));
    XCHECK(xccl_isend(c, 0, sb, BIG, &r2));
    wait_flag(&sh->stale0_sent[inc], 1);
    atomic_store(&sh->victim_ready[inc], 1);
    /* stream to rank 1 until killed */
    for (uint64_t i = 0;; i++) {
        tu_fill(st, 64, mseed(3, 2, 1, inc, i)); /* the head names the message */
        if (xccl_send(c, 1, st, STREAM) != XCCL_OK) break;
    }
    for (;;) pause();
}

static int survivor_main(int rank) {
    xccl_comm *c = NULL;
    XCHECK(xccl_comm_attach_fd(&c, seg_fd, rank, 0));
    if (!c) return 1;
    xccl_comm_set_timeout(c, 20000);
    uint8_t *st = malloc(STREAM);
    for (uint32_t inc = 1; inc <= 3; inc++) {
        wait_flag(&sh->newcomer_up, (int)inc);
        if (inc > 1) {
            /* the newcomer is up, this rank still talks to inc - 1: refused */
            char b[8] = {0};
            xccl_status s = xccl_send(c, 2, b, sizeof b);
            CHECK_MSG(s == XCCL_ERR_PEER && xccl_err_rank() == 2 && strstr(xccl_err_msg(), "restarted"),
                      "rank %d: send to restarted rank 2 before reset: %s (%s)", rank, xccl_status_str(s),
                      xccl_err_msg());
            uint64_t t0 = tu_now_ns();
            while ((s = xccl_peer_reset(c, 2)) == XCCL_ERR_PEER && tu_now_ns() - t0 < 10000000000ull) usleep(1000);
            XCHECK(s);
            CHECK_MSG(xccl_peer_incarnation(c, 2) == inc, "rank %d talks to incarnation %u of rank 2, want %u", rank,
                      xccl_peer_incarnation(c, 2), inc);
        }
        exchange(c, 2, inc, "survivor");
        if (inc > 1) group_check(c, inc);
        if (inc == 3) break;
        /* the live neighbour cannot be reset, and that breaks nothing */
        int other = rank ^ 1;
        uint64_t tw = tu_now_ns(); /* it may not have attached yet */
        while (xccl_peer_state(c, other) != XCCL_RANK_ACTIVE && tu_now_ns() - tw < 30000000000ull) usleep(500);
        xccl_status s = xccl_peer_reset(c, other);
        CHECK_MSG(s == XCCL_ERR_INVALID && strstr(xccl_err_msg(), "alive"), "reset of live rank %d: %s (%s)", other,
                  xccl_status_str(s), xccl_err_msg());
        if (rank == 0) {
            char b[SMALL];
            tu_fill(b, SMALL, mseed(9, 0, 2, inc, 0));
            xccl_request r;
            XCHECK(xccl_isend(c, 2, b, SMALL, &r)); /* fits the ring: complete at once */
            XCHECK(xccl_wait(c, &r));
            atomic_store(&sh->stale0_sent[inc], 1);
            wait_flag(&sh->victim_ready[inc], 1);
            while ((s = xccl_peer_check(c, 2)) == XCCL_OK) usleep(200);
        } else {
            wait_flag(&sh->victim_ready[inc], 1);
            for (uint64_t i = 0;; i++) { /* receive the stream until the victim dies */
                size_t n = 0;
                s = xccl_recv(&n, st, STREAM, c, 2);
                if (s) break;
                CHECK_MSG(n == STREAM && verify(st, 64, mseed(3, 2, 1, inc, i)), "stream message %llu corrupt",
                          (unsigned long long)i);
                atomic_fetch_add(&sh->streamed, 1);
            }
        }
        sh->detect_ms[rank][inc] = (double)(tu_now_ns() - atomic_load(&sh->kill_ns[inc])) / 1e6;
        CHECK_MSG(s == XCCL_ERR_PEER && xccl_err_rank() == 2, "rank %d: death of rank 2 reported as %s (%s)", rank,
                  xccl_status_str(s), xccl_err_msg());
        printf("rank %d: incarnation %u of rank 2 killed, reported after %.2f ms: %s\n", rank, inc,
               sh->detect_ms[rank][inc], xccl_err_msg());
        /* nobody has rejoined yet */
        s = xccl_peer_reset(c, 2);
        CHECK_MSG(s == XCCL_ERR_PEER && strstr(xccl_err_msg(), "not rejoined"), "early reset: %s (%s)",
                  xccl_status_str(s), xccl_err_msg());
        atomic_store(&sh->detected[rank][inc], 1);
    }
    free(st);
    xccl_comm_detach(c);
    return TU_CHILD_RESULT();
}

static int ranks01(int rank, int n, void *arg) {
    (void)n, (void)arg;
    return survivor_main(rank);
}

static void scenario_rejoin(void) {
    xccl_config cfg;
    xccl_config_default(&cfg, 3);
    xccl_segment *seg = tu_segment(&cfg);
    seg_fd = xccl_segment_fd(seg);
    pid_t surv[2], v = 0;
    int status[2];
    tu_spawn(2, ranks01, NULL, surv);
    uint64_t rs = tu_seed((uint64_t)getpid(), 7, 7);
    for (uint32_t inc = 1; inc <= 3; inc++) {
        fflush(NULL);
        v = fork();
        if (v == 0) _exit(victim_main(inc) ? 1 : 0);
        if (inc == 3) break;
        wait_flag(&sh->victim_ready[inc], 1);
        usleep((useconds_t)tu_range(&rs, 2000, 20000)); /* the stream is running */
        atomic_store(&sh->kill_ns[inc], tu_now_ns());
        kill(v, SIGKILL);
        int st;
        waitpid(v, &st, 0);
        CHECK_MSG(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "incarnation %u of rank 2 exited on its own (%d)",
                  inc, st);
        wait_flag(&sh->detected[0][inc], 1);
        wait_flag(&sh->detected[1][inc], 1);
    }
    int vst[1];
    tu_wait_ranks(1, &v, 60, vst);
    CHECK_MSG(WIFEXITED(vst[0]) && WEXITSTATUS(vst[0]) == 0, "incarnation 3 of rank 2 failed (%d)", vst[0]);
    tu_wait_ranks(2, surv, 60, status);
    for (int r = 0; r < 2; r++)
        CHECK_MSG(WIFEXITED(status[r]) && WEXITSTATUS(status[r]) == 0, "survivor %d failed (%d)", r, status[r]);
    for (int inc = 1; inc <= 2; inc++)
        for (int r = 0; r < 2; r++)
            CHECK_MSG(sh->detect_ms[r][inc] > 0 && sh->detect_ms[r][inc] < 1000.0,
                      "rank %d noticed incarnation %d's death after %.1f ms", r, inc, sh->detect_ms[r][inc]);
    CHECK_MSG(atomic_load(&sh->streamed) >= 1, "no stream message went through before the kills");
    printf("stream messages received before the kills: %d\n", atomic_load(&sh->streamed));
    xccl_rank_info ri;
    XCHECK(xccl_segment_rank_info(seg, 2, &ri));
    CHECK_MSG(ri.incarnation == 3 && ri.state == XCCL_RANK_LEFT, "rank 2: incarnation %u state %u", ri.incarnation,
              ri.state);
    xccl_segment_destroy(seg);
}

/* --- (2) progress mode -------------------------------------------------------- */

#define HB_TIMEOUT_MS 500

static int progress_rank(int rank, int n, void *arg) {
    (void)n, (void)arg;
    xccl_comm *c = NULL;
    XCHECK(xccl_comm_attach_fd(&c, seg_fd, rank, 0));
    if (!c) return 1;
    xccl_comm_set_timeout(c, 20000);
    char b[8] = {0};
    if (rank == 1) {
        xccl_comm_set_progress_mode(c, 1);
        XCHECK(xccl_barrier(c, xccl_comm_world(c)));
        /* (a) a long computation that reports progress */
        uint64_t t0 = tu_now_ns();
        while (tu_now_ns() - t0 < 3ull * HB_TIMEOUT_MS * 1000000ull) {
            XCHECK(xccl_comm_progress(c));
            usleep(10000);
        }
        XCHECK(xccl_send(c, 0, b, sizeof b));
        /* (b) sitting in an XCCL wait for 3x the timeout */
        XCHECK(xccl_recv(NULL, b, sizeof b, c, 0));
        /* (c) the loop hangs: no progress, the heartbeat thread still runs */
        while (!atomic_load(&sh->hang)) usleep(1000);
        /* (d) back: it was declared dead meanwhile */
        xccl_status s = xccl_comm_progress(c);
        CHECK_MSG(s == XCCL_ERR_PEER && xccl_err_rank() == 1 && strstr(xccl_err_msg(), "declared dead"),
                  "resumed loop after being declared dead: %s (%s)", xccl_status_str(s), xccl_err_msg());
        s = xccl_send(c, 0, b, sizeof b);
        CHECK_MSG(s == XCCL_ERR_PEER, "a send by a rank declared dead: %s", xccl_status_str(s));
        xccl_comm_detach(c);
        return TU_CHILD_RESULT();
    }
    XCHECK(xccl_barrier(c, xccl_comm_world(c)));
    xccl_status s = xccl_recv(NULL, b, sizeof b, c, 1); /* waits through (a) */
    CHECK_MSG(s == XCCL_OK, "a computing loop that reports progress was taken for hung: %s", xccl_err_msg());
    usleep(3 * HB_TIMEOUT_MS * 1000);
    s = xccl_peer_check(c, 1);
    CHECK_MSG(s == XCCL_OK, "a loop waiting inside XCCL was taken for hung: %s", xccl_err_msg());
    XCHECK(xccl_send(c, 1, b, sizeof b));
    /* (c) */
    uint64_t t0 = tu_now_ns();
    atomic_store(&sh->step, 1); /* rank 1 stops making progress from here on */
    s = xccl_recv(NULL, b, sizeof b, c, 1);
    double ms = (double)(tu_now_ns() - t0) / 1e6;
    CHECK_MSG(s == XCCL_ERR_PEER && xccl_err_rank() == 1 && strstr(xccl_err_msg(), "hung"),
              "hung loop: %s (%s)", xccl_status_str(s), xccl_err_msg());
    CHECK_MSG(ms < 4.0 * HB_TIMEOUT_MS, "hung loop noticed after %.1f ms (timeout %d ms)", ms, HB_TIMEOUT_MS);
    printf("hung loop of rank 1 noticed after %.1f ms (heartbeat timeout %d ms): %s\n", ms, HB_TIMEOUT_MS,
           xccl_err_msg());
    XCHECK(xccl_peer_declare_dead(c, 1));
    s = xccl_peer_check(c, 1);
    CHECK_MSG(s == XCCL_ERR_PEER && strstr(xccl_err_msg(), "died"), "declared dead: %s", xccl_err_msg());
    atomic_store(&sh->hang, 1);
    xccl_comm_detach(c);
    return TU_CHILD_RESULT();
}

static void scenario_progress(void) {
    xccl_config cfg;
    xccl_config_default(&cfg, 2);
    cfg.heartbeat_ms = 10;
    cfg.heartbeat_timeout_ms = HB_TIMEOUT_MS;
    xccl_segment *seg = tu_segment(&cfg);
    seg_fd = xccl_segment_fd(seg);
    int failed = tu_run_ranks(2, progress_rank, NULL, 60);
    CHECK_MSG(failed == 0, "progress scenario: %d ranks failed", failed);
    xccl_segment_destroy(seg);
}

/* --- (3) supervisor declares a stopped rank dead ------------------------------ */

static int sup_rank(int rank, int n, void *arg) {
    (void)n, (void)arg;
    xccl_comm *c = NULL;
    XCHECK(xccl_comm_attach_fd(&c, seg_fd, rank, 0));
    if (!c) return 1;
    xccl_comm_set_timeout(c, 20000);
    char b[8] = {0};
    XCHECK(xccl_barrier(c, xccl_comm_world(c)));
    if (rank == 1) {
        atomic_store(&sh->step, 1);
        for (;;) pause(); /* the parent stops it */
    }
    uint64_t t0 = tu_now_ns();
    xccl_status s = xccl_recv(NULL, b, sizeof b, c, 1);
    double ms = (double)(tu_now_ns() - t0) / 1e6;
    CHECK_MSG(s == XCCL_ERR_PEER && xccl_err_rank() == 1 && strstr(xccl_err_msg(), "died"),
              "declared dead by the supervisor: %s (%s)", xccl_status_str(s), xccl_err_msg());
    printf("rank 1 declared dead by the supervisor: the waiting peer failed after %.1f ms (heartbeat timeout 30 s)\n",
           ms);
    CHECK_MSG(ms < 10000.0, "declared death noticed after %.1f ms", ms);
    atomic_store(&sh->step, 2);
    uint64_t t1 = tu_now_ns();
    while ((s = xccl_peer_reset(c, 1)) != XCCL_OK && tu_now_ns() - t1 < 20000000000ull) usleep(1000);
    XCHECK(s);
    tu_fill(b, sizeof b, 77);
    XCHECK(xccl_send(c, 1, b, sizeof b));
    char r[8];
    XCHECK(xccl_recv(NULL, r, sizeof r, c, 1));
    CHECK(verify((uint8_t *)r, sizeof r, 78));
    xccl_comm_detach(c);
    return TU_CHILD_RESULT();
}

static void scenario_supervisor(void) {
    memset(sh, 0, sizeof *sh);
    xccl_config cfg;
    xccl_config_default(&cfg, 2);
    cfg.heartbeat_timeout_ms = 30000;
    xccl_segment *seg = tu_segment(&cfg);
    seg_fd = xccl_segment_fd(seg);
    pid_t pids[2];
    tu_spawn(2, sup_rank, NULL, pids);
    wait_flag(&sh->step, 1);
    usleep(20000);
    kill(pids[1], SIGSTOP);
    usleep(50000); /* rank 0 waits on it now */
    xccl_rank_info ri;
    XCHECK(xccl_segment_rank_info(seg, 1, &ri));
    CHECK(ri.state == XCCL_RANK_ACTIVE && ri.incarnation == 1 && ri.pid == pids[1] && !ri.pid_gone);
    XCHECK(xccl_segment_declare_dead(seg, 1, 1));
    CHECK(xccl_segment_declare_dead(seg, 1, 1) == XCCL_ERR_PEER); /* not ACTIVE any more */
    wait_flag(&sh->step, 2);
    /* the stopped process still exists: the rank cannot be taken yet */
    xccl_comm *nc = NULL;
    xccl_status s = xccl_comm_attach_fd(&nc, seg_fd, 1, 0);
    CHECK_MSG(s == XCCL_ERR_INVALID && strstr(xccl_err_msg(), "still running"), "attach over a stopped holder: %s (%s)",
              xccl_status_str(s), xccl_err_msg());
    if (nc) xccl_comm_detach(nc);
    kill(pids[1], SIGKILL);
    int st;
    waitpid(pids[1], &st, 0);
    fflush(NULL);
    pid_t p = fork();
    if (p == 0) {
        xccl_comm *c = NULL;
        XCHECK(xccl_comm_attach_fd(&c, seg_fd, 1, 0));
        if (!c) _exit(1);
        CHECK(xccl_comm_incarnation(c) == 2);
        char b[8], w[8];
        XCHECK(xccl_recv(NULL, b, sizeof b, c, 0));
        CHECK(verify((uint8_t *)b, sizeof b, 77));
        tu_fill(w, sizeof w, 78);
        XCHECK(xccl_send(c, 0, w, sizeof w));
        xccl_comm_detach(c);
        _exit(TU_CHILD_RESULT());
    }
    pid_t both[2] = {pids[0], p};
    int status[2];
    tu_wait_ranks(2, both, 60, status);
    CHECK_MSG(WIFEXITED(status[0]) && WEXITSTATUS(status[0]) == 0, "rank 0 failed (%d)", status[0]);
    CHECK_MSG(WIFEXITED(status[1]) && WEXITSTATUS(status[1]) == 0, "rank 1 newcomer failed (%d)", status[1]);
    XCHECK(xccl_segment_rank_info(seg, 1, &ri));
    CHECK_MSG(ri.incarnation == 2 && ri.state == XCCL_RANK_LEFT, "rank 1: incarnation %u state %u", ri.incarnation,
              ri.state);
    xccl_segment_destroy(seg);
}

/* (4) A process killed in the middle of its attach (a worker killed while
 * starting) leaves its rank CLAIMING: a restarted one takes it over after a
 * short wait, while a claim by a live process is refused as concurrent. */
static void scenario_stale_claim(void) {
    xccl_config cfg;
    xccl_config_default(&cfg, 2);
    xccl_segment *seg = tu_segment(&cfg);
    int fd = xccl_segment_fd(seg);
    struct stat stt;
    CHECK(fstat(fd, &stt) == 0);
    uint8_t *base = mmap(NULL, (size_t)stt.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    CHECK(base != MAP_FAILED);
    if (base == MAP_FAILED) return;
    const xccl_seg_header *h = (const xccl_seg_header *)base;
    xccl_rank_entry *e = &((xccl_rank_entry *)(base + h->off_ranks))[1];
    /* a live claimer (this process's parent stands in for it): refused */
    atomic_store(&e->sinc, xccl_sinc(1, XCCL_RANK_CLAIMING));
    atomic_store(&e->pid, (int32_t)getppid());
    xccl_comm *c = NULL;
    xccl_status s = xccl_comm_attach_fd(&c, fd, 1, 0);
    CHECK_MSG(s == XCCL_ERR_INVALID && strstr(xccl_err_msg(), "claimed concurrently"), "live claimer: %s (%s)",
              xccl_status_str(s), xccl_err_msg());
    if (c) xccl_comm_detach(c), c = NULL;
    /* the claimer died (a reaped child's pid), or died before storing its pid */
    pid_t dead = fork();
    if (dead == 0) _exit(0);
    waitpid(dead, NULL, 0);
    int32_t pids[2] = {(int32_t)dead, 0};
    for (int k = 0; k < 2; k++) {
        uint32_t inc = 5 + 2 * k;
        atomic_store(&e->sinc, xccl_sinc(inc, XCCL_RANK_CLAIMING));
        atomic_store(&e->pid, pids[k]);
        s = xccl_comm_attach_fd(&c, fd, 1, 0);
        CHECK_MSG(s == XCCL_OK, "stale claim (pid %d): %s (%s)", (int)pids[k], xccl_status_str(s), xccl_err_msg());
        if (c) {
            CHECK_MSG(xccl_comm_incarnation(c) == inc + 1, "incarnation %u after a stale claim at %u",
                      xccl_comm_incarnation(c), inc);
            xccl_comm_detach(c), c = NULL;
        }
    }
    munmap(base, (size_t)stt.st_size);
    xccl_segment_destroy(seg);
}

int main(void) {
    sh = tu_shared(sizeof *sh);
    scenario_stale_claim();
    scenario_rejoin();
    memset(sh, 0, sizeof *sh);
    scenario_progress();
    scenario_supervisor();
    TEST_MAIN_END();
}
