/* dcf-decode: decode a .dcf file into a .safetensors file, or list its tensors.
 *   dcf-decode FILE.dcf OUT.safetensors     every tensor, in file order (written to OUT.tmp, then renamed)
 *   dcf-decode --list FILE.dcf              name, dtype, shape and size of each tensor
 * Errors are one line on stderr; the exit status is 1 (2 for bad usage); no partial output file is left. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dcf.h"

static int fail(const char *path, const char *msg) {
    fprintf(stderr, "dcf-decode: %s: %s\n", path, msg);
    return 1;
}

/* A JSON string literal of s (n bytes; UTF-8 passes through, control characters are escaped). */
static void json_str(FILE *o, const char *s, size_t n) {
    fputc('"', o);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') fprintf(o, "\\%c", c);
        else if (c < 0x20) fprintf(o, "\\u%04x", c);
        else fputc(c, o);
    }
    fputc('"', o);
}

static int list(const char *path) {
    dcf_file *f;
    dcf_error err;
    if (dcf_open_path(&f, path, NULL, &err)) return fail(path, err.message); /* mapped where the OS has mmap */
    int bad = 0;
    for (size_t i = 0; i < dcf_count(f); i++) {
        dcf_info info;
        if (dcf_info_at(f, i, &info, &err)) {
            fprintf(stderr, "dcf-decode: %s: %s\n", path, err.message);
            bad = 1;
            continue;
        }
        printf("%s\t%s\t[", info.name, info.dtype_name);
        for (uint32_t j = 0; j < info.ndim; j++) printf(j ? ", %llu" : "%llu", (unsigned long long)info.shape[j]);
        printf("]\t%llu\n", (unsigned long long)info.nbytes);
    }
    dcf_close(f);
    return bad;
}

/* The safetensors header: {"name": {"dtype", "shape", "data_offsets"}, ...}, padded with spaces to 8 bytes. */
static int write_header(FILE *o, const dcf_info *infos, size_t n) {
    FILE *tmp = tmpfile();
    if (!tmp) return 1;
    uint64_t off = 0;
    fputc('{', tmp);
    for (size_t i = 0; i < n; i++) {
        if (i) fputc(',', tmp);
        json_str(tmp, infos[i].name, infos[i].name_len);
        fprintf(tmp, ":{\"dtype\":\"%s\",\"shape\":[", infos[i].dtype_name);
        for (uint32_t j = 0; j < infos[i].ndim; j++) fprintf(tmp, j ? ",%llu" : "%llu", (unsigned long long)infos[i].shape[j]);
        fprintf(tmp, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off, (unsigned long long)(off + infos[i].nbytes));
        off += infos[i].nbytes;
    }
    fputc('}', tmp);
    long len = ftell(tmp);
    if (len < 0) { fclose(tmp); return 1; }
    uint64_t padded = ((uint64_t)len + 7) / 8 * 8;
    unsigned char hl[8];
    for (int i = 0; i < 8; i++) hl[i] = (unsigned char)(padded >> (8 * i));
    int rc = fwrite(hl, 1, 8, o) != 8;
    rewind(tmp);
    char buf[4096];
    size_t got;
    while (!rc && (got = fread(buf, 1, sizeof buf, tmp)) > 0) rc = fwrite(buf, 1, got, o) != got;
    for (uint64_t i = (uint64_t)len; !rc && i < padded; i++) rc = fputc(' ', o) == EOF;
    fclose(tmp);
    return rc;
}

static int decode(const char *path, const char *out) {
    dcf_file *f;
    dcf_error err;
    if (dcf_open_path(&f, path, NULL, &err)) return fail(path, err.message); /* mapped where the OS has mmap */
    size_t n = dcf_count(f);
    dcf_info *infos = calloc(n ? n : 1, sizeof *infos);
    if (!infos) { dcf_close(f); return fail(path, "out of memory"); }
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) /* every record is checked before anything is written */
        if (dcf_info_at(f, i, &infos[i], &err)) rc = fail(path, err.message);
    size_t tl = strlen(out) + 16;
    char *tmp = malloc(tl);
    FILE *o = NULL;
    if (!rc && tmp) {
        snprintf(tmp, tl, "%s.tmp", out);
        if (!(o = fopen(tmp, "wb"))) rc = fail(tmp, "cannot create the output file");
    } else if (!rc) rc = fail(path, "out of memory");
    if (!rc && write_header(o, infos, n)) rc = fail(tmp, "cannot write the output file");
    for (size_t i = 0; i < n && !rc; i++) {
        void *buf;
        size_t size;
        if (dcf_decode_alloc(f, i, infos[i].nbytes, &buf, &size, &err)) { rc = fail(path, err.message); break; }
        if (fwrite(buf, 1, size, o) != size) rc = fail(tmp, "cannot write the output file");
        dcf_free(f, buf);
    }
    if (o && fclose(o) && !rc) rc = fail(tmp, "cannot write the output file");
    if (o && rc) remove(tmp);
    if (o && !rc && rename(tmp, out)) { remove(tmp); rc = fail(out, "cannot rename the finished output into place"); }
    free(tmp);
    free(infos);
    dcf_close(f);
    return rc;
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "--list")) return list(argv[2]);
    if (argc == 3 && argv[1][0] != '-') return decode(argv[1], argv[2]);
    fprintf(stderr, "usage: dcf-decode FILE.dcf OUT.safetensors\n       dcf-decode --list FILE.dcf\n");
    return 2;
}
