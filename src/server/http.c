/*
 * http.c — the OpenAI-compatible HTTP server on libmicrohttpd (see http.h).
 *
 * A request's life: MHD calls srv_on_request first when the headers are in
 * (route, method, auth and Content-Length are checked there), then once per
 * body piece (appended, size-limited), then a last time with no data: the
 * body is parsed (openai.c), tokenized, checked against the context and
 * submitted to the engine. The per-request srv_req is shared by three owners
 * (MHD's request, the engine until its final event, a streaming response
 * until MHD frees it) and freed when the last lets go (refs under mu).
 *
 * Streaming: the engine callback appends text pieces under q->mu and
 * signals; the MHD content reader swaps them out, formats SSE chunks outside
 * the lock and hands bytes to MHD. A client that goes away makes MHD report
 * a non-OK termination; srv_on_completed then cancels the engine request.
 *
 * Invariants: engine callbacks never block (copy + signal); every request
 * that reached the engine is either finished or cancelled before its srv_req
 * can be freed; the per-connection srv_conn lives from MHD's STARTED to its
 * CLOSED notification, which comes before MHD closes the socket, so the
 * reaper never shuts down a recycled descriptor.
 *
 * Connection slots: STARTED gives a connection a slot while fewer than
 * max_connections hold one (n_slotted), else marks it overflow; an overflow
 * connection takes a slot freed before its request arrives, or its request
 * is answered 503 + Retry-After + Connection: close (a POST after its body
 * was read and discarded, so the close does not reset the answer away).
 * MHD's own limit is the hard cap above the slots.
 */
#define _GNU_SOURCE
#include "server/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "base/log.h"
#include "server/metrics.h"
#include "server/openai.h"
#include "tokenizer/tokenizer.h"

#if MHD_VERSION < 0x00097002
typedef int srv_result;
#else
typedef enum MHD_Result srv_result;
#endif

#define SRV_SSE_KEEPALIVE_S 10 /* SSE comment after this long without output */
#define SRV_OVERFLOW_WAIT_S 2  /* a connection beyond the slots must send its request within this */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------------ */
/* State                                                                     */

typedef enum srv_route {
    ROUTE_NONE = 0,
    ROUTE_HEALTH,
    ROUTE_MODELS,
    ROUTE_METRICS,
    ROUTE_COMPLETIONS,
    ROUTE_CHAT,
    ROUTE_TOPOLOGY, /* GET /v1/topology: opts.topology_json of a disaggregated deployment */
    ROUTE_LIVE,     /* GET /health/live: 503 only while the engine loop is stalled */
    ROUTE_EXPERT_LOAD, /* GET /v1/experts/load: opts.expert_load_fn (tokens per layer and expert) */
    ROUTE_MODEL_ID,    /* GET /v1/models/{id} */
    ROUTE_TOKENIZE,    /* POST /tokenize (vLLM's shapes) */
    ROUTE_DETOKENIZE,  /* POST /detokenize */
} srv_route;
#define ROUTE_COUNT (ROUTE_DETOKENIZE + 1)

static const char *route_name[] = {"other", "/health", "/v1/models", "/metrics", "/v1/completions",
                                   "/v1/chat/completions", "/v1/topology", "/health/live", "/v1/experts/load",
                                   "/v1/models/{id}", "/tokenize", "/detokenize"};
_Static_assert(sizeof route_name / sizeof *route_name == ROUTE_COUNT, "a metrics label for every route");

/* What a connection is doing, for the reaper's deadlines. */
typedef enum srv_conn_state {
    CONN_READING = 0, /* waiting for request headers: min(idle, read) timeout from `since` */
    CONN_RECEIVING,   /* headers in, body arriving: read_timeout_s from `since` (the headers), idle_timeout_s from last_rx */
    CONN_BUSY,        /* request in, waiting for the engine: no deadline */
    CONN_WRITING,     /* a buffered response queued: idle_timeout_s from `since` */
    CONN_STREAMING,   /* SSE: idle_timeout_s without MHD asking for more data */
} srv_conn_state;

/* One connection (guarded by srv->conn_mu). */
typedef struct srv_conn {
    int fd;
    srv_conn_state state;
    double since;      /* when the current state began */
    int in_reader;     /* STREAMING: our content reader is running (waiting on the engine) */
    double last_pull;  /* STREAMING: when the content reader last returned data */
    double last_rx;    /* RECEIVING: when the last body piece arrived */
    int slotted;       /* holds one of the max_connections slots */
    int overflow;      /* beyond the slots: its request gets 503 */
    int killed;
    struct srv_conn *prev, *next;
} srv_conn;

static void srv_conn_set(xds_server *s, srv_conn *c, srv_conn_state st);
static void srv_conn_rx(xds_server *s, srv_conn *c);
static int srv_conn_take_slot(xds_server *s, srv_conn *c);

typedef struct srv_req srv_req;

struct xds_server {
    xds_server_opts o;
    char *model_name, *api_key;
    xds_engine *engine;
    const xds_tokenizer *tok;
    int n_vocab;
    int add_bos;
    struct MHD_Daemon *mhd;
    int port;
    int64_t created;
    atomic_uint_fast64_t id_counter;
    uint64_t id_base;
    atomic_int quiescing;

    pthread_mutex_t mu;  /* in-flight count, active list */
    pthread_cond_t idle_cv;
    int n_inflight;
    srv_req *active;     /* submitted, not yet completed */

    pthread_mutex_t conn_mu;
    srv_conn *conns;
    int n_slotted, n_overflow; /* connections holding a slot / beyond them (conn_mu) */
    int hard_limit;            /* MHD's connection limit */

    pthread_mutex_t health_mu;
    xds_health health;         /* set by the deployment (xds_server_set_health) */
    char health_reason[256];
    pthread_t reaper;
    int reaper_started;
    atomic_int stopping;

    xds_metrics *metrics;
    int own_metrics;           /* metrics is ours to free (opts.metrics was NULL) */
    xds_metric *m_requests, *m_prompt_tok, *m_gen_tok, *m_ttft, *m_tpot, *m_e2e, *m_finished;
    xds_metric *m_waiting, *m_running, *m_kv_used, *m_kv_free, *m_prefix_rate, *m_prefix_q, *m_prefix_h;
    xds_metric *m_inflight, *m_closed, *m_refused, *m_conns, *m_conn_limit, *m_ready, *m_stall;
};

static void srv_engine_cancel(xds_server *s, uint64_t req_id) {
    if (s->o.engine_ops) s->o.engine_ops->cancel(s->o.engine_ops->self, req_id);
    else xds_engine_cancel(s->engine, req_id);
}

struct srv_req {
    xds_server *srv;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs;                    /* guarded by mu */

    /* HTTP (connection thread only) */
    srv_route route;
    char *body;                  /* (body_len) request body */
    size_t body_len, body_cap;
    int too_large;
    int status;                  /* HTTP status queued, 0 before */
    int refuse;                  /* overflow POST: answer 503 once the body is drained */
    int close_after;             /* answer with Connection: close (ambiguous framing) */
    int deferred_get;            /* a GET route, answered on the final call (srv_handle_get) */
    char get_url[256];
    srv_conn *conn;

    /* request */
    xds_oai_kind kind;
    char id[48];
    xds_oai_resp resp;
    int stream, include_usage;
    int submitted;
    uint64_t req_id;
    double t_submit;

    /* engine output, guarded by mu */
    char *text;                  /* (text_len) pending text (stream) / all text */
    size_t text_len, text_cap;
    size_t *piece_end;           /* (n_pieces) end offsets of pieces in text */
    int n_pieces, cap_pieces;
    int finished;
    xds_finish finish;
    int n_prompt, n_gen, n_cached;
    double t_first, t_end;

    /* stream writer (connection thread only) */
    char *out;                   /* (out_len) formatted bytes, out_off sent */
    size_t out_len, out_off, out_cap;
    char *wtext;                 /* swapped-out pending text */
    size_t wtext_cap;
    size_t *wpiece;
    int wpiece_cap;
    int sent_role, sent_done;

    srv_req *prev, *next;        /* server active list (srv->mu) */
};

static void srv_req_unref(srv_req *q) {
    pthread_mutex_lock(&q->mu);
    int r = --q->refs;
    pthread_mutex_unlock(&q->mu);
    if (r > 0) return;
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->cv);
    free(q->body);
    free(q->text);
    free(q->piece_end);
    free(q->out);
    free(q->wtext);
    free(q->wpiece);
    free(q);
}

xds_server_opts xds_server_opts_default(void) {
    xds_server_opts o = {.host = "127.0.0.1",
                         .port = 8000,
                         .api_key = NULL,
                         .model_name = "default",
                         .max_ctx = 2048,
                         .max_connections = 256,
                         .idle_timeout_s = 30,
                         .read_timeout_s = 30,
                         .stall_timeout_s = 30,
                         .retry_after_s = 1,
                         .max_body_bytes = 8u << 20,
                         .header_limit = 64u << 10,
                         .listen_fd = -1};
    return o;
}

