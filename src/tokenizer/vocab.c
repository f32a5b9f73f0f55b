/*
 * vocab.c — the tokenizer's tables: token texts and decoded pieces in one
 * arena, the text → id hash maps (model vocab, added tokens), the BPE merge
 * map (pair of ids → rank and merged id), the GPT-2 byte ↔ unicode alphabet,
 * and the end-of-generation set.
 * Invariant: maps are built once at load; lookups never allocate.
 */
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tokenizer_internal.h"
#include "tokenizer/unicode.h"

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

/* GPT-2 bytes_to_unicode(): printable bytes map to themselves, the others to
 * U+0100 + k in byte order. */
void xds_bytelevel_tables(uint32_t byte_to_cp[256]) {
    int k = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        byte_to_cp[b] = printable ? (uint32_t)b : 0x100u + (uint32_t)k++;
    }
}

xds_status xds_tok_alloc(int32_t n_vocab, xds_tokenizer **out) {
    xds_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return xds_err_set(XDS_ERR_NOMEM, "tokenizer: out of memory");
    t->n_vocab = n_vocab;
    t->text_off = calloc(n_vocab ? n_vocab : 1, sizeof *t->text_off);
    t->text_len = calloc(n_vocab ? n_vocab : 1, sizeof *t->text_len);
    t->piece_off = calloc(n_vocab ? n_vocab : 1, sizeof *t->piece_off);
    t->piece_len = calloc(n_vocab ? n_vocab : 1, sizeof *t->piece_len);
    t->flags = calloc(n_vocab ? n_vocab : 1, 1);
    t->unk_id = t->bos = t->eos = -1;
    t->mctx = pcre2_match_context_create(NULL);
    if (t->mctx) {
        pcre2_set_match_limit(t->mctx, 10000000);
        pcre2_set_depth_limit(t->mctx, 100000);
    }
    for (int b = 0; b < 256; b++) t->byte_id[b] = t->byte_fallback_id[b] = -1;
    if (!t->text_off || !t->text_len || !t->piece_off || !t->piece_len || !t->flags || !t->mctx) {
        xds_tokenizer_free(t);
        return xds_err_set(XDS_ERR_NOMEM, "tokenizer: out of memory for %d tokens", (int)n_vocab);
    }
    *out = t;
    return XDS_OK;
}

static int arena_put(xds_tokenizer *t, const char *s, size_t len, uint64_t *off) {
    if (t->arena_len + len + 1 > t->arena_cap) {
        /* starts small so that any vocabulary grows it (a few reallocs for
         * a real one), and a fuzzer's small inputs reach the growth path */
        size_t nc = t->arena_cap ? t->arena_cap * 2 : 256;
        while (nc < t->arena_len + len + 1) nc *= 2;
        char *na = realloc(t->arena, nc);
        if (!na) return -1;
        t->arena = na;
        t->arena_cap = nc;
    }
    if (len) memcpy(t->arena + t->arena_len, s, len);
    *off = t->arena_len;
    t->arena_len += len;
    t->arena[t->arena_len++] = 0;
    return 0;
}

xds_status xds_tok_set_text(xds_tokenizer *t, int32_t id, const char *s, size_t len) {
    if (len > UINT32_MAX / 2) return xds_err_set(XDS_ERR_FORMAT, "token %d: text too long", (int)id);
    if (arena_put(t, s, len, &t->text_off[id])) return xds_err_set(XDS_ERR_NOMEM, "tokenizer: out of memory");
    t->text_len[id] = (uint32_t)len;
    t->flags[id] |= XDS_TOK_DEFINED;
    return XDS_OK;
}

static inline const char *tok_text(const xds_tokenizer *t, int32_t id, size_t *len) {
    *len = t->text_len[id];
    return t->arena + t->text_off[id];
}

