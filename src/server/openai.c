/*
 * openai.c — OpenAI request parsing/validation and response formatting with
 * jansson (see openai.h).
 *
 * Validation is strict on types (a string where a number belongs is a 400
 * naming the parameter) and on ranges (temperature 0..2, top_p (0,1],
 * penalties -2..2, n == 1, at most 64 stop strings), lenient on unknown fields
 * (ignored, as vLLM does). Features we cannot honor (n > 1, logprobs, echo,
 * tools, non-text content parts) are 400s rather than silently dropped.
 */
#include "server/openai.h"

#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Errors                                                                    */

static const char *oai_error_type(int status) {
    switch (status) {
    case 401: return "authentication_error";
    case 404: return "not_found_error";
    case 429: return "rate_limit_error";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

void xds_oai_error_set(xds_oai_error *err, int http_status, const char *param, const char *code,
                       const char *fmt, ...) {
    err->http_status = http_status;
    err->type = oai_error_type(http_status);
    err->code = code;
    snprintf(err->param, sizeof err->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
}

/* A json string from bytes that may hold invalid UTF-8: invalid bytes → U+FFFD. */
static json_t *oai_json_text(const char *s, size_t n) {
    size_t ok = xds_oai_utf8_valid_prefix(s, n);
    if (ok == n) return json_stringn(s, n);
    char *buf = malloc(n * 3 + 1);
    if (!buf) return NULL;
    size_t o = 0, i = 0;
    while (i < n) {
        size_t v = xds_oai_utf8_valid_prefix(s + i, n - i);
        memcpy(buf + o, s + i, v);
        o += v;
        i += v;
        if (i < n) { /* one invalid byte → U+FFFD */
            memcpy(buf + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        }
    }
    json_t *j = json_stringn(buf, o);
    free(buf);
    return j;
}

static json_t *oai_error_obj(const xds_oai_error *err) {
    json_t *e = json_object();
    json_object_set_new(e, "message", oai_json_text(err->message, strlen(err->message)));
    json_object_set_new(e, "type", json_string(err->type ? err->type : "invalid_request_error"));
    json_object_set_new(e, "param", err->param[0] ? oai_json_text(err->param, strlen(err->param)) : json_null());
    json_object_set_new(e, "code", err->code ? json_string(err->code) : json_null());
    json_t *root = json_object();
    json_object_set_new(root, "error", e);
    return root;
}

static char *oai_dump(json_t *j, size_t *len) {
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (len) *len = s ? strlen(s) : 0;
    return s;
}

char *xds_oai_error_json(const xds_oai_error *err, size_t *len) {
    return oai_dump(oai_error_obj(err), len);
}

/* ------------------------------------------------------------------------ */
/* UTF-8                                                                     */

size_t xds_oai_utf8_valid_prefix(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned c = p[i];
        if (c < 0x80) { i++; continue; }
        size_t k;
        unsigned cp;
        if (c >= 0xC2 && c <= 0xDF) { k = 1; cp = c & 0x1F; }
        else if (c >= 0xE0 && c <= 0xEF) { k = 2; cp = c & 0x0F; }
        else if (c >= 0xF0 && c <= 0xF4) { k = 3; cp = c & 0x07; }
        else return i;
        for (size_t j = 1; j <= k; j++) {
            if (i + j >= n || (p[i + j] & 0xC0) != 0x80) return i;
            cp = (cp << 6) | (p[i + j] & 0x3F);
        }
        if ((k == 2 && cp < 0x800) || (k == 3 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return i;
        i += k + 1;
    }
    return n;
}

/* ------------------------------------------------------------------------ */
/* Request parsing                                                           */

#define BAD(param, ...) (xds_oai_error_set(err, 400, param, NULL, __VA_ARGS__), -1)

static const char *oai_type_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

/* Each getter: absent or null leaves *out alone and returns 0; a present
 * value of the wrong type or range fills err and returns -1. */
static int get_bool(json_t *o, const char *key, int *out, xds_oai_error *err) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v)) return BAD(key, "'%s' must be a boolean, got %s", key, oai_type_name(v));
    *out = json_is_true(v);
    return 0;
}

static int get_num(json_t *o, const char *key, double lo, double hi, int lo_open, float *out,
                   xds_oai_error *err) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v)) return BAD(key, "'%s' must be a number, got %s", key, oai_type_name(v));
    double d = json_number_value(v);
    if (!(d >= lo && d <= hi) || (lo_open && d == lo))
        return BAD(key, "'%s' must be in %s%g, %g], got %g", key, lo_open ? "(" : "[", lo, hi, d);
    *out = (float)d;
    return 0;
}

