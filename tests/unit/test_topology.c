/*
 * test_topology.c — the deployment topology (deploy/topology.h): the JSON
 * file's good forms (lists, count forms, replicas, defaults), the flag form
 * (contiguous blocks of ceil(n_expert / E), as --experts), the placement
 * tables, and one test per validation error checking the status, the
 * message (field and position) and that the output is left untouched.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "deploy/topology.h"
#include "test.h"

/* --experts E's rule: contiguous blocks of ceil(n_expert / E) experts. */
static void block_owner(int n_expert, int n_workers, int e, int *w, int *s) {
    int per = (n_expert + n_workers - 1) / n_workers;
    *w = e / per;
    *s = e % per;
}

static int parse(const char *text, int n_expert, xds_topology *t) {
    return xds_topology_parse("t.json", text, strlen(text), n_expert, t);
}

/* text must fail with status st and a message containing want; *out untouched. */
static void expect_err_(int line, const char *text, int n_expert, xds_status st, const char *want) {
    xds_topology t;
    memset(&t, 0x5a, sizeof t);
    xds_status s = parse(text, n_expert, &t);
    const char *msg = xds_err_msg();
    CHECK_MSG(s == st, "line %d: status %d (%s), want %d", line, s, msg, st);
    CHECK_MSG(strstr(msg, want) != NULL, "line %d: message '%s' lacks '%s'", line, msg, want);
    CHECK_MSG(strchr(msg, '\n') == NULL, "line %d: message is not one line: '%s'", line, msg);
    unsigned char *b = (unsigned char *)&t;
    int untouched = 1;
    for (size_t i = 0; i < sizeof t; i++) untouched &= b[i] == 0x5a;
    CHECK_MSG(untouched, "line %d: output written on error", line);
}
#define expect_err(text, ne, st, want) expect_err_(__LINE__, text, ne, st, want)

static void test_full_lists(void) {
    const char *text =
        "{\"frontends\": 2, \"block_size\": 32,\n"
        " \"prefill\": [{\"threads\": 1, \"kv_tokens\": 8192}, {\"threads\": 2, \"max_seqs\": 4, \"chunk\": 64}],\n"
        " \"decode\": [{\"threads\": 1, \"max_batch\": 16, \"kv_blocks\": 512}, {\"max_batch\": 8}],\n"
        " \"experts\": [{\"threads\": 1, \"experts\": [0,1,2,3]}, {\"threads\": 3, \"experts\": [4,5,6,7]},\n"
        "             {\"experts\": [7, 0]}]}\n";
    xds_topology t;
    CHECK(parse(text, 8, &t) == XDS_OK);
    CHECK(t.frontends == 2 && t.block_size == 32);
    CHECK(t.n_prefill == 2);
    CHECK(t.prefill[0].threads == 1 && t.prefill[0].kv_tokens == 8192 && t.prefill[0].max_seqs == 0);
    CHECK(t.prefill[1].threads == 2 && t.prefill[1].kv_tokens == 0 && t.prefill[1].max_seqs == 4 &&
          t.prefill[1].chunk == 64);
    CHECK(t.n_decode == 2);
    CHECK(t.decode[0].threads == 1 && t.decode[0].max_batch == 16 && t.decode[0].kv_blocks == 512);
    CHECK(t.decode[1].threads == 0 && t.decode[1].max_batch == 8 && t.decode[1].kv_blocks == 0);
    CHECK(t.n_expert == 8 && t.n_expert_workers == 3 && !t.contiguous);
    CHECK(t.expert[0].threads == 1 && t.expert[1].threads == 3 && t.expert[2].threads == 0);
    CHECK(t.expert[2].n_experts == 2 && t.expert[2].experts[0] == 7 && t.expert[2].experts[1] == 0);

    xds_topo_placement p;
    CHECK(xds_topology_placement(&t, &p) == XDS_OK);
    CHECK(p.n_expert == 8 && p.n_workers == 3 && p.max_replicas == 2 && p.max_local == 4);
    CHECK(p.n_local[0] == 4 && p.n_local[1] == 4 && p.n_local[2] == 2);
    /* expert 0: worker 0 slot 0, replica on worker 2 slot 1; expert 7: worker 1 slot 3, worker 2 slot 0 */
    CHECK(p.n_replicas[0] == 2 && p.replica_worker[0] == 0 && p.replica_slot[0] == 0 && p.replica_worker[1] == 2 &&
          p.replica_slot[1] == 1);
    CHECK(p.n_replicas[7] == 2 && p.replica_worker[14] == 1 && p.replica_slot[14] == 3 && p.replica_worker[15] == 2 &&
          p.replica_slot[15] == 0);
    CHECK(p.n_replicas[5] == 1 && p.replica_worker[10] == 1 && p.replica_slot[10] == 1 && p.replica_worker[11] == -1 &&
          p.replica_slot[11] == -1);
    /* every (worker, slot) named by the placement holds that expert, and every slot is named once */
    int named[3][4] = {{0}};
    for (int e = 0; e < 8; e++)
        for (int r = 0; r < p.n_replicas[e]; r++) {
            int w = p.replica_worker[e * 2 + r], s = p.replica_slot[e * 2 + r];
            CHECK(w >= 0 && w < 3 && s >= 0 && s < p.n_local[w] && t.expert[w].experts[s] == e);
            named[w][s]++;
        }
    for (int w = 0; w < 3; w++)
        for (int s = 0; s < p.n_local[w]; s++) CHECK(named[w][s] == 1);
    xds_topo_placement_free(&p);
    const int *lists[XDS_TOPO_MAX_EXPERT_WORKERS];
    int n_lists[XDS_TOPO_MAX_EXPERT_WORKERS];
    CHECK(xds_topology_expert_lists(&t, lists, n_lists) == 3);
    CHECK(lists[1] == t.expert[1].experts && n_lists[1] == 4 && n_lists[2] == 2 && lists[2][0] == 7);
    xds_topology_free(&t);
    CHECK(t.n_expert_workers == 0 && t.expert[0].experts == NULL);
}

