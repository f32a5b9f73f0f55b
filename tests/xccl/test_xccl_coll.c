/*
 * test_xccl_coll.c — barrier, allgather, allreduce (f32, bf16) among real
 * processes, for 1..5 ranks (the barrier lets no rank through before all
 * arrived: a shared counter every rank bumps first is complete after it),
 * random sizes that span several collective buffers (4 KiB buffers), and a
 * subgroup {0, 2, ...} with its own epoch while the other ranks stay idle. Results are checked byte-exact against
 * sums computed locally in member order with f32 accumulation.
 */
#include "xccl_testutil.h"

#include <stdatomic.h>
#include <stdlib.h>

static int seg_fd;
static _Atomic int *barrier_ctr; /* MAP_SHARED: one counter for all ranks */

static void gen(void *buf, size_t count, xccl_dtype dt, uint64_t seed) {
    uint64_t s = seed;
    for (size_t i = 0; i < count; i++) {
        float v = tu_float(&s);
        if (dt == XCCL_F32) ((float *)buf)[i] = v;
        else ((uint16_t *)buf)[i] = xccl_f32_to_bf16(v);
    }
}

static int check_allreduce(xccl_comm *c, xccl_group *g, const int *members, int n, int it) {
    int me = xccl_group_index(g, xccl_comm_rank(c));
    uint64_t s = tu_seed(it, 9, n);
    size_t count = (size_t)tu_range(&s, 0, 5000);
    xccl_dtype dt = tu_range(&s, 0, 1) ? XCCL_BF16 : XCCL_F32;
    size_t es = dt == XCCL_F32 ? 4 : 2;
    void *in = malloc(count * es + 4), *out = malloc(count * es + 4), *ref = malloc(count * es + 4);
    gen(in, count, dt, tu_seed(it, members[me], 10));
    int inplace = (it % 3) == 0;
    if (inplace) memcpy(out, in, count * es);
    XCHECK(xccl_allreduce_sum(out, inplace ? out : in, count, dt, c, g));
    void *tmp = malloc(n * count * es + 4);
    for (int j = 0; j < n; j++) gen((uint8_t *)tmp + j * count * es, count, dt, tu_seed(it, members[j], 10));
    for (size_t i = 0; i < count; i++) {
        float acc = 0;
        for (int j = 0; j < n; j++) {
            const uint8_t *tj = (const uint8_t *)tmp + j * count * es;
            float v = dt == XCCL_F32 ? ((const float *)tj)[i] : xccl_bf16_to_f32(((const uint16_t *)tj)[i]);
            acc = j == 0 ? v : acc + v;
        }
        if (dt == XCCL_F32) ((float *)ref)[i] = acc;
        else ((uint16_t *)ref)[i] = xccl_f32_to_bf16(acc);
    }
    CHECK_MSG(memcmp(out, ref, count * es) == 0, "allreduce it %d count %zu dt %d", it, count, dt);
    free(tmp);
    free(in);
    free(out);
    free(ref);
    return 0;
}

static int check_allgather(xccl_comm *c, xccl_group *g, const int *members, int n, int it) {
    int me = xccl_group_index(g, xccl_comm_rank(c));
    uint64_t s = tu_seed(it, 11, n);
    size_t bytes = (size_t)tu_range(&s, 0, 20000);
    uint8_t *in = malloc(bytes + 1), *out = malloc(bytes * n + 1), *w = malloc(bytes + 1);
    tu_fill(in, bytes, tu_seed(it, members[me], 12));
    XCHECK(xccl_allgather(out, in, bytes, c, g));
    for (int j = 0; j < n; j++) {
        tu_fill(w, bytes, tu_seed(it, members[j], 12));
        CHECK_MSG(memcmp(out + (size_t)j * bytes, w, bytes) == 0, "allgather it %d member %d", it, j);
    }
    free(in);
    free(out);
    free(w);
    return 0;
}

static int rank_main(int rank, int n, void *arg) {
    (void)arg;
    xccl_comm *c = NULL;
    XCHECK(xccl_comm_attach_fd(&c, seg_fd, rank, 0));
    if (!c) return 1;
    xccl_group *w = xccl_comm_world(c);
    int all[8];
    for (int i = 0; i < n; i++) all[i] = i;
    /* barrier really synchronises: before barrier `it` each rank bumps a
     * counter shared by all ranks (one rank a little late, so that a barrier
     * letting anyone through early is caught); after it every rank must see
     * all n increments of this round and at most n - 1 of the next one (this
     * rank has not made its own yet) */
    for (int it = 0; it < 12; it++) {
        if (rank == it % n) usleep(20000);
        atomic_fetch_add(barrier_ctr, 1);
        XCHECK(xccl_barrier(c, w));
        int seen = atomic_load(barrier_ctr);
        CHECK_MSG(seen >= (it + 1) * n && seen < (it + 2) * n,
                  "barrier %d of %d ranks: rank %d passed with the counter at %d (want [%d, %d))", it, n, rank, seen,
                  (it + 1) * n, (it + 2) * n);
        check_allgather(c, w, all, n, it);
        check_allreduce(c, w, all, n, it);
    }
    /* subgroup of even ranks, epoch 1 */
    if (n >= 3) {
        int ev[8], ne = 0;
        for (int i = 0; i < n; i += 2) ev[ne++] = i;
        if (rank % 2 == 0) {
            xccl_group *g = NULL;
            XCHECK(xccl_group_create(&g, c, ev, ne, 1));
            if (g) {
                for (int it = 100; it < 106; it++) {
                    check_allgather(c, g, ev, ne, it);
                    check_allreduce(c, g, ev, ne, it);
                }
                xccl_group_destroy(g);
            }
            /* bad: stale epoch, non-member */
            xccl_group *g2 = NULL;
            CHECK(xccl_group_create(&g2, c, ev, ne, 1) == XCCL_ERR_INVALID);
            int odd[1] = {1};
            CHECK(xccl_group_create(&g2, c, odd, 1, 5) == XCCL_ERR_INVALID);
        }
        /* back to a world group with a new epoch */
        xccl_group *g3 = NULL;
        XCHECK(xccl_group_create(&g3, c, all, n, 7));
        if (g3) {
            check_allreduce(c, g3, all, n, 200);
            xccl_group_destroy(g3);
        }
    }
    CHECK(xccl_allreduce_sum(NULL, NULL, 1, XCCL_I8, c, w) == XCCL_ERR_INVALID);
    xccl_comm_detach(c);
    return TU_CHILD_RESULT();
}

int main(void) {
    for (int n = 1; n <= 5; n++) {
        xccl_config cfg;
        xccl_config_default(&cfg, (uint32_t)n);
        cfg.coll_bytes = 4096;
        xccl_segment *seg = tu_segment(&cfg);
        seg_fd = xccl_segment_fd(seg);
        barrier_ctr = mmap(NULL, sizeof *barrier_ctr, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        CHECK(barrier_ctr != MAP_FAILED);
        if (barrier_ctr == MAP_FAILED) return 1;
        atomic_store(barrier_ctr, 0);
        int failed = tu_run_ranks(n, rank_main, NULL, 60);
        CHECK_MSG(failed == 0, "%d of %d ranks failed", failed, n);
        xccl_segment_destroy(seg);
        munmap((void *)barrier_ctr, sizeof *barrier_ctr);
    }
    TEST_MAIN_END();
}
