/*
 * output.h — output processing of one request: generated tokens in, text
 * and a finish reason out. Streaming detokenization (tokenizer's xds_detok,
 * special tokens skipped), stop strings, end-of-generation tokens, and the
 * length limit.
 *
 * Stop strings: text that could still be the start of a stop string is
 * withheld until it is resolved; when a stop string appears, the text before
 * it is emitted, the stop string and everything after it are dropped and the
 * request finishes STOP. Because every emitted byte was checked not to begin
 * a (partial) stop string, a match always lies wholly inside the withheld
 * text. An EOG token (unless ignore_eos) finishes STOP without its own text;
 * max_tokens finishes LENGTH. On any finish, text withheld for a possible
 * stop string and bytes held by the detokenizer are flushed.
 *
 * Without a tokenizer (tok == NULL) no text is produced, stop strings never
 * match, and EOG is the model's eos id (eos_fallback, -1 for none).
 *
 * Invariants: emitted text is valid UTF-8 when the detokenizer's output is;
 * after a finish, push does nothing. Not thread-safe (one request).
 */
#ifndef XDS_ENGINE_OUTPUT_H
#define XDS_ENGINE_OUTPUT_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "engine/engine.h"
#include "tokenizer/tokenizer.h"

typedef struct xds_output {
    const xds_tokenizer *tok; /* borrowed; NULL: ids only */
    xds_detok detok;
    char **stop;          /* (n_stop) owned copies, non-empty */
    int n_stop;
    int ignore_eos;
    int32_t eos_fallback; /* EOG id when tok == NULL */
    int max_tokens;
    int n_gen;            /* tokens pushed */
    int finished;
    char *pending;        /* text not yet emitted (could start a stop string) */
    size_t n_pending, cap_pending;
    char *out;            /* text of the last push */
    size_t n_out, cap_out;
} xds_output;

/* Empty stop strings are ignored. XDS_ERR_NOMEM only. */
xds_status xds_output_init(xds_output *o, const xds_tokenizer *tok, int32_t eos_fallback,
                           const char *const *stop, int n_stop, int ignore_eos, int max_tokens);
void xds_output_free(xds_output *o);

/* One generated token. *text / *len: the text to emit now (owned by o, valid
 * until the next call). Returns the finish reason (NONE: go on). at_limit: the
 * sequence has reached its context limit with this token (finish LENGTH). */
xds_finish xds_output_push(xds_output *o, int32_t token, int at_limit, const char **text,
                           size_t *len);
/* The text path of push, for callers that detokenize themselves and for
 * tests: append piece, apply stop strings; final != 0 flushes everything
 * withheld (the request ends for another reason). Returns STOP if a stop
 * string matched, else NONE. */
xds_finish xds_output_push_text(xds_output *o, const char *piece, size_t n, int final,
                                const char **text, size_t *len);

#endif
