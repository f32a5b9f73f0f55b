/*
 * upcycle.c — exact MoE upcycling of a dense llama GGUF (xds_model_upcycle,
 * `xds upcycle`): every layer's FFN becomes E experts that are bit-identical
 * copies of it (the same quantized blocks, no requantization), plus a random
 * router (f32, seeded) and top-k routing with weights normalized to sum 1
 * (llama.cpp's Mixtral-as-llama layout: llama.expert_count,
 * llama.expert_used_count, blk.N.ffn_gate_inp, blk.N.ffn_{gate,up,down}_exps).
 * Since every expert is the same function f and the weights sum to 1, the MoE
 * layer computes sum_j w_j f(x) = f(x) for any routing, so the model equals
 * the dense one up to f32 rounding of that sum.
 *
 * Perturbed upcycling (xds_model_upcycle_perturbed, `xds upcycle --perturb
 * S`): expert e's down projection is scaled by
 * s_e = 1 + S (2e / (E - 1) - 1) (from 1 - S to 1 + S, distinct for E > 1;
 * 1 for E = 1), so expert e computes s_e f(x) and the layer
 * (sum_j w_j s_j) f(x): the output then depends on which experts a token was
 * routed to, which a deployment test needs to see a token sent to the wrong
 * expert. The scale is applied to the quantized blocks' f16 scale fields
 * (d, and m / dmin where the type has one; float types value by value), so
 * each block's factor is s_e up to f16 rounding (relative 2^-11); gate, up and
 * the router are untouched. The file records S (xds.upcycle.perturb) and the
 * scales (xds.upcycle.down_scale, f32[E]). S = 0 is the exact upcycle.
 *
 * Invariants: every metadata pair of the input is copied byte for byte except
 * the expert counts (replaced) and general.alignment (the writer aligns to 32).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "format/gguf.h"
#include "model/gguf_writer.h"
#include "model/upcycle.h"

/* Size of a GGUF value of type ty at p (within [p, end)); 0 if malformed. */
static size_t value_size(const uint8_t *p, const uint8_t *end, uint32_t ty, int depth) {
    static const int fixed[13] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    if (ty > 12) return 0;
    if (ty == 8) {
        if (end - p < 8) return 0;
        uint64_t n;
        memcpy(&n, p, 8);
        return n <= (uint64_t)(end - p - 8) ? 8 + n : 0;
    }
    if (ty == 9) {
        if (depth > 2 || end - p < 12) return 0;
        uint32_t et;
        uint64_t n;
        memcpy(&et, p, 4);
        memcpy(&n, p + 4, 8);
        size_t at = 12;
        if (et != 8 && et != 9 && et <= 12) {
            if (n > (uint64_t)(end - p - 12) / fixed[et]) return 0;
            return at + n * fixed[et];
        }
        for (uint64_t i = 0; i < n; i++) {
            size_t s = value_size(p + at, end, et, depth + 1);
            if (!s) return 0;
            at += s;
        }
        return at;
    }
    return end - p >= fixed[ty] ? (size_t)fixed[ty] : 0;
}

typedef struct {
    uint64_t s;
} rng;

