/*
 * log.h — the log sink (stderr), levels set once from XDS_LOG
 * (error|warn|info|debug; default warn).
 */
#ifndef XDS_BASE_LOG_H
#define XDS_BASE_LOG_H

typedef enum { XDS_LOG_ERROR, XDS_LOG_WARN, XDS_LOG_INFO, XDS_LOG_DEBUG } xds_log_level;

void xds_log(xds_log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int xds_log_enabled(xds_log_level lvl);

#define XDS_LOGE(...) xds_log(XDS_LOG_ERROR, __VA_ARGS__)
#define XDS_LOGW(...) xds_log(XDS_LOG_WARN, __VA_ARGS__)
#define XDS_LOGI(...) xds_log(XDS_LOG_INFO, __VA_ARGS__)
#define XDS_LOGD(...) xds_log(XDS_LOG_DEBUG, __VA_ARGS__)

#endif
