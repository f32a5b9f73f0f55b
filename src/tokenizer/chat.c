/*
 * chat.c — chat templates of the supported families, written in C (no Jinja
 * engine). Each renderer reproduces, for plain conversations (system / user /
 * assistant turns, tool results, generation prompt), exactly the text that
 * transformers' apply_chat_template renders from the family's template;
 * tests/data/tokenizer/chat.json holds the reference renders.
 *   ChatML (SmolLM2): optional default system prompt taken from the template.
 *   Qwen3: <think> blocks kept only after the last user query; optional empty
 *          think block when enable_thinking is false.
 *   DeepSeek-V3: BOS text, all system prompts joined first, <｜User｜> /
 *          <｜Assistant｜> turns ended by <｜end▁of▁sentence｜>.
 * Invariant: output is the concatenation of template literals and message
 * contents only; nothing is escaped or trimmed except where the template does.
 */
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tokenizer_internal.h"

typedef struct {
    char *s;
    size_t n, cap;
    int oom;
} sbuf;

static void put(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap * 2 : 1024;
        while (nc < b->n + n + 1) nc *= 2;
        char *ns = realloc(b->s, nc);
        if (!ns) { b->oom = 1; return; }
        b->s = ns;
        b->cap = nc;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}

static void puts_(sbuf *b, const char *s) { put(b, s, strlen(s)); }

/* ---- family detection --------------------------------------------------- */

#define DS_USER "<\xef\xbd\x9cUser\xef\xbd\x9c>"
#define DS_ASSISTANT "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>"
#define DS_EOS "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"
#define DS_OUTPUTS_BEGIN "<\xef\xbd\x9ctool\xe2\x96\x81outputs\xe2\x96\x81" "begin\xef\xbd\x9c>"
#define DS_OUTPUTS_END "<\xef\xbd\x9ctool\xe2\x96\x81outputs\xe2\x96\x81" "end\xef\xbd\x9c>"
#define DS_OUTPUT_BEGIN "<\xef\xbd\x9ctool\xe2\x96\x81output\xe2\x96\x81" "begin\xef\xbd\x9c>"
#define DS_OUTPUT_END "<\xef\xbd\x9ctool\xe2\x96\x81output\xe2\x96\x81" "end\xef\xbd\x9c>"

xds_chat_family xds_chat_family_of(const xds_tokenizer *t) {
    const char *tpl = t->chat_template;
    if (tpl) {
        if (strstr(tpl, DS_USER) && strstr(tpl, DS_ASSISTANT)) return XDS_CHAT_DEEPSEEK_V3;
        if (strstr(tpl, "<|im_start|>")) {
            if (strstr(tpl, "</think>") || strstr(tpl, "enable_thinking")) return XDS_CHAT_QWEN3;
            return XDS_CHAT_CHATML;
        }
        return XDS_CHAT_NONE;
    }
    return xds_tokenizer_find(t, "<|im_start|>") >= 0 ? XDS_CHAT_CHATML : XDS_CHAT_NONE;
}

/* The default system prompt of a ChatML template: the first string literal
 * of the form '<|im_start|>system\n...<|im_end|>' whose body is plain text
 * (SmolLM2: "You are a helpful AI assistant named SmolLM, trained by Hugging
 * Face"). Returns a malloc'ed string or NULL. */
static char *chatml_default_system(const char *tpl) {
    static const char head[] = "<|im_start|>system";
    for (const char *p = tpl ? strstr(tpl, head) : NULL; p; p = strstr(p + 1, head)) {
        const char *q = p + sizeof head - 1;
        if (*q == '\n') q++;
        else if (q[0] == '\\' && q[1] == 'n') q += 2;
        else continue;
        const char *e = strstr(q, "<|im_end|>");
        if (!e || e <= q) continue;
        int literal = 1;
        for (const char *c = q; c < e; c++)
            if (*c == '\'' || *c == '"' || *c == '{' || *c == '}') { literal = 0; break; }
        if (!literal) continue;
        char *out = malloc((size_t)(e - q) + 1);
        if (!out) return NULL;
        size_t o = 0;
        for (const char *c = q; c < e; c++) {
            if (c[0] == '\\' && c + 1 < e && c[1] == 'n') { out[o++] = '\n'; c++; }
            else out[o++] = *c;
        }
        out[o] = 0;
        return out;
    }
    return NULL;
}

