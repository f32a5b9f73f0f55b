/*
 * segment.c — create, validate and map the shared XCCL segment; pass fds.
 *
 * The launcher computes the layout from an xccl_config, creates the backing
 * object (shm_open name or memfd), sizes it, writes the header (checksummed)
 * and the empty rank table, then sets header.ready with release. Attach
 * validates magic, version, checksum, sizes and offsets against the object's
 * real size before trusting any of it. Creation leaves nothing behind on
 * failure (the name is unlinked, the fd closed).
 */
#define _GNU_SOURCE
#include "xccl_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

struct xccl_segment {
    int fd;
    void *base;
    size_t bytes;
    char name[256]; /* "" for memfd */
};

static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

void xccl_config_default(xccl_config *cfg, uint32_t num_ranks) {
    memset(cfg, 0, sizeof *cfg);
    cfg->num_ranks = num_ranks;
    cfg->slot_bytes = 64 * 1024;
    cfg->num_slots = 16;
    cfg->coll_bytes = 1 << 20;
    cfg->heartbeat_ms = 20;
    cfg->heartbeat_timeout_ms = 3000;
}

static uint64_t moe_recv_rows(const xccl_config *c) {
    if (c->moe_max_recv_rows) return c->moe_max_recv_rows;
    return (uint64_t)c->num_ranks * c->moe_max_tokens * c->moe_max_topk;
}

/* Bytes of one MoE send buffer: header, counts [n][L], idx offsets [n], rows
 * [T][H] f32, scales [T], idx [T*k]. */
static uint64_t moe_send_bytes(const xccl_config *c) {
    if (!c->moe_max_tokens) return 0;
    uint64_t n = c->num_ranks, L = c->moe_max_local_experts, T = c->moe_max_tokens;
    uint64_t b = 64 + align_up((n * L + n) * 4, 64);
    b += align_up(T * c->moe_max_hidden * 4, 64);
    b += align_up(T * 4, 64);
    b += align_up(T * c->moe_max_topk * 4, 64);
    return align_up(b, XCCL_PAGE);
}

/* Bytes of one MoE recv buffer: start table [n][L], rows [R][H] f32, scales
 * [R], out [R][H] f32. */
static uint64_t moe_recv_bytes(const xccl_config *c) {
    if (!c->moe_max_tokens) return 0;
    uint64_t n = c->num_ranks, L = c->moe_max_local_experts, R = moe_recv_rows(c);
    uint64_t b = align_up(n * L * 4, 64);
    b += align_up(R * c->moe_max_hidden * 4, 64);
    b += align_up(R * 4, 64);
    b += align_up(R * c->moe_max_hidden * 4, 64);
    return align_up(b, XCCL_PAGE);
}

static xccl_status config_check(const xccl_config *c) {
    if (c->num_ranks < 1 || c->num_ranks > XCCL_MAX_RANKS)
        return xccl_err(XCCL_ERR_INVALID, "xccl config: num_ranks %u not in 1..%d", c->num_ranks,
                        XCCL_MAX_RANKS);
    if (c->slot_bytes < 128 || c->slot_bytes % 64 || c->slot_bytes > (1u << 30))
        return xccl_err(XCCL_ERR_INVALID, "xccl config: slot_bytes %u must be a multiple of 64, >= 128",
                        c->slot_bytes);
    if (c->num_slots < 2 || (c->num_slots & (c->num_slots - 1)) || c->num_slots > 65536)
        return xccl_err(XCCL_ERR_INVALID, "xccl config: num_slots %u must be a power of two >= 2",
                        c->num_slots);
    if (c->coll_bytes < 4096 || c->coll_bytes % 64)
        return xccl_err(XCCL_ERR_INVALID, "xccl config: coll_bytes %u must be a multiple of 64, >= 4096",
                        c->coll_bytes);
    if (c->moe_max_tokens) {
        if (!c->moe_max_hidden || !c->moe_max_topk || !c->moe_max_local_experts ||
            c->moe_max_local_experts > 256 || c->moe_max_tokens > (1u << 20) ||
            c->moe_max_hidden > (1u << 20) || c->moe_max_topk > 64)
            return xccl_err(XCCL_ERR_INVALID,
                            "xccl config: MoE area needs hidden, topk (<=64), local experts (1..256)");
    }
    return XCCL_OK;
}

