/*
 * eplb.c — `xds eplb-plan`: plan redundant experts and their placement
 * (deploy/eplb.h) for a load matrix read from a file (--load) or drawn with
 * the paper's skew (--synthetic E,L), and print the plan with the predicted
 * max/mean worker load before (contiguous blocks, no replicas) and after.
 * --json for scripts (bench/eplb_compare.py). Errors: one line
 * "xds eplb-plan: error: ..." and exit status 1 (bad input: the file, the
 * budget, the worker count); usage errors (a missing or unparsable option)
 * exit 2.
 */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "deploy/eplb.h"

#define CMD "xds eplb-plan"

static void usage(FILE *f) {
    fprintf(f,
            "usage: " CMD " (--load FILE | --synthetic E,L [--seed N] [--hot X] [--above F] [--tokens T])\n"
            "                     --workers W [--slots S] [--json] [--save-load FILE] [--placements]\n"
            "\n"
            "Choose redundant experts and place them on W expert workers with S redundant slots\n"
            "each (ceil(E/W) + S slots per worker, default S = 1), per MoE layer, and print the\n"
            "predicted max/mean worker load before (contiguous blocks, no replicas) and after.\n"
            "--load FILE: a JSON array of per-layer arrays of per-expert token counts.\n"
            "--synthetic E,L: E experts, L layers drawn with the paper's skew: --above F of the\n"
            "experts above the mean (default 0.2), the hottest --hot X times the mean (default 30),\n"
            "--tokens T token-expert pairs per layer (default 1048576), --seed N (default 1).\n"
            "--save-load FILE: write the load matrix used (a load file). --placements: print\n"
            "every layer's placement (workers separated by ';'). --json: the whole plan as JSON.\n");
}

static int parse_int(const char *opt, const char *s, long lo, long hi, long *v) {
    char *end;
    long x = strtol(s, &end, 10);
    if (end == s || *end) {
        fprintf(stderr, CMD ": error: %s %s: expected an integer\n", opt, s);
        return 2;
    }
    if (x < lo || x > hi) {
        fprintf(stderr, CMD ": error: %s %s: out of range %ld..%ld\n", opt, s, lo, hi);
        return 1;
    }
    *v = x;
    return 0;
}

static json_t *jdoubles(const double *v, int n) {
    json_t *a = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(a, json_real(v[i]));
    return a;
}

/* worst layer of loads (n_layer x n_workers): its max/mean and index */
static double worst_layer(const double *loads, int n_layer, int n_workers, int *which) {
    double worst = 0;
    *which = 0;
    for (int l = 0; l < n_layer; l++) {
        double r = xds_eplb_max_mean(loads + (size_t)l * n_workers, n_workers);
        if (r > worst) worst = r, *which = l;
    }
    return worst;
}

static json_t *side_json(const double *loads, int n_layer, int n_workers) {
    int wl;
    double worst = worst_layer(loads, n_layer, n_workers, &wl);
    json_t *per = json_array();
    for (int l = 0; l < n_layer; l++)
        json_array_append_new(per, json_real(xds_eplb_max_mean(loads + (size_t)l * n_workers, n_workers)));
    return json_pack("{s:f, s:f, s:i, s:o}", "max_mean", xds_eplb_max_mean_total(loads, n_layer, n_workers),
                     "worst_layer_max_mean", worst, "worst_layer", wl, "per_layer", per);
}

