/* Stage `rans` (spec/stages/rans.md): static order-0 rANS, K interleaved 32-bit lanes renormalized by 16-bit words.
 * The header (frequency table, lanes, states) is checked when the stage is applied; symbols decode as pulled. */
#include <stdlib.h>

#include "internal.h"

#if defined(__GNUC__) && defined(__x86_64__) && !defined(DCF_NO_SIMD)
#include <immintrin.h>
#define RANS_AVX2 1   /* 8 lanes per AVX2 step where the CPU has it (checked at run time), else scalar */
#define RANS_AVX512 1 /* 16 lanes per AVX-512 step where the CPU has F, BW, VL and VBMI2 (checked at run time) */
#endif

/* The fast steps' paths, and the forms of the slot tables (R_TWO but on the AVX-512 path: see slot_form) */
enum { P_SCALAR, P_AVX2, P_AVX512 };
enum { R_TWO, R_PACKED, R_PERM, R_PERM256 };

#define L_STATE 65536u
#define MAX_STEPS 65536u
#define WINDOW_WORDS 32768u /* a stream not in memory is read through a window of this many words (64 KiB) */

typedef struct {
    uint32_t *x;       /* K lane states */
    uint64_t lanes, lane, n;
    const uint8_t *words; /* words [base, end) of the stream's w words: all of them, or a window of them */
    uint64_t w, next;  /* word count, next word */
    uint64_t base, end;
    uint8_t *win;      /* windowed (the stream is read from the file): the window words points to, else NULL */
    stream *in;
    uint64_t words_off; /* the first word's byte offset in the stream */
    uint32_t nbits, smask;
    int wide;          /* alphabet over 256: 16-bit output symbols; else bytes */
    int path;          /* the fast steps' path: P_SCALAR, P_AVX2 or P_AVX512 */
    int form;          /* the slot tables' form */
    /* R_TWO: two tables indexed by the slot, read independently of each other (a lookup that waited on another
     * would lengthen every lane's dependency chain): */
    uint32_t *fb;      /* per slot s (2^n): (f - 1) << 16 | (s - cum) of the symbol covering it */
    const uint8_t *ssym; /* per slot: that symbol, in the output's width (a byte, or 16 bits when wide) */
    uint8_t (*perm)[32]; /* AVX2: per 8-lane renormalization mask m: a byte shuffle putting into lane l (as 32 bits)
                            the word it takes, number popcount(m & (2^l - 1)) of the 8 at `next` */
    /* The AVX-512 path's forms: one gather per 16 lanes (see slot_form) */
    uint32_t *e;       /* R_PACKED: per slot (f - 1) << (sw + n) | (s - cum) << sw | symbol, sw its 8 or 16 bits;
                          R_PERM256: per slot (s - cum) << 16 | symbol */
    uint8_t *idx;      /* R_PERM: per slot the index of its symbol in the table (under 32) */
    uint32_t fc32[32]; /* R_PERM: per symbol index, (f - 1) << 16 | cum */
    uint32_t sym32[32]; /* R_PERM: per symbol index, the symbol */
    uint16_t f1[256];  /* R_PERM256: per byte symbol, f - 1 */
    uint32_t *fc;      /* per table symbol: cum | (f - 1) << 16 (while the table is read) */
    uint16_t *sym;     /* per table symbol: its value (while the table is read) */
} rans_st;

int rans_check_config(dec *d, const mp_tree *ct, uint32_t c) {
    static const param ps[] = {{"scale_bits", P_INT, 1, 16, 0, 0, 0, NULL}, {"lanes", P_INT, 1, 1 << 20, 0, 0, 0, NULL}};
    return check_params(d, "rans", ct, c, ps, 2);
}

/* The header's bytes, read forward: p holds bytes [base, base + len) of the stream (all of them, or a window of
 * WINDOW_WORDS words refilled from the file); pos and bit are the byte and bit positions in the stream. */
typedef struct {
    stream *in;
    const uint8_t *p;
    uint8_t *buf;
    uint64_t base, len;
    uint64_t size, pos, bit, end;
} rd;

/* Byte `at` (< size) of the stream. */
static int rd_byte(dec *d, rd *r, uint64_t at, uint8_t *b) {
    if (at < r->base || at - r->base >= r->len) {
        size_t m = (size_t)(r->size - at < 2 * WINDOW_WORDS ? r->size - at : 2 * WINDOW_WORDS);
        int rc = bytes_read(d, r->in, at, r->buf, m);
        if (rc) return rc;
        r->p = r->buf;
        r->base = at;
        r->len = m;
    }
    *b = r->p[at - r->base];
    return DCF_OK;
}

