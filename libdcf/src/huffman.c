/* Stage `huffman` (spec/stages/huffman.md): canonical code lengths, segments of S symbols with end offsets, an
 * LSB-first payload. Every header check is made when the stage is applied; segments decode as they are pulled. */
#include "internal.h"

#if defined(__GNUC__) && defined(__x86_64__) && !defined(DCF_NO_SIMD)
#define HUFF_X86 1 /* kernels built for AVX2 + BMI2 as well, used where the CPU has them (checked at run time) */
#endif

#define LANES 4      /* segments decoded in lockstep (independent dependency chains) */
#define MULTI 4      /* most symbols one multi-symbol table entry gives */
#define MAX_PER 5    /* most lookups per 56-bit window */
#define M56 ((((uint64_t)1) << 56) - 1)
#define MARK (((uint64_t)1) << 56)

typedef struct huff_st huff_st;
/* `rounds` rounds over `G` lanes (bit positions bp, output pointers o to symbols of the stream's width), each PER
 * lookups from one 56-bit window */
typedef void (*kernel_fn)(const huff_st *st, uint64_t *bp, uint8_t **o, uint64_t rounds);

struct huff_st {
    const uint8_t *pay, *ends; /* NULL (windowed): read from `in` at pay_off and ends_off as the groups need them */
    stream *in;
    uint64_t pay_off, ends_off;
    uint8_t *win;              /* windowed: one group's payload bytes, and 8 more when the payload has them */
    uint64_t p, n, k_count;
    uint32_t s, mask;
    uint32_t *table;  /* 2^maxlen entries: length | symbol << 8; 0 where no code matches (one used symbol only) */
    uint64_t *multi;  /* byte symbols: 2^maxlen entries of up to MULTI codes (see build_multi), else NULL */
    kernel_fn lanes, one; /* the LANES-lane and the 1-lane kernels; NULL: every symbol by the checked loop */
    uint64_t per, syms_per_round; /* lookups per window; most symbols a lane decodes per round */
    uint64_t k;       /* next segment to decode */
    uint8_t *buf;     /* the symbols of the last group decoded */
    int w;            /* bytes per output symbol: 1 (alphabet <= 256) or 2 */
    size_t buf_i, buf_n;
    int maxlen;
    uint64_t group;   /* segments per group: LANES, or 1 for segments over 2^14 symbols (bounded buffer) */
};

int huffman_check_config(dec *d, const mp_tree *ct, uint32_t c) {
    static const param ps[] = {{"max_bits", P_INT, 1, 16, 0, 0, 0, NULL}, {"segment_size", P_INT, 1, 65536, 0, 0, 0, NULL}};
    return check_params(d, "huffman", ct, c, ps, 2);
}

static uint64_t load64(const uint8_t *p) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t v;
    memcpy(&v, p, 8); /* one unaligned load */
    return v;
#else
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
#endif
}

/* The 8 bytes at byte b of the payload, zero past its end. */
static uint64_t load_tail(const huff_st *st, uint64_t b) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | (b + (uint64_t)i < st->p ? st->pay[b + (uint64_t)i] : 0);
    return v;
}

static uint64_t seg_symbols(const huff_st *st, uint64_t k) {
    return k < st->k_count - 1 ? st->s : st->n - (uint64_t)st->s * (st->k_count - 1);
}

/* One code at bit bp (bits past the payload read as zero): its table entry. */
static uint32_t entry_at(const huff_st *st, uint64_t bp) {
    uint64_t v = ((bp >> 3) + 8 <= st->p ? load64(st->pay + (bp >> 3)) : load_tail(st, bp >> 3)) >> (bp & 7);
    return st->table[v & st->mask];
}

/* Finish segment k from bit *bp with `left` symbols to go, then check it ends in its last byte (`end`), zero-padded. */
static int finish_segment(dec *d, const huff_st *st, uint64_t k, uint64_t bp, uint64_t left, uint8_t *o, uint64_t end) {
    for (uint64_t i = 0; i < left; i++) {
        uint32_t e = entry_at(st, bp);
        if (!e) return dfail(d, DCF_E_FORMAT, "huffman: invalid code in segment %llu", (unsigned long long)k);
        if (st->w == 1) o[i] = (uint8_t)(e >> 8);
        else ((uint16_t *)(void *)o)[i] = (uint16_t)(e >> 8);
        bp += e & 63;
    }
    if (!(bp > 8 * (end - 1) && bp <= 8 * end))
        return dfail(d, DCF_E_FORMAT, "huffman: segment %llu codes do not end in its last byte", (unsigned long long)k);
    if (st->pay[end - 1] >> (bp - 8 * (end - 1)))
        return dfail(d, DCF_E_FORMAT, "huffman: segment %llu padding bits are not zero", (unsigned long long)k);
    return DCF_OK;
}