static int get_int(json_t *o, const char *key, long long lo, long long hi, long long *out,
                   xds_oai_error *err) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_integer(v)) return BAD(key, "'%s' must be an integer, got %s", key, oai_type_name(v));
    long long x = json_integer_value(v);
    if (x < lo || x > hi) return BAD(key, "'%s' must be in [%lld, %lld], got %lld", key, lo, hi, x);
    *out = x;
    return 0;
}

static char *dup_n(const char *s, size_t n) {
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = 0;
    }
    return d;
}

/* Message content: a string, a list of {"type":"text","text":...} parts, or
 * (assistant only) null. */
static int parse_content(json_t *c, int i, int allow_null, char **out, xds_oai_error *err) {
    char param[48];
    snprintf(param, sizeof param, "messages[%d].content", i);
    if (!c || json_is_null(c)) {
        if (!allow_null) return BAD(param, "'%s' is required", param);
        *out = dup_n("", 0);
        return *out ? 0 : BAD(param, "out of memory");
    }
    if (json_is_string(c)) {
        *out = dup_n(json_string_value(c), json_string_length(c));
        return *out ? 0 : BAD(param, "out of memory");
    }
    if (!json_is_array(c))
        return BAD(param, "'%s' must be a string or a list of text parts, got %s", param, oai_type_name(c));
    size_t total = 0, n = json_array_size(c);
    for (size_t k = 0; k < n; k++) {
        json_t *part = json_array_get(c, k);
        json_t *ty = json_is_object(part) ? json_object_get(part, "type") : NULL;
        json_t *tx = json_is_object(part) ? json_object_get(part, "text") : NULL;
        if (!json_is_object(part) || !json_is_string(ty))
            return BAD(param, "'%s[%zu]' must be an object with a string 'type'", param, k);
        if (strcmp(json_string_value(ty), "text") != 0)
            return BAD(param, "'%s[%zu]': content part type '%s' is not supported (only 'text')",
                       param, k, json_string_value(ty));
        if (!json_is_string(tx)) return BAD(param, "'%s[%zu].text' must be a string", param, k);
        total += json_string_length(tx) + 1;
    }
    char *s = malloc(total + 1), *p = s;
    if (!s) return BAD(param, "out of memory");
    for (size_t k = 0; k < n; k++) {
        json_t *tx = json_object_get(json_array_get(c, k), "text");
        if (k) *p++ = '\n';
        memcpy(p, json_string_value(tx), json_string_length(tx));
        p += json_string_length(tx);
    }
    *p = 0;
    *out = s;
    return 0;
}

static int parse_messages(json_t *root, xds_oai_request *r, xds_oai_error *err) {
    json_t *m = json_object_get(root, "messages");
    if (!m || json_is_null(m)) return BAD("messages", "missing required parameter 'messages'");
    if (!json_is_array(m)) return BAD("messages", "'messages' must be an array, got %s", oai_type_name(m));
    size_t n = json_array_size(m);
    if (n == 0) return BAD("messages", "'messages' must not be empty");
    if (n > 100000) return BAD("messages", "too many messages (%zu)", n);
    r->messages = calloc(n, sizeof *r->messages);
    if (!r->messages) return BAD("messages", "out of memory");
    for (size_t i = 0; i < n; i++) {
        json_t *msg = json_array_get(m, i);
        char param[48];
        snprintf(param, sizeof param, "messages[%zu].role", i);
        if (!json_is_object(msg))
            return BAD("messages", "'messages[%zu]' must be an object, got %s", i, oai_type_name(msg));
        json_t *role = json_object_get(msg, "role");
        if (!json_is_string(role)) return BAD(param, "'%s' must be a string", param);
        const char *rs = json_string_value(role);
        if (!strcmp(rs, "developer")) rs = "system";
        if (strcmp(rs, "system") && strcmp(rs, "user") && strcmp(rs, "assistant"))
            return BAD(param, "'%s': role '%s' is not supported (system, user, assistant)", param,
                       json_string_value(role));
        json_t *tc = json_object_get(msg, "tool_calls");
        if (tc && !json_is_null(tc) && !(json_is_array(tc) && json_array_size(tc) == 0))
            return BAD("messages", "'messages[%zu].tool_calls' is not supported", i);
        r->messages[i].role = dup_n(rs, strlen(rs));
        r->n_messages = (int)i + 1;
        if (!r->messages[i].role) return BAD("messages", "out of memory");
        if (parse_content(json_object_get(msg, "content"), (int)i, !strcmp(rs, "assistant"),
                          &r->messages[i].content, err))
            return -1;
    }
    return 0;
}

