/*
 * repack.c — load-time repacking of Q8_0 matmul weights into Q8_0_R16 (16
 * rows interleaved, src/kernels/kern_impl.h), the layout the AVX-512 VNNI
 * kernel reads at ~70% of the int8 peak instead of ~45%.
 *
 * Which tensors: the matrices the units use only through xds_matmul /
 * xds_matmul_rows / xds_matmul_multi / xds_get_row (llama attention and FFN,
 * MoE router, routed and shared experts — 2-D views, one per expert —, MLA
 * projections and the absorbed K, the LM head), of type Q8_0, with a row
 * count that is a multiple of 16. The token embedding stays as it is (an LM
 * head tied to it gets a repacked copy of its own, the file pages stay
 * mapped for the embedding); the MTP layers (loaded, unused) stay as they
 * are.
 * When: only if the CPU level at load is AVX-512 (the kernel it is for; a
 * later xds_cpu_level_set to another level runs the portable Q8_0_R16
 * kernel, same bits) and XDS_REPACK is not "0" (for A/B runs).
 * Where: one anonymous mapping for all copies, 2 MiB aligned, transparent
 * huge pages asked for (MADV_HUGEPAGE): the steps stream it faster than
 * 4 KiB file pages. Each source range in the read-only file mapping is
 * dropped from the process (MADV_DONTNEED, whole pages inside the range)
 * once copied, so the file's pages become ordinary reclaimable page cache;
 * the owned absorbed-K buffer is repacked in place (same size).
 * Work: whole groups of 16 rows in jobs of ~4 MiB over a pool of the
 * machine's cores.
 * Invariant: after the pass every repacked view (type Q8_0_R16) points into
 * the mapping, with unchanged shape and nbytes; nothing else changes.
 *
 * W8A8 (m->quantize == XDS_QUANTIZE_W8A8, `--quantize w8a8`): the same
 * tensors of any type (F32/F16/BF16, Q8_0, Q4_x, Q4_K, Q6_K) with rows of at
 * most 65536 values and any row count are converted instead
 * (xds_w8a8_from_tensor: dequantized to f32 row by row, then int8 with one
 * scale per row), at every CPU level (all have W8A8 kernels); a view then
 * points into the mapping with type W8A8 and nbytes = xds_w8a8_bytes (whole
 * groups of 16 rows). The owned absorbed K gets a copy in the mapping too (its
 * size changes). Tensors that do not qualify stay as they are (logged).
 */
#include "model/repack.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "base/log.h"
#include "base/threadpool.h"
#include "kernels/kernels.h"
#include "model/moe.h"

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25 /* Linux >= 6.1; older kernels answer EINVAL */
#endif

enum { RP_OWNED = 1, RP_KEEP = 2 };

typedef struct {
    xds_tensor *t; /* a view to repack (several may share one source) */
    int flags;     /* RP_OWNED: data is the writable absorbed-K buffer (in
                      place); RP_KEEP: the source pages stay mapped */
} rp_ref;

typedef struct {
    const uint8_t *src; /* Q8_0 source (file mapping or owned buffer) */
    uint8_t *dst;       /* where the repacked copy goes */
    int64_t n_rows, n_in;
    int owned, keep;
    size_t nbytes;      /* of the source */
    xds_dtype type;     /* of the source */
    size_t dst_bytes;   /* of the copy */
} rp_src;

typedef struct {
    int src;           /* index into rp_src */
    int64_t g0, g1;    /* groups of 16 rows */
    int64_t bad_row;   /* W8A8: first row with a NaN / Inf weight (-1: none), written by its task */
} rp_job;

typedef struct {
    rp_src *srcs;
    rp_job *jobs;
    long page;
    int w8a8;
} rp_ctx;

