/*
 * test.h — the tiny assertion layer of the unit tests. Each CHECK counts; a
 * failing CHECK prints file:line and the expression and the test goes on; the
 * program's exit status is non-zero if any CHECK failed. TEST_MAIN_END prints
 * "N passed, N failed" (", N skipped" after it when a part was skipped).
 *
 * Skips: TEST_SKIP(reason) for a part that cannot run for a missing input
 * (the real model, ../shared/tokenizers, a CPU feature) prints "SKIP: reason"
 * and counts as skipped; under CI=true (how .ci/run is called) it is a
 * failure instead, so a CI run cannot pass without its inputs.
 * TEST_SKIP_BUILD(reason) is a part this build leaves out by design (e.g.
 * too slow under AddressSanitizer): "SKIP (not in this build): reason", never
 * a failure. A program that only skipped exits 77 (ctest's SKIP_RETURN_CODE).
 */
#ifndef XDS_TEST_H
#define XDS_TEST_H

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test_passed_, test_failed_, test_skipped_;

#define CHECK(cond)                                                                \
    do {                                                                           \
        if (cond) test_passed_++;                                                  \
        else {                                                                     \
            test_failed_++;                                                        \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                          \
    } while (0)

#define CHECK_MSG(cond, ...)                                                       \
    do {                                                                           \
        if (cond) test_passed_++;                                                  \
        else {                                                                     \
            test_failed_++;                                                        \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                          \
            fputc('\n', stderr);                                                   \
        }                                                                          \
    } while (0)

#define CHECK_NEAR(a, b, tol) CHECK_MSG(fabs((double)(a) - (double)(b)) <= (tol), "%g vs %g (tol %g)", (double)(a), (double)(b), (double)(tol))

/* CI=true (or 1): skipping for a missing input is a failure. */
static inline int test_in_ci(void) {
    const char *c = getenv("CI");
    return c && (!strcmp(c, "true") || !strcmp(c, "1"));
}

__attribute__((format(printf, 4, 5))) static inline void test_skip_(const char *file, int line, int input,
                                                             const char *fmt, ...) {
    char why[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    if (input && test_in_ci()) {
        test_failed_++;
        fflush(stdout);
        fprintf(stderr, "%s:%d: CHECK failed: skip refused under CI=true: %s\n", file, line, why);
    } else {
        test_skipped_++;
        printf("SKIP%s: %s\n", input ? "" : " (not in this build)", why);
    }
}
#define TEST_SKIP(...) test_skip_(__FILE__, __LINE__, 1, __VA_ARGS__)
#define TEST_SKIP_BUILD(...) test_skip_(__FILE__, __LINE__, 0, __VA_ARGS__)

#define TEST_MAIN_END()                                                                   \
    do {                                                                                  \
        if (test_skipped_)                                                                \
            printf("%d passed, %d failed, %d skipped\n", test_passed_, test_failed_, test_skipped_); \
        else printf("%d passed, %d failed\n", test_passed_, test_failed_);                \
        return test_failed_ ? 1 : (test_passed_ == 0 && test_skipped_ ? 77 : 0);          \
    } while (0)

/* Test data: xorshift64, state per test program (test_rng_seed to change it). */
static uint64_t test_rng_ = 0x9e3779b97f4a7c15ull;
static inline void test_rng_seed(uint64_t s) { test_rng_ = s; }
static inline uint32_t rnd_u32(void) {
    test_rng_ ^= test_rng_ << 13;
    test_rng_ ^= test_rng_ >> 7;
    test_rng_ ^= test_rng_ << 17;
    return (uint32_t)(test_rng_ >> 16);
}
/* uniform in [-1, 1) */
static inline float rnd_f(void) { return (float)((rnd_u32() & 0xffffff) / 16777216.0 * 2.0 - 1.0); }

/* Directory of the Hugging Face tokenizers (qwen3/, deepseek_v3/):
 * XDS_TEST_TOKENIZERS (set by scripts/test.sh), else ../shared/tokenizers
 * (relative to the repo root, the tests' working directory). */
static inline const char *test_tokenizers_dir(void) {
    const char *p = getenv("XDS_TEST_TOKENIZERS");
    return (p && *p) ? p : "../shared/tokenizers";
}

/* Path of the default real model (set by scripts/test.sh), or NULL. */
static inline const char *test_model_path(void) {
    const char *p = getenv("XDS_TEST_MODEL");
    return (p && *p) ? p : NULL;
}

#endif
