/*
 * onesided.c — registered regions and one-sided get/put (shm transport).
 *
 * A region is a shareable fd (memfd or shm) of the owner, listed in the
 * owner's rank entry {id, fd, bytes, gen}; `id` is published last with
 * release, so a reader that sees an id sees the rest. A peer maps the region
 * once by opening /proc/<owner pid>/fd/<fd> and caches the mapping keyed by
 * gen. get/put are one copy between the caller's buffer and the mapping
 * (zero intermediate copies; xccl_copy, copy.h: no glibc `rep movsb` on
 * mutually misaligned buffers, streaming stores for large operations); getv
 * is n such copies after one liveness check and bounds-checking every range.
 * Completion (one per get/put/getv) is then notified to the owner by bumping
 * meta(caller, owner, ONES).prod with release and waking it if it sleeps in
 * xccl_notify_wait (rank entry ones_sleepers; no wake-up for other waits).
 */
#define _GNU_SOURCE
#include "xccl_internal.h"
#include "xccl/copy.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static xccl_status need_shm(xccl_comm *c, const char *op) {
    if (c->ops != &xccl_shm_ops)
        return xccl_err(XCCL_ERR_INVALID, "xccl %s: one-sided access needs the shm transport", op);
    return XCCL_OK;
}

xccl_status xccl_region_register_fd(xccl_region *out, int fd, size_t bytes, void *base, xccl_comm *c) {
    xccl_status s = need_shm(c, "region_register");
    if (s) return s;
    s = xccl_self_check(c);
    if (s) return s;
    if (bytes == 0) return xccl_err(XCCL_ERR_INVALID, "xccl region_register: zero-sized region");
    int slot = -1;
    for (int i = 0; i < XCCL_MAX_REGIONS; i++)
        if (!c->local_regions[i].id) { slot = i; break; }
    if (slot < 0)
        return xccl_err(XCCL_ERR_RANGE, "xccl region_register: all %d region slots in use", XCCL_MAX_REGIONS);
    int d = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (d < 0) return xccl_err(XCCL_ERR_IO, "xccl region_register: dup(%d): %s", fd, strerror(errno));
    off_t sz = lseek(d, 0, SEEK_END);
    if (sz < 0 || (uint64_t)sz < bytes) {
        close(d);
        return xccl_err(XCCL_ERR_RANGE, "xccl region_register: fd holds %lld bytes, %zu requested",
                        (long long)sz, bytes);
    }
    int mapped = 0;
    if (!base) {
        base = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, d, 0);
        if (base == MAP_FAILED) {
            close(d);
            return xccl_err(XCCL_ERR_IO, "xccl region_register: mmap(%zu): %s", bytes, strerror(errno));
        }
        mapped = 1;
    }
    uint32_t id = c->next_region_id++;
    xccl_local_region *lr = &c->local_regions[slot];
    lr->id = id;
    lr->fd = d;
    lr->base = base;
    lr->bytes = bytes;
    lr->mapped_by_us = mapped;
    xccl_region_entry *e = &c->ranks[c->rank].regions[slot];
    e->fd = d;
    e->bytes = bytes;
    e->gen++;
    atomic_store_explicit(&e->id, id, memory_order_release);
    out->id = id;
    out->base = base;
    out->bytes = bytes;
    return XCCL_OK;
}

xccl_status xccl_region_alloc(xccl_region *out, size_t bytes, xccl_comm *c) {
    xccl_status s = need_shm(c, "region_alloc");
    if (s) return s;
    if (bytes == 0) return xccl_err(XCCL_ERR_INVALID, "xccl region_alloc: zero-sized region");
    int fd = memfd_create("xccl-region", MFD_CLOEXEC);
    if (fd < 0) return xccl_err(XCCL_ERR_IO, "xccl region_alloc: memfd_create: %s", strerror(errno));
    if (ftruncate(fd, (off_t)bytes) != 0) {
        close(fd);
        return xccl_err(XCCL_ERR_IO, "xccl region_alloc: ftruncate(%zu): %s", bytes, strerror(errno));
    }
    s = xccl_region_register_fd(out, fd, bytes, NULL, c);
    close(fd);
    return s;
}

/* 1 while this comm's incarnation still owns its rank entry. */
static int own_entry(xccl_comm *c) {
    return c->ranks && xccl_sinc_inc(atomic_load(&c->ranks[c->rank].sinc)) == c->my_inc;
}

void xccl_region_deregister(xccl_comm *c, xccl_region *region) {
    for (int i = 0; i < XCCL_MAX_REGIONS; i++) {
        xccl_local_region *lr = &c->local_regions[i];
        if (!lr->id || lr->id != region->id) continue;
        if (own_entry(c)) atomic_store_explicit(&c->ranks[c->rank].regions[i].id, 0, memory_order_release);
        if (lr->mapped_by_us) munmap(lr->base, lr->bytes);
        close(lr->fd);
        memset(lr, 0, sizeof *lr);
        return;
    }
}