static int eligible_w8a8(const xds_tensor *t) {
    if (!t->data || t->ne[2] != 1 || t->ne[3] != 1 || t->ne[1] <= 0) return 0;
    switch (t->type) {
    case XDS_DTYPE_F32: case XDS_DTYPE_F16: case XDS_DTYPE_BF16: case XDS_DTYPE_Q8_0: case XDS_DTYPE_Q4_0:
    case XDS_DTYPE_Q4_1: case XDS_DTYPE_Q4_K: case XDS_DTYPE_Q6_K: case XDS_DTYPE_Q8_0_R16: break;
    default: return 0;
    }
    size_t rb = xds_dtype_row_bytes(t->type, t->ne[0]);
    if (!rb || xds_w8a8_bytes(t->ne[1], t->ne[0]) == 0) {
        XDS_LOGW("model: --quantize w8a8: %s (%s, rows of %lld) left as it is (rows of at most 65536 values)",
                 t->name ? t->name : "?", xds_dtype_name(t->type), (long long)t->ne[0]);
        return 0;
    }
    if (t->type == XDS_DTYPE_Q8_0_R16 && t->ne[1] % 16) return 0;
    return t->nbytes == rb * (size_t)t->ne[1];
}

static int eligible(int w8a8, const xds_tensor *t) {
    if (w8a8) return eligible_w8a8(t);
    if (t->type != XDS_DTYPE_Q8_0 || !t->data || t->ne[0] <= 0 || t->ne[0] % 32) return 0;
    if (t->ne[2] != 1 || t->ne[3] != 1) return 0;
    int64_t rows = t->ne[1];
    return rows > 0 && rows % 16 == 0 && t->nbytes == xds_dtype_row_bytes(t->type, t->ne[0]) * (size_t)rows;
}

typedef struct {
    rp_ref *v;
    int n, cap;
    int w8a8; /* the pass converts to W8A8 (eligible_w8a8) */
} rp_list;

static int add(rp_list *L, xds_tensor *t, int flags) {
    if (!eligible(L->w8a8, t)) return 0;
    if (L->n == L->cap) {
        int cap = L->cap ? 2 * L->cap : 256;
        rp_ref *v = realloc(L->v, sizeof *v * (size_t)cap);
        if (!v) return -1;
        L->v = v, L->cap = cap;
    }
    L->v[L->n++] = (rp_ref){t, flags};
    return 0;
}

static int add_ffn(rp_list *L, xds_ffn_w *f) {
    return add(L, &f->gate, 0) | add(L, &f->up, 0) | add(L, &f->down, 0);
}

/* dense: every weight but the routed experts; experts: flags per routed
 * expert (cfg.moe.n_expert), NULL = none of them. */
static int collect(xds_model *m, rp_list *L, int dense, const uint8_t *experts) {
    int e = 0;
    /* tied: the LM head gets its own copy, the embedding keeps the file's
     * bytes (and its pages: RP_KEEP) for whoever reads them as Q8_0 */
    if (dense) e |= add(L, &m->output, m->output.data == m->tok_embd.data ? RP_KEEP : 0);
    for (int l = 0; l < m->cfg.n_layer; l++) {
        xds_layer_weights *w = &m->layers[l];
        if (w->moe && experts && w->moe->experts)
            for (int x = 0; x < m->cfg.moe.n_expert; x++)
                if (experts[x]) e |= add_ffn(L, &w->moe->experts[x]);
        if (!dense) continue;
        e |= add(L, &w->wq, 0) | add(L, &w->wk, 0) | add(L, &w->wv, 0) | add(L, &w->wo, 0);
        e |= add(L, &w->w_gate, 0) | add(L, &w->w_up, 0) | add(L, &w->w_down, 0);
        if (w->moe) {
            xds_moe_layer *M = w->moe;
            e |= add(L, &M->router, 0);
            if (M->has_shared) e |= add_ffn(L, &M->shared);
        }
        if (w->mla) {
            xds_mla_layer *A = w->mla;
            e |= add(L, &A->wq_a, 0) | add(L, &A->wq_b, 0) | add(L, &A->wq, 0) | add(L, &A->wkv_a, 0);
            e |= add(L, &A->wkv_b, 0) | add(L, &A->wv_b, 0) | add(L, &A->wo, 0);
            e |= add(L, &A->wk_b_t, A->wk_b_t.data == (const void *)A->wk_b_t_data ? RP_OWNED : 0);
        }
    }
    return e;
}