static int varint(dec *d, rd *r, const char *what, uint64_t *out) {
    uint64_t v = 0;
    for (int k = 0; k < 3; k++) {
        if (r->pos >= r->size) return dfail(d, DCF_E_FORMAT, "rans: %s: the stream ends inside a varint", what);
        uint8_t b;
        int rc = rd_byte(d, r, r->pos++, &b);
        if (rc) return rc;
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
    uint8_t byte;
    int rc = rd_byte(d, r, r->bit >> 3, &byte);
    if (rc) return rc;
    *b = byte >> (r->bit & 7) & 1;
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

static inline uint32_t word_at(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }

/* The state after decoding from slot entry e: f (x >> n) + (x mod 2^n) - cum. */
static inline uint32_t advance(uint32_t x, uint32_t e, uint32_t nb) { return ((e >> 16) + 1) * (x >> nb) + (e & 0xffff); }

/* Slot sl's entry (f - 1) << 16 | (sl - cum), and its symbol in *s, from the slot tables of `form`. */
static inline uint32_t look(const rans_st *st, int form, int wide, uint32_t sl, uint32_t *s) {
    if (form == R_PACKED) {
        uint32_t e = st->e[sl], sw = wide ? 16 : 8;
        *s = e & ((1u << sw) - 1);
        return (e >> (sw + st->nbits)) << 16 | (e >> sw & st->smask);
    }
    if (form == R_PERM) {
        uint32_t i = st->idx[sl], fc = st->fc32[i];
        *s = st->sym32[i];
        return (fc & 0xffff0000u) | (sl - (fc & 0xffff));
    }
    if (form == R_PERM256) {
        uint32_t e = st->e[sl];
        *s = e & 0xffff;
        return (uint32_t)st->f1[e & 0xff] << 16 | e >> 16;
    }
    *s = wide ? ((const uint16_t *)(const void *)st->ssym)[sl] : st->ssym[sl];
    return st->fb[sl];
}

/* Symbol i of the output o, in the stream's width. */
static inline void put(int wide, uint8_t *o, size_t i, uint32_t s) {
    if (wide) ((uint16_t *)(void *)o)[i] = (uint16_t)s;
    else o[i] = (uint8_t)s;
}

/* One lane's step (slot tables R_TWO): its symbol into o[i], its state advanced and renormalized from the word at
 * wp if it needs one (the caller guarantees that word exists). Masks, not a branch: the need is unpredictable.
 * Returns 1 if it took it. */
static inline uint32_t step(uint32_t *xp, uint8_t *o, size_t i, const rans_st *st, int wide, const uint8_t *wp) {
    uint32_t xj = *xp, sl = xj & st->smask, s;
    uint32_t e = look(st, R_TWO, wide, sl, &s);
    put(wide, o, i, s);
    xj = advance(xj, e, st->nbits);
    uint32_t need = xj < L_STATE, m = 0u - need;
    *xp = (xj & ~m) | ((xj << 16 | word_at(wp)) & m);
    return need;
}

#ifdef RANS_AVX2
/* Lanes j..j+7 of one step at once: two independent gathers (the slots' entries, and their symbols: 4 bytes from
 * the byte or 16-bit table, masked), the state update, and the words the needing lanes take (in lane order) moved
 * into place by a permutation chosen by the need mask. The 8 symbols go out in one 8- or 16-byte store. Returns the
 * words taken. */
typedef struct { /* what step8 reads, held apart from rans_st: the output's byte stores could alias its fields */
    const int *fb, *ssym;
    const uint8_t (*perm)[32];
    __m256i smask;
    __m128i nbits;
} tabs8;

__attribute__((target("avx2,popcnt"))) static inline uint32_t step8(uint32_t *xs, uint8_t *o, tabs8 t, int wide,
                                                                    const uint8_t *wp) {
    const __m256i lo16 = _mm256_set1_epi32(0xffff), one = _mm256_set1_epi32(1);
    __m256i x = _mm256_loadu_si256((const __m256i *)xs);
    __m256i sl = _mm256_and_si256(x, t.smask);
    __m256i e = _mm256_i32gather_epi32(t.fb, sl, 4);
    __m256i k = wide ? _mm256_i32gather_epi32(t.ssym, sl, 2) /* the symbol in each lane's low 2 bytes, or 1 */
                     : _mm256_i32gather_epi32(t.ssym, sl, 1);
    if (wide) { /* 8 symbols of 16 bits: packed within each half, then the halves' low 64 bits side by side */
        const __m256i pick = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1,
                                              0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1);
        __m256i s16 = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(k, pick), 0x08);
        _mm_storeu_si128((__m128i *)(void *)o, _mm256_castsi256_si128(s16));
    } else { /* 8 byte symbols: packed to bytes within each half, then the halves' low 32 bits side by side */
        const __m256i pick = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                              0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
        __m256i s8 = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(k, pick), _mm256_setr_epi32(0, 4, 1, 1, 1, 1, 1, 1));
        _mm_storel_epi64((__m128i *)(void *)o, _mm256_castsi256_si128(s8));
    }
    __m256i f = _mm256_add_epi32(_mm256_srli_epi32(e, 16), one);
    x = _mm256_add_epi32(_mm256_mullo_epi32(f, _mm256_srl_epi32(x, t.nbits)), _mm256_and_si256(e, lo16));
    __m256i need = _mm256_cmpeq_epi32(_mm256_min_epu32(x, lo16), x); /* x <= 0xffff */
    unsigned m = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(need));
    __m256i words = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)wp)); /* both halves */
    words = _mm256_shuffle_epi8(words, _mm256_loadu_si256((const __m256i *)(const void *)t.perm[m]));
    x = _mm256_blendv_epi8(x, _mm256_or_si256(_mm256_slli_epi32(x, 16), words), need);
    _mm256_storeu_si256((__m256i *)xs, x);
    return (uint32_t)__builtin_popcount(m);
}

