/*
 * shm.c — the shared-memory transport: per-pair rings of fixed-size slots,
 * plus a single-copy rendezvous for large messages.
 *
 * Ring src->dst: num_slots slots of slot_bytes (64-B header + payload). The
 * sender owns meta(src,dst,P2P).prod = tail (slots written, monotonic), the
 * receiver owns .cons = head (slots consumed); they sit on different cache
 * lines. The sender fills slot tail % num_slots while tail - head < num_slots
 * and publishes tail with release per chunk (so large messages pipeline);
 * the receiver reads tail with acquire, copies out, publishes head with
 * release (credit). A receive whose capacity is smaller than the message
 * fails before consuming anything, leaving the message queued.
 *
 * Rendezvous (messages >= XCCL_RNDV_MIN, default 256 KiB; from ordinary
 * memory only if XCCL_CMA is on): the sender posts one slot flagged RNDV
 * holding {pid, region, address, length, offset} and keeps its request open;
 * the receiver copies straight from the sender's memory — a plain memcpy out
 * of its mapping of the region (zero intermediate copies), else
 * process_vm_readv (one kernel copy, like MPI's CMA path) — then reports the handled rendezvous
 * number and its result in cons_aux[0] / cons_aux[1]. Messages of 1 MiB or
 * more are split so that both cores copy at once: the receiver posts its
 * buffer address (cons_aux[2], then cons_aux[3] = rendezvous number), reads
 * the lower half with process_vm_readv while the sender writes the upper half
 * with process_vm_writev and reports it in prod_aux[1] / prod_aux[2]; the
 * receiver then consumes the slot and answers. If the kernel refuses
 * (no permission), the receiver answers NACK and the sender streams the same
 * message through the ring as continuation chunks; that pair stays on the
 * ring from then on. At most one rendezvous per pair is open (requests of a
 * pair progress in order).
 */
#define _GNU_SOURCE
#include "xccl_internal.h"
#include "copy.h"

#include <errno.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#define FLAG_FIRST 1u
#define FLAG_RNDV  2u
#define RNDV_OK    1u
#define RNDV_NACK  2u
/* request aux_ bits (sender) */
#define S_FIRST    1u /* first slot posted */
#define S_RNDV     2u /* rendezvous posted, waiting for the receiver */
#define S_FALLBACK 4u /* receiver refused: stream through the ring */
#define S_PUSHED   8u /* split rendezvous: our half is written */
/* request aux2_ bits (receiver) */
#define R_SPLIT    1u /* split rendezvous: waiting for the sender's half */
#define SPLIT_MIN  (1u << 20)

/* Bytes the receiver reads of a split rendezvous of len bytes (the sender
 * writes the rest); both sides compute it the same way. */
static size_t split_half(uint64_t len) { return (size_t)(len / 2) & ~(size_t)4095; }

static int cma_copy(pid_t pid, uint8_t *local, uint64_t remote, size_t len, int write) {
    size_t got = 0;
    while (got < len) {
        struct iovec lv = {.iov_base = local + got, .iov_len = len - got};
        struct iovec rv = {.iov_base = (void *)(uintptr_t)(remote + got), .iov_len = len - got};
        ssize_t r = write ? process_vm_writev(pid, &lv, 1, &rv, 1, 0) : process_vm_readv(pid, &lv, 1, &rv, 1, 0);
        if (r > 0) { got += (size_t)r; continue; }
        int err = r < 0 ? errno : EIO;
        if (err == EINTR) continue;
        return err;
    }
    return 0;
}

typedef struct rndv_desc {
    int32_t pid;
    uint32_t region;  /* != 0: the data lies in this registered region of the sender */
    uint64_t addr;    /* sender address (CMA) */
    uint64_t len;
    uint64_t offset;  /* offset in `region` */
} rndv_desc;
static_assert(sizeof(rndv_desc) == 32, "rendezvous descriptor layout");

