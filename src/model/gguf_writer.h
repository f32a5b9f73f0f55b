/*
 * gguf_writer.h — a minimal streaming GGUF v3 writer for the model tools
 * (`xds upcycle`, the MoE benchmark-model generator). Metadata is collected
 * in memory; tensor data is written at finish time from a source buffer
 * (optionally repeated) or from a fill callback in chunks, so multi-GB files
 * never sit in memory.
 *
 * Invariants: tensor data offsets are aligned to 32 bytes (general.alignment
 * is not written, so readers use the default); names are unique (not checked).
 */
#ifndef XDS_MODEL_GGUF_WRITER_H
#define XDS_MODEL_GGUF_WRITER_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "tensor/dtype.h"

typedef struct xds_gguf_writer xds_gguf_writer;

/* fill(user, buf, off, n): write bytes [off, off + n) of the tensor into buf. */
typedef void (*xds_gguf_fill_fn)(void *user, uint8_t *buf, size_t off, size_t n);

xds_status xds_gguf_writer_create(xds_gguf_writer **out);
void xds_gguf_writer_free(xds_gguf_writer *w);

/* A complete serialized key/value pair (key length, key, type, value), e.g.
 * copied from another GGUF file. */
xds_status xds_gguf_writer_kv_raw(xds_gguf_writer *w, const void *bytes, size_t n);
xds_status xds_gguf_writer_kv_u32(xds_gguf_writer *w, const char *key, uint32_t v);
xds_status xds_gguf_writer_kv_f32(xds_gguf_writer *w, const char *key, float v);
xds_status xds_gguf_writer_kv_bool(xds_gguf_writer *w, const char *key, int v);
xds_status xds_gguf_writer_kv_str(xds_gguf_writer *w, const char *key, const char *v);

/* A tensor of `type` with ne[0..n_dims). Its bytes are `src` (nbytes_src
 * bytes) repeated `repeat` times, or, when src is NULL, produced by fill. */
xds_status xds_gguf_writer_tensor(xds_gguf_writer *w, const char *name, xds_dtype type, int n_dims,
                                  const int64_t *ne, const void *src, size_t nbytes_src, int repeat,
                                  xds_gguf_fill_fn fill, void *fill_user);

/* Write everything to path (created or truncated). */
xds_status xds_gguf_writer_write(xds_gguf_writer *w, const char *path);

#endif
