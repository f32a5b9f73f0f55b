/*
 * test_batch_invariance.c — a token's logits do not depend on the other
 * tokens of its batch (issue 5, point 5: concurrent greedy requests give
 * exactly the tokens each gives alone). At the default CPU level:
 *   - attention: the per-head AVX2 path and the GQA-group path give
 *     bit-identical outputs for every head (the model picks one or the other
 *     from the batch size);
 *   - model forward, for the tiny fp32 checkpoints (tests/data/oracle/tiny,
 *     dense and GQA/MQA; tests/data/oracle/moe, MoE and MLA) and the real
 *     SmolLM2 Q4_1 (XDS_TEST_MODEL; skipped with a message if unset): several
 *     sequences, each run alone one token per forward (decode path), give
 *     logits bit-identical (memcmp) to the same sequences run together — all
 *     prompts in one prefill batch, then decode steps of one token per
 *     sequence in one batch, then a mixed batch (one sequence's next prompt
 *     chunk with the others' decode tokens). One sequence is ~40 tokens
 *     long (10 KV blocks of 4), so a decode path that splits the keys of a
 *     long context across threads only for single-token batches would show.
 *   - the same with --quantize w8a8 (every matmul weight W8A8) for the MoE
 *     fixtures and SmolLM2.
 */
#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "model/attn.h"
#include "model/model.h"
#include "test.h"

/* Per-head vs group attention on random K/V (paged, shuffled blocks). */
static void test_attn_paths(void) {
    if (xds_cpu_level_get() < XDS_CPU_AVX2) {
        TEST_SKIP("attention paths: no AVX2 at the default level (CPU or XDS_CPU)");
        return;
    }
    const int hds[] = {16, 24, 64, 128}, Gs[] = {1, 3, 4, 8};
    const int ns[] = {1, 3, 4, 5, 17, 40};
    for (int hi = 0; hi < 4; hi++) {
        int hd = hds[hi], B = 8, HK = 2, kvd = HK * hd, nblk = 8;
        float *k = malloc(sizeof(float) * nblk * B * kvd), *v = malloc(sizeof(float) * nblk * B * kvd);
        for (int i = 0; i < nblk * B * kvd; i++) k[i] = rnd_f(), v[i] = rnd_f();
        int32_t blocks[8] = {5, 2, 7, 0, 3, 6, 1, 4};
        for (int gi = 0; gi < 4; gi++)
            for (int ni = 0; ni < 6; ni++) {
                int G = Gs[gi], n = ns[ni], same = 1;
                float *q = malloc(sizeof(float) * G * hd), *og = malloc(sizeof(float) * G * hd);
                float *oh = malloc(sizeof(float) * hd), *sc = malloc(sizeof(float) * G * 64);
                for (int i = 0; i < G * hd; i++) q[i] = rnd_f() * 2;
                xds_attn_src src = {k, v, blocks, B, kvd, hd, hd}; /* kv head 1 */
                float scale = 1.0f / sqrtf((float)hd) * 1.1f; /* not a power of 2: rounds */
                xds_attn_group_avx2(&src, q, G, n, scale, sc, 64, og);
                for (int g = 0; g < G; g++) {
                    xds_attn_head_avx2(&src, q + g * hd, n, scale, sc, oh);
                    same &= memcmp(oh, og + g * hd, sizeof(float) * hd) == 0;
                }
                CHECK_MSG(same, "attention hd %d G %d n %d: per-head and group outputs differ", hd, G, n);
                free(q), free(og), free(oh), free(sc);
            }
        free(k), free(v);
    }
}

#define NS 4  /* sequences */
#define MAXP 48

typedef struct {
    int n_prompt, n_next; /* prompt tokens, then n_next more fed in the mixed/decode steps */
    int32_t tok[MAXP];
} seq_case;

/* Forward of a batch; logits of every row into lg (n_tok, V). */
static int fwd(xds_model_ctx *ctx, xds_kv_cache *kv, int n, const int32_t *tok, const int32_t *pos,
               const int32_t *sq, float *lg) {
    int32_t rows[128];
    for (int i = 0; i < n; i++) {
        rows[i] = i;
        if (xds_kv_seq_reserve(kv, sq[i], pos[i] + 1) != XDS_OK) return 0;
    }
    xds_batch b = {n, tok, pos, sq};
    xds_status s = xds_model_forward(ctx, &b, rows, n, lg);
    CHECK_MSG(s == XDS_OK, "forward: %s", xds_err_msg());
    return s == XDS_OK;
}