/* ---- Python string helpers ---------------------------------------------- */

typedef struct { const char *s; size_t n; } span;

static span lstrip_nl(span x) { while (x.n && x.s[0] == '\n') { x.s++; x.n--; } return x; }
static span rstrip_nl(span x) { while (x.n && x.s[x.n - 1] == '\n') x.n--; return x; }

/* s.split(sep)[-1] and s.split(sep)[0] */
static span after_last(span x, const char *sep) {
    size_t l = strlen(sep);
    span r = x;
    for (size_t i = 0; i + l <= x.n; i++)
        if (!memcmp(x.s + i, sep, l)) { r.s = x.s + i + l; r.n = x.n - i - l; }
    return r;
}
static span before_first(span x, const char *sep) {
    size_t l = strlen(sep);
    for (size_t i = 0; i + l <= x.n; i++)
        if (!memcmp(x.s + i, sep, l)) { x.n = i; break; }
    return x;
}
static int contains(span x, const char *sep) { return before_first(x, sep).n != x.n; }
static int starts_with(const char *s, const char *p) { return !strncmp(s, p, strlen(p)); }
static int ends_with(const char *s, const char *p) {
    size_t a = strlen(s), b = strlen(p);
    return a >= b && !memcmp(s + a - b, p, b);
}

static int role_is(const xds_chat_msg *m, const char *r) { return !strcmp(m->role, r); }

/* ---- renderers ---------------------------------------------------------- */

static void render_chatml(const xds_tokenizer *t, const xds_chat_msg *m, size_t n, int gen, sbuf *b) {
    char *dflt = chatml_default_system(t->chat_template);
    for (size_t i = 0; i < n; i++) {
        if (i == 0 && dflt && !role_is(&m[0], "system")) {
            puts_(b, "<|im_start|>system\n");
            puts_(b, dflt);
            puts_(b, "<|im_end|>\n");
        }
        puts_(b, "<|im_start|>");
        puts_(b, m[i].role);
        puts_(b, "\n");
        puts_(b, m[i].content);
        puts_(b, "<|im_end|>\n");
    }
    if (gen) puts_(b, "<|im_start|>assistant\n");
    free(dflt);
}

