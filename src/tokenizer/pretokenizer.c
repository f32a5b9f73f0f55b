/*
 * pretokenizer.c — the pre-tokenizer: a sequence of stages, each splitting
 * every piece produced by the previous stage (HF `Sequence` semantics: a
 * regex sees one piece at a time, so look-arounds stop at piece edges).
 * Stages: Split (regex or literal, five delimiter behaviors, invert),
 * ByteLevel (optional prefix space, optional GPT-2 regex), Digits (as a
 * \p{N} / \p{N}+ split). Regexes are PCRE2 with UTF + UCP, JIT when
 * available. The leaves go to BPE (bpe.c).
 * Invariant: input pieces are valid UTF-8; stages never modify the text
 * except ByteLevel's prefix space.
 */
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "tokenizer/tokenizer_internal.h"
#include "tokenizer/unicode_regex_extra.h"

/* GPT-2's pattern, as HF's ByteLevel pre-tokenizer uses it (use_regex). */
static const char GPT2_RE[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
static const char QWEN2_RE[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char LLAMA3_RE[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char DSV3_RE1[] = "\\p{N}{1,3}";
static const char DSV3_RE2[] = "[\xe4\xb8\x80-\xe9\xbe\xa5\xe3\x81\x80-\xe3\x82\x9f\xe3\x82\xa0-\xe3\x83\xbf]+";
static const char DSV3_RE3[] =
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?"
    "[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+";

#define MAX_STAGES 64 /* stages recurse once each while encoding */

static xds_status add_stage(xds_tokenizer *t, xds_pretok_stage st) {
    if (t->n_stages >= MAX_STAGES) {
        if (st.re) pcre2_code_free(st.re);
        return xds_err_set(XDS_ERR_UNSUPPORTED, "tokenizer: more than %d pre-tokenizer stages", MAX_STAGES);
    }
    xds_pretok_stage *ns = realloc(t->stages, (t->n_stages + 1) * sizeof *ns);
    if (!ns) {
        if (st.re) pcre2_code_free(st.re);
        return xds_err_set(XDS_ERR_NOMEM, "tokenizer: out of memory");
    }
    t->stages = ns;
    t->stages[t->n_stages++] = st;
    return XDS_OK;
}

/* Growable output for the pattern rewrite. */
typedef struct {
    char *s;
    size_t n, cap;
} pbuf;

static int pb_put(pbuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t nc = (b->n + n + 1) * 2;
        char *ns = realloc(b->s, nc);
        if (!ns) return -1;
        b->s = ns;
        b->cap = nc;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
    return 0;
}

static const char *extra_items(char cat) {
    for (size_t i = 0; i < sizeof xds_regex_extra / sizeof xds_regex_extra[0]; i++)
        if (xds_regex_extra[i].cat == cat) return xds_regex_extra[i].items;
    return NULL;
}

/* Rewrite \p{X} / \pX (X one of L M N P S) so the class also holds the code
 * points HF's regex engine knows from newer Unicode than PCRE2's tables
 * (unicode_regex_extra.h): inside a [...] class the items are appended, outside
 * \p{X} becomes [\p{X}items]. Everything else is copied verbatim. */
static int augment_pattern(const char *p, size_t n, pbuf *o) {
    int in_class = 0;
    size_t i = 0;
    while (i < n) {
        char c = p[i];
        if (c == '\\' && i + 1 < n) {
            if (p[i + 1] == 'p' && i + 2 < n) {
                char cat = 0;
                size_t end = 0;
                if (p[i + 2] == '{' && i + 4 < n && p[i + 4] == '}') { cat = p[i + 3]; end = i + 5; }
                else if (p[i + 2] != '{' && p[i + 2] != '^') { cat = p[i + 2]; end = i + 3; }
                const char *items = cat ? extra_items(cat) : NULL;
                if (items) {
                    char prop[8] = {'\\', 'p', '{', cat, '}', 0};
                    if ((!in_class && pb_put(o, "[", 1)) || pb_put(o, prop, 5) || pb_put(o, items, strlen(items)) ||
                        (!in_class && pb_put(o, "]", 1)))
                        return -1;
                    i = end;
                    continue;
                }
            }
            if (p[i + 1] == 'Q') { /* \Q...\E: copy the literal run */
                const char *e = NULL;
                for (size_t k = i + 2; k + 1 < n; k++)
                    if (p[k] == '\\' && p[k + 1] == 'E') { e = p + k + 2; break; }
                size_t stop = e ? (size_t)(e - p) : n;
                if (pb_put(o, p + i, stop - i)) return -1;
                i = stop;
                continue;
            }
            if (pb_put(o, p + i, 2)) return -1;
            i += 2;
            continue;
        }
        if (c == '[' && !in_class) {
            in_class = 1;
            size_t k = i + 1;
            if (k < n && p[k] == '^') k++;
            if (k < n && p[k] == ']') k++; /* a leading ] is a literal */
            if (pb_put(o, p + i, k - i)) return -1;
            i = k;
            continue;
        }
        if (c == '[' && in_class && i + 1 < n && p[i + 1] == ':') { /* [:posix:] */
            const char *e = NULL;
            for (size_t k = i + 2; k + 1 < n; k++)
                if (p[k] == ':' && p[k + 1] == ']') { e = p + k + 2; break; }
            size_t stop = e ? (size_t)(e - p) : i + 1;
            if (pb_put(o, p + i, stop - i)) return -1;
            i = stop;
            continue;
        }
        if (c == ']' && in_class) in_class = 0;
        if (pb_put(o, &c, 1)) return -1;
        i++;
    }
    return pb_put(o, "", 0);
}

static xds_status compile(const char *pattern, size_t len, int literal, const char *src, pcre2_code **out) {
    int err;
    PCRE2_SIZE erroff;
    uint32_t opt = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP); /* UCP is not allowed with LITERAL */
    pbuf aug = {0};
    if (!literal) {
        if (augment_pattern(pattern, len, &aug)) {
            free(aug.s);
            return xds_err_set(XDS_ERR_NOMEM, "tokenizer: out of memory");
        }
    }
    pcre2_code *re = literal ? pcre2_compile((PCRE2_SPTR)pattern, len, opt, &err, &erroff, NULL)
                             : pcre2_compile((PCRE2_SPTR)aug.s, aug.n, opt, &err, &erroff, NULL);
    free(aug.s);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return xds_err_set(XDS_ERR_FORMAT, "%s: pre-tokenizer regex /%.*s/: %s at offset %zu", src,
                           (int)(len > 200 ? 200 : len), pattern, (const char *)msg, (size_t)erroff);
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* optional: falls back to the interpreter */
    *out = re;
    return XDS_OK;
}

xds_status xds_pretok_add_split(xds_tokenizer *t, const char *pattern, size_t len, int literal,
                                xds_split_behavior b, int invert, const char *src) {
    xds_pretok_stage st = {.kind = XDS_PRETOK_SPLIT, .behavior = b, .invert = invert};
    XDS_TRY(compile(pattern, len, literal, src, &st.re));
    return add_stage(t, st);
}

xds_status xds_pretok_add_bytelevel(xds_tokenizer *t, int add_prefix_space, int use_regex,
                                    const char *src) {
    xds_pretok_stage st = {.kind = XDS_PRETOK_BYTELEVEL, .behavior = XDS_SPLIT_ISOLATED,
                           .add_prefix_space = add_prefix_space};
    if (use_regex) XDS_TRY(compile(GPT2_RE, sizeof GPT2_RE - 1, 0, src, &st.re));
    return add_stage(t, st);
}

/* llama.cpp's names for the pre-tokenizers (tokenizer.ggml.pre) of the
 * families we know, expressed as the HF pre-tokenizer they stand for. */
xds_status xds_pretok_from_gguf_pre(xds_tokenizer *t, const char *pre, const char *src) {
    static const char *const digit_then_gpt2[] = {"smollm", "starcoder", "refact", "command-r",
                                                  "codeshell", "exaone", "minerva"};
    if (!strcmp(pre, "default") || !strcmp(pre, "gpt2") || !strcmp(pre, "gpt-2"))
        return xds_pretok_add_bytelevel(t, 0, 1, src);
    for (size_t i = 0; i < sizeof digit_then_gpt2 / sizeof digit_then_gpt2[0]; i++) {
        if (strcmp(pre, digit_then_gpt2[i])) continue;
        XDS_TRY(xds_pretok_add_split(t, "\\p{N}", 5, 0, XDS_SPLIT_ISOLATED, 0, src));
        return xds_pretok_add_bytelevel(t, 0, 1, src);
    }
    if (!strcmp(pre, "qwen2")) {
        t->nfc = 1; /* Qwen2/3's tokenizer.json normalizer is NFC (llama.cpp skips it; HF does not) */
        XDS_TRY(xds_pretok_add_split(t, QWEN2_RE, sizeof QWEN2_RE - 1, 0, XDS_SPLIT_ISOLATED, 0, src));
        return xds_pretok_add_bytelevel(t, 0, 0, src);
    }
    if (!strcmp(pre, "llama3") || !strcmp(pre, "llama-bpe")) {
        XDS_TRY(xds_pretok_add_split(t, LLAMA3_RE, sizeof LLAMA3_RE - 1, 0, XDS_SPLIT_ISOLATED, 0, src));
        t->ignore_merges = 1;
        return xds_pretok_add_bytelevel(t, 0, 0, src);
    }
    if (!strcmp(pre, "deepseek-v3")) {
        XDS_TRY(xds_pretok_add_split(t, DSV3_RE1, sizeof DSV3_RE1 - 1, 0, XDS_SPLIT_ISOLATED, 0, src));
        XDS_TRY(xds_pretok_add_split(t, DSV3_RE2, sizeof DSV3_RE2 - 1, 0, XDS_SPLIT_ISOLATED, 0, src));
        XDS_TRY(xds_pretok_add_split(t, DSV3_RE3, sizeof DSV3_RE3 - 1, 0, XDS_SPLIT_ISOLATED, 0, src));
        return xds_pretok_add_bytelevel(t, 0, 0, src);
    }
    return xds_err_set(XDS_ERR_UNSUPPORTED, "%s: unsupported pre-tokenizer tokenizer.ggml.pre = '%s'", src, pre);
}

/* ---- running the stages ------------------------------------------------- */

typedef struct {
    size_t a, b;  /* byte range in the piece */
    int match;
} seg;

typedef struct {
    seg *v;
    size_t n, cap;
} segvec;

static int seg_push(segvec *s, size_t a, size_t b, int match) {
    if (s->n == s->cap) {
        size_t nc = s->cap ? s->cap * 2 : 64;
        seg *nv = realloc(s->v, nc * sizeof *nv);
        if (!nv) return -1;
        s->v = nv;
        s->cap = nc;
    }
    s->v[s->n++] = (seg){a, b, match};
    return 0;
}

static xds_status run_stage(const xds_tokenizer *t, pcre2_match_data *md, int k, const char *s, size_t n,
                            xds_idvec *out);

/* Matches of re in s as alternating gap / match segments (HF find_matches;
 * empty matches produce nothing). */
static xds_status find_matches(const xds_tokenizer *t, const pcre2_code *re, pcre2_match_data *md,
                               const char *s, size_t n, segvec *sv) {
    size_t pos = 0, prev = 0;
    while (pos <= n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, md, t->mctx);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[128];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return xds_err_set(XDS_ERR_INVALID, "tokenizer: pre-tokenizer regex failed at byte %zu: %s",
                               pos, (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t ms = ov[0], me = ov[1];
        if (me <= ms) { /* empty match: step one character */
            if (ms >= n) break;
            pos = ms + 1;
            while (pos < n && ((unsigned char)s[pos] & 0xC0) == 0x80) pos++;
            continue;
        }
        if (ms > prev && seg_push(sv, prev, ms, 0)) goto nomem;
        if (seg_push(sv, ms, me, 1)) goto nomem;
        prev = pos = me;
    }
    if (prev < n && seg_push(sv, prev, n, 0)) goto nomem;
    return XDS_OK;
nomem:
    return xds_err_set(XDS_ERR_NOMEM, "tokenizer: out of memory");
}

static xds_status split_stage(const xds_tokenizer *t, pcre2_match_data *md, int k, const char *s, size_t n,
                              xds_idvec *out) {
    const xds_pretok_stage *st = &t->stages[k];
    segvec sv = {0};
    xds_status rc = find_matches(t, st->re, md, s, n, &sv);
    if (rc) goto done;
    if (st->invert)
        for (size_t i = 0; i < sv.n; i++) sv.v[i].match = !sv.v[i].match;
    /* apply the delimiter behavior (the folds of HF's NormalizedString::split),
     * in place: w pieces kept so far */
    size_t w = 0;
    int prev_match = 0;
    if (st->behavior == XDS_SPLIT_MERGED_NEXT) {
        /* fold from the right: a delimiter joins the piece after it */
        size_t r = sv.n;
        w = sv.n;
        for (size_t i = sv.n; i-- > 0;) {
            seg g = sv.v[i];
            if (g.match && !prev_match && r < sv.n) sv.v[r].a = g.a;
            else sv.v[--r] = g;
            prev_match = g.match;
        }
        memmove(sv.v, sv.v + r, (sv.n - r) * sizeof *sv.v);
        w = sv.n - r;
    } else {
        for (size_t i = 0; i < sv.n; i++) {
            seg g = sv.v[i];
            switch (st->behavior) {
            case XDS_SPLIT_REMOVED:
                if (!g.match) sv.v[w++] = g;
                break;
            case XDS_SPLIT_MERGED_PREV:
                if (g.match && !prev_match && w) sv.v[w - 1].b = g.b;
                else sv.v[w++] = g;
                break;
            case XDS_SPLIT_CONTIGUOUS:
                if (g.match == prev_match && w) sv.v[w - 1].b = g.b;
                else sv.v[w++] = g;
                break;
            default: /* isolated */
                sv.v[w++] = g;
                break;
            }
            prev_match = g.match;
        }
    }
    for (size_t i = 0; i < w && !rc; i++)
        rc = run_stage(t, md, k + 1, s + sv.v[i].a, sv.v[i].b - sv.v[i].a, out);
done:
    free(sv.v);
    return rc;
}

static xds_status run_stage(const xds_tokenizer *t, pcre2_match_data *md, int k, const char *s, size_t n,
                            xds_idvec *out) {
    if (n == 0) return XDS_OK;
    if (k == t->n_stages) return xds_bpe_word(t, s, n, out);
    const xds_pretok_stage *st = &t->stages[k];
    if (st->kind == XDS_PRETOK_BYTELEVEL) {
        if (st->add_prefix_space && s[0] != ' ') {
            char *p = malloc(n + 1);
            if (!p) return xds_err_set(XDS_ERR_NOMEM, "tokenizer: out of memory");
            p[0] = ' ';
            memcpy(p + 1, s, n);
            xds_status rc = st->re ? split_stage(t, md, k, p, n + 1, out) : run_stage(t, md, k + 1, p, n + 1, out);
            free(p);
            return rc;
        }
        if (!st->re) return run_stage(t, md, k + 1, s, n, out);
    }
    return split_stage(t, md, k, s, n, out);
}

xds_status xds_pretok_encode(const xds_tokenizer *t, pcre2_match_data *md, const char *s, size_t n,
                             xds_idvec *out) {
    return run_stage(t, md, 0, s, n, out);
}
