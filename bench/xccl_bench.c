/*
 * xccl_bench.c — xccl-bench: XCCL speed on this host, with memcpy bandwidth
 * measured in the same run.
 *
 *   xccl_bench [--json] [--quick] [--no-pin] [--p2p-only]
 *
 * Ranks are pinned to cpu (rank % ncpu) like mpirun's default core binding
 * (--no-pin leaves placement to the scheduler).
 *
 * 1. memcpy bandwidth, 8 B .. 64 MiB (measured right before the send/recv
 *    figures of each size): hot buffers (the same copy repeated: at 1-4 MiB
 *    an L2/L3-resident copy) on one core (rank 0) and on two cores at once
 *    (both ranks, pinned as for the transfers, each copying its half of the
 *    size between its own buffers; bandwidth = size / time until both are
 *    done); and cold on one core (source and destination flushed from the
 *    caches with clflush before each timed copy: what one copy of data that
 *    is not in this core's cache costs). A send/recv keeps both ranks' cores
 *    busy (the ring: sender copies in, receiver copies out; from 256 KiB the
 *    cooperative rendezvous: both copy chunks), so its bound is the two-core
 *    memcpy (% columns send%, sthp%, sreg%); a get is one copy by the caller
 *    alone, so its bound is the one-core memcpy (get%). The C columns compare
 *    with the one-core cold copy (a reference, not a bound).
 * 2. send/recv bandwidth, 2 ranks (rank 0 streams `iters` blocking sends,
 *    rank 1 receives, one ack at the end) from plain memory (malloc, 4 KiB
 *    pages), from plain memory backed by transparent huge pages on both
 *    sides (2 MiB-aligned mmap + MADV_HUGEPAGE before the first touch), and
 *    from a registered region (zero-copy
 *    rendezvous); get bandwidth from a registered region of the other rank.
 *    For >= 256 KiB both ranks copy chunks of each message at once
 *    (cooperative rendezvous, docs/XCCL.md): a transfer uses both cores,
 *    like the two-core memcpy it is compared with.
 * 3. one-way latency: 8 B / 64 B ping-pong between 2 ranks, half the round trip.
 * 4. MoE layout + dispatch + combine (bf16, top-8, 64 experts spread evenly)
 *    for batch {1,8,32,128,256} x hidden {2048,7168} x ranks {2,4,8}, in
 *    both modes: gather (rows copied into per-expert blocks) and in-place
 *    (XCCL_MOE_IN_PLACE: rows read where the senders wrote them).
 * Every figure is min and median over 5 repetitions (after one warm-up).
 * Ranks are forked processes on one segment. The OpenMPI side of the
 * comparison is bench/mpi/mpi_alltoallv.c (bench/build_mpi_peer.sh), fed the
 * same payloads through xccl_bench_common.h.
 */
#define _GNU_SOURCE
#include "xccl.h"
#include "xccl_bench_common.h"

#include <sched.h>
#include <signal.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <stdio.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct results {
    double memcpy_bw[BENCH_NSIZES][2]; /* GB/s at min time / at median time */
    double memcpy_cold_bw[BENCH_NSIZES][2]; /* same, source and destination flushed before each copy */
    double memcpy2_bw[BENCH_NSIZES][2]; /* hot, both ranks' cores at once, each copying half the size */
    double send_bw[BENCH_NSIZES][2];
    double sendreg_bw[BENCH_NSIZES][2]; /* send from a registered region (zero-copy rendezvous) */
    double sendthp_bw[BENCH_NSIZES][2]; /* send from / recv into THP-backed plain memory */
    double get_bw[BENCH_NSIZES][2];
    double lat_us[2][2];               /* 8 B, 64 B: min / median one-way */
    double moe_us[2][3][5][2][2];      /* mode x ranks x batch x hidden: min / median */
    int moe_ok[2][3][5][2];
} results;

static results *R;
static int quick;

static int iters_for(size_t sz) {
    size_t it = (256u << 20) / (sz < 4096 ? 4096 : sz);
    if (quick) it /= 8;
    if (it > 2000) it = 2000;
    if (it < 3) it = 3;
    return (int)it;
}

/* memcpy bandwidth of one size (hot buffers), measured by rank 0 right before
 * the send/recv figures of that size so that both see the same machine. */
