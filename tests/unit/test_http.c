/*
 * test_http.c — the HTTP server's behaviour under load and failure, on a
 * real xds_server (libmicrohttpd, loopback sockets) in front of a fake
 * engine (xds_server_engine_ops answering from its own thread) and a tiny
 * in-memory tokenizer, so no model is needed and it runs in seconds.
 *
 * Checked: past --max-connections a request is answered at once with 503,
 * Retry-After, Connection: close and an OpenAI error body (POST and GET),
 * while /health says 503 and /metrics still answers; the idle connections
 * are closed after the idle timeout and a normal request then succeeds; a
 * client dribbling its headers or its body is dropped; a stream or a
 * non-streaming request waiting on the engine longer than the idle timeout
 * is not cut; /health (readiness) follows the deployment's state
 * (xds_server_set_health), an engine stall, a full queue; XDS_ERR_UNAVAILABLE
 * from submit and XDS_FINISH_UNAVAILABLE map to 503; /health/live only the
 * stall; the fault metrics of
 * metrics.h and the whole /metrics text are valid Prometheus exposition.
 *
 * Every wait has a deadline that fails the check instead of hanging; no
 * check asserts how fast anything is.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "engine/engine.h"
#include "server/http.h"
#include "server/metrics.h"
#include "test.h"
#include "tokenizer/tokenizer.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- the fake engine ------------------------------------------------------ */

typedef struct fake_req {
    uint64_t id;
    xds_gen_cb cb;
    void *user;
    double due;
    int n_prompt;
    int cancelled;
    struct fake_req *next;
} fake_req;

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    fake_req *head;
    uint64_t next_id;
    int stop;
    int delay_ms;          /* before a request's output */
    xds_finish fin;        /* how requests end */
    xds_status submit_st;  /* != OK: submit fails so */
    xds_engine_stats st;   /* what stats reports */
} F = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, 1, 0, 0, XDS_FINISH_LENGTH, XDS_OK, {0}};

static void *fake_main(void *arg) {
    (void)arg;
    pthread_mutex_lock(&F.mu);
    while (!F.stop) {
        fake_req *r = NULL, **pp;
        double t = now_s();
        for (pp = &F.head; *pp; pp = &(*pp)->next)
            if ((*pp)->cancelled || (*pp)->due <= t) {
                r = *pp;
                *pp = r->next;
                break;
            }
        if (!r) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 20 * 1000 * 1000;
            if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
            pthread_cond_timedwait(&F.cv, &F.mu, &ts);
            continue;
        }
        xds_finish fin = r->cancelled ? XDS_FINISH_ABORT : F.fin;
        pthread_mutex_unlock(&F.mu);
        xds_gen_event ev = {r->id, "ab", 2, 2, XDS_FINISH_NONE, r->n_prompt, 0, 1};
        if (fin != XDS_FINISH_ABORT) r->cb(r->user, &ev);
        ev = (xds_gen_event){r->id, "", 0, -1, fin, r->n_prompt, 0, fin == XDS_FINISH_ABORT ? 0 : 1};
        r->cb(r->user, &ev);
        free(r);
        pthread_mutex_lock(&F.mu);
    }
    pthread_mutex_unlock(&F.mu);
    return NULL;
}

static xds_status fake_submit(void *self, const int32_t *prompt, int n_prompt, const xds_gen_params *params,
                              xds_gen_cb cb, void *user, uint64_t *req_id) {
    (void)self, (void)prompt, (void)params;
    pthread_mutex_lock(&F.mu);
    if (F.submit_st != XDS_OK) {
        xds_status st = F.submit_st;
        pthread_mutex_unlock(&F.mu);
        return xds_err_set(st, "no decode group is alive");
    }
    fake_req *r = calloc(1, sizeof *r);
    r->id = F.next_id++;
    r->cb = cb;
    r->user = user;
    r->n_prompt = n_prompt;
    r->due = now_s() + F.delay_ms * 1e-3;
    r->next = F.head;
    F.head = r;
    *req_id = r->id;
    pthread_cond_signal(&F.cv);
    pthread_mutex_unlock(&F.mu);
    return XDS_OK;
}

static void fake_cancel(void *self, uint64_t id) {
    (void)self;
    pthread_mutex_lock(&F.mu);
    for (fake_req *r = F.head; r; r = r->next)
        if (r->id == id) r->cancelled = 1;
    pthread_cond_signal(&F.cv);
    pthread_mutex_unlock(&F.mu);
}

