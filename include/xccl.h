/*
 * xccl.h — XCCL, the shared-memory communication library of xDeepServe.
 *
 * One shared segment per deployment. A launcher creates it (a named POSIX shm
 * object, or a memfd whose fd it hands to workers over a unix socket); every
 * worker attaches with its rank. The segment holds a versioned header, a rank
 * table (pid, role, heartbeat, state), a metadata area (one cache-line-aligned
 * record per ordered peer pair and channel), a data area (one ring of
 * fixed-size slots per ordered pair), and per-rank MoE and collective areas.
 * Applications register their own regions (KV block pools, weights) for
 * zero-copy one-sided get/put. See docs/XCCL.md for the layout.
 *
 * Layers (a lower one never calls up): segment + rings + waiting, below
 * transports (shm, tcp, behind an ops table), below operations (send/recv,
 * get/put, dispatch/combine, collectives).
 *
 * Errors: every fallible call returns xccl_status and records a one-line,
 * per-thread message (xccl_err_msg()); an error caused by a peer also records
 * that peer's rank (xccl_err_rank()). Output parameters are written only on
 * success. The library never exits and never waits without a deadline: a dead
 * peer (pid gone, heartbeat stale, or it left) fails any operation involving it
 * within a bounded time; operations among the survivors keep working.
 *
 * Threading: a comm is used by one thread at a time (it owns a heartbeat
 * thread of its own). Argument order follows DeepEP: outputs, inputs, then
 * communication resources.
 *
 * This header is versioned: XCCL_VERSION is stored in every segment and a
 * segment of another version is refused at attach.
 */
#ifndef XCCL_H
#define XCCL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define XCCL_VERSION_MAJOR 1
#define XCCL_VERSION_MINOR 2
/* Segment layout version; bump on any change of a shared layout. */
#define XCCL_VERSION ((XCCL_VERSION_MAJOR << 16) | XCCL_VERSION_MINOR)

#define XCCL_MAX_RANKS   64 /* ranks per segment */
#define XCCL_MAX_REGIONS 16 /* registered regions per rank */

typedef enum xccl_status {
    XCCL_OK = 0,
    XCCL_ERR_INVALID,   /* invalid argument (shape, rank, size, state) */
    XCCL_ERR_NOMEM,     /* allocation failed */
    XCCL_ERR_IO,        /* a system call failed (shm_open, mmap, socket, ...) */
    XCCL_ERR_VERSION,   /* segment of another layout version */
    XCCL_ERR_CORRUPT,   /* segment header corrupt / not an xccl segment */
    XCCL_ERR_TRUNCATED, /* message larger than the posted receive (nothing consumed) */
    XCCL_ERR_RANGE,     /* expert id out of range, capacity exceeded, bad offset */
    XCCL_ERR_TIMEOUT,   /* the deadline passed */
    XCCL_ERR_PEER,      /* a peer died, left, hung or failed (xccl_err_rank names it) */
} xccl_status;

const char *xccl_status_str(xccl_status s);
/* The calling thread's last error message ("" if none). */
const char *xccl_err_msg(void);
/* Rank named by the calling thread's last XCCL_ERR_PEER/TIMEOUT error, or -1. */
int xccl_err_rank(void);

typedef enum xccl_dtype { XCCL_F32 = 0, XCCL_BF16 = 1, XCCL_I8 = 2 } xccl_dtype;

/* ------------------------------------------------------------------------ */
/* Segment (launcher side)                                                   */

typedef struct xccl_config {
    uint32_t num_ranks;  /* ranks in the deployment, 1..XCCL_MAX_RANKS */
    uint32_t slot_bytes; /* p2p ring slot size incl. its 64-B header; multiple of 64 */
    uint32_t num_slots;  /* slots per ordered-pair ring (power of two) */
    uint32_t coll_bytes; /* collective scratch per rank per buffer (multiple of 64) */
    /* MoE areas (0 max_tokens = no MoE area). Sizes are per rank per dispatch. */
    uint32_t moe_max_tokens;        /* tokens a rank dispatches per call */
    uint32_t moe_max_hidden;        /* hidden size H */
    uint32_t moe_max_topk;          /* k */
    uint32_t moe_max_local_experts; /* local expert slots per rank */
    uint32_t moe_max_recv_rows;     /* rows a rank may receive per call (0: num_ranks*tokens*topk) */
    uint64_t segment_bytes;         /* 0: exactly what the layout needs; else a fixed size that must fit */
    uint32_t heartbeat_ms;          /* heartbeat period (default 20) */
    uint32_t heartbeat_timeout_ms;  /* a heartbeat older than this = peer hung (default 3000) */
} xccl_config;