static xccl_status shm_send_progress(struct xccl_comm *c, xccl_request *req, int *done) {
    int p = req->peer_;
    xccl_meta *m = xccl_meta_at(c, c->rank, p, XCCL_CH_P2P);
    uint8_t *ring = xccl_ring_at(c, c->rank, p);
    const uint32_t nslots = c->hdr->num_slots, sb = c->hdr->slot_bytes;
    const size_t payload = sb - XCCL_SLOT_HDR;
    uint64_t tail = atomic_load_explicit(&m->prod, memory_order_relaxed);
    uint64_t head = atomic_load_explicit(&m->cons, memory_order_acquire);
    const uint8_t *buf = req->buf_;

    uint32_t rid = 0;
    size_t roff = 0;
    int big = !(req->aux_ & S_FIRST) && p != c->rank && !c->cma_off[p] && req->len_ >= c->rndv_min &&
              req->len_ > 0;
    int in_region = big && xccl_region_find_local(&rid, &roff, c, buf, req->len_);
    if (big && (in_region || c->cma_on)) {
        if (tail - head >= nslots) return XCCL_OK;
        uint8_t *slot = ring + (size_t)(tail & (nslots - 1)) * sb;
        xccl_slot_hdr *h = (xccl_slot_hdr *)slot;
        rndv_desc d = {.pid = (int32_t)getpid(), .region = in_region ? rid : 0,
                       .addr = (uint64_t)(uintptr_t)buf, .len = req->len_, .offset = roff};
        h->msg_len = req->len_;
        h->offset = 0;
        h->chunk_len = sizeof d;
        h->flags = FLAG_FIRST | FLAG_RNDV;
        h->msg_seq = c->send_seq[p];
        memcpy(slot + XCCL_SLOT_HDR, &d, sizeof d);
        req->aux_ = S_FIRST | S_RNDV;
        req->aux2_ = ++c->rndv_sent[p];
        atomic_store_explicit(&m->prod, tail + 1, memory_order_release);
        xccl_wake(c, p);
        return XCCL_OK;
    }
    if ((req->aux_ & S_RNDV) && !(req->aux_ & S_FALLBACK)) {
        if (!(req->aux_ & S_PUSHED) &&
            atomic_load_explicit((_Atomic uint64_t *)&m->cons_aux[3], memory_order_acquire) == req->aux2_) {
            /* split rendezvous: the receiver reads the first half, we write the rest */
            size_t half = split_half(req->len_);
            int err = cma_copy(atomic_load(&c->ranks[p].pid), (uint8_t *)buf + half, m->cons_aux[2] + half,
                               req->len_ - half, 1);
            m->prod_aux[2] = err ? RNDV_NACK : RNDV_OK;
            atomic_store_explicit((_Atomic uint64_t *)&m->prod_aux[1], req->aux2_, memory_order_release);
            req->aux_ |= S_PUSHED;
            xccl_wake(c, p);
        }
        if (atomic_load_explicit((_Atomic uint64_t *)&m->cons_aux[0], memory_order_acquire) != req->aux2_)
            return XCCL_OK;
        if (m->cons_aux[1] == RNDV_OK) {
            req->done_ = req->len_;
            c->send_seq[p]++;
            *done = 1;
            return XCCL_OK;
        }
        c->cma_off[p] = 1; /* NACK: stream it through the ring */
        req->aux_ |= S_FALLBACK;
        req->done_ = 0;
    }
    int moved = 0;
    while (req->done_ < req->len_ || (req->len_ == 0 && !(req->aux_ & S_FIRST))) {
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
        h->flags = (req->aux_ & S_FIRST) ? 0u : FLAG_FIRST;
        h->msg_seq = c->send_seq[p];
        if (chunk) xccl_copy(slot + XCCL_SLOT_HDR, buf + req->done_, chunk, chunk);
        req->done_ += chunk;
        req->aux_ |= S_FIRST;
        tail++;
        atomic_store_explicit(&m->prod, tail, memory_order_release);
        moved = 1;
        if (req->done_ < req->len_) xccl_wake(c, p);
    }
    if (moved) xccl_wake(c, p);
    if (req->done_ == req->len_ && (req->aux_ & S_FIRST)) {
        c->send_seq[p]++;
        *done = 1;
    }
    return XCCL_OK;
}

