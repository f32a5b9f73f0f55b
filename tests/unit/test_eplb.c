/*
 * test_eplb.c — the expert load balancer (deploy/eplb.h): load-file parsing
 * (good forms; each malformed form with its message, the output untouched),
 * the planner's invariants over many shapes (every worker exactly
 * ceil(E/W) + S distinct experts, every expert 1..W replicas, the load
 * conserved), its replica counts against an independent optimality check
 * (no count vector of the same total has a lower max load per replica), its
 * packing against exhaustive search on tiny cases and the local optimality
 * of its exchanges, the synthetic skew (20% above the mean, hottest 30x,
 * seeded), and the balance it reaches on the DeepSeek-V3 and Qwen3 shapes.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "deploy/eplb.h"
#include "test.h"

static int parse(const char *text, xds_eplb_load *l) { return xds_eplb_load_parse("l.json", text, strlen(text), l); }

static void expect_parse_err_(int line, const char *text, const char *want) {
    xds_eplb_load l;
    memset(&l, 0x5a, sizeof l);
    xds_status s = parse(text, &l);
    const char *msg = xds_err_msg();
    CHECK_MSG(s == XDS_ERR_FORMAT, "line %d: status %d (%s)", line, s, msg);
    CHECK_MSG(strstr(msg, want) != NULL, "line %d: message '%s' lacks '%s'", line, msg, want);
    CHECK_MSG(strstr(msg, "l.json") != NULL, "line %d: message '%s' does not name the file", line, msg);
    CHECK_MSG(strchr(msg, '\n') == NULL, "line %d: message is not one line: '%s'", line, msg);
    unsigned char *b = (unsigned char *)&l;
    int untouched = 1;
    for (size_t i = 0; i < sizeof l; i++) untouched &= b[i] == 0x5a;
    CHECK_MSG(untouched, "line %d: output written on error", line);
}
#define expect_parse_err(text, want) expect_parse_err_(__LINE__, text, want)

static void test_parse(void) {
    xds_eplb_load l;
    CHECK(parse("[[1, 2, 3], [0, 0, 7.0]]", &l) == XDS_OK);
    CHECK(l.n_layer == 2 && l.n_expert == 3);
    CHECK(l.count[0] == 1 && l.count[2] == 3 && l.count[3] == 0 && l.count[5] == 7);
    char *text = xds_eplb_load_format(&l);
    CHECK(text != NULL);
    xds_eplb_load l2;
    CHECK(text && parse(text, &l2) == XDS_OK);
    CHECK(text && l2.n_layer == 2 && l2.n_expert == 3 && !memcmp(l.count, l2.count, 6 * sizeof(double)));
    free(text);
    double big[1] = {2e12};
    xds_eplb_load lb = {.n_layer = 1, .n_expert = 1, .count = big};
    CHECK(xds_eplb_load_format(&lb) == NULL); /* not a load file's count */
    xds_eplb_load_free(&l2);
    xds_eplb_load_free(&l);

    expect_parse_err("[[1, 2, 3], [4, 5]]", "layer 1 has 2 experts, layer 0 has 3");
    expect_parse_err("[[1, 2, 3], [4, 5, 6, 7]]", "layer 1 has 4 experts");
    expect_parse_err("[[1, -2, 3]]", "layer 0, expert 1: negative");
    expect_parse_err("[[1, 2], [3, 4.5]]", "layer 1, expert 1: 4.5 is not an integer");
    expect_parse_err("[[1, \"2\"]]", "layer 0, expert 1: not a number");
    expect_parse_err("[[1, null]]", "not a number");
    expect_parse_err("[[1, 2], 3]", "layer 1 is not an array");
    expect_parse_err("[7]", "layer 0 is not an array");
    expect_parse_err("[]", "0 layers");
    expect_parse_err("[[]]", "layer 0 has 0 experts");
    expect_parse_err("{\"a\": 1}", "expected an array");
    expect_parse_err("[[1, 2]", "not JSON");
    expect_parse_err("[[1, 2e13]]", "above");
    expect_parse_err("", "not JSON");

    CHECK(xds_eplb_load_read("/nonexistent/load.json", &l) == XDS_ERR_IO);
    CHECK(strstr(xds_err_msg(), "/nonexistent/load.json") != NULL);
}

static uint64_t rng_state = 12345;
static uint64_t rnd(void) {
    rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
    return rng_state;
}

