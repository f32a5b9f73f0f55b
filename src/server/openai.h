/*
 * openai.h — the OpenAI API as data: parse and validate a request body of
 * POST /v1/completions or /v1/chat/completions into an xds_oai_request, and
 * format responses, server-sent-event chunks and errors in OpenAI's exact
 * shapes. No I/O, no engine, no tokenizer: the HTTP layer (http.c) does the
 * tokenizing and the context-length checks that need the model.
 *
 * Invariants: a request that parses successfully has every field type-checked
 * and range-checked; strings in it are NUL-free, valid UTF-8 (jansson rejects
 * both on load). On failure nothing stays allocated and `err` holds the HTTP
 * status, the OpenAI error type, the offending parameter and a one-line message.
 */
#ifndef XDS_SERVER_OPENAI_H
#define XDS_SERVER_OPENAI_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "engine/engine.h"
#include "sampler/sampler.h"

#define XDS_OAI_MAX_STOP 64 /* stop strings per request (OpenAI: 4; vLLM: any) */
#define XDS_OAI_MAX_STOP_LEN 1024 /* bytes per stop string */

typedef enum xds_oai_kind {
    XDS_OAI_COMPLETION = 0, /* POST /v1/completions */
    XDS_OAI_CHAT = 1,       /* POST /v1/chat/completions */
} xds_oai_kind;

typedef struct xds_oai_error {
    int http_status;  /* 400, 401, 404, 405, 413, 429, 500 */
    const char *type; /* "invalid_request_error", ... (static string) */
    const char *code; /* NULL or a static string such as "model_not_found" */
    char param[64];   /* offending parameter, "" for none */
    char message[512];
} xds_oai_error;

/* Fill err; the type follows from the status (400/405/413: invalid_request_error,
 * 401: authentication_error, 404: not_found_error, 429: rate_limit_error, 5xx:
 * server_error). param may be NULL. */
void xds_oai_error_set(xds_oai_error *err, int http_status, const char *param, const char *code,
                       const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* {"error":{"message":..,"type":..,"param":..,"code":..}}; malloc'd, NUL-terminated. */
char *xds_oai_error_json(const xds_oai_error *err, size_t *len);

typedef struct xds_oai_msg {
    char *role;    /* "system", "user" or "assistant" ("developer" maps to "system") */
    char *content; /* text parts joined with "\n" */
} xds_oai_msg;

typedef struct xds_oai_request {
    xds_oai_kind kind;
    char *model;             /* NULL when absent */
    /* completions: exactly one of prompt / prompt_ids */
    char *prompt;            /* (prompt_len) text, NUL-terminated */
    size_t prompt_len;
    int32_t *prompt_ids;     /* (n_prompt_ids) token ids, each >= 0 */
    int n_prompt_ids;
    /* chat */
    xds_oai_msg *messages;   /* (n_messages), n_messages >= 1 */
    int n_messages;
    int max_tokens;          /* 0: not given (server picks the default) */
    xds_sampler_params sampling; /* OpenAI defaults: temp 1, top_p 1, top_k/min_p off */
    int seed_given;          /* sampling.seed came from the request */
    char *stop[XDS_OAI_MAX_STOP];
    int n_stop;
    int stream;
    int include_usage;       /* stream_options.include_usage */
    int ignore_eos;          /* vLLM / llama-server extension */
} xds_oai_request;

/* Parse and validate body[0..len). On error returns XDS_ERR_INVALID (message
 * also in xds_err_msg) with err filled and *out untouched. */
xds_status xds_oai_request_parse(xds_oai_kind kind, const char *body, size_t len,
                                 xds_oai_request *out, xds_oai_error *err);
void xds_oai_request_free(xds_oai_request *r);

/* ---- responses ----------------------------------------------------------- */

typedef struct xds_oai_resp {
    xds_oai_kind kind;
    const char *id;     /* "chatcmpl-..." / "cmpl-..." */
    int64_t created;    /* unix seconds */
    const char *model;
} xds_oai_resp;

/* "stop", "length", or NULL (not finished / aborted / error). */
const char *xds_oai_finish_str(xds_finish f);

/* Non-streaming body: chat.completion or text_completion with usage. text
 * need not be valid UTF-8 (invalid bytes become U+FFFD). malloc'd. */
char *xds_oai_response_json(const xds_oai_resp *r, const char *text, size_t text_len,
                            const char *finish_reason, int n_prompt, int n_gen, size_t *len);

/* One SSE event "data: {...}\n\n" carrying a chunk. role: chat only, adds
 * delta.role "assistant" (first chunk). finish_reason NULL: null. usage_null:
 * add "usage": null (stream_options.include_usage was set). For a chat chunk
 * with a finish reason and no text the delta is {}. malloc'd. */
char *xds_oai_sse_chunk(const xds_oai_resp *r, int role, const char *text, size_t text_len,
                        const char *finish_reason, int usage_null, size_t *len);
/* The final usage chunk: "choices": [] and usage. malloc'd. */
char *xds_oai_sse_usage(const xds_oai_resp *r, int n_prompt, int n_gen, size_t *len);
/* An error inside a stream: data: {"error":{...}}\n\n. malloc'd. */
char *xds_oai_sse_error(const xds_oai_error *err, size_t *len);
#define XDS_OAI_SSE_DONE "data: [DONE]\n\n"

/* GET /v1/models body. malloc'd. */
char *xds_oai_models_json(const char *model, int64_t created, size_t *len);
/* GET /v1/models/{id}: the one model object (the same fields as in the list). */
char *xds_oai_model_json(const char *model, int64_t created, size_t *len);
/* A JSON string of s[0..n), invalid UTF-8 bytes replaced by U+FFFD (NULL on OOM). */
struct json_t *xds_oai_json_text(const char *s, size_t n);

/* Length of the longest prefix of s[0..n) that is valid UTF-8 (no overlongs,
 * no surrogates, <= U+10FFFF). */
size_t xds_oai_utf8_valid_prefix(const char *s, size_t n);

#endif
