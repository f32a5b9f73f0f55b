/*
 * test_xccl_segment.c — segment creation and attach, and bad input:
 * named shm and memfd-over-unix-socket attach from real processes, rank
 * table contents, another layout version, corrupt headers, an object too
 * small, a rank that does not fit, a rank held by a live process, a rank
 * count that does not fit a fixed-size segment. Every failure must give a
 * clear error and leave the rank table and the shm namespace untouched.
 */
#include "xccl_testutil.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/socket.h>

static char shm_name[64];
static int sock_pair[2][2];

/* segment header fields (layout: see src/xccl/xccl_internal.h) */
#define OFF_VERSION  8
#define OFF_NRANKS   24
#define OFF_RANKTAB  4096 /* rank table at one page, 1 KiB per rank: state u32, role u32, pid i32 */

static int named_rank(int rank, int n, void *arg) {
    (void)arg;
    xccl_comm *c = NULL;
    XCHECK(xccl_comm_attach(&c, shm_name, rank, 100 + rank));
    if (!c) return 1;
    CHECK(xccl_comm_rank(c) == rank && xccl_comm_size(c) == n);
    CHECK(strcmp(xccl_comm_transport(c), "shm") == 0);
    XCHECK(xccl_barrier(c, xccl_comm_world(c)));
    for (int p = 0; p < n; p++) XCHECK(xccl_peer_check(c, p));
    /* a second attach of my rank while I live fails and changes nothing */
    xccl_comm *c2 = NULL;
    CHECK(xccl_comm_attach(&c2, shm_name, rank, 0) == XCCL_ERR_INVALID && c2 == NULL);
    CHECK(strstr(xccl_err_msg(), "held by live pid") != NULL);
    XCHECK(xccl_barrier(c, xccl_comm_world(c)));
    int peer = (rank + 1) % n;
    int v = rank * 10, got = -1;
    size_t len = 0;
    XCHECK(xccl_send(c, peer, &v, sizeof v));
    XCHECK(xccl_recv(&len, &got, sizeof got, c, (rank + n - 1) % n));
    CHECK(len == sizeof got && got == ((rank + n - 1) % n) * 10);
    XCHECK(xccl_barrier(c, xccl_comm_world(c)));
    xccl_comm_detach(c);
    return TU_CHILD_RESULT();
}

static int fd_rank(int rank, int n, void *arg) {
    (void)arg;
    (void)n;
    int fd = -1;
    close(sock_pair[rank][0]);
    XCHECK(xccl_fd_recv(sock_pair[rank][1], &fd));
    xccl_comm *c = NULL;
    XCHECK(xccl_comm_attach_fd(&c, fd, rank, 0));
    close(fd);
    if (!c) return 1;
    uint64_t big[512];
    size_t len = 0;
    if (rank == 0) {
        for (int i = 0; i < 512; i++) big[i] = (uint64_t)i * 7919u;
        XCHECK(xccl_send(c, 1, big, sizeof big));
    } else {
        XCHECK(xccl_recv(&len, big, sizeof big, c, 0));
        int ok = len == sizeof big;
        for (int i = 0; i < 512; i++) ok &= big[i] == (uint64_t)i * 7919u;
        CHECK(ok);
    }
    XCHECK(xccl_barrier(c, xccl_comm_world(c)));
    xccl_comm_detach(c);
    return TU_CHILD_RESULT();
}

static uint32_t rank_state(void *base, int r) {
    uint32_t st;
    memcpy(&st, (uint8_t *)base + OFF_RANKTAB + r * 1024, 4);
    return st;
}

