/*
 * mpi_alltoallv.c — the OpenMPI side of xccl-bench, on the same payloads
 * (bench/xccl_bench_common.h): with 2 ranks, MPI_Send/MPI_Recv bandwidth
 * (rank 0 streams, one ack) and 8 B / 64 B one-way latency (half ping-pong);
 * with any rank count, MPI_Alltoallv for MoE dispatch + combine: per
 * destination exactly the rows XCCL's layout sends there (one bf16 row of
 * `hidden` per routed (token, k)), then the reverse exchange. Only the two
 * MPI_Alltoallv calls are timed (no packing, no weighted sum), which favours
 * MPI. Not part of the CMake build (lives below bench/ so the bench/*.c glob
 * skips it); build with bench/build_mpi_peer.sh.
 *
 *   mpirun --allow-run-as-root --oversubscribe -np N mpi_alltoallv [--json] [--quick]
 */
#include "../xccl_bench_common.h"

#include <mpi.h>
#include <stdio.h>

static int quick;

static int iters_for(size_t sz) {
    size_t it = (256u << 20) / (sz < 4096 ? 4096 : sz);
    if (quick) it /= 8;
    if (it > 2000) it = 2000;
    if (it < 3) it = 3;
    return (int)it;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, n, json = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &n);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) json = 1;
        if (!strcmp(argv[i], "--quick")) quick = 1;
    }
    if (rank == 0 && json) printf("{\"mpi_ranks\": %d,\n", n);
    if (n == 2) {
        uint8_t *buf = malloc(64 << 20);
        memset(buf, rank + 1, 64 << 20);
        char ack = 0;
        if (rank == 0) printf(json ? " \"p2p\": [\n" : "# MPI_Send/Recv (GB/s at min / median time)\n");
        for (size_t si = 0; si < BENCH_NSIZES; si++) {
            size_t sz = bench_sizes[si];
            int it = iters_for(sz);
            double v[BENCH_REPS];
            for (int r = 0; r < BENCH_REPS + 1; r++) {
                MPI_Barrier(MPI_COMM_WORLD);
                double t0 = bench_now();
                if (rank == 0) {
                    for (int i = 0; i < it; i++) MPI_Send(buf, (int)sz, MPI_BYTE, 1, 0, MPI_COMM_WORLD);
                    MPI_Recv(&ack, 1, MPI_BYTE, 1, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                } else {
                    for (int i = 0; i < it; i++)
                        MPI_Recv(buf, (int)sz, MPI_BYTE, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                    MPI_Send(&ack, 1, MPI_BYTE, 0, 1, MPI_COMM_WORLD);
                }
                if (r) v[r - 1] = (bench_now() - t0) / it;
            }
            double mn, med;
            bench_stats(v, BENCH_REPS, &mn, &med);
            if (rank == 0) {
                if (json)
                    printf("  {\"bytes\": %zu, \"sendrecv_gbs\": [%.3f, %.3f]}%s\n", sz, sz / mn / 1e9,
                           sz / med / 1e9, si + 1 < BENCH_NSIZES ? "," : "");
                else
                    printf("%10zu %10.2f / %-9.2f\n", sz, sz / mn / 1e9, sz / med / 1e9);
            }
        }
        if (rank == 0 && json) printf(" ],\n");
        size_t lsz[2] = {8, 64};
        for (int li = 0; li < 2; li++) {
            int it = quick ? 2000 : 20000;
            double v[BENCH_REPS];
            for (int r = 0; r < BENCH_REPS + 1; r++) {
                MPI_Barrier(MPI_COMM_WORLD);
                double t0 = bench_now();
                for (int i = 0; i < it; i++) {
                    if (rank == 0) {
                        MPI_Send(buf, (int)lsz[li], MPI_BYTE, 1, 0, MPI_COMM_WORLD);
                        MPI_Recv(buf, (int)lsz[li], MPI_BYTE, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                    } else {
                        MPI_Recv(buf, (int)lsz[li], MPI_BYTE, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                        MPI_Send(buf, (int)lsz[li], MPI_BYTE, 0, 0, MPI_COMM_WORLD);
                    }
                }
                if (r) v[r - 1] = (bench_now() - t0) / it / 2 * 1e6;
            }
            double mn, med;
            bench_stats(v, BENCH_REPS, &mn, &med);
            if (rank == 0) {
                if (json) printf(" \"oneway_latency_us_%zu\": [%.3f, %.3f],\n", lsz[li], mn, med);
                else printf("one-way latency %zu B: %.3f / %.3f us\n", lsz[li], mn, med);
            }
        }
        free(buf);
    }
    int L = BENCH_E / n;
    int32_t *ids = malloc(sizeof(int32_t) * BENCH_MAXT * BENCH_TOPK);
    int *scnt = calloc((size_t)n, sizeof(int)), *rcnt = calloc((size_t)n, sizeof(int));
    int *sdis = calloc((size_t)n, sizeof(int)), *rdis = calloc((size_t)n, sizeof(int));
    int *rows = calloc((size_t)n, sizeof(int)), *rrows = calloc((size_t)n, sizeof(int));
    if (rank == 0) {
        if (json) printf(" \"alltoallv_us\": [\n");
        else printf("# MPI_Alltoallv dispatch+combine, bf16, top-%d (us, min / median)\n", BENCH_TOPK);
    }
    int first = 1;
    for (int bi = 0; bi < 5; bi++)
        for (int hi = 0; hi < 2; hi++) {
            int T = bench_batches[bi], H = bench_hiddens[hi];
            bench_routing(ids, T, BENCH_TOPK, rank, bi * 2 + hi);
            memset(rows, 0, sizeof(int) * (size_t)n);
            for (int i = 0; i < T * BENCH_TOPK; i++) rows[ids[i] / L]++;
            MPI_Alltoall(rows, 1, MPI_INT, rrows, 1, MPI_INT, MPI_COMM_WORLD);
            long stot = 0, rtot = 0;
            for (int d = 0; d < n; d++) {
                scnt[d] = rows[d] * H * 2;
                rcnt[d] = rrows[d] * H * 2;
                sdis[d] = (int)stot;
                rdis[d] = (int)rtot;
                stot += scnt[d];
                rtot += rcnt[d];
            }
            uint8_t *sb = malloc((size_t)stot + 1), *rb = malloc((size_t)rtot + 1);
            memset(sb, 3, (size_t)stot + 1);
            memset(rb, 4, (size_t)rtot + 1);
            int it = quick ? 3 : (T <= 32 ? 50 : 20);
            double v[BENCH_REPS];
            for (int r = 0; r < BENCH_REPS + 1; r++) {
                MPI_Barrier(MPI_COMM_WORLD);
                double t0 = bench_now();
                for (int i = 0; i < it; i++) {
                    MPI_Alltoallv(sb, scnt, sdis, MPI_BYTE, rb, rcnt, rdis, MPI_BYTE, MPI_COMM_WORLD);
                    MPI_Alltoallv(rb, rcnt, rdis, MPI_BYTE, sb, scnt, sdis, MPI_BYTE, MPI_COMM_WORLD);
                }
                if (r) v[r - 1] = (bench_now() - t0) / it * 1e6;
            }
            double mn, med;
            bench_stats(v, BENCH_REPS, &mn, &med);
            if (rank == 0) {
                if (json)
                    printf("%s  {\"ranks\": %d, \"batch\": %d, \"hidden\": %d, \"us\": [%.1f, %.1f]}",
                           first ? "" : ",\n", n, T, H, mn, med);
                else
                    printf("%6d %6d %8d %10.1f / %-10.1f\n", n, T, H, mn, med);
                first = 0;
            }
            free(sb);
            free(rb);
        }
    if (rank == 0 && json) printf("\n ]\n}\n");
    free(ids);
    MPI_Finalize();
    return 0;
}
