/*
 * tcp.c — the TCP transport: the same send/recv (and, through p2p, the same
 * collectives) over one stream socket per peer pair.
 *
 * Wire: a connection starts with a hello {magic u32, version u32, rank u32,
 * num_ranks u32} from the connecting (higher) rank; each message is a u64
 * little-endian length followed by the bytes. Sockets are non-blocking;
 * progress happens in test/wait; sleeping is poll() on all peer sockets. The
 * receive-side header of the next message is kept per peer, so a receive that
 * is too small fails with XCCL_ERR_TRUNCATED and the message stays queued. EOF
 * or a socket error makes the peer dead (error names it).
 */
#define _GNU_SOURCE
#include "xccl_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define TCP_MAGIC 0x5843434cu /* "XCCL" */

void xccl_comm_init_common(struct xccl_comm *c, int rank, int size);

xccl_status xccl_tcp_listen(int *fd_out, uint16_t *port_out, const char *host, uint16_t port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, host ? host : "127.0.0.1", &a.sin_addr) != 1)
        return xccl_err(XCCL_ERR_INVALID, "xccl tcp_listen: bad IPv4 address '%s'", host);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return xccl_err(XCCL_ERR_IO, "xccl tcp_listen: socket: %s", strerror(errno));
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, XCCL_MAX_RANKS) != 0) {
        xccl_status s = xccl_err(XCCL_ERR_IO, "xccl tcp_listen: bind/listen %s:%u: %s",
                                 host ? host : "127.0.0.1", port, strerror(errno));
        close(fd);
        return s;
    }
    socklen_t len = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &len);
    *fd_out = fd;
    *port_out = ntohs(a.sin_port);
    return XCCL_OK;
}

static int wait_fd(int fd, short ev, uint64_t deadline) {
    for (;;) {
        uint64_t now = xccl_now_ns();
        if (now >= deadline) return 0;
        struct pollfd p = {.fd = fd, .events = ev};
        int ms = (int)((deadline - now) / 1000000ull) + 1;
        int r = poll(&p, 1, ms);
        if (r > 0) return 1;
        if (r < 0 && errno != EINTR) return -1;
    }
}

static int io_full(int fd, void *buf, size_t len, int wr, uint64_t deadline) {
    uint8_t *p = buf;
    size_t done = 0;
    while (done < len) {
        ssize_t r = wr ? send(fd, p + done, len - done, MSG_NOSIGNAL | MSG_DONTWAIT)
                       : recv(fd, p + done, len - done, MSG_DONTWAIT);
        if (r > 0) { done += (size_t)r; continue; }
        if (r == 0) return -1;
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) return -1;
        if (wait_fd(fd, wr ? POLLOUT : POLLIN, deadline) <= 0) return -1;
    }
    return 0;
}

static void tcp_close(struct xccl_comm *c) {
    if (!c->tcp) return;
    for (int i = 0; i < c->size; i++)
        if (c->tcp[i].fd >= 0) close(c->tcp[i].fd);
    free(c->tcp);
    c->tcp = NULL;
}

