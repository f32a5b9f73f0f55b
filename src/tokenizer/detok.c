/*
 * detok.c — the streaming detokenizer. Token pieces are appended to a queue;
 * the queue's prefix [0, n_ready) is always complete, valid UTF-8 (invalid
 * bytes already replaced by U+FFFD); the tail after it is at most 3 bytes of
 * a sequence that may still complete. Output never contains a broken
 * sequence.
 */
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tokenizer_internal.h"
#include "tokenizer/unicode.h"

static const char REPL[3] = {(char)0xEF, (char)0xBF, (char)0xBD};

void xds_detok_init(xds_detok *d, int skip_special) {
    memset(d, 0, sizeof *d);
    d->skip_special = skip_special;
}

void xds_detok_free(xds_detok *d) {
    free(d->buf);
    memset(d, 0, sizeof *d);
}

static int reserve(xds_detok *d, size_t need) {
    if (need <= d->cap) return 0;
    size_t nc = d->cap ? d->cap * 2 : 256;
    while (nc < need) nc *= 2;
    char *nb = realloc(d->buf, nc);
    if (!nb) return -1;
    d->buf = nb;
    d->cap = nc;
    return 0;
}

/* Append bytes: validate from the held tail onwards, replacing invalid
 * subparts; anything incomplete at the very end stays held. */
static int append(xds_detok *d, const char *p, size_t n) {
    size_t tail = d->n - d->n_ready;
    /* worst case every byte becomes U+FFFD */
    if (reserve(d, d->n_ready + (tail + n) * 3 + 4)) return -1;
    char tmp[4];
    memcpy(tmp, d->buf + d->n_ready, tail);
    /* scan held tail followed by p, writing at n_ready */
    size_t total = tail + n, i = 0, w = d->n_ready;
    char *src = malloc(total ? total : 1);
    if (!src) return -1;
    memcpy(src, tmp, tail);
    memcpy(src + tail, p, n);
    const unsigned char *u = (const unsigned char *)src;
    while (i < total) {
        if (u[i] < 0x80) { d->buf[w++] = (char)u[i++]; continue; }
        int l = xds_utf8_seq_len(u + i, total - i);
        if (l) {
            memcpy(d->buf + w, src + i, l);
            w += l;
            i += l;
            continue;
        }
        int incomplete;
        size_t bad = xds_utf8_invalid_len(u + i, total - i, &incomplete);
        if (incomplete) break; /* may complete with the next token */
        memcpy(d->buf + w, REPL, 3);
        w += 3;
        i += bad;
    }
    d->n_ready = w;
    memcpy(d->buf + w, src + i, total - i);
    d->n = w + (total - i);
    free(src);
    return 0;
}

/* Emit up to cap bytes of the ready prefix, cut at a sequence boundary. */
static size_t drain(xds_detok *d, char *out, size_t cap) {
    size_t k = d->n_ready < cap ? d->n_ready : cap;
    while (k > 0 && k < d->n_ready && ((unsigned char)d->buf[k] & 0xC0) == 0x80) k--;
    if (k) {
        memcpy(out, d->buf, k);
        memmove(d->buf, d->buf + k, d->n - k);
        d->n -= k;
        d->n_ready -= k;
    }
    return k;
}

size_t xds_detok_push(xds_detok *d, const xds_tokenizer *t, int32_t id, char *out, size_t cap) {
    if (id >= 0 && id < t->n_vocab && !(d->skip_special && (t->flags[id] & XDS_TOK_SPECIAL))) {
        size_t len = t->piece_len[id];
        if (len && append(d, t->arena + t->piece_off[id], len)) {
            /* out of memory: drop the piece rather than emit broken bytes */
        }
    }
    return drain(d, out, cap);
}

size_t xds_detok_flush(xds_detok *d, char *out, size_t cap) {
    if (d->n > d->n_ready) {
        /* an incomplete sequence at the end of the stream: one U+FFFD */
        if (!reserve(d, d->n_ready + 3)) {
            memcpy(d->buf + d->n_ready, REPL, 3);
            d->n_ready += 3;
        }
        d->n = d->n_ready;
    }
    return drain(d, out, cap);
}