void xccl_regions_release(struct xccl_comm *c) {
    for (int i = 0; i < XCCL_MAX_REGIONS; i++) {
        xccl_local_region *lr = &c->local_regions[i];
        if (!lr->id) continue;
        if (own_entry(c)) atomic_store(&c->ranks[c->rank].regions[i].id, 0);
        if (lr->mapped_by_us) munmap(lr->base, lr->bytes);
        close(lr->fd);
        memset(lr, 0, sizeof *lr);
    }
    for (int p = 0; p < XCCL_MAX_RANKS; p++)
        for (int i = 0; i < XCCL_MAX_REGIONS; i++) {
            xccl_peer_region *pr = &c->peer_regions[p][i];
            if (pr->gen && pr->base) munmap(pr->base, pr->bytes);
            memset(pr, 0, sizeof *pr);
        }
}

void xccl_regions_forget_peer(struct xccl_comm *c, int p) {
    for (int i = 0; i < XCCL_MAX_REGIONS; i++) {
        xccl_peer_region *pr = &c->peer_regions[p][i];
        if (pr->gen && pr->base) munmap(pr->base, pr->bytes);
        memset(pr, 0, sizeof *pr);
    }
}

/* Find (mapping if needed) peer's region id: its mapping and size. */
static xccl_status region_map(uint8_t **base, size_t *size, xccl_comm *c, int peer, uint32_t id,
                              const char *op) {
    xccl_status s = need_shm(c, op);
    if (s) return s;
    if (peer < 0 || peer >= c->size)
        return xccl_err(XCCL_ERR_INVALID, "xccl %s: peer %d out of range 0..%d", op, peer, c->size - 1);
    s = xccl_shm_peer_check(c, peer);
    if (s) {
        xccl_err_prefix("xccl %s", op);
        return s;
    }
    if (peer == c->rank) {
        for (int i = 0; i < XCCL_MAX_REGIONS; i++) {
            xccl_local_region *lr = &c->local_regions[i];
            if (lr->id && lr->id == id) {
                *base = lr->base;
                *size = lr->bytes;
                return XCCL_OK;
            }
        }
        return xccl_err(XCCL_ERR_INVALID, "xccl %s: rank %d has no region %u", op, peer, id);
    }
    xccl_rank_entry *pe = &c->ranks[peer];
    for (int i = 0; i < XCCL_MAX_REGIONS; i++) {
        xccl_region_entry *e = &pe->regions[i];
        if (atomic_load_explicit(&e->id, memory_order_acquire) != id || !id) continue;
        uint64_t gen = e->gen, bytes = e->bytes;
        int fd = e->fd;
        xccl_peer_region *pr = &c->peer_regions[peer][i];
        if (pr->gen != gen || pr->id != id || !pr->base) {
            if (pr->base) munmap(pr->base, pr->bytes);
            memset(pr, 0, sizeof *pr);
            char path[64];
            int32_t pid = xccl_peer_pid(c, peer);
            if (pid <= 0 || atomic_load_explicit(&e->id, memory_order_acquire) != id)
                return xccl_err_peer(XCCL_ERR_PEER, peer, "xccl %s: rank %d restarted or dropped region %u", op,
                                     peer, id);
            snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)pid, fd);
            int d = open(path, O_RDWR | O_CLOEXEC);
            if (d < 0)
                return xccl_err_peer(XCCL_ERR_IO, peer, "xccl %s: open %s (rank %d region %u): %s", op,
                                     path, peer, id, strerror(errno));
            void *b = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, d, 0);
            close(d);
            if (b == MAP_FAILED)
                return xccl_err(XCCL_ERR_IO, "xccl %s: mmap rank %d region %u: %s", op, peer, id,
                                strerror(errno));
            pr->gen = gen;
            pr->id = id;
            pr->base = b;
            pr->bytes = bytes;
        }
        *base = pr->base;
        *size = pr->bytes;
        return XCCL_OK;
    }
    return xccl_err(XCCL_ERR_INVALID, "xccl %s: rank %d has no region %u", op, peer, id);
}

static xccl_status range_check(size_t size, int peer, uint32_t id, size_t offset, size_t len, const char *op) {
    if (offset > size || len > size - offset)
        return xccl_err(XCCL_ERR_RANGE, "xccl %s: [%zu, +%zu) outside rank %d region %u of %zu bytes", op, offset,
                        len, peer, id, size);
    return XCCL_OK;
}

/* Find (mapping if needed) peer's region id; bounds-check [offset, offset+len). */
static xccl_status peer_region(uint8_t **ptr, xccl_comm *c, int peer, uint32_t id, size_t offset,
                               size_t len, const char *op) {
    uint8_t *base;
    size_t size;
    xccl_status s = region_map(&base, &size, c, peer, id, op);
    if (s) return s;
    s = range_check(size, peer, id, offset, len, op);
    if (s) return s;
    *ptr = base + offset;
    return XCCL_OK;
}

