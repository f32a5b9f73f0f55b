/*
 * comm.c — attach to / detach from a segment, the rank table, groups.
 *
 * Attach validates the header before trusting any field, then claims the
 * rank with one CAS of its {incarnation, state} word to {incarnation + 1,
 * CLAIMING} (a rank that is FREE, LEFT, DEAD, or ACTIVE with its process
 * gone: a rejoin); pid, role and a first heartbeat are written before the
 * word becomes {incarnation + 1, ACTIVE} (release). A failed attach unmaps
 * and closes everything and restores the word. Detach marks the rank LEFT
 * (only while this incarnation still holds it) so that peers waiting on it
 * fail at once instead of at their deadline.
 *
 * Groups carry an epoch; the sequence numbers of their collectives and
 * dispatches are (epoch << 40 | counter), so a new group formed by survivors
 * never matches a stale record of an old one. Creating a group ends with a
 * barrier among its members.
 */
#define _GNU_SOURCE
#include "xccl_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

xccl_status xccl_segment_validate(const xccl_seg_header *h, uint64_t file_bytes);

/* Typed, cached accessors of the environment (documented in docs/XCCL.md):
 * XCCL_TIMEOUT_MS (default 10000), XCCL_SPIN_US (default 20), XCCL_RNDV_MIN
 * (default 262144: smallest message sent by rendezvous), XCCL_CMA (default 1:
 * allow process_vm_readv/writev for rendezvous from ordinary memory),
 * XCCL_COOP_CHUNK (default 131072: chunk of a cooperative rendezvous),
 * XCCL_COOP_REGION_LEFT (default 4), XCCL_COOP_PUSH (default 1: the sender
 * helps copy). */
static uint64_t env_u64(const char *name, uint64_t def) {
    const char *v = getenv(name);
    if (!v || !*v) return def;
    char *end;
    unsigned long long x = strtoull(v, &end, 10);
    return *end ? def : (uint64_t)x;
}

void xccl_comm_init_common(struct xccl_comm *c, int rank, int size);
void xccl_comm_init_common(struct xccl_comm *c, int rank, int size) {
    c->rank = rank;
    c->size = size;
    c->fd = -1;
    c->timeout_ns = env_u64("XCCL_TIMEOUT_MS", 10000) * 1000000ull;
    c->spin_ns = env_u64("XCCL_SPIN_US", 20) * 1000ull;
    c->cma_on = env_u64("XCCL_CMA", 1) != 0;
    c->rndv_min = (size_t)env_u64("XCCL_RNDV_MIN", 262144);
    c->coop_chunk = (size_t)env_u64("XCCL_COOP_CHUNK", 131072);
    if (c->coop_chunk < 4096) c->coop_chunk = 4096;
    c->coop_chunk &= ~(size_t)4095;
    c->coop_region_left = (uint32_t)env_u64("XCCL_COOP_REGION_LEFT", 4);
    if (c->coop_region_left < 1) c->coop_region_left = 1;
    c->coop_push = env_u64("XCCL_COOP_PUSH", 1) != 0;
    for (int i = 0; i < XCCL_MAX_RANKS; i++) {
        c->pidfd[i] = -1;
        c->pidfd_pid[i] = 0;
    }
    c->next_region_id = 1;
    c->world.n = size;
    c->world.me = rank;
    c->world.epoch = 0;
    c->world.owned_by_comm = 1;
    for (int i = 0; i < size; i++) c->world.ranks[i] = i;
}

