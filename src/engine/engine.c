/*
 * engine.c — one FlowServe DP group: the step loop on its own thread, the
 * executor that turns a scheduler plan into one batched forward pass, and the
 * thread-safe submit / cancel / stats entry points (engine.h).
 *
 * Each step: take new requests and cancellations from the inbox (under the
 * lock), plan the step (scheduler.c), point the model's per-slot block tables
 * at the blocks the block manager gave each sequence, run the model once over
 * every scheduled token (prefill chunks and decodes mixed), sample the rows
 * whose sequence caught up, run output processing and deliver events.
 *
 * Threads: submit / cancel / stats_get / free lock `mu`; everything else
 * (scheduler, block manager, KV cache, requests once taken from the inbox) is
 * touched by the engine thread only. Callbacks run on the engine thread with
 * no lock held. Invariants: every accepted request gets exactly one final
 * event (finish != NONE) and no event after it; a request's sequence, sampler
 * and output state are freed right after its final event.
 *
 * Liveness: `progress` (monotonic, under mu) is stamped each time the loop
 * takes its inbox or finishes a step, and by submit / cancel when they hand
 * work to an idle loop; stats_get reports how long ago that was while work
 * is pending (xds_engine_stats.stall_s), so a step that never returns shows
 * as a growing stall rather than as a healthy, busy engine.
 */
#include "engine/engine.h"

#include <pthread.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/log.h"
#include "engine/kv_block.h"
#include "engine/output.h"
#include "engine/scheduler.h"
#include "model/model.h"
#include "model/moe.h"
#include "tokenizer/tokenizer.h"

typedef struct eng_req {
    uint64_t id;
    xds_sched_seq *seq;   /* owned */
    xds_sampler *sampler; /* owned */
    xds_output out;
    xds_gen_cb cb;
    void *user;
    xds_kv_import_fn import; /* disaggregated prefill: fills prompt KV instead of computing it (may be NULL) */
    void *import_user;
    int test_stalled;        /* the XDS_TEST_STALL_ENGINE_MS hook has slept for it */
    struct eng_req *next, *prev; /* inbox (next only), then the live list */
} eng_req;

struct xds_engine {
    xds_model *model;   /* borrowed */
    xds_tokenizer *tok; /* borrowed, may be NULL */
    xds_engine_opts opts;
    int n_vocab;

    xds_kv_cache *kv;   /* KV memory; block tables set from the block manager */
    xds_model_ctx *ctx;
    uint64_t *expert_count; /* (n_layer * n_expert) tokens routed per (layer, expert); NULL: dense model */
    xds_kv_blocks *bm;
    xds_sched *sched;

    /* step buffers */
    int32_t *b_tok, *b_pos, *b_seq; /* (max_step_tokens) */
    int32_t *rows;                  /* (max_batch) batch rows to sample */
    xds_sched_item **row_item;      /* (max_batch) */
    float *logits;                  /* (max_batch, n_vocab) */
    float *imp_logits;              /* (max_batch, n_vocab) logits given by importers; allocated on first use */
    int32_t *fwd_row;               /* (max_batch) sampled row of each forward logits row */
    uint8_t *imported;              /* (max_batch) 1: the sampled row's logits came from the importer */
    /* events of the step's sampled rows, delivered after stats are published */
    eng_req **ev_req;               /* (max_batch) */
    int32_t *ev_tok;                /* (max_batch) */
    const char **ev_text;           /* (max_batch) */
    size_t *ev_len;                 /* (max_batch) */
    xds_finish *ev_fin;             /* (max_batch) */

    eng_req *live_head; /* engine thread: requests taken from the inbox */

    pthread_t thread;
    int thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;  /* wakes the engine thread */
    /* --- under mu --- */
    eng_req *inbox_head, *inbox_tail;
    int n_inbox;
    uint64_t *cancels;
    int n_cancels, cap_cancels;
    int stop, drain;
    uint64_t next_id;
    xds_engine_stats st;
    double progress;    /* monotonic s: the loop last made progress (see the file comment) */

    int test_stall_ms;  /* XDS_TEST_STALL_ENGINE_MS (engine.h), 0: off */
};

static double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Work pending for the loop (under mu; st is what the loop last published). */
static int has_work_locked(const xds_engine *e) {
    return e->inbox_head || e->n_cancels || e->st.n_running || e->st.n_waiting;
}