int32_t xds_strmap_get(const xds_tokenizer *t, const xds_strmap *m, const char *s, size_t len) {
    if (!m->cap) return -1;
    uint32_t mask = m->cap - 1, i = (uint32_t)hash_bytes(s, len) & mask;
    for (;;) {
        int32_t id = m->slots[i];
        if (id < 0) return -1;
        size_t l;
        const char *x = tok_text(t, id, &l);
        if (l == len && memcmp(x, s, len) == 0) return id;
        i = (i + 1) & mask;
    }
}

/* Insert id under its text; an existing entry with the same text is replaced
 * when `replace` (later definitions win, as in HF's vocab maps). */
static int strmap_put(xds_tokenizer *t, xds_strmap *m, int32_t id, int replace) {
    size_t len;
    const char *s = tok_text(t, id, &len);
    uint32_t mask = m->cap - 1, i = (uint32_t)hash_bytes(s, len) & mask;
    for (;;) {
        int32_t cur = m->slots[i];
        if (cur < 0) { m->slots[i] = id; return 1; }
        size_t l;
        const char *x = tok_text(t, cur, &l);
        if (l == len && memcmp(x, s, len) == 0) {
            if (replace) m->slots[i] = id;
            return 0;
        }
        i = (i + 1) & mask;
    }
}

static int strmap_init(xds_strmap *m, size_t n) {
    uint32_t cap = 16;
    while (cap < n * 2 + 16) cap *= 2;
    m->slots = malloc(cap * sizeof *m->slots);
    if (!m->slots) return -1;
    memset(m->slots, 0xff, cap * sizeof *m->slots);
    m->cap = cap;
    return 0;
}

int xds_pairmap_get(const xds_pairmap *m, int32_t a, int32_t b, int32_t *rank, int32_t *merged) {
    if (!m->cap) return 0;
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    uint32_t mask = m->cap - 1, i = (uint32_t)hash_u64(key) & mask;
    for (;;) {
        uint64_t k = m->keys[i];
        if (k == UINT64_MAX) return 0;
        if (k == key) { *rank = m->rank[i]; *merged = m->merged[i]; return 1; }
        i = (i + 1) & mask;
    }
}

static int pairmap_grow(xds_pairmap *m) {
    uint32_t nc = m->cap ? m->cap * 2 : 1 << 12;
    uint64_t *k = malloc((size_t)nc * sizeof *k);
    int32_t *r = malloc((size_t)nc * sizeof *r), *g = malloc((size_t)nc * sizeof *g);
    if (!k || !r || !g) { free(k); free(r); free(g); return -1; }
    memset(k, 0xff, (size_t)nc * sizeof *k);
    for (uint32_t i = 0; i < m->cap; i++) {
        if (m->keys[i] == UINT64_MAX) continue;
        uint32_t j = (uint32_t)hash_u64(m->keys[i]) & (nc - 1);
        while (k[j] != UINT64_MAX) j = (j + 1) & (nc - 1);
        k[j] = m->keys[i];
        r[j] = m->rank[i];
        g[j] = m->merged[i];
    }
    free(m->keys); free(m->rank); free(m->merged);
    m->keys = k; m->rank = r; m->merged = g; m->cap = nc;
    return 0;
}