static int cmp_ref(const void *a, const void *b) {
    uintptr_t x = (uintptr_t)((const rp_ref *)a)->t->data, y = (uintptr_t)((const rp_ref *)b)->t->data;
    return x < y ? -1 : x > y;
}

static void job_task(void *vctx, int task, int thread) {
    (void)thread;
    const rp_ctx *c = vctx;
    rp_job *j = &c->jobs[task];
    const rp_src *s = &c->srcs[j->src];
    size_t rb = xds_dtype_row_bytes(s->type, s->n_in), off = (size_t)j->g0 * 16 * rb,
           len = (size_t)(j->g1 - j->g0) * 16 * rb;
    if (c->w8a8) {
        xds_tensor v = {.name = "w", .type = s->type, .n_dims = 2, .ne = {s->n_in, s->n_rows, 1, 1},
                        .data = s->src, .nbytes = s->nbytes};
        j->bad_row = xds_w8a8_from_tensor(&v, j->g0, j->g1, s->dst + (size_t)j->g0 * xds_w8a8_bytes(16, s->n_in));
        if (off + len > s->nbytes) len = s->nbytes - off; /* the last group may be partial */
        if (s->owned) return; /* an owned buffer's pages stay */
    } else {
        if (s->owned) return; /* in place: done serially after the run */
        xds_q8r_pack(s->src + off, s->dst + off, (j->g1 - j->g0) * 16, s->n_in);
    }
    /* the copied source pages (whole pages inside the range) leave the process */
    uintptr_t a = ((uintptr_t)s->src + off + (uintptr_t)c->page - 1) & ~((uintptr_t)c->page - 1);
    uintptr_t b = ((uintptr_t)s->src + off + len) & ~((uintptr_t)c->page - 1);
    if (b > a && !s->keep) madvise((void *)a, b - a, MADV_DONTNEED);
}

static int repack_enabled(const xds_model *m) {
    if (m->quantize == XDS_QUANTIZE_W8A8) return 1;
    const char *e = getenv("XDS_REPACK");
    if (e && !strcmp(e, "0")) return 0;
    return xds_cpu_level_get() == XDS_CPU_AVX512;
}

xds_status xds_model_repack(xds_model *m) {
    int n = m->cfg.moe.n_expert > 0 ? m->cfg.moe.n_expert : 1;
    uint8_t *all = malloc((size_t)n);
    if (!all) return xds_err_set(XDS_ERR_NOMEM, "model: out of memory (repack list)");
    memset(all, 1, (size_t)n);
    xds_status s = xds_model_repack_units(m, 1, all);
    free(all);
    return s;
}

