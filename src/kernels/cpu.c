/*
 * cpu.c — run-time choice of the kernel level (portable C, AVX2+FMA+F16C,
 * AVX-512 F/BW/VL/VNNI) from the CPU's features, overridable with
 * XDS_CPU=generic|avx2|avx512 (clamped to what the CPU and OS support).
 *
 * The chosen level is process state (one cached atomic int, the only mutable
 * global here): detected on first use, changed only by xds_cpu_level_set.
 */
#include <stdatomic.h>
#include <stdint.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "kernels/kern_impl.h"

static _Atomic int g_level = -1; /* -1: not yet detected */

#if defined(__x86_64__)
/* XCR0 (which register states the OS saves), via xgetbv. */
static uint64_t xgetbv0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}
#endif

/* Feature bits straight from cpuid (portable across gcc and clang, whose
 * __builtin_cpu_supports names differ), plus the OS's XCR0 state: AVX needs
 * XMM|YMM saved, AVX-512 also opmask|ZMM_Hi256|Hi16_ZMM. */
static xds_cpu_level cpu_level_max(void) {
#if defined(__x86_64__)
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return XDS_CPU_GENERIC;
    int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, f16c = (c >> 29) & 1;
    if (!osxsave || !avx) return XDS_CPU_GENERIC;
    uint64_t xcr0 = xgetbv0();
    if ((xcr0 & 0x6) != 0x6) return XDS_CPU_GENERIC;
    if (__get_cpuid_max(0, NULL) < 7) return XDS_CPU_GENERIC;
    __cpuid_count(7, 0, a, b, c, d);
    int avx2 = (b >> 5) & 1, avx512f = (b >> 16) & 1, avx512dq = (b >> 17) & 1,
        avx512bw = (b >> 30) & 1, avx512vl = (b >> 31) & 1, vnni = (c >> 11) & 1;
    unsigned a1 = 0, b1, c1, d1;
    __cpuid_count(7, 1, a1, b1, c1, d1);
    int bf16 = (a1 >> 5) & 1;
    if (avx512f && avx512dq && avx512bw && avx512vl && vnni && bf16 && fma && f16c &&
        (xcr0 & 0xe6) == 0xe6)
        return XDS_CPU_AVX512;
    if (avx2 && fma && f16c) return XDS_CPU_AVX2;
#endif
    return XDS_CPU_GENERIC;
}

xds_cpu_level xds_cpu_level_get(void) {
    int l = atomic_load_explicit(&g_level, memory_order_relaxed);
    if (l >= 0) return (xds_cpu_level)l;
    xds_cpu_level max = cpu_level_max(), want = max;
    const char *env = getenv("XDS_CPU");
    if (env && *env) {
        if (!strcmp(env, "generic")) want = XDS_CPU_GENERIC;
        else if (!strcmp(env, "avx2")) want = XDS_CPU_AVX2;
        else if (!strcmp(env, "avx512")) want = XDS_CPU_AVX512;
        else XDS_LOGW("XDS_CPU=%s not understood (generic|avx2|avx512); using %s", env,
                      xds_cpu_level_name(max));
        if (want > max) {
            XDS_LOGW("XDS_CPU=%s not supported by this CPU; using %s", env, xds_cpu_level_name(max));
            want = max;
        }
    }
    atomic_store(&g_level, (int)want);
    return want;
}

void xds_cpu_level_set(xds_cpu_level l) {
    xds_cpu_level max = cpu_level_max();
    if ((int)l < 0) l = XDS_CPU_GENERIC;
    if (l > max) l = max;
    atomic_store(&g_level, (int)l);
}

const char *xds_cpu_level_name(xds_cpu_level l) {
    switch (l) {
    case XDS_CPU_GENERIC: return "generic";
    case XDS_CPU_AVX2: return "avx2";
    case XDS_CPU_AVX512: return "avx512";
    }
    return "?";
}

const xds_kern_table *xds_kern_table_get(xds_cpu_level l) {
    static const xds_kern_table generic = {xds_act_quant_generic, xds_qgemm_generic,
                                           xds_fgemm_generic};
#if defined(__x86_64__)
    static const xds_kern_table avx2 = {xds_act_quant_avx2, xds_qgemm_avx2, xds_fgemm_avx2};
    static const xds_kern_table avx512 = {xds_act_quant_avx512, xds_qgemm_avx512,
                                          xds_fgemm_avx512};
    if (l == XDS_CPU_AVX512) return &avx512;
    if (l == XDS_CPU_AVX2) return &avx2;
#endif
    return &generic;
}