static void fake_stats(void *self, xds_engine_stats *out) {
    (void)self;
    pthread_mutex_lock(&F.mu);
    *out = F.st;
    pthread_mutex_unlock(&F.mu);
}

static void fake_set(int delay_ms, xds_finish fin, xds_status submit_st) {
    pthread_mutex_lock(&F.mu);
    F.delay_ms = delay_ms;
    F.fin = fin;
    F.submit_st = submit_st;
    pthread_mutex_unlock(&F.mu);
}

static void fake_set_stats(int n_waiting, int max_queue, double stall_s) {
    pthread_mutex_lock(&F.mu);
    F.st.n_waiting = n_waiting;
    F.st.max_queue = max_queue;
    F.st.stall_s = stall_s;
    pthread_mutex_unlock(&F.mu);
}

/* ---- a client -------------------------------------------------------------- */

static int g_port;

static int conn_open(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g_port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        if (fd >= 0) close(fd);
        return -1;
    }
    return fd;
}

static int send_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k <= 0) return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Read until EOF or the deadline; returns bytes read (out NUL-terminated), -1 at the deadline. */
static long read_to_eof(int fd, char *out, size_t cap, double timeout_s) {
    size_t n = 0;
    double end = now_s() + timeout_s;
    for (;;) {
        double left = end - now_s();
        if (left <= 0) {
            out[n] = 0;
            return -1;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, (int)(left * 1000) + 1) <= 0) continue;
        ssize_t k = recv(fd, out + n, cap - 1 - n, 0);
        if (k <= 0) break;
        n += (size_t)k;
        if (n == cap - 1) break;
    }
    out[n] = 0;
    return (long)n;
}

/* One request with Connection: close; the status (0: no valid answer by the
 * deadline, -1: cannot connect), the raw answer in resp. */
static int http_req(const char *method, const char *path, const char *body, char *resp, size_t cap,
                    double timeout_s) {
    resp[0] = 0;
    int fd = conn_open();
    if (fd < 0) return -1;
    char req[4096];
    int n = snprintf(req, sizeof req,
                     "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n%s",
                     method, path, body ? strlen(body) : 0, body ? body : "");
    int st = 0;
    if (send_all(fd, req, (size_t)n) == 0 && read_to_eof(fd, resp, cap, timeout_s) > 12 &&
        !strncmp(resp, "HTTP/1.1 ", 9))
        st = atoi(resp + 9);
    close(fd);
    return st;
}

static const char *body_of(const char *resp) {
    const char *b = strstr(resp, "\r\n\r\n");
    return b ? b + 4 : "";
}

/* 1 once the server has closed fd (EOF or reset), 0 if still open at the deadline. */
static int wait_closed(int fd, double timeout_s) {
    double end = now_s() + timeout_s;
    char buf[256];
    while (now_s() < end) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 50) <= 0) continue;
        ssize_t k = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (k == 0 || (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) return 1;
    }
    return 0;
}

static const char *COMPLETION = "{\"prompt\":\"ab\",\"max_tokens\":4}";
static const char *COMPLETION_STREAM = "{\"prompt\":\"ab\",\"max_tokens\":4,\"stream\":true}";

/* ---- Prometheus text validity ---------------------------------------------- */

typedef struct { char name[128]; char type[32]; } prom_fam;

static int prom_name_ok(const char *s, size_t n) {
    if (!n) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' || (i && c >= '0' && c <= '9');
        if (!ok) return 0;
    }
    return 1;
}

/* The exposition format (0.0.4) as Prometheus parses it: comment lines, one
 * TYPE per family before its samples, samples `name{k="v",...} value` of a
 * declared family, no duplicate series, histogram buckets cumulative with
 * +Inf equal to _count. Returns 0 or a line number (> 0) of the first error. */