static xccl_status attach_fd_owned(xccl_comm **out, int fd, int rank, uint32_t role, const char *what) {
    xccl_status s;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        s = xccl_err(XCCL_ERR_IO, "xccl attach %s: fstat: %s", what, strerror(errno));
        goto err_close;
    }
    if ((uint64_t)st.st_size < sizeof(xccl_seg_header)) {
        s = xccl_err(XCCL_ERR_CORRUPT, "xccl attach %s: object of %lld bytes is too small for a header",
                     what, (long long)st.st_size);
        goto err_close;
    }
    size_t bytes = (size_t)st.st_size;
    uint8_t *base = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        s = xccl_err(XCCL_ERR_IO, "xccl attach %s: mmap: %s", what, strerror(errno));
        goto err_close;
    }
    xccl_seg_header *h = (xccl_seg_header *)base;
    s = xccl_segment_validate(h, bytes);
    if (s) {
        xccl_err_prefix("%s", what);
        goto err_unmap;
    }
    if (rank < 0 || (uint32_t)rank >= h->num_ranks) {
        s = xccl_err(XCCL_ERR_RANGE, "xccl attach %s: rank %d does not fit: the segment has %u ranks",
                     what, rank, h->num_ranks);
        goto err_unmap;
    }
    struct xccl_comm *c = calloc(1, sizeof *c);
    if (!c) {
        s = xccl_err(XCCL_ERR_NOMEM, "xccl attach: out of memory");
        goto err_unmap;
    }
    xccl_comm_init_common(c, rank, (int)h->num_ranks);
    c->ops = &xccl_shm_ops;
    c->fd = fd;
    c->base = base;
    c->bytes = bytes;
    c->hdr = h;
    c->ranks = (xccl_rank_entry *)(base + h->off_ranks);
    c->meta = (xccl_meta *)(base + h->off_meta);

    /* claim the rank: FREE, LEFT, DEAD, or ACTIVE with a dead pid (nobody
     * noticed yet). A previous holder that still runs (declared dead while
     * hung and not yet killed) keeps it: it could still write into the
     * rings. A zombie (killed, not yet reaped) counts as gone. */
    xccl_rank_entry *e = &c->ranks[rank];
    uint64_t prev;
    uint32_t pst, pinc;
    uint64_t claim_seen = 0;
    int claim_waits = 0;
    for (int tries = 0;; tries++) {
        prev = atomic_load(&e->sinc);
        pst = xccl_sinc_state(prev);
        pinc = xccl_sinc_inc(prev);
        if (pst == XCCL_RANK_CLAIMING) {
            /* another attach claims it -- or one that died mid-claim (killed
             * while starting) left the word CLAIMING for good. A live
             * claimer's pid is stored right after its CAS and it turns the
             * word ACTIVE within microseconds; a claim that stays the same
             * for 50 ms with no live pid is stale and taken over. */
            int32_t cpid = atomic_load(&e->pid);
            if (cpid > 0 && !xccl_pid_gone(cpid) && cpid != (int32_t)getpid()) {
                s = xccl_err(XCCL_ERR_INVALID, "xccl attach %s: rank %d is being claimed concurrently (pid %d)",
                             what, rank, (int)cpid);
                goto err_free;
            }
            if (prev != claim_seen) claim_seen = prev, claim_waits = 0;
            if (claim_waits++ < 50) {
                struct timespec ms = {0, 1000000};
                nanosleep(&ms, NULL);
                tries = 0;
                continue;
            }
            if (atomic_compare_exchange_strong(&e->sinc, &prev, xccl_sinc(pinc + 1, XCCL_RANK_CLAIMING))) break;
            continue;
        }
        if (pst == XCCL_RANK_ACTIVE || pst == XCCL_RANK_DEAD) {
            int32_t pid = atomic_load(&e->pid);
            if (pid > 0 && !xccl_pid_gone(pid)) {
                s = xccl_err(XCCL_ERR_INVALID, "xccl attach %s: rank %d is held by %s pid %d (incarnation %u)%s",
                             what, rank, pst == XCCL_RANK_ACTIVE ? "live" : "the dead-declared but still running",
                             (int)pid, pinc, pst == XCCL_RANK_DEAD ? ": kill it first" : "");
                goto err_free;
            }
        }
        if (pst != XCCL_RANK_CLAIMING &&
            atomic_compare_exchange_strong(&e->sinc, &prev, xccl_sinc(pinc + 1, XCCL_RANK_CLAIMING)))
            break;
        /* the word moved under us: a detector marked the dead holder DEAD
         * (retry), or another attach is claiming the rank (refuse) */
        if (pst == XCCL_RANK_CLAIMING || xccl_sinc_state(prev) == XCCL_RANK_CLAIMING ||
            xccl_sinc_inc(prev) != pinc || tries > 100) {
            s = xccl_err(XCCL_ERR_INVALID, "xccl attach %s: rank %d is being claimed concurrently", what, rank);
            goto err_free;
        }
    }
    c->my_inc = pinc + 1;
    c->peer_inc[rank] = c->my_inc;
    e->role = role;
    atomic_store(&e->pid, (int32_t)getpid());
    atomic_store(&e->heartbeat_ns, xccl_now_ns());
    atomic_store(&e->progress_mode, 0);
    atomic_store(&e->err_seq, 0);
    for (int i = 0; i < XCCL_MAX_REGIONS; i++) atomic_store(&e->regions[i].id, 0);
    s = xccl_heartbeat_start(c);
    if (s) goto err_release;
    atomic_store_explicit(&e->sinc, xccl_sinc(c->my_inc, XCCL_RANK_ACTIVE), memory_order_release);
    for (int r = 0; r < c->size; r++)
        if (r != rank) xccl_wake(c, r);
    *out = c;
    return XCCL_OK;

err_release:
    atomic_store(&e->pid, 0);
    atomic_store(&e->sinc, prev); /* the table as it was, incarnation included */
err_free:
    free(c);
err_unmap:
    munmap(base, bytes);
err_close:
    close(fd);
    return s;
}

xccl_status xccl_comm_attach(xccl_comm **out, const char *name, int rank, uint32_t role) {
    if (!name) return xccl_err(XCCL_ERR_INVALID, "xccl attach: NULL segment name");
    int fd = shm_open(name, O_RDWR, 0);
    if (fd < 0) return xccl_err(XCCL_ERR_IO, "xccl attach: shm_open(%s): %s", name, strerror(errno));
    return attach_fd_owned(out, fd, rank, role, name);
}

