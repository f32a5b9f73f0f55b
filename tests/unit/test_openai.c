/*
 * test_openai.c — the OpenAI request parser/validator, the response / SSE /
 * error formatters (parsed back with jansson and checked field by field
 * against OpenAI's shapes) and the Prometheus registry.
 */
#include <jansson.h>
#include <string.h>

#include "server/metrics.h"
#include "server/openai.h"
#include "test.h"

static int parse(xds_oai_kind kind, const char *body, xds_oai_request *r, xds_oai_error *e) {
    memset(e, 0, sizeof *e);
    return xds_oai_request_parse(kind, body, strlen(body), r, e) == XDS_OK ? 0 : -1;
}

/* Expect a 400 naming `param` ("" for none). */
static void expect_bad(xds_oai_kind kind, const char *body, int status, const char *param) {
    xds_oai_request r;
    xds_oai_error e;
    int rc = parse(kind, body, &r, &e);
    CHECK_MSG(rc != 0, "accepted: %s", body);
    if (rc == 0) {
        xds_oai_request_free(&r);
        return;
    }
    CHECK_MSG(e.http_status == status, "status %d for %s", e.http_status, body);
    CHECK_MSG(!strcmp(e.param, param), "param '%s' (want '%s') for %s: %s", e.param, param, body, e.message);
    CHECK(e.message[0] != 0);
    CHECK(!strcmp(e.type, "invalid_request_error"));
}

/* More than OpenAI's 4 stop strings, as vLLM allows (up to 64). */
static void test_many_stops(void) {
    xds_oai_request r;
    xds_oai_error e;
    int rc = parse(XDS_OAI_COMPLETION, "{\"prompt\": \"hi\", \"stop\": [\"a\", \"b\", \"c\", \"d\", \"e\", \"f\", \"g\"]}", &r, &e);
    CHECK_MSG(rc == 0, "7 stops: %s", e.message);
    if (rc == 0) {
        CHECK(r.n_stop == 7 && !strcmp(r.stop[6], "g"));
        xds_oai_request_free(&r);
    }
}

static void test_logit_bias(void) {
    xds_oai_request r;
    xds_oai_error e;
    int rc = parse(XDS_OAI_COMPLETION, "{\"prompt\": \"hi\", \"logit_bias\": {\"50256\": -100, \"7\": 2.5, \"0\": 0}}", &r, &e);
    CHECK_MSG(rc == 0, "logit_bias: %s", e.message);
    if (rc == 0) {
        CHECK(r.sampling.n_logit_bias == 3);
        float got[3] = {0};
        for (int i = 0; i < r.sampling.n_logit_bias && i < 3; i++) {
            int32_t t = r.sampling.logit_bias_tok[i];
            got[t == 50256 ? 0 : t == 7 ? 1 : 2] = r.sampling.logit_bias[i] + (t == 0 ? 1000.0f : 0.0f);
        }
        CHECK(got[0] == -100.0f && got[1] == 2.5f && got[2] == 1000.0f);
        xds_oai_request_free(&r);
    }
    rc = parse(XDS_OAI_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"logit_bias\": null}", &r, &e);
    CHECK(rc == 0 && r.sampling.n_logit_bias == 0);
    if (rc == 0) xds_oai_request_free(&r);
    expect_bad(XDS_OAI_COMPLETION, "{\"prompt\": \"hi\", \"logit_bias\": \"x\"}", 400, "logit_bias");
    expect_bad(XDS_OAI_COMPLETION, "{\"prompt\": \"hi\", \"logit_bias\": [1, 2]}", 400, "logit_bias");
    expect_bad(XDS_OAI_COMPLETION, "{\"prompt\": \"hi\", \"logit_bias\": {\"abc\": 1}}", 400, "logit_bias");
    expect_bad(XDS_OAI_COMPLETION, "{\"prompt\": \"hi\", \"logit_bias\": {\"-1\": 1}}", 400, "logit_bias");
    expect_bad(XDS_OAI_COMPLETION, "{\"prompt\": \"hi\", \"logit_bias\": {\"1.5\": 1}}", 400, "logit_bias");
    expect_bad(XDS_OAI_COMPLETION, "{\"prompt\": \"hi\", \"logit_bias\": {\"99999999999\": 1}}", 400, "logit_bias");
    expect_bad(XDS_OAI_COMPLETION, "{\"prompt\": \"hi\", \"logit_bias\": {\"5\": 101}}", 400, "logit_bias");
    expect_bad(XDS_OAI_COMPLETION, "{\"prompt\": \"hi\", \"logit_bias\": {\"5\": \"1\"}}", 400, "logit_bias");
    /* more than 300 entries */
    char *big = malloc(16 * 400);
    int n = sprintf(big, "{\"prompt\": \"hi\", \"logit_bias\": {");
    for (int i = 0; i < 301; i++) n += sprintf(big + n, "%s\"%d\": 1", i ? ", " : "", i);
    sprintf(big + n, "}}");
    expect_bad(XDS_OAI_COMPLETION, big, 400, "logit_bias");
    free(big);
}

