/* The container (FORMAT.md sections 1-9): open-time checks of the trailer, index and entries; per-tensor checks of
 * the record, stream descriptors, chunks and checksums; and the decode of a tensor through its chain (4.4), where
 * every stage gives a lazy stream that the output buffer finally pulls. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>

#include "internal.h"

#if !defined(DCF_NO_MMAP) && (defined(__unix__) || defined(__APPLE__))
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#define DCF_MMAP 1
#endif

static const uint8_t MAGIC[8] = {0x89, 'D', 'C', 'F', '\r', '\n', 0x1a, '\n'};
static const char END_MAGIC[8] = {'D', 'C', 'F', 'I', 'N', 'D', 'E', 'X'};

/* ---------------------------------------------------------------- errors, memory, crc */

static int vfail(dcf_error *err, int code, const char *prefix, const char *fmt, va_list ap) {
    if (err) {
        int n = prefix ? snprintf(err->message, sizeof err->message, "%s", prefix) : 0;
        if (n < 0) n = 0;
        if ((size_t)n < sizeof err->message) vsnprintf(err->message + n, sizeof err->message - (size_t)n, fmt, ap);
        for (char *c = err->message; *c; c++)
            if (*c == '\n' || *c == '\r') *c = ' ';
        err->code = code;
    }
    return code;
}

int dcf_fail(dcf_error *err, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfail(err, code, NULL, fmt, ap);
    va_end(ap);
    return code;
}

int dfail(dec *d, int code, const char *fmt, ...) {
    char prefix[96];
    snprintf(prefix, sizeof prefix, "tensor '%.60s': ", d->name);
    va_list ap;
    va_start(ap, fmt);
    vfail(d->err, code, prefix, fmt, ap);
    va_end(ap);
    return code;
}

static void *std_alloc(void *ctx, size_t n) { (void)ctx; return malloc(n ? n : 1); }
static void std_free(void *ctx, void *p) { (void)ctx; free(p); }

void *dec_alloc(dec *d, uint64_t size, int work, const char *stage) {
    if (work && d->work + size > d->f->lim.max_work) {
        dfail(d, DCF_E_LIMIT, "%s: needs %llu bytes of working memory, over the limit of %llu (dcf_limits.max_work)",
              stage, (unsigned long long)(d->work + size), (unsigned long long)d->f->lim.max_work);
        return NULL;
    }
    if (!work && size > d->bound) {
        dfail(d, DCF_E_LIMIT, "%s: %llu bytes over the tensor's decode bound of %llu", stage,
              (unsigned long long)size, (unsigned long long)d->bound);
        return NULL;
    }
    if (size > SIZE_MAX / 2) { dfail(d, DCF_E_NOMEM, "%s: %llu bytes do not fit in memory", stage, (unsigned long long)size); return NULL; }
    if (d->nallocs == d->cap_allocs) {
        size_t cap = d->cap_allocs ? 2 * d->cap_allocs : 16;
        void **a = d->f->al.alloc(d->f->al.ctx, cap * sizeof *a);
        if (!a) { dfail(d, DCF_E_NOMEM, "%s: out of memory", stage); return NULL; }
        if (d->nallocs) memcpy(a, d->allocs, d->nallocs * sizeof *a);
        if (d->allocs) d->f->al.free(d->f->al.ctx, d->allocs);
        d->allocs = a;
        d->cap_allocs = cap;
    }
    void *p = d->f->al.alloc(d->f->al.ctx, (size_t)size);
    if (!p) { dfail(d, DCF_E_NOMEM, "%s: out of memory for %llu bytes", stage, (unsigned long long)size); return NULL; }
    d->allocs[d->nallocs++] = p;
    if (work) d->work += size;
    return p;
}

static void dec_release(dec *d) {
    for (size_t i = 0; i < d->nallocs; i++) d->f->al.free(d->f->al.ctx, d->allocs[i]);
    if (d->allocs) d->f->al.free(d->f->al.ctx, d->allocs);
    mp_free(d->f, &d->rec);
}

static void crc_init(dcf_file *f) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        f->crc[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++) f->crc[t][i] = f->crc[0][f->crc[t - 1][i] & 0xff] ^ (f->crc[t - 1][i] >> 8);
}

