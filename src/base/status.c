/* status.c — status names and the per-thread error message. */
#include "base/status.h"

#include <stdarg.h>
#include <string.h>

static _Thread_local char err_buf[1024];

const char *xds_status_str(xds_status s) {
    switch (s) {
    case XDS_OK: return "ok";
    case XDS_ERR_IO: return "I/O error";
    case XDS_ERR_FORMAT: return "format error";
    case XDS_ERR_UNSUPPORTED: return "unsupported";
    case XDS_ERR_INVALID: return "invalid argument";
    case XDS_ERR_NOMEM: return "out of memory";
    case XDS_ERR_NOT_FOUND: return "not found";
    case XDS_ERR_TIMEOUT: return "timeout";
    case XDS_ERR_PEER: return "peer failure";
    case XDS_ERR_INTERNAL: return "internal error";
    case XDS_ERR_BUSY: return "busy";
    case XDS_ERR_UNAVAILABLE: return "unavailable";
    }
    return "unknown status";
}

/* Keep the message one line even when it quotes file contents (a tensor name
 * with a newline): control characters become '?'. */
static void one_line(char *m) {
    for (; *m; m++)
        if ((unsigned char)*m < 0x20 || *m == 0x7f) *m = '?';
}

xds_status xds_err_set(xds_status s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_buf, sizeof err_buf, fmt, ap);
    va_end(ap);
    one_line(err_buf);
    return s;
}

xds_status xds_err_prefix(xds_status s, const char *fmt, ...) {
    char pre[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    /* err_buf = pre + ": " + err_buf, truncated to the buffer. */
    size_t np = strlen(pre), cap = sizeof err_buf - 1;
    if (np + 2 > cap) np = cap - 2;
    size_t nold = strlen(err_buf);
    if (np + 2 + nold > cap) nold = cap - np - 2;
    memmove(err_buf + np + 2, err_buf, nold);
    memcpy(err_buf, pre, np);
    err_buf[np] = ':';
    err_buf[np + 1] = ' ';
    err_buf[np + 2 + nold] = 0;
    one_line(err_buf);
    return s;
}

const char *xds_err_msg(void) { return err_buf; }
void xds_err_clear(void) { err_buf[0] = 0; }