static void test_chat_ok(void) {
    xds_oai_request r;
    xds_oai_error e;
    const char *body =
        "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"be brief\"},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"text\",\"text\":\"b\"}]},"
        "{\"role\":\"assistant\",\"content\":null},{\"role\":\"developer\",\"content\":\"x\"}],"
        "\"max_completion_tokens\":7,\"temperature\":0,\"top_p\":0.5,\"top_k\":3,\"min_p\":0.1,\"seed\":42,"
        "\"stop\":[\"\\n\",\"END\",\"\"],\"presence_penalty\":1.5,\"frequency_penalty\":-0.5,\"stream\":true,"
        "\"stream_options\":{\"include_usage\":true},\"ignore_eos\":true,\"n\":1,\"user\":\"u\",\"logprobs\":false}";
    CHECK(parse(XDS_OAI_CHAT, body, &r, &e) == 0);
    CHECK(r.kind == XDS_OAI_CHAT && r.model && !strcmp(r.model, "m"));
    CHECK(r.n_messages == 4);
    if (r.n_messages == 4) {
        CHECK(!strcmp(r.messages[0].role, "system") && !strcmp(r.messages[0].content, "be brief"));
        CHECK(!strcmp(r.messages[1].role, "user") && !strcmp(r.messages[1].content, "a\nb"));
        CHECK(!strcmp(r.messages[2].role, "assistant") && !strcmp(r.messages[2].content, ""));
        CHECK(!strcmp(r.messages[3].role, "system") && !strcmp(r.messages[3].content, "x"));
    }
    CHECK(r.max_tokens == 7);
    CHECK(r.sampling.temp == 0.0f && r.sampling.top_p == 0.5f && r.sampling.top_k == 3);
    CHECK_NEAR(r.sampling.min_p, 0.1, 1e-6);
    CHECK(r.sampling.seed == 42 && r.seed_given);
    CHECK(r.n_stop == 2 && !strcmp(r.stop[0], "\n") && !strcmp(r.stop[1], "END"));
    CHECK_NEAR(r.sampling.presence_penalty, 1.5, 1e-6);
    CHECK_NEAR(r.sampling.frequency_penalty, -0.5, 1e-6);
    CHECK(r.stream && r.include_usage && r.ignore_eos);
    xds_oai_request_free(&r);

    /* defaults: OpenAI's temperature 1, top_p 1, no top-k/min-p, no seed */
    CHECK(parse(XDS_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", &r, &e) == 0);
    CHECK(r.model == NULL && r.max_tokens == 0 && !r.stream && !r.seed_given && r.n_stop == 0);
    CHECK(r.sampling.temp == 1.0f && r.sampling.top_p == 1.0f && r.sampling.top_k == 0 && r.sampling.min_p == 0.0f);
    CHECK(r.sampling.presence_penalty == 0 && r.sampling.frequency_penalty == 0 && r.sampling.repeat_penalty == 1.0f);
    xds_oai_request_free(&r);

    /* a single stop string */
    CHECK(parse(XDS_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stop\":\"x\",\"max_tokens\":3}", &r, &e) == 0);
    CHECK(r.n_stop == 1 && !strcmp(r.stop[0], "x") && r.max_tokens == 3);
    xds_oai_request_free(&r);
}

static void test_completion_ok(void) {
    xds_oai_request r;
    xds_oai_error e;
    CHECK(parse(XDS_OAI_COMPLETION, "{\"model\":\"m\",\"prompt\":\"Once upon\",\"max_tokens\":5}", &r, &e) == 0);
    CHECK(r.prompt && !strcmp(r.prompt, "Once upon") && r.prompt_len == 9 && !r.prompt_ids);
    xds_oai_request_free(&r);
    CHECK(parse(XDS_OAI_COMPLETION, "{\"prompt\":[\"one string\"]}", &r, &e) == 0);
    CHECK(r.prompt && !strcmp(r.prompt, "one string"));
    xds_oai_request_free(&r);
    CHECK(parse(XDS_OAI_COMPLETION, "{\"prompt\":[1,2,3]}", &r, &e) == 0);
    CHECK(r.n_prompt_ids == 3 && r.prompt_ids && r.prompt_ids[2] == 3 && !r.prompt);
    xds_oai_request_free(&r);
    CHECK(parse(XDS_OAI_COMPLETION, "{\"prompt\":[[7,8]]}", &r, &e) == 0);
    CHECK(r.n_prompt_ids == 2 && r.prompt_ids && r.prompt_ids[0] == 7);
    xds_oai_request_free(&r);
    /* UTF-8 text survives */
    CHECK(parse(XDS_OAI_COMPLETION, "{\"prompt\":\"caf\\u00e9 \xe2\x82\xac\"}", &r, &e) == 0);
    CHECK(r.prompt && !strcmp(r.prompt, "caf\xc3\xa9 \xe2\x82\xac"));
    xds_oai_request_free(&r);
}

static void test_bad_requests(void) {
    const xds_oai_kind C = XDS_OAI_CHAT, P = XDS_OAI_COMPLETION;
    /* malformed JSON, wrong root, invalid UTF-8, NUL */
    expect_bad(C, "{\"messages\": [", 400, "");
    expect_bad(C, "", 400, "");
    expect_bad(C, "[1,2]", 400, "");
    expect_bad(C, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}]} trailing", 400, "");
    expect_bad(C, "{\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}", 400, "");
    expect_bad(C, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\\u0000b\"}]}", 400, "");
    expect_bad(C, "{\"a\":1,\"a\":2,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "");
    /* messages */
    expect_bad(C, "{}", 400, "messages");
    expect_bad(C, "{\"messages\":[]}", 400, "messages");
    expect_bad(C, "{\"messages\":\"hi\"}", 400, "messages");
    expect_bad(C, "{\"messages\":[\"hi\"]}", 400, "messages");
    expect_bad(C, "{\"messages\":[{\"content\":\"hi\"}]}", 400, "messages[0].role");
    expect_bad(C, "{\"messages\":[{\"role\":\"wizard\",\"content\":\"hi\"}]}", 400, "messages[0].role");
    expect_bad(C, "{\"messages\":[{\"role\":\"user\"}]}", 400, "messages[0].content");
    expect_bad(C, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", 400, "messages[0].content");
    expect_bad(C, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{}}]}]}", 400,
               "messages[0].content");
    /* wrong types and ranges */
    const char *M = "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]";
    char buf[512];
    struct { const char *field, *param; } bad[] = {
        {"\"model\":5", "model"},
        {"\"max_tokens\":\"10\"", "max_tokens"},
        {"\"max_tokens\":0", "max_tokens"},
        {"\"max_tokens\":-3", "max_tokens"},
        {"\"max_tokens\":1.5", "max_tokens"},
        {"\"max_completion_tokens\":false", "max_completion_tokens"},
        {"\"temperature\":\"hot\"", "temperature"},
        {"\"temperature\":2.5", "temperature"},
        {"\"temperature\":-0.1", "temperature"},
        {"\"top_p\":0", "top_p"},
        {"\"top_p\":1.1", "top_p"},
        {"\"top_k\":-2", "top_k"},
        {"\"top_k\":2.5", "top_k"},
        {"\"min_p\":2", "min_p"},
        {"\"presence_penalty\":3", "presence_penalty"},
        {"\"frequency_penalty\":\"x\"", "frequency_penalty"},
        {"\"seed\":\"1\"", "seed"},
        {"\"seed\":1.5", "seed"},
        {"\"stop\":5", "stop"},
        {"\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\",\"h\",\"i\",\"j\",\"k\",\"l\",\"m\",\"n\",\"o\",\"p\",\"q\",\"r\",\"s\",\"t\",\"u\",\"v\",\"w\",\"x\",\"y\",\"z\",\"A\",\"B\",\"C\",\"D\",\"E\",\"F\",\"G\",\"H\",\"I\",\"J\",\"K\",\"L\",\"M\",\"N\",\"O\",\"P\",\"Q\",\"R\",\"S\",\"T\",\"U\",\"V\",\"W\",\"X\",\"Y\",\"Z\",\"0\",\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\",\"+\",\"-\",\"*\"]", "stop"}, /* 65 */
        {"\"stop\":[\"a\",3]", "stop"},
        {"\"stream\":\"yes\"", "stream"},
        {"\"stream\":1", "stream"},
        {"\"stream_options\":true", "stream_options"},
        {"\"stream_options\":{\"include_usage\":true}", "stream_options"}, /* without stream: true */
        {"\"stream_options\":{\"include_usage\":\"y\"}", "stream_options.include_usage"},
        {"\"n\":2", "n"},
        {"\"n\":\"1\"", "n"},
        {"\"logprobs\":true", "logprobs"},
        {"\"tools\":[{\"type\":\"function\"}]", "tools"},
        {"\"response_format\":{\"type\":\"json_object\"}", "response_format"},
        {"\"ignore_eos\":\"true\"", "ignore_eos"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(buf, sizeof buf, "{%s,%s}", M, bad[i].field);
        expect_bad(C, buf, 400, bad[i].param);
    }
    /* prompts */
    expect_bad(P, "{\"model\":\"m\"}", 400, "prompt");
    expect_bad(P, "{\"prompt\":\"\"}", 400, "prompt");
    expect_bad(P, "{\"prompt\":[]}", 400, "prompt");
    expect_bad(P, "{\"prompt\":5}", 400, "prompt");
    expect_bad(P, "{\"prompt\":[\"a\",\"b\"]}", 400, "prompt");
    expect_bad(P, "{\"prompt\":[1,-2]}", 400, "prompt");
    expect_bad(P, "{\"prompt\":[1,\"x\"]}", 400, "prompt");
    expect_bad(P, "{\"prompt\":{\"text\":\"x\"}}", 400, "prompt");
    expect_bad(P, "{\"prompt\":\"a\",\"echo\":true}", 400, "echo");
}

