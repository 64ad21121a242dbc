/* Stages raw, prune, sparse, kmeans, uniform, bytegroup, rowscale, tcq and the generic codecs (spec/stages/ pages),
 * and the stage table.
 * Each decode checks its meta and inputs and returns a lazy stream; the checks that need the data run as it is
 * pulled. */
#include <math.h>

#include "internal.h"

#ifdef DCF_WITH_ZSTD
#define ZSTD_STATIC_LINKING_ONLY /* ZSTD_createDCtx_advanced: zstd's memory through the caller's allocator */
#include <zstd.h>
#include <zstd_errors.h>
#endif
#ifdef DCF_WITH_ZLIB
#include <zlib.h>
#endif

static int code_of(dec *d) { return d->err && d->err->code ? d->err->code : DCF_E_NOMEM; }

/* ---------------------------------------------------------------- stored configs (FORMAT.md 4.3) */

int check_params(dec *d, const char *stage, const mp_tree *ct, uint32_t config, const param *ps, int np) {
    if (config == NONE) return DCF_OK;
    uint32_t k = mp_first(config);
    for (uint32_t i = 0; i < N(ct, config)->n; i++, k = mp_after(ct, mp_after(ct, k))) {
        uint32_t v = mp_after(ct, k);
        const param *p = NULL;
        for (int j = 0; j < np && !p; j++)
            if (mp_str_is(ct, k, ps[j].key)) p = &ps[j];
        int kl = (int)(N(ct, k)->n > 40 ? 40 : N(ct, k)->n);
        const char *ks = (const char *)ct->buf + N(ct, k)->off;
        if (!p) return dfail(d, DCF_E_FORMAT, "%s: stored config has no parameter '%.*s'", stage, kl, ks);
        int ok;
        if (N(ct, v)->t == MP_NIL) ok = p->nullable;
        else if (p->type == P_STR) {
            ok = 0;
            for (const char *const *nm = p->names; *nm && !ok; nm++) ok = mp_str_is(ct, v, *nm);
        } else if (p->type == P_INT) ok = mp_is_int(ct, v) && N(ct, v)->v.i >= p->lo && N(ct, v)->v.i <= p->hi;
        else {
            double x = mp_is_num(ct, v) ? mp_num(ct, v) : NAN;
            ok = mp_is_num(ct, v) && x == x && (p->open_lo ? x > p->lo : x >= p->lo) && x <= p->hi && (!p->finite || isfinite(x));
        }
        if (!ok) return dfail(d, DCF_E_FORMAT, "%s: stored config value of '%.*s' is not allowed", stage, kl, ks);
    }
    return DCF_OK;
}

static int nonnil(const mp_tree *ct, uint32_t config, const char *key) {
    uint32_t v = mp_get(ct, config, key);
    return v != NONE && N(ct, v)->t != MP_NIL;
}

static const char *const WEIGHTINGS[] = {"none", "activation", "fisher", NULL};

static int raw_config(dec *d, const mp_tree *ct, uint32_t c) { return check_params(d, "raw", ct, c, NULL, 0); }

static int prune_config(dec *d, const mp_tree *ct, uint32_t c) {
    static const char *const scopes[] = {"tensor", "global", NULL}, *const crit[] = {"magnitude", "wanda", "sparsegpt", NULL};
    static const param ps[] = {{"sparsity", P_NUM, 0, 1, 1, 0, 0, NULL},
                               {"threshold", P_NUM, 0, INFINITY, 1, 0, 0, NULL},
                               {"scope", P_STR, 0, 0, 0, 0, 0, scopes},
                               {"criterion", P_STR, 0, 0, 0, 0, 0, crit}};
    int rc = check_params(d, "prune", ct, c, ps, 4);
    if (rc) return rc;
    if (nonnil(ct, c, "sparsity") == nonnil(ct, c, "threshold"))
        return dfail(d, DCF_E_FORMAT, "prune: stored config must give exactly one of sparsity and threshold");
    uint32_t cr = mp_get(ct, c, "criterion");
    if (cr != NONE && !mp_str_is(ct, cr, "magnitude") &&
        (nonnil(ct, c, "threshold") || (mp_get(ct, c, "scope") != NONE && !mp_str_is(ct, mp_get(ct, c, "scope"), "tensor"))))
        return dfail(d, DCF_E_FORMAT, "prune: a data-aware criterion takes a sparsity with scope 'tensor' only");
    return DCF_OK;
}

static int sparse_config(dec *d, const mp_tree *ct, uint32_t c) {
    static const param ps[] = {{"index_bits", P_INT, 1, 16, 0, 0, 0, NULL}};
    return check_params(d, "sparse", ct, c, ps, 1);
}

static int kmeans_config(dec *d, const mp_tree *ct, uint32_t c) {
    static const char *const inits[] = {"compander", "linear", "density", "random", "kmeans++", NULL};
    static const char *const methods[] = {"refine", "lloyd", "optimal", NULL};
    static const param ps[] = {{"bits", P_INT, 1, 16, 1, 0, 0, NULL},
                               {"clusters", P_INT, 1, 65536, 1, 0, 0, NULL},
                               {"init", P_STR, 0, 0, 0, 0, 0, inits},
                               {"max_iter", P_INT, 0, 1 << 20, 0, 0, 0, NULL},
                               {"tol", P_NUM, 0, INFINITY, 0, 1, 0, NULL},
                               {"seed", P_INT, 0, (double)MAX_SAFE_INT, 0, 0, 0, NULL},
                               {"method", P_STR, 0, 0, 0, 0, 0, methods},
                               {"weighting", P_STR, 0, 0, 0, 0, 0, WEIGHTINGS}};
    int rc = check_params(d, "kmeans", ct, c, ps, 8);
    if (!rc && nonnil(ct, c, "bits") && nonnil(ct, c, "clusters"))
        return dfail(d, DCF_E_FORMAT, "kmeans: stored config gives both bits and clusters");
    return rc;
}

static int uniform_config(dec *d, const mp_tree *ct, uint32_t c) {
    static const char *const methods[] = {"round", "gptq", "auto", NULL};
    static const param ps[] = {{"step", P_NUM, 0, INFINITY, 1, 1, 1, NULL},
                               {"rel_step", P_NUM, 0, INFINITY, 1, 1, 1, NULL},
                               {"dead_zone", P_NUM, 0, INFINITY, 0, 1, 0, NULL},
                               {"weighting", P_STR, 0, 0, 0, 0, 0, WEIGHTINGS},
                               {"method", P_STR, 0, 0, 0, 0, 0, methods}};
    int rc = check_params(d, "uniform", ct, c, ps, 5);
    if (rc) return rc;
    if (nonnil(ct, c, "step") == nonnil(ct, c, "rel_step"))
        return dfail(d, DCF_E_FORMAT, "uniform: stored config must give exactly one of step and rel_step");
    uint32_t m = mp_get(ct, c, "method"), w = mp_get(ct, c, "weighting");
    if (m != NONE && !mp_str_is(ct, m, "round") && w != NONE && !mp_str_is(ct, w, "none"))
        return dfail(d, DCF_E_FORMAT, "uniform: stored config method gptq/auto takes weighting 'none'");
    return DCF_OK;
}

#define LEVEL_CONFIG(fn, name, key, lo, hi)                                   \
    static int fn(dec *d, const mp_tree *ct, uint32_t c) {                    \
        static const param ps[] = {{key, P_INT, lo, hi, 0, 0, 0, NULL}};      \
        return check_params(d, name, ct, c, ps, 1);                           \
    }
LEVEL_CONFIG(zlib_config, "zlib", "level", 0, 9)
LEVEL_CONFIG(zstd_config, "zstd", "level", -7, 22)

/* ---------------------------------------------------------------- helpers */

static const char *sname(const stream *s, int *len) {
    *len = (int)(s->name_len > 40 ? 40 : s->name_len);
    return (const char *)s->name;
}

/* A dense stream's shape from a meta `shape`: 0, or 1 if malformed (also above 2^52 elements). */
static int set_shape(dec *d, stream *out, uint32_t shape) {
    uint64_t n;
    if (shape_check(&d->rec, shape, &n)) return 1;
    out->shape_tree = &d->rec;
    out->shape_node = shape;
    out->ndim = N(&d->rec, shape)->n;
    out->count = n;
    return 0;
}

/* ---------------------------------------------------------------- raw */