xds_engine_opts xds_engine_opts_default(void) {
    xds_engine_opts o;
    memset(&o, 0, sizeof(o));
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    o.n_threads = n > 0 ? (int)n : 1;
    o.max_batch = 16;
    o.max_step_tokens = 256;
    o.kv_blocks = 0;
    o.kv_block_size = 16;
    o.max_queue = 256;
    o.max_ctx = 0;
    o.enable_prefix_cache = 1;
    return o;
}

/* ---- requests -------------------------------------------------------------- */

static void req_free(eng_req *r) {
    if (!r) return;
    xds_sched_seq_free(r->seq);
    xds_sampler_free(r->sampler);
    xds_output_free(&r->out);
    free(r);
}

static void live_unlink(xds_engine *e, eng_req *r) {
    if (r->prev) r->prev->next = r->next;
    else e->live_head = r->next;
    if (r->next) r->next->prev = r->prev;
    r->next = r->prev = NULL;
}

static void emit(eng_req *r, int32_t token, const char *text, size_t len, xds_finish fin) {
    xds_gen_event ev;
    ev.req_id = r->id;
    ev.text = text ? text : "";
    ev.text_len = text ? len : 0;
    ev.token = token;
    ev.finish = fin;
    ev.n_prompt = r->seq->n_prompt;
    ev.n_cached = r->seq->n_cached > 0 ? r->seq->n_cached : 0;
    ev.n_gen = r->seq->n_tokens - r->seq->n_prompt;
    r->cb(r->user, &ev);
}

static void publish_stats(xds_engine *e);

/* Final event without a new token (abort, error), then free. Stats are
 * published first, so a caller that saw the final event sees its blocks
 * released. */
static void req_end(xds_engine *e, eng_req *r, xds_finish fin) {
    xds_sched_finish(e->sched, r->seq);
    live_unlink(e, r);
    pthread_mutex_lock(&e->mu);
    publish_stats(e);
    pthread_mutex_unlock(&e->mu);
    emit(r, -1, NULL, 0, fin);
    req_free(r);
}

/* ---- creation -------------------------------------------------------------- */

static void *engine_main(void *arg);

