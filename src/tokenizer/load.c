/*
 * load.c — building a tokenizer from a Hugging Face tokenizer.json (+ optional
 * tokenizer_config.json) or from GGUF metadata. Every field is checked before
 * use: a malformed or unsupported file is an error naming the file and the
 * field, never a crash. Supported: model BPE (byte-level), merges as "a b"
 * strings or [a, b] arrays, added tokens (special / normalized / lstrip /
 * rstrip), normalizer NFC (alone or in a Sequence), pre-tokenizers Sequence /
 * Split / ByteLevel / Digits, post-processor TemplateProcessing's BOS.
 */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "format/gguf.h"
#include "tokenizer/tokenizer_internal.h"
#include "tokenizer/unicode.h"

#define MAX_VOCAB (1 << 21) /* real vocabularies are < 300k */

/* ---- tokenizer.json ----------------------------------------------------- */

static int jbool(json_t *o, const char *key, int dflt) {
    json_t *v = json_object_get(o, key);
    if (json_is_boolean(v)) return json_is_true(v);
    return dflt;
}

static const char *jstr(json_t *o, const char *key) {
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static xds_status parse_normalizer(xds_tokenizer *t, json_t *n, const char *src) {
    if (!n || json_is_null(n)) return XDS_OK;
    const char *type = jstr(n, "type");
    if (!type) return xds_err_set(XDS_ERR_FORMAT, "%s: normalizer without a type", src);
    if (!strcmp(type, "NFC")) {
        t->nfc = 1;
        return XDS_OK;
    }
    if (!strcmp(type, "Sequence")) {
        json_t *arr = json_object_get(n, "normalizers");
        if (!json_is_array(arr)) return xds_err_set(XDS_ERR_FORMAT, "%s: normalizer Sequence without 'normalizers'", src);
        size_t i;
        json_t *e;
        json_array_foreach(arr, i, e) XDS_TRY(parse_normalizer(t, e, src));
        return XDS_OK;
    }
    return xds_err_set(XDS_ERR_UNSUPPORTED, "%s: unsupported normalizer type '%s'", src, type);
}

static xds_status parse_pretok(xds_tokenizer *t, json_t *p, int depth, int *bytelevel, const char *src) {
    if (!p || json_is_null(p)) return XDS_OK;
    if (depth > 8) return xds_err_set(XDS_ERR_FORMAT, "%s: pre_tokenizer nested too deeply", src);
    const char *type = jstr(p, "type");
    if (!type) return xds_err_set(XDS_ERR_FORMAT, "%s: pre_tokenizer without a type", src);
    if (!strcmp(type, "Sequence")) {
        json_t *arr = json_object_get(p, "pretokenizers");
        if (!json_is_array(arr)) return xds_err_set(XDS_ERR_FORMAT, "%s: pre_tokenizer Sequence without 'pretokenizers'", src);
        size_t i;
        json_t *e;
        json_array_foreach(arr, i, e) XDS_TRY(parse_pretok(t, e, depth + 1, bytelevel, src));
        return XDS_OK;
    }
    if (!strcmp(type, "ByteLevel")) {
        *bytelevel = 1;
        return xds_pretok_add_bytelevel(t, jbool(p, "add_prefix_space", 1), jbool(p, "use_regex", 1), src);
    }
    if (!strcmp(type, "Digits")) {
        const char *re = jbool(p, "individual_digits", 0) ? "\\p{N}" : "\\p{N}+";
        return xds_pretok_add_split(t, re, strlen(re), 0, XDS_SPLIT_ISOLATED, 0, src);
    }
    if (!strcmp(type, "Split")) {
        json_t *pat = json_object_get(p, "pattern");
        json_t *re = json_object_get(pat, "Regex"), *lit = json_object_get(pat, "String");
        json_t *ps = json_is_string(re) ? re : lit;
        if (!json_is_string(ps)) return xds_err_set(XDS_ERR_FORMAT, "%s: Split pre-tokenizer without a pattern", src);
        const char *beh = jstr(p, "behavior");
        xds_split_behavior b;
        if (!beh || !strcmp(beh, "Isolated")) b = XDS_SPLIT_ISOLATED;
        else if (!strcmp(beh, "Removed")) b = XDS_SPLIT_REMOVED;
        else if (!strcmp(beh, "MergedWithPrevious")) b = XDS_SPLIT_MERGED_PREV;
        else if (!strcmp(beh, "MergedWithNext")) b = XDS_SPLIT_MERGED_NEXT;
        else if (!strcmp(beh, "Contiguous")) b = XDS_SPLIT_CONTIGUOUS;
        else return xds_err_set(XDS_ERR_UNSUPPORTED, "%s: unsupported Split behavior '%s'", src, beh);
        return xds_pretok_add_split(t, json_string_value(ps), json_string_length(ps), ps == lit, b,
                                    jbool(p, "invert", 0), src);
    }
    return xds_err_set(XDS_ERR_UNSUPPORTED, "%s: unsupported pre_tokenizer type '%s'", src, type);
}

/* A token given in tokenizer_config.json as "text" or {"content": "text"}. */
static int32_t config_token(const xds_tokenizer *t, json_t *v) {
    if (json_is_object(v)) v = json_object_get(v, "content");
    if (!json_is_string(v)) return -1;
    return xds_tokenizer_find(t, json_string_value(v));
}

static xds_status parse_config(xds_tokenizer *t, json_t *cfg, const char *src) {
    if (!json_is_object(cfg)) return xds_err_set(XDS_ERR_FORMAT, "%s: not a JSON object", src);
    json_t *v;
    if ((v = json_object_get(cfg, "bos_token")) && !json_is_null(v)) {
        int32_t id = config_token(t, v);
        if (id < 0) return xds_err_set(XDS_ERR_FORMAT, "%s: bos_token is not a token of the vocabulary", src);
        t->bos = id;
    } else if (v) {
        t->bos = -1;
    }
    if ((v = json_object_get(cfg, "eos_token")) && !json_is_null(v)) {
        int32_t id = config_token(t, v);
        if (id < 0) return xds_err_set(XDS_ERR_FORMAT, "%s: eos_token is not a token of the vocabulary", src);
        t->eos = id;
    }
    if (json_is_boolean(v = json_object_get(cfg, "add_bos_token"))) t->add_bos = json_is_true(v);
    v = json_object_get(cfg, "chat_template");
    const char *tpl = NULL;
    if (json_is_string(v)) tpl = json_string_value(v);
    else if (json_is_array(v)) { /* [{"name": "default", "template": "..."}, ...] */
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) {
            const char *name = jstr(e, "name"), *tt = jstr(e, "template");
            if (tt && (!tpl || (name && !strcmp(name, "default")))) tpl = tt;
        }
    }
    if (tpl && !(t->chat_template = strdup(tpl))) return xds_err_set(XDS_ERR_NOMEM, "tokenizer: out of memory");
    return XDS_OK;
}

