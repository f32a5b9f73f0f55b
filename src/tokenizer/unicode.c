/*
 * unicode.c — strict UTF-8 validation / decoding and NFC normalization for the
 * tokenizer. NFC = full canonical decomposition (tables + Hangul arithmetic),
 * canonical ordering of combining marks (stable by class), then canonical
 * composition (primary composites, "blocked" rule, Hangul LV/LVT).
 * Invariant: inputs are valid UTF-8 (callers validate first).
 */
#include "tokenizer/unicode.h"

#include <stdlib.h>
#include <string.h>

#include "tokenizer/unicode_tables.h"

int xds_utf8_seq_len(const unsigned char *s, size_t n) {
    if (n == 0) return 0;
    unsigned c = s[0];
    if (c < 0x80) return 1;
    int len;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c == 0xE0) { len = 3; lo = 0xA0; }
    else if (c >= 0xE1 && c <= 0xEC) len = 3;
    else if (c == 0xED) { len = 3; hi = 0x9F; }
    else if (c >= 0xEE && c <= 0xEF) len = 3;
    else if (c == 0xF0) { len = 4; lo = 0x90; }
    else if (c >= 0xF1 && c <= 0xF3) len = 4;
    else if (c == 0xF4) { len = 4; hi = 0x8F; }
    else return 0;
    if (n < (size_t)len) return 0;
    if (s[1] < lo || s[1] > hi) return 0;
    for (int i = 2; i < len; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    return len;
}

size_t xds_utf8_invalid_len(const unsigned char *s, size_t n, int *incomplete) {
    *incomplete = 0;
    unsigned c = s[0];
    int len;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c == 0xE0) { len = 3; lo = 0xA0; }
    else if (c >= 0xE1 && c <= 0xEC) len = 3;
    else if (c == 0xED) { len = 3; hi = 0x9F; }
    else if (c >= 0xEE && c <= 0xEF) len = 3;
    else if (c == 0xF0) { len = 4; lo = 0x90; }
    else if (c >= 0xF1 && c <= 0xF3) len = 4;
    else if (c == 0xF4) { len = 4; hi = 0x8F; }
    else return 1; /* stray continuation byte or impossible lead byte */
    size_t i = 1;
    for (; i < (size_t)len; i++) {
        if (i >= n) { *incomplete = 1; return i; }
        unsigned l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
        if (s[i] < l || s[i] > h) return i;
    }
    return i; /* complete and valid: callers only ask when it is not */
}

size_t xds_utf8_validate(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        if (p[i] < 0x80) { i++; continue; }
        int l = xds_utf8_seq_len(p + i, n - i);
        if (!l) return i;
        i += l;
    }
    return n;
}

int xds_utf8_decode(const unsigned char *s, uint32_t *cp) {
    unsigned c = s[0];
    if (c < 0x80) { *cp = c; return 1; }
    if (c < 0xE0) { *cp = ((c & 0x1F) << 6) | (s[1] & 0x3F); return 2; }
    if (c < 0xF0) { *cp = ((c & 0x0F) << 12) | ((s[1] & 0x3F) << 6) | (s[2] & 0x3F); return 3; }
    *cp = ((c & 0x07) << 18) | ((s[1] & 0x3F) << 12) | ((s[2] & 0x3F) << 6) | (s[3] & 0x3F);
    return 4;
}

int xds_utf8_encode(uint32_t cp, char *out) {
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) { o[0] = cp; return 1; }
    if (cp < 0x800) { o[0] = 0xC0 | (cp >> 6); o[1] = 0x80 | (cp & 0x3F); return 2; }
    if (cp < 0x10000) {
        o[0] = 0xE0 | (cp >> 12); o[1] = 0x80 | ((cp >> 6) & 0x3F); o[2] = 0x80 | (cp & 0x3F);
        return 3;
    }
    o[0] = 0xF0 | (cp >> 18); o[1] = 0x80 | ((cp >> 12) & 0x3F);
    o[2] = 0x80 | ((cp >> 6) & 0x3F); o[3] = 0x80 | (cp & 0x3F);
    return 4;
}

/* ---- NFC ---------------------------------------------------------------- */

enum { SBASE = 0xAC00, LBASE = 0x1100, VBASE = 0x1161, TBASE = 0x11A7,
       LCOUNT = 19, VCOUNT = 21, TCOUNT = 28, NCOUNT = VCOUNT * TCOUNT, SCOUNT = LCOUNT * NCOUNT };