static void test_defaults_and_counts(void) {
    xds_topology t;
    CHECK(parse("{}", 0, &t) == XDS_OK);
    CHECK(t.frontends == 1 && t.n_prefill == 0 && t.n_decode == 1 && t.n_expert_workers == 0 && t.n_expert == 0);
    CHECK(t.decode[0].threads == 0 && t.decode[0].max_batch == 0);
    xds_topology_free(&t);

    /* an empty expert list is allowed for a dense model: no expert workers */
    CHECK(parse("{\"experts\": [], \"prefill\": []}", 0, &t) == XDS_OK);
    CHECK(t.n_expert_workers == 0 && t.n_prefill == 0);
    xds_topology_free(&t);

    const char *text = "{\"prefill\": {\"count\": 3, \"threads\": 2, \"kv_tokens\": 4096},"
                       " \"decode\": {\"count\": 4, \"max_batch\": 8},"
                       " \"experts\": {\"count\": 3, \"threads\": 1}}";
    CHECK(parse(text, 8, &t) == XDS_OK);
    CHECK(t.n_prefill == 3 && t.n_decode == 4 && t.n_expert_workers == 3 && t.contiguous);
    for (int i = 0; i < 3; i++) CHECK(t.prefill[i].threads == 2 && t.prefill[i].kv_tokens == 4096);
    for (int i = 0; i < 4; i++) CHECK(t.decode[i].max_batch == 8 && t.decode[i].threads == 0);
    /* contiguous blocks of ceil(8/3) = 3: the placement --experts uses */
    CHECK(t.expert[0].n_experts == 3 && t.expert[1].n_experts == 3 && t.expert[2].n_experts == 2);
    xds_topo_placement p;
    CHECK(xds_topology_placement(&t, &p) == XDS_OK);
    CHECK(p.max_replicas == 1 && p.max_local == 3);
    for (int e = 0; e < 8; e++) {
        int w, s;
        block_owner(8, 3, e, &w, &s);
        CHECK_MSG(p.n_replicas[e] == 1 && p.replica_worker[e] == w && p.replica_slot[e] == s,
                  "expert %d: worker %d slot %d, --experts puts it on %d slot %d", e, p.replica_worker[e],
                  p.replica_slot[e], w, s);
    }
    xds_topo_placement_free(&p);
    xds_topology_free(&t);
}