static xds_status load_json_root(json_t *root, json_t *cfg, const char *src, const char *cfg_src,
                                 xds_tokenizer **out) {
    if (!json_is_object(root)) return xds_err_set(XDS_ERR_FORMAT, "%s: not a JSON object", src);
    json_t *model = json_object_get(root, "model");
    if (!json_is_object(model)) return xds_err_set(XDS_ERR_FORMAT, "%s: missing 'model'", src);
    const char *mtype = jstr(model, "type");
    if (mtype && strcmp(mtype, "BPE"))
        return xds_err_set(XDS_ERR_UNSUPPORTED, "%s: model.type '%s' is not supported (only BPE)", src, mtype);
    json_t *vocab = json_object_get(model, "vocab"), *merges = json_object_get(model, "merges");
    if (!json_is_object(vocab)) return xds_err_set(XDS_ERR_FORMAT, "%s: model.vocab missing or not an object", src);
    if (!json_is_array(merges)) return xds_err_set(XDS_ERR_FORMAT, "%s: model.merges missing or not an array", src);
    const char *cont = jstr(model, "continuing_subword_prefix"), *eow = jstr(model, "end_of_word_suffix");
    if ((cont && *cont) || (eow && *eow))
        return xds_err_set(XDS_ERR_UNSUPPORTED, "%s: BPE continuing_subword_prefix / end_of_word_suffix not supported", src);
    json_t *dropout = json_object_get(model, "dropout");
    if (json_is_number(dropout) && json_number_value(dropout) > 0)
        return xds_err_set(XDS_ERR_UNSUPPORTED, "%s: BPE dropout not supported", src);

    /* ids: model vocab and added tokens */
    int64_t max_id = -1;
    const char *key;
    json_t *val;
    json_object_foreach(vocab, key, val) {
        if (!json_is_integer(val) || json_integer_value(val) < 0 || json_integer_value(val) >= MAX_VOCAB)
            return xds_err_set(XDS_ERR_FORMAT, "%s: model.vocab['%.64s'] is not an id in [0, %d)", src, key, MAX_VOCAB);
        if (json_integer_value(val) > max_id) max_id = json_integer_value(val);
    }
    json_t *added = json_object_get(root, "added_tokens");
    if (added && !json_is_null(added) && !json_is_array(added))
        return xds_err_set(XDS_ERR_FORMAT, "%s: added_tokens is not an array", src);
    size_t i;
    json_t *e;
    json_array_foreach(added, i, e) {
        json_t *id = json_object_get(e, "id");
        if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) >= MAX_VOCAB ||
            !json_is_string(json_object_get(e, "content")))
            return xds_err_set(XDS_ERR_FORMAT, "%s: added_tokens[%zu] needs an id in [0, %d) and a content string", src, i, MAX_VOCAB);
        if (json_integer_value(id) > max_id) max_id = json_integer_value(id);
    }
    if (max_id < 0) return xds_err_set(XDS_ERR_FORMAT, "%s: empty vocabulary", src);

    xds_tokenizer *t;
    XDS_TRY(xds_tok_alloc((int32_t)max_id + 1, &t));
    xds_status rc = XDS_OK;
    json_object_foreach(vocab, key, val) {
        int32_t id = (int32_t)json_integer_value(val);
        if (t->flags[id] & XDS_TOK_DEFINED) {
            rc = xds_err_set(XDS_ERR_FORMAT, "%s: model.vocab: id %d given twice", src, (int)id);
            goto fail;
        }
        if ((rc = xds_tok_set_text(t, id, key, strlen(key)))) goto fail;
    }
    if ((rc = xds_tok_build_vocab_map(t))) goto fail;
    json_array_foreach(added, i, e) {
        int32_t id = (int32_t)json_integer_value(json_object_get(e, "id"));
        json_t *c = json_object_get(e, "content");
        const char *s = json_string_value(c);
        size_t l = json_string_length(c);
        if (t->flags[id] & XDS_TOK_DEFINED) {
            if (t->text_len[id] != l || memcmp(t->arena + t->text_off[id], s, l)) {
                rc = xds_err_set(XDS_ERR_FORMAT, "%s: added_tokens[%zu] (id %d) conflicts with another token of that id", src, i, (int)id);
                goto fail;
            }
        } else if ((rc = xds_tok_set_text(t, id, s, l))) {
            goto fail;
        }
        if (xds_utf8_validate(s, l) != l) {
            rc = xds_err_set(XDS_ERR_FORMAT, "%s: added_tokens[%zu]: content is not valid UTF-8", src, i);
            goto fail;
        }
        int special = jbool(e, "special", 0);
        t->flags[id] |= XDS_TOK_ADDED | (special ? XDS_TOK_SPECIAL : 0) |
                        (jbool(e, "normalized", !special) ? XDS_TOK_NORMALIZED : 0) |
                        (jbool(e, "lstrip", 0) ? XDS_TOK_LSTRIP : 0) | (jbool(e, "rstrip", 0) ? XDS_TOK_RSTRIP : 0);
        if (jbool(e, "single_word", 0))
            XDS_LOGW("%s: added token %d: single_word is not supported, matched anywhere", src, (int)id);
    }
    /* merges */
    json_array_foreach(merges, i, e) {
        const char *a, *b;
        size_t la, lb;
        if (json_is_string(e)) {
            const char *s = json_string_value(e);
            const char *sp = strchr(s, ' ');
            if (!sp || strchr(sp + 1, ' ')) {
                rc = xds_err_set(XDS_ERR_FORMAT, "%s: model.merges[%zu] is not of the form 'a b'", src, i);
                goto fail;
            }
            a = s; la = (size_t)(sp - s); b = sp + 1; lb = strlen(b);
        } else if (json_is_array(e) && json_array_size(e) == 2 && json_is_string(json_array_get(e, 0)) &&
                   json_is_string(json_array_get(e, 1))) {
            a = json_string_value(json_array_get(e, 0)); la = json_string_length(json_array_get(e, 0));
            b = json_string_value(json_array_get(e, 1)); lb = json_string_length(json_array_get(e, 1));
        } else {
            rc = xds_err_set(XDS_ERR_FORMAT, "%s: model.merges[%zu] is neither 'a b' nor [a, b]", src, i);
            goto fail;
        }
        if (i >= INT32_MAX) { rc = xds_err_set(XDS_ERR_FORMAT, "%s: too many merges", src); goto fail; }
        if ((rc = xds_tok_add_merge(t, a, la, b, lb, (int32_t)i, src))) goto fail;
    }
    if ((rc = parse_normalizer(t, json_object_get(root, "normalizer"), src))) goto fail;
    int bytelevel = 0;
    if ((rc = parse_pretok(t, json_object_get(root, "pre_tokenizer"), 0, &bytelevel, src))) goto fail;
    const char *dec = jstr(json_object_get(root, "decoder"), "type");
    if (!bytelevel && !(dec && !strcmp(dec, "ByteLevel"))) {
        rc = xds_err_set(XDS_ERR_UNSUPPORTED, "%s: not a byte-level BPE tokenizer (no ByteLevel pre-tokenizer or decoder)", src);
        goto fail;
    }
    if ((rc = xds_tok_finish(t, src))) goto fail;
    if (jbool(model, "byte_fallback", 0))
        for (int b = 0; b < 256; b++) {
            char name[8];
            snprintf(name, sizeof name, "<0x%02X>", b);
            t->byte_fallback_id[b] = xds_strmap_get(t, &t->vocab, name, 6);
        }
    const char *unk = jstr(model, "unk_token");
    if (unk) t->unk_id = xds_strmap_get(t, &t->vocab, unk, strlen(unk));
    /* BOS from a TemplateProcessing post-processor that starts with a special token */
    json_t *pp = json_object_get(root, "post_processor");
    const char *ppt = jstr(pp, "type");
    if (ppt && !strcmp(ppt, "TemplateProcessing")) {
        json_t *first = json_array_get(json_object_get(pp, "single"), 0);
        const char *tok = jstr(json_object_get(first, "SpecialToken"), "id");
        if (tok && xds_tokenizer_find(t, tok) >= 0) {
            t->bos = xds_tokenizer_find(t, tok);
            t->add_bos = 1;
        }
    }
    if (cfg && (rc = parse_config(t, cfg, cfg_src))) goto fail;
    if (t->eos >= 0) t->flags[t->eos] |= XDS_TOK_EOG;
    *out = t;
    return XDS_OK;