static json_t *load(const char *s, size_t n) {
    json_error_t je;
    json_t *j = json_loadb(s, n, 0, &je);
    CHECK_MSG(j != NULL, "not JSON: %.*s", (int)n, s);
    return j;
}

static const char *jstr(json_t *o, const char *path) {
    /* dotted path, numbers index arrays */
    char tmp[128];
    snprintf(tmp, sizeof tmp, "%s", path);
    json_t *cur = o;
    for (char *tok = strtok(tmp, "."); tok && cur; tok = strtok(NULL, "."))
        cur = (*tok >= '0' && *tok <= '9') ? json_array_get(cur, atoi(tok)) : json_object_get(cur, tok);
    return json_is_string(cur) ? json_string_value(cur) : NULL;
}

static json_t *jget(json_t *o, const char *path) {
    char tmp[128];
    snprintf(tmp, sizeof tmp, "%s", path);
    json_t *cur = o;
    for (char *tok = strtok(tmp, "."); tok && cur; tok = strtok(NULL, "."))
        cur = (*tok >= '0' && *tok <= '9') ? json_array_get(cur, atoi(tok)) : json_object_get(cur, tok);
    return cur;
}

/* Strip "data: " and "\n\n" and parse. */
static json_t *load_sse(const char *s, size_t n) {
    CHECK(n > 8 && !strncmp(s, "data: ", 6) && s[n - 1] == '\n' && s[n - 2] == '\n');
    if (n <= 8) return NULL;
    CHECK(memchr(s + 6, '\n', n - 8) == NULL); /* one line */
    return load(s + 6, n - 8);
}

