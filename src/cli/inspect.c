/*
 * inspect.c — `xds inspect MODEL`: what a model file holds, without running it.
 *
 * Prints the format, the architecture (GGUF general.architecture; HF
 * model_type / architectures), the hyper-parameters (GGUF: every metadata
 * key, arrays summarized as type[count], long strings shortened; HF: every
 * config.json key), then a table of tensors (name, type, shape GGUF-style
 * with ne[0] first, bytes) and totals (count, parameters, bytes, bytes by
 * type). A model that cannot be opened gives one line
 * "xds inspect: error: <message>" on stderr and exit status 1.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "format/weights.h"

#define MAX_SHOWN_STR 72 /* longer string values are cut, with their length */

static void usage(FILE *f) {
    fprintf(f, "usage: xds inspect [options] MODEL\n"
               "\n"
               "Print a model's format, architecture, hyper-parameters and tensors.\n"
               "MODEL is a GGUF file or a Hugging Face directory (config.json +\n"
               "model.safetensors or sharded *.safetensors with model.safetensors.index.json).\n"
               "\n"
               "options:\n"
               "  -m, --model MODEL  the model (instead of the positional argument)\n"
               "  --no-tensors       print the header and totals, not the tensor table\n"
               "  -h, --help         this help\n");
}

/* Print up to `max` bytes of s (len bytes, not NUL-terminated) with C escapes. */
static void print_escaped(const char *s, uint64_t len, size_t max) {
    size_t n = len < max ? (size_t)len : max;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n')
            fputs("\\n", stdout);
        else if (c == '\t')
            fputs("\\t", stdout);
        else if (c == '\r')
            fputs("\\r", stdout);
        else if (c == '\\')
            fputs("\\\\", stdout);
        else if (c < 0x20 || c == 0x7f)
            printf("\\x%02x", c);
        else
            putchar(c); /* UTF-8 passes through; a cut sequence is harmless on a terminal */
    }
    if (len > max) printf("... (%llu bytes)", (unsigned long long)len);
}

static void print_size(uint64_t bytes) {
    if (bytes >= (1ull << 30))
        printf("%.2f GiB", (double)bytes / (1ull << 30));
    else if (bytes >= (1ull << 20))
        printf("%.2f MiB", (double)bytes / (1ull << 20));
    else if (bytes >= 1024)
        printf("%.2f KiB", (double)bytes / 1024);
    else
        printf("%llu B", (unsigned long long)bytes);
}

/* ------------------------------------------------------------------------- */
/* GGUF */

static void print_gguf_value(const xds_gguf *g, int64_t i) {
    const char *key = xds_gguf_kv_key(g, i);
    xds_gguf_type t = xds_gguf_kv_type(g, i);
    uint64_t u;
    int64_t s;
    double d;
    int b;
    const char *str;
    uint64_t len;
    switch (t) {
    case XDS_GGUF_UINT8:
    case XDS_GGUF_UINT16:
    case XDS_GGUF_UINT32:
    case XDS_GGUF_UINT64:
        if (xds_gguf_get_u64(g, key, &u) == XDS_OK) printf("%llu", (unsigned long long)u);
        break;
    case XDS_GGUF_INT8:
    case XDS_GGUF_INT16:
    case XDS_GGUF_INT32:
    case XDS_GGUF_INT64:
        if (xds_gguf_get_i64(g, key, &s) == XDS_OK) printf("%lld", (long long)s);
        break;
    case XDS_GGUF_FLOAT32: /* shortest form that reads back as the same float */
        if (xds_gguf_get_f64(g, key, &d) == XDS_OK) {
            char tmp[32];
            for (int prec = 6; prec <= 9; prec++) {
                snprintf(tmp, sizeof tmp, "%.*g", prec, d);
                if ((float)strtod(tmp, NULL) == (float)d) break;
            }
            fputs(tmp, stdout);
        }
        break;
    case XDS_GGUF_FLOAT64:
        if (xds_gguf_get_f64(g, key, &d) == XDS_OK) printf("%.17g", d);
        break;
    case XDS_GGUF_BOOL:
        if (xds_gguf_get_bool(g, key, &b) == XDS_OK) fputs(b ? "true" : "false", stdout);
        break;
    case XDS_GGUF_STRING:
        if (xds_gguf_get_str(g, key, &str, &len) == XDS_OK) {
            putchar('"');
            print_escaped(str, len, MAX_SHOWN_STR);
            putchar('"');
        }
        break;
    case XDS_GGUF_ARRAY: {
        xds_gguf_type et;
        uint64_t n;
        if (xds_gguf_kv_arr(g, i, &et, &n) == XDS_OK)
            printf("%s[%llu]", xds_gguf_type_name(et), (unsigned long long)n);
        break;
    }
    }
}

static void print_gguf_header(const xds_gguf *g) {
    printf("format:       GGUF v%u (alignment %u, tensor data at offset %zu, file ",
           xds_gguf_version(g), xds_gguf_alignment(g), xds_gguf_data_offset(g));
    print_size(xds_gguf_file_size(g));
    printf(")\n");
    const char *arch;
    uint64_t len;
    printf("architecture: ");
    if (xds_gguf_get_str(g, "general.architecture", &arch, &len) == XDS_OK)
        print_escaped(arch, len, MAX_SHOWN_STR);
    else
        printf("(general.architecture not set)");
    printf("\n\nhyper-parameters (%lld metadata keys):\n", (long long)xds_gguf_n_kv(g));
    int w = 0;
    for (int64_t i = 0; i < xds_gguf_n_kv(g); i++) {
        int l = (int)strlen(xds_gguf_kv_key(g, i));
        if (l > w) w = l;
    }
    if (w > 48) w = 48;
    for (int64_t i = 0; i < xds_gguf_n_kv(g); i++) {
        xds_gguf_type t = xds_gguf_kv_type(g, i);
        printf("  %-*s %-8s ", w, xds_gguf_kv_key(g, i),
               t == XDS_GGUF_ARRAY ? "array" : xds_gguf_type_name(t));
        print_gguf_value(g, i);
        putchar('\n');
    }
}