static int parse_ids(json_t *a, xds_oai_request *r, xds_oai_error *err) {
    size_t n = json_array_size(a);
    if (n == 0) return BAD("prompt", "'prompt' must not be empty");
    if (n > (1u << 24)) return BAD("prompt", "'prompt' has too many token ids");
    r->prompt_ids = malloc(n * sizeof *r->prompt_ids);
    if (!r->prompt_ids) return BAD("prompt", "out of memory");
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(a, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX)
            return BAD("prompt", "'prompt[%zu]' must be a non-negative token id", i);
        r->prompt_ids[i] = (int32_t)json_integer_value(v);
    }
    r->n_prompt_ids = (int)n;
    return 0;
}

static int parse_prompt(json_t *root, xds_oai_request *r, xds_oai_error *err) {
    json_t *p = json_object_get(root, "prompt");
    if (!p || json_is_null(p)) return BAD("prompt", "missing required parameter 'prompt'");
    if (json_is_array(p)) {
        size_t n = json_array_size(p);
        if (n == 0) return BAD("prompt", "'prompt' must not be empty");
        json_t *first = json_array_get(p, 0);
        if (json_is_integer(first)) return parse_ids(p, r, err);
        if (n > 1) return BAD("prompt", "batched prompts (a list of %zu prompts) are not supported; send one", n);
        if (json_is_array(first)) return parse_ids(first, r, err);
        p = first;
    }
    if (!json_is_string(p))
        return BAD("prompt", "'prompt' must be a string, a list of one string or a list of token ids, got %s",
                   oai_type_name(p));
    if (json_string_length(p) == 0) return BAD("prompt", "'prompt' must not be empty");
    r->prompt = dup_n(json_string_value(p), json_string_length(p));
    r->prompt_len = json_string_length(p);
    return r->prompt ? 0 : BAD("prompt", "out of memory");
}

static int parse_stop(json_t *root, xds_oai_request *r, xds_oai_error *err) {
    json_t *s = json_object_get(root, "stop");
    if (!s || json_is_null(s)) return 0;
    json_t *one[1] = {s};
    json_t **items = one;
    size_t n = 1;
    if (json_is_array(s)) {
        n = json_array_size(s);
        if (n > XDS_OAI_MAX_STOP) return BAD("stop", "'stop' has %zu entries; at most %d", n, XDS_OAI_MAX_STOP);
        items = NULL;
    } else if (!json_is_string(s)) {
        return BAD("stop", "'stop' must be a string or a list of strings, got %s", oai_type_name(s));
    }
    for (size_t i = 0; i < n; i++) {
        json_t *v = items ? items[i] : json_array_get(s, i);
        if (!json_is_string(v)) return BAD("stop", "'stop[%zu]' must be a string, got %s", i, oai_type_name(v));
        size_t len = json_string_length(v);
        if (len == 0) continue; /* an empty stop string can never match */
        if (len > XDS_OAI_MAX_STOP_LEN)
            return BAD("stop", "'stop' strings are limited to %d bytes", XDS_OAI_MAX_STOP_LEN);
        r->stop[r->n_stop] = dup_n(json_string_value(v), len);
        if (!r->stop[r->n_stop]) return BAD("stop", "out of memory");
        r->n_stop++;
    }
    return 0;
}