/* ---- the fast path: whole rounds with no check per symbol ----
 * A round takes, per lane, one window of the 56 payload bits at its bit position with a marker bit above them,
 * and PER <= 56 / maxlen lookups from it; the marker's drop after the lookups is the bits they used. The caller runs
 * only rounds that stay inside the payload and inside each segment's symbol count (safe_rounds), so the symbols are
 * those of the one-at-a-time procedure, and a complete code (every Kraft-valid table but one symbol's) has no
 * invalid entry to check for. */
#define WINDOW(pay, b) ((load64((pay) + ((b) >> 3)) >> ((b) & 7) & M56) | MARK)
#if defined(__GNUC__) && !defined(DCF_NO_SIMD) /* SIMD=0 builds what any C99 compiler gets: lengths summed */
#define TAKE(e)
#define USED(v) ((uint64_t)__builtin_clzll(v) - 7)
#else
#define TAKE(e) used += (e) & 63
#define USED(v) used
#endif

/* single-symbol entries: one symbol per lookup, stored at a fixed place of the round */
#define BODY_SINGLE(PER)                                                                                   \
    for (int q = 0; q < (PER); q++) {                                                                      \
        uint32_t e = tab[v & mask];                                                                        \
        v >>= e & 63;                                                                                      \
        TAKE(e);                                                                                           \
        w[q] = e >> 8; /* the symbol: fits the output type, the stream's width */                           \
    }                                                                                                      \
    w += (PER);

/* multi-symbol entries (byte symbols): four symbol bytes written, the pointer moved by the entry's count */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define STORE4(w, e) do { uint32_t four_ = (uint32_t)((e) >> 8); memcpy((w), &four_, 4); } while (0) /* one store */
#else
#define STORE4(w, e) ((w)[0] = (uint8_t)((e) >> 8), (w)[1] = (uint8_t)((e) >> 16), (w)[2] = (uint8_t)((e) >> 24), \
                      (w)[3] = (uint8_t)((e) >> 32))
#endif
#define BODY_MULTI(PER)                                                                                    \
    for (int q = 0; q < (PER); q++) {                                                                      \
        uint64_t e = mt[v & mask];                                                                         \
        v >>= e & 63;                                                                                      \
        TAKE(e);                                                                                           \
        STORE4(w, e);                                                                                      \
        w += e >> 48;                                                                                      \
    }

/* A kernel writing symbols of type T (uint8_t or uint16_t: the stream's width) */
#define KERNEL(NAME, ATTR, G, T, BODY)                                                                     \
    ATTR static void NAME(const huff_st *st, uint64_t *bpv, uint8_t **ov, uint64_t rounds) {               \
        const uint8_t *pay = st->pay;                                                                      \
        const uint32_t *tab = st->table, mask = st->mask;                                                  \
        const uint64_t *mt = st->multi;                                                                    \
        uint64_t bp[G];                                                                                    \
        T *o[G];                                                                                           \
        (void)tab; (void)mt;                                                                               \
        for (int j = 0; j < (G); j++) { bp[j] = bpv[j]; o[j] = (T *)(void *)ov[j]; }                       \
        for (uint64_t r = 0; r < rounds; r++)                                                              \
            for (int j = 0; j < (G); j++) {                                                                \
                uint64_t v = WINDOW(pay, bp[j]), used = 0;                                                 \
                T *w = o[j];                                                                               \
                (void)used;                                                                                \
                BODY;                                                                                      \
                o[j] = w;                                                                                  \
                bp[j] += USED(v);                                                                          \
            }                                                                                              \
        for (int j = 0; j < (G); j++) { bpv[j] = bp[j]; ov[j] = (uint8_t *)o[j]; }                         \
    }

