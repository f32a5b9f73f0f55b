/*
 * fuzz_http.c — libFuzzer target for the HTTP request path of `xds serve`
 * (server/http.c on libmicrohttpd, then server/openai.c and the tokenizer).
 * The request handler is a libmicrohttpd callback that needs a live
 * connection, so the harness runs the real server once on 127.0.0.1 (port 0:
 * any free port) with a stub engine behind xds_server_engine_ops and sends
 * each input over a fresh TCP connection, then half-closes and reads the
 * answer. The stub engine thread echoes up to four prompt tokens back as text
 * (through the streaming detokenizer, so the text is valid UTF-8) and honours
 * cancel, as xds_engine_submit's contract says.
 *
 * Input: byte 0 'R': the rest is sent as it is (raw HTTP, pipelining
 * included). Otherwise byte 0 picks the request and the rest is its body:
 *   bits 0-2 the path (completions, chat, models, health, metrics,
 *            topology, an unknown one, or the body's first line as the path)
 *   bits 3-4 the method (POST, GET, HEAD, DELETE)
 *   bit 5    an Authorization header with the right key (else none)
 *   bit 6    the body sent chunked (Transfer-Encoding) in 7-byte chunks
 *   bit 7    keep-alive: the same request sent twice on the connection
 * with a correct Content-Length. The server must answer every complete
 * request with an HTTP status line, never with a 5xx of its own (the stub
 * never fails; libmicrohttpd's 501 / 505 for a bad method or version are
 * fine), and must answer within 10 s.
 */
#define _GNU_SOURCE /* memmem */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "server/http.h"
#include "tokenizer/tokenizer.h"

/* ---- stub engine -------------------------------------------------------- */

typedef struct job {
    struct job *next;
    uint64_t id;
    int32_t prompt[4];
    int n_prompt, n_echo, max_tokens;
    xds_gen_cb cb;
    void *user;
} job;

static pthread_mutex_t eng_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t eng_cv = PTHREAD_COND_INITIALIZER;
static job *eng_head, *eng_tail;
static uint64_t eng_next_id = 1, eng_cancelled[64];
static int eng_n_cancelled;
static xds_tokenizer *tok;

static xds_status stub_submit(void *self, const int32_t *prompt, int n_prompt, const xds_gen_params *p,
                              xds_gen_cb cb, void *user, uint64_t *req_id) {
    (void)self;
    if (n_prompt <= 0 || !p || p->max_tokens <= 0) return xds_err_set(XDS_ERR_INVALID, "stub: bad request");
    for (int i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= xds_tokenizer_n_vocab(tok)) __builtin_trap(); /* the server checks ids */
    if (n_prompt % 16 == 15) return xds_err_set(XDS_ERR_BUSY, "stub: busy"); /* the 429 path */
    job *j = calloc(1, sizeof *j);
    if (!j) return xds_err_set(XDS_ERR_NOMEM, "stub: out of memory");
    j->n_prompt = n_prompt;
    j->n_echo = n_prompt < 4 ? n_prompt : 4;
    memcpy(j->prompt, prompt, j->n_echo * sizeof *prompt);
    j->max_tokens = p->max_tokens;
    j->cb = cb;
    j->user = user;
    pthread_mutex_lock(&eng_mu);
    j->id = *req_id = eng_next_id++;
    if (eng_tail) eng_tail->next = j;
    else eng_head = j;
    eng_tail = j;
    pthread_cond_signal(&eng_cv);
    pthread_mutex_unlock(&eng_mu);
    return XDS_OK;
}

static void stub_cancel(void *self, uint64_t id) {
    (void)self;
    pthread_mutex_lock(&eng_mu);
    eng_cancelled[eng_n_cancelled++ % 64] = id;
    pthread_mutex_unlock(&eng_mu);
}

static void stub_stats(void *self, xds_engine_stats *out) {
    (void)self;
    memset(out, 0, sizeof *out);
    out->kv_blocks_total = 8;
}