xds_status xds_engine_create(struct xds_model *model, struct xds_tokenizer *tok,
                             const xds_engine_opts *opts_in, xds_engine **out) {
    if (!model) return xds_err_set(XDS_ERR_INVALID, "engine: no model");
    xds_engine_opts o = opts_in ? *opts_in : xds_engine_opts_default();
    xds_engine_opts d = xds_engine_opts_default();
    if (o.n_threads <= 0) o.n_threads = d.n_threads;
    if (o.max_batch <= 0) o.max_batch = d.max_batch;
    if (o.max_step_tokens <= 0) o.max_step_tokens = d.max_step_tokens;
    if (o.kv_block_size <= 0) o.kv_block_size = d.kv_block_size;
    if (o.max_queue <= 0) o.max_queue = d.max_queue;
    int model_ctx = model->cfg.max_ctx > 0 ? model->cfg.max_ctx : 2048;
    if (o.max_ctx <= 0 || o.max_ctx > model_ctx) o.max_ctx = model_ctx;
    /* Every decode of a full batch must fit in one step. */
    if (o.max_step_tokens < o.max_batch) o.max_step_tokens = o.max_batch;
    int bs = o.kv_block_size;
    int kd, vd; /* K/V floats per token per layer, as the model lays them out (MLA: latent) */
    xds_model_kv_dims(model, &kd, &vd);
    size_t bytes_per_block = (size_t)model->cfg.n_layer * (kd + vd) * bs * sizeof(float);
    if (o.kv_blocks <= 0) {
        /* max_ctx for every batch slot, at most 2 GiB, at least one full sequence. */
        size_t want = ((size_t)o.max_ctx * o.max_batch + bs - 1) / bs;
        size_t cap = ((size_t)2 << 30) / bytes_per_block;
        size_t one = ((size_t)o.max_ctx + bs - 1) / bs;
        if (want > cap) want = cap;
        if (want < one) want = one;
        o.kv_blocks = (int)want;
    }

    xds_engine *e = calloc(1, sizeof(*e));
    if (!e) return xds_err_set(XDS_ERR_NOMEM, "engine: out of memory");
    e->model = model;
    e->tok = tok;
    e->opts = o;
    e->n_vocab = model->cfg.n_vocab;
    e->next_id = 1;
    xds_status s;
    /* The model decides the K/V row sizes (e.g. a compressed latent for MLA). */
    if ((s = xds_model_kv_cache_create(model, o.kv_blocks * bs, bs, o.max_batch, &e->kv)) != XDS_OK) goto err;
    if ((s = xds_model_ctx_create(model, e->kv, o.n_threads, o.max_step_tokens, &e->ctx)) != XDS_OK) goto err;
    if (model->cfg.moe.n_expert > 0) {
        e->expert_count = calloc((size_t)model->cfg.n_layer * (size_t)model->cfg.moe.n_expert, sizeof(uint64_t));
        if (!e->expert_count) {
            s = xds_err_set(XDS_ERR_NOMEM, "engine: out of memory for the expert load counters");
            goto err;
        }
        xds_model_ctx_set_expert_counts(e->ctx, e->expert_count);
    }
    if ((s = xds_kv_blocks_create(o.kv_blocks, bs, o.enable_prefix_cache, &e->bm)) != XDS_OK) goto err;
    xds_sched_opts so = {o.max_batch, o.max_step_tokens};
    if ((s = xds_sched_create(&so, e->bm, &e->sched)) != XDS_OK) goto err;
    e->b_tok = malloc(sizeof(int32_t) * o.max_step_tokens);
    e->b_pos = malloc(sizeof(int32_t) * o.max_step_tokens);
    e->b_seq = malloc(sizeof(int32_t) * o.max_step_tokens);
    e->rows = malloc(sizeof(int32_t) * o.max_batch);
    e->row_item = malloc(sizeof(*e->row_item) * o.max_batch);
    e->logits = malloc(sizeof(float) * (size_t)o.max_batch * e->n_vocab);
    e->fwd_row = malloc(sizeof(int32_t) * o.max_batch);
    e->imported = calloc((size_t)o.max_batch, 1);
    e->ev_req = malloc(sizeof(*e->ev_req) * o.max_batch);
    e->ev_tok = malloc(sizeof(*e->ev_tok) * o.max_batch);
    e->ev_text = malloc(sizeof(*e->ev_text) * o.max_batch);
    e->ev_len = malloc(sizeof(*e->ev_len) * o.max_batch);
    e->ev_fin = malloc(sizeof(*e->ev_fin) * o.max_batch);
    if (!e->b_tok || !e->b_pos || !e->b_seq || !e->rows || !e->row_item || !e->logits || !e->ev_req ||
        !e->ev_tok || !e->ev_text || !e->ev_len || !e->ev_fin) {
        s = xds_err_set(XDS_ERR_NOMEM, "engine: out of memory for step buffers");
        goto err;
    }
    e->st.kv_blocks_total = o.kv_blocks;
    e->st.max_queue = o.max_queue;
    e->progress = mono_s();
    const char *stall = getenv(XDS_ENGINE_TEST_STALL_ENV);
    if (stall && atoi(stall) > 0) {
        e->test_stall_ms = atoi(stall) < 600000 ? atoi(stall) : 600000; /* at most 10 min */
        XDS_LOGW("engine: test hook %s=%d: the first step of every request sleeps %d ms", XDS_ENGINE_TEST_STALL_ENV,
                 e->test_stall_ms, e->test_stall_ms);
    }
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    if (pthread_create(&e->thread, NULL, engine_main, e) != 0) {
        pthread_mutex_destroy(&e->mu);
        pthread_cond_destroy(&e->cv);
        s = xds_err_set(XDS_ERR_INTERNAL, "engine: cannot start the step thread");
        goto err;
    }
    e->thread_started = 1;
    XDS_LOGI("engine: %d KV blocks of %d tokens (%.1f MiB), max batch %d, %d tokens/step, ctx %d, prefix cache %s",
             o.kv_blocks, bs,
             (double)bytes_per_block * o.kv_blocks / (1 << 20),
             o.max_batch,
             o.max_step_tokens, o.max_ctx, o.enable_prefix_cache ? "on" : "off");
    *out = e;
    return XDS_OK;
err:
    xds_engine_free(e, 0);
    return s;
}

