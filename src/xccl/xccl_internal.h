/*
 * xccl_internal.h — shared-memory layouts and the private comm struct of XCCL.
 *
 * Every struct that lives in the shared segment is declared here, has a fixed
 * size checked by static_assert, and uses only fixed-width fields; the whole
 * layout is covered by XCCL_VERSION (stored in the segment header). Fields
 * written by one process and read by another are C11 atomics; a producer
 * publishes with release ordering and the consumer reads with acquire.
 * Producer and consumer indices of a FIFO sit on different cache lines.
 *
 * Segment = [header 4 KiB][rank table n x 1 KiB][metadata n*n*5 x 128 B]
 *           [rings n*n x slots x slot_bytes][collective n x 2 x coll_bytes]
 *           [MoE send n x 2 x send_buf][MoE recv n x 2 x recv_buf]
 * (each area 4 KiB aligned; offsets stored in the header).
 */
#ifndef XCCL_INTERNAL_H
#define XCCL_INTERNAL_H

#include "xccl.h"

#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#define XCCL_MAGIC    0x0047455343434358ull /* "XCCSEG\0" little-endian-ish tag */
#define XCCL_CACHE    64
#define XCCL_NCHAN    5
#define XCCL_CH_P2P   0 /* prod: ring tail (slots written); cons: ring head (slots read) */
#define XCCL_CH_ONES  1 /* prod: one-sided ops src completed on dst's regions */
#define XCCL_CH_DISP  2 /* prod: dispatch event published by src for dst; cons: dst acked it */
#define XCCL_CH_COMB  3 /* prod: combine event published by src (expert rank); cons: dst acked */
/* cooperative rendezvous src->dst (shm.c): prod = claim word {tag, back, front}
 * (claimed by both with CAS), prod_aux[0] = sender's failed chunk {tag, i+1},
 * prod_aux[1] = rendezvous number the sender abandoned; cons = done word
 * {tag, chunks copied} (fetch-add by both) */
#define XCCL_CH_COOP  4
#define XCCL_PAGE     4096
#define XCCL_SLOT_HDR 64
/* rank state while an attach is claiming it (after XCCL_RANK_DEAD) */
#define XCCL_RANK_CLAIMING 4
static inline uint32_t xccl_sinc_state(uint64_t w) { return (uint32_t)w; }
static inline uint32_t xccl_sinc_inc(uint64_t w) { return (uint32_t)(w >> 32); }
static inline uint64_t xccl_sinc(uint32_t inc, uint32_t state) { return (uint64_t)inc << 32 | state; }

/* Segment header: 4096 B at offset 0. Everything up to `checksum` is covered
 * by an FNV-1a-64 checksum; `ready` is set (release) after full init. */
typedef struct xccl_seg_header {
    uint64_t magic;        /* XCCL_MAGIC */
    uint32_t version;      /* XCCL_VERSION */
    uint32_t header_bytes; /* sizeof(xccl_seg_header) */
    uint64_t total_bytes;  /* segment size */
    uint32_t num_ranks, slot_bytes, num_slots, coll_bytes;
    uint32_t moe_max_tokens, moe_max_hidden, moe_max_topk, moe_max_local_experts;
    uint32_t moe_max_recv_rows, heartbeat_ms, heartbeat_timeout_ms, pad0;
    uint64_t off_ranks, off_meta, off_rings, off_coll, off_moe_send, off_moe_recv;
    uint64_t moe_send_buf_bytes, moe_recv_buf_bytes; /* one buffer (of 2) per rank */
    uint64_t checksum;                               /* FNV-1a-64 of the bytes before it */
    _Atomic uint32_t ready;                          /* 1 once initialised */
    uint32_t pad1;
    uint8_t pad[XCCL_PAGE - 152];
} xccl_seg_header;
static_assert(sizeof(xccl_seg_header) == XCCL_PAGE, "segment header is one page");

/* A registered region as peers see it (in the owner's rank entry). */
typedef struct xccl_region_entry {
    _Atomic uint32_t id; /* 0 = free slot, else region id (published last) */
    int32_t fd;          /* fd number in the owner process (peers open /proc/pid/fd/N) */
    uint64_t bytes;      /* region size */
    uint64_t gen;        /* bumps on every (re)registration of the slot */
    uint64_t pad;
} xccl_region_entry;
static_assert(sizeof(xccl_region_entry) == 32, "region entry layout");

