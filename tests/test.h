/*
 * test.h — the tiny assertion layer of the unit tests. Each CHECK counts; a
 * failing CHECK prints file:line and the expression and the test goes on; the
 * program's exit status is non-zero if any CHECK failed. TEST_MAIN_END prints
 * "N passed, N failed".
 */
#ifndef XDS_TEST_H
#define XDS_TEST_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test_passed_, test_failed_;

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

#define TEST_MAIN_END()                                                      \
    do {                                                                     \
        printf("%d passed, %d failed\n", test_passed_, test_failed_);        \
        return test_failed_ ? 1 : 0;                                         \
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

/* Path of the default real model (set by scripts/test.sh), or NULL. */
static inline const char *test_model_path(void) {
    const char *p = getenv("XDS_TEST_MODEL");
    return (p && *p) ? p : NULL;
}

#endif
