/*
 * xccl_testutil.h — multi-process harness for the XCCL tests: fork N ranks,
 * run a function in each, collect exit codes with a hard timeout (children
 * still running at the timeout are killed with SIGKILL, so a test never
 * hangs), deterministic pseudo-random data shared by all ranks.
 */
#ifndef XCCL_TESTUTIL_H
#define XCCL_TESTUTIL_H

#define _GNU_SOURCE
/* References must round like the library: no FMA contraction. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
#include "test.h"
#include "xccl.h"

#include <errno.h>
#include <stdlib.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static inline uint64_t tu_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* splitmix64: deterministic per-seed stream, same on every rank. */
static inline uint64_t tu_rand(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static inline uint64_t tu_seed(uint64_t a, uint64_t b, uint64_t c) {
    uint64_t s = a * 1000003ull + b * 7919ull + c * 104729ull + 12345;
    tu_rand(&s);
    return s;
}
static inline int tu_range(uint64_t *s, int lo, int hi) { /* [lo, hi] */
    return lo + (int)(tu_rand(s) % (uint64_t)(hi - lo + 1));
}
static inline void tu_fill(void *buf, size_t n, uint64_t seed) {
    uint8_t *p = buf;
    uint64_t s = seed;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v = tu_rand(&s);
        memcpy(p + i, &v, 8);
    }
    if (i < n) {
        uint64_t v = tu_rand(&s);
        memcpy(p + i, &v, n - i);
    }
}
/* A float in [-2, 2) with a few mantissa bits (well-behaved sums). */
static inline float tu_float(uint64_t *s) {
    return (float)((int)(tu_rand(s) % 4096) - 2048) / 1024.0f;
}

typedef int (*tu_rank_fn)(int rank, int n, void *arg);

/* Fork n ranks running fn; returns the number of ranks that failed (non-zero
 * exit, signal, or still running after timeout_s). pids_out may be NULL. */
static int tu_run_ranks_pids(int n, tu_rank_fn fn, void *arg, int timeout_s, pid_t *pids_out,
                             int *status_out) {
    pid_t pids[64];
    fflush(NULL);
    for (int r = 0; r < n; r++) {
        pid_t p = fork();
        if (p == 0) {
            int rc = fn(r, n, arg);
            fflush(stdout);
            fflush(stderr);
            _exit(rc ? 1 : 0);
        }
        pids[r] = p;
        if (pids_out) pids_out[r] = p;
    }
    int failed = 0, left = n;
    int done[64] = {0};
    uint64_t deadline = tu_now_ns() + (uint64_t)timeout_s * 1000000000ull;
    while (left) {
        int st;
        pid_t p = waitpid(-1, &st, WNOHANG);
        if (p > 0) {
            for (int r = 0; r < n; r++)
                if (pids[r] == p && !done[r]) {
                    done[r] = 1;
                    left--;
                    if (status_out) status_out[r] = st;
                    if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0)) failed++;
                }
            continue;
        }
        if (tu_now_ns() > deadline) {
            for (int r = 0; r < n; r++)
                if (!done[r]) {
                    fprintf(stderr, "rank %d (pid %d) still running after %d s: killing it\n", r,
                            (int)pids[r], timeout_s);
                    kill(pids[r], SIGKILL);
                    waitpid(pids[r], NULL, 0);
                    done[r] = 1;
                    left--;
                    failed++;
                    if (status_out) status_out[r] = -1;
                }
            break;
        }
        usleep(1000);
    }
    return failed;
}

/* Fork n ranks without waiting; then tu_wait_ranks. */
static inline void tu_spawn(int n, tu_rank_fn fn, void *arg, pid_t *pids) {
    fflush(NULL);
    for (int r = 0; r < n; r++) {
        pid_t p = fork();
        if (p == 0) {
            int rc = fn(r, n, arg);
            fflush(stdout);
            fflush(stderr);
            _exit(rc ? 1 : 0);
        }
        pids[r] = p;
    }
}

/* Reap n ranks; status[r] is the wait status (-1 if killed at the timeout). */
static inline void tu_wait_ranks(int n, pid_t *pids, int timeout_s, int *status) {
    uint64_t deadline = tu_now_ns() + (uint64_t)timeout_s * 1000000000ull;
    for (int r = 0; r < n; r++) {
        for (;;) {
            int st;
            pid_t p = waitpid(pids[r], &st, WNOHANG);
            if (p == pids[r]) { status[r] = st; break; }
            if (tu_now_ns() > deadline) {
                fprintf(stderr, "rank %d (pid %d) still running at the timeout: killing it\n", r, (int)pids[r]);
                kill(pids[r], SIGKILL);
                waitpid(pids[r], NULL, 0);
                status[r] = -1;
                break;
            }
            usleep(1000);
        }
    }
}

static inline int tu_run_ranks(int n, tu_rank_fn fn, void *arg, int timeout_s) {
    return tu_run_ranks_pids(n, fn, arg, timeout_s, NULL, NULL);
}

/* Child-side result: non-zero if any CHECK failed in this process. */
#define TU_CHILD_RESULT()                                                                    \
    (getenv("XCCL_TEST_VERBOSE") ? fprintf(stderr, "  pid %d: %d passed, %d failed\n", (int)getpid(), \
                                           test_passed_, test_failed_)                         \
                                 : 0,                                                          \
     test_failed_ ? 1 : 0)

/* A memfd segment the forked ranks inherit. */
static inline xccl_segment *tu_segment(const xccl_config *cfg) {
    xccl_segment *seg = NULL;
    if (xccl_segment_create(&seg, NULL, cfg) != XCCL_OK) {
        fprintf(stderr, "segment create: %s\n", xccl_err_msg());
        exit(1);
    }
    return seg;
}

/* Anonymous shared memory for test bookkeeping between parent and ranks. */
static inline void *tu_shared(size_t bytes) {
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) exit(1);
    memset(p, 0, bytes);
    return p;
}

#define XCHECK(expr)                                                                            \
    do {                                                                                        \
        xccl_status xs_ = (expr);                                                               \
        CHECK_MSG(xs_ == XCCL_OK, "%s -> %s: %s", #expr, xccl_status_str(xs_), xccl_err_msg()); \
    } while (0)

#endif