static void bench_memcpy(size_t si, uint8_t *a, uint8_t *b) {
    size_t sz = bench_sizes[si];
    int it = iters_for(sz);
    double v[BENCH_REPS];
    for (int r = 0; r < BENCH_REPS + 1; r++) {
        double t0 = bench_now();
        for (int i = 0; i < it; i++) {
            memcpy(b, a, sz);
            __asm__ __volatile__("" ::"r"(b) : "memory");
        }
        if (r) v[r - 1] = (bench_now() - t0) / it;
    }
    double mn, med;
    bench_stats(v, BENCH_REPS, &mn, &med);
    R->memcpy_bw[si][0] = sz / mn / 1e9;
    R->memcpy_bw[si][1] = sz / med / 1e9;
}

/* Evict [p, p + n) from every cache level of this core (no-op off x86). */
static void flush_range(const uint8_t *p, size_t n) {
#if defined(__x86_64__)
    for (size_t i = 0; i < n; i += 64) _mm_clflush(p + i);
    _mm_mfence();
#else
    (void)p;
    (void)n;
#endif
}

/* memcpy bandwidth of one size from cold caches: source and destination are
 * flushed before each copy (untimed), each copy is timed on its own. */
static void bench_memcpy_cold(size_t si, uint8_t *a, uint8_t *b) {
    size_t sz = bench_sizes[si];
    int it = iters_for(sz);
    if (it > 64) it = 64;
    double v[BENCH_REPS];
    for (int r = 0; r < BENCH_REPS + 1; r++) {
        double sum = 0;
        for (int i = 0; i < it; i++) {
            flush_range(a, sz);
            flush_range(b, sz);
            double t0 = bench_now();
            memcpy(b, a, sz);
            __asm__ __volatile__("" ::"r"(b) : "memory");
            sum += bench_now() - t0;
        }
        if (r) v[r - 1] = sum / it;
    }
    double mn, med;
    bench_stats(v, BENCH_REPS, &mn, &med);
    R->memcpy_cold_bw[si][0] = sz / mn / 1e9;
    R->memcpy_cold_bw[si][1] = sz / med / 1e9;
}

static int die(const char *what) {
    fprintf(stderr, "xccl_bench: %s: %s\n", what, xccl_err_msg());
    return 1;
}

/* Hot memcpy on two cores at once: each of the 2 ranks (pinned like the
 * transfers) copies its half of the size (rank 1 the odd byte) `it` times
 * between its own buffers; one barrier before and one after the loop (like
 * the send loop's start barrier and final ack). Rank 0 keeps
 * size / (time from the first barrier to the last). */
static int bench_memcpy2(size_t si, uint8_t *a, uint8_t *b, int rank, xccl_comm *c, xccl_group *w) {
    size_t sz = bench_sizes[si], h = sz / 2, off = rank ? h : 0, n = rank ? sz - h : h;
    int it = iters_for(sz);
    double v[BENCH_REPS];
    for (int r = 0; r < BENCH_REPS + 1; r++) {
        if (xccl_barrier(c, w)) return die("barrier");
        double t0 = bench_now();
        for (int i = 0; i < it; i++) {
            memcpy(b + off, a + off, n);
            __asm__ __volatile__("" ::"r"(b) : "memory");
        }
        if (xccl_barrier(c, w)) return die("barrier");
        if (r) v[r - 1] = (bench_now() - t0) / it;
    }
    if (rank == 0) {
        double mn, med;
        bench_stats(v, BENCH_REPS, &mn, &med);
        R->memcpy2_bw[si][0] = sz / mn / 1e9;
        R->memcpy2_bw[si][1] = sz / med / 1e9;
    }
    return 0;
}

static int seg_fd;

/* 64 MiB of plain (not shared) memory backed by transparent huge pages where
 * the kernel has them: 2 MiB-aligned, MADV_HUGEPAGE before the first touch.
 * Returned 16 bytes past the huge-page boundary, like a malloc'd block. */
