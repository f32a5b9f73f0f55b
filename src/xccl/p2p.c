/*
 * p2p.c — two-sided send/recv over any transport: per-peer FIFOs of caller-
 * owned requests, progressed head first, so messages stay in order per pair.
 *
 * A request is queued by isend/irecv and completes in test/wait; test and
 * wait progress every pending request of the comm. A failed
 * request leaves its queue; if it had moved part of a message the pair is
 * marked broken (later calls on it fail at once). A receive too small for the
 * next message fails with XCCL_ERR_TRUNCATED and consumes nothing.
 */
#include "xccl_internal.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

enum { REQ_IDLE = 0, REQ_QUEUED = 1, REQ_DONE = 2, REQ_FAILED = 3 };
enum { KIND_SEND = 1, KIND_RECV = 2 };

static xccl_status post(xccl_comm *c, int peer, void *buf, size_t len, xccl_request *req, int kind) {
    if (!req) return xccl_err(XCCL_ERR_INVALID, "xccl %s: NULL request", kind == KIND_SEND ? "isend" : "irecv");
    if (peer < 0 || peer >= c->size)
        return xccl_err(XCCL_ERR_INVALID, "xccl %s: peer %d out of range 0..%d",
                        kind == KIND_SEND ? "isend" : "irecv", peer, c->size - 1);
    if (!buf && len)
        return xccl_err(XCCL_ERR_INVALID, "xccl %s: NULL buffer", kind == KIND_SEND ? "isend" : "irecv");
    if (c->pair_broken[peer])
        return xccl_err_peer(XCCL_ERR_PEER, peer, "xccl: pair with rank %d is broken by an earlier failure",
                             peer);
    xccl_status s = xccl_self_check(c);
    if (!s) s = xccl_inc_check(c, peer);
    if (s) return s; /* an operation with an incarnation that is over */
    memset(req, 0, sizeof *req);
    req->buf_ = buf;
    req->len_ = len;
    req->peer_ = peer;
    req->kind_ = kind;
    req->state_ = REQ_QUEUED;
    xccl_request **head = kind == KIND_SEND ? &c->sq_head[peer] : &c->rq_head[peer];
    xccl_request **tail = kind == KIND_SEND ? &c->sq_tail[peer] : &c->rq_tail[peer];
    if (*tail) (*tail)->next_ = req;
    else *head = req;
    *tail = req;
    return XCCL_OK;
}

/* Progress the queue of (peer, kind) from its head. */
static void progress_queue(xccl_comm *c, int peer, int kind) {
    xccl_request **head = kind == KIND_SEND ? &c->sq_head[peer] : &c->rq_head[peer];
    xccl_request **tail = kind == KIND_SEND ? &c->sq_tail[peer] : &c->rq_tail[peer];
    while (*head) {
        xccl_request *r = *head;
        int done = 0;
        size_t before = r->done_;
        xccl_status s = kind == KIND_SEND ? c->ops->send_progress(c, r, &done)
                                          : c->ops->recv_progress(c, r, &done);
        if (s) {
            r->state_ = REQ_FAILED;
            r->status_ = s;
            if (s != XCCL_ERR_TRUNCATED && (r->done_ || before)) c->pair_broken[peer] = 1;
            if (s != XCCL_ERR_TRUNCATED && s != XCCL_ERR_TIMEOUT) c->pair_broken[peer] = 1;
        } else if (done) {
            r->state_ = REQ_DONE;
        } else {
            return;
        }
        *head = r->next_;
        if (!*head) *tail = NULL;
        r->next_ = NULL;
    }
}

/* Remove a still-queued request (after its wait failed). */
static void unlink_req(xccl_comm *c, xccl_request *req) {
    int peer = req->peer_;
    xccl_request **head = req->kind_ == KIND_SEND ? &c->sq_head[peer] : &c->rq_head[peer];
    xccl_request **tail = req->kind_ == KIND_SEND ? &c->sq_tail[peer] : &c->rq_tail[peer];
    xccl_request *prev = NULL;
    for (xccl_request *r = *head; r; prev = r, r = r->next_) {
        if (r != req) continue;
        if (prev) prev->next_ = r->next_;
        else *head = r->next_;
        if (*tail == r) *tail = prev;
        break;
    }
    req->next_ = NULL;
}

/* Progress every pending request of the comm (as MPI does in any wait), so
 * that sends blocked on ring credit never deadlock against receives. */
static void progress_all(xccl_comm *c) {
    for (int p = 0; p < c->size; p++) {
        if (c->sq_head[p]) progress_queue(c, p, KIND_SEND);
        if (c->rq_head[p]) progress_queue(c, p, KIND_RECV);
    }
}

xccl_status xccl_isend(xccl_comm *c, int peer, const void *buf, size_t len, xccl_request *req) {
    xccl_status s = post(c, peer, (void *)buf, len, req, KIND_SEND);
    if (s) return s;
    progress_queue(c, peer, KIND_SEND);
    return XCCL_OK;
}

xccl_status xccl_irecv(xccl_comm *c, int peer, void *buf, size_t cap, xccl_request *req) {
    return post(c, peer, buf, cap, req, KIND_RECV);
}