static void check_model(const char *path, const char *name, int n_prompt_max, int quantize) {
    xds_model *m = NULL;
    xds_model_opts mo = {.quantize = quantize};
    xds_status s = xds_model_load(path, &mo, &m);
    CHECK_MSG(s == XDS_OK, "%s: load: %s", name, xds_err_msg());
    if (s != XDS_OK) return;
    int V = m->cfg.n_vocab;
    xds_kv_cache *kv = NULL;
    xds_model_ctx *ctx = NULL;
    CHECK(xds_model_kv_cache_create(m, 1024, 4, 2 * NS, &kv) == XDS_OK);
    CHECK(xds_model_ctx_create(m, kv, 2, 128, &ctx) == XDS_OK);
    if (!kv || !ctx) goto out;
    seq_case sc[NS];
    int total = 0;
    for (int i = 0; i < NS; i++) {
        sc[i].n_prompt = 1 + (int)(rnd_u32() % (unsigned)n_prompt_max);
        if (i == 1) sc[i].n_prompt = 36 + (int)(rnd_u32() % 8u); /* a longer context: >= 9 KV blocks of 4 */
        sc[i].n_next = 3;
        for (int j = 0; j < MAXP; j++) sc[i].tok[j] = (int32_t)(rnd_u32() % (unsigned)V);
        total += sc[i].n_prompt + sc[i].n_next;
    }
    /* solo: slot i, one token per forward; logits of every position */
    float *solo = malloc(sizeof(float) * (size_t)total * V), *lg = malloc(sizeof(float) * 128 * (size_t)V);
    size_t off[NS];
    for (int i = 0, o = 0; i < NS; o += sc[i].n_prompt + sc[i].n_next, i++) {
        off[i] = (size_t)o;
        for (int p = 0; p < sc[i].n_prompt + sc[i].n_next; p++) {
            int32_t sq = i, pos = p;
            if (!fwd(ctx, kv, 1, &sc[i].tok[p], &pos, &sq, solo + (off[i] + p) * V)) goto out2;
        }
    }
    /* together: slots NS + i. Step 0: every prompt but the last token of
     * sequence 0 in one batch; step 1: sequence 0's last prompt token + next
     * token (a 2-token chunk) with one decode token of each other sequence;
     * steps 2..: one token per sequence while any is left. */
    int next[NS] = {0}, diff = 0, n_cmp = 0;
    for (int step = 0;; step++) {
        int32_t tok[128], pos[128], sq[128], who[128];
        int n = 0;
        for (int i = 0; i < NS; i++) {
            int len = sc[i].n_prompt + sc[i].n_next, take;
            if (step == 0) take = sc[i].n_prompt - (i == 0);
            else if (step == 1 && i == 0) take = 2;
            else take = 1;
            if (take > len - next[i]) take = len - next[i];
            for (int j = 0; j < take; j++, n++) {
                tok[n] = sc[i].tok[next[i] + j], pos[n] = next[i] + j, sq[n] = NS + i, who[n] = i;
            }
            next[i] += take;
        }
        if (n == 0) break;
        if (!fwd(ctx, kv, n, tok, pos, sq, lg)) goto out2;
        for (int r = 0; r < n; r++, n_cmp++)
            if (memcmp(lg + (size_t)r * V, solo + (off[who[r]] + pos[r]) * V, sizeof(float) * V)) {
                if (!diff) printf("  %s: seq %d pos %d (batch of %d) differs from solo\n", name, who[r], pos[r], n);
                diff++;
            }
    }
    CHECK_MSG(diff == 0 && n_cmp == total, "%s: %d of %d token rows differ between batched and solo (%d compared)",
              name, diff, total, n_cmp);
    printf("%s: %d token rows compared (level %s)\n", name, n_cmp, xds_cpu_level_name(xds_cpu_level_get()));
out2:
    free(solo);
    free(lg);
out:
    xds_model_ctx_free(ctx);
    xds_kv_cache_free(kv);
    xds_model_free(m);
}

static void check_dir(const char *dir, int n_prompt_max, int quantize) {
    DIR *d = opendir(dir);
    CHECK_MSG(d != NULL, "fixtures %s missing", dir);
    if (!d) return;
    struct dirent *e;
    char names[32][128];
    int n = 0;
    while ((e = readdir(d)) && n < 32)
        if (e->d_name[0] != '.' && strlen(e->d_name) < 128) strcpy(names[n++], e->d_name);
    closedir(d);
    CHECK_MSG(n > 0, "no fixtures in %s", dir);
    for (int i = 0; i < n; i++) {
        char path[4352];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        check_model(path, names[i], n_prompt_max, quantize);
    }
}

int main(void) {
    test_rng_seed(0x2545f4914f6cdd1dull); /* the data these checks were written with */
    test_attn_paths();
    check_dir(XDS_SOURCE_DIR "/tests/data/oracle/tiny", 12, XDS_QUANTIZE_NONE);
    check_dir(XDS_SOURCE_DIR "/tests/data/oracle/moe", 12, XDS_QUANTIZE_NONE);
    check_dir(XDS_SOURCE_DIR "/tests/data/oracle/moe", 12, XDS_QUANTIZE_W8A8);
    const char *mp = getenv("XDS_TEST_MODEL");
    if (mp && *mp) {
        check_model(mp, "SmolLM2", getenv("XDS_SANITIZED") ? 4 : 10, XDS_QUANTIZE_NONE);
        check_model(mp, "SmolLM2 w8a8", getenv("XDS_SANITIZED") ? 4 : 10, XDS_QUANTIZE_W8A8);
    }
    else TEST_SKIP("SmolLM2: XDS_TEST_MODEL not set");
    TEST_MAIN_END();
}
