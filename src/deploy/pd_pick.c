/*
 * pd_pick.c — the prefill-instance pick (pd_pick.h): the shared table, the
 * per-instance prefix-cache summary (a set-associative hash set in shared
 * memory) and the front-end's cost-model pick.
 *
 * Invariants: a summary's buckets are written only by its instance's thread
 * (publish / evict / sync / set_alive), so a slot is filled only after that
 * thread found it empty, and a hash is in at most one slot of its bucket;
 * readers use relaxed atomic loads and never write the summary.
 */
#define _GNU_SOURCE
#include "deploy/pd_pick.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PICK_MAGIC 0x58445050u /* "XDPP" */

/* ---- the table ----------------------------------------------------------------- */

static xds_status table_map(const char *name, int create, xds_pd_table **out) {
    int fd = shm_open(name, create ? O_RDWR | O_CREAT | O_EXCL : O_RDWR, 0600);
    if (fd < 0) return xds_err_set(XDS_ERR_IO, "pd pick: shm_open %s: %s", name, strerror(errno));
    if (create && ftruncate(fd, sizeof(xds_pd_table)) != 0) {
        int e = errno;
        close(fd);
        shm_unlink(name);
        return xds_err_set(XDS_ERR_IO, "pd pick: ftruncate %s: %s", name, strerror(e));
    }
    if (!create) {
        off_t size = lseek(fd, 0, SEEK_END);
        if (size < (off_t)sizeof(xds_pd_table)) {
            close(fd);
            return xds_err_set(XDS_ERR_FORMAT, "pd pick: %s is not a prefill pick table (%lld bytes)", name,
                               (long long)size);
        }
    }
    void *p = mmap(NULL, sizeof(xds_pd_table), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    int e = errno;
    close(fd);
    if (p == MAP_FAILED) {
        if (create) shm_unlink(name);
        return xds_err_set(XDS_ERR_IO, "pd pick: mmap %s: %s", name, strerror(e));
    }
    *out = p;
    return XDS_OK;
}

xds_status xds_pd_pick_table_create(const char *name, int n_inst, xds_pd_table **out) {
    if (n_inst < 1 || n_inst > XDS_PD_PICK_MAX)
        return xds_err_set(XDS_ERR_INVALID, "pd pick: %d prefill instances (1..%d)", n_inst, XDS_PD_PICK_MAX);
    xds_pd_table *t;
    XDS_TRY(table_map(name, 1, &t));
    memset(t, 0, sizeof *t); /* a fresh shm object is zero already; all-zero atomics are valid */
    t->n_inst = (uint32_t)n_inst;
    t->magic = PICK_MAGIC;
    *out = t;
    return XDS_OK;
}

xds_status xds_pd_pick_table_open(const char *name, xds_pd_table **out) {
    xds_pd_table *t;
    XDS_TRY(table_map(name, 0, &t));
    if (t->magic != PICK_MAGIC || t->n_inst < 1 || t->n_inst > XDS_PD_PICK_MAX) {
        munmap(t, sizeof *t);
        return xds_err_set(XDS_ERR_FORMAT, "pd pick: %s is not a prefill pick table", name);
    }
    *out = t;
    return XDS_OK;
}

void xds_pd_pick_table_close(xds_pd_table *t) {
    if (t) munmap(t, sizeof *t);
}

/* ---- the summary (instance side) ------------------------------------------------ */

static size_t bucket_index(uint64_t hash) {
    return (size_t)((hash >> 32) % XDS_PD_PICK_BUCKETS);
}

static atomic_ullong *bucket_of(xds_pd_inst *I, uint64_t hash) {
    return I->set[bucket_index(hash)];
}

static int summary_has(const xds_pd_inst *I, uint64_t hash) {
    const atomic_ullong *b = I->set[bucket_index(hash)];
    for (int w = 0; w < XDS_PD_PICK_WAYS; w++)
        if (atomic_load_explicit(&b[w], memory_order_relaxed) == hash) return 1;
    return 0;
}

/* 1: inserted, 0: already there, -1: bucket full. */
static int summary_add(xds_pd_inst *I, uint64_t hash) {
    atomic_ullong *b = bucket_of(I, hash);
    int empty = -1;
    for (int w = 0; w < XDS_PD_PICK_WAYS; w++) {
        uint64_t v = atomic_load_explicit(&b[w], memory_order_relaxed);
        if (v == hash) return 0;
        if (!v && empty < 0) empty = w;
    }
    if (empty < 0) return -1;
    atomic_store_explicit(&b[empty], hash, memory_order_relaxed);
    return 1;
}

static int summary_del(xds_pd_inst *I, uint64_t hash) {
    atomic_ullong *b = bucket_of(I, hash);
    for (int w = 0; w < XDS_PD_PICK_WAYS; w++)
        if (atomic_load_explicit(&b[w], memory_order_relaxed) == hash) {
            atomic_store_explicit(&b[w], 0, memory_order_relaxed);
            return 1;
        }
    return 0;
}

int xds_pd_pick_publish_block(xds_pd_table *t, int inst, uint64_t hash) {
    XDS_ASSERT(inst >= 0 && inst < (int)t->n_inst);
    if (!hash) return 0; /* 0 marks an empty slot; xds_prefix_hash never returns it */
    xds_pd_inst *I = &t->inst[inst];
    int r = summary_add(I, hash);
    if (r > 0) {
        atomic_fetch_add(&I->n_hashes, 1);
        atomic_fetch_add(&I->updates, 1);
    } else if (r < 0) {
        atomic_fetch_add(&I->n_dropped, 1);
    }
    return r >= 0;
}

void xds_pd_pick_evict_block(xds_pd_table *t, int inst, uint64_t hash) {
    XDS_ASSERT(inst >= 0 && inst < (int)t->n_inst);
    if (!hash) return;
    xds_pd_inst *I = &t->inst[inst];
    if (summary_del(I, hash)) {
        atomic_fetch_sub(&I->n_hashes, 1);
        atomic_fetch_add(&I->updates, 1);
    }
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

xds_status xds_pd_pick_sync(xds_pd_table *t, int inst, const uint64_t *hashes, int n) {
    XDS_ASSERT(inst >= 0 && inst < (int)t->n_inst && n >= 0);
    xds_pd_inst *I = &t->inst[inst];
    uint64_t *sorted = n ? malloc(sizeof(uint64_t) * (size_t)n) : NULL;
    if (n && !sorted) return xds_err_set(XDS_ERR_NOMEM, "pd pick: out of memory (%d hashes)", n);
    if (n) {
        memcpy(sorted, hashes, sizeof(uint64_t) * (size_t)n);
        qsort(sorted, (size_t)n, sizeof(uint64_t), cmp_u64);
    }
    /* 1. drop what is no longer cached */
    long long kept = 0;
    for (int b = 0; b < XDS_PD_PICK_BUCKETS; b++)
        for (int w = 0; w < XDS_PD_PICK_WAYS; w++) {
            uint64_t v = atomic_load_explicit(&I->set[b][w], memory_order_relaxed);
            if (!v) continue;
            if (n && bsearch(&v, sorted, (size_t)n, sizeof(uint64_t), cmp_u64)) kept++;
            else atomic_store_explicit(&I->set[b][w], 0, memory_order_relaxed);
        }
    /* 2. add the new ones (each distinct hash once) */
    long long added = 0, dropped = 0;
    for (int i = 0; i < n; i++) {
        if (!sorted[i] || (i > 0 && sorted[i] == sorted[i - 1])) continue;
        int r = summary_add(I, sorted[i]);
        added += r > 0;
        dropped += r < 0;
    }
    free(sorted);
    atomic_store(&I->n_hashes, kept + added);
    atomic_store(&I->n_dropped, dropped);
    atomic_fetch_add(&I->updates, 1);
    return XDS_OK;
}

xds_status xds_pd_pick_sync_cache(xds_pd_table *t, int inst, const xds_prefix_cache *pc) {
    int n = pc ? xds_prefix_cache_n_cached(pc) : 0;
    uint64_t *h = n ? malloc(sizeof(uint64_t) * (size_t)n) : NULL;
    if (n && !h) return xds_err_set(XDS_ERR_NOMEM, "pd pick: out of memory (%d cached blocks)", n);
    if (n) n = xds_prefix_cache_hashes(pc, h, n);
    xds_status s = xds_pd_pick_sync(t, inst, h, n);
    free(h);
    return s;
}

void xds_pd_pick_set_alive(xds_pd_table *t, int inst, int block_size, int alive) {
    XDS_ASSERT(inst >= 0 && inst < (int)t->n_inst);
    xds_pd_inst *I = &t->inst[inst];
    if (!alive) {
        atomic_store(&I->alive, 0);
        xds_pd_pick_sync(t, inst, NULL, 0); /* n = 0 allocates nothing: cannot fail */
        return;
    }
    atomic_store(&I->block_size, block_size);
    atomic_store(&I->alive, 1);
}

/* ---- the pick (front-end side) ---------------------------------------------------- */

int xds_pd_pick_block_hashes(const int32_t *prompt, int n, int block_size, uint64_t *out, int cap) {
    int k = 0;
    uint64_t parent = XDS_PREFIX_HASH_ROOT;
    for (; block_size > 0 && k < cap && (k + 1) * block_size <= n - 1; k++) {
        parent = xds_prefix_hash(parent, prompt + (size_t)k * block_size, block_size);
        out[k] = parent;
    }
    return k;
}

/* Leading prompt blocks found in each alive instance's summary (same block
 * size), hashing each block once for all instances and stopping at the first
 * block no instance still matches. */
static void cached_runs(const xds_pd_table *t, const int32_t *prompt, int n, int block_size, const int *use,
                        int *run) {
    int n_inst = (int)t->n_inst, live = 0;
    int going[XDS_PD_PICK_MAX];
    for (int i = 0; i < n_inst; i++) {
        run[i] = 0;
        going[i] = use[i] && atomic_load(&t->inst[i].block_size) == block_size &&
                   atomic_load(&t->inst[i].n_hashes) > 0;
        live += going[i];
    }
    uint64_t parent = XDS_PREFIX_HASH_ROOT;
    for (int k = 0; live > 0 && block_size > 0 && (k + 1) * block_size <= n - 1; k++) {
        parent = xds_prefix_hash(parent, prompt + (size_t)k * block_size, block_size);
        for (int i = 0; i < n_inst; i++) {
            if (!going[i]) continue;
            if (summary_has(&t->inst[i], parent)) run[i]++;
            else going[i] = 0, live--;
        }
    }
}

int xds_pd_pick_cached_tokens(const xds_pd_table *t, int inst, const int32_t *prompt, int n, int block_size) {
    XDS_ASSERT(inst >= 0 && inst < (int)t->n_inst);
    int use[XDS_PD_PICK_MAX] = {0}, run[XDS_PD_PICK_MAX];
    use[inst] = 1;
    cached_runs(t, prompt, n, block_size, use, run);
    return run[inst] * block_size;
}

int xds_pd_pick(xds_pd_table *t, const int32_t *prompt, int n, int block_size, xds_pd_choice *choice) {
    int n_inst = (int)t->n_inst;
    int use[XDS_PD_PICK_MAX] = {0}, run[XDS_PD_PICK_MAX];
    for (int i = 0; i < n_inst; i++) use[i] = atomic_load(&t->inst[i].alive) != 0;
    cached_runs(t, prompt, n, block_size, use, run);
    int start = (int)(atomic_fetch_add(&t->rr, 1) % (unsigned)n_inst);
    xds_pd_choice best = {.inst = -1};
    long long best_queued = 0;
    for (int k = 0; k < n_inst; k++) {
        int i = (start + k) % n_inst;
        if (!use[i]) continue;
        const xds_pd_inst *I = &t->inst[i];
        long long queued = atomic_load(&I->queued), qwork = atomic_load(&I->queued_work);
        if (queued < 0) queued = 0; /* a front-end mid-update */
        if (qwork < 0) qwork = 0;
        int cached = run[i] * block_size;
        long long work = (long long)n - cached;
        long long cost = work + qwork + (long long)XDS_PD_PICK_REQ_TOKENS * queued;
        if (best.inst < 0 || cost < best.cost || (cost == best.cost && queued < best_queued)) {
            best = (xds_pd_choice){.inst = i, .cached_tokens = cached, .work = work, .cost = cost};
            best_queued = queued;
        }
    }
    if (choice) *choice = best;
    return best.inst;
}

void xds_pd_pick_account(xds_pd_table *t, int inst, long long work, int sign) {
    XDS_ASSERT(inst >= 0 && inst < (int)t->n_inst);
    xds_pd_inst *I = &t->inst[inst];
    atomic_fetch_add(&I->queued, sign);
    atomic_fetch_add(&I->queued_work, sign * work);
    if (sign < 0) atomic_fetch_add(&I->served, 1);
}
