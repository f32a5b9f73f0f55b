/*
 * test_mla_attn.c — the AVX-512 MLA attention kernel (src/model/mla_attn.h)
 * on random paged latent rows (shuffled, non-contiguous block tables):
 *   - each head's output agrees with the portable per-head reference
 *     (xds_attn_head_ref) to ~1e-5, for the DeepSeek-V3 shape (576-float rows,
 *     512 values) and small / odd shapes (row length not a multiple of 16 or
 *     shorter than 16, values not a multiple of 16, a head offset in the row),
 *     n not a multiple of 4 nor of the block size, G including tile edges;
 *   - in place (out aliasing q) gives the same bits as a separate out, and
 *     leaves q's floats past R alone;
 *   - batch invariance: a head's output bits do not depend on the chunk of
 *     heads it is computed in nor on its place in the 4-head tile; a (head,
 *     key) score's bits do not depend on G, the head's place, nor n (whether
 *     the key falls in a full 4-key tile or an edge tile).
 * Skips with a message when the CPU (or XDS_CPU) does not allow AVX-512.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "model/attn.h"
#include "model/mla_attn.h"
#include "test.h"

typedef struct {
    int R, rd, off, B, ldq_extra;
} shape;

#define NBLK 12
#define GMAX 16

static void check_shape(const shape *sh) {
    const int Lw = sh->R + sh->rd, kvd = Lw + sh->off + 3, B = sh->B, ldq = Lw + sh->ldq_extra;
    const int nmax = NBLK * B, ldsc = nmax + 1;
    float *pool = malloc(sizeof(float) * NBLK * B * kvd);
    for (int i = 0; i < NBLK * B * kvd; i++) pool[i] = rnd_f();
    int32_t blocks[NBLK];
    for (int i = 0; i < NBLK; i++) blocks[i] = i;
    for (int i = NBLK - 1; i > 0; i--) { /* shuffled: rows of neighbouring blocks are far apart */
        int j = (int)(rnd_u32() % (unsigned)(i + 1)), t = blocks[i];
        blocks[i] = blocks[j], blocks[j] = t;
    }
    xds_attn_src src = {pool, pool, blocks, B, kvd, sh->off, Lw};
    float scale = 1.0f / sqrtf(192.0f) * 1.37f; /* not a power of 2: rounds */
    float *q = malloc(sizeof(float) * GMAX * ldq), *qa = malloc(sizeof(float) * GMAX * ldq);
    float *o = malloc(sizeof(float) * GMAX * ldq), *o2 = malloc(sizeof(float) * GMAX * ldq);
    float *sc = malloc(sizeof(float) * GMAX * ldsc), *sc2 = malloc(sizeof(float) * GMAX * ldsc);
    float *ref = malloc(sizeof(float) * Lw), *rsc = malloc(sizeof(float) * nmax);
    for (int i = 0; i < GMAX * ldq; i++) q[i] = rnd_f() * 3;
    const int ns[] = {1, 2, 3, 4, 5, 7, 8, 13, 17, 31, 64, 67};
    const int Gs[] = {1, 2, 3, 4, 5, 7, 16};
    int bad_ref = 0, bad_alias = 0, bad_tail = 0, bad_chunk = 0;
    double worst = 0;
    for (int ni = 0; ni < (int)(sizeof ns / sizeof *ns); ni++) {
        int n = ns[ni];
        if (n > nmax) continue;
        for (int gi = 0; gi < (int)(sizeof Gs / sizeof *Gs); gi++) {
            int G = Gs[gi];
            /* separate out */
            memset(o, 0, sizeof(float) * GMAX * ldq);
            xds_mla_attn_heads_avx512(&src, q, ldq, G, n, sh->R, scale, sc, ldsc, o, ldq);
            /* in place */
            memcpy(qa, q, sizeof(float) * GMAX * ldq);
            xds_mla_attn_heads_avx512(&src, qa, ldq, G, n, sh->R, scale, sc, ldsc, qa, ldq);
            for (int g = 0; g < G; g++) {
                xds_attn_head_ref(&src, q + (size_t)g * ldq, n, scale, rsc, ref);
                double mx = 0;
                for (int d = 0; d < sh->R; d++) mx = fmax(mx, fabs(ref[d]));
                for (int d = 0; d < sh->R; d++) {
                    double e = fabs((double)o[(size_t)g * ldq + d] - ref[d]) / fmax(mx, 1e-30);
                    worst = fmax(worst, e);
                    bad_ref += !(e <= 1e-5);
                }
                bad_alias += memcmp(qa + (size_t)g * ldq, o + (size_t)g * ldq, sizeof(float) * sh->R) != 0;
                bad_tail += memcmp(qa + (size_t)g * ldq + sh->R, q + (size_t)g * ldq + sh->R,
                                   sizeof(float) * (ldq - sh->R)) != 0;
            }
        }
        /* head chunking: all 16 heads at once vs chunks of G starting at
         * head `first` (so a head sits at every place of the 4-head tile) */
        xds_mla_attn_heads_avx512(&src, q, ldq, GMAX, n, sh->R, scale, sc, ldsc, o, ldq);
        for (int gi = 0; gi < (int)(sizeof Gs / sizeof *Gs); gi++)
            for (int first = 0; first < 4; first++) {
                int G = Gs[gi];
                memset(o2, 0, sizeof(float) * GMAX * ldq);
                for (int h0 = 0; h0 < GMAX;) {
                    int g = h0 == 0 && first ? first : G;
                    if (g > GMAX - h0) g = GMAX - h0;
                    xds_mla_attn_heads_avx512(&src, q + (size_t)h0 * ldq, ldq, g, n, sh->R, scale, sc2, ldsc,
                                              o2 + (size_t)h0 * ldq, ldq);
                    h0 += g;
                }
                for (int h = 0; h < GMAX; h++)
                    bad_chunk += memcmp(o + (size_t)h * ldq, o2 + (size_t)h * ldq, sizeof(float) * sh->R) != 0;
            }
    }
    CHECK_MSG(bad_ref == 0, "R %d rd %d B %d: %d floats differ from the reference by > 1e-5 (worst %g)", sh->R,
              sh->rd, B, bad_ref, worst);
    CHECK_MSG(bad_alias == 0, "R %d rd %d: %d heads differ in place vs separate out", sh->R, sh->rd, bad_alias);
    CHECK_MSG(bad_tail == 0, "R %d rd %d: %d heads had q past R overwritten", sh->R, sh->rd, bad_tail);
    CHECK_MSG(bad_chunk == 0, "R %d rd %d: %d head outputs depend on the head chunking", sh->R, sh->rd, bad_chunk);
    /* scores: (head, key) bits vs all heads over all keys, for every n and
     * chunking (keys move between full and edge tiles, heads between places) */
    int bad_sc = 0;
    xds_mla_scores_avx512(&src, q, ldq, GMAX, nmax, scale, sc, ldsc);
    for (int n = 1; n <= nmax; n++)
        for (int gi = 0; gi < (int)(sizeof Gs / sizeof *Gs); gi++)
            for (int first = 0; first < 2; first++) {
                int G = Gs[gi];
                for (int h0 = 0; h0 < GMAX;) {
                    int g = h0 == 0 && first ? 1 + (int)(rnd_u32() % 3u) : G;
                    if (g > GMAX - h0) g = GMAX - h0;
                    xds_mla_scores_avx512(&src, q + (size_t)h0 * ldq, ldq, g, n, scale, sc2 + (size_t)h0 * ldsc,
                                          ldsc);
                    h0 += g;
                }
                for (int h = 0; h < GMAX; h++)
                    bad_sc += memcmp(sc + (size_t)h * ldsc, sc2 + (size_t)h * ldsc, sizeof(float) * n) != 0;
            }
    CHECK_MSG(bad_sc == 0, "R %d rd %d: %d score rows depend on n or the head chunking", sh->R, sh->rd, bad_sc);
    /* the scores themselves: close to scale * dot */
    int bad_dot = 0;
    for (int h = 0; h < GMAX; h++)
        for (int j = 0; j < nmax; j++) {
            const float *r = pool + (size_t)blocks[j / B] * B * kvd + (size_t)(j % B) * kvd + sh->off;
            double d = 0, a = 0;
            for (int i = 0; i < Lw; i++) d += (double)q[(size_t)h * ldq + i] * r[i], a += fabs(q[(size_t)h * ldq + i] * r[i]);
            bad_dot += !(fabs(sc[(size_t)h * ldsc + j] - d * scale) <= 1e-5 * a * scale + 1e-30);
        }
    CHECK_MSG(bad_dot == 0, "R %d rd %d: %d scores differ from scale * dot", sh->R, sh->rd, bad_dot);
    free(pool), free(q), free(qa), free(o), free(o2), free(sc), free(sc2), free(ref), free(rsc);
}

int main(void) {
    if (xds_cpu_level_get() < XDS_CPU_AVX512) {
        TEST_SKIP("test_mla_attn: the AVX-512 level is not available (CPU or XDS_CPU)");
        TEST_MAIN_END();
    }
    const shape shapes[] = {
        {512, 64, 0, 16, 0}, /* DeepSeek-V3: 576-float rows, 512 values, 16-row blocks */
        {512, 64, 0, 5, 0},  /* blocks of 5 rows */
        {32, 16, 0, 4, 0},   /* the tiny oracle model's shape */
        {24, 16, 8, 3, 5},   /* row 40 (16 + 16 + 8), values 24 (16 + 8), head offset 8, padded q rows */
        {8, 4, 3, 7, 1},     /* row 12 < 16: only the masked tail chunk */
        {100, 36, 0, 6, 0},  /* row 136, values 100 (6 x 16 + 4): a 64-float slice edge + masked tail */
    };
    for (int i = 0; i < (int)(sizeof shapes / sizeof *shapes); i++) check_shape(&shapes[i]);
    TEST_MAIN_END();
}