/* Checks every invariant of a plan of `load`; returns its max/mean. */
static double check_plan_(int line, const double *load, int E, int W, int S, const xds_deploy_placement *p) {
    int K = (E + W - 1) / W + S, ok = 1;
    ok &= p->n_expert == E && p->n_workers == W;
    for (int w = 0; w < W && ok; w++) {
        ok &= p->n_local[w] == K;
        for (int j = 0; j < p->n_local[w]; j++)
            for (int j2 = 0; j2 < j; j2++)
                ok &= p->slot_expert[w * p->max_local + j] != p->slot_expert[w * p->max_local + j2];
    }
    CHECK_MSG(ok, "line %d: E %d W %d S %d: a worker without exactly %d distinct experts", line, E, W, S, K);
    int total = 0;
    ok = 1;
    for (int e = 0; e < E; e++) {
        ok &= p->n_rep[e] >= 1 && p->n_rep[e] <= W;
        total += p->n_rep[e];
    }
    CHECK_MSG(ok && total == W * K, "line %d: E %d W %d S %d: replica counts (total %d, want %d)", line, E, W, S,
              total, W * K);
    double *wl = malloc(sizeof(double) * W), sum = 0, want = 0;
    xds_eplb_predict(p, load, wl);
    for (int w = 0; w < W; w++) sum += wl[w];
    for (int e = 0; e < E; e++) want += load[e];
    CHECK_MSG(fabs(sum - want) <= 1e-9 * (want + 1), "line %d: load not conserved: %g vs %g", line, sum, want);
    /* the replica counts: no vector with the same total has a lower max load
     * per replica: getting every expert below m needs more than W*K
     * replicas, or more than W of one expert */
    double m = 0;
    for (int e = 0; e < E; e++)
        if (load[e] / p->n_rep[e] > m) m = load[e] / p->n_rep[e];
    if (m > 0) {
        long need = 0;
        int over = 0;
        for (int e = 0; e < E; e++) {
            long r = (long)floor(load[e] / m) + 1; /* the fewest replicas with load / r < m */
            if (r < 1) r = 1;
            if (r > W) over = 1;
            need += r;
        }
        CHECK_MSG(over || need > (long)W * K, "line %d: E %d W %d S %d: a lower max per replica fits (%ld of %d)",
                  line, E, W, S, need, W * K);
    }
    /* local optimality of the exchanges: some worker at the max (within
     * rounding) has no exchange that cools it below the max */
    double mx = 0;
    for (int w = 0; w < W; w++)
        if (wl[w] > mx) mx = wl[w];
    int stuck_hot = 0;
    for (int h = 0; h < W; h++) {
        if (wl[h] < mx * (1 - 1e-9)) continue;
        int improvable = 0;
        for (int a = 0; a < K; a++) {
            int ea = p->slot_expert[h * p->max_local + a];
            for (int v = 0; v < W; v++) {
                if (v == h) continue;
                int v_has_ea = 0;
                for (int b = 0; b < K; b++) v_has_ea |= p->slot_expert[v * p->max_local + b] == ea;
                if (v_has_ea) continue;
                for (int b = 0; b < K; b++) {
                    int eb = p->slot_expert[v * p->max_local + b], h_has_eb = 0;
                    for (int c = 0; c < K; c++) h_has_eb |= p->slot_expert[h * p->max_local + c] == eb;
                    if (h_has_eb) continue;
                    double d = load[ea] / p->n_rep[ea] - load[eb] / p->n_rep[eb];
                    double nh = wl[h] - d, nv = wl[v] + d;
                    if (d > 0 && (nh > nv ? nh : nv) < mx * (1 - 1e-6)) improvable = 1;
                }
            }
        }
        stuck_hot |= !improvable;
    }
    CHECK_MSG(stuck_hot, "line %d: E %d W %d S %d: an exchange would cool every hottest worker", line, E, W, S);
    double r = xds_eplb_max_mean(wl, W);
    free(wl);
    return r;
}
#define check_plan(load, E, W, S, p) check_plan_(__LINE__, load, E, W, S, p)