typedef struct layout {
    uint64_t off_ranks, off_meta, off_rings, off_coll, off_moe_send, off_moe_recv, total;
    uint64_t send_buf, recv_buf;
} layout;

static void layout_compute(layout *l, const xccl_config *c) {
    uint64_t n = c->num_ranks;
    l->off_ranks = XCCL_PAGE;
    l->off_meta = align_up(l->off_ranks + n * sizeof(xccl_rank_entry), XCCL_PAGE);
    l->off_rings = align_up(l->off_meta + n * n * XCCL_NCHAN * sizeof(xccl_meta), XCCL_PAGE);
    l->off_coll = align_up(l->off_rings + n * n * (uint64_t)c->num_slots * c->slot_bytes, XCCL_PAGE);
    l->off_moe_send = align_up(l->off_coll + n * 2 * (uint64_t)c->coll_bytes, XCCL_PAGE);
    l->send_buf = moe_send_bytes(c);
    l->recv_buf = moe_recv_bytes(c);
    l->off_moe_recv = l->off_moe_send + n * 2 * l->send_buf;
    l->total = l->off_moe_recv + n * 2 * l->recv_buf;
}

uint64_t xccl_config_segment_bytes(const xccl_config *cfg) {
    if (config_check(cfg) != XCCL_OK) return 0;
    layout l;
    layout_compute(&l, cfg);
    return l.total;
}

xccl_status xccl_segment_create(xccl_segment **out, const char *name, const xccl_config *cfg) {
    xccl_status s = config_check(cfg);
    if (s) return s;
    layout l;
    layout_compute(&l, cfg);
    uint64_t total = l.total;
    if (cfg->segment_bytes) {
        if (cfg->segment_bytes < l.total)
            return xccl_err(XCCL_ERR_RANGE,
                            "xccl segment: %u ranks need %llu bytes, the segment has %llu",
                            cfg->num_ranks, (unsigned long long)l.total,
                            (unsigned long long)cfg->segment_bytes);
        total = cfg->segment_bytes;
    }
    if (name && (name[0] != '/' || strlen(name) >= 255 || strchr(name + 1, '/')))
        return xccl_err(XCCL_ERR_INVALID, "xccl segment: bad shm name '%s' (want /name)", name);
    xccl_segment *seg = calloc(1, sizeof *seg);
    if (!seg) return xccl_err(XCCL_ERR_NOMEM, "xccl segment: out of memory");
    int fd;
    if (name) {
        fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
        if (fd < 0) {
            s = xccl_err(XCCL_ERR_IO, "xccl segment: shm_open(%s): %s", name, strerror(errno));
            goto err_free;
        }
        snprintf(seg->name, sizeof seg->name, "%s", name);
    } else {
        fd = memfd_create("xccl-segment", MFD_CLOEXEC);
        if (fd < 0) {
            s = xccl_err(XCCL_ERR_IO, "xccl segment: memfd_create: %s", strerror(errno));
            goto err_free;
        }
    }
    if (ftruncate(fd, (off_t)total) != 0) {
        s = xccl_err(XCCL_ERR_IO, "xccl segment: ftruncate(%llu): %s", (unsigned long long)total,
                     strerror(errno));
        goto err_close;
    }
    void *base = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        s = xccl_err(XCCL_ERR_IO, "xccl segment: mmap(%llu): %s", (unsigned long long)total,
                     strerror(errno));
        goto err_close;
    }
    /* The object is fresh (zero-filled): only the header needs writing. */
    xccl_seg_header *h = base;
    h->magic = XCCL_MAGIC;
    h->version = XCCL_VERSION;
    h->header_bytes = sizeof *h;
    h->total_bytes = total;
    h->num_ranks = cfg->num_ranks;
    h->slot_bytes = cfg->slot_bytes;
    h->num_slots = cfg->num_slots;
    h->coll_bytes = cfg->coll_bytes;
    h->moe_max_tokens = cfg->moe_max_tokens;
    h->moe_max_hidden = cfg->moe_max_hidden;
    h->moe_max_topk = cfg->moe_max_topk;
    h->moe_max_local_experts = cfg->moe_max_local_experts;
    h->moe_max_recv_rows = cfg->moe_max_tokens ? (uint32_t)moe_recv_rows(cfg) : 0;
    h->heartbeat_ms = cfg->heartbeat_ms ? cfg->heartbeat_ms : 20;
    h->heartbeat_timeout_ms = cfg->heartbeat_timeout_ms ? cfg->heartbeat_timeout_ms : 3000;
    h->off_ranks = l.off_ranks;
    h->off_meta = l.off_meta;
    h->off_rings = l.off_rings;
    h->off_coll = l.off_coll;
    h->off_moe_send = l.off_moe_send;
    h->off_moe_recv = l.off_moe_recv;
    h->moe_send_buf_bytes = l.send_buf;
    h->moe_recv_buf_bytes = l.recv_buf;
    h->checksum = xccl_fnv1a(h, offsetof(xccl_seg_header, checksum));
    atomic_store_explicit(&h->ready, 1, memory_order_release);
    seg->fd = fd;
    seg->base = base;
    seg->bytes = total;
    *out = seg;
    return XCCL_OK;

