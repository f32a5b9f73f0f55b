/*
 * upcycle.c — `xds upcycle -m DENSE.gguf -o OUT.gguf [-E 8] [-k 2] [--seed N]`:
 * exact MoE upcycling of a dense llama GGUF (model/upcycle.h): every FFN
 * copied into E identical experts (the same quantized bytes), a random
 * router, top-k with normalized weights. The result's greedy output equals
 * the dense model's for any routing. Errors: one line
 * "xds upcycle: error: ..." and exit status 1; usage errors exit 2.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli/cli.h"
#include "model/upcycle.h"

static void usage(FILE *f) {
    fprintf(f, "usage: xds upcycle -m DENSE.gguf -o OUT.gguf [-E EXPERTS] [-k TOPK] [--seed N]\n"
               "\n"
               "Turn a dense llama GGUF into an exact mixture of experts: each FFN becomes EXPERTS\n"
               "identical experts (default 8), with a random router and top-TOPK (default 2) routing\n"
               "with normalized weights, so the output equals the dense model's for any routing.\n");
}

int cli_upcycle(int argc, char **argv) {
    const char *in = NULL, *out = NULL;
    int E = 8, k = 2;
    unsigned long long seed = 1;
    static const struct option lo[] = {{"model", 1, 0, 'm'}, {"output", 1, 0, 'o'}, {"experts", 1, 0, 'E'},
                                       {"topk", 1, 0, 'k'},  {"seed", 1, 0, 's'},   {"help", 0, 0, 'h'},
                                       {0, 0, 0, 0}};
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
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!in || !out || optind != argc) {
        usage(stderr);
        return 2;
    }
    xds_status s = xds_model_upcycle(in, out, E, k, seed);
    if (s != XDS_OK) {
        fprintf(stderr, "xds upcycle: error: %s\n", xds_err_msg());
        return 1;
    }
    printf("wrote %s: %d experts per layer (identical copies), top-%d\n", out, E, k);
    return 0;
}
