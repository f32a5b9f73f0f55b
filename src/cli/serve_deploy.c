/*
 * serve_deploy.c — supervisor of a disaggregated deployment (serve_deploy.h).
 *
 * Process tree: the `xds serve` process (front-end + decode DP group 0 =
 * XCCL rank 0) and E children `xds worker --role expert` (ranks 1..E), each
 * exec'ed from /proc/self/exe with PR_SET_PDEATHSIG so none outlives the
 * supervisor. Start-up: segment (sized by xds_deploy_xccl_config) -> attach
 * rank 0 -> fork/exec workers -> wait until each has attached (a child that
 * exits first, SIGTERM/SIGINT pending, or a 120 s deadline abort the start)
 * -> READY handshake (xds_deploy_attn_create). While serving, a monitor thread
 * reaps children; an unexpected exit marks the deployment failed and raises
 * SIGTERM in the supervisor, whose shutdown path then stops the rest.
 *
 * Not yet supported (refused with a clear error): --prefill > 0,
 * --decode-dp > 1, --frontends > 1, --topology FILE.
 */
#define _GNU_SOURCE
#include "cli/serve_deploy.h"

#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <xccl.h>

#include "engine/deploy.h"
#include "model/model.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void serve_deploy_init(serve_deploy *d) {
    memset(d, 0, sizeof *d);
    d->decode_dp = 1;
    d->frontends = 1;
    d->expert_threads = 1;
    atomic_init(&d->stopping, 0);
    atomic_init(&d->failed, 0);
}

const char *serve_deploy_usage(void) {
    return "Disaggregated deployment (this process: supervisor, front-end, decode DP group):\n"
           "  --experts E          E expert-worker processes hold the routed experts (MoE models)\n"
           "  --decode-dp D        decode DP groups (only 1 so far)\n"
           "  --prefill P          prefill instances (only 0 so far: prefill runs in the decode group)\n"
           "  --frontends F        front-ends on the port (only 1 so far)\n"
           "  --expert-threads N   compute threads per expert worker (default 1)\n"
           "  --topology FILE      topology file (not supported yet)\n";
}

int serve_deploy_opt(serve_deploy *d, const char *a, const char *v) {
    int *dst = NULL;
    long lo = 0, hi = 0;
    if (!strcmp(a, "--experts")) dst = &d->experts, lo = 1, hi = SERVE_DEPLOY_MAX_WORKERS;
    else if (!strcmp(a, "--decode-dp")) dst = &d->decode_dp, lo = 1, hi = 64;
    else if (!strcmp(a, "--prefill")) dst = &d->prefill, lo = 0, hi = 64;
    else if (!strcmp(a, "--frontends")) dst = &d->frontends, lo = 1, hi = 64;
    else if (!strcmp(a, "--expert-threads")) dst = &d->expert_threads, lo = 1, hi = 1024;
    else if (!strcmp(a, "--topology")) {
        if (!v) {
            fprintf(stderr, "xds serve: error: --topology needs a value\n");
            return -1;
        }
        d->topology_file = v;
        d->enabled = 1;
        return 2;
    } else return 0;
    char *end = NULL;
    long x = v ? strtol(v, &end, 10) : 0;
    if (!v || !*v || *end || x < lo || x > hi) {
        fprintf(stderr, "xds serve: error: %s wants an integer in %ld..%ld, got '%s'\n", a, lo, hi, v ? v : "");
        return -1;
    }
    *dst = (int)x;
    if (dst != &d->expert_threads) d->enabled = 1;
    return 2;
}

/* Reap worker i if it exited (block = 0) or wait for it (block = 1).
 * Returns 1 if it is (now) reaped. */
static int reap_one(serve_deploy *d, int i, int block) {
    if (d->pids[i] <= 0) return 1;
    int st = 0;
    pid_t r;
    do r = waitpid(d->pids[i], &st, block ? 0 : WNOHANG);
    while (r < 0 && errno == EINTR);
    if (r == d->pids[i] || (r < 0 && errno == ECHILD)) {
        d->status[i] = r == d->pids[i] ? st : -1;
        d->pids[i] = 0;
        return 1;
    }
    return 0;
}