static int raw_dense_pull(dec *d, stream *s, void *dst, size_t n) {
    stream *in = s->in[0];
    size_t isz = dcf_dtype_size(s->dtype);
    if (!in->data && s->pos == 0 && n == s->count) { /* the whole tensor: decompress straight into dst */
        int rc = in->fill(d, in, dst);
        if (rc) return rc;
    } else if (n) {
        int rc = bytes_read(d, in, s->pos * isz, dst, n * isz);
        if (rc) return rc;
    }
    if (s->dtype == DCF_BOOL) {
        const uint8_t *b = dst;
        for (size_t i = 0; i < n; i++)
            if (b[i] > 1) return dfail(d, DCF_E_FORMAT, "raw: BOOL byte %u at %llu (only 0 and 1 are booleans)", b[i], (unsigned long long)(s->pos + i));
    }
    s->pos += n;
    return DCF_OK;
}

/* The stored little-endian symbols are read straight into dst (they have the stream's width), turned into native
 * order in place, then checked against the alphabet. */
static int raw_symbols_pull(dec *d, stream *s, void *dst, size_t n) {
    stream *in = s->in[0];
    int w = sym_width(s->alphabet);
    int rc = n ? bytes_read(d, in, s->pos * (uint64_t)w, dst, n * (size_t)w) : DCF_OK;
    if (rc) return rc;
    uint8_t *p = dst;
    uint32_t bad = 0;
    if (w == 2) {
        uint16_t *o = dst;
        for (size_t i = 0; i < n; i++) o[i] = (uint16_t)(p[2 * i] | p[2 * i + 1] << 8);
        for (size_t i = 0; i < n; i++) bad |= o[i] >= s->alphabet;
    } else if (w == 4) {
        uint32_t *o = dst;
        for (size_t i = 0; i < n; i++) o[i] = rd_u32(p + 4 * i);
        for (size_t i = 0; i < n; i++) bad |= o[i] >= s->alphabet;
    } else
        for (size_t i = 0; i < n; i++) bad |= p[i] >= s->alphabet;
    for (size_t i = 0; bad && i < n; i++)
        if (sym_get(dst, w, i) >= s->alphabet)
            return dfail(d, DCF_E_FORMAT, "raw: symbol %u at %llu not below alphabet %llu", sym_get(dst, w, i), (unsigned long long)(s->pos + i), (unsigned long long)s->alphabet);
    s->pos += n;
    return DCF_OK;
}

static int raw_decode(dec *d, const mp_tree *ct, uint32_t config, uint32_t meta, stream **ins, stream *out) {
    (void)ct; (void)config;
    const mp_tree *t = &d->rec;
    stream *in = ins[0];
    out->in[0] = in;
    uint32_t dt = mp_get(t, meta, "dtype");
    if (dt != NONE) {
        if (!dtype_parse(t, dt, &out->dtype)) return dfail(d, DCF_E_FORMAT, "raw: unknown dtype");
        if (set_shape(d, out, mp_get(t, meta, "shape"))) return dfail(d, DCF_E_FORMAT, "raw: bad shape in meta");
        if (in->size / dcf_dtype_size(out->dtype) != out->count || in->size % dcf_dtype_size(out->dtype))
            return dfail(d, DCF_E_FORMAT, "raw: %llu bytes for %llu elements of %s", (unsigned long long)in->size, (unsigned long long)out->count, dcf_dtype_name(out->dtype));
        out->kind = K_DENSE;
        out->pull = raw_dense_pull;
        return DCF_OK;
    }
    uint32_t a = mp_get(t, meta, "alphabet");
    if (!mp_is_int(t, a) || N(t, a)->v.i < 1 || N(t, a)->v.i > ((int64_t)1 << 32))
        return dfail(d, DCF_E_FORMAT, "raw: alphabet missing or outside 1..2^32");
    out->alphabet = (uint64_t)N(t, a)->v.i;
    int w = sym_width(out->alphabet);
    if (in->size % (uint64_t)w) return dfail(d, DCF_E_FORMAT, "raw: %llu bytes is not a multiple of width %d", (unsigned long long)in->size, w);
    out->kind = K_SYMBOLS;
    out->count = in->size / (uint64_t)w;
    out->pull = raw_symbols_pull;
    return DCF_OK;
}

/* ---------------------------------------------------------------- prune: the identity on float tensors */

static int prune_decode(dec *d, const mp_tree *ct, uint32_t config, uint32_t meta, stream **ins, stream *out) {
    (void)ct; (void)config; (void)meta;
    if (!dtype_is_float(ins[0]->dtype)) return dfail(d, DCF_E_FORMAT, "prune: input dtype %s is not a float dtype", dcf_dtype_name(ins[0]->dtype));
    *out = *ins[0];
    out->stage = "prune";
    return DCF_OK;
}

/* ---------------------------------------------------------------- kmeans and uniform: codebook lookup */

typedef struct {
    const uint8_t *book;
    uint32_t k;
    void *idx; /* BLOCK indices, of the input's symbol width */
    const char *stage;
} lookup_st;

/* m codebook items of isz bytes into o, for the indices ix of type T (checked below k first). */
#define LOOKUP(T)                                                                                                      \
    static int lookup_##T(dec *d, const lookup_st *st, const T *ix, size_t m, size_t isz, uint8_t *o, uint64_t pos) { \
        uint32_t bad = 0;                                                                                              \
        for (size_t i = 0; i < m; i++) bad |= ix[i] >= st->k;                                                          \
        for (size_t i = 0; bad && i < m; i++)                                                                          \
            if (ix[i] >= st->k)                                                                                        \
                return dfail(d, DCF_E_FORMAT, "%s: index %u at %llu not below %u", st->stage, (unsigned)ix[i], (unsigned long long)(pos + i), st->k); \
        if (isz == 4) for (size_t i = 0; i < m; i++) memcpy(o + 4 * i, st->book + 4 * (size_t)ix[i], 4);            \
        else if (isz == 2) for (size_t i = 0; i < m; i++) memcpy(o + 2 * i, st->book + 2 * (size_t)ix[i], 2);       \
        else for (size_t i = 0; i < m; i++) memcpy(o + 8 * i, st->book + 8 * (size_t)ix[i], 8);                      \
        return DCF_OK;                                                                                                 \
    }
LOOKUP(uint8_t)
LOOKUP(uint16_t)
LOOKUP(uint32_t)

static int lookup_pull(dec *d, stream *s, void *dst, size_t n) {
    lookup_st *st = s->st;
    stream *in = s->in[0];
    size_t isz = dcf_dtype_size(s->dtype);
    int w = sym_width(in->alphabet);
    uint8_t *o = dst;
    while (n) {
        size_t m = n < BLOCK ? n : BLOCK;
        int rc = in->pull(d, in, st->idx, m);
        if (!rc) rc = w == 1 ? lookup_uint8_t(d, st, st->idx, m, isz, o, s->pos)
                    : w == 2 ? lookup_uint16_t(d, st, st->idx, m, isz, o, s->pos)
                             : lookup_uint32_t(d, st, st->idx, m, isz, o, s->pos);
        if (rc) return rc;
        o += m * isz;
        s->pos += m;
        n -= m;
    }
    return DCF_OK;
}

static int lookup_decode(dec *d, const char *stage, uint32_t meta, stream **ins, stream *out) {
    const mp_tree *t = &d->rec;
    stream *in = ins[0];
    if (!dtype_parse(t, mp_get(t, meta, "dtype"), &out->dtype) || !dtype_is_float(out->dtype))
        return dfail(d, DCF_E_FORMAT, "%s: meta dtype is not F64, F32, F16 or BF16", stage);
    uint32_t shape = mp_get(t, meta, "shape");
    uint64_t n;
    int sc = shape_check(t, shape, &n);
    if (sc == 1) return dfail(d, DCF_E_FORMAT, "%s: shape missing, over 32 dimensions or not non-negative integers", stage);
    uint32_t cb = mp_get(t, meta, "codebook");
    size_t isz = dcf_dtype_size(out->dtype);
    if (cb == NONE || N(t, cb)->t != MP_BIN) return dfail(d, DCF_E_FORMAT, "%s: codebook missing or not bin", stage);
    if (N(t, cb)->n % isz) return dfail(d, DCF_E_FORMAT, "%s: codebook of %u bytes for itemsize %zu", stage, N(t, cb)->n, isz);
    uint32_t k = (uint32_t)(N(t, cb)->n / isz);
    if (k < 1 || k > 65536) return dfail(d, DCF_E_FORMAT, "%s: %u codebook entries (1..65536)", stage, k);
    if (sc == 2 || in->count != n)
        return dfail(d, DCF_E_FORMAT, "%s: %llu indices for %s elements", stage, (unsigned long long)in->count, sc == 2 ? "over 2^52" : "a different number of");
    if (n > d->bound / isz) return dfail(d, DCF_E_LIMIT, "%s: %llu bytes of output over the decode bound %llu", stage, (unsigned long long)n, (unsigned long long)d->bound);
    lookup_st *st = dec_alloc(d, sizeof *st + BLOCK * sizeof(uint32_t), 1, stage);
    if (!st) return code_of(d);
    st->book = t->buf + N(t, cb)->off;
    st->k = k;
    st->idx = st + 1;
    st->stage = stage;
    set_shape(d, out, shape);
    out->kind = K_DENSE;
    out->st = st;
    out->in[0] = in;
    out->pull = lookup_pull;
    return DCF_OK;
}

