/*
 * bench_serve.c — `xds bench-serve`: a load generator for any
 * OpenAI-compatible endpoint (xds serve, vLLM, llama.cpp's llama-server).
 *
 * It speaks only the plain API: POST /v1/completions (or /chat/completions
 * with --chat) with stream: true and stream_options.include_usage, max_tokens
 * and "ignore_eos": true (an extension vLLM, llama-server and xds honor, so
 * output lengths are exact; servers that ignore it give natural lengths).
 * Prompts are random common English words (about one token each) drawn from
 * a seeded generator, so runs are repeatable. Requests arrive by a Poisson
 * process (--rate) or a fixed number run at once (--concurrency).
 *
 * The HTTP client is plain sockets: HTTP/1.1, one connection per request,
 * Content-Length or chunked transfer encoding, and a server-sent-events
 * reader. Token counts come from the final usage chunk when the server sends
 * one, else from the number of content chunks. Latencies: TTFT = first chunk
 * with text; ITL = gaps between text chunks; TPOT = (latency - TTFT) /
 * (output tokens - 1); all reported as mean / p50 / p99.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"

static double bs_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------------ */
/* Options                                                                   */

typedef struct bs_opts {
    char host[256];
    char port[16];
    char base[512];     /* path prefix from the URL ("" or "/something") */
    const char *model;  /* NULL: ask /v1/models */
    const char *api_key;
    double rate;        /* > 0: Poisson arrivals */
    int concurrency;    /* > 0: closed loop */
    int max_concurrency;/* rate mode: most requests in flight */
    int num_requests;
    int prompt_len;
    int prompt_lo, prompt_hi; /* uniform distribution, or lo == hi */
    int output_len;
    uint64_t seed;
    int chat;
    int json;
    int timeout_s;
    int warmup;
} bs_opts;

/* ------------------------------------------------------------------------ */
/* HTTP client                                                               */

typedef struct bs_conn {
    int fd;
    char buf[65536];
    size_t pos, len;
} bs_conn;

static int bs_connect(const bs_opts *o, int timeout_s, char *err, size_t errn) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int rc = getaddrinfo(o->host, o->port, &hints, &res);
    if (rc) {
        snprintf(err, errn, "resolve %.100s: %s", o->host, gai_strerror(rc));
        return -1;
    }
    int fd = -1;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) continue;
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) break;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        snprintf(err, errn, "connect %.100s:%s: %s", o->host, o->port, strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = {.tv_sec = timeout_s};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return fd;
}

static int bs_send_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Refill: 1 data, 0 EOF, -1 error. */
static int bs_fill(bs_conn *c) {
    if (c->pos < c->len) return 1;
    for (;;) {
        ssize_t k = recv(c->fd, c->buf, sizeof c->buf, 0);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) return -1;
        c->pos = 0;
        c->len = (size_t)k;
        return k > 0;
    }
}

/* A CRLF- or LF-terminated line without the terminator. -1 on EOF/error/overlong. */
static int bs_line(bs_conn *c, char *out, size_t cap) {
    size_t n = 0;
    for (;;) {
        if (bs_fill(c) <= 0) return -1;
        char ch = c->buf[c->pos++];
        if (ch == '\n') break;
        if (n + 1 >= cap) return -1;
        out[n++] = ch;
    }
    if (n && out[n - 1] == '\r') n--;
    out[n] = 0;
    return (int)n;
}

typedef void (*bs_body_cb)(void *user, const char *p, size_t n);

/* Read the body (chunked, Content-Length or to EOF), passing bytes to cb. */
static int bs_read_body(bs_conn *c, int chunked, long long clen, bs_body_cb cb, void *user) {
    char line[256];
    if (chunked) {
        for (;;) {
            if (bs_line(c, line, sizeof line) < 0) return -1;
            char *end;
            unsigned long long sz = strtoull(line, &end, 16);
            if (end == line) return -1;
            if (sz == 0) {
                while (bs_line(c, line, sizeof line) > 0) {
                } /* trailers */
                return 0;
            }
            while (sz) {
                if (bs_fill(c) <= 0) return -1;
                size_t k = c->len - c->pos;
                if (k > sz) k = (size_t)sz;
                cb(user, c->buf + c->pos, k);
                c->pos += k;
                sz -= k;
            }
            if (bs_line(c, line, sizeof line) != 0) return -1;
        }
    }
    while (clen != 0) {
        int r = bs_fill(c);
        if (r < 0) return -1;
        if (r == 0) return clen < 0 ? 0 : -1;
        size_t k = c->len - c->pos;
        if (clen > 0 && (long long)k > clen) k = (size_t)clen;
        cb(user, c->buf + c->pos, k);
        c->pos += k;
        if (clen > 0) clen -= (long long)k;
    }
    return 0;
}

