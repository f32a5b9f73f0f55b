/*
 * scheduler.c — continuous batching with chunked prefill, prefix reuse and
 * preemption by recompute. The policy and its invariants are in scheduler.h.
 */
#include "engine/scheduler.h"

#include <stdlib.h>
#include <string.h>

/* ---- sequences ----------------------------------------------------------- */

xds_status xds_sched_seq_create(uint64_t id, const int32_t *prompt, int n_prompt, int cap_tokens,
                                int block_size, xds_sched_seq **out) {
    if (n_prompt <= 0 || cap_tokens < n_prompt || block_size <= 0)
        return xds_err_set(XDS_ERR_INVALID, "sequence: n_prompt %d / cap %d / block_size %d invalid",
                           n_prompt, cap_tokens, block_size);
    xds_sched_seq *s = calloc(1, sizeof(*s));
    if (!s) return xds_err_set(XDS_ERR_NOMEM, "sequence: out of memory");
    s->id = id;
    s->cap_tokens = cap_tokens;
    s->cap_blocks = xds_sched_blocks_for(cap_tokens, block_size);
    s->tokens = malloc((size_t)cap_tokens * sizeof(int32_t));
    s->blocks = malloc((size_t)s->cap_blocks * sizeof(int32_t));
    s->hashes = malloc((size_t)s->cap_blocks * sizeof(uint64_t));
    if (!s->tokens || !s->blocks || !s->hashes) {
        xds_sched_seq_free(s);
        return xds_err_set(XDS_ERR_NOMEM, "sequence: out of memory for %d tokens", cap_tokens);
    }
    memcpy(s->tokens, prompt, (size_t)n_prompt * sizeof(int32_t));
    s->n_tokens = s->n_prompt = n_prompt;
    s->n_cached = -1;
    s->slot = -1;
    s->preempted_at = -1;
    *out = s;
    return XDS_OK;
}

void xds_sched_seq_free(xds_sched_seq *s) {
    if (!s) return;
    free(s->tokens);
    free(s->blocks);
    free(s->hashes);
    free(s);
}

int xds_sched_seq_append(xds_sched_seq *s, int32_t token) {
    if (s->n_tokens >= s->cap_tokens) return 0;
    s->tokens[s->n_tokens++] = token;
    return 1;
}

/* ---- lists --------------------------------------------------------------- */

static void list_unlink(xds_sched_seq **head, xds_sched_seq **tail, xds_sched_seq *q) {
    if (q->prev) q->prev->next = q->next;
    else *head = q->next;
    if (q->next) q->next->prev = q->prev;
    else *tail = q->prev;
    q->prev = q->next = NULL;
}

static void list_push_back(xds_sched_seq **head, xds_sched_seq **tail, xds_sched_seq *q) {
    q->next = NULL;
    q->prev = *tail;
    if (*tail) (*tail)->next = q;
    else *head = q;
    *tail = q;
}

static void list_push_front(xds_sched_seq **head, xds_sched_seq **tail, xds_sched_seq *q) {
    q->prev = NULL;
    q->next = *head;
    if (*head) (*head)->prev = q;
    else *tail = q;
    *head = q;
}

/* ---- scheduler ------------------------------------------------------------ */

xds_status xds_sched_create(const xds_sched_opts *opts, xds_kv_blocks *bm, xds_sched **out) {
    if (opts->max_batch <= 0 || opts->max_step_tokens <= 0)
        return xds_err_set(XDS_ERR_INVALID, "scheduler: max_batch %d / max_step_tokens %d must be > 0",
                           opts->max_batch, opts->max_step_tokens);
    xds_sched *s = calloc(1, sizeof(*s));
    if (!s) return xds_err_set(XDS_ERR_NOMEM, "scheduler: out of memory");
    s->opts = *opts;
    s->bm = bm;
    s->free_slots = malloc((size_t)opts->max_batch * sizeof(int32_t));
    s->items = malloc((size_t)opts->max_batch * sizeof(xds_sched_item));
    if (!s->free_slots || !s->items) {
        xds_sched_free(s);
        return xds_err_set(XDS_ERR_NOMEM, "scheduler: out of memory");
    }
    for (int i = 0; i < opts->max_batch; i++) s->free_slots[i] = opts->max_batch - 1 - i;
    s->n_free_slots = opts->max_batch;
    *out = s;
    return XDS_OK;
}

void xds_sched_free(xds_sched *s) {
    if (!s) return;
    free(s->free_slots);
    free(s->items);
    free(s);
}

void xds_sched_add(xds_sched *s, xds_sched_seq *seq) {
    seq->state = XDS_SEQ_WAITING;
    list_push_back(&s->wait_head, &s->wait_tail, seq);
    s->n_waiting++;
}

