/*
 * threadpool.c — persistent worker threads for data-parallel loops.
 *
 * One run = one generation. The caller publishes the run in a single 64-bit
 * word `work` = gen:24 | n_tasks:20 | next:20 (store-release after writing
 * fn/ctx), bumps the 32-bit futex word `seq` and wakes sleepers if any.
 * Everybody (caller included) claims task indices by CAS on `work` while
 * next < n_tasks; each finished task bumps `done`; the caller returns when
 * done == n_tasks. Invariants:
 *   - a run's fn/ctx cannot change while any of its tasks is unfinished, so a
 *     worker that claimed index i of generation g reads g's fn/ctx;
 *   - a late worker (woken after the run completed) sees next >= n_tasks or
 *     a newer generation in the same word, so it never runs a stale task;
 *   - workers spin a little (cheap wake-up between the ~200 runs of a decode
 *     step), then sleep on FUTEX_WAIT; `n_sleeping` lets the caller skip the
 *     FUTEX_WAKE syscall when nobody sleeps (seq_cst Dekker pattern).
 * Not reentrant: a task must not call xds_pool_run on the same pool.
 */
#define _GNU_SOURCE
#include "base/threadpool.h"

#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define POOL_MAX_TASKS ((1u << 20) - 1)
#define POOL_CALLER_SPINS 4000 /* ~0.1 ms of PAUSE before sched_yield */
#define POOL_SPIN_ITERS 30000 /* ~0.5-1 ms of PAUSE before sleeping */

struct xds_pool {
    int n_threads;     /* including the caller */
    pthread_t *threads; /* (n_threads - 1) workers */

    _Alignas(64) _Atomic uint64_t work; /* gen:24 | n_tasks:20 | next:20 */
    xds_pool_fn _Atomic fn;
    void *_Atomic ctx;

    _Alignas(64) _Atomic uint32_t seq; /* futex word: bumped per run / stop */
    _Atomic int n_sleeping;
    _Atomic int stop;

    _Alignas(64) _Atomic int done; /* tasks finished in the current run */

    _Alignas(64) uint32_t gen; /* caller-only */
    void *scratch;             /* caller-only, see xds_pool_scratch */
    size_t scratch_bytes;
};

typedef struct {
    xds_pool *p;
    int tid;
} worker_arg;

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

static inline uint64_t work_pack(uint32_t gen, uint32_t n, uint32_t next) {
    return ((uint64_t)(gen & 0xffffff) << 40) | ((uint64_t)n << 20) | next;
}
#define WORK_N(w) ((uint32_t)(((w) >> 20) & 0xfffff))
#define WORK_NEXT(w) ((uint32_t)((w)&0xfffff))

/* Claim and run tasks until the current run has none left. */
static void pool_drain(xds_pool *p, int tid) {
    uint64_t w = atomic_load_explicit(&p->work, memory_order_acquire);
    for (;;) {
        if (WORK_NEXT(w) >= WORK_N(w)) return;
        if (atomic_compare_exchange_weak_explicit(&p->work, &w, w + 1, memory_order_acq_rel,
                                                  memory_order_acquire)) {
            xds_pool_fn fn = atomic_load_explicit(&p->fn, memory_order_relaxed);
            void *ctx = atomic_load_explicit(&p->ctx, memory_order_relaxed);
            fn(ctx, (int)WORK_NEXT(w), tid);
            atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
            w = atomic_load_explicit(&p->work, memory_order_acquire);
        }
    }
}

static void futex_wait(_Atomic uint32_t *addr, uint32_t val) {
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}
static void futex_wake_all(_Atomic uint32_t *addr) {
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE_PRIVATE, 0x7fffffff, NULL, NULL, 0);
}

