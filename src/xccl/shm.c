/*
 * shm.c — the shared-memory transport: per-pair rings of fixed-size slots,
 * plus a cooperative single-copy rendezvous for large messages.
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
 * Rendezvous (messages >= XCCL_RNDV_MIN, default 256 KiB, from a registered
 * region, or from ordinary memory if XCCL_CMA is on): the sender posts one
 * slot flagged RNDV holding {pid, region, address, length, offset} and keeps
 * its request open. The message is cut into chunks (a region: XCCL_COOP_CHUNK,
 * default 128 KiB; ordinary memory: half the message, 128 KiB ..
 * 4 MiB, see coop_chunk_len) and both ranks copy it at once, each on its own
 * core:
 *
 *   1. The receiver, at the head of its queue with a large enough buffer,
 *      initialises meta(src,dst,COOP): claim word prod = {tag, 0}, done word
 *      cons = {tag, 0} (tag: the rendezvous number, never 0), then publishes
 *      its buffer address in meta(src,dst,P2P).cons_aux[2] and the rendezvous
 *      number in cons_aux[3] (release).
 *   2. Each side claims the next chunk with a CAS on the claim word (the
 *      receiver from the front, the sender from the back, so each keeps the
 *      same end of the buffers in its cache message after message) and
 *      copies it, then fetch-adds the done word: the receiver pulls (plain
 *      copy out of its mapping of the sender's region, else
 *      process_vm_readv), the sender pushes (process_vm_writev into the
 *      posted buffer). Neither waits for the other; a side that does not
 *      progress simply claims nothing, so the other one copies every chunk.
 *      For a region the receiver's copy is ~4x faster than the sender's
 *      kernel copy, so the sender claims only while at least
 *      XCCL_COOP_REGION_LEFT chunks are unclaimed (no slow chunk at the end).
 *   3. Done word = {tag, nchunks}: every byte is in. The receiver consumes
 *      the slot and answers {rendezvous number, OK} in cons_aux[0..1]; the
 *      sender's request completes on either the done word or the answer
 *      (never earlier: its buffer is read until the last chunk is copied).
 *
 * Failures: a push the kernel refuses is recorded in prod_aux[0] ({tag,
 * chunk+1}); the receiver copies that chunk itself and the sender never
 * pushes to that peer again. A pull the kernel refuses makes the receiver
 * stop the claims (front index COOP_ABORT) and answer NACK; the sender then
 * streams the whole message through the ring as continuation chunks and the
 * pair stays on the ring. A request dropped while the rendezvous is open
 * (deadline, cancel) stops the claims the same way and waits (bounded) for
 * the peer's chunk in flight, so nobody touches its buffer afterwards; a
 * sender that gives up before the receiver posted its buffer records the
 * rendezvous number in prod_aux[1], which the receiver checks after
 * initialising the claim word (store/load on both sides are seq_cst, so one
 * of them sees the other). A dead peer is reported by the wait that
 * notices it (xccl_wait_cond), naming it. At most one rendezvous per pair is
 * open (requests of a pair progress in order).
 *
 * Incarnations: every slot carries the sender's incarnation and the receiver
 * incarnation it was addressed to (0 before the sender saw any holder). The
 * receiver drops, at a message boundary, a slot from an earlier incarnation
 * of the sender or addressed to an earlier incarnation of itself (consuming
 * it, so the ring indices, which live in the segment, simply continue across
 * incarnations), and fails on a slot of a later sender incarnation (the
 * peer restarted: xccl_peer_reset first). The rendezvous number is the RNDV
 * slot's ring position + 1, known to both sides and never repeated, so the
 * COOP words and answers of an old incarnation never match a new one. Kernel
 * copies use the pid of the incarnation the comm talks to (xccl_peer_pid),
 * never a later holder's.
 */