err_close:
    close(fd);
    if (name) shm_unlink(name);
err_free:
    free(seg);
    return s;
}

int xccl_segment_fd(const xccl_segment *seg) { return seg->fd; }

void xccl_segment_destroy(xccl_segment *seg) {
    if (!seg) return;
    munmap(seg->base, seg->bytes);
    close(seg->fd);
    if (seg->name[0]) shm_unlink(seg->name);
    free(seg);
}

/* Validate a mapped header against the object size; used by attach. */
xccl_status xccl_segment_validate(const xccl_seg_header *h, uint64_t file_bytes);
xccl_status xccl_segment_validate(const xccl_seg_header *h, uint64_t file_bytes) {
    if (h->magic != XCCL_MAGIC)
        return xccl_err(XCCL_ERR_CORRUPT, "xccl attach: not an xccl segment (magic %016llx)",
                        (unsigned long long)h->magic);
    if (h->version != XCCL_VERSION)
        return xccl_err(XCCL_ERR_VERSION,
                        "xccl attach: segment layout version %u.%u, this library is %u.%u",
                        h->version >> 16, h->version & 0xffff, XCCL_VERSION_MAJOR,
                        XCCL_VERSION_MINOR);
    if (!atomic_load_explicit(&h->ready, memory_order_acquire))
        return xccl_err(XCCL_ERR_CORRUPT, "xccl attach: segment not initialised (ready flag unset)");
    if (h->checksum != xccl_fnv1a(h, offsetof(xccl_seg_header, checksum)))
        return xccl_err(XCCL_ERR_CORRUPT, "xccl attach: header checksum mismatch (corrupt header)");
    if (h->header_bytes != sizeof *h || h->total_bytes > file_bytes)
        return xccl_err(XCCL_ERR_CORRUPT,
                        "xccl attach: header says %llu bytes, object has %llu",
                        (unsigned long long)h->total_bytes, (unsigned long long)file_bytes);
    xccl_config c = {0};
    c.num_ranks = h->num_ranks;
    c.slot_bytes = h->slot_bytes;
    c.num_slots = h->num_slots;
    c.coll_bytes = h->coll_bytes;
    c.moe_max_tokens = h->moe_max_tokens;
    c.moe_max_hidden = h->moe_max_hidden;
    c.moe_max_topk = h->moe_max_topk;
    c.moe_max_local_experts = h->moe_max_local_experts;
    c.moe_max_recv_rows = h->moe_max_recv_rows;
    xccl_status s = config_check(&c);
    if (s) {
        xccl_err_prefix("xccl attach: corrupt header");
        return XCCL_ERR_CORRUPT;
    }
    layout l;
    layout_compute(&l, &c);
    if (l.off_ranks != h->off_ranks || l.off_meta != h->off_meta || l.off_rings != h->off_rings ||
        l.off_coll != h->off_coll || l.off_moe_send != h->off_moe_send ||
        l.off_moe_recv != h->off_moe_recv || l.send_buf != h->moe_send_buf_bytes ||
        l.recv_buf != h->moe_recv_buf_bytes || l.total > h->total_bytes)
        return xccl_err(XCCL_ERR_CORRUPT, "xccl attach: header area offsets inconsistent");
    return XCCL_OK;
}