/* fast_steps with groups of 8 lanes by AVX2 (the rest of the K lanes scalar); o advances by bytes, wide or not. */
__attribute__((target("avx2,popcnt"))) static inline size_t fast_avx2(rans_st *st, uint8_t *o, size_t n, int wide) {
    const size_t k = (size_t)st->lanes, w = wide ? 2 : 1;
    const uint8_t *words = st->words;
    uint64_t r = st->next - st->base, avail = st->end - st->base; /* words[r] is the next word */
    size_t done = 0;
    const tabs8 t = {(const int *)(const void *)st->fb, (const int *)(const void *)st->ssym, (const uint8_t (*)[32])st->perm,
                     _mm256_set1_epi32((int)st->smask), _mm_cvtsi32_si128((int)st->nbits)};
    uint32_t *x = st->x;
    while (n - done >= k && avail - r >= k) { /* each group's 16-byte word load stays within these k words */
        size_t j = 0;
        for (; j + 8 <= k; j += 8) r += step8(x + j, o + w * (done + j), t, wide, words + 2 * r);
        for (; j < k; j++) r += step(&st->x[j], o, done + j, st, wide, words + 2 * r);
        done += k;
    }
    st->next = st->base + r;
    return done;
}

__attribute__((target("avx2,popcnt"))) static size_t fast_avx2_8(rans_st *st, uint8_t *o, size_t n) { return fast_avx2(st, o, n, 0); }
__attribute__((target("avx2,popcnt"))) static size_t fast_avx2_16(rans_st *st, uint8_t *o, size_t n) { return fast_avx2(st, o, n, 1); }
#endif

#ifdef RANS_AVX512
#define TARGET512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi2,popcnt")))

/* All 16 lanes, as a mask the compiler cannot see is full: a full-mask gather would merge into whatever register
 * the compiler picked (the last group's state, as it happens), a false dependency that chained the groups of a
 * step one after the other (1.2 G symbols/s; 2.1-2.9 G without). So the gathers go into a zeroed register. */
TARGET512 __attribute__((always_inline)) static inline __mmask16 all16(void) {
    __mmask16 k = 0xffff;
    __asm__("" : "+Yk"(k));
    return k;
}
#define GATHER16(index, base, scale) _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), all16(), index, base, scale)

typedef struct { /* what step16 reads, held apart from rans_st (the output's byte stores could alias its fields) */
    const int *e;    /* R_TWO: fb; R_PACKED, R_PERM256: e */
    const void *s;   /* R_TWO: ssym; R_PERM: idx */
    __m512i tab[8];  /* R_PERM: fc32 in 0-1, sym32 in 2-3; R_PERM256: f1 in 0-7 */
    __m512i smask;
    __m128i nbits, sw, swn; /* n; R_PACKED: the symbol's bits, and those + n */
} tabs16;

