/*
 * serve.c — `xds serve`: load a model, start one engine (DP group) and the
 * OpenAI-compatible HTTP server in front of it, and run until SIGTERM/SIGINT.
 *
 * Shutdown order: stop accepting (quiesce), let in-flight requests finish
 * (up to --shutdown-timeout seconds, then cancel what is left), close the
 * server, drain and free the engine, free the model; exit 0.
 *
 * Signals are blocked in every thread (set before any thread starts) and
 * taken synchronously by the main thread with sigwait, so no handler runs in
 * an arbitrary thread.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "base/log.h"
#include "base/status.h"
#include "cli/cli.h"
#include "deploy/supervisor.h"
#include "engine/engine.h"
#include "format/weights.h"
#include "model/model.h"
#include "server/http.h"
#include "tokenizer/tokenizer.h"

static void serve_usage(FILE *f) {
    fprintf(f,
            "usage: xds serve -m MODEL [options]\n"
            "\n"
            "Serve MODEL (GGUF file or Hugging Face directory) over an OpenAI-compatible API:\n"
            "POST /v1/completions, POST /v1/chat/completions, GET /v1/models, /health (503 unless a new\n"
            "request can be served: readiness), /health/live (503 only if the engine loop is stuck:\n"
            "liveness), /metrics.\n"
            "\n"
            "options:\n"
            "  -m, --model PATH            model to serve (required)\n"
            "  --host ADDR                 address to bind (default 127.0.0.1; 0.0.0.0 for all)\n"
            "  --port N                    port (default 8000; 0 = any free port)\n"
            "  --api-key KEY               require 'Authorization: Bearer KEY' on /v1/* (or env XDS_API_KEY)\n"
            "  --served-model-name NAME    model name in the API (default: file name without .gguf)\n"
            "  -t, --threads N             compute threads (default: engine default)\n"
            "  --quantize MODE             convert the matmul weights at load: w8a8 (int8, a scale per\n"
            "                              output channel; activations int8 per token) or none (default)\n"
            "  --ctx N                     max prompt + output tokens per request (default min(model, 4096))\n"
            "  --max-batch N               max sequences in the running batch\n"
            "  --max-step-tokens N         token budget per engine step (chunked prefill)\n"
            "  --kv-blocks N               KV cache blocks (default: sized by the engine)\n"
            "  --kv-block-size N           tokens per KV block\n"
            "  --max-queue N               waiting requests beyond which the server answers 429\n"
            "  --no-prefix-cache           disable prefix caching\n"
            "  --max-connections N         connections served at once; a request on one beyond gets 503\n"
            "                              with Retry-After (default 256)\n"
            "  --idle-timeout S            close a connection idle for S seconds: no request (silent or\n"
            "                              keep-alive), no body byte, or a response not read (default 30);\n"
            "                              never while a request waits for the engine\n"
            "  --read-timeout S            a request must arrive completely within S seconds (default 30)\n"
            "  --stall-timeout S           /health answers 503 once the engine loop has made no progress\n"
            "                              for S seconds while it has work (default 30)\n"
            "  --max-body BYTES            request body limit, 413 beyond (default 8388608)\n"
            "  --shutdown-timeout S        on SIGTERM, wait this long for in-flight requests (default 60)\n");
    fprintf(f, "\n%s", serve_deploy_usage());
}

static int serve_int(const char *opt, const char *v, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long x = v ? strtol(v, &end, 10) : 0;
    if (!v || errno || *end || end == v || x < lo || x > hi) {
        fprintf(stderr, "xds serve: error: %s needs an integer in [%ld, %ld], got '%s'\n", opt, lo, hi, v ? v : "");
        return -1;
    }
    *out = x;
    return 0;
}

/* Tokenizer of a loaded model: GGUF metadata, or tokenizer.json in the HF directory. */
static xds_status serve_load_tokenizer(xds_model *m, const char *path, xds_tokenizer **tok) {
    if (xds_weights_is_gguf(m->weights)) return xds_tokenizer_load_gguf(xds_weights_gguf(m->weights), tok);
    char tj[PATH_MAX], tc[PATH_MAX];
    snprintf(tj, sizeof tj, "%s/tokenizer.json", path);
    snprintf(tc, sizeof tc, "%s/tokenizer_config.json", path);
    FILE *f = fopen(tc, "rb");
    if (f) fclose(f);
    return xds_tokenizer_load_json(tj, f ? tc : NULL, tok);
}