/* Send a request and read the status line and headers. Returns the status or -1. */
static int bs_request(const bs_opts *o, bs_conn *c, const char *method, const char *path, const char *body,
                      int *chunked, long long *clen, char *err, size_t errn) {
    c->fd = bs_connect(o, o->timeout_s, err, errn);
    c->pos = c->len = 0;
    if (c->fd < 0) return -1;
    char auth[600] = "";
    if (o->api_key) snprintf(auth, sizeof auth, "Authorization: Bearer %s\r\n", o->api_key);
    size_t blen = body ? strlen(body) : 0;
    int v6 = strchr(o->host, ':') != NULL;
    char head[2048];
    int hn = snprintf(head, sizeof head,
                      "%s %s%s HTTP/1.1\r\nHost: %s%s%s:%s\r\nUser-Agent: xds-bench-serve\r\nAccept: */*\r\n%s"
                      "%sContent-Length: %zu\r\nConnection: close\r\n\r\n",
                      method, o->base, path, v6 ? "[" : "", o->host, v6 ? "]" : "", o->port, auth,
                      body ? "Content-Type: application/json\r\n" : "", blen);
    if (bs_send_all(c->fd, head, (size_t)hn) || (blen && bs_send_all(c->fd, body, blen))) {
        snprintf(err, errn, "send: %s", strerror(errno));
        return -1;
    }
    char line[8192];
    if (bs_line(c, line, sizeof line) < 0) {
        snprintf(err, errn, "no response (%s)", errno == EAGAIN ? "timeout" : "connection closed");
        return -1;
    }
    int status = 0;
    if (sscanf(line, "HTTP/%*d.%*d %d", &status) != 1) {
        snprintf(err, errn, "bad status line '%.80s'", line);
        return -1;
    }
    *chunked = 0;
    *clen = -1;
    for (;;) {
        int n = bs_line(c, line, sizeof line);
        if (n < 0) {
            snprintf(err, errn, "truncated headers");
            return -1;
        }
        if (n == 0) break;
        if (!strncasecmp(line, "transfer-encoding:", 18) && strcasestr(line + 18, "chunked")) *chunked = 1;
        if (!strncasecmp(line, "content-length:", 15)) *clen = strtoll(line + 15, NULL, 10);
    }
    if (status == 204 || status == 304 || !strcmp(method, "HEAD")) *clen = 0;
    return status;
}

typedef struct { char *s; size_t n, cap; } bs_buf;

static void bs_buf_cb(void *user, const char *p, size_t n) {
    bs_buf *b = user;
    if (b->n + n + 1 > b->cap) {
        size_t cap = (b->cap + n + 1) * 2;
        char *ns = realloc(b->s, cap);
        if (!ns) return;
        b->s = ns;
        b->cap = cap;
    }
    memcpy(b->s + b->n, p, n);
    b->n += n;
    b->s[b->n] = 0;
}

/* ------------------------------------------------------------------------ */
/* One streamed request                                                      */

typedef struct bs_result {
    int ok;
    int status;
    char err[256];
    double t_start, t_first, t_end;
    int n_out, n_prompt;   /* n_prompt -1: unknown */
    int n_chunks;          /* chunks with text */
    double *itl;           /* (n_itl) gaps between text chunks, seconds */
    int n_itl, cap_itl;
    int usage_out;         /* completion_tokens from usage, -1 if none */
} bs_result;

typedef struct bs_sse {
    bs_result *r;
    int chat;
    bs_buf line;
    double t_last;
    bs_buf errbody;
    int saw_error;
} bs_sse;

