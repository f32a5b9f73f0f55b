/* log.c — leveled logging to stderr. */
#include "base/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int log_level(void) {
    static int level = -1; /* read once; benign race (same value) */
    if (level < 0) {
        const char *e = getenv("XDS_LOG");
        int l = XDS_LOG_WARN;
        if (e) {
            if (!strcmp(e, "error")) l = XDS_LOG_ERROR;
            else if (!strcmp(e, "info")) l = XDS_LOG_INFO;
            else if (!strcmp(e, "debug")) l = XDS_LOG_DEBUG;
        }
        level = l;
    }
    return level;
}

int xds_log_enabled(xds_log_level lvl) { return (int)lvl <= log_level(); }

void xds_log(xds_log_level lvl, const char *fmt, ...) {
    static const char *names[] = {"error", "warn", "info", "debug"};
    if (!xds_log_enabled(lvl)) return;
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fprintf(stderr, "[xds %s] %s\n", names[lvl], buf);
}