/* Fields whose presence asks for something we do not do. */
static int reject_unsupported(json_t *root, xds_oai_kind kind, xds_oai_error *err) {
    long long n = 1;
    if (get_int(root, "n", 1, 128, &n, err)) return -1;
    if (n != 1) return BAD("n", "'n' must be 1 (several choices per request are not supported)");
    long long best_of = 1;
    if (get_int(root, "best_of", 1, 128, &best_of, err)) return -1;
    if (best_of != 1) return BAD("best_of", "'best_of' must be 1");
    json_t *v = json_object_get(root, "logprobs");
    if (v && !json_is_null(v) && !json_is_false(v) && !(json_is_integer(v) && json_integer_value(v) == 0))
        return BAD("logprobs", "'logprobs' is not supported");
    v = json_object_get(root, "top_logprobs");
    if (v && !json_is_null(v) && !(json_is_integer(v) && json_integer_value(v) == 0))
        return BAD("top_logprobs", "'top_logprobs' is not supported");
    v = json_object_get(root, "echo");
    if (v && json_is_true(v)) return BAD("echo", "'echo' is not supported");
    v = json_object_get(root, "suffix");
    if (v && json_is_string(v) && json_string_length(v) > 0) return BAD("suffix", "'suffix' is not supported");
    v = json_object_get(root, "tools");
    if (v && !json_is_null(v) && !(json_is_array(v) && json_array_size(v) == 0))
        return BAD("tools", "'tools' (function calling) is not supported");
    v = json_object_get(root, "response_format");
    if (v && !json_is_null(v)) {
        json_t *t = json_is_object(v) ? json_object_get(v, "type") : NULL;
        if (!json_is_string(t)) return BAD("response_format", "'response_format' must be an object with a 'type'");
        if (strcmp(json_string_value(t), "text") != 0)
            return BAD("response_format", "response_format type '%s' is not supported", json_string_value(t));
    }
    (void)kind;
    return 0;
}

static int parse_root(json_t *root, xds_oai_kind kind, xds_oai_request *r, xds_oai_error *err) {
    if (!json_is_object(root)) return BAD(NULL, "the request body must be a JSON object, got %s", oai_type_name(root));
    json_t *model = json_object_get(root, "model");
    if (model && !json_is_null(model)) {
        if (!json_is_string(model)) return BAD("model", "'model' must be a string, got %s", oai_type_name(model));
        r->model = dup_n(json_string_value(model), json_string_length(model));
        if (!r->model) return BAD("model", "out of memory");
    }
    if (kind == XDS_OAI_CHAT ? parse_messages(root, r, err) : parse_prompt(root, r, err)) return -1;
    if (reject_unsupported(root, kind, err)) return -1;

    long long mt = 0;
    if (get_int(root, "max_tokens", 1, INT32_MAX, &mt, err)) return -1;
    if (kind == XDS_OAI_CHAT && get_int(root, "max_completion_tokens", 1, INT32_MAX, &mt, err)) return -1;
    r->max_tokens = (int)mt;

    xds_sampler_params *sp = &r->sampling;
    if (get_num(root, "temperature", 0, 2, 0, &sp->temp, err)) return -1;
    if (get_num(root, "top_p", 0, 1, 1, &sp->top_p, err)) return -1;
    long long top_k = sp->top_k;
    if (get_int(root, "top_k", -1, INT32_MAX, &top_k, err)) return -1;
    sp->top_k = top_k < 0 ? 0 : (int)top_k;
    if (get_num(root, "min_p", 0, 1, 0, &sp->min_p, err)) return -1;
    if (get_num(root, "presence_penalty", -2, 2, 0, &sp->presence_penalty, err)) return -1;
    if (get_num(root, "frequency_penalty", -2, 2, 0, &sp->frequency_penalty, err)) return -1;
    if (get_num(root, "repetition_penalty", 0, 10, 1, &sp->repeat_penalty, err)) return -1;
    json_t *seed = json_object_get(root, "seed");
    if (seed && !json_is_null(seed)) {
        if (!json_is_integer(seed)) return BAD("seed", "'seed' must be an integer, got %s", oai_type_name(seed));
        sp->seed = (uint64_t)json_integer_value(seed);
        r->seed_given = 1;
    }
    json_t *lb = json_object_get(root, "logit_bias");
    if (lb && !json_is_null(lb)) {
        if (!json_is_object(lb))
            return BAD("logit_bias", "'logit_bias' must be an object of token id -> bias, got %s", oai_type_name(lb));
        if (json_object_size(lb) > XDS_MAX_LOGIT_BIAS)
            return BAD("logit_bias", "'logit_bias' has %zu entries (at most %d)", json_object_size(lb),
                       XDS_MAX_LOGIT_BIAS);
        const char *key;
        json_t *val;
        sp->n_logit_bias = 0;
        json_object_foreach(lb, key, val) {
            char *end = NULL;
            long id = (*key >= '0' && *key <= '9') ? strtol(key, &end, 10) : -1;
            if (id < 0 || !end || *end || id > INT32_MAX)
                return BAD("logit_bias", "logit_bias key '%.40s' is not a token id (a non-negative integer)", key);
            if (!json_is_number(val) || !isfinite(json_number_value(val)) || json_number_value(val) < -100 ||
                json_number_value(val) > 100)
                return BAD("logit_bias", "logit_bias[%ld] must be a number in [-100, 100]", id);
            sp->logit_bias_tok[sp->n_logit_bias] = (int32_t)id;
            sp->logit_bias[sp->n_logit_bias++] = (float)json_number_value(val);
        }
    }
    if (parse_stop(root, r, err)) return -1;
    if (get_bool(root, "stream", &r->stream, err)) return -1;
    if (get_bool(root, "ignore_eos", &r->ignore_eos, err)) return -1;
    json_t *so = json_object_get(root, "stream_options");
    if (so && !json_is_null(so)) {
        if (!json_is_object(so))
            return BAD("stream_options", "'stream_options' must be an object, got %s", oai_type_name(so));
        json_t *iu = json_object_get(so, "include_usage");
        if (iu && !json_is_null(iu) && !json_is_boolean(iu))
            return BAD("stream_options.include_usage", "'stream_options.include_usage' must be a boolean");
        r->include_usage = iu && json_is_true(iu);
        if (!r->stream)
            return BAD("stream_options", "'stream_options' is only allowed when 'stream' is true (as OpenAI answers)");
    }
    return 0;
}