/* Rank table entry: 1 KiB per rank. Line 0 is written by the owner only
 * (except `sinc`, which detectors and supervisors CAS to DEAD); line 1
 * (doorbell) by anyone who wants to wake the owner.
 *
 * `sinc` = incarnation << 32 | state: the incarnation bumps on every attach
 * (1 = the rank's first holder), so a transition (ACTIVE -> DEAD by a
 * detector, DEAD -> CLAIMING by a newcomer) is one CAS on the pair and can
 * never hit a later holder of the rank by mistake. */
typedef struct xccl_rank_entry {
    _Atomic uint64_t sinc;         /* XCCL_RANK_* (low 32 bits) | incarnation << 32 */
    uint32_t role;                 /* application-defined */
    _Atomic int32_t pid;           /* owner pid while ACTIVE */
    _Atomic uint64_t heartbeat_ns; /* CLOCK_MONOTONIC of the last beat */
    _Atomic uint64_t coll_pub;     /* collective seq whose input is in my area */
    _Atomic uint64_t coll_red;     /* collective seq whose reduced chunk is in my area */
    _Atomic uint64_t coll_done;    /* collective seq I finished reading */
    _Atomic uint64_t err_seq;      /* group op seq this rank failed (peers fail fast) */
    _Atomic uint32_t progress_mode; /* 1: heartbeat_ns = the application loop's last progress */
    uint32_t pad0;
    _Alignas(XCCL_CACHE) _Atomic uint32_t doorbell; /* futex word: bumped to wake owner */
    _Atomic uint32_t sleepers;                      /* owner threads in futex_wait */
    _Atomic uint32_t ones_sleepers; /* owner threads in xccl_notify_wait (get/put wake only those) */
    uint8_t pad1[XCCL_CACHE - 12];
    xccl_region_entry regions[XCCL_MAX_REGIONS]; /* 512 B */
    uint8_t pad2[1024 - 128 - 32 * XCCL_MAX_REGIONS];
} xccl_rank_entry;
static_assert(sizeof(xccl_rank_entry) == 1024, "rank entry is 1 KiB");
static_assert(offsetof(xccl_rank_entry, progress_mode) == 56, "line 0 of the rank entry is 64 bytes");
static_assert(offsetof(xccl_rank_entry, doorbell) == 64, "doorbell on its own line");

/* Metadata record per (src, dst, channel): producer line / consumer line. */
typedef struct xccl_meta {
    _Alignas(XCCL_CACHE) _Atomic uint64_t prod; /* written by src */
    uint64_t prod_aux[7];                       /* chunk id / offsets for prod */
    _Alignas(XCCL_CACHE) _Atomic uint64_t cons; /* written by dst */
    uint64_t cons_aux[7];
} xccl_meta;
static_assert(sizeof(xccl_meta) == 128, "meta record is two cache lines");

/* Header of one ring slot (payload follows, slot_bytes - 64 bytes). */
typedef struct xccl_slot_hdr {
    uint64_t msg_len;   /* total message length */
    uint64_t offset;    /* offset of this chunk in the message */
    uint32_t chunk_len; /* bytes of payload in this slot */
    uint32_t flags;     /* bit0: first chunk */
    uint64_t msg_seq;   /* per-pair message number */
    uint32_t src_inc;   /* sender's incarnation */
    uint32_t dst_inc;   /* receiver incarnation the sender addressed (0: none known yet) */
    uint8_t pad[24];
} xccl_slot_hdr;
static_assert(sizeof(xccl_slot_hdr) == XCCL_SLOT_HDR, "slot header is one line");

/* Header of a MoE send buffer (one per rank and buffer), followed by
 * counts [n][L] int32, idx offsets [n] int32, then rows / scales / idx. */
typedef struct xccl_moe_send_hdr {
    uint64_t event;   /* event the buffer holds */
    int32_t dtype;    /* xccl_dtype of the rows (I8 when quantized) */
    int32_t in_dtype; /* input dtype (F32/BF16) */
    int32_t hidden;   /* H */
    int32_t tokens;   /* T */
    int32_t members;  /* n */
    int32_t local;    /* L */
    uint8_t pad[32];
} xccl_moe_send_hdr;
static_assert(sizeof(xccl_moe_send_hdr) == 64, "moe send header layout");

