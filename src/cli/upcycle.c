/*
 * upcycle.c — `xds upcycle -m DENSE.gguf -o OUT.gguf [-E 8] [-k 2] [--seed N]`:
 * exact MoE upcycling of a dense llama GGUF (model/upcycle.h): every FFN
 * copied into E identical experts (the same quantized bytes), a random
 * router, top-k with normalized weights. The result's greedy output equals
 * the dense model's for any routing. Also `xds bench-model` (random-weight
 * MoE benchmark checkpoints with real layer shapes, model/upcycle.h). Errors: one line
 * "xds upcycle: error: ..." and exit status 1; usage errors exit 2.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "model/upcycle.h"

static void usage(FILE *f) {
    fprintf(f, "usage: xds upcycle -m DENSE.gguf -o OUT.gguf [-E EXPERTS] [-k TOPK] [--seed N] [--perturb S]\n"
               "\n"
               "Turn a dense llama GGUF into an exact mixture of experts: each FFN becomes EXPERTS\n"
               "identical experts (default 8), with a random router and top-TOPK (default 2) routing\n"
               "with normalized weights, so the output equals the dense model's for any routing.\n"
               "--perturb S (0 <= S < 1, default 0): scale expert e's down projection by\n"
               "1 + S (2e / (EXPERTS - 1) - 1), from 1 - S to 1 + S, so that the output depends on\n"
               "which experts each token is routed to (recorded as xds.upcycle.down_scale).\n");
}

int cli_upcycle(int argc, char **argv) {
    const char *in = NULL, *out = NULL;
    int E = 8, k = 2;
    unsigned long long seed = 1;
    float perturb = 0;
    static const struct option lo[] = {{"model", 1, 0, 'm'}, {"output", 1, 0, 'o'}, {"experts", 1, 0, 'E'},
                                       {"topk", 1, 0, 'k'},  {"seed", 1, 0, 's'},   {"perturb", 1, 0, 'P'},
                                       {"help", 0, 0, 'h'},  {0, 0, 0, 0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:o:E:k:h", lo, NULL)) != -1) {
        char *end;
        switch (c) {
        case 'm': in = optarg; break;
        case 'o': out = optarg; break;
        case 'E':
        case 'k': {
            long v = strtol(optarg, &end, 10);
            if (*end || v < 1 || v > 256) {
                fprintf(stderr, "xds upcycle: error: -%c %s: expected an integer in 1..256\n", c, optarg);
                return 2;
            }
            if (c == 'E') E = (int)v;
            else k = (int)v;
            break;
        }
        case 's':
            seed = strtoull(optarg, &end, 10);
            if (*end) {
                fprintf(stderr, "xds upcycle: error: --seed %s: expected an integer\n", optarg);
                return 2;
            }
            break;
        case 'P': {
            double v = strtod(optarg, &end);
            if (end == optarg || *end || !(v >= 0 && v < 1)) {
                fprintf(stderr, "xds upcycle: error: --perturb %s: expected a number in [0, 1)\n", optarg);
                return 2;
            }
            perturb = (float)v;
            break;
        }
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!in || !out || optind != argc) {
        usage(stderr);
        return 2;
    }
    xds_status s = xds_model_upcycle_perturbed(in, out, E, k, seed, perturb);
    if (s != XDS_OK) {
        fprintf(stderr, "xds upcycle: error: %s\n", xds_err_msg());
        return 1;
    }
    if (perturb > 0)
        printf("wrote %s: %d experts per layer (down projections scaled by 1 -/+ %g), top-%d\n", out, E, perturb, k);
    else
        printf("wrote %s: %d experts per layer (identical copies), top-%d\n", out, E, k);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* `xds bench-model`: random-weight MoE checkpoints with real layer shapes.   */