xds_status xds_model_repack_units(xds_model *m, int dense, const uint8_t *experts) {
    if (!repack_enabled(m)) return XDS_OK;
    if (m->repacked)
        return xds_err_set(XDS_ERR_INVALID, "model: weights already repacked (repack_units is called once)");
    const int w8 = m->quantize == XDS_QUANTIZE_W8A8;
    rp_list L = {.w8a8 = w8};
    if (collect(m, &L, dense, experts)) {
        free(L.v);
        return xds_err_set(XDS_ERR_NOMEM, "model: out of memory (repack list)");
    }
    if (L.n == 0) {
        free(L.v);
        return XDS_OK;
    }
    qsort(L.v, (size_t)L.n, sizeof *L.v, cmp_ref);
    /* distinct sources (views sharing data share the copy) */
    rp_src *srcs = calloc((size_t)L.n, sizeof *srcs);
    int *which = calloc((size_t)L.n, sizeof *which);
    xds_status st = XDS_OK;
    if (!srcs || !which) {
        st = xds_err_set(XDS_ERR_NOMEM, "model: out of memory (repack)");
        goto done;
    }
    int ns = 0;
    size_t total = 0;
    for (int i = 0; i < L.n; i++) {
        const xds_tensor *t = L.v[i].t;
        int owned = (L.v[i].flags & RP_OWNED) != 0, keep = (L.v[i].flags & RP_KEEP) != 0;
        if (ns > 0 && srcs[ns - 1].src == t->data && srcs[ns - 1].n_in == t->ne[0] && srcs[ns - 1].n_rows == t->ne[1] &&
            srcs[ns - 1].type == t->type) {
            which[i] = ns - 1;
            srcs[ns - 1].keep |= keep;
            continue;
        }
        size_t db = w8 ? xds_w8a8_bytes(t->ne[1], t->ne[0]) : t->nbytes;
        srcs[ns] = (rp_src){t->data, NULL, t->ne[1], t->ne[0], owned, keep, t->nbytes, t->type, db};
        if (!owned || w8) total += (db + 63) & ~(size_t)63;
        which[i] = ns++;
    }
    const size_t huge = (size_t)2 << 20;
    size_t map_bytes = (total + huge - 1) & ~(huge - 1);
    uint8_t *base = NULL;
    if (map_bytes) {
        void *p = mmap(NULL, map_bytes + huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            st = xds_err_set(XDS_ERR_NOMEM, "model: cannot map %zu bytes for the repacked weights", map_bytes);
            goto done;
        }
        /* trim to a 2 MiB-aligned range of map_bytes */
        uintptr_t a = ((uintptr_t)p + huge - 1) & ~(uintptr_t)(huge - 1);
        if (a > (uintptr_t)p) munmap(p, a - (uintptr_t)p);
        uintptr_t end = (uintptr_t)p + map_bytes + huge;
        if (end > a + map_bytes) munmap((void *)(a + map_bytes), end - (a + map_bytes));
        base = (uint8_t *)a;
        madvise(base, map_bytes, MADV_HUGEPAGE);
    }
    size_t off = 0;
    int64_t n_jobs = 0;
    for (int s = 0; s < ns; s++) {
        if (!srcs[s].owned || w8) {
            srcs[s].dst = base + off;
            off += (srcs[s].dst_bytes + 63) & ~(size_t)63;
        }
        size_t rb = xds_dtype_row_bytes(srcs[s].type, srcs[s].n_in);
        int64_t groups = (srcs[s].n_rows + 15) / 16, per = (int64_t)((4u << 20) / (16 * rb)) + 1;
        n_jobs += (groups + per - 1) / per;
    }
    rp_job *jobs = malloc(sizeof *jobs * (size_t)n_jobs);
    if (!jobs) {
        if (base) munmap(base, map_bytes);
        st = xds_err_set(XDS_ERR_NOMEM, "model: out of memory (repack jobs)");
        goto done;
    }
    int64_t k = 0;
    for (int s = 0; s < ns; s++) {
        size_t rb = xds_dtype_row_bytes(srcs[s].type, srcs[s].n_in);
        int64_t groups = (srcs[s].n_rows + 15) / 16, per = (int64_t)((4u << 20) / (16 * rb)) + 1;
        for (int64_t g = 0; g < groups; g += per) jobs[k++] = (rp_job){s, g, g + per < groups ? g + per : groups, -1};
    }
    long nproc = sysconf(_SC_NPROCESSORS_ONLN);
    int nth = nproc < 1 ? 1 : nproc > 64 ? 64 : (int)nproc;
    xds_pool *pool = NULL;
    if (nth > 1 && xds_pool_create(nth, &pool) != XDS_OK) pool = NULL;
    long page = sysconf(_SC_PAGESIZE);
    rp_ctx c = {srcs, jobs, page > 0 ? page : 4096, w8};
    if (pool) xds_pool_run(pool, job_task, &c, (int)n_jobs);
    else
        for (int64_t j = 0; j < n_jobs; j++) job_task(&c, (int)j, 0);
    xds_pool_free(pool);
    for (int64_t j = 0; j < n_jobs && w8; j++) {
        if (jobs[j].bad_row < 0) continue;
        const char *name = "?";
        for (int i = 0; i < L.n; i++)
            if (which[i] == jobs[j].src && L.v[i].t->name) name = L.v[i].t->name;
        st = xds_err_set(XDS_ERR_FORMAT, "model: --quantize w8a8: tensor %s holds a NaN or infinite weight (row %lld): "
                                         "the file is corrupt", name, (long long)jobs[j].bad_row);
        free(jobs);
        if (base) munmap(base, map_bytes);
        goto done;
    }
    free(jobs);
    /* MADV_HUGEPAGE is only advice: with memory short at fault time (page
     * cache full of model files) ranges fall back to 4 KiB pages, seen at a
     * third of an 6.8 GB copy, where the hardware prefetchers stop at every
     * 4 KiB page. Collapse them now (direct reclaim and compaction); a
     * refusal (old kernel, no memory) leaves them as they are. */
    if (base) madvise(base, map_bytes, MADV_COLLAPSE);
    /* owned (absorbed K) buffers: in place through a temporary copy */
    for (int s = 0; s < ns && !w8; s++) {
        if (!srcs[s].owned) continue;
        uint8_t *tmp = malloc(srcs[s].nbytes);
        if (!tmp) {
            st = xds_err_set(XDS_ERR_NOMEM, "model: out of memory (repack of the absorbed K)");
            break;
        }
        xds_q8r_pack(srcs[s].src, tmp, srcs[s].n_rows, srcs[s].n_in);
        memcpy((void *)srcs[s].src, tmp, srcs[s].nbytes);
        free(tmp);
        srcs[s].dst = (uint8_t *)srcs[s].src;
    }
    for (int i = 0; i < L.n; i++) {
        const rp_src *s = &srcs[which[i]];
        if (!s->dst) continue; /* an owned buffer left unpacked after an error */
        L.v[i].t->data = s->dst;
        L.v[i].t->type = w8 ? XDS_DTYPE_W8A8 : XDS_DTYPE_Q8_0_R16;
        if (w8) L.v[i].t->nbytes = s->dst_bytes;
    }
    m->repacked = base;
    m->repacked_bytes = map_bytes;
    XDS_LOGD("model: repacked %d matrices (%.2f GB) into %s", ns, (double)total / 1e9, w8 ? "w8a8" : "q8_0_r16");
done:
    free(which);
    free(srcs);
    free(L.v);
    return st;
}

double xds_model_repack_huge_share(const xds_model *m) {
    if (!m->repacked) return -1;
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return -1;
    uintptr_t lo = (uintptr_t)m->repacked, hi = lo + m->repacked_bytes;
    char line[512];
    double rss = 0, huge = 0;
    int in = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long a, b, kb;
        if (sscanf(line, "%lx-%lx ", &a, &b) == 2 && strchr(line, '-') < strchr(line, ' ')) {
            in = a < hi && b > lo; /* a mapping header line; the copies may be split into several */
        } else if (in && sscanf(line, "Rss: %lu kB", &kb) == 1) {
            rss += kb;
        } else if (in && sscanf(line, "AnonHugePages: %lu kB", &kb) == 1) {
            huge += kb;
        }
    }
    fclose(f);
    return rss > 0 ? huge / rss : -1;
}

void xds_model_repack_free(xds_model *m) {
    if (m->repacked) munmap(m->repacked, m->repacked_bytes);
    m->repacked = NULL;
    m->repacked_bytes = 0;
}
