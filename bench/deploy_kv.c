/*
 * deploy_kv.c — KV transfer bandwidth of disaggregated prefill/decode
 * (deploy/pd.h) against memcpy of the same bytes, in one run.
 *
 * A forked prefill process runs a real prefill of a PLEN-token prompt into
 * its registered KV pool and registers the transfer task; this process (the
 * decode rank) pulls the blocks with xds_pd_pull: once cold (first mapping of
 * the region, fresh decode pages) and REPS times warm into the same slot.
 * The prefill process keeps its region until told to exit, so repeated pulls
 * read the same blocks (their FREE messages after the first are ignored).
 *
 * The pull copies C chunks (one per K/V, layer and run of consecutive blocks;
 * one run per layer for fresh pools). References, each best (and median) of
 * REPS, on this process's private page-aligned buffers of the same total:
 *   memcpy whole      one memcpy of all the bytes;
 *   memcpy chunks     memcpy in the pull's C chunk sizes, src and dst at the
 *                     same offset modulo 64 (glibc's fast case);
 *   memcpy chunks +a  the same with dst offset from src modulo 64 as in the
 *                     pull (region pages vs the malloc'd decode pool);
 *   old pull copy     memcpy straight from the peer's mapping into the decode
 *                     pool at the pull's own addresses (what xccl_get did
 *                     before xccl_copy, minus checks and notifications);
 *   xccl_copy chunks  the pull's copy routine on the private buffers.
 * "memcpy bandwidth" (the bar) is the faster of memcpy whole and
 * memcpy chunks; the pull is reported as a ratio of it, of each reference.
 *
 * Usage: deploy_kv MODEL [PLEN=256] [BLOCK=16] [REPS=10]
 * KV_BENCH_PIPE=1: the prefill process waits on a pipe instead of an XCCL
 * receive, so the pull's completion notification wakes nobody.
 */
#define _GNU_SOURCE
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <xccl.h>

