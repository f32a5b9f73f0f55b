/*
 * gen_common.c — shared by `xds generate` and `xds chat` (see gen_common.h):
 * flag parsing, model + tokenizer loading with a terminal-only progress bar,
 * and the single-sequence session (prefix-reusing prefill, sampling loop,
 * streaming detokenization, speed figures).
 */
#include "cli/gen_common.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "format/weights.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void usage(FILE *f, int chat) {
    if (chat)
        fprintf(f, "usage: xds chat -m MODEL [--system TEXT] [options]\n"
                   "Reads user turns from stdin (one per line; EOF ends), answers with the model's chat\n"
                   "template, keeping the KV cache across turns.\n\n");
    else
        fprintf(f, "usage: xds generate -m MODEL -p PROMPT [options]\n\n");
    fprintf(f,
            "  -m, --model PATH          GGUF file or Hugging Face directory\n"
            "%s"
            "  -n, --n-predict N         tokens to generate%s (-1: until the context is full)\n"
            "  -c, --ctx N               context size in tokens (default: model's, at most 4096)\n"
            "  -t, --threads N           threads (default: online CPUs)\n"
            "      --temp T              temperature (default 0.8; 0 = greedy)\n"
            "      --top-k K             (default 40; 0 = off)\n"
            "      --top-p P             (default 0.95; 1 = off)\n"
            "      --min-p P             (default 0.05; 0 = off)\n"
            "      --repeat-penalty R    (default 1 = off; over the last 64 generated tokens)\n"
            "      --presence-penalty P  (default 0)\n"
            "      --frequency-penalty F (default 0)\n"
            "      --seed S              RNG seed (default: random, printed unless --quiet)\n"
            "      --no-bos              do not prepend BOS even if the tokenizer asks for it\n"
            "      --raw                 print special tokens' text instead of hiding them\n"
            "      --quantize MODE       convert the matmul weights at load: w8a8 (int8, a scale per\n"
            "                            output channel; activations int8 per token) or none (default)\n"
            "  -q, --quiet               no speed figures / seed on stderr\n",
            chat ? "      --system TEXT         system prompt\n" : "  -p, --prompt TEXT         prompt\n",
            chat ? " per answer (default 512)" : " (default 128)");
}

static int parse_int(const char *cmd, const char *flag, const char *v, int lo, int *out) {
    char *e;
    long x = strtol(v, &e, 10);
    if (!*v || *e || x < lo || x > 1 << 30) {
        fprintf(stderr, "xds %s: error: %s expects an integer >= %d, got '%s'\n", cmd, flag, lo, v);
        return 1;
    }
    *out = (int)x;
    return 0;
}

static int parse_float(const char *cmd, const char *flag, const char *v, float *out) {
    char *e;
    float x = strtof(v, &e);
    if (!*v || *e || x != x) {
        fprintf(stderr, "xds %s: error: %s expects a number, got '%s'\n", cmd, flag, v);
        return 1;
    }
    *out = x;
    return 0;
}

