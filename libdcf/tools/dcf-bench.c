/* dcf-bench: timings and peak heap of libdcf, for tests/bench/bench_libdcf.py (one JSON object per line).
 *   dcf-bench decode FILE REPEAT       per tensor: best decode time, output bytes, peak heap while decoding it
 *                                      (memory mode; by path, which maps the file; through a read callback) and
 *                                      its stored bytes (record and chunks), which the read callback mode holds
 *   dcf-bench symbols FILE REPEAT [RUNS]  per tensor whose chain ends in huffman or rans, RUNS lines (default 1):
 *                                      the best CPU time and the best wall time of REPEAT decodes of that symbol
 *                                      stream alone, then zstd's (level 19, compressed once) on the same symbols
 * Built as one translation unit with the library (it includes container.c) so it can reach one stage's stream. */
#include <time.h>
#include <zstd.h>

#include "../src/container.c"

typedef struct {
    size_t now, peak;
} counter;

static void *count_alloc(void *ctx, size_t n) {
    counter *c = ctx;
    size_t *p = malloc(n + 16);
    if (!p) return NULL;
    p[0] = n;
    c->now += n;
    if (c->now > c->peak) c->peak = c->now;
    return (char *)p + 16;
}

static void count_free(void *ctx, void *q) {
    counter *c = ctx;
    size_t *p = (size_t *)((char *)q - 16);
    c->now -= p[0];
    free(p);
}