/* Lanes j..j+15 (those of `live`: all 16, or in a `tail` the first k - j) of one step at once: one gather (two for
 * R_TWO) and the in-register lookups of the table form, the 16 symbols narrowed into one store, the state update,
 * and the needing lanes' words: the 16 words at wp (in a tail only its k - j, by a masked load, which reads no
 * masked-off word) spread by an expand into the needing lanes in lane order. Returns the words taken. */
TARGET512 __attribute__((always_inline)) static inline uint32_t step16(uint32_t *xs, uint8_t *o, const tabs16 *t, int form, int wide,
                                        const uint8_t *wp, __mmask16 live, int tail) {
    const __m512i lo16 = _mm512_set1_epi32(0xffff), one = _mm512_set1_epi32(1);
    __m512i x = tail ? _mm512_maskz_loadu_epi32(live, xs) : _mm512_loadu_si512((const void *)xs);
    __m512i sl = _mm512_and_si512(x, t->smask), f, bias, sym;
    if (form == R_PACKED) {
        __m512i e = GATHER16(sl, t->e, 4);
        f = _mm512_add_epi32(_mm512_srl_epi32(e, t->swn), one);
        bias = _mm512_and_si512(_mm512_srl_epi32(e, t->sw), t->smask);
        sym = e;
    } else if (form == R_PERM) { /* the index in the low 5 bits picks from 32 entries; the bytes above are ignored */
        __m512i i = GATHER16(sl, t->s, 1);
        __m512i fc = _mm512_permutex2var_epi32(t->tab[0], i, t->tab[1]);
        sym = _mm512_permutex2var_epi32(t->tab[2], i, t->tab[3]);
        f = _mm512_add_epi32(_mm512_srli_epi32(fc, 16), one);
        bias = _mm512_sub_epi32(sl, _mm512_and_si512(fc, lo16));
    } else if (form == R_PERM256) { /* the symbol's low 6 bits pick f - 1 among 64 words; bits 6 and 7 the table */
        __m512i e = GATHER16(sl, t->e, 4);
        __m512i r0 = _mm512_permutex2var_epi16(t->tab[0], e, t->tab[1]), r1 = _mm512_permutex2var_epi16(t->tab[2], e, t->tab[3]);
        __m512i r2 = _mm512_permutex2var_epi16(t->tab[4], e, t->tab[5]), r3 = _mm512_permutex2var_epi16(t->tab[6], e, t->tab[7]);
        __mmask16 b6 = _mm512_test_epi32_mask(e, _mm512_set1_epi32(64)), b7 = _mm512_test_epi32_mask(e, _mm512_set1_epi32(128));
        __m512i f1 = _mm512_mask_mov_epi32(_mm512_mask_mov_epi32(r0, b6, r1), b7, _mm512_mask_mov_epi32(r2, b6, r3));
        f = _mm512_add_epi32(_mm512_and_si512(f1, lo16), one);
        bias = _mm512_srli_epi32(e, 16);
        sym = e;
    } else {
        __m512i e = GATHER16(sl, t->e, 4);
        sym = wide ? GATHER16(sl, t->s, 2) : GATHER16(sl, t->s, 1);
        f = _mm512_add_epi32(_mm512_srli_epi32(e, 16), one);
        bias = _mm512_and_si512(e, lo16);
    }
    if (wide) {
        if (tail) _mm512_mask_cvtepi32_storeu_epi16(o, live, sym);
        else _mm256_storeu_si256((__m256i *)(void *)o, _mm512_cvtepi32_epi16(sym));
    } else {
        if (tail) _mm512_mask_cvtepi32_storeu_epi8(o, live, sym);
        else _mm_storeu_si128((__m128i *)(void *)o, _mm512_cvtepi32_epi8(sym));
    }
    x = _mm512_add_epi32(_mm512_mullo_epi32(f, _mm512_srl_epi32(x, t->nbits)), bias);
    __mmask16 m = _mm512_mask_cmplt_epu32_mask(live, x, _mm512_set1_epi32((int)L_STATE));
    __m256i w = tail ? _mm256_maskz_loadu_epi16(live, wp) : _mm256_loadu_si256((const __m256i *)(const void *)wp);
    __asm__("" : "+v"(w)); /* a load, then the expand: not folded into an expand from memory (measured slower) */
    x = _mm512_mask_or_epi32(x, m, _mm512_slli_epi32(x, 16), _mm512_cvtepu16_epi32(_mm256_maskz_expand_epi16(m, w)));
    if (tail) _mm512_mask_storeu_epi32(xs, live, x);
    else _mm512_storeu_si512((void *)xs, x);
    return (uint32_t)_mm_popcnt_u32((unsigned)m);
}