static int prom_check(const char *text, char *err, size_t errn) {
    enum { MAXF = 128, MAXS = 1024 };
    static prom_fam fams[MAXF];
    static char series[MAXS][256];
    static double vals[MAXS];
    int nf = 0, ns = 0, line = 0;
    const char *p = text;
    err[0] = 0;
#define PROM_FAIL(...) do { snprintf(err, errn, __VA_ARGS__); return line; } while (0)
    while (*p) {
        line++;
        const char *e = strchr(p, '\n');
        if (!e) PROM_FAIL("line %d has no newline", line);
        char l[1024];
        size_t n = (size_t)(e - p);
        if (n >= sizeof l) PROM_FAIL("line %d too long", line);
        memcpy(l, p, n);
        l[n] = 0;
        p = e + 1;
        if (!n) continue;
        if (l[0] == '#') {
            char name[128], type[32];
            if (!strncmp(l, "# TYPE ", 7)) {
                if (sscanf(l + 7, "%127s %31s", name, type) != 2) PROM_FAIL("bad TYPE: %.160s", l);
                if (strcmp(type, "counter") && strcmp(type, "gauge") && strcmp(type, "histogram"))
                    PROM_FAIL("unknown type: %.160s", l);
                for (int i = 0; i < nf; i++)
                    if (!strcmp(fams[i].name, name)) PROM_FAIL("second TYPE for %.120s", name);
                if (nf == MAXF) PROM_FAIL("too many families");
                snprintf(fams[nf].name, sizeof fams[nf].name, "%s", name);
                snprintf(fams[nf].type, sizeof fams[nf].type, "%s", type);
                nf++;
            } else if (strncmp(l, "# HELP ", 7)) {
                PROM_FAIL("unknown comment: %.160s", l);
            }
            continue;
        }
        /* sample */
        size_t k = strcspn(l, "{ ");
        if (!prom_name_ok(l, k)) PROM_FAIL("bad metric name: %.160s", l);
        char name[128];
        snprintf(name, sizeof name, "%.*s", (int)k, l);
        const char *q = l + k;
        char labels[512] = "", le[64] = "";
        if (*q == '{') {
            const char *r = q + 1;
            size_t ln = 0;
            while (*r != '}') {
                size_t kn = strcspn(r, "=");
                if (!prom_name_ok(r, kn) || r[kn] != '=' || r[kn + 1] != '"') PROM_FAIL("bad label: %.160s", l);
                const char *v = r + kn + 2, *ve = strchr(v, '"');
                if (!ve) PROM_FAIL("unterminated label value: %.160s", l);
                if (kn == 2 && !strncmp(r, "le", 2)) snprintf(le, sizeof le, "%.*s", (int)(ve - v), v);
                else ln += (size_t)snprintf(labels + ln, sizeof labels - ln, "%.*s,", (int)(ve - r + 1), r);
                r = ve + 1;
                if (*r == ',') r++;
                else if (*r != '}') PROM_FAIL("bad label list: %.160s", l);
            }
            q = r + 1;
        }
        if (*q != ' ') PROM_FAIL("no value: %.160s", l);
        char *end;
        double v = strtod(q + 1, &end);
        if (end == q + 1 || *end) PROM_FAIL("bad value: %.160s", l);
        /* its family */
        const prom_fam *f = NULL;
        for (int i = 0; i < nf && !f; i++) {
            size_t fl = strlen(fams[i].name);
            if (!strcmp(fams[i].name, name)) f = &fams[i];
            else if (!strcmp(fams[i].type, "histogram") && !strncmp(name, fams[i].name, fl) &&
                     (!strcmp(name + fl, "_bucket") || !strcmp(name + fl, "_sum") || !strcmp(name + fl, "_count")))
                f = &fams[i];
        }
        if (!f) PROM_FAIL("sample of an undeclared family: %.160s", l);
        int hist = !strcmp(f->type, "histogram");
        if (hist && !strcmp(f->name, name)) PROM_FAIL("histogram sample without suffix: %.160s", l);
        if (!strcmp(f->type, "counter") && v < 0) PROM_FAIL("negative counter: %.160s", l);
        if (*le && !(hist && strstr(name, "_bucket"))) PROM_FAIL("le outside a histogram bucket: %.160s", l);
        if (hist && strstr(name, "_bucket") && !*le) PROM_FAIL("bucket without le: %.160s", l);
        char key[256];
        snprintf(key, sizeof key, "%s|%s|%s", name, labels, le);
        for (int i = 0; i < ns; i++)
            if (!strcmp(series[i], key)) PROM_FAIL("duplicate series: %.160s", l);
        if (ns == MAXS) PROM_FAIL("too many series");
        snprintf(series[ns], sizeof series[ns], "%s", key);
        vals[ns++] = v;
        if (hist && strstr(name, "_bucket")) { /* cumulative: not below the previous bucket of the series */
            for (int i = ns - 2; i >= 0; i--) {
                char pre[256];
                snprintf(pre, sizeof pre, "%s|%s|", name, labels);
                if (!strncmp(series[i], pre, strlen(pre))) {
                    if (vals[i] > v) PROM_FAIL("buckets not cumulative: %.160s", l);
                    break;
                }
            }
        }
        if (hist && strstr(name, "_count")) { /* +Inf bucket == _count */
            char want[256];
            snprintf(want, sizeof want, "%s_bucket|%s|+Inf", f->name, labels);
            int found = 0;
            double inf = 0;
            for (int i = 0; i < ns; i++)
                if (!strcmp(series[i], want)) found = 1, inf = vals[i];
            if (!found) PROM_FAIL("no +Inf bucket before %.160s", l);
            if (inf != v) PROM_FAIL("+Inf bucket != _count: %.160s", l);
        }
    }
#undef PROM_FAIL
    return 0;
}

