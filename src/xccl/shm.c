/*
 * shm.c — the shared-memory transport: per-pair rings of fixed-size slots.
 *
 * Ring src->dst: num_slots slots of slot_bytes (64-B header + payload). The
 * sender owns meta(src,dst,P2P).prod = tail (slots written, monotonic), the
 * receiver owns .cons = head (slots consumed); they sit on different cache
 * lines. The sender fills slot tail % num_slots while tail - head < num_slots
 * and publishes tail with release per chunk (so large messages pipeline);
 * the receiver reads tail with acquire, copies out, publishes head with
 * release (credit). A receive whose capacity is smaller than the message
 * fails before consuming anything, leaving the message queued.
 */
#define _GNU_SOURCE
#include "xccl_internal.h"

#include <string.h>

static xccl_status shm_send_progress(struct xccl_comm *c, xccl_request *req, int *done) {
    int p = req->peer_;
    xccl_meta *m = xccl_meta_at(c, c->rank, p, XCCL_CH_P2P);
    uint8_t *ring = xccl_ring_at(c, c->rank, p);
    const uint32_t nslots = c->hdr->num_slots, sb = c->hdr->slot_bytes;
    const size_t payload = sb - XCCL_SLOT_HDR;
    uint64_t tail = atomic_load_explicit(&m->prod, memory_order_relaxed);
    uint64_t head = atomic_load_explicit(&m->cons, memory_order_acquire);
    const uint8_t *buf = req->buf_;
    int moved = 0;
    while (req->done_ < req->len_ || (req->len_ == 0 && !req->aux_)) {
        if (tail - head >= nslots) {
            head = atomic_load_explicit(&m->cons, memory_order_acquire);
            if (tail - head >= nslots) break;
        }
        uint8_t *slot = ring + (size_t)(tail & (nslots - 1)) * sb;
        xccl_slot_hdr *h = (xccl_slot_hdr *)slot;
        size_t chunk = req->len_ - req->done_;
        if (chunk > payload) chunk = payload;
        h->msg_len = req->len_;
        h->offset = req->done_;
        h->chunk_len = (uint32_t)chunk;
        h->flags = req->done_ == 0 ? 1u : 0u;
        h->msg_seq = c->send_seq[p];
        if (chunk) memcpy(slot + XCCL_SLOT_HDR, buf + req->done_, chunk);
        req->done_ += chunk;
        req->aux_ = 1;
        tail++;
        atomic_store_explicit(&m->prod, tail, memory_order_release);
        moved = 1;
        if (req->done_ < req->len_) xccl_wake(c, p);
    }
    if (moved) xccl_wake(c, p);
    if (req->done_ == req->len_ && req->aux_) {
        c->send_seq[p]++;
        *done = 1;
    }
    return XCCL_OK;
}

static xccl_status shm_recv_progress(struct xccl_comm *c, xccl_request *req, int *done) {
    int p = req->peer_;
    xccl_meta *m = xccl_meta_at(c, p, c->rank, XCCL_CH_P2P);
    uint8_t *ring = xccl_ring_at(c, p, c->rank);
    const uint32_t nslots = c->hdr->num_slots, sb = c->hdr->slot_bytes;
    const size_t payload = sb - XCCL_SLOT_HDR;
    uint64_t head = atomic_load_explicit(&m->cons, memory_order_relaxed);
    uint64_t tail = atomic_load_explicit(&m->prod, memory_order_acquire);
    uint8_t *buf = req->buf_;
    int moved = 0;
    xccl_status s = XCCL_OK;
    for (;;) {
        if (req->aux_ && req->done_ == req->msg_len_) break;
        if (head == tail) {
            tail = atomic_load_explicit(&m->prod, memory_order_acquire);
            if (head == tail) break;
        }
        const uint8_t *slot = ring + (size_t)(head & (nslots - 1)) * sb;
        const xccl_slot_hdr *h = (const xccl_slot_hdr *)slot;
        uint64_t msg_len = h->msg_len, off = h->offset;
        uint32_t chunk = h->chunk_len;
        if (!req->aux_) {
            if (!(h->flags & 1) || off != 0) {
                s = xccl_err_peer(XCCL_ERR_PEER, p, "ring from rank %d out of sync (chunk at %llu)", p,
                                  (unsigned long long)off);
                break;
            }
            if (msg_len > req->len_) {
                s = xccl_err_peer(XCCL_ERR_TRUNCATED, p,
                                  "message of %llu bytes from rank %d is larger than the posted "
                                  "receive of %zu bytes",
                                  (unsigned long long)msg_len, p, req->len_);
                break;
            }
            req->msg_len_ = msg_len;
            req->aux_ = 1;
        }
        if (msg_len != req->msg_len_ || chunk > payload || off != req->done_ ||
            off + chunk > req->msg_len_) {
            s = xccl_err_peer(XCCL_ERR_PEER, p, "ring from rank %d: bad chunk (%llu+%u of %llu)", p,
                              (unsigned long long)off, chunk, (unsigned long long)msg_len);
            break;
        }
        if (chunk) memcpy(buf + off, slot + XCCL_SLOT_HDR, chunk);
        req->done_ += chunk;
        head++;
        atomic_store_explicit(&m->cons, head, memory_order_release);
        moved = 1;
    }
    if (moved) xccl_wake(c, p);
    if (s) return s;
    if (req->aux_ && req->done_ == req->msg_len_) *done = 1;
    return XCCL_OK;
}

static void shm_sleep(struct xccl_comm *c, uint64_t ns) { (void)c; (void)ns; }

static void shm_close(struct xccl_comm *c) { (void)c; }

const xccl_transport_ops xccl_shm_ops = {
    .name = "shm",
    .send_progress = shm_send_progress,
    .recv_progress = shm_recv_progress,
    .sleep = shm_sleep,
    .peer_check = xccl_shm_peer_check,
    .close = shm_close,
};
