/* Stage `huffman` (spec/stages/huffman.md): canonical code lengths, segments of S symbols with end offsets, an
 * LSB-first payload. Every header check is made when the stage is applied; segments decode as they are pulled. */
#include "internal.h"

#define INVALID 0x80000000u /* a table entry no code reaches: length 0, and the flag a round tests once */
#define GROUP 4           /* segments decoded in lockstep (independent dependency chains) */

typedef struct {
    const uint8_t *pay, *ends;
    uint64_t p, n, k_count;
    uint32_t s, mask;
    uint32_t *table;  /* 2^maxlen entries: symbol << 5 | length; INVALID where no code matches */
    uint32_t *pairs;  /* byte symbols: 2^maxlen entries of one or two codes (see build_pairs), else NULL */
    uint64_t k;       /* next segment to decode */
    uint32_t *buf;    /* the symbols of the last group decoded */
    size_t buf_i, buf_n;
    int maxlen;
    uint64_t group;   /* segments per group: GROUP, or 1 for segments over 2^14 symbols (bounded buffer) */
} huff_st;

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

/* Finish segment k from bit *bp with `left` symbols to go, then check it ends in its last byte, zero-padded. */
static int finish_segment(dec *d, const huff_st *st, uint64_t k, uint64_t bp, uint64_t left, uint32_t *o) {
    for (uint64_t i = 0; i < left; i++) {
        uint32_t e = entry_at(st, bp);
        if (!(e & 31)) return dfail(d, DCF_E_FORMAT, "huffman: invalid code in segment %llu", (unsigned long long)k);
        o[i] = e >> 5;
        bp += e & 31;
    }
    uint64_t end = rd_u32(st->ends + 4 * k);
    if (!(bp > 8 * (end - 1) && bp <= 8 * end))
        return dfail(d, DCF_E_FORMAT, "huffman: segment %llu codes do not end in its last byte", (unsigned long long)k);
    if (st->pay[end - 1] >> (bp - 8 * (end - 1)))
        return dfail(d, DCF_E_FORMAT, "huffman: segment %llu padding bits are not zero", (unsigned long long)k);
    return DCF_OK;
}

/* One round: PER codes from each of G segments, each segment's PER codes from one 57-bit window (PER x maxlen <=
 * 57). A round holding an invalid code is not applied: finish_segment then meets it exactly where the
 * one-at-a-time procedure would. */
#define ROUNDS(G, PER)                                                                   \
    for (;;) {                                                                           \
        int ok = 1;                                                                      \
        uint32_t e[G][PER], bad = 0;                                                     \
        for (int j = 0; j < (G); j++) ok &= left[j] >= (PER) && (bp[j] >> 3) + 8 <= st->p; \
        if (!ok) break;                                                                  \
        for (int j = 0; j < (G); j++) {                                                  \
            uint64_t v = load64(st->pay + (bp[j] >> 3)) >> (bp[j] & 7);                  \
            for (int q = 0; q < (PER); q++) {                                            \
                e[j][q] = tab[v & mask];                                                 \
                v >>= e[j][q] & 31;                                                      \
                bad |= e[j][q];                                                          \
            }                                                                            \
        }                                                                                \
        if (bad >> 31) break;                                                            \
        for (int j = 0; j < (G); j++) {                                                  \
            for (int q = 0; q < (PER); q++) {                                            \
                o[j][q] = e[j][q] >> 5;                                                  \
                bp[j] += e[j][q] & 31;                                                   \
            }                                                                            \
            o[j] += (PER);                                                               \
            left[j] -= (PER);                                                            \
        }                                                                                \
    }

/* As ROUNDS, with the pair table: each lookup gives one or two codes (up to 2 x PER symbols a segment a round).
 * A round's results are committed only when none of its first codes was invalid. */