static int kmeans_decode(dec *d, const mp_tree *ct, uint32_t config, uint32_t meta, stream **ins, stream *out) {
    (void)ct; (void)config;
    return lookup_decode(d, "kmeans", meta, ins, out);
}

static int uniform_decode(dec *d, const mp_tree *ct, uint32_t config, uint32_t meta, stream **ins, stream *out) {
    (void)ct; (void)config;
    return lookup_decode(d, "uniform", meta, ins, out);
}

/* ---------------------------------------------------------------- bytegroup: byte planes back into elements */

typedef struct {
    stream *ma;              /* the mantissa stream: planes 1 .. w-1, n bytes each */
    const uint8_t *mantissa; /* its bytes when in memory (NULL when w = 1 or n = 0, or not in memory) */
    uint8_t *win;            /* a stored mantissa not in memory: BLOCK bytes of each plane, read per block */
    int fill;                /* the mantissa comes out of a codec and is not decompressed yet */
    uint8_t *sym;            /* BLOCK exponent symbols (alphabet 256: a byte each) */
} bytegroup_st;

/* The next b elements of s into o: b exponent symbols pulled and checked, the mantissa bytes from plane[0 .. w-2]
 * (byte i of each for element i). Element i's bytes are written after its mantissa bytes are read. */
static int bytegroup_block(dec *d, stream *s, uint8_t *o, const uint8_t *const *plane, size_t b) {
    bytegroup_st *st = s->st;
    size_t w = dcf_dtype_size(s->dtype);
    int rotate = dtype_is_float(s->dtype) && w > 1;
    uint32_t top = s->dtype == DCF_BOOL ? 1 : 255;
    int rc = s->in[0]->pull(d, s->in[0], st->sym, b);
    if (rc) return rc;
    for (size_t i = 0; i < b; i++)
        if (st->sym[i] > top)
            return dfail(d, DCF_E_FORMAT, "bytegroup: exponent symbol %u at %llu above %u", st->sym[i], (unsigned long long)(s->pos + i), top);
    for (size_t i = 0; i < b; i++) {
        uint64_t u = (uint64_t)st->sym[i] << (8 * (w - 1)); /* plane 0: the most significant byte */
        for (size_t p = 1; p < w; p++) u |= (uint64_t)plane[p - 1][i] << (8 * (w - 1 - p));
        if (rotate) u = (u >> 1) | ((u & 1) << (8 * w - 1)); /* the sign bit back on top */
        for (size_t q = 0; q < w; q++) o[i * w + q] = (uint8_t)(u >> (8 * q)); /* little-endian */
    }
    s->pos += b;
    return DCF_OK;
}

/* m elements into o, BLOCK at a time, from planes at plane[0 .. w-2] (advanced past them). */
static int bytegroup_run(dec *d, stream *s, uint8_t *o, const uint8_t **plane, uint64_t m) {
    size_t w = dcf_dtype_size(s->dtype);
    while (m) {
        size_t b = m < BLOCK ? (size_t)m : BLOCK;
        int rc = bytegroup_block(d, s, o, plane, b);
        if (rc) return rc;
        for (size_t p = 0; p + 1 < w; p++) plane[p] += b;
        o += b * w;
        m -= b;
    }
    return DCF_OK;
}

/* The whole tensor when its mantissa comes out of a codec: decompressed into the top (w - 1) n bytes of dst, then
 * made into elements in place, in rounds. With m elements left (k done), their planes fill dst's top (w - 1) m
 * bytes from T = k w + m and the m bytes below T are free, so the next j = m / (w - 1) elements can be written:
 * element i's bytes end at or below its own plane-1 byte T + i, read before. The planes left then move up to close
 * the gaps (plane w - 1 stays); the last few elements' bytes go through a stack buffer. No heap beyond the codec's. */
static int bytegroup_in_place(dec *d, stream *s, uint8_t *dst) {
    bytegroup_st *st = s->st;
    size_t w = dcf_dtype_size(s->dtype);
    uint64_t n = s->count, k = 0, m = n;
    uint8_t rest[4096];
    int rc = st->ma->fill(d, st->ma, dst + n);
    st->fill = 0;
    while (!rc && m) {
        uint64_t T = k * w + m, j = m / (w - 1);
        const uint8_t *plane[7];
        if ((w - 1) * m <= sizeof rest) { /* the rest at once, from a copy */
            memcpy(rest, dst + T, (size_t)((w - 1) * m));
            for (size_t p = 1; p < w; p++) plane[p - 1] = rest + (p - 1) * m;
            return bytegroup_run(d, s, dst + k * w, plane, m);
        }
        for (size_t p = 1; p < w; p++) plane[p - 1] = dst + T + (p - 1) * m;
        rc = bytegroup_run(d, s, dst + k * w, plane, j);
        for (size_t p = w - 1; !rc && p-- > 1;) /* plane p moves up by j (w - 1 - p), higher planes first */
            memmove(dst + T + (p - 1) * m + j + j * (w - 1 - p), dst + T + (p - 1) * m + j, (size_t)(m - j));
        k += j;
        m -= j;
    }
    return rc;
}

static int bytegroup_pull(dec *d, stream *s, void *dst, size_t n) {
    bytegroup_st *st = s->st;
    size_t w = dcf_dtype_size(s->dtype);
    uint8_t *o = dst;
    if (st->fill && n) {
        if (s->pos == 0 && n == s->count) return bytegroup_in_place(d, s, o);
        int rc = bytes_view(d, st->ma, &st->mantissa); /* a part of the tensor: the mantissa decompressed apart */
        if (rc) return rc;
        st->fill = 0;
    }
    while (n) {
        size_t b = n < BLOCK ? n : BLOCK;
        const uint8_t *plane[7];
        for (size_t p = 1; p < w; p++) {
            uint64_t off = (p - 1) * s->count + s->pos;
            if (st->mantissa) plane[p - 1] = st->mantissa + off;
            else {
                int rc = bytes_read(d, st->ma, off, st->win + (p - 1) * BLOCK, b);
                if (rc) return rc;
                plane[p - 1] = st->win + (p - 1) * BLOCK;
            }
        }
        int rc = bytegroup_block(d, s, o, plane, b);
        if (rc) return rc;
        o += b * w;
        n -= b;
    }
    return DCF_OK;
}

static int bytegroup_config(dec *d, const mp_tree *ct, uint32_t c) { return check_params(d, "bytegroup", ct, c, NULL, 0); }

static int bytegroup_decode(dec *d, const mp_tree *ct, uint32_t config, uint32_t meta, stream **ins, stream *out) {
    (void)ct; (void)config;
    const mp_tree *t = &d->rec;
    stream *ex = ins[0], *ma = ins[1];
    if (!dtype_parse(t, mp_get(t, meta, "dtype"), &out->dtype)) return dfail(d, DCF_E_FORMAT, "bytegroup: meta dtype missing or unknown");
    uint32_t shape = mp_get(t, meta, "shape");
    uint64_t n;
    int sc = shape_check(t, shape, &n);
    if (sc == 1) return dfail(d, DCF_E_FORMAT, "bytegroup: shape missing, over 32 dimensions or not non-negative integers");
    if (ex->kind != K_SYMBOLS || ex->alphabet != 256) return dfail(d, DCF_E_FORMAT, "bytegroup: exponent stream is not symbols of alphabet 256");
    if (sc == 2 || ex->count != n)
        return dfail(d, DCF_E_FORMAT, "bytegroup: %llu exponent symbols for %s elements", (unsigned long long)ex->count, sc == 2 ? "over 2^52" : "a different number of");
    size_t w = dcf_dtype_size(out->dtype);
    if (ma->kind != K_BYTES || ma->size / (w > 1 ? w - 1 : 1) != (w > 1 ? n : 0) || ma->size % (w > 1 ? w - 1 : 1))
        return dfail(d, DCF_E_FORMAT, "bytegroup: mantissa holds %llu bytes, expected %llu", (unsigned long long)ma->size, (unsigned long long)(n * (w - 1)));
    if (n > d->bound / w) return dfail(d, DCF_E_LIMIT, "bytegroup: %llu bytes of output over the decode bound %llu", (unsigned long long)n * w, (unsigned long long)d->bound);
    bytegroup_st *st = dec_alloc(d, sizeof *st + BLOCK, 1, "bytegroup");
    if (!st) return code_of(d);
    memset(st, 0, sizeof *st);
    st->sym = (uint8_t *)(st + 1);
    st->ma = ma;
    if (ma->size && ma->data) st->mantissa = ma->data;
    else if (ma->size && ma->read_at) { /* stored, not in memory: read a block of each plane at a time */
        if (!(st->win = dec_alloc(d, (uint64_t)(w - 1) * BLOCK, 1, "bytegroup"))) return code_of(d);
    } else st->fill = ma->size > 0; /* a codec's output: decompressed when pulled */
    set_shape(d, out, shape);
    out->kind = K_DENSE;
    out->st = st;
    out->in[0] = ex;
    out->pull = bytegroup_pull;
    return DCF_OK;
}