/* Release every block of seq's table, last block first, so that the blocks
 * of its tail are the first evicted from the prefix cache. */
static void seq_release_blocks(xds_sched *s, xds_sched_seq *seq) {
    for (int i = seq->n_blocks - 1; i >= 0; i--) {
        xds_status st = xds_kv_blocks_unref(s->bm, seq->blocks[i]);
        XDS_ASSERT(st == XDS_OK);
    }
    seq->n_blocks = 0;
    seq->n_pub = 0;
    seq->n_computed = 0;
}

/* Grow seq's table to cover n_pos positions; all or nothing. */
static int seq_reserve(xds_sched *s, xds_sched_seq *seq, int n_pos) {
    int need = xds_sched_blocks_for(n_pos, s->bm->block_size) - seq->n_blocks;
    if (need <= 0) return 1;
    XDS_ASSERT(seq->n_blocks + need <= seq->cap_blocks);
    if (xds_kv_blocks_n_available(s->bm) < need) return 0;
    for (int i = 0; i < need; i++) {
        int32_t b = xds_kv_blocks_alloc(s->bm);
        XDS_ASSERT(b >= 0);
        seq->blocks[seq->n_blocks++] = b;
    }
    return 1;
}

static uint64_t seq_block_hash(const xds_sched_seq *seq, int i, int bs) {
    uint64_t parent = i ? seq->hashes[i - 1] : XDS_PREFIX_HASH_ROOT;
    return xds_prefix_hash(parent, seq->tokens + (size_t)i * bs, bs);
}

/* Hash full blocks up to (not including) block n. */
static void seq_hash_upto(xds_sched_seq *seq, int n, int bs) {
    while (seq->n_hashed < n) {
        seq->hashes[seq->n_hashed] = seq_block_hash(seq, seq->n_hashed, bs);
        seq->n_hashed++;
    }
}

static void seq_preempt(xds_sched *s, xds_sched_seq *seq, xds_sched_plan *plan) {
    for (int i = 0; i < plan->n_items; i++) {
        if (plan->items[i].seq != seq) continue;
        plan->n_tok -= plan->items[i].n;
        plan->items[i] = plan->items[--plan->n_items];
        break;
    }
    seq_release_blocks(s, seq);
    list_unlink(&s->run_head, &s->run_tail, seq);
    s->n_running--;
    s->free_slots[s->n_free_slots++] = seq->slot;
    seq->slot = -1;
    seq->state = XDS_SEQ_WAITING;
    seq->n_preempt++;
    seq->preempted_at = (int)s->n_steps;
    list_push_front(&s->wait_head, &s->wait_tail, seq);
    s->n_waiting++;
    s->n_preemptions++;
    plan->n_preempted++;
}

static int plan_has(const xds_sched_plan *plan, const xds_sched_seq *seq) {
    for (int i = 0; i < plan->n_items; i++)
        if (plan->items[i].seq == seq) return 1;
    return 0;
}

static void plan_add(xds_sched_plan *plan, xds_sched_seq *seq, int n) {
    xds_sched_item *it = &plan->items[plan->n_items++];
    it->seq = seq;
    it->start = seq->n_computed;
    it->n = n;
    it->sample = seq->n_computed + n == seq->n_tokens;
    plan->n_tok += n;
}

/* Schedule running sequence seq for n tokens, preempting the
 * newest running sequences for blocks. Returns 0 if seq itself was preempted. */
static int schedule_running(xds_sched *s, xds_sched_seq *seq, int n, xds_sched_plan *plan) {
    while (!seq_reserve(s, seq, seq->n_computed + n)) {
        xds_sched_seq *victim = s->run_tail;
        seq_preempt(s, victim, plan);
        if (victim == seq) return 0;
    }
    plan_add(plan, seq, n);
    return 1;
}

/* Try to admit the head of the waiting queue with a budget; 0 if it cannot
 * be admitted now (nothing changed). */