/* CRC-32 (ISO-HDLC), slicing by 8; crc is the running value (0 to start). */
uint32_t dcf_crc32(const dcf_file *f, uint32_t crc, const uint8_t *p, size_t n) {
    const uint32_t(*T)[256] = f->crc;
    crc = ~crc;
    while (n >= 8) {
        uint32_t a = crc ^ rd_u32(p), b = rd_u32(p + 4);
        crc = T[7][a & 0xff] ^ T[6][(a >> 8) & 0xff] ^ T[5][(a >> 16) & 0xff] ^ T[4][a >> 24] ^ T[3][b & 0xff] ^
              T[2][(b >> 8) & 0xff] ^ T[1][(b >> 16) & 0xff] ^ T[0][b >> 24];
        p += 8;
        n -= 8;
    }
    while (n--) crc = T[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

/* ---------------------------------------------------------------- dtypes and shapes */

static const char *const DTYPE_NAMES[] = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16",
                                          "I8",  "U64", "U32", "U16", "U8",   "BOOL"};
static const uint8_t DTYPE_SIZES[] = {8, 4, 2, 2, 8, 4, 2, 1, 8, 4, 2, 1, 1};

const char *dcf_dtype_name(dcf_dtype d) { return (unsigned)d <= DCF_BOOL ? DTYPE_NAMES[d] : "?"; }
size_t dcf_dtype_size(dcf_dtype d) { return (unsigned)d <= DCF_BOOL ? DTYPE_SIZES[d] : 0; }
int dtype_is_float(dcf_dtype d) { return d <= DCF_BF16; }

int dtype_parse(const mp_tree *t, uint32_t node, dcf_dtype *out) {
    for (int i = 0; i <= DCF_BOOL; i++)
        if (mp_str_is(t, node, DTYPE_NAMES[i])) { *out = (dcf_dtype)i; return 1; }
    return 0;
}

int shape_check(const mp_tree *t, uint32_t node, uint64_t *n) {
    if (node == NONE || N(t, node)->t != MP_ARR || N(t, node)->n > DCF_MAX_DIMS) return 1;
    const uint64_t cap = (uint64_t)1 << 52;
    uint64_t p = 1;
    int zero = 0, big = 0;
    uint32_t k = mp_first(node);
    for (uint32_t i = 0; i < N(t, node)->n; i++, k = mp_after(t, k)) {
        if (!mp_is_int(t, k) || N(t, k)->v.i < 0) return 1;
        uint64_t v = (uint64_t)N(t, k)->v.i;
        if (v == 0) zero = 1;
        else if (v > cap / p) big = 1;
        else p *= v;
    }
    *n = zero ? 0 : big ? UINT64_MAX : p;
    return !zero && big ? 2 : 0;
}

/* ---------------------------------------------------------------- first repeated string */

static int str_cmp(const mp_tree *t, uint32_t a, uint32_t b) {
    const mp_node *x = N(t, a), *y = N(t, b);
    uint32_t m = x->n < y->n ? x->n : y->n;
    int c = memcmp(t->buf + x->off, t->buf + y->off, m);
    return c ? c : (x->n > y->n) - (x->n < y->n);
}

typedef struct { uint32_t node; uint32_t pos; } keyed;

static int keyed_cmp(const mp_tree *t, const keyed *a, const keyed *b) {
    int c = str_cmp(t, a->node, b->node);
    return c ? c : (a->pos > b->pos) - (a->pos < b->pos);
}

static void keyed_sift(keyed *k, size_t root, size_t n, const mp_tree *t) {
    for (;;) {
        size_t c = 2 * root + 1;
        if (c >= n) return;
        if (c + 1 < n && keyed_cmp(t, &k[c], &k[c + 1]) < 0) c++;
        if (keyed_cmp(t, &k[root], &k[c]) >= 0) return;
        keyed tmp = k[root]; k[root] = k[c]; k[c] = tmp;
        root = c;
    }
}

/* Of n str nodes (NONE entries skipped), the position of the first one equal to an earlier one, or -1 (-2: no
 * memory). O(n log n): sorted by (string, position), each run's second element is a repeat. */
static long first_repeat(dcf_file *f, const mp_tree *t, const uint32_t *nodes, size_t n) {
    keyed *k = f->al.alloc(f->al.ctx, (n ? n : 1) * sizeof *k);
    if (!k) return -2;
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (nodes[i] != NONE) { k[m].node = nodes[i]; k[m].pos = (uint32_t)i; m++; }
    for (size_t i = m / 2; i-- > 0;) keyed_sift(k, i, m, t);
    for (size_t end = m; end-- > 1;) {
        keyed tmp = k[0]; k[0] = k[end]; k[end] = tmp;
        keyed_sift(k, 0, end, t);
    }
    long best = -1;
    for (size_t i = 1; i < m; i++)
        if (!str_cmp(t, k[i].node, k[i - 1].node) && (best < 0 || k[i].pos < (uint32_t)best)) best = k[i].pos;
    f->al.free(f->al.ctx, k);
    return best;
}

/* ---------------------------------------------------------------- open */

static int read_at(dcf_file *f, uint64_t off, void *dst, size_t n) {
    if (f->mem) { memcpy(dst, f->mem + off, n); return 0; }
    return f->read(f->read_ctx, off, dst, n);
}

static int check_descriptor(const mp_tree *t, uint32_t d, uint32_t i, dcf_error *err) {
    if (N(t, d)->t != MP_MAP) return dcf_fail(err, DCF_E_FORMAT, "index: chain stage %u is not a map", i);
    uint32_t id = mp_get(t, d, "id"), v = mp_get(t, d, "version"), c = mp_get(t, d, "config"), p = mp_get(t, d, "package");
    if (id == NONE || N(t, id)->t != MP_STR) return dcf_fail(err, DCF_E_FORMAT, "index: chain stage %u: id is not a string", i);
    if (!mp_is_int(t, v) || N(t, v)->v.i < 1)
        return dcf_fail(err, DCF_E_FORMAT, "index: chain stage '%.40s': version is not an int >= 1", (const char *)t->buf + N(t, id)->off);
    if (c != NONE && N(t, c)->t != MP_MAP) return dcf_fail(err, DCF_E_FORMAT, "index: chain stage '%.40s': config is not a map", (const char *)t->buf + N(t, id)->off);
    if (p != NONE && N(t, p)->t != MP_STR) return dcf_fail(err, DCF_E_FORMAT, "index: chain stage '%.40s': package is not a string", (const char *)t->buf + N(t, id)->off);
    return DCF_OK;
}

static int parse_header_fields(dcf_file *f, dcf_error *err) {
    const mp_tree *t = &f->index;
    if (N(t, 0)->t != MP_MAP) return dcf_fail(err, DCF_E_FORMAT, "index is not a map");
    if (!mp_str_is(t, mp_get(t, 0, "format"), "dcf")) return dcf_fail(err, DCF_E_FORMAT, "index format is not \"dcf\"");
    uint32_t v = mp_get(t, 0, "version");
    if (v == NONE || N(t, v)->t != MP_ARR || N(t, v)->n != 2 || !mp_is_int(t, v + 1) || !mp_is_int(t, mp_after(t, v + 1)))
        return dcf_fail(err, DCF_E_FORMAT, "index version is not [major, minor]");
    if (N(t, v + 1)->v.i != 1)
        return dcf_fail(err, DCF_E_FORMAT, "unsupported format version %lld.%lld; this reader implements 1.2",
                        (long long)N(t, v + 1)->v.i, (long long)N(t, mp_after(t, v + 1))->v.i);
    uint32_t p = mp_get(t, 0, "producer");
    if (p != NONE && N(t, p)->t != MP_STR) return dcf_fail(err, DCF_E_FORMAT, "index producer is not a string");
    uint32_t md = mp_get(t, 0, "metadata");
    if (md != NONE) {
        if (N(t, md)->t != MP_MAP) return dcf_fail(err, DCF_E_FORMAT, "index metadata is not a map");
        uint32_t k = md + 1;
        for (uint32_t i = 0; i < N(t, md)->n; i++, k = mp_after(t, mp_after(t, k)))
            if (N(t, mp_after(t, k))->t != MP_STR)
                return dcf_fail(err, DCF_E_FORMAT, "index metadata '%.40s' is not a string", (const char *)t->buf + N(t, k)->off);
    }
    uint32_t c = mp_get(t, 0, "chains");
    if (c == NONE || N(t, c)->t != MP_ARR) return dcf_fail(err, DCF_E_FORMAT, "index chains is not an array");
    uint32_t ch = c + 1;
    for (uint32_t i = 0; i < N(t, c)->n; i++, ch = mp_after(t, ch)) {
        if (N(t, ch)->t != MP_ARR || N(t, ch)->n == 0) return dcf_fail(err, DCF_E_FORMAT, "index: chain %u is not a non-empty array", i);
        uint32_t s = ch + 1;
        for (uint32_t j = 0; j < N(t, ch)->n; j++, s = mp_after(t, s)) {
            int rc = check_descriptor(t, s, j, err);
            if (rc) return rc;
        }
    }
    f->chains = c;
    f->nchains = N(t, c)->n;
    return DCF_OK;
}

static int entry_int(const mp_tree *t, uint32_t k) { return mp_is_int(t, k) && N(t, k)->v.i >= 0; }

/* The tensor entries, in file order (FORMAT.md 8.2). */
static int parse_entries(dcf_file *f, uint64_t index_offset, dcf_error *err) {
    const mp_tree *t = &f->index;
    uint32_t ts = mp_get(t, 0, "tensors");
    if (ts == NONE || N(t, ts)->t != MP_ARR) return dcf_fail(err, DCF_E_FORMAT, "index tensors is not an array");
    size_t n = N(t, ts)->n;
    if (n > f->lim.max_tensors) return dcf_fail(err, DCF_E_LIMIT, "index lists %zu tensors (limit %u)", n, f->lim.max_tensors);
    f->entries = f->al.alloc(f->al.ctx, (n ? n : 1) * sizeof *f->entries);
    f->names = f->al.alloc(f->al.ctx, (n ? n : 1) * sizeof *f->names);
    uint32_t *names = f->al.alloc(f->al.ctx, (n ? n : 1) * sizeof *names);
    if (!f->entries || !f->names || !names) {
        if (names) f->al.free(f->al.ctx, names);
        return dcf_fail(err, DCF_E_NOMEM, "out of memory for %zu tensor entries", n);
    }
    memset(f->names, 0, (n ? n : 1) * sizeof *f->names);
    uint32_t e = ts + 1;
    for (size_t i = 0; i < n; i++, e = mp_after(t, e)) {
        names[i] = NONE;
        if (N(t, e)->t == MP_ARR && N(t, e)->n == 5 && N(t, e + 1)->t == MP_STR) names[i] = e + 1;
    }
    long dup = first_repeat(f, t, names, n);
    f->al.free(f->al.ctx, names);
    if (dup == -2) return dcf_fail(err, DCF_E_NOMEM, "out of memory checking tensor names");
    uint64_t pos = 8;
    e = ts + 1;
    for (size_t i = 0; i < n; i++, e = mp_after(t, e)) {
        uint32_t k[5];
        int ok = N(t, e)->t == MP_ARR && N(t, e)->n == 5;
        if (ok) {
            k[0] = e + 1;
            for (int j = 1; j < 5; j++) k[j] = mp_after(t, k[j - 1]);
            ok = N(t, k[0])->t == MP_STR && entry_int(t, k[1]) && entry_int(t, k[2]) && entry_int(t, k[3]) && entry_int(t, k[4]);
        }
        if (!ok) return dcf_fail(err, DCF_E_FORMAT, "index: malformed tensor entry %zu", i);
        const char *nm = (const char *)t->buf + N(t, k[0])->off;
        int nl = (int)(N(t, k[0])->n > 60 ? 60 : N(t, k[0])->n);
        uint64_t off = (uint64_t)N(t, k[1])->v.i, rl = (uint64_t)N(t, k[2])->v.i, tl = (uint64_t)N(t, k[3])->v.i;
        uint64_t crc = (uint64_t)N(t, k[4])->v.i;
        if (dup == (long)i) return dcf_fail(err, DCF_E_FORMAT, "index: duplicate tensor name '%.*s'", nl, nm);
        if (off != pos)
            return dcf_fail(err, DCF_E_FORMAT, "tensor '%.*s': record at %llu, expected %llu (records must tile the file)", nl, nm,
                            (unsigned long long)off, (unsigned long long)pos);
        if (rl > f->lim.max_metadata)
            return dcf_fail(err, DCF_E_LIMIT, "tensor '%.*s': record length %llu over the limit %u", nl, nm, (unsigned long long)rl, f->lim.max_metadata);
        if (rl < 1 || rl > tl)
            return dcf_fail(err, DCF_E_FORMAT, "tensor '%.*s': record length %llu vs total %llu", nl, nm, (unsigned long long)rl, (unsigned long long)tl);
        if (off + tl > f->size)
            return dcf_fail(err, DCF_E_LIMIT, "tensor '%.*s': %llu bytes at %llu run past the end of the file", nl, nm,
                            (unsigned long long)tl, (unsigned long long)off);
        if (off + tl > index_offset) return dcf_fail(err, DCF_E_FORMAT, "tensor '%.*s': extends beyond the index offset", nl, nm);
        if (crc > 0xffffffffu) return dcf_fail(err, DCF_E_FORMAT, "tensor '%.*s': record crc32 out of range", nl, nm);
        f->entries[i].name = k[0];
        f->entries[i].offset = off;
        f->entries[i].reclen = rl;
        f->entries[i].total = tl;
        f->entries[i].crc = (uint32_t)crc;
        pos = off + tl;
    }
    if (pos != index_offset)
        return dcf_fail(err, DCF_E_FORMAT, "records end at %llu but the index starts at %llu", (unsigned long long)pos, (unsigned long long)index_offset);
    for (size_t i = 0; i < n; i++) { /* NUL-terminated copies for callers */
        const mp_node *s = N(t, f->entries[i].name);
        if (!(f->names[i] = f->al.alloc(f->al.ctx, (size_t)s->n + 1))) return dcf_fail(err, DCF_E_NOMEM, "out of memory for tensor names");
        memcpy(f->names[i], t->buf + s->off, s->n);
        f->names[i][s->n] = 0;
    }
    f->ntensors = n;
    return DCF_OK;
}

static int open_common(dcf_file *f, dcf_error *err) {
    uint8_t head[8], tr[24];
    uint64_t n = f->size;
    if (n < 8 || read_at(f, 0, head, 8)) return n < 8 ? dcf_fail(err, DCF_E_FORMAT, "not a .dcf file (bad magic)")
                                                       : dcf_fail(err, DCF_E_IO, "cannot read the file's first bytes");
    if (memcmp(head, MAGIC, 8)) return dcf_fail(err, DCF_E_FORMAT, "not a .dcf file (bad magic)");
    if (n < 8 + 24) return dcf_fail(err, DCF_E_FORMAT, "not a .dcf file (too short for a trailer)");
    if (read_at(f, n - 24, tr, 24)) return dcf_fail(err, DCF_E_IO, "cannot read the trailer");
    if (memcmp(tr + 16, END_MAGIC, 8)) return dcf_fail(err, DCF_E_FORMAT, "not a .dcf file (bad trailer magic)");
    uint64_t io = (uint64_t)rd_u32(tr) | (uint64_t)rd_u32(tr + 4) << 32;
    uint32_t il = rd_u32(tr + 8), icrc = rd_u32(tr + 12);
    if (il > f->lim.max_metadata) return dcf_fail(err, DCF_E_LIMIT, "index length %u over the limit %u", il, f->lim.max_metadata);
    if (io > n || io + il + 24 > n)
        return dcf_fail(err, DCF_E_LIMIT, "index at %llu of %u bytes runs past the trailer (file is %llu bytes)", (unsigned long long)io, il, (unsigned long long)n);
    if (io < 8 || io + il + 24 != n)
        return dcf_fail(err, DCF_E_FORMAT, "index at %llu of %u bytes does not end at the trailer (file is %llu bytes)", (unsigned long long)io, il, (unsigned long long)n);
    const uint8_t *ib;
    if (f->mem) ib = f->mem + io;
    else {
        if (!(f->index_buf = f->al.alloc(f->al.ctx, il ? il : 1))) return dcf_fail(err, DCF_E_NOMEM, "out of memory for the %u-byte index", il);
        if (read_at(f, io, f->index_buf, il)) return dcf_fail(err, DCF_E_IO, "cannot read the index");
        ib = f->index_buf;
    }
    if (dcf_crc32(f, 0, ib, il) != icrc) return dcf_fail(err, DCF_E_INTEGRITY, "index checksum mismatch: the file is damaged");
    int rc = mp_parse(f, err, "index", ib, il, &f->index);
    if (rc || (rc = parse_header_fields(f, err))) return rc;
    return parse_entries(f, io, err);
}

static int make(dcf_file **out, const dcf_options *o, dcf_error *err) {
    const dcf_allocator *al = o && o->allocator ? o->allocator : NULL;
    dcf_allocator std = {std_alloc, std_free, NULL};
    if (!al) al = &std;
    dcf_file *f = al->alloc(al->ctx, sizeof *f);
    if (!f) return dcf_fail(err, DCF_E_NOMEM, "out of memory for a dcf handle");
    memset(f, 0, sizeof *f);
    f->al = *al;
    dcf_limits l = o ? o->limits : (dcf_limits){0, 0, 0, 0};
    f->lim.max_metadata = l.max_metadata ? l.max_metadata : 64u << 20;
    f->lim.max_output = l.max_output ? l.max_output : (uint64_t)1 << 40;
    f->lim.max_tensors = l.max_tensors ? l.max_tensors : 1u << 20;
    f->lim.max_work = l.max_work ? l.max_work : 2 * MIB;
    if (f->lim.max_metadata > UINT32_MAX - 1) f->lim.max_metadata = UINT32_MAX - 1;
    crc_init(f);
    *out = f;
    return DCF_OK;
}

static int finish_open(dcf_file **out, dcf_file *f, dcf_error *err) {
    if (err) { err->code = DCF_OK; err->message[0] = 0; }
    int rc = open_common(f, err);
    if (rc) { dcf_close(f); *out = NULL; }
    return rc;
}

int dcf_open_memory(dcf_file **out, const void *data, size_t size, const dcf_options *opts, dcf_error *err) {
    dcf_file *f;
    if (!out || (!data && size)) return dcf_fail(err, DCF_E_ARG, "dcf_open_memory: NULL argument");
    int rc = make(&f, opts, err);
    if (rc) return rc;
    static const uint8_t empty[1] = {0};
    f->mem = data ? data : empty;
    f->size = size;
    *out = f;
    return finish_open(out, f, err);
}

int dcf_open_reader(dcf_file **out, dcf_read_fn read, void *ctx, uint64_t size, const dcf_options *opts, dcf_error *err) {
    dcf_file *f;
    if (!out || !read) return dcf_fail(err, DCF_E_ARG, "dcf_open_reader: NULL argument");
    int rc = make(&f, opts, err);
    if (rc) return rc;
    f->read = read;
    f->read_ctx = ctx;
    f->size = size;
    *out = f;
    return finish_open(out, f, err);
}

static int stdio_read(void *ctx, uint64_t off, void *dst, size_t n) {
    FILE *fp = ctx;
    if (off > (uint64_t)LONG_MAX || fseek(fp, (long)off, SEEK_SET)) return 1;
    return fread(dst, 1, n, fp) != n;
}

#ifdef DCF_MMAP
/* Map a regular, non-empty file read-only (no heap for its bytes); NULL if it cannot be mapped. */
static void *map_file(const char *path, uint64_t *size) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return NULL;
    struct stat sb;
    void *m = MAP_FAILED;
    if (fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_size > 0 && (uint64_t)sb.st_size <= SIZE_MAX) {
        m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        *size = (uint64_t)sb.st_size;
    }
    close(fd);
    return m == MAP_FAILED ? NULL : m;
}
#endif