static void test_flags(void) {
    xds_topology t;
    CHECK(xds_topology_from_flags(0, 2, 3, 0, 4, 2, 64, &t) == XDS_OK);
    CHECK(t.frontends == 1 && t.n_prefill == 2 && t.prefill[1].threads == 3 && t.n_decode == 1);
    CHECK(t.n_expert_workers == 4 && t.expert[3].threads == 2 && t.contiguous);
    xds_topo_placement p;
    CHECK(xds_topology_placement(&t, &p) == XDS_OK);
    int ok = 1;
    for (int e = 0; e < 64; e++) {
        int w, s;
        block_owner(64, 4, e, &w, &s);
        ok &= p.n_replicas[e] == 1 && p.replica_worker[e] == w && p.replica_slot[e] == s;
    }
    CHECK(ok);
    CHECK(p.max_local == 16 && p.n_local[0] == 16 && p.n_local[3] == 16);
    xds_topo_placement_free(&p);
    xds_topology_free(&t);

    /* the same from a file's count form */
    xds_topology u;
    CHECK(parse("{\"prefill\": {\"count\": 2, \"threads\": 3}, \"experts\": {\"count\": 4, \"threads\": 2}}", 64,
                &u) == XDS_OK);
    CHECK(xds_topology_from_flags(1, 2, 3, 1, 4, 2, 64, &t) == XDS_OK);
    int same = u.n_expert_workers == t.n_expert_workers && u.n_prefill == t.n_prefill;
    for (int w = 0; same && w < t.n_expert_workers; w++)
        same = t.expert[w].n_experts == u.expert[w].n_experts && t.expert[w].threads == u.expert[w].threads &&
               !memcmp(t.expert[w].experts, u.expert[w].experts, sizeof(int) * (size_t)t.expert[w].n_experts);
    CHECK(same);
    xds_topology_free(&t);
    xds_topology_free(&u);

    /* no expert workers: placement refuses */
    CHECK(xds_topology_from_flags(1, 1, 0, 2, 0, 0, 0, &t) == XDS_OK);
    CHECK(t.n_expert_workers == 0 && t.n_decode == 2);
    CHECK(xds_topology_placement(&t, &p) == XDS_ERR_INVALID);
    xds_topology_free(&t);

    CHECK(xds_topology_from_flags(1, 0, 0, 1, 2, 0, 0, &t) == XDS_ERR_INVALID);
    CHECK(strstr(xds_err_msg(), "--experts 2: the model has no routed experts") != NULL);
    CHECK(xds_topology_from_flags(1, 0, 0, 1, 9, 0, 8, &t) == XDS_ERR_INVALID);
    CHECK(strstr(xds_err_msg(), "--experts 9: more expert workers than the model's 8") != NULL);
    CHECK(xds_topology_from_flags(1, 9, 0, 1, 0, 0, 8, &t) == XDS_ERR_INVALID);
    CHECK(strstr(xds_err_msg(), "--prefill 9") != NULL);
    CHECK(xds_topology_from_flags(1, 0, 0, 17, 0, 0, 8, &t) == XDS_ERR_INVALID);
    CHECK(strstr(xds_err_msg(), "--decode-dp 17: 1..16") != NULL);
    CHECK(xds_topology_from_flags(-1, 0, 0, 1, 0, 0, 8, &t) == XDS_ERR_INVALID);
    CHECK(strstr(xds_err_msg(), "--frontends -1") != NULL);
    CHECK(xds_topology_from_flags(1, 1, -2, 1, 0, 0, 8, &t) == XDS_ERR_INVALID);
    CHECK(strstr(xds_err_msg(), "--prefill-threads -2") != NULL);
}

