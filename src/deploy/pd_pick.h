/*
 * pd_pick.h — which prefill instance a front-end sends a prompt to (issue 6
 * item 4: "each front-end picks a prefill instance (queue length,
 * prefix-cache affinity)"), decided without a central scheduler from figures
 * the instances and front-ends share in a POSIX shared-memory table.
 *
 * Per instance the table holds:
 *   - a summary of its prefix cache: the chain hashes (engine/prefix_cache.h,
 *     xds_prefix_hash from XDS_PREFIX_HASH_ROOT) of the full blocks it has
 *     cached, in a fixed-size set of XDS_PD_PICK_BUCKETS buckets of
 *     XDS_PD_PICK_WAYS hashes (one cache line per bucket, 0 = empty; a hash
 *     goes in bucket (hash >> 32) % BUCKETS). Written only by that instance
 *     (one thread): xds_pd_pick_sync_cache after every change of its prefix
 *     cache, or publish_block / evict_block per block. A cached block whose
 *     bucket is full is left out (counted in n_dropped): the summary may
 *     under-state the cache, never over-state it (no false positives beyond a
 *     64-bit hash collision);
 *   - alive and block_size, written by the instance;
 *   - its queue: requests sent to it and not yet returned, and their
 *     estimated prefill work in tokens. Any front-end adds to these with
 *     atomic adds (xds_pd_pick_account: +1 when it sends, -1 when the
 *     transfer task or a failure comes back), so requests still in the
 *     XCCL channel, not yet seen by the instance, count too.
 *
 * Cost model (xds_pd_pick): prefill time is about linear in the prompt tokens
 * an instance must compute, and an instance works through its queue in order,
 * so the time until this prompt's KV is ready on instance i is estimated, in
 * tokens, as
 *     cost_i = (n - cached_i)                       this prompt's uncached tokens
 *            + queued_work_i                        uncached tokens queued before it
 *            + XDS_PD_PICK_REQ_TOKENS * queued_i    a fixed cost per queued request
 * where cached_i is the longest run of leading prompt blocks whose chain
 * hashes are in i's summary, counted as the prefill instance's own lookup
 * does (full blocks only, and at least the last prompt token is always
 * computed). The alive instance with the lowest cost wins; ties go to the
 * shorter queue, then round-robin from a rotating start. Instances with
 * alive == 0 are skipped. So affinity wins when queues are equal, and a long
 * queue outweighs a short cached prefix. Known limit: a prefix still being
 * prefilled is not in any summary yet, so a burst of same-prefix prompts
 * spreads by queue until the first one is cached.
 *
 * Thread and process safety: every shared field is an atomic; the summary
 * has one writer; pick and account may run in any number of threads and
 * processes at once. A reader may see a summary mid-update: the pick is a
 * heuristic and only its quality depends on it, never correctness.
 */
#ifndef XDS_ENGINE_PD_PICK_H
#define XDS_ENGINE_PD_PICK_H

#include <stdatomic.h>
#include <stdint.h>

#include "base/status.h"
#include "engine/prefix_cache.h"

#define XDS_PD_PICK_MAX 8          /* prefill instances */
#define XDS_PD_PICK_WAYS 8         /* hashes per bucket: one cache line */
#define XDS_PD_PICK_BUCKETS 1024   /* summary capacity: 8192 cached blocks per instance */
#define XDS_PD_PICK_REQ_TOKENS 16  /* fixed cost of one queued request, in prompt tokens */