/* By mmap where the OS has it (then decoding is memory mode: no heap for the stored bytes), else through stdio. */
int dcf_open_path(dcf_file **out, const char *path, const dcf_options *opts, dcf_error *err) {
    if (!out || !path) return dcf_fail(err, DCF_E_ARG, "dcf_open_path: NULL argument");
    dcf_file *f;
    int rc;
#ifdef DCF_MMAP
    uint64_t msize = 0;
    void *m = map_file(path, &msize);
    if (m) {
        if ((rc = make(&f, opts, err))) { munmap(m, (size_t)msize); return rc; }
        f->mem = m;
        f->map = m;
        f->size = msize;
        *out = f;
        return finish_open(out, f, err);
    }
#endif
    FILE *fp = fopen(path, "rb");
    if (!fp) return dcf_fail(err, DCF_E_IO, "%s: cannot open the file", path);
    long size = -1;
    if (!fseek(fp, 0, SEEK_END)) size = ftell(fp);
    if (size < 0) { fclose(fp); return dcf_fail(err, DCF_E_IO, "%s: cannot find the file's size", path); }
    if ((rc = make(&f, opts, err))) { fclose(fp); return rc; }
    f->read = stdio_read;
    f->read_ctx = fp;
    f->fp = fp;
    f->size = (uint64_t)size;
    *out = f;
    return finish_open(out, f, err);
}