/* fast_steps with groups of 16 lanes by AVX-512 and the last K mod 16 by one masked group; o advances by bytes.
 * A step starts with at least k words at `next` (r); before lane j, r <= start + j (each lane takes at most one),
 * so a group's 16-word load (j + 16 <= k), or a tail's k - j words, stays within those k words. */
TARGET512 __attribute__((always_inline)) static inline size_t fast_avx512(rans_st *st, uint8_t *o, size_t n, int form, int wide) {
    const size_t k = (size_t)st->lanes, w = wide ? 2 : 1;
    const uint8_t *words = st->words;
    uint64_t r = st->next - st->base, avail = st->end - st->base;
    size_t done = 0;
    tabs16 t;
    t.e = (const int *)(const void *)(form == R_TWO ? st->fb : st->e);
    t.s = form == R_PERM ? (const void *)st->idx : (const void *)st->ssym;
    for (int q = 0; q < 8; q++) t.tab[q] = _mm512_setzero_si512();
    if (form == R_PERM)
        for (int q = 0; q < 2; q++) {
            t.tab[q] = _mm512_loadu_si512((const void *)(st->fc32 + 16 * q));
            t.tab[2 + q] = _mm512_loadu_si512((const void *)(st->sym32 + 16 * q));
        }
    if (form == R_PERM256)
        for (int q = 0; q < 8; q++) t.tab[q] = _mm512_loadu_si512((const void *)(st->f1 + 32 * q));
    t.smask = _mm512_set1_epi32((int)st->smask);
    t.nbits = _mm_cvtsi32_si128((int)st->nbits);
    t.sw = _mm_cvtsi32_si128(wide ? 16 : 8);
    t.swn = _mm_cvtsi32_si128((wide ? 16 : 8) + (int)st->nbits);
    const __mmask16 rest = (__mmask16)((1u << (k % 16)) - 1);
    uint32_t *x = st->x;
    while (n - done >= k && avail - r >= k) {
        size_t j = 0;
        for (; j + 16 <= k; j += 16) r += step16(x + j, o + w * (done + j), &t, form, wide, words + 2 * r, 0xffff, 0);
        if (j < k) r += step16(x + j, o + w * (done + j), &t, form, wide, words + 2 * r, rest, 1);
        done += k;
    }
    st->next = st->base + r;
    return done;
}

/* fast_avx512 for each table form and width (both constants where it is inlined) */
#define FAST512(name, form, wide) \
    TARGET512 static size_t name(rans_st *st, uint8_t *o, size_t n) { return fast_avx512(st, o, n, form, wide); }
FAST512(fast512_two8, R_TWO, 0)
FAST512(fast512_two16, R_TWO, 1)
FAST512(fast512_packed8, R_PACKED, 0)
FAST512(fast512_packed16, R_PACKED, 1)
FAST512(fast512_perm8, R_PERM, 0)
FAST512(fast512_perm16, R_PERM, 1)
FAST512(fast512_perm256, R_PERM256, 0)
static size_t (*const fast512[4][2])(rans_st *, uint8_t *, size_t) = {
    {fast512_two8, fast512_two16}, {fast512_packed8, fast512_packed16}, {fast512_perm8, fast512_perm16},
    {fast512_perm256, NULL}};
#endif

/* The portable fast steps for one width (wide a constant where it is inlined). */
static inline size_t fast_scalar(rans_st *st, uint8_t *o, size_t n, int wide) {
    const size_t k = (size_t)st->lanes;
    const uint8_t *words = st->words;
    uint64_t r = st->next - st->base, avail = st->end - st->base;
    size_t done = 0;
    while (n - done >= k && avail - r >= k) {
        for (size_t j = 0; j < k; j++) r += step(&st->x[j], o, done + j, st, wide, words + 2 * r);
        done += k;
    }
    st->next = st->base + r;
    return done;
}

/* Whole steps (all K lanes, in lane order) while the words at hand surely hold the K words a step may take: no
 * bounds check per symbol, the lanes' states are independent dependency chains, only `next` is shared. Returns
 * symbols done. */