static void bs_sse_data(bs_sse *s, const char *data) {
    bs_result *r = s->r;
    if (!strcmp(data, "[DONE]")) return;
    json_error_t je;
    json_t *j = json_loads(data, 0, &je);
    if (!j) return;
    json_t *e = json_object_get(j, "error");
    if (e && !json_is_null(e)) {
        json_t *m = json_object_get(e, "message");
        snprintf(r->err, sizeof r->err, "stream error: %.200s", json_is_string(m) ? json_string_value(m) : "?");
        s->saw_error = 1;
    }
    json_t *choices = json_object_get(j, "choices");
    json_t *c0 = json_is_array(choices) ? json_array_get(choices, 0) : NULL;
    const char *text = NULL;
    if (c0) {
        json_t *t = NULL;
        if (s->chat) {
            json_t *d = json_object_get(c0, "delta");
            t = d ? json_object_get(d, "content") : NULL;
            if (!(json_is_string(t) && json_string_length(t)) && d) t = json_object_get(d, "reasoning_content");
        } else {
            t = json_object_get(c0, "text");
        }
        if (json_is_string(t) && json_string_length(t)) text = json_string_value(t);
    }
    if (text) {
        double t = bs_now();
        if (r->n_chunks == 0) r->t_first = t;
        else {
            if (r->n_itl == r->cap_itl) {
                int cap = r->cap_itl ? r->cap_itl * 2 : 64;
                double *ni = realloc(r->itl, cap * sizeof *ni);
                if (ni) {
                    r->itl = ni;
                    r->cap_itl = cap;
                }
            }
            if (r->n_itl < r->cap_itl) r->itl[r->n_itl++] = t - s->t_last;
        }
        s->t_last = t;
        r->n_chunks++;
    }
    json_t *u = json_object_get(j, "usage");
    if (json_is_object(u)) {
        json_t *ct = json_object_get(u, "completion_tokens"), *pt = json_object_get(u, "prompt_tokens");
        if (json_is_integer(ct)) r->usage_out = (int)json_integer_value(ct);
        if (json_is_integer(pt)) r->n_prompt = (int)json_integer_value(pt);
    }
    json_decref(j);
}

static void bs_sse_cb(void *user, const char *p, size_t n) {
    bs_sse *s = user;
    for (size_t i = 0; i < n; i++) {
        if (p[i] != '\n') {
            bs_buf_cb(&s->line, p + i, 1);
            continue;
        }
        char *l = s->line.s ? s->line.s : "";
        size_t ln = s->line.n;
        if (ln && l[ln - 1] == '\r') l[--ln] = 0;
        if (ln >= 5 && !strncmp(l, "data:", 5)) {
            const char *d = l + 5;
            while (*d == ' ') d++;
            bs_sse_data(s, d);
        }
        s->line.n = 0;
        if (s->line.s) s->line.s[0] = 0;
    }
}

static void bs_run_one(const bs_opts *o, const char *body, bs_result *r) {
    memset(r, 0, sizeof *r);
    r->n_prompt = -1;
    r->usage_out = -1;
    r->t_start = bs_now();
    bs_conn *c = malloc(sizeof *c);
    if (!c) {
        snprintf(r->err, sizeof r->err, "out of memory");
        return;
    }
    int chunked;
    long long clen;
    int st = bs_request(o, c, "POST", o->chat ? "/v1/chat/completions" : "/v1/completions", body, &chunked, &clen,
                        r->err, sizeof r->err);
    r->status = st;
    if (st < 0) goto done;
    bs_sse s = {.r = r, .chat = o->chat};
    if (st != 200) {
        bs_buf b = {0};
        bs_read_body(c, chunked, clen, bs_buf_cb, &b);
        snprintf(r->err, sizeof r->err, "HTTP %d: %.200s", st, b.s ? b.s : "");
        free(b.s);
        goto done;
    }
    int rc = bs_read_body(c, chunked, clen, bs_sse_cb, &s);
    if (s.line.n) bs_sse_cb(&s, "\n", 1);
    free(s.line.s);
    r->t_end = bs_now();
    if (rc != 0 && !r->err[0]) snprintf(r->err, sizeof r->err, "stream cut short (%s)", errno == EAGAIN ? "timeout" : "read error");
    if (!s.saw_error && rc == 0) {
        if (r->n_chunks == 0) snprintf(r->err, sizeof r->err, "no text in the stream");
        else r->ok = 1;
    }
    r->n_out = r->usage_out >= 0 ? r->usage_out : r->n_chunks;
done:
    if (!r->t_end) r->t_end = bs_now();
    if (c->fd >= 0) close(c->fd);
    free(c);
}

