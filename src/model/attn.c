/*
 * attn.c — portable attention for one query head (see attn.h), the reference
 * the AVX2 version is tested against: scores, softmax, weighted sum of V, in
 * the order transformers' eager attention computes them.
 */
#include <math.h>
#include <string.h>

#include "kernels/kernels.h"
#include "model/attn.h"

void xds_attn_head_ref(const xds_attn_src *s, const float *q, int n, float scale, float *sc, float *out) {
    const int B = s->B, kvd = s->kvd, hd = s->hd;
    for (int p0 = 0, bi = 0; p0 < n; p0 += B, bi++) {
        const float *kb = s->k + (size_t)s->blocks[bi] * B * kvd + s->off;
        int cnt = n - p0 < B ? n - p0 : B;
        for (int j = 0; j < cnt; j++) sc[p0 + j] = xds_dot_f32(q, kb + (size_t)j * kvd, hd) * scale;
    }
    xds_softmax(sc, n);
    memset(out, 0, sizeof(float) * hd);
    for (int p0 = 0, bi = 0; p0 < n; p0 += B, bi++) {
        const float *vb = s->v + (size_t)s->blocks[bi] * B * kvd + s->off;
        int cnt = n - p0 < B ? n - p0 : B;
        for (int j = 0; j < cnt; j++) xds_axpy(out, sc[p0 + j], vb + (size_t)j * kvd, hd);
    }
}
