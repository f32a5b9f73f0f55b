/* test_sampler.c — greedy, penalties, filters, seeded reproducibility and the
 * sampled distribution of the sampler. */
#include "sampler/sampler.h"
#include "test.h"

static xds_sampler_params greedy(void) {
    xds_sampler_params p = xds_sampler_params_default();
    p.temp = 0;
    p.top_k = 0;
    p.top_p = 1;
    p.min_p = 0;
    return p;
}

static void test_greedy(void) {
    xds_sampler_params p = greedy();
    xds_sampler *s = xds_sampler_create(&p, 5);
    float l[5] = {0.1f, 2.0f, -1.0f, 2.0f, 1.5f};
    CHECK(xds_sampler_sample(s, l) == 1); /* tie -> lowest id */
    xds_sampler_free(s);
    CHECK(xds_sampler_create(&p, 0) == NULL);
}

static void test_penalties(void) {
    xds_sampler_params p = greedy();
    p.repeat_penalty = 2.0f;
    p.penalty_last_n = 2;
    xds_sampler *s = xds_sampler_create(&p, 4);
    xds_sampler_accept(s, 0);
    xds_sampler_accept(s, 1);
    xds_sampler_accept(s, 1);
    float l[4] = {4.0f, -1.0f, 3.0f, 1.0f};
    xds_sampler_sample(s, l);
    CHECK_NEAR(l[0], 4.0f, 0); /* fell out of the 2-token window */
    CHECK_NEAR(l[1], -2.0f, 1e-6); /* negative: multiplied, once */
    CHECK_NEAR(l[2], 3.0f, 0);
    xds_sampler_free(s);

    p = greedy();
    p.presence_penalty = 0.5f;
    p.frequency_penalty = 0.25f;
    s = xds_sampler_create(&p, 3);
    xds_sampler_accept(s, 2);
    xds_sampler_accept(s, 2);
    xds_sampler_accept(s, 0);
    float m[3] = {1.0f, 1.0f, 1.0f};
    CHECK(xds_sampler_sample(s, m) == 1);
    CHECK_NEAR(m[0], 1.0f - 0.5f - 0.25f, 1e-6);
    CHECK_NEAR(m[2], 1.0f - 0.5f - 0.5f, 1e-6);
    CHECK_NEAR(m[1], 1.0f, 0);
    xds_sampler_free(s);
}

static void fill(float *l, int n) {
    for (int i = 0; i < n; i++) l[i] = (float)((i * 37) % 101) / 25.0f;
}

static void test_seed(void) {
    enum { N = 1000, T = 200 };
    static float l[N];
    xds_sampler_params p = xds_sampler_params_default();
    p.temp = 1.0f;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    int32_t a[T], b[T], c[T];
    for (int run = 0; run < 3; run++) {
        p.seed = run == 2 ? 43 : 42;
        xds_sampler *s = xds_sampler_create(&p, N);
        for (int t = 0; t < T; t++) {
            fill(l, N);
            int32_t tok = xds_sampler_sample(s, l);
            (run == 0 ? a : run == 1 ? b : c)[t] = tok;
        }
        xds_sampler_free(s);
    }
    CHECK(memcmp(a, b, sizeof a) == 0);
    CHECK(memcmp(a, c, sizeof a) != 0);
}

static void test_filters(void) {
    enum { N = 6 };
    float base[N] = {3.0f, 2.9f, 2.0f, 1.0f, 0.0f, -5.0f};
    float l[N];
    xds_sampler_params p = xds_sampler_params_default();
    p.temp = 1.0f;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.seed = 7;
    int seen[N];

    /* top_k = 2: only ids 0 and 1 ever come out, both do. */
    p.top_k = 2;
    xds_sampler *s = xds_sampler_create(&p, N);
    memset(seen, 0, sizeof seen);
    for (int i = 0; i < 2000; i++) {
        memcpy(l, base, sizeof l);
        seen[xds_sampler_sample(s, l)]++;
    }
    CHECK(seen[0] > 0 && seen[1] > 0 && seen[0] + seen[1] == 2000);
    xds_sampler_free(s);

    /* top_p tiny: always the most likely. */
    p.top_k = 0;
    p.top_p = 0.01f;
    s = xds_sampler_create(&p, N);
    int all0 = 1;
    for (int i = 0; i < 500; i++) {
        memcpy(l, base, sizeof l);
        all0 &= xds_sampler_sample(s, l) == 0;
    }
    CHECK(all0);
    xds_sampler_free(s);

    /* min_p 0.3: keeps ids with p >= 0.3 p_max: exp(-0.1)=0.90 yes,
     * exp(-1)=0.37 yes, exp(-2)=0.14 no. */
    p.top_p = 1.0f;
    p.min_p = 0.3f;
    s = xds_sampler_create(&p, N);
    memset(seen, 0, sizeof seen);
    for (int i = 0; i < 3000; i++) {
        memcpy(l, base, sizeof l);
        seen[xds_sampler_sample(s, l)]++;
    }
    CHECK(seen[0] > 0 && seen[1] > 0 && seen[2] > 0);
    CHECK(seen[3] == 0 && seen[4] == 0 && seen[5] == 0);
    xds_sampler_free(s);
}