/* --- private structs ---------------------------------------------------- */

struct xccl_group {
    int n;                    /* members */
    int me;                   /* my index */
    uint32_t epoch;           /* group epoch (seq high bits) */
    int owned_by_comm;        /* world group */
    uint64_t coll_counter;    /* collectives issued */
    uint64_t moe_counter;     /* dispatches issued */
    int ranks[XCCL_MAX_RANKS]; /* member ranks, ascending */
};

struct xccl_moe_handle {
    int active;          /* between dispatch and combine */
    uint64_t event;      /* dispatch event */
    int buf;             /* 0/1 */
    const xccl_moe_layout *layout;
    int hidden;
    xccl_dtype in_dtype;
    int num_rows_total;  /* rows this rank received */
    int L;
    int group_epoch;     /* epoch of the group it ran on */
    int in_place;        /* DISP acks deferred to combine */
    int me;              /* my member index */
    int slot_rows[256];  /* per local expert rows (L <= 256) */
    int slot_base[256];  /* per local expert first row */
};

typedef struct xccl_peer_region {
    uint64_t gen;  /* entry gen this mapping is for (0 = none) */
    uint32_t id;
    void *base;
    size_t bytes;
} xccl_peer_region;

typedef struct xccl_local_region {
    uint32_t id;
    int fd;
    void *base;
    size_t bytes;
    int mapped_by_us;
} xccl_local_region;

struct xccl_comm;
typedef struct xccl_transport_ops {
    const char *name;
    /* Move as much of req as possible now; *done = 1 when finished. */
    xccl_status (*send_progress)(struct xccl_comm *c, xccl_request *req, int *done);
    xccl_status (*recv_progress)(struct xccl_comm *c, xccl_request *req, int *done);
    /* Sleep until something from a peer may have arrived, at most timeout_ns. */
    void (*sleep)(struct xccl_comm *c, uint64_t timeout_ns);
    /* XCCL_OK if peer is alive. */
    xccl_status (*peer_check)(struct xccl_comm *c, int peer);
    void (*close)(struct xccl_comm *c);
    /* A queued request that had started is being dropped (deadline, peer
     * death, cancel): make sure the peer stops touching its buffer. May be NULL. */
    void (*abort)(struct xccl_comm *c, xccl_request *req);
} xccl_transport_ops;

extern const xccl_transport_ops xccl_shm_ops;
extern const xccl_transport_ops xccl_tcp_ops;

typedef struct xccl_tcp_peer {
    int fd;
    int broken;
    /* receive side: header of the current message once read */
    int have_hdr;
    uint64_t msg_len;
    uint8_t hdr_buf[8];
    int hdr_got;
    uint64_t body_got;
    /* send side */
    uint8_t shdr[8];
    int shdr_sent;
} xccl_tcp_peer;

