/*
 * test_xccl_fault.c — a dead peer is an error naming it, within a second,
 * and the survivors carry on.
 *
 * 5 ranks run verified dispatch/combine rounds. (1) Rank 4 never enters a
 * dispatch and is killed with SIGKILL while the others are blocked inside
 * it. (2) The four survivors form a new group (epoch 1) and a new expert map
 * and run verified rounds; then rank 3 is killed at a random moment while
 * everyone loops dispatch/combine. (3) The last three survivors regroup
 * (epoch 2) and run verified rounds and an allreduce. Every survivor must
 * report XCCL_ERR_PEER naming the victim less than 1 s after the kill.
 * Separately: a SIGSTOPped (hung) peer is reported through its stale
 * heartbeat, and a peer that detached is reported at once.
 */
#include "xccl_testutil.h"

#include <stdatomic.h>
#include <stdlib.h>

#define NR 5
#define H  32
#define T  16
#define K  4
#define E  10

typedef struct shared {
    _Atomic int in_dispatch[NR];
    _Atomic int phase2_ready[NR];
    _Atomic int victim_ready;
    _Atomic uint64_t kill_ns[2];
    uint64_t err_ns[2][NR];
    int err_rank[2][NR];
    int err_code[2][NR];
    char err_msg[2][NR][160];
} shared;

static shared *sh;
static int seg_fd;

/* experts spread over the member ranks, 2 replicas where possible */
typedef struct emap {
    int nrep[E], rrank[E * 2], rslot[E * 2];
    xccl_expert_map m;
} emap;

static void make_map(emap *em, const int *members, int n) {
    for (int e = 0; e < E; e++) {
        em->nrep[e] = n > 1 ? 2 : 1;
        for (int r = 0; r < em->nrep[e]; r++) {
            em->rrank[e * 2 + r] = members[(e + r) % n];
            em->rslot[e * 2 + r] = e % 2;
        }
    }
    em->m = (xccl_expert_map){.num_experts = E, .max_replicas = 2, .num_replicas = em->nrep,
                              .replica_rank = em->rrank, .replica_slot = em->rslot,
                              .num_local_experts = 2, .policy = XCCL_REPLICA_ROTATE};
}

/* One verified round with the identity expert: y[t] = sum_k w * x[t]. */
static xccl_status round_once(xccl_comm *c, xccl_group *g, emap *em, int round, int verify) {
    int rank = xccl_comm_rank(c);
    uint64_t s = tu_seed(round, rank, 3);
    float x[T * H], w[T * K], y[T * H];
    int32_t ids[T * K];
    for (int i = 0; i < T * H; i++) x[i] = tu_float(&s);
    for (int i = 0; i < T * K; i++) {
        ids[i] = tu_range(&s, 0, E - 1);
        w[i] = tu_float(&s);
    }
    xccl_moe_layout lay;
    xccl_status st = xccl_moe_layout_compute(&lay, ids, T, K, &em->m, (uint64_t)round, c, g);
    if (st) return st;
    xccl_moe_recv recv[2];
    xccl_moe_handle *h;
    st = xccl_moe_dispatch(recv, &h, x, XCCL_F32, H, 0, &lay, c, g);
    if (!st) {
        for (int j = 0; j < 2; j++) memcpy(recv[j].out, recv[j].rows, (size_t)recv[j].num_rows * H * 4);
        st = xccl_moe_combine(y, w, NULL, h, c, g);
    }
    if (!st && verify) {
        int ok = 1;
        for (int t = 0; t < T; t++)
            for (int hh = 0; hh < H; hh++) {
                float acc = 0;
                for (int j = 0; j < K; j++) acc += w[t * K + j] * x[t * H + hh];
                ok &= memcmp(&acc, &y[t * H + hh], 4) == 0;
            }
        CHECK_MSG(ok, "round %d rank %d: combine result differs", round, rank);
    }
    xccl_moe_layout_free(&lay);
    return st;
}

static void record(int ev, int rank, xccl_status st) {
    sh->err_ns[ev][rank] = tu_now_ns();
    sh->err_rank[ev][rank] = xccl_err_rank();
    sh->err_code[ev][rank] = (int)st;
    snprintf(sh->err_msg[ev][rank], sizeof sh->err_msg[ev][rank], "%s", xccl_err_msg());
}

