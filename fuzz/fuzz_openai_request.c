/*
 * fuzz_openai_request.c — libFuzzer target for the OpenAI request path of
 * `xds serve`: the first byte picks the endpoint ('C': chat, anything else:
 * completions), the rest is the HTTP body. A request that parses is then run
 * through every formatter (its prompt / message text as output text, its stop
 * strings as chunk text) and each output is checked to be valid JSON, so a
 * parse bug that lets bad bytes through shows up as a crash here.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/openai.h"

static void check_json(char *s, size_t n, int sse) {
    if (!s) return; /* allocation failure */
    if (sse) {
        if (n < 8 || memcmp(s, "data: ", 6) != 0 || s[n - 1] != '\n' || s[n - 2] != '\n') abort();
        s[n - 2] = 0;
    }
    json_t *j = json_loads(s + (sse ? 6 : 0), 0, NULL);
    if (!j) abort();
    json_decref(j);
    free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    xds_oai_kind kind = data[0] == 'C' ? XDS_OAI_CHAT : XDS_OAI_COMPLETION;
    xds_oai_request r;
    xds_oai_error e;
    if (xds_oai_request_parse(kind, (const char *)data + 1, size - 1, &r, &e) != XDS_OK) {
        if (e.http_status != 400 || !e.message[0]) abort();
        size_t n;
        check_json(xds_oai_error_json(&e, &n), n, 0);
        return 0;
    }
    if (kind == XDS_OAI_CHAT && (r.n_messages < 1 || !r.messages)) abort();
    if (kind == XDS_OAI_COMPLETION && !r.prompt == !r.prompt_ids) abort();
    if (r.n_stop < 0 || r.n_stop > XDS_OAI_MAX_STOP) abort();
    const char *text = r.prompt ? r.prompt : (r.n_messages ? r.messages[0].content : "");
    size_t tl = r.prompt ? r.prompt_len : strlen(text);
    xds_oai_resp resp = {.kind = kind, .id = "id-1", .created = 1, .model = r.model ? r.model : "m"};
    size_t n;
    check_json(xds_oai_response_json(&resp, text, tl, "stop", 1, 2, &n), n, 0);
    check_json(xds_oai_sse_chunk(&resp, 1, text, tl, NULL, r.include_usage, &n), n, 1);
    for (int i = 0; i < r.n_stop; i++)
        check_json(xds_oai_sse_chunk(&resp, 0, r.stop[i], strlen(r.stop[i]), NULL, 0, &n), n, 1);
    check_json(xds_oai_sse_chunk(&resp, 0, "", 0, "length", 0, &n), n, 1);
    check_json(xds_oai_sse_usage(&resp, 1, 2, &n), n, 1);
    check_json(xds_oai_models_json(resp.model, 1, &n), n, 0);
    xds_oai_request_free(&r);
    return 0;
}