int gen_parse_args(int argc, char **argv, int chat, gen_opts *o) {
    const char *cmd = chat ? "chat" : "generate";
    memset(o, 0, sizeof *o);
    o->n_predict = chat ? 512 : 128;
    o->n_threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (o->n_threads < 1) o->n_threads = 1;
    o->sp = xds_sampler_params_default();
    enum { O_TEMP = 256, O_TOPK, O_TOPP, O_MINP, O_REP, O_PRES, O_FREQ, O_SEED, O_NOBOS, O_RAW, O_SYS, O_QUANT };
    static const struct option lo[] = {
        {"model", required_argument, 0, 'm'},     {"prompt", required_argument, 0, 'p'},
        {"n-predict", required_argument, 0, 'n'}, {"ctx", required_argument, 0, 'c'},
        {"threads", required_argument, 0, 't'},   {"temp", required_argument, 0, O_TEMP},
        {"top-k", required_argument, 0, O_TOPK},  {"top-p", required_argument, 0, O_TOPP},
        {"min-p", required_argument, 0, O_MINP},  {"repeat-penalty", required_argument, 0, O_REP},
        {"presence-penalty", required_argument, 0, O_PRES},
        {"frequency-penalty", required_argument, 0, O_FREQ},
        {"seed", required_argument, 0, O_SEED},   {"no-bos", no_argument, 0, O_NOBOS},
        {"raw", no_argument, 0, O_RAW},           {"system", required_argument, 0, O_SYS},
        {"quiet", no_argument, 0, 'q'},           {"help", no_argument, 0, 'h'},
        {"quantize", required_argument, 0, O_QUANT},
        {0, 0, 0, 0}};
    optind = 1;
    opterr = 0;
    int c, bad = 0;
    while (!bad && (c = getopt_long(argc, argv, ":m:p:n:c:t:qh", lo, NULL)) != -1) {
        switch (c) {
        case 'm': o->model = optarg; break;
        case 'p':
            if (chat) goto unknown;
            o->prompt = optarg;
            break;
        case O_SYS:
            if (!chat) goto unknown;
            o->system = optarg;
            break;
        case 'n': bad = parse_int(cmd, "-n", optarg, -1, &o->n_predict); break;
        case 'c': bad = parse_int(cmd, "-c", optarg, 1, &o->n_ctx); break;
        case 't': bad = parse_int(cmd, "-t", optarg, 1, &o->n_threads); break;
        case O_TEMP: bad = parse_float(cmd, "--temp", optarg, &o->sp.temp); break;
        case O_TOPK: bad = parse_int(cmd, "--top-k", optarg, 0, &o->sp.top_k); break;
        case O_TOPP: bad = parse_float(cmd, "--top-p", optarg, &o->sp.top_p); break;
        case O_MINP: bad = parse_float(cmd, "--min-p", optarg, &o->sp.min_p); break;
        case O_REP: bad = parse_float(cmd, "--repeat-penalty", optarg, &o->sp.repeat_penalty); break;
        case O_PRES: bad = parse_float(cmd, "--presence-penalty", optarg, &o->sp.presence_penalty); break;
        case O_FREQ: bad = parse_float(cmd, "--frequency-penalty", optarg, &o->sp.frequency_penalty); break;
        case O_SEED: {
            char *e;
            unsigned long long v = strtoull(optarg, &e, 10);
            if (!*optarg || *e) {
                fprintf(stderr, "xds %s: error: --seed expects a non-negative integer, got '%s'\n", cmd, optarg);
                bad = 1;
            }
            o->sp.seed = v;
            o->seed_set = 1;
            break;
        }
        case O_NOBOS: o->no_bos = 1; break;
        case O_RAW: o->raw = 1; break;
        case O_QUANT:
            if (xds_quantize_parse(optarg, &o->quantize)) {
                fprintf(stderr, "xds %s: error: --quantize expects w8a8 or none, got '%s'\n", cmd, optarg);
                bad = 1;
            }
            break;
        case 'q': o->quiet = 1; break;
        case 'h': usage(stdout, chat); return 2;
        case ':':
            fprintf(stderr, "xds %s: error: option '%s' needs a value\n", cmd, argv[optind - 1]);
            return 1;
        default:
        unknown:
            fprintf(stderr, "xds %s: error: unknown option '%s' (see xds %s --help)\n", cmd, argv[optind - 1], cmd);
            return 1;
        }
    }
    if (bad) return 1;
    if (optind < argc) {
        fprintf(stderr, "xds %s: error: unexpected argument '%s'\n", cmd, argv[optind]);
        return 1;
    }
    if (!o->model) {
        fprintf(stderr, "xds %s: error: no model given (-m MODEL)\n", cmd);
        return 1;
    }
    if (!chat && !o->prompt) {
        fprintf(stderr, "xds %s: error: no prompt given (-p PROMPT)\n", cmd);
        return 1;
    }
    if (!o->seed_set) o->sp.seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    return 0;
}

/* ------------------------------------------------------------------------ */

static void progress_bar(void *user, float frac) {
    int *last = user;
    int pct = (int)(frac * 100.0f + 0.5f);
    if (pct == *last) return;
    *last = pct;
    int w = 40, fill = pct * w / 100;
    fprintf(stderr, "\rloading [%.*s%*s] %3d%%", fill, "########################################", w - fill, "", pct);
    if (pct >= 100) fprintf(stderr, "\r%*s\r", w + 20, "");
    fflush(stderr);
}