xccl_status xccl_comm_create_tcp(xccl_comm **out, int rank, int n, int listen_fd,
                                 const char *const *hosts, const uint16_t *ports, uint32_t timeout_ms) {
    if (n < 1 || n > XCCL_MAX_RANKS || rank < 0 || rank >= n)
        return xccl_err(XCCL_ERR_RANGE, "xccl tcp: rank %d of %d ranks does not fit (max %d)", rank, n,
                        XCCL_MAX_RANKS);
    if (!hosts || !ports) return xccl_err(XCCL_ERR_INVALID, "xccl tcp: NULL address list");
    struct xccl_comm *c = calloc(1, sizeof *c);
    if (!c) return xccl_err(XCCL_ERR_NOMEM, "xccl tcp: out of memory");
    xccl_comm_init_common(c, rank, n);
    c->ops = &xccl_tcp_ops;
    if (timeout_ms) c->timeout_ns = (uint64_t)timeout_ms * 1000000ull;
    c->tcp = calloc((size_t)n, sizeof *c->tcp);
    xccl_status s = XCCL_OK;
    if (!c->tcp) {
        s = xccl_err(XCCL_ERR_NOMEM, "xccl tcp: out of memory");
        goto err_free;
    }
    for (int i = 0; i < n; i++) c->tcp[i].fd = -1;
    uint64_t deadline = xccl_now_ns() + c->timeout_ns;
    /* connect to every lower rank */
    for (int j = 0; j < rank; j++) {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(ports[j])};
        if (!hosts[j] || inet_pton(AF_INET, hosts[j], &a.sin_addr) != 1) {
            s = xccl_err(XCCL_ERR_INVALID, "xccl tcp: bad address of rank %d", j);
            goto err_close;
        }
        int fd = -1;
        for (;;) {
            fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            if (fd < 0) { s = xccl_err(XCCL_ERR_IO, "xccl tcp: socket: %s", strerror(errno)); goto err_close; }
            if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) break;
            int e = errno;
            close(fd);
            fd = -1;
            if (xccl_now_ns() >= deadline || (e != ECONNREFUSED && e != EINTR && e != EAGAIN)) {
                s = xccl_err_peer(XCCL_ERR_PEER, j, "xccl tcp: connect to rank %d (%s:%u): %s", j, hosts[j],
                                  ports[j], strerror(e));
                goto err_close;
            }
            usleep(2000);
        }
        uint32_t hello[4] = {TCP_MAGIC, XCCL_VERSION, (uint32_t)rank, (uint32_t)n};
        c->tcp[j].fd = fd;
        if (io_full(fd, hello, sizeof hello, 1, deadline)) {
            s = xccl_err_peer(XCCL_ERR_PEER, j, "xccl tcp: hello to rank %d failed", j);
            goto err_close;
        }
    }
    /* accept every higher rank */
    for (int k = rank + 1; k < n; k++) {
        int w = wait_fd(listen_fd, POLLIN, deadline);
        if (w <= 0) {
            s = xccl_err(XCCL_ERR_TIMEOUT, "xccl tcp: rank %d timed out waiting for %d higher ranks", rank,
                         n - k);
            goto err_close;
        }
        int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) { s = xccl_err(XCCL_ERR_IO, "xccl tcp: accept: %s", strerror(errno)); goto err_close; }
        uint32_t hello[4];
        if (io_full(fd, hello, sizeof hello, 0, deadline) || hello[0] != TCP_MAGIC) {
            close(fd);
            s = xccl_err(XCCL_ERR_CORRUPT, "xccl tcp: bad hello on an incoming connection");
            goto err_close;
        }
        if (hello[1] != XCCL_VERSION || hello[3] != (uint32_t)n || hello[2] <= (uint32_t)rank ||
            hello[2] >= (uint32_t)n || c->tcp[hello[2]].fd >= 0) {
            close(fd);
            s = xccl_err(XCCL_ERR_VERSION, "xccl tcp: hello version %x ranks %u rank %u; expected %x, %d, >%d",
                         hello[1], hello[3], hello[2], XCCL_VERSION, n, rank);
            goto err_close;
        }
        c->tcp[hello[2]].fd = fd;
    }
    for (int i = 0; i < n; i++) {
        if (c->tcp[i].fd < 0) continue;
        int one = 1;
        setsockopt(c->tcp[i].fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fcntl(c->tcp[i].fd, F_SETFL, fcntl(c->tcp[i].fd, F_GETFL) | O_NONBLOCK);
    }
    *out = c;
    return XCCL_OK;
err_close:
    tcp_close(c);
err_free:
    free(c);
    return s;
}

