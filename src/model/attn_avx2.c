/*
 * attn_avx2.c — AVX2+FMA attention for one query head (see attn.h): q.k dot
 * products with the query held in registers, a vectorized exp (Cephes
 * polynomial, ~1e-7 relative error) for the softmax, and the weighted sum of
 * V rows accumulated in registers. head_dim must be a multiple of 8 (<= 256).
 * Compiled with -mavx2 -mfma; called only after a run-time CPU check.
 *
 * Batch invariance: the per-head path (attn_impl) and the group path
 * (xds_attn_group_avx2) perform the same float operations for a head (dots
 * from zero by FMA over head_dim in 8-lane chunks, 4 keys per hadd tree within
 * a block, scale applied after the dot, the same exp and sums, V accumulated
 * per 8-lane chunk in position order), so which path the model picks for a
 * batch does not change any token's result (tests/unit/test_batch_invariance.c).
 */
#include <immintrin.h>
#include <math.h>

#include "base/status.h"
#include "model/attn.h"

static inline float hsum8(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

static inline __m256 exp8(__m256 x) {
    const __m256 hi = _mm256_set1_ps(88.3762626647949f), lo = _mm256_set1_ps(-88.3762626647949f);
    x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
    __m256 fx = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f));
    fx = _mm256_floor_ps(fx);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500E-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

static inline __attribute__((always_inline)) void attn_impl(const xds_attn_src *s, const float *q, int n,
                                                           float scale, float *sc, float *out, int hd) {
    const int nq = hd / 8;
    __m256 qv[32];
    for (int c = 0; c < nq; c++) qv[c] = _mm256_loadu_ps(q + 8 * c);
    const __m128 vs = _mm_set1_ps(scale);
    const int B = s->B, kvd = s->kvd;
    float mx = -INFINITY;
    for (int p0 = 0, bi = 0; p0 < n; p0 += B, bi++) {
        const float *kb = s->k + (size_t)s->blocks[bi] * B * kvd + s->off;
        int cnt = n - p0 < B ? n - p0 : B;
        int j = 0;
        for (; j + 4 <= cnt; j += 4) { /* 4 keys at once: one shuffle tree for 4 sums */
            const float *k0 = kb + (size_t)j * kvd, *k1 = k0 + kvd, *k2 = k1 + kvd, *k3 = k2 + kvd;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (int c = 0; c < nq; c++) {
                a0 = _mm256_fmadd_ps(qv[c], _mm256_loadu_ps(k0 + 8 * c), a0);
                a1 = _mm256_fmadd_ps(qv[c], _mm256_loadu_ps(k1 + 8 * c), a1);
                a2 = _mm256_fmadd_ps(qv[c], _mm256_loadu_ps(k2 + 8 * c), a2);
                a3 = _mm256_fmadd_ps(qv[c], _mm256_loadu_ps(k3 + 8 * c), a3);
            }
            __m256 u = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
            __m128 d4 = _mm_mul_ps(_mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1)), vs);
            _mm_storeu_ps(sc + p0 + j, d4);
            __m128 m2 = _mm_max_ps(d4, _mm_movehl_ps(d4, d4));
            m2 = _mm_max_ss(m2, _mm_movehdup_ps(m2));
            float m = _mm_cvtss_f32(m2);
            mx = m > mx ? m : mx;
        }
        for (; j < cnt; j++) {
            const float *kr = kb + (size_t)j * kvd;
            __m256 a0 = _mm256_setzero_ps();
            for (int c = 0; c < nq; c++) a0 = _mm256_fmadd_ps(qv[c], _mm256_loadu_ps(kr + 8 * c), a0);
            float d = hsum8(a0) * scale;
            sc[p0 + j] = d;
            mx = d > mx ? d : mx;
        }
    }
    /* softmax numerators and their sum */
    __m256 vmx = _mm256_set1_ps(mx), vsum = _mm256_setzero_ps();
    int j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(sc + j), vmx));
        _mm256_storeu_ps(sc + j, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    float sum = hsum8(vsum);
    for (; j < n; j++) {
        float e = expf(sc[j] - mx);
        sc[j] = e;
        sum += e;
    }
    float inv = 1.0f / sum;
    __m256 acc[32];
    for (int c = 0; c < nq; c++) acc[c] = _mm256_setzero_ps();
    for (int p0 = 0, bi = 0; p0 < n; p0 += B, bi++) {
        const float *vb = s->v + (size_t)s->blocks[bi] * B * kvd + s->off;
        int cnt = n - p0 < B ? n - p0 : B;
        for (int jj = 0; jj < cnt; jj++) {
            const float *vr = vb + (size_t)jj * kvd;
            __m256 p = _mm256_set1_ps(sc[p0 + jj]);
            for (int c = 0; c < nq; c++) acc[c] = _mm256_fmadd_ps(p, _mm256_loadu_ps(vr + 8 * c), acc[c]);
        }
    }
    __m256 vinv = _mm256_set1_ps(inv);
    for (int c = 0; c < nq; c++) _mm256_storeu_ps(out + 8 * c, _mm256_mul_ps(acc[c], vinv));
}

void xds_attn_head_avx2(const xds_attn_src *s, const float *q, int n, float scale, float *sc, float *out) {
    switch (s->hd) { /* constant head dims unroll fully and keep acc[] in registers */
    case 64: attn_impl(s, q, n, scale, sc, out, 64); break;
    case 128: attn_impl(s, q, n, scale, sc, out, 128); break;
    default: attn_impl(s, q, n, scale, sc, out, s->hd); break;
    }
}