static int rank_main(int rank, int n, void *arg) {
    (void)arg;
    xccl_comm *c = NULL;
    XCHECK(xccl_comm_attach_fd(&c, seg_fd, rank, 0));
    if (!c) return 1;
    xccl_comm_set_timeout(c, 20000);
    int all[NR];
    for (int i = 0; i < n; i++) all[i] = i;
    emap em;
    make_map(&em, all, n);
    for (int r = 0; r < 4; r++) XCHECK(round_once(c, xccl_comm_world(c), &em, r, 1));

    /* (1) rank 4 stays out of the dispatch and is killed */
    if (rank == 4) {
        atomic_store(&sh->victim_ready, 1);
        for (;;) pause();
    }
    atomic_store(&sh->in_dispatch[rank], 1);
    xccl_status st = round_once(c, xccl_comm_world(c), &em, 100, 0);
    record(0, rank, st);

    /* (2) survivors 0..3 regroup */
    int surv[4] = {0, 1, 2, 3};
    xccl_group *g1 = NULL;
    XCHECK(xccl_group_create(&g1, c, surv, 4, 1));
    if (!g1) return 1;
    make_map(&em, surv, 4);
    for (int r = 200; r < 206; r++) XCHECK(round_once(c, g1, &em, r, 1));
    atomic_store(&sh->phase2_ready[rank], 1);
    /* loop until rank 3 is killed under us */
    st = XCCL_OK;
    for (int r = 300; r < 300 + 1000000 && !st; r++) {
        if (rank == 3) { round_once(c, g1, &em, r, 0); continue; }
        st = round_once(c, g1, &em, r, 0);
    }
    record(1, rank, st);
    xccl_group_destroy(g1);

    /* (3) survivors 0..2 regroup again */
    int surv2[3] = {0, 1, 2};
    xccl_group *g2 = NULL;
    XCHECK(xccl_group_create(&g2, c, surv2, 3, 2));
    if (!g2) return 1;
    make_map(&em, surv2, 3);
    for (int r = 400; r < 410; r++) XCHECK(round_once(c, g2, &em, r, 1));
    float v[100], out[100];
    for (int i = 0; i < 100; i++) v[i] = (float)(rank + 1) * (float)i;
    XCHECK(xccl_allreduce_sum(out, v, 100, XCCL_F32, c, g2));
    int ok = 1;
    for (int i = 0; i < 100; i++) ok &= out[i] == 6.0f * (float)i;
    CHECK(ok);
    xccl_group_destroy(g2);
    xccl_comm_detach(c);
    return TU_CHILD_RESULT();
}

static void check_event(int ev, int victim, const int *survivors, int ns) {
    for (int i = 0; i < ns; i++) {
        int r = survivors[i];
        double ms = ((double)sh->err_ns[ev][r] - (double)sh->kill_ns[ev]) / 1e6;
        CHECK_MSG(sh->err_code[ev][r] == XCCL_ERR_PEER, "kill %d: rank %d got status %d (%s)", ev, r,
                  sh->err_code[ev][r], sh->err_msg[ev][r]);
        CHECK_MSG(sh->err_rank[ev][r] == victim, "kill %d: rank %d blames rank %d (%s)", ev, r,
                  sh->err_rank[ev][r], sh->err_msg[ev][r]);
        char want[32];
        snprintf(want, sizeof want, "rank %d", victim);
        CHECK_MSG(strstr(sh->err_msg[ev][r], want) != NULL, "message does not name the victim: %s",
                  sh->err_msg[ev][r]);
        CHECK_MSG(ms < 1000.0, "kill %d: rank %d noticed after %.1f ms", ev, r, ms);
        printf("kill %d: rank %d noticed rank %d's death after %.2f ms: %s\n", ev, r, victim, ms,
               sh->err_msg[ev][r]);
    }
}

/* --- hung and departed peers ------------------------------------------------ */

static int hang_rank(int rank, int n, void *arg) {
    (void)n;
    (void)arg;
    xccl_comm *c = NULL;
    XCHECK(xccl_comm_attach_fd(&c, seg_fd, rank, 0));
    if (!c) return 1;
    XCHECK(xccl_barrier(c, xccl_comm_world(c)));
    if (rank == 1) {
        atomic_store(&sh->victim_ready, 1);
        for (;;) pause(); /* the parent stops us */
    }
    uint64_t t0 = tu_now_ns();
    xccl_status st = xccl_barrier(c, xccl_comm_world(c));
    double ms = (double)(tu_now_ns() - t0) / 1e6;
    CHECK(st == XCCL_ERR_PEER && xccl_err_rank() == 1);
    CHECK_MSG(strstr(xccl_err_msg(), "hung") != NULL, "%s", xccl_err_msg());
    CHECK_MSG(ms < 2000.0, "hung peer noticed after %.1f ms (heartbeat timeout 500 ms)", ms);
    printf("hung rank 1 noticed after %.1f ms: %s\n", ms, xccl_err_msg());
    xccl_comm_detach(c);
    return TU_CHILD_RESULT();
}

