/* test_threadpool.c — the persistent pool runs every task exactly once, with
 * valid thread ids, across many back-to-back runs (spin path) and runs after
 * idle periods (futex sleep path); NULL pool runs serially; bad sizes fail. */
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

#include "base/threadpool.h"
#include "test.h"

typedef struct {
    _Atomic int *hits;
    int n_threads;
    _Atomic int bad_thread;
    _Atomic long sum;
} ctx_t;

static void task_fn(void *vc, int task, int thread) {
    ctx_t *c = vc;
    atomic_fetch_add(&c->hits[task], 1);
    atomic_fetch_add(&c->sum, task);
    if (thread < 0 || thread >= c->n_threads) atomic_store(&c->bad_thread, 1);
}

static int run_and_check(xds_pool *p, int n_threads, int n_tasks) {
    static _Atomic int hits[5000];
    for (int i = 0; i < n_tasks; i++) atomic_store(&hits[i], 0);
    ctx_t c = {.hits = hits, .n_threads = n_threads};
    xds_pool_run(p, task_fn, &c, n_tasks);
    int ok = !atomic_load(&c.bad_thread);
    for (int i = 0; i < n_tasks; i++) ok &= atomic_load(&hits[i]) == 1;
    ok &= atomic_load(&c.sum) == (long)n_tasks * (n_tasks - 1) / 2;
    return ok;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void nop_fn(void *c, int task, int thread) { (void)c; (void)task; (void)thread; }

int main(void) {
    xds_pool *p = NULL;
    CHECK(xds_pool_create(0, &p) != XDS_OK);
    CHECK(xds_pool_create(-3, &p) != XDS_OK);
    CHECK(p == NULL);

    CHECK(run_and_check(NULL, 1, 17)); /* NULL pool: serial */
    CHECK(xds_pool_size(NULL) == 1);
    CHECK(xds_pool_scratch(NULL, 10) == NULL);

    for (int nt = 1; nt <= 4; nt++) {
        CHECK(xds_pool_create(nt, &p) == XDS_OK);
        CHECK(xds_pool_size(p) == nt);
        const int sizes[] = {0, 1, 2, 3, 7, 64, 1000, 4999};
        for (int i = 0; i < 8; i++) CHECK_MSG(run_and_check(p, nt, sizes[i]), "threads %d tasks %d", nt, sizes[i]);
        /* back-to-back runs: workers catch each generation while spinning */
        int ok = 1;
        for (int r = 0; r < 3000; r++) ok &= run_and_check(p, nt, 1 + r % 9);
        CHECK_MSG(ok, "threads %d: back-to-back runs", nt);
        /* after idling past the spin phase workers sleep on the futex */
        ok = 1;
        for (int r = 0; r < 3; r++) {
            usleep(20000);
            ok &= run_and_check(p, nt, 5 + r);
        }
        CHECK_MSG(ok, "threads %d: runs after sleep", nt);
        /* scratch grows and stays aligned */
        void *s1 = xds_pool_scratch(p, 100);
        CHECK(s1 && ((uintptr_t)s1 & 63) == 0);
        void *s2 = xds_pool_scratch(p, 1 << 20);
        CHECK(s2 && ((uintptr_t)s2 & 63) == 0);
        memset(s2, 0, 1 << 20);
        /* overhead of an empty run (informational, not asserted) */
        const int n = 20000;
        double t0 = now_s();
        for (int r = 0; r < n; r++) xds_pool_run(p, nop_fn, NULL, nt);
        printf("threads %d: %.2f us per run of %d empty tasks\n", nt, (now_s() - t0) / n * 1e6, nt);
        xds_pool_free(p);
        p = NULL;
    }
    xds_pool_free(NULL);
    TEST_MAIN_END();
}