/* ------------------------------------------------------------------------ */
/* Responses                                                                 */

static int srv_conn_overflow(xds_server *s, srv_conn *c) {
    if (!c) return 0;
    pthread_mutex_lock(&s->conn_mu);
    int o = c->overflow;
    pthread_mutex_unlock(&s->conn_mu);
    return o;
}

static void srv_add_common_headers(xds_server *s, srv_conn *conn, struct MHD_Response *r, const char *ctype) {
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    if (atomic_load(&s->quiescing) || srv_conn_overflow(s, conn))
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
}

/* Queue body (malloc'd; ownership taken) with status. */
static srv_result srv_send(srv_req *q, struct MHD_Connection *c, int status, const char *ctype,
                           char *body, size_t len) {
    if (!body) {
        status = 500;
        static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,\"code\":null}}";
        body = strdup(oom);
        len = body ? strlen(body) : 0;
        if (!body) return MHD_NO;
    }
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    srv_add_common_headers(q->srv, q->conn, r, ctype);
    if (q->close_after) MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
    srv_conn_set(q->srv, q->conn, CONN_WRITING);
    if (status == 401) MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    if (status == 429) MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    if (status == 503) {
        char ra[16];
        snprintf(ra, sizeof ra, "%d", q->srv->o.retry_after_s);
        MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, ra);
    }
    if (status == 405)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW,
                                q->route == ROUTE_COMPLETIONS || q->route == ROUTE_CHAT || q->route == ROUTE_TOKENIZE ||
                                        q->route == ROUTE_DETOKENIZE
                                    ? "POST"
                                    : "GET, HEAD");
    q->status = status;
    srv_result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static srv_result srv_send_error(srv_req *q, struct MHD_Connection *c, const xds_oai_error *e) {
    size_t len = 0;
    char *body = xds_oai_error_json(e, &len);
    return srv_send(q, c, e->http_status, "application/json", body, len);
}

static srv_result srv_fail(srv_req *q, struct MHD_Connection *c, int status, const char *param,
                           const char *code, const char *msg) {
    xds_oai_error e;
    xds_oai_error_set(&e, status, param, code, "%s", msg);
    return srv_send_error(q, c, &e);
}

/* ------------------------------------------------------------------------ */
/* Engine callback (engine thread: copy and signal, never block long)        */

static int srv_text_append(srv_req *q, const char *t, size_t n) {
    if (q->text_len + n + 1 > q->text_cap) {
        size_t cap = q->text_cap ? q->text_cap * 2 : 256;
        while (cap < q->text_len + n + 1) cap *= 2;
        char *nt = realloc(q->text, cap);
        if (!nt) return -1;
        q->text = nt;
        q->text_cap = cap;
    }
    memcpy(q->text + q->text_len, t, n);
    q->text_len += n;
    q->text[q->text_len] = 0;
    if (q->n_pieces == q->cap_pieces) {
        int cap = q->cap_pieces ? q->cap_pieces * 2 : 16;
        size_t *np = realloc(q->piece_end, cap * sizeof *np);
        if (!np) return -1;
        q->piece_end = np;
        q->cap_pieces = cap;
    }
    q->piece_end[q->n_pieces++] = q->text_len;
    return 0;
}

static void srv_on_event(void *user, const xds_gen_event *ev) {
    srv_req *q = user;
    double t = now_s();
    pthread_mutex_lock(&q->mu);
    if (ev->text_len && srv_text_append(q, ev->text, ev->text_len) != 0) {
        XDS_LOGE("serve: out of memory buffering output of request %s", q->id);
    }
    if (ev->n_gen > 0 && q->t_first == 0) q->t_first = t;
    q->n_prompt = ev->n_prompt;
    q->n_gen = ev->n_gen;
    q->n_cached = ev->n_cached;
    int fin = ev->finish != XDS_FINISH_NONE;
    if (fin) {
        q->finished = 1;
        q->finish = ev->finish;
        q->t_end = t;
    }
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
    if (fin) srv_req_unref(q); /* the engine's reference */
}

/* ------------------------------------------------------------------------ */
/* Streaming                                                                 */

/* Append a formatted NUL-terminated piece (malloc'd; ownership taken). */
static int srv_out_append(srv_req *q, char *s) {
    if (!s) return -1;
    size_t n = strlen(s);
    if (q->out_len + n > q->out_cap) {
        size_t cap = q->out_cap ? q->out_cap * 2 : 1024;
        while (cap < q->out_len + n) cap *= 2;
        char *no = realloc(q->out, cap);
        if (!no) {
            free(s);
            return -1;
        }
        q->out = no;
        q->out_cap = cap;
    }
    memcpy(q->out + q->out_len, s, n);
    q->out_len += n;
    free(s);
    return 0;
}