#define SINGLES(P, ATTR, T, S)                                                                             \
    KERNEL(P##S##3_g, ATTR, LANES, T, BODY_SINGLE(3)) KERNEL(P##S##3_1, ATTR, 1, T, BODY_SINGLE(3))        \
    KERNEL(P##S##4_g, ATTR, LANES, T, BODY_SINGLE(4)) KERNEL(P##S##4_1, ATTR, 1, T, BODY_SINGLE(4))        \
    KERNEL(P##S##5_g, ATTR, LANES, T, BODY_SINGLE(5)) KERNEL(P##S##5_1, ATTR, 1, T, BODY_SINGLE(5))
/* kernels[kind][per - 3][lanes or one]: kind 0 single-symbol bytes, 1 single-symbol 16-bit, 2 multi-symbol bytes */
#define KERNELS(P, ATTR)                                                                                   \
    SINGLES(P, ATTR, uint8_t, single8_) SINGLES(P, ATTR, uint16_t, single16_)                              \
    KERNEL(P##multi4_g, ATTR, LANES, uint8_t, BODY_MULTI(4)) KERNEL(P##multi4_1, ATTR, 1, uint8_t, BODY_MULTI(4)) \
    KERNEL(P##multi5_g, ATTR, LANES, uint8_t, BODY_MULTI(5)) KERNEL(P##multi5_1, ATTR, 1, uint8_t, BODY_MULTI(5)) \
    static const kernel_fn P##kernels[3][3][2] = {                                                         \
        {{P##single8_3_g, P##single8_3_1}, {P##single8_4_g, P##single8_4_1}, {P##single8_5_g, P##single8_5_1}}, \
        {{P##single16_3_g, P##single16_3_1}, {P##single16_4_g, P##single16_4_1}, {P##single16_5_g, P##single16_5_1}}, \
        {{NULL, NULL}, {P##multi4_g, P##multi4_1}, {P##multi5_g, P##multi5_1}}};

KERNELS(portable_, )
#ifdef HUFF_X86
KERNELS(x86_, __attribute__((target("avx2,bmi,bmi2"))))
#endif

/* Rounds a lane at bit bp with `left` symbols to go can run: each reads 8 payload bytes and takes at most
 * per x maxlen bits and syms_per_round symbols. */
static uint64_t safe_rounds(const huff_st *st, uint64_t bp, uint64_t left) {
    if (st->p < 8 || bp > 8 * (st->p - 8)) return 0;
    uint64_t by_bits = (8 * (st->p - 8) - bp) / (st->per * (uint64_t)st->maxlen) + 1, by_syms = left / st->syms_per_round;
    return by_bits < by_syms ? by_bits : by_syms;
}

/* Segment k0 + j's bounds in the payload: start[j] and end[j] for j < g (start[j + 1] = end[j]). */
static int group_bounds(dec *d, const huff_st *st, uint64_t k0, int g, uint64_t *start) {
    uint8_t b[4 * (LANES + 1)];
    uint64_t first = k0 ? k0 - 1 : 0, m = (uint64_t)g + (k0 ? 1 : 0);
    const uint8_t *e = st->ends ? st->ends + 4 * first : b;
    if (!st->ends) {
        int rc = bytes_read(d, st->in, st->ends_off + 4 * first, b, (size_t)(4 * m));
        if (rc) return rc;
    }
    start[0] = 0;
    for (uint64_t i = 0; i < m; i++) start[i + (k0 ? 0 : 1)] = rd_u32(e + 4 * i);
    return DCF_OK;
}

/* Decode segments k0 .. k0+g-1 into out (segment j at out + j*S), g <= LANES: LANES segments in lockstep while all
 * of them can, then each one alone, then its last symbols one at a time with every check. Windowed, the group's
 * bytes are read first; bits past the window (8 bytes past the group) then read as zero, which only a segment whose
 * codes already ran past its end could reach. */
static int decode_group(dec *d, const huff_st *st, uint64_t k0, int g, uint8_t *out) {
    uint64_t bp[LANES], n[LANES], start[LANES + 1];
    uint8_t *o[LANES], *o0[LANES];
    const int sh = st->w - 1; /* symbols done by lane j: (o[j] - o0[j]) >> sh */
    int rc = group_bounds(d, st, k0, g, start);
    if (rc) return rc;
    huff_st view = *st;
    uint64_t base = 0;
    if (!st->ends) {
        uint64_t stop = start[g] + 8 < st->p ? start[g] + 8 : st->p;
        base = start[0];
        if ((rc = bytes_read(d, st->in, st->pay_off + base, st->win, (size_t)(stop - base)))) return rc;
        view.pay = st->win;
        view.p = stop - base;
        st = &view;
    }
    for (int j = 0; j < g; j++) {
        bp[j] = 8 * (start[j] - base);
        n[j] = seg_symbols(st, k0 + (uint64_t)j);
        o[j] = o0[j] = out + ((size_t)j * st->s << sh);
    }
    while (st->lanes && g == LANES) {
        uint64_t r = UINT64_MAX;
        for (int j = 0; j < LANES; j++) {
            uint64_t rj = safe_rounds(st, bp[j], n[j] - ((uint64_t)(o[j] - o0[j]) >> sh));
            r = rj < r ? rj : r;
        }
        if (!r) break;
        st->lanes(st, bp, o, r);
    }
    for (int j = 0; j < g; j++) {
        uint64_t r;
        while (st->one && (r = safe_rounds(st, bp[j], n[j] - ((uint64_t)(o[j] - o0[j]) >> sh)))) st->one(st, &bp[j], &o[j], r);
        rc = finish_segment(d, st, k0 + (uint64_t)j, bp[j], n[j] - ((uint64_t)(o[j] - o0[j]) >> sh), o[j], start[j + 1] - base);
        if (rc) return rc;
    }
    return DCF_OK;
}

/* Symbols in segment order: whole groups straight into dst when it has room for them, else through the buffer. */
static int huff_pull(dec *d, stream *s, void *dst, size_t n) {
    huff_st *st = s->st;
    if (!n) return DCF_OK; /* also a stream of 0 symbols, which has no state */
    uint8_t *o = dst;
    const size_t w = (size_t)st->w;
    while (n) {
        if (st->buf_i == st->buf_n) {
            uint64_t left = st->k_count - st->k, g = left < st->group ? left : st->group;
            size_t size = (size_t)((g - 1) * st->s + seg_symbols(st, st->k + g - 1));
            int direct = n >= size, rc = decode_group(d, st, st->k, (int)g, direct ? o : st->buf);
            if (rc) return rc;
            st->k += g;
            if (direct) {
                o += size * w;
                n -= size;
                s->pos += size;
                continue;
            }
            st->buf_i = 0;
            st->buf_n = size;
        }
        size_t m = st->buf_n - st->buf_i < n ? st->buf_n - st->buf_i : n;
        memcpy(o, st->buf + st->buf_i * w, m * w);
        st->buf_i += m;
        o += m * w;
        n -= m;
        s->pos += m;
    }
    return DCF_OK;
}

static uint32_t bitreverse(uint32_t v, int n) {
    uint32_t r = 0;
    for (int i = 0; i < n; i++, v >>= 1) r = r << 1 | (v & 1);
    return r;
}

/* The multi-symbol table for byte symbols: entry v holds the codes that follow one another from the window's start
 * while they lie inside its maxlen bits, at most MULTI: total length | symbols << 8 (a byte each) | count << 48.
 * Decoding an entry is decoding its codes in turn. Returns the mean count, the symbols per lookup on data whose
 * code lengths match its symbol frequencies. */
static double build_multi(huff_st *st, uint32_t size, int maxlen) {
    uint64_t total = 0;
    for (uint32_t v = 0; v < size; v++) {
        uint64_t e = 0, c = 0, len = 0;
        for (; c < MULTI; c++) {
            uint32_t t = st->table[(v >> len) & st->mask];
            if (!t || len + (t & 63) > (uint64_t)maxlen) break;
            e |= (uint64_t)(t >> 8) << (8 + 8 * c);
            len += t & 63;
        }
        st->multi[v] = e | len | c << 48;
        total += c;
    }
    return (double)total / size;
}

/* The fast kernels for this table: none for a one-symbol code (its table has invalid entries), the multi-symbol
 * ones for byte symbols when an entry holds 1.5 codes or more on average, else the single-symbol ones. */
static int pick_kernels(dec *d, huff_st *st, uint64_t used, uint64_t a) {
    uint32_t size = 1u << st->maxlen;
    if (used < 2) return DCF_OK;
    st->per = (uint64_t)(56 / st->maxlen < MAX_PER ? 56 / st->maxlen : MAX_PER);
    int multi = 0;
    if (a <= 256 && st->maxlen <= 13) {
        if (!(st->multi = dec_alloc(d, (uint64_t)size * 8, 1, "huffman"))) return d->err ? d->err->code : DCF_E_NOMEM;
        multi = build_multi(st, size, st->maxlen) >= 1.5;
    }
    const kernel_fn(*ks)[3][2] = portable_kernels;
#ifdef HUFF_X86
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("bmi2")) ks = x86_kernels;
#endif
    int kind = multi ? 2 : st->w == 1 ? 0 : 1;
    st->lanes = ks[kind][st->per - 3][0];
    st->one = ks[kind][st->per - 3][1];
    st->syms_per_round = st->per * (multi ? MULTI : 1);
    return DCF_OK;
}

#define ENDS_BLOCK 4096 /* segment offsets checked at a time when they are read from the file */

/* Bytes [off, off + n) of the stream: a pointer into its view, or (windowed) read into buf. */
static int stream_bytes(dec *d, huff_st *st, const uint8_t *p, uint64_t off, size_t n, uint8_t *buf, const uint8_t **out) {
    if (p) { *out = p + off; return DCF_OK; }
    *out = buf;
    return bytes_read(d, st->in, off, buf, n);
}

/* The header (table, S, ends) checked as Decoding steps 3-5 say. A stored stream that is not in memory (read
 * callback mode) is read in pieces: the table, then the offsets ENDS_BLOCK at a time; its payload a group at a
 * time when decoded (windowed). */
static int header(dec *d, stream *in, uint64_t n, uint64_t a, huff_st *st, const uint8_t **lens_out, uint32_t *t_out,
                  int *maxlen_out) {
    const uint8_t *p = NULL, *q;
    uint8_t b4[4];
    int rc = !in->data && in->read_at ? DCF_OK : bytes_view(d, in, &p);
    if (rc) return rc;
    st->in = in;
    uint64_t size = in->size;
    if (size < 4) return dfail(d, DCF_E_FORMAT, "huffman: stream too short for the table size");
    if ((rc = stream_bytes(d, st, p, 0, 4, b4, &q))) return rc;
    uint32_t t = rd_u32(q);
    if (t < 1 || t > a) return dfail(d, DCF_E_FORMAT, "huffman: table of %u entries for alphabet %llu", t, (unsigned long long)a);
    if (size < 8 + (uint64_t)t) return dfail(d, DCF_E_FORMAT, "huffman: stream too short for the table");
    uint8_t *tb = p ? NULL : dec_alloc(d, (uint64_t)t + 4 * ENDS_BLOCK, 1, "huffman");
    if (!p && !tb) return d->err ? d->err->code : DCF_E_NOMEM;
    if ((rc = stream_bytes(d, st, p, 4, (size_t)t + 4, tb, &q))) return rc;
    const uint8_t *len = q;
    int minlen = 17, maxlen = 0;
    uint64_t used = 0, kraft = 0;
    for (uint32_t i = 0; i < t; i++) {
        if (!len[i]) continue;
        if (len[i] > 16) return dfail(d, DCF_E_FORMAT, "huffman: code length %u above 16", len[i]);
        used++;
        kraft += (uint64_t)1 << (16 - len[i]);
        if (len[i] < minlen) minlen = len[i];
        if (len[i] > maxlen) maxlen = len[i];
    }
    if (!used) return dfail(d, DCF_E_FORMAT, "huffman: table has no used symbol");
    if (used == 1 ? maxlen != 1 : kraft != 65536) return dfail(d, DCF_E_FORMAT, "huffman: code lengths do not form a complete prefix code");
    uint32_t s = rd_u32(len + t);
    if (s < 1 || s > 65536) return dfail(d, DCF_E_FORMAT, "huffman: segment size %u outside 1..2^16", s);
    uint64_t k = (n + s - 1) / s, rest = size - 8 - t;
    if (4 * k > rest) return dfail(d, DCF_E_FORMAT, "huffman: stream too short for %llu segment offsets", (unsigned long long)k);
    uint64_t pl = rest - 4 * k;
    if (n * (uint64_t)minlen > 8 * pl) return dfail(d, DCF_E_FORMAT, "huffman: %llu symbols cannot fit in %llu payload bytes", (unsigned long long)n, (unsigned long long)pl);
    uint64_t start = 0;
    const uint8_t *ends = NULL;
    for (uint64_t j = 0; j < k; j++) {
        if (j % ENDS_BLOCK == 0) {
            uint64_t m = k - j < ENDS_BLOCK ? k - j : ENDS_BLOCK;
            if ((rc = stream_bytes(d, st, p, 8 + t + 4 * j, (size_t)(4 * m), p ? NULL : tb + t + 4, &ends))) return rc;
        }
        uint64_t e = rd_u32(ends + 4 * (j % ENDS_BLOCK)), nk = j < k - 1 ? s : n - (uint64_t)s * (k - 1);
        if (e < start || e - start < (nk * (uint64_t)minlen + 7) / 8 || e - start > (nk * (uint64_t)maxlen + 7) / 8)
            return dfail(d, DCF_E_FORMAT, "huffman: segment %llu of %lld bytes cannot hold %llu codes", (unsigned long long)j, (long long)e - (long long)start, (unsigned long long)nk);
        start = e;
    }
    if (start != pl) return dfail(d, DCF_E_FORMAT, "huffman: last segment ends at %llu, payload is %llu bytes", (unsigned long long)start, (unsigned long long)pl);
    st->ends_off = 8 + t;
    st->pay_off = 8 + t + 4 * k;
    st->pay = p ? p + st->pay_off : NULL;
    st->ends = p ? p + st->ends_off : NULL;
    st->p = pl;
    st->n = n;
    st->k_count = k;
    st->s = s;
    *lens_out = len;
    *t_out = t;
    *maxlen_out = maxlen;
    return DCF_OK;
}

int huffman_decode(dec *d, const mp_tree *ct, uint32_t config, uint32_t meta, stream **ins, stream *out) {
    (void)ct; (void)config;
    uint64_t n, a;
    int rc = check_count_alphabet(d, "huffman", meta, &n, &a);
    if (rc) return rc;
    out->kind = K_SYMBOLS;
    out->count = n;
    out->alphabet = a;
    out->pull = huff_pull; /* with 0 symbols it is never asked for any */
    if (!n) return ins[0]->size ? dfail(d, DCF_E_FORMAT, "huffman: non-empty stream for 0 symbols") : DCF_OK;
    huff_st *st = dec_alloc(d, sizeof *st, 1, "huffman");
    if (!st) return d->err ? d->err->code : DCF_E_NOMEM;
    memset(st, 0, sizeof *st);
    const uint8_t *len = NULL;
    uint32_t t = 0;
    int maxlen = 0;
    if ((rc = header(d, ins[0], n, a, st, &len, &t, &maxlen))) return rc;
    uint32_t size = 1u << maxlen;
    if (!(st->table = dec_alloc(d, (uint64_t)size * 4, 1, "huffman"))) return d->err ? d->err->code : DCF_E_NOMEM;
    memset(st->table, 0, (size_t)size * 4);
    uint32_t count[17] = {0}, next[17] = {0};
    for (uint32_t i = 0; i < t; i++) count[len[i]]++;
    count[0] = 0;
    for (int l = 1; l <= 16; l++) next[l] = (next[l - 1] + count[l - 1]) << 1; /* canonical: (length, symbol) order */
    for (uint32_t i = 0; i < t; i++) {
        int l = len[i];
        if (!l) continue;
        uint32_t r = bitreverse(next[l]++, l), e = i << 8 | (uint32_t)l;
        for (uint32_t v = r; v < size; v += 1u << l) st->table[v] = e;
    }
    st->mask = size - 1;
    st->maxlen = maxlen;
    uint64_t used = 0;
    for (int l = 1; l <= 16; l++) used += count[l];
    st->w = sym_width(a);
    if ((rc = pick_kernels(d, st, used, a))) return rc;
    st->group = st->s <= 16384 ? LANES : 1;
    if (!(st->buf = dec_alloc(d, st->group * st->s * (uint64_t)st->w, 1, "huffman"))) return d->err ? d->err->code : DCF_E_NOMEM;
    if (!st->pay && !(st->win = dec_alloc(d, st->group * (((uint64_t)st->s * (uint64_t)maxlen + 7) / 8) + 8, 1, "huffman")))
        return d->err ? d->err->code : DCF_E_NOMEM;
    out->st = st;
    out->in[0] = ins[0];
    out->pull = huff_pull;
    return DCF_OK;
}
