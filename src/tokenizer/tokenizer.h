/*
 * tokenizer.h — byte-level BPE tokenizer (GPT-2 style), exact against Hugging
 * Face `tokenizers`, loaded from a `tokenizer.json` or from GGUF metadata; a
 * streaming detokenizer; and the chat templates of the supported families.
 *
 * Encoding follows the HF pipeline: added tokens are split out first (special
 * ones only when parse_special is set; non-special added tokens always, as HF
 * does with split_special_tokens=True), the remaining text is normalized (NFC
 * when the tokenizer.json asks for it), pre-tokenized by the model's sequence
 * of regex splits (PCRE2, UTF + UCP), mapped to the GPT-2 byte alphabet and
 * merged by BPE rank. No BOS/EOS is added by encode: the caller adds BOS when
 * xds_tokenizer_add_bos() says so (and never to a rendered chat prompt, whose
 * template already contains the BOS text where the family wants it).
 *
 * Invariants: a loaded xds_tokenizer is immutable, so one may be shared by
 * threads; every id in [0, n_vocab) has a piece (possibly empty for ids no
 * file defines); nothing is cached globally.
 */
#ifndef XDS_TOKENIZER_TOKENIZER_H
#define XDS_TOKENIZER_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"

typedef struct xds_tokenizer xds_tokenizer;
typedef struct xds_gguf xds_gguf;

/* ---- loading ------------------------------------------------------------ */

/* From a Hugging Face tokenizer.json (model.type "BPE", byte-level) and,
 * optionally, its tokenizer_config.json (bos/eos tokens, add_bos_token,
 * chat_template). tokenizer_config_json may be NULL. */
xds_status xds_tokenizer_load_json(const char *tokenizer_json, const char *tokenizer_config_json,
                                   xds_tokenizer **out);
/* The same from memory (config may be NULL / 0). Used by the fuzzer. */
xds_status xds_tokenizer_load_json_mem(const char *json, size_t len, const char *config,
                                       size_t config_len, xds_tokenizer **out);
/* From GGUF metadata: tokenizer.ggml.model "gpt2", .tokens, .merges,
 * .token_type, .pre, .bos/eos/eot ids, .add_bos_token, tokenizer.chat_template. */
xds_status xds_tokenizer_load_gguf(const xds_gguf *g, xds_tokenizer **out);
void xds_tokenizer_free(xds_tokenizer *t);

/* ---- vocabulary --------------------------------------------------------- */

/* 1 + the largest id defined (model vocab and added tokens). */
int xds_tokenizer_n_vocab(const xds_tokenizer *t);
/* Raw bytes of the token after byte-level decoding (not NUL-terminated;
 * *len set). Special tokens give their text. NULL (len 0) if id is out of
 * range. */
const char *xds_tokenizer_piece(const xds_tokenizer *t, int32_t id, size_t *len);
/* Id of a token by its text as written in the vocabulary / added tokens
 * (e.g. "<|im_end|>", or the byte-level form "Ġthe"); -1 if absent. */
int32_t xds_tokenizer_find(const xds_tokenizer *t, const char *token_text);
int32_t xds_tokenizer_bos(const xds_tokenizer *t); /* -1 if none */
int32_t xds_tokenizer_eos(const xds_tokenizer *t); /* -1 if none */
/* Whether prompts get BOS prepended (GGUF add_bos_token / config add_bos_token). */
int xds_tokenizer_add_bos(const xds_tokenizer *t);
/* End of generation: eos, eot, <|im_end|>, <|endoftext|>, DeepSeek's
 * end-of-sentence, ... (whichever the vocabulary has). */
int xds_tokenizer_is_eog(const xds_tokenizer *t, int32_t id);
/* Special (control) token: an added token flagged special. */
int xds_tokenizer_is_special(const xds_tokenizer *t, int32_t id);

/* ---- encoding / decoding ------------------------------------------------ */

/* Tokenize text[0..len). Caller frees *ids with free(). Invalid UTF-8 gives
 * XDS_ERR_INVALID naming the byte offset. parse_special=1 turns special-token
 * strings in the text into their ids (HF's default); 0 tokenizes them as text. */
xds_status xds_tokenizer_encode(const xds_tokenizer *t, const char *text, size_t len,
                                int parse_special, int32_t **ids, size_t *n_ids);
/* Concatenated pieces of ids (skip_special drops special tokens); the result
 * is NUL-terminated, may contain invalid UTF-8 if the ids do; free() it. */
xds_status xds_tokenizer_decode(const xds_tokenizer *t, const int32_t *ids, size_t n,
                                int skip_special, char **out, size_t *out_len);

/* Streaming detokenizer: emits only complete UTF-8 sequences. A multi-byte
 * sequence split across tokens is held back until complete; an invalid
 * sequence becomes U+FFFD (one per maximal invalid subpart, like Python's
 * errors="replace"). Output that does not fit in `cap` stays queued and comes
 * out on the next push / flush. */
typedef struct xds_detok {
    char *buf;        /* queued bytes: [0, n_ready) valid UTF-8 ready to emit, then held tail */
    size_t n;         /* bytes in buf */
    size_t n_ready;   /* prefix of buf that is complete, valid UTF-8 */
    size_t cap;       /* allocated size of buf */
    int skip_special; /* drop special tokens instead of rendering their text */
} xds_detok;

void xds_detok_init(xds_detok *d, int skip_special);
void xds_detok_free(xds_detok *d);
/* Feed one token (id < 0: feed nothing, only drain). Writes up to cap bytes of
 * complete UTF-8 to out and returns how many. */
size_t xds_detok_push(xds_detok *d, const xds_tokenizer *t, int32_t id, char *out, size_t cap);
/* End of stream: an incomplete held sequence becomes U+FFFD. Returns bytes
 * written (call again while it returns cap). */
size_t xds_detok_flush(xds_detok *d, char *out, size_t cap);

/* ---- chat templates ----------------------------------------------------- */

typedef struct {
    const char *role;    /* "system", "user", "assistant" */
    const char *content; /* NUL-terminated UTF-8 */
} xds_chat_msg;

typedef enum xds_chat_family {
    XDS_CHAT_NONE = 0,    /* no template known */
    XDS_CHAT_CHATML,      /* generic ChatML; SmolLM2 (default system prompt from the template) */
    XDS_CHAT_QWEN3,       /* Qwen3 ChatML with <think> handling */
    XDS_CHAT_DEEPSEEK_V3, /* DeepSeek-V3: BOS + system, <｜User｜>/<｜Assistant｜> */
} xds_chat_family;

typedef struct {
    int enable_thinking; /* Qwen3: -1 = template default (thinking on), 0 = off, 1 = on */
} xds_chat_opts;

/* Family detected from the tokenizer's chat template text (GGUF
 * tokenizer.chat_template / tokenizer_config.json chat_template). */
xds_chat_family xds_chat_family_of(const xds_tokenizer *t);
/* The raw template text, or NULL. */
const char *xds_tokenizer_chat_template(const xds_tokenizer *t);

/* Render a plain conversation exactly as transformers' apply_chat_template
 * does with the family's template (tokenize=False). *out is NUL-terminated;
 * free() it. Unknown family or unsupported role → error. */
xds_status xds_chat_render(const xds_tokenizer *t, const xds_chat_msg *msgs, size_t n,
                           int add_generation_prompt, char **out);
xds_status xds_chat_render_ex(const xds_tokenizer *t, const xds_chat_msg *msgs, size_t n,
                              int add_generation_prompt, const xds_chat_opts *opts, char **out);

#endif
