/*
 * bpe.c — byte-level BPE on one pre-token. Each byte starts as the symbol of
 * its GPT-2 alphabet character; then the adjacent pair of lowest merge rank
 * (leftmost on ties) is merged until no pair has a rank. Candidates sit in a
 * binary min-heap keyed (rank, position) over a doubly linked symbol list;
 * stale entries are dropped at pop time by re-checking the pair — the same
 * procedure as HF tokenizers' Word::merge_all, so ids match exactly.
 * Cost: O(n log n) per pre-token of n bytes; no state survives a call.
 */
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tokenizer_internal.h"
#include "tokenizer/unicode.h"

typedef struct {
    int32_t id;
    int32_t prev, next; /* -1 at the ends */
    int32_t alive;
} sym;

typedef struct {
    uint64_t *v; /* rank << 32 | pos */
    size_t n;
} heap;

static void heap_push(heap *h, uint64_t x) {
    size_t i = h->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h->v[p] <= x) break;
        h->v[i] = h->v[p];
        i = p;
    }
    h->v[i] = x;
}

static uint64_t heap_pop(heap *h) {
    uint64_t top = h->v[0], x = h->v[--h->n];
    size_t i = 0, n = h->n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && h->v[c + 1] < h->v[c]) c++;
        if (h->v[c] >= x) break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (n) h->v[i] = x;
    return top;
}

int xds_idvec_push(xds_idvec *v, int32_t id) {
    if (v->n == v->cap) {
        size_t nc = v->cap ? v->cap * 2 : 256;
        int32_t *nv = realloc(v->v, nc * sizeof *nv);
        if (!nv) return -1;
        v->v = nv;
        v->cap = nc;
    }
    v->v[v->n++] = id;
    return 0;
}

/* The byte-level (GPT-2 alphabet) spelling of raw bytes, for whole-word lookups. */
static size_t bytelevel_spell(const char *s, size_t n, char *out) {
    uint32_t b2c[256];
    xds_bytelevel_tables(b2c);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) o += xds_utf8_encode(b2c[(unsigned char)s[i]], out + o);
    return o;
}

xds_status xds_bpe_word(const xds_tokenizer *t, const char *s, size_t n, xds_idvec *out) {
    if (n > (size_t)INT32_MAX / 4) return xds_err_set(XDS_ERR_INVALID, "tokenizer: pre-token of %zu bytes is too long", n);
    if (t->ignore_merges) {
        char stackbuf[512];
        char *sp = n * 2 <= sizeof stackbuf ? stackbuf : malloc(n * 2);
        if (!sp) return xds_err_set(XDS_ERR_NOMEM, "tokenizer: out of memory");
        size_t l = bytelevel_spell(s, n, sp);
        int32_t id = xds_strmap_get(t, &t->vocab, sp, l);
        if (sp != stackbuf) free(sp);
        if (id >= 0) return xds_idvec_push(out, id) ? xds_err_set(XDS_ERR_NOMEM, "tokenizer: out of memory") : XDS_OK;
    }
    sym stack_syms[128];
    uint64_t stack_heap[256];
    sym *sy = n <= 128 ? stack_syms : malloc(n * sizeof *sy);
    heap h = {n * 3 + 1 <= 256 ? stack_heap : malloc((n * 3 + 1) * sizeof *h.v), 0};
    xds_status rc = XDS_OK;
    if (!sy || !h.v) { rc = xds_err_set(XDS_ERR_NOMEM, "tokenizer: out of memory"); goto done; }

    /* initial symbols */
    int32_t m = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char b = (unsigned char)s[i];
        int32_t id = t->byte_id[b];
        if (id < 0) id = t->byte_fallback_id[b];
        if (id < 0) id = t->unk_id;
        if (id < 0) continue; /* HF drops a character with no id and no unk */
        sy[m] = (sym){id, m - 1, -1, 1};
        if (m) sy[m - 1].next = m;
        m++;
    }
    /* heap entries: n - 1 initial pairs + at most 2 per merge: < 3n */
    for (int32_t i = 0; i + 1 < m; i++) {
        int32_t rank, merged;
        if (xds_pairmap_get(&t->merges, sy[i].id, sy[i + 1].id, &rank, &merged))
            heap_push(&h, (uint64_t)(uint32_t)rank << 32 | (uint32_t)i);
    }
    while (h.n) {
        uint64_t top = heap_pop(&h);
        int32_t pos = (int32_t)(uint32_t)top, rank = (int32_t)(top >> 32);
        if (!sy[pos].alive || sy[pos].next < 0) continue;
        int32_t nx = sy[pos].next, r2, merged;
        if (!xds_pairmap_get(&t->merges, sy[pos].id, sy[nx].id, &r2, &merged) || r2 != rank) continue;
        sy[pos].id = merged;
        sy[pos].next = sy[nx].next;
        sy[nx].alive = 0;
        if (sy[nx].next >= 0) sy[sy[nx].next].prev = pos;
        if (sy[pos].prev >= 0) {
            int32_t p = sy[pos].prev;
            if (xds_pairmap_get(&t->merges, sy[p].id, sy[pos].id, &r2, &merged))
                heap_push(&h, (uint64_t)(uint32_t)r2 << 32 | (uint32_t)p);
        }
        if (sy[pos].next >= 0) {
            if (xds_pairmap_get(&t->merges, sy[pos].id, sy[sy[pos].next].id, &r2, &merged))
                heap_push(&h, (uint64_t)(uint32_t)r2 << 32 | (uint32_t)pos);
        }
    }
    for (int32_t i = 0; m > 0 && i >= 0; i = sy[i].next)
        if (xds_idvec_push(out, sy[i].id)) { rc = xds_err_set(XDS_ERR_NOMEM, "tokenizer: out of memory"); break; }
done:
    if (sy != stack_syms) free(sy);
    if (h.v != stack_heap) free(h.v);
    return rc;
}
