/*
 * bench_load.c — time xds_model_load of a model (including the Q8_0_R16
 * repack when it applies; XDS_REPACK=0 turns that off for A/B) and print the
 * process's resident memory after the load.
 * Usage: bench_load MODEL
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "model/model.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: bench_load MODEL\n");
        return 2;
    }
    double t0 = now_s();
    xds_model *m = NULL;
    xds_status s = xds_model_load(argv[1], NULL, &m);
    double t1 = now_s();
    if (s != XDS_OK) {
        fprintf(stderr, "bench_load: %s\n", xds_err_msg());
        return 1;
    }
    long rss_kb = -1;
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) sscanf(line + 6, "%ld", &rss_kb);
    if (f) fclose(f);
    printf("load %.3f s, repacked %.2f GB, rss after load %.2f GB\n", t1 - t0, m->repacked_bytes / 1e9,
           rss_kb / 1e6 * 1.024);
    xds_model_free(m);
    return 0;
}