/* Wait for engine output, then format it as SSE into q->out. */
static int srv_stream_fill(srv_req *q) {
    pthread_mutex_lock(&q->mu);
    if (q->n_pieces == 0 && !q->finished) {
        /* Wait for the engine; every keepalive_s without output send an SSE
         * comment, so a client that left during a long queue wait is noticed
         * (the write fails) and proxies do not time the stream out. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += SRV_SSE_KEEPALIVE_S;
        int rc = 0;
        while (q->n_pieces == 0 && !q->finished && rc != ETIMEDOUT) rc = pthread_cond_timedwait(&q->cv, &q->mu, &ts);
        if (q->n_pieces == 0 && !q->finished) {
            pthread_mutex_unlock(&q->mu);
            return srv_out_append(q, strdup(": keep-alive\n\n"));
        }
    }
    /* swap the pending buffers with the writer's spare ones */
    char *t = q->text;
    size_t tl = q->text_len, tc = q->text_cap;
    size_t *pe = q->piece_end;
    int np = q->n_pieces, pc = q->cap_pieces;
    q->text = q->wtext;
    q->text_cap = q->wtext_cap;
    q->text_len = 0;
    q->piece_end = q->wpiece;
    q->cap_pieces = q->wpiece_cap;
    q->n_pieces = 0;
    int fin = q->finished;
    xds_finish finish = q->finish;
    int n_prompt = q->n_prompt, n_gen = q->n_gen;
    pthread_mutex_unlock(&q->mu);
    q->wtext = t;
    q->wtext_cap = tc;
    q->wpiece = pe;
    q->wpiece_cap = pc;
    (void)tl;

    int chat = q->kind == XDS_OAI_CHAT;
    size_t start = 0;
    for (int i = 0; i < np; i++) {
        size_t end = pe[i];
        if (end > start) {
            if (srv_out_append(q, xds_oai_sse_chunk(&q->resp, chat && !q->sent_role, t + start, end - start,
                                                    NULL, q->include_usage, NULL)))
                return -1;
            q->sent_role = 1;
        }
        start = end;
    }
    if (!fin) return 0;
    if (finish == XDS_FINISH_ERROR || finish == XDS_FINISH_ABORT || finish == XDS_FINISH_UNAVAILABLE) {
        xds_oai_error e;
        if (finish == XDS_FINISH_UNAVAILABLE)
            xds_oai_error_set(&e, 503, NULL, "service_unavailable", "no capacity left to finish the request; retry later");
        else
            xds_oai_error_set(&e, 500, NULL, NULL, "%s",
                              finish == XDS_FINISH_ERROR ? "the engine failed while generating" : "request aborted");
        if (srv_out_append(q, xds_oai_sse_error(&e, NULL))) return -1;
    } else {
        if (chat && !q->sent_role) {
            if (srv_out_append(q, xds_oai_sse_chunk(&q->resp, 1, "", 0, NULL, q->include_usage, NULL))) return -1;
            q->sent_role = 1;
        }
        if (srv_out_append(q, xds_oai_sse_chunk(&q->resp, 0, "", 0, xds_oai_finish_str(finish),
                                                q->include_usage, NULL)))
            return -1;
        if (q->include_usage && srv_out_append(q, xds_oai_sse_usage(&q->resp, n_prompt, n_gen, NULL))) return -1;
    }
    if (srv_out_append(q, strdup(XDS_OAI_SSE_DONE))) return -1;
    q->sent_done = 1;
    return 0;
}

static void srv_conn_in_reader(srv_req *q, int in) {
    if (!q->conn) return;
    pthread_mutex_lock(&q->srv->conn_mu);
    q->conn->in_reader = in;
    q->conn->last_pull = now_s();
    pthread_mutex_unlock(&q->srv->conn_mu);
}

static ssize_t srv_stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    srv_req *q = cls;
    (void)pos;
    if (q->out_off == q->out_len) {
        if (q->sent_done) return MHD_CONTENT_READER_END_OF_STREAM;
        srv_conn_in_reader(q, 1);
        int rc = 0;
        while (rc == 0 && q->out_off == q->out_len) {
            q->out_len = q->out_off = 0;
            rc = srv_stream_fill(q);
        }
        srv_conn_in_reader(q, 0);
        if (rc != 0) return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    size_t n = q->out_len - q->out_off;
    if (n > max) n = max;
    memcpy(buf, q->out + q->out_off, n);
    q->out_off += n;
    return (ssize_t)n;
}

static void srv_stream_free(void *cls) { srv_req_unref(cls); }

/* ------------------------------------------------------------------------ */
/* Completions                                                               */

/* 1 if the peer has closed its side (checked without blocking). */
static int srv_peer_gone(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return 0;
    struct pollfd p = {.fd = ci->connect_fd, .events = POLLRDHUP};
    if (poll(&p, 1, 0) <= 0) return 0;
    return (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Tokenize the request's prompt. On failure fills e. */
static int srv_tokenize(xds_server *s, const xds_oai_request *r, int32_t **ids, size_t *n, xds_oai_error *e) {
    if (r->kind == XDS_OAI_CHAT) {
        xds_chat_msg *msgs = calloc(r->n_messages, sizeof *msgs);
        if (!msgs) return xds_oai_error_set(e, 500, NULL, NULL, "out of memory"), -1;
        for (int i = 0; i < r->n_messages; i++) msgs[i] = (xds_chat_msg){r->messages[i].role, r->messages[i].content};
        char *text = NULL;
        xds_status st = xds_chat_render(s->tok, msgs, r->n_messages, 1, &text);
        free(msgs);
        if (st != XDS_OK) {
            xds_oai_error_set(e, st == XDS_ERR_NOMEM ? 500 : 400, "messages", NULL,
                              "cannot render the conversation with the model's chat template: %s", xds_err_msg());
            return -1;
        }
        st = xds_tokenizer_encode(s->tok, text, strlen(text), 1, ids, n);
        free(text);
        if (st != XDS_OK) {
            xds_oai_error_set(e, st == XDS_ERR_NOMEM ? 500 : 400, "messages", NULL, "cannot tokenize: %s", xds_err_msg());
            return -1;
        }
        return 0;
    }
    if (r->prompt_ids) {
        *ids = malloc(r->n_prompt_ids * sizeof **ids);
        if (!*ids) return xds_oai_error_set(e, 500, NULL, NULL, "out of memory"), -1;
        for (int i = 0; i < r->n_prompt_ids; i++) {
            if (r->prompt_ids[i] >= s->n_vocab) {
                free(*ids);
                *ids = NULL;
                xds_oai_error_set(e, 400, "prompt", NULL, "token id %d at prompt[%d] is outside the vocabulary (%d)",
                                  r->prompt_ids[i], i, s->n_vocab);
                return -1;
            }
            (*ids)[i] = r->prompt_ids[i];
        }
        *n = r->n_prompt_ids;
        return 0;
    }
    int32_t *t = NULL;
    size_t nt = 0;
    xds_status st = xds_tokenizer_encode(s->tok, r->prompt, r->prompt_len, 1, &t, &nt);
    if (st != XDS_OK) {
        xds_oai_error_set(e, st == XDS_ERR_NOMEM ? 500 : 400, "prompt", NULL, "cannot tokenize: %s", xds_err_msg());
        return -1;
    }
    int32_t bos = xds_tokenizer_bos(s->tok);
    if (s->add_bos && bos >= 0 && !(nt > 0 && t[0] == bos)) {
        int32_t *t2 = malloc((nt + 1) * sizeof *t2);
        if (!t2) {
            free(t);
            return xds_oai_error_set(e, 500, NULL, NULL, "out of memory"), -1;
        }
        t2[0] = bos;
        memcpy(t2 + 1, t, nt * sizeof *t);
        free(t);
        t = t2;
        nt++;
    }
    *ids = t;
    *n = nt;
    return 0;
}

/* POST /tokenize {"prompt": "..."} or {"messages": [...]} -> {"count",
 * "max_model_len", "tokens"}: the ids /v1/completions or
 * /v1/chat/completions would feed the model (vLLM's shapes); POST
 * /detokenize {"tokens": [...]} -> {"prompt": "..."} (special tokens kept,
 * invalid UTF-8 as U+FFFD). */
static srv_result srv_handle_tokenize(srv_req *q, struct MHD_Connection *c) {
    xds_server *s = q->srv;
    xds_oai_error e;
    memset(&e, 0, sizeof e);
    json_error_t je;
    json_t *root = q->body_len ? json_loadb(q->body, q->body_len, 0, &je) : NULL;
    if (!json_is_object(root)) {
        json_decref(root);
        xds_oai_error_set(&e, 400, NULL, NULL, "the request body must be a JSON object");
        return srv_send_error(q, c, &e);
    }
    json_t *out = NULL;
    if (q->route == ROUTE_DETOKENIZE) {
        json_t *toks = json_object_get(root, "tokens");
        size_t n = json_array_size(toks);
        int32_t *ids = json_is_array(toks) ? malloc(sizeof *ids * (n ? n : 1)) : NULL;
        if (!json_is_array(toks)) xds_oai_error_set(&e, 400, "tokens", NULL, "'tokens' must be an array of token ids");
        else if (!ids) xds_oai_error_set(&e, 500, NULL, NULL, "out of memory");
        for (size_t i = 0; ids && !e.http_status && i < n; i++) {
            json_t *v = json_array_get(toks, i);
            if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= s->n_vocab)
                xds_oai_error_set(&e, 400, "tokens", NULL, "tokens[%zu] is not a token id of the vocabulary (0..%d)",
                                  i, s->n_vocab - 1);
            else ids[i] = (int32_t)json_integer_value(v);
        }
        char *text = NULL;
        size_t tl = 0;
        if (!e.http_status && xds_tokenizer_decode(s->tok, ids, n, 0, &text, &tl) != XDS_OK)
            xds_oai_error_set(&e, 500, NULL, NULL, "cannot decode: %s", xds_err_msg());
        if (!e.http_status) {
            out = json_object();
            json_object_set_new(out, "prompt", xds_oai_json_text(text, tl));
        }
        free(text);
        free(ids);
    } else {
        int has_msgs = json_object_get(root, "messages") != NULL;
        json_t *pr = json_object_get(root, "prompt");
        xds_oai_request r;
        int32_t *ids = NULL;
        size_t n = 0;
        if (!has_msgs && !json_is_string(pr)) {
            xds_oai_error_set(&e, 400, "prompt", NULL, "'prompt' (a string) or 'messages' is required");
        } else if (xds_oai_request_parse(has_msgs ? XDS_OAI_CHAT : XDS_OAI_COMPLETION, q->body, q->body_len, &r, &e) ==
                   XDS_OK) {
            if (srv_tokenize(s, &r, &ids, &n, &e) == 0) {
                out = json_object();
                json_t *a = json_array();
                for (size_t i = 0; i < n; i++) json_array_append_new(a, json_integer(ids[i]));
                json_object_set_new(out, "count", json_integer((json_int_t)n));
                json_object_set_new(out, "max_model_len", json_integer(s->o.max_ctx));
                json_object_set_new(out, "tokens", a);
            }
            free(ids);
            xds_oai_request_free(&r);
        }
    }
    json_decref(root);
    if (!out) {
        if (!e.http_status) xds_oai_error_set(&e, 500, NULL, NULL, "out of memory");
        return srv_send_error(q, c, &e);
    }
    char *body = json_dumps(out, JSON_COMPACT);
    json_decref(out);
    if (!body) {
        xds_oai_error_set(&e, 500, NULL, NULL, "out of memory");
        return srv_send_error(q, c, &e);
    }
    return srv_send(q, c, 200, "application/json", body, strlen(body));
}

static srv_result srv_handle_generate(srv_req *q, struct MHD_Connection *c) {
    xds_server *s = q->srv;
    xds_oai_error e;
    xds_oai_request r;
    q->kind = q->route == ROUTE_CHAT ? XDS_OAI_CHAT : XDS_OAI_COMPLETION;
    {
        char why[256];
        pthread_mutex_lock(&s->health_mu);
        int unavailable = s->health == XDS_HEALTH_UNAVAILABLE;
        snprintf(why, sizeof why, "%s", s->health_reason);
        pthread_mutex_unlock(&s->health_mu);
        if (unavailable) {
            xds_oai_error_set(&e, 503, NULL, "service_unavailable", "the service is unavailable%s%s; retry later",
                              *why ? ": " : "", why);
            return srv_send_error(q, c, &e);
        }
    }
    if (xds_oai_request_parse(q->kind, q->body ? q->body : "", q->body_len, &r, &e) != XDS_OK)
        return srv_send_error(q, c, &e);
    if (r.model && strcmp(r.model, s->model_name) != 0) {
        xds_oai_error_set(&e, 404, "model", "model_not_found", "The model '%s' does not exist (this server serves '%s')",
                          r.model, s->model_name);
        xds_oai_request_free(&r);
        return srv_send_error(q, c, &e);
    }
    int32_t *ids = NULL;
    size_t n_ids = 0;
    if (srv_tokenize(s, &r, &ids, &n_ids, &e) != 0) {
        xds_oai_request_free(&r);
        return srv_send_error(q, c, &e);
    }
    int max_ctx = s->o.max_ctx;
    if (n_ids == 0) {
        xds_oai_error_set(&e, 400, q->kind == XDS_OAI_CHAT ? "messages" : "prompt", NULL, "the prompt is empty after tokenization");
    } else if ((long long)n_ids >= max_ctx) {
        xds_oai_error_set(&e, 400, q->kind == XDS_OAI_CHAT ? "messages" : "prompt", "context_length_exceeded",
                          "This model's maximum context length is %d tokens, but the prompt has %zu tokens", max_ctx, n_ids);
    } else if (r.max_tokens > 0 && (long long)n_ids + r.max_tokens > max_ctx) {
        xds_oai_error_set(&e, 400, "max_tokens", "context_length_exceeded",
                          "This model's maximum context length is %d tokens. However, you requested %lld tokens "
                          "(%zu in the prompt, %d for the completion). Please reduce the prompt or max_tokens.",
                          max_ctx, (long long)n_ids + r.max_tokens, n_ids, r.max_tokens);
    } else {
        e.http_status = 0;
        for (int i = 0; i < r.sampling.n_logit_bias; i++)
            if (r.sampling.logit_bias_tok[i] >= s->n_vocab) {
                xds_oai_error_set(&e, 400, "logit_bias", NULL, "logit_bias token id %d is outside the vocabulary (%d)",
                                  r.sampling.logit_bias_tok[i], s->n_vocab);
                break;
            }
    }
    if (e.http_status) {
        free(ids);
        xds_oai_request_free(&r);
        return srv_send_error(q, c, &e);
    }
    int max_tokens = r.max_tokens;
    if (max_tokens <= 0) {
        max_tokens = max_ctx - (int)n_ids;
        if (q->kind == XDS_OAI_COMPLETION && max_tokens > 16) max_tokens = 16; /* OpenAI's default */
    }
    if (!r.seed_given) {
        uint64_t x = s->id_base ^ (uint64_t)(now_s() * 1e9) ^ atomic_fetch_add(&s->id_counter, 1);
        r.sampling.seed = splitmix64(&x);
    }
    uint64_t idn = atomic_fetch_add(&s->id_counter, 1);
    uint64_t x = s->id_base + idn;
    snprintf(q->id, sizeof q->id, "%s-%016llx%08llx", q->kind == XDS_OAI_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long long)splitmix64(&x), (unsigned long long)(idn & 0xffffffffu));
    q->resp = (xds_oai_resp){.kind = q->kind, .id = q->id, .created = (int64_t)time(NULL), .model = s->model_name};
    q->stream = r.stream;
    q->include_usage = r.stream && r.include_usage;

    xds_gen_params gp = {.max_tokens = max_tokens,
                         .sampling = r.sampling,
                         .stop = (const char *const *)r.stop,
                         .n_stop = r.n_stop,
                         .ignore_eos = r.ignore_eos};
    pthread_mutex_lock(&q->mu);
    q->refs++; /* the engine's reference, dropped at the final event */
    pthread_mutex_unlock(&q->mu);
    q->t_submit = now_s();
    xds_status st = s->o.engine_ops
                        ? s->o.engine_ops->submit(s->o.engine_ops->self, ids, (int)n_ids, &gp, srv_on_event, q,
                                                  &q->req_id)
                        : xds_engine_submit(s->engine, ids, (int)n_ids, &gp, srv_on_event, q, &q->req_id);
    free(ids);
    xds_oai_request_free(&r);
    if (st != XDS_OK) {
        pthread_mutex_lock(&q->mu);
        q->refs--;
        pthread_mutex_unlock(&q->mu);
        if (st == XDS_ERR_BUSY)
            return srv_fail(q, c, 429, NULL, "server_busy", "the server is busy (request queue full); retry later");
        if (st == XDS_ERR_UNAVAILABLE) {
            xds_oai_error_set(&e, 503, NULL, "service_unavailable", "no capacity left: %s; retry later", xds_err_msg());
            return srv_send_error(q, c, &e);
        }
        xds_oai_error_set(&e, st == XDS_ERR_INVALID ? 400 : 500, NULL, NULL, "%s", xds_err_msg());
        return srv_send_error(q, c, &e);
    }
    q->submitted = 1;
    pthread_mutex_lock(&s->mu);
    q->next = s->active;
    if (s->active) s->active->prev = q;
    s->active = q;
    pthread_mutex_unlock(&s->mu);

    if (q->stream) {
        struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, srv_stream_read,
                                                                      q, srv_stream_free);
        if (!resp) return MHD_NO; /* srv_on_completed cancels */
        pthread_mutex_lock(&q->mu);
        q->refs++; /* the response's reference */
        pthread_mutex_unlock(&q->mu);
        srv_conn_set(s, q->conn, CONN_STREAMING);
        srv_add_common_headers(s, q->conn, resp, "text/event-stream");
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
        MHD_add_response_header(resp, "X-Accel-Buffering", "no");
        q->status = 200;
        srv_result ret = MHD_queue_response(c, 200, resp);
        MHD_destroy_response(resp);
        return ret;
    }

    /* Non-streaming: wait for the end, watching for the client going away. */
    pthread_mutex_lock(&q->mu);
    int cancelled = 0;
    while (!q->finished) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 250 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        int rc = pthread_cond_timedwait(&q->cv, &q->mu, &ts);
        if (rc == ETIMEDOUT && !cancelled && !q->finished) {
            pthread_mutex_unlock(&q->mu);
            if (srv_peer_gone(c)) {
                srv_engine_cancel(s, q->req_id);
                cancelled = 1;
            }
            pthread_mutex_lock(&q->mu);
        }
    }
    xds_finish fin = q->finish;
    int n_prompt = q->n_prompt, n_gen = q->n_gen;
    pthread_mutex_unlock(&q->mu);
    if (fin == XDS_FINISH_UNAVAILABLE)
        return srv_fail(q, c, 503, NULL, "service_unavailable", "no capacity left to finish the request; retry later");
    if (fin == XDS_FINISH_ERROR || fin == XDS_FINISH_ABORT)
        return srv_fail(q, c, 500, NULL, NULL,
                        fin == XDS_FINISH_ERROR ? "the engine failed while generating" : "request aborted");
    size_t len = 0;
    char *body = xds_oai_response_json(&q->resp, q->text ? q->text : "", q->text_len, xds_oai_finish_str(fin),
                                       n_prompt, n_gen, &len);
    return srv_send(q, c, 200, "application/json", body, len);
}