static void render_qwen3(const xds_chat_msg *m, size_t n, int gen, const xds_chat_opts *o, sbuf *b) {
    if (n && role_is(&m[0], "system")) {
        puts_(b, "<|im_start|>system\n");
        puts_(b, m[0].content);
        puts_(b, "<|im_end|>\n");
    }
    /* index of the last user message that is not a wrapped tool response */
    size_t last_query = n ? n - 1 : 0;
    for (size_t k = n; k-- > 0;) {
        if (role_is(&m[k], "user") &&
            !(starts_with(m[k].content, "<tool_response>") && ends_with(m[k].content, "</tool_response>"))) {
            last_query = k;
            break;
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (role_is(&m[i], "user") || (role_is(&m[i], "system") && i != 0)) {
            puts_(b, "<|im_start|>");
            puts_(b, m[i].role);
            puts_(b, "\n");
            puts_(b, m[i].content);
            puts_(b, "<|im_end|>\n");
        } else if (role_is(&m[i], "assistant")) {
            span content = {m[i].content, strlen(m[i].content)}, reasoning = {"", 0};
            if (contains(content, "</think>")) {
                span full = content;
                content = lstrip_nl(after_last(full, "</think>"));
                reasoning = lstrip_nl(after_last(rstrip_nl(before_first(full, "</think>")), "<think>"));
            }
            puts_(b, "<|im_start|>assistant\n");
            if (i > last_query && (i + 1 == n || reasoning.n)) {
                span r = rstrip_nl(lstrip_nl(reasoning));
                puts_(b, "<think>\n");
                put(b, r.s, r.n);
                puts_(b, "\n</think>\n\n");
                span c = lstrip_nl(content);
                put(b, c.s, c.n);
            } else {
                put(b, content.s, content.n);
            }
            puts_(b, "<|im_end|>\n");
        } else if (role_is(&m[i], "tool")) {
            if (i == 0 || !role_is(&m[i - 1], "tool")) puts_(b, "<|im_start|>user");
            puts_(b, "\n<tool_response>\n");
            puts_(b, m[i].content);
            puts_(b, "\n</tool_response>");
            if (i + 1 == n || !role_is(&m[i + 1], "tool")) puts_(b, "<|im_end|>\n");
        }
    }
    if (gen) {
        puts_(b, "<|im_start|>assistant\n");
        if (o && o->enable_thinking == 0) puts_(b, "<think>\n\n</think>\n\n");
    }
}

static void render_deepseek_v3(const xds_tokenizer *t, const xds_chat_msg *m, size_t n, int gen, sbuf *b) {
    if (t->bos >= 0) put(b, t->arena + t->text_off[t->bos], t->text_len[t->bos]);
    int first_sp = 1;
    for (size_t i = 0; i < n; i++) {
        if (!role_is(&m[i], "system")) continue;
        if (!first_sp) puts_(b, "\n\n");
        puts_(b, m[i].content);
        first_sp = 0;
    }
    int is_tool = 0, output_first = 1;
    for (size_t i = 0; i < n; i++) {
        if (role_is(&m[i], "user")) {
            is_tool = 0;
            puts_(b, DS_USER);
            puts_(b, m[i].content);
        } else if (role_is(&m[i], "assistant")) {
            puts_(b, is_tool ? DS_OUTPUTS_END : DS_ASSISTANT);
            puts_(b, m[i].content);
            puts_(b, DS_EOS);
            is_tool = 0;
        } else if (role_is(&m[i], "tool")) {
            is_tool = 1;
            if (output_first) puts_(b, DS_OUTPUTS_BEGIN DS_OUTPUT_BEGIN);
            else puts_(b, "\n" DS_OUTPUT_BEGIN);
            output_first = 0;
            puts_(b, m[i].content);
            puts_(b, DS_OUTPUT_END);
        }
    }
    if (is_tool) puts_(b, DS_OUTPUTS_END);
    if (gen && !is_tool) puts_(b, DS_ASSISTANT);
}

xds_status xds_chat_render_ex(const xds_tokenizer *t, const xds_chat_msg *msgs, size_t n,
                              int add_generation_prompt, const xds_chat_opts *opts, char **out) {
    xds_chat_family fam = xds_chat_family_of(t);
    if (fam == XDS_CHAT_NONE)
        return xds_err_set(XDS_ERR_UNSUPPORTED, "chat: no supported chat template for this tokenizer");
    for (size_t i = 0; i < n; i++) {
        if (!msgs[i].role || !msgs[i].content)
            return xds_err_set(XDS_ERR_INVALID, "chat: message %zu has no role or content", i);
        if (fam != XDS_CHAT_CHATML && !role_is(&msgs[i], "system") && !role_is(&msgs[i], "user") &&
            !role_is(&msgs[i], "assistant") && !role_is(&msgs[i], "tool"))
            return xds_err_set(XDS_ERR_INVALID, "chat: message %zu: unsupported role '%s'", i, msgs[i].role);
    }
    sbuf b = {0};
    put(&b, "", 0);
    switch (fam) {
    case XDS_CHAT_CHATML: render_chatml(t, msgs, n, add_generation_prompt, &b); break;
    case XDS_CHAT_QWEN3: render_qwen3(msgs, n, add_generation_prompt, opts, &b); break;
    case XDS_CHAT_DEEPSEEK_V3: render_deepseek_v3(t, msgs, n, add_generation_prompt, &b); break;
    default: break;
    }
    if (b.oom) {
        free(b.s);
        return xds_err_set(XDS_ERR_NOMEM, "chat: out of memory");
    }
    *out = b.s;
    return XDS_OK;
}

xds_status xds_chat_render(const xds_tokenizer *t, const xds_chat_msg *msgs, size_t n,
                           int add_generation_prompt, char **out) {
    xds_chat_opts o = {.enable_thinking = -1};
    return xds_chat_render_ex(t, msgs, n, add_generation_prompt, &o, out);
}