static char *path_join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static xds_status load_tokenizer(const xds_model *m, xds_tokenizer **out) {
    const xds_weights *w = m->weights;
    if (xds_weights_is_gguf(w)) return xds_tokenizer_load_gguf(xds_weights_gguf(w), out);
    const char *dir = xds_weights_path(w);
    char *tj = path_join(dir, "tokenizer.json"), *tc = path_join(dir, "tokenizer_config.json");
    struct stat st;
    xds_status s;
    if (!tj || !tc) s = xds_err_set(XDS_ERR_NOMEM, "out of memory");
    else if (stat(tj, &st) != 0) s = xds_err_set(XDS_ERR_NOT_FOUND, "%s: no tokenizer.json next to the model", dir);
    else s = xds_tokenizer_load_json(tj, stat(tc, &st) == 0 ? tc : NULL, out);
    free(tj);
    free(tc);
    return s;
}

int gen_session_open(gen_session *s, const char *cmd, const gen_opts *o) {
    memset(s, 0, sizeof *s);
    s->cmd = cmd;
    int last = -1;
    xds_model_opts mo = {.quantize = o->quantize};
    if (isatty(2) && !o->quiet) {
        mo.progress = progress_bar;
        mo.progress_user = &last;
        mo.prefault = 1;
    }
    xds_status st = xds_model_load(o->model, &mo, &s->model);
    if (st == XDS_OK) st = load_tokenizer(s->model, &s->tok);
    if (st != XDS_OK) {
        fprintf(stderr, "xds %s: error: %s\n", cmd, xds_err_msg());
        gen_session_close(s);
        return 1;
    }
    const xds_model_config *c = &s->model->cfg;
    int n_ctx = o->n_ctx > 0 ? o->n_ctx : (c->max_ctx < 4096 ? c->max_ctx : 4096);
    if (n_ctx > c->max_ctx && !o->quiet)
        fprintf(stderr, "xds %s: warning: context %d exceeds the model's trained %d\n", cmd, n_ctx, c->max_ctx);
    s->n_ctx = n_ctx;
    s->max_batch = n_ctx < 512 ? n_ctx : 512;
    if (st == XDS_OK) st = xds_model_kv_cache_create(s->model, n_ctx, 16, 1, &s->kv);
    if (st == XDS_OK) st = xds_model_ctx_create(s->model, s->kv, o->n_threads, s->max_batch, &s->ctx);
    s->hist = malloc(sizeof(int32_t) * (size_t)n_ctx);
    s->logits = malloc(sizeof(float) * (size_t)c->n_vocab);
    if (st == XDS_OK && (!s->hist || !s->logits)) st = xds_err_set(XDS_ERR_NOMEM, "out of memory");
    if (st == XDS_OK && !(s->sampler = xds_sampler_create(&o->sp, c->n_vocab)))
        st = xds_err_set(XDS_ERR_NOMEM, "cannot create the sampler");
    if (st != XDS_OK) {
        fprintf(stderr, "xds %s: error: %s\n", cmd, xds_err_msg());
        gen_session_close(s);
        return 1;
    }
    return 0;
}

void gen_session_close(gen_session *s) {
    xds_sampler_free(s->sampler);
    xds_model_ctx_free(s->ctx);
    xds_kv_cache_free(s->kv);
    if (s->tok) xds_tokenizer_free(s->tok);
    xds_model_free(s->model);
    free(s->hist);
    free(s->logits);
    memset(s, 0, sizeof *s);
}