#define ROUNDS2(G, PER)                                                                  \
    for (;;) {                                                                           \
        int ok = 1;                                                                      \
        uint32_t bad = 0;                                                                \
        uint64_t nbp[G], took[G];                                                        \
        for (int j = 0; j < (G); j++) ok &= left[j] >= 2 * (PER) && (bp[j] >> 3) + 8 <= st->p; \
        if (!ok) break;                                                                  \
        for (int j = 0; j < (G); j++) {                                                  \
            uint64_t v = load64(st->pay + (bp[j] >> 3)) >> (bp[j] & 7), b = bp[j];       \
            uint32_t *w = o[j];                                                          \
            for (int q = 0; q < (PER); q++) {                                            \
                uint32_t e = pairs[v & mask];                                            \
                v >>= e & 31;                                                            \
                b += e & 31;                                                             \
                bad |= e;                                                                \
                w[0] = e >> 8 & 0xff;                                                    \
                w[1] = e >> 16 & 0xff;                                                   \
                w += e >> 5 & 3;                                                         \
            }                                                                            \
            nbp[j] = b;                                                                  \
            took[j] = (uint64_t)(w - o[j]);                                              \
        }                                                                                \
        if (bad >> 31) break;                                                            \
        for (int j = 0; j < (G); j++) {                                                  \
            bp[j] = nbp[j];                                                              \
            o[j] += took[j];                                                             \
            left[j] -= took[j];                                                          \
        }                                                                                \
    }

/* Decode segments k0 .. k0+g-1 into out (segment j at out + j*S), g <= GROUP, the g dependency chains overlapping
 * in the CPU. */
static int decode_group(dec *d, const huff_st *st, uint64_t k0, int g, uint32_t *out) {
    uint64_t bp[GROUP], left[GROUP];
    uint32_t *o[GROUP];
    const uint32_t *tab = st->table;
    const uint32_t mask = st->mask;
    for (int j = 0; j < g; j++) {
        bp[j] = 8 * (uint64_t)(k0 + (uint64_t)j ? rd_u32(st->ends + 4 * (k0 + (uint64_t)j - 1)) : 0);
        left[j] = seg_symbols(st, k0 + (uint64_t)j);
        o[j] = out + (size_t)j * st->s;
    }
    const uint32_t *pairs = st->pairs;
    if (g == GROUP && pairs) ROUNDS2(GROUP, 4)
    else if (g == GROUP && st->maxlen <= 14) ROUNDS(GROUP, 4)
    else if (g == GROUP) ROUNDS(GROUP, 3)
    else if (g == 1) ROUNDS(1, 3)
    for (int j = 0; j < g; j++) {
        int rc = finish_segment(d, st, k0 + (uint64_t)j, bp[j], left[j], o[j]);
        if (rc) return rc;
    }
    return DCF_OK;
}

