/*
 * chat.c — `xds chat`: an interactive chat. Each stdin line is a user turn;
 * the whole conversation is rendered with the model's chat template
 * (xds_chat_render, generation prompt added), tokenized, and only the tokens
 * after the longest prefix already in the KV cache are prefilled; the answer
 * streams to stdout. Works with piped stdin (EOF ends the session); the "> "
 * prompt is shown only when stdin is a terminal.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/gen_common.h"

typedef struct {
    xds_chat_msg *v;
    char **owned; /* content strings we allocated */
    size_t n, cap;
} conv;

static int conv_add(conv *c, const char *role, const char *content) {
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 8;
        xds_chat_msg *v = realloc(c->v, sizeof *v * cap);
        if (!v) return 1;
        c->v = v;
        char **o = realloc(c->owned, sizeof *o * cap);
        if (!o) return 1;
        c->owned = o;
        c->cap = cap;
    }
    char *dup = strdup(content);
    if (!dup) return 1;
    c->owned[c->n] = dup;
    c->v[c->n++] = (xds_chat_msg){role, dup};
    return 0;
}

static void conv_free(conv *c) {
    for (size_t i = 0; i < c->n; i++) free(c->owned[i]);
    free(c->v);
    free(c->owned);
}

int cli_chat(int argc, char **argv) {
    gen_opts o;
    int r = gen_parse_args(argc, argv, 1, &o);
    if (r) return r == 2 ? 0 : 1;
    gen_session s;
    if (gen_session_open(&s, "chat", &o)) return 1;
    if (xds_chat_family_of(s.tok) == XDS_CHAT_NONE) {
        fprintf(stderr, "xds chat: error: %s: the model has no chat template this build knows\n", o.model);
        gen_session_close(&s);
        return 1;
    }
    conv c = {0};
    int rc = 0, interactive = isatty(0);
    if (o.system && conv_add(&c, "system", o.system)) rc = 1;
    char *line = NULL;
    size_t cap = 0;
    while (!rc) {
        if (interactive) {
            fputs("> ", stdout);
            fflush(stdout);
        }
        ssize_t len = getline(&line, &cap, stdin);
        if (len < 0) break;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if (len == 0) continue;
        if (conv_add(&c, "user", line)) {
            rc = 1;
            fprintf(stderr, "xds chat: error: out of memory\n");
            break;
        }
        char *text = NULL;
        int32_t *ids = NULL;
        size_t n = 0;
        xds_status st = xds_chat_render(s.tok, c.v, c.n, 1, &text);
        if (st == XDS_OK) st = xds_tokenizer_encode(s.tok, text, strlen(text), 1, &ids, &n);
        free(text);
        if (st != XDS_OK) {
            fprintf(stderr, "xds chat: error: %s\n", xds_err_msg());
            free(ids);
            /* an invalid line (e.g. bad UTF-8) is dropped; the chat goes on */
            free(c.owned[--c.n]);
            if (!interactive) rc = 1;
            continue;
        }
        if (gen_session_feed(&s, ids, (int)n)) {
            free(ids);
            rc = 1;
            break;
        }
        free(ids);
        int32_t *gen = NULL;
        int n_gen = 0;
        rc = gen_session_generate(&s, o.n_predict, !o.raw, stdout, &gen, &n_gen);
        fputc('\n', stdout);
        fflush(stdout);
        char *answer = NULL;
        size_t alen = 0;
        if (!rc && xds_tokenizer_decode(s.tok, gen, n_gen, 1, &answer, &alen) == XDS_OK) {
            if (conv_add(&c, "assistant", answer)) rc = 1;
        } else if (!rc) {
            fprintf(stderr, "xds chat: error: %s\n", xds_err_msg());
            rc = 1;
        }
        free(answer);
        free(gen);
        if (!rc && !o.quiet) gen_print_speed(&s);
    }
    free(line);
    conv_free(&c);
    gen_session_close(&s);
    return rc ? 1 : 0;
}
