/*
 * status.c — XCCL's per-thread error message and the rank it names.
 *
 * Invariant: the first function that detects an error records the message;
 * callers may prefix one line of context with xccl_err_prefix().
 */
#include "xccl_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static _Thread_local char err_msg[512];
static _Thread_local int err_rank = -1;

const char *xccl_status_str(xccl_status s) {
    switch (s) {
    case XCCL_OK: return "ok";
    case XCCL_ERR_INVALID: return "invalid argument";
    case XCCL_ERR_NOMEM: return "out of memory";
    case XCCL_ERR_IO: return "i/o error";
    case XCCL_ERR_VERSION: return "version mismatch";
    case XCCL_ERR_CORRUPT: return "corrupt segment";
    case XCCL_ERR_TRUNCATED: return "message truncated";
    case XCCL_ERR_RANGE: return "out of range";
    case XCCL_ERR_TIMEOUT: return "timeout";
    case XCCL_ERR_PEER: return "peer failure";
    }
    return "unknown status";
}

const char *xccl_err_msg(void) { return err_msg; }
int xccl_err_rank(void) { return err_rank; }

xccl_status xccl_err(xccl_status s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_msg, sizeof err_msg, fmt, ap);
    va_end(ap);
    err_rank = -1;
    return s;
}

xccl_status xccl_err_peer(xccl_status s, int rank, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_msg, sizeof err_msg, fmt, ap);
    va_end(ap);
    err_rank = rank;
    return s;
}

void xccl_err_prefix(const char *fmt, ...) {
    char pre[256], old[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    memcpy(old, err_msg, sizeof old);
    snprintf(err_msg, sizeof err_msg, "%.200s: %.300s", pre, old);
}

uint64_t xccl_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t xccl_fnv1a(const void *p, size_t n) {
    const uint8_t *b = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 1099511628211ull;
    }
    return h;
}

/* bf16 <-> f32: bit-exact, round to nearest even, NaN kept quiet. */
float xccl_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t xccl_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

void xccl_quantize_row_i8(int8_t *q, float *scale, const void *x, xccl_dtype dtype, int hidden) {
    float amax = 0.f;
    const float *xf = x;
    const uint16_t *xb = x;
    for (int i = 0; i < hidden; i++) {
        float v = dtype == XCCL_F32 ? xf[i] : xccl_bf16_to_f32(xb[i]);
        float a = v < 0 ? -v : v;
        if (a > amax) amax = a;
    }
    float s = amax / 127.f;
    float inv = s > 0 ? 1.f / s : 0.f;
    for (int i = 0; i < hidden; i++) {
        float v = dtype == XCCL_F32 ? xf[i] : xccl_bf16_to_f32(xb[i]);
        float r = __builtin_roundf(v * inv);
        if (r > 127.f) r = 127.f;
        if (r < -127.f) r = -127.f;
        if (r != r) r = 0.f;
        q[i] = (int8_t)r;
    }
    *scale = s;
}
