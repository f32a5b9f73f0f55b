/*
 * threadpool.h — a persistent pool of worker threads for data-parallel loops.
 *
 * Threads are created once (xds_pool_create) and reused for every op: a run
 * wakes them (spin briefly, then futex), each claims task indices from a
 * shared atomic counter, and the caller participates and returns when all
 * tasks are done. No thread is created per op.
 */
#ifndef XDS_BASE_THREADPOOL_H
#define XDS_BASE_THREADPOOL_H

#include <stddef.h>

#include "base/status.h"

typedef struct xds_pool xds_pool;

/* fn(ctx, task, thread): task in [0, n_tasks), thread in [0, pool size). */
typedef void (*xds_pool_fn)(void *ctx, int task, int thread);

/* n_threads counts the caller; 1 means run everything on the caller. */
xds_status xds_pool_create(int n_threads, xds_pool **out);
void xds_pool_free(xds_pool *p);
int xds_pool_size(const xds_pool *p);
/* Run tasks 0..n_tasks-1 in parallel; returns when all have finished.
 * p may be NULL (runs serially). Not reentrant from inside a task. */
void xds_pool_run(xds_pool *p, xds_pool_fn fn, void *ctx, int n_tasks);
/* A scratch buffer of at least `bytes` owned by the pool (64-byte aligned),
 * for the caller of xds_pool_run; valid until the next call. The kernels
 * (xds_matmul*) use it for the quantized activations, so a caller must be done
 * with it before calling them. NULL if p is NULL or allocation failed. */
void *xds_pool_scratch(xds_pool *p, size_t bytes);

#endif