static int print_json(const xds_eplb_load *ld, const xds_eplb_plan *p, double hot, double above) {
    json_t *layers = json_array();
    for (int l = 0; l < p->n_layer; l++) {
        const xds_deploy_placement *pl = &p->layer[l];
        json_t *workers = json_array(), *reps = json_array();
        for (int w = 0; w < pl->n_workers; w++) {
            json_t *slots = json_array();
            for (int j = 0; j < pl->n_local[w]; j++)
                json_array_append_new(slots, json_integer(pl->slot_expert[w * pl->max_local + j]));
            json_array_append_new(workers, slots);
        }
        for (int e = 0; e < pl->n_expert; e++) json_array_append_new(reps, json_integer(pl->n_rep[e]));
        char *text = xds_deploy_placement_format(pl);
        json_array_append_new(
            layers, json_pack("{s:i, s:f, s:f, s:o, s:o, s:o, s:s}", "layer", l, "before_max_mean",
                              xds_eplb_max_mean(p->before + (size_t)l * p->n_workers, p->n_workers),
                              "after_max_mean", xds_eplb_max_mean(p->after + (size_t)l * p->n_workers, p->n_workers),
                              "worker_load", jdoubles(p->after + (size_t)l * p->n_workers, p->n_workers), "workers",
                              workers, "replicas", reps, "placement", text ? text : ""));
        free(text);
    }
    json_t *root = json_pack(
        "{s:i, s:i, s:i, s:i, s:i, s:i, s:{s:f, s:f}, s:o, s:o, s:o}", "experts", ld->n_expert, "layers", ld->n_layer,
        "workers", p->n_workers, "redundant_slots", p->redundant, "slots_per_worker", p->slots, "physical_slots",
        p->slots * p->n_workers, "skew", "hot", hot, "above", above, "before",
        side_json(p->before, p->n_layer, p->n_workers), "after", side_json(p->after, p->n_layer, p->n_workers),
        "plan", layers);
    if (!root) {
        fprintf(stderr, CMD ": error: out of memory\n");
        return 1;
    }
    char *s = json_dumps(root, JSON_COMPACT | JSON_REAL_PRECISION(10));
    json_decref(root);
    if (!s) {
        fprintf(stderr, CMD ": error: out of memory\n");
        return 1;
    }
    puts(s);
    free(s);
    return 0;
}

static void print_text(const xds_eplb_load *ld, const xds_eplb_plan *p, double hot, double above, int placements) {
    int W = p->n_workers;
    printf("%d layers x %d experts (hottest %.1fx the mean, %.0f%% above the mean, averaged over layers)\n",
           ld->n_layer, ld->n_expert, hot, 100 * above);
    printf("%d expert workers x %d slots (%d + %d redundant) = %d physical experts\n", W, p->slots,
           p->slots - p->redundant, p->redundant, W * p->slots);
    for (int l = 0; l < p->n_layer; l++) {
        const xds_deploy_placement *pl = &p->layer[l];
        printf("layer %3d  max/mean %6.3f -> %6.3f  replicated:", l,
               xds_eplb_max_mean(p->before + (size_t)l * W, W), xds_eplb_max_mean(p->after + (size_t)l * W, W));
        int shown = 0, more = 0;
        for (int e = 0; e < pl->n_expert; e++)
            if (pl->n_rep[e] > 1) {
                if (shown < 8) printf(" %dx%d", e, pl->n_rep[e]), shown++;
                else more++;
            }
        if (!shown) printf(" none");
        if (more) printf(" (+%d more)", more);
        printf("\n");
        if (placements) {
            char *t = xds_deploy_placement_format(pl);
            printf("  placement %s\n", t ? t : "(out of memory)");
            free(t);
        }
    }
    int wb, wa;
    double rb = worst_layer(p->before, p->n_layer, W, &wb), ra = worst_layer(p->after, p->n_layer, W, &wa);
    printf("max/mean worker load (sum over layers of the hottest worker / sum of the mean):\n");
    printf("  before %.3f (worst layer %d: %.3f)\n", xds_eplb_max_mean_total(p->before, p->n_layer, W), wb, rb);
    printf("  after  %.3f (worst layer %d: %.3f)\n", xds_eplb_max_mean_total(p->after, p->n_layer, W), wa, ra);
}