int main(void) {
    snprintf(shm_name, sizeof shm_name, "/xccl-test-seg-%d", (int)getpid());
    xccl_config cfg;
    xccl_config_default(&cfg, 3);
    cfg.slot_bytes = 1024;
    cfg.num_slots = 4;
    cfg.coll_bytes = 4096;

    /* 1. named segment, 3 ranks */
    xccl_segment *seg = NULL;
    XCHECK(xccl_segment_create(&seg, shm_name, &cfg));
    CHECK(xccl_segment_create(&seg, shm_name, &cfg) == XCCL_ERR_IO); /* exists */
    int failed = tu_run_ranks(3, named_rank, NULL, 30);
    CHECK_MSG(failed == 0, "%d named ranks failed", failed);
    uint64_t bytes = xccl_config_segment_bytes(&cfg);
    void *base = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, xccl_segment_fd(seg), 0);
    CHECK(base != MAP_FAILED);
    for (int r = 0; r < 3; r++) CHECK(rank_state(base, r) == XCCL_RANK_LEFT);

    /* 2. bad input on attach: each leaves the rank table as it was */
    xccl_comm *c = NULL;
    CHECK(xccl_comm_attach(&c, shm_name, 3, 0) == XCCL_ERR_RANGE && c == NULL);
    CHECK(strstr(xccl_err_msg(), "does not fit") != NULL);
    CHECK(xccl_comm_attach(&c, shm_name, -1, 0) == XCCL_ERR_RANGE);
    uint32_t ver;
    memcpy(&ver, (uint8_t *)base + OFF_VERSION, 4);
    uint32_t other = ver + 1;
    memcpy((uint8_t *)base + OFF_VERSION, &other, 4);
    CHECK(xccl_comm_attach(&c, shm_name, 0, 0) == XCCL_ERR_VERSION && c == NULL);
    CHECK(strstr(xccl_err_msg(), "version") != NULL);
    memcpy((uint8_t *)base + OFF_VERSION, &ver, 4);
    uint32_t nr;
    memcpy(&nr, (uint8_t *)base + OFF_NRANKS, 4);
    uint32_t bad = 40;
    memcpy((uint8_t *)base + OFF_NRANKS, &bad, 4);
    CHECK(xccl_comm_attach(&c, shm_name, 0, 0) == XCCL_ERR_CORRUPT && c == NULL);
    CHECK(strstr(xccl_err_msg(), "checksum") != NULL);
    memcpy((uint8_t *)base + OFF_NRANKS, &nr, 4);
    ((uint8_t *)base)[0] ^= 0xff; /* magic */
    CHECK(xccl_comm_attach(&c, shm_name, 0, 0) == XCCL_ERR_CORRUPT);
    CHECK(strstr(xccl_err_msg(), "not an xccl segment") != NULL);
    ((uint8_t *)base)[0] ^= 0xff;
    for (int r = 0; r < 3; r++) CHECK(rank_state(base, r) == XCCL_RANK_LEFT);
    /* restored header attaches again */
    XCHECK(xccl_comm_attach(&c, shm_name, 1, 0));
    CHECK(rank_state(base, 1) == XCCL_RANK_ACTIVE);
    xccl_comm_detach(c);
    munmap(base, bytes);
    xccl_segment_destroy(seg);
    CHECK(xccl_comm_attach(&c, shm_name, 0, 0) == XCCL_ERR_IO); /* unlinked */

    /* an object too small, garbage */
    int fd = memfd_create("junk", 0);
    CHECK(ftruncate(fd, 100) == 0);
    CHECK(xccl_comm_attach_fd(&c, fd, 0, 0) == XCCL_ERR_CORRUPT);
    CHECK(ftruncate(fd, 8192) == 0);
    CHECK(xccl_comm_attach_fd(&c, fd, 0, 0) == XCCL_ERR_CORRUPT);
    close(fd);

    /* 3. rank count that does not fit a fixed-size segment: error, no object left */
    xccl_config small = cfg;
    small.num_ranks = 64;
    small.segment_bytes = 1 << 20;
    char name2[64];
    snprintf(name2, sizeof name2, "/xccl-test-seg2-%d", (int)getpid());
    xccl_segment *s2 = NULL;
    CHECK(xccl_segment_create(&s2, name2, &small) == XCCL_ERR_RANGE && s2 == NULL);
    CHECK(strstr(xccl_err_msg(), "64 ranks need") != NULL);
    CHECK(shm_open(name2, O_RDONLY, 0) < 0 && errno == ENOENT);
    small.num_ranks = 65;
    small.segment_bytes = 0;
    CHECK(xccl_segment_create(&s2, name2, &small) == XCCL_ERR_INVALID);
    small.num_ranks = 2;
    small.num_slots = 3;
    CHECK(xccl_segment_create(&s2, name2, &small) == XCCL_ERR_INVALID);
    CHECK(xccl_segment_create(&s2, "no-slash", &cfg) == XCCL_ERR_INVALID);
    CHECK(shm_open(name2, O_RDONLY, 0) < 0);

    /* 4. memfd segment handed to 2 ranks over unix sockets */
    xccl_config c2 = cfg;
    c2.num_ranks = 2;
    xccl_segment *mseg = NULL;
    XCHECK(xccl_segment_create(&mseg, NULL, &c2));
    for (int r = 0; r < 2; r++) CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sock_pair[r]) == 0);
    pid_t pids[2];
    int status[2];
    /* the parent sends after forking: children must get the fd only from the socket */
    int mfd = xccl_segment_fd(mseg);
    int dupfd = dup(mfd);
    for (int r = 0; r < 2; r++) XCHECK(xccl_fd_send(sock_pair[r][0], dupfd));
    close(dupfd);
    failed = tu_run_ranks_pids(2, fd_rank, NULL, 30, pids, status);
    CHECK_MSG(failed == 0, "%d fd ranks failed", failed);
    xccl_segment_destroy(mseg);
    TEST_MAIN_END();
}