/* Symbols in segment order: whole groups straight into dst when it has room for them, else through the buffer. */
static int huff_pull(dec *d, stream *s, void *dst, size_t n) {
    huff_st *st = s->st;
    uint32_t *o = dst;
    while (n) {
        if (st->buf_i == st->buf_n) {
            uint64_t left = st->k_count - st->k, g = left < st->group ? left : st->group;
            size_t size = (size_t)((g - 1) * st->s + seg_symbols(st, st->k + g - 1));
            int direct = n >= size, rc = decode_group(d, st, st->k, (int)g, direct ? o : st->buf);
            if (rc) return rc;
            st->k += g;
            if (direct) {
                o += size;
                n -= size;
                s->pos += size;
                continue;
            }
            st->buf_i = 0;
            st->buf_n = size;
        }
        size_t m = st->buf_n - st->buf_i < n ? st->buf_n - st->buf_i : n;
        memcpy(o, st->buf + st->buf_i, m * sizeof *o);
        st->buf_i += m;
        o += m;
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

/* The pair table for byte symbols (A <= 256, maxlen <= 14): entry v holds the code at the window's start and, when
 * the next code also lies inside the window's maxlen bits, that one too: total length | count << 5 | first << 8 |
 * second << 16 (INVALID when the first code is invalid). Decoding a pair is decoding its two codes in turn. */
static void build_pairs(huff_st *st, uint32_t size, int maxlen) {
    for (uint32_t v = 0; v < size; v++) {
        uint32_t e1 = st->table[v], l1 = e1 & 31;
        if (e1 & INVALID) { st->pairs[v] = INVALID; continue; }
        uint32_t e2 = st->table[(v >> l1) & st->mask], l2 = e2 & 31;
        int two = !(e2 & INVALID) && l1 + l2 <= (uint32_t)maxlen;
        st->pairs[v] = (two ? l1 + l2 : l1) | (two ? 2u : 1u) << 5 | (e1 >> 5) << 8 | (two ? (e2 >> 5) << 16 : 0);
    }
}

/* The header (table, S, ends) checked as Decoding steps 3-5 say, then the decode table of step 6. */
static int header(dec *d, stream *in, uint64_t n, uint64_t a, huff_st *st, const uint8_t **lens_out, uint32_t *t_out,
                  int *maxlen_out) {
    const uint8_t *p;
    int rc = bytes_view(d, in, &p);
    if (rc) return rc;
    uint64_t size = in->size;
    if (size < 4) return dfail(d, DCF_E_FORMAT, "huffman: stream too short for the table size");
    uint32_t t = rd_u32(p);
    if (t < 1 || t > a) return dfail(d, DCF_E_FORMAT, "huffman: table of %u entries for alphabet %llu", t, (unsigned long long)a);
    if (size < 8 + (uint64_t)t) return dfail(d, DCF_E_FORMAT, "huffman: stream too short for the table");
    const uint8_t *len = p + 4;
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
    uint32_t s = rd_u32(p + 4 + t);
    if (s < 1 || s > 65536) return dfail(d, DCF_E_FORMAT, "huffman: segment size %u outside 1..2^16", s);
    uint64_t k = (n + s - 1) / s, rest = size - 8 - t;
    if (4 * k > rest) return dfail(d, DCF_E_FORMAT, "huffman: stream too short for %llu segment offsets", (unsigned long long)k);
    uint64_t pl = rest - 4 * k;
    if (n * (uint64_t)minlen > 8 * pl) return dfail(d, DCF_E_FORMAT, "huffman: %llu symbols cannot fit in %llu payload bytes", (unsigned long long)n, (unsigned long long)pl);
    const uint8_t *ends = p + 8 + t;
    uint64_t start = 0;
    for (uint64_t j = 0; j < k; j++) {
        uint64_t e = rd_u32(ends + 4 * j), nk = j < k - 1 ? s : n - (uint64_t)s * (k - 1);
        if (e < start || e - start < (nk * (uint64_t)minlen + 7) / 8 || e - start > (nk * (uint64_t)maxlen + 7) / 8)
            return dfail(d, DCF_E_FORMAT, "huffman: segment %llu of %lld bytes cannot hold %llu codes", (unsigned long long)j, (long long)e - (long long)start, (unsigned long long)nk);
        start = e;
    }
    if (start != pl) return dfail(d, DCF_E_FORMAT, "huffman: last segment ends at %llu, payload is %llu bytes", (unsigned long long)start, (unsigned long long)pl);
    st->pay = ends + 4 * k;
    st->ends = ends;
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
    for (uint32_t v = 0; v < size; v++) st->table[v] = INVALID;
    uint32_t count[17] = {0}, next[17] = {0};
    for (uint32_t i = 0; i < t; i++) count[len[i]]++;
    count[0] = 0;
    for (int l = 1; l <= 16; l++) next[l] = (next[l - 1] + count[l - 1]) << 1; /* canonical: (length, symbol) order */
    for (uint32_t i = 0; i < t; i++) {
        int l = len[i];
        if (!l) continue;
        uint32_t r = bitreverse(next[l]++, l), e = i << 5 | (uint32_t)l;
        for (uint32_t v = r; v < size; v += 1u << l) st->table[v] = e;
    }
    st->mask = size - 1;
    st->maxlen = maxlen;
    if (a <= 256 && maxlen <= 14) {
        if (!(st->pairs = dec_alloc(d, (uint64_t)size * 4, 1, "huffman"))) return d->err ? d->err->code : DCF_E_NOMEM;
        build_pairs(st, size, maxlen);
    }
    st->group = st->s <= 16384 ? GROUP : 1;
    if (!(st->buf = dec_alloc(d, st->group * st->s * sizeof *st->buf, 1, "huffman"))) return d->err ? d->err->code : DCF_E_NOMEM;
    out->st = st;
    out->in[0] = ins[0];
    out->pull = huff_pull;
    return DCF_OK;
}