/* Defaults for num_ranks ranks: 64 KiB x 16 slots per pair, 1 MiB collective
 * buffers, no MoE area. */
void xccl_config_default(xccl_config *cfg, uint32_t num_ranks);
/* Bytes a segment with this config needs (0 if the config is invalid). */
uint64_t xccl_config_segment_bytes(const xccl_config *cfg);

typedef struct xccl_segment xccl_segment;

/* Create and initialise a segment. name: a POSIX shm name ("/xccl-job-123"),
 * or NULL for an anonymous memfd (hand xccl_segment_fd() to workers). */
xccl_status xccl_segment_create(xccl_segment **out, const char *name, const xccl_config *cfg);
int xccl_segment_fd(const xccl_segment *seg);
/* Unmap, close, and unlink the name (if any). */
void xccl_segment_destroy(xccl_segment *seg);

/* Pass / receive a file descriptor over a connected unix socket (SCM_RIGHTS). */
xccl_status xccl_fd_send(int sock, int fd);
xccl_status xccl_fd_recv(int sock, int *fd_out);

/* ------------------------------------------------------------------------ */
/* Communicator (worker side)                                               */

typedef struct xccl_comm xccl_comm;

/* Attach to a segment by shm name or by fd (the fd is dup'ed). Marks the
 * rank ACTIVE in the rank table with this pid and role, bumps the rank's
 * incarnation and starts its heartbeat. A rank whose previous holder died
 * (pid gone, a zombie included) or was declared dead and no longer runs can
 * be attached again: a rejoin (see "Failover" below). Fails on a version
 * mismatch, a corrupt header, a rank out of range, or a rank held by a
 * process that still runs. */
xccl_status xccl_comm_attach(xccl_comm **out, const char *name, int rank, uint32_t role);
xccl_status xccl_comm_attach_fd(xccl_comm **out, int fd, int rank, uint32_t role);
/* Mark the rank LEFT (peers waiting on it fail at once), unmap, free. */
void xccl_comm_detach(xccl_comm *comm);

int xccl_comm_rank(const xccl_comm *comm);
int xccl_comm_size(const xccl_comm *comm);
const char *xccl_comm_transport(const xccl_comm *comm); /* "shm" or "tcp" */
/* Deadline of every blocking call (default 10000 ms, or XCCL_TIMEOUT_MS). */
void xccl_comm_set_timeout(xccl_comm *comm, uint32_t timeout_ms);
uint32_t xccl_comm_get_timeout(const xccl_comm *comm);

/* Peer states in the rank table. */
enum { XCCL_RANK_FREE = 0, XCCL_RANK_ACTIVE = 1, XCCL_RANK_LEFT = 2, XCCL_RANK_DEAD = 3 };
/* Check a peer now: XCCL_OK if alive; XCCL_ERR_PEER naming it if it died,
 * left or hung. A FREE (never attached) peer is XCCL_ERR_PEER too. */
xccl_status xccl_peer_check(xccl_comm *comm, int peer);
/* The peer's state in the rank table now (XCCL_RANK_*; an attach under way
 * reads FREE; XCCL_RANK_FREE on a non-shm transport). */
uint32_t xccl_peer_state(const xccl_comm *comm, int peer);

