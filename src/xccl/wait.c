/*
 * wait.c — waiting, waking, liveness: spin briefly, then sleep on the
 * rank's futex doorbell; every wait has a deadline; dead peers are errors.
 *
 * Protocol (lost-wakeup free): a waiter reads its doorbell value v, bumps
 * its `sleepers` count (seq_cst), re-checks its condition, and only then
 * futex-waits on (doorbell, v). A producer publishes its data with release,
 * issues a seq_cst fence, and if the target's `sleepers` is non-zero bumps
 * the doorbell and wakes it. Either the waiter sees the data or the producer
 * sees the sleeper.
 *
 * Liveness: the cheap state word {incarnation, state} is read on every
 * wake-up; the pidfd poll (or kill(pid,0) where pidfds are missing) and the
 * heartbeat age are checked every XCCL_LIVENESS_NS while sleeping, so a dead
 * peer is reported within a few milliseconds of its death. A peer whose
 * incarnation differs from the one this comm talks to has restarted: an error
 * until xccl_peer_reset accepts it. A detector marks only the incarnation it
 * checked DEAD (one CAS on the word), never a newcomer. The waiting rank also
 * checks its own word (declared dead: fail) and, in progress mode, beats.
 *
 * Heartbeats: a thread per comm stores the time every heartbeat_ms; in
 * progress mode it stops, and the application's xccl_comm_progress (and
 * XCCL's own bounded waits) store it instead, so the heartbeat age is the
 * age of the loop's last progress.
 */
#define _GNU_SOURCE
#include "xccl_internal.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define XCCL_LIVENESS_NS 2000000ull /* 2 ms */
#define XCCL_SLEEP_NS    2000000ull

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

static void futex_wait(_Atomic uint32_t *w, uint32_t v, uint64_t ns) {
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000ull), .tv_nsec = (long)(ns % 1000000000ull)};
    syscall(SYS_futex, (uint32_t *)w, FUTEX_WAIT, v, &ts, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *w) {
    syscall(SYS_futex, (uint32_t *)w, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

void xccl_wake_entry(xccl_rank_entry *e) {
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&e->sleepers, memory_order_relaxed)) {
        atomic_fetch_add_explicit(&e->doorbell, 1, memory_order_seq_cst);
        futex_wake(&e->doorbell);
    }
}

void xccl_wake(struct xccl_comm *c, int r) {
    if (!c->ranks) return;
    xccl_wake_entry(&c->ranks[r]);
}

void xccl_wake_group(struct xccl_comm *c, const struct xccl_group *g) {
    for (int i = 0; i < g->n; i++)
        if (g->ranks[i] != c->rank) xccl_wake(c, g->ranks[i]);
}

int xccl_pid_gone(int32_t pid) {
    if (pid <= 0) return 1;
    if (kill(pid, 0) != 0) return errno == ESRCH;
    /* a zombie (killed, not yet reaped) runs no more */
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *rp = strrchr(buf, ')');
    return rp && rp[1] == ' ' && (rp[2] == 'Z' || rp[2] == 'X');
}

xccl_status xccl_self_check(struct xccl_comm *c) {
    if (!c->ranks) return XCCL_OK;
    uint64_t w = atomic_load_explicit(&c->ranks[c->rank].sinc, memory_order_acquire);
    if (xccl_sinc_inc(w) == c->my_inc && xccl_sinc_state(w) == XCCL_RANK_ACTIVE) return XCCL_OK;
    if (xccl_sinc_inc(w) != c->my_inc)
        return xccl_err_peer(XCCL_ERR_PEER, c->rank,
                             "rank %d (this process, incarnation %u) was replaced by incarnation %u", c->rank,
                             c->my_inc, xccl_sinc_inc(w));
    return xccl_err_peer(XCCL_ERR_PEER, c->rank, "rank %d (this process, incarnation %u) was declared dead",
                         c->rank, c->my_inc);
}

/* Adopt or compare p's incarnation, given a read of its sinc word. */
static xccl_status inc_match(struct xccl_comm *c, int p, uint64_t w) {
    uint32_t inc = xccl_sinc_inc(w);
    if (inc == c->peer_inc[p]) return XCCL_OK;
    if (c->peer_inc[p] == 0) { /* first contact: adopt the holder we find (not one still claiming) */
        if (inc && xccl_sinc_state(w) != XCCL_RANK_CLAIMING) c->peer_inc[p] = inc;
        return XCCL_OK;
    }
    return xccl_err_peer(XCCL_ERR_PEER, p,
                         "rank %d restarted (incarnation %u, this rank talked to %u): call xccl_peer_reset", p, inc,
                         c->peer_inc[p]);
}