static int leave_rank(int rank, int n, void *arg) {
    (void)n;
    (void)arg;
    xccl_comm *c = NULL;
    XCHECK(xccl_comm_attach_fd(&c, seg_fd, rank, 0));
    if (!c) return 1;
    XCHECK(xccl_barrier(c, xccl_comm_world(c)));
    if (rank == 1) {
        xccl_comm_detach(c);
        return TU_CHILD_RESULT();
    }
    char b[8];
    uint64_t t0 = tu_now_ns();
    xccl_status st = xccl_recv(NULL, b, sizeof b, c, 1);
    double ms = (double)(tu_now_ns() - t0) / 1e6;
    CHECK(st == XCCL_ERR_PEER && xccl_err_rank() == 1 && strstr(xccl_err_msg(), "left"));
    CHECK_MSG(ms < 1000.0, "departed peer noticed after %.1f ms", ms);
    xccl_comm_detach(c);
    return TU_CHILD_RESULT();
}

int main(void) {
    sh = tu_shared(sizeof *sh);
    xccl_config cfg;
    xccl_config_default(&cfg, NR);
    cfg.moe_max_tokens = T;
    cfg.moe_max_hidden = H;
    cfg.moe_max_topk = K;
    cfg.moe_max_local_experts = 2;
    xccl_segment *seg = tu_segment(&cfg);
    seg_fd = xccl_segment_fd(seg);
    pid_t pids[NR];
    int status[NR];
    tu_spawn(NR, rank_main, NULL, pids);
    uint64_t t0 = tu_now_ns();
    /* (1) wait until 0..3 are inside the dispatch, then kill 4 */
    for (;;) {
        int in = atomic_load(&sh->victim_ready);
        for (int r = 0; r < 4; r++) in &= atomic_load(&sh->in_dispatch[r]);
        if (in || tu_now_ns() - t0 > 30000000000ull) break;
        usleep(1000);
    }
    usleep(50000); /* they are blocked in it now */
    atomic_store(&sh->kill_ns[0], tu_now_ns());
    kill(pids[4], SIGKILL);
    /* (2) wait for phase 2, then kill 3 at a random moment */
    for (;;) {
        int in = 1;
        for (int r = 0; r < 4; r++) in &= atomic_load(&sh->phase2_ready[r]);
        if (in || tu_now_ns() - t0 > 30000000000ull) break;
        usleep(1000);
    }
    uint64_t rs = tu_seed((uint64_t)getpid(), 5, 5);
    usleep((useconds_t)tu_range(&rs, 5000, 60000));
    atomic_store(&sh->kill_ns[1], tu_now_ns());
    kill(pids[3], SIGKILL);
    tu_wait_ranks(NR, pids, 60, status);
    for (int r = 0; r < 3; r++)
        CHECK_MSG(status[r] == 0, "survivor %d exited with status %d", r, status[r]);
    int s1[4] = {0, 1, 2, 3}, s2[3] = {0, 1, 2};
    check_event(0, 4, s1, 4);
    check_event(1, 3, s2, 3);
    xccl_segment_destroy(seg);

    /* hung peer: heartbeat timeout 500 ms */
    memset(sh, 0, sizeof *sh);
    xccl_config_default(&cfg, 2);
    cfg.heartbeat_ms = 10;
    cfg.heartbeat_timeout_ms = 500;
    seg = tu_segment(&cfg);
    seg_fd = xccl_segment_fd(seg);
    tu_spawn(2, hang_rank, NULL, pids);
    t0 = tu_now_ns();
    while (!atomic_load(&sh->victim_ready) && tu_now_ns() - t0 < 30000000000ull) usleep(1000);
    kill(pids[1], SIGSTOP);
    int st0;
    for (;;) { /* wait for rank 0 alone */
        pid_t p = waitpid(pids[0], &st0, WNOHANG);
        if (p == pids[0] || tu_now_ns() - t0 > 30000000000ull) break;
        usleep(1000);
    }
    kill(pids[1], SIGKILL);
    waitpid(pids[1], NULL, 0);
    CHECK_MSG(WIFEXITED(st0) && WEXITSTATUS(st0) == 0, "hung-peer rank 0 failed");
    xccl_segment_destroy(seg);

    /* departed peer */
    xccl_config_default(&cfg, 2);
    seg = tu_segment(&cfg);
    seg_fd = xccl_segment_fd(seg);
    int failed = tu_run_ranks(2, leave_rank, NULL, 30);
    CHECK(failed == 0);
    xccl_segment_destroy(seg);
    TEST_MAIN_END();
}