static void usage_bm(FILE *f) {
    fprintf(f, "usage: xds bench-model --preset qwen3-30b-a3b|deepseek-v3|qwen3-tiny [-o OUT.gguf] [--layers N]\n"
               "                       [--experts N] [--type q8_0|q4_0|q4_1|f16|bf16] [--seed N]\n"
               "\n"
               "Write a random-weight GGUF with the layer shapes of a real MoE release, quantized like\n"
               "the released GGUFs (default q8_0), with fewer layers (and, for deepseek-v3, fewer\n"
               "experts) so it fits a 24 GiB machine: qwen3-30b-a3b 12 of 48 layers (all 128\n"
               "experts), deepseek-v3 4 of 61 layers (1 dense + 3 MoE) with 32 of 256 experts;\n"
               "qwen3-tiny: the qwen3moe layout at test sizes (2 layers, 8 experts, hidden 256).\n"
               "Default OUT: ~/.cache/xds/bench/<preset>-<layers>L-<experts>E-<type>.gguf\n"
               "(an existing file is kept). For `xds bench -m OUT.gguf`.\n");
}

int cli_bench_model(int argc, char **argv) {
    const char *preset = NULL, *out = NULL, *type_s = "q8_0";
    int layers = 0, experts = 0;
    unsigned long long seed = 1;
    static const struct option lo[] = {{"preset", 1, 0, 'p'}, {"output", 1, 0, 'o'}, {"layers", 1, 0, 'L'},
                                       {"experts", 1, 0, 'E'}, {"type", 1, 0, 'T'},  {"seed", 1, 0, 's'},
                                       {"help", 0, 0, 'h'},    {0, 0, 0, 0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "p:o:h", lo, NULL)) != -1) {
        char *end;
        switch (c) {
        case 'p': preset = optarg; break;
        case 'o': out = optarg; break;
        case 'T': type_s = optarg; break;
        case 'L':
        case 'E': {
            long v = strtol(optarg, &end, 10);
            if (*end || v < 1 || v > 512) {
                fprintf(stderr, "xds bench-model: error: %s: expected an integer in 1..512\n", optarg);
                return 2;
            }
            if (c == 'L') layers = (int)v;
            else experts = (int)v;
            break;
        }
        case 's': seed = strtoull(optarg, &end, 10); break;
        case 'h': usage_bm(stdout); return 0;
        default: usage_bm(stderr); return 2;
        }
    }
    if (!preset || optind != argc) {
        usage_bm(stderr);
        return 2;
    }
    xds_dtype type = XDS_DTYPE_COUNT;
    for (int t = 0; t < XDS_DTYPE_COUNT; t++)
        if (!strcmp(type_s, xds_dtype_name((xds_dtype)t))) type = (xds_dtype)t;
    if (type == XDS_DTYPE_COUNT) {
        fprintf(stderr, "xds bench-model: error: unknown type '%s'\n", type_s);
        return 2;
    }
    char path[1024];
    int ds = !strcmp(preset, "deepseek-v3");
    if (!out) {
        const char *home = getenv("HOME");
        char dir[900];
        snprintf(dir, sizeof dir, "%s/.cache/xds/bench", home && *home ? home : "/tmp");
        char cmd[1000];
        snprintf(cmd, sizeof cmd, "%s/.cache", home && *home ? home : "/tmp");
        mkdir(cmd, 0755);
        snprintf(cmd, sizeof cmd, "%s/.cache/xds", home && *home ? home : "/tmp");
        mkdir(cmd, 0755);
        mkdir(dir, 0755);
        snprintf(path, sizeof path, "%s/%s-%dL-%dE-%s.gguf", dir, preset, layers ? layers : (ds ? 4 : 12),
                 experts ? experts : (ds ? 32 : 128), type_s);
        out = path;
        struct stat st;
        if (stat(out, &st) == 0) {
            printf("%s\n", out);
            return 0;
        }
    }
    xds_status s = xds_model_bench_write(preset, out, layers, experts, type, seed);
    if (s != XDS_OK) {
        fprintf(stderr, "xds bench-model: error: %s\n", xds_err_msg());
        return 1;
    }
    printf("%s\n", out);
    return 0;
}