static void test_file_errors(void) {
    xds_topology t;
    memset(&t, 0x5a, sizeof t);
    CHECK(xds_topology_load("/nonexistent/topology.json", 8, &t) == XDS_ERR_IO);
    CHECK(strstr(xds_err_msg(), "/nonexistent/topology.json: cannot read the topology file: No such file") != NULL);
    CHECK(xds_topology_load("/", 8, &t) == XDS_ERR_IO); /* a directory */
    CHECK(strstr(xds_err_msg(), "/: cannot read the topology file") != NULL);
    CHECK(((unsigned char *)&t)[0] == 0x5a);

    char path[] = "/tmp/xds_topo_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd < 0) return;
    const char *bad = "{\"frontends\": 1,\n \"decode\": [{\"threads\": 1,}]}\n";
    CHECK(write(fd, bad, strlen(bad)) == (ssize_t)strlen(bad));
    close(fd);
    CHECK(xds_topology_load(path, 8, &t) == XDS_ERR_FORMAT);
    char want[64];
    snprintf(want, sizeof want, "%s:2:", path); /* file:line:column */
    CHECK_MSG(strstr(xds_err_msg(), want) && strstr(xds_err_msg(), "invalid JSON"), "%s", xds_err_msg());

    FILE *f = fopen(path, "w");
    fputs("{\"prefill\": [{\"threads\": 2}], \"experts\": [{\"experts\": [1, 0]}, {\"experts\": [3, 2]}]}", f);
    fclose(f);
    CHECK(xds_topology_load(path, 4, &t) == XDS_OK);
    CHECK(t.n_prefill == 1 && t.prefill[0].threads == 2 && t.n_expert_workers == 2 && t.expert[1].experts[0] == 3);
    xds_topology_free(&t);

    f = fopen(path, "w"); /* too large */
    for (int i = 0; i < XDS_TOPO_MAX_FILE_BYTES / 8 + 1; i++) fputs("        ", f);
    fclose(f);
    CHECK(xds_topology_load(path, 4, &t) == XDS_ERR_FORMAT);
    CHECK(strstr(xds_err_msg(), "larger than") != NULL);
    unlink(path);
}