/* ------------------------------------------------------------------------ */
/* Other routes                                                              */

static void srv_engine_stats(xds_server *s, xds_engine_stats *st) {
    memset(st, 0, sizeof *st);
    if (s->o.engine_ops) s->o.engine_ops->stats(s->o.engine_ops->self, st);
    else xds_engine_stats_get(s->engine, st);
}

/* Can a new request be served now? READY / DEGRADED (serving) or
 * UNAVAILABLE, with a one-line reason for the last two. self: the asking
 * connection (its own slot is not counted against the limit). */
static xds_health srv_health_eval(xds_server *s, srv_conn *self, const xds_engine_stats *st, char *why, size_t n) {
    char dep[256];
    why[0] = 0;
    pthread_mutex_lock(&s->health_mu);
    xds_health h = s->health;
    snprintf(dep, sizeof dep, "%s", s->health_reason);
    pthread_mutex_unlock(&s->health_mu);
    if (h == XDS_HEALTH_UNAVAILABLE) {
        snprintf(why, n, "%s", *dep ? dep : "the deployment reports no capacity");
        return h;
    }
    if (atomic_load(&s->quiescing)) {
        snprintf(why, n, "shutting down: finishing in-flight requests");
        return XDS_HEALTH_UNAVAILABLE;
    }
    if (st->stall_s > s->o.stall_timeout_s) {
        snprintf(why, n, "the engine loop has made no progress for %.1f s (%d running, %d waiting; limit %.1f s)",
                 st->stall_s, st->n_running, st->n_waiting, s->o.stall_timeout_s);
        return XDS_HEALTH_UNAVAILABLE;
    }
    if (st->max_queue > 0 && st->n_waiting >= st->max_queue) {
        snprintf(why, n, "the request queue is full (%d waiting, limit %d)", st->n_waiting, st->max_queue);
        return XDS_HEALTH_UNAVAILABLE;
    }
    pthread_mutex_lock(&s->conn_mu);
    int others = s->n_slotted - (self && self->slotted);
    pthread_mutex_unlock(&s->conn_mu);
    if (others >= s->o.max_connections) {
        snprintf(why, n, "all %d connection slots are taken", s->o.max_connections);
        return XDS_HEALTH_UNAVAILABLE;
    }
    if (h == XDS_HEALTH_DEGRADED) snprintf(why, n, "%s", *dep ? dep : "serving with reduced capacity");
    return h;
}

