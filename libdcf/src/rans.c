/* Stage `rans` (spec/stages/rans.md): static order-0 rANS, K interleaved 32-bit lanes renormalized by 16-bit words.
 * The header (frequency table, lanes, states) is checked when the stage is applied; symbols decode as pulled. */
#include "internal.h"

#define L_STATE 65536u
#define MAX_STEPS 65536u

typedef struct {
    uint32_t *x;       /* K lane states */
    uint64_t lanes, lane, n;
    const uint8_t *words;
    uint64_t w, next;  /* word count, next word */
    uint32_t nbits, smask;
    uint16_t *slot;    /* 2^n slots: index of the symbol covering it */
    uint32_t *fc;      /* per table symbol: cum | (f - 1) << 16 */
    uint16_t *sym;     /* per table symbol: its value */
} rans_st;

int rans_check_config(dec *d, const mp_tree *ct, uint32_t c) {
    static const param ps[] = {{"scale_bits", P_INT, 1, 16, 0, 0, 0, NULL}, {"lanes", P_INT, 1, 1 << 20, 0, 0, 0, NULL}};
    return check_params(d, "rans", ct, c, ps, 2);
}

typedef struct {
    const uint8_t *p;
    uint64_t size, pos, bit, end;
} rd;

static int varint(dec *d, rd *r, const char *what, uint64_t *out) {
    uint64_t v = 0;
    for (int k = 0; k < 3; k++) {
        if (r->pos >= r->size) return dfail(d, DCF_E_FORMAT, "rans: %s: the stream ends inside a varint", what);
        uint8_t b = r->p[r->pos++];
        v |= (uint64_t)(b & 127) << (7 * k);
        if (b < 128) {
            if (k > 0 && b == 0) return dfail(d, DCF_E_FORMAT, "rans: %s: a varint not in shortest form", what);
            *out = v;
            return DCF_OK;
        }
    }
    return dfail(d, DCF_E_FORMAT, "rans: %s: a varint longer than 3 bytes", what);
}

static int bit(dec *d, rd *r, uint32_t *b) {
    if (r->bit >= r->end) return dfail(d, DCF_E_FORMAT, "rans: frequency table: the stream ends inside its codes");
    *b = r->p[r->bit >> 3] >> (r->bit & 7) & 1;
    r->bit++;
    return DCF_OK;
}

/* An Exp-Golomb code of order k (z zero bits, a 1, then z + k bits; z + k <= 16). */
static int golomb(dec *d, rd *r, uint32_t k, uint32_t *out) {
    uint32_t z = 0, b = 0;
    int rc;
    for (;;) {
        if ((rc = bit(d, r, &b))) return rc;
        if (b) break;
        if (++z + k > 16) return dfail(d, DCF_E_FORMAT, "rans: frequency table: a code longer than allowed");
    }
    uint32_t w = 1;
    for (uint32_t i = 0; i < z + k; i++) {
        if ((rc = bit(d, r, &b))) return rc;
        w = w << 1 | b;
    }
    *out = w - (1u << k);
    return DCF_OK;
}

static int rans_pull(dec *d, stream *s, void *dst, size_t n) {
    rans_st *st = s->st;
    if (!st) return DCF_OK; /* an empty stream: rans_decode checked it holds no bytes */
    uint32_t *o = dst, *x = st->x;
    const uint16_t *slot = st->slot, *sym = st->sym;
    const uint32_t *fc = st->fc;
    const uint32_t nb = st->nbits, mask = st->smask;
    uint64_t lane = st->lane, next = st->next;
    const uint64_t lanes = st->lanes, w = st->w;
    const uint8_t *wp = st->words;
    for (size_t i = 0; i < n; i++) {
        uint32_t xj = x[lane], sl = xj & mask, k = slot[sl], e = fc[k];
        o[i] = sym[k];
        xj = ((e >> 16) + 1) * (xj >> nb) + sl - (e & 0xffff);
        /* renormalize without a branch on the (unpredictable) need; running out of words is the rare branch */
        uint32_t need = xj < L_STATE, have = next < w;
        if (need & !have) return dfail(d, DCF_E_FORMAT, "rans: the lanes need more than the stream's %llu words (truncated)", (unsigned long long)w);
        uint32_t word = have ? (uint32_t)wp[2 * next] | (uint32_t)wp[2 * next + 1] << 8 : 0;
        x[lane] = need ? xj << 16 | word : xj;
        next += need;
        if (++lane == lanes) lane = 0;
    }
    st->lane = lane;
    st->next = next;
    s->pos += n;
    if (n && s->pos == st->n) {
        if (next != w) return dfail(d, DCF_E_FORMAT, "rans: %llu of %llu words left unread", (unsigned long long)(w - next), (unsigned long long)w);
        for (uint64_t j = 0; j < lanes; j++)
            if (x[j] != L_STATE) return dfail(d, DCF_E_FORMAT, "rans: a lane does not end in the encoder's initial state 2^16 (damaged stream)");
    }
    return DCF_OK;
}