/* ------------------------------------------------------------------------- */
/* Hugging Face directory */

static void print_json_value(const json_t *v) {
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(15));
    if (s) print_escaped(s, strlen(s), MAX_SHOWN_STR);
    free(s);
}

static void print_hf_header(const xds_hfdir *d) {
    const json_t *cfg = xds_hfdir_config(d);
    int nf = xds_hfdir_n_files(d);
    printf("format:       Hugging Face directory (config.json, %d safetensors file%s)\n", nf,
           nf == 1 ? "" : "s");
    printf("architecture: ");
    const json_t *mt = json_object_get(cfg, "model_type"),
                 *ar = json_object_get(cfg, "architectures");
    if (json_is_string(mt))
        print_escaped(json_string_value(mt), strlen(json_string_value(mt)), MAX_SHOWN_STR);
    else
        printf("(model_type not set)");
    if (ar) {
        printf(" (architectures ");
        print_json_value(ar);
        printf(")");
    }
    printf("\n\nhyper-parameters (%zu config.json keys):\n", json_object_size(cfg));
    int w = 0;
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)cfg, key, v) {
        int l = (int)strlen(key);
        if (l > w) w = l;
    }
    if (w > 48) w = 48;
    json_object_foreach((json_t *)cfg, key, v) {
        printf("  %-*s ", w, key);
        print_json_value(v);
        putchar('\n');
    }
    for (int i = 0; i < nf; i++) {
        const xds_safetensors *f = xds_hfdir_file(d, i);
        printf("%s  %s (", i ? "" : "\nfiles:\n", xds_safetensors_path(f));
        print_size(xds_safetensors_file_size(f));
        printf(", %lld tensors)\n", (long long)xds_safetensors_n_tensors(f));
    }
}

/* ------------------------------------------------------------------------- */
/* Tensors and totals */

static void print_tensors(const xds_weights *w, int table) {
    int64_t n = xds_weights_n_tensors(w);
    int64_t count[XDS_DTYPE_COUNT] = {0};
    uint64_t bytes[XDS_DTYPE_COUNT] = {0}, total = 0, params = 0;
    int nw = 4;
    for (int64_t i = 0; i < n; i++) {
        int l = (int)strlen(xds_weights_tensor(w, i)->name);
        if (l > nw) nw = l;
    }
    if (nw > 64) nw = 64;
    if (table) {
        printf("\ntensors (%lld):\n  %-*s %-5s %-24s %12s\n", (long long)n, nw, "name", "type",
               "shape (ne[0] first)", "bytes");
    }
    for (int64_t i = 0; i < n; i++) {
        const xds_tensor *t = xds_weights_tensor(w, i);
        count[t->type]++;
        bytes[t->type] += t->nbytes;
        total += t->nbytes;
        params += (uint64_t)xds_tensor_nelem(t);
        if (!table) continue;
        char shape[128];
        int o = 0;
        for (int d = 0; d < t->n_dims && o < (int)sizeof shape - 24; d++)
            o += snprintf(shape + o, sizeof shape - o, "%s%lld", d ? " x " : "",
                          (long long)t->ne[d]);
        printf("  %-*s %-5s %-24s %12zu\n", nw, t->name, xds_dtype_name(t->type), shape, t->nbytes);
    }
    printf("\ntotals: %lld tensors, %llu parameters, %llu bytes (", (long long)n,
           (unsigned long long)params, (unsigned long long)total);
    print_size(total);
    printf(")\n");
    for (int ty = 0; ty < XDS_DTYPE_COUNT; ty++) {
        if (!count[ty]) continue;
        printf("  %-5s %6lld tensors %14llu bytes (", xds_dtype_name((xds_dtype)ty),
               (long long)count[ty], (unsigned long long)bytes[ty]);
        print_size(bytes[ty]);
        printf(")\n");
    }
}

int cli_inspect(int argc, char **argv) {
    const char *model = NULL;
    int table = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--no-tensors")) {
            table = 0;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "xds inspect: error: %s needs a value (see 'xds inspect --help')\n",
                        a);
                return 2;
            }
            model = argv[++i];
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "xds inspect: error: unknown option '%s' (see 'xds inspect --help')\n",
                    a);
            return 2;
        } else if (model) {
            fprintf(stderr, "xds inspect: error: more than one model given ('%s' and '%s')\n",
                    model, a);
            return 2;
        } else {
            model = a;
        }
    }
    if (!model) {
        fprintf(stderr, "xds inspect: error: no model given (usage: xds inspect MODEL)\n");
        return 2;
    }
    xds_weights *w;
    if (xds_weights_open(model, &w) != XDS_OK) {
        fprintf(stderr, "xds inspect: error: %s\n", xds_err_msg());
        return 1;
    }
    printf("model:        %s\n", xds_weights_path(w));
    if (xds_weights_is_gguf(w))
        print_gguf_header(xds_weights_gguf(w));
    else
        print_hf_header(xds_weights_hfdir(w));
    print_tensors(w, table);
    xds_weights_close(w);
    return 0;
}