static srv_result srv_handle_health(srv_req *q, struct MHD_Connection *c) {
    xds_server *s = q->srv;
    xds_engine_stats st;
    srv_engine_stats(s, &st);
    char why[512];
    xds_health h = XDS_HEALTH_READY;
    if (q->route == ROUTE_LIVE) { /* liveness: only what a restart would cure */
        if (st.stall_s > s->o.stall_timeout_s) {
            h = XDS_HEALTH_UNAVAILABLE;
            snprintf(why, sizeof why, "the engine loop has made no progress for %.1f s (%d running, %d waiting; limit %.1f s)",
                     st.stall_s, st.n_running, st.n_waiting, s->o.stall_timeout_s);
        }
    } else {
        h = srv_health_eval(s, q->conn, &st, why, sizeof why);
    }
    static const char *name[] = {"ok", "degraded", "unavailable"};
    json_t *o = h == XDS_HEALTH_READY ? json_pack("{ss}", "status", name[h])
                                      : json_pack("{ssss}", "status", name[h], "reason", why);
    char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return srv_send(q, c, h == XDS_HEALTH_UNAVAILABLE ? 503 : 200, "application/json", body, body ? strlen(body) : 0);
}

static srv_result srv_handle_metrics(srv_req *q, struct MHD_Connection *c) {
    xds_server *s = q->srv;
    xds_engine_stats st;
    srv_engine_stats(s, &st);
    char why[512];
    xds_metric_set(s->m_ready, NULL, srv_health_eval(s, q->conn, &st, why, sizeof why) != XDS_HEALTH_UNAVAILABLE);
    xds_metric_set(s->m_stall, NULL, st.stall_s);
    pthread_mutex_lock(&s->conn_mu);
    xds_metric_set(s->m_conns, NULL, s->n_slotted + s->n_overflow);
    pthread_mutex_unlock(&s->conn_mu);
    xds_metric_set(s->m_conn_limit, NULL, s->o.max_connections);
    xds_metric_set(s->m_waiting, NULL, st.n_waiting);
    xds_metric_set(s->m_running, NULL, st.n_running);
    xds_metric_set(s->m_kv_used, NULL, st.kv_blocks_used);
    xds_metric_set(s->m_kv_free, NULL, st.kv_blocks_total - st.kv_blocks_used);
    xds_metric_set(s->m_prefix_q, NULL, (double)st.prefix_queries);
    xds_metric_set(s->m_prefix_h, NULL, (double)st.prefix_hits);
    xds_metric_set(s->m_prefix_rate, NULL, st.prefix_queries ? (double)st.prefix_hits / st.prefix_queries : 0.0);
    pthread_mutex_lock(&s->mu);
    xds_metric_set(s->m_inflight, NULL, s->n_inflight);
    pthread_mutex_unlock(&s->mu);
    if (s->o.metrics_fn) s->o.metrics_fn(s->o.metrics_user, s->metrics);
    size_t len = 0;
    char *body = xds_metrics_render(s->metrics, &len);
    return srv_send(q, c, 200, "text/plain; version=0.0.4; charset=utf-8", body, len);
}

static int srv_auth_ok(xds_server *s, struct MHD_Connection *c) {
    if (!s->api_key) return 1;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) return 0;
    h += 7;
    while (*h == ' ') h++;
    size_t n = strlen(h), k = strlen(s->api_key);
    unsigned diff = (unsigned)(n ^ k);
    for (size_t i = 0; i < k; i++) diff |= (unsigned char)s->api_key[i] ^ (unsigned char)(i < n ? h[i] : 0);
    return diff == 0;
}

/* Request-smuggling defence (RFC 9112 6.3): the body's framing must be
 * unambiguous — one Content-Length, and never Content-Length together with
 * Transfer-Encoding (a proxy in front may read the body otherwise). */
typedef struct { int n_cl, n_te; } srv_framing;
static enum MHD_Result srv_count_framing(void *cls, enum MHD_ValueKind kind, const char *key, const char *value) {
    srv_framing *f = cls;
    (void)kind, (void)value;
    if (key && !strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH)) f->n_cl++;
    if (key && !strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING)) f->n_te++;
    return MHD_YES;
}

static srv_route srv_route_of(const char *url) {
    if (!strcmp(url, "/health")) return ROUTE_HEALTH;
    if (!strcmp(url, "/health/live")) return ROUTE_LIVE;
    if (!strcmp(url, "/v1/models")) return ROUTE_MODELS;
    if (!strcmp(url, "/metrics")) return ROUTE_METRICS;
    if (!strcmp(url, "/v1/completions")) return ROUTE_COMPLETIONS;
    if (!strcmp(url, "/v1/chat/completions")) return ROUTE_CHAT;
    if (!strcmp(url, "/v1/topology")) return ROUTE_TOPOLOGY;
    if (!strcmp(url, "/v1/experts/load")) return ROUTE_EXPERT_LOAD;
    if (!strncmp(url, "/v1/models/", 11) && url[11]) return ROUTE_MODEL_ID;
    if (!strcmp(url, "/tokenize")) return ROUTE_TOKENIZE;
    if (!strcmp(url, "/detokenize")) return ROUTE_DETOKENIZE;
    return ROUTE_NONE;
}

/* A GET route (headers in, no body), on the request's final call. */
static srv_result srv_handle_get(srv_req *q, struct MHD_Connection *c) {
    xds_server *s = q->srv;
    const char *url = q->get_url;
    char msg[256];
    if (q->route == ROUTE_HEALTH || q->route == ROUTE_LIVE) return srv_handle_health(q, c);
    if (q->route == ROUTE_METRICS) return srv_handle_metrics(q, c);
    if (!srv_auth_ok(s, c)) return srv_fail(q, c, 401, NULL, "invalid_api_key", "invalid or missing API key");
    if (q->route == ROUTE_EXPERT_LOAD) {
        if (!s->o.expert_load_fn)
            return srv_fail(q, c, 404, NULL, "not_found",
                            "no expert load: the model has no routed experts, or this server has no engine "
                            "of its own");
        char *t = s->o.expert_load_fn(s->o.expert_load_user);
        if (!t) return srv_fail(q, c, 503, NULL, "unavailable", "the expert load is not available");
        return srv_send(q, c, 200, "application/json", t, strlen(t));
    }
    if (q->route == ROUTE_MODEL_ID) {
        const char *id = url + 11;
        if (strcmp(id, s->model_name) != 0) {
            snprintf(msg, sizeof msg, "The model '%.128s' does not exist", id);
            return srv_fail(q, c, 404, "model", "model_not_found", msg);
        }
        size_t len = 0;
        char *body = xds_oai_model_json(s->model_name, s->created, &len);
        return srv_send(q, c, 200, "application/json", body, len);
    }
    if (q->route == ROUTE_TOPOLOGY) {
        if (s->o.topology_fn) {
            char *t = s->o.topology_fn(s->o.topology_user);
            if (!t) return srv_fail(q, c, 503, NULL, "unavailable", "the deployment's topology is not available");
            return srv_send(q, c, 200, "application/json", t, strlen(t));
        }
        if (!s->o.topology_json)
            return srv_fail(q, c, 404, NULL, "not_found", "no topology: this server is a single-process engine");
        return srv_send(q, c, 200, "application/json", strdup(s->o.topology_json),
                        strlen(s->o.topology_json));
    }
    size_t len = 0;
    char *body = xds_oai_models_json(s->model_name, s->created, &len);
    return srv_send(q, c, 200, "application/json", body, len);
}

/* ------------------------------------------------------------------------ */
/* MHD callbacks                                                             */