/* The frequency table (Decoding step 3): symbols into st->sym, cum | (f - 1) << 16 into st->fc. */
static int table(dec *d, rd *r, uint64_t a, uint64_t dn, uint32_t order, uint32_t nbits, rans_st *st) {
    int64_t s = -1;
    uint64_t sum = 0;
    r->bit = 8 * r->pos;
    r->end = 8 * r->size;
    for (uint64_t i = 0; i < dn; i++) {
        uint32_t gap, f;
        int rc;
        if ((rc = golomb(d, r, 0, &gap)) || (rc = golomb(d, r, order, &f))) return rc;
        s += 1 + (int64_t)gap;
        if (s >= (int64_t)a) return dfail(d, DCF_E_FORMAT, "rans: frequency table names symbol %lld, the alphabet is %llu", (long long)s, (unsigned long long)a);
        if (sum + f + 1 > ((uint64_t)1 << nbits)) return dfail(d, DCF_E_FORMAT, "rans: frequencies sum to more than 2^%u", nbits);
        st->sym[i] = (uint16_t)s;
        st->fc[i] = (uint32_t)sum | f << 16;
        sum += f + 1;
    }
    while (r->bit & 7) {
        uint32_t b = 0;
        int rc = bit(d, r, &b);
        if (rc) return rc;
        if (b) return dfail(d, DCF_E_FORMAT, "rans: frequency table: the padding bits are not zero");
    }
    r->pos = r->bit >> 3;
    if (sum != ((uint64_t)1 << nbits)) return dfail(d, DCF_E_FORMAT, "rans: frequencies sum to %llu, not 2^%u", (unsigned long long)sum, nbits);
    return DCF_OK;
}

int rans_decode(dec *d, const mp_tree *ct, uint32_t config, uint32_t meta, stream **ins, stream *out) {
    (void)ct; (void)config;
    uint64_t n, a;
    int rc = check_count_alphabet(d, "rans", meta, &n, &a);
    if (rc) return rc;
    out->kind = K_SYMBOLS;
    out->count = n;
    out->alphabet = a;
    out->pull = rans_pull;
    if (!n) return ins[0]->size ? dfail(d, DCF_E_FORMAT, "rans: non-empty stream for 0 symbols") : DCF_OK;
    rd r = {NULL, ins[0]->size, 0, 0, 0};
    if ((rc = bytes_view(d, ins[0], &r.p))) return rc;
    if (r.size < 1) return dfail(d, DCF_E_FORMAT, "rans: empty stream for a non-zero count");
    uint32_t nb = r.p[r.pos++];
    if (nb < 1 || nb > 16) return dfail(d, DCF_E_FORMAT, "rans: scale bits %u outside 1..16", nb);
    uint64_t dn, k;
    if ((rc = varint(d, &r, "symbol count", &dn))) return rc;
    uint64_t total = (uint64_t)1 << nb, lim = a < total ? a : total;
    if (dn < 1 || dn > (lim < n ? lim : n))
        return dfail(d, DCF_E_FORMAT, "rans: %llu distinct symbols for %llu symbols, alphabet %llu, total 2^%u", (unsigned long long)dn, (unsigned long long)n, (unsigned long long)a, nb);
    if (r.pos >= r.size || r.p[r.pos] > 15) return dfail(d, DCF_E_FORMAT, "rans: no Exp-Golomb order, or one above 15");
    uint32_t order = r.p[r.pos++];
    rans_st *st = dec_alloc(d, sizeof *st + total * 2 + dn * 6, 1, "rans");
    if (!st) return d->err ? d->err->code : DCF_E_NOMEM;
    memset(st, 0, sizeof *st);
    st->fc = (uint32_t *)(st + 1);
    st->slot = (uint16_t *)(st->fc + dn);
    st->sym = st->slot + total;
    if ((rc = table(d, &r, a, dn, order, nb, st))) return rc;
    if ((rc = varint(d, &r, "lane count", &k))) return rc;
    if (k < 1 || k > n || (n + k - 1) / k > MAX_STEPS) return dfail(d, DCF_E_FORMAT, "rans: %llu lanes for %llu symbols", (unsigned long long)k, (unsigned long long)n);
    uint64_t left = r.size - r.pos;
    if (left < 4 * k || (left - 4 * k) % 2) return dfail(d, DCF_E_FORMAT, "rans: %llu bytes do not hold %llu states and 16-bit words", (unsigned long long)left, (unsigned long long)k);
    if (!(st->x = dec_alloc(d, 4 * k, 0, "rans"))) return d->err ? d->err->code : DCF_E_NOMEM;
    for (uint64_t j = 0; j < k; j++) {
        st->x[j] = rd_u32(r.p + r.pos + 4 * j);
        if (st->x[j] < L_STATE) return dfail(d, DCF_E_FORMAT, "rans: lane %llu state %u is below 2^16", (unsigned long long)j, st->x[j]);
    }
    for (uint64_t i = 0; i < dn; i++) { /* slot table: symbol i covers cum .. cum + f - 1 */
        uint32_t cum = st->fc[i] & 0xffff, f = (st->fc[i] >> 16) + 1;
        for (uint32_t j = 0; j < f; j++) st->slot[cum + j] = (uint16_t)i;
    }
    st->words = r.p + r.pos + 4 * k;
    st->w = (left - 4 * k) / 2;
    st->lanes = k;
    st->n = n;
    st->nbits = nb;
    st->smask = (uint32_t)total - 1;
    out->st = st;
    out->in[0] = ins[0];
    return DCF_OK;
}