static void describe_exit(char *buf, size_t cap, int st) {
    if (st == -1) snprintf(buf, cap, "is gone");
    else if (WIFEXITED(st)) snprintf(buf, cap, "exited with status %d", WEXITSTATUS(st));
    else if (WIFSIGNALED(st)) snprintf(buf, cap, "was killed by signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
    else snprintf(buf, cap, "ended (wait status %d)", st);
}

static void *monitor_main(void *arg) {
    serve_deploy *d = arg;
    while (!atomic_load(&d->stopping)) {
        for (int i = 0; i < d->n_pids; i++) {
            pid_t pid = d->pids[i];
            if (pid <= 0 || !reap_one(d, i, 0) || atomic_load(&d->stopping)) continue;
            char how[96];
            describe_exit(how, sizeof how, d->status[i]);
            fprintf(stderr, "xds serve: error: expert worker %d (pid %d) %s; stopping the deployment\n", i + 1,
                    (int)pid, how);
            if (!atomic_exchange(&d->failed, 1)) kill(getpid(), SIGTERM);
        }
        usleep(50 * 1000);
    }
    return NULL;
}

static void stop_workers(serve_deploy *d, double deadline_s) {
    atomic_store(&d->stopping, 1);
    if (d->monitor_started) {
        pthread_join(d->monitor, NULL);
        d->monitor_started = 0;
    }
    if (d->attn) xds_deploy_attn_stop(d->attn);
    else /* start-up failed: nobody waits for the workers' results */
        for (int i = 0; i < d->n_pids; i++)
            if (d->pids[i] > 0) kill(d->pids[i], SIGTERM);
    /* detaching rank 0 makes any worker still in an XCCL wait fail at once */
    if (d->comm) {
        xccl_comm_detach(d->comm);
        d->comm = NULL;
    }
    double end = now_s() + deadline_s;
    for (int i = 0; i < d->n_pids; i++) {
        while (!reap_one(d, i, 0)) {
            if (now_s() > end) {
                fprintf(stderr, "xds serve: expert worker %d (pid %d) did not stop; killing it\n", i + 1,
                        (int)d->pids[i]);
                kill(d->pids[i], SIGKILL);
                reap_one(d, i, 1);
                break;
            }
            usleep(5000);
        }
    }
}

xds_status serve_deploy_start(serve_deploy *d, xds_model *m, const char *model_path, xds_engine_opts *eo) {
    if (d->topology_file)
        return xds_err_set(XDS_ERR_UNSUPPORTED, "--topology: topology files are not supported yet; use --experts E");
    if (d->prefill > 0)
        return xds_err_set(XDS_ERR_UNSUPPORTED,
                           "--prefill %d: separate prefill instances are not supported yet (prefill runs in the "
                           "decode group)", d->prefill);
    if (d->decode_dp > 1)
        return xds_err_set(XDS_ERR_UNSUPPORTED, "--decode-dp %d: only one decode DP group is supported so far",
                           d->decode_dp);
    if (d->frontends > 1)
        return xds_err_set(XDS_ERR_UNSUPPORTED, "--frontends %d: only one front-end is supported so far",
                           d->frontends);
    if (d->experts < 1)
        return xds_err_set(XDS_ERR_INVALID, "a disaggregated deployment needs --experts E (E >= 1 expert workers)");
    int n_expert = m->cfg.moe.n_expert;
    if (n_expert > 0 && d->experts > n_expert)
        return xds_err_set(XDS_ERR_INVALID, "--experts %d: the model has only %d routed experts per layer", d->experts,
                           n_expert);
    d->n_expert = n_expert;
    int max_tok = eo->max_step_tokens > eo->max_batch ? eo->max_step_tokens : eo->max_batch;
    xccl_config cfg;
    XDS_TRY(xds_deploy_xccl_config(m, d->experts, max_tok, &cfg));
    d->seg_bytes = (unsigned long long)xccl_config_segment_bytes(&cfg);
    snprintf(d->seg_name, sizeof d->seg_name, "/xds-serve-%d", (int)getpid());
    if (xccl_segment_create(&d->seg, d->seg_name, &cfg) != XCCL_OK)
        return xds_err_set(XDS_ERR_IO, "XCCL segment %s (%llu bytes): %s", d->seg_name, d->seg_bytes, xccl_err_msg());
    xds_status s = XDS_OK;
    if (xccl_comm_attach(&d->comm, d->seg_name, 0, 1) != XCCL_OK) {
        s = xds_err_set(XDS_ERR_IO, "attach to %s as rank 0: %s", d->seg_name, xccl_err_msg());
        goto fail;
    }
    char wstr[16], tstr[16], rstr[16];
    snprintf(wstr, sizeof wstr, "%d", d->experts);
    snprintf(tstr, sizeof tstr, "%d", d->expert_threads);
    fflush(NULL);
    for (int r = 1; r <= d->experts; r++) {
        snprintf(rstr, sizeof rstr, "%d", r);
        pid_t pid = fork();
        if (pid < 0) {
            s = xds_err_set(XDS_ERR_IO, "fork for expert worker %d: %s", r, strerror(errno));
            goto fail;
        }
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            sigset_t none;
            sigemptyset(&none);
            sigprocmask(SIG_SETMASK, &none, NULL); /* serve blocks SIGTERM/SIGINT for sigwait */
            char *args[] = {"xds", "worker", "--role", "expert", "--segment", d->seg_name, "--rank", rstr,
                            "--workers", wstr, "-t", tstr, "-m", (char *)model_path, NULL};
            const char *exe = getenv("XDS_WORKER_EXE"); /* tests: a worker that fails to start */
            execv(exe && *exe ? exe : "/proc/self/exe", args);
            fprintf(stderr, "xds serve: error: exec worker: %s\n", strerror(errno));
            _exit(127);
        }
        d->pids[d->n_pids++] = pid;
    }
    /* wait until every worker has attached (they load the model first) */
    double end = now_s() + 120.0;
    for (int r = 1; r <= d->experts; r++) {
        while (xccl_peer_check(d->comm, r) != XCCL_OK) {
            if (reap_one(d, r - 1, 0)) {
                char how[96];
                describe_exit(how, sizeof how, d->status[r - 1]);
                s = xds_err_set(XDS_ERR_PEER, "expert worker %d %s before it became ready", r, how);
                goto fail;
            }
            sigset_t pend;
            sigpending(&pend);
            if (sigismember(&pend, SIGTERM) || sigismember(&pend, SIGINT)) {
                s = xds_err_set(XDS_ERR_INTERNAL, "interrupted while starting the expert workers");
                goto fail;
            }
            if (now_s() > end) {
                s = xds_err_set(XDS_ERR_TIMEOUT, "expert worker %d did not attach within 120 s", r);
                goto fail;
            }
            usleep(5000);
        }
    }
    s = xds_deploy_attn_create(m, d->comm, d->experts, max_tok, &d->attn);
    if (s != XDS_OK) goto fail;
    eo->forward = xds_deploy_forward_cb;
    eo->forward_user = d->attn;
    if (pthread_create(&d->monitor, NULL, monitor_main, d) == 0) d->monitor_started = 1;
    return XDS_OK;
fail:
    {
        /* keep the message: stopping may overwrite the thread's error */
        char msg[512];
        snprintf(msg, sizeof msg, "%s", xds_err_msg());
        serve_deploy_stop(d);
        return xds_err_set(s, "%s", msg);
    }
}

