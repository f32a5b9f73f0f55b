/* roofline_avx2.c — AVX2 peak loops for roofline.c: 12 independent chains of
 * ymm FMAs / VPMADDUBSW+VPMADDWD+VPADDD. Returns operations performed. Called
 * only after the CPU check. */
#include <immintrin.h>
#include <stdint.h>

double xds_roof_fma_avx2(int64_t iters, float *sink) {
    __m256 a[12], m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    #pragma GCC unroll 16
    for (int k = 0; k < 12; k++) a[k] = _mm256_set1_ps((float)k);
    for (int64_t i = 0; i < iters; i++)
        #pragma GCC unroll 16
        for (int k = 0; k < 12; k++) a[k] = _mm256_fmadd_ps(a[k], m, c);
    __m256 s = a[0];
    for (int k = 1; k < 12; k++) s = _mm256_add_ps(s, a[k]);
    float t[8];
    _mm256_storeu_ps(t, s);
    *sink = t[0] + t[7];
    return (double)iters * 12 * 8 * 2;
}

double xds_roof_int8_avx2(int64_t iters, int *sink) {
    /* 12 chains; each step's bytes are the previous step's result, so the
     * compiler cannot hoist the multiply out of the loop */
    __m256i a[12], u = _mm256_set1_epi8(3), one = _mm256_set1_epi16(1);
#pragma GCC unroll 16
    for (int k = 0; k < 12; k++) a[k] = _mm256_set1_epi32(k);
    for (int64_t i = 0; i < iters; i++)
#pragma GCC unroll 16
        for (int k = 0; k < 12; k++) a[k] = _mm256_madd_epi16(_mm256_maddubs_epi16(u, a[k]), one);
    __m256i s = a[0];
    for (int k = 1; k < 12; k++) s = _mm256_xor_si256(s, a[k]);
    *sink = _mm256_extract_epi32(s, 0);
    return (double)iters * 12 * 32 * 2;
}