struct xccl_comm {
    const xccl_transport_ops *ops;
    int rank, size;
    uint64_t timeout_ns;
    uint64_t spin_ns;
    /* shm */
    int fd;
    uint8_t *base;
    size_t bytes;
    xccl_seg_header *hdr;
    xccl_rank_entry *ranks;
    xccl_meta *meta;
    int pidfd[XCCL_MAX_RANKS];
    int32_t pidfd_pid[XCCL_MAX_RANKS];
    pthread_t hb_thread;
    _Atomic int hb_stop;
    int hb_started;
    /* p2p */
    xccl_request *sq_head[XCCL_MAX_RANKS], *sq_tail[XCCL_MAX_RANKS];
    xccl_request *rq_head[XCCL_MAX_RANKS], *rq_tail[XCCL_MAX_RANKS];
    uint64_t send_seq[XCCL_MAX_RANKS];
    int pair_broken[XCCL_MAX_RANKS];
    /* incarnations: mine, and the one of each peer this comm talks to (0:
     * none seen yet; adopted at first contact, replaced by xccl_peer_reset) */
    uint32_t my_inc;
    uint32_t peer_inc[XCCL_MAX_RANKS];
    int progress_mode;                  /* xccl_comm_set_progress_mode */
    uint64_t coop_seq[XCCL_MAX_RANKS];  /* rendezvous number (ring position + 1) of the open one from peer */
    int cma_off[XCCL_MAX_RANKS];        /* peer could not read us: ring only */
    size_t rndv_min;                    /* rendezvous threshold (bytes) */
    int cma_on;                         /* process_vm_readv/writev allowed */
    size_t coop_chunk;                  /* cooperative rendezvous chunk (bytes) */
    uint32_t coop_region_left;          /* sender helps a region rendezvous only while this many chunks are unclaimed */
    int coop_push;                      /* 0: the sender never helps (receiver copies alone) */
    int push_off[XCCL_MAX_RANKS];       /* process_vm_writev to peer failed: never help it again */
    /* receive side of the open cooperative rendezvous from each peer */
    uint64_t coop_src[XCCL_MAX_RANKS];  /* local pointer (region) or sender address (CMA) */
    int coop_region[XCCL_MAX_RANKS];    /* 1: coop_src points into our mapping of the sender's region */
    size_t coop_rchunk[XCCL_MAX_RANKS]; /* its chunk size (bytes) */
    xccl_p2p_stats p2p_stats;           /* xccl_p2p_stats_get */
    /* regions */
    xccl_local_region local_regions[XCCL_MAX_REGIONS];
    uint32_t next_region_id;
    xccl_peer_region peer_regions[XCCL_MAX_RANKS][XCCL_MAX_REGIONS];
    /* groups */
    struct xccl_group world;
    uint32_t max_epoch;
    /* moe */
    struct xccl_moe_handle moe;
    int moe_parity;             /* send/recv buffer the next dispatch uses */
    uint64_t moe_send_event[2]; /* event last written into my send buffer b */
    uint64_t moe_send_mask[2];  /* ranks that read it */
    uint64_t moe_recv_event[2]; /* event last written into my recv buffer b */
    uint64_t moe_recv_mask[2];
    /* collectives: per buffer, the last seq written and the ranks reading it */
    uint64_t coll_buf_seq[2], coll_buf_mask[2];
    float *moe_acc;             /* [max_hidden] combine accumulator */
    const void **moe_row_ptrs;  /* [max_recv_rows] row pointers handed out by dispatch */
    /* tcp */
    xccl_tcp_peer *tcp;
    /* MoE over p2p (non-shm transports): comm-owned buffers of the open dispatch */
    uint8_t *p2p_rows, *p2p_out;        /* [total][rb], [total][ob] */
    float *p2p_scales;                  /* [total] */
    int32_t *p2p_cnt;                   /* [n][L] rows received from member s for slot j */
    int32_t *p2p_start;                 /* [n][L] first row of (s, j) */
};

/* --- internal helpers ---------------------------------------------------- */