static void test_invariants(void) {
    static const int shapes[][3] = {{8, 2, 0},   {8, 2, 1},   {8, 2, 4},   {8, 8, 7},   {7, 3, 0},  {7, 3, 4},
                                    {5, 2, 1},   {3, 3, 2},   {16, 5, 3},  {64, 8, 1},  {64, 8, 2}, {60, 7, 5},
                                    {128, 16, 1}, {256, 32, 1}, {256, 63, 2}, {100, 9, 88}, {12, 4, 9}};
    int n = 0;
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        int E = shapes[i][0], W = shapes[i][1], S = shapes[i][2];
        double *load = malloc(sizeof(double) * E);
        for (int trial = 0; trial < 12; trial++) {
            for (int e = 0; e < E; e++) {
                uint64_t r = rnd();
                /* mixes: uniform, heavy tail, many zeros, all equal */
                load[e] = trial % 4 == 0   ? (double)(r % 1000)
                          : trial % 4 == 1 ? floor(exp((double)(r % 10000) / 1000.0))
                          : trial % 4 == 2 ? (r % 3 ? 0 : (double)(r % 50))
                                           : 10;
            }
            if (trial == 11) memset(load, 0, sizeof(double) * E);
            xds_deploy_placement p;
            xds_status s = xds_eplb_plan_layer(load, E, W, S, &p);
            CHECK_MSG(s == XDS_OK, "E %d W %d S %d: %s", E, W, S, xds_err_msg());
            if (s != XDS_OK) continue;
            check_plan(load, E, W, S, &p);
            /* the same inputs give the same plan */
            xds_deploy_placement p2;
            CHECK(xds_eplb_plan_layer(load, E, W, S, &p2) == XDS_OK);
            char *a = xds_deploy_placement_format(&p), *b = xds_deploy_placement_format(&p2);
            CHECK(a && b && !strcmp(a, b));
            free(a), free(b);
            xds_deploy_placement_free(&p2);
            xds_deploy_placement_free(&p);
            n++;
        }
        free(load);
    }
    CHECK(n > 100);
}

/* exhaustive: the lowest max worker load for these replica counts */
static double brute_(const double *pl, const int *rep_e, int R, int W, int K, int i, double *wl, int *cnt,
                     unsigned char *holds, int E, double best) {
    if (i == R) {
        double m = 0;
        for (int w = 0; w < W; w++)
            if (wl[w] > m) m = wl[w];
        return m < best ? m : best;
    }
    int e = rep_e[i];
    for (int w = 0; w < W; w++) {
        if (cnt[w] == K || holds[w * E + e]) continue;
        if (wl[w] + pl[e] >= best) continue;
        wl[w] += pl[e], cnt[w]++, holds[w * E + e] = 1;
        best = brute_(pl, rep_e, R, W, K, i + 1, wl, cnt, holds, E, best);
        wl[w] -= pl[e], cnt[w]--, holds[w * E + e] = 0;
    }
    return best;
}

static void test_against_exhaustive(void) {
    static const int shapes[][3] = {{4, 2, 0}, {4, 2, 1}, {6, 3, 1}, {6, 2, 1}, {8, 3, 1}, {9, 3, 0}, {6, 3, 2}};
    double worst = 1;
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        int E = shapes[i][0], W = shapes[i][1], S = shapes[i][2], K = (E + W - 1) / W + S, R = W * K;
        for (int trial = 0; trial < 20; trial++) {
            double load[16], pl[16], wl[8] = {0};
            int rep_e[64], cnt[8] = {0}, n = 0;
            unsigned char holds[8 * 16] = {0};
            for (int e = 0; e < E; e++) load[e] = (double)(1 + rnd() % (trial % 2 ? 100 : 10000));
            xds_deploy_placement p;
            if (xds_eplb_plan_layer(load, E, W, S, &p) != XDS_OK) {
                CHECK_MSG(0, "plan E %d W %d S %d: %s", E, W, S, xds_err_msg());
                continue;
            }
            double ours[8], m = 0;
            xds_eplb_predict(&p, load, ours);
            for (int w = 0; w < W; w++)
                if (ours[w] > m) m = ours[w];
            for (int e = 0; e < E; e++) {
                pl[e] = load[e] / p.n_rep[e];
                for (int r = 0; r < p.n_rep[e]; r++) rep_e[n++] = e;
            }
            CHECK(n == R);
            double opt = brute_(pl, rep_e, R, W, K, 0, wl, cnt, holds, E, 1e300);
            CHECK_MSG(m >= opt * (1 - 1e-9), "better than exhaustive? %g < %g", m, opt);
            CHECK_MSG(m <= opt * 4.0 / 3.0, "E %d W %d S %d: max %g, the best packing %g", E, W, S, m, opt);
            if (m / opt > worst) worst = m / opt;
            xds_deploy_placement_free(&p);
        }
    }
    printf("packing vs exhaustive search on tiny cases: worst %.4f x the optimum\n", worst);
}