/* ---------------------------------------------------------------- rowscale: row r times 2^e_r, exactly */

#define ROWSCALE_ALPHABET 16 /* exponents 0..15 */

typedef struct {
    uint64_t rows;     /* shape[0] of values */
    uint64_t row_len;  /* elements per row (0 when there are none) */
    uint64_t alphabet;
    uint64_t ebase;    /* ebuf holds the exponents of rows ebase .. ebase + elen - 1 */
    size_t elen;
    uint8_t *ebuf;     /* BLOCK exponents (an alphabet of at most 16: a byte each) */
} rowscale_st;

/* The bits u of a binary float of `mbits` mantissa and `ebits` exponent bits (sign on top) times 2^e: IEEE 754
 * multiplication by a power of two, exact unless it overflows, then +/-infinity. Zeros, infinities and NaNs come
 * back unchanged (NaN payloads included); a subnormal is shifted until it is normal, then its exponent raised. */
static inline uint64_t scale_bits(uint64_t u, unsigned e, unsigned mbits, unsigned ebits) {
    const uint64_t emax = ((uint64_t)1 << ebits) - 1, mmask = ((uint64_t)1 << mbits) - 1;
    uint64_t sign = u & ((uint64_t)1 << (mbits + ebits)), E = u >> mbits & emax, m = u & mmask;
    if (E == emax) return u;
    if (E == 0) {
        if (m == 0) return u;
        while (e && m <= mmask) { m <<= 1; e--; }
        if (m <= mmask) return sign | m; /* still subnormal */
        E = 1;
        m &= mmask;
    }
    E += e;
    return E >= emax ? sign | emax << mbits : sign | E << mbits | m;
}

/* k little-endian elements of w bytes at p, scaled in place by 2^e (e > 0). */
#define SCALE_RUN(name, w, mbits, ebits)                                                        \
    static void name(uint8_t *p, size_t k, unsigned e) {                                        \
        for (size_t i = 0; i < k; i++, p += w) {                                                \
            uint64_t u = 0;                                                                     \
            for (int q = w - 1; q >= 0; q--) u = u << 8 | p[q];                                 \
            u = scale_bits(u, e, mbits, ebits);                                                 \
            for (int q = 0; q < w; q++) p[q] = (uint8_t)(u >> (8 * q));                         \
        }                                                                                       \
    }
SCALE_RUN(scale_f64, 8, 52, 11)
SCALE_RUN(scale_f32, 4, 23, 8)
SCALE_RUN(scale_f16, 2, 10, 5)
SCALE_RUN(scale_bf16, 2, 7, 8)

/* The exponents of the next BLOCK rows (or fewer), each checked against the alphabet. */
static int rowscale_load(dec *d, stream *s) {
    rowscale_st *st = s->st;
    stream *ex = s->in[1];
    st->ebase += st->elen;
    uint64_t left = st->rows - st->ebase;
    st->elen = left < BLOCK ? (size_t)left : BLOCK;
    int rc = st->elen ? ex->pull(d, ex, st->ebuf, st->elen) : DCF_OK;
    if (rc) return rc;
    for (size_t i = 0; i < st->elen; i++)
        if (st->ebuf[i] >= st->alphabet)
            return dfail(d, DCF_E_FORMAT, "rowscale: exponent %u of row %llu is outside the alphabet of %llu", st->ebuf[i], (unsigned long long)(st->ebase + i), (unsigned long long)st->alphabet);
    return DCF_OK;
}

/* The next n elements: the values pulled into dst, then each row's run of them scaled in place. Every exponent is
 * pulled (and checked) by the time the last element is, or at once when there are no elements. */
static int rowscale_pull(dec *d, stream *s, void *dst, size_t n) {
    rowscale_st *st = s->st;
    stream *vs = s->in[0];
    size_t isz = dcf_dtype_size(s->dtype);
    void (*run)(uint8_t *, size_t, unsigned) = s->dtype == DCF_F64 ? scale_f64 : s->dtype == DCF_F32 ? scale_f32 : s->dtype == DCF_F16 ? scale_f16 : scale_bf16;
    int rc = n ? vs->pull(d, vs, dst, n) : DCF_OK;
    uint64_t pos = s->pos, end = s->pos + n;
    uint8_t *o = dst;
    while (!rc && pos < end) {
        uint64_t row = pos / st->row_len;
        while (!rc && row >= st->ebase + st->elen) rc = rowscale_load(d, s);
        if (rc) break;
        unsigned e = st->ebuf[row - st->ebase];
        uint64_t stop = (row + 1) * st->row_len < end ? (row + 1) * st->row_len : end;
        if (e) run(o + (pos - s->pos) * isz, (size_t)(stop - pos), e);
        pos = stop;
    }
    if (rc) return rc;
    s->pos = end;
    while (s->pos == s->count && st->ebase + st->elen < st->rows)
        if ((rc = rowscale_load(d, s))) return rc;
    return DCF_OK;
}

static int rowscale_config(dec *d, const mp_tree *ct, uint32_t c) {
    static const char *const bys[] = {"unseen", "output", NULL};
    static const param ps[] = {{"shift", P_INT, 1, 15, 0, 0, 0, NULL}, {"by", P_STR, 0, 0, 0, 0, 0, bys}};
    return check_params(d, "rowscale", ct, c, ps, 2);
}

static int rowscale_decode(dec *d, const mp_tree *ct, uint32_t config, uint32_t meta, stream **ins, stream *out) {
    (void)ct; (void)config;
    const mp_tree *t = &d->rec;
    stream *vs = ins[0], *ex = ins[1];
    if (N(t, meta)->n) return dfail(d, DCF_E_FORMAT, "rowscale: its meta must be empty");
    uint32_t ndim = vs->shape_node == NONE ? 1 : vs->ndim;
    if (!dtype_is_float(vs->dtype) || ndim < 1)
        return dfail(d, DCF_E_FORMAT, "rowscale: values must be a float tensor of rank >= 1, got %s of rank %u", dcf_dtype_name(vs->dtype), ndim);
    uint64_t rows = vs->shape_node == NONE ? vs->count : (uint64_t)N(vs->shape_tree, mp_first(vs->shape_node))->v.i;
    if (ex->alphabet > ROWSCALE_ALPHABET)
        return dfail(d, DCF_E_FORMAT, "rowscale: exponents must be symbols of an alphabet of at most %d, got alphabet %llu", ROWSCALE_ALPHABET, (unsigned long long)ex->alphabet);
    if (ex->count != rows)
        return dfail(d, DCF_E_FORMAT, "rowscale: %llu exponents for a tensor of %llu rows", (unsigned long long)ex->count, (unsigned long long)rows);
    size_t isz = dcf_dtype_size(vs->dtype);
    if (vs->count > d->bound / isz)
        return dfail(d, DCF_E_LIMIT, "rowscale: %llu elements of output over the decode bound %llu", (unsigned long long)vs->count, (unsigned long long)d->bound);
    rowscale_st *st = dec_alloc(d, sizeof *st + BLOCK, 1, "rowscale");
    if (!st) return code_of(d);
    memset(st, 0, sizeof *st);
    st->rows = rows;
    st->row_len = rows ? vs->count / rows : 0;
    st->alphabet = ex->alphabet;
    st->ebuf = (uint8_t *)(st + 1);
    out->kind = K_DENSE;
    out->dtype = vs->dtype;
    out->count = vs->count;
    out->ndim = vs->ndim;
    out->shape_tree = vs->shape_tree;
    out->shape_node = vs->shape_node;
    out->st = st;
    out->in[0] = vs;
    out->in[1] = ex;
    out->pull = rowscale_pull;
    return DCF_OK;
}

