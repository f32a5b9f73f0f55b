/*
 * fuzz_topology.c — libFuzzer target for the deployment topology file
 * (deploy/topology.h): the first byte is the model's routed expert count
 * (0: not MoE), the rest the JSON text. A failure must leave one non-empty
 * message line naming the file; a success must satisfy every invariant the
 * header promises, and its placement must name each (worker, slot) once and
 * put every expert somewhere.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "deploy/topology.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int n_expert = data[0];
    xds_topology t;
    if (xds_topology_parse("fuzz.json", (const char *)data + 1, size - 1, n_expert, &t) != XDS_OK) {
        const char *m = xds_err_msg();
        if (strncmp(m, "fuzz.json", 9) != 0 || strchr(m, '\n')) abort();
        return 0;
    }
    if (t.frontends < 1 || t.frontends > XDS_TOPO_MAX_FRONTENDS || t.n_prefill < 0 ||
        t.n_prefill > XDS_TOPO_MAX_PREFILL || t.n_decode < 1 || t.n_decode > XDS_TOPO_MAX_DECODE ||
        t.n_expert_workers < 0 || t.n_expert_workers > XDS_TOPO_MAX_EXPERT_WORKERS ||
        (t.n_expert_workers > 0 && n_expert == 0))
        abort();
    if (t.n_expert_workers > 0) {
        xds_topo_placement p;
        if (xds_topology_placement(&t, &p) != XDS_OK) abort();
        int slots = 0, named = 0;
        for (int w = 0; w < p.n_workers; w++) slots += p.n_local[w];
        for (int e = 0; e < p.n_expert; e++) {
            if (p.n_replicas[e] < 1 || p.n_replicas[e] > p.max_replicas) abort();
            for (int r = 0; r < p.n_replicas[e]; r++) {
                int w = p.replica_worker[e * p.max_replicas + r], s = p.replica_slot[e * p.max_replicas + r];
                if (w < 0 || w >= p.n_workers || s < 0 || s >= p.n_local[w] || t.expert[w].experts[s] != e) abort();
                named++;
            }
        }
        if (named != slots) abort();
        xds_topo_placement_free(&p);
    }
    xds_topology_free(&t);
    return 0;
}