static double clock_of(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double now(void) { return clock_of(CLOCK_THREAD_CPUTIME_ID); } /* CPU time: the bench machine may be shared */
static double wall(void) { return clock_of(CLOCK_MONOTONIC); }

/* The best CPU and the best wall time of one timed call, kept over the repeats. */
typedef struct {
    double cpu, wall, c0, w0;
} timer;

static void timer_start(timer *t) { t->w0 = wall(); t->c0 = now(); }

static void timer_stop(timer *t) {
    double c = now() - t->c0, w = wall() - t->w0;
    if (c < t->cpu) t->cpu = c;
    if (w < t->wall) t->wall = w;
}

static unsigned char *slurp(const char *path, size_t *n) {
    FILE *fp = fopen(path, "rb");
    if (!fp || fseek(fp, 0, SEEK_END)) exit(2);
    long len = ftell(fp);
    rewind(fp);
    unsigned char *b = malloc((size_t)len + 1);
    if (!b || fread(b, 1, (size_t)len, fp) != (size_t)len) exit(2);
    fclose(fp);
    *n = (size_t)len;
    return b;
}

static int file_read(void *ctx, uint64_t off, void *dst, size_t n) {
    FILE *fp = ctx;
    if (off > (uint64_t)LONG_MAX || fseek(fp, (long)off, SEEK_SET)) return 1;
    return fread(dst, 1, n, fp) != n;
}

/* Peak heap (beyond what was live before) of decoding tensor i of f into out once. */
static size_t peak_of(counter *c, dcf_file *f, size_t i, void *out, size_t size) {
    dcf_error err;
    size_t base = c->now;
    c->peak = c->now;
    if (dcf_decode(f, i, out, size, &err)) { fprintf(stderr, "%s\n", err.message); exit(1); }
    return c->peak - base;
}

static int decode_bench(const char *path, int repeat) {
    size_t n;
    unsigned char *data = slurp(path, &n);
    counter c = {0, 0};
    dcf_allocator al = {count_alloc, count_free, &c};
    dcf_options o;
    memset(&o, 0, sizeof o);
    o.allocator = &al;
    dcf_file *f, *fp, *fr;
    dcf_error err;
    FILE *rf = fopen(path, "rb");
    if (!rf) exit(2);
    if (dcf_open_memory(&f, data, n, &o, &err) || dcf_open_path(&fp, path, &o, &err) ||
        dcf_open_reader(&fr, file_read, rf, n, &o, &err)) { fprintf(stderr, "%s\n", err.message); return 1; }
    for (size_t i = 0; i < dcf_count(f); i++) {
        dcf_info info;
        if (dcf_info_at(f, i, &info, &err)) { fprintf(stderr, "%s\n", err.message); return 1; }
        void *out = malloc(info.nbytes ? info.nbytes : 1);
        double best = 1e30;
        size_t peak_mem = 0;
        for (int r = 0; r < repeat; r++) {
            size_t base = c.now;
            c.peak = c.now;
            double t0 = now();
            if (dcf_decode(f, i, out, info.nbytes, &err)) { fprintf(stderr, "%s\n", err.message); return 1; }
            double t = now() - t0;
            if (t < best) best = t;
            peak_mem = c.peak - base;
        }
        size_t peak_path = peak_of(&c, fp, i, out, info.nbytes), peak_reader = peak_of(&c, fr, i, out, info.nbytes);
        printf("{\"tensor\": \"%s\", \"bytes\": %llu, \"seconds\": %.9f, \"peak_heap_memory\": %zu, \"peak_heap_path\": %zu, "
               "\"peak_heap_reader\": %zu, \"region_bytes\": %llu}\n",
               info.name, (unsigned long long)info.nbytes, best, peak_mem, peak_path, peak_reader,
               (unsigned long long)f->entries[i].total);
        free(out);
    }
    dcf_close(f);
    dcf_close(fp);
    dcf_close(fr);
    fclose(rf);
    free(data);
    return 0;
}

/* Apply tensor i's chain up to its entropy coder and return that symbols stream (NULL if there is none). */
static stream *entropy_stream(dec *d, dcf_file *f, size_t i, const char **coder) {
    record r;
    dec_init(d, f, i, NULL);
    if (load_record(d, i, &r)) return NULL;
    uint32_t ns = N(&d->rec, r.streams)->n;
    stream *stored = dec_alloc(d, (uint64_t)(ns ? ns : 1) * sizeof *stored, 0, "bench");
    const stage_def **defs = dec_alloc(d, (uint64_t)N(&f->index, r.chain)->n * sizeof *defs, 0, "bench");
    stream *root;
    uint64_t m = r.nbytes > r.stored ? r.nbytes : r.stored;
    d->bound = 8 * m + MIB;
    if (!stored || !defs || load_streams(d, &r, stored) || check_stages(d, &r, defs) || run_chain(d, &r, defs, stored, &root)) return NULL;
    for (size_t j = 0; j < d->nmade; j++)
        if (!strcmp(d->made[j].stage, "huffman") || !strcmp(d->made[j].stage, "rans")) {
            *coder = d->made[j].stage;
            return &d->made[j];
        }
    return NULL;
}

/* The best CPU and wall time of `repeat` decodes of tensor i's entropy-coded symbols into sym (allocated on the
 * first call, of the stream's width); 1 if the tensor has no such stream. */
static int time_symbols(dcf_file *f, size_t i, int repeat, timer *tc, uint8_t **sym, uint64_t *count,
                        uint64_t *alphabet, const char **coder) {
    for (int r = 0; r < repeat; r++) {
        dec d;
        stream *s = entropy_stream(&d, f, i, coder);
        if (!s) { dec_release(&d); return 1; }
        *count = s->count;
        *alphabet = s->alphabet;
        if (!*sym) *sym = malloc(*count * (uint64_t)sym_width(*alphabet) + 4);
        timer_start(tc);
        if (s->pull(&d, s, *sym, (size_t)*count)) { fprintf(stderr, "%s\n", d.err ? d.err->message : "error"); exit(1); }
        timer_stop(tc);
        dec_release(&d);
    }
    return 0;
}

static int symbols_bench(const char *path, int repeat, int runs) {
    size_t n;
    unsigned char *data = slurp(path, &n);
    dcf_file *f;
    dcf_error err;
    if (dcf_open_memory(&f, data, n, NULL, &err)) { fprintf(stderr, "%s\n", err.message); return 1; }
    for (size_t i = 0; i < dcf_count(f); i++) {
        timer tc = {1e30, 1e30, 0, 0};
        uint8_t *sym = NULL; /* the symbols as the stream gives them: of its width (1 or 2 bytes) */
        uint64_t count = 0, alphabet = 0;
        const char *coder = NULL;
        if (time_symbols(f, i, 1, &tc, &sym, &count, &alphabet, &coder)) continue;
        size_t w = (size_t)sym_width(alphabet), raw = (size_t)count * w;
        unsigned char *bytes = malloc(raw + 1), *back = malloc(raw + 1);
        for (uint64_t k = 0; k < count; k++) { /* little-endian, as the spec's symbol arrays */
            uint32_t v = sym_get(sym, (int)w, (size_t)k);
            bytes[w * k] = (unsigned char)v;
            if (w == 2) bytes[2 * k + 1] = (unsigned char)(v >> 8);
        }
        size_t cap = ZSTD_compressBound(raw);
        unsigned char *z = malloc(cap);
        size_t zn = ZSTD_compress(z, cap, bytes, raw, 19); /* once: the runs time the same frame */
        ZSTD_DCtx *dz = ZSTD_createDCtx();
        for (int run = 0; run < runs; run++) { /* each run: the best of `repeat`, coder then zstd */
            timer tz = {1e30, 1e30, 0, 0};
            tc = tz;
            time_symbols(f, i, repeat, &tc, &sym, &count, &alphabet, &coder);
            for (int r = 0; r < repeat; r++) {
                timer_start(&tz);
                size_t got = ZSTD_decompressDCtx(dz, back, raw, z, zn);
                timer_stop(&tz);
                if (got != raw || memcmp(back, bytes, raw)) { fprintf(stderr, "zstd round trip failed\n"); return 1; }
            }
            printf("{\"tensor\": \"%s\", \"coder\": \"%s\", \"symbols\": %llu, \"alphabet\": %llu, \"seconds\": %.9f, "
                   "\"zstd_seconds\": %.9f, \"wall_seconds\": %.9f, \"zstd_wall_seconds\": %.9f, \"zstd_bytes\": %zu}\n",
                   dcf_name(f, i, NULL), coder, (unsigned long long)count, (unsigned long long)alphabet, tc.cpu, tz.cpu, tc.wall, tz.wall, zn);
        }
        ZSTD_freeDCtx(dz);
        free(sym);
        free(bytes);
        free(back);
        free(z);
    }
    dcf_close(f);
    free(data);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && !strcmp(argv[1], "decode")) return decode_bench(argv[2], atoi(argv[3]));
    if ((argc == 4 || argc == 5) && !strcmp(argv[1], "symbols"))
        return symbols_bench(argv[2], atoi(argv[3]), argc == 5 ? atoi(argv[4]) : 1);
    fprintf(stderr, "usage: dcf-bench decode FILE REPEAT | symbols FILE REPEAT [RUNS]\n");
    return 2;
}