static size_t fast_steps(rans_st *st, uint8_t *o, size_t n) {
#ifdef RANS_AVX512
    if (st->path == P_AVX512) return fast512[st->form][st->wide](st, o, n);
#endif
#ifdef RANS_AVX2
    if (st->path == P_AVX2) return st->wide ? fast_avx2_16(st, o, n) : fast_avx2_8(st, o, n);
#endif
    return st->wide ? fast_scalar(st, o, n, 1) : fast_scalar(st, o, n, 0);
}

/* Windowed: keep the window's unread words, then read as many more as it holds (words [next, end + more)). */
static int refill(dec *d, rans_st *st) {
    uint64_t keep = st->end - st->next, more = st->w - st->end;
    if (more > WINDOW_WORDS - keep) more = WINDOW_WORDS - keep;
    if (keep) memmove(st->win, st->win + 2 * (st->next - st->base), (size_t)(2 * keep));
    if (more) {
        int rc = bytes_read(d, st->in, st->words_off + 2 * st->end, st->win + 2 * keep, (size_t)(2 * more));
        if (rc) return rc;
    }
    st->base = st->next;
    st->end += more;
    return DCF_OK;
}

/* Symbols one at a time, checking that a needed word exists (a partial step, or the stream's last words). */
static int slow_syms(dec *d, rans_st *st, uint8_t *o, size_t n) {
    uint32_t *x = st->x;
    uint64_t lane = st->lane, next = st->next;
    const uint64_t w = st->w;
    for (size_t i = 0; i < n; i++) {
        uint32_t xj = x[lane], sl = xj & st->smask, s;
        uint32_t e = look(st, st->form, st->wide, sl, &s);
        put(st->wide, o, i, s);
        xj = advance(xj, e, st->nbits);
        if (xj < L_STATE) {
            if (next >= w) return dfail(d, DCF_E_FORMAT, "rans: the lanes need more than the stream's %llu words (truncated)", (unsigned long long)w);
            if (next >= st->end) { /* windowed: the window is used up */
                st->next = next;
                int rc = refill(d, st);
                if (rc) return rc;
            }
            xj = xj << 16 | word_at(st->words + 2 * (next - st->base));
            next++;
        }
        x[lane] = xj;
        if (++lane == st->lanes) lane = 0;
    }
    st->lane = lane;
    st->next = next;
    return DCF_OK;
}