xccl_status xccl_inc_check(struct xccl_comm *c, int p) {
    if (!c->ranks || p == c->rank) return XCCL_OK;
    return inc_match(c, p, atomic_load_explicit(&c->ranks[p].sinc, memory_order_acquire));
}

int32_t xccl_peer_pid(struct xccl_comm *c, int p) {
    int32_t pid = atomic_load_explicit(&c->ranks[p].pid, memory_order_seq_cst);
    /* a newcomer CASes sinc (new incarnation) before it stores its pid */
    uint64_t w = atomic_load_explicit(&c->ranks[p].sinc, memory_order_seq_cst);
    if (c->peer_inc[p] && xccl_sinc_inc(w) != c->peer_inc[p]) return -1;
    return pid;
}

/* Mark incarnation `w` of p DEAD (only that one: a CAS on the pair). */
static xccl_status peer_dead(struct xccl_comm *c, int p, uint64_t w, int32_t pid, const char *why) {
    xccl_rank_entry *e = &c->ranks[p];
    uint64_t want = xccl_sinc(xccl_sinc_inc(w), XCCL_RANK_ACTIVE);
    atomic_compare_exchange_strong(&e->sinc, &want, xccl_sinc(xccl_sinc_inc(w), XCCL_RANK_DEAD));
    /* wake everyone so that their waits re-check the table at once */
    for (int r = 0; r < c->size; r++)
        if (r != c->rank && r != p) xccl_wake(c, r);
    return xccl_err_peer(XCCL_ERR_PEER, p, "rank %d (pid %d) %s", p, (int)pid, why);
}

void xccl_mark_dead(struct xccl_comm *c, int p) {
    if (!c->ranks || p == c->rank || !c->peer_inc[p]) return;
    uint64_t want = xccl_sinc(c->peer_inc[p], XCCL_RANK_ACTIVE);
    atomic_compare_exchange_strong(&c->ranks[p].sinc, &want, xccl_sinc(c->peer_inc[p], XCCL_RANK_DEAD));
    for (int r = 0; r < c->size; r++)
        if (r != c->rank) xccl_wake(c, r);
}

/* Cheap check: the rank table word only. allow_free: a never-attached
 * peer is "not yet", not an error. */
static xccl_status state_check(struct xccl_comm *c, int p, int allow_free) {
    uint64_t w = atomic_load_explicit(&c->ranks[p].sinc, memory_order_acquire);
    xccl_status s = inc_match(c, p, w);
    if (s) return s;
    uint32_t st = xccl_sinc_state(w);
    switch (st) {
    case XCCL_RANK_ACTIVE: return XCCL_OK;
    case XCCL_RANK_LEFT: return xccl_err_peer(XCCL_ERR_PEER, p, "rank %d left the segment", p);
    case XCCL_RANK_DEAD: return xccl_err_peer(XCCL_ERR_PEER, p, "rank %d died", p);
    case XCCL_RANK_FREE:
    case XCCL_RANK_CLAIMING:
        return allow_free ? XCCL_OK : xccl_err_peer(XCCL_ERR_PEER, p, "rank %d has not attached", p);
    }
    return xccl_err_peer(XCCL_ERR_PEER, p, "rank %d has bad state %u", p, st);
}

static xccl_status full_check(struct xccl_comm *c, int p, int allow_free) {
    if (p == c->rank) return XCCL_OK;
    xccl_status s = state_check(c, p, allow_free);
    if (s) return s;
    xccl_rank_entry *e = &c->ranks[p];
    int32_t pid = atomic_load_explicit(&e->pid, memory_order_seq_cst);
    uint64_t w = atomic_load_explicit(&e->sinc, memory_order_seq_cst);
    if (xccl_sinc_state(w) != XCCL_RANK_ACTIVE) return XCCL_OK;
    if (xccl_sinc_inc(w) != c->peer_inc[p]) return inc_match(c, p, w);
    if (pid <= 0) return XCCL_OK;
    if (c->pidfd_pid[p] != pid) {
        if (c->pidfd[p] >= 0) close(c->pidfd[p]);
        c->pidfd[p] = -1;
        c->pidfd_pid[p] = pid;
        int fd = (int)syscall(SYS_pidfd_open, pid, 0);
        if (fd >= 0) c->pidfd[p] = fd;
        else if (errno == ESRCH) return peer_dead(c, p, w, pid, "is gone");
    }
    if (c->pidfd[p] >= 0) {
        struct pollfd pfd = {.fd = c->pidfd[p], .events = POLLIN};
        if (poll(&pfd, 1, 0) > 0) return peer_dead(c, p, w, pid, "exited or was killed");
    } else if (kill(pid, 0) != 0 && errno == ESRCH) {
        return peer_dead(c, p, w, pid, "is gone");
    }
    uint64_t hb = atomic_load_explicit(&e->heartbeat_ns, memory_order_acquire);
    uint64_t now = xccl_now_ns(), lim = (uint64_t)c->hdr->heartbeat_timeout_ms * 1000000ull;
    if (hb && now > hb && now - hb > lim) {
        int pm = atomic_load_explicit(&e->progress_mode, memory_order_relaxed) != 0;
        return xccl_err_peer(XCCL_ERR_PEER, p, "rank %d (pid %d) is hung: %s %llu ms old", p, (int)pid,
                             pm ? "its loop's last progress is" : "heartbeat",
                             (unsigned long long)((now - hb) / 1000000ull));
    }
    return XCCL_OK;
}