static void *worker_main(void *arg) {
    worker_arg a = *(worker_arg *)arg;
    free(arg);
    xds_pool *p = a.p;
    uint32_t seen = 0; /* seq at creation: a late-starting worker still sees every bump */
    for (;;) {
        uint32_t s;
        int spins = 0;
        while ((s = atomic_load_explicit(&p->seq, memory_order_acquire)) == seen) {
            if (++spins < POOL_SPIN_ITERS) {
                cpu_relax();
                continue;
            }
            /* a worker that started after xds_pool_free bumped seq must not sleep forever */
            if (atomic_load_explicit(&p->stop, memory_order_acquire)) return NULL;
            atomic_fetch_add(&p->n_sleeping, 1);
            if (atomic_load(&p->seq) == seen) futex_wait(&p->seq, seen);
            atomic_fetch_sub(&p->n_sleeping, 1);
            spins = 0;
        }
        seen = s;
        if (atomic_load_explicit(&p->stop, memory_order_acquire)) return NULL;
        pool_drain(p, a.tid);
    }
}

xds_status xds_pool_create(int n_threads, xds_pool **out) {
    if (n_threads < 1 || n_threads > 1024)
        return xds_err_set(XDS_ERR_INVALID, "thread pool: invalid thread count %d", n_threads);
    xds_pool *p = aligned_alloc(64, (sizeof(xds_pool) + 63) & ~(size_t)63);
    if (!p) return xds_err_set(XDS_ERR_NOMEM, "thread pool: out of memory");
    memset(p, 0, sizeof *p);
    p->n_threads = n_threads;
    atomic_init(&p->work, work_pack(0, 0, 0));
    if (n_threads > 1) {
        p->threads = calloc((size_t)n_threads - 1, sizeof(pthread_t));
        if (!p->threads) {
            free(p);
            return xds_err_set(XDS_ERR_NOMEM, "thread pool: out of memory");
        }
    }
    for (int i = 1; i < n_threads; i++) {
        worker_arg *a = malloc(sizeof *a);
        if (a) *a = (worker_arg){p, i};
        int rc = a ? pthread_create(&p->threads[i - 1], NULL, worker_main, a) : -1;
        if (rc != 0) {
            free(a);
            p->n_threads = i; /* join the ones that started */
            xds_pool_free(p);
            return xds_err_set(XDS_ERR_INTERNAL, "thread pool: cannot create thread %d of %d", i,
                               n_threads);
        }
    }
    *out = p;
    return XDS_OK;
}

void xds_pool_free(xds_pool *p) {
    if (!p) return;
    atomic_store(&p->stop, 1);
    atomic_fetch_add(&p->seq, 1);
    futex_wake_all(&p->seq);
    for (int i = 1; i < p->n_threads; i++) pthread_join(p->threads[i - 1], NULL);
    free(p->threads);
    free(p->scratch);
    free(p);
}

int xds_pool_size(const xds_pool *p) { return p ? p->n_threads : 1; }

void xds_pool_run(xds_pool *p, xds_pool_fn fn, void *ctx, int n_tasks) {
    if (n_tasks <= 0) return;
    if (!p || p->n_threads == 1 || n_tasks == 1) {
        for (int i = 0; i < n_tasks; i++) fn(ctx, i, 0);
        return;
    }
    XDS_ASSERT((unsigned)n_tasks <= POOL_MAX_TASKS);
    atomic_store_explicit(&p->fn, fn, memory_order_relaxed);
    atomic_store_explicit(&p->ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    p->gen++;
    atomic_store_explicit(&p->work, work_pack(p->gen, (uint32_t)n_tasks, 0), memory_order_seq_cst);
    atomic_fetch_add_explicit(&p->seq, 1, memory_order_seq_cst);
    if (atomic_load_explicit(&p->n_sleeping, memory_order_seq_cst) > 0) futex_wake_all(&p->seq);
    pool_drain(p, 0);
    /* Wait for tasks still running on workers: spin briefly, then yield so
     * that on an oversubscribed machine a descheduled worker gets the core. */
    for (int spins = 0; atomic_load_explicit(&p->done, memory_order_acquire) < n_tasks; spins++) {
        if (spins < POOL_CALLER_SPINS) cpu_relax();
        else sched_yield();
    }
}

void *xds_pool_scratch(xds_pool *p, size_t bytes) {
    if (!p) return NULL;
    if (bytes > p->scratch_bytes) {
        free(p->scratch);
        size_t nb = (bytes + 4095) & ~(size_t)4095;
        p->scratch = aligned_alloc(64, nb);
        p->scratch_bytes = p->scratch ? nb : 0;
    }
    return p->scratch;
}
