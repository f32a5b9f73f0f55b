/*
 * generate.c — `xds generate`: tokenize a prompt (BOS when the tokenizer asks
 * for it), prefill it as one matrix-matrix pass per chunk, then sample and
 * stream tokens to stdout until an end-of-generation token or -n tokens.
 * Speed figures (prefill and decode tokens/s) go to stderr unless --quiet.
 * Every error is one line "xds generate: error: ..." and exit status 1.
 */
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/gen_common.h"

int cli_generate(int argc, char **argv) {
    gen_opts o;
    int r = gen_parse_args(argc, argv, 0, &o);
    if (r) return r == 2 ? 0 : 1;
    gen_session s;
    if (gen_session_open(&s, "generate", &o)) return 1;
    int32_t *ids = NULL;
    size_t n = 0;
    xds_status st = xds_tokenizer_encode(s.tok, o.prompt, strlen(o.prompt), 1, &ids, &n);
    if (st != XDS_OK) {
        fprintf(stderr, "xds generate: error: prompt: %s\n", xds_err_msg());
        gen_session_close(&s);
        return 1;
    }
    int32_t bos = xds_tokenizer_bos(s.tok);
    if (!o.no_bos && bos >= 0 && xds_tokenizer_add_bos(s.tok) && !(n > 0 && ids[0] == bos)) {
        int32_t *t = realloc(ids, sizeof(int32_t) * (n + 1));
        if (!t) {
            free(ids);
            gen_session_close(&s);
            fprintf(stderr, "xds generate: error: out of memory\n");
            return 1;
        }
        ids = t;
        memmove(ids + 1, ids, sizeof(int32_t) * n);
        ids[0] = bos;
        n++;
    }
    int rc = gen_session_feed(&s, ids, (int)n);
    if (!rc && !o.quiet && o.sp.temp > 0) fprintf(stderr, "seed: %llu\n", (unsigned long long)o.sp.seed);
    if (!rc) rc = gen_session_generate(&s, o.n_predict, !o.raw, stdout, NULL, NULL);
    if (!rc) {
        fputc('\n', stdout);
        fflush(stdout);
        if (!o.quiet) gen_print_speed(&s);
    }
    free(ids);
    gen_session_close(&s);
    return rc ? 1 : 0;
}