xccl_status xccl_region_peer_ptr(uint8_t **ptr, xccl_comm *c, int peer, uint32_t id, size_t offset,
                                 size_t len) {
    return peer_region(ptr, c, peer, id, offset, len, "send (region)");
}

int xccl_region_find_local(uint32_t *id, size_t *offset, xccl_comm *c, const void *p, size_t len) {
    uintptr_t a = (uintptr_t)p;
    for (int i = 0; i < XCCL_MAX_REGIONS; i++) {
        xccl_local_region *lr = &c->local_regions[i];
        uintptr_t b = (uintptr_t)lr->base;
        if (!lr->id || a < b || a - b > lr->bytes || len > lr->bytes - (a - b)) continue;
        *id = lr->id;
        *offset = a - b;
        return 1;
    }
    return 0;
}

/* Bump the completion count; wake the owner only if one of its threads
 * sleeps in xccl_notify_wait (a futex wake of a rank sleeping in some other
 * wait cost a get of 1 MiB ~20% of its time, for nothing). */
static void notify(xccl_comm *c, int peer) {
    atomic_fetch_add_explicit(&xccl_meta_at(c, c->rank, peer, XCCL_CH_ONES)->prod, 1,
                              memory_order_release);
    if (peer == c->rank) return;
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&c->ranks[peer].ones_sleepers, memory_order_relaxed)) xccl_wake(c, peer);
}

xccl_status xccl_put(xccl_comm *c, int peer, uint32_t region_id, size_t offset, const void *src,
                     size_t len) {
    uint8_t *p;
    xccl_status s = peer_region(&p, c, peer, region_id, offset, len, "put");
    if (s) return s;
    xccl_copy(p, src, len, len);
    notify(c, peer);
    return XCCL_OK;
}

xccl_status xccl_get(void *dst, xccl_comm *c, int peer, uint32_t region_id, size_t offset, size_t len) {
    uint8_t *p;
    xccl_status s = peer_region(&p, c, peer, region_id, offset, len, "get");
    if (s) return s;
    xccl_copy(dst, p, len, len);
    notify(c, peer);
    return XCCL_OK;
}

xccl_status xccl_getv(xccl_comm *c, int peer, uint32_t region_id, const xccl_iov *iov, int n) {
    if (n < 0 || (n > 0 && !iov)) return xccl_err(XCCL_ERR_INVALID, "xccl getv: %d ranges", n);
    uint8_t *base;
    size_t size, total = 0;
    xccl_status s = region_map(&base, &size, c, peer, region_id, "getv");
    if (s) return s;
    for (int i = 0; i < n; i++) {
        if (iov[i].offset > size || iov[i].len > size - iov[i].offset)
            return xccl_err(XCCL_ERR_RANGE, "xccl getv: range %d [%zu, +%zu) outside rank %d region %u of %zu bytes",
                            i, iov[i].offset, iov[i].len, peer, region_id, size);
        if (iov[i].len && !iov[i].buf) return xccl_err(XCCL_ERR_INVALID, "xccl getv: range %d has no buffer", i);
        total += iov[i].len;
    }
    for (int i = 0; i < n; i++) xccl_copy(iov[i].buf, base + iov[i].offset, iov[i].len, total);
    notify(c, peer);
    return XCCL_OK;
}

uint64_t xccl_notify_count(xccl_comm *c, int peer) {
    if (c->ops != &xccl_shm_ops || peer < 0 || peer >= c->size) return 0;
    return atomic_load_explicit(&xccl_meta_at(c, peer, c->rank, XCCL_CH_ONES)->prod, memory_order_acquire);
}

typedef struct { int peer; uint64_t count; } notify_arg;
static int notify_cond(struct xccl_comm *c, void *arg) {
    notify_arg *a = arg;
    return xccl_notify_count(c, a->peer) >= a->count;
}

xccl_status xccl_notify_wait(xccl_comm *c, int peer, uint64_t count) {
    xccl_status s = need_shm(c, "notify_wait");
    if (s) return s;
    if (peer < 0 || peer >= c->size)
        return xccl_err(XCCL_ERR_INVALID, "xccl notify_wait: peer %d out of range", peer);
    notify_arg a = {peer, count};
    char what[64];
    snprintf(what, sizeof what, "xccl notify_wait on rank %d", peer);
    /* seq_cst: either notify() sees us here or our condition check sees its count */
    _Atomic uint32_t *ones = &c->ranks[c->rank].ones_sleepers;
    atomic_fetch_add_explicit(ones, 1, memory_order_seq_cst);
    s = xccl_wait_cond(c, notify_cond, &a, &peer, 1, what);
    atomic_fetch_sub_explicit(ones, 1, memory_order_seq_cst);
    return s;
}
