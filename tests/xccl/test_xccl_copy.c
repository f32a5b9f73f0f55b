/*
 * test_xccl_copy.c — the copy behind one-sided get/put (src/xccl/copy.h) and
 * the batched get xccl_getv between real processes.
 *
 * 1. xccl_copy_with, every kind (memcpy; cached and streaming vector loops,
 *    AVX2 where the CPU has it and SSE2 always) and
 *    xccl_copy's own choice, for every (src, dst) offset pair modulo 64 in a
 *    sample of sizes around the loop widths and thresholds: the destination
 *    equals the source and not one guard byte before or after it changes.
 * 2. xccl_getv: rank 1 owns a region filled with known bytes; rank 0 pulls
 *    scattered ranges at offsets that are mutually misaligned with its
 *    destinations, once small (cached path) and once over
 *    XCCL_COPY_STREAM_MIN in total (streaming path); every byte is checked,
 *    each getv counts as one completed operation for the owner, and a range
 *    outside the region fails with XCCL_ERR_RANGE before any byte is copied.
 */
#include "xccl_testutil.h"

#include "../../src/xccl/copy.h"

#define GUARD 128

static int check_copy(size_t len, int so, int dof, int kind, uint64_t seed) {
    size_t span = len + 2 * GUARD + 64,
           rounded = (span + 63) / 64 * 64; /* aligned_alloc: a multiple of 64 */
    uint8_t *src = aligned_alloc(64, rounded), *dst = aligned_alloc(64, rounded),
            *want = malloc(span);
    tu_fill(src, span, seed);
    tu_fill(dst, span, seed ^ 0x5555);
    memcpy(want, dst, span);
    memcpy(want + GUARD + dof, src + GUARD + so, len);
    if (kind < 0)
        xccl_copy(dst + GUARD + dof, src + GUARD + so, len, len);
    else
        xccl_copy_with(dst + GUARD + dof, src + GUARD + so, len, (xccl_copy_kind)kind);
    int ok = memcmp(dst, want, span) == 0;
    free(src), free(dst), free(want);
    return ok;
}

static void test_copy_kinds(void) {
    static const size_t sizes[] = {0,   1,   15,   63,   64,   65,   127,       128,
                                   129, 255, 1000, 2047, 2048, 2049, 4096 + 37, 70001};
    int bad = 0, n = 0;
    for (int kind = -1; kind <= XCCL_COPY_STREAM_SSE2; kind++)
        for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++)
            for (int so = 0; so<64; so += sizes[si]> 4096 ? 7 : 1 + (int)(si & 3))
                for (int dof = 0; dof<64; dof += sizes[si]> 4096 ? 7 : 1 + (so & 3)) {
                    n++;
                    if (!check_copy(sizes[si], so, dof, kind, tu_seed(si, so, dof))) {
                        if (bad++ < 5)
                            fprintf(stderr, "copy kind %d len %zu src+%d dst+%d differs\n", kind,
                                    sizes[si], so, dof);
                    }
                }
    CHECK_MSG(bad == 0, "%d of %d copies differ", bad, n);
    /* one large copy per kind, misaligned both ways (1 MiB + odd tail) */
    for (int kind = -1; kind <= XCCL_COPY_STREAM_SSE2; kind++)
        CHECK_MSG(check_copy((1u << 20) + 77, 8, 24, kind, 99), "large copy kind %d", kind);
    CHECK(check_copy(XCCL_COPY_STREAM_MIN + 5, 0, 16, -1, 7));
    printf("copy: %d offset/size/kind combinations bit-exact (vector code: %s)\n", n,
           xccl_copy_isa());
}

static int seg_fd;
#define REGION_BYTES ((size_t)(XCCL_COPY_STREAM_MIN + (3u << 20)))