void dcf_close(dcf_file *f) {
    if (!f) return;
    dcf_allocator al = f->al;
    mp_free(f, &f->index);
    if (f->names)
        for (size_t i = 0; i < f->ntensors; i++)
            if (f->names[i]) al.free(al.ctx, f->names[i]);
    if (f->names) al.free(al.ctx, f->names);
    if (f->entries) al.free(al.ctx, f->entries);
    if (f->index_buf) al.free(al.ctx, f->index_buf);
    if (f->fp) fclose(f->fp);
#ifdef DCF_MMAP
    if (f->map) munmap(f->map, (size_t)f->size);
#endif
    al.free(al.ctx, f);
}

size_t dcf_count(const dcf_file *f) { return f ? f->ntensors : 0; }

const char *dcf_name(const dcf_file *f, size_t i, size_t *len) {
    if (!f || i >= f->ntensors) return NULL;
    if (len) *len = N(&f->index, f->entries[i].name)->n;
    return f->names[i];
}

int dcf_find(const dcf_file *f, const char *name, size_t len, size_t *index) {
    if (!f || !name) return DCF_E_ARG;
    for (size_t i = 0; i < f->ntensors; i++) {
        const mp_node *s = N(&f->index, f->entries[i].name);
        if (s->n == len && !memcmp(f->index.buf + s->off, name, len)) { if (index) *index = i; return DCF_OK; }
    }
    return DCF_E_ARG;
}

void dcf_free(dcf_file *f, void *p) { if (f && p) f->al.free(f->al.ctx, p); }

const char *dcf_code_name(int code) {
    static const char *const names[] = {"OK", "FormatError", "IntegrityError", "LimitError", "MissingStageError",
                                        "UnsupportedError", "IOError", "OutOfMemory", "ArgumentError"};
    return code >= 0 && code <= DCF_E_ARG ? names[code] : "UnknownError";
}

int dcf_features(void) {
    int m = 0;
#ifdef DCF_WITH_ZSTD
    m |= DCF_HAVE_ZSTD;
#endif
#ifdef DCF_WITH_ZLIB
    m |= DCF_HAVE_ZLIB;
#endif
    int simd = rans_simd();
    return m | (simd == 2 ? DCF_HAVE_AVX512 : simd == 1 ? DCF_HAVE_AVX2 : 0);
}

/* ---------------------------------------------------------------- one tensor: record and streams */

typedef struct {
    dcf_dtype dtype;
    uint32_t shape;   /* shape node in the record tree */
    uint64_t nelem, nbytes;
    uint32_t chain;   /* chain array node in the index */
    uint32_t steps, streams;
    uint64_t stored;  /* sum of stream sizes */
} record;

static void dec_init(dec *d, dcf_file *f, size_t i, dcf_error *err) {
    memset(d, 0, sizeof *d);
    d->f = f;
    d->err = err;
    d->name = f->names[i];
    d->bound = UINT64_MAX;
    if (err) { err->code = DCF_OK; err->message[0] = 0; }
}

/* Read the record (without a mapping only the record: chunks are read as the stages ask for them), check its CRC and
 * fields (FORMAT.md 8.2). */