xds_status xds_tok_add_merge(xds_tokenizer *t, const char *a, size_t la, const char *b, size_t lb,
                             int32_t rank, const char *src) {
    int32_t ia = xds_strmap_get(t, &t->vocab, a, la), ib = xds_strmap_get(t, &t->vocab, b, lb);
    if (ia < 0 || ib < 0)
        return xds_err_set(XDS_ERR_FORMAT, "%s: merge %d: token '%.*s' not in the vocabulary", src,
                           (int)rank, (int)(ia < 0 ? la : lb), ia < 0 ? a : b);
    char stackbuf[256];
    char *cat = la + lb <= sizeof stackbuf ? stackbuf : malloc(la + lb);
    if (!cat) return xds_err_set(XDS_ERR_NOMEM, "tokenizer: out of memory");
    memcpy(cat, a, la);
    memcpy(cat + la, b, lb);
    int32_t im = xds_strmap_get(t, &t->vocab, cat, la + lb);
    if (cat != stackbuf) free(cat);
    if (im < 0)
        return xds_err_set(XDS_ERR_FORMAT, "%s: merge %d: merged token '%.*s%.*s' not in the vocabulary",
                           src, (int)rank, (int)la, a, (int)lb, b);
    xds_pairmap *m = &t->merges;
    /* keep the load factor under 1/2 */
    if (!m->cap || ((size_t)m->n + 1) * 2 > m->cap)
        if (pairmap_grow(m)) return xds_err_set(XDS_ERR_NOMEM, "tokenizer: out of memory");
    uint64_t key = (uint64_t)(uint32_t)ia << 32 | (uint32_t)ib;
    uint32_t mask = m->cap - 1, i = (uint32_t)hash_u64(key) & mask;
    while (m->keys[i] != UINT64_MAX && m->keys[i] != key) i = (i + 1) & mask;
    if (m->keys[i] == UINT64_MAX) m->n++;
    m->keys[i] = key; /* a repeated pair takes the later rank, as HF's map does */
    m->rank[i] = rank;
    m->merged[i] = im;
    return XDS_OK;
}

static const char *const eog_texts[] = {
    "<|endoftext|>", "<|im_end|>", "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
    "<|eot_id|>", "<|eom_id|>", "<end_of_turn>", "<|end|>", "<|return|>", "<|end_of_text|>",
    "<|EOT|>", "</s>",
};

/* Build the vocab / added maps, decoded pieces, byte tables and EOG flags once
 * all token texts are set. Token text that is entirely in the GPT-2 byte
 * alphabet decodes to those bytes; any other text is kept as its own UTF-8
 * (HF's ByteLevel decoder does the same per token). */
