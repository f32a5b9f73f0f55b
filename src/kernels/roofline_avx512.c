/* roofline_avx512.c — AVX-512 peak loops for roofline.c: 12 independent
 * chains of zmm FMAs / VPDPBUSDs. Returns operations performed (and writes a
 * sink so the work is not optimized away). Called only after the CPU check. */
#include <immintrin.h>
#include <stdint.h>

double xds_roof_fma_avx512(int64_t iters, float *sink) {
    __m512 a[12], m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    #pragma GCC unroll 16
    for (int k = 0; k < 12; k++) a[k] = _mm512_set1_ps((float)k);
    for (int64_t i = 0; i < iters; i++)
        #pragma GCC unroll 16
        for (int k = 0; k < 12; k++) a[k] = _mm512_fmadd_ps(a[k], m, c);
    __m512 s = a[0];
    for (int k = 1; k < 12; k++) s = _mm512_add_ps(s, a[k]);
    *sink = _mm512_reduce_add_ps(s);
    return (double)iters * 12 * 16 * 2;
}

double xds_roof_int8_avx512(int64_t iters, int *sink) {
    __m512i a[12], u = _mm512_set1_epi8(3), v = _mm512_set1_epi8(-2);
    #pragma GCC unroll 16
    for (int k = 0; k < 12; k++) a[k] = _mm512_set1_epi32(k);
    for (int64_t i = 0; i < iters; i++)
        #pragma GCC unroll 16
        for (int k = 0; k < 12; k++) a[k] = _mm512_dpbusd_epi32(a[k], u, v);
    __m512i s = a[0];
    for (int k = 1; k < 12; k++) s = _mm512_add_epi32(s, a[k]);
    int t[16];
    _mm512_storeu_si512(t, s);
    *sink = t[0] ^ t[15]; /* (a C-level sum of the wrapped lanes could overflow) */
    return (double)iters * 12 * 64 * 2;
}
