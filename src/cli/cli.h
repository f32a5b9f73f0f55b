/*
 * cli.h — subcommands of the `xds` binary. Each takes argc/argv after the
 * subcommand name (argv[0] is the subcommand) and returns the exit status.
 * Errors are printed as one line "xds <cmd>: error: ..." on stderr.
 */
#ifndef XDS_CLI_CLI_H
#define XDS_CLI_CLI_H

int cli_generate(int argc, char **argv);
int cli_chat(int argc, char **argv);
int cli_inspect(int argc, char **argv);
int cli_bench(int argc, char **argv);
int cli_serve(int argc, char **argv);
int cli_bench_serve(int argc, char **argv);
int cli_upcycle(int argc, char **argv);
int cli_bench_model(int argc, char **argv);
int cli_eplb_plan(int argc, char **argv);

#endif
