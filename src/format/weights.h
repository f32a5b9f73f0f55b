/*
 * weights.h — one handle over a model's weights, whatever the file format, so
 * the model loader need not care: a GGUF file or a Hugging Face directory
 * (config.json + model.safetensors or sharded safetensors with an index).
 *
 * xds_weights_open(path): a directory is opened as a Hugging Face directory;
 * a regular file is opened as GGUF when it starts with the GGUF magic; a lone
 * .safetensors file (no config.json next to it) is rejected with a message
 * asking for the directory. Tensors are views into read-only mappings owned by
 * the handle; they stay valid until xds_weights_close().
 */
#ifndef XDS_FORMAT_WEIGHTS_H
#define XDS_FORMAT_WEIGHTS_H

#include <stdint.h>

#include "base/status.h"
#include "format/gguf.h"
#include "format/safetensors.h"
#include "tensor/dtype.h"

typedef struct xds_weights xds_weights;

xds_status xds_weights_open(const char *path, xds_weights **out);
void xds_weights_close(xds_weights *w);

/* 1 for a GGUF file, 0 for a Hugging Face directory. */
int xds_weights_is_gguf(const xds_weights *w);
/* The underlying reader; NULL when w is of the other kind. Owned by w. */
xds_gguf *xds_weights_gguf(const xds_weights *w);
xds_hfdir *xds_weights_hfdir(const xds_weights *w);

const char *xds_weights_path(const xds_weights *w);
int64_t xds_weights_n_tensors(const xds_weights *w);
const xds_tensor *xds_weights_tensor(const xds_weights *w, int64_t i);
const xds_tensor *xds_weights_find(const xds_weights *w, const char *name); /* NULL if absent */

#endif
