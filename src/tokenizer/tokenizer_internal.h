/*
 * tokenizer_internal.h — the xds_tokenizer struct and the helpers shared by the
 * tokenizer's files (vocab.c: tables and loading; pretokenizer.c: regex
 * splits; bpe.c: merges; tokenizer.c: encode/decode; chat.c: templates).
 * Invariant: after a successful load every table is filled and immutable.
 */
#ifndef XDS_TOKENIZER_INTERNAL_H
#define XDS_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stddef.h>
#include <stdint.h>

#include "tokenizer/tokenizer.h"

enum {
    XDS_TOK_DEFINED = 1,    /* some file defines this id */
    XDS_TOK_ADDED = 2,      /* an added token (matched in raw text before BPE) */
    XDS_TOK_SPECIAL = 4,    /* special / control */
    XDS_TOK_EOG = 8,        /* ends generation */
    XDS_TOK_NORMALIZED = 16, /* added token matched after normalization */
    XDS_TOK_LSTRIP = 32,     /* added token swallows whitespace on its left */
    XDS_TOK_RSTRIP = 64,     /* ... and on its right */
};

/* String → id open-addressing hash over token texts stored in the arena. */
typedef struct {
    int32_t *slots; /* (cap) id or -1 */
    uint32_t cap;   /* power of two */
} xds_strmap;

/* (left id, right id) → (rank, merged id). */
typedef struct {
    uint64_t *keys;   /* (cap) left << 32 | right, UINT64_MAX = empty */
    int32_t *rank;    /* (cap) */
    int32_t *merged;  /* (cap) */
    uint32_t cap;     /* power of two */
    uint32_t n;       /* entries */
} xds_pairmap;

/* Byte trie node: children form a sibling list; id is the added token whose
 * text ends here (-1 if none). */
typedef struct {
    int32_t child, sibling, id;
    uint8_t byte;
} xds_trie_node;

typedef enum {
    XDS_PRETOK_SPLIT,     /* regex / literal split with a behavior */
    XDS_PRETOK_BYTELEVEL, /* optional prefix space, then optional GPT-2 regex split */
} xds_pretok_kind;

typedef enum {
    XDS_SPLIT_ISOLATED, XDS_SPLIT_REMOVED, XDS_SPLIT_MERGED_PREV, XDS_SPLIT_MERGED_NEXT,
    XDS_SPLIT_CONTIGUOUS,
} xds_split_behavior;

typedef struct {
    xds_pretok_kind kind;
    pcre2_code *re;         /* split pattern (NULL for ByteLevel without regex) */
    xds_split_behavior behavior;
    int invert;
    int add_prefix_space;   /* ByteLevel only */
} xds_pretok_stage;

struct xds_tokenizer {
    int32_t n_vocab;
    char *arena;            /* token texts and decoded pieces */
    size_t arena_len, arena_cap;
    uint64_t *text_off;     /* (n_vocab) token text as in the vocab file */
    uint32_t *text_len;     /* (n_vocab) */
    uint64_t *piece_off;    /* (n_vocab) byte-level-decoded bytes */
    uint32_t *piece_len;    /* (n_vocab) */
    uint8_t *flags;         /* (n_vocab) XDS_TOK_* */

    xds_strmap vocab;       /* model vocabulary (BPE symbols) */
    xds_strmap added;       /* added tokens */
    xds_pairmap merges;

    int32_t *added_ids;     /* (n_added) one id per distinct added-token text */
    int32_t n_added;
    xds_trie_node *trie;    /* (trie_n) byte trie of the added-token texts */
    int32_t trie_n;
    int32_t trie_root[256]; /* node of each first byte, -1 if none */

    int32_t byte_id[256];   /* vocab id of each byte's GPT-2 char, -1 if absent */
    int32_t byte_fallback_id[256]; /* "<0xXX>" ids when byte_fallback, else -1 */
    int32_t unk_id;         /* -1 if none */
    int ignore_merges;      /* a whole pre-token in the vocab is emitted as is */
    int nfc;                /* normalizer is NFC */

    xds_pretok_stage *stages;
    int n_stages;
    pcre2_match_context *mctx; /* match limits (a hostile regex cannot hang encode) */

    int32_t bos, eos;
    int add_bos;
    char *chat_template;    /* NULL if none */
};

/* vocab.c */
xds_status xds_tok_alloc(int32_t n_vocab, xds_tokenizer **out);
xds_status xds_tok_set_text(xds_tokenizer *t, int32_t id, const char *s, size_t len);
xds_status xds_tok_build_vocab_map(xds_tokenizer *t);
xds_status xds_tok_finish(xds_tokenizer *t, const char *src); /* pieces, maps, eog */
xds_status xds_tok_add_merge(xds_tokenizer *t, const char *a, size_t la, const char *b, size_t lb,
                             int32_t rank, const char *src);
int32_t xds_strmap_get(const xds_tokenizer *t, const xds_strmap *m, const char *s, size_t len);
int xds_pairmap_get(const xds_pairmap *m, int32_t a, int32_t b, int32_t *rank, int32_t *merged);
/* GPT-2 byte ↔ unicode tables */
void xds_bytelevel_tables(uint32_t byte_to_cp[256]);

/* pretokenizer.c */
xds_status xds_pretok_add_split(xds_tokenizer *t, const char *pattern, size_t len, int literal,
                                xds_split_behavior b, int invert, const char *src);
xds_status xds_pretok_add_bytelevel(xds_tokenizer *t, int add_prefix_space, int use_regex,
                                    const char *src);
/* GGUF tokenizer.ggml.pre name → stages; XDS_ERR_UNSUPPORTED if unknown. */
xds_status xds_pretok_from_gguf_pre(xds_tokenizer *t, const char *pre, const char *src);

/* ids output vector */
typedef struct {
    int32_t *v;
    size_t n, cap;
} xds_idvec;
int xds_idvec_push(xds_idvec *v, int32_t id);

/* Pre-tokenize text (valid UTF-8) through all stages and BPE each piece. */
xds_status xds_pretok_encode(const xds_tokenizer *t, pcre2_match_data *md, const char *s, size_t n,
                             xds_idvec *out);
/* bpe.c: one pre-token (raw bytes) → ids. */
xds_status xds_bpe_word(const xds_tokenizer *t, const char *s, size_t n, xds_idvec *out);

#endif