fail:
    xds_tokenizer_free(t);
    return rc;
}

/* flags: JSON_DECODE_INT_AS_REAL for tokenizer_config.json, which transformers
 * writes with "model_max_length": 1000000000000000019884624838656 (int(1e30),
 * beyond int64) and from which only strings, booleans and token objects are
 * read; tokenizer.json keeps exact integers (token ids). */
static xds_status parse_json_buf(const char *buf, size_t len, const char *src, size_t flags, json_t **out) {
    json_error_t err;
    json_t *j = json_loadb(buf, len, JSON_ALLOW_NUL | flags, &err);
    if (!j) return xds_err_set(XDS_ERR_FORMAT, "%s: JSON error at line %d column %d: %s", src, err.line, err.column, err.text);
    *out = j;
    return XDS_OK;
}

xds_status xds_tokenizer_load_json_mem(const char *json, size_t len, const char *config, size_t config_len,
                                       xds_tokenizer **out) {
    json_t *root = NULL, *cfg = NULL;
    XDS_TRY(parse_json_buf(json, len, "tokenizer.json", 0, &root));
    xds_status rc = config ? parse_json_buf(config, config_len, "tokenizer_config.json", JSON_DECODE_INT_AS_REAL, &cfg) : XDS_OK;
    if (!rc) rc = load_json_root(root, cfg, "tokenizer.json", "tokenizer_config.json", out);
    json_decref(root);
    json_decref(cfg);
    return rc;
}

