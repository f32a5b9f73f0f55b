/*
 * copy.h — the byte copy behind one-sided get/put (onesided.c).
 *
 * glibc's memcpy on this class of x86 CPU copies 2 KiB .. 1 MiB with
 * `rep movsb`, which runs at half speed when source and destination differ
 * modulo 64 by 16 bytes and at a quarter when they differ by 8 — exactly the
 * case of a get from a page-aligned registered region into a malloc'd
 * (16 mod 64) KV pool. xccl_copy avoids that path and streams large copies
 * past the cache (docs/PERFORMANCE.md "KV transfer bandwidth"):
 *
 *   len < XCCL_COPY_VEC_MIN                         memcpy
 *   op_bytes >= XCCL_COPY_STREAM_MIN                non-temporal stores (+ sfence)
 *   otherwise, src and dst differ modulo 64         vector loop, 64 B-aligned stores
 *   otherwise                                       memcpy
 *
 * op_bytes is the size of the whole operation this copy is part of (a get,
 * or all ranges of a getv): an operation that large does not stay in the
 * cache anyway, so its stores skip it (no read-for-ownership of the
 * destination lines, no write-back of evicted ones); a smaller one keeps its
 * destination cached for the reader that follows.
 *
 * The vector paths use AVX2 when the CPU has it (checked at run time, the
 * functions carry their own target attribute, so no ISA flags are needed),
 * else SSE2 (baseline x86-64); elsewhere every path is memcpy. Every path
 * writes exactly dst[0, len) = src[0, len) (bit-exact); all stores are
 * complete and ordered before xccl_copy returns (a streaming copy ends with
 * sfence), so a release store after it publishes the data. src and dst must
 * not overlap.
 */
#ifndef XCCL_COPY_H
#define XCCL_COPY_H

#include <stddef.h>

#define XCCL_COPY_VEC_MIN    ((size_t)2048)
#define XCCL_COPY_STREAM_MIN ((size_t)8 << 20)

typedef enum xccl_copy_kind {
    XCCL_COPY_LIBC = 0,    /* memcpy */
    XCCL_COPY_CACHED,      /* vector loop, aligned ordinary stores */
    XCCL_COPY_STREAM,      /* vector loop, aligned non-temporal stores */
    XCCL_COPY_CACHED_SSE2, /* the SSE2 loops even where AVX2 exists (tests) */
    XCCL_COPY_STREAM_SSE2,
} xccl_copy_kind;

/* Copy len bytes from src to dst with the policy above; op_bytes >= len. */
void xccl_copy(void *dst, const void *src, size_t len, size_t op_bytes);
/* The same with a forced kind (benchmarks, tests); CACHED / STREAM fall back
 * to memcpy where there is no x86 vector unit. */
void xccl_copy_with(void *dst, const void *src, size_t len, xccl_copy_kind kind);
/* "avx2", "sse2" or "memcpy": which vector code this CPU runs. */
const char *xccl_copy_isa(void);

#endif