static void test_known_cases(void) {
    /* {4,3,2,1} on 2 workers, no redundancy: {4,1} {3,2} */
    double load[4] = {4, 3, 2, 1}, wl[3];
    xds_deploy_placement p;
    CHECK(xds_eplb_plan_layer(load, 4, 2, 0, &p) == XDS_OK);
    xds_eplb_predict(&p, load, wl);
    CHECK(wl[0] == 5 && wl[1] == 5);
    xds_deploy_placement_free(&p);
    /* one redundant slot each: 0 and 1 replicated (2, 2, 1.5, 1.5, 2, 1); a
     * worker holds an expert once, so 5 / 5 is impossible: 5.5 / 4.5 */
    CHECK(xds_eplb_plan_layer(load, 4, 2, 1, &p) == XDS_OK);
    CHECK(p.n_rep[0] == 2 && p.n_rep[1] == 2 && p.n_rep[2] == 1 && p.n_rep[3] == 1);
    xds_eplb_predict(&p, load, wl);
    CHECK((wl[0] == 5.5 && wl[1] == 4.5) || (wl[0] == 4.5 && wl[1] == 5.5));
    xds_deploy_placement_free(&p);
    /* one hot expert on every worker */
    double hot[6] = {600, 1, 1, 1, 1, 1};
    CHECK(xds_eplb_plan_layer(hot, 6, 3, 1, &p) == XDS_OK);
    CHECK(p.n_rep[0] == 3);
    xds_eplb_predict(&p, hot, wl);
    CHECK(xds_eplb_max_mean(wl, 3) < 1.01);
    xds_deploy_placement_free(&p);
    /* shapes where every worker with a free slot already holds the next
     * replica's expert: the packing moves a replica to make room */
    double r1[13] = {2, 1, 2, 1, 3, 1, 3, 2, 2, 1, 2, 4, 1}, r2[12] = {2, 2, 3, 1, 2, 1, 3, 1, 4, 2, 1, 1};
    CHECK(xds_eplb_plan_layer(r1, 13, 3, 6, &p) == XDS_OK);
    check_plan(r1, 13, 3, 6, &p);
    xds_deploy_placement_free(&p);
    CHECK(xds_eplb_plan_layer(r2, 12, 3, 6, &p) == XDS_OK);
    check_plan(r2, 12, 3, 6, &p);
    xds_deploy_placement_free(&p);
}

static void expect_plan_err_(int line, const double *load, int E, int W, int S, const char *want) {
    xds_deploy_placement p;
    memset(&p, 0x5a, sizeof p);
    xds_status s = xds_eplb_plan_layer(load, E, W, S, &p);
    const char *msg = xds_err_msg();
    CHECK_MSG(s == XDS_ERR_INVALID, "line %d: status %d (%s)", line, s, msg);
    CHECK_MSG(strstr(msg, want) != NULL, "line %d: message '%s' lacks '%s'", line, msg, want);
    unsigned char *b = (unsigned char *)&p;
    int untouched = 1;
    for (size_t i = 0; i < sizeof p; i++) untouched &= b[i] == 0x5a;
    CHECK_MSG(untouched, "line %d: output written on error", line);
}
#define expect_plan_err(load, E, W, S, want) expect_plan_err_(__LINE__, load, E, W, S, want)

