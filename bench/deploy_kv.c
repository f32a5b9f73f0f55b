/*
 * deploy_kv.c — KV transfer bandwidth of disaggregated prefill/decode
 * (engine/deploy_pd.h) against memcpy on the same machine, in one run.
 *
 * A forked prefill process runs a real prefill of a PLEN-token prompt into
 * its registered KV pool and registers the transfer task; this process (the
 * decode rank) pulls the blocks with xds_pd_pull: once cold (first mapping of
 * the region, fresh decode pages) and REPS times warm into the same slot.
 * The prefill process keeps its region until told to exit, so repeated pulls
 * read the same blocks (their FREE messages after the first are ignored).
 * Reference: memcpy of the same bytes, whole and block by block.
 *
 * Usage: deploy_kv MODEL [PLEN=256] [BLOCK=16] [REPS=10]
 * KV_BENCH_PIPE=1: the prefill process waits on a pipe instead of an XCCL
 * receive, so the gets' completion notifications wake nobody.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <xccl.h>

#include "engine/deploy_pd.h"
#include "model/model.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
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
        if (getenv("KV_BENCH_PIPE")) { /* wait outside XCCL: not a sleeper on the doorbell gets notify */
            char b;
            while (read(pfd[0], &b, 1) < 0) {
            }
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
    double best = 1e9;
    for (int r = 0; r < reps; r++) {
        xds_kv_seq_truncate(kv, 0, 0);
        uint64_t b = 0;
        t0 = now_s();
        if (xds_pd_pull(comm, &t, kv, 0, &b) != XDS_OK) return 1;
        double dt = now_s() - t0;
        if (dt < best) best = dt;
    }
    {
        int runs = 1;
        for (int i = 1; i < kv->seqs[0].n_blocks; i++)
            runs += !(kv->seqs[0].blocks[i] == kv->seqs[0].blocks[i - 1] + 1 && t.blocks[i] == t.blocks[i - 1] + 1);
        printf("warm pulls: decode blocks in %d runs consecutive on both sides -> %d gets per pull\n", runs,
               runs * kv->n_layer * (kv->v_dim ? 2 : 1));
    }
    /* memcpy of the same bytes: one block-sized copy per (layer, block, K/V), and one whole copy */
    size_t blk_k = sizeof(float) * bs * kv->k_dim, blk_v = sizeof(float) * bs * kv->v_dim;
    int nb = t.n_blocks, L = kv->n_layer;
    char *src = malloc(bytes), *dst = malloc(bytes);
    memset(src, 1, bytes);
    memset(dst, 2, bytes);
    double best_blk = 1e9, best_whole = 1e9;
    for (int r = 0; r < reps; r++) {
        t0 = now_s();
        size_t off = 0;
        for (int l = 0; l < L; l++)
            for (int i = 0; i < nb; i++) {
                memcpy(dst + off, src + off, blk_k), off += blk_k;
                if (blk_v) memcpy(dst + off, src + off, blk_v), off += blk_v;
            }
        double dt = now_s() - t0;
        if (dt < best_blk) best_blk = dt;
        t0 = now_s();
        memcpy(dst, src, bytes);
        dt = now_s() - t0;
        if (dt < best_whole) best_whole = dt;
    }
    /* the same copy out of a shared memfd mapping (what a region is: shmem, 4 KiB pages) */
    double best_shm = 1e9;
    {
        int fd = memfd_create("kvbench", 0);
        if (fd >= 0 && ftruncate(fd, (off_t)bytes) == 0) {
            char *shm = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            if (shm != MAP_FAILED) {
                memset(shm, 3, bytes);
                for (int r = 0; r < reps; r++) {
                    t0 = now_s();
                    memcpy(dst, shm, bytes);
                    double dt = now_s() - t0;
                    if (dt < best_shm) best_shm = dt;
                }
                munmap(shm, bytes);
            }
        }
        if (fd >= 0) close(fd);
    }
    double gb = bytes / 1e9;
    printf("KV of %d tokens: %llu bytes in %d blocks x %d layers (%zu B per get)\n", plen, (unsigned long long)bytes, nb,
           L, blk_k);
    printf("pull cold  %.3f ms  %.2f GB/s\n", cold * 1e3, gb / cold);
    printf("pull warm  %.3f ms  %.2f GB/s  (best of %d)\n", best * 1e3, gb / best, reps);
    printf("memcpy per block  %.3f ms  %.2f GB/s;  whole  %.3f ms  %.2f GB/s\n", best_blk * 1e3, gb / best_blk,
           best_whole * 1e3, gb / best_whole);
    printf("memcpy out of a shared memfd mapping  %.3f ms  %.2f GB/s\n", best_shm * 1e3, gb / best_shm);
    printf("warm pull = %.0f%% of block-wise memcpy, %.0f%% of whole memcpy, %.0f%% of memcpy from shared memory\n",
           100 * best_blk / best, 100 * best_whole / best, 100 * best_shm / best);
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
