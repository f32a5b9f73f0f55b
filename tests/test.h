/*
 * test.h — the tiny assertion layer of the unit tests. Each CHECK counts; a
 * failing CHECK prints file:line and the expression and the test goes on; the
 * program's exit status is non-zero if any CHECK failed. TEST_MAIN_END prints
 * "N passed, N failed".
 */
#ifndef XDS_TEST_H
#define XDS_TEST_H

#include <math.h>
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

/* Path of the default real model (set by scripts/test.sh), or NULL. */
static inline const char *test_model_path(void) {
    const char *p = getenv("XDS_TEST_MODEL");
    return (p && *p) ? p : NULL;
}

#endif