static void test_formatting(void) {
    xds_oai_resp chat = {.kind = XDS_OAI_CHAT, .id = "chatcmpl-abc", .created = 1700000000, .model = "smol"};
    xds_oai_resp cmpl = {.kind = XDS_OAI_COMPLETION, .id = "cmpl-abc", .created = 1700000001, .model = "smol"};
    size_t n;
    char *s = xds_oai_response_json(&chat, "Hi \"there\"\n", 11, "stop", 12, 3, &n);
    json_t *j = load(s, n);
    CHECK(j && !strcmp(jstr(j, "object"), "chat.completion") && !strcmp(jstr(j, "id"), "chatcmpl-abc"));
    CHECK(j && json_integer_value(jget(j, "created")) == 1700000000 && !strcmp(jstr(j, "model"), "smol"));
    CHECK(j && !strcmp(jstr(j, "choices.0.message.role"), "assistant"));
    CHECK(j && !strcmp(jstr(j, "choices.0.message.content"), "Hi \"there\"\n"));
    CHECK(j && !strcmp(jstr(j, "choices.0.finish_reason"), "stop"));
    CHECK(j && json_integer_value(jget(j, "choices.0.index")) == 0 && json_is_null(jget(j, "choices.0.logprobs")));
    CHECK(j && json_integer_value(jget(j, "usage.prompt_tokens")) == 12);
    CHECK(j && json_integer_value(jget(j, "usage.completion_tokens")) == 3);
    CHECK(j && json_integer_value(jget(j, "usage.total_tokens")) == 15);
    json_decref(j);
    free(s);

    /* invalid UTF-8 in output text is replaced, the JSON stays valid */
    s = xds_oai_response_json(&cmpl, "a\xff" "b", 3, "length", 1, 2, &n);
    j = load(s, n);
    CHECK(j && !strcmp(jstr(j, "object"), "text_completion"));
    CHECK(j && !strcmp(jstr(j, "choices.0.text"), "a\xEF\xBF\xBD" "b"));
    CHECK(j && !strcmp(jstr(j, "choices.0.finish_reason"), "length"));
    json_decref(j);
    free(s);

    /* chat chunks: role first, content, then {} with finish_reason */
    s = xds_oai_sse_chunk(&chat, 1, "He", 2, NULL, 0, &n);
    j = load_sse(s, n);
    CHECK(j && !strcmp(jstr(j, "object"), "chat.completion.chunk"));
    CHECK(j && !strcmp(jstr(j, "choices.0.delta.role"), "assistant"));
    CHECK(j && !strcmp(jstr(j, "choices.0.delta.content"), "He"));
    CHECK(j && json_is_null(jget(j, "choices.0.finish_reason")) && !jget(j, "usage"));
    json_decref(j);
    free(s);
    s = xds_oai_sse_chunk(&chat, 0, "llo", 3, NULL, 1, &n);
    j = load_sse(s, n);
    CHECK(j && !jget(j, "choices.0.delta.role") && !strcmp(jstr(j, "choices.0.delta.content"), "llo"));
    CHECK(j && jget(j, "usage") && json_is_null(jget(j, "usage")));
    json_decref(j);
    free(s);
    s = xds_oai_sse_chunk(&chat, 0, "", 0, "stop", 0, &n);
    j = load_sse(s, n);
    CHECK(j && json_is_object(jget(j, "choices.0.delta")) && json_object_size(jget(j, "choices.0.delta")) == 0);
    CHECK(j && !strcmp(jstr(j, "choices.0.finish_reason"), "stop"));
    json_decref(j);
    free(s);
    /* completion chunk */
    s = xds_oai_sse_chunk(&cmpl, 0, "x", 1, NULL, 0, &n);
    j = load_sse(s, n);
    CHECK(j && !strcmp(jstr(j, "object"), "text_completion") && !strcmp(jstr(j, "choices.0.text"), "x"));
    json_decref(j);
    free(s);
    /* usage chunk: empty choices */
    s = xds_oai_sse_usage(&chat, 5, 6, &n);
    j = load_sse(s, n);
    CHECK(j && json_is_array(jget(j, "choices")) && json_array_size(jget(j, "choices")) == 0);
    CHECK(j && json_integer_value(jget(j, "usage.total_tokens")) == 11);
    json_decref(j);
    free(s);

    /* errors */
    xds_oai_error e;
    xds_oai_error_set(&e, 404, "model", "model_not_found", "The model '%s' does not exist", "x");
    s = xds_oai_error_json(&e, &n);
    j = load(s, n);
    CHECK(j && !strcmp(jstr(j, "error.message"), "The model 'x' does not exist"));
    CHECK(j && !strcmp(jstr(j, "error.type"), "not_found_error") && !strcmp(jstr(j, "error.param"), "model"));
    CHECK(j && !strcmp(jstr(j, "error.code"), "model_not_found"));
    json_decref(j);
    free(s);
    xds_oai_error_set(&e, 429, NULL, NULL, "busy");
    s = xds_oai_sse_error(&e, &n);
    j = load_sse(s, n);
    CHECK(j && !strcmp(jstr(j, "error.type"), "rate_limit_error") && json_is_null(jget(j, "error.param")) &&
          json_is_null(jget(j, "error.code")));
    json_decref(j);
    free(s);
    xds_oai_error_set(&e, 401, NULL, NULL, "no");
    CHECK(!strcmp(e.type, "authentication_error"));
    xds_oai_error_set(&e, 500, NULL, NULL, "x");
    CHECK(!strcmp(e.type, "server_error"));

    s = xds_oai_models_json("smol", 5, &n);
    j = load(s, n);
    CHECK(j && !strcmp(jstr(j, "object"), "list") && !strcmp(jstr(j, "data.0.id"), "smol") &&
          !strcmp(jstr(j, "data.0.object"), "model"));
    json_decref(j);
    free(s);

    CHECK(!strcmp(xds_oai_finish_str(XDS_FINISH_STOP), "stop"));
    CHECK(!strcmp(xds_oai_finish_str(XDS_FINISH_LENGTH), "length"));
    CHECK(xds_oai_finish_str(XDS_FINISH_ABORT) == NULL);
}