/* ------------------------------------------------------------------------ */
/* Workload                                                                  */

static const char *bs_words[] = {
    "the", "of", "and", "to", "in", "is", "you", "that", "it", "he", "was", "for", "on", "are", "as", "with",
    "his", "they", "at", "be", "this", "have", "from", "or", "one", "had", "by", "word", "but", "not", "what",
    "all", "were", "we", "when", "your", "can", "said", "there", "use", "an", "each", "which", "she", "do",
    "how", "their", "if", "will", "up", "other", "about", "out", "many", "then", "them", "these", "so", "some",
    "her", "would", "make", "like", "him", "into", "time", "has", "look", "two", "more", "write", "go", "see",
    "number", "no", "way", "could", "people", "my", "than", "first", "water", "been", "call", "who", "oil",
    "its", "now", "find", "long", "down", "day", "did", "get", "come", "made", "may", "part", "over", "new",
    "sound", "take", "only", "little", "work", "know", "place", "year", "live", "me", "back", "give", "most",
    "very", "after", "thing", "our", "just", "name", "good", "sentence", "man", "think", "say", "great",
    "where", "help", "through", "much", "before", "line", "right", "too", "mean", "old", "any", "same", "tell",
    "boy", "follow", "came", "want", "show", "also", "around", "form", "three", "small", "set", "put", "end",
    "does", "another", "well", "large", "must", "big", "even", "such", "because", "turn", "here", "why", "ask",
    "went", "men", "read", "need", "land", "different", "home", "us", "move", "try", "kind", "hand", "picture",
    "again", "change", "off", "play", "spell", "air", "away", "animal", "house", "point", "page", "letter",
    "mother", "answer", "found", "study", "still", "learn", "should", "America", "world"};