static char *serve_expert_load(void *user) { return xds_engine_expert_load_json((xds_engine *)user); }

static char *serve_default_name(const char *path) {
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--;
    size_t b = n;
    while (b > 0 && path[b - 1] != '/') b--;
    size_t len = n - b;
    if (len > 5 && !strncmp(path + n - 5, ".gguf", 5)) len -= 5;
    char *s = malloc(len + 1);
    if (s) {
        memcpy(s, path + b, len);
        s[len] = 0;
    }
    return s;
}

int cli_serve(int argc, char **argv) {
    const char *model_path = NULL, *served = NULL, *api_key = getenv("XDS_API_KEY");
    xds_server_opts so = xds_server_opts_default();
    xds_engine_opts eo = xds_engine_opts_default();
    long ctx = 0, shutdown_timeout = 60, v;
    int quantize = XDS_QUANTIZE_NONE;
    serve_deploy dep; /* disaggregated deployment (deploy/supervisor.c); unused without its flags */
    serve_deploy_init(&dep);
    int dep_n;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
#define OPT(name) (!strcmp(a, name))
#define NEED_INT(lo, hi)                                 \
    do {                                                 \
        if (serve_int(a, val, lo, hi, &v)) return 2;     \
        i++;                                             \
    } while (0)
        if (OPT("-h") || OPT("--help")) {
            serve_usage(stdout);
            return 0;
        } else if (OPT("-m") || OPT("--model")) {
            if (!val) goto missing;
            model_path = val;
            i++;
        } else if (OPT("--quantize")) {
            if (!val) goto missing;
            if (xds_quantize_parse(val, &quantize)) {
                fprintf(stderr, "xds serve: error: --quantize expects w8a8 or none, got '%s'\n", val);
                return 2;
            }
            i++;
        } else if (OPT("--host")) {
            if (!val) goto missing;
            so.host = val;
            i++;
        } else if (OPT("--port")) {
            NEED_INT(0, 65535);
            so.port = (int)v;
        } else if (OPT("--api-key")) {
            if (!val) goto missing;
            api_key = val;
            i++;
        } else if (OPT("--served-model-name")) {
            if (!val || !*val) goto missing;
            served = val;
            i++;
        } else if (OPT("-t") || OPT("--threads")) {
            NEED_INT(1, 1024);
            eo.n_threads = (int)v;
        } else if (OPT("--ctx")) {
            NEED_INT(16, 1 << 24);
            ctx = v;
        } else if (OPT("--max-batch")) {
            NEED_INT(1, 65536);
            eo.max_batch = (int)v;
        } else if (OPT("--max-step-tokens")) {
            NEED_INT(1, 1 << 20);
            eo.max_step_tokens = (int)v;
        } else if (OPT("--kv-blocks")) {
            NEED_INT(1, 1 << 26);
            eo.kv_blocks = (int)v;
        } else if (OPT("--kv-block-size")) {
            NEED_INT(1, 4096);
            eo.kv_block_size = (int)v;
        } else if (OPT("--max-queue")) {
            NEED_INT(0, 1 << 24);
            eo.max_queue = (int)v;
        } else if (OPT("--no-prefix-cache")) {
            eo.enable_prefix_cache = 0;
        } else if (OPT("--max-connections")) {
            NEED_INT(1, 65536);
            so.max_connections = (int)v;
        } else if (OPT("--idle-timeout")) {
            NEED_INT(1, 86400);
            so.idle_timeout_s = (int)v;
        } else if (OPT("--read-timeout")) {
            NEED_INT(1, 86400);
            so.read_timeout_s = (int)v;
        } else if (OPT("--stall-timeout")) {
            NEED_INT(1, 86400);
            so.stall_timeout_s = (double)v;
        } else if (OPT("--max-body")) {
            NEED_INT(1024, 1L << 32);
            so.max_body_bytes = (size_t)v;
        } else if (OPT("--shutdown-timeout")) {
            NEED_INT(0, 86400);
            shutdown_timeout = v;
        } else if ((dep_n = serve_deploy_opt(&dep, a, val)) != 0) {
            if (dep_n < 0) return 2;
            i += dep_n - 1;
        } else {
            fprintf(stderr, "xds serve: error: unknown option '%s'\n", a);
            serve_usage(stderr);
            return 2;
        }
        continue;
    missing:
        fprintf(stderr, "xds serve: error: %s needs a value\n", a);
        return 2;
#undef OPT
#undef NEED_INT
    }
    if (!model_path) {
        fprintf(stderr, "xds serve: error: -m MODEL is required\n");
        serve_usage(stderr);
        return 2;
    }

    /* Block the signals we wait for before any thread exists, so every thread
     * inherits the mask and only sigwait below sees them. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* one descriptor per connection: allow what the hard limit allows */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    xds_model *model = NULL;
    xds_tokenizer *tok = NULL;
    xds_engine *engine = NULL;
    xds_server *srv = NULL;
    char *name = NULL;
    int rc = 1;
    /* a deployment repacks below, once it knows which units run here */
    xds_model_opts mo = {.no_repack = dep.enabled || dep.frontend_mode, .quantize = quantize};
    xds_status st = xds_model_load(model_path, &mo, &model);
    if (st != XDS_OK) {
        fprintf(stderr, "xds serve: error: %s\n", xds_err_msg());
        return 1;
    }
    st = serve_load_tokenizer(model, model_path, &tok);
    if (st != XDS_OK) {
        fprintf(stderr, "xds serve: error: tokenizer: %s\n", xds_err_msg());
        goto out;
    }
    if (xds_chat_family_of(tok) == XDS_CHAT_NONE)
        fprintf(stderr, "xds serve: warning: no known chat template; /v1/chat/completions will answer 400\n");
    int model_ctx = model->cfg.max_ctx > 0 ? model->cfg.max_ctx : 4096;
    if (!ctx) ctx = model_ctx < 4096 ? model_ctx : 4096;
    if (ctx > model_ctx) {
        fprintf(stderr, "xds serve: warning: --ctx %ld is beyond the model's trained context %d\n", ctx, model_ctx);
    }
    eo.max_ctx = (int)ctx;
    dep.argc = argc, dep.argv = argv, dep.port = so.port, dep.host = so.host, dep.drain_s = (double)shutdown_timeout;
    dep.quantize = quantize;
    if (dep.enabled && dep.frontend_mode) {
        fprintf(stderr, "xds serve: error: front-end mode takes no deployment flags\n");
        goto out;
    }
    if (dep.enabled) { /* the supervisor: every role runs in a child; this process runs no model */
        if ((st = serve_deploy_start(&dep, model, model_path, &eo)) != XDS_OK) {
            sigset_t pend;
            sigpending(&pend);
            if (sigismember(&pend, SIGINT) || sigismember(&pend, SIGTERM)) {
                /* asked to stop while starting (the port may answer already:
                 * the front-ends start before the supervisor is done): an
                 * orderly stop, not a failure */
                fprintf(stderr, "xds serve: %s received while starting the workers; stopped them\n",
                        sigismember(&pend, SIGINT) ? "SIGINT" : "SIGTERM");
                rc = 0;
            } else {
                fprintf(stderr, "xds serve: error: deployment: %s\n", xds_err_msg());
            }
            goto out;
        }
        xds_tokenizer_free(tok), tok = NULL;
        xds_model_free(model), model = NULL;
        printf("xds serve: deployment listening on http://%s%s%s:%d (supervisor pid %d, runs no model)\n",
               strchr(so.host, ':') ? "[" : "", so.host, strchr(so.host, ':') ? "]" : "", dep.port, (int)getpid());
        fflush(stdout);
        serve_deploy_run(&dep, &sigs);
        /* a second signal quits at once (the handler removes the shared memory and kills the children) */
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        serve_deploy_signalled(&dep);
        pthread_sigmask(SIG_UNBLOCK, &sigs, NULL);
        serve_deploy_stop(&dep);
        rc = 0;
        goto out;
    }
    if (dep.frontend_mode) { /* front-end of a deployment: no engine of its own */
        if ((st = serve_deploy_frontend(&dep, model, (int)ctx, eo.kv_block_size, &so.engine_ops)) != XDS_OK) {
            fprintf(stderr, "xds serve: error: front-end: %s\n", xds_err_msg());
            goto out;
        }
        so.topology_fn = serve_deploy_topology_get;
        so.topology_user = &dep;
        so.metrics_fn = serve_deploy_metrics_load;
        so.metrics_user = &dep;
        so.reuse_port = 1;
        so.listen_fd = dep.listen_fd; /* the supervisor's socket, inherited */
    }
    if (!dep.frontend_mode && (st = xds_engine_create(model, tok, &eo, &engine)) != XDS_OK) {
        fprintf(stderr, "xds serve: error: engine: %s\n", xds_err_msg());
        goto out;
    }
    if (engine && model->cfg.moe.n_expert > 0) { /* GET /v1/experts/load: the engine's load counters */
        so.expert_load_fn = serve_expert_load;
        so.expert_load_user = engine;
    }
    name = served ? strdup(served) : serve_default_name(model_path);
    if (!name) {
        fprintf(stderr, "xds serve: error: out of memory\n");
        goto out;
    }
    so.api_key = api_key;
    so.model_name = name;
    so.max_ctx = (int)ctx;
    st = xds_server_start(&so, engine, tok, &srv);
    if (st != XDS_OK) {
        fprintf(stderr, "xds serve: error: %s\n", xds_err_msg());
        goto out;
    }
    printf("xds serve: listening on http://%s%s%s:%d (model '%s', context %ld%s)\n",
           strchr(so.host, ':') ? "[" : "", so.host, strchr(so.host, ':') ? "]" : "", xds_server_port(srv), name,
           ctx, api_key && *api_key ? ", API key required" : "");
    fflush(stdout);

    int sig = 0;
    while (sigwait(&sigs, &sig) != 0) {
    }
    fprintf(stderr, "xds serve: %s received; finishing in-flight requests (send it again to quit at once)\n",
            sig == SIGINT ? "SIGINT" : "SIGTERM");
    /* A second signal takes the default action (terminate) in this thread;
     * a deployment's handler also removes its shared memory and workers. */
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    pthread_sigmask(SIG_UNBLOCK, &sigs, NULL);
    xds_server_quiesce(srv);
    if (!xds_server_wait_idle(srv, (double)shutdown_timeout)) {
        fprintf(stderr, "xds serve: in-flight requests still running after %ld s; cancelling them\n", shutdown_timeout);
        xds_server_abort_all(srv);
        xds_server_wait_idle(srv, 10.0);
    }
    xds_server_stop(srv);
    srv = NULL;
    rc = 0;
out:
    if (srv) xds_server_stop(srv);
    serve_deploy_quiesce(&dep); /* no new requests from prefill instances into the engine */
    if (engine) xds_engine_free(engine, 1);
    serve_deploy_stop(&dep);
    if (atomic_load(&dep.failed)) {
        fprintf(stderr, "xds serve: error: the deployment lost every process of a role; it was stopped\n");
        rc = 1;
    }
    if (tok) xds_tokenizer_free(tok);
    if (model) xds_model_free(model);
    free(name);
    if (rc == 0) fprintf(stderr, "xds serve: stopped\n");
    return rc;
}