static xds_status read_file(const char *path, char **buf, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return xds_err_set(XDS_ERR_IO, "%s: cannot open", path);
    char *b = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n == cap) {
            cap = cap ? cap * 2 : 1 << 20;
            char *nb = realloc(b, cap);
            if (!nb) { free(b); fclose(f); return xds_err_set(XDS_ERR_NOMEM, "%s: out of memory", path); }
            b = nb;
        }
        size_t r = fread(b + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) { free(b); return xds_err_set(XDS_ERR_IO, "%s: read error", path); }
    *buf = b;
    *len = n;
    return XDS_OK;
}

xds_status xds_tokenizer_load_json(const char *tokenizer_json, const char *tokenizer_config_json,
                                   xds_tokenizer **out) {
    char *buf = NULL, *cbuf = NULL;
    size_t len = 0, clen = 0;
    json_t *root = NULL, *cfg = NULL;
    xds_status rc = read_file(tokenizer_json, &buf, &len);
    if (!rc && tokenizer_config_json) rc = read_file(tokenizer_config_json, &cbuf, &clen);
    if (!rc) rc = parse_json_buf(buf, len, tokenizer_json, 0, &root);
    if (!rc && cbuf) rc = parse_json_buf(cbuf, clen, tokenizer_config_json, JSON_DECODE_INT_AS_REAL, &cfg);
    free(buf);
    free(cbuf);
    if (!rc) rc = load_json_root(root, cfg, tokenizer_json, tokenizer_config_json ? tokenizer_config_json : "", out);
    json_decref(root);
    json_decref(cfg);
    return rc;
}