static void *stub_main(void *arg) {
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&eng_mu);
        while (!eng_head) pthread_cond_wait(&eng_cv, &eng_mu);
        job *j = eng_head;
        eng_head = j->next;
        if (!eng_head) eng_tail = NULL;
        int cancelled = 0;
        for (int i = 0; i < 64; i++) cancelled |= eng_cancelled[i] == j->id;
        pthread_mutex_unlock(&eng_mu);
        xds_detok d;
        xds_detok_init(&d, 1);
        int n_gen = 0;
        for (int i = 0; i < j->n_echo && n_gen < j->max_tokens && !cancelled; i++) {
            char buf[256];
            size_t n = xds_detok_push(&d, tok, j->prompt[i], buf, sizeof buf);
            n_gen++;
            int last = i + 1 == j->n_echo || n_gen == j->max_tokens;
            if (last) n += xds_detok_flush(&d, buf + n, sizeof buf - n);
            xds_gen_event ev = {.req_id = j->id, .text = buf, .text_len = n, .token = j->prompt[i],
                                .finish = last ? (n_gen == j->max_tokens ? XDS_FINISH_LENGTH : XDS_FINISH_STOP)
                                               : XDS_FINISH_NONE,
                                .n_prompt = j->n_prompt, .n_gen = n_gen};
            j->cb(j->user, &ev);
            if (last) break;
        }
        if (cancelled || j->n_echo == 0) {
            xds_gen_event ev = {.req_id = j->id, .token = -1, .finish = XDS_FINISH_ABORT, .n_prompt = j->n_prompt,
                                .n_gen = n_gen};
            j->cb(j->user, &ev);
        }
        xds_detok_free(&d);
        free(j);
    }
    return NULL;
}

/* ---- server ------------------------------------------------------------- */

#define MAX_BODY 4096 /* the server's body limit: larger ones get 413 */

static int port;

static void setup(void) {
    signal(SIGPIPE, SIG_IGN);
    static const char cfg[] =
        "{\"eos_token\": \"<|im_end|>\", \"chat_template\": \"{%- for m in messages %}<|im_start|>{{ m.role }}\\n"
        "{{ m.content }}<|im_end|>\\n{%- endfor %}{%- if enable_thinking is defined %}<think>\\n\\n</think>"
        "{%- endif %}\"}";
    if (xds_tokenizer_load_json(XDS_SOURCE_DIR "/fuzz/corpus/tokenizer_json/qwen3_mini.json", NULL, &tok) != XDS_OK)
        abort();
    /* the same vocabulary with a chat template, from memory */
    FILE *f = fopen(XDS_SOURCE_DIR "/fuzz/corpus/tokenizer_json/qwen3_mini.json", "rb");
    if (!f) abort();
    static char js[1 << 16];
    size_t n = fread(js, 1, sizeof js, f);
    fclose(f);
    xds_tokenizer_free(tok);
    if (xds_tokenizer_load_json_mem(js, n, cfg, sizeof cfg - 1, &tok) != XDS_OK) abort();
    pthread_t th;
    if (pthread_create(&th, NULL, stub_main, NULL)) abort();
    pthread_detach(th);
    static const xds_server_engine_ops ops = {.submit = stub_submit, .cancel = stub_cancel, .stats = stub_stats};
    xds_server_opts o = xds_server_opts_default();
    o.host = "127.0.0.1";
    o.port = 0;
    o.api_key = "k3y";
    o.model_name = "fuzz-model";
    o.max_ctx = 48;
    o.max_body_bytes = MAX_BODY;
    o.topology_json = "{\"decode\": 1}";
    o.engine_ops = &ops;
    o.read_timeout_s = 5;
    xds_server *s;
    if (xds_server_start(&o, NULL, tok, &s) != XDS_OK) {
        fprintf(stderr, "fuzz_http: %s\n", xds_err_msg());
        abort();
    }
    port = xds_server_port(s); /* the server lives until the process exits */
}

static void send_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0) return; /* the server may close early (413, 400): fine */
        p += w;
        n -= (size_t)w;
    }
}

/* Read until EOF; trap if the server does not finish within 10 s. */
static size_t read_all(int fd, char *out, size_t cap) {
    size_t n = 0;
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, 1000);
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (t.tv_sec - t0.tv_sec > 10) {
            fprintf(stderr, "fuzz_http: no complete answer within 10 s (%zu bytes read)\n", n);
            __builtin_trap();
        }
        if (r <= 0) continue;
        char buf[4096];
        ssize_t k = recv(fd, buf, sizeof buf, 0);
        if (k <= 0) return n;
        size_t c = (size_t)k < cap - n ? (size_t)k : cap - n;
        memcpy(out + n, buf, c);
        n += c;
    }
}

