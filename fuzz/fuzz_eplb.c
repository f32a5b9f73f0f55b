/*
 * fuzz_eplb.c — libFuzzer target for expert load files and the planner
 * (deploy/eplb.h): the first byte picks the workers (1 + b % 16), the second
 * the redundant slots (b % 4), the rest is the load file's JSON text. A
 * failure must leave one non-empty message line naming the file (parse) or
 * saying "eplb" (a budget the load cannot take); a plan must give every
 * worker ceil(E/W) + S distinct experts, every expert 1..W replicas, and
 * conserve the load.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "deploy/eplb.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    int W = 1 + data[0] % 16, S = data[1] % 4;
    xds_eplb_load l;
    if (xds_eplb_load_parse("fuzz.json", (const char *)data + 2, size - 2, &l) != XDS_OK) {
        const char *m = xds_err_msg();
        if (strncmp(m, "fuzz.json", 9) != 0 || strchr(m, '\n')) abort();
        return 0;
    }
    if (l.n_layer < 1 || l.n_expert < 1) abort();
    for (int i = 0; i < l.n_layer * l.n_expert; i++)
        if (!(l.count[i] >= 0) || l.count[i] != floor(l.count[i]) || l.count[i] > XDS_EPLB_MAX_COUNT) abort();
    xds_eplb_plan p;
    if (xds_eplb_plan_make(&l, W, S, &p) != XDS_OK) {
        const char *m = xds_err_msg();
        if (strncmp(m, "eplb", 4) != 0 || strchr(m, '\n')) abort();
        if (W <= l.n_expert && (l.n_expert + W - 1) / W + S <= l.n_expert) abort(); /* a valid budget */
        xds_eplb_load_free(&l);
        return 0;
    }
    int K = (l.n_expert + W - 1) / W + S;
    for (int i = 0; i < p.n_layer; i++) {
        const xds_deploy_placement *pl = &p.layer[i];
        int total = 0;
        for (int w = 0; w < W; w++) {
            if (pl->n_local[w] != K) abort();
            for (int j = 0; j < K; j++)
                for (int j2 = 0; j2 < j; j2++)
                    if (pl->slot_expert[w * pl->max_local + j] == pl->slot_expert[w * pl->max_local + j2]) abort();
        }
        for (int e = 0; e < l.n_expert; e++) {
            if (pl->n_rep[e] < 1 || pl->n_rep[e] > W) abort();
            total += pl->n_rep[e];
        }
        if (total != W * K) abort();
        double sum = 0, want = 0;
        for (int w = 0; w < W; w++) sum += p.after[(size_t)i * W + w];
        for (int e = 0; e < l.n_expert; e++) want += l.count[(size_t)i * l.n_expert + e];
        if (fabs(sum - want) > 1e-6 * (want + 1)) abort();
    }
    xds_eplb_plan_free(&p);
    xds_eplb_load_free(&l);
    return 0;
}
