/*
 * tokenizer.c — encoding and decoding with a loaded tokenizer, and its
 * accessors. Encoding mirrors HF tokenizers' pipeline:
 *   1. added tokens with normalized=false are split out of the raw text
 *      (leftmost-longest; a special one is left as text unless parse_special);
 *   2. each remaining gap is normalized (NFC when configured) and split again
 *      on the added tokens with normalized=true;
 *   3. each remaining gap goes through the pre-tokenizer stages and BPE.
 * Invariant: the tokenizer is read-only here; per-call state lives on the
 * stack or in per-call allocations (PCRE2 match data, id vector).
 */
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tokenizer_internal.h"
#include "tokenizer/unicode.h"

typedef struct {
    const xds_tokenizer *t;
    pcre2_match_data *md;
    xds_idvec out;
    int parse_special;
} enc_ctx;

/* Rust's char::is_whitespace (Unicode White_Space); returns its byte length or 0. */
static int ws_len(const unsigned char *s, size_t n) {
    if (!n) return 0;
    if ((s[0] >= 9 && s[0] <= 13) || s[0] == ' ') return 1;
    if (s[0] < 0x80) return 0;
    int l = xds_utf8_seq_len(s, n);
    if (!l) return 0;
    uint32_t c;
    xds_utf8_decode(s, &c);
    if (c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
        c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000)
        return l;
    return 0;
}

/* Longest added token of the given phase (normalized or not) at s: walk the
 * byte trie as far as s allows, remembering the last token end. */
static int32_t added_at(const xds_tokenizer *t, const char *s, size_t n, int normalized, size_t *len) {
    const unsigned char *u = (const unsigned char *)s;
    int32_t node = t->trie_root[u[0]], best = -1;
    size_t i = 1;
    while (node >= 0) {
        int32_t id = t->trie[node].id;
        if (id >= 0 && !!(t->flags[id] & XDS_TOK_NORMALIZED) == normalized) {
            best = id;
            *len = i;
        }
        if (i == n) break;
        int32_t c = t->trie[node].child;
        while (c >= 0 && t->trie[c].byte != u[i]) c = t->trie[c].sibling;
        node = c;
        i++;
    }
    return best;
}

static xds_status split_added(enc_ctx *c, const char *s, size_t n, int phase);

static xds_status gap(enc_ctx *c, const char *s, size_t n, int phase) {
    if (!n) return XDS_OK;
    if (phase == 1) return xds_pretok_encode(c->t, c->md, s, n, &c->out);
    char *norm = NULL;
    size_t nlen = 0;
    if (c->t->nfc && xds_unicode_nfc(s, n, &norm, &nlen))
        return xds_err_set(XDS_ERR_NOMEM, "tokenizer: out of memory");
    xds_status rc = norm ? split_added(c, norm, nlen, 1) : split_added(c, s, n, 1);
    free(norm);
    return rc;
}