xccl_status xccl_err(xccl_status s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
xccl_status xccl_err_peer(xccl_status s, int rank, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void xccl_err_prefix(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

uint64_t xccl_now_ns(void);
uint64_t xccl_fnv1a(const void *p, size_t n);

static inline xccl_meta *xccl_meta_at(struct xccl_comm *c, int src, int dst, int ch) {
    return &c->meta[((size_t)src * c->size + dst) * XCCL_NCHAN + ch];
}
static inline uint8_t *xccl_ring_at(struct xccl_comm *c, int src, int dst) {
    return c->base + c->hdr->off_rings +
           ((size_t)src * c->size + dst) * c->hdr->num_slots * (size_t)c->hdr->slot_bytes;
}
static inline uint8_t *xccl_coll_at(struct xccl_comm *c, int rank, int buf) {
    return c->base + c->hdr->off_coll + ((size_t)rank * 2 + buf) * c->hdr->coll_bytes;
}
static inline uint8_t *xccl_moe_send_at(struct xccl_comm *c, int rank, int buf) {
    return c->base + c->hdr->off_moe_send + ((size_t)rank * 2 + buf) * c->hdr->moe_send_buf_bytes;
}
static inline uint8_t *xccl_moe_recv_at(struct xccl_comm *c, int rank, int buf) {
    return c->base + c->hdr->off_moe_recv + ((size_t)rank * 2 + buf) * c->hdr->moe_recv_buf_bytes;
}
static inline uint64_t xccl_seq(uint32_t epoch, uint64_t counter) {
    return ((uint64_t)epoch << 40) | counter;
}

/* Wake rank r if it sleeps (call after publishing with release). */
void xccl_wake(struct xccl_comm *c, int r);
/* The same on a rank entry (segment-side callers without a comm). */
void xccl_wake_entry(xccl_rank_entry *e);

/* Incarnations (wait.c). xccl_inc_check: XCCL_OK if peer p is still the
 * incarnation this comm accepted (adopting the current one if none was
 * accepted yet), else XCCL_ERR_PEER "restarted" naming it. xccl_self_check:
 * XCCL_ERR_PEER if this rank was declared dead or taken over by a later
 * incarnation (the process must stop using the comm). xccl_peer_pid: pid
 * of p's accepted incarnation, or -1 if p has moved on (read before the
 * incarnation check, so a pid of a later holder is never returned). */
xccl_status xccl_inc_check(struct xccl_comm *c, int p);
xccl_status xccl_self_check(struct xccl_comm *c);
int32_t xccl_peer_pid(struct xccl_comm *c, int p);
/* Mark the incarnation of p this comm talks to DEAD (a kernel copy into
 * or out of it failed with ESRCH: its memory is gone even if its pid is
 * still being torn down) and wake everyone. */
void xccl_mark_dead(struct xccl_comm *c, int p);
/* 1 if pid no longer runs (gone, or a zombie). */
int xccl_pid_gone(int32_t pid);
/* Progress mode: publish "the loop is alive" now (xccl_comm_progress and
 * XCCL's own waits). */
void xccl_beat(struct xccl_comm *c);
/* Unmap this comm's mappings of peer p's regions (onesided.c). */
void xccl_regions_forget_peer(struct xccl_comm *c, int p);
void xccl_wake_group(struct xccl_comm *c, const struct xccl_group *g);

/* Condition for xccl_wait_cond: returns 1 when satisfied, 0 not yet, or a
 * negative value after recording an error (status = -ret). */
typedef int (*xccl_cond_fn)(struct xccl_comm *c, void *arg);
/* Spin briefly, then sleep (futex / poll) until cond holds; checks the
 * liveness of peers[0..npeers) while waiting; fails at the comm deadline.
 * what names the wait in messages. */
xccl_status xccl_wait_cond(struct xccl_comm *c, xccl_cond_fn cond, void *arg, const int *peers,
                           int npeers, const char *what);

/* Wait until every reader r in mask (other than me) has ack(r) >= seq, where
 * readers outside g that died or left count as done (they read no more).
 * Used before rewriting a buffer whose last content (seq) mask read. */
typedef _Atomic uint64_t *(*xccl_ack_ptr)(struct xccl_comm *c, int reader, void *arg);
xccl_status xccl_wait_readers(struct xccl_comm *c, const struct xccl_group *g, uint64_t mask,
                              uint64_t seq, xccl_ack_ptr ack, void *arg, const char *what);
uint64_t xccl_group_mask(const struct xccl_group *g);

/* Registered regions, for the zero-copy send path: find the local region
 * holding [p, p+len) (1 if found), and map / bounds-check a peer's region. */
int xccl_region_find_local(uint32_t *id, size_t *offset, struct xccl_comm *c, const void *p, size_t len);
xccl_status xccl_region_peer_ptr(uint8_t **ptr, struct xccl_comm *c, int peer, uint32_t id,
                                 size_t offset, size_t len);

/* Heartbeat thread (shm). */
xccl_status xccl_heartbeat_start(struct xccl_comm *c);
void xccl_heartbeat_stop(struct xccl_comm *c);
xccl_status xccl_shm_peer_check(struct xccl_comm *c, int peer);

/* Generic (transport-neutral) p2p-based fallbacks used by the tcp transport. */
xccl_status xccl_p2p_exchange(struct xccl_comm *c, struct xccl_group *g, void *const *recv_bufs,
                              const size_t *recv_caps, size_t *recv_lens,
                              const void *const *send_bufs, const size_t *send_lens);

static inline size_t xccl_dtype_size(xccl_dtype d) { return d == XCCL_F32 ? 4 : d == XCCL_BF16 ? 2 : 1; }

static inline void xccl_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#else
    __asm__ __volatile__("" ::: "memory");
#endif
}

#endif