void xds_engine_free(xds_engine *e, int drain) {
    if (!e) return;
    if (e->thread_started) {
        pthread_mutex_lock(&e->mu);
        e->stop = 1;
        e->drain = drain;
        pthread_cond_signal(&e->cv);
        pthread_mutex_unlock(&e->mu);
        pthread_join(e->thread, NULL);
        pthread_mutex_destroy(&e->mu);
        pthread_cond_destroy(&e->cv);
    }
    xds_sched_free(e->sched);
    xds_kv_blocks_free(e->bm);
    xds_model_ctx_free(e->ctx);
    free(e->expert_count);
    xds_kv_cache_free(e->kv);
    free(e->b_tok);
    free(e->b_pos);
    free(e->b_seq);
    free(e->rows);
    free(e->row_item);
    free(e->logits);
    free(e->imp_logits);
    free(e->fwd_row);
    free(e->imported);
    free(e->ev_req);
    free(e->ev_tok);
    free(e->ev_text);
    free(e->ev_len);
    free(e->ev_fin);
    free(e->cancels);
    free(e);
}

/* ---- submit / cancel / stats (any thread) ----------------------------------- */

xds_status xds_engine_submit(xds_engine *e, const int32_t *prompt, int n_prompt,
                             const xds_gen_params *p, xds_gen_cb cb, void *user, uint64_t *req_id) {
    return xds_engine_submit_import(e, prompt, n_prompt, p, cb, user, NULL, NULL, req_id);
}

xds_status xds_engine_submit_import(xds_engine *e, const int32_t *prompt, int n_prompt, const xds_gen_params *p,
                                    xds_gen_cb cb, void *user, xds_kv_import_fn import, void *import_user,
                                    uint64_t *req_id) {
    if (!prompt || n_prompt <= 0) return xds_err_set(XDS_ERR_INVALID, "request: empty prompt");
    if (!p || !cb) return xds_err_set(XDS_ERR_INVALID, "request: missing parameters or callback");
    if (p->max_tokens <= 0)
        return xds_err_set(XDS_ERR_INVALID, "request: max_tokens %d must be positive", p->max_tokens);
    if (p->n_stop < 0 || (p->n_stop > 0 && !p->stop))
        return xds_err_set(XDS_ERR_INVALID, "request: bad stop list");
    for (int i = 0; i < p->n_stop; i++)
        if (!p->stop[i]) return xds_err_set(XDS_ERR_INVALID, "request: stop string %d is NULL", i);
    const xds_engine_opts *o = &e->opts;
    if ((long)n_prompt + p->max_tokens > o->max_ctx)
        return xds_err_set(XDS_ERR_INVALID,
                           "request: prompt (%d tokens) + max_tokens (%d) exceeds the context of %d tokens",
                           n_prompt, p->max_tokens, o->max_ctx);
    int total = n_prompt + p->max_tokens;
    if (xds_sched_blocks_for(total, o->kv_block_size) > o->kv_blocks)
        return xds_err_set(XDS_ERR_INVALID,
                           "request: %d tokens need more KV blocks than the cache has (%d of %d tokens)",
                           total, o->kv_blocks, o->kv_block_size);
    for (int i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= e->n_vocab)
            return xds_err_set(XDS_ERR_INVALID, "request: prompt token %d: id %d outside the vocabulary [0, %d)",
                               i, prompt[i], e->n_vocab);
    if (p->sampling.n_logit_bias < 0 || p->sampling.n_logit_bias > XDS_MAX_LOGIT_BIAS)
        return xds_err_set(XDS_ERR_INVALID, "request: %d logit_bias entries (0..%d)", p->sampling.n_logit_bias,
                           XDS_MAX_LOGIT_BIAS);
    for (int i = 0; i < p->sampling.n_logit_bias; i++)
        if (p->sampling.logit_bias_tok[i] < 0 || p->sampling.logit_bias_tok[i] >= e->n_vocab ||
            !isfinite(p->sampling.logit_bias[i]))
            return xds_err_set(XDS_ERR_INVALID, "request: logit_bias entry %d: token id %d outside the vocabulary "
                                                "[0, %d) or a non-finite bias", i, p->sampling.logit_bias_tok[i],
                               e->n_vocab);

    eng_req *r = calloc(1, sizeof(*r));
    if (!r) return xds_err_set(XDS_ERR_NOMEM, "request: out of memory");
    xds_status s = xds_sched_seq_create(0, prompt, n_prompt, total, o->kv_block_size, &r->seq);
    if (s != XDS_OK) {
        free(r);
        return s;
    }
    r->seq->user = r;
    r->sampler = xds_sampler_create(&p->sampling, e->n_vocab);
    if (!r->sampler) {
        req_free(r);
        return xds_err_set(XDS_ERR_NOMEM, "request: cannot create a sampler");
    }
    s = xds_output_init(&r->out, e->tok, e->model->cfg.eos_id, p->stop, p->n_stop, p->ignore_eos,
                        p->max_tokens);
    if (s != XDS_OK) {
        req_free(r);
        return s;
    }
    r->cb = cb;
    r->user = user;
    r->import = import;
    r->import_user = import_user;

    pthread_mutex_lock(&e->mu);
    if (e->stop) {
        pthread_mutex_unlock(&e->mu);
        req_free(r);
        return xds_err_set(XDS_ERR_BUSY, "engine: shutting down");
    }
    if (e->n_inbox + e->st.n_waiting >= o->max_queue) {
        int q = e->n_inbox + e->st.n_waiting;
        pthread_mutex_unlock(&e->mu);
        req_free(r);
        return xds_err_set(XDS_ERR_BUSY, "engine: %d requests waiting (limit %d)", q, o->max_queue);
    }
    if (!has_work_locked(e)) e->progress = mono_s(); /* an idle loop's stamp is old: count from now */
    r->id = e->next_id++;
    r->seq->id = r->id;
    if (e->inbox_tail) e->inbox_tail->next = r;
    else e->inbox_head = r;
    e->inbox_tail = r;
    e->n_inbox++;
    e->st.n_prompt_tokens += (uint64_t)n_prompt;
    if (req_id) *req_id = r->id;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    return XDS_OK;
}