/* ---------------------------------------------------------------- tcq: a 4-state trellis over two codebooks */

#define TCQ_MAX_RUN 4096
#define TCQ_MAX_LEVELS 65536

static const uint8_t TCQ_NEXT[4][2] = {{0, 2}, {2, 0}, {1, 3}, {3, 1}}; /* next state by [state][level & 1] */

typedef struct {
    uint64_t run;             /* R: elements per trellis run */
    const uint8_t *levels[2]; /* levels0/1: little-endian int32 (only bit 0 of each is needed) */
    const uint8_t *book[2];   /* codebook0/1: little-endian values of the dtype */
    uint32_t k[2];            /* levels per quantizer, U0 and U1 */
    int w[2];                 /* symbol width of q0 and q1 */
    void *sym[2];             /* BLOCK symbols of q0 and q1 */
    size_t si[2], sn[2];      /* next symbol and symbols held in sym[z] */
    uint64_t read[2];         /* symbols of qz pulled so far */
    uint8_t *whole;           /* the decoded tensor, when it is pulled in parts */
} tcq_st;

/* The next block of stream qz (at most BLOCK symbols), each checked below Uz; a read past its end fails. */
static int tcq_load(dec *d, tcq_st *st, stream *in, int z) {
    uint64_t left = in->count - st->read[z];
    if (!left)
        return dfail(d, DCF_E_FORMAT, "tcq: the trellis needs more symbols from q%d than the %llu it holds (the levels' parities do not match the streams' split)", z, (unsigned long long)in->count);
    size_t m = left < BLOCK ? (size_t)left : BLOCK;
    int rc = in->pull(d, in, st->sym[z], m);
    if (rc) return rc;
    uint32_t bad = 0;
    for (size_t i = 0; i < m; i++) bad |= sym_get(st->sym[z], st->w[z], i) >= st->k[z];
    for (size_t i = 0; bad && i < m; i++)
        if (sym_get(st->sym[z], st->w[z], i) >= st->k[z])
            return dfail(d, DCF_E_FORMAT, "tcq: q%d symbol %u at %llu not below its %u levels", z, sym_get(st->sym[z], st->w[z], i), (unsigned long long)(st->read[z] + i), st->k[z]);
    st->read[z] += m;
    st->si[z] = 0;
    st->sn[z] = m;
    return DCF_OK;
}

/* The whole tensor (n > 0 elements of ISZ bytes) into o, in decoding order: t = 0 .. R-1, then the runs having an
 * element t. Element e = i R + t is written at step t; until then its first byte holds run i's state (written when
 * element e - 1 is decoded; state 0 at t = 0), so the M runs' states need no memory of their own. */
#define TCQ_WALK(ISZ)                                                                                             \
    static int tcq_walk_##ISZ(dec *d, stream *s, uint8_t *o) {                                                    \
        tcq_st *st = s->st;                                                                                       \
        uint64_t n = s->count, R = st->run, M = (n + R - 1) / R, last = n - (M - 1) * R;                         \
        for (uint64_t t = 0; t < R; t++) {                                                                        \
            uint64_t runs = t < last ? M : M - 1;                                                                 \
            for (uint64_t i = 0; i < runs; i++) {                                                                 \
                uint8_t *p = o + (i * R + t) * ISZ;                                                               \
                unsigned sg = t ? p[0] : 0;                                                                       \
                int z = (int)(sg >> 1);                                                                           \
                if (st->si[z] == st->sn[z]) {                                                                     \
                    int rc = tcq_load(d, st, s->in[z], z);                                                        \
                    if (rc) return rc;                                                                            \
                }                                                                                                 \
                uint32_t j = sym_get(st->sym[z], st->w[z], st->si[z]++);                                          \
                memcpy(p, st->book[z] + (size_t)j * ISZ, ISZ);                                                    \
                if (t + 1 < (i == M - 1 ? last : R)) p[ISZ] = TCQ_NEXT[sg][st->levels[z][4 * (size_t)j] & 1];    \
            }                                                                                                     \
        }                                                                                                         \
        return DCF_OK;                                                                                            \
    }
TCQ_WALK(2)
TCQ_WALK(4)
TCQ_WALK(8)

static int tcq_walk(dec *d, stream *s, uint8_t *o) {
    if (!s->count) return DCF_OK;
    size_t isz = dcf_dtype_size(s->dtype);
    return isz == 2 ? tcq_walk_2(d, s, o) : isz == 4 ? tcq_walk_4(d, s, o) : tcq_walk_8(d, s, o);
}

/* Pulled whole (the usual case), the tensor is decoded straight into dst. Pulled in parts (its values feeding
 * sparse), it is decoded whole into a buffer of the output's size (against the decode bound) at the first pull,
 * then copied out: its C order is not its decoding order. */
static int tcq_pull(dec *d, stream *s, void *dst, size_t n) {
    tcq_st *st = s->st;
    size_t isz = dcf_dtype_size(s->dtype);
    int rc;
    if (!n) return DCF_OK;
    if (!st->whole && s->pos == 0 && n == s->count) {
        if ((rc = tcq_walk(d, s, dst))) return rc;
        s->pos = n;
        return DCF_OK;
    }
    if (!st->whole) {
        uint8_t *buf = dec_alloc(d, s->count * isz, 0, "tcq");
        if (!buf) return code_of(d);
        if ((rc = tcq_walk(d, s, buf))) return rc;
        st->whole = buf;
    }
    memcpy(dst, st->whole + s->pos * isz, n * isz);
    s->pos += n;
    return DCF_OK;
}

static int tcq_config(dec *d, const mp_tree *ct, uint32_t c) {
    static const char *const weightings[] = {"none", "activation", "fisher", "auto", NULL};
    static const param ps[] = {{"step", P_NUM, 0, INFINITY, 1, 1, 1, NULL},
                               {"rel_step", P_NUM, 0, INFINITY, 1, 1, 1, NULL},
                               {"rate_weight", P_NUM, 0, INFINITY, 0, 1, 0, NULL},
                               {"weighting", P_STR, 0, 0, 0, 0, 0, weightings}};
    int rc = check_params(d, "tcq", ct, c, ps, 4);
    if (rc) return rc;
    if (nonnil(ct, c, "step") == nonnil(ct, c, "rel_step"))
        return dfail(d, DCF_E_FORMAT, "tcq: stored config must give exactly one of step and rel_step");
    return DCF_OK;
}

/* Decoding step 1 of spec/stages/tcq.md, in its order: dtype, shape, run, then for each quantizer its levels (1 to
 * 65536 int32, strictly increasing) and codebook (as many values of the dtype), then len(q0) + len(q1) = n and the
 * decode bound. The symbols are checked below Uz as they are pulled, and the walk fails if a stream runs out. */