xds_status xds_oai_request_parse(xds_oai_kind kind, const char *body, size_t len,
                                 xds_oai_request *out, xds_oai_error *err) {
    xds_oai_request r;
    memset(&r, 0, sizeof r);
    r.kind = kind;
    r.sampling = xds_sampler_params_default();
    r.sampling.temp = 1.0f; /* OpenAI defaults */
    r.sampling.top_k = 0;
    r.sampling.top_p = 1.0f;
    r.sampling.min_p = 0.0f;

    json_error_t jerr;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        xds_oai_error_set(err, 400, NULL, NULL, "invalid JSON body at line %d column %d: %s",
                          jerr.line, jerr.column, jerr.text);
        return xds_err_set(XDS_ERR_INVALID, "%s", err->message);
    }
    int bad = parse_root(root, kind, &r, err);
    json_decref(root);
    if (bad) {
        xds_oai_request_free(&r);
        return xds_err_set(XDS_ERR_INVALID, "%s", err->message);
    }
    *out = r;
    return XDS_OK;
}

void xds_oai_request_free(xds_oai_request *r) {
    if (!r) return;
    free(r->model);
    free(r->prompt);
    free(r->prompt_ids);
    for (int i = 0; i < r->n_messages; i++) {
        free(r->messages[i].role);
        free(r->messages[i].content);
    }
    free(r->messages);
    for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    memset(r, 0, sizeof *r);
}

/* ------------------------------------------------------------------------ */
/* Responses                                                                 */

const char *xds_oai_finish_str(xds_finish f) {
    switch (f) {
    case XDS_FINISH_STOP: return "stop";
    case XDS_FINISH_LENGTH: return "length";
    default: return NULL;
    }
}

static json_t *oai_head(const xds_oai_resp *r, const char *object) {
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(r->id));
    json_object_set_new(o, "object", json_string(object));
    json_object_set_new(o, "created", json_integer(r->created));
    json_object_set_new(o, "model", oai_json_text(r->model, strlen(r->model)));
    return o;
}

static json_t *oai_usage(int n_prompt, int n_gen) {
    json_t *u = json_object();
    json_object_set_new(u, "prompt_tokens", json_integer(n_prompt));
    json_object_set_new(u, "completion_tokens", json_integer(n_gen));
    json_object_set_new(u, "total_tokens", json_integer((json_int_t)n_prompt + n_gen));
    return u;
}

static json_t *oai_str_or_null(const char *s) { return s ? json_string(s) : json_null(); }