/* Feed tokens [from, to) at positions from.. with logits of the last one. */
static int feed_range(gen_session *s, const int32_t *ids, int from, int to) {
    int32_t pos[512], seq[512];
    while (from < to) {
        int n = to - from < s->max_batch ? to - from : s->max_batch;
        for (int i = 0; i < n; i++) pos[i] = from + i, seq[i] = 0;
        int32_t last = n - 1;
        xds_batch b = {n, ids + from, pos, seq};
        xds_status st = xds_kv_seq_reserve(s->kv, 0, from + n);
        if (st == XDS_OK) st = xds_model_forward(s->ctx, &b, &last, 1, s->logits);
        if (st != XDS_OK) {
            fprintf(stderr, "xds %s: error: %s\n", s->cmd, xds_err_msg());
            return 1;
        }
        memcpy(s->hist + from, ids + from, sizeof(int32_t) * n);
        s->n_hist = from + n;
        from += n;
    }
    return 0;
}

int gen_session_feed(gen_session *s, const int32_t *ids, int n) {
    if (n <= 0) {
        fprintf(stderr, "xds %s: error: the prompt is empty (no tokens to start from)\n", s->cmd);
        return 1;
    }
    if (n >= s->n_ctx) {
        fprintf(stderr, "xds %s: error: the %s is %d tokens but the context holds %d (use -c to enlarge it)\n",
                s->cmd, strcmp(s->cmd, "chat") ? "prompt" : "conversation", n, s->n_ctx);
        return 1;
    }
    int keep = 0;
    while (keep < s->n_hist && keep < n && s->hist[keep] == ids[keep]) keep++;
    if (keep == n) keep = n - 1; /* re-run the last token for its logits */
    xds_kv_seq_truncate(s->kv, 0, keep);
    s->n_hist = keep;
    double t0 = now_s();
    int r = feed_range(s, ids, keep, n);
    s->t_prefill += now_s() - t0;
    s->n_prefill += n - keep;
    return r;
}

int gen_session_generate(gen_session *s, int n_max, int skip_special, FILE *out, int32_t **gen, int *n_gen) {
    xds_detok dt;
    xds_detok_init(&dt, skip_special);
    char buf[256];
    int V = s->model->cfg.n_vocab, rc = 0, count = 0;
    double t0 = now_s();
    for (;;) {
        if (n_max >= 0 && count >= n_max) break;
        if (s->n_hist >= s->n_ctx) break; /* context full */
        int32_t t = xds_sampler_sample(s->sampler, s->logits);
        if (t < 0 || t >= V) break;
        if (xds_tokenizer_is_eog(s->tok, t)) break;
        xds_sampler_accept(s->sampler, t);
        size_t k = xds_detok_push(&dt, s->tok, t, buf, sizeof buf);
        while (k > 0) {
            fwrite(buf, 1, k, out);
            k = k == sizeof buf ? xds_detok_push(&dt, s->tok, -1, buf, sizeof buf) : 0;
        }
        fflush(out);
        if (gen) {
            int32_t *g = realloc(*gen, sizeof(int32_t) * (*n_gen + 1));
            if (!g) {
                rc = 1;
                break;
            }
            *gen = g;
            g[(*n_gen)++] = t;
        }
        count++;
        if (s->n_hist + 1 >= s->n_ctx || (n_max >= 0 && count >= n_max)) {
            /* nothing more will be sampled: no need to run the model on t */
            s->hist[s->n_hist] = t;
            break;
        }
        s->hist[s->n_hist] = t;
        if (feed_range(s, s->hist, s->n_hist, s->n_hist + 1)) {
            rc = 1;
            break;
        }
    }
    size_t k;
    while ((k = xds_detok_flush(&dt, buf, sizeof buf)) > 0) {
        fwrite(buf, 1, k, out);
        if (k < sizeof buf) break;
    }
    fflush(out);
    xds_detok_free(&dt);
    s->t_decode += now_s() - t0;
    s->n_decode += count;
    return rc;
}

void gen_print_speed(gen_session *s) {
    fprintf(stderr, "\nprefill: %d tokens in %.3f s (%.1f tok/s); decode: %d tokens in %.3f s (%.1f tok/s)\n",
            s->n_prefill, s->t_prefill, s->t_prefill > 0 ? s->n_prefill / s->t_prefill : 0.0, s->n_decode,
            s->t_decode, s->t_decode > 0 ? s->n_decode / s->t_decode : 0.0);
    s->n_prefill = s->n_decode = 0; /* figures are per turn */
    s->t_prefill = s->t_decode = 0;
}