xccl_status xccl_comm_attach_fd(xccl_comm **out, int fd, int rank, uint32_t role) {
    int d = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (d < 0) return xccl_err(XCCL_ERR_IO, "xccl attach fd %d: dup: %s", fd, strerror(errno));
    return attach_fd_owned(out, d, rank, role, "fd");
}

void xccl_regions_release(struct xccl_comm *c);

void xccl_comm_detach(xccl_comm *c) {
    if (!c) return;
    if (c->ops && c->ops->close) c->ops->close(c);
    xccl_regions_release(c);
    for (int i = 0; i < XCCL_MAX_RANKS; i++)
        if (c->pidfd[i] >= 0) close(c->pidfd[i]);
    if (c->base) {
        xccl_heartbeat_stop(c);
        xccl_rank_entry *e = &c->ranks[c->rank];
        /* only while the entry is still this incarnation's (ACTIVE, or
         * declared DEAD): a later holder's entry is left alone */
        uint64_t w = atomic_load(&e->sinc);
        if (xccl_sinc_inc(w) == c->my_inc) {
            for (int i = 0; i < XCCL_MAX_REGIONS; i++) atomic_store(&e->regions[i].id, 0);
            if (xccl_sinc_state(w) == XCCL_RANK_ACTIVE || xccl_sinc_state(w) == XCCL_RANK_DEAD)
                atomic_compare_exchange_strong(&e->sinc, &w, xccl_sinc(c->my_inc, XCCL_RANK_LEFT));
            for (int r = 0; r < c->size; r++)
                if (r != c->rank) xccl_wake(c, r);
        }
        munmap(c->base, c->bytes);
    }
    if (c->fd >= 0) close(c->fd);
    free(c->moe_acc);
    free(c->moe_row_ptrs);
    free(c->p2p_rows);
    free(c->p2p_out);
    free(c->p2p_scales);
    free(c->p2p_cnt);
    free(c->p2p_start);
    free(c);
}

int xccl_comm_rank(const xccl_comm *c) { return c->rank; }
int xccl_comm_size(const xccl_comm *c) { return c->size; }
const char *xccl_comm_transport(const xccl_comm *c) { return c->ops->name; }
void xccl_comm_set_timeout(xccl_comm *c, uint32_t ms) { c->timeout_ns = (uint64_t)ms * 1000000ull; }
uint32_t xccl_comm_get_timeout(const xccl_comm *c) { return (uint32_t)(c->timeout_ns / 1000000ull); }
uint32_t xccl_peer_state(const xccl_comm *c, int peer) {
    if (!c || !c->ranks || peer < 0 || peer >= c->size) return XCCL_RANK_FREE;
    uint32_t st = xccl_sinc_state(atomic_load_explicit(&c->ranks[peer].sinc, memory_order_acquire));
    return st == XCCL_RANK_CLAIMING ? XCCL_RANK_FREE : st;
}

/* --- groups -------------------------------------------------------------- */

xccl_group *xccl_comm_world(xccl_comm *c) { return &c->world; }
int xccl_group_size(const xccl_group *g) { return g->n; }
int xccl_group_index(const xccl_group *g, int rank) {
    for (int i = 0; i < g->n; i++)
        if (g->ranks[i] == rank) return i;
    return -1;
}

xccl_status xccl_group_create(xccl_group **out, xccl_comm *c, const int *ranks, int n,
                              uint32_t epoch) {
    if (n < 1 || n > c->size)
        return xccl_err(XCCL_ERR_INVALID, "xccl group: %d members, comm has %d ranks", n, c->size);
    if (epoch <= c->max_epoch || epoch >= (1u << 23))
        return xccl_err(XCCL_ERR_INVALID, "xccl group: epoch %u must exceed %u (and be < 2^23)", epoch,
                        c->max_epoch);
    int me = -1;
    for (int i = 0; i < n; i++) {
        if (ranks[i] < 0 || ranks[i] >= c->size || (i && ranks[i] <= ranks[i - 1]))
            return xccl_err(XCCL_ERR_INVALID, "xccl group: ranks must be ascending in 0..%d (got %d at %d)",
                            c->size - 1, ranks[i], i);
        if (ranks[i] == c->rank) me = i;
    }
    if (me < 0) return xccl_err(XCCL_ERR_INVALID, "xccl group: rank %d is not a member", c->rank);
    struct xccl_group *g = calloc(1, sizeof *g);
    if (!g) return xccl_err(XCCL_ERR_NOMEM, "xccl group: out of memory");
    g->n = n;
    g->me = me;
    g->epoch = epoch;
    memcpy(g->ranks, ranks, (size_t)n * sizeof(int));
    c->max_epoch = epoch;
    xccl_status s = xccl_barrier(c, g);
    if (s) {
        free(g);
        xccl_err_prefix("xccl group epoch %u", epoch);
        return s;
    }
    *out = g;
    return XCCL_OK;
}

void xccl_group_destroy(xccl_group *g) {
    if (g && !g->owned_by_comm) free(g);
}