xds_status xds_tok_finish(xds_tokenizer *t, const char *src) {
    uint32_t b2c[256];
    int16_t c2b[0x200];
    xds_bytelevel_tables(b2c);
    for (int i = 0; i < 0x200; i++) c2b[i] = -1;
    for (int b = 0; b < 256; b++) c2b[b2c[b]] = (int16_t)b;

    size_t n_added = 0;
    for (int32_t id = 0; id < t->n_vocab; id++)
        if ((t->flags[id] & XDS_TOK_DEFINED) && (t->flags[id] & XDS_TOK_ADDED)) n_added++;
    if (strmap_init(&t->added, n_added)) return xds_err_set(XDS_ERR_NOMEM, "tokenizer: out of memory");
    XDS_ASSERT(t->vocab.cap); /* loaders build the model map before merges */
    t->added_ids = malloc((n_added ? n_added : 1) * sizeof *t->added_ids);
    if (!t->added_ids) return xds_err_set(XDS_ERR_NOMEM, "tokenizer: out of memory");
    t->n_added = 0;

    char *tmp = NULL;
    size_t tmp_cap = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        if (!(t->flags[id] & XDS_TOK_DEFINED)) {
            t->piece_off[id] = 0;
            t->piece_len[id] = 0;
            continue;
        }
        if (t->flags[id] & XDS_TOK_ADDED) {
            if (t->text_len[id] == 0) {
                free(tmp);
                return xds_err_set(XDS_ERR_FORMAT, "%s: added token %d has empty content", src, (int)id);
            }
            if (strmap_put(t, &t->added, id, 1)) t->added_ids[t->n_added++] = id;
            else {
                /* replaced an earlier added token with the same text */
                for (int32_t k = 0; k < t->n_added; k++) {
                    size_t l1, l2;
                    const char *x = tok_text(t, t->added_ids[k], &l1), *y = tok_text(t, id, &l2);
                    if (l1 == l2 && !memcmp(x, y, l1)) t->added_ids[k] = id;
                }
            }
        }
        size_t len;
        const char *s = tok_text(t, id, &len);
        if (len * 4 + 1 > tmp_cap) {
            tmp_cap = len * 4 + 64;
            char *nt = realloc(tmp, tmp_cap);
            if (!nt) { free(tmp); return xds_err_set(XDS_ERR_NOMEM, "tokenizer: out of memory"); }
            tmp = nt;
        }
        /* byte-level decode if every char is in the alphabet */
        size_t o = 0, i = 0;
        int ok = xds_utf8_validate(s, len) == len;
        while (ok && i < len) {
            uint32_t cp;
            i += xds_utf8_decode((const unsigned char *)s + i, &cp);
            if (cp >= 0x200 || c2b[cp] < 0) ok = 0;
            else tmp[o++] = (char)c2b[cp];
        }
        /* a text that is not byte-level is its own piece; s points into the
         * arena that arena_put may move, so it is copied out first */
        if (!ok && len) memcpy(tmp, s, len);
        size_t plen = ok ? o : len;
        uint64_t off;
        if (arena_put(t, tmp, plen, &off)) { free(tmp); return xds_err_set(XDS_ERR_NOMEM, "tokenizer: out of memory"); }
        t->piece_off[id] = off;
        t->piece_len[id] = (uint32_t)plen;
    }
    free(tmp);

    /* byte trie of the added tokens (leftmost-longest matching in O(length)) */
    size_t total = 0;
    for (int32_t i = 0; i < t->n_added; i++) total += t->text_len[t->added_ids[i]];
    t->trie = malloc((total ? total : 1) * sizeof *t->trie);
    if (!t->trie) return xds_err_set(XDS_ERR_NOMEM, "tokenizer: out of memory");
    for (int b = 0; b < 256; b++) t->trie_root[b] = -1;
    t->trie_n = 0;
    for (int32_t i = 0; i < t->n_added; i++) {
        size_t len;
        const unsigned char *s = (const unsigned char *)tok_text(t, t->added_ids[i], &len);
        int32_t *link = &t->trie_root[s[0]], node = -1;
        for (size_t k = 0; k < len; k++) {
            if (k > 0) { /* find or add the child of `node` labelled s[k] */
                link = &t->trie[node].child;
                while (*link >= 0 && t->trie[*link].byte != s[k]) link = &t->trie[*link].sibling;
            }
            if (*link < 0) {
                int32_t nn = t->trie_n++;
                t->trie[nn] = (xds_trie_node){.child = -1, .sibling = -1, .id = -1, .byte = s[k]};
                *link = nn;
            }
            node = *link;
        }
        t->trie[node].id = t->added_ids[i];
    }

    /* byte alphabet ids */
    for (int b = 0; b < 256; b++) {
        char u[4];
        int l = xds_utf8_encode(b2c[b], u);
        t->byte_id[b] = xds_strmap_get(t, &t->vocab, u, l);
    }

    /* end of generation */
    if (t->eos >= 0 && t->eos < t->n_vocab) t->flags[t->eos] |= XDS_TOK_EOG;
    for (size_t i = 0; i < sizeof eog_texts / sizeof eog_texts[0]; i++) {
        int32_t id = xds_tokenizer_find(t, eog_texts[i]);
        if (id >= 0) t->flags[id] |= XDS_TOK_EOG;
    }
    return XDS_OK;
}

/* Model-vocab map over every id defined so far (the loaders call it after
 * the model vocabulary and before added tokens and merges). A text defined
 * twice maps to the later id. */
xds_status xds_tok_build_vocab_map(xds_tokenizer *t) {
    size_t n = 0;
    for (int32_t id = 0; id < t->n_vocab; id++)
        if (t->flags[id] & XDS_TOK_DEFINED) n++;
    if (strmap_init(&t->vocab, n)) return xds_err_set(XDS_ERR_NOMEM, "tokenizer: out of memory");
    for (int32_t id = 0; id < t->n_vocab; id++)
        if (t->flags[id] & XDS_TOK_DEFINED) strmap_put(t, &t->vocab, id, 1);
    return XDS_OK;
}