static xccl_status broken(struct xccl_comm *c, int p, const char *what, int err) {
    c->tcp[p].broken = 1;
    return xccl_err_peer(XCCL_ERR_PEER, p, "xccl tcp: rank %d %s%s%s", p, what, err ? ": " : "",
                         err ? strerror(err) : "");
}

static xccl_status tcp_send_progress(struct xccl_comm *c, xccl_request *req, int *done) {
    int p = req->peer_;
    xccl_tcp_peer *tp = &c->tcp[p];
    if (p == c->rank) return xccl_err(XCCL_ERR_INVALID, "xccl tcp: send to self is not supported");
    if (tp->broken || tp->fd < 0) return broken(c, p, "connection is gone", 0);
    while (req->aux_ < 8) {
        uint8_t h[8];
        uint64_t len = req->len_;
        for (int i = 0; i < 8; i++) h[i] = (uint8_t)(len >> (8 * i));
        ssize_t r = send(tp->fd, h + req->aux_, 8 - req->aux_, MSG_NOSIGNAL);
        if (r > 0) { req->aux_ += (uint64_t)r; continue; }
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return XCCL_OK;
        return broken(c, p, "connection lost", r < 0 ? errno : 0);
    }
    while (req->done_ < req->len_) {
        ssize_t r = send(tp->fd, (const uint8_t *)req->buf_ + req->done_, req->len_ - req->done_, MSG_NOSIGNAL);
        if (r > 0) { req->done_ += (size_t)r; continue; }
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return XCCL_OK;
        return broken(c, p, "connection lost", r < 0 ? errno : 0);
    }
    *done = 1;
    return XCCL_OK;
}

static xccl_status tcp_recv_progress(struct xccl_comm *c, xccl_request *req, int *done) {
    int p = req->peer_;
    xccl_tcp_peer *tp = &c->tcp[p];
    if (p == c->rank) return xccl_err(XCCL_ERR_INVALID, "xccl tcp: recv from self is not supported");
    if (tp->broken || tp->fd < 0) return broken(c, p, "connection is gone", 0);
    while (!tp->have_hdr) {
        ssize_t r = recv(tp->fd, tp->hdr_buf + tp->hdr_got, 8 - (size_t)tp->hdr_got, 0);
        if (r > 0) {
            tp->hdr_got += (int)r;
            if (tp->hdr_got == 8) {
                uint64_t len = 0;
                for (int i = 0; i < 8; i++) len |= (uint64_t)tp->hdr_buf[i] << (8 * i);
                tp->msg_len = len;
                tp->have_hdr = 1;
                tp->hdr_got = 0;
                tp->body_got = 0;
            }
            continue;
        }
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return XCCL_OK;
        return broken(c, p, r == 0 ? "closed the connection" : "connection lost", r < 0 ? errno : 0);
    }
    if (!req->aux_) {
        if (tp->msg_len > req->len_)
            return xccl_err_peer(XCCL_ERR_TRUNCATED, p,
                                 "message of %llu bytes from rank %d is larger than the posted receive "
                                 "of %zu bytes",
                                 (unsigned long long)tp->msg_len, p, req->len_);
        req->aux_ = 1;
        req->msg_len_ = tp->msg_len;
    }
    while (tp->body_got < tp->msg_len) {
        ssize_t r = recv(tp->fd, (uint8_t *)req->buf_ + tp->body_got, tp->msg_len - tp->body_got, 0);
        if (r > 0) {
            tp->body_got += (uint64_t)r;
            req->done_ = tp->body_got;
            continue;
        }
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return XCCL_OK;
        return broken(c, p, r == 0 ? "closed the connection" : "connection lost", r < 0 ? errno : 0);
    }
    tp->have_hdr = 0;
    *done = 1;
    return XCCL_OK;
}

