/*
 * status.h — the one status type of xDeepServe, and the per-thread error
 * message that goes with it.
 *
 * Fallible functions return xds_status; on failure the function that first
 * detects the problem records a one-line message with xds_err_set() naming the
 * file / tensor / field / position involved. Callers may prepend context with
 * xds_err_prefix(). Output parameters are written only on success. Library
 * code never calls exit(); asserts (XDS_ASSERT) are for internal bugs only.
 */
#ifndef XDS_BASE_STATUS_H
#define XDS_BASE_STATUS_H

#include <stdio.h>
#include <stdlib.h>

typedef enum xds_status {
    XDS_OK = 0,
    XDS_ERR_IO,          /* open/read/mmap failed */
    XDS_ERR_FORMAT,      /* malformed or corrupt input file / data */
    XDS_ERR_UNSUPPORTED, /* valid but not supported (architecture, dtype, ...) */
    XDS_ERR_INVALID,     /* invalid argument or request (bad UTF-8, too long) */
    XDS_ERR_NOMEM,       /* allocation failed */
    XDS_ERR_NOT_FOUND,   /* missing key / tensor / file */
    XDS_ERR_TIMEOUT,
    XDS_ERR_PEER,        /* a peer process died or misbehaved */
    XDS_ERR_INTERNAL,
    XDS_ERR_BUSY,        /* queue full: try again later (HTTP 429) */
    XDS_ERR_UNAVAILABLE, /* no capacity left to serve it (a deployment that shrank): HTTP 503 + Retry-After */
} xds_status;

/* Human-readable name of a status ("format error", ...). */
const char *xds_status_str(xds_status s);

/* Record the current thread's error message (printf-style); returns `s` so
 * callers can write `return xds_err_set(XDS_ERR_FORMAT, "...", ...);`. */
xds_status xds_err_set(xds_status s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prepend "context: " to the current message; returns `s`. */
xds_status xds_err_prefix(xds_status s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The current thread's last error message ("" if none). */
const char *xds_err_msg(void);
void xds_err_clear(void);

#define XDS_ASSERT(cond)                                                        \
    do {                                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__, __LINE__, \
                    #cond);                                                     \
            abort();                                                            \
        }                                                                       \
    } while (0)

#define XDS_TRY(expr)                        \
    do {                                     \
        xds_status xds_try_s_ = (expr);      \
        if (xds_try_s_ != XDS_OK)            \
            return xds_try_s_;               \
    } while (0)

#endif