xccl_status xccl_shm_peer_check(struct xccl_comm *c, int peer) {
    if (peer < 0 || peer >= c->size)
        return xccl_err(XCCL_ERR_INVALID, "xccl: peer %d out of range 0..%d", peer, c->size - 1);
    return full_check(c, peer, 0);
}

xccl_status xccl_peer_check(xccl_comm *c, int peer) {
    if (peer < 0 || peer >= c->size)
        return xccl_err(XCCL_ERR_INVALID, "xccl: peer %d out of range 0..%d", peer, c->size - 1);
    return c->ops->peer_check(c, peer);
}

static inline xccl_status cond_status(int r) { return r > 0 ? XCCL_OK : (xccl_status)(-r); }

xccl_status xccl_wait_cond(struct xccl_comm *c, xccl_cond_fn cond, void *arg, const int *peers,
                           int npeers, const char *what) {
    int r = cond(c, arg);
    if (r) return cond_status(r);
    uint64_t start = xccl_now_ns(), now = start;
    /* spin (pause) for up to 4 us, then yield the core until spin_ns (a peer
     * sharing this core gets to run), then sleep on the futex */
    uint64_t pause_ns = c->spin_ns < 4000 ? c->spin_ns : 4000;
    while (now - start < c->spin_ns) {
        if (now - start < pause_ns)
            for (int i = 0; i < 4; i++) xccl_cpu_relax();
        else
            sched_yield();
        r = cond(c, arg);
        if (r) return cond_status(r);
        now = xccl_now_ns();
    }
    uint64_t deadline = start + c->timeout_ns, next_full = 0;
    int shm = c->ops == &xccl_shm_ops;
    for (;;) {
        now = xccl_now_ns();
        int full = now >= next_full;
        if (full && shm) {
            xccl_status s = xccl_self_check(c);
            if (s) {
                xccl_err_prefix("%s", what);
                return s;
            }
            xccl_beat(c); /* a loop waiting inside XCCL is alive: its waits are bounded */
        }
        for (int i = 0; i < npeers; i++) {
            int p = peers[i];
            if (p == c->rank) continue;
            xccl_status s;
            if (shm) s = full ? full_check(c, p, 1) : state_check(c, p, 1);
            else s = full ? c->ops->peer_check(c, p) : XCCL_OK;
            if (s) {
                xccl_err_prefix("%s", what);
                return s;
            }
        }
        if (full) next_full = now + XCCL_LIVENESS_NS;
        if (now >= deadline) {
            int blame = -1;
            for (int i = 0; i < npeers; i++)
                if (peers[i] != c->rank) { blame = peers[i]; break; }
            return xccl_err_peer(XCCL_ERR_TIMEOUT, npeers == 1 ? blame : -1,
                                 "%s: timed out after %llu ms", what,
                                 (unsigned long long)(c->timeout_ns / 1000000ull));
        }
        uint64_t slice = deadline - now < XCCL_SLEEP_NS ? deadline - now : XCCL_SLEEP_NS;
        if (shm) {
            xccl_rank_entry *me = &c->ranks[c->rank];
            uint32_t v = atomic_load_explicit(&me->doorbell, memory_order_seq_cst);
            atomic_fetch_add_explicit(&me->sleepers, 1, memory_order_seq_cst);
            r = cond(c, arg);
            if (!r) futex_wait(&me->doorbell, v, slice);
            atomic_fetch_sub_explicit(&me->sleepers, 1, memory_order_seq_cst);
            if (r) return cond_status(r);
        } else {
            c->ops->sleep(c, slice);
        }
        r = cond(c, arg);
        if (r) return cond_status(r);
    }
}

/* --- heartbeat ----------------------------------------------------------- */

/* The heartbeat thread beats every heartbeat_ms while this incarnation
 * holds the rank. In progress mode it leaves heartbeat_ns to the
 * application's loop (xccl_comm_progress, XCCL's waits), so the beat means
 * "the loop made progress", and a hung loop shows as a stale beat. */
