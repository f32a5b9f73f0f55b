/*
 * http.h — the HTTP front-end of `xds serve`: an OpenAI-compatible API over
 * one engine (a DP group), on libmicrohttpd.
 *
 * Threading: libmicrohttpd runs one thread per connection (bounded by the
 * hard cap below) behind an internal accept thread; a request handler
 * tokenizes, submits to the engine and then blocks on the request's
 * mutex/condvar until the engine thread's callback has queued text (stream)
 * or finished (non-stream). Engine callbacks only copy and signal.
 *
 * Limits: headers are bounded by MHD's per-connection memory pool
 * (header_limit), bodies by max_body_bytes (413). Connections: the first
 * max_connections open connections hold a slot and are served; MHD itself
 * accepts up to a hard cap above that (max_connections + max(64,
 * max_connections), lowered to fit RLIMIT_NOFILE), and a request on a
 * connection beyond the slots is answered at once with 503, Retry-After and
 * an OpenAI-style error (GET /metrics and /health are still answered), then
 * the connection is closed; such a connection must send its request within
 * 2 s. (MHD's own limit closes excess connections without a word, so the
 * slots are ours; beyond the hard cap that still happens, until connections
 * beyond the slots time out.)
 *
 * Deadlines are kept by a reaper thread (MHD's own inactivity timeout is
 * off, as it would count time spent waiting for the engine): a connection
 * waiting for a request (opened and silent, idle keep-alive, or still
 * sending headers: these look the same from here) is shut down after
 * min(idle_timeout_s, read_timeout_s); one sending a body read_timeout_s
 * after its headers, or after idle_timeout_s without a byte; a response the
 * client does not take for idle_timeout_s is dropped. So a client dribbling
 * one byte a second cannot hold a thread forever. While the engine works
 * there is no deadline (a stream waiting for its first token is never cut);
 * a non-streaming handler polls the socket and cancels if the client hangs
 * up, a stream sends an SSE comment every 10 s without output.
 *
 * Health: GET /health answers 200 {"status":"ok"} only while a new request
 * can be served, else 503 {"status":"unavailable","reason":...}: the
 * deployment layer said unavailable (xds_server_set_health), the server is
 * draining, the engine loop has made no progress for stall_timeout_s while
 * it has work (xds_engine_stats.stall_s), the request queue is full, or
 * every connection slot is taken. A deployment that reports degraded gives
 * 200 {"status":"degraded","reason":...}. That is readiness; GET
 * /health/live (a liveness probe: restart me) answers 503 only for the
 * engine stall, so a server that is merely full is not restarted. Both are
 * answered on connections beyond the slots.
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
#include "server/metrics.h"

struct xds_tokenizer;
typedef struct xds_server xds_server;

/* The state a deployment layer reports into /health. */
typedef enum xds_health {
    XDS_HEALTH_READY = 0,    /* serving normally */
    XDS_HEALTH_DEGRADED,     /* serving with less capacity (a process lost, recovering): 200 */
    XDS_HEALTH_UNAVAILABLE,  /* cannot take requests: /health 503, new completions 503 + Retry-After */
} xds_health;

/* A request router in front of the engine (a disaggregated deployment sends
 * prompts to a prefill instance first): same contracts as xds_engine_submit /
 * _cancel / _stats_get, plus two ways to say "no capacity": submit may
 * return XDS_ERR_UNAVAILABLE (the client gets 503 + Retry-After; BUSY stays
 * 429), and a request already accepted may end with XDS_FINISH_UNAVAILABLE
 * (non-streaming: 503 + Retry-After; a stream already sent 200, so it ends
 * with an SSE error event). stats is also called on every GET /metrics
 * before rendering, so a router can copy counters kept elsewhere (another
 * process) into xds_server_metrics() there. */
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
    int max_connections;     /* connections served at once; a request on one beyond gets 503 */
    int idle_timeout_s;      /* close a connection idle (no request, no byte, response not taken) this long */
    int read_timeout_s;      /* a whole request must arrive within this */
    double stall_timeout_s;  /* /health 503 once the engine loop has made no progress this long with work */
    int retry_after_s;       /* Retry-After of a 503 (connection limit, unavailable) */
    xds_metrics *metrics;    /* registry for /metrics (borrowed; NULL: the server's own), so a deployment
                              * can hold it before the server starts */
    size_t max_body_bytes;   /* larger request bodies get 413 */
    size_t header_limit;     /* per-connection memory for headers (MHD pool) */
    const char *topology_json; /* GET /v1/topology body (borrowed; NULL: 404, single process) */
    char *(*topology_fn)(void *user); /* or: a fresh body per request (malloc'ed; NULL: 503) */
    void *topology_user;
    char *(*expert_load_fn)(void *user); /* GET /v1/experts/load body, malloc'ed (NULL fn: 404;
                              * NULL result: 503), e.g. xds_engine_expert_load_json */
    void *expert_load_user;
    void (*metrics_fn)(void *user, xds_metrics *m); /* called before each GET /metrics renders (NULL:
                              * none): a deployment's front-end loads its shared fault counts */
    void *metrics_user;
    const xds_server_engine_ops *engine_ops; /* borrowed; NULL: the engine is called directly */
    int reuse_port;          /* SO_REUSEPORT: several processes serve one port (a deployment's front-ends) */
    int listen_fd;           /* >= 0: accept from this bound, listening socket (a deployment's shared one)
                              * instead of opening one; -1 (default): bind host:port */
} xds_server_opts;

xds_server_opts xds_server_opts_default(void);

/* Start listening. The engine (NULL when engine_ops is set) and tokenizer
 * must outlive the server. */
xds_status xds_server_start(const xds_server_opts *opts, xds_engine *engine,
                            const struct xds_tokenizer *tok, xds_server **out);
/* The port actually bound. */
int xds_server_port(const xds_server *s);
/* Report the deployment's state into /health (any thread; reason copied,
 * may be NULL). While UNAVAILABLE, completions are answered 503 +
 * Retry-After without reaching the engine. Starts READY. */
void xds_server_set_health(xds_server *s, xds_health h, const char *reason);
/* The registry /metrics renders (opts.metrics or the server's own), with
 * the reliability families of metrics.h registered: for xds_metrics_fault_*. */
xds_metrics *xds_server_metrics(xds_server *s);
/* Stop accepting new connections (existing ones keep being served). */
void xds_server_quiesce(xds_server *s);
/* Wait until no request is in flight; 1 if idle, 0 on timeout. */
int xds_server_wait_idle(xds_server *s, double timeout_s);
/* Cancel every request still running in the engine. */
void xds_server_abort_all(xds_server *s);
/* Close every connection, stop the threads, free. */
void xds_server_stop(xds_server *s);

#endif
