/*
 * http.h — the HTTP front-end of `xds serve`: an OpenAI-compatible API over
 * one engine (a DP group), on libmicrohttpd.
 *
 * Threading: libmicrohttpd runs one thread per connection (bounded by
 * max_connections) behind an internal accept thread; a request handler
 * tokenizes, submits to the engine and then blocks on the request's
 * mutex/condvar until the engine thread's callback has queued text (stream)
 * or finished (non-stream). Engine callbacks only copy and signal.
 *
 * Limits: headers are bounded by MHD's per-connection memory pool
 * (header_limit), bodies by max_body_bytes (413). Deadlines are kept by a
 * reaper thread (MHD's own inactivity timeout is off, as it would count time
 * spent waiting for the engine): a connection that has not delivered a
 * complete request within read_timeout_s of starting to wait for one (idle
 * keep-alive included) is shut down, so a client dribbling one byte a second
 * cannot hold a thread forever; a response the client does not take for
 * idle_timeout_s is dropped. While the engine works there is no deadline; a
 * non-streaming handler polls the socket and cancels if the client hangs up,
 * a stream sends an SSE comment every 10 s without output.
 *
 * Shutdown: xds_server_quiesce stops accepting, xds_server_wait_idle waits
 * for in-flight requests, xds_server_abort_all cancels what is left,
 * xds_server_stop closes connections and frees.
 */
#ifndef XDS_SERVER_HTTP_H
#define XDS_SERVER_HTTP_H

#include <stddef.h>

#include "base/status.h"
#include "engine/engine.h"

struct xds_tokenizer;
typedef struct xds_server xds_server;

/* A request router in front of the engine (a disaggregated deployment sends
 * prompts to a prefill instance first): same contracts as xds_engine_submit /
 * _cancel / _stats_get. */
typedef struct xds_server_engine_ops {
    void *self;
    xds_status (*submit)(void *self, const int32_t *prompt, int n_prompt, const xds_gen_params *params,
                         xds_gen_cb cb, void *user, uint64_t *req_id);
    void (*cancel)(void *self, uint64_t req_id);
    void (*stats)(void *self, xds_engine_stats *out);
} xds_server_engine_ops;

typedef struct xds_server_opts {
    const char *host;        /* address to bind ("127.0.0.1"; "::1" etc. for IPv6) */
    int port;                /* 0: any free port (see xds_server_port) */
    const char *api_key;     /* NULL / "": no authentication */
    const char *model_name;  /* the served model name (GET /v1/models, "model" checks) */
    int max_ctx;             /* the engine's max prompt + output tokens */
    int max_connections;     /* open connections at once */
    int idle_timeout_s;      /* drop a response the client has not taken for this long */
    int read_timeout_s;      /* a whole request must arrive within this */
    size_t max_body_bytes;   /* larger request bodies get 413 */
    size_t header_limit;     /* per-connection memory for headers (MHD pool) */
    const char *topology_json; /* GET /v1/topology body (borrowed; NULL: 404, single process) */
    char *(*topology_fn)(void *user); /* or: a fresh body per request (malloc'ed; NULL: 503) */
    void *topology_user;
    const xds_server_engine_ops *engine_ops; /* borrowed; NULL: the engine is called directly */
    int reuse_port;          /* SO_REUSEPORT: several processes serve one port (a deployment's front-ends) */
} xds_server_opts;

xds_server_opts xds_server_opts_default(void);

/* Start listening. The engine (NULL when engine_ops is set) and tokenizer
 * must outlive the server. */
xds_status xds_server_start(const xds_server_opts *opts, xds_engine *engine,
                            const struct xds_tokenizer *tok, xds_server **out);
/* The port actually bound. */
int xds_server_port(const xds_server *s);
/* Stop accepting new connections (existing ones keep being served). */
void xds_server_quiesce(xds_server *s);
/* Wait until no request is in flight; 1 if idle, 0 on timeout. */
int xds_server_wait_idle(xds_server *s, double timeout_s);
/* Cancel every request still running in the engine. */
void xds_server_abort_all(xds_server *s);
/* Close every connection, stop the threads, free. */
void xds_server_stop(xds_server *s);

#endif