xds_status serve_deploy_topology(serve_deploy *d, xds_engine *engine) {
    xds_engine_stats es;
    xds_engine_stats_get(engine, &es);
    json_t *root = json_object(), *ranks = json_array();
    json_object_set_new(root, "mode", json_string("moe-attention"));
    json_object_set_new(root, "segment", json_string(d->seg_name));
    json_object_set_new(root, "segment_bytes", json_integer((json_int_t)d->seg_bytes));
    json_object_set_new(root, "prefill", json_integer(d->prefill));
    json_object_set_new(root, "decode_dp", json_integer(d->decode_dp));
    json_object_set_new(root, "experts", json_integer(d->experts));
    json_object_set_new(root, "frontends", json_integer(d->frontends));
    json_object_set_new(root, "dense_ffn", json_string("attention"));
    json_object_set_new(root, "shared_experts", json_string("attention"));
    json_t *r0 = json_object();
    json_object_set_new(r0, "rank", json_integer(0));
    json_object_set_new(r0, "role", json_string("frontend+decode"));
    json_object_set_new(r0, "dp_group", json_integer(0));
    json_object_set_new(r0, "pid", json_integer((json_int_t)getpid()));
    json_object_set_new(r0, "kv_blocks", json_integer(es.kv_blocks_total));
    json_array_append_new(ranks, r0);
    printf("xds serve: topology: segment %s (%llu bytes); rank 0 pid %d: front-end + decode DP group 0 "
           "(attention, routing, shared experts, dense FFN; KV %d blocks)\n",
           d->seg_name, d->seg_bytes, (int)getpid(), es.kv_blocks_total);
    for (int r = 1; r <= d->experts; r++) {
        json_t *o = json_object(), *ex = json_array();
        json_object_set_new(o, "rank", json_integer(r));
        json_object_set_new(o, "role", json_string("expert"));
        json_object_set_new(o, "pid", json_integer((json_int_t)d->pids[r - 1]));
        int first = -1, last = -1;
        for (int e = 0; e < d->n_expert; e++) {
            int w, sl;
            xds_deploy_expert_owner(d->n_expert, d->experts, e, &w, &sl);
            if (w != r - 1) continue;
            json_array_append_new(ex, json_integer(e));
            if (first < 0) first = e;
            last = e;
        }
        if (first >= 0)
            printf("xds serve: topology: rank %d pid %d: expert worker, routed experts %d-%d of %d\n", r,
                   (int)d->pids[r - 1], first, last, d->n_expert);
        else
            printf("xds serve: topology: rank %d pid %d: expert worker, no experts (placement rounding)\n", r,
                   (int)d->pids[r - 1]);
        json_object_set_new(o, "experts", ex);
        json_array_append_new(ranks, o);
    }
    json_object_set_new(root, "ranks", ranks);
    free(d->topology_json);
    d->topology_json = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (!d->topology_json) return xds_err_set(XDS_ERR_NOMEM, "topology: out of memory");
    fflush(stdout);
    return XDS_OK;
}

void serve_deploy_stop(serve_deploy *d) {
    if (!d->seg && !d->n_pids && !d->comm) {
        free(d->topology_json);
        d->topology_json = NULL;
        return;
    }
    if (d->attn) {
        xds_deploy_stats st;
        xds_deploy_attn_stats(d->attn, &st);
        double tot = st.attn_s + st.dispatch_s + st.combine_s;
        fprintf(stderr,
                "xds serve: decode group 0 (rank 0): %llu passes, %llu tokens; attention+routing+shared+head %.3f s, "
                "dispatch %.3f s, combine (incl. waiting for experts) %.3f s; dispatch+combine %.0f%% of pass time\n",
                (unsigned long long)st.steps, (unsigned long long)st.tokens, st.attn_s, st.dispatch_s, st.combine_s,
                tot > 0 ? 100.0 * (st.dispatch_s + st.combine_s) / tot : 0.0);
    }
    stop_workers(d, 10.0);
    xds_deploy_attn_free(d->attn);
    d->attn = NULL;
    d->n_pids = 0;
    if (d->seg) {
        xccl_segment_destroy(d->seg);
        d->seg = NULL;
    }
    free(d->topology_json);
    d->topology_json = NULL;
}
