/*
 * safetensors.h — safetensors files and Hugging Face model directories.
 *
 * A Hugging Face directory holds config.json and either model.safetensors or
 * shards listed in model.safetensors.index.json ("weight_map"). Files are
 * mmap'ed; tensor data (F32/F16/BF16; other dtypes are XDS_ERR_UNSUPPORTED
 * naming the tensor) is used in place. Header JSON, offsets and shapes are
 * validated against the file before use. Shapes are reported GGUF-style:
 * HF shape [a, b] becomes ne[0] = b, ne[1] = a.
 */
#ifndef XDS_FORMAT_SAFETENSORS_H
#define XDS_FORMAT_SAFETENSORS_H

#include <jansson.h>
#include <stdint.h>

#include "base/status.h"
#include "tensor/dtype.h"

typedef struct xds_safetensors xds_safetensors;

xds_status xds_safetensors_open(const char *path, xds_safetensors **out);
/* Parse a safetensors image already in memory (same parser; fuzzer, tests).
 * `name` is used in messages. The buffer is borrowed: it must outlive f. */
xds_status xds_safetensors_open_memory(const void *data, size_t size, const char *name,
                                       xds_safetensors **out);
void xds_safetensors_close(xds_safetensors *f);
const char *xds_safetensors_path(const xds_safetensors *f);
size_t xds_safetensors_file_size(const xds_safetensors *f);
/* Tensors in data-offset order. */
int64_t xds_safetensors_n_tensors(const xds_safetensors *f);
const xds_tensor *xds_safetensors_tensor(const xds_safetensors *f, int64_t i);
const xds_tensor *xds_safetensors_find(const xds_safetensors *f, const char *name);

typedef struct xds_hfdir xds_hfdir;

xds_status xds_hfdir_open(const char *dir, xds_hfdir **out);
void xds_hfdir_close(xds_hfdir *d);
const char *xds_hfdir_path(const xds_hfdir *d);
/* Parsed config.json (owned by d). */
const json_t *xds_hfdir_config(const xds_hfdir *d);
/* Weight files: 1 for model.safetensors, else the distinct shards of the index
 * (sorted by file name). */
int xds_hfdir_n_files(const xds_hfdir *d);
const xds_safetensors *xds_hfdir_file(const xds_hfdir *d, int i);
/* Tensors ordered by (file, data offset). */
int64_t xds_hfdir_n_tensors(const xds_hfdir *d);
const xds_tensor *xds_hfdir_tensor(const xds_hfdir *d, int64_t i);
const xds_tensor *xds_hfdir_find(const xds_hfdir *d, const char *name); /* NULL if absent */

#endif