static int tcq_decode(dec *d, const mp_tree *ct, uint32_t config, uint32_t meta, stream **ins, stream *out) {
    (void)ct; (void)config;
    static const char *const lkey[2] = {"levels0", "levels1"}, *const ckey[2] = {"codebook0", "codebook1"};
    const mp_tree *t = &d->rec;
    if (!dtype_parse(t, mp_get(t, meta, "dtype"), &out->dtype) || !dtype_is_float(out->dtype))
        return dfail(d, DCF_E_FORMAT, "tcq: meta dtype is not F64, F32, F16 or BF16");
    uint32_t shape = mp_get(t, meta, "shape");
    uint64_t n;
    int sc = shape_check(t, shape, &n);
    if (sc == 1) return dfail(d, DCF_E_FORMAT, "tcq: shape missing, over 32 dimensions or not non-negative integers");
    uint32_t r = mp_get(t, meta, "run");
    if (!mp_is_int(t, r) || N(t, r)->v.i < 1 || N(t, r)->v.i > TCQ_MAX_RUN)
        return dfail(d, DCF_E_FORMAT, "tcq: run missing or outside 1..%d", TCQ_MAX_RUN);
    size_t isz = dcf_dtype_size(out->dtype);
    const uint8_t *levels[2], *book[2];
    uint32_t k[2];
    for (int z = 0; z < 2; z++) {
        uint32_t lv = mp_get(t, meta, lkey[z]), cb = mp_get(t, meta, ckey[z]);
        if (lv == NONE || N(t, lv)->t != MP_BIN || cb == NONE || N(t, cb)->t != MP_BIN)
            return dfail(d, DCF_E_FORMAT, "tcq: %s and %s missing or not bin", lkey[z], ckey[z]);
        uint32_t bytes = N(t, lv)->n;
        if (bytes % 4 || bytes / 4 < 1 || bytes / 4 > TCQ_MAX_LEVELS)
            return dfail(d, DCF_E_FORMAT, "tcq: %s of %u bytes is not 1 to %d int32 values", lkey[z], bytes, TCQ_MAX_LEVELS);
        k[z] = bytes / 4;
        levels[z] = t->buf + N(t, lv)->off;
        for (uint32_t j = 1; j < k[z]; j++) /* int32 order: the unsigned order with the sign bit flipped */
            if ((rd_u32(levels[z] + 4 * (size_t)j) ^ 0x80000000u) <= (rd_u32(levels[z] + 4 * (size_t)(j - 1)) ^ 0x80000000u))
                return dfail(d, DCF_E_FORMAT, "tcq: %s are not strictly increasing (at level %u)", lkey[z], j);
        if (N(t, cb)->n / isz != k[z] || N(t, cb)->n % isz)
            return dfail(d, DCF_E_FORMAT, "tcq: %s of %u bytes does not hold %u values of %s", ckey[z], N(t, cb)->n, k[z], dcf_dtype_name(out->dtype));
        book[z] = t->buf + N(t, cb)->off;
    }
    if (sc == 2 || ins[0]->count > n || ins[1]->count != n - ins[0]->count)
        return dfail(d, DCF_E_FORMAT, "tcq: the streams hold %llu + %llu symbols for %s elements", (unsigned long long)ins[0]->count, (unsigned long long)ins[1]->count, sc == 2 ? "over 2^52" : "a different number of");
    if (n > d->bound / isz)
        return dfail(d, DCF_E_LIMIT, "tcq: %llu elements of output over the decode bound %llu", (unsigned long long)n, (unsigned long long)d->bound);
    int w0 = sym_width(ins[0]->alphabet), w1 = sym_width(ins[1]->alphabet);
    tcq_st *st = dec_alloc(d, sizeof *st + BLOCK * (size_t)(w0 + w1), 1, "tcq");
    if (!st) return code_of(d);
    memset(st, 0, sizeof *st);
    st->run = (uint64_t)N(t, r)->v.i;
    for (int z = 0; z < 2; z++) {
        st->levels[z] = levels[z];
        st->book[z] = book[z];
        st->k[z] = k[z];
    }
    st->w[0] = w0;
    st->w[1] = w1;
    st->sym[0] = st + 1;
    st->sym[1] = (uint8_t *)(st + 1) + BLOCK * (size_t)w0;
    set_shape(d, out, shape);
    out->kind = K_DENSE;
    out->st = st;
    out->in[0] = ins[0];
    out->in[1] = ins[1];
    out->pull = tcq_pull;
    return DCF_OK;
}

/* ---------------------------------------------------------------- sparse: relative positions and values */

typedef struct {
    uint64_t m;        /* largest gap one symbol holds */
    int64_t q;         /* last position reached */
    uint64_t next;     /* next stored position, when pending */
    int pending, started;
    void *pbuf;        /* BLOCK position symbols, of their stream's width */
    size_t pi, pn;
    uint8_t *vbuf;     /* BLOCK values */
    size_t vi, vn;
} sparse_st;

static int sp_advance(dec *d, stream *s) {
    sparse_st *st = s->st;
    stream *ps = s->in[0];
    int filler = 0;
    for (;;) {
        if (st->pi == st->pn) {
            uint64_t left = ps->count - ps->pos;
            if (!left) {
                st->pending = 0;
                return filler ? dfail(d, DCF_E_FORMAT, "sparse: the positions stream ends with a filler") : DCF_OK;
            }
            size_t m = left < BLOCK ? (size_t)left : BLOCK;
            int rc = ps->pull(d, ps, st->pbuf, m);
            if (rc) return rc;
            st->pi = 0;
            st->pn = m;
        }
        uint32_t sym = sym_get(st->pbuf, sym_width(ps->alphabet), st->pi++);
        if (sym > st->m) return dfail(d, DCF_E_FORMAT, "sparse: position symbol %u above %llu", sym, (unsigned long long)st->m);
        st->q += sym ? sym : (int64_t)st->m;
        if ((uint64_t)st->q >= s->count)
            return dfail(d, DCF_E_FORMAT, "sparse: stored position %lld beyond %llu elements", (long long)st->q, (unsigned long long)s->count);
        if (sym) { st->next = (uint64_t)st->q; st->pending = 1; return DCF_OK; }
        filler = 1;
    }
}

static int sparse_pull(dec *d, stream *s, void *dst, size_t n) {
    sparse_st *st = s->st;
    stream *vs = s->in[1];
    size_t isz = dcf_dtype_size(s->dtype);
    int rc;
    if (!st->started) {
        st->started = 1;
        if ((rc = sp_advance(d, s))) return rc;
    }
    uint8_t *o = dst;
    if (n) memset(o, 0, n * isz);
    uint64_t end = s->pos + n;
    while (st->pending && st->next < end) {
        if (st->vi == st->vn) {
            uint64_t left = vs->count - vs->pos;
            if (!left) return dfail(d, DCF_E_FORMAT, "sparse: more stored positions than the %llu values", (unsigned long long)vs->count);
            size_t m = left < BLOCK ? (size_t)left : BLOCK;
            if ((rc = vs->pull(d, vs, st->vbuf, m))) return rc;
            st->vi = 0;
            st->vn = m;
        }
        memcpy(o + (st->next - s->pos) * isz, st->vbuf + st->vi * isz, isz);
        st->vi++;
        if ((rc = sp_advance(d, s))) return rc;
    }
    s->pos = end;
    if (end == s->count && (st->vi != st->vn || vs->pos != vs->count))
        return dfail(d, DCF_E_FORMAT, "sparse: %llu values but fewer stored positions", (unsigned long long)vs->count);
    return DCF_OK;
}

static int sparse_decode(dec *d, const mp_tree *ct, uint32_t config, uint32_t meta, stream **ins, stream *out) {
    uint32_t ib = mp_get(ct, config, "index_bits");
    int bits = ib == NONE ? 5 : (int)N(ct, ib)->v.i;
    uint64_t m = ((uint64_t)1 << bits) - 1, n;
    const mp_tree *t = &d->rec;
    stream *ps = ins[0], *vs = ins[1];
    uint32_t shape = mp_get(t, meta, "shape");
    if (shape_check(t, shape, &n) || n > ((uint64_t)1 << 40)) return dfail(d, DCF_E_FORMAT, "sparse: meta shape missing, malformed or over 2^40 elements");
    size_t isz = dcf_dtype_size(vs->dtype);
    if (n > d->bound / isz) return dfail(d, DCF_E_LIMIT, "sparse: %llu elements of output over the decode bound %llu", (unsigned long long)n, (unsigned long long)d->bound);
    int l;
    const char *nm = sname(ps, &l);
    if (ps->alphabet != m + 1) return dfail(d, DCF_E_FORMAT, "sparse: positions '%.*s' alphabet %llu, expected %llu", l, nm, (unsigned long long)ps->alphabet, (unsigned long long)(m + 1));
    if (vs->ndim != 1 && vs->shape_node != NONE) return dfail(d, DCF_E_FORMAT, "sparse: values stream has %u dimensions, expected 1", vs->ndim);
    sparse_st *st = dec_alloc(d, sizeof *st + BLOCK * sizeof(uint32_t) + BLOCK * isz, 1, "sparse");
    if (!st) return code_of(d);
    memset(st, 0, sizeof *st);
    st->m = m;
    st->q = -1;
    st->pbuf = st + 1;
    st->vbuf = (uint8_t *)(st + 1) + BLOCK * sizeof(uint32_t);
    out->kind = K_DENSE;
    out->dtype = vs->dtype;
    set_shape(d, out, shape);
    out->st = st;
    out->in[0] = ps;
    out->in[1] = vs;
    out->pull = sparse_pull;
    return DCF_OK;
}

/* ---------------------------------------------------------------- generic codecs */

#if defined(DCF_WITH_ZSTD) || defined(DCF_WITH_ZLIB)
#define SLICE 65536 /* a codec's input is given to it SLICE bytes at a time, in every mode */