#define _GNU_SOURCE
#include "xccl_internal.h"
#include "copy.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define FLAG_FIRST 1u
#define FLAG_RNDV  2u
#define RNDV_OK    1u
#define RNDV_NACK  2u
/* request aux_ bits (sender) */
#define S_FIRST    1u  /* first slot posted */
#define S_RNDV     2u  /* rendezvous posted, waiting for the receiver */
#define S_FALLBACK 4u  /* receiver refused: stream through the ring */
#define S_NOPUSH   8u  /* this request pushes no (more) chunks */
#define S_REGION   16u /* the rendezvous reads a registered region */
/* request aux2_ bits (receiver; the sender keeps its rendezvous number there) */
#define R_COOP     1u /* cooperative rendezvous open */
#define R_TOOK     2u /* we copied the chunk the sender failed */
#define COOP_IDX   0xffffffffull
#define COOP_ABORT 0xffffull /* front index once the claims are stopped */
#define COOP_MAXN  0xfff0ull /* chunks per rendezvous at most */

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

/* --- cooperative chunks -------------------------------------------------- */

static inline uint64_t coop_tag(uint64_t seq) { return seq % 0xffffffffull + 1; } /* 1 .. 2^32-1 */
static inline uint64_t coop_word(uint64_t tag, uint64_t v) { return tag << 32 | v; }
/* Chunk size of a rendezvous of len bytes (both sides compute it from the
 * descriptor). A region is read by a plain copy on the receiver's side:
 * XCCL_COOP_CHUNK. Ordinary memory is copied by the kernel on both sides,
 * whose fixed cost per call (pinning, syscall) wants few large calls: half
 * the message, at least XCCL_COOP_CHUNK, at most 4 MiB (measured on THP-backed
 * memory, 1 MiB messages: 128 KiB chunks ~80% of hot memcpy, quarters
 * 55-97%, halves 99-107%). */
static inline size_t coop_chunk_len(const struct xccl_comm *c, uint64_t len, int region) {
    size_t q = c->coop_chunk;
    if (!region) {
        q = (size_t)((len / 2 + 4095) & ~(uint64_t)4095);
        if (q < c->coop_chunk) q = c->coop_chunk;
        if (q > ((size_t)4 << 20)) q = (size_t)4 << 20;
    }
    size_t lim = (size_t)((len / COOP_MAXN + 4096) & ~(uint64_t)4095); /* n fits the claim word */
    return q < lim ? lim : q;
}
static inline uint64_t coop_nchunks(uint64_t len, size_t chunk) { return (len + chunk - 1) / chunk; }
static inline _Atomic uint64_t *aux_atomic(uint64_t *p) { return (_Atomic uint64_t *)p; }

/* Claim word: tag << 32 | back << 16 | front — chunks claimed from the
 * front (by the receiver: 0, 1, ...) and from the back (by the sender:
 * n-1, n-2, ...). Each side keeps working on the same end of the buffers
 * message after message (their cache lines stay with its core); they meet
 * wherever the faster one got to. front = COOP_ABORT: claims stopped. */
#define COOP_FRONT(v) ((v) & 0xffffu)
#define COOP_BACK(v)  (((v) >> 16) & 0xffffu)

/* Claim the next chunk of rendezvous `tag` (n chunks) from the front
 * (back = 0) or the back (back = 1) if at least min_left are unclaimed: its
 * index, or -1. */
static int64_t coop_claim(xccl_meta *k, uint64_t tag, uint64_t n, uint64_t min_left, int back) {
    uint64_t v = atomic_load_explicit(&k->prod, memory_order_relaxed);
    for (;;) {
        uint64_t f = COOP_FRONT(v), b = COOP_BACK(v);
        if (v >> 32 != tag || f == COOP_ABORT || f + b >= n || n - (f + b) < min_left) return -1;
        uint64_t nv = back ? v + (1ull << 16) : v + 1;
        if (atomic_compare_exchange_weak_explicit(&k->prod, &v, nv, memory_order_acq_rel, memory_order_relaxed))
            return (int64_t)(back ? n - 1 - b : f);
    }
}

/* Stop the claims of rendezvous tag: the number of chunks claimed before, or
 * -1 if the claim word is not (or no longer) this rendezvous'. */