static xds_status split_added(enc_ctx *c, const char *s, size_t n, int phase) {
    const xds_tokenizer *t = c->t;
    size_t prev = 0, i = 0;
    if (t->n_added == 0) return gap(c, s, n, phase);
    while (i < n) {
        size_t len;
        int32_t id = added_at(t, s + i, n - i, phase, &len);
        if (id < 0) { i++; continue; }
        size_t ms = i, me = i + len;
        if ((t->flags[id] & XDS_TOK_SPECIAL) && !c->parse_special) { i = me; continue; }
        if (t->flags[id] & XDS_TOK_LSTRIP) {
            /* step back over whole whitespace characters, never into the previous match */
            while (ms > prev) {
                size_t k = ms - 1;
                while (k > prev && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
                if (ws_len((const unsigned char *)s + k, ms - k) != (int)(ms - k)) break;
                ms = k;
            }
        }
        if (t->flags[id] & XDS_TOK_RSTRIP) {
            int l;
            while ((l = ws_len((const unsigned char *)s + me, n - me)) > 0) me += l;
        }
        XDS_TRY(gap(c, s + prev, ms - prev, phase));
        if (xds_idvec_push(&c->out, id)) return xds_err_set(XDS_ERR_NOMEM, "tokenizer: out of memory");
        prev = i = me;
    }
    return gap(c, s + prev, n - prev, phase);
}

xds_status xds_tokenizer_encode(const xds_tokenizer *t, const char *text, size_t len, int parse_special,
                                int32_t **ids, size_t *n_ids) {
    if (!text && len) return xds_err_set(XDS_ERR_INVALID, "tokenizer: NULL text");
    size_t bad = xds_utf8_validate(text, len);
    if (bad < len)
        return xds_err_set(XDS_ERR_INVALID, "invalid UTF-8 in text at byte offset %zu (byte 0x%02x)", bad,
                           (unsigned char)text[bad]);
    enc_ctx c = {.t = t, .parse_special = parse_special};
    c.md = pcre2_match_data_create(16, NULL);
    if (!c.md) return xds_err_set(XDS_ERR_NOMEM, "tokenizer: out of memory");
    xds_status rc = split_added(&c, text ? text : "", len, 0);
    pcre2_match_data_free(c.md);
    if (rc) {
        free(c.out.v);
        return rc;
    }
    if (!c.out.v && !(c.out.v = malloc(sizeof(int32_t)))) return xds_err_set(XDS_ERR_NOMEM, "tokenizer: out of memory");
    *ids = c.out.v;
    *n_ids = c.out.n;
    return XDS_OK;
}

xds_status xds_tokenizer_decode(const xds_tokenizer *t, const int32_t *ids, size_t n, int skip_special,
                                char **out, size_t *out_len) {
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->n_vocab)
            return xds_err_set(XDS_ERR_INVALID, "tokenizer: token id %d out of range [0, %d)", (int)ids[i], (int)t->n_vocab);
        total += t->piece_len[ids[i]];
    }
    char *buf = malloc(total + 1);
    if (!buf) return xds_err_set(XDS_ERR_NOMEM, "tokenizer: out of memory");
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (skip_special && (t->flags[ids[i]] & XDS_TOK_SPECIAL)) continue;
        memcpy(buf + o, t->arena + t->piece_off[ids[i]], t->piece_len[ids[i]]);
        o += t->piece_len[ids[i]];
    }
    buf[o] = 0;
    *out = buf;
    if (out_len) *out_len = o;
    return XDS_OK;
}

/* ---- accessors ---------------------------------------------------------- */

int xds_tokenizer_n_vocab(const xds_tokenizer *t) { return t->n_vocab; }

const char *xds_tokenizer_piece(const xds_tokenizer *t, int32_t id, size_t *len) {
    if (id < 0 || id >= t->n_vocab) {
        if (len) *len = 0;
        return NULL;
    }
    if (len) *len = t->piece_len[id];
    return t->arena + t->piece_off[id];
}

int32_t xds_tokenizer_find(const xds_tokenizer *t, const char *token_text) {
    size_t l = strlen(token_text);
    int32_t id = xds_strmap_get(t, &t->added, token_text, l);
    return id >= 0 ? id : xds_strmap_get(t, &t->vocab, token_text, l);
}

int32_t xds_tokenizer_bos(const xds_tokenizer *t) { return t->bos; }
int32_t xds_tokenizer_eos(const xds_tokenizer *t) { return t->eos; }
int xds_tokenizer_add_bos(const xds_tokenizer *t) { return t->add_bos && t->bos >= 0; }

int xds_tokenizer_is_eog(const xds_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_vocab && (t->flags[id] & XDS_TOK_EOG);
}

int xds_tokenizer_is_special(const xds_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_vocab && (t->flags[id] & XDS_TOK_SPECIAL);
}

const char *xds_tokenizer_chat_template(const xds_tokenizer *t) { return t->chat_template; }

void xds_tokenizer_free(xds_tokenizer *t) {
    if (!t) return;
    for (int i = 0; i < t->n_stages; i++)
        if (t->stages[i].re) pcre2_code_free(t->stages[i].re);
    free(t->stages);
    free(t->arena);
    free(t->text_off);
    free(t->text_len);
    free(t->piece_off);
    free(t->piece_len);
    free(t->flags);
    free(t->vocab.slots);
    free(t->added.slots);
    free(t->merges.keys);
    free(t->merges.rank);
    free(t->merges.merged);
    free(t->added_ids);
    free(t->trie);
    free(t->chat_template);
    if (t->mctx) pcre2_match_context_free(t->mctx);
    free(t);
}