static xccl_status finished(xccl_request *req, int *done) {
    if (req->state_ == REQ_DONE) {
        *done = 1;
        return XCCL_OK;
    }
    if (req->state_ == REQ_FAILED) {
        *done = 1;
        return (xccl_status)req->status_;
    }
    *done = 0;
    return XCCL_OK;
}

xccl_status xccl_test(xccl_comm *c, xccl_request *req, int *done) {
    if (req->state_ == REQ_IDLE) return xccl_err(XCCL_ERR_INVALID, "xccl test: request was never posted");
    if (req->state_ == REQ_QUEUED) progress_all(c);
    return finished(req, done);
}

static int req_cond(struct xccl_comm *c, void *arg) {
    xccl_request *req = arg;
    int done;
    progress_all(c);
    xccl_status s = finished(req, &done);
    if (!done) return 0;
    return s ? -(int)s : 1;
}

xccl_status xccl_wait(xccl_comm *c, xccl_request *req) {
    if (req->state_ == REQ_IDLE) return xccl_err(XCCL_ERR_INVALID, "xccl wait: request was never posted");
    char what[64];
    snprintf(what, sizeof what, "xccl %s rank %d", req->kind_ == KIND_SEND ? "send to" : "recv from",
             req->peer_);
    xccl_status s = xccl_wait_cond(c, req_cond, req, &req->peer_, 1, what);
    if (s && req->state_ == REQ_QUEUED) {
        /* deadline or peer death while queued: drop it; a half-moved message breaks the pair */
        if ((req->done_ || req->aux_) && c->ops->abort) c->ops->abort(c, req);
        if (req->done_ || req->aux_) c->pair_broken[req->peer_] = 1;
        unlink_req(c, req);
        req->state_ = REQ_FAILED;
        req->status_ = s;
    }
    return s;
}

typedef struct any_arg {
    xccl_request *const *reqs;
    int n, index;
} any_arg;

static int any_cond(struct xccl_comm *c, void *varg) {
    any_arg *a = varg;
    progress_all(c);
    for (int i = 0; i < a->n; i++) {
        int done;
        if (!a->reqs[i] || a->reqs[i]->state_ == REQ_IDLE) continue;
        xccl_status s = finished(a->reqs[i], &done);
        if (!done) continue;
        a->index = i;
        return s ? -(int)s : 1;
    }
    return 0;
}

xccl_status xccl_waitany(xccl_comm *c, xccl_request *const *reqs, int n, int *index) {
    if (n < 1 || n > 4 * XCCL_MAX_RANKS || !reqs || !index)
        return xccl_err(XCCL_ERR_INVALID, "xccl waitany: bad arguments (%d requests)", n);
    int peers[4 * XCCL_MAX_RANKS], np = 0, posted = 0;
    for (int i = 0; i < n; i++) {
        if (!reqs[i] || reqs[i]->state_ == REQ_IDLE) continue;
        posted++;
        int dup = 0;
        for (int j = 0; j < np; j++) dup |= peers[j] == reqs[i]->peer_;
        if (!dup) peers[np++] = reqs[i]->peer_;
    }
    if (!posted) return xccl_err(XCCL_ERR_INVALID, "xccl waitany: no posted request");
    any_arg a = {reqs, n, -1};
    xccl_status s = xccl_wait_cond(c, any_cond, &a, peers, np, "xccl waitany");
    if (a.index >= 0) *index = a.index;
    else *index = -1;
    return s;
}

xccl_status xccl_cancel(xccl_comm *c, xccl_request *req) {
    if (req->state_ != REQ_QUEUED) return XCCL_OK;
    int moved = req->done_ || req->aux_;
    if (moved && c->ops->abort) c->ops->abort(c, req); /* the peer stops touching the buffer */
    if (moved) c->pair_broken[req->peer_] = 1;
    unlink_req(c, req);
    req->state_ = REQ_FAILED;
    req->status_ = XCCL_ERR_INVALID;
    return moved ? xccl_err_peer(XCCL_ERR_PEER, req->peer_,
                                 "xccl cancel: the message with rank %d was half moved; the pair is broken",
                                 req->peer_)
                 : XCCL_OK;
}

void xccl_p2p_stats_get(const xccl_comm *c, xccl_p2p_stats *out) {
    if (out) *out = c->p2p_stats;
}

size_t xccl_request_len(const xccl_request *req) {
    return req->kind_ == KIND_RECV ? req->msg_len_ : req->len_;
}

xccl_status xccl_send(xccl_comm *c, int peer, const void *buf, size_t len) {
    xccl_request req = {0};
    xccl_status s = xccl_isend(c, peer, buf, len, &req);
    if (s) return s;
    return xccl_wait(c, &req);
}

xccl_status xccl_recv(size_t *len_out, void *buf, size_t cap, xccl_comm *c, int peer) {
    xccl_request req = {0};
    xccl_status s = xccl_irecv(c, peer, buf, cap, &req);
    if (s) return s;
    s = xccl_wait(c, &req);
    if (s) return s;
    if (len_out) *len_out = req.msg_len_;
    return XCCL_OK;
}