/* ------------------------------------------------------------------------ */
/* Failover: incarnations, rejoin, heartbeats that mean progress.            */
/*                                                                           */
/* Every attach of a rank is a new incarnation (1, 2, ...), recorded in the  */
/* rank table. A comm talks to one incarnation of each peer: the one it      */
/* found at first contact. Once that one is over (it died, left, was         */
/* declared dead, or a restarted process attached the rank), every           */
/* operation with the peer fails with XCCL_ERR_PEER naming it, and messages  */
/* of an old incarnation are never delivered: each ring slot carries the     */
/* sender's incarnation and the receiver incarnation it was addressed to,    */
/* and the receiver drops a slot from an earlier incarnation of the sender   */
/* or addressed to an earlier incarnation of itself. The survivor accepts    */
/* the newcomer with xccl_peer_reset(). Rendezvous numbers are ring          */
/* positions, so no per-pair counter needs to agree across incarnations.     */
/* Groups: form a new one (larger epoch) that includes the newcomer. A       */
/* process that learns it was declared dead (any call fails with             */
/* XCCL_ERR_PEER naming its own rank) must detach and exit.                 */

/* This comm's incarnation; the incarnation of peer this comm talks to (0:
 * none seen yet). */
uint32_t xccl_comm_incarnation(const xccl_comm *comm);
uint32_t xccl_peer_incarnation(const xccl_comm *comm, int peer);
/* Accept a new incarnation of peer: fail every pending request with it
 * (XCCL_ERR_PEER; an open rendezvous is stopped first), forget its region
 * mappings and the buffers it was reading, clear the broken-pair mark, and
 * talk to the incarnation now holding the rank. XCCL_OK once a newer
 * incarnation is ACTIVE; XCCL_ERR_PEER (after dropping the old state) while
 * none has attached yet: call again; XCCL_ERR_INVALID, changing nothing, if
 * the known incarnation still runs (alive or hung: declare it dead first).
 * shm transport only. */
xccl_status xccl_peer_reset(xccl_comm *comm, int peer);
/* Declare the incarnation of peer this comm talks to dead (after a hang):
 * peers waiting on it fail at once, and the process itself fails its next
 * XCCL call. It keeps the rank until it no longer runs (kill it); then the
 * rank can be rejoined. */
xccl_status xccl_peer_declare_dead(xccl_comm *comm, int peer);

/* Heartbeats that mean progress (opt-in, per comm). With progress mode on,
 * the heartbeat thread stops beating for this rank; the heartbeat is the
 * time the application's loop last called xccl_comm_progress() (or sat in
 * an XCCL wait, which is bounded). A loop that stops (hung, spinning, or the
 * process SIGSTOPped) shows as a stale heartbeat, reported as "hung" by
 * peers heartbeat_timeout_ms later (xccl_config). The loop must call
 * xccl_comm_progress more often than that, also inside long computations.
 * xccl_comm_progress is cheap (a clock read and a store) and returns
 * XCCL_ERR_PEER naming this rank if it was declared dead or replaced. */
void xccl_comm_set_progress_mode(xccl_comm *comm, int on);
xccl_status xccl_comm_progress(xccl_comm *comm);

/* A supervisor's view of a rank, from the segment it created (no attach). */
typedef struct xccl_rank_info {
    uint32_t state;            /* XCCL_RANK_* (an attach under way reads FREE) */
    uint32_t incarnation;      /* 0: never attached */
    uint32_t role;
    int32_t pid;
    uint64_t heartbeat_age_ms; /* since the last beat */
    int progress_mode;         /* the heartbeat means loop progress */
    int hung;                  /* ACTIVE with a heartbeat older than heartbeat_timeout_ms */
    int pid_gone;              /* ACTIVE or DEAD, and its process no longer runs */
} xccl_rank_info;
xccl_status xccl_segment_rank_info(const xccl_segment *seg, int rank, xccl_rank_info *out);
/* Declare incarnation `incarnation` of rank (0: whichever holds it now)
 * dead, if it is still ACTIVE; wakes every rank so that their waits on it
 * fail at once. XCCL_ERR_PEER if that incarnation no longer holds the rank
 * as ACTIVE. */
xccl_status xccl_segment_declare_dead(xccl_segment *seg, int rank, uint32_t incarnation);

/* ------------------------------------------------------------------------ */
/* TCP transport: the same send/recv/collective/dispatch API over sockets.   */
/* (Not over TCP: registered regions, get/put, xccl_moe_send_buffer; with    */
/* XCCL_MOE_IN_PLACE the rows are still delivered contiguously.)            */