static uint64_t bs_rng_next(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static double bs_rng_unif(uint64_t *x) { return (bs_rng_next(x) >> 11) * (1.0 / 9007199254740992.0); }

/* The request body for one prompt of n_words words. */
static char *bs_make_body(const bs_opts *o, const char *model, uint64_t *rng, int n_words) {
    size_t cap = (size_t)n_words * 12 + 64, len = 0;
    char *p = malloc(cap);
    if (!p) return NULL;
    p[0] = 0;
    size_t nw = sizeof bs_words / sizeof *bs_words;
    for (int i = 0; i < n_words; i++) {
        const char *w = bs_words[bs_rng_next(rng) % nw];
        len += (size_t)snprintf(p + len, cap - len, "%s%s", i ? " " : "", w);
    }
    json_t *j = json_object();
    json_object_set_new(j, "model", json_string(model));
    if (o->chat) {
        json_t *m = json_object();
        json_object_set_new(m, "role", json_string("user"));
        json_object_set_new(m, "content", json_string(p));
        json_t *msgs = json_array();
        json_array_append_new(msgs, m);
        json_object_set_new(j, "messages", msgs);
    } else {
        json_object_set_new(j, "prompt", json_string(p));
    }
    free(p);
    json_object_set_new(j, "max_tokens", json_integer(o->output_len));
    json_object_set_new(j, "temperature", json_real(0.0));
    json_object_set_new(j, "ignore_eos", json_true());
    json_object_set_new(j, "stream", json_true());
    json_t *so = json_object();
    json_object_set_new(so, "include_usage", json_true());
    json_object_set_new(j, "stream_options", so);
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    return s;
}

typedef struct bs_run {
    const bs_opts *o;
    char **bodies;       /* (num_requests) */
    double *arrival;     /* (num_requests) seconds after t0; 0 in concurrency mode */
    bs_result *res;      /* (num_requests) */
    atomic_int next;
    double t0;
} bs_run;

static void *bs_worker(void *arg) {
    bs_run *run = arg;
    for (;;) {
        int i = atomic_fetch_add(&run->next, 1);
        if (i >= run->o->num_requests) break;
        double due = run->t0 + run->arrival[i], t = bs_now();
        if (due > t) usleep((useconds_t)((due - t) * 1e6));
        bs_run_one(run->o, run->bodies[i], &run->res[i]);
    }
    return NULL;
}

static int bs_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* p-th percentile (0..100) of sorted v, linear interpolation (numpy default). */
static double bs_pct(const double *v, int n, double p) {
    if (n <= 0) return NAN;
    double k = (n - 1) * p / 100.0;
    int lo = (int)floor(k), hi = (int)ceil(k);
    return v[lo] + (v[hi] - v[lo]) * (k - lo);
}

typedef struct { double mean, p50, p99; int n; } bs_stat;

static bs_stat bs_stats(double *v, int n) {
    bs_stat s = {NAN, NAN, NAN, n};
    if (n <= 0) return s;
    qsort(v, n, sizeof *v, bs_cmp_double);
    double sum = 0;
    for (int i = 0; i < n; i++) sum += v[i];
    s.mean = sum / n;
    s.p50 = bs_pct(v, n, 50);
    s.p99 = bs_pct(v, n, 99);
    return s;
}

static json_t *bs_stat_json(bs_stat s) {
    json_t *o = json_object();
    json_object_set_new(o, "mean", isnan(s.mean) ? json_null() : json_real(s.mean * 1e3));
    json_object_set_new(o, "p50", isnan(s.p50) ? json_null() : json_real(s.p50 * 1e3));
    json_object_set_new(o, "p99", isnan(s.p99) ? json_null() : json_real(s.p99 * 1e3));
    return o;
}

/* GET /v1/models → the first id (malloc'd) or NULL. */
static char *bs_first_model(const bs_opts *o, char *err, size_t errn) {
    bs_conn *c = malloc(sizeof *c);
    if (!c) return NULL;
    int chunked;
    long long clen;
    char *id = NULL;
    int st = bs_request(o, c, "GET", "/v1/models", NULL, &chunked, &clen, err, errn);
    if (st == 200) {
        bs_buf b = {0};
        if (bs_read_body(c, chunked, clen, bs_buf_cb, &b) == 0 && b.s) {
            json_t *j = json_loads(b.s, 0, NULL);
            json_t *d = j ? json_object_get(j, "data") : NULL;
            json_t *m = json_is_array(d) ? json_object_get(json_array_get(d, 0), "id") : NULL;
            if (json_is_string(m)) id = strdup(json_string_value(m));
            json_decref(j);
        }
        free(b.s);
        if (!id) snprintf(err, errn, "GET /v1/models: no model id in the answer");
    } else if (st > 0) {
        snprintf(err, errn, "GET /v1/models: HTTP %d", st);
    }
    if (c->fd >= 0) close(c->fd);
    free(c);
    return id;
}

static void bs_usage(FILE *f) {
    fprintf(f,
            "usage: xds bench-serve --url http://HOST:PORT (--rate R | --concurrency C) --num-requests N [options]\n"
            "\n"
            "Load generator for any OpenAI-compatible server (xds serve, vLLM, llama-server).\n"
            "\n"
            "options:\n"
            "  --url URL                 server base URL (default http://127.0.0.1:8000)\n"
            "  --model NAME              model name to send (default: first of GET /v1/models)\n"
            "  --api-key KEY             send 'Authorization: Bearer KEY'\n"
            "  --rate R                  Poisson arrivals, R requests/s\n"
            "  --max-concurrency C       with --rate: at most C in flight (default 256)\n"
            "  --concurrency C           keep C requests in flight\n"
            "  --num-requests N          requests to send (default 64)\n"
            "  --prompt-len L            prompt length in words ~ tokens (default 128)\n"
            "  --prompt-len-dist D       fixed | uniform:A,B (default fixed)\n"
            "  --output-len L            max_tokens (with ignore_eos) (default 128)\n"
            "  --seed S                  workload seed (default 0)\n"
            "  --chat                    use /v1/chat/completions\n"
            "  --warmup N                send N requests (one at a time) before measuring (default 1)\n"
            "  --timeout S               per-request socket timeout (default 600)\n"
            "  --json                    print one JSON object\n");
}

static int bs_parse_url(const char *url, bs_opts *o) {
    if (strncmp(url, "http://", 7) != 0) return -1;
    const char *h = url + 7, *slash = strchr(h, '/');
    size_t hl = slash ? (size_t)(slash - h) : strlen(h);
    char hp[256];
    if (hl == 0 || hl >= sizeof hp) return -1;
    memcpy(hp, h, hl);
    hp[hl] = 0;
    char *colon;
    if (hp[0] == '[') {
        char *rb = strchr(hp, ']');
        if (!rb) return -1;
        *rb = 0;
        snprintf(o->host, sizeof o->host, "%.250s", hp + 1);
        colon = rb[1] == ':' ? rb + 1 : NULL;
    } else {
        colon = strrchr(hp, ':');
        if (colon) *colon = 0;
        snprintf(o->host, sizeof o->host, "%.250s", hp);
    }
    snprintf(o->port, sizeof o->port, "%s", colon && colon[1] ? colon + 1 : "80");
    snprintf(o->base, sizeof o->base, "%s", slash ? slash : "");
    size_t bl = strlen(o->base);
    while (bl && o->base[bl - 1] == '/') o->base[--bl] = 0;
    if (bl >= 3 && !strcmp(o->base + bl - 3, "/v1")) o->base[bl - 3] = 0; /* accept .../v1 */
    return 0;
}

int cli_bench_serve(int argc, char **argv) {
    bs_opts o;
    memset(&o, 0, sizeof o);
    bs_parse_url("http://127.0.0.1:8000", &o);
    o.num_requests = 64;
    o.prompt_len = 128;
    o.output_len = 128;
    o.max_concurrency = 256;
    o.timeout_s = 600;
    o.warmup = 1;
    const char *dist = "fixed";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define OPT(n) (!strcmp(a, n))
        if (OPT("-h") || OPT("--help")) {
            bs_usage(stdout);
            return 0;
        } else if (OPT("--chat")) { o.chat = 1; continue; }
        else if (OPT("--json")) { o.json = 1; continue; }
        if (!v) {
            fprintf(stderr, "xds bench-serve: error: %s needs a value (or is unknown)\n", a);
            return 2;
        }
        i++;
        if (OPT("--url")) {
            if (bs_parse_url(v, &o)) {
                fprintf(stderr, "xds bench-serve: error: --url must be http://HOST[:PORT][/PATH], got '%s'\n", v);
                return 2;
            }
        } else if (OPT("--model")) o.model = v;
        else if (OPT("--api-key")) o.api_key = v;
        else if (OPT("--rate")) o.rate = atof(v);
        else if (OPT("--concurrency")) o.concurrency = atoi(v);
        else if (OPT("--max-concurrency")) o.max_concurrency = atoi(v);
        else if (OPT("--num-requests")) o.num_requests = atoi(v);
        else if (OPT("--prompt-len")) o.prompt_len = atoi(v);
        else if (OPT("--prompt-len-dist")) dist = v;
        else if (OPT("--output-len")) o.output_len = atoi(v);
        else if (OPT("--seed")) o.seed = strtoull(v, NULL, 10);
        else if (OPT("--timeout")) o.timeout_s = atoi(v);
        else if (OPT("--warmup")) o.warmup = atoi(v);
        else {
            fprintf(stderr, "xds bench-serve: error: unknown option '%s'\n", a);
            bs_usage(stderr);
            return 2;
        }
#undef OPT
    }
    if ((o.rate > 0) == (o.concurrency > 0)) {
        fprintf(stderr, "xds bench-serve: error: give exactly one of --rate R (> 0) or --concurrency C (> 0)\n");
        return 2;
    }
    if (o.num_requests <= 0 || o.prompt_len <= 0 || o.output_len <= 0 || o.max_concurrency <= 0 ||
        o.timeout_s <= 0 || o.warmup < 0 || o.num_requests > 10000000) {
        fprintf(stderr, "xds bench-serve: error: --num-requests, --prompt-len, --output-len, --timeout must be > 0\n");
        return 2;
    }
    o.prompt_lo = o.prompt_hi = o.prompt_len;
    if (!strncmp(dist, "uniform:", 8)) {
        if (sscanf(dist + 8, "%d,%d", &o.prompt_lo, &o.prompt_hi) != 2 || o.prompt_lo <= 0 || o.prompt_hi < o.prompt_lo) {
            fprintf(stderr, "xds bench-serve: error: --prompt-len-dist uniform:A,B needs 0 < A <= B\n");
            return 2;
        }
    } else if (strcmp(dist, "fixed") != 0) {
        fprintf(stderr, "xds bench-serve: error: --prompt-len-dist must be fixed or uniform:A,B\n");
        return 2;
    }

    char err[256] = "";
    char *model = o.model ? strdup(o.model) : bs_first_model(&o, err, sizeof err);
    if (!model) {
        fprintf(stderr, "xds bench-serve: error: %s\n", err[0] ? err : "out of memory");
        return 1;
    }
    int N = o.num_requests;
    bs_run run = {.o = &o};
    run.bodies = calloc(N, sizeof *run.bodies);
    run.arrival = calloc(N, sizeof *run.arrival);
    run.res = calloc(N, sizeof *run.res);
    if (!run.bodies || !run.arrival || !run.res) {
        fprintf(stderr, "xds bench-serve: error: out of memory\n");
        return 1;
    }
    uint64_t rng = o.seed * 0x2545F4914F6CDD1Dull + 1;
    double t = 0;
    for (int i = 0; i < N; i++) {
        int n = o.prompt_lo + (o.prompt_hi > o.prompt_lo ? (int)(bs_rng_next(&rng) % (uint64_t)(o.prompt_hi - o.prompt_lo + 1)) : 0);
        run.bodies[i] = bs_make_body(&o, model, &rng, n);
        if (o.rate > 0) {
            t += -log(1.0 - bs_rng_unif(&rng)) / o.rate;
            run.arrival[i] = t;
        }
        if (!run.bodies[i]) {
            fprintf(stderr, "xds bench-serve: error: out of memory\n");
            return 1;
        }
    }
    /* Warm-up (not measured): the first request of a fresh server pays page
     * faults. Its prompts come from another stream, so no measured request
     * finds them in a prefix cache. */
    uint64_t wrng = ~rng;
    for (int w = 0; w < o.warmup; w++) {
        bs_result r;
        char *wb = bs_make_body(&o, model, &wrng, o.prompt_lo);
        if (!wb) return 1;
        bs_run_one(&o, wb, &r);
        free(wb);
        free(r.itl);
        if (!r.ok) {
            fprintf(stderr, "xds bench-serve: error: warm-up request failed: %s\n", r.err);
            return 1;
        }
    }

    int n_workers = o.rate > 0 ? o.max_concurrency : o.concurrency;
    if (n_workers > N) n_workers = N;
    pthread_t *th = calloc(n_workers, sizeof *th);
    if (!th) return 1;
    run.t0 = bs_now();
    int started = 0;
    for (int i = 0; i < n_workers; i++) {
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setstacksize(&at, 256 * 1024);
        if (pthread_create(&th[i], &at, bs_worker, &run) == 0) started++;
        pthread_attr_destroy(&at);
        if (started <= i) break;
    }
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
    double t_end = bs_now();
    if (!started) {
        fprintf(stderr, "xds bench-serve: error: cannot start worker threads\n");
        return 1;
    }

    /* Aggregate */
    int n_ok = 0, n_err = 0;
    long long tot_out = 0, tot_in = 0;
    int n_in_known = 0;
    double last_end = run.t0;
    double *ttft = calloc(N, sizeof *ttft), *tpot = calloc(N, sizeof *tpot), *e2e = calloc(N, sizeof *e2e);
    size_t n_itl_all = 0;
    for (int i = 0; i < N; i++) n_itl_all += run.res[i].n_itl;
    double *itl = calloc(n_itl_all + 1, sizeof *itl);
    int n_ttft = 0, n_tpot = 0, n_e2e = 0;
    size_t k_itl = 0;
    char first_err[256] = "";
    for (int i = 0; i < N; i++) {
        bs_result *r = &run.res[i];
        if (!r->ok) {
            n_err++;
            if (!first_err[0]) snprintf(first_err, sizeof first_err, "%s", r->err);
            free(r->itl);
            continue;
        }
        n_ok++;
        tot_out += r->n_out;
        if (r->n_prompt >= 0) {
            tot_in += r->n_prompt;
            n_in_known++;
        }
        if (r->t_end > last_end) last_end = r->t_end;
        double lat = r->t_end - r->t_start;
        ttft[n_ttft++] = r->t_first - r->t_start;
        e2e[n_e2e++] = lat;
        if (r->n_out > 1) tpot[n_tpot++] = (lat - (r->t_first - r->t_start)) / (r->n_out - 1);
        for (int k = 0; k < r->n_itl; k++) itl[k_itl++] = r->itl[k];
        free(r->itl);
    }
    double dur = (n_ok ? last_end : t_end) - run.t0;
    bs_stat s_ttft = bs_stats(ttft, n_ttft), s_tpot = bs_stats(tpot, n_tpot), s_itl = bs_stats(itl, (int)k_itl),
            s_e2e = bs_stats(e2e, n_e2e);
    double req_s = dur > 0 ? n_ok / dur : 0, out_s = dur > 0 ? tot_out / dur : 0,
           tot_s = dur > 0 ? (tot_out + tot_in) / dur : 0;

    if (o.json) {
        json_t *j = json_object();
        json_object_set_new(j, "url", json_sprintf("http://%s%s%s:%s%s", strchr(o.host, ':') ? "[" : "", o.host, strchr(o.host, ':') ? "]" : "", o.port, o.base));
        json_object_set_new(j, "model", json_string(model));
        json_object_set_new(j, "endpoint", json_string(o.chat ? "/v1/chat/completions" : "/v1/completions"));
        json_object_set_new(j, "mode", json_string(o.rate > 0 ? "rate" : "concurrency"));
        if (o.rate > 0) json_object_set_new(j, "rate", json_real(o.rate));
        else json_object_set_new(j, "concurrency", json_integer(o.concurrency));
        json_object_set_new(j, "num_requests", json_integer(N));
        json_object_set_new(j, "completed", json_integer(n_ok));
        json_object_set_new(j, "errors", json_integer(n_err));
        if (first_err[0]) json_object_set_new(j, "first_error", json_string(first_err));
        json_object_set_new(j, "duration_s", json_real(dur));
        json_object_set_new(j, "total_input_tokens", json_integer(tot_in));
        json_object_set_new(j, "total_output_tokens", json_integer(tot_out));
        json_object_set_new(j, "request_throughput", json_real(req_s));
        json_object_set_new(j, "output_throughput", json_real(out_s));
        json_object_set_new(j, "total_token_throughput", json_real(tot_s));
        json_object_set_new(j, "ttft_ms", bs_stat_json(s_ttft));
        json_object_set_new(j, "tpot_ms", bs_stat_json(s_tpot));
        json_object_set_new(j, "itl_ms", bs_stat_json(s_itl));
        json_object_set_new(j, "e2e_ms", bs_stat_json(s_e2e));
        char *s = json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(6));
        printf("%s\n", s ? s : "{}");
        free(s);
        json_decref(j);
    } else {
        printf("============ Serving benchmark: %s ============\n", model);
        printf("%-36s %s%s\n", "Endpoint:", o.chat ? "/v1/chat/completions" : "/v1/completions", "");
        if (o.rate > 0) printf("%-36s %.3g req/s (Poisson, max %d in flight)\n", "Request rate:", o.rate, n_workers);
        else printf("%-36s %d\n", "Concurrency:", o.concurrency);
        printf("%-36s %d\n", "Successful requests:", n_ok);
        printf("%-36s %d%s%s\n", "Failed requests:", n_err, first_err[0] ? "  first: " : "", first_err);
        printf("%-36s %.2f\n", "Benchmark duration (s):", dur);
        printf("%-36s %lld%s\n", "Total input tokens:", tot_in, n_in_known < n_ok ? " (usage missing for some)" : "");
        printf("%-36s %lld\n", "Total generated tokens:", tot_out);
        printf("%-36s %.3f\n", "Request throughput (req/s):", req_s);
        printf("%-36s %.2f\n", "Output token throughput (tok/s):", out_s);
        printf("%-36s %.2f\n", "Total token throughput (tok/s):", tot_s);
        const struct { const char *name; bs_stat s; } rows[] = {
            {"TTFT", s_ttft}, {"TPOT", s_tpot}, {"ITL", s_itl}, {"E2E latency", s_e2e}};
        for (int i = 0; i < 4; i++)
            printf("%-12s (ms)  mean %10.2f   p50 %10.2f   p99 %10.2f\n", rows[i].name, rows[i].s.mean * 1e3,
                   rows[i].s.p50 * 1e3, rows[i].s.p99 * 1e3);
    }
    for (int i = 0; i < N; i++) free(run.bodies[i]);
    free(run.bodies);
    free(run.arrival);
    free(run.res);
    free(ttft);
    free(tpot);
    free(e2e);
    free(itl);
    free(th);
    free(model);
    return n_ok == 0 ? 1 : 0;
}