#include "deploy/pd.h"
#include "model/model.h"
#include "xccl/copy.h"
#include "xccl/xccl_internal.h" /* xccl_region_peer_ptr: the old pull's copy, for reference */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double best_of(const double *t, int n) {
    double b = t[0];
    for (int i = 1; i < n; i++) b = t[i] < b ? t[i] : b;
    return b;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median_of(const double *t, int n) {
    double *c = malloc(sizeof(double) * n);
    memcpy(c, t, sizeof(double) * n);
    qsort(c, n, sizeof(double), cmp_d);
    double m = c[n / 2];
    free(c);
    return m;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: deploy_kv MODEL [PLEN] [BLOCK] [REPS]\n");
        return 2;
    }
    int plen = argc > 2 ? atoi(argv[2]) : 256, bs = argc > 3 ? atoi(argv[3]) : 16, reps = argc > 4 ? atoi(argv[4]) : 10;
    xds_model *m = NULL;
    if (xds_model_load(argv[1], NULL, &m) != XDS_OK) {
        fprintf(stderr, "load: %s\n", xds_err_msg());
        return 1;
    }
    char name[64];
    snprintf(name, sizeof name, "/xds-bench-kv-%d", (int)getpid());
    xccl_config cfg;
    xccl_config_default(&cfg, 2);
    xccl_segment *seg = NULL;
    if (xccl_segment_create(&seg, name, &cfg) != XCCL_OK) return 1;
    xccl_comm *comm = NULL;
    if (xccl_comm_attach(&comm, name, 0, 1) != XCCL_OK) return 1;
    fflush(NULL);
    int pfd[2];
    if (pipe(pfd) != 0) return 1;
    pid_t pid = fork();
    if (pid == 0) {
        close(pfd[1]); /* the decode side's exit ends the wait on the pipe */
        xccl_comm *c = NULL;
        if (xccl_comm_attach(&c, name, 1, 3) != XCCL_OK) _exit(3);
        xccl_comm_set_timeout(c, 120000);
        xds_pd_prefill_opts o = {.pool_tokens = plen + bs, .block_size = bs, .max_seqs = 1, .chunk = 64, .n_threads = 1};
        xds_pd_prefill *p = NULL;
        if (xds_pd_prefill_create(m, &o, c, &p) != XDS_OK) _exit(4);
        int32_t *prompt = malloc(sizeof(int32_t) * plen), first;
        for (int i = 0; i < plen; i++) prompt[i] = (i * 53 + 7) % m->cfg.n_vocab;
        if (xds_pd_prefill_submit(p, 1, prompt, plen, 0, &first) != XDS_OK) _exit(5);
        char msg[64];
        size_t len = 0;
        if (getenv("KV_BENCH_PIPE")) {
            /* wait on the pipe, not on the XCCL doorbell, so the pull's
             * notification wakes nobody; drain the FREE messages every 10 ms
             * so that the decode side's sends never find the ring full */
            struct pollfd pf = {.fd = pfd[0], .events = POLLIN};
            xccl_request rq;
            if (xccl_irecv(c, 0, msg, sizeof msg, &rq) != XCCL_OK) _exit(6);
            while (poll(&pf, 1, 10) == 0) {
                int done = 0;
                if (xccl_test(c, &rq, &done) != XCCL_OK) _exit(6);
                if (done && xccl_irecv(c, 0, msg, sizeof msg, &rq) != XCCL_OK) _exit(6);
            }
            xccl_cancel(c, &rq);
        } else {
            /* FREE messages (16 B) are ignored; a 1-byte message says the decode side is done */
            while (xccl_recv(&len, msg, sizeof msg, c, 0) == XCCL_OK && len != 1) {
            }
        }
        xds_pd_prefill_free(p);
        xccl_comm_detach(c);
        free(prompt);
        _exit(0);
    }
    xccl_comm_set_timeout(comm, 120000);
    xds_pd_task t;
    double t0 = now_s();
    if (xds_pd_task_recv(comm, 1, &t) != XDS_OK) {
        fprintf(stderr, "task: %s\n", xds_err_msg());
        return 1;
    }
    printf("prefill of %d tokens took %.2f s (incl. start)\n", plen, now_s() - t0);
    xds_kv_cache *kv = NULL;
    if (xds_model_kv_cache_create(m, plen + bs, bs, 1, &kv) != XDS_OK) return 1;
    uint64_t bytes = 0;
    t0 = now_s();
    if (xds_pd_pull(comm, &t, kv, 0, &bytes) != XDS_OK) {
        fprintf(stderr, "pull: %s\n", xds_err_msg());
        return 1;
    }
    double cold = now_s() - t0;
    int reps2 = reps < 1 ? 1 : reps;
    double *tp = malloc(sizeof(double) * reps2);
    for (int r = 0; r < reps2; r++) {
        xds_kv_seq_truncate(kv, 0, 0);
        uint64_t b = 0;
        t0 = now_s();
        if (xds_pd_pull(comm, &t, kv, 0, &b) != XDS_OK) {
            fprintf(stderr, "warm pull: %s\n", xds_err_msg());
            return 1;
        }
        tp[r] = now_s() - t0;
    }
    /* the pull's chunks, as pd_get_rows forms them: (src offset in the region, dst in the pool, bytes) */
    int L = kv->n_layer, nb = t.n_blocks, n_kv = kv->v_dim ? 2 : 1;
    const int32_t *db = kv->seqs[0].blocks;
    size_t bsz = (size_t)bs, off_v = sizeof(float) * (size_t)L * t.pool_blocks * bsz * t.k_dim;
    int cap = nb * L * n_kv, nc = 0;
    size_t *c_src = malloc(sizeof(size_t) * cap), *c_len = malloc(sizeof(size_t) * cap);
    float **c_dst = malloc(sizeof(float *) * cap);
    for (int kvi = 0; kvi < n_kv; kvi++) {
        size_t dim = kvi ? (size_t)kv->v_dim : (size_t)kv->k_dim;
        for (int l = 0; l < L; l++)
            for (int i = 0; i < nb;) {
                int n = 1;
                while (i + n < nb && t.blocks[i + n] == t.blocks[i] + n && db[i + n] == db[i] + n) n++;
                c_src[nc] = (kvi ? off_v : 0) + ((size_t)l * t.pool_blocks + t.blocks[i]) * bsz * dim * sizeof(float);
                c_dst[nc] = (kvi ? kv->v : kv->k) + ((size_t)l * kv->n_blocks + db[i]) * bsz * dim;
                c_len[nc++] = sizeof(float) * bsz * n * dim;
                i += n;
            }
    }
    uint8_t *peer = NULL;
    if (xccl_region_peer_ptr(&peer, comm, 1, t.region, 0, 0) != XCCL_OK) {
        fprintf(stderr, "peer mapping: %s\n", xccl_err_msg());
        return 1;
    }
    int mis = (int)(((uintptr_t)c_dst[0] - (uintptr_t)(peer + c_src[0])) & 63);
    /* references on private page-aligned buffers of the same total bytes */
    enum { R_WHOLE, R_CHUNK, R_CHUNK_MIS, R_OLD, R_XCOPY, NREF };
    static const char *ref_name[NREF] = {"memcpy whole", "memcpy chunks", "memcpy chunks +a", "old pull copy",
                                         "xccl_copy chunks"};
    double *tr[NREF];
    uint8_t *src = aligned_alloc(4096, bytes + 4096), *dst = aligned_alloc(4096, bytes + 4096);
    memset(src, 1, bytes + 4096);
    memset(dst, 2, bytes + 4096);
    for (int k = 0; k < NREF; k++) {
        tr[k] = malloc(sizeof(double) * reps2);
        for (int r = 0; r < reps2; r++) {
            t0 = now_s();
            size_t off = 0;
            switch (k) {
            case R_WHOLE: memcpy(dst, src, bytes); break;
            case R_CHUNK:
            case R_CHUNK_MIS:
                for (int c = 0; c < nc; c++) {
                    memcpy(dst + off + (k == R_CHUNK_MIS ? mis : 0), src + off, c_len[c]);
                    off += c_len[c];
                }
                break;
            case R_OLD:
                for (int c = 0; c < nc; c++) memcpy(c_dst[c], peer + c_src[c], c_len[c]);
                break;
            case R_XCOPY:
                for (int c = 0; c < nc; c++) xccl_copy(dst + off, src + off, c_len[c], bytes), off += c_len[c];
                break;
            }
            tr[k][r] = now_s() - t0;
        }
    }
    double gb = bytes / 1e9;
    printf("KV of %d tokens: %llu bytes; the pull copies %d chunks of %zu B (dst - src = %d mod 64); copy code %s\n",
           plen, (unsigned long long)bytes, nc, c_len[0], mis, xccl_copy_isa());
    printf("pull cold  %8.3f ms  %6.2f GB/s\n", cold * 1e3, gb / cold);
    double pb = best_of(tp, reps2), pm = median_of(tp, reps2);
    printf("pull warm  %8.3f ms  %6.2f GB/s  (best of %d; median %.2f GB/s)\n", pb * 1e3, gb / pb, reps2, gb / pm);
    double mb = 1e9;
    for (int k = 0; k < NREF; k++) {
        double b = best_of(tr[k], reps2), m = median_of(tr[k], reps2);
        if (k == R_WHOLE || k == R_CHUNK) mb = b < mb ? b : mb;
        printf("%-17s %8.3f ms  %6.2f GB/s  (median %6.2f)  pull = %4.0f%% of it\n", ref_name[k], b * 1e3, gb / b,
               gb / m, 100 * b / pb);
    }
    printf("memcpy bandwidth %.2f GB/s (best of memcpy whole / chunks); warm pull %.2f GB/s = %.0f%% of it\n", gb / mb,
           gb / pb, 100 * mb / pb);
    for (int k = 0; k < NREF; k++) free(tr[k]);
    free(tp), free(c_src), free(c_len), free(c_dst);
    char bye = 0;
    if (getenv("KV_BENCH_PIPE")) {
        if (write(pfd[1], &bye, 1) != 1) return 1;
    } else {
        xccl_send(comm, 1, &bye, 1);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    free(src), free(dst);
    xds_kv_cache_free(kv);
    xccl_comm_detach(comm);
    xccl_segment_destroy(seg);
    xds_model_free(m);
    return st == 0 ? 0 : 1;
}