void xds_engine_cancel(xds_engine *e, uint64_t req_id) {
    pthread_mutex_lock(&e->mu);
    if (e->n_cancels == e->cap_cancels) {
        int cap = e->cap_cancels ? 2 * e->cap_cancels : 16;
        uint64_t *c = realloc(e->cancels, sizeof(uint64_t) * cap);
        if (!c) {
            /* Out of memory: the request simply runs to completion. */
            pthread_mutex_unlock(&e->mu);
            XDS_LOGW("engine: cancel of request %llu dropped (out of memory)", (unsigned long long)req_id);
            return;
        }
        e->cancels = c;
        e->cap_cancels = cap;
    }
    if (!has_work_locked(e)) e->progress = mono_s();
    e->cancels[e->n_cancels++] = req_id;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

int xds_engine_expert_load(xds_engine *e, uint64_t *out) {
    if (!e->expert_count) return 0;
    int E = e->model->cfg.moe.n_expert;
    size_t n = (size_t)e->model->cfg.n_layer * (size_t)E;
    for (size_t i = 0; i < n; i++) out[i] = __atomic_load_n(&e->expert_count[i], __ATOMIC_RELAXED);
    return E;
}

char *xds_engine_expert_load_json(xds_engine *e) {
    if (!e->expert_count) return NULL;
    const xds_model_config *c = &e->model->cfg;
    int E = c->moe.n_expert, L = c->n_layer, n_moe = 0;
    uint64_t *v = malloc(sizeof(uint64_t) * (size_t)L * (size_t)E);
    if (!v) return NULL;
    xds_engine_expert_load(e, v);
    /* {"experts":E,"top_k":K,"layers":[l...],"load":[[...],...]}: 21 bytes a count at most */
    size_t cap = (size_t)L * (size_t)E * 21 + (size_t)L * 16 + 128, n = 0;
    char *s = malloc(cap);
    if (!s) {
        free(v);
        return NULL;
    }
    n += (size_t)snprintf(s + n, cap - n, "{\"experts\":%d,\"top_k\":%d,\"layers\":[", E, c->moe.n_expert_used);
    for (int l = 0; l < L; l++)
        if (xds_arch_layer_moe(c, l)) n += (size_t)snprintf(s + n, cap - n, "%s%d", n_moe++ ? "," : "", l);
    n += (size_t)snprintf(s + n, cap - n, "],\"load\":[");
    int first = 1;
    for (int l = 0; l < L; l++) {
        if (!xds_arch_layer_moe(c, l)) continue;
        n += (size_t)snprintf(s + n, cap - n, "%s[", first ? "" : ",");
        first = 0;
        for (int x = 0; x < E; x++)
            n += (size_t)snprintf(s + n, cap - n, "%s%llu", x ? "," : "", (unsigned long long)v[(size_t)l * E + x]);
        s[n++] = ']';
    }
    snprintf(s + n, cap - n, "]}");
    free(v);
    return s;
}

void xds_engine_stats_get(xds_engine *e, xds_engine_stats *out) {
    pthread_mutex_lock(&e->mu);
    *out = e->st;
    out->n_waiting += e->n_inbox;
    out->stall_s = has_work_locked(e) ? mono_s() - e->progress : 0.0;
    if (out->stall_s < 0) out->stall_s = 0;
    pthread_mutex_unlock(&e->mu);
}

/* ---- the step -------------------------------------------------------------- */

static void step(xds_engine *e) {
    xds_sched_plan plan;
    xds_sched_schedule(e->sched, &plan);
    if (plan.n_items == 0) return;
    int T = 0, n_rows = 0, n_fwd = 0;
    xds_status s = XDS_OK;
    for (int i = 0; i < plan.n_items && s == XDS_OK; i++) {
        xds_sched_seq *q = plan.items[i].seq;
        s = xds_kv_seq_set_blocks(e->kv, q->slot, q->blocks, q->n_blocks);
    }
    for (int i = 0; i < plan.n_items && s == XDS_OK; i++) {
        xds_sched_item *it = &plan.items[i];
        xds_sched_seq *q = it->seq;
        eng_req *r = q->user;
        int skip = 0; /* leading positions of the item whose KV was imported */
        int given = 0; /* the sampled row's logits were imported too */
        if (r->import && it->start < q->n_prompt) {
            int to = it->start + it->n < q->n_prompt ? it->start + it->n : q->n_prompt;
            float *lg = NULL;
            if (it->sample && to == q->n_prompt) {
                if (!e->imp_logits) e->imp_logits = malloc(sizeof(float) * (size_t)e->opts.max_batch * e->n_vocab);
                if (e->imp_logits) lg = e->imp_logits + (size_t)n_rows * e->n_vocab;
            }
            skip = r->import(r->import_user, e->kv, q->slot, it->start, to, lg);
            if (skip < 0 || skip > to - it->start || (skip == to - it->start && to == q->n_prompt && !lg)) skip = 0;
            given = it->sample && skip == it->n;
        }
        for (int j = skip; j < it->n; j++) {
            e->b_tok[T] = q->tokens[it->start + j];
            e->b_pos[T] = it->start + j;
            e->b_seq[T] = q->slot;
            T++;
        }
        if (it->sample) {
            e->imported[n_rows] = (uint8_t)given;
            if (!given) {
                e->rows[n_fwd] = T - 1;
                e->fwd_row[n_fwd++] = n_rows;
            }
            e->row_item[n_rows] = it;
            n_rows++;
        }
    }
    if (e->test_stall_ms > 0) {
        int stall = 0;
        for (int i = 0; i < plan.n_items; i++) {
            eng_req *r = plan.items[i].seq->user;
            if (!r->test_stalled) stall = r->test_stalled = 1;
        }
        if (stall) usleep((useconds_t)e->test_stall_ms * 1000);
    }
    if (s == XDS_OK && T > 0) {
        xds_batch b = {T, e->b_tok, e->b_pos, e->b_seq};
        s = e->opts.forward ? e->opts.forward(e->opts.forward_user, e->ctx, &b, e->rows, n_fwd, e->logits)
                            : xds_model_forward(e->ctx, &b, e->rows, n_fwd, e->logits);
    }
    if (s == XDS_OK && n_fwd < n_rows) {
        /* spread the computed rows to their sampled positions (backwards: fwd_row[k] >= k),
         * then put the imported ones in place */
        size_t V = (size_t)e->n_vocab;
        for (int k = n_fwd - 1; k >= 0; k--)
            if (e->fwd_row[k] != k) memmove(e->logits + e->fwd_row[k] * V, e->logits + k * V, sizeof(float) * V);
        for (int i = 0; i < n_rows; i++)
            if (e->imported[i]) memcpy(e->logits + i * V, e->imp_logits + i * V, sizeof(float) * V);
    }
    if (s != XDS_OK) {
        /* Should not happen (the scheduler only builds valid batches); fail
         * the requests of this step rather than the whole engine. */
        XDS_LOGE("engine: step of %d tokens failed: %s", T, xds_err_msg());
        for (int i = 0; i < plan.n_items; i++) req_end(e, plan.items[i].seq->user, XDS_FINISH_ERROR);
        return;
    }
    xds_sched_commit(e->sched, &plan);
    /* Sample and process every row first, finishing sequences in the
     * scheduler; publish stats; then deliver the events (texts stay valid:
     * each request's output buffer is only rewritten by its next push). */
    for (int i = 0; i < n_rows; i++) {
        xds_sched_seq *q = e->row_item[i]->seq;
        eng_req *r = q->user;
        float *lg = e->logits + (size_t)i * e->n_vocab;
        int32_t tok = xds_sampler_sample(r->sampler, lg);
        xds_sampler_accept(r->sampler, tok);
        int appended = xds_sched_seq_append(q, tok);
        XDS_ASSERT(appended); /* cap = prompt + max_tokens, and output ends at max_tokens */
        e->ev_fin[i] = xds_output_push(&r->out, tok, q->n_tokens >= e->opts.max_ctx, &e->ev_text[i],
                                       &e->ev_len[i]);
        e->ev_tok[i] = tok;
        if (e->ev_fin[i] != XDS_FINISH_NONE) {
            xds_sched_finish(e->sched, q);
            live_unlink(e, r);
        }
        e->ev_req[i] = r;
    }
    pthread_mutex_lock(&e->mu);
    e->st.n_gen_tokens += (uint64_t)n_rows;
    publish_stats(e);
    pthread_mutex_unlock(&e->mu);
    for (int i = 0; i < n_rows; i++) {
        emit(e->ev_req[i], e->ev_tok[i], e->ev_text[i], e->ev_len[i], e->ev_fin[i]);
        if (e->ev_fin[i] != XDS_FINISH_NONE) req_free(e->ev_req[i]);
    }
}

/* ---- the loop -------------------------------------------------------------- */

static void publish_stats(xds_engine *e) {
    e->st.n_waiting = e->sched->n_waiting;
    e->st.n_running = e->sched->n_running;
    e->st.kv_blocks_total = e->bm->n_blocks;
    e->st.kv_blocks_used = xds_kv_blocks_n_used(e->bm);
    e->st.prefix_queries = e->sched->prefix_queries;
    e->st.prefix_hits = e->sched->prefix_hits;
    e->st.n_steps = e->sched->n_steps;
    e->st.n_preemptions = e->sched->n_preemptions;
}

static void *engine_main(void *arg) {
    xds_engine *e = arg;
    uint64_t *cancels = NULL;
    int cap = 0;
    pthread_mutex_lock(&e->mu);
    for (;;) {
        while (!e->stop && !e->inbox_head && !e->n_cancels && !e->sched->n_running &&
               !e->sched->n_waiting)
            pthread_cond_wait(&e->cv, &e->mu);
        e->progress = mono_s();
        eng_req *in = e->inbox_head;
        e->inbox_head = e->inbox_tail = NULL;
        e->n_inbox = 0;
        int nc = e->n_cancels;
        if (nc > cap) {
            uint64_t *c = realloc(cancels, sizeof(uint64_t) * nc);
            if (c) {
                cancels = c;
                cap = nc;
            } else {
                nc = cap; /* keep the rest for the next round */
            }
        }
        if (nc) memcpy(cancels, e->cancels, sizeof(uint64_t) * nc);
        if (e->n_cancels > nc)
            memmove(e->cancels, e->cancels + nc, sizeof(uint64_t) * (e->n_cancels - nc));
        e->n_cancels -= nc;
        int stop = e->stop, drain = e->drain;
        /* While requests move from the inbox to the scheduler, count them as
         * waiting so admission control sees them. */
        for (eng_req *r = in; r; r = r->next) e->st.n_waiting++;
        pthread_mutex_unlock(&e->mu);

        while (in) {
            eng_req *r = in;
            in = in->next;
            r->next = e->live_head;
            r->prev = NULL;
            if (e->live_head) e->live_head->prev = r;
            e->live_head = r;
            xds_sched_add(e->sched, r->seq);
        }
        for (int i = 0; i < nc; i++) {
            for (eng_req *r = e->live_head; r; r = r->next) {
                if (r->id != cancels[i]) continue;
                req_end(e, r, XDS_FINISH_ABORT);
                break;
            }
        }
        if (stop && !drain)
            while (e->live_head) req_end(e, e->live_head, XDS_FINISH_ABORT);
        int done = stop && !e->live_head;
        if (!done) step(e);

        pthread_mutex_lock(&e->mu);
        publish_stats(e);
        e->progress = mono_s();
        if (done && !e->inbox_head) break;
    }
    pthread_mutex_unlock(&e->mu);
    free(cancels);
    return NULL;
}