static int ccc_of(uint32_t cp) {
    if (cp < 0x300) return 0;
    size_t lo = 0, hi = sizeof xds_ccc_ranges / sizeof xds_ccc_ranges[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < xds_ccc_ranges[mid][0]) hi = mid;
        else if (cp > xds_ccc_ranges[mid][1]) lo = mid + 1;
        else return (int)xds_ccc_ranges[mid][2];
    }
    return 0;
}

static const uint32_t *decomp_of(uint32_t cp, int *len) {
    size_t lo = 0, hi = sizeof xds_decomp_index / sizeof xds_decomp_index[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < xds_decomp_index[mid][0]) hi = mid;
        else if (cp > xds_decomp_index[mid][0]) lo = mid + 1;
        else { *len = (int)xds_decomp_index[mid][2]; return xds_decomp_cps + xds_decomp_index[mid][1]; }
    }
    return NULL;
}

static uint32_t compose_pair(uint32_t a, uint32_t b) {
    /* Hangul LV and LVT */
    if (a >= LBASE && a < LBASE + LCOUNT && b >= VBASE && b < VBASE + VCOUNT)
        return SBASE + ((a - LBASE) * VCOUNT + (b - VBASE)) * TCOUNT;
    if (a >= SBASE && a < SBASE + SCOUNT && (a - SBASE) % TCOUNT == 0 && b > TBASE && b < TBASE + TCOUNT)
        return a + (b - TBASE);
    size_t lo = 0, hi = sizeof xds_comp_pairs / sizeof xds_comp_pairs[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const uint32_t *p = xds_comp_pairs[mid];
        if (a < p[0] || (a == p[0] && b < p[1])) hi = mid;
        else if (a > p[0] || b > p[1]) lo = mid + 1;
        else return p[2];
    }
    return 0;
}

int xds_unicode_nfc(const char *s, size_t n, char **out, size_t *out_len) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, ncp = 0;
    int need = 0;
    while (i < n) {
        uint32_t cp;
        i += xds_utf8_decode(p + i, &cp);
        ncp++;
        if (cp >= 0x300) need = 1;
    }
    *out = NULL;
    *out_len = 0;
    if (!need) return 0;
    /* decomposition can grow a code point into at most 4 (Hangul: 3) */
    uint32_t *cps = malloc((ncp * 4 + 1) * sizeof *cps);
    if (!cps) return -1;
    size_t m = 0;
    for (i = 0; i < n;) {
        uint32_t cp;
        i += xds_utf8_decode(p + i, &cp);
        if (cp >= SBASE && cp < SBASE + SCOUNT) {
            uint32_t si = cp - SBASE;
            cps[m++] = LBASE + si / NCOUNT;
            cps[m++] = VBASE + (si % NCOUNT) / TCOUNT;
            if (si % TCOUNT) cps[m++] = TBASE + si % TCOUNT;
            continue;
        }
        int dl = 0;
        const uint32_t *d = cp >= XDS_NFC_MIN_CP ? decomp_of(cp, &dl) : NULL;
        if (d) for (int k = 0; k < dl; k++) cps[m++] = d[k];
        else cps[m++] = cp;
    }
    /* canonical ordering: stable insertion sort of each run of nonzero classes */
    for (size_t a = 1; a < m; a++) {
        int ca = ccc_of(cps[a]);
        if (!ca) continue;
        size_t b = a;
        uint32_t v = cps[a];
        while (b > 0) {
            int cb = ccc_of(cps[b - 1]);
            if (cb <= ca) break;
            cps[b] = cps[b - 1];
            b--;
        }
        cps[b] = v;
    }
    /* canonical composition (UAX #15 sample algorithm): last_cc is the class
     * of the last code point kept after the current starter, 0 when the
     * starter is the last one kept (adjacent), 256 before any starter. */
    if (m > 0) {
        size_t starter = 0, w = 1;
        int last_cc = ccc_of(cps[0]) ? 256 : 0;
        for (size_t r = 1; r < m; r++) {
            uint32_t c = cps[r];
            int cc = ccc_of(c);
            uint32_t comp = last_cc < 256 && (last_cc < cc || last_cc == 0) ? compose_pair(cps[starter], c) : 0;
            if (comp) {
                cps[starter] = comp;
                continue;
            }
            if (cc == 0) {
                starter = w;
                last_cc = 0;
            } else if (last_cc != 256) {
                last_cc = cc;
            }
            cps[w++] = c;
        }
        m = w;
    }
    char *buf = malloc(m * 4 + 1);
    if (!buf) { free(cps); return -1; }
    size_t o = 0;
    for (size_t k = 0; k < m; k++) o += xds_utf8_encode(cps[k], buf + o);
    buf[o] = 0;
    free(cps);
    *out = buf;
    *out_len = o;
    return 0;
}