/* A sample's value in a /metrics answer (NAN if absent). */
static double prom_value(const char *text, const char *series) {
    size_t n = strlen(series);
    for (const char *p = text; (p = strstr(p, series)); p += n)
        if ((p == text || p[-1] == '\n') && p[n] == ' ') return strtod(p + n + 1, NULL);
    return NAN;
}

/* ---- tests ------------------------------------------------------------------ */

static char resp[1 << 16];

/* Past the slots: 503 + Retry-After, answered; the idle ones close; then 200. */
static void test_connection_limit(xds_server *srv, int max_conn) {
    int fds[16];
    int n = 0;
    for (int i = 0; i < max_conn + 2 && i < 16; i++) /* two beyond the slots, idle too */
        if ((fds[n] = conn_open()) >= 0) n++;
    CHECK(n == max_conn + 2);
    /* the server has taken them all once /health says so (answered on an overflow connection too) */
    int st = 0;
    for (double end = now_s() + 10; now_s() < end;) {
        st = http_req("GET", "/health", NULL, resp, sizeof resp, 5);
        if (st == 503) break;
        usleep(20 * 1000);
    }
    CHECK_MSG(st == 503 && strstr(body_of(resp), "connection slots"), "health when full: %d %s", st, resp);
    st = http_req("GET", "/health/live", NULL, resp, sizeof resp, 5); /* full is not dead */
    CHECK_MSG(st == 200 && !strcmp(body_of(resp), "{\"status\":\"ok\"}"), "live when full: %d %s", st, resp);

    /* a new client is answered, not dropped: within 2 s (a hang check) */
    st = http_req("POST", "/v1/completions", COMPLETION, resp, sizeof resp, 2);
    CHECK_MSG(st == 503, "POST past the limit: %d %s", st, resp);
    CHECK(strcasestr(resp, "\r\nRetry-After: 1\r\n") != NULL);
    CHECK(strcasestr(resp, "\r\nConnection: close\r\n") != NULL);
    CHECK_MSG(strstr(body_of(resp), "\"code\":\"server_overloaded\"") && strstr(body_of(resp), "\"type\":\"server_error\""),
              "%s", body_of(resp));
    st = http_req("GET", "/v1/models", NULL, resp, sizeof resp, 2);
    CHECK_MSG(st == 503 && strcasestr(resp, "\r\nRetry-After:"), "GET past the limit: %d", st);
    st = http_req("GET", "/metrics", NULL, resp, sizeof resp, 5);
    CHECK_MSG(st == 200 && prom_value(body_of(resp), "xds_health_ready") == 0 &&
                  prom_value(body_of(resp), "xds_http_connections_refused_total") >= 2,
              "metrics past the limit: %d", st);

    /* idle timeout (1 s): all of them are closed, well before the 6 s read
     * timeout (the deadline tells which limit applied, not how fast) */
    int closed = 0;
    double end = now_s() + 4;
    for (int i = 0; i < n; i++) closed += wait_closed(fds[i], end - now_s() > 0 ? end - now_s() : 0);
    CHECK_MSG(closed == n, "%d of %d idle connections closed", closed, n);
    for (int i = 0; i < n; i++) close(fds[i]);
    /* the client sees a close before the server's completion callback frees
     * the slot (libmicrohttpd closes first): wait, bounded, for the slots */
    for (double e2 = now_s() + 5; now_s() < e2;) {
        st = http_req("GET", "/health", NULL, resp, sizeof resp, 5);
        if (st == 200) break;
        usleep(20 * 1000);
    }
    CHECK_MSG(st == 200 && !strcmp(body_of(resp), "{\"status\":\"ok\"}"), "health: %d %s", st, body_of(resp));
    st = http_req("POST", "/v1/completions", COMPLETION, resp, sizeof resp, 10);
    CHECK_MSG(st == 200 && strstr(body_of(resp), "\"text\":\"ab\""), "after the idle timeout: %d %s", st, resp);
    xds_metric *cl = xds_metrics_find(xds_server_metrics(srv), "xds_http_connections_closed_total");
    CHECK_MSG(xds_metric_get(cl, "reason=\"idle\"") >= n, "closed idle %g", xds_metric_get(cl, "reason=\"idle\""));
}

