/*
 * output.c — detokenization, stop strings and finish reasons of one request;
 * see output.h. The withheld text (pending) is at most the longest stop
 * string minus one byte plus the newest piece, so the plain scans below stay
 * cheap.
 */
#define _GNU_SOURCE /* memmem */
#include "engine/output.h"

#include <stdlib.h>
#include <string.h>

static int buf_reserve(char **buf, size_t *cap, size_t need) {
    if (need <= *cap) return 1;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    char *p = realloc(*buf, c);
    if (!p) return 0;
    *buf = p;
    *cap = c;
    return 1;
}

xds_status xds_output_init(xds_output *o, const xds_tokenizer *tok, int32_t eos_fallback,
                           const char *const *stop, int n_stop, int ignore_eos, int max_tokens) {
    memset(o, 0, sizeof(*o));
    o->tok = tok;
    o->eos_fallback = eos_fallback;
    o->ignore_eos = ignore_eos;
    o->max_tokens = max_tokens;
    xds_detok_init(&o->detok, 1);
    if (n_stop > 0) {
        o->stop = calloc((size_t)n_stop, sizeof(char *));
        if (!o->stop) return xds_err_set(XDS_ERR_NOMEM, "output: out of memory");
        for (int i = 0; i < n_stop; i++) {
            if (!stop[i] || !stop[i][0]) continue;
            o->stop[o->n_stop] = strdup(stop[i]);
            if (!o->stop[o->n_stop]) {
                xds_output_free(o);
                return xds_err_set(XDS_ERR_NOMEM, "output: out of memory");
            }
            o->n_stop++;
        }
    }
    return XDS_OK;
}

void xds_output_free(xds_output *o) {
    for (int i = 0; i < o->n_stop; i++) free(o->stop[i]);
    free(o->stop);
    free(o->pending);
    free(o->out);
    xds_detok_free(&o->detok);
    memset(o, 0, sizeof(*o));
}

/* Move pending[0, n) to the output. */
static int emit(xds_output *o, size_t n) {
    if (!buf_reserve(&o->out, &o->cap_out, o->n_out + n + 1)) return 0;
    if (n == 0) {
        o->out[o->n_out] = 0;
        return 1;
    }
    memcpy(o->out + o->n_out, o->pending, n);
    o->n_out += n;
    o->out[o->n_out] = 0;
    memmove(o->pending, o->pending + n, o->n_pending - n);
    o->n_pending -= n;
    return 1;
}

/* Earliest occurrence of any stop string in pending, or -1. */
static long find_stop(const xds_output *o) {
    long best = -1;
    for (int i = 0; i < o->n_stop; i++) {
        size_t m = strlen(o->stop[i]);
        if (m > o->n_pending) continue;
        const char *p = memmem(o->pending, o->n_pending, o->stop[i], m);
        if (p && (best < 0 || p - o->pending < best)) best = p - o->pending;
    }
    return best;
}

/* Length of the longest suffix of pending that is a proper prefix of a stop
 * string (the text that must stay withheld). */
static size_t partial_stop(const xds_output *o) {
    size_t keep = 0;
    for (int i = 0; i < o->n_stop; i++) {
        size_t m = strlen(o->stop[i]);
        size_t k = m - 1 < o->n_pending ? m - 1 : o->n_pending;
        for (; k > keep; k--)
            if (memcmp(o->pending + o->n_pending - k, o->stop[i], k) == 0) break;
        if (k > keep) keep = k;
    }
    return keep;
}

xds_finish xds_output_push_text(xds_output *o, const char *piece, size_t n, int final,
                                const char **text, size_t *len) {
    o->n_out = 0;
    if (o->out) o->out[0] = 0;
    xds_finish fin = XDS_FINISH_NONE;
    if (n && buf_reserve(&o->pending, &o->cap_pending, o->n_pending + n)) {
        memcpy(o->pending + o->n_pending, piece, n);
        o->n_pending += n;
    }
    long at = find_stop(o);
    if (at >= 0) {
        emit(o, (size_t)at);
        o->n_pending = 0; /* the stop string and whatever followed it */
        fin = XDS_FINISH_STOP;
    } else if (final) {
        emit(o, o->n_pending);
    } else {
        emit(o, o->n_pending - partial_stop(o));
    }
    *text = o->out ? o->out : "";
    *len = o->n_out;
    return fin;
}

/* Detokenize token (or only drain / flush with token < 0) into piece. */
static int detok_into(xds_output *o, int32_t token, int flush, char **piece, size_t *n,
                      size_t *cap) {
    char tmp[256];
    size_t got;
    if (!o->tok) return 1;
    if (token >= 0) {
        got = xds_detok_push(&o->detok, o->tok, token, tmp, sizeof(tmp));
        for (;;) {
            if (!buf_reserve(piece, cap, *n + got)) return 0;
            if (got) memcpy(*piece + *n, tmp, got);
            *n += got;
            if (got < sizeof(tmp)) break;
            got = xds_detok_push(&o->detok, o->tok, -1, tmp, sizeof(tmp));
        }
    }
    if (flush) {
        do {
            got = xds_detok_flush(&o->detok, tmp, sizeof(tmp));
            if (!buf_reserve(piece, cap, *n + got)) return 0;
            if (got) memcpy(*piece + *n, tmp, got);
            *n += got;
        } while (got == sizeof(tmp));
    }
    return 1;
}

xds_finish xds_output_push(xds_output *o, int32_t token, int at_limit, const char **text,
                           size_t *len) {
    *text = "";
    *len = 0;
    if (o->finished) return XDS_FINISH_NONE;
    o->n_gen++;
    int eog = 0;
    if (!o->ignore_eos)
        eog = o->tok ? xds_tokenizer_is_eog(o->tok, token) : (token >= 0 && token == o->eos_fallback);
    int length = o->n_gen >= o->max_tokens || at_limit;
    int final = eog || length;
    char *piece = NULL;
    size_t n = 0, cap = 0;
    detok_into(o, eog ? -1 : token, final, &piece, &n, &cap);
    xds_finish fin = xds_output_push_text(o, piece, n, final, text, len);
    free(piece);
    if (fin == XDS_FINISH_NONE && final) fin = eog ? XDS_FINISH_STOP : XDS_FINISH_LENGTH;
    if (fin != XDS_FINISH_NONE) o->finished = 1;
    return fin;
}