static int rans_pull(dec *d, stream *s, void *dst, size_t n) {
    rans_st *st = s->st;
    if (!st) return DCF_OK; /* an empty stream: rans_decode checked it holds no bytes */
    uint8_t *o = dst;
    const size_t ow = st->wide ? 2 : 1; /* output bytes per symbol */
    size_t done = 0;
    int rc;
    if (st->lane) { /* finish the step a previous pull stopped in */
        size_t head = (size_t)(st->lanes - st->lane);
        done = head < n ? head : n;
        if ((rc = slow_syms(d, st, o, done))) return rc;
    }
    while (!st->lane) { /* windowed: refilled while a window can hold a whole step */
        done += fast_steps(st, o + ow * done, n - done);
        if (!st->win || n - done < st->lanes || st->end == st->w || st->lanes > WINDOW_WORDS) break;
        if ((rc = refill(d, st))) return rc;
    }
    if ((rc = slow_syms(d, st, o + ow * done, n - done))) return rc;
    s->pos += n;
    if (n && s->pos == st->n) {
        uint64_t next = st->next, w = st->w;
        if (next != w) return dfail(d, DCF_E_FORMAT, "rans: %llu of %llu words left unread", (unsigned long long)(w - next), (unsigned long long)w);
        for (uint64_t j = 0; j < st->lanes; j++)
            if (st->x[j] != L_STATE) return dfail(d, DCF_E_FORMAT, "rans: a lane does not end in the encoder's initial state 2^16 (damaged stream)");
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
        uint32_t gap = 0, f = 0;
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

/* The fast steps' path: the best this CPU runs, or a lower one named by the environment variable DCF_SIMD (scalar,
 * avx2 or avx512, which may name a table form too: avx512:two, avx512:packed, avx512:perm or avx512:perm256; for
 * tests and comparisons, as every path decodes the same symbols). *form is the form named, or -1. */
static int simd_path(int *form) {
    int best = P_SCALAR, want = P_AVX512;
    *form = -1;
#ifdef RANS_AVX2
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt")) best = P_AVX2;
#endif
#ifdef RANS_AVX512
    if (best == P_AVX2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
        && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vbmi2"))
        best = P_AVX512;
#endif
    const char *v = getenv("DCF_SIMD");
    if (v) {
        static const char *const forms[] = {"avx512:two", "avx512:packed", "avx512:perm", "avx512:perm256"};
        if (!strcmp(v, "scalar")) want = P_SCALAR;
        else if (!strcmp(v, "avx2")) want = P_AVX2;
        for (int i = 0; i < 4; i++)
            if (!strcmp(v, forms[i])) *form = i;
    }
    return want < best ? want : best;
}

int rans_simd(void) {
    int form;
    return simd_path(&form);
}

/* The slot tables' form: R_TWO but on the AVX-512 path, there the fastest that fits (measured on a Zen-class
 * AVX-512 core at 2^14 slots, against R_TWO's two gathers per 16 lanes):
 * - R_PACKED where f - 1, the offset and the symbol fit 32 bits (2n + 8 or 16 <= 32): one gather;
 * - R_PERM where at most 32 symbols are used: one gather from a byte table of symbol indices (2^n bytes, 16 KiB
 *   at 2^14 slots, which stays in L1), then (f - 1) << 16 | cum and the symbol by two 32-entry in-register lookups
 *   (vpermi2d): 1.55x R_TWO;
 * - R_PERM256 for byte symbols: one gather of (s - cum) << 16 | symbol, then f - 1 by four 64-entry lookups of
 *   16-bit words (vpermi2w) and three blends: 1.25x R_TWO;
 * - else R_TWO (16-bit symbols, more than 32 of them, over 2^8 slots). `want`, if not -1, is taken where it fits. */
static int slot_form(int path, int want, int wide, uint32_t nb, uint64_t dn) {
    int packed = 2 * nb + (wide ? 16 : 8) <= 32, perm = dn <= 32, perm256 = !wide;
    if (path != P_AVX512) return R_TWO;
    if (want >= 0)
        return (want == R_PACKED && packed) || (want == R_PERM && perm) || (want == R_PERM256 && perm256) ? want : R_TWO;
    return packed ? R_PACKED : perm ? R_PERM : perm256 ? R_PERM256 : R_TWO;
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
    /* a stored stream not in memory is read through a window: the header forward, then the words in order */
    rd r = {ins[0], NULL, NULL, 0, 0, ins[0]->size, 0, 0, 0};
    int windowed = !ins[0]->data && ins[0]->read_at;
    if (windowed && !(r.buf = dec_alloc(d, 2 * WINDOW_WORDS, 1, "rans"))) return d->err ? d->err->code : DCF_E_NOMEM;
    if (!windowed && (rc = bytes_view(d, ins[0], &r.p))) return rc;
    r.len = windowed ? 0 : r.size;
    if (r.size < 1) return dfail(d, DCF_E_FORMAT, "rans: empty stream for a non-zero count");
    uint8_t b;
    if ((rc = rd_byte(d, &r, r.pos++, &b))) return rc;
    uint32_t nb = b;
    if (nb < 1 || nb > 16) return dfail(d, DCF_E_FORMAT, "rans: scale bits %u outside 1..16", nb);
    uint64_t dn, k;
    if ((rc = varint(d, &r, "symbol count", &dn))) return rc;
    uint64_t total = (uint64_t)1 << nb, lim = a < total ? a : total;
    if (dn < 1 || dn > (lim < n ? lim : n))
        return dfail(d, DCF_E_FORMAT, "rans: %llu distinct symbols for %llu symbols, alphabet %llu, total 2^%u", (unsigned long long)dn, (unsigned long long)n, (unsigned long long)a, nb);
    if (r.pos < r.size && (rc = rd_byte(d, &r, r.pos, &b))) return rc;
    if (r.pos >= r.size || b > 15) return dfail(d, DCF_E_FORMAT, "rans: no Exp-Golomb order, or one above 15");
    uint32_t order = b;
    r.pos++;
    /* one block: the state, the AVX2 path's 8 KiB of word shuffles, the 32-bit slot entries (4 bytes per slot: R_TWO,
     * R_PACKED, R_PERM256), the symbol table (6 bytes per symbol), the byte slot table (R_TWO's symbols, 1 or 2
     * bytes per slot; R_PERM's symbol indices, 1 byte), then the 4 bytes a vector gather of the last slot reads */
    int wide = a > 256, want;
    int path = simd_path(&want), form = slot_form(path, want, wide, nb, dn);
    uint64_t sw = wide ? 2 : 1, perms = path == P_AVX2 ? 256 * 32 : 0;
    uint64_t entries = form == R_PERM ? 0 : total * 4, bytes = form == R_TWO ? total * sw : form == R_PERM ? total : 0;
    rans_st *st = dec_alloc(d, sizeof *st + perms + entries + dn * 6 + bytes + 4, 1, "rans");
    if (!st) return d->err ? d->err->code : DCF_E_NOMEM;
    memset(st, 0, sizeof *st);
    st->perm = (uint8_t (*)[32])(st + 1);
    uint32_t *ent = (uint32_t *)((uint8_t *)(st + 1) + perms);
    st->fc = ent + entries / 4;
    st->sym = (uint16_t *)(st->fc + dn);
    uint8_t *ssym = (uint8_t *)(st->sym + dn);
    if (form == R_TWO) st->fb = ent;
    else st->e = ent;
    st->ssym = ssym;
    st->idx = ssym;
    st->wide = wide;
    st->path = path;
    st->form = form;
    memset(ssym + bytes, 0, 4);
    if ((rc = table(d, &r, a, dn, order, nb, st))) return rc;
    if ((rc = varint(d, &r, "lane count", &k))) return rc;
    if (k < 1 || k > n || (n + k - 1) / k > MAX_STEPS) return dfail(d, DCF_E_FORMAT, "rans: %llu lanes for %llu symbols", (unsigned long long)k, (unsigned long long)n);
    uint64_t left = r.size - r.pos;
    if (left < 4 * k || (left - 4 * k) % 2) return dfail(d, DCF_E_FORMAT, "rans: %llu bytes do not hold %llu states and 16-bit words", (unsigned long long)left, (unsigned long long)k);
    if (!(st->x = dec_alloc(d, 4 * k, 0, "rans"))) return d->err ? d->err->code : DCF_E_NOMEM;
    if ((rc = bytes_read(d, ins[0], r.pos, (uint8_t *)st->x, (size_t)(4 * k)))) return rc;
    for (uint64_t j = 0; j < k; j++) {
        st->x[j] = rd_u32((const uint8_t *)st->x + 4 * j); /* little-endian, in place */
        if (st->x[j] < L_STATE) return dfail(d, DCF_E_FORMAT, "rans: lane %llu state %u is below 2^16", (unsigned long long)j, st->x[j]);
    }
    for (uint64_t i = 0; i < dn; i++) { /* slot tables: symbol i covers cum .. cum + f - 1 */
        uint32_t cum = st->fc[i] & 0xffff, f = (st->fc[i] >> 16) + 1, s = st->sym[i];
        if (form == R_TWO) {
            for (uint32_t j = 0; j < f; j++) st->fb[cum + j] = (f - 1) << 16 | j;
            if (wide)
                for (uint32_t j = 0; j < f; j++) ((uint16_t *)(void *)ssym)[cum + j] = (uint16_t)s;
            else memset(ssym + cum, (int)s, f);
        } else if (form == R_PACKED) {
            uint32_t bits = wide ? 16 : 8;
            for (uint32_t j = 0; j < f; j++) st->e[cum + j] = (f - 1) << (bits + nb) | j << bits | s;
        } else if (form == R_PERM) {
            st->fc32[i] = st->fc[i];
            st->sym32[i] = s;
            memset(st->idx + cum, (int)i, f);
        } else {
            st->f1[s] = (uint16_t)(f - 1);
            for (uint32_t j = 0; j < f; j++) st->e[cum + j] = j << 16 | s;
        }
    }
    if (path == P_AVX2)
        for (uint32_t m = 0; m < 256; m++) /* lane l takes word c = popcount(m & (2^l - 1)): bytes 2c, 2c + 1, 0, 0 */
            for (uint32_t l = 0, c = 0; l < 8; l++) {
                uint8_t *p = st->perm[m] + 4 * l;
                p[0] = (uint8_t)(2 * c);
                p[1] = (uint8_t)(2 * c + 1);
                p[2] = p[3] = 0x80;
                c += m >> l & 1;
            }
    st->in = ins[0];
    st->words_off = r.pos + 4 * k;
    st->w = (left - 4 * k) / 2;
    st->win = r.buf;
    st->words = windowed ? r.buf : r.p + st->words_off;
    st->base = 0;
    st->end = windowed ? 0 : st->w; /* windowed: the first pull fills the window */
    st->lanes = k;
    st->n = n;
    st->nbits = nb;
    st->smask = (uint32_t)total - 1;
    out->st = st;
    out->in[0] = ins[0];
    return DCF_OK;
}