/* Answer a rendezvous: result RNDV_OK / RNDV_NACK. */
static void rndv_answer(struct xccl_comm *c, int p, xccl_meta *m, uint64_t result) {
    m->cons_aux[1] = result;
    atomic_store_explicit((_Atomic uint64_t *)&m->cons_aux[0], ++c->rndv_seen[p], memory_order_release);
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
    if (req->aux2_ & R_SPLIT) { /* split rendezvous: our half is read; wait for the sender's */
        uint64_t seq = c->rndv_seen[p] + 1;
        if (atomic_load_explicit((_Atomic uint64_t *)&m->prod_aux[1], memory_order_acquire) != seq)
            return XCCL_OK;
        const xccl_slot_hdr *h = (const xccl_slot_hdr *)(ring + (size_t)(head & (nslots - 1)) * sb);
        rndv_desc d;
        memcpy(&d, (const uint8_t *)h + XCCL_SLOT_HDR, sizeof d);
        size_t half = split_half(req->msg_len_);
        int err = (req->aux2_ >> 8) ? (int)(req->aux2_ >> 8) : 0;
        if (!err && m->prod_aux[2] != RNDV_OK) /* the sender could not write: read it ourselves */
            err = cma_copy(d.pid, buf + half, d.addr + half, req->msg_len_ - half, 0);
        req->aux2_ = 0;
        head++;
        atomic_store_explicit(&m->cons, head, memory_order_release);
        if (!err) {
            req->done_ = req->msg_len_;
            rndv_answer(c, p, m, RNDV_OK);
        } else {
            rndv_answer(c, p, m, RNDV_NACK); /* the data follows through the ring */
            if (err == ESRCH) {
                xccl_wake(c, p);
                return xccl_err_peer(XCCL_ERR_PEER, p, "rank %d is gone (rendezvous)", p);
            }
        }
        moved = 1;
    }
    for (;;) {
        if (req->aux_ && req->done_ == req->msg_len_) break;
        if (head == tail) {
            tail = atomic_load_explicit(&m->prod, memory_order_acquire);
            if (head == tail) break;
        }
        const uint8_t *slot = ring + (size_t)(head & (nslots - 1)) * sb;
        const xccl_slot_hdr *h = (const xccl_slot_hdr *)slot;
        uint64_t msg_len = h->msg_len, off = h->offset;
        uint32_t chunk = h->chunk_len, flags = h->flags;
        if (!req->aux_) {
            if (!(flags & FLAG_FIRST) || off != 0) {
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
            if (flags & FLAG_RNDV) {
                rndv_desc d;
                memcpy(&d, slot + XCCL_SLOT_HDR, sizeof d);
                if (chunk != sizeof d || d.len != msg_len ||
                    d.pid != atomic_load_explicit(&c->ranks[p].pid, memory_order_acquire)) {
                    s = xccl_err_peer(XCCL_ERR_PEER, p, "rank %d sent a bad rendezvous descriptor", p);
                    break;
                }
                size_t got = 0;
                int err = 0;
                if (d.region) { /* zero-copy: read it where it lies in the sender's region */
                    uint8_t *src;
                    if (xccl_region_peer_ptr(&src, c, p, d.region, d.offset, msg_len) == XCCL_OK) {
                        xccl_copy(buf, src, msg_len, msg_len); /* not glibc's misaligned rep movsb */
                        got = msg_len;
                    }
                }
                if (got < msg_len && msg_len >= SPLIT_MIN) {
                    /* split: tell the sender where to write the upper half, read the lower */
                    uint64_t seq = c->rndv_seen[p] + 1;
                    m->cons_aux[2] = (uint64_t)(uintptr_t)buf;
                    atomic_store_explicit((_Atomic uint64_t *)&m->cons_aux[3], seq, memory_order_release);
                    xccl_wake(c, p);
                    int e = cma_copy(d.pid, buf, d.addr, split_half(msg_len), 0);
                    req->aux2_ = R_SPLIT | ((uint64_t)e << 8);
                    break; /* the slot stays until the sender's half is in */
                }
                if (got < msg_len) err = cma_copy(d.pid, buf, d.addr, msg_len, 0), got = err ? 0 : msg_len;
                head++;
                atomic_store_explicit(&m->cons, head, memory_order_release);
                if (got == msg_len) {
                    req->done_ = msg_len;
                    rndv_answer(c, p, m, RNDV_OK);
                } else if (err == ESRCH) {
                    rndv_answer(c, p, m, RNDV_NACK);
                    xccl_wake(c, p);
                    s = xccl_err_peer(XCCL_ERR_PEER, p, "rank %d is gone (rendezvous read)", p);
                    break;
                } else {
                    rndv_answer(c, p, m, RNDV_NACK); /* the data follows through the ring */
                }
                moved = 1;
                continue;
            }
        }
        if (msg_len != req->msg_len_ || chunk > payload || off != req->done_ ||
            off + chunk > req->msg_len_) {
            s = xccl_err_peer(XCCL_ERR_PEER, p, "ring from rank %d: bad chunk (%llu+%u of %llu)", p,
                              (unsigned long long)off, chunk, (unsigned long long)msg_len);
            break;
        }
        if (chunk) xccl_copy(buf + off, slot + XCCL_SLOT_HDR, chunk, chunk);
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