static uint8_t *alloc_thp(size_t n) {
    size_t hp = 2u << 20;
    uint8_t *p = mmap(NULL, n + 2 * hp, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    p = (uint8_t *)(((uintptr_t)p + hp - 1) & ~(uintptr_t)(hp - 1));
#ifdef MADV_HUGEPAGE
    madvise(p, n + hp, MADV_HUGEPAGE);
#endif
    return p + 16;
}

static int p2p_rank(int rank) {
    xccl_comm *c;
    if (xccl_comm_attach_fd(&c, seg_fd, rank, 0)) return die("attach");
    xccl_comm_set_timeout(c, 60000);
    xccl_group *w = xccl_comm_world(c);
    uint8_t *buf = malloc(64 << 20), *mcpy = malloc(64 << 20), *thp = alloc_thp(64 << 20);
    if (!buf || !mcpy || !thp) return die("alloc");
    memset(buf, rank + 1, 64 << 20);
    memset(mcpy, 9, 64 << 20);
    memset(thp, rank + 3, 64 << 20);
    char ack = 0;
    xccl_region sreg = {0};
    if (rank == 0) {
        if (xccl_region_alloc(&sreg, 64 << 20, c)) return die("region");
        memset(sreg.base, 5, 64 << 20);
    }
    for (int mode = 0; mode < 3; mode++) /* plain, region, THP-backed plain */
    for (size_t si = 0; si < BENCH_NSIZES; si++) {
        size_t sz = bench_sizes[si];
        int it = iters_for(sz);
        double v[BENCH_REPS];
        uint8_t *mine = mode == 2 ? thp : buf;
        const uint8_t *src = mode == 1 && rank == 0 ? (const uint8_t *)sreg.base : mine;
        if (mode == 0 && rank == 0) {
            bench_memcpy_cold(si, buf, mcpy);
            bench_memcpy(si, buf, mcpy);
        }
        if (mode == 0 && bench_memcpy2(si, buf, mcpy, rank, c, w)) return 1;
        for (int r = 0; r < BENCH_REPS + 1; r++) {
            if (xccl_barrier(c, w)) return die("barrier");
            double t0 = bench_now();
            if (rank == 0) {
                for (int i = 0; i < it; i++)
                    if (xccl_send(c, 1, src, sz)) return die("send");
                if (xccl_recv(NULL, &ack, 1, c, 1)) return die("recv ack");
            } else {
                for (int i = 0; i < it; i++)
                    if (xccl_recv(NULL, mine, sz, c, 0)) return die("recv");
                if (xccl_send(c, 0, &ack, 1)) return die("send ack");
            }
            if (r) v[r - 1] = (bench_now() - t0) / it;
        }
        if (rank == 0) {
            double mn, med;
            bench_stats(v, BENCH_REPS, &mn, &med);
            double(*bw)[2] = mode == 1 ? R->sendreg_bw : mode == 2 ? R->sendthp_bw : R->send_bw;
            bw[si][0] = sz / mn / 1e9;
            bw[si][1] = sz / med / 1e9;
        }
    }
    if (rank == 0) xccl_region_deregister(c, &sreg);
    xccl_region reg = {0};
    if (rank == 1) {
        if (xccl_region_alloc(&reg, 64 << 20, c)) return die("region");
        memset(reg.base, 7, 64 << 20);
    }
    if (xccl_barrier(c, w)) return die("barrier");
    if (rank == 0) {
        uint32_t id = 1; /* first region id of rank 1 */
        for (size_t si = 0; si < BENCH_NSIZES; si++) {
            size_t sz = bench_sizes[si];
            int it = iters_for(sz);
            double v[BENCH_REPS];
            for (int r = 0; r < BENCH_REPS + 1; r++) {
                double t0 = bench_now();
                for (int i = 0; i < it; i++)
                    if (xccl_get(buf, c, 1, id, 0, sz)) return die("get");
                if (r) v[r - 1] = (bench_now() - t0) / it;
            }
            double mn, med;
            bench_stats(v, BENCH_REPS, &mn, &med);
            R->get_bw[si][0] = sz / mn / 1e9;
            R->get_bw[si][1] = sz / med / 1e9;
        }
    }
    if (xccl_barrier(c, w)) return die("barrier");
    size_t lsz[2] = {8, 64};
    for (int li = 0; li < 2; li++) {
        int it = quick ? 2000 : 20000;
        double v[BENCH_REPS];
        for (int r = 0; r < BENCH_REPS + 1; r++) {
            if (xccl_barrier(c, w)) return die("barrier");
            double t0 = bench_now();
            for (int i = 0; i < it; i++) {
                if (rank == 0) {
                    if (xccl_send(c, 1, buf, lsz[li]) || xccl_recv(NULL, buf, lsz[li], c, 1)) return die("pingpong");
                } else {
                    if (xccl_recv(NULL, buf, lsz[li], c, 0) || xccl_send(c, 0, buf, lsz[li])) return die("pingpong");
                }
            }
            if (r) v[r - 1] = (bench_now() - t0) / it / 2 * 1e6;
        }
        if (rank == 0) bench_stats(v, BENCH_REPS, &R->lat_us[li][0], &R->lat_us[li][1]);
    }
    if (xccl_barrier(c, w)) return die("barrier");
    if (rank == 1) xccl_region_deregister(c, &reg);
    free(buf);
    free(mcpy);
    /* thp stays mapped until the rank exits */
    xccl_comm_detach(c);
    return 0;
}

static int moe_rank(int rank, int n, int ni) {
    xccl_comm *c;
    if (xccl_comm_attach_fd(&c, seg_fd, rank, 0)) return die("attach");
    xccl_comm_set_timeout(c, 60000);
    xccl_group *g = xccl_comm_world(c);
    int L = BENCH_E / n;
    int nrep[BENCH_E], rrank[BENCH_E], rslot[BENCH_E];
    for (int e = 0; e < BENCH_E; e++) {
        nrep[e] = 1;
        rrank[e] = e / L;
        rslot[e] = e % L;
    }
    xccl_expert_map map = {BENCH_E, 1, nrep, rrank, rslot, L, XCCL_REPLICA_ROTATE};
    uint16_t *x = malloc((size_t)BENCH_MAXT * BENCH_MAXH * 2), *y = malloc((size_t)BENCH_MAXT * BENCH_MAXH * 2);
    for (size_t i = 0; i < (size_t)BENCH_MAXT * BENCH_MAXH; i++) x[i] = xccl_f32_to_bf16((float)(i % 97) * 0.01f);
    int32_t ids[BENCH_MAXT * BENCH_TOPK];
    float w[BENCH_MAXT * BENCH_TOPK];
    for (int i = 0; i < BENCH_MAXT * BENCH_TOPK; i++) w[i] = 0.125f;
    xccl_moe_recv recv[64];
    for (int mode = 0; mode < 2; mode++)
        for (int bi = 0; bi < 5; bi++)
            for (int hi = 0; hi < 2; hi++) {
                int T = bench_batches[bi], H = bench_hiddens[hi];
                unsigned flags = mode ? XCCL_MOE_IN_PLACE : 0u;
                bench_routing(ids, T, BENCH_TOPK, rank, bi * 2 + hi);
                int it = quick ? 3 : (T <= 32 ? 50 : 20);
                double v[BENCH_REPS];
                for (int r = 0; r < BENCH_REPS + 1; r++) {
                    if (xccl_barrier(c, g)) return die("barrier");
                    double t0 = bench_now();
                    for (int i = 0; i < it; i++) {
                        xccl_moe_layout lay;
                        xccl_moe_handle *h;
                        if (xccl_moe_layout_compute(&lay, ids, T, BENCH_TOPK, &map, (uint64_t)i, c, g) ||
                            xccl_moe_dispatch(recv, &h, x, XCCL_BF16, H, flags, &lay, c, g) ||
                            xccl_moe_combine(y, w, NULL, h, c, g)) {
                            fprintf(stderr, "moe n=%d T=%d H=%d: %s\n", n, T, H, xccl_err_msg());
                            return 1;
                        }
                        xccl_moe_layout_free(&lay);
                    }
                    if (r) v[r - 1] = (bench_now() - t0) / it * 1e6;
                }
                if (rank == 0) {
                    bench_stats(v, BENCH_REPS, &R->moe_us[mode][ni][bi][hi][0], &R->moe_us[mode][ni][bi][hi][1]);
                    R->moe_ok[mode][ni][bi][hi] = 1;
                }
            }
    free(x);
    free(y);
    xccl_comm_detach(c);
    return 0;
}

static int pin = 1;

static int run(int n, int (*fn)(int, int, int), int ni) {
    pid_t pids[8];
    fflush(NULL);
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    for (int r = 0; r < n; r++) {
        pids[r] = fork();
        if (pids[r] == 0) {
            if (pin && ncpu > 0) { /* like mpirun's default --bind-to core: rank r on cpu r % ncpu */
                cpu_set_t set;
                CPU_ZERO(&set);
                CPU_SET((int)(r % ncpu), &set);
                sched_setaffinity(0, sizeof set, &set);
            }
            _exit(fn(r, n, ni));
        }
    }
    int bad = 0;
    for (int r = 0; r < n; r++) {
        int st;
        waitpid(pids[r], &st, 0);
        bad |= !(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    return bad;
}
static int p2p_wrap(int r, int n, int ni) {
    (void)n;
    (void)ni;
    return p2p_rank(r);
}

int main(int argc, char **argv) {
    int json = 0, p2p_only = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) json = 1;
        else if (!strcmp(argv[i], "--quick")) quick = 1;
        else if (!strcmp(argv[i], "--no-pin")) pin = 0;
        else if (!strcmp(argv[i], "--p2p-only")) p2p_only = 1;
        else {
            fprintf(stderr, "usage: %s [--json] [--quick] [--no-pin] [--p2p-only]\n", argv[0]);
            return 2;
        }
    }
    R = mmap(NULL, sizeof *R, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (R == MAP_FAILED) return 1;
    memset(R, 0, sizeof *R);

    xccl_config cfg;
    xccl_config_default(&cfg, 2);
    xccl_segment *seg;
    if (xccl_segment_create(&seg, NULL, &cfg)) return die("segment");
    seg_fd = xccl_segment_fd(seg);
    int bad = run(2, p2p_wrap, 0);
    xccl_segment_destroy(seg);

    int ranks[3] = {2, 4, 8};
    for (int ni = 0; ni < (p2p_only ? 0 : 3); ni++) {
        xccl_config_default(&cfg, (uint32_t)ranks[ni]);
        cfg.moe_max_tokens = BENCH_MAXT;
        cfg.moe_max_hidden = BENCH_MAXH;
        cfg.moe_max_topk = BENCH_TOPK;
        cfg.moe_max_local_experts = (uint32_t)(BENCH_E / ranks[ni]);
        cfg.moe_max_recv_rows = BENCH_MAXT * BENCH_TOPK * 2;
        if (xccl_segment_create(&seg, NULL, &cfg)) return die("moe segment");
        seg_fd = xccl_segment_fd(seg);
        bad |= run(ranks[ni], moe_rank, ni);
        xccl_segment_destroy(seg);
    }

    if (json) {
        printf("{\n  \"p2p\": [\n");
        for (size_t si = 0; si < BENCH_NSIZES; si++)
            printf("    {\"bytes\": %zu, \"memcpy_gbs\": [%.3f, %.3f], \"memcpy_2core_gbs\": [%.3f, %.3f], "
                   "\"memcpy_cold_gbs\": [%.3f, %.3f], "
                   "\"sendrecv_gbs\": [%.3f, %.3f], \"sendrecv_thp_gbs\": [%.3f, %.3f], "
                   "\"sendrecv_region_gbs\": [%.3f, %.3f], \"get_gbs\": [%.3f, %.3f]}%s\n",
                   bench_sizes[si], R->memcpy_bw[si][0], R->memcpy_bw[si][1], R->memcpy2_bw[si][0],
                   R->memcpy2_bw[si][1], R->memcpy_cold_bw[si][0],
                   R->memcpy_cold_bw[si][1], R->send_bw[si][0], R->send_bw[si][1], R->sendthp_bw[si][0],
                   R->sendthp_bw[si][1], R->sendreg_bw[si][0], R->sendreg_bw[si][1], R->get_bw[si][0],
                   R->get_bw[si][1], si + 1 < BENCH_NSIZES ? "," : "");
        printf("  ],\n  \"oneway_latency_us\": {\"8\": [%.3f, %.3f], \"64\": [%.3f, %.3f]},\n",
               R->lat_us[0][0], R->lat_us[0][1], R->lat_us[1][0], R->lat_us[1][1]);
        printf("  \"moe_us\": [\n");
        int first = 1;
        for (int mode = 0; mode < 2; mode++)
            for (int ni = 0; ni < 3; ni++)
                for (int bi = 0; bi < 5; bi++)
                    for (int hi = 0; hi < 2; hi++) {
                        if (!R->moe_ok[mode][ni][bi][hi]) continue;
                        printf("%s    {\"mode\": \"%s\", \"ranks\": %d, \"batch\": %d, \"hidden\": %d, "
                               "\"topk\": %d, \"dispatch_combine_us\": [%.1f, %.1f]}",
                               first ? "" : ",\n", mode ? "in_place" : "gather", ranks[ni], bench_batches[bi],
                               bench_hiddens[hi], BENCH_TOPK, R->moe_us[mode][ni][bi][hi][0],
                               R->moe_us[mode][ni][bi][hi][1]);
                        first = 0;
                    }
        printf("\n  ],\n  \"ok\": %s\n}\n", bad ? "false" : "true");
    } else {
        printf("# xccl-bench (min / median of %d reps; GB/s figures are at the min / median time)\n", BENCH_REPS);
        printf("# send%% sthp%% sreg%%: of the hot memcpy on 2 cores (a send/recv keeps both busy); get%%: of the\n"
               "# hot memcpy on 1 core (the caller copies alone); ...C%%: of the cold memcpy on 1 core\n");
        printf("%10s %20s %20s %20s %20s %20s %20s %20s %6s %6s %6s %6s %6s %6s %6s\n", "bytes", "memcpy GB/s",
               "memcpy 2 cores GB/s", "cold memcpy GB/s", "send/recv GB/s", "send/recv THP GB/s", "send(region) GB/s", "get GB/s", "send%",
               "sthp%", "sreg%", "get%", "sendC%", "sregC%", "getC%");
        for (size_t si = 0; si < BENCH_NSIZES; si++) {
            double hot = R->memcpy_bw[si][1], hot2 = R->memcpy2_bw[si][1], cold = R->memcpy_cold_bw[si][1];
            printf("%10zu %9.2f / %-8.2f %9.2f / %-8.2f %9.2f / %-8.2f %9.2f / %-8.2f %9.2f / %-8.2f %9.2f / %-8.2f "
                   "%9.2f / %-8.2f %5.0f%% %5.0f%% %5.0f%% %5.0f%% %5.0f%% %5.0f%% %5.0f%%\n",
                   bench_sizes[si], R->memcpy_bw[si][0], hot, R->memcpy2_bw[si][0], hot2, R->memcpy_cold_bw[si][0],
                   cold, R->send_bw[si][0],
                   R->send_bw[si][1], R->sendthp_bw[si][0], R->sendthp_bw[si][1], R->sendreg_bw[si][0],
                   R->sendreg_bw[si][1], R->get_bw[si][0], R->get_bw[si][1], 100 * R->send_bw[si][1] / hot2,
                   100 * R->sendthp_bw[si][1] / hot2, 100 * R->sendreg_bw[si][1] / hot2, 100 * R->get_bw[si][1] / hot,
                   100 * R->send_bw[si][1] / cold, 100 * R->sendreg_bw[si][1] / cold, 100 * R->get_bw[si][1] / cold);
        }
        printf("one-way latency, 2 ranks: 8 B %.3f / %.3f us, 64 B %.3f / %.3f us\n", R->lat_us[0][0],
               R->lat_us[0][1], R->lat_us[1][0], R->lat_us[1][1]);
        printf("# MoE layout+dispatch+combine, bf16, top-%d, %d experts (us, min / median)\n", BENCH_TOPK,
               BENCH_E);
        printf("%6s %6s %8s %24s %24s\n", "ranks", "batch", "hidden", "gather us", "in-place us");
        for (int ni = 0; ni < 3; ni++)
            for (int bi = 0; bi < 5; bi++)
                for (int hi = 0; hi < 2; hi++)
                    if (R->moe_ok[0][ni][bi][hi])
                        printf("%6d %6d %8d %11.1f / %-10.1f %11.1f / %-10.1f\n", ranks[ni], bench_batches[bi],
                               bench_hiddens[hi], R->moe_us[0][ni][bi][hi][0], R->moe_us[0][ni][bi][hi][1],
                               R->moe_us[1][ni][bi][hi][0], R->moe_us[1][ni][bi][hi][1]);
    }
    return bad;
}