/* Slow loris: headers a byte at a time (looks idle: closed at the idle
 * limit), a body a byte per 0.3 s (each byte in time, the whole not: closed
 * at the read limit) and a body that stops for 1.5 s (closed at the idle
 * limit, at its first pause): each dropped before it could finish, by byte
 * count; others are served meanwhile. */
static void test_slow_clients(xds_server *srv) {
    static const char hdr[] = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                              "Content-Length: 40\r\n\r\n";
    static const char body[] = "{\"prompt\":\"ab\",\"max_tokens\":4}          ";
    xds_metric *cl = xds_metrics_find(xds_server_metrics(srv), "xds_http_connections_closed_total");
    double slow0 = xds_metric_get(cl, "reason=\"slow_request\"");
    static const struct { int body; double gap; size_t max_sent; const char *what; } kinds[] = {
        {0, 0.3, sizeof hdr - 2, "headers, 0.3 s per byte"},
        {1, 0.3, sizeof body - 2, "body, 0.3 s per byte"},
        {1, 1.5, 2, "body pausing 1.5 s"},
    };
    for (int k = 0; k < 3; k++) {
        int fd = conn_open();
        CHECK(fd >= 0);
        if (fd < 0) continue;
        if (kinds[k].body) CHECK(send_all(fd, hdr, sizeof hdr - 1) == 0); /* headers at once, then the body */
        const char *drip = kinds[k].body ? body : hdr;
        size_t len = strlen(drip), sent = 0;
        int closed = 0;
        for (double end = now_s() + 30; now_s() < end && !closed && sent < len;) {
            if (send(fd, drip + sent, 1, MSG_NOSIGNAL) != 1) break;
            sent++;
            closed = wait_closed(fd, kinds[k].gap);
            if (sent == 3) { /* meanwhile another client is served */
                int st = http_req("GET", "/v1/models", NULL, resp, sizeof resp, 5);
                CHECK_MSG(st == 200, "served beside a slow client: %d", st);
            }
        }
        if (!closed) closed = wait_closed(fd, 10);
        CHECK_MSG(closed && sent <= kinds[k].max_sent, "slow %s: closed %d after %zu of %zu bytes", kinds[k].what,
                  closed, sent, len);
        close(fd);
    }
    CHECK_MSG(xds_metric_get(cl, "reason=\"slow_request\"") >= slow0 + 2, "slow_request counter");
}

/* Waiting on the engine (1.5 s > the 1 s idle timeout) is not idleness. */
static void test_engine_wait_not_cut(void) {
    fake_set(1500, XDS_FINISH_LENGTH, XDS_OK);
    int st = http_req("POST", "/v1/completions", COMPLETION_STREAM, resp, sizeof resp, 20);
    CHECK_MSG(st == 200 && strstr(resp, "\"text\":\"ab\"") && strstr(resp, "data: [DONE]"), "stream: %d %s", st, resp);
    st = http_req("POST", "/v1/completions", COMPLETION, resp, sizeof resp, 20);
    CHECK_MSG(st == 200 && strstr(body_of(resp), "\"text\":\"ab\""), "non-stream: %d %s", st, resp);
    fake_set(0, XDS_FINISH_LENGTH, XDS_OK);
}