typedef struct xds_pd_inst {
    /* written by the instance */
    _Alignas(64) atomic_llong alive;     /* 1 while it serves */
    atomic_llong block_size;             /* tokens per block of its prefix cache */
    atomic_llong n_hashes;               /* hashes in the summary */
    atomic_llong n_dropped;              /* cached blocks left out (bucket full), as of the last sync + publishes */
    atomic_ullong updates;               /* summary changes so far */
    /* added to by the front-ends */
    _Alignas(64) atomic_llong queued;    /* requests sent and not yet returned */
    atomic_llong queued_work;            /* their estimated prefill work (uncached tokens) */
    atomic_llong served;                 /* requests returned */
    /* the prefix-cache summary (written by the instance) */
    _Alignas(64) atomic_ullong set[XDS_PD_PICK_BUCKETS][XDS_PD_PICK_WAYS]; /* (buckets, ways) chain hashes, 0 = empty */
} xds_pd_inst;

typedef struct xds_pd_table {
    uint32_t magic, n_inst;
    atomic_uint rr; /* rotating tie-break start */
    xds_pd_inst inst[XDS_PD_PICK_MAX];
} xds_pd_table;

/* ---- the table ---------------------------------------------------------- */

/* Create (supervisor; the name must not exist) / open (instances, front-ends)
 * the table at a POSIX shm name; the creator shm_unlink()s it at the end. */
xds_status xds_pd_pick_table_create(const char *name, int n_inst, xds_pd_table **out);
xds_status xds_pd_pick_table_open(const char *name, xds_pd_table **out);
void xds_pd_pick_table_close(xds_pd_table *t);

/* ---- prefill instance side (one thread per instance) -------------------- */

/* Mark instance inst serving (alive 1, with its prefix cache's block size) or
 * gone (alive 0; its summary is cleared). */
void xds_pd_pick_set_alive(xds_pd_table *t, int inst, int block_size, int alive);
/* Record that a full block with chain hash `hash` is now cached: 1 if it is
 * in the summary (now or already), 0 if its bucket is full (left out). */
int xds_pd_pick_publish_block(xds_pd_table *t, int inst, uint64_t hash);
/* Record that the block with chain hash `hash` left the cache (evicted). */
void xds_pd_pick_evict_block(xds_pd_table *t, int inst, uint64_t hash);
/* Make the summary exactly hashes[0..n) (what fits): removes the others,
 * adds the new; a hash in both is never absent meanwhile. */
xds_status xds_pd_pick_sync(xds_pd_table *t, int inst, const uint64_t *hashes, int n);
/* xds_pd_pick_sync with every block cached in pc (NULL: none). Call after
 * each prefill (the only time blocks are cached or evicted). */
xds_status xds_pd_pick_sync_cache(xds_pd_table *t, int inst, const xds_prefix_cache *pc);

/* ---- front-end side ----------------------------------------------------- */

/* The chain hashes of the prompt blocks a prefill instance could take from
 * its prefix cache: full blocks within prompt[0..n-1) (the last token is
 * always computed), up to cap of them. Returns the count. */
int xds_pd_pick_block_hashes(const int32_t *prompt, int n, int block_size, uint64_t *out, int cap);
/* Prompt tokens instance inst is expected to serve from its prefix cache (0
 * when its block size differs from block_size). */
int xds_pd_pick_cached_tokens(const xds_pd_table *t, int inst, const int32_t *prompt, int n, int block_size);

typedef struct xds_pd_choice {
    int inst;           /* the chosen instance, -1 if none is alive */
    int cached_tokens;  /* prompt tokens expected from its prefix cache */
    long long work;     /* tokens it must compute for this prompt: n - cached_tokens */
    long long cost;     /* the cost model's figure for it (see above) */
} xds_pd_choice;

/* The instance for prompt[0..n) (n >= 1) with KV blocks of block_size tokens;
 * returns choice->inst. Does not account the request: call
 * xds_pd_pick_account(t, inst, choice->work, +1) once it is sent. */
int xds_pd_pick(xds_pd_table *t, const int32_t *prompt, int n, int block_size, xds_pd_choice *choice);
/* A request of estimated work `work` sent to inst (sign +1) or returned from
 * it (-1: transfer task received, or the request failed). */
void xds_pd_pick_account(xds_pd_table *t, int inst, long long work, int sign);

#endif