/* ranges for round r: n ranges of the region, disjoint destinations */
static int make_ranges(xccl_iov *iov, uint8_t *dst, int round, size_t *total) {
    uint64_t s = tu_seed(round, 77, 1);
    int n = round == 0 ? 40 : 12;
    size_t d = 0;
    *total = 0;
    for (int i = 0; i < n; i++) {
        size_t len = round == 0 ? (size_t)tu_range(&s, 0, 9000)
                                : XCCL_COPY_STREAM_MIN / 10 + (size_t)tu_range(&s, 0, 4096);
        size_t off = (size_t)tu_range(&s, 0, (int)(REGION_BYTES - len));
        d += (size_t)tu_range(&s, 1, 63); /* destination misaligned to the source by anything */
        iov[i] = (xccl_iov){.buf = dst + d, .offset = off, .len = len};
        d += len;
        *total += len;
    }
    return n;
}

static int rank_main(int rank, int n, void *arg) {
    (void)n, (void)arg;
    xccl_comm *c = NULL;
    XCHECK(xccl_comm_attach_fd(&c, seg_fd, rank, 7));
    if (!c) return 1;
    xccl_comm_set_timeout(c, 20000);
    xccl_region reg;
    XCHECK(xccl_region_alloc(&reg, REGION_BYTES, c));
    tu_fill(reg.base, REGION_BYTES, tu_seed(1, 2, 3));
    XCHECK(xccl_barrier(c, xccl_comm_world(c)));
    if (rank == 0) {
        size_t cap = 2 * REGION_BYTES;
        uint8_t *dst = malloc(cap), *want = malloc(cap), *ref = malloc(REGION_BYTES);
        tu_fill(ref, REGION_BYTES, tu_seed(1, 2, 3));
        xccl_iov iov[64];
        for (int round = 0; round < 2; round++) {
            size_t total;
            int k = make_ranges(iov, dst, round, &total);
            memset(dst, 0xA5, cap);
            memset(want, 0xA5, cap);
            for (int i = 0; i < k; i++)
                memcpy(want + ((uint8_t *)iov[i].buf - dst), ref + iov[i].offset, iov[i].len);
            XCHECK(xccl_getv(c, 1, reg.id, iov, k));
            CHECK_MSG(memcmp(dst, want, cap) == 0,
                      "getv round %d: %d ranges, %zu bytes (streaming: %d)", round, k, total,
                      total >= XCCL_COPY_STREAM_MIN);
        }
        /* a bad range anywhere: nothing copied */
        size_t total;
        int k = make_ranges(iov, dst, 0, &total);
        iov[k - 1].offset = REGION_BYTES - 1, iov[k - 1].len = 2;
        memset(dst, 0x11, cap);
        CHECK(xccl_getv(c, 1, reg.id, iov, k) == XCCL_ERR_RANGE && strstr(xccl_err_msg(), "range"));
        int untouched = 1;
        for (size_t i = 0; i < cap; i++) untouched &= dst[i] == 0x11;
        CHECK_MSG(untouched, "a failed getv wrote into the destination");
        CHECK(xccl_getv(c, 1, 999, iov, 1) == XCCL_ERR_INVALID);
        CHECK(xccl_getv(c, 1, reg.id, iov, -1) == XCCL_ERR_INVALID);
        XCHECK(xccl_getv(c, 1, reg.id, iov, 0));
        free(dst), free(want), free(ref);
    }
    XCHECK(xccl_barrier(c, xccl_comm_world(c)));
    if (rank ==
        1) /* two successful getv and one empty one: three operations, the failed ones none */
        CHECK_MSG(xccl_notify_count(c, 0) == 3, "rank 0 completed %llu operations on my region",
                  (unsigned long long)xccl_notify_count(c, 0));
    XCHECK(xccl_barrier(c, xccl_comm_world(c)));
    xccl_region_deregister(c, &reg);
    xccl_comm_detach(c);
    return TU_CHILD_RESULT();
}

int main(void) {
    test_copy_kinds();
    xccl_config cfg;
    xccl_config_default(&cfg, 2);
    xccl_segment *seg = tu_segment(&cfg);
    seg_fd = xccl_segment_fd(seg);
    int failed = tu_run_ranks(2, rank_main, NULL, 60);
    CHECK_MSG(failed == 0, "%d ranks failed", failed);
    xccl_segment_destroy(seg);
    TEST_MAIN_END();
}