static void test_health_and_unavailable(xds_server *srv) {
    int st;
    xds_server_set_health(srv, XDS_HEALTH_UNAVAILABLE, "decode group 1 restarting");
    st = http_req("GET", "/health", NULL, resp, sizeof resp, 5);
    CHECK_MSG(st == 503 && strstr(body_of(resp), "\"status\":\"unavailable\"") &&
                  strstr(body_of(resp), "decode group 1 restarting"),
              "unavailable: %d %s", st, body_of(resp));
    CHECK(http_req("GET", "/health/live", NULL, resp, sizeof resp, 5) == 200);
    st = http_req("POST", "/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"ab\"}]}", resp,
                  sizeof resp, 5);
    CHECK_MSG(st == 503 && strcasestr(resp, "\r\nRetry-After: 1\r\n") &&
                  strstr(body_of(resp), "\"code\":\"service_unavailable\""),
              "completion while unavailable: %d %s", st, resp);
    xds_server_set_health(srv, XDS_HEALTH_DEGRADED, "expert worker 1 lost; replicas serve");
    st = http_req("GET", "/health", NULL, resp, sizeof resp, 5);
    CHECK_MSG(st == 200 && strstr(body_of(resp), "\"status\":\"degraded\"") && strstr(body_of(resp), "replicas serve"),
              "degraded: %d %s", st, body_of(resp));
    st = http_req("POST", "/v1/completions", COMPLETION, resp, sizeof resp, 10);
    CHECK_MSG(st == 200, "completion while degraded: %d", st);
    xds_server_set_health(srv, XDS_HEALTH_READY, NULL);

    fake_set_stats(0, 8, 6.0); /* the engine loop stuck for 6 s > stall_timeout 5 s */
    st = http_req("GET", "/health", NULL, resp, sizeof resp, 5);
    CHECK_MSG(st == 503 && strstr(body_of(resp), "no progress for 6.0 s"), "stall: %d %s", st, body_of(resp));
    st = http_req("GET", "/health/live", NULL, resp, sizeof resp, 5);
    CHECK_MSG(st == 503 && strstr(body_of(resp), "no progress for 6.0 s"), "live, stalled: %d %s", st, body_of(resp));
    fake_set_stats(0, 8, 4.0); /* slow, under the limit */
    CHECK(http_req("GET", "/health", NULL, resp, sizeof resp, 5) == 200);
    fake_set_stats(8, 8, 0); /* queue full */
    st = http_req("GET", "/health", NULL, resp, sizeof resp, 5);
    CHECK_MSG(st == 503 && strstr(body_of(resp), "queue is full (8 waiting, limit 8)"), "queue: %d %s", st, body_of(resp));
    CHECK(http_req("GET", "/health/live", NULL, resp, sizeof resp, 5) == 200);
    fake_set_stats(0, 0, 0);
    CHECK(http_req("GET", "/health", NULL, resp, sizeof resp, 5) == 200);

    /* the router has no capacity: at submit, or for an accepted request */
    fake_set(0, XDS_FINISH_LENGTH, XDS_ERR_UNAVAILABLE);
    st = http_req("POST", "/v1/completions", COMPLETION, resp, sizeof resp, 5);
    CHECK_MSG(st == 503 && strcasestr(resp, "\r\nRetry-After: 1\r\n") && strstr(body_of(resp), "no decode group is alive"),
              "submit unavailable: %d %s", st, resp);
    fake_set(0, XDS_FINISH_UNAVAILABLE, XDS_OK);
    st = http_req("POST", "/v1/completions", COMPLETION, resp, sizeof resp, 5);
    CHECK_MSG(st == 503 && strcasestr(resp, "\r\nRetry-After: 1\r\n"), "finish unavailable: %d %s", st, resp);
    st = http_req("POST", "/v1/completions", COMPLETION_STREAM, resp, sizeof resp, 5);
    CHECK_MSG(st == 200 && strstr(resp, "service_unavailable"),
              "stream ending unavailable: %d %s", st, resp);
    fake_set(0, XDS_FINISH_LENGTH, XDS_OK);
    CHECK(http_req("POST", "/v1/completions", COMPLETION, resp, sizeof resp, 10) == 200);
}

