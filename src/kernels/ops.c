/*
 * ops.c — elementwise and normalization ops on f32 vectors (RMSNorm,
 * softmax, SiLU*up, add, dot, axpy). Plain C written so the compiler can
 * vectorize it (independent partial sums; no reassociation is assumed), the
 * same at every CPU level. Reductions use 8 partial sums, f32 (dot) or
 * double (rmsnorm's sum of squares).
 */
#include <math.h>

#include "kernels/kernels.h"

float xds_dot_f32(const float *a, const float *b, int n) {
    float s[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) s[k] += a[i + k] * b[i + k];
    for (; i < n; i++) s[0] += a[i] * b[i];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

void xds_axpy(float *y, float a, const float *x, int n) {
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
    for (int i = 0; i < n; i++) {
        float g = gate[i];
        gate[i] = g / (1.0f + expf(-g)) * up[i];
    }
}