static void test_plan_errors(void) {
    double load[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    expect_plan_err(load, 8, 9, 0, "9 expert workers for 8 experts");
    expect_plan_err(load, 8, 0, 0, "0 expert workers");
    expect_plan_err(load, 8, 64, 0, "64 expert workers");
    expect_plan_err(load, 8, 2, -1, "-1 redundant slots");
    expect_plan_err(load, 8, 2, 5, "S must be 0..4");
    expect_plan_err(load, 8, 8, 8, "S must be 0..7");
    double neg[3] = {1, -1, 2}, nan3[3] = {1, NAN, 2};
    expect_plan_err(neg, 3, 2, 0, "expert 1: load -1");
    expect_plan_err(nan3, 3, 2, 0, "expert 1: load");
    xds_eplb_load l = {.n_layer = 1, .n_expert = 8, .count = load};
    xds_eplb_plan pl;
    CHECK(xds_eplb_plan_make(&l, 9, 0, &pl) == XDS_ERR_INVALID);
    CHECK(xds_eplb_plan_make(&l, 2, 5, &pl) == XDS_ERR_INVALID);
}

static void test_synthetic(void) {
    xds_eplb_load a, b, c;
    xds_eplb_skew k = xds_eplb_skew_default();
    CHECK(k.hot == 30 && k.above == 0.2);
    /* 64 experts cannot have 20% above the mean with one at 30x (it takes
     * half the tokens): that shape is checked at 10x */
    static const int shapes[][3] = {{256, 8, 30}, {128, 8, 30}, {64, 4, 10}};
    for (int i = 0; i < 3; i++) {
        int E = shapes[i][0], L = shapes[i][1];
        xds_eplb_skew sk = xds_eplb_skew_default();
        sk.hot = shapes[i][2];
        CHECK(xds_eplb_synthetic(E, L, 7, &sk, &a) == XDS_OK);
        CHECK(a.n_layer == L && a.n_expert == E);
        int want = (int)floor(0.2 * E + 0.5), hot_at_first = 0;
        for (int l = 0; l < L; l++) {
            double hot, above;
            xds_eplb_layer_skew(a.count + (size_t)l * E, E, &hot, &above);
            CHECK_MSG(fabs(hot - sk.hot) < 0.05, "E %d layer %d: hottest %g x the mean", E, l, hot);
            CHECK_MSG(fabs(above * E - want) <= 1, "E %d layer %d: %g above the mean, want %d", E, l, above * E, want);
            double sum = 0;
            for (int e = 0; e < E; e++) sum += a.count[(size_t)l * E + e];
            CHECK(fabs(sum - (1 << 20)) <= E);
            int h = 0;
            for (int e = 1; e < E; e++)
                if (a.count[(size_t)l * E + e] > a.count[(size_t)l * E + h]) h = e;
            hot_at_first += h == 0;
        }
        CHECK(hot_at_first < L); /* which expert is hot varies by layer */
        CHECK(xds_eplb_synthetic(E, L, 7, &sk, &b) == XDS_OK);
        CHECK(!memcmp(a.count, b.count, sizeof(double) * E * L));
        CHECK(xds_eplb_synthetic(E, L, 8, &sk, &c) == XDS_OK);
        CHECK(memcmp(a.count, c.count, sizeof(double) * E * L) != 0);
        xds_eplb_load_free(&a), xds_eplb_load_free(&b), xds_eplb_load_free(&c);
    }
    memset(&a, 0x5a, sizeof a);
    CHECK(xds_eplb_synthetic(16, 2, 1, NULL, &a) == XDS_ERR_INVALID); /* 30x needs > 30 experts */
    CHECK(strstr(xds_err_msg(), "more than 30 experts") != NULL);
    CHECK(((unsigned char *)&a)[0] == 0x5a);
    k.above = 0.7;
    CHECK(xds_eplb_synthetic(64, 2, 1, &k, &a) == XDS_ERR_INVALID);
    k = xds_eplb_skew_default(), k.tokens = 0;
    CHECK(xds_eplb_synthetic(64, 2, 1, &k, &a) == XDS_ERR_INVALID);
    CHECK(xds_eplb_synthetic(64, 0, 1, NULL, &a) == XDS_ERR_INVALID);
    k = xds_eplb_skew_default(), k.hot = 4;
    CHECK(xds_eplb_synthetic(16, 2, 1, &k, &a) == XDS_OK);
    xds_eplb_load_free(&a);
}

/* the target on the paper's skew: <= 1.10 with one redundant slot */
static void test_balance(void) {
    static const int shapes[][2] = {{256, 58}, {128, 48}};
    static const int workers[] = {8, 16, 32};
    for (int i = 0; i < 2; i++) {
        xds_eplb_load l;
        CHECK(xds_eplb_synthetic(shapes[i][0], shapes[i][1], 1, NULL, &l) == XDS_OK);
        for (int j = 0; j < 3; j++) {
            xds_eplb_plan p;
            if (xds_eplb_plan_make(&l, workers[j], 1, &p) != XDS_OK) {
                CHECK_MSG(0, "%s", xds_err_msg());
                continue;
            }
            double before = xds_eplb_max_mean_total(p.before, p.n_layer, p.n_workers);
            double after = xds_eplb_max_mean_total(p.after, p.n_layer, p.n_workers);
            printf("E %d L %d W %d S 1: max/mean %.3f -> %.3f\n", l.n_expert, l.n_layer, workers[j], before, after);
            CHECK(before > 1.5);
            CHECK_MSG(after <= 1.10, "E %d W %d: %g", l.n_expert, workers[j], after);
            for (int k = 0; k < p.n_layer; k++)
                check_plan(l.count + (size_t)k * l.n_expert, l.n_expert, workers[j], 1, &p.layer[k]);
            xds_eplb_plan_free(&p);
        }
        xds_eplb_load_free(&l);
    }
}

int main(void) {
    test_parse();
    test_invariants();
    test_known_cases();
    test_against_exhaustive();
    test_plan_errors();
    test_synthetic();
    test_balance();
    TEST_MAIN_END();
}