/* Listen on 127.0.0.1:port (0 = any); returns the socket and the port. */
xccl_status xccl_tcp_listen(int *fd_out, uint16_t *port_out, const char *host, uint16_t port);
/* Build a comm of num_ranks ranks over TCP: hosts[i]:ports[i] is rank i's
 * listener; listen_fd is this rank's (from xccl_tcp_listen). Connects to every
 * peer (lower ranks connect to higher ones) within the comm timeout. */
xccl_status xccl_comm_create_tcp(xccl_comm **out, int rank, int num_ranks, int listen_fd,
                                 const char *const *hosts, const uint16_t *ports,
                                 uint32_t timeout_ms);

/* ------------------------------------------------------------------------ */
/* Two-sided send / recv. In order per pair; any size; chunk-pipelined.      */

/* A request lives in caller memory until it completes; its fields are
 * private. */
typedef struct xccl_request {
    struct xccl_request *next_; /* per-peer FIFO */
    void *buf_;
    size_t len_;     /* send: length; recv: capacity */
    size_t done_;    /* bytes moved */
    size_t msg_len_; /* recv: length of the matched message */
    int peer_;
    int kind_;  /* 1 send, 2 recv */
    int state_; /* 0 idle, 1 queued, 2 done, 3 failed */
    int status_;
    uint64_t aux_;  /* transport-private */
    uint64_t aux2_; /* transport-private */
} xccl_request;

xccl_status xccl_isend(xccl_comm *comm, int peer, const void *buf, size_t len, xccl_request *req);
xccl_status xccl_irecv(xccl_comm *comm, int peer, void *buf, size_t cap, xccl_request *req);
/* Make progress; *done = 1 once complete. Returns the request's error if it
 * failed (then *done = 1 too). */
xccl_status xccl_test(xccl_comm *comm, xccl_request *req, int *done);
/* Block until complete or the comm deadline passes. */
xccl_status xccl_wait(xccl_comm *comm, xccl_request *req);
/* Block until one of reqs[0..n) (NULL or never-posted entries are skipped)
 * completes; *index = its position. Returns that request's error if it
 * failed. On XCCL_ERR_TIMEOUT (comm deadline, *index = -1) every request is
 * still queued: wait again, or cancel them. A dead peer of any posted
 * request is reported (XCCL_ERR_PEER naming it). n <= 4 * XCCL_MAX_RANKS. */
xccl_status xccl_waitany(xccl_comm *comm, xccl_request *const *reqs, int n, int *index);
/* Withdraw a queued request (no-op if it completed). If part of its message
 * had moved, the pair is broken and XCCL_ERR_PEER is returned. */
xccl_status xccl_cancel(xccl_comm *comm, xccl_request *req);
/* Length of the message a completed receive matched. */
size_t xccl_request_len(const xccl_request *req);

/* Counters of this comm's large-message (rendezvous) traffic since attach:
 * messages completed as sender / receiver, and the chunks of them this rank
 * copied itself, as sender (pushed into the receiver's buffer) and as
 * receiver (pulled from the sender). Both sides copy chunks of one message
 * at once (docs/XCCL.md, "send / recv"). Zero on non-shm transports. */
typedef struct xccl_p2p_stats {
    uint64_t rndv_sent, rndv_recv;
    uint64_t chunks_pushed, chunks_pulled;
} xccl_p2p_stats;
void xccl_p2p_stats_get(const xccl_comm *comm, xccl_p2p_stats *out);

xccl_status xccl_send(xccl_comm *comm, int peer, const void *buf, size_t len);
/* Receive the next message from peer into buf (capacity cap). A larger
 * message fails with XCCL_ERR_TRUNCATED and stays queued (nothing consumed). */
xccl_status xccl_recv(size_t *len_out, void *buf, size_t cap, xccl_comm *comm, int peer);

/* ------------------------------------------------------------------------ */
/* Registered regions and one-sided get / put (shm transport).              */

typedef struct xccl_region {
    uint32_t id;  /* region id, unique per owner rank */
    void *base;   /* local mapping */
    size_t bytes; /* size */
} xccl_region;