static void *heartbeat_main(void *arg) {
    struct xccl_comm *c = arg;
    xccl_rank_entry *e = &c->ranks[c->rank];
    uint64_t period = (uint64_t)c->hdr->heartbeat_ms * 1000000ull;
    struct timespec ts = {.tv_sec = (time_t)(period / 1000000000ull),
                          .tv_nsec = (long)(period % 1000000000ull)};
    while (!atomic_load_explicit(&c->hb_stop, memory_order_acquire)) {
        uint64_t w = atomic_load_explicit(&e->sinc, memory_order_acquire);
        if (xccl_sinc_inc(w) != c->my_inc) break; /* a later holder owns the entry */
        if (!atomic_load_explicit(&e->progress_mode, memory_order_relaxed))
            atomic_store_explicit(&e->heartbeat_ns, xccl_now_ns(), memory_order_release);
        nanosleep(&ts, NULL);
    }
    return NULL;
}

void xccl_beat(struct xccl_comm *c) {
    if (!c->progress_mode || !c->ranks) return;
    xccl_rank_entry *e = &c->ranks[c->rank];
    if (xccl_sinc_inc(atomic_load_explicit(&e->sinc, memory_order_relaxed)) != c->my_inc) return;
    atomic_store_explicit(&e->heartbeat_ns, xccl_now_ns(), memory_order_release);
}

xccl_status xccl_comm_progress(xccl_comm *c) {
    if (!c || !c->ranks) return XCCL_OK;
    xccl_status s = xccl_self_check(c);
    if (s) return s;
    xccl_beat(c);
    return XCCL_OK;
}

void xccl_comm_set_progress_mode(xccl_comm *c, int on) {
    if (!c || !c->ranks) return;
    xccl_rank_entry *e = &c->ranks[c->rank];
    c->progress_mode = on != 0;
    atomic_store_explicit(&e->heartbeat_ns, xccl_now_ns(), memory_order_release);
    atomic_store_explicit(&e->progress_mode, (uint32_t)c->progress_mode, memory_order_release);
}

xccl_status xccl_heartbeat_start(struct xccl_comm *c) {
    atomic_store(&c->hb_stop, 0);
    int rc = pthread_create(&c->hb_thread, NULL, heartbeat_main, c);
    if (rc) return xccl_err(XCCL_ERR_IO, "xccl: cannot start heartbeat thread: %s", strerror(rc));
    c->hb_started = 1;
    return XCCL_OK;
}

void xccl_heartbeat_stop(struct xccl_comm *c) {
    if (!c->hb_started) return;
    atomic_store_explicit(&c->hb_stop, 1, memory_order_release);
    pthread_join(c->hb_thread, NULL);
    c->hb_started = 0;
}

/* --- buffer reuse -------------------------------------------------------------- */

typedef struct readers_arg {
    const struct xccl_group *g;
    uint64_t mask, seq;
    xccl_ack_ptr ack;
    void *arg;
} readers_arg;

static int readers_cond(struct xccl_comm *c, void *varg) {
    readers_arg *a = varg;
    for (int r = 0; r < c->size; r++) {
        if (r == c->rank || !(a->mask >> r & 1)) continue;
        if (atomic_load_explicit(a->ack(c, r, a->arg), memory_order_acquire) >= a->seq) continue;
        if (xccl_group_index(a->g, r) >= 0) return 0;
        /* a reader outside the current group: dead or gone readers read no more */
        uint64_t w = atomic_load_explicit(&c->ranks[r].sinc, memory_order_acquire);
        uint32_t st = xccl_sinc_state(w);
        if (st == XCCL_RANK_DEAD || st == XCCL_RANK_LEFT) continue;
        if (c->peer_inc[r] && xccl_sinc_inc(w) != c->peer_inc[r]) continue; /* that reader is gone */
        if (full_check(c, r, 0) != XCCL_OK) continue;
        return 0;
    }
    return 1;
}

xccl_status xccl_wait_readers(struct xccl_comm *c, const struct xccl_group *g, uint64_t mask,
                              uint64_t seq, xccl_ack_ptr ack, void *arg, const char *what) {
    if (!seq || !mask) return XCCL_OK;
    int peers[XCCL_MAX_RANKS], np = 0;
    for (int i = 0; i < g->n; i++)
        if (mask >> g->ranks[i] & 1) peers[np++] = g->ranks[i];
    readers_arg a = {g, mask, seq, ack, arg};
    return xccl_wait_cond(c, readers_cond, &a, peers, np, what);
}

uint64_t xccl_group_mask(const struct xccl_group *g) {
    uint64_t m = 0;
    for (int i = 0; i < g->n; i++) m |= 1ull << g->ranks[i];
    return m;
}
