/*
 * weights.c — one handle over a GGUF file or a Hugging Face directory.
 *
 * Dispatch: a directory -> xds_hfdir; a file starting with "GGUF" -> xds_gguf;
 * a *.safetensors or config.json file -> its directory when config.json sits
 * next to it, else an error asking for the directory; any other file -> the
 * GGUF reader's "not a GGUF file" error. Exactly one of gguf / hf is set.
 */
#include "format/weights.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct xds_weights {
    xds_gguf *gguf; /* set for a GGUF file */
    xds_hfdir *hf;  /* set for a Hugging Face directory */
};

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

/* Directory part of a file path ("." when there is none). Caller frees. */
static char *dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return strdup(".");
    if (slash == path) return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

static xds_status open_hf(const char *dir, xds_weights *w) { return xds_hfdir_open(dir, &w->hf); }

xds_status xds_weights_open(const char *path, xds_weights **out) {
    struct stat sb;
    if (stat(path, &sb) != 0)
        return xds_err_set(errno == ENOENT ? XDS_ERR_NOT_FOUND : XDS_ERR_IO, "%s: %s", path,
                           strerror(errno));
    if (!S_ISDIR(sb.st_mode) && !S_ISREG(sb.st_mode)) /* a FIFO would block in open() */
        return xds_err_set(XDS_ERR_INVALID, "%s: not a regular file or a directory", path);
    xds_weights *w = calloc(1, sizeof *w);
    if (!w) return xds_err_set(XDS_ERR_NOMEM, "%s: out of memory", path);
    xds_status st;
    if (S_ISDIR(sb.st_mode)) {
        st = open_hf(path, w);
    } else {
        unsigned char magic[4] = {0};
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        ssize_t got = fd >= 0 ? read(fd, magic, 4) : -1;
        if (fd >= 0) close(fd);
        if (got == 4 && !memcmp(magic, "GGUF", 4)) {
            st = xds_gguf_open(path, &w->gguf);
        } else if (ends_with(path, ".safetensors") || ends_with(path, "config.json") ||
                   ends_with(path, ".safetensors.index.json")) {
            char *dir = dir_of(path), *cfg = NULL;
            if (dir && (cfg = malloc(strlen(dir) + 16))) {
                strcpy(cfg, dir);
                strcat(cfg, "/config.json");
            }
            if (!dir || !cfg)
                st = xds_err_set(XDS_ERR_NOMEM, "%s: out of memory", path);
            else if (access(cfg, F_OK) == 0)
                st = open_hf(dir, w);
            else
                st = xds_err_set(XDS_ERR_INVALID,
                                 "%s: a safetensors file alone is not a model: pass the Hugging "
                                 "Face model directory (with config.json) instead",
                                 path);
            free(dir);
            free(cfg);
        } else {
            st = xds_gguf_open(path, &w->gguf); /* reports what is wrong with the file */
        }
    }
    if (st != XDS_OK) {
        xds_weights_close(w);
        return st;
    }
    *out = w;
    return XDS_OK;
}

void xds_weights_close(xds_weights *w) {
    if (!w) return;
    xds_gguf_close(w->gguf);
    xds_hfdir_close(w->hf);
    free(w);
}

int xds_weights_is_gguf(const xds_weights *w) { return w->gguf != NULL; }
xds_gguf *xds_weights_gguf(const xds_weights *w) { return w->gguf; }
xds_hfdir *xds_weights_hfdir(const xds_weights *w) { return w->hf; }

const char *xds_weights_path(const xds_weights *w) {
    return w->gguf ? xds_gguf_path(w->gguf) : xds_hfdir_path(w->hf);
}

int64_t xds_weights_n_tensors(const xds_weights *w) {
    return w->gguf ? xds_gguf_n_tensors(w->gguf) : xds_hfdir_n_tensors(w->hf);
}

const xds_tensor *xds_weights_tensor(const xds_weights *w, int64_t i) {
    return w->gguf ? xds_gguf_tensor(w->gguf, i) : xds_hfdir_tensor(w->hf, i);
}

const xds_tensor *xds_weights_find(const xds_weights *w, const char *name) {
    return w->gguf ? xds_gguf_find_tensor(w->gguf, name) : xds_hfdir_find(w->hf, name);
}
