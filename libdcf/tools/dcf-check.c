/* dcf-check: open every file named in LIST (one path a line) and decode every tensor, printing one line per
 * result, so that tests and the fuzzer run thousands of files in one process:
 *   <file#> open <ErrorName or OK>
 *   <file#> <tensor#> <ErrorName or OK> <bytes> <name>
 * With -o DIR each decoded tensor is also written to DIR/<file#>-<tensor#>.bin. Each file is read into a buffer of
 * exactly its size, so that a sanitizer build catches any read past it; with --path it is opened by path instead
 * (dcf_open_path, which maps it), or with --reader through dcf_open_reader over stdio (the index read at open,
 * each tensor's bytes when it is decoded). `dcf-check --features` prints
 * the optional codecs built in and the rANS decoder's vector path ("zstd zlib avx512"; DCF_SIMD lowers it). */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dcf.h"

static unsigned char *slurp(const char *path, size_t *n) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    size_t cap = 1 << 16, len = 0;
    unsigned char *b = malloc(cap);
    size_t got;
    while (b && (got = fread(b + len, 1, cap - len, fp)) > 0) {
        len += got;
        if (len == cap) {
            unsigned char *nb = realloc(b, cap *= 2);
            if (!nb) { free(b); b = NULL; }
            b = nb;
        }
    }
    fclose(fp);
    if (!b) return NULL;
    unsigned char *exact = malloc(len ? len : 1); /* exactly the file's size */
    if (exact) memcpy(exact, b, len);
    free(b);
    *n = len;
    return exact;
}

/* dcf_read_fn over a FILE*. */
static int file_read(void *ctx, uint64_t off, void *dst, size_t n) {
    FILE *fp = ctx;
    if (off > (uint64_t)LONG_MAX || fseek(fp, (long)off, SEEK_SET)) return 1;
    return fread(dst, 1, n, fp) != n;
}

/* Open `path` through dcf_open_reader; *fp stays open until the handle is closed. */
static int open_reader(const char *path, FILE **fp, dcf_file **f, dcf_error *err) {
    long size = -1;
    if ((*fp = fopen(path, "rb")) && !fseek(*fp, 0, SEEK_END)) size = ftell(*fp);
    if (size < 0) return DCF_E_IO;
    return dcf_open_reader(f, file_read, *fp, (uint64_t)size, NULL, err);
}

int main(int argc, char **argv) {
    const char *outdir = NULL, *listfile = NULL;
    int by_path = 0, by_reader = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-o") && i + 1 < argc) outdir = argv[++i];
        else if (!strcmp(argv[i], "--path")) by_path = 1;
        else if (!strcmp(argv[i], "--reader")) by_reader = 1;
        else if (!strcmp(argv[i], "--features")) { /* the optional codecs of this build, and the rANS vector path */
            int m = dcf_features();
            printf("%s%s%s\n", m & DCF_HAVE_ZSTD ? "zstd " : "", m & DCF_HAVE_ZLIB ? "zlib " : "",
                   m & DCF_HAVE_AVX512 ? "avx512" : m & DCF_HAVE_AVX2 ? "avx2" : "scalar");
            return 0;
        }
        else listfile = argv[i];
    }
    FILE *list = listfile ? fopen(listfile, "r") : NULL;
    if (!list) { fprintf(stderr, "usage: dcf-check [-o DIR] [--path | --reader] LIST | --features\n"); return 2; }
    char line[4096];
    long fileno = -1;
    while (fgets(line, sizeof line, list)) {
        line[strcspn(line, "\r\n")] = 0;
        if (!*line) continue;
        fileno++;
        size_t n = 0;
        unsigned char *data = by_path || by_reader ? NULL : slurp(line, &n);
        FILE *fp = NULL;
        if (!data && !by_path && !by_reader) { printf("%ld open IOError\n", fileno); continue; }
        dcf_file *f;
        dcf_error err;
        int rc = by_path ? dcf_open_path(&f, line, NULL, &err)
                 : by_reader ? open_reader(line, &fp, &f, &err) : dcf_open_memory(&f, data, n, NULL, &err);
        printf("%ld open %s\n", fileno, dcf_code_name(rc));
        if (!rc) {
            for (size_t i = 0; i < dcf_count(f); i++) {
                dcf_info info;
                void *buf = NULL;
                size_t size = 0;
                rc = dcf_info_at(f, i, &info, &err);
                if (!rc) rc = dcf_decode_alloc(f, i, (uint64_t)1 << 30, &buf, &size, &err);
                printf("%ld %zu %s %zu %s\n", fileno, i, dcf_code_name(rc), size, dcf_name(f, i, NULL));
                if (rc && getenv("DCF_CHECK_VERBOSE")) fprintf(stderr, "%s: %s\n", line, err.message);
                if (!rc && outdir) {
                    char path[4200];
                    snprintf(path, sizeof path, "%s/%ld-%zu.bin", outdir, fileno, i);
                    FILE *o = fopen(path, "wb");
                    if (!o || fwrite(buf, 1, size, o) != size) { fprintf(stderr, "dcf-check: cannot write %s\n", path); return 1; }
                    fclose(o);
                }
                dcf_free(f, buf);
            }
            dcf_close(f);
        } else if (getenv("DCF_CHECK_VERBOSE"))
            fprintf(stderr, "%s: %s\n", line, err.message);
        free(data);
        if (fp) fclose(fp);
    }
    fclose(list);
    return 0;
}
