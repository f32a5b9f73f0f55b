/*
 * copy.c — xccl_copy: the copy behind one-sided get/put (see copy.h for the
 * policy and why). Invariants: every path writes exactly dst[0, len) with
 * the bytes of src[0, len); the vector loops store to 64 B-aligned dst
 * addresses (head and tail go through memcpy) and load unaligned; the
 * streaming loops end with sfence, so the data is globally visible before
 * a later release store (the completion notification).
 */
#include "xccl/copy.h"

#include <stdint.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define XCCL_COPY_X86 1
#else
#define XCCL_COPY_X86 0
#endif

#if XCCL_COPY_X86
/* bytes to copy first so that dst + head is 64 B-aligned (at most len) */
static size_t head_to_align(const void *dst, size_t len) {
    size_t h = (64 - ((uintptr_t)dst & 63)) & 63;
    return h < len ? h : len;
}

static void copy_sse2(uint8_t *d, const uint8_t *s, size_t len, int stream) {
    size_t h = head_to_align(d, len), i = h;
    memcpy(d, s, h);
    if (stream) {
        for (; i + 64 <= len; i += 64) {
            __m128i a = _mm_loadu_si128((const __m128i *)(s + i)),
                    b = _mm_loadu_si128((const __m128i *)(s + i + 16));
            __m128i c = _mm_loadu_si128((const __m128i *)(s + i + 32)),
                    e = _mm_loadu_si128((const __m128i *)(s + i + 48));
            _mm_stream_si128((__m128i *)(d + i), a);
            _mm_stream_si128((__m128i *)(d + i + 16), b);
            _mm_stream_si128((__m128i *)(d + i + 32), c);
            _mm_stream_si128((__m128i *)(d + i + 48), e);
        }
        _mm_sfence();
    } else {
        for (; i + 64 <= len; i += 64) {
            __m128i a = _mm_loadu_si128((const __m128i *)(s + i)),
                    b = _mm_loadu_si128((const __m128i *)(s + i + 16));
            __m128i c = _mm_loadu_si128((const __m128i *)(s + i + 32)),
                    e = _mm_loadu_si128((const __m128i *)(s + i + 48));
            _mm_store_si128((__m128i *)(d + i), a);
            _mm_store_si128((__m128i *)(d + i + 16), b);
            _mm_store_si128((__m128i *)(d + i + 32), c);
            _mm_store_si128((__m128i *)(d + i + 48), e);
        }
    }
    memcpy(d + i, s + i, len - i);
}

__attribute__((target("avx2"))) static void copy_avx2(uint8_t *d, const uint8_t *s, size_t len,
                                                      int stream) {
    size_t h = head_to_align(d, len), i = h;
    memcpy(d, s, h);
    if (stream) {
        for (; i + 128 <= len; i += 128) {
            __m256i a = _mm256_loadu_si256((const __m256i *)(s + i));
            __m256i b = _mm256_loadu_si256((const __m256i *)(s + i + 32));
            __m256i c = _mm256_loadu_si256((const __m256i *)(s + i + 64));
            __m256i e = _mm256_loadu_si256((const __m256i *)(s + i + 96));
            _mm256_stream_si256((__m256i *)(d + i), a);
            _mm256_stream_si256((__m256i *)(d + i + 32), b);
            _mm256_stream_si256((__m256i *)(d + i + 64), c);
            _mm256_stream_si256((__m256i *)(d + i + 96), e);
        }
        _mm_sfence();
    } else {
        for (; i + 128 <= len; i += 128) {
            __m256i a = _mm256_loadu_si256((const __m256i *)(s + i));
            __m256i b = _mm256_loadu_si256((const __m256i *)(s + i + 32));
            __m256i c = _mm256_loadu_si256((const __m256i *)(s + i + 64));
            __m256i e = _mm256_loadu_si256((const __m256i *)(s + i + 96));
            _mm256_store_si256((__m256i *)(d + i), a);
            _mm256_store_si256((__m256i *)(d + i + 32), b);
            _mm256_store_si256((__m256i *)(d + i + 64), c);
            _mm256_store_si256((__m256i *)(d + i + 96), e);
        }
    }
    _mm256_zeroupper();
    memcpy(d + i, s + i, len - i);
}

static int have_avx2(void) {
    __builtin_cpu_init(); /* idempotent; needed if called before constructors ran */
    return __builtin_cpu_supports("avx2");
}
#endif

const char *xccl_copy_isa(void) {
#if XCCL_COPY_X86
    return have_avx2() ? "avx2" : "sse2";
#else
    return "memcpy";
#endif
}

void xccl_copy_with(void *dst, const void *src, size_t len, xccl_copy_kind kind) {
#if XCCL_COPY_X86
    if (kind != XCCL_COPY_LIBC) {
        int stream = kind == XCCL_COPY_STREAM || kind == XCCL_COPY_STREAM_SSE2;
        if (kind <= XCCL_COPY_STREAM && have_avx2())
            copy_avx2(dst, src, len, stream);
        else
            copy_sse2(dst, src, len, stream);
        return;
    }
#endif
    if (len) memcpy(dst, src, len);
}

void xccl_copy(void *dst, const void *src, size_t len, size_t op_bytes) {
    xccl_copy_kind kind;
    if (len < XCCL_COPY_VEC_MIN)
        kind = XCCL_COPY_LIBC;
    else if (op_bytes >= XCCL_COPY_STREAM_MIN)
        kind = XCCL_COPY_STREAM;
    else if (((uintptr_t)dst - (uintptr_t)src) & 63)
        kind = XCCL_COPY_CACHED;
    else
        kind = XCCL_COPY_LIBC;
    xccl_copy_with(dst, src, len, kind);
}
