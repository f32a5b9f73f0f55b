/*
 * gguf.h — GGUF (v2/v3) reader. The file is mmap'ed read-only; tensor data is
 * used in place. Every offset, size and count in the file is validated against
 * the file size before use: a truncated or corrupt file is an XDS_ERR_FORMAT
 * naming the file and the offending key / tensor / offset, never a crash.
 */
#ifndef XDS_FORMAT_GGUF_H
#define XDS_FORMAT_GGUF_H

#include <stdint.h>

#include "base/status.h"
#include "tensor/dtype.h"

typedef enum xds_gguf_type {
    XDS_GGUF_UINT8 = 0, XDS_GGUF_INT8 = 1, XDS_GGUF_UINT16 = 2, XDS_GGUF_INT16 = 3,
    XDS_GGUF_UINT32 = 4, XDS_GGUF_INT32 = 5, XDS_GGUF_FLOAT32 = 6, XDS_GGUF_BOOL = 7,
    XDS_GGUF_STRING = 8, XDS_GGUF_ARRAY = 9, XDS_GGUF_UINT64 = 10, XDS_GGUF_INT64 = 11,
    XDS_GGUF_FLOAT64 = 12,
} xds_gguf_type;

typedef struct xds_gguf xds_gguf;

xds_status xds_gguf_open(const char *path, xds_gguf **out);
/* Parse a GGUF image already in memory (same parser as xds_gguf_open; used by
 * the fuzzer and tests). `name` is used in messages. The buffer is borrowed:
 * it must outlive g, and tensor data points into it. */
xds_status xds_gguf_open_memory(const void *data, size_t size, const char *name, xds_gguf **out);
void xds_gguf_close(xds_gguf *g);

const char *xds_gguf_path(const xds_gguf *g);
uint32_t xds_gguf_version(const xds_gguf *g);
size_t xds_gguf_file_size(const xds_gguf *g);
uint32_t xds_gguf_alignment(const xds_gguf *g);   /* general.alignment, default 32 */
size_t xds_gguf_data_offset(const xds_gguf *g);   /* file offset of the tensor data section */
const char *xds_gguf_type_name(xds_gguf_type t);  /* "uint32", "string", ... */

/* Metadata key-values. */
int64_t xds_gguf_n_kv(const xds_gguf *g);
const char *xds_gguf_kv_key(const xds_gguf *g, int64_t i);
xds_gguf_type xds_gguf_kv_type(const xds_gguf *g, int64_t i);
int64_t xds_gguf_find_kv(const xds_gguf *g, const char *key); /* -1 if absent */
/* Element type and count of the i-th kv when it is an array (XDS_ERR_FORMAT if not). */
xds_status xds_gguf_kv_arr(const xds_gguf *g, int64_t i, xds_gguf_type *elem_type, uint64_t *n);

/* Typed getters: XDS_ERR_NOT_FOUND if absent, XDS_ERR_FORMAT if of a type that
 * cannot represent the request (any integer type converts when in range). */
xds_status xds_gguf_get_u64(const xds_gguf *g, const char *key, uint64_t *out);
xds_status xds_gguf_get_u32(const xds_gguf *g, const char *key, uint32_t *out);
xds_status xds_gguf_get_i64(const xds_gguf *g, const char *key, int64_t *out);
xds_status xds_gguf_get_f64(const xds_gguf *g, const char *key, double *out); /* float or integer */
xds_status xds_gguf_get_f32(const xds_gguf *g, const char *key, float *out);
xds_status xds_gguf_get_bool(const xds_gguf *g, const char *key, int *out);
/* String value (not NUL-terminated in the file: use len). */
xds_status xds_gguf_get_str(const xds_gguf *g, const char *key, const char **s, uint64_t *len);
/* Array value: element type and count. For non-string arrays *data points at
 * the packed little-endian elements in the mapping (not necessarily aligned:
 * read them with memcpy). For string arrays *data points at the first
 * element's length prefix; use xds_gguf_get_arr_str. */
xds_status xds_gguf_get_arr(const xds_gguf *g, const char *key, xds_gguf_type *elem_type,
                            uint64_t *n, const void **data);
/* i-th string of a string array. */
xds_status xds_gguf_get_arr_str(const xds_gguf *g, const char *key, uint64_t i, const char **s,
                                uint64_t *len);

/* Tensors. */
int64_t xds_gguf_n_tensors(const xds_gguf *g);
const xds_tensor *xds_gguf_tensor(const xds_gguf *g, int64_t i);
const xds_tensor *xds_gguf_find_tensor(const xds_gguf *g, const char *name); /* NULL if absent */

#endif