static void test_metrics(xds_server *srv) {
    xds_metrics *m = xds_server_metrics(srv);
    CHECK(m != NULL && xds_metrics_fault_register(m) == 0); /* idempotent */
    xds_metrics_fault_detected(m, "expert", "hang");
    xds_metrics_fault_detected(m, "expert", "hang");
    xds_metrics_fault_detected(m, "Bad Role\"}", "exit");
    xds_metrics_fault_failover(m, "decode");
    xds_metrics_fault_replayed(m, 3);
    xds_metrics_fault_restart(m, "decode");
    xds_metrics_fault_recovered(m, "decode", 1.5);
    xds_metrics_fault_recovered(m, "expert", 0.2);
    int st = http_req("GET", "/metrics", NULL, resp, sizeof resp, 5);
    CHECK(st == 200);
    const char *b = body_of(resp);
    char err[256];
    int bad = prom_check(b, err, sizeof err);
    CHECK_MSG(bad == 0, "invalid Prometheus text at line %d: %s", bad, err);
    CHECK(prom_value(b, "xds_fault_failures_detected_total{role=\"expert\",cause=\"hang\"}") == 2);
    CHECK(prom_value(b, "xds_fault_failures_detected_total{role=\"other\",cause=\"exit\"}") == 1);
    CHECK(prom_value(b, "xds_fault_failures_detected_total{role=\"prefill\",cause=\"exit\"}") == 0);
    CHECK(prom_value(b, "xds_fault_failovers_total{role=\"decode\"}") == 1);
    CHECK(prom_value(b, "xds_fault_requests_replayed_total") == 3);
    CHECK(prom_value(b, "xds_fault_restarts_total{role=\"decode\"}") == 1);
    CHECK(prom_value(b, "xds_fault_recovery_seconds_bucket{role=\"decode\",le=\"1\"}") == 0);
    CHECK(prom_value(b, "xds_fault_recovery_seconds_bucket{role=\"decode\",le=\"2\"}") == 1);
    CHECK(prom_value(b, "xds_fault_recovery_seconds_sum{role=\"decode\"}") == 1.5);
    CHECK(prom_value(b, "xds_fault_recovery_seconds_count{role=\"expert\"}") == 1);
    CHECK(prom_value(b, "xds_http_connection_limit") == 4 && prom_value(b, "xds_health_ready") == 1);
    CHECK(prom_value(b, "xds_http_requests_total{endpoint=\"/v1/completions\",code=\"503\"}") >= 3);

    /* the checker itself rejects what Prometheus would */
    static const char *broken[] = {
        "x_total 1\n",                                                   /* no TYPE */
        "# TYPE x counter\nx{a=\"1\"} 1\nx{a=\"1\"} 2\n",                /* duplicate series */
        "# TYPE x counter\nx{a=b} 1\n",                                  /* unquoted label */
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n", /* not cumulative */
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 1\n", /* +Inf != count */
        "# TYPE x counter\nx -1\n",                                      /* negative counter */
        "# TYPE x gauge\nx 1",                                           /* no final newline */
    };
    for (size_t i = 0; i < sizeof broken / sizeof *broken; i++) CHECK_MSG(prom_check(broken[i], err, sizeof err) > 0, "broken[%zu] accepted", i);
}

/* A deployment's front-end: its /metrics shows the shared fault counts
 * (xds_fault_counts, added to by every process) through opts.metrics_fn;
 * loading replaces the registry's values (test_metrics left others there). */
static xds_fault_counts g_fc;
static int g_use_fc;
static void load_fc(void *user, xds_metrics *m) {
    (void)user;
    if (g_use_fc) xds_metrics_fault_load(m, &g_fc);
}