/* All G query heads of one GQA group for one token (see attn.h): each K / V
 * row is fetched from memory once per group (the other heads find it in L1),
 * so decode reads the KV cache once instead of G times. */
void xds_attn_group_part_avx2(const xds_attn_src *s, const float *q, int G, int lo, int hi, float scale,
                              float *sc, int ldsc, float *out, float *m_out, float *l_out) {
    const int B = s->B, kvd = s->kvd, hd = s->hd, nq = hd / 8, n = hi - lo;
    XDS_ASSERT(lo % B == 0 && lo < hi);
    float mx[XDS_ATTN_MAX_GROUP];
    for (int g = 0; g < G; g++) mx[g] = -INFINITY;
    const __m256 vs = _mm256_set1_ps(scale);
    for (int p0 = 0, bi = lo / B; p0 < n; p0 += B, bi++) { /* p0: position - lo */
        const float *kb = s->k + (size_t)s->blocks[bi] * B * kvd + s->off;
        int cnt = n - p0 < B ? n - p0 : B, j = 0;
        for (; j + 4 <= cnt; j += 4) {
            const float *k0 = kb + (size_t)j * kvd, *k1 = k0 + kvd, *k2 = k1 + kvd, *k3 = k2 + kvd;
            for (int g = 0; g < G; g++) {
                const float *qg = q + (size_t)g * hd;
                __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
                for (int c = 0; c < nq; c++) {
                    __m256 qc = _mm256_loadu_ps(qg + 8 * c);
                    a0 = _mm256_fmadd_ps(qc, _mm256_loadu_ps(k0 + 8 * c), a0);
                    a1 = _mm256_fmadd_ps(qc, _mm256_loadu_ps(k1 + 8 * c), a1);
                    a2 = _mm256_fmadd_ps(qc, _mm256_loadu_ps(k2 + 8 * c), a2);
                    a3 = _mm256_fmadd_ps(qc, _mm256_loadu_ps(k3 + 8 * c), a3);
                }
                __m256 u = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
                __m128 d4 = _mm_mul_ps(_mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1)),
                                       _mm256_castps256_ps128(vs));
                _mm_storeu_ps(sc + (size_t)g * ldsc + p0 + j, d4);
                __m128 m2 = _mm_max_ps(d4, _mm_movehl_ps(d4, d4));
                m2 = _mm_max_ss(m2, _mm_movehdup_ps(m2));
                float m = _mm_cvtss_f32(m2);
                mx[g] = m > mx[g] ? m : mx[g];
            }
        }
        for (; j < cnt; j++) {
            const float *kr = kb + (size_t)j * kvd;
            for (int g = 0; g < G; g++) {
                const float *qg = q + (size_t)g * hd;
                __m256 a = _mm256_setzero_ps();
                for (int c = 0; c < nq; c++) a = _mm256_fmadd_ps(_mm256_loadu_ps(qg + 8 * c), _mm256_loadu_ps(kr + 8 * c), a);
                float d = hsum8(a) * scale;
                sc[(size_t)g * ldsc + p0 + j] = d;
                mx[g] = d > mx[g] ? d : mx[g];
            }
        }
    }
    float inv[XDS_ATTN_MAX_GROUP], sums[XDS_ATTN_MAX_GROUP];
    for (int g = 0; g < G; g++) {
        float *row = sc + (size_t)g * ldsc;
        __m256 vmx = _mm256_set1_ps(mx[g]), vsum = _mm256_setzero_ps();
        int j = 0;
        for (; j + 8 <= n; j += 8) {
            __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(row + j), vmx));
            _mm256_storeu_ps(row + j, e);
            vsum = _mm256_add_ps(vsum, e);
        }
        float sum = hsum8(vsum);
        for (; j < n; j++) {
            float e = expf(row[j] - mx[g]);
            row[j] = e;
            sum += e;
        }
        inv[g] = 1.0f / sum;
        sums[g] = sum;
        for (int d = 0; d < hd; d++) out[(size_t)g * hd + d] = 0.0f;
    }
    for (int p0 = 0, bi = lo / B; p0 < n; p0 += B, bi++) {
        const float *vb = s->v + (size_t)s->blocks[bi] * B * kvd + s->off;
        int cnt = n - p0 < B ? n - p0 : B;
        for (int g = 0; g < G; g++) { /* the block's V rows stay in L1 across the group */
            const float *pg = sc + (size_t)g * ldsc + p0;
            float *og = out + (size_t)g * hd;
            for (int c = 0; c < nq; c++) {
                __m256 acc = _mm256_loadu_ps(og + 8 * c);
                for (int j = 0; j < cnt; j++)
                    acc = _mm256_fmadd_ps(_mm256_set1_ps(pg[j]), _mm256_loadu_ps(vb + (size_t)j * kvd + 8 * c), acc);
                _mm256_storeu_ps(og + 8 * c, acc);
            }
        }
    }
    if (m_out) { /* partial: unnormalized out, its max and sum */
        for (int g = 0; g < G; g++) m_out[g] = mx[g], l_out[g] = sums[g];
        return;
    }
    for (int g = 0; g < G; g++) {
        __m256 vi = _mm256_set1_ps(inv[g]);
        for (int c = 0; c < nq; c++)
            _mm256_storeu_ps(out + (size_t)g * hd + 8 * c, _mm256_mul_ps(_mm256_loadu_ps(out + (size_t)g * hd + 8 * c), vi));
    }
}

void xds_attn_group_avx2(const xds_attn_src *s, const float *q, int G, int n, float scale, float *sc, int ldsc,
                         float *out) {
    xds_attn_group_part_avx2(s, q, G, 0, n, scale, sc, ldsc, out, NULL, NULL);
}