static srv_result srv_on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                 const char *version, const char *upload_data, size_t *upload_data_size,
                                 void **con_cls) {
    xds_server *s = cls;
    srv_req *q = *con_cls;
    (void)version;
    if (!q) { /* first call: headers are in */
        q = calloc(1, sizeof *q);
        if (!q) return MHD_NO;
        q->srv = s;
        q->refs = 1; /* MHD's, dropped in srv_on_completed */
        pthread_mutex_init(&q->mu, NULL);
        pthread_cond_init(&q->cv, NULL);
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        q->conn = ci ? (srv_conn *)ci->socket_context : NULL;
        *con_cls = q;
        pthread_mutex_lock(&s->mu);
        s->n_inflight++;
        pthread_mutex_unlock(&s->mu);

        q->route = srv_route_of(url);
        srv_conn_rx(s, q->conn);
        if (!srv_conn_take_slot(s, q->conn) && q->route != ROUTE_HEALTH && q->route != ROUTE_LIVE &&
            q->route != ROUTE_METRICS) {
            /* beyond the slots: answer 503 once whatever body comes is drained */
            q->refuse = 1;
            return MHD_YES;
        }
        srv_framing fr = {0, 0};
        MHD_get_connection_values(c, MHD_HEADER_KIND, srv_count_framing, &fr);
        if (fr.n_cl > 1 || (fr.n_cl && fr.n_te)) {
            q->close_after = 1;
            return srv_fail(q, c, 400, NULL, "invalid_request",
                            fr.n_cl > 1 ? "the request has more than one Content-Length header"
                                        : "the request has both Content-Length and Transfer-Encoding");
        }
        int is_get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
        int is_post = !strcmp(method, "POST");
        char msg[256];
        switch (q->route) {
        case ROUTE_NONE:
            snprintf(msg, sizeof msg, "no route for %.64s %.128s", method, url);
            return srv_fail(q, c, 404, NULL, "not_found", msg);
        case ROUTE_HEALTH:
        case ROUTE_LIVE:
        case ROUTE_MODELS:
        case ROUTE_METRICS:
        case ROUTE_TOPOLOGY:
        case ROUTE_EXPERT_LOAD:
        case ROUTE_MODEL_ID:
            if (!is_get) {
                snprintf(msg, sizeof msg, "method %.64s not allowed on %s (use GET)", method, url);
                return srv_fail(q, c, 405, NULL, "method_not_allowed", msg);
            }
            /* answered on the final call: a response queued before the request is
             * complete makes libmicrohttpd close the connection (no keep-alive) */
            snprintf(q->get_url, sizeof q->get_url, "%s", url);
            q->deferred_get = 1;
            return MHD_YES;
        case ROUTE_COMPLETIONS:
        case ROUTE_CHAT:
        case ROUTE_TOKENIZE:
        case ROUTE_DETOKENIZE:
            if (!is_post) {
                snprintf(msg, sizeof msg, "method %.64s not allowed on %s (use POST)", method, url);
                return srv_fail(q, c, 405, NULL, "method_not_allowed", msg);
            }
            if (!srv_auth_ok(s, c)) return srv_fail(q, c, 401, NULL, "invalid_api_key", "invalid or missing API key");
            {
                const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
                if (cl && strtoull(cl, NULL, 10) > s->o.max_body_bytes) {
                    snprintf(msg, sizeof msg, "request body of %.20s bytes exceeds the limit of %zu bytes", cl,
                             s->o.max_body_bytes);
                    return srv_fail(q, c, 413, NULL, "request_too_large", msg);
                }
            }
            return MHD_YES;
        }
        return MHD_NO;
    }
    if (*upload_data_size) { /* a piece of the body */
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        srv_conn_rx(s, q->conn);
        if (q->status || q->refuse) return MHD_YES; /* response already queued / refused: drain */
        if (q->too_large || q->body_len + n > s->o.max_body_bytes) {
            q->too_large = 1;
            return MHD_YES;
        }
        if (q->body_len + n + 1 > q->body_cap) {
            size_t cap = q->body_cap ? q->body_cap * 2 : 4096;
            while (cap < q->body_len + n + 1) cap *= 2;
            char *nb = realloc(q->body, cap);
            if (!nb) return MHD_NO;
            q->body = nb;
            q->body_cap = cap;
        }
        memcpy(q->body + q->body_len, upload_data, n);
        q->body_len += n;
        q->body[q->body_len] = 0;
        return MHD_YES;
    }
    if (q->status) return MHD_YES; /* answered on the first call */
    if (q->refuse) {
        char msg[160];
        xds_metric_add(s->m_refused, NULL, 1);
        snprintf(msg, sizeof msg, "the server is at its limit of %d connections; retry later", s->o.max_connections);
        return srv_fail(q, c, 503, NULL, "server_overloaded", msg);
    }
    if (q->deferred_get) return srv_handle_get(q, c);
    /* the whole request is in */
    srv_conn_set(s, q->conn, CONN_BUSY);
    if (q->too_large) {
        char msg[128];
        snprintf(msg, sizeof msg, "request body exceeds the limit of %zu bytes", s->o.max_body_bytes);
        return srv_fail(q, c, 413, NULL, "request_too_large", msg);
    }
    if (q->route == ROUTE_TOKENIZE || q->route == ROUTE_DETOKENIZE) return srv_handle_tokenize(q, c);
    return srv_handle_generate(q, c);
}

static void srv_on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                             enum MHD_RequestTerminationCode toe) {
    xds_server *s = cls;
    srv_req *q = *con_cls;
    (void)c;
    if (!q) return;
    *con_cls = NULL;
    if (q->submitted) {
        pthread_mutex_lock(&q->mu);
        int fin = q->finished;
        pthread_mutex_unlock(&q->mu);
        if (!fin) {
            if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
                XDS_LOGI("serve: client of %s went away (code %d); cancelling", q->id, (int)toe);
            srv_engine_cancel(s, q->req_id);
        }
        pthread_mutex_lock(&s->mu);
        if (q->prev) q->prev->next = q->next;
        else s->active = q->next;
        if (q->next) q->next->prev = q->prev;
        q->prev = q->next = NULL;
        pthread_mutex_unlock(&s->mu);
        /* token counters and latencies of a finished request */
        pthread_mutex_lock(&q->mu);
        int ok = q->finished && (q->finish == XDS_FINISH_STOP || q->finish == XDS_FINISH_LENGTH);
        double ttft = q->t_first > 0 ? q->t_first - q->t_submit : -1;
        double tpot = q->n_gen > 1 ? (q->t_end - q->t_first) / (q->n_gen - 1) : -1;
        double e2e = q->t_end - q->t_submit;
        int n_prompt = q->n_prompt, n_gen = q->n_gen;
        xds_finish fin2 = q->finish;
        int ok_fin = q->finished;
        pthread_mutex_unlock(&q->mu);
        xds_metric_add(s->m_prompt_tok, NULL, n_prompt);
        xds_metric_add(s->m_gen_tok, NULL, n_gen);
        if (ok) {
            if (ttft >= 0) xds_metric_observe(s->m_ttft, NULL, ttft);
            if (tpot >= 0) xds_metric_observe(s->m_tpot, NULL, tpot);
            xds_metric_observe(s->m_e2e, NULL, e2e);
        }
        static const char *fin_lbl[] = {"finished_reason=\"none\"", "finished_reason=\"stop\"",
                                        "finished_reason=\"length\"", "finished_reason=\"abort\"",
                                        "finished_reason=\"error\"", "finished_reason=\"unavailable\""};
        if (!ok_fin) fin2 = XDS_FINISH_ABORT; /* cancelled here: the client went away */
        xds_metric_add(s->m_finished, fin2 >= 0 && fin2 <= XDS_FINISH_UNAVAILABLE ? fin_lbl[fin2] : fin_lbl[0], 1);
    }
    if (q->status) {
        char lbl[96];
        snprintf(lbl, sizeof lbl, "endpoint=\"%s\",code=\"%d\"", route_name[q->route], q->status);
        xds_metric_add(s->m_requests, lbl, 1);
    }
    srv_conn_set(s, q->conn, CONN_READING);
    pthread_mutex_lock(&s->mu);
    s->n_inflight--;
    pthread_cond_broadcast(&s->idle_cv);
    pthread_mutex_unlock(&s->mu);
    srv_req_unref(q);
}

static void srv_on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                              enum MHD_ConnectionNotificationCode code) {
    xds_server *s = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        srv_conn *sc = calloc(1, sizeof *sc);
        if (!sc) return;
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        sc->fd = ci ? ci->connect_fd : -1;
        sc->state = CONN_READING;
        sc->since = now_s();
        int first_overflow = 0;
        pthread_mutex_lock(&s->conn_mu);
        if (s->n_slotted < s->o.max_connections) {
            sc->slotted = 1;
            s->n_slotted++;
        } else {
            sc->overflow = 1;
            first_overflow = s->n_overflow++ == 0;
        }
        sc->next = s->conns;
        if (s->conns) s->conns->prev = sc;
        s->conns = sc;
        pthread_mutex_unlock(&s->conn_mu);
        *socket_context = sc;
        if (first_overflow)
            XDS_LOGW("serve: all %d connection slots are taken; answering 503 to requests beyond them",
                     s->o.max_connections);
    } else if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
        srv_conn *sc = *socket_context;
        if (!sc) return;
        pthread_mutex_lock(&s->conn_mu);
        if (sc->prev) sc->prev->next = sc->next;
        else s->conns = sc->next;
        if (sc->next) sc->next->prev = sc->prev;
        if (sc->slotted) s->n_slotted--;
        if (sc->overflow) s->n_overflow--;
        pthread_mutex_unlock(&s->conn_mu);
        free(sc);
        *socket_context = NULL;
    }
}