static void test_utf8(void) {
    CHECK(xds_oai_utf8_valid_prefix("abc", 3) == 3);
    CHECK(xds_oai_utf8_valid_prefix("\xc3\xa9", 2) == 2);
    CHECK(xds_oai_utf8_valid_prefix("a\xc3", 2) == 1);                 /* truncated */
    CHECK(xds_oai_utf8_valid_prefix("a\xc0\x80", 3) == 1);             /* overlong */
    CHECK(xds_oai_utf8_valid_prefix("\xed\xa0\x80", 3) == 0);          /* surrogate */
    CHECK(xds_oai_utf8_valid_prefix("\xf4\x90\x80\x80", 4) == 0);      /* > U+10FFFF */
    CHECK(xds_oai_utf8_valid_prefix("\xf0\x9f\x98\x80!", 5) == 5);     /* emoji */
    CHECK(xds_oai_utf8_valid_prefix("\xe2\x82", 2) == 0);
}

static void test_metrics(void) {
    xds_metrics *m = xds_metrics_create();
    CHECK(m != NULL);
    if (!m) return;
    xds_metric *c = xds_metrics_add(m, XDS_METRIC_COUNTER, "t_requests_total", "requests", NULL, 0);
    xds_metric *g = xds_metrics_add(m, XDS_METRIC_GAUGE, "t_queue", "queue", NULL, 0);
    double b[] = {0.1, 1.0};
    xds_metric *h = xds_metrics_add(m, XDS_METRIC_HISTOGRAM, "t_lat_seconds", "latency", b, 2);
    CHECK(c && g && h);
    CHECK(xds_metrics_add(m, XDS_METRIC_COUNTER, "bad name", "x", NULL, 0) == NULL);
    CHECK(xds_metrics_add(m, XDS_METRIC_HISTOGRAM, "t_nob", "x", NULL, 0) == NULL);
    xds_metric_add(c, "code=\"200\"", 1);
    xds_metric_add(c, "code=\"200\"", 2);
    xds_metric_add(c, "code=\"400\"", 1);
    xds_metric_set(g, NULL, 7);
    xds_metric_set(g, NULL, 5);
    xds_metric_observe(h, NULL, 0.05);
    xds_metric_observe(h, NULL, 0.5);
    xds_metric_observe(h, NULL, 0.5);
    xds_metric_observe(h, NULL, 3.0);
    CHECK(xds_metric_get(c, "code=\"200\"") == 3 && xds_metric_get(g, NULL) == 5 && xds_metric_get(h, NULL) == 4);
    size_t n;
    char *s = xds_metrics_render(m, &n);
    CHECK(s && strlen(s) == n);
    if (s) {
        CHECK(strstr(s, "# TYPE t_requests_total counter\n") != NULL);
        CHECK(strstr(s, "t_requests_total{code=\"200\"} 3\n") != NULL);
        CHECK(strstr(s, "t_requests_total{code=\"400\"} 1\n") != NULL);
        CHECK(strstr(s, "# TYPE t_queue gauge\nt_queue 5\n") != NULL);
        CHECK(strstr(s, "# TYPE t_lat_seconds histogram\n") != NULL);
        CHECK(strstr(s, "t_lat_seconds_bucket{le=\"0.1\"} 1\n") != NULL);
        CHECK(strstr(s, "t_lat_seconds_bucket{le=\"1\"} 3\n") != NULL);  /* cumulative */
        CHECK(strstr(s, "t_lat_seconds_bucket{le=\"+Inf\"} 4\n") != NULL);
        CHECK(strstr(s, "t_lat_seconds_sum 4.05\n") != NULL);
        CHECK(strstr(s, "t_lat_seconds_count 4\n") != NULL);
        /* every non-comment line is "name[{labels}] value" */
        int lines = 0, ok = 1;
        for (char *l = s; *l; l = strchr(l, '\n') + 1) {
            lines++;
            if (*l != '#') {
                char *sp = strchr(l, ' ');
                ok &= sp && sp < strchr(l, '\n') && (sp[1] == '+' || (sp[1] >= '0' && sp[1] <= '9'));
            }
            if (!strchr(l, '\n')) break;
        }
        CHECK(ok && lines > 10);
    }
    free(s);
    xds_metrics_free(m);
}

int main(void) {
    test_logit_bias();
    test_many_stops();
    test_chat_ok();
    test_completion_ok();
    test_bad_requests();
    test_formatting();
    test_utf8();
    test_metrics();
    TEST_MAIN_END();
}