/* With temperature 2 and no filters, frequencies follow softmax(l / 2). */
static void test_distribution(void) {
    enum { N = 4, DRAWS = 200000 };
    float base[N] = {1.0f, 0.0f, -1.0f, 2.0f};
    xds_sampler_params p = xds_sampler_params_default();
    p.temp = 2.0f;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.seed = 123;
    xds_sampler *s = xds_sampler_create(&p, N);
    int seen[N] = {0};
    float l[N];
    for (int i = 0; i < DRAWS; i++) {
        memcpy(l, base, sizeof l);
        seen[xds_sampler_sample(s, l)]++;
    }
    double z = 0, pr[N];
    for (int i = 0; i < N; i++) z += (pr[i] = exp(base[i] / 2.0));
    for (int i = 0; i < N; i++) {
        double expect = pr[i] / z, got = (double)seen[i] / DRAWS;
        double sd = sqrt(expect * (1 - expect) / DRAWS);
        CHECK_MSG(fabs(got - expect) < 6 * sd, "id %d: %f vs %f", i, got, expect);
    }
    xds_sampler_free(s);
}

/* logit_bias: added before the choice, greedy included; -100 bans a token;
 * ids outside the vocabulary are skipped (the engine refuses them first). */
static void test_logit_bias(void) {
    xds_sampler_params p = greedy();
    p.n_logit_bias = 3;
    p.logit_bias_tok[0] = 1, p.logit_bias[0] = -100.0f; /* the argmax, banned */
    p.logit_bias_tok[1] = 4, p.logit_bias[1] = 0.6f;    /* 1.5 + 0.6 beats 2.0 (token 3) */
    p.logit_bias_tok[2] = 7, p.logit_bias[2] = 100.0f;  /* outside 5 tokens: ignored */
    xds_sampler *s = xds_sampler_create(&p, 5);
    float l[5] = {0.1f, 2.0f, -1.0f, 2.0f, 1.5f};
    CHECK(s && xds_sampler_sample(s, l) == 4);
    float l2[5] = {0.1f, 2.0f, -1.0f, 2.0f, 1.5f};
    p.logit_bias[1] = 0.2f; /* 1.7 < 2.0: token 3 */
    xds_sampler_free(s);
    s = xds_sampler_create(&p, 5);
    CHECK(s && xds_sampler_sample(s, l2) == 3);
    /* sampling at a temperature: a +100 bias makes a token certain */
    xds_sampler_params q = xds_sampler_params_default();
    q.temp = 1.0f, q.top_k = 0, q.top_p = 1.0f, q.min_p = 0.0f;
    q.n_logit_bias = 1, q.logit_bias_tok[0] = 2, q.logit_bias[0] = 100.0f;
    xds_sampler_free(s);
    s = xds_sampler_create(&q, 5);
    int all2 = 1;
    for (int i = 0; i < 200 && s; i++) {
        float l3[5] = {0.1f, 2.0f, -1.0f, 2.0f, 1.5f};
        all2 &= xds_sampler_sample(s, l3) == 2;
    }
    CHECK(s && all2);
    xds_sampler_free(s);
}

int main(void) {
    test_logit_bias();
    test_greedy();
    test_penalties();
    test_seed();
    test_filters();
    test_distribution();
    TEST_MAIN_END();
}