/* Request bytes arrived: READING -> RECEIVING when the headers are in (the
 * body then has read_timeout_s from now, so time a keep-alive connection sat
 * idle before is not held against it), and the body's idle clock restarts. */
static void srv_conn_rx(xds_server *s, srv_conn *c) {
    if (!c) return;
    double t = now_s();
    pthread_mutex_lock(&s->conn_mu);
    if (c->state == CONN_READING) {
        c->state = CONN_RECEIVING;
        c->since = t;
    }
    c->last_rx = t;
    pthread_mutex_unlock(&s->conn_mu);
}

/* 1 if c holds a slot (an overflow connection takes one freed meanwhile). */
static int srv_conn_take_slot(xds_server *s, srv_conn *c) {
    if (!c) return 1;
    pthread_mutex_lock(&s->conn_mu);
    if (c->overflow && s->n_slotted < s->o.max_connections) {
        c->overflow = 0;
        s->n_overflow--;
        c->slotted = 1;
        s->n_slotted++;
    }
    int ok = c->slotted;
    pthread_mutex_unlock(&s->conn_mu);
    return ok;
}

static void srv_conn_set(xds_server *s, srv_conn *c, srv_conn_state st) {
    if (!c) return;
    double t = now_s();
    pthread_mutex_lock(&s->conn_mu);
    c->state = st;
    c->since = t;
    c->in_reader = 0;
    c->last_pull = t;
    pthread_mutex_unlock(&s->conn_mu);
}

/* Deadlines (MHD's own inactivity timeout is off: it would count the time a
 * handler waits for the engine as client inactivity). A connection past its
 * deadline is shut down; MHD then sees EOF/EPIPE and closes it, reporting a
 * non-OK termination, which cancels any engine request. */
static void *srv_reaper_main(void *arg) {
    xds_server *s = arg;
    while (!atomic_load(&s->stopping)) {
        usleep(200 * 1000);
        double t = now_s();
        double idle = s->o.idle_timeout_s, rd = s->o.read_timeout_s;
        double wait = idle < rd ? idle : rd;
        int killed[3] = {0, 0, 0}; /* idle, slow request, slow reader */
        pthread_mutex_lock(&s->conn_mu);
        for (srv_conn *sc = s->conns; sc; sc = sc->next) {
            if (sc->killed || sc->fd < 0) continue;
            int why = -1;
            double w = sc->overflow && wait > SRV_OVERFLOW_WAIT_S ? SRV_OVERFLOW_WAIT_S : wait;
            double r = sc->overflow && rd > SRV_OVERFLOW_WAIT_S ? SRV_OVERFLOW_WAIT_S : rd;
            double i = sc->overflow && idle > SRV_OVERFLOW_WAIT_S ? SRV_OVERFLOW_WAIT_S : idle;
            switch (sc->state) {
            case CONN_READING: if (t - sc->since > w) why = 0; break;
            case CONN_RECEIVING: if (t - sc->since > r || t - sc->last_rx > i) why = 1; break;
            case CONN_BUSY: break;
            case CONN_WRITING: if (t - sc->since > idle) why = 2; break;
            case CONN_STREAMING: if (!sc->in_reader && t - sc->last_pull > idle) why = 2; break;
            }
            if (why >= 0) {
                /* counted before the client can see the close (lock order conn_mu -> metrics) */
                static const char *lbl[] = {"reason=\"idle\"", "reason=\"slow_request\"", "reason=\"slow_reader\""};
                xds_metric_add(s->m_closed, lbl[why], 1);
                shutdown(sc->fd, SHUT_RDWR);
                sc->killed = 1;
                killed[why]++;
            }
        }
        pthread_mutex_unlock(&s->conn_mu);
        if (killed[0] + killed[1] + killed[2])
            XDS_LOGI("serve: closed %d idle, %d slow-request and %d slow-reader connection(s)", killed[0], killed[1],
                     killed[2]);
    }
    return NULL;
}

static void srv_mhd_log(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    if (!xds_log_enabled(XDS_LOG_DEBUG)) return;
    char buf[512];
    vsnprintf(buf, sizeof buf, fmt, ap);
    size_t n = strlen(buf);
    while (n && buf[n - 1] == '\n') buf[--n] = 0;
    XDS_LOGD("microhttpd: %s", buf);
}

/* ------------------------------------------------------------------------ */
/* Lifecycle                                                                 */

static int srv_metrics_init(xds_server *s) {
    static const double lat[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5,
                                 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0};
    static const double tpot[] = {0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05,
                                  0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5};
    static const double e2e[] = {0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0, 600.0};
    xds_metrics *m = s->metrics = s->o.metrics ? s->o.metrics : xds_metrics_create();
    s->own_metrics = !s->o.metrics;
    if (!m) return -1;
    s->m_requests = xds_metrics_add(m, XDS_METRIC_COUNTER, "xds_http_requests_total", "HTTP requests by endpoint and status code", NULL, 0);
    s->m_prompt_tok = xds_metrics_add(m, XDS_METRIC_COUNTER, "xds_prompt_tokens_total", "Prompt tokens of finished requests", NULL, 0);
    s->m_gen_tok = xds_metrics_add(m, XDS_METRIC_COUNTER, "xds_generation_tokens_total", "Generated tokens of finished requests", NULL, 0);
    s->m_finished = xds_metrics_add(m, XDS_METRIC_COUNTER, "xds_request_finished_total", "Engine requests by finish reason", NULL, 0);
    s->m_ttft = xds_metrics_add(m, XDS_METRIC_HISTOGRAM, "xds_time_to_first_token_seconds", "Time from submit to the first generated token", lat, sizeof lat / sizeof *lat);
    s->m_tpot = xds_metrics_add(m, XDS_METRIC_HISTOGRAM, "xds_time_per_output_token_seconds", "Mean time per output token after the first", tpot, sizeof tpot / sizeof *tpot);
    s->m_e2e = xds_metrics_add(m, XDS_METRIC_HISTOGRAM, "xds_e2e_request_latency_seconds", "Time from submit to the last token", e2e, sizeof e2e / sizeof *e2e);
    s->m_waiting = xds_metrics_add(m, XDS_METRIC_GAUGE, "xds_num_requests_waiting", "Requests queued in the engine", NULL, 0);
    s->m_running = xds_metrics_add(m, XDS_METRIC_GAUGE, "xds_num_requests_running", "Requests in the running batch", NULL, 0);
    s->m_kv_used = xds_metrics_add(m, XDS_METRIC_GAUGE, "xds_kv_blocks_used", "KV cache blocks in use", NULL, 0);
    s->m_kv_free = xds_metrics_add(m, XDS_METRIC_GAUGE, "xds_kv_blocks_free", "KV cache blocks free", NULL, 0);
    s->m_prefix_q = xds_metrics_add(m, XDS_METRIC_COUNTER, "xds_prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache", NULL, 0);
    s->m_prefix_h = xds_metrics_add(m, XDS_METRIC_COUNTER, "xds_prefix_cache_hits_total", "Prompt tokens served from the prefix cache", NULL, 0);
    s->m_prefix_rate = xds_metrics_add(m, XDS_METRIC_GAUGE, "xds_prefix_cache_hit_rate", "Prefix cache hits / queries (tokens, since start)", NULL, 0);
    s->m_inflight = xds_metrics_add(m, XDS_METRIC_GAUGE, "xds_http_requests_in_flight", "HTTP requests being received or answered", NULL, 0);
    s->m_closed = xds_metrics_add(m, XDS_METRIC_COUNTER, "xds_http_connections_closed_total", "Connections closed by the server's deadlines: idle (no request in time), slow_request (request not complete in time), slow_reader (response not taken)", NULL, 0);
    s->m_refused = xds_metrics_add(m, XDS_METRIC_COUNTER, "xds_http_connections_refused_total", "Requests answered 503 because every connection slot was taken", NULL, 0);
    s->m_conns = xds_metrics_add(m, XDS_METRIC_GAUGE, "xds_http_connections_open", "Open client connections (slots and beyond)", NULL, 0);
    s->m_conn_limit = xds_metrics_add(m, XDS_METRIC_GAUGE, "xds_http_connection_limit", "Connection slots (--max-connections)", NULL, 0);
    s->m_ready = xds_metrics_add(m, XDS_METRIC_GAUGE, "xds_health_ready", "1 while /health says a new request can be served", NULL, 0);
    s->m_stall = xds_metrics_add(m, XDS_METRIC_GAUGE, "xds_engine_stall_seconds", "Seconds the engine loop has been without progress while it has work", NULL, 0);
    if (!s->m_closed || !s->m_refused || xds_metrics_fault_register(m) != 0) return -1;
    xds_metric_add(s->m_closed, "reason=\"idle\"", 0);
    xds_metric_add(s->m_closed, "reason=\"slow_request\"", 0);
    xds_metric_add(s->m_closed, "reason=\"slow_reader\"", 0);
    xds_metric_add(s->m_refused, NULL, 0);
    return s->m_requests && s->m_prompt_tok && s->m_gen_tok && s->m_finished && s->m_ttft && s->m_tpot && s->m_e2e &&
                   s->m_waiting && s->m_running && s->m_kv_used && s->m_kv_free && s->m_prefix_q && s->m_prefix_h &&
                   s->m_prefix_rate && s->m_inflight && s->m_conns && s->m_conn_limit && s->m_ready && s->m_stall
               ? 0
               : -1;
}

