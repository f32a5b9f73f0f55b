/* main.c — `xds` entry point: dispatch to a subcommand. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "deploy/worker.h"

typedef struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} cli_cmd;

static const cli_cmd cmds[] = {
    {"generate", cli_generate, "generate text from a prompt"},
    {"chat", cli_chat, "interactive chat using the model's chat template"},
    {"inspect", cli_inspect, "print a model's architecture, hyper-parameters and tensors"},
    {"bench", cli_bench, "prefill / decode speed against the measured memory bandwidth"},
    {"serve", cli_serve, "OpenAI-compatible HTTP server (continuous batching engine)"},
    {"bench-serve", cli_bench_serve, "load generator for any OpenAI-compatible server"},
    {"upcycle", cli_upcycle, "turn a dense llama GGUF into an exact mixture of experts"},
    {"worker", xds_deploy_worker_main, "internal: one process of a disaggregated deployment (started by serve)"},
    {"bench-model", cli_bench_model, "write a random-weight MoE benchmark model with real layer shapes"},
    {"eplb-plan", cli_eplb_plan, "choose redundant experts and their placement for a load matrix (EPLB)"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: xds <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        fprintf(f, "  %-10s %s\n", cmds[i].name, cmds[i].help);
    fprintf(f, "\nRun 'xds <command> --help' for a command's options.\n");
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        if (!strcmp(argv[1], cmds[i].name)) return cmds[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "xds: error: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