/* Allocate a shareable region (memfd) of bytes and register it. */
xccl_status xccl_region_alloc(xccl_region *out, size_t bytes, xccl_comm *comm);
/* Register an existing shareable fd (memfd or shm fd) of bytes, mapped by the
 * caller at base (or NULL to let XCCL map it). The fd is dup'ed. */
xccl_status xccl_region_register_fd(xccl_region *out, int fd, size_t bytes, void *base,
                                    xccl_comm *comm);
/* Deregister (peers see it gone) and unmap/close what XCCL mapped. */
void xccl_region_deregister(xccl_comm *comm, xccl_region *region);

/* Copy len bytes from src into peer's region id at offset, then notify peer. */
xccl_status xccl_put(xccl_comm *comm, int peer, uint32_t region_id, size_t offset, const void *src,
                     size_t len);
/* Copy len bytes from peer's region id at offset into dst, then notify peer. */
xccl_status xccl_get(void *dst, xccl_comm *comm, int peer, uint32_t region_id, size_t offset,
                     size_t len);
/* One range of a batched get: region bytes [offset, offset + len) -> buf. */
typedef struct xccl_iov {
    void *buf;
    size_t offset, len;
} xccl_iov;
/* Copy n ranges of peer's region id into local buffers, then notify peer
 * once (one operation for xccl_notify_count). Every range is bounds-checked
 * before any byte is copied. Large batches are copied with streaming stores. */
xccl_status xccl_getv(xccl_comm *comm, int peer, uint32_t region_id, const xccl_iov *iov, int n);
/* Number of one-sided operations peer has completed on this rank's regions. */
uint64_t xccl_notify_count(xccl_comm *comm, int peer);
/* Wait until that number reaches count (deadline, peer-death aware). */
xccl_status xccl_notify_wait(xccl_comm *comm, int peer, uint64_t count);

/* ------------------------------------------------------------------------ */
/* Groups: the members of a collective / dispatch. After a peer dies the    */
/* survivors create a new group with a larger epoch.                         */

typedef struct xccl_group xccl_group;

/* Collective among ranks[0..n) (ascending, including the caller): ends with
 * a barrier. epoch must exceed every epoch this comm used before (0 is the
 * implicit world epoch; use 1, 2, ...). */
xccl_status xccl_group_create(xccl_group **out, xccl_comm *comm, const int *ranks, int n,
                              uint32_t epoch);
/* The group of all ranks (epoch 0), owned by the comm. */
xccl_group *xccl_comm_world(xccl_comm *comm);
void xccl_group_destroy(xccl_group *g);
int xccl_group_size(const xccl_group *g);
/* Index of rank in g, or -1. */
int xccl_group_index(const xccl_group *g, int rank);

/* ------------------------------------------------------------------------ */
/* Collectives                                                               */

xccl_status xccl_barrier(xccl_comm *comm, xccl_group *g);
/* out[i*bytes .. (i+1)*bytes) = member i's in. */
xccl_status xccl_allgather(void *out, const void *in, size_t bytes, xccl_comm *comm,
                           xccl_group *g);
/* out = sum over members (in member order, accumulated in f32) of in;
 * dtype XCCL_F32 or XCCL_BF16; out may equal in. */
xccl_status xccl_allreduce_sum(void *out, const void *in, size_t count, xccl_dtype dtype,
                               xccl_comm *comm, xccl_group *g);

/* ------------------------------------------------------------------------ */
/* MoE dispatch / combine                                                    */

enum { XCCL_REPLICA_ROTATE = 0, XCCL_REPLICA_FIRST = 1 };

/* Where each logical expert lives. An expert may have several replicas. */
typedef struct xccl_expert_map {
    int num_experts;         /* E logical experts */
    int max_replicas;        /* R */
    const int *num_replicas; /* [E] replicas of expert e, 1..R */
    const int *replica_rank; /* [E][R] rank holding replica r of expert e */
    const int *replica_slot; /* [E][R] local expert index on that rank, < num_local_experts */
    int num_local_experts;   /* L local expert slots on every rank */
    int policy;              /* XCCL_REPLICA_ROTATE: replicas used in turn */
} xccl_expert_map;