static void test_errors(void) {
    expect_err("[1, 2]", 8, XDS_ERR_FORMAT, "t.json: expected a JSON object at the top, got an array");
    expect_err("{\"frontends\": 1, \"frontends\": 2}", 8, XDS_ERR_FORMAT, "t.json:1:");
    expect_err("{\"frontend\": 1}", 8, XDS_ERR_FORMAT, "t.json: unknown key \"frontend\" (expected frontends");
    expect_err("{\"prefill\": [{\"threads\": 1, \"kv_token\": 8}]}", 8, XDS_ERR_FORMAT,
               "t.json: prefill[0]: unknown key \"kv_token\" (expected threads, kv_tokens, max_seqs, chunk)");
    expect_err("{\"experts\": {\"count\": 2, \"experts\": [1]}}", 8, XDS_ERR_FORMAT,
               "t.json: experts: unknown key \"experts\" (expected count, threads)");
    /* wrong types */
    expect_err("{\"frontends\": \"2\"}", 8, XDS_ERR_FORMAT, "t.json: frontends: expected an integer, got a string");
    expect_err("{\"decode\": [{\"max_batch\": 1.5}]}", 8, XDS_ERR_FORMAT,
               "t.json: decode[0].max_batch: expected an integer, got a real number");
    expect_err("{\"prefill\": 3}", 8, XDS_ERR_FORMAT,
               "t.json: prefill: expected a list of entries or {\"count\": N, ...}, got an integer");
    expect_err("{\"decode\": [1]}", 8, XDS_ERR_FORMAT, "t.json: decode[0]: expected an object, got an integer");
    expect_err("{\"experts\": [{\"experts\": 3}]}", 8, XDS_ERR_FORMAT,
               "t.json: experts[0].experts: expected an array of routed expert ids, got an integer");
    expect_err("{\"experts\": [{\"experts\": [0, \"1\"]}]}", 2, XDS_ERR_FORMAT,
               "t.json: experts[0].experts[1]: expected an expert id (integer), got a string");
    /* zero / negative / too large values */
    expect_err("{\"prefill\": [{\"threads\": 0}]}", 8, XDS_ERR_FORMAT, "t.json: prefill[0].threads: must be >= 1, got 0");
    expect_err("{\"decode\": [{}, {\"kv_blocks\": -5}]}", 8, XDS_ERR_FORMAT,
               "t.json: decode[1].kv_blocks: must be >= 1, got -5");
    expect_err("{\"decode\": {\"count\": 0}}", 8, XDS_ERR_FORMAT, "t.json: decode.count: must be >= 1, got 0");
    expect_err("{\"frontends\": 0}", 8, XDS_ERR_FORMAT, "t.json: frontends: must be >= 1, got 0");
    expect_err("{\"prefill\": [{\"kv_tokens\": 99999999999}]}", 8, XDS_ERR_FORMAT,
               "t.json: prefill[0].kv_tokens: must be at most");
    expect_err("{\"decode\": []}", 8, XDS_ERR_FORMAT, "t.json: decode: no entries");
    expect_err("{\"decode\": {\"max_batch\": 4}}", 8, XDS_ERR_FORMAT, "t.json: decode: an object needs \"count\"");
    /* too many entries */
    expect_err("{\"prefill\": [{},{},{},{},{},{},{},{},{}]}", 8, XDS_ERR_FORMAT,
               "t.json: prefill: 9 entries (at most 8)");
    expect_err("{\"decode\": {\"count\": 17}}", 8, XDS_ERR_FORMAT, "t.json: decode.count: must be at most 16, got 17");
    expect_err("{\"frontends\": 65}", 8, XDS_ERR_FORMAT, "t.json: frontends: must be at most 64");
    /* experts */
    expect_err("{\"experts\": [{\"experts\": [0,1]}, {\"experts\": [2]}, {\"experts\": [3,4,5,6,7,300]}]}", 256,
               XDS_ERR_FORMAT, "t.json: experts[2].experts[5]: expert 300 out of range 0..255");
    expect_err("{\"experts\": [{\"experts\": [-1]}]}", 8, XDS_ERR_FORMAT,
               "t.json: experts[0].experts[0]: expert -1 out of range 0..7");
    expect_err("{\"experts\": [{\"experts\": [0,1,2,3]}, {\"experts\": [4,5,6,4]}]}", 8, XDS_ERR_FORMAT,
               "t.json: experts[1].experts[3]: expert 4 listed twice on this worker (also at experts[1].experts[0])");
    expect_err("{\"experts\": [{\"experts\": [0,1,2,3]}, {\"experts\": [4,5,6]}]}", 8, XDS_ERR_INVALID,
               "t.json: cannot place every expert: expert 7 is on no worker");
    expect_err("{\"experts\": [{\"experts\": [0,1]}, {\"experts\": [0,1]}]}", 4, XDS_ERR_INVALID,
               "t.json: cannot place every expert: expert 2 is on no worker");
    expect_err("{\"experts\": [{\"experts\": []}]}", 8, XDS_ERR_FORMAT,
               "t.json: experts[0].experts: empty (an expert worker holds at least one expert)");
    expect_err("{\"experts\": [{\"threads\": 2}]}", 8, XDS_ERR_FORMAT, "t.json: experts[0]: missing \"experts\"");
    expect_err("{\"experts\": [{\"experts\": [0]}]}", 0, XDS_ERR_INVALID,
               "t.json: experts: 1 expert workers given, but the model has no routed experts (not MoE)");
    expect_err("{\"experts\": {\"count\": 2}}", 0, XDS_ERR_INVALID,
               "t.json: experts: 2 expert workers given, but the model has no routed experts (not MoE)");
    expect_err("{\"experts\": {\"count\": 5}}", 4, XDS_ERR_INVALID,
               "t.json: experts.count: 5 expert workers for the model's 4 routed experts");
    expect_err("{\"experts\": [{\"experts\": [0]}, {\"experts\": [1]}, {\"experts\": [0,1,2,3,4]}]}", 4,
               XDS_ERR_FORMAT, "t.json: experts[2].experts: 5 ids for a model with 4 routed experts");
}

int main(void) {
    test_full_lists();
    test_defaults_and_counts();
    test_flags();
    test_file_errors();
    test_errors();
    TEST_MAIN_END();
}