xccl_status xccl_fd_send(int sock, int fd) {
    char byte = 'x';
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    memset(&u, 0, sizeof u);
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                         .msg_controllen = sizeof u.buf};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &fd, sizeof fd);
    ssize_t r;
    do r = sendmsg(sock, &msg, MSG_NOSIGNAL);
    while (r < 0 && errno == EINTR);
    if (r != 1) return xccl_err(XCCL_ERR_IO, "xccl fd_send: sendmsg: %s", strerror(errno));
    return XCCL_OK;
}

xccl_status xccl_fd_recv(int sock, int *fd_out) {
    char byte;
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                         .msg_controllen = sizeof u.buf};
    ssize_t r;
    do r = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    while (r < 0 && errno == EINTR);
    if (r != 1) return xccl_err(XCCL_ERR_IO, "xccl fd_recv: recvmsg: %s", r < 0 ? strerror(errno) : "peer closed");
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    if (!cm || cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS ||
        cm->cmsg_len != CMSG_LEN(sizeof(int)))
        return xccl_err(XCCL_ERR_IO, "xccl fd_recv: message carried no fd");
    int fd;
    memcpy(&fd, CMSG_DATA(cm), sizeof fd);
    *fd_out = fd;
    return XCCL_OK;
}

/* --- supervisor view of the rank table ------------------------------------ */

static xccl_rank_entry *seg_rank(const xccl_segment *seg, int rank) {
    const xccl_seg_header *h = seg->base;
    if (rank < 0 || (uint32_t)rank >= h->num_ranks) return NULL;
    return (xccl_rank_entry *)((uint8_t *)seg->base + h->off_ranks) + rank;
}

xccl_status xccl_segment_rank_info(const xccl_segment *seg, int rank, xccl_rank_info *out) {
    xccl_rank_entry *e = seg ? seg_rank(seg, rank) : NULL;
    if (!e || !out) return xccl_err(XCCL_ERR_INVALID, "xccl rank_info: rank %d out of range", rank);
    xccl_rank_info r = {0};
    int32_t pid = atomic_load(&e->pid);
    uint64_t w = atomic_load(&e->sinc), hb = atomic_load(&e->heartbeat_ns), now = xccl_now_ns();
    r.state = xccl_sinc_state(w);
    if (r.state == XCCL_RANK_CLAIMING) r.state = XCCL_RANK_FREE; /* an attach under way: not up yet */
    r.incarnation = xccl_sinc_inc(w);
    r.role = e->role;
    r.pid = pid;
    r.progress_mode = (int)atomic_load(&e->progress_mode);
    r.heartbeat_age_ms = hb && now > hb ? (now - hb) / 1000000ull : 0;
    const xccl_seg_header *h = seg->base;
    r.hung = r.state == XCCL_RANK_ACTIVE && r.heartbeat_age_ms > h->heartbeat_timeout_ms;
    r.pid_gone = (r.state == XCCL_RANK_ACTIVE || r.state == XCCL_RANK_DEAD) && xccl_pid_gone(pid);
    *out = r;
    return XCCL_OK;
}

xccl_status xccl_segment_declare_dead(xccl_segment *seg, int rank, uint32_t incarnation) {
    xccl_rank_entry *e = seg ? seg_rank(seg, rank) : NULL;
    if (!e) return xccl_err(XCCL_ERR_INVALID, "xccl declare_dead: rank %d out of range", rank);
    uint64_t w = atomic_load(&e->sinc);
    if (!incarnation) incarnation = xccl_sinc_inc(w);
    if (xccl_sinc_inc(w) != incarnation || xccl_sinc_state(w) != XCCL_RANK_ACTIVE)
        return xccl_err_peer(XCCL_ERR_PEER, rank,
                             "xccl declare_dead: rank %d incarnation %u does not hold it (incarnation %u, state %u)",
                             rank, incarnation, xccl_sinc_inc(w), xccl_sinc_state(w));
    if (!atomic_compare_exchange_strong(&e->sinc, &w, xccl_sinc(incarnation, XCCL_RANK_DEAD)))
        return xccl_err_peer(XCCL_ERR_PEER, rank, "xccl declare_dead: rank %d changed state meanwhile", rank);
    const xccl_seg_header *h = seg->base;
    for (uint32_t r = 0; r < h->num_ranks; r++) xccl_wake_entry(seg_rank(seg, (int)r));
    return XCCL_OK;
}