/* Routing of one batch: the separate layout call. All arrays are owned by the
 * layout (xccl_moe_layout_free). Group member indices, not ranks. */
typedef struct xccl_moe_layout {
    int num_tokens, topk, num_members, num_local_experts;
    int *num_tokens_per_rank;   /* [n] rows sent to each member */
    int *num_tokens_per_expert; /* [n][L] rows sent to (member, local expert) */
    int *route_member;          /* [T][k] member chosen for (t,k), -1 if masked */
    int *route_slot;            /* [T][k] local expert index on that member */
    int *route_pos;             /* [T][k] position in the (member, slot) list */
} xccl_moe_layout;

/* Compute the layout of topk_ids [T][k] (-1 = masked) for group g. round
 * seeds the rotation policy. Fails on expert ids out of range or a map that
 * names ranks outside g. */
xccl_status xccl_moe_layout_compute(xccl_moe_layout *out, const int32_t *topk_ids, int num_tokens,
                                    int topk, const xccl_expert_map *map, uint64_t round,
                                    xccl_comm *comm, xccl_group *g);
void xccl_moe_layout_free(xccl_moe_layout *layout);

/* What one local expert received. Rows live in the segment. */
typedef struct xccl_moe_recv {
    int num_rows;                /* rows for this expert */
    void *rows;                  /* [num_rows][H] contiguous, in the dispatch dtype (input
                                    dtype, or int8); NULL with XCCL_MOE_IN_PLACE */
    const void *const *row_ptrs; /* [num_rows] where each row lies (always set; with
                                    XCCL_MOE_IN_PLACE: in the senders' buffers, no copy) */
    float *scales;               /* [num_rows] int8 dequant scale (row = q * scale), else NULL */
    void *out;                   /* [num_rows][H] in the input dtype: write expert outputs here */
} xccl_moe_recv;

typedef struct xccl_moe_handle xccl_moe_handle;

/* dispatch flags */
#define XCCL_MOE_INT8     1u /* rows travel as int8 with a per-token f32 scale */
#define XCCL_MOE_IN_PLACE 2u /* no gather copy: rows are read where the senders wrote them
                                (row_ptrs); they stay valid until combine */

/* Dispatch x [T][H] (dtype F32 or BF16) along layout. recv [L] receives per
 * local expert rows; *handle is comm-owned and valid until combine. flags:
 * XCCL_MOE_INT8, XCCL_MOE_IN_PLACE. x may be the buffer from
 * xccl_moe_send_buffer() (then it is not copied). */
xccl_status xccl_moe_dispatch(xccl_moe_recv *recv, xccl_moe_handle **handle, const void *x,
                              xccl_dtype dtype, int hidden, unsigned flags,
                              const xccl_moe_layout *layout, xccl_comm *comm, xccl_group *g);
/* Send expert outputs back along handle and weight-sum them:
 * y[t] = sum_k w[t][k] * out_k(t), in k order, accumulated in f32.
 * expert_out: NULL (outputs were written to recv[j].out) or [L] pointers to
 * [num_rows][H] arrays in the input dtype. */
xccl_status xccl_moe_combine(void *y, const float *topk_weights, const void *const *expert_out,
                             xccl_moe_handle *handle, xccl_comm *comm, xccl_group *g);
/* The segment buffer [max_tokens][hidden] (dtype) that the next dispatch on g
 * reads x from without a copy: write the tokens there and pass it as x (not
 * without XCCL_MOE_INT8). Waits until the buffer is free. */
xccl_status xccl_moe_send_buffer(void **out, xccl_comm *comm, xccl_group *g);

/* Helpers used by both the library and its tests (bit-exact definitions). */
float xccl_bf16_to_f32(uint16_t h);
uint16_t xccl_f32_to_bf16(float f); /* round to nearest even */
/* Quantize a row of H values to int8 with scale max|x|/127 (0 for an all-zero row). */
void xccl_quantize_row_i8(int8_t *q, float *scale, const void *x, xccl_dtype dtype, int hidden);

#ifdef __cplusplus
}
#endif
#endif