static double gauss(rng *r) {
    double u[2];
    for (int i = 0; i < 2; i++) {
        r->s ^= r->s << 13, r->s ^= r->s >> 7, r->s ^= r->s << 17;
        u[i] = ((r->s >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    }
    return sqrt(-2 * log(u[0])) * cos(2 * M_PI * u[1]);
}

/* Expert e's down-projection scale for perturbation S. */
static float down_scale(int e, int n_expert, float S) {
    return n_expert > 1 ? (float)(1.0 + S * (2.0 * e / (n_expert - 1) - 1.0)) : 1.0f;
}

/* Scale one block (one value for float types) of type t in place by s. */
static int scale_block(xds_dtype t, uint8_t *b, float s) {
    uint16_t h;
    switch (t) {
    case XDS_DTYPE_F32: {
        float v;
        memcpy(&v, b, 4);
        v *= s;
        memcpy(b, &v, 4);
        return 1;
    }
    case XDS_DTYPE_F16:
    case XDS_DTYPE_Q8_0:
    case XDS_DTYPE_Q4_0:
    case XDS_DTYPE_Q4_1:
    case XDS_DTYPE_Q4_K:
    case XDS_DTYPE_Q6_K: {
        /* f16 fields: the value (F16), d (offset 0; Q6_K: last 2 bytes), m / dmin (offset 2) */
        size_t offs[2] = {t == XDS_DTYPE_Q6_K ? sizeof(xds_block_q6_k) - 2 : 0, 2};
        int n = t == XDS_DTYPE_Q4_1 || t == XDS_DTYPE_Q4_K ? 2 : 1;
        for (int i = 0; i < n; i++) {
            memcpy(&h, b + offs[i], 2);
            float v = xds_f16_to_f32(h) * s;
            if (!isfinite(v) || fabsf(v) > 65504.0f) return 0;
            h = xds_f32_to_f16(v);
            memcpy(b + offs[i], &h, 2);
        }
        return 1;
    }
    case XDS_DTYPE_BF16:
        memcpy(&h, b, 2);
        h = xds_f32_to_bf16(xds_bf16_to_f32(h) * s);
        memcpy(b, &h, 2);
        return 1;
    default: return 0;
    }
}

/* The perturbed experts' down projections, produced block by block at write time. */
typedef struct perturbed_down {
    const uint8_t *src; /* the dense down projection */
    size_t nbytes;      /* its bytes (one expert's share) */
    xds_dtype type;
    const float *scale; /* per expert */
} perturbed_down;

static void fill_down(void *user, uint8_t *buf, size_t off, size_t n) {
    const perturbed_down *pd = user;
    size_t bb = (size_t)xds_dtype_info(pd->type)->block_bytes; /* the writer asks for whole blocks */
    for (size_t at = 0; at < n; at += bb) {
        size_t o = off + at, e = o / pd->nbytes;
        memcpy(buf + at, pd->src + o % pd->nbytes, bb);
        scale_block(pd->type, buf + at, pd->scale[e]); /* checked before writing (check_down) */
    }
}

/* Every block of a dense down projection stays finite at every expert's scale. */
static xds_status check_down(const xds_tensor *t, const float *scale, int n_expert) {
    size_t bb = (size_t)xds_dtype_info(t->type)->block_bytes;
    if (t->type == XDS_DTYPE_Q8_0_R16 || !scale_block(t->type, (uint8_t[256]){0}, 1.0f))
        return xds_err_set(XDS_ERR_UNSUPPORTED, "upcycle: %s: cannot perturb type %s", t->name,
                           xds_dtype_name(t->type));
    uint8_t blk[256];
    for (size_t o = 0; o + bb <= t->nbytes; o += bb)
        for (int e = 0; e < n_expert; e++) {
            memcpy(blk, (const uint8_t *)t->data + o, bb);
            if (!scale_block(t->type, blk, scale[e]))
                return xds_err_set(XDS_ERR_INVALID, "upcycle: %s: a block scale overflows f16 at scale %g", t->name,
                                   scale[e]);
        }
    return XDS_OK;
}

xds_status xds_model_upcycle(const char *in, const char *out, int n_expert, int n_used, uint64_t seed) {
    return xds_model_upcycle_perturbed(in, out, n_expert, n_used, seed, 0.0f);
}

xds_status xds_model_upcycle_perturbed(const char *in, const char *out, int n_expert, int n_used, uint64_t seed,
                                       float perturb) {
    if (n_expert < 1 || n_expert > 256 || n_used < 1 || n_used > n_expert)
        return xds_err_set(XDS_ERR_INVALID, "upcycle: need 1 <= k (%d) <= E (%d) <= 256", n_used, n_expert);
    if (!(perturb >= 0.0f && perturb < 1.0f))
        return xds_err_set(XDS_ERR_INVALID, "upcycle: perturbation %g outside [0, 1)", perturb);
    xds_gguf *g = NULL;
    XDS_TRY(xds_gguf_open(in, &g));
    xds_status s = XDS_OK;
    xds_gguf_writer *w = NULL;
    uint8_t *hdr = NULL;
    float **routers = NULL;
    perturbed_down *downs = NULL;
    float scale[256];
    for (int e = 0; e < n_expert; e++) scale[e] = down_scale(e, n_expert, perturb);
    int n_layer = 0;
    uint32_t n_embd = 0;
    const char *arch;
    uint64_t alen;
    if ((s = xds_gguf_get_str(g, "general.architecture", &arch, &alen)) != XDS_OK) goto done;
    if (!(alen == 5 && !memcmp(arch, "llama", 5))) {
        s = xds_err_set(XDS_ERR_UNSUPPORTED, "upcycle: %s: architecture '%.*s' (dense llama only)", in,
                        (int)(alen > 32 ? 32 : alen), arch);
        goto done;
    }
    if (xds_gguf_find_kv(g, "llama.expert_count") >= 0) {
        s = xds_err_set(XDS_ERR_INVALID, "upcycle: %s is already a mixture of experts", in);
        goto done;
    }
    uint32_t nl;
    if ((s = xds_gguf_get_u32(g, "llama.block_count", &nl)) != XDS_OK ||
        (s = xds_gguf_get_u32(g, "llama.embedding_length", &n_embd)) != XDS_OK)
        goto done;
    n_layer = (int)nl;
    /* raw metadata */
    size_t hlen = xds_gguf_data_offset(g);
    hdr = malloc(hlen);
    FILE *f = fopen(in, "rb");
    int rd = f && hdr && fread(hdr, 1, hlen, f) == hlen;
    if (f) fclose(f);
    if (!rd) {
        s = xds_err_set(XDS_ERR_IO, "upcycle: cannot read the header of %s", in);
        goto done;
    }
    if ((s = xds_gguf_writer_create(&w)) != XDS_OK) goto done;
    uint64_t n_kv;
    memcpy(&n_kv, hdr + 16, 8);
    const uint8_t *p = hdr + 24, *end = hdr + hlen;
    for (uint64_t i = 0; i < n_kv; i++) {
        uint64_t kl;
        if (end - p < 8) goto bad;
        memcpy(&kl, p, 8);
        if (kl > (uint64_t)(end - p - 12)) goto bad;
        const char *key = (const char *)p + 8;
        uint32_t ty;
        memcpy(&ty, p + 8 + kl, 4);
        size_t vs = value_size(p + 12 + kl, end, ty, 0);
        if (!vs) goto bad;
        size_t total = 12 + kl + vs;
        int skip = (kl == 18 && !memcmp(key, "llama.expert_count", 18)) ||
                   (kl == 23 && !memcmp(key, "llama.expert_used_count", 23)) ||
                   (kl == 17 && !memcmp(key, "general.alignment", 17));
        if (!skip && (s = xds_gguf_writer_kv_raw(w, p, total)) != XDS_OK) goto done;
        p += total;
    }
    if ((s = xds_gguf_writer_kv_u32(w, "llama.expert_count", (uint32_t)n_expert)) != XDS_OK ||
        (s = xds_gguf_writer_kv_u32(w, "llama.expert_used_count", (uint32_t)n_used)) != XDS_OK)
        goto done;
    char note[256];
    if (perturb > 0)
        snprintf(note, sizeof note,
                 "perturbed upcycling: %d experts per FFN, expert e's down projection scaled by "
                 "xds.upcycle.down_scale[e] (1 -/+ %g), top-%d, random router (seed %llu)",
                 n_expert, perturb, n_used, (unsigned long long)seed);
    else
        snprintf(note, sizeof note, "exact upcycling: %d identical experts per FFN, top-%d, random router (seed %llu)",
                 n_expert, n_used, (unsigned long long)seed);
    if ((s = xds_gguf_writer_kv_str(w, "xds.upcycle", note)) != XDS_OK) goto done;
    if (perturb > 0) {
        /* xds.upcycle.down_scale: an array (type 9) of E f32 (type 6) */
        static const char key[] = "xds.upcycle.down_scale";
        uint8_t kv[8 + sizeof key - 1 + 4 + 4 + 8 + 4 * 256];
        uint64_t kl = sizeof key - 1, cnt = (uint64_t)n_expert;
        uint32_t ty = 9, et = 6;
        size_t at = 0;
        memcpy(kv + at, &kl, 8), at += 8;
        memcpy(kv + at, key, kl), at += kl;
        memcpy(kv + at, &ty, 4), at += 4;
        memcpy(kv + at, &et, 4), at += 4;
        memcpy(kv + at, &cnt, 8), at += 8;
        memcpy(kv + at, scale, 4 * (size_t)n_expert), at += 4 * (size_t)n_expert;
        if ((s = xds_gguf_writer_kv_raw(w, kv, at)) != XDS_OK ||
            (s = xds_gguf_writer_kv_f32(w, "xds.upcycle.perturb", perturb)) != XDS_OK)
            goto done;
    }
    /* tensors */
    routers = calloc(n_layer, sizeof *routers);
    downs = calloc(n_layer, sizeof *downs);
    if (!routers || !downs) {
        s = xds_err_set(XDS_ERR_NOMEM, "upcycle: out of memory");
        goto done;
    }
    rng r = {seed * 2654435761u + 88172645463325252ULL};
    int n_ffn = 0;
    for (int64_t i = 0; i < xds_gguf_n_tensors(g); i++) {
        const xds_tensor *t = xds_gguf_tensor(g, i);
        int l;
        char kind[16], rest[8];
        if (sscanf(t->name, "blk.%d.ffn_%15[a-z].%7s", &l, kind, rest) == 3 && !strcmp(rest, "weight") &&
            (!strcmp(kind, "gate") || !strcmp(kind, "up") || !strcmp(kind, "down")) && l >= 0 && l < n_layer) {
            char nm[96];
            snprintf(nm, sizeof nm, "blk.%d.ffn_%s_exps.weight", l, kind);
            int64_t ne[3] = {t->ne[0], t->ne[1], n_expert};
            if (perturb > 0 && !strcmp(kind, "down")) {
                if ((s = check_down(t, scale, n_expert)) != XDS_OK) goto done;
                downs[l] = (perturbed_down){t->data, t->nbytes, t->type, scale};
                s = xds_gguf_writer_tensor(w, nm, t->type, 3, ne, NULL, t->nbytes * (size_t)n_expert, 1, fill_down,
                                           &downs[l]);
            } else {
                s = xds_gguf_writer_tensor(w, nm, t->type, 3, ne, t->data, t->nbytes, n_expert, NULL, NULL);
            }
            if (s != XDS_OK) goto done;
            n_ffn++;
            if (!strcmp(kind, "gate")) {
                float *rw = routers[l] = malloc(sizeof(float) * n_embd * n_expert);
                if (!rw) {
                    s = xds_err_set(XDS_ERR_NOMEM, "upcycle: out of memory");
                    goto done;
                }
                /* logits of O(1) on normed hidden states so routing really varies by token */
                for (size_t j = 0; j < (size_t)n_embd * n_expert; j++) rw[j] = (float)(gauss(&r) / sqrt(n_embd));
                snprintf(nm, sizeof nm, "blk.%d.ffn_gate_inp.weight", l);
                int64_t ne2[2] = {n_embd, n_expert};
                if ((s = xds_gguf_writer_tensor(w, nm, XDS_DTYPE_F32, 2, ne2, rw, sizeof(float) * n_embd * n_expert, 1,
                                                NULL, NULL)) != XDS_OK)
                    goto done;
            }
            continue;
        }
        if ((s = xds_gguf_writer_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data, t->nbytes, 1, NULL, NULL)) !=
            XDS_OK)
            goto done;
    }
    if (n_ffn != 3 * n_layer) {
        s = xds_err_set(XDS_ERR_FORMAT, "upcycle: %s: found %d FFN matrices, expected %d", in, n_ffn, 3 * n_layer);
        goto done;
    }
    s = xds_gguf_writer_write(w, out);
    goto done;
bad:
    s = xds_err_set(XDS_ERR_FORMAT, "upcycle: %s: malformed metadata", in);
done:
    if (routers)
        for (int l = 0; l < n_layer; l++) free(routers[l]);
    free(routers);
    free(downs);
    free(hdr);
    xds_gguf_writer_free(w);
    xds_gguf_close(g);
    return s;
}