static int load_record(dec *d, size_t i, record *r) {
    dcf_file *f = d->f;
    const dcf_entry *e = &f->entries[i];
    d->region_off = e->offset;
    if (f->mem) d->region = f->mem + e->offset;
    else {
        uint8_t *buf = dec_alloc(d, e->reclen, 0, "record");
        if (!buf) return d->err ? d->err->code : DCF_E_NOMEM;
        if (f->read(f->read_ctx, e->offset, buf, (size_t)e->reclen)) return dfail(d, DCF_E_IO, "cannot read the tensor's bytes");
        d->region = buf;
    }
    if (dcf_crc32(f, 0, d->region, (size_t)e->reclen) != e->crc) return dfail(d, DCF_E_INTEGRITY, "record checksum mismatch: the file is damaged");
    char what[96];
    snprintf(what, sizeof what, "tensor '%.60s': record", d->name);
    int rc = mp_parse(f, d->err, what, d->region, e->reclen, &d->rec);
    if (rc) return rc;
    const mp_tree *t = &d->rec;
    uint32_t nm = mp_get(t, 0, "name");
    if (N(t, 0)->t != MP_MAP || nm == NONE || N(t, nm)->t != MP_STR ||
        N(t, nm)->n != N(&f->index, e->name)->n || memcmp(t->buf + N(t, nm)->off, f->index.buf + N(&f->index, e->name)->off, N(t, nm)->n))
        return dfail(d, DCF_E_FORMAT, "record does not match the index");
    r->shape = mp_get(t, 0, "shape");
    if (r->shape == NONE || N(t, r->shape)->t != MP_ARR) return dfail(d, DCF_E_FORMAT, "bad shape");
    uint32_t k = mp_first(r->shape);
    for (uint32_t j = 0; j < N(t, r->shape)->n; j++, k = mp_after(t, k))
        if (!mp_is_int(t, k) || N(t, k)->v.i < 0) return dfail(d, DCF_E_FORMAT, "bad shape");
    if (N(t, r->shape)->n > DCF_MAX_DIMS) return dfail(d, DCF_E_LIMIT, "%u dimensions exceed the limit of %d", N(t, r->shape)->n, DCF_MAX_DIMS);
    if (!dtype_parse(t, mp_get(t, 0, "dtype"), &r->dtype)) return dfail(d, DCF_E_FORMAT, "bad or unknown dtype");
    uint64_t expand = f->size > ((uint64_t)1 << 43) ? UINT64_MAX : f->size << 20;
    uint64_t limit = expand > ((uint64_t)1 << 30) ? expand : (uint64_t)1 << 30; /* min(2^40, max(2^30, 2^20 x size)) */
    if (limit > ((uint64_t)1 << 40)) limit = (uint64_t)1 << 40;
    if (f->lim.max_output < limit) limit = f->lim.max_output;
    int big = shape_check(t, r->shape, &r->nelem);
    uint64_t size = DTYPE_SIZES[r->dtype];
    if (big || r->nelem > limit / size)
        return dfail(d, DCF_E_LIMIT, "declares %s bytes of data, over the limit of %llu for this file", big ? "over 2^52 x itemsize" : "too many",
                     (unsigned long long)limit);
    r->nbytes = r->nelem * size;
    uint32_t ch = mp_get(t, 0, "chain");
    if (!mp_is_int(t, ch) || N(t, ch)->v.i < 0 || (uint64_t)N(t, ch)->v.i >= f->nchains)
        return dfail(d, DCF_E_FORMAT, "refers to a chain the file does not have (it has %u)", f->nchains);
    const mp_tree *it = &f->index;
    r->chain = mp_first(f->chains);
    for (int64_t j = 0; j < N(t, ch)->v.i; j++) r->chain = mp_after(it, r->chain);
    r->steps = mp_get(t, 0, "steps");
    int ok = r->steps != NONE && N(t, r->steps)->t == MP_ARR && N(t, r->steps)->n == N(it, r->chain)->n;
    k = mp_first(r->steps);
    for (uint32_t j = 0; ok && j < N(t, r->steps)->n; j++, k = mp_after(t, k)) ok = N(t, k)->t == MP_ARR && N(t, k)->n > 0;
    if (!ok) return dfail(d, DCF_E_FORMAT, "step records do not match its chain (one non-empty list of applications per stage)");
    /* stream descriptors */
    r->streams = mp_get(t, 0, "streams");
    if (r->streams == NONE || N(t, r->streams)->t != MP_ARR) return dfail(d, DCF_E_FORMAT, "bad stream list");
    uint32_t ns = N(t, r->streams)->n;
    uint32_t *names = dec_alloc(d, (uint64_t)(ns ? ns : 1) * sizeof *names, 0, "record");
    if (!names) return d->err ? d->err->code : DCF_E_NOMEM;
    k = mp_first(r->streams);
    for (uint32_t j = 0; j < ns; j++, k = mp_after(t, k)) names[j] = N(t, k)->t == MP_ARR && N(t, k)->n == 4 && N(t, k + 1)->t == MP_STR ? k + 1 : NONE;
    long dup = first_repeat(f, t, names, ns);
    if (dup == -2) return dfail(d, DCF_E_NOMEM, "out of memory");
    uint64_t available = e->total - e->reclen;
    r->stored = 0;
    k = mp_first(r->streams);
    for (uint32_t j = 0; j < ns; j++, k = mp_after(t, k)) {
        uint32_t nmk = k + 1, sz = mp_after(t, nmk), crc = mp_after(t, sz), chunks = mp_after(t, crc);
        ok = N(t, k)->t == MP_ARR && N(t, k)->n == 4 && N(t, nmk)->t == MP_STR && mp_is_int(t, sz) && N(t, sz)->v.i >= 0 &&
             mp_is_int(t, crc) && N(t, crc)->v.i >= 0 && N(t, crc)->v.i <= 0xffffffffLL && N(t, chunks)->t == MP_ARR;
        uint32_t c = mp_first(chunks);
        for (uint32_t m = 0; ok && m < N(t, chunks)->n; m++, c = mp_after(t, c)) ok = mp_is_int(t, c) && N(t, c)->v.i > 0;
        if (!ok) return dfail(d, DCF_E_FORMAT, "malformed stream descriptor");
        const char *sn = (const char *)t->buf + N(t, nmk)->off;
        int sl = (int)(N(t, nmk)->n > 40 ? 40 : N(t, nmk)->n);
        if (dup == (long)j) return dfail(d, DCF_E_FORMAT, "stream '%.*s' is stored twice", sl, sn);
        uint64_t sum = 0, headers = 0;
        c = mp_first(chunks);
        for (uint32_t m = 0; m < N(t, chunks)->n; m++, c = mp_after(t, c)) {
            uint64_t len = (uint64_t)N(t, c)->v.i;
            if (len > ((uint64_t)1 << 30)) return dfail(d, DCF_E_LIMIT, "stream '%.*s' has a chunk over %llu bytes", sl, sn, 1ULL << 30);
            sum += len;
            headers += len < 256 ? 2 : len < 65536 ? 3 : 5;
        }
        if (sum != (uint64_t)N(t, sz)->v.i) return dfail(d, DCF_E_FORMAT, "stream '%.*s' chunks add up to %llu, not %lld", sl, sn, (unsigned long long)sum, (long long)N(t, sz)->v.i);
        if (sum + headers > available) available = UINT64_MAX; /* marks the mismatch; keeps counting safe */
        else if (available != UINT64_MAX) available -= sum + headers;
        r->stored += sum;
    }
    if (available != 0) return dfail(d, DCF_E_FORMAT, "stream sizes do not add up to the record's %llu bytes", (unsigned long long)e->total);
    return DCF_OK;
}