static int64_t coop_stop(xccl_meta *k, uint64_t tag) {
    uint64_t v = atomic_load_explicit(&k->prod, memory_order_seq_cst);
    for (;;) {
        if (v >> 32 != tag || COOP_FRONT(v) == COOP_ABORT) return -1;
        uint64_t nv = (v & ~0xffffull) | COOP_ABORT;
        if (atomic_compare_exchange_weak_explicit(&k->prod, &v, nv, memory_order_seq_cst, memory_order_seq_cst))
            return (int64_t)(COOP_FRONT(v) + COOP_BACK(v));
    }
}

/* Wait (bounded: 1 s, or until peer is gone) until `claimed` chunks of
 * rendezvous tag are accounted for: done, or handed back by the sender
 * (prod_aux[0]). Our own claims are all finished when this runs (one
 * thread), so this waits for the peer's chunk in flight only. */
static void coop_drain(struct xccl_comm *c, int p, xccl_meta *k, uint64_t tag, int64_t claimed) {
    if (claimed <= 0) return;
    uint64_t t0 = xccl_now_ns();
    for (;;) {
        uint64_t d = atomic_load_explicit(&k->cons, memory_order_acquire);
        uint64_t f = atomic_load_explicit(aux_atomic(&k->prod_aux[0]), memory_order_acquire);
        uint64_t got = d >> 32 == tag ? (d & COOP_IDX) : 0;
        got += f >> 32 == tag;
        if (got >= (uint64_t)claimed) return;
        if (xccl_now_ns() - t0 > 1000000000ull) return;
        uint64_t w = atomic_load(&c->ranks[p].sinc);
        if (xccl_sinc_state(w) != XCCL_RANK_ACTIVE || xccl_sinc_inc(w) != c->peer_inc[p]) return;
        int32_t pid = atomic_load(&c->ranks[p].pid);
        if (pid > 0 && kill(pid, 0) != 0 && errno == ESRCH) return;
        struct timespec ts = {0, 20000};
        nanosleep(&ts, NULL);
    }
}

/* Copy chunk i of a rendezvous of len bytes: the receiver pulls (region
 * mapping or process_vm_readv), the sender pushes (process_vm_writev).
 * 0 or an errno. */
static int coop_copy_chunk(struct xccl_comm *c, int p, int push, uint8_t *local, uint64_t remote, int region,
                           uint64_t i, uint64_t len, size_t chunk) {
    size_t off = (size_t)(i * chunk), l = (size_t)(len - off) < chunk ? (size_t)(len - off) : chunk;
    if (region && !push) {
        xccl_copy(local + off, (const uint8_t *)(uintptr_t)remote + off, l, (size_t)len);
        return 0;
    }
    /* never a kernel copy into / out of a later holder of the rank */
    int32_t pid = xccl_peer_pid(c, p);
    if (pid <= 0) return ESRCH;
    return cma_copy(pid, local + off, remote + off, l, push);
}