static void srv_free(xds_server *s) {
    if (s->reaper_started) {
        atomic_store(&s->stopping, 1);
        pthread_join(s->reaper, NULL);
    }
    if (s->own_metrics) xds_metrics_free(s->metrics);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->health_mu);
    pthread_cond_destroy(&s->idle_cv);
    pthread_mutex_destroy(&s->conn_mu);
    free(s->model_name);
    free(s->api_key);
    free(s);
}

xds_status xds_server_start(const xds_server_opts *opts, xds_engine *engine, const xds_tokenizer *tok,
                            xds_server **out) {
    if (!opts || (!engine && !opts->engine_ops) || !tok || !opts->model_name || opts->max_ctx <= 0)
        return xds_err_set(XDS_ERR_INVALID, "xds_server_start: missing engine, tokenizer, model name or context");
    xds_server *s = calloc(1, sizeof *s);
    if (!s) return xds_err_set(XDS_ERR_NOMEM, "xds_server_start: out of memory");
    s->o = *opts;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->idle_cv, NULL);
    pthread_mutex_init(&s->conn_mu, NULL);
    pthread_mutex_init(&s->health_mu, NULL);
    s->engine = engine;
    s->tok = tok;
    s->n_vocab = xds_tokenizer_n_vocab(tok);
    s->add_bos = xds_tokenizer_add_bos(tok);
    s->model_name = strdup(opts->model_name);
    s->api_key = opts->api_key && *opts->api_key ? strdup(opts->api_key) : NULL;
    s->created = (int64_t)time(NULL);
    uint64_t seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)s;
    s->id_base = splitmix64(&seed);
    if (s->o.max_connections <= 0) s->o.max_connections = 256;
    if (s->o.idle_timeout_s <= 0) s->o.idle_timeout_s = 30;
    if (s->o.read_timeout_s <= 0) s->o.read_timeout_s = 30;
    if (!(s->o.stall_timeout_s > 0)) s->o.stall_timeout_s = 30;
    if (s->o.retry_after_s <= 0) s->o.retry_after_s = 1;
    /* MHD accepts up to the hard cap; the slots above it are ours (http.h) */
    {
        long soft = s->o.max_connections, hard = soft + (soft > 64 ? soft : 64);
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && (long)rl.rlim_cur - 64 < hard) {
            long room = (long)rl.rlim_cur - 64;
            hard = room > 1 ? room : 1;
            if (soft >= hard) {
                XDS_LOGW("serve: open-file limit %ld allows %ld connections: --max-connections %ld lowered to %ld, "
                         "connections beyond are closed unanswered", (long)rl.rlim_cur, hard, soft, hard > 1 ? hard - 1 : 1);
                s->o.max_connections = (int)(hard > 1 ? hard - 1 : 1);
            }
        }
        s->hard_limit = (int)hard;
    }
    if (s->o.max_body_bytes == 0) s->o.max_body_bytes = 8u << 20;
    if (s->o.header_limit < 8192) s->o.header_limit = 64u << 10;
    if (!s->model_name || (opts->api_key && *opts->api_key && !s->api_key) || srv_metrics_init(s) != 0) {
        srv_free(s);
        return xds_err_set(XDS_ERR_NOMEM, "xds_server_start: out of memory");
    }

    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    const char *host = opts->host && *opts->host ? opts->host : "127.0.0.1";
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC |
                     MHD_USE_ERROR_LOG | MHD_USE_AUTO;
    if (opts->port < 0 || opts->port > 65535) {
        srv_free(s);
        return xds_err_set(XDS_ERR_INVALID, "port %d out of range", opts->port);
    }
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)opts->port);
    } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)opts->port);
        flags |= MHD_USE_IPv6;
    } else {
        srv_free(s);
        return xds_err_set(XDS_ERR_INVALID, "--host '%s' is not a numeric IPv4 or IPv6 address", host);
    }

    /* SO_REUSEPORT only when asked (MHD's 0 would actively refuse address reuse) */
    struct MHD_OptionItem reuse[] = {{MHD_OPTION_LISTENING_ADDRESS_REUSE, 1, NULL}, {MHD_OPTION_END, 0, NULL}};
    /* an inherited listening socket replaces the address (and SO_REUSEPORT) */
    struct MHD_OptionItem inherit[] = {{MHD_OPTION_LISTEN_SOCKET, opts->listen_fd, NULL}, {MHD_OPTION_END, 0, NULL}};
    struct MHD_OptionItem *listen_opt = opts->listen_fd >= 0 ? inherit : opts->reuse_port ? reuse : reuse + 1;
    s->mhd = MHD_start_daemon(
        flags, (uint16_t)opts->port, NULL, NULL, srv_on_request, s,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned int)s->hard_limit,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)0, /* deadlines: srv_reaper_main */
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, s->o.header_limit,
        MHD_OPTION_NOTIFY_COMPLETED, srv_on_completed, s,
        MHD_OPTION_NOTIFY_CONNECTION, srv_on_connection, s,
        MHD_OPTION_THREAD_STACK_SIZE, (size_t)(1u << 20),
        MHD_OPTION_EXTERNAL_LOGGER, srv_mhd_log, s,
        MHD_OPTION_ARRAY, listen_opt,
        MHD_OPTION_END);
    if (!s->mhd) {
        int e = errno;
        srv_free(s);
        return xds_err_set(XDS_ERR_IO, "cannot listen on %s:%d (%s)", host, opts->port,
                           e ? strerror(e) : "microhttpd failed to start");
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_LISTEN_FD);
    s->port = opts->port;
    if (di) {
        struct sockaddr_storage bound;
        socklen_t bl = sizeof bound;
        if (getsockname(di->listen_fd, (struct sockaddr *)&bound, &bl) == 0)
            s->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                        : ((struct sockaddr_in *)&bound)->sin_port);
    }
    if (pthread_create(&s->reaper, NULL, srv_reaper_main, s) != 0) {
        MHD_stop_daemon(s->mhd);
        srv_free(s);
        return xds_err_set(XDS_ERR_INTERNAL, "cannot start the reaper thread");
    }
    s->reaper_started = 1;
    *out = s;
    return XDS_OK;
}

int xds_server_port(const xds_server *s) { return s->port; }

void xds_server_set_health(xds_server *s, xds_health h, const char *reason) {
    if (!s) return;
    if (h != XDS_HEALTH_READY && h != XDS_HEALTH_DEGRADED) h = XDS_HEALTH_UNAVAILABLE;
    pthread_mutex_lock(&s->health_mu);
    xds_health was = s->health;
    s->health = h;
    snprintf(s->health_reason, sizeof s->health_reason, "%s", reason ? reason : "");
    pthread_mutex_unlock(&s->health_mu);
    if (was != h) {
        static const char *name[] = {"ready", "degraded", "unavailable"};
        XDS_LOGI("serve: health %s%s%s", name[h], reason && *reason ? ": " : "", reason ? reason : "");
    }
}

xds_metrics *xds_server_metrics(xds_server *s) { return s ? s->metrics : NULL; }

void xds_server_quiesce(xds_server *s) {
    if (atomic_exchange(&s->quiescing, 1)) return;
    MHD_socket fd = MHD_quiesce_daemon(s->mhd);
    if (fd != MHD_INVALID_SOCKET) close(fd);
}

int xds_server_wait_idle(xds_server *s, double timeout_s) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    double end = ts.tv_sec + ts.tv_nsec * 1e-9 + timeout_s;
    ts.tv_sec = (time_t)end;
    ts.tv_nsec = (long)((end - (double)ts.tv_sec) * 1e9);
    pthread_mutex_lock(&s->mu);
    int rc = 0;
    while (s->n_inflight > 0 && rc != ETIMEDOUT) rc = pthread_cond_timedwait(&s->idle_cv, &s->mu, &ts);
    int idle = s->n_inflight == 0;
    pthread_mutex_unlock(&s->mu);
    return idle;
}

void xds_server_abort_all(xds_server *s) {
    pthread_mutex_lock(&s->mu);
    for (srv_req *q = s->active; q; q = q->next) srv_engine_cancel(s, q->req_id);
    pthread_mutex_unlock(&s->mu);
}

void xds_server_stop(xds_server *s) {
    if (!s) return;
    xds_server_abort_all(s);
    MHD_stop_daemon(s->mhd);
    srv_free(s);
}