int dcf_info_at(dcf_file *f, size_t i, dcf_info *info, dcf_error *err) {
    if (!f || !info || i >= f->ntensors) return dcf_fail(err, DCF_E_ARG, "dcf_info_at: bad argument");
    dec d;
    record r;
    dec_init(&d, f, i, err);
    int rc = load_record(&d, i, &r);
    if (!rc) {
        memset(info, 0, sizeof *info);
        info->name = f->names[i];
        info->name_len = N(&f->index, f->entries[i].name)->n;
        info->dtype = r.dtype;
        info->dtype_name = DTYPE_NAMES[r.dtype];
        info->ndim = N(&d.rec, r.shape)->n;
        uint32_t k = mp_first(r.shape);
        for (uint32_t j = 0; j < info->ndim; j++, k = mp_after(&d.rec, k)) info->shape[j] = (uint64_t)N(&d.rec, k)->v.i;
        info->nelem = r.nelem;
        info->nbytes = r.nbytes;
    }
    dec_release(&d);
    return rc;
}

/* ---------------------------------------------------------------- stored streams */

/* n bytes at offset pos of the tensor's region: from memory, or read from the file. */
static int region_read(dec *d, uint64_t pos, uint8_t *dst, size_t n) {
    if (d->f->mem) { memcpy(dst, d->region + pos, n); return DCF_OK; }
    if (d->f->read(d->f->read_ctx, d->region_off + pos, dst, n)) return dfail(d, DCF_E_IO, "cannot read the tensor's bytes");
    return DCF_OK;
}

static uint64_t chunk_header_len(uint64_t len) { return len < 256 ? 2 : len < 65536 ? 3 : 5; }

static int stored_fill(dec *d, stream *s, uint8_t *dst) {
    const mp_tree *t = &d->rec;
    uint64_t pos = s->chunk_pos;
    uint32_t c = mp_first(s->chunks_node);
    for (uint32_t m = 0; m < N(t, s->chunks_node)->n; m++, c = mp_after(t, c)) {
        uint64_t len = (uint64_t)N(t, c)->v.i, h = chunk_header_len(len);
        int rc = region_read(d, pos + h, dst, (size_t)len);
        if (rc) return rc;
        dst += len;
        pos += h + len;
    }
    return DCF_OK;
}

/* Bytes [off, off + n) of a stored stream read from the file, chunk by chunk; the place of the last read is kept,
 * so reads that move forward walk the chunk list once. */
static int stored_read_at(dec *d, stream *s, uint64_t off, uint8_t *dst, size_t n) {
    const mp_tree *t = &d->rec;
    if (off < s->at_off || s->at_node == NONE) { s->at_node = mp_first(s->chunks_node); s->at_off = 0; s->at_pos = s->chunk_pos; }
    while (n) {
        uint64_t len = (uint64_t)N(t, s->at_node)->v.i, h = chunk_header_len(len);
        if (off >= s->at_off + len) { /* the read starts past this chunk: the next one (off + n <= size) */
            s->at_off += len;
            s->at_pos += h + len;
            s->at_node = mp_after(t, s->at_node);
            continue;
        }
        size_t m = (size_t)(s->at_off + len - off < n ? s->at_off + len - off : n);
        int rc = region_read(d, s->at_pos + h + (off - s->at_off), dst, m);
        if (rc) return rc;
        dst += m;
        off += m;
        n -= m;
    }
    return DCF_OK;
}

int bytes_read(dec *d, stream *s, uint64_t off, uint8_t *dst, size_t n) {
    if (!s->data && s->read_at) return s->read_at(d, s, off, dst, n);
    const uint8_t *p = NULL;
    int rc = bytes_view(d, s, &p);
    if (!rc) memcpy(dst, p + off, n);
    return rc;
}

int bytes_view(dec *d, stream *s, const uint8_t **out) {
    if (!s->data) {
        uint8_t *buf = dec_alloc(d, s->size, 0, s->stage);
        int rc;
        if (!buf) return d->err ? d->err->code : DCF_E_NOMEM;
        if ((rc = s->fill(d, s, buf))) return rc;
        s->data = buf;
    }
    *out = s->data;
    return DCF_OK;
}

#define CRC_WINDOW 65536 /* bytes read at a time to check a chunk's CRC-32 in read callback mode */

/* The CRC-32 of len chunk bytes at region offset pos: over memory, or read through a window of CRC_WINDOW bytes. */
static int chunk_crc(dec *d, uint64_t pos, uint64_t len, uint8_t **window, uint32_t *crc) {
    if (d->f->mem) { *crc = dcf_crc32(d->f, *crc, d->region + pos, (size_t)len); return DCF_OK; }
    if (!*window && !(*window = dec_alloc(d, CRC_WINDOW, 1, "stored"))) return d->err ? d->err->code : DCF_E_NOMEM;
    for (uint64_t done = 0; done < len;) {
        size_t m = (size_t)(len - done < CRC_WINDOW ? len - done : CRC_WINDOW);
        int rc = region_read(d, pos + done, *window, m);
        if (rc) return rc;
        *crc = dcf_crc32(d->f, *crc, *window, m);
        done += m;
    }
    return DCF_OK;
}

/* Chunk headers (shortest bin header, FORMAT.md 4.2) and stream CRCs; one bytes stream per descriptor. In read
 * callback mode the chunks are read through a small window for their CRCs, and again when a stage reads them. */
static int load_streams(dec *d, const record *r, stream *streams) {
    const mp_tree *t = &d->rec;
    uint8_t *window = NULL;
    uint64_t pos = d->rec.len;
    uint32_t k = mp_first(r->streams);
    for (uint32_t j = 0; j < N(t, r->streams)->n; j++, k = mp_after(t, k)) {
        stream *s = &streams[j];
        uint32_t nmk = k + 1, sz = mp_after(t, nmk), crcn = mp_after(t, sz), chunks = mp_after(t, crcn);
        memset(s, 0, sizeof *s);
        s->kind = K_BYTES;
        s->name = t->buf + N(t, nmk)->off;
        s->name_len = N(t, nmk)->n;
        s->stage = "stored";
        s->size = (uint64_t)N(t, sz)->v.i;
        s->chunks_node = chunks;
        s->chunk_pos = pos;
        s->fill = stored_fill;
        s->read_at = stored_read_at; /* from memory too: a multi-chunk stream is then read without joining it */
        s->at_node = NONE;
        uint32_t crc = 0;
        uint32_t c = mp_first(chunks);
        for (uint32_t m = 0; m < N(t, chunks)->n; m++, c = mp_after(t, c)) {
            uint64_t len = (uint64_t)N(t, c)->v.i, hl = chunk_header_len(len);
            uint8_t h[5];
            int rc = region_read(d, pos, h, (size_t)hl);
            if (rc) return rc;
            int ok = len < 256 ? h[0] == 0xc4 && h[1] == len
                     : len < 65536 ? h[0] == 0xc5 && ((uint64_t)h[1] << 8 | h[2]) == len
                                   : h[0] == 0xc6 && ((uint64_t)h[1] << 24 | (uint64_t)h[2] << 16 | (uint64_t)h[3] << 8 | h[4]) == len;
            if (!ok)
                return dfail(d, DCF_E_FORMAT, "chunk header of stream '%.*s' at byte %llu does not match its declared length %llu", (int)(s->name_len > 40 ? 40 : s->name_len),
                             (const char *)s->name, (unsigned long long)pos, (unsigned long long)len);
            if ((rc = chunk_crc(d, pos + hl, len, &window, &crc))) return rc;
            if (N(t, chunks)->n == 1 && d->f->mem) s->data = d->region + pos + hl;
            pos += hl + len;
        }
        if (N(t, chunks)->n == 0) s->data = d->region; /* empty: any valid pointer */
        if (crc != (uint32_t)N(t, crcn)->v.i)
            return dfail(d, DCF_E_INTEGRITY, "stream '%.*s' checksum mismatch: the file is damaged", (int)(s->name_len > 40 ? 40 : s->name_len), (const char *)s->name);
    }
    return DCF_OK;
}

