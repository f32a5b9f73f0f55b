/*
 * proc_util.h — helpers for tests that fork real processes (deployment
 * tests): a monotonic clock and reaping children with a deadline, so no
 * process outlives a test even when a check fails.
 */
#ifndef XDS_TEST_PROC_UTIL_H
#define XDS_TEST_PROC_UTIL_H

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static inline double tp_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Reap pids[0..n) (entries <= 0 skipped, set to 0 once reaped) within
 * deadline_s; SIGKILL the ones still running after it. Returns how many did
 * not exit with status 0 (killed ones count), naming each on stderr. */
static inline int tp_reap(pid_t *pids, int n, double deadline_s) {
    int bad = 0;
    double end = tp_now_s() + deadline_s;
    for (int i = 0; i < n; i++) {
        if (pids[i] <= 0) continue;
        int status = 0;
        for (;;) {
            pid_t r = waitpid(pids[i], &status, WNOHANG);
            if (r == pids[i]) break;
            if (r < 0 && errno != EINTR) {
                status = -1;
                break;
            }
            if (tp_now_s() > end) {
                kill(pids[i], SIGKILL);
                waitpid(pids[i], &status, 0);
                status = -1;
                break;
            }
            usleep(2000);
        }
        if (status != 0) {
            bad++;
            fprintf(stderr, "child %d: wait status %d\n", (int)pids[i], status);
        }
        pids[i] = 0;
    }
    return bad;
}

#endif