static void tcp_sleep(struct xccl_comm *c, uint64_t ns) {
    struct pollfd pf[XCCL_MAX_RANKS];
    int np = 0;
    for (int i = 0; i < c->size; i++) {
        if (c->tcp[i].fd < 0 || c->tcp[i].broken) continue;
        pf[np].fd = c->tcp[i].fd;
        pf[np].events = POLLIN | (c->sq_head[i] ? POLLOUT : 0);
        np++;
    }
    int ms = (int)(ns / 1000000ull);
    if (ms < 1) ms = 1;
    poll(pf, (nfds_t)np, ms);
}

static xccl_status tcp_peer_check(struct xccl_comm *c, int p) {
    if (p == c->rank) return XCCL_OK;
    xccl_tcp_peer *tp = &c->tcp[p];
    if (tp->broken || tp->fd < 0) return broken(c, p, "connection is gone", 0);
    struct pollfd pf = {.fd = tp->fd, .events = POLLIN};
    if (poll(&pf, 1, 0) > 0) {
        if (pf.revents & (POLLERR | POLLNVAL)) return broken(c, p, "socket error", 0);
        if (pf.revents & (POLLIN | POLLHUP)) {
            uint8_t b;
            ssize_t r = recv(tp->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
            if (r == 0) return broken(c, p, "closed the connection (died?)", 0);
            if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                return broken(c, p, "connection lost", errno);
        }
    }
    return XCCL_OK;
}

const xccl_transport_ops xccl_tcp_ops = {
    .name = "tcp",
    .send_progress = tcp_send_progress,
    .recv_progress = tcp_recv_progress,
    .sleep = tcp_sleep,
    .peer_check = tcp_peer_check,
    .close = tcp_close,
};

/* --- generic exchange over p2p --------------------------------------------------- */

typedef struct xarg {
    xccl_group *g;
    xccl_request *sreq, *rreq;
} xarg;

static int xcond(struct xccl_comm *c, void *arg) {
    xarg *a = arg;
    int all = 1;
    for (int i = 0; i < a->g->n; i++) {
        if (i == a->g->me) continue;
        int d1, d2;
        xccl_status s1 = xccl_test(c, &a->sreq[i], &d1);
        xccl_status s2 = xccl_test(c, &a->rreq[i], &d2);
        if (s1) return -(int)s1;
        if (s2) return -(int)s2;
        if (!d1 || !d2) all = 0;
    }
    return all;
}

xccl_status xccl_p2p_exchange(struct xccl_comm *c, struct xccl_group *g, void *const *recv_bufs,
                              const size_t *recv_caps, size_t *recv_lens, const void *const *send_bufs,
                              const size_t *send_lens) {
    xccl_request sreq[XCCL_MAX_RANKS], rreq[XCCL_MAX_RANKS];
    memset(sreq, 0, sizeof sreq);
    memset(rreq, 0, sizeof rreq);
    xccl_status s = XCCL_OK;
    int posted = 0;
    for (int i = 0; i < g->n && !s; i++) {
        if (i == g->me) continue;
        s = xccl_irecv(c, g->ranks[i], recv_bufs[i], recv_caps[i], &rreq[i]);
        if (!s) s = xccl_isend(c, g->ranks[i], send_bufs[i], send_lens[i], &sreq[i]);
        posted = i + 1;
    }
    if (!s) {
        xarg a = {g, sreq, rreq};
        s = xccl_wait_cond(c, xcond, &a, g->ranks, g->n, "xccl exchange");
    }
    if (s) {
        /* drop whatever is still queued; the pairs involved are unusable now */
        for (int i = 0; i < posted; i++) {
            if (i == g->me) continue;
            if (sreq[i].state_ == 1 || rreq[i].state_ == 1) {
                c->sq_head[g->ranks[i]] = c->sq_tail[g->ranks[i]] = NULL;
                c->rq_head[g->ranks[i]] = c->rq_tail[g->ranks[i]] = NULL;
                c->pair_broken[g->ranks[i]] = 1;
            }
        }
        return s;
    }
    for (int i = 0; i < g->n; i++) recv_lens[i] = i == g->me ? 0 : rreq[i].msg_len_;
    return XCCL_OK;
}