static void test_metrics_shared_counts(void) {
    xds_fault_count_detected(&g_fc, "decode", "exit");
    xds_fault_count_detected(&g_fc, "decode", "exit");
    xds_fault_count_detected(&g_fc, "expert", "hang");
    xds_fault_count_detected(&g_fc, "nosuchrole", "exit"); /* not counted */
    xds_fault_count_detected(&g_fc, "decode", "oom");      /* not counted */
    xds_fault_count_failover(&g_fc, "decode");
    xds_fault_count_failover(&g_fc, "decode");
    xds_fault_count_replayed(&g_fc, 5);
    xds_fault_count_replayed(&g_fc, -2); /* ignored */
    xds_fault_count_restart(&g_fc, "decode");
    xds_fault_count_restart(&g_fc, "decode");
    xds_fault_count_recovered(&g_fc, "decode", 0.3);
    xds_fault_count_recovered(&g_fc, "decode", 1.5);
    xds_fault_count_recovered(&g_fc, "expert", 400); /* beyond the last bound: +Inf only */
    g_use_fc = 1;
    int st = http_req("GET", "/metrics", NULL, resp, sizeof resp, 5);
    CHECK(st == 200);
    const char *b = body_of(resp);
    char err[256];
    int bad = prom_check(b, err, sizeof err);
    CHECK_MSG(bad == 0, "invalid Prometheus text at line %d: %s", bad, err);
    CHECK(prom_value(b, "xds_fault_failures_detected_total{role=\"decode\",cause=\"exit\"}") == 2);
    CHECK(prom_value(b, "xds_fault_failures_detected_total{role=\"expert\",cause=\"hang\"}") == 1); /* was 2: replaced */
    CHECK(prom_value(b, "xds_fault_failures_detected_total{role=\"prefill\",cause=\"exit\"}") == 0);
    CHECK(prom_value(b, "xds_fault_failovers_total{role=\"decode\"}") == 2);
    CHECK(prom_value(b, "xds_fault_requests_replayed_total") == 5);
    CHECK(prom_value(b, "xds_fault_restarts_total{role=\"decode\"}") == 2);
    CHECK(prom_value(b, "xds_fault_recovery_seconds_count{role=\"decode\"}") == 2);
    CHECK(prom_value(b, "xds_fault_recovery_seconds_bucket{role=\"decode\",le=\"0.25\"}") == 0);
    CHECK(prom_value(b, "xds_fault_recovery_seconds_bucket{role=\"decode\",le=\"0.5\"}") == 1);
    CHECK(prom_value(b, "xds_fault_recovery_seconds_bucket{role=\"decode\",le=\"2\"}") == 2);
    CHECK(fabs(prom_value(b, "xds_fault_recovery_seconds_sum{role=\"decode\"}") - 1.8) < 1e-6);
    CHECK(prom_value(b, "xds_fault_recovery_seconds_bucket{role=\"expert\",le=\"300\"}") == 0);
    CHECK(prom_value(b, "xds_fault_recovery_seconds_bucket{role=\"expert\",le=\"+Inf\"}") == 1);
    /* a second scrape shows the same totals (set, not added) */
    st = http_req("GET", "/metrics", NULL, resp, sizeof resp, 5);
    CHECK(st == 200 && prom_value(body_of(resp), "xds_fault_requests_replayed_total") == 5 &&
          prom_value(body_of(resp), "xds_fault_recovery_seconds_count{role=\"decode\"}") == 2);
    g_use_fc = 0;
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    static const char tiny[] =
        "{\"version\": \"1.0\", \"added_tokens\": [{\"id\": 6, \"content\": \"<eos>\", \"special\": true}],"
        " \"normalizer\": null,"
        " \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": true},"
        " \"decoder\": {\"type\": \"ByteLevel\"},"
        " \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2, \"abb\": 3, \"1\": 4, \"\\u0120\": 5},"
        "   \"merges\": [\"a b\", [\"ab\", \"b\"]]}}";
    xds_tokenizer *tok = NULL;
    if (xds_tokenizer_load_json_mem(tiny, strlen(tiny), "{\"eos_token\": \"<eos>\"}", 22, &tok) != XDS_OK) {
        CHECK_MSG(0, "tokenizer: %s", xds_err_msg());
        TEST_MAIN_END();
    }
    pthread_t th;
    CHECK(pthread_create(&th, NULL, fake_main, NULL) == 0);
    xds_server_engine_ops ops = {NULL, fake_submit, fake_cancel, fake_stats};
    xds_server_opts o = xds_server_opts_default();
    o.port = 0;
    o.model_name = "fake";
    o.max_ctx = 64;
    o.max_connections = 4;
    o.idle_timeout_s = 1;
    o.read_timeout_s = 6;
    o.stall_timeout_s = 5;
    o.engine_ops = &ops;
    o.metrics_fn = load_fc;
    xds_server *srv = NULL;
    xds_status st = xds_server_start(&o, NULL, tok, &srv);
    CHECK_MSG(st == XDS_OK, "server: %s", xds_err_msg());
    if (st == XDS_OK) {
        g_port = xds_server_port(srv);
        test_connection_limit(srv, o.max_connections);
        test_slow_clients(srv);
        test_engine_wait_not_cut();
        test_health_and_unavailable(srv);
        test_metrics(srv);
        test_metrics_shared_counts();
        xds_server_quiesce(srv);
        CHECK(xds_server_wait_idle(srv, 10));
        xds_server_stop(srv);
    }
    pthread_mutex_lock(&F.mu);
    F.stop = 1;
    pthread_cond_signal(&F.cv);
    pthread_mutex_unlock(&F.mu);
    pthread_join(th, NULL);
    while (F.head) {
        fake_req *r = F.head;
        F.head = r->next;
        free(r);
    }
    xds_tokenizer_free(tok);
    TEST_MAIN_END();
}