/* A codec's input in slices of SLICE bytes: pointers into its bytes when they are in memory, else read into a
 * window (a stored stream read from the file). Every mode gives the codec the same slices, so it makes the same
 * calls and reports a damaged stream alike. */
typedef struct {
    stream *in;
    const uint8_t *view; /* the input's bytes, or NULL: read through win */
    uint8_t *win;
    uint64_t off;        /* bytes given so far */
} slicer;

static int slicer_init(dec *d, slicer *sl, stream *in, const char *stage) {
    memset(sl, 0, sizeof *sl);
    sl->in = in;
    if (!in->data && in->read_at) return (sl->win = dec_alloc(d, SLICE, 1, stage)) ? DCF_OK : code_of(d);
    return bytes_view(d, in, &sl->view);
}

/* The next slice (*n = 0 at the end). */
static int next_slice(dec *d, slicer *sl, const uint8_t **p, size_t *n) {
    uint64_t left = sl->in->size - sl->off;
    *n = (size_t)(left < SLICE ? left : SLICE);
    if (sl->view) *p = sl->view + sl->off;
    else {
        int rc = *n ? bytes_read(d, sl->in, sl->off, sl->win, *n) : DCF_OK;
        if (rc) return rc;
        *p = sl->win;
    }
    sl->off += *n;
    return DCF_OK;
}
#endif

static int codec_size(dec *d, const char *stage, uint32_t meta, stream *in, stream *out) {
    const mp_tree *t = &d->rec;
    uint32_t s = mp_get(t, meta, "size");
    if (!mp_is_int(t, s) || N(t, s)->v.i < 0) return dfail(d, DCF_E_FORMAT, "%s: missing or bad size in meta", stage);
    if ((uint64_t)N(t, s)->v.i > d->bound)
        return dfail(d, DCF_E_LIMIT, "%s: size %lld over the decode bound %llu", stage, (long long)N(t, s)->v.i, (unsigned long long)d->bound);
    out->kind = K_BYTES;
    out->size = (uint64_t)N(t, s)->v.i;
    out->in[0] = in;
    return DCF_OK;
}

#ifdef DCF_WITH_ZLIB
static voidpf z_alloc(voidpf ctx, uInt items, uInt size) {
    dcf_allocator *al = ctx;
    return (uint64_t)items * size > SIZE_MAX / 2 ? NULL : al->alloc(al->ctx, (size_t)items * size);
}
static void z_free(voidpf ctx, voidpf p) { dcf_allocator *al = ctx; al->free(al->ctx, p); }

/* Inflate exactly one zlib stream of exactly `size` bytes, with nothing after it (generic.md, Decoding). */
static int zlib_fill(dec *d, stream *s, uint8_t *dst) {
    slicer sl;
    int rc = slicer_init(d, &sl, s->in[0], "zlib");
    if (rc) return rc;
    z_stream z;
    memset(&z, 0, sizeof z);
    z.zalloc = z_alloc;
    z.zfree = z_free;
    z.opaque = &d->f->al;
    if (inflateInit(&z) != Z_OK) return dfail(d, DCF_E_NOMEM, "zlib: cannot start a decoder");
    uint64_t out_left = s->size;
    uint8_t extra[1];
    int over = 0, zr;
    for (;;) {
        if (!z.avail_in && sl.off < s->in[0]->size) {
            const uint8_t *src;
            size_t m;
            if ((rc = next_slice(d, &sl, &src, &m))) break;
            z.next_in = (Bytef *)src;
            z.avail_in = (uInt)m;
        }
        if (!z.avail_out) {
            if (out_left) {
                z.next_out = dst;
                z.avail_out = (uInt)(out_left > (1u << 30) ? 1u << 30 : out_left);
                dst += z.avail_out;
                out_left -= z.avail_out;
            } else if (!over) { over = 1; z.next_out = extra; z.avail_out = 1; }
            else { rc = dfail(d, DCF_E_FORMAT, "zlib: output longer than size %llu", (unsigned long long)s->size); break; }
        }
        zr = inflate(&z, Z_NO_FLUSH);
        if (zr == Z_STREAM_END) {
            if (over && !z.avail_out) rc = dfail(d, DCF_E_FORMAT, "zlib: output longer than size %llu", (unsigned long long)s->size);
            else if (out_left || (!over && z.avail_out)) rc = dfail(d, DCF_E_FORMAT, "zlib: output is shorter than size %llu", (unsigned long long)s->size);
            else if (z.avail_in || sl.off < s->in[0]->size)
                rc = dfail(d, DCF_E_FORMAT, "zlib: %llu bytes of trailing data", (unsigned long long)(z.avail_in + s->in[0]->size - sl.off));
            break;
        }
        if (zr == Z_BUF_ERROR && !z.avail_in && sl.off == s->in[0]->size) { rc = dfail(d, DCF_E_FORMAT, "zlib: stream is truncated"); break; }
        if (zr != Z_OK && zr != Z_BUF_ERROR) { rc = dfail(d, DCF_E_FORMAT, "zlib: corrupt stream (%s)", z.msg ? z.msg : "error"); break; }
        if (over && !z.avail_out) { rc = dfail(d, DCF_E_FORMAT, "zlib: output longer than size %llu", (unsigned long long)s->size); break; }
    }
    inflateEnd(&z);
    return rc;
}
#endif

static int zlib_decode(dec *d, const mp_tree *ct, uint32_t config, uint32_t meta, stream **ins, stream *out) {
    (void)ct; (void)config;
    int rc = codec_size(d, "zlib", meta, ins[0], out);
#ifdef DCF_WITH_ZLIB
    out->fill = zlib_fill;
#endif
    return rc;
}

#ifdef DCF_WITH_ZSTD
static void *zs_alloc(void *ctx, size_t n) { dcf_allocator *al = ctx; return al->alloc(al->ctx, n); }
static void zs_free(void *ctx, void *p) { dcf_allocator *al = ctx; if (p) al->free(al->ctx, p); }

/* Decompress the one frame into dst (exactly `size` bytes), its input fed a slice at a time. The output buffer is
 * stable (ZSTD_d_stableOutBuffer): zstd keeps its window in dst and allocates no window of its own, only a
 * block-sized input buffer, so a frame of any window takes the same small heap. */
static int zstd_fill(dec *d, stream *s, uint8_t *dst) {
    slicer sl;
    int rc = slicer_init(d, &sl, s->in[0], "zstd");
    if (rc) return rc;
    ZSTD_customMem mem = {zs_alloc, zs_free, &d->f->al};
    ZSTD_DCtx *z = ZSTD_createDCtx_advanced(mem);
    if (!z) return dfail(d, DCF_E_NOMEM, "zstd: cannot start a decoder");
    if (ZSTD_isError(ZSTD_DCtx_setParameter(z, ZSTD_d_stableOutBuffer, 1)) ||
        ZSTD_isError(ZSTD_DCtx_setParameter(z, ZSTD_d_windowLogMax, ZSTD_WINDOWLOG_MAX))) {
        ZSTD_freeDCtx(z);
        return dfail(d, DCF_E_NOMEM, "zstd: cannot set up a decoder");
    }
    ZSTD_outBuffer out = {dst, (size_t)s->size, 0};
    ZSTD_inBuffer in = {NULL, 0, 0};
    for (;;) {
        if (in.pos == in.size && sl.off < s->in[0]->size) {
            const uint8_t *p;
            size_t m;
            if ((rc = next_slice(d, &sl, &p, &m))) break;
            in.src = p;
            in.size = m;
            in.pos = 0;
        }
        size_t in0 = in.pos, out0 = out.pos, r = ZSTD_decompressStream(z, &out, &in);
        if (ZSTD_isError(r)) {
            rc = ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall ? dfail(d, DCF_E_FORMAT, "zstd: output longer than size %llu", (unsigned long long)s->size)
                                                                     : dfail(d, DCF_E_FORMAT, "zstd: corrupt stream (%s)", ZSTD_getErrorName(r));
            break;
        }
        if (!r) {
            if (out.pos != s->size) rc = dfail(d, DCF_E_FORMAT, "zstd: output is %zu bytes, meta says %llu", out.pos, (unsigned long long)s->size);
            break;
        }
        if (in.pos == in.size && sl.off == s->in[0]->size && in.pos == in0 && out.pos == out0) {
            rc = out.pos == out.size ? dfail(d, DCF_E_FORMAT, "zstd: output longer than size %llu", (unsigned long long)s->size)
                                     : dfail(d, DCF_E_FORMAT, "zstd: stream is truncated");
            break;
        }
    }
    ZSTD_freeDCtx(z);
    return rc;
}