static xccl_status shm_send_progress(struct xccl_comm *c, xccl_request *req, int *done) {
    int p = req->peer_;
    xccl_meta *m = xccl_meta_at(c, c->rank, p, XCCL_CH_P2P);
    uint8_t *ring = xccl_ring_at(c, c->rank, p);
    const uint32_t nslots = c->hdr->num_slots, sb = c->hdr->slot_bytes;
    const size_t payload = sb - XCCL_SLOT_HDR;
    xccl_status cs = xccl_self_check(c);
    if (!cs) cs = xccl_inc_check(c, p);
    if (cs) return cs;
    uint64_t tail = atomic_load_explicit(&m->prod, memory_order_relaxed);
    uint64_t head = atomic_load_explicit(&m->cons, memory_order_acquire);
    const uint8_t *buf = req->buf_;
    const uint32_t src_inc = c->my_inc, dst_inc = c->peer_inc[p];

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
        h->src_inc = src_inc;
        h->dst_inc = dst_inc;
        memcpy(slot + XCCL_SLOT_HDR, &d, sizeof d);
        req->aux_ = S_FIRST | S_RNDV | (in_region ? S_REGION : 0u);
        if (!c->cma_on || !c->coop_push || c->push_off[p]) req->aux_ |= S_NOPUSH;
        /* the rendezvous number is the slot's ring position + 1: both sides
         * know it, and it never repeats across incarnations of either */
        req->aux2_ = tail + 1;
        atomic_store_explicit(&m->prod, tail + 1, memory_order_release);
        xccl_wake(c, p);
        return XCCL_OK;
    }
    if ((req->aux_ & S_RNDV) && !(req->aux_ & S_FALLBACK)) {
        const size_t chunk = coop_chunk_len(c, req->len_, (req->aux_ & S_REGION) != 0);
        const uint64_t seq = req->aux2_, tag = coop_tag(seq), n = coop_nchunks(req->len_, chunk);
        xccl_meta *k = xccl_meta_at(c, c->rank, p, XCCL_CH_COOP);
        if (!(req->aux_ & S_NOPUSH) &&
            atomic_load_explicit(aux_atomic(&m->cons_aux[3]), memory_order_acquire) == seq) {
            /* the receiver's buffer is posted: push chunks into it */
            uint64_t dst = m->cons_aux[2], left = (req->aux_ & S_REGION) ? c->coop_region_left : 1;
            int64_t i;
            while ((i = coop_claim(k, tag, n, left, 1)) >= 0) {
                int err = coop_copy_chunk(c, p, 1, (uint8_t *)buf, dst, 0, (uint64_t)i, req->len_, chunk);
                if (err) { /* hand the chunk back: the receiver copies it */
                    atomic_store_explicit(aux_atomic(&k->prod_aux[0]), coop_word(tag, (uint64_t)i + 1),
                                          memory_order_release);
                    req->aux_ |= S_NOPUSH;
                    c->push_off[p] = 1;
                    xccl_wake(c, p);
                    if (err == ESRCH) {
                        xccl_mark_dead(c, p);
                        return xccl_err_peer(XCCL_ERR_PEER, p, "rank %d is gone (rendezvous write)", p);
                    }
                    break;
                }
                atomic_fetch_add_explicit(&k->cons, 1, memory_order_release);
                c->p2p_stats.chunks_pushed++;
                xccl_wake(c, p);
            }
        }
        /* complete once every chunk is in (done word) or the receiver answered */
        if (atomic_load_explicit(&k->cons, memory_order_acquire) == coop_word(tag, n)) {
            req->done_ = req->len_;
            c->send_seq[p]++;
            c->p2p_stats.rndv_sent++;
            *done = 1;
            return XCCL_OK;
        }
        if (atomic_load_explicit(aux_atomic(&m->cons_aux[0]), memory_order_acquire) != seq) return XCCL_OK;
        if (m->cons_aux[1] == RNDV_OK) {
            req->done_ = req->len_;
            c->send_seq[p]++;
            c->p2p_stats.rndv_sent++;
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
        h->src_inc = src_inc;
        h->dst_inc = dst_inc;
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

/* Answer the rendezvous open from p: result RNDV_OK / RNDV_NACK. */
static void rndv_answer(struct xccl_comm *c, int p, xccl_meta *m, uint64_t result) {
    m->cons_aux[1] = result;
    atomic_store_explicit(aux_atomic(&m->cons_aux[0]), c->coop_seq[p], memory_order_release);
}

/* Receiver: copy chunks of the open cooperative rendezvous from p until none
 * is left to claim. Returns 1 when the whole message is in, 0 if the sender
 * still copies, or -errno (our pull failed: the claims are stopped) / -EPIPE
 * (the sender stopped the claims: it gave up on the message). */
static int coop_recv_step(struct xccl_comm *c, xccl_request *req) {
    int p = req->peer_;
    xccl_meta *k = xccl_meta_at(c, p, c->rank, XCCL_CH_COOP);
    const size_t chunk = c->coop_rchunk[p];
    const uint64_t tag = coop_tag(c->coop_seq[p]), n = coop_nchunks(req->msg_len_, chunk);
    uint8_t *buf = req->buf_;
    int64_t i;
    while ((i = coop_claim(k, tag, n, 1, 0)) >= 0) {
        int err = coop_copy_chunk(c, p, 0, buf, c->coop_src[p], c->coop_region[p], (uint64_t)i, req->msg_len_,
                                  chunk);
        if (err) {
            coop_stop(k, tag);
            return -err;
        }
        atomic_fetch_add_explicit(&k->cons, 1, memory_order_release);
        c->p2p_stats.chunks_pulled++;
    }
    uint64_t d = atomic_load_explicit(&k->cons, memory_order_acquire);
    if (d == coop_word(tag, n)) return 1;
    uint64_t f = atomic_load_explicit(aux_atomic(&k->prod_aux[0]), memory_order_acquire);
    if (f >> 32 == tag && !(req->aux2_ & R_TOOK)) { /* the sender handed a chunk back */
        req->aux2_ |= R_TOOK;
        int err = coop_copy_chunk(c, p, 0, buf, c->coop_src[p], c->coop_region[p], (f & COOP_IDX) - 1,
                                  req->msg_len_, chunk);
        if (err) {
            coop_stop(k, tag);
            return -err;
        }
        d = atomic_fetch_add_explicit(&k->cons, 1, memory_order_acq_rel) + 1;
        c->p2p_stats.chunks_pulled++;
        if (d == coop_word(tag, n)) return 1;
    }
    uint64_t v = atomic_load_explicit(&k->prod, memory_order_acquire);
    if (v >> 32 == tag && COOP_FRONT(v) == COOP_ABORT) return -EPIPE;
    return 0;
}

/* Drop an open rendezvous of req (its wait failed or it was cancelled): stop
 * the claims and wait (bounded) for the peer's chunk in flight, so that
 * neither side touches req's buffer afterwards. */
static void shm_abort(struct xccl_comm *c, xccl_request *req) {
    int p = req->peer_;
    if (p == c->rank) return;
    if (req->kind_ == 1) { /* send */
        if (!(req->aux_ & S_RNDV) || (req->aux_ & S_FALLBACK)) return;
        xccl_meta *k = xccl_meta_at(c, c->rank, p, XCCL_CH_COOP);
        uint64_t tag = coop_tag(req->aux2_);
        /* seq_cst: the receiver initialises the claim word, then reads this */
        atomic_store_explicit(aux_atomic(&k->prod_aux[1]), req->aux2_, memory_order_seq_cst);
        coop_drain(c, p, k, tag, coop_stop(k, tag));
    } else if (req->aux2_ & R_COOP) {
        xccl_meta *k = xccl_meta_at(c, p, c->rank, XCCL_CH_COOP);
        uint64_t tag = coop_tag(c->coop_seq[p]);
        coop_drain(c, p, k, tag, coop_stop(k, tag));
        req->aux2_ = 0;
    }
}

/* Finish the rendezvous at the ring head: consume its slot, answer. */
static void rndv_finish(struct xccl_comm *c, int p, xccl_meta *m, uint64_t *head, uint64_t result) {
    (*head)++;
    atomic_store_explicit(&m->cons, *head, memory_order_release);
    rndv_answer(c, p, m, result);
}

static xccl_status shm_recv_progress(struct xccl_comm *c, xccl_request *req, int *done) {
    int p = req->peer_;
    xccl_meta *m = xccl_meta_at(c, p, c->rank, XCCL_CH_P2P);
    uint8_t *ring = xccl_ring_at(c, p, c->rank);
    const uint32_t nslots = c->hdr->num_slots, sb = c->hdr->slot_bytes;
    const size_t payload = sb - XCCL_SLOT_HDR;
    xccl_status s = xccl_inc_check(c, p);
    if (s) return s;
    if (p != c->rank && !c->peer_inc[p] && !(req->aux2_ & R_COOP))
        return XCCL_OK; /* no holder of p adopted yet (first one still attaching): wait */
    uint64_t head = atomic_load_explicit(&m->cons, memory_order_relaxed);
    uint64_t tail = atomic_load_explicit(&m->prod, memory_order_acquire);
    uint8_t *buf = req->buf_;
    int moved = 0;
    for (;;) {
        if (req->aux2_ & R_COOP) { /* cooperative rendezvous at the ring head */
            int r = coop_recv_step(c, req);
            if (r == 0) break;
            req->aux2_ = 0;
            moved = 1;
            if (r == 1) {
                req->done_ = req->msg_len_;
                c->p2p_stats.rndv_recv++;
                rndv_finish(c, p, m, &head, RNDV_OK);
                break;
            }
            if (r == -ESRCH) {
                xccl_mark_dead(c, p);
                rndv_finish(c, p, m, &head, RNDV_NACK);
                s = xccl_err_peer(XCCL_ERR_PEER, p, "rank %d is gone (rendezvous read)", p);
                break;
            }
            if (r == -EPIPE) {
                rndv_finish(c, p, m, &head, RNDV_NACK);
                s = xccl_err_peer(XCCL_ERR_PEER, p, "rank %d abandoned the message it was sending", p);
                break;
            }
            rndv_finish(c, p, m, &head, RNDV_NACK); /* the data follows through the ring */
            req->done_ = 0;
            continue;
        }
        if (req->aux_ && req->done_ == req->msg_len_) break;
        if (head == tail) {
            tail = atomic_load_explicit(&m->prod, memory_order_acquire);
            if (head == tail) break;
        }
        const uint8_t *slot = ring + (size_t)(head & (nslots - 1)) * sb;
        const xccl_slot_hdr *h = (const xccl_slot_hdr *)slot;
        uint64_t msg_len = h->msg_len, off = h->offset;
        uint32_t chunk = h->chunk_len, flags = h->flags;
        /* incarnation tags: a slot from an earlier incarnation of p, or
         * addressed to an earlier incarnation of this rank, is dropped; one
         * from a later incarnation of p means p restarted under us */
        int stale = (h->dst_inc && h->dst_inc != c->my_inc) || h->src_inc < c->peer_inc[p];
        if (!stale && h->src_inc != c->peer_inc[p]) {
            s = xccl_err_peer(XCCL_ERR_PEER, p, "rank %d restarted (incarnation %u, this rank talked to %u): call "
                              "xccl_peer_reset", p, h->src_inc, c->peer_inc[p]);
            break;
        }
        if (stale) {
            if (req->aux_) {
                s = xccl_err_peer(XCCL_ERR_PEER, p, "ring from rank %d: a stale slot inside a message", p);
                break;
            }
            head++;
            atomic_store_explicit(&m->cons, head, memory_order_release);
            moved = 1;
            continue;
        }
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
                if (chunk != sizeof d || d.len != msg_len || msg_len == 0 ||
                    d.pid != atomic_load_explicit(&c->ranks[p].pid, memory_order_acquire)) {
                    s = xccl_err_peer(XCCL_ERR_PEER, p, "rank %d sent a bad rendezvous descriptor", p);
                    break;
                }
                uint8_t *src = NULL;
                if (d.region && xccl_region_peer_ptr(&src, c, p, d.region, d.offset, msg_len) != XCCL_OK)
                    src = NULL; /* read it with process_vm_readv instead */
                c->coop_region[p] = src != NULL;
                c->coop_rchunk[p] = coop_chunk_len(c, msg_len, d.region != 0);
                c->coop_src[p] = src ? (uint64_t)(uintptr_t)src : d.addr;
                /* open the chunks, then post our buffer (release) */
                const uint64_t seq = head + 1, tag = coop_tag(seq); /* ring position + 1 */
                c->coop_seq[p] = seq;
                xccl_meta *k = xccl_meta_at(c, p, c->rank, XCCL_CH_COOP);
                atomic_store_explicit(&k->cons, coop_word(tag, 0), memory_order_relaxed);
                atomic_store_explicit(&k->prod, coop_word(tag, 0), memory_order_seq_cst);
                if (atomic_load_explicit(aux_atomic(&k->prod_aux[1]), memory_order_seq_cst) == seq) {
                    coop_stop(k, tag); /* the sender gave up on it before we came */
                    rndv_finish(c, p, m, &head, RNDV_NACK);
                    s = xccl_err_peer(XCCL_ERR_PEER, p, "rank %d abandoned the message it was sending", p);
                    break;
                }
                m->cons_aux[2] = (uint64_t)(uintptr_t)buf;
                atomic_store_explicit(aux_atomic(&m->cons_aux[3]), seq, memory_order_release);
                xccl_wake(c, p);
                req->aux2_ = R_COOP;
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
    .abort = shm_abort,
};
