/*
 * fuzz_hf_config.c — libFuzzer target for the Hugging Face directory reader
 * (format/hfdir.c) and the config.json reader of the model loader
 * (model/model.c, model/arch_moe.c), through xds_model_load as `xds` calls
 * it. Input: byte 0 picks the weights (one of the small oracle models under
 * tests/data/oracle/{tiny,moe}, so a config that matches them loads whole),
 * the rest is config.json, optionally followed by a NUL byte and a
 * model.safetensors.index.json — then the weights sit in a shard named
 * shard.safetensors and the index decides what the loader sees. A failure
 * must leave one non-empty message line; a model that loads runs one forward
 * pass of two tokens, so a configuration the checks let through but the
 * kernels cannot handle shows up under ASan/UBSan.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/model.h"

#define MAX_W 64

static char tmp_root[64];
static int n_w;
static char *w_src[MAX_W]; /* the weights files */

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void scan(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)) && n_w < MAX_W) {
        if (e->d_name[0] == '.') continue;
        char p[1024];
        snprintf(p, sizeof p, "%s/%s/model.safetensors", dir, e->d_name);
        if (access(p, R_OK) == 0) w_src[n_w++] = strdup(p);
    }
    closedir(d);
}

static void cleanup(void) {
    char p[256];
    for (int k = 0; k < n_w; k++)
        for (int sh = 0; sh < 2; sh++) {
            static const char *const files[] = {"model.safetensors", "shard.safetensors", "config.json",
                                                "model.safetensors.index.json"};
            for (int f = 0; f < 4; f++) {
                snprintf(p, sizeof p, "%s/%d%s/%s", tmp_root, k, sh ? "s" : "", files[f]);
                unlink(p);
            }
            snprintf(p, sizeof p, "%s/%d%s", tmp_root, k, sh ? "s" : "");
            rmdir(p);
        }
    rmdir(tmp_root);
}

/* Per weights file k: <tmp>/k/model.safetensors and <tmp>/ks/shard.safetensors, links to it. */
static void setup(void) {
    scan(XDS_SOURCE_DIR "/tests/data/oracle/tiny");
    scan(XDS_SOURCE_DIR "/tests/data/oracle/moe");
    if (!n_w) {
        fprintf(stderr, "fuzz_hf_config: no weights under %s/tests/data/oracle\n", XDS_SOURCE_DIR);
        abort();
    }
    qsort(w_src, n_w, sizeof *w_src, cmp_str);
    strcpy(tmp_root, "/tmp/xds-fuzz-hf-XXXXXX");
    if (!mkdtemp(tmp_root)) abort();
    atexit(cleanup);
    char p[256];
    for (int k = 0; k < n_w; k++)
        for (int sh = 0; sh < 2; sh++) {
            snprintf(p, sizeof p, "%s/%d%s", tmp_root, k, sh ? "s" : "");
            if (mkdir(p, 0700)) abort();
            snprintf(p, sizeof p, "%s/%d%s/%s", tmp_root, k, sh ? "s" : "", sh ? "shard.safetensors" : "model.safetensors");
            if (symlink(w_src[k], p)) abort();
        }
}

static void write_file(const char *path, const void *d, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (n && fwrite(d, 1, n, f) != n) abort();
    if (fclose(f)) abort();
}

static void run_model(xds_model *m) {
    const xds_model_config *c = &m->cfg;
    if (c->n_vocab <= 0 || c->n_embd <= 0 || c->n_layer <= 0 || c->head_dim <= 0 || c->n_head <= 0 ||
        c->n_head_kv <= 0 || c->rope_dim < 0 || c->rope_dim > c->head_dim)
        __builtin_trap();
    xds_kv_cache *kv;
    if (xds_model_kv_cache_create(m, 16, 16, 1, &kv) != XDS_OK) return;
    xds_model_ctx *ctx;
    if (xds_model_ctx_create(m, kv, 1, 2, &ctx) == XDS_OK) {
        if (xds_kv_seq_reserve(kv, 0, 2) == XDS_OK) {
            int32_t tok[2] = {0, c->n_vocab - 1}, pos[2] = {0, 1}, seq[2] = {0, 0}, row = 1;
            xds_batch b = {.n_tok = 2, .tokens = tok, .pos = pos, .seq = seq};
            float *logits = malloc((size_t)c->n_vocab * sizeof *logits);
            if (logits && xds_model_forward(ctx, &b, &row, 1, logits) == XDS_OK) {
                volatile float s = logits[0] + logits[c->n_vocab - 1];
                (void)s;
            }
            free(logits);
        }
        xds_model_ctx_free(ctx);
    }
    xds_kv_cache_free(kv);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!n_w) setup();
    if (size < 1) return 0;
    int k = data[0] % n_w;
    const uint8_t *cfg = data + 1;
    const uint8_t *nul = memchr(cfg, 0, size - 1);
    size_t cfg_len = nul ? (size_t)(nul - cfg) : size - 1;
    char dir[128], p[256];
    snprintf(dir, sizeof dir, "%s/%d%s", tmp_root, k, nul ? "s" : "");
    snprintf(p, sizeof p, "%s/config.json", dir);
    write_file(p, cfg, cfg_len);
    if (nul) {
        snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
        write_file(p, nul + 1, size - 1 - cfg_len - 1);
    }
    xds_model *m;
    static int verbose = -1;
    if (verbose < 0) verbose = getenv("XDS_FUZZ_VERBOSE") != NULL;
    if (xds_model_load(dir, NULL, &m) != XDS_OK) {
        const char *msg = xds_err_msg(); /* errors are one non-empty line */
        if (verbose) fprintf(stderr, "load: %s\n", msg);
        if (!msg[0] || strchr(msg, '\n')) __builtin_trap();
        return 0;
    }
    if (verbose) fprintf(stderr, "load: ok (%s)\n", w_src[k]);
    run_model(m);
    xds_model_free(m);
    return 0;
}