/* The frame header (RFC 8878 3.1.1.1) and the frame's extent: one frame, no dictionary, a window within
 * max(size, 1 MiB), a content size equal to `size` when present, nothing after it. The extent is found as
 * ZSTD_findFrameCompressedSize finds it, by walking the 3-byte block headers (3.1.1.2), but through bytes_read, so a
 * stream read from the file is not held whole. */
static int zstd_check(dec *d, stream *s) {
    stream *in = s->in[0];
    uint64_t n = in->size;
    uint8_t p[18];
    int rc;
    if (n >= 6 && (rc = bytes_read(d, in, 0, p, (size_t)(n < 18 ? n : 18)))) return rc;
    if (n < 6 || p[0] != 0x28 || p[1] != 0xb5 || p[2] != 0x2f || p[3] != 0xfd) return dfail(d, DCF_E_FORMAT, "zstd: not a Zstandard frame (bad magic)");
    uint8_t fhd = p[4];
    int fcs_flag = fhd >> 6, single = fhd >> 5 & 1, dict = fhd & 3, checksum = fhd >> 2 & 1;
    if (fhd & 8) return dfail(d, DCF_E_FORMAT, "zstd: reserved bit set in the frame header");
    if (dict) return dfail(d, DCF_E_FORMAT, "zstd: frames needing a dictionary are not supported");
    uint64_t pos = 5, window = 0;
    if (!single) {
        uint8_t wd = p[pos++];
        if ((wd >> 3) + 10 > ZSTD_WINDOWLOG_MAX) return dfail(d, DCF_E_FORMAT, "zstd: window log %d above %d", (wd >> 3) + 10, ZSTD_WINDOWLOG_MAX);
        uint64_t base = (uint64_t)1 << (10 + (wd >> 3));
        window = base + base / 8 * (wd & 7);
    }
    int fcs_bytes = fcs_flag == 0 ? single : 1 << fcs_flag;
    if (pos + (uint64_t)fcs_bytes > n) return dfail(d, DCF_E_FORMAT, "zstd: truncated frame header");
    int has_fcs = fcs_bytes > 0;
    uint64_t fcs = 0;
    for (int i = fcs_bytes - 1; i >= 0; i--) fcs = fcs << 8 | p[pos + (uint64_t)i];
    if (fcs_bytes == 2) fcs += 256;
    if (single) window = fcs;
    pos += (uint64_t)fcs_bytes;
    for (int last = 0; !last;) { /* blocks: last flag, type (3 is reserved), size; an RLE block holds one byte */
        uint8_t h[3];
        if (n - pos < 3) return dfail(d, DCF_E_FORMAT, "zstd: stream is truncated (a block header at byte %llu)", (unsigned long long)pos);
        if ((rc = bytes_read(d, in, pos, h, 3))) return rc;
        uint32_t bh = (uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16, type = bh >> 1 & 3;
        uint64_t len = type == 1 ? 1 : bh >> 3;
        if (type == 3) return dfail(d, DCF_E_FORMAT, "zstd: corrupt stream (reserved block type at byte %llu)", (unsigned long long)pos);
        if (n - pos - 3 < len) return dfail(d, DCF_E_FORMAT, "zstd: stream is truncated (a block of %llu bytes at byte %llu)", (unsigned long long)len, (unsigned long long)pos);
        pos += 3 + len;
        last = bh & 1;
    }
    if (checksum && n - pos < 4) return dfail(d, DCF_E_FORMAT, "zstd: stream is truncated (no room for the content checksum)");
    pos += checksum ? 4 : 0;
    if (pos != n) return dfail(d, DCF_E_FORMAT, "zstd: %llu bytes follow the end of the frame", (unsigned long long)(n - pos));
    if (has_fcs && fcs != s->size) return dfail(d, DCF_E_FORMAT, "zstd: frame content size %llu differs from meta size %llu", (unsigned long long)fcs, (unsigned long long)s->size);
    if (window > (s->size > MIB ? s->size : MIB)) return dfail(d, DCF_E_FORMAT, "zstd: window of %llu bytes for %llu bytes of output", (unsigned long long)window, (unsigned long long)s->size);
    return DCF_OK;
}
#endif

static int zstd_decode(dec *d, const mp_tree *ct, uint32_t config, uint32_t meta, stream **ins, stream *out) {
    (void)ct; (void)config;
    int rc = codec_size(d, "zstd", meta, ins[0], out);
#ifdef DCF_WITH_ZSTD
    out->fill = zstd_fill;
    if (!rc) rc = zstd_check(d, out);
#endif
    return rc;
}

/* ---------------------------------------------------------------- the stage table */

#define DENSE (1 << K_DENSE)
#define SYMS (1 << K_SYMBOLS)
#define BYTES (1 << K_BYTES)
#ifdef DCF_WITH_ZSTD
#define NO_ZSTD NULL
#else
#define NO_ZSTD "built without zstd (rebuild libdcf with make ZSTD=1)"
#endif
#ifdef DCF_WITH_ZLIB
#define NO_ZLIB NULL
#else
#define NO_ZLIB "built without zlib (rebuild libdcf with make ZLIB=1)"
#endif

static const stage_def STAGES[] = {
    {"raw", 1, DENSE | SYMS, 1, {K_BYTES, 0}, raw_config, raw_decode, NULL},
    {"prune", 1, DENSE, 1, {K_DENSE, 0}, prune_config, prune_decode, NULL},
    {"sparse", 1, DENSE, 2, {K_SYMBOLS, K_DENSE}, sparse_config, sparse_decode, NULL},
    {"kmeans", 1, DENSE, 1, {K_SYMBOLS, 0}, kmeans_config, kmeans_decode, NULL},
    {"bytegroup", 1, DENSE, 2, {K_SYMBOLS, K_BYTES}, bytegroup_config, bytegroup_decode, NULL},
    {"uniform", 1, DENSE, 1, {K_SYMBOLS, 0}, uniform_config, uniform_decode, NULL},
    {"rowscale", 1, DENSE, 2, {K_DENSE, K_SYMBOLS}, rowscale_config, rowscale_decode, NULL},
    {"tcq", 1, DENSE, 2, {K_SYMBOLS, K_SYMBOLS}, tcq_config, tcq_decode, NULL},
    {"huffman", 1, SYMS, 1, {K_BYTES, 0}, huffman_check_config, huffman_decode, NULL},
    {"rans", 1, SYMS, 1, {K_BYTES, 0}, rans_check_config, rans_decode, NULL},
    {"zlib", 1, BYTES, 1, {K_BYTES, 0}, zlib_config, zlib_decode, NO_ZLIB},
    {"zstd", 1, BYTES, 1, {K_BYTES, 0}, zstd_config, zstd_decode, NO_ZSTD},
    {"lzma", 1, BYTES, 1, {K_BYTES, 0}, NULL, NULL, "libdcf has no lzma decoder; recompress the tensor with zstd or zlib"},
    {"bz2", 1, BYTES, 1, {K_BYTES, 0}, NULL, NULL, "libdcf has no bz2 decoder; recompress the tensor with zstd or zlib"},
};

const stage_def *stage_find(const mp_tree *t, uint32_t id) {
    for (size_t i = 0; i < sizeof STAGES / sizeof *STAGES; i++)
        if (mp_str_is(t, id, STAGES[i].id)) return &STAGES[i];
    return NULL;
}

int check_count_alphabet(dec *d, const char *stage, uint32_t meta, uint64_t *count, uint64_t *alphabet) {
    const mp_tree *t = &d->rec;
    uint32_t c = mp_get(t, meta, "count"), a = mp_get(t, meta, "alphabet");
    if (!mp_is_int(t, c) || N(t, c)->v.i < 0) return dfail(d, DCF_E_FORMAT, "%s: count missing or not an integer >= 0", stage);
    if (!mp_is_int(t, a) || N(t, a)->v.i < 1 || N(t, a)->v.i > 65536) return dfail(d, DCF_E_FORMAT, "%s: alphabet missing or outside 1..2^16", stage);
    *count = (uint64_t)N(t, c)->v.i;
    *alphabet = (uint64_t)N(t, a)->v.i;
    uint64_t w = *alphabet <= 256 ? 1 : 2;
    if (*count > d->bound / w)
        return dfail(d, DCF_E_LIMIT, "%s: %llu symbols of %llu bytes over the decode bound %llu", stage, (unsigned long long)*count, (unsigned long long)w, (unsigned long long)d->bound);
    return DCF_OK;
}
