/*
 * ops.c — elementwise and normalization ops on f32 vectors (RMSNorm,
 * softmax, SiLU*up, add, dot, axpy). The portable versions are plain C with
 * independent partial sums; dot, axpy, softmax and silu_mul dispatch to the
 * AVX2 / AVX-512 versions (ops_avx2.c, ops_avx512.c: vector exp) by the CPU
 * level. RMSNorm sums squares in double; add is left to the compiler.
 */
#include <math.h>

#include "kernels/kernels.h"

float xds_dot_f32_avx512(const float *a, const float *b, int n);
void xds_axpy_avx512(float *y, float a, const float *x, int n);
void xds_softmax_avx512(float *x, int n);
void xds_silu_mul_avx512(float *gate, const float *up, int n);
float xds_dot_f32_avx2(const float *a, const float *b, int n);
void xds_axpy_avx2(float *y, float a, const float *x, int n);
void xds_silu_mul_avx2(float *gate, const float *up, int n);

static float dot_generic(const float *a, const float *b, int n) {
    float s[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) s[k] += a[i + k] * b[i + k];
    for (; i < n; i++) s[0] += a[i] * b[i];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

float xds_dot_f32(const float *a, const float *b, int n) {
#if defined(__x86_64__)
    xds_cpu_level l = xds_cpu_level_get();
    if (l == XDS_CPU_AVX512) return xds_dot_f32_avx512(a, b, n);
    if (l == XDS_CPU_AVX2) return xds_dot_f32_avx2(a, b, n);
#endif
    return dot_generic(a, b, n);
}

void xds_axpy(float *y, float a, const float *x, int n) {
#if defined(__x86_64__)
    xds_cpu_level l = xds_cpu_level_get();
    if (l == XDS_CPU_AVX512) return xds_axpy_avx512(y, a, x, n);
    if (l == XDS_CPU_AVX2) return xds_axpy_avx2(y, a, x, n);
#endif
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

void xds_add(float *y, const float *x, int n) {
    for (int i = 0; i < n; i++) y[i] += x[i];
}

void xds_rmsnorm(float *y, const float *x, const float *weight, int n, float eps) {
    double s[4] = {0};
    int i = 0;
    for (; i + 4 <= n; i += 4)
        for (int k = 0; k < 4; k++) s[k] += (double)x[i + k] * x[i + k];
    for (; i < n; i++) s[0] += (double)x[i] * x[i];
    double ss = (s[0] + s[1]) + (s[2] + s[3]);
    float scale = (float)(1.0 / sqrt(ss / n + (double)eps));
    if (weight)
        for (i = 0; i < n; i++) y[i] = x[i] * scale * weight[i];
    else
        for (i = 0; i < n; i++) y[i] = x[i] * scale;
}

void xds_softmax(float *x, int n) {
    if (n <= 0) return;
#if defined(__x86_64__)
    if (xds_cpu_level_get() == XDS_CPU_AVX512) return xds_softmax_avx512(x, n);
#endif
    float max = x[0];
    for (int i = 1; i < n; i++) max = x[i] > max ? x[i] : max;
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        x[i] = expf(x[i] - max);
        sum += x[i];
    }
    float inv = (float)(1.0 / sum);
    for (int i = 0; i < n; i++) x[i] *= inv;
}

void xds_silu_mul(float *gate, const float *up, int n) {
#if defined(__x86_64__)
    xds_cpu_level l = xds_cpu_level_get();
    if (l == XDS_CPU_AVX512) return xds_silu_mul_avx512(gate, up, n);
    if (l == XDS_CPU_AVX2) return xds_silu_mul_avx2(gate, up, n);
#endif
    for (int i = 0; i < n; i++) {
        float g = gate[i];
        gate[i] = g / (1.0f + expf(-g)) * up[i];
    }
}