/* ---- GGUF --------------------------------------------------------------- */

enum { GGUF_TT_NORMAL = 1, GGUF_TT_UNKNOWN = 2, GGUF_TT_CONTROL = 3, GGUF_TT_USER_DEFINED = 4,
       GGUF_TT_UNUSED = 5, GGUF_TT_BYTE = 6 };

static xds_status gguf_id(const xds_gguf *g, const char *key, int32_t n, int32_t *out, const char *src) {
    uint32_t v;
    xds_status rc = xds_gguf_get_u32(g, key, &v);
    if (rc == XDS_ERR_NOT_FOUND) { xds_err_clear(); return XDS_OK; }
    if (rc) return rc;
    if (v >= (uint32_t)n) return xds_err_set(XDS_ERR_FORMAT, "%s: %s = %u is not a token id (vocab %d)", src, key, v, (int)n);
    *out = (int32_t)v;
    return XDS_OK;
}

xds_status xds_tokenizer_load_gguf(const xds_gguf *g, xds_tokenizer **out) {
    const char *src = xds_gguf_path(g);
    const char *s;
    uint64_t len;
    xds_status rc = xds_gguf_get_str(g, "tokenizer.ggml.model", &s, &len);
    if (rc) return rc;
    if (len != 4 || memcmp(s, "gpt2", 4))
        return xds_err_set(XDS_ERR_UNSUPPORTED, "%s: tokenizer.ggml.model '%.*s' is not supported (only gpt2 byte-level BPE)",
                           src, (int)(len > 64 ? 64 : len), s);
    xds_gguf_type et;
    uint64_t n, nt = 0, nm = 0;
    const void *data, *types = NULL;
    if ((rc = xds_gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n, &data))) return rc; /* the reader names file and key */
    if (et != XDS_GGUF_STRING || n == 0 || n > MAX_VOCAB)
        return xds_err_set(XDS_ERR_FORMAT, "%s: tokenizer.ggml.tokens must be a non-empty string array (<= %d)", src, MAX_VOCAB);
    rc = xds_gguf_get_arr(g, "tokenizer.ggml.token_type", &et, &nt, &types);
    if (rc == XDS_ERR_NOT_FOUND) { xds_err_clear(); types = NULL; }
    else if (rc) return rc; /* the reader names file and key */
    else if (nt != n || (et != XDS_GGUF_INT32 && et != XDS_GGUF_UINT32))
        return xds_err_set(XDS_ERR_FORMAT, "%s: tokenizer.ggml.token_type must be %llu int32 values", src, (unsigned long long)n);
    if ((rc = xds_gguf_get_arr(g, "tokenizer.ggml.merges", &et, &nm, &data))) return rc; /* the reader names file and key */
    if (et != XDS_GGUF_STRING) return xds_err_set(XDS_ERR_FORMAT, "%s: tokenizer.ggml.merges must be a string array", src);

    xds_tokenizer *t;
    XDS_TRY(xds_tok_alloc((int32_t)n, &t));
    for (uint64_t i = 0; i < n; i++) {
        if ((rc = xds_gguf_get_arr_str(g, "tokenizer.ggml.tokens", i, &s, &len))) goto fail;
        if (len > (1u << 20)) { rc = xds_err_set(XDS_ERR_FORMAT, "%s: token %llu is too long", src, (unsigned long long)i); goto fail; }
        if ((rc = xds_tok_set_text(t, (int32_t)i, s, len))) goto fail;
    }
    if ((rc = xds_tok_build_vocab_map(t))) goto fail;
    if (types) {
        for (uint64_t i = 0; i < n; i++) {
            int32_t ty;
            memcpy(&ty, (const char *)types + i * 4, 4);
            const char *txt = t->arena + t->text_off[i];
            size_t tl = t->text_len[i];
            if (ty != GGUF_TT_CONTROL && ty != GGUF_TT_USER_DEFINED) continue;
            if (tl == 0 || xds_utf8_validate(txt, tl) != tl) continue; /* cannot be matched in text */
            /* llama.cpp: control tokens are parsed only with parse_special,
             * user-defined ones always */
            t->flags[i] |= XDS_TOK_ADDED | (ty == GGUF_TT_CONTROL ? XDS_TOK_SPECIAL : 0);
        }
    }
    for (uint64_t i = 0; i < nm; i++) {
        if ((rc = xds_gguf_get_arr_str(g, "tokenizer.ggml.merges", i, &s, &len))) goto fail;
        const char *sp = len > 1 ? memchr(s + 1, ' ', len - 1) : NULL;
        if (!sp) { rc = xds_err_set(XDS_ERR_FORMAT, "%s: tokenizer.ggml.merges[%llu] is not 'a b'", src, (unsigned long long)i); goto fail; }
        if (i >= INT32_MAX) { rc = xds_err_set(XDS_ERR_FORMAT, "%s: too many merges", src); goto fail; }
        if ((rc = xds_tok_add_merge(t, s, (size_t)(sp - s), sp + 1, len - (size_t)(sp - s) - 1, (int32_t)i, src))) goto fail;
    }
    char pre[64] = "default";
    rc = xds_gguf_get_str(g, "tokenizer.ggml.pre", &s, &len);
    if (rc == XDS_ERR_NOT_FOUND) { xds_err_clear(); rc = XDS_OK; }
    else if (rc) goto fail;
    else snprintf(pre, sizeof pre, "%.*s", (int)(len > 63 ? 63 : len), s);
    if ((rc = xds_pretok_from_gguf_pre(t, pre, src))) goto fail;
    if ((rc = xds_tok_finish(t, src))) goto fail;

    int32_t eot = -1, eom = -1;
    if ((rc = gguf_id(g, "tokenizer.ggml.bos_token_id", t->n_vocab, &t->bos, src))) goto fail;
    if ((rc = gguf_id(g, "tokenizer.ggml.eos_token_id", t->n_vocab, &t->eos, src))) goto fail;
    if ((rc = gguf_id(g, "tokenizer.ggml.eot_token_id", t->n_vocab, &eot, src))) goto fail;
    if ((rc = gguf_id(g, "tokenizer.ggml.eom_token_id", t->n_vocab, &eom, src))) goto fail;
    /* tokenizer.ggml.unknown_token_id is not used: a gpt2 vocab covers every byte */
    if (t->eos >= 0) t->flags[t->eos] |= XDS_TOK_EOG;
    if (eot >= 0) t->flags[eot] |= XDS_TOK_EOG;
    if (eom >= 0) t->flags[eom] |= XDS_TOK_EOG;
    int ab = 0;
    rc = xds_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &ab);
    if (rc == XDS_ERR_NOT_FOUND) { xds_err_clear(); rc = XDS_OK; ab = 0; }
    else if (rc) goto fail;
    t->add_bos = ab;
    rc = xds_gguf_get_str(g, "tokenizer.chat_template", &s, &len);
    if (rc == XDS_ERR_NOT_FOUND) { xds_err_clear(); rc = XDS_OK; }
    else if (rc) goto fail;
    else if (!(t->chat_template = strndup(s, len))) { rc = xds_err_set(XDS_ERR_NOMEM, "tokenizer: out of memory"); goto fail; }
    *out = t;
    return XDS_OK;
fail:
    xds_tokenizer_free(t);
    return rc;
}