int cli_eplb_plan(int argc, char **argv) {
    const char *load_path = NULL, *synth = NULL, *save = NULL;
    long W = 0, S = 1;
    int json = 0, placements = 0, have_w = 0;
    unsigned long long seed = 1;
    xds_eplb_skew skew = xds_eplb_skew_default();
    static const struct option lo[] = {{"load", 1, 0, 'l'},      {"synthetic", 1, 0, 'y'}, {"workers", 1, 0, 'w'},
                                       {"slots", 1, 0, 's'},     {"json", 0, 0, 'j'},      {"seed", 1, 0, 'S'},
                                       {"hot", 1, 0, 'H'},       {"above", 1, 0, 'A'},     {"tokens", 1, 0, 'T'},
                                       {"save-load", 1, 0, 'o'}, {"placements", 0, 0, 'p'}, {"help", 0, 0, 'h'},
                                       {0, 0, 0, 0}};
    int c, rc;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        char *end;
        long v;
        switch (c) {
        case 'l': load_path = optarg; break;
        case 'y': synth = optarg; break;
        case 'o': save = optarg; break;
        case 'j': json = 1; break;
        case 'p': placements = 1; break;
        case 'w':
            if ((rc = parse_int("--workers", optarg, 1, XDS_DEPLOY_MAX_WORKERS, &W))) return rc;
            have_w = 1;
            break;
        case 's':
            if ((rc = parse_int("--slots", optarg, 0, XDS_EPLB_MAX_EXPERTS, &S))) return rc;
            break;
        case 'T':
            if ((rc = parse_int("--tokens", optarg, 1, 1000000000000L, &v))) return rc;
            skew.tokens = v;
            break;
        case 'S':
            seed = strtoull(optarg, &end, 10);
            if (end == optarg || *end) {
                fprintf(stderr, CMD ": error: --seed %s: expected an integer\n", optarg);
                return 2;
            }
            break;
        case 'H':
        case 'A': {
            double x = strtod(optarg, &end);
            if (end == optarg || *end) {
                fprintf(stderr, CMD ": error: --%s %s: expected a number\n", c == 'H' ? "hot" : "above", optarg);
                return 2;
            }
            if (c == 'H') skew.hot = x;
            else skew.above = x;
            break;
        }
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc || !have_w || !!load_path == !!synth) {
        if (optind != argc) fprintf(stderr, CMD ": error: unexpected argument '%s'\n", argv[optind]);
        else if (!have_w) fprintf(stderr, CMD ": error: --workers W is required\n");
        else fprintf(stderr, CMD ": error: give exactly one of --load FILE and --synthetic E,L\n");
        usage(stderr);
        return 2;
    }
    xds_eplb_load ld;
    xds_status st;
    if (load_path) {
        st = xds_eplb_load_read(load_path, &ld);
    } else {
        char *end;
        long E = strtol(synth, &end, 10), L = -1;
        if (end != synth && *end == ',') {
            char *e2 = end + 1;
            L = strtol(e2, &end, 10);
            if (end == e2) L = -1;
        }
        if (L < 0 || *end) {
            fprintf(stderr, CMD ": error: --synthetic %s: expected E,L (experts, layers)\n", synth);
            return 2;
        }
        if (E > XDS_EPLB_MAX_EXPERTS) E = XDS_EPLB_MAX_EXPERTS + 1; /* no int overflow; the range error below */
        if (L > XDS_EPLB_MAX_LAYERS) L = XDS_EPLB_MAX_LAYERS + 1;
        st = xds_eplb_synthetic((int)E, (int)L, seed, &skew, &ld);
    }
    if (st != XDS_OK) {
        fprintf(stderr, CMD ": error: %s\n", xds_err_msg());
        return 1;
    }
    if (save) {
        char *text = xds_eplb_load_format(&ld);
        FILE *f = text ? fopen(save, "w") : NULL;
        int ok = f && fputs(text, f) >= 0;
        if (f && fclose(f) != 0) ok = 0;
        free(text);
        if (!ok) {
            fprintf(stderr, CMD ": error: --save-load %s: cannot write\n", save);
            xds_eplb_load_free(&ld);
            return 1;
        }
    }
    xds_eplb_plan plan;
    st = xds_eplb_plan_make(&ld, (int)W, (int)S, &plan);
    if (st != XDS_OK) {
        fprintf(stderr, CMD ": error: %s\n", xds_err_msg());
        xds_eplb_load_free(&ld);
        return 1;
    }
    double hot = 0, above = 0;
    for (int l = 0; l < ld.n_layer; l++) {
        double h, a;
        xds_eplb_layer_skew(ld.count + (size_t)l * ld.n_expert, ld.n_expert, &h, &a);
        hot += h / ld.n_layer, above += a / ld.n_layer;
    }
    rc = 0;
    if (json) rc = print_json(&ld, &plan, hot, above);
    else print_text(&ld, &plan, hot, above, placements);
    xds_eplb_plan_free(&plan);
    xds_eplb_load_free(&ld);
    return rc;
}