static int admit(xds_sched *s, xds_sched_seq *seq, int budget, xds_sched_plan *plan) {
    int bs = s->bm->block_size;
    XDS_ASSERT(seq->n_blocks == 0 && seq->n_computed == 0);
    /* Longest cached prefix of full blocks, leaving >= 1 token to compute. */
    int n_full = (seq->n_tokens - 1) / bs;
    int n_hit = 0;
    if (s->bm->pc) {
        seq_hash_upto(seq, n_full, bs);
        while (n_hit < n_full) {
            uint64_t parent = n_hit ? seq->hashes[n_hit - 1] : XDS_PREFIX_HASH_ROOT;
            int32_t b = xds_kv_blocks_lookup(s->bm, seq->hashes[n_hit], parent,
                                             seq->tokens + (size_t)n_hit * bs);
            if (b < 0) break;
            seq->blocks[seq->n_blocks++] = b;
            n_hit++;
        }
    }
    seq->n_computed = n_hit * bs;
    seq->n_pub = n_hit;
    int n = seq->n_tokens - seq->n_computed;
    if (n > budget) n = budget;
    /* Watermark (vLLM's): while others run, keep ~1% of the pool free after
     * admitting, so the running sequences' next blocks do not immediately
     * force a preemption of the newcomer. Alone, a sequence always fits. */
    int need = xds_sched_blocks_for(seq->n_computed + n, bs) - seq->n_blocks;
    int watermark = s->n_running ? (s->bm->n_blocks + 99) / 100 : 0;
    if (xds_kv_blocks_n_available(s->bm) - need < watermark || !seq_reserve(s, seq, seq->n_computed + n)) {
        seq_release_blocks(s, seq);
        return 0;
    }
    if (s->bm->pc) {
        s->prefix_queries += (uint64_t)seq->n_tokens;
        s->prefix_hits += (uint64_t)n_hit * bs;
    }
    if (seq->n_cached < 0) seq->n_cached = n_hit * bs < seq->n_prompt ? n_hit * bs : seq->n_prompt;
    list_unlink(&s->wait_head, &s->wait_tail, seq);
    s->n_waiting--;
    list_push_back(&s->run_head, &s->run_tail, seq);
    s->n_running++;
    seq->state = XDS_SEQ_RUNNING;
    seq->slot = s->free_slots[--s->n_free_slots];
    plan_add(plan, seq, n);
    return 1;
}

void xds_sched_schedule(xds_sched *s, xds_sched_plan *plan) {
    plan->items = s->items;
    plan->n_items = 0;
    plan->n_tok = 0;
    plan->n_preempted = 0;
    int budget = s->opts.max_step_tokens;

    /* 1. decodes, oldest first. */
    /* A victim is always the tail, so after schedule_running returns 1, q is
     * still listed and q->next is valid. */
    for (xds_sched_seq *q = s->run_head; q; q = q->next) {
        if (q->n_tokens - q->n_computed != 1 || plan_has(plan, q)) continue;
        if (budget - plan->n_tok < 1) break;
        if (!schedule_running(s, q, 1, plan)) break; /* q was the newest: nothing after it */
    }
    /* 2. prefill chunks of running sequences, oldest first. */
    for (xds_sched_seq *q = s->run_head; q; q = q->next) {
        if (plan_has(plan, q)) continue;
        int left = budget - plan->n_tok;
        if (left < 1) break;
        int n = q->n_tokens - q->n_computed;
        if (n > left) n = left;
        if (!schedule_running(s, q, n, plan)) break;
    }
    /* 3. admissions, FIFO, unless this step had to preempt. */
    while (!plan->n_preempted && s->wait_head && s->n_free_slots > 0) {
        int left = budget - plan->n_tok;
        if (left < 1) break;
        if (!admit(s, s->wait_head, left, plan)) break;
    }
    if (plan->n_items) s->n_steps++;
}

void xds_sched_commit(xds_sched *s, const xds_sched_plan *plan) {
    int bs = s->bm->block_size;
    for (int i = 0; i < plan->n_items; i++) {
        xds_sched_seq *q = plan->items[i].seq;
        XDS_ASSERT(q->n_computed == plan->items[i].start);
        q->n_computed += plan->items[i].n;
        if (!s->bm->pc) continue;
        int n_full = q->n_computed / bs;
        seq_hash_upto(q, n_full, bs);
        for (; q->n_pub < n_full; q->n_pub++) {
            uint64_t parent = q->n_pub ? q->hashes[q->n_pub - 1] : XDS_PREFIX_HASH_ROOT;
            xds_kv_blocks_publish(s->bm, q->blocks[q->n_pub], q->hashes[q->n_pub], parent,
                                  q->tokens + (size_t)q->n_pub * bs);
        }
    }
}

void xds_sched_finish(xds_sched *s, xds_sched_seq *seq) {
    if (seq->state == XDS_SEQ_WAITING) {
        list_unlink(&s->wait_head, &s->wait_tail, seq);
        s->n_waiting--;
    } else if (seq->state == XDS_SEQ_RUNNING) {
        list_unlink(&s->run_head, &s->run_tail, seq);
        s->n_running--;
        s->free_slots[s->n_free_slots++] = seq->slot;
        seq->slot = -1;
    }
    seq_release_blocks(s, seq);
    seq->state = XDS_SEQ_FINISHED;
}