/* ---------------------------------------------------------------- the chain */

typedef struct { stream **slot; size_t cap; } table;

static uint64_t name_hash(const uint8_t *p, uint32_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (uint32_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ULL;
    return h;
}

static stream **table_find(table *tb, const uint8_t *name, uint32_t n) {
    size_t i = (size_t)(name_hash(name, n) & (tb->cap - 1));
    while (tb->slot[i] && !(tb->slot[i]->name_len == n && !memcmp(tb->slot[i]->name, name, n))) i = (i + 1) & (tb->cap - 1);
    return &tb->slot[i];
}

/* Remove by re-inserting the rest of the probe run (linear probing). */
static void table_remove(table *tb, stream **at) {
    size_t i = (size_t)(at - tb->slot);
    *at = NULL;
    for (size_t j = (i + 1) & (tb->cap - 1); tb->slot[j]; j = (j + 1) & (tb->cap - 1)) {
        stream *s = tb->slot[j];
        tb->slot[j] = NULL;
        *table_find(tb, s->name, s->name_len) = s;
    }
}

static const char *const KIND[] = {"bytes", "symbols", "dense"};

static uint64_t stream_nbytes(const stream *s) {
    if (s->kind == K_BYTES) return s->size;
    if (s->kind == K_SYMBOLS) return s->count * (uint64_t)sym_width(s->alphabet);
    return s->count * DTYPE_SIZES[s->dtype];
}

/* Each stage in chain order, as dcframe does: known and not too new (MissingStageError), supported by this build,
 * then its stored config (FORMAT.md 4.3, 6). */
static int check_stages(dec *d, const record *r, const stage_def **defs) {
    const mp_tree *it = &d->f->index;
    uint32_t s = mp_first(r->chain);
    for (uint32_t i = 0; i < N(it, r->chain)->n; i++, s = mp_after(it, s)) {
        uint32_t id = mp_get(it, s, "id"), pk = mp_get(it, s, "package");
        const char *pkg = pk == NONE ? "?" : (const char *)it->buf + N(it, pk)->off;
        int pl = pk == NONE ? 1 : (int)(N(it, pk)->n > 40 ? 40 : N(it, pk)->n);
        const char *ids = (const char *)it->buf + N(it, id)->off;
        int idl = (int)(N(it, id)->n > 40 ? 40 : N(it, id)->n);
        defs[i] = stage_find(it, id);
        if (!defs[i]) return dfail(d, DCF_E_MISSING_STAGE, "stage '%.*s' is not available; it is provided by package '%.*s'", idl, ids, pl, pkg);
        int64_t v = N(it, mp_get(it, s, "version"))->v.i;
        if (v > defs[i]->version)
            return dfail(d, DCF_E_MISSING_STAGE, "stage '%.*s' version %lld is newer than this reader's %d (package '%.*s')", idl, ids, (long long)v, defs[i]->version, pl, pkg);
        if (defs[i]->unsupported) return dfail(d, DCF_E_UNSUPPORTED, "stage '%s' is not supported by this build: %s", defs[i]->id, defs[i]->unsupported);
        int rc = defs[i]->check_config(d, it, mp_get(it, s, "config"));
        if (rc) return rc;
    }
    return DCF_OK;
}

static int same_shape(const dec *d, const record *r, const stream *s) {
    const mp_tree *t = &d->rec;
    if (s->shape_node == NONE) return N(t, r->shape)->n == 1 && (uint64_t)N(t, r->shape + 1)->v.i == s->count;
    const mp_tree *u = s->shape_tree;
    if (N(u, s->shape_node)->n != N(t, r->shape)->n) return 0;
    uint32_t a = mp_first(r->shape), b = mp_first(s->shape_node);
    for (uint32_t j = 0; j < N(t, r->shape)->n; j++, a = mp_after(t, a), b = mp_after(u, b))
        if (N(t, a)->v.i != N(u, b)->v.i) return 0;
    return 1;
}

/* FORMAT.md 4.4: stages in reverse, applications in reverse; every stage gives a lazy stream. */
static int run_chain(dec *d, const record *r, const stage_def **defs, stream *stored, stream **result) {
    const mp_tree *t = &d->rec, *it = &d->f->index;
    uint32_t ns = N(t, r->streams)->n;
    uint64_t napps = 0;
    uint32_t st = mp_first(r->steps);
    for (uint32_t i = 0; i < N(t, r->steps)->n; i++, st = mp_after(t, st)) napps += N(t, st)->n;
    table tb = {NULL, 16};
    while (tb.cap < 2 * (ns + napps + 1)) tb.cap *= 2;
    if (!(tb.slot = dec_alloc(d, tb.cap * sizeof *tb.slot, 0, "chain"))) return d->err ? d->err->code : DCF_E_NOMEM;
    memset(tb.slot, 0, tb.cap * sizeof *tb.slot);
    stream *made = dec_alloc(d, (napps ? napps : 1) * sizeof *made, 0, "chain");
    if (!made) return d->err ? d->err->code : DCF_E_NOMEM;
    for (uint32_t j = 0; j < ns; j++) *table_find(&tb, stored[j].name, stored[j].name_len) = &stored[j];
    size_t live = ns, nmade = 0;
    d->made = made;
    /* stage descriptors, to walk backwards */
    uint32_t chain_len = N(it, r->chain)->n;
    uint32_t *desc = dec_alloc(d, (uint64_t)chain_len * 2 * sizeof *desc, 0, "chain");
    if (!desc) return d->err ? d->err->code : DCF_E_NOMEM;
    uint32_t s = mp_first(r->chain);
    st = mp_first(r->steps);
    for (uint32_t i = 0; i < chain_len; i++, s = mp_after(it, s), st = mp_after(t, st)) { desc[2 * i] = s; desc[2 * i + 1] = st; }
    for (uint32_t i = chain_len; i-- > 0;) {
        const stage_def *def = defs[i];
        uint32_t config = mp_get(it, desc[2 * i], "config"), apps = desc[2 * i + 1];
        uint32_t *app = dec_alloc(d, (uint64_t)N(t, apps)->n * sizeof *app, 0, "chain");
        if (!app) return d->err ? d->err->code : DCF_E_NOMEM;
        uint32_t a = mp_first(apps);
        for (uint32_t j = 0; j < N(t, apps)->n; j++, a = mp_after(t, a)) app[j] = a;
        for (uint32_t j = N(t, apps)->n; j-- > 0;) {
            a = app[j];
            uint32_t in = a + 1, outs = NONE, meta = NONE;
            int ok = N(t, a)->t == MP_ARR && N(t, a)->n == 3 && N(t, in)->t == MP_STR;
            if (ok) { outs = mp_after(t, in); meta = mp_after(t, outs); ok = N(t, outs)->t == MP_ARR && N(t, meta)->t == MP_MAP; }
            uint32_t o = ok ? mp_first(outs) : 0;
            for (uint32_t m = 0; ok && m < N(t, outs)->n; m++, o = mp_after(t, o)) ok = N(t, o)->t == MP_STR;
            if (!ok) return dfail(d, DCF_E_FORMAT, "malformed step record for stage '%s'", def->id);
            const uint8_t *iname = t->buf + N(t, in)->off;
            uint32_t ilen = N(t, in)->n;
            int in_is_out = 0;
            o = mp_first(outs);
            for (uint32_t m = 0; m < N(t, outs)->n; m++, o = mp_after(t, o))
                if (N(t, o)->n == ilen && !memcmp(t->buf + N(t, o)->off, iname, ilen)) in_is_out = 1;
            if (N(t, outs)->n != (uint32_t)def->nout || (*table_find(&tb, iname, ilen) && !in_is_out))
                return dfail(d, DCF_E_FORMAT, "stage '%s' record names %u streams, expected %d", def->id, N(t, outs)->n, def->nout);
            stream *ins[2] = {NULL, NULL};
            o = mp_first(outs);
            for (int m = 0; m < def->nout; m++, o = mp_after(t, o)) {
                stream **at = table_find(&tb, t->buf + N(t, o)->off, N(t, o)->n);
                if (!*at) return dfail(d, DCF_E_FORMAT, "stage '%s' needs stream '%.*s', which is missing", def->id, (int)(N(t, o)->n > 40 ? 40 : N(t, o)->n), (const char *)t->buf + N(t, o)->off);
                ins[m] = *at;
                table_remove(&tb, at);
                live--;
                if (ins[m]->kind != def->out_kind[m])
                    return dfail(d, DCF_E_FORMAT, "stage '%s' expects %s for '%.*s', got %s", def->id, KIND[def->out_kind[m]], (int)(ins[m]->name_len > 40 ? 40 : ins[m]->name_len),
                                 (const char *)ins[m]->name, KIND[ins[m]->kind]);
            }
            stream *out = &made[nmade++];
            d->nmade = nmade;
            memset(out, 0, sizeof *out);
            out->stage = def->id;
            out->shape_node = NONE;
            int rc = def->decode(d, it, config, meta, ins, out);
            if (rc) return rc;
            if (!((1 << out->kind) & def->takes)) return dfail(d, DCF_E_FORMAT, "stage '%s' decoded to %s", def->id, KIND[out->kind]);
            if (stream_nbytes(out) > d->bound)
                return dfail(d, DCF_E_LIMIT, "stage '%s' decodes %llu bytes, over the %llu-byte limit for this tensor", def->id, (unsigned long long)stream_nbytes(out), (unsigned long long)d->bound);
            out->name = iname;
            out->name_len = ilen;
            *table_find(&tb, iname, ilen) = out;
            live++;
        }
    }
    stream **root = table_find(&tb, (const uint8_t *)"data", 4);
    if (live != 1 || !*root || (*root)->kind != K_DENSE) return dfail(d, DCF_E_FORMAT, "decoding did not end in one dense tensor 'data' (%zu streams left)", live);
    if ((*root)->dtype != r->dtype || !same_shape(d, r, *root))
        return dfail(d, DCF_E_FORMAT, "decoded %s tensor differs from the record's %s %s", DTYPE_NAMES[(*root)->dtype], DTYPE_NAMES[r->dtype], "dtype or shape");
    *result = *root;
    return DCF_OK;
}

static int decode_into(dcf_file *f, size_t i, void **dst, size_t dst_size, uint64_t max_alloc, size_t *out_size, dcf_error *err) {
    if (!f || i >= f->ntensors) return dcf_fail(err, DCF_E_ARG, "dcf_decode: no tensor %zu", i);
    dec d;
    record r;
    dec_init(&d, f, i, err);
    int rc = load_record(&d, i, &r);
    stream *stored = NULL, *root = NULL;
    const stage_def **defs = NULL;
    if (!rc) {
        uint32_t ns = N(&d.rec, r.streams)->n;
        stored = dec_alloc(&d, (uint64_t)(ns ? ns : 1) * sizeof *stored, 0, "record");
        rc = stored ? load_streams(&d, &r, stored) : DCF_E_NOMEM;
    }
    if (!rc) {
        uint64_t m = r.nbytes > r.stored ? r.nbytes : r.stored;
        d.bound = m > (UINT64_MAX - MIB) / 8 ? UINT64_MAX : 8 * m + MIB;
        defs = dec_alloc(&d, (uint64_t)N(&f->index, r.chain)->n * sizeof *defs, 0, "chain");
        rc = defs ? check_stages(&d, &r, defs) : DCF_E_NOMEM;
    }
    if (!rc) rc = run_chain(&d, &r, defs, stored, &root);
    if (!rc) {
        if (out_size) *out_size = (size_t)r.nbytes;
        if (!*dst) {
            if (r.nbytes > max_alloc)
                rc = dfail(&d, DCF_E_LIMIT, "%llu bytes over the caller's limit of %llu", (unsigned long long)r.nbytes, (unsigned long long)max_alloc);
            else if (r.nbytes > SIZE_MAX / 2 || !(*dst = f->al.alloc(f->al.ctx, (size_t)r.nbytes)))
                rc = dfail(&d, DCF_E_NOMEM, "out of memory for %llu bytes", (unsigned long long)r.nbytes);
        } else if (dst_size < r.nbytes)
            rc = dfail(&d, DCF_E_ARG, "output buffer of %zu bytes for %llu bytes", dst_size, (unsigned long long)r.nbytes);
    }
    if (!rc) rc = root->pull(&d, root, *dst, (size_t)r.nelem);
    for (size_t j = 0; !rc && j < d.nmade; j++) /* streams never pulled (0 elements) still make their checks */
        if (d.made[j].kind != K_BYTES && d.made[j].count == 0 && d.made[j].pull) rc = d.made[j].pull(&d, &d.made[j], *dst, 0);
    dec_release(&d);
    return rc;
}

int dcf_decode(dcf_file *f, size_t i, void *dst, size_t dst_size, dcf_error *err) {
    if (!dst && dst_size) return dcf_fail(err, DCF_E_ARG, "dcf_decode: NULL buffer");
    uint8_t none[1];
    void *p = dst ? dst : none;
    return decode_into(f, i, &p, dst_size, 0, NULL, err);
}

int dcf_decode_alloc(dcf_file *f, size_t i, uint64_t max_bytes, void **out, size_t *out_size, dcf_error *err) {
    if (!out) return dcf_fail(err, DCF_E_ARG, "dcf_decode_alloc: NULL argument");
    *out = NULL;
    int rc = decode_into(f, i, out, 0, max_bytes, out_size, err);
    if (rc && *out) { f->al.free(f->al.ctx, *out); *out = NULL; }
    return rc;
}