static void check_answer(const char *a, size_t n, int expect) {
    int seen = 0;
    for (const char *p = a; p && p < a + n; p = memmem(p + 1, a + n - p - 1, "HTTP/1.", 7)) {
        if ((size_t)(a + n - p) < 12) break;
        if (p != a && p[-1] != '\n') continue; /* not at a line start: body text */
        if (memcmp(p, "HTTP/1.", 7) || p[8] != ' ') continue;
        int st = atoi(p + 9);
        if (st < 100 || st > 599) __builtin_trap();
        /* 501 / 505: libmicrohttpd's own answers to an unknown method or
         * HTTP version; any other 5xx comes from the server, whose stub
         * engine never fails */
        if (st >= 500 && st != 501 && st != 505) {
            fprintf(stderr, "fuzz_http: server answered %d\n", st);
            __builtin_trap();
        }
        seen++;
    }
    if (expect && !seen) {
        fprintf(stderr, "fuzz_http: a complete request got no answer\n");
        __builtin_trap();
    }
}

static int connect_server(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) abort();
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) abort();
    return fd;
}

static char answer[1 << 20];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!port) setup();
    if (size < 1) return 0;
    int fd = connect_server();
    int expect = 0;
    if (data[0] == 'R') {
        send_all(fd, (const char *)data + 1, size - 1);
    } else {
        static const char *const paths[7] = {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health",
                                             "/metrics", "/v1/topology", "/v1/nothing"};
        static const char *const methods[4] = {"POST", "GET", "HEAD", "DELETE"};
        uint8_t fl = data[0];
        const char *body = (const char *)data + 1;
        size_t blen = size - 1;
        char path[256];
        if ((fl & 7) == 7) { /* the path is the body's first line (printable bytes only) */
            size_t k = 0;
            while (k < blen && k < 200 && body[k] != '\n') k++;
            size_t m = 0;
            for (size_t i = 0; i < k; i++)
                if (body[i] > ' ' && body[i] < 127) path[m++] = body[i];
            path[m] = 0;
            if (!m || path[0] != '/') return close(fd), 0;
            body += k < blen ? k + 1 : k;
            blen -= k < blen ? k + 1 : k;
        } else {
            snprintf(path, sizeof path, "%s", paths[fl & 7]);
        }
        char head[512];
        int chunked = fl & 0x40;
        int hl = snprintf(head, sizeof head, "%s %s HTTP/1.1\r\nHost: x\r\n%s%s%s", methods[(fl >> 3) & 3], path,
                          fl & 0x20 ? "Authorization: Bearer k3y\r\n" : "", "Content-Type: application/json\r\n",
                          chunked ? "Transfer-Encoding: chunked\r\n" : "");
        char cl[64];
        int cll = chunked ? snprintf(cl, sizeof cl, "\r\n") : snprintf(cl, sizeof cl, "Content-Length: %zu\r\n\r\n", blen);
        for (int rep = 0; rep < (fl & 0x80 ? 2 : 1); rep++) {
            send_all(fd, head, (size_t)hl);
            send_all(fd, cl, (size_t)cll);
            if (chunked) {
                for (size_t off = 0; off < blen; off += 7) {
                    size_t c = blen - off < 7 ? blen - off : 7;
                    char ch[16];
                    int l = snprintf(ch, sizeof ch, "%zx\r\n", c);
                    send_all(fd, ch, (size_t)l);
                    send_all(fd, body + off, c);
                    send_all(fd, "\r\n", 2);
                }
                send_all(fd, "0\r\n\r\n", 5);
            } else {
                send_all(fd, body, blen);
            }
        }
        /* a Content-Length over the limit is answered (413) and the
         * connection closed before the body is read: the reset that follows
         * may discard the answer on our side */
        expect = chunked || blen <= MAX_BODY;
    }
    shutdown(fd, SHUT_WR);
    size_t n = read_all(fd, answer, sizeof answer);
    close(fd);
    if (getenv("XDS_FUZZ_VERBOSE")) fprintf(stderr, "answer (%zu bytes): %.*s\n---\n", n, (int)(n < 2000 ? n : 2000), answer);
    check_answer(answer, n, expect);
    return 0;
}