char *xds_oai_response_json(const xds_oai_resp *r, const char *text, size_t text_len,
                            const char *finish_reason, int n_prompt, int n_gen, size_t *len) {
    int chat = r->kind == XDS_OAI_CHAT;
    json_t *o = oai_head(r, chat ? "chat.completion" : "text_completion");
    json_t *choice = json_object();
    json_object_set_new(choice, "index", json_integer(0));
    if (chat) {
        json_t *msg = json_object();
        json_object_set_new(msg, "role", json_string("assistant"));
        json_object_set_new(msg, "content", oai_json_text(text, text_len));
        json_object_set_new(choice, "message", msg);
    } else {
        json_object_set_new(choice, "text", oai_json_text(text, text_len));
    }
    json_object_set_new(choice, "logprobs", json_null());
    json_object_set_new(choice, "finish_reason", oai_str_or_null(finish_reason));
    json_t *choices = json_array();
    json_array_append_new(choices, choice);
    json_object_set_new(o, "choices", choices);
    json_object_set_new(o, "usage", oai_usage(n_prompt, n_gen));
    return oai_dump(o, len);
}

static char *oai_sse(json_t *o, size_t *len) {
    size_t n;
    char *js = oai_dump(o, &n);
    if (!js) return NULL;
    char *s = malloc(n + 9);
    if (s) {
        memcpy(s, "data: ", 6);
        memcpy(s + 6, js, n);
        memcpy(s + 6 + n, "\n\n", 3);
        if (len) *len = n + 8;
    }
    free(js);
    return s;
}

char *xds_oai_sse_chunk(const xds_oai_resp *r, int role, const char *text, size_t text_len,
                        const char *finish_reason, int usage_null, size_t *len) {
    int chat = r->kind == XDS_OAI_CHAT;
    json_t *o = oai_head(r, chat ? "chat.completion.chunk" : "text_completion");
    json_t *choice = json_object();
    json_object_set_new(choice, "index", json_integer(0));
    if (chat) {
        json_t *delta = json_object();
        if (role) json_object_set_new(delta, "role", json_string("assistant"));
        if (text_len || role || !finish_reason)
            json_object_set_new(delta, "content", oai_json_text(text, text_len));
        json_object_set_new(choice, "delta", delta);
    } else {
        json_object_set_new(choice, "text", oai_json_text(text, text_len));
    }
    json_object_set_new(choice, "logprobs", json_null());
    json_object_set_new(choice, "finish_reason", oai_str_or_null(finish_reason));
    json_t *choices = json_array();
    json_array_append_new(choices, choice);
    json_object_set_new(o, "choices", choices);
    if (usage_null) json_object_set_new(o, "usage", json_null());
    return oai_sse(o, len);
}

char *xds_oai_sse_usage(const xds_oai_resp *r, int n_prompt, int n_gen, size_t *len) {
    json_t *o = oai_head(r, r->kind == XDS_OAI_CHAT ? "chat.completion.chunk" : "text_completion");
    json_object_set_new(o, "choices", json_array());
    json_object_set_new(o, "usage", oai_usage(n_prompt, n_gen));
    return oai_sse(o, len);
}

char *xds_oai_sse_error(const xds_oai_error *err, size_t *len) { return oai_sse(oai_error_obj(err), len); }

json_t *xds_oai_json_text(const char *s, size_t n) {
    return oai_json_text(s, n);
}

/* The model object of GET /v1/models and /v1/models/{id}. */
static json_t *oai_model_obj(const char *model, int64_t created) {
    json_t *m = json_object();
    json_object_set_new(m, "id", oai_json_text(model, strlen(model)));
    json_object_set_new(m, "object", json_string("model"));
    json_object_set_new(m, "created", json_integer(created));
    json_object_set_new(m, "owned_by", json_string("xdeepserve"));
    return m;
}

char *xds_oai_model_json(const char *model, int64_t created, size_t *len) {
    return oai_dump(oai_model_obj(model, created), len);
}

char *xds_oai_models_json(const char *model, int64_t created, size_t *len) {
    json_t *m = oai_model_obj(model, created);
    json_t *data = json_array();
    json_array_append_new(data, m);
    json_t *o = json_object();
    json_object_set_new(o, "object", json_string("list"));
    json_object_set_new(o, "data", data);
    return oai_dump(o, len);
}