/* --- rejoin ---------------------------------------------------------------- */

static void fail_queue(xccl_comm *c, xccl_request **head, xccl_request **tail) {
    while (*head) {
        xccl_request *r = *head;
        if ((r->done_ || r->aux_ || r->aux2_) && c->ops->abort) c->ops->abort(c, r);
        *head = r->next_;
        r->next_ = NULL;
        r->state_ = REQ_FAILED;
        r->status_ = XCCL_ERR_PEER;
    }
    *tail = NULL;
}

xccl_status xccl_peer_reset(xccl_comm *c, int peer) {
    if (!c || peer < 0 || peer >= c->size)
        return xccl_err(XCCL_ERR_INVALID, "xccl peer_reset: peer %d out of range", peer);
    if (peer == c->rank) return xccl_err(XCCL_ERR_INVALID, "xccl peer_reset: rank %d is this rank", peer);
    if (c->ops != &xccl_shm_ops)
        return xccl_err(XCCL_ERR_INVALID, "xccl peer_reset: rejoin needs the shm transport");
    xccl_status s = xccl_self_check(c);
    if (s) return s;
    xccl_rank_entry *e = &c->ranks[peer];
    (void)xccl_inc_check(c, peer); /* a peer never talked to: adopt its holder first */
    uint64_t w = atomic_load_explicit(&e->sinc, memory_order_acquire);
    uint32_t inc = xccl_sinc_inc(w), st = xccl_sinc_state(w);
    if (inc == c->peer_inc[peer] && st == XCCL_RANK_ACTIVE) {
        /* the incarnation we know still holds the rank: only if it is
         * really gone (pid) may we drop the pair */
        s = xccl_shm_peer_check(c, peer);
        w = atomic_load_explicit(&e->sinc, memory_order_acquire);
        if (xccl_sinc_inc(w) == inc && xccl_sinc_state(w) == XCCL_RANK_ACTIVE)
            return xccl_err_peer(XCCL_ERR_INVALID, peer,
                                 "xccl peer_reset: rank %d (incarnation %u) %s: it has not restarted and was not "
                                 "declared dead (xccl_peer_declare_dead)", peer, inc,
                                 s ? "is hung" : "is alive");
        inc = xccl_sinc_inc(w);
        st = xccl_sinc_state(w);
    }
    /* drop everything of the old incarnation on this side */
    fail_queue(c, &c->sq_head[peer], &c->sq_tail[peer]);
    fail_queue(c, &c->rq_head[peer], &c->rq_tail[peer]);
    c->pair_broken[peer] = 0;
    c->cma_off[peer] = 0;
    c->push_off[peer] = 0;
    c->send_seq[peer] = 0;
    c->coop_seq[peer] = 0;
    c->coop_src[peer] = 0;
    c->coop_region[peer] = 0;
    c->coop_rchunk[peer] = 0;
    xccl_regions_forget_peer(c, peer);
    for (int b = 0; b < 2; b++) { /* buffers it read count as released */
        c->moe_send_mask[b] &= ~(1ull << peer);
        c->moe_recv_mask[b] &= ~(1ull << peer);
        c->coll_buf_mask[b] &= ~(1ull << peer);
    }
    if (c->pidfd[peer] >= 0) close(c->pidfd[peer]);
    c->pidfd[peer] = -1;
    c->pidfd_pid[peer] = 0;
    if (st == XCCL_RANK_ACTIVE && inc != c->peer_inc[peer]) {
        c->peer_inc[peer] = inc; /* the newcomer */
        return XCCL_OK;
    }
    static const char *const names[] = {"free", "active", "left", "dead", "being claimed"};
    return xccl_err_peer(XCCL_ERR_PEER, peer, "xccl peer_reset: rank %d has not rejoined yet (%s, incarnation %u)",
                         peer, st < 5 ? names[st] : "?", inc);
}

uint32_t xccl_peer_incarnation(const xccl_comm *c, int peer) {
    if (!c || !c->ranks || peer < 0 || peer >= c->size) return 0;
    return c->peer_inc[peer];
}

uint32_t xccl_comm_incarnation(const xccl_comm *c) {
    return c ? c->my_inc : 0;
}

xccl_status xccl_peer_declare_dead(xccl_comm *c, int peer) {
    if (!c || peer < 0 || peer >= c->size || peer == c->rank)
        return xccl_err(XCCL_ERR_INVALID, "xccl peer_declare_dead: bad peer %d", peer);
    if (c->ops != &xccl_shm_ops)
        return xccl_err(XCCL_ERR_INVALID, "xccl peer_declare_dead: needs the shm transport");
    xccl_rank_entry *e = &c->ranks[peer];
    uint32_t inc = c->peer_inc[peer];
    if (!inc) inc = xccl_sinc_inc(atomic_load(&e->sinc));
    uint64_t want = xccl_sinc(inc, XCCL_RANK_ACTIVE);
    atomic_compare_exchange_strong(&e->sinc, &want, xccl_sinc(inc, XCCL_RANK_DEAD));
    for (int r = 0; r < c->size; r++)
        if (r != c->rank) xccl_wake(c, r);
    return XCCL_OK;
}
