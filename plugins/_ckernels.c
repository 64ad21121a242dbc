/* dcframe_plugins._ckernels: the huffman and rans inner loops in C99, the same work as _numba_kernels.py.

   Called only through _ckernels_api.py, which allocates the outputs as numpy arrays and hands every array over by
   the buffer protocol (no numpy headers: the build needs setuptools and a compiler, nothing else). Every function
   gives exactly what its numba twin gives (bytes, symbols, end positions, final states, word counts), so the
   stages' own checks raise the same FormatError. Sizes are checked against the buffers before any loop: a
   hostile stream's reads stay inside them (clamped or counted as in the numba kernels), and an inconsistent call
   raises ValueError instead of touching memory it does not own. The GIL is released around every loop: compress
   runs these chains in threads. On x86-64 the rans decoder runs 16 lanes per AVX-512 step or 8 per AVX2 step
   where the CPU has them (chosen at import; the compile flags stay generic), else the scalar loop: all three give
   the same symbols, states and word counts, and set_simd lets the tests run each. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- buffers ---------------------------------------------------------------------------------------------- */

typedef struct {
    Py_buffer view[8];
    int held;
} Buffers;

/* The C-contiguous buffer of `obj` with items of `itemsize` bytes (0: 1 or 2, a symbol array), writable if asked;
   its item count in *count. Returns the data, or NULL with an exception set. */
static void *take(Buffers *b, PyObject *obj, Py_ssize_t itemsize, int writable, Py_ssize_t *count, const char *what)
{
    Py_buffer *v = &b->view[b->held];
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, v, flags) < 0)
        return NULL;
    b->held++;
    int ok = itemsize ? v->itemsize == itemsize : (v->itemsize == 1 || v->itemsize == 2);
    if (!ok || v->len % v->itemsize) {
        PyErr_Format(PyExc_ValueError, "_ckernels: %s has items of %zd bytes", what, v->itemsize);
        return NULL;
    }
    *count = v->len / v->itemsize;
    return v->buf;
}

static void release(Buffers *b)
{
    while (b->held > 0)
        PyBuffer_Release(&b->view[--b->held]);
}

static PyObject *bad(const char *message)
{
    PyErr_SetString(PyExc_ValueError, message);
    return NULL;
}

/* A symbol of an array of 1- or 2-byte items. */
static inline uint32_t sym_at(const void *data, int wide, Py_ssize_t i)
{
    return wide ? ((const uint16_t *)data)[i] : ((const uint8_t *)data)[i];
}

static inline void sym_put(void *data, int wide, uint64_t i, uint32_t value)
{
    if (wide)
        ((uint16_t *)data)[i] = (uint16_t)value;
    else
        ((uint8_t *)data)[i] = (uint8_t)value;
}

/* ---- huffman ---------------------------------------------------------------------------------------------- */

/* The 64 stream bits from bit `pos` (LSB-first), the word index clamped to `qmax` (words[qmax + 1] exists). */
static inline uint64_t bits64(const uint64_t *words, uint64_t pos, uint64_t qmax)
{
    uint64_t q = pos >> 6, r = pos & 63;
    if (q > qmax)
        q = qmax;
    return (words[q] >> r) | ((words[q + 1] << 1) << (63 - r));
}

/* huffman_table(lengths int64, width, limit, lut int32[2^width]): the LSB-first decode table of the canonical code,
   entry = length << 16 | symbol, 0 where no code fits. */
static PyObject *huffman_table(PyObject *self, PyObject *args)
{
    PyObject *o_len, *o_lut;
    int width, limit;
    Buffers b = {.held = 0};
    Py_ssize_t n, nlut;
    (void)self;
    if (!PyArg_ParseTuple(args, "OiiO", &o_len, &width, &limit, &o_lut))
        return NULL;
    const int64_t *lengths = take(&b, o_len, 8, 0, &n, "lengths");
    int32_t *lut = lengths ? take(&b, o_lut, 4, 1, &nlut, "lut") : NULL;
    if (!lut)
        goto fail;
    if (width < 1 || width > limit || limit > 30 || nlut != (Py_ssize_t)1 << width || n > 1 << 16) {
        bad("_ckernels.huffman_table: width, limit or table size out of range");
        goto fail;
    }
    for (Py_ssize_t s = 0; s < n; s++)
        if (lengths[s] < 0 || lengths[s] > width) {
            bad("_ckernels.huffman_table: a code length exceeds the table width");
            goto fail;
        }
    Py_BEGIN_ALLOW_THREADS
    int64_t first[32] = {0};  /* per length: the running sum of 2^(limit - length) before it */
    memset(lut, 0, (size_t)nlut * sizeof *lut);
    for (Py_ssize_t s = 0; s < n; s++)
        if (lengths[s])
            first[lengths[s] + 1] += (int64_t)1 << (limit - lengths[s]);
    for (int k = 1; k <= width; k++)
        first[k + 1] += first[k];
    for (Py_ssize_t s = 0; s < n; s++) {
        int len = (int)lengths[s];
        if (!len)
            continue;
        int64_t c = first[len] >> (limit - len);
        first[len] += (int64_t)1 << (limit - len);
        uint32_t rev = 0;
        for (int k = 0; k < len; k++)  /* the code's MSB-first bits, read LSB-first */
            rev |= (uint32_t)((c >> k) & 1) << (len - 1 - k);
        int32_t entry = (int32_t)((len << 16) | s);
        for (uint32_t hi = 0; hi < (1u << (width - len)); hi++)
            lut[rev | (hi << len)] = entry;
    }
    Py_END_ALLOW_THREADS
    release(&b);
    Py_RETURN_NONE;
fail:
    release(&b);
    return NULL;
}

/* Segments [k, k + 4) decoded together (independent bit readers keep the core busy); positions end in p[]. */
static inline void huffman_four(const uint64_t *restrict words, uint64_t qmax, const int32_t *restrict lut,
                                uint64_t mask, int refill, uint64_t seg, uint64_t *restrict p, uint64_t o0,
                                void *restrict out, int wide)
{
    uint64_t o[4] = {o0, o0 + seg, o0 + 2 * seg, o0 + 3 * seg};
    for (uint64_t i = 0; i < seg; i += (uint64_t)refill) {
        uint64_t w[4];
        for (int m = 0; m < 4; m++)
            w[m] = bits64(words, p[m], qmax);
        uint64_t stop = i + (uint64_t)refill < seg ? i + (uint64_t)refill : seg;
        for (uint64_t j = i; j < stop; j++)
            for (int m = 0; m < 4; m++) {
                int32_t e = lut[w[m] & mask];
                uint64_t len = (uint64_t)(e >> 16);
                sym_put(out, wide, o[m] + j, (uint32_t)e & 0xFFFF);
                w[m] >>= len;
                p[m] += len;
            }
    }
}

/* ---- multi-symbol lookups (byte symbols) ----
   Entry v of the multi table holds the codes that follow one another from bit 0 of v while they fit in its `width`
   bits, at most MULTI: total length | symbols << 8 (a byte each) | count << 48. Decoding an entry is decoding its
   codes in turn, so where every read is exact (no clamping) the symbols and positions are the single lookups'. */
#define MULTI 4

/* The multi table from the complete code's lut (every entry valid); the mean count per entry. */
static double huffman_multi(const int32_t *lut, int width, uint64_t *multi)
{
    uint64_t size = (uint64_t)1 << width, mask = size - 1, total = 0;
    for (uint64_t v = 0; v < size; v++) {
        uint64_t e = 0, c = 0, len = 0;
        for (; c < MULTI; c++) {
            uint32_t t = (uint32_t)lut[(v >> len) & mask];
            uint64_t l = t >> 16;
            if (len + l > (uint64_t)width)
                break;
            e |= (uint64_t)(t & 0xFF) << (8 + 8 * c);
            len += l;
        }
        multi[v] = e | len | c << 48;
        total += c;
    }
    return (double)total / (double)size;
}

/* Four full segments (p[] their bit positions, o0 the first one's output) whose every read is exact: multi-symbol
   rounds while each lane has a round's worth of symbols left (so a round's 4-byte stores stay in its segment),
   then the rest of each segment one code at a time. */
static inline void huffman_four_multi(const uint64_t *restrict words, const uint64_t *restrict multi,
                                      const int32_t *restrict lut, int width, uint64_t seg, uint64_t *restrict p,
                                      uint64_t o0, uint8_t *restrict out)
{
    const uint64_t mask = ((uint64_t)1 << width) - 1;
    const int per = 64 / width, refill = 64 / width;
    uint64_t o[4] = {o0, o0 + seg, o0 + 2 * seg, o0 + 3 * seg}, end[4] = {o0 + seg, o0 + 2 * seg, o0 + 3 * seg,
                                                                         o0 + 4 * seg};
    const uint64_t round = (uint64_t)per * MULTI;
    for (;;) {
        int ok = 1;
        for (int m = 0; m < 4; m++)
            ok &= end[m] - o[m] >= round;
        if (!ok)
            break;
        for (int m = 0; m < 4; m++) {
            uint64_t w = bits64(words, p[m], UINT64_MAX), used = 0, at = o[m];
            for (int q = 0; q < per; q++) {
                uint64_t e = multi[w & mask];
                uint32_t four = (uint32_t)(e >> 8);
                memcpy(out + at, &four, 4);
                at += e >> 48;
                w >>= e & 63;
                used += e & 63;
            }
            o[m] = at;
            p[m] += used;
        }
    }
    for (int m = 0; m < 4; m++)
        for (uint64_t i = o[m]; i < end[m]; i += (uint64_t)refill) {
            uint64_t w = bits64(words, p[m], UINT64_MAX);
            uint64_t stop = i + (uint64_t)refill < end[m] ? i + (uint64_t)refill : end[m];
            for (uint64_t j = i; j < stop; j++) {
                int32_t e = lut[w & mask];
                out[j] = (uint8_t)(e & 0xFF);
                w >>= (uint64_t)(e >> 16);
                p[m] += (uint64_t)(e >> 16);
            }
        }
}

/* huffman_decode's loops: full segments four at a time (by multi-symbol lookups where `multi` is given and the
   four segments' reads are all exact: each of their codes ends before the last word, whatever the stream holds),
   the others one at a time. */
static inline void huffman_segments(const uint64_t *restrict words, uint64_t qmax, const int32_t *restrict lut,
                                    int width, Py_ssize_t seg, const int64_t *restrict starts,
                                    const int64_t *restrict nsyms, Py_ssize_t nseg, void *restrict out, int wide,
                                    int64_t *restrict end_pos, const uint64_t *restrict multi)
{
    uint64_t mask = ((uint64_t)1 << width) - 1, useg = (uint64_t)seg;
    int refill = 64 / width;  /* codes one 64-bit read always holds */
    Py_ssize_t full = nsyms[nseg - 1] != seg ? nseg - 1 : nseg;  /* segments of exactly `seg` symbols */
    Py_ssize_t k = 0;
    for (; k + 4 <= full; k += 4) {
        /* a segment reads no bit past start + seg x width: exact while that lies before word qmax + 1 */
        int exact = multi != NULL && !wide;
        for (int m = 0; m < 4 && exact; m++)
            exact = ((uint64_t)starts[k + m] << 3) + useg * (uint64_t)width < 64 * qmax;
        if (exact) {
            uint64_t p[4];
            for (int m = 0; m < 4; m++)
                p[m] = (uint64_t)starts[k + m] << 3;
            huffman_four_multi(words, multi, lut, width, useg, p, (uint64_t)k * useg, (uint8_t *)out);
            for (int m = 0; m < 4; m++)
                end_pos[k + m] = (int64_t)p[m];
            continue;
        }
        uint64_t p[4];
        for (int m = 0; m < 4; m++)
            p[m] = (uint64_t)starts[k + m] << 3;
        huffman_four(words, qmax, lut, mask, refill, useg, p, (uint64_t)k * useg, out, wide);
        for (int m = 0; m < 4; m++)
            end_pos[k + m] = (int64_t)p[m];
    }
    for (; k < nseg; k++) {
        uint64_t pos = (uint64_t)starts[k] << 3, o = (uint64_t)k * useg, n = (uint64_t)nsyms[k];
        for (uint64_t i = 0; i < n; i += (uint64_t)refill) {
            uint64_t w = bits64(words, pos, qmax);
            uint64_t stop = i + (uint64_t)refill < n ? i + (uint64_t)refill : n;
            for (uint64_t j = i; j < stop; j++) {
                int32_t e = lut[w & mask];
                sym_put(out, wide, o + j, (uint32_t)e & 0xFFFF);
                w >>= (uint64_t)(e >> 16);
                pos += (uint64_t)(e >> 16);
            }
        }
        end_pos[k] = (int64_t)pos;
    }
}

/* huffman_decode(words uint64, starts int64, nsyms int64, seg, lut int32, width, out, end_pos int64): every segment
   into out (1- or 2-byte symbols), each segment's end bit position into end_pos. Reads are clamped to the last two
   words, as the numba kernel's are: a segment running past the payload reads zeros there. */
static PyObject *huffman_decode(PyObject *self, PyObject *args)
{
    PyObject *o_words, *o_starts, *o_nsyms, *o_lut, *o_out, *o_end;
    Py_ssize_t seg;
    int width;
    Buffers b = {.held = 0};
    Py_ssize_t nwords, nseg, n2, nlut, count, n3;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOnOiOO", &o_words, &o_starts, &o_nsyms, &seg, &o_lut, &width, &o_out, &o_end))
        return NULL;
    const uint64_t *words = take(&b, o_words, 8, 0, &nwords, "words");
    const int64_t *starts = words ? take(&b, o_starts, 8, 0, &nseg, "starts") : NULL;
    const int64_t *nsyms = starts ? take(&b, o_nsyms, 8, 0, &n2, "nsyms") : NULL;
    const int32_t *lut = nsyms ? take(&b, o_lut, 4, 0, &nlut, "lut") : NULL;
    void *out = lut ? take(&b, o_out, 0, 1, &count, "out") : NULL;
    int64_t *end_pos = out ? take(&b, o_end, 8, 1, &n3, "end_pos") : NULL;
    if (!end_pos)
        goto fail;
    int wide = b.view[4].itemsize == 2;
    if (width < 1 || width > 16 || nlut != (Py_ssize_t)1 << width || nwords < 2 || nseg < 1 || n2 != nseg
        || n3 != nseg || seg < 1) {
        bad("_ckernels.huffman_decode: inconsistent buffer sizes");
        goto fail;
    }
    for (Py_ssize_t k = 0; k < nseg; k++)  /* every segment's output inside `out`, its start inside the payload */
        if (nsyms[k] < 0 || nsyms[k] > seg || (k < nseg - 1 && nsyms[k] != seg) || k * seg + nsyms[k] > count
            || starts[k] < 0 || starts[k] > 8 * nwords) {
            bad("_ckernels.huffman_decode: a segment lies outside the buffers");
            goto fail;
        }
    /* byte symbols of a complete code (every lut entry a code) with short enough codes: multi-symbol lookups,
       where an entry holds 2 codes or more on average (8-bit k-means indices hold about 1.5: no faster) and the
       table costs little beside the stream (at most 1 entry per 8 symbols) */
    uint64_t *multi = NULL;
    int complete = !wide && width <= 13 && (Py_ssize_t)4 * seg >= 64 && ((Py_ssize_t)8 << width) <= count;
    for (Py_ssize_t i = 0; i < nlut && complete; i++)
        complete = lut[i] != 0;
    if (complete && (multi = malloc(((size_t)1 << width) * sizeof *multi)) != NULL
        && huffman_multi(lut, width, multi) < 2.0) {
        free(multi);
        multi = NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    if (wide)  /* two copies of the loops, each with its own symbol width */
        huffman_segments(words, (uint64_t)nwords - 2, lut, width, seg, starts, nsyms, nseg, out, 1, end_pos, NULL);
    else
        huffman_segments(words, (uint64_t)nwords - 2, lut, width, seg, starts, nsyms, nseg, out, 0, end_pos, multi);
    Py_END_ALLOW_THREADS
    free(multi);
    release(&b);
    Py_RETURN_NONE;
fail:
    release(&b);
    return NULL;
}

/* Bits of every segment's codes -> the byte offset where each ends (ends[k]); the payload's size, or -1 for a
   symbol outside the length table. */
static inline int64_t pack_ends(const void *restrict symbols, int wide, Py_ssize_t count, const int64_t *restrict lens,
                         Py_ssize_t nlens, Py_ssize_t seg, int64_t *restrict ends)
{
    int64_t done = 0;
    for (Py_ssize_t k = 0, lo = 0; lo < count; k++, lo += seg) {
        Py_ssize_t hi = lo + seg < count ? lo + seg : count;
        int64_t bits = 0;
        for (Py_ssize_t i = lo; i < hi; i++) {
            uint32_t s = sym_at(symbols, wide, i);
            if (s >= (uint32_t)nlens)
                return -1;
            bits += lens[s];
        }
        done += (bits + 7) >> 3;
        ends[k] = done;
    }
    return done;
}

/* Every symbol's bit-reversed code LSB-first into payload[0:size), each segment from a byte boundary; 0, or -1 if
   the codes do not fit the size pack_ends gave. */
static inline int pack_codes(const void *restrict symbols, int wide, Py_ssize_t count, const int64_t *restrict lens,
                      const uint64_t *restrict rev, Py_ssize_t seg, uint8_t *restrict payload, int64_t size)
{
    int64_t at = 0;
    for (Py_ssize_t lo = 0; lo < count; lo += seg) {
        Py_ssize_t hi = lo + seg < count ? lo + seg : count;
        uint64_t acc = 0;
        int have = 0;
        for (Py_ssize_t i = lo; i < hi; i++) {
            uint32_t s = sym_at(symbols, wide, i);
            acc |= rev[s] << have;
            have += (int)lens[s];
            if (have >= 32) {  /* flush 4 bytes: at most 31 + 16 bits are ever held */
                if (at + 4 > size)
                    return -1;
                for (int m = 0; m < 4; m++)
                    payload[at + m] = (uint8_t)(acc >> (8 * m));
                at += 4;
                acc >>= 32;
                have -= 32;
            }
        }
        for (; have > 0; have -= 8) {
            if (at >= size)
                return -1;
            payload[at++] = (uint8_t)acc;
            acc >>= 8;
        }
    }
    return at == size ? 0 : -1;
}

/* huffman_pack(symbols, lens int64, rev uint64, seg, ends int64[ceil(count / seg)]) -> payload bytes; ends filled. */
static PyObject *huffman_pack(PyObject *self, PyObject *args)
{
    PyObject *o_sym, *o_lens, *o_rev, *o_ends, *payload = NULL;
    Py_ssize_t seg, count, nlens, nrev, nends;
    Buffers b = {.held = 0};
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOnO", &o_sym, &o_lens, &o_rev, &seg, &o_ends))
        return NULL;
    const void *symbols = take(&b, o_sym, 0, 0, &count, "symbols");
    const int64_t *lens = symbols ? take(&b, o_lens, 8, 0, &nlens, "lens") : NULL;
    const uint64_t *rev = lens ? take(&b, o_rev, 8, 0, &nrev, "rev") : NULL;
    int64_t *ends = rev ? take(&b, o_ends, 8, 1, &nends, "ends") : NULL;
    if (!ends)
        goto done;
    int wide = b.view[0].itemsize == 2;
    if (seg < 1 || nrev != nlens || nends != (count + seg - 1) / seg) {
        bad("_ckernels.huffman_pack: inconsistent buffer sizes");
        goto done;
    }
    for (Py_ssize_t s = 0; s < nlens; s++)
        if (lens[s] < 0 || lens[s] > 16 || rev[s] >> lens[s]) {
            bad("_ckernels.huffman_pack: a code longer than 16 bits");
            goto done;
        }
    int64_t size;
    Py_BEGIN_ALLOW_THREADS
    size = wide ? pack_ends(symbols, 1, count, lens, nlens, seg, ends)
                : pack_ends(symbols, 0, count, lens, nlens, seg, ends);
    Py_END_ALLOW_THREADS
    if (size < 0) {
        bad("_ckernels.huffman_pack: a symbol outside the code table");
        goto done;
    }
    payload = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size);
    if (!payload)
        goto done;
    uint8_t *bytes = (uint8_t *)PyBytes_AS_STRING(payload);  /* not shared before we return it */
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = wide ? pack_codes(symbols, 1, count, lens, rev, seg, bytes, size)
                  : pack_codes(symbols, 0, count, lens, rev, seg, bytes, size);
    Py_END_ALLOW_THREADS
    if (status) {
        Py_CLEAR(payload);
        bad("_ckernels.huffman_pack: the symbols changed while they were packed");
    }
done:
    release(&b);
    return payload;
}

/* ---- rans ------------------------------------------------------------------------------------------------- */

/* rans_table(symbols int64, freq int64, bits, table uint64[2^bits]): entry = freq << 32 | bias << 16 | symbol. */
static PyObject *rans_table(PyObject *self, PyObject *args)
{
    PyObject *o_sym, *o_freq, *o_table;
    int bits;
    Py_ssize_t n, nf, nt;
    Buffers b = {.held = 0};
    (void)self;
    if (!PyArg_ParseTuple(args, "OOiO", &o_sym, &o_freq, &bits, &o_table))
        return NULL;
    const int64_t *symbols = take(&b, o_sym, 8, 0, &n, "symbols");
    const int64_t *freq = symbols ? take(&b, o_freq, 8, 0, &nf, "freq") : NULL;
    uint64_t *table = freq ? take(&b, o_table, 8, 1, &nt, "table") : NULL;
    if (!table)
        goto fail;
    if (bits < 1 || bits > 16 || nt != (Py_ssize_t)1 << bits || nf != n) {
        bad("_ckernels.rans_table: inconsistent buffer sizes");
        goto fail;
    }
    int64_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (freq[i] < 0 || freq[i] > nt || symbols[i] < 0 || symbols[i] > 0xFFFF) {
            bad("_ckernels.rans_table: a frequency or symbol out of range");
            goto fail;
        }
        total += freq[i];
    }
    if (total != nt) {
        bad("_ckernels.rans_table: the frequencies do not sum to 2^bits");
        goto fail;
    }
    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t slot = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t head = ((uint64_t)freq[i] << 32) | (uint64_t)symbols[i];
        for (int64_t bias = 0; bias < freq[i]; bias++)
            table[slot++] = head | ((uint64_t)bias << 16);
    }
    Py_END_ALLOW_THREADS
    release(&b);
    Py_RETURN_NONE;
fail:
    release(&b);
    return NULL;
}

/* The decoder's lanes in lockstep (see rans_decode); the words read, or -1 after the first step that needed more
   than nwords. */
static inline int64_t decode_lanes(uint32_t *restrict state, uint64_t lanes, const uint16_t *restrict words,
                                   uint64_t nwords, uint64_t total, int bits, const uint64_t *restrict table,
                                   void *restrict out, int wide, uint32_t floor)
{
    uint32_t mask = (uint32_t)((1u << bits) - 1);
    uint64_t read = 0;
    for (uint64_t done = 0; done < total; done += lanes) {
        uint64_t n = total - done < lanes ? total - done : lanes;
        for (uint64_t j = 0; j < n; j++) {
            uint32_t s = state[j];
            uint64_t e = table[s & mask];
            sym_put(out, wide, done + j, (uint32_t)(e & 0xFFFF));
            s = (uint32_t)(e >> 32) * (s >> bits) + (uint32_t)((e >> 16) & 0xFFFF);
            uint32_t need = s < floor;
            uint32_t next[2] = {s, (s << 16) | words[read]};  /* the next word read before it is known to be needed */
            state[j] = next[need];
            read += need;
        }
        if (read > nwords)
            return -1;
    }
    return (int64_t)read;
}

/* The rans decode paths: the scalar loop above, AVX2 (8 lanes a step) and AVX-512 (16), each where the CPU has it. */
enum { CK_SIMD_SCALAR, CK_SIMD_AVX2, CK_SIMD_AVX512 };
static const char *const ck_simd_names[] = {"scalar", "avx2", "avx512"};
enum { CK_TWO, CK_PACKED, CK_PERM, CK_PERM256, CK_FORMS }; /* the AVX-512 path's table forms (see ck_tables16) */
static const char *const ck_form_names[CK_FORMS] = {"two", "packed", "perm", "perm256"};
static int ck_simd_max;  /* the best path the CPU runs (checked at import) */
static int ck_simd;      /* the path rans_decode takes: ck_simd_max, unless set_simd chose a lower one */
static int ck_form = -1; /* the AVX-512 path's table form: -1 the best for the table, else set_simd's */

/* What a vector path leaves after `done` symbols and `read` words (the last, partial step), by decode_lanes with the
   floor 2^16: the words read in all, or -1. */
static inline int64_t decode_rest(uint32_t *restrict state, uint64_t lanes, const uint16_t *restrict words,
                                  uint64_t nwords, uint64_t total, int bits, const uint64_t *restrict table,
                                  void *restrict out, int wide, uint64_t done, uint64_t read)
{
    if (done == total)
        return (int64_t)read;
    int64_t rest = decode_lanes(state, lanes, words + read, nwords - read, total - done, bits, table,
                                (uint8_t *)out + (wide ? 2 : 1) * done, wide, 0x10000u);
    return rest < 0 ? -1 : (int64_t)read + rest;
}

#if defined(__GNUC__) && defined(__x86_64__) && !defined(DCF_NO_SIMD)
#include <immintrin.h>
#define CK_AVX2 1 /* rans decode: 8 lanes per AVX2 step where the CPU has it (checked at import), else the loop above */

static uint8_t ck_perm[256][32]; /* need mask -> shuffle putting the k-th needed word into the k-th needing lane */

static void ck_perm_init(void)
{
    for (unsigned m = 0; m < 256; m++)
        for (unsigned lane = 0, taken = 0; lane < 8; lane++) {
            uint8_t *p = ck_perm[m] + 4 * lane; /* lane's 4 bytes; each 128-bit half holds all 8 words */
            p[0] = (uint8_t)(2 * taken);
            p[1] = (uint8_t)(2 * taken + 1);
            p[2] = p[3] = 0x80; /* zero: the word fills the state's low 16 bits only */
            taken += m >> lane & 1;
        }
}

/* One step of lanes j..j+7: both gathers (packed entry, symbol), 8 symbols stored at once, the states advanced,
   and the words the needing lanes take (in lane order) shuffled into place. Returns the words taken. */
__attribute__((target("avx2,popcnt"), always_inline)) static inline uint32_t ck_step8(uint32_t *xs, uint8_t *o, const int *fb,
                                                                       const void *ssym, int wide, __m256i mask,
                                                                       __m128i shift, const uint16_t *wp)
{
    const __m256i lo16 = _mm256_set1_epi32(0xFFFF), one = _mm256_set1_epi32(1);
    __m256i x = _mm256_loadu_si256((const __m256i *)(const void *)xs);
    __m256i slot = _mm256_and_si256(x, mask);
    __m256i e = _mm256_i32gather_epi32(fb, slot, 4); /* (freq - 1) << 16 | bias */
    __m256i k = wide ? _mm256_i32gather_epi32((const int *)ssym, slot, 2)
                     : _mm256_i32gather_epi32((const int *)ssym, slot, 1); /* the symbol in the low byte(s) */
    if (wide) {
        const __m256i pick = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1,
                                              0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1);
        __m256i s16 = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(k, pick), 0x08);
        _mm_storeu_si128((__m128i *)(void *)o, _mm256_castsi256_si128(s16));
    } else {
        const __m256i pick = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                              0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
        __m256i s8 = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(k, pick), _mm256_setr_epi32(0, 4, 1, 1, 1, 1, 1, 1));
        _mm_storel_epi64((__m128i *)(void *)o, _mm256_castsi256_si128(s8));
    }
    __m256i f = _mm256_add_epi32(_mm256_srli_epi32(e, 16), one);
    x = _mm256_add_epi32(_mm256_mullo_epi32(f, _mm256_srl_epi32(x, shift)), _mm256_and_si256(e, lo16));
    __m256i need = _mm256_cmpeq_epi32(_mm256_min_epu32(x, lo16), x); /* x < 2^16 */
    unsigned m = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(need));
    __m256i w = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)wp));
    w = _mm256_shuffle_epi8(w, _mm256_loadu_si256((const __m256i *)(const void *)ck_perm[m]));
    x = _mm256_blendv_epi8(x, _mm256_or_si256(_mm256_slli_epi32(x, 16), w), need);
    _mm256_storeu_si256((__m256i *)(void *)xs, x);
    return (uint32_t)__builtin_popcount(m);
}

/* decode_lanes with every whole step's groups of 8 lanes by AVX2 (the floor is 2^16), the other lanes and the last,
   partial step by the scalar loop: the same symbols, states and word count. A group loads 8 words at words[read],
   read <= nwords + j before lane j, so the load stays inside the nwords + lanes padded words. */
__attribute__((target("avx2,popcnt"), always_inline)) static inline int64_t decode_lanes_avx2(uint32_t *restrict state, uint64_t lanes,
                                                                        const uint16_t *restrict words,
                                                                        uint64_t nwords, uint64_t total, int bits,
                                                                        const uint64_t *restrict table,
                                                                        const int *fb, const void *ssym,
                                                                        void *restrict out, int wide)
{
    const __m256i mask = _mm256_set1_epi32((int)((1u << bits) - 1));
    const __m128i shift = _mm_cvtsi32_si128(bits);
    const uint64_t width = wide ? 2 : 1, whole = total / lanes * lanes;
    uint64_t read = 0, done = 0;
    for (; done < whole; done += lanes) {
        uint64_t j = 0;
        for (; j + 8 <= lanes; j += 8)
            read += ck_step8(state + j, (uint8_t *)out + width * (done + j), fb, ssym, wide, mask, shift,
                             words + read);
        for (; j < lanes; j++) {
            uint32_t s = state[j];
            uint64_t e = table[s & ((1u << bits) - 1)];
            sym_put(out, wide, done + j, (uint32_t)(e & 0xFFFF));
            s = (uint32_t)(e >> 32) * (s >> bits) + (uint32_t)((e >> 16) & 0xFFFF);
            uint32_t need = s < 0x10000u;
            uint32_t next[2] = {s, (s << 16) | words[read]};
            state[j] = next[need];
            read += need;
        }
        if (read > nwords)
            return -1;
    }
    return decode_rest(state, lanes, words, nwords, total, bits, table, out, wide, done, read);
}

/* decode_lanes_avx2 for each symbol width, `wide` a constant where it is inlined */
__attribute__((target("avx2,popcnt"))) static int64_t decode_avx2_8(uint32_t *state, uint64_t lanes,
                                                                    const uint16_t *words, uint64_t nwords,
                                                                    uint64_t total, int bits, const uint64_t *table,
                                                                    const int *fb, const void *ssym, void *out)
{
    return decode_lanes_avx2(state, lanes, words, nwords, total, bits, table, fb, ssym, out, 0);
}

__attribute__((target("avx2,popcnt"))) static int64_t decode_avx2_16(uint32_t *state, uint64_t lanes,
                                                                     const uint16_t *words, uint64_t nwords,
                                                                     uint64_t total, int bits, const uint64_t *table,
                                                                     const int *fb, const void *ssym, void *out)
{
    return decode_lanes_avx2(state, lanes, words, nwords, total, bits, table, fb, ssym, out, 1);
}

/* rans decode: 16 lanes per AVX-512 step where the CPU has F, BW, VL and VBMI2 (checked at import) */
#define CK_TARGET512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi2,popcnt")))

/* A 16-lane gather into a zeroed register: the gather's merge target is no false dependency on the last use of the
   register the compiler picks (a full-mask _mm512_i32gather_epi32 can chain a step's groups that way) */
#define CK_GATHER(index, base, scale) \
    _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), ck_all16(), index, base, scale)

/* All 16 lanes, as a mask the compiler does not see is full (it would drop the zeroing of the gather's target) */
CK_TARGET512 __attribute__((always_inline)) static inline __mmask16 ck_all16(void)
{
    __mmask16 k = 0xFFFF;
    __asm__("" : "+Yk"(k));
    return k;
}

/* The slot tables of the AVX-512 path, in one of its forms (see ck_tables16). */
typedef struct {
    const int *e;        /* per slot: (f - 1) << 16 | bias (TWO), (f - 1) << (sw + bits) | bias << sw | symbol
                            (PACKED, sw the symbol's 8 or 16 bits), bias << 16 | symbol (PERM256) */
    const void *ssym;    /* TWO: the symbol per slot (1 or 2 bytes); PERM: the symbol's index (a byte) per slot */
    uint32_t fc[32];     /* PERM: (f - 1) << 16 | cum of the symbol of index i */
    uint32_t sym[32];    /* PERM: the symbol of index i */
    uint16_t f1[256];    /* PERM256: f - 1 of byte symbol s (e: bias << 16 | s) */
} ck_tabs16;

/* One step of the 16 lanes j..j+15 whose bits are set in `live` (all 16, or the first few: `tail`): the symbols
   stored, the states advanced, and each needing lane's word taken in lane order. Returns the words taken.
   The words: the needing lanes (bits of `m`) take the next popcount(m) words at wp, spread out by a 16-bit expand
   from 16 words loaded at wp (in a tail, only its first lanes' count of words, by a masked load: masked-off words
   are not read). Before lane j of a step read <= nwords + j (each earlier lane read at most one word), so the
   words loaded, wp[0 .. 16) or wp[0 .. lanes - j) in a tail, lie inside the nwords + lanes padded words. */
CK_TARGET512 __attribute__((always_inline)) static inline uint32_t ck_step16(uint32_t *xs, uint8_t *o,
                                                                             const int *te, const void *ts,
                                                                             const __m512i *tp, int form, int wide,
                                                                             int bits, const uint16_t *wp,
                                                                             __mmask16 live, int tail)
{
    const __m512i lo16 = _mm512_set1_epi32(0xFFFF), one = _mm512_set1_epi32(1);
    const __m128i shift = _mm_cvtsi32_si128(bits);
    __m512i x = tail ? _mm512_maskz_loadu_epi32(live, xs) : _mm512_loadu_si512((const void *)xs);
    __m512i slot = _mm512_and_si512(x, _mm512_set1_epi32((int)((1u << bits) - 1)));
    __m512i f, bias, sym;
    if (form == CK_TWO) {
        __m512i e = CK_GATHER(slot, te, 4);
        sym = wide ? CK_GATHER(slot, ts, 2) : CK_GATHER(slot, ts, 1);
        f = _mm512_add_epi32(_mm512_srli_epi32(e, 16), one);
        bias = _mm512_and_si512(e, lo16);
    } else if (form == CK_PACKED) {
        const int sw = wide ? 16 : 8;
        __m512i e = CK_GATHER(slot, te, 4);
        f = _mm512_add_epi32(_mm512_srl_epi32(e, _mm_cvtsi32_si128(sw + bits)), one);
        bias = _mm512_and_si512(_mm512_srli_epi32(e, sw), _mm512_set1_epi32((int)((1u << bits) - 1)));
        sym = e;
    } else if (form == CK_PERM256) {
        __m512i e = CK_GATHER(slot, te, 4); /* bias << 16 | s: s picks the 16-bit f - 1 in the low word */
        __m512i r0 = _mm512_permutex2var_epi16(tp[0], e, tp[1]), r1 = _mm512_permutex2var_epi16(tp[2], e, tp[3]);
        __m512i r2 = _mm512_permutex2var_epi16(tp[4], e, tp[5]), r3 = _mm512_permutex2var_epi16(tp[6], e, tp[7]);
        __mmask16 b6 = _mm512_test_epi32_mask(e, _mm512_set1_epi32(64)), b7 = _mm512_test_epi32_mask(e, _mm512_set1_epi32(128));
        __m512i f1 = _mm512_mask_mov_epi32(_mm512_mask_mov_epi32(r0, b6, r1), b7, _mm512_mask_mov_epi32(r2, b6, r3));
        f = _mm512_add_epi32(_mm512_and_si512(f1, lo16), one);
        bias = _mm512_srli_epi32(e, 16);
        sym = e;
    } else {
        __m512i i = CK_GATHER(slot, ts, 1); /* the index in the low 5 bits: the rest ignored */
        __m512i fc = _mm512_permutex2var_epi32(tp[0], i, tp[1]);
        sym = _mm512_permutex2var_epi32(tp[2], i, tp[3]);
        f = _mm512_add_epi32(_mm512_srli_epi32(fc, 16), one);
        bias = _mm512_sub_epi32(slot, _mm512_and_si512(fc, lo16));
    }
    if (wide) {
        if (tail)
            _mm512_mask_cvtepi32_storeu_epi16(o, live, sym);
        else
            _mm256_storeu_si256((__m256i *)(void *)o, _mm512_cvtepi32_epi16(sym));
    } else {
        if (tail)
            _mm512_mask_cvtepi32_storeu_epi8(o, live, sym);
        else
            _mm_storeu_si128((__m128i *)(void *)o, _mm512_cvtepi32_epi8(sym));
    }
    x = _mm512_add_epi32(_mm512_mullo_epi32(f, _mm512_srl_epi32(x, shift)), bias);
    __mmask16 m = _mm512_mask_cmplt_epu32_mask(live, x, _mm512_set1_epi32(0x10000));
    __m256i w16 = tail ? _mm256_maskz_loadu_epi16(live, wp) : _mm256_loadu_si256((const __m256i *)(const void *)wp);
    __asm__("" : "+v"(w16)); /* a plain load, then the expand: not folded into vpexpandw from memory (slower) */
    __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_expand_epi16(m, w16));
    x = _mm512_mask_or_epi32(x, m, _mm512_slli_epi32(x, 16), w);
    if (tail)
        _mm512_mask_storeu_epi32(xs, live, x);
    else
        _mm512_storeu_si512((void *)xs, x);
    return (uint32_t)_mm_popcnt_u32((unsigned)m);
}

/* decode_lanes with every whole step by AVX-512, 16 lanes at a time and the last 1..15 of the K lanes by one masked
   step (the floor is 2^16); the last, partial step by the scalar loop: the same symbols, states and word count. */
CK_TARGET512 __attribute__((always_inline)) static inline int64_t decode_lanes_avx512(
    uint32_t *restrict state, uint64_t lanes, const uint16_t *restrict words, uint64_t nwords, uint64_t total,
    int bits, const uint64_t *restrict table, const ck_tabs16 *t, int form, void *restrict out, int wide)
{
    const uint64_t width = wide ? 2 : 1, whole = total / lanes * lanes;
    const int *te = t->e;
    const void *ts = t->ssym;
    __m512i tp[8];
    if (form == CK_PERM256)
        for (int k = 0; k < 8; k++)
            tp[k] = _mm512_loadu_si512((const void *)(t->f1 + 32 * k));
    else if (form == CK_PERM)
        for (int k = 0; k < 2; k++) {
            tp[k] = _mm512_loadu_si512((const void *)(t->fc + 16 * k));
            tp[2 + k] = _mm512_loadu_si512((const void *)(t->sym + 16 * k));
        }
    const __mmask16 rest16 = (__mmask16)((1u << (lanes % 16)) - 1);
    uint64_t read = 0, done = 0;
    for (; done < whole; done += lanes) {
        uint64_t j = 0;
        for (; j + 16 <= lanes; j += 16)
            read += ck_step16(state + j, (uint8_t *)out + width * (done + j), te, ts, tp, form, wide, bits, words + read,
                              0xFFFF, 0);
        if (j < lanes)
            read += ck_step16(state + j, (uint8_t *)out + width * (done + j), te, ts, tp, form, wide, bits, words + read,
                              rest16, 1);
        if (read > nwords)
            return -1;
    }
    return decode_rest(state, lanes, words, nwords, total, bits, table, out, wide, done, read);
}

/* decode_lanes_avx512 for each table form and symbol width, both constants where it is inlined */
#define CK_DECODE512(name, form, wide)                                                                           \
    CK_TARGET512 static int64_t name(uint32_t *state, uint64_t lanes, const uint16_t *words, uint64_t nwords,     \
                                     uint64_t total, int bits, const uint64_t *table, const ck_tabs16 *t,        \
                                     void *out)                                                                  \
    {                                                                                                            \
        return decode_lanes_avx512(state, lanes, words, nwords, total, bits, table, t, form, out, wide);         \
    }
CK_DECODE512(decode512_two8, CK_TWO, 0)
CK_DECODE512(decode512_two16, CK_TWO, 1)
CK_DECODE512(decode512_packed8, CK_PACKED, 0)
CK_DECODE512(decode512_packed16, CK_PACKED, 1)
CK_DECODE512(decode512_perm8, CK_PERM, 0)
CK_DECODE512(decode512_perm16, CK_PERM, 1)
CK_DECODE512(decode512_perm256, CK_PERM256, 0)

typedef int64_t (*ck_decode512_fn)(uint32_t *, uint64_t, const uint16_t *, uint64_t, uint64_t, int,
                                   const uint64_t *, const ck_tabs16 *, void *);
static const ck_decode512_fn ck_decode512[CK_FORMS][2] = {{decode512_two8, decode512_two16},
                                                          {decode512_packed8, decode512_packed16},
                                                          {decode512_perm8, decode512_perm16},
                                                          {decode512_perm256, NULL}};

/* The AVX-512 path's tables for the slot table `table` (2^bits entries, as rans_table writes them: runs of
   freq << 32 | bias << 16 | symbol, bias 0 .. freq - 1), in e (2^bits ints) and ssym (2^bits x 2 + 4 bytes: a 4-byte
   gather at the last slot stays inside). Returns the form, `force` if it is not -1 and fits the table, else the
   fastest that fits (measured on a Zen-class AVX-512 core, 10^7 symbols at 2^14 slots):
   - PACKED, where f - 1, the bias and the symbol fit 32 bits (2 bits + 8 or 16 <= 32): one gather, nothing else;
   - PERM, where at most 32 symbols are used: one gather of a byte table of symbol indices (2^bits bytes: 16 KiB at
     2^14 slots, inside L1 where the 64 KiB of 32-bit entries are not), then (f - 1) << 16 | cum and the symbol by
     two 32-entry in-register lookups (vpermi2d); 5-bit symbols decode at about 1.55x the speed of TWO;
   - PERM256, for byte symbols: one gather of bias << 16 | symbol, then f - 1 by four 64-entry 16-bit in-register
     lookups (vpermi2w) and three blends: about 1.25x TWO;
   - TWO (16-bit symbols over 2^8 slots with more than 32 used): the AVX2 path's two gathers, entry and symbol. */
static int ck_tables16(const uint64_t *table, int bits, int wide, int *e, uint8_t *ssym, ck_tabs16 *t, int force)
{
    size_t slots = (size_t)1 << bits;
    int used = 0;
    for (size_t i = 0; i < slots; i++)
        used += ((table[i] >> 16) & 0xFFFF) == 0;
    const int sw = wide ? 16 : 8;
    int form = force >= 0 ? force : 2 * bits + sw <= 32 ? CK_PACKED : used <= 32 ? CK_PERM : CK_PERM256;
    if (form == CK_PERM && used > 32)
        form = CK_TWO;
    if (form == CK_PACKED && 2 * bits + sw > 32)
        form = CK_TWO;
    if (form == CK_PERM256) {
        int small = !wide;
        memset(t->f1, 0, sizeof t->f1);
        for (size_t i = 0; i < slots && small; i++)
            small = (table[i] & 0xFFFF) < 256;
        if (!small)
            form = CK_TWO;
    }
    t->e = e;
    t->ssym = ssym;
    memset(ssym + (wide ? 2 : 1) * slots, 0, 4);
    if (form == CK_PERM) {
        uint32_t fc[32] = {0}, sym[32] = {0};
        int k = -1;
        for (size_t i = 0; i < slots; i++) {
            uint64_t en = table[i];
            uint32_t b = (uint32_t)(en >> 16 & 0xFFFF);
            if (b == 0) {
                k++;
                fc[k] = (uint32_t)((en >> 32) - 1) << 16 | (uint32_t)(i - b);
                sym[k] = (uint32_t)(en & 0xFFFF);
            }
            ssym[i] = (uint8_t)k;
        }
        memcpy(t->fc, fc, sizeof fc);
        memcpy(t->sym, sym, sizeof sym);
        return form;
    }
    for (size_t i = 0; i < slots; i++) {
        uint64_t en = table[i];
        uint32_t f1 = (uint32_t)((en >> 32) - 1), b = (uint32_t)(en >> 16 & 0xFFFF), s = (uint32_t)(en & 0xFFFF);
        if (form == CK_PACKED) {
            e[i] = (int)(f1 << (sw + bits) | b << sw | (wide ? s : s & 0xFF));
        } else if (form == CK_PERM256) {
            e[i] = (int)(b << 16 | s);
            t->f1[s] = (uint16_t)f1;
        } else {
            e[i] = (int)(f1 << 16 | b);
            if (wide)
                ((uint16_t *)(void *)ssym)[i] = (uint16_t)s;
            else
                ssym[i] = (uint8_t)s;
        }
    }
    return form;
}
#endif

/* Whether the slot table is one rans_table writes (runs of one symbol and frequency f, biases 0 .. f - 1, the
   frequencies at most 2^bits): the vector paths' tables assume it (f - 1 in 16 bits, a symbol's slots contiguous);
   any other table takes the scalar loop, so every path decodes it alike. */
static int ck_table_ok(const uint64_t *table, int bits)
{
    const uint64_t slots = (uint64_t)1 << bits;
    for (uint64_t i = 0; i < slots;) {
        uint64_t head = table[i] & ~((uint64_t)0xFFFF << 16), f = table[i] >> 32; /* freq << 32 | symbol */
        if (f < 1 || f > slots - i)
            return 0;
        for (uint64_t b = 0; b < f; b++)
            if (table[i + b] != (head | b << 16))
                return 0;
        i += f;
    }
    return 1;
}

/* rans_decode(x int64[lanes], words uint16[>= nwords + lanes], nwords, count, bits, table uint64, out, low) -> the
   words read, or -1 (truncated); x holds the final states on success. One step reads at most one word per lane,
   and the step that overruns nwords is the last: reads stay inside the zero-padded words. */
static PyObject *rans_decode(PyObject *self, PyObject *args)
{
    PyObject *o_x, *o_words, *o_table, *o_out;
    Py_ssize_t nwords, count, lanes, nw, nt, nout;
    int bits;
    long long low;
    Buffers b = {.held = 0};
    (void)self;
    if (!PyArg_ParseTuple(args, "OOnniOOL", &o_x, &o_words, &nwords, &count, &bits, &o_table, &o_out, &low))
        return NULL;
    int64_t *x = take(&b, o_x, 8, 1, &lanes, "x");
    const uint16_t *words = x ? take(&b, o_words, 2, 0, &nw, "words") : NULL;
    const uint64_t *table = words ? take(&b, o_table, 8, 0, &nt, "table") : NULL;
    void *out = table ? take(&b, o_out, 0, 1, &nout, "out") : NULL;
    if (!out)
        goto fail;
    int wide = b.view[3].itemsize == 2;
    if (bits < 1 || bits > 16 || nt != (Py_ssize_t)1 << bits || lanes < 1 || nwords < 0 || nw < nwords + lanes
        || nout != count || low < 1 || low > 0xFFFF + 1) {
        bad("_ckernels.rans_decode: inconsistent buffer sizes");
        goto fail;
    }
    uint32_t *state = malloc((size_t)lanes * sizeof *state);
    if (!state) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t j = 0; j < lanes; j++) {
        if (x[j] < 0 || x[j] > 0xFFFFFFFFLL) {
            free(state);
            bad("_ckernels.rans_decode: a state outside 32 bits");
            goto fail;
        }
        state[j] = (uint32_t)x[j];
    }
    int64_t read;
#ifdef CK_AVX2
    if (ck_simd >= CK_SIMD_AVX2 && low == 0x10000 && count >= lanes && (lanes >= 8 || ck_simd == CK_SIMD_AVX512)
        && ck_table_ok(table, bits)) {
        /* the slot tables the gathers read: packed entries, and the symbols (or symbol indices) padded for a 4-byte
           load at the last */
        size_t slots = (size_t)1 << bits;
        int *fb = malloc(slots * sizeof *fb);
        uint8_t *ssym = malloc(slots * 2 + 4);
        ck_tabs16 *t16 = malloc(sizeof *t16);
        if (!fb || !ssym || !t16) {
            free(fb);
            free(ssym);
            free(t16);
            free(state);
            PyErr_NoMemory();
            goto fail;
        }
        Py_BEGIN_ALLOW_THREADS
        if (ck_simd == CK_SIMD_AVX512) {
            int form = ck_tables16(table, bits, wide, fb, ssym, t16, ck_form);
            read = ck_decode512[form][wide](state, (uint64_t)lanes, words, (uint64_t)nwords, (uint64_t)count, bits,
                                            table, t16, out);
        } else {
            for (size_t i = 0; i < slots; i++) {
                uint64_t e = table[i];
                fb[i] = (int)((uint32_t)((e >> 32) - 1) << 16 | (uint32_t)(e >> 16 & 0xFFFF));
                if (wide)
                    ((uint16_t *)(void *)ssym)[i] = (uint16_t)(e & 0xFFFF);
                else
                    ssym[i] = (uint8_t)(e & 0xFF);
            }
            memset(ssym + (wide ? 2 : 1) * slots, 0, 4);
            read = (wide ? decode_avx2_16 : decode_avx2_8)(state, (uint64_t)lanes, words, (uint64_t)nwords,
                                                           (uint64_t)count, bits, table, fb, ssym, out);
        }
        if (read >= 0)
            for (Py_ssize_t j = 0; j < lanes; j++)
                x[j] = state[j];
        Py_END_ALLOW_THREADS
        free(fb);
        free(ssym);
        free(t16);
        free(state);
        release(&b);
        return PyLong_FromLongLong(read);
    }
#endif
    Py_BEGIN_ALLOW_THREADS
    if (wide)  /* two copies of the loop, each with its own symbol width */
        read = decode_lanes(state, (uint64_t)lanes, words, (uint64_t)nwords, (uint64_t)count, bits, table, out, 1,
                            (uint32_t)low);
    else
        read = decode_lanes(state, (uint64_t)lanes, words, (uint64_t)nwords, (uint64_t)count, bits, table, out, 0,
                            (uint32_t)low);
    if (read >= 0)
        for (Py_ssize_t j = 0; j < lanes; j++)
            x[j] = state[j];
    Py_END_ALLOW_THREADS
    free(state);
    release(&b);
    return PyLong_FromLongLong(read);
fail:
    release(&b);
    return NULL;
}

/* The Exp-Golomb reader (see golomb_pairs): 0 ok, 1 a code runs past the bits or is too long; *stop the bit
   position past the last code read. */
static int golomb_read(const uint8_t *bits, int64_t size, int64_t pairs, int order0, int order1, int max_width,
                       int64_t *first, int64_t *second, int64_t *stop)
{
    int64_t p = 0;
    for (int64_t i = 0; i < 2 * pairs; i++) {
        int order = i % 2 == 0 ? order0 : order1;
        int64_t z = 0;
        while (p + z < size && bits[p + z] == 0 && z + order <= max_width)
            z++;
        if (p + z >= size || z + order > max_width || p + 2 * z + 1 + order > size) {
            *stop = p;
            return 1;
        }
        int64_t v = 1;
        for (int64_t k = p + z + 1; k < p + 2 * z + 1 + order; k++)
            v = (v << 1) | bits[k];
        v -= (int64_t)1 << order;
        if (i % 2 == 0)
            first[i / 2] = v;
        else
            second[i / 2] = v;
        p += 2 * z + 1 + order;
    }
    *stop = p;
    return 0;
}

/* golomb_pairs(bits uint8 (one bit per byte), pairs, order0, order1, max_width, first int64, second int64) ->
   (status, stop): `pairs` pairs of Exp-Golomb codes, the numpy path's golomb_unpack one code after the other. */
static PyObject *golomb_pairs(PyObject *self, PyObject *args)
{
    PyObject *o_bits, *o_first, *o_second;
    Py_ssize_t pairs, size, n1, n2;
    int order0, order1, max_width;
    Buffers b = {.held = 0};
    (void)self;
    if (!PyArg_ParseTuple(args, "OniiiOO", &o_bits, &pairs, &order0, &order1, &max_width, &o_first, &o_second))
        return NULL;
    const uint8_t *bits = take(&b, o_bits, 1, 0, &size, "bits");
    int64_t *first = bits ? take(&b, o_first, 8, 1, &n1, "first") : NULL;
    int64_t *second = first ? take(&b, o_second, 8, 1, &n2, "second") : NULL;
    if (!second)
        goto fail;
    if (pairs < 0 || n1 != pairs || n2 != pairs || max_width < 0 || max_width > 32 || order0 < 0 || order1 < 0
        || order0 > max_width || order1 > max_width) {
        bad("_ckernels.golomb_pairs: inconsistent arguments");
        goto fail;
    }
    int status;
    int64_t stop;
    Py_BEGIN_ALLOW_THREADS
    status = golomb_read(bits, size, pairs, order0, order1, max_width, first, second, &stop);
    Py_END_ALLOW_THREADS
    release(&b);
    return Py_BuildValue("iL", status, (long long)stop);
fail:
    release(&b);
    return NULL;
}

/* The encoder's lanes run backwards from state `low` (see rans_encode): the index of the first word written (from
   the back of words), or -1 for a symbol outside the table or of frequency 0. */
static inline Py_ssize_t encode_lanes(const void *restrict symbols, int wide, Py_ssize_t count,
                                      const int64_t *restrict freq, const int64_t *restrict cum,
                                      const double *restrict inverse, Py_ssize_t alphabet, int bits, Py_ssize_t lanes,
                                      int64_t *restrict x, uint16_t *restrict words)
{
    Py_ssize_t at = count;
    for (Py_ssize_t i0 = ((count - 1) / lanes) * lanes; i0 >= 0; i0 -= lanes) {
        Py_ssize_t n = count - i0 < lanes ? count - i0 : lanes;
        for (Py_ssize_t j = n - 1; j >= 0; j--) {
            uint32_t s = sym_at(symbols, wide, i0 + j);
            if (s >= (uint32_t)alphabet || freq[s] <= 0)
                return -1;
            int64_t f = freq[s], state = x[j];
            int64_t emit = state >= f << (32 - bits);  /* branch-free: at > i0 + j, so words[at - 1] exists */
            words[at - 1] = (uint16_t)(state & 0xFFFF);  /* kept only if `at` moves past it */
            at -= emit;
            state >>= emit << 4;
            /* state // f by a float multiply: state < 2^32, so state x (1/f) is within 1 of the quotient, and one
               correction of the remainder makes it exact (a 64-bit division costs several times more) */
            int64_t q = (int64_t)((double)state * inverse[s]);
            int64_t r = state - q * f;
            if (r >= f) {
                q++;
                r -= f;
            } else if (r < 0) {
                q--;
                r += f;
            }
            x[j] = (q << bits) + r + cum[s];
        }
    }
    return at;
}

/* rans_encode(symbols, freq int64, cum int64, bits, lanes, low, x int64[lanes], words uint16[count]) -> at: the
   final states in x, the words in decoder read order in words[at:]. */
static PyObject *rans_encode(PyObject *self, PyObject *args)
{
    PyObject *o_sym, *o_freq, *o_cum, *o_x, *o_words;
    Py_ssize_t lanes, count, nf, nc, nx, nw;
    int bits;
    long long low;
    Buffers b = {.held = 0};
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOinLOO", &o_sym, &o_freq, &o_cum, &bits, &lanes, &low, &o_x, &o_words))
        return NULL;
    const void *symbols = take(&b, o_sym, 0, 0, &count, "symbols");
    const int64_t *freq = symbols ? take(&b, o_freq, 8, 0, &nf, "freq") : NULL;
    const int64_t *cum = freq ? take(&b, o_cum, 8, 0, &nc, "cum") : NULL;
    int64_t *x = cum ? take(&b, o_x, 8, 1, &nx, "x") : NULL;
    uint16_t *words = x ? take(&b, o_words, 2, 1, &nw, "words") : NULL;
    if (!words)
        goto fail;
    int wide = b.view[0].itemsize == 2;
    if (bits < 1 || bits > 16 || lanes < 1 || nx != lanes || nc != nf || nw != count || count < 1 || low < 1
        || low > 0xFFFF + 1) {
        bad("_ckernels.rans_encode: inconsistent arguments");
        goto fail;
    }
    for (Py_ssize_t s = 0; s < nf; s++)
        if (freq[s] < 0 || freq[s] > (int64_t)1 << bits || cum[s] < 0 || cum[s] + freq[s] > (int64_t)1 << bits) {
            bad("_ckernels.rans_encode: a frequency outside the table");
            goto fail;
        }
    double *inverse = malloc((size_t)(nf ? nf : 1) * sizeof *inverse);
    if (!inverse) {
        PyErr_NoMemory();
        goto fail;
    }
    Py_ssize_t at;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t s = 0; s < nf; s++)
        inverse[s] = freq[s] ? 1.0 / (double)freq[s] : 0.0;
    for (Py_ssize_t j = 0; j < lanes; j++)
        x[j] = low;
    at = wide ? encode_lanes(symbols, 1, count, freq, cum, inverse, nf, bits, lanes, x, words)
              : encode_lanes(symbols, 0, count, freq, cum, inverse, nf, bits, lanes, x, words);
    Py_END_ALLOW_THREADS
    free(inverse);
    if (at < 0) {
        bad("_ckernels.rans_encode: a symbol outside the frequency table");
        goto fail;
    }
    release(&b);
    return PyLong_FromSsize_t(at);
fail:
    release(&b);
    return NULL;
}

/* ---- encoder statistics ---------------------------------------------------------------------------------- */

/* Occurrences of each symbol added to counts[0:2^(8 x itemsize)); four tables of 32-bit counters in turn (repeated
   symbols do not wait on one counter), in pieces of 2^30 symbols so no counter overflows. */
static void count_symbols(const void *symbols, int wide, Py_ssize_t count, int64_t *counts, uint32_t *tables)
{
    Py_ssize_t range = wide ? 1 << 16 : 1 << 8;
    for (Py_ssize_t lo = 0; lo < count; lo += (Py_ssize_t)1 << 30) {
        Py_ssize_t hi = count - lo > (Py_ssize_t)1 << 30 ? lo + ((Py_ssize_t)1 << 30) : count, i = lo;
        memset(tables, 0, 4 * (size_t)range * sizeof *tables);
        if (wide) {
            const uint16_t *s = symbols;
            for (; i + 4 <= hi; i += 4) {
                tables[s[i]]++;
                tables[range + s[i + 1]]++;
                tables[2 * range + s[i + 2]]++;
                tables[3 * range + s[i + 3]]++;
            }
            for (; i < hi; i++)
                tables[s[i]]++;
        } else {
            const uint8_t *s = symbols;
            for (; i + 4 <= hi; i += 4) {
                tables[s[i]]++;
                tables[range + s[i + 1]]++;
                tables[2 * range + s[i + 2]]++;
                tables[3 * range + s[i + 3]]++;
            }
            for (; i < hi; i++)
                tables[s[i]]++;
        }
        for (Py_ssize_t v = 0; v < range; v++)
            counts[v] += (int64_t)tables[v] + tables[range + v] + tables[2 * range + v] + tables[3 * range + v];
    }
}

/* histogram(symbols, counts int64[alphabet]) -> None: counts[v] = occurrences of v (np.bincount with minlength);
   ValueError if a symbol is >= alphabet. */
static PyObject *histogram(PyObject *self, PyObject *args)
{
    PyObject *o_sym, *o_counts;
    Py_ssize_t count, alphabet;
    Buffers b = {.held = 0};
    (void)self;
    if (!PyArg_ParseTuple(args, "OO", &o_sym, &o_counts))
        return NULL;
    const void *symbols = take(&b, o_sym, 0, 0, &count, "symbols");
    int64_t *counts = symbols ? take(&b, o_counts, 8, 1, &alphabet, "counts") : NULL;
    if (!counts)
        goto fail;
    int wide = b.view[0].itemsize == 2;
    Py_ssize_t range = wide ? 1 << 16 : 1 << 8;
    int64_t *all = calloc((size_t)range, sizeof *all);
    uint32_t *tables = malloc(4 * (size_t)range * sizeof *tables);
    if (!all || !tables) {
        free(all);
        free(tables);
        PyErr_NoMemory();
        goto fail;
    }
    Py_BEGIN_ALLOW_THREADS
    count_symbols(symbols, wide, count, all, tables);
    Py_END_ALLOW_THREADS
    int outside = 0;
    for (Py_ssize_t v = 0; v < range; v++) {
        if (v < alphabet)
            counts[v] = all[v];
        else
            outside |= all[v] != 0;
    }
    for (Py_ssize_t v = range; v < alphabet; v++)
        counts[v] = 0;
    free(all);
    free(tables);
    if (outside) {
        bad("_ckernels.histogram: a symbol outside the alphabet");
        goto fail;
    }
    release(&b);
    Py_RETURN_NONE;
fail:
    release(&b);
    return NULL;
}

/* floor(log2(v)) of v >= 1. */
static inline int floor_log2(uint64_t v)
{
#if defined(__GNUC__) || defined(__clang__)
    return 63 - __builtin_clzll(v);
#else
    int m = 0;
    while (v >>= 1)
        m++;
    return m;
#endif
}

/* golomb_costs(values int64, out int64[orders]): out[k] = the bits of every value's Exp-Golomb code of order k,
   sum of 2m - k + 1 where v + 2^k has m + 1 bits (rans.best_order's costs; integers, so exactly numpy's). */
static PyObject *golomb_costs(PyObject *self, PyObject *args)
{
    PyObject *o_values, *o_out;
    Py_ssize_t n, orders;
    Buffers b = {.held = 0};
    (void)self;
    if (!PyArg_ParseTuple(args, "OO", &o_values, &o_out))
        return NULL;
    const int64_t *values = take(&b, o_values, 8, 0, &n, "values");
    int64_t *out = values ? take(&b, o_out, 8, 1, &orders, "out") : NULL;
    if (!out)
        goto fail;
    int fits = orders >= 1 && orders <= 32;
    for (Py_ssize_t i = 0; i < n && fits; i++)
        fits = values[i] >= 0 && values[i] < (int64_t)1 << 52;
    if (!fits) {
        bad("_ckernels.golomb_costs: a value outside 0..2^52 or too many orders");
        goto fail;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t k = 0; k < orders; k++) {
        int64_t bits = 0;
        for (Py_ssize_t i = 0; i < n; i++)
            bits += 2 * floor_log2((uint64_t)values[i] + ((uint64_t)1 << k)) - k + 1;
        out[k] = bits;
    }
    Py_END_ALLOW_THREADS
    release(&b);
    Py_RETURN_NONE;
fail:
    release(&b);
    return NULL;
}

typedef struct {
    double key;
    int32_t index;
} Keyed;

/* Ascending key, then ascending index: the order of numpy's stable argsort (no NaN keys here). */
static int by_key(const void *a, const void *b)
{
    const Keyed *p = a, *q = b;
    if (p->key != q->key)
        return p->key < q->key ? -1 : 1;
    return (p->index > q->index) - (p->index < q->index);
}

/* order[0:n) = the stable argsort of keys (sorted in work). */
static void argsort(const double *keys, Py_ssize_t n, Keyed *work, int32_t *order)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        work[i].key = keys[i];
        work[i].index = (int32_t)i;
    }
    qsort(work, (size_t)n, sizeof *work, by_key);
    for (Py_ssize_t i = 0; i < n; i++)
        order[i] = work[i].index;
}

/* rans.normalize_all's bisection for one total: max(1, floor(share x scale)) at the largest scale of 64 bisection
   steps whose sum is <= total, into freq (the same float operations as the numpy path, so the same integers). */
static void bisect_fill(const double *share, Py_ssize_t n, int64_t total, int64_t *freq)
{
    double lo = 0.0, hi = 2.0 * (double)total + 1;
    for (int step = 0; step < 64; step++) {
        double mid = (lo + hi) / 2, sum = 0.0;
        for (Py_ssize_t i = 0; i < n; i++) {
            double fill = floor(share[i] * mid);
            sum += fill > 1.0 ? fill : 1.0;
        }
        if (sum <= (double)total)
            lo = mid;
        else
            hi = mid;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        double fill = floor(share[i] * lo);
        freq[i] = (int64_t)(fill > 1.0 ? fill : 1.0);
    }
}

/* rans._settle for one total: hand out the units left over, then move single units while that lowers the cost; the
   log2 steps come from the tables the numpy path uses too (up[f] = log2((f + 1) / f), down[f] = log2(f / (f - 1))),
   so both paths compare the same numbers. -1 if a frequency leaves the tables. */
static int settle(const int64_t *counts, Py_ssize_t n, int64_t total, const double *up, const double *down,
                  Py_ssize_t ntab, int rounds, int64_t *freq, double *gain, double *loss, Keyed *work, int32_t *upo,
                  int32_t *downo)
{
    for (;;) {
        int64_t left = total;
        for (Py_ssize_t i = 0; i < n; i++)
            left -= freq[i];
        if (left <= 0)
            break;
        for (Py_ssize_t i = 0; i < n; i++) {
            if (freq[i] < 1 || freq[i] >= ntab)
                return -1;
            gain[i] = -((double)counts[i] * up[freq[i]]);
        }
        argsort(gain, n, work, upo);
        for (Py_ssize_t i = 0; i < n && i < left; i++)
            freq[upo[i]]++;
    }
    for (int round = 0; round < rounds; round++) {
        for (Py_ssize_t i = 0; i < n; i++) {
            if (freq[i] < 1 || freq[i] >= ntab)
                return -1;
            gain[i] = -((double)counts[i] * up[freq[i]]);
            loss[i] = freq[i] > 1 ? (double)counts[i] * down[freq[i]] : INFINITY;
        }
        argsort(gain, n, work, upo);
        argsort(loss, n, work, downo);
        Py_ssize_t moves = 0;
        for (Py_ssize_t i = 0; i < n; i++)
            moves += -gain[upo[i]] > loss[downo[i]] * (1 + 1e-12);
        if (!moves)
            break;
        for (Py_ssize_t i = 0; i < moves; i++)
            freq[upo[i]]++;
        for (Py_ssize_t i = 0; i < moves; i++)
            freq[downo[i]]--;
    }
    return 0;
}

/* normalize(counts int64[n], totals int64[m], up float64, down float64, rounds, out int64[m x n]): rans's
   normalize_all, row j of out the frequencies summing to totals[j]. */
static PyObject *normalize(PyObject *self, PyObject *args)
{
    PyObject *o_counts, *o_totals, *o_up, *o_down, *o_out;
    Py_ssize_t n, m, nup, ndown, nout;
    int rounds;
    Buffers b = {.held = 0};
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOiO", &o_counts, &o_totals, &o_up, &o_down, &rounds, &o_out))
        return NULL;
    const int64_t *counts = take(&b, o_counts, 8, 0, &n, "counts");
    const int64_t *totals = counts ? take(&b, o_totals, 8, 0, &m, "totals") : NULL;
    const double *up = totals ? take(&b, o_up, 8, 0, &nup, "up") : NULL;
    const double *down = up ? take(&b, o_down, 8, 0, &ndown, "down") : NULL;
    int64_t *out = down ? take(&b, o_out, 8, 1, &nout, "out") : NULL;
    if (!out)
        goto fail;
    int64_t sum = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (counts[i] < 1 || counts[i] > (int64_t)1 << 52) {
            bad("_ckernels.normalize: counts must be positive");
            goto fail;
        }
        sum += counts[i];
    }
    int fits = n >= 1 && n <= INT32_MAX && nup == ndown && nout == n * m && sum <= (int64_t)1 << 52;
    for (Py_ssize_t j = 0; j < m && fits; j++)
        fits = totals[j] >= n && totals[j] < nup;
    if (!fits) {
        bad("_ckernels.normalize: inconsistent arguments");
        goto fail;
    }
    double *share = malloc((size_t)n * 3 * sizeof *share);
    Keyed *work = malloc((size_t)n * sizeof *work);
    int32_t *order = malloc((size_t)n * 2 * sizeof *order);
    if (!share || !work || !order) {
        free(share);
        free(work);
        free(order);
        PyErr_NoMemory();
        goto fail;
    }
    int status = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++)
        share[i] = (double)counts[i] / (double)sum;
    for (Py_ssize_t j = 0; j < m && !status; j++) {
        bisect_fill(share, n, totals[j], out + j * n);
        status = settle(counts, n, totals[j], up, down, nup, rounds, out + j * n, share + n, share + 2 * n, work,
                        order, order + n);
    }
    Py_END_ALLOW_THREADS
    free(share);
    free(work);
    free(order);
    if (status) {
        bad("_ckernels.normalize: a frequency outside the log2 tables");
        goto fail;
    }
    release(&b);
    Py_RETURN_NONE;
fail:
    release(&b);
    return NULL;
}

/* set_simd(path, form="auto") -> the paths this CPU runs, for tests (each path gives the same symbols, states and
   word counts; these pick one for every later rans_decode, in every thread). path: "scalar", "avx2", "avx512" (a
   ValueError if the CPU lacks it) or "auto" (the best, as at import); form: the AVX-512 path's table form ("two",
   "packed", "perm", "perm256": see ck_tables16; one the table does not fit runs as "two") or "auto". */
static PyObject *set_simd(PyObject *self, PyObject *args)
{
    const char *path, *form = "auto";
    (void)self;
    if (!PyArg_ParseTuple(args, "s|s", &path, &form))
        return NULL;
    int level = -1, f = -2;
    for (int k = 0; k < 3; k++)
        if (!strcmp(path, ck_simd_names[k]))
            level = k;
    for (int k = 0; k < CK_FORMS; k++)
        if (!strcmp(form, ck_form_names[k]))
            f = k;
    if (!strcmp(path, "auto"))
        level = ck_simd_max;
    if (!strcmp(form, "auto"))
        f = -1;
    if (level < 0 || level > ck_simd_max || f < -1)
        return bad("_ckernels.set_simd: a path this CPU does not run, or an unknown form");
    ck_simd = level;
    ck_form = f;
    PyObject *paths = PyTuple_New(ck_simd_max + 1);
    for (int k = 0; paths && k <= ck_simd_max; k++) {
        PyObject *name = PyUnicode_FromString(ck_simd_names[k]);
        if (!name) {
            Py_DECREF(paths);
            return NULL;
        }
        PyTuple_SET_ITEM(paths, k, name);
    }
    return paths;
}

/* ---- module ----------------------------------------------------------------------------------------------- */

/* ---------------------------------------------------------------- tcq: the trellis search (plugins/tcq.py) */

static const int8_t TCQ_INCOMING[4][2][2] = {{{0, 0}, {1, 1}}, {{2, 0}, {3, 1}}, {{0, 1}, {1, 0}}, {{2, 1}, {3, 0}}};

/* Bits of level k: the table's entry, its end entries standing for every level beyond (tcq._bits_of). */
static double tcq_bits(const double *bits, Py_ssize_t size, int64_t low, double k)
{
    int64_t i = (int64_t)k - low;
    return bits[i < 0 ? 0 : i >= size ? size - 1 : i];
}

/* The cost of level k of quantizer z at value y, as tcq._kind_costs computes it, operation for operation. */
static double tcq_cost(double y, double k, int z, const double *bits, Py_ssize_t size, int64_t low, double rate,
                       int live)
{
    double rec = z ? k - 0.5 * (double)((k > 0) - (k < 0)) : k;
    double d = y - rec;
    double c = d * d;
    if (bits)
        c = c + rate * tcq_bits(bits, size, low, k);
    return live ? c : 0.0;
}

/* tcq.viterbi over every run of y (runs of `run`, the last one padded with zero-cost zeros, as there), run by run:
   the same candidates, costs, ties and traceback, so the same levels and quantizers. */
static PyObject *tcq_viterbi(PyObject *self, PyObject *args)
{
    PyObject *o_y, *o_bits0, *o_bits1, *o_levels, *o_quant;
    Py_ssize_t run, n, nb0, nb1, nl, nq;
    long long low0, low1;
    int use_bits;
    double rate;
    Buffers b = {.held = 0};
    (void)self;
    if (!PyArg_ParseTuple(args, "OnOLOLdpOO", &o_y, &run, &o_bits0, &low0, &o_bits1, &low1, &rate, &use_bits,
                          &o_levels, &o_quant))
        return NULL;
    const double *y = take(&b, o_y, 8, 0, &n, "y");
    const double *bits0 = y ? take(&b, o_bits0, 8, 0, &nb0, "bits0") : NULL;
    const double *bits1 = bits0 ? take(&b, o_bits1, 8, 0, &nb1, "bits1") : NULL;
    int64_t *levels = bits1 ? take(&b, o_levels, 8, 1, &nl, "levels") : NULL;
    int8_t *quant = levels ? take(&b, o_quant, 1, 1, &nq, "quantizer") : NULL;
    if (!quant)
        goto fail;
    if (run < 1 || run > 4096 || nl != n || nq != n || nb0 < 1 || nb1 < 1) {
        bad("_ckernels.tcq_viterbi: run outside 1..4096, or arrays of other sizes");
        goto fail;
    }
    uint8_t *choice = malloc((size_t)run * 4);
    double *bestk = malloc((size_t)run * 4 * sizeof(double));
    if (!choice || !bestk) {
        free(choice);
        free(bestk);
        PyErr_NoMemory();
        goto fail;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t start = 0; start < n; start += run) {
        double cost[4] = {0.0, INFINITY, INFINITY, INFINITY};
        for (Py_ssize_t t = 0; t < run; t++) {
            int live = start + t < n;
            double v = live ? y[start + t] : 0.0;
            double best[2][2];
            for (int z = 0; z < 2; z++) {
                double first = z == 0 ? floor(v)
                             : v >= 0 ? fmax(1.0, floor(v + 0.5)) : fmin(-1.0, ceil(v - 0.5));
                double second = z ? first + (v >= 0 ? 1.0 : -1.0) : first + 1.0;
                int first_odd = (int)((int64_t)first & 1); /* first is a whole number: fmod(first, 2) != 0 */
                double odd = first_odd ? first : second, even = first_odd ? second : first;
                const double *bt = !use_bits ? NULL : z ? bits1 : bits0;
                Py_ssize_t size = z ? nb1 : nb0;
                int64_t low = z ? low1 : low0;
                double c_even = tcq_cost(v, even, z, bt, size, low, rate, live);
                double c_odd = tcq_cost(v, odd, z, bt, size, low, rate, live);
                double c_zero = tcq_cost(v, 0.0, z, bt, size, low, rate, live);
                int to_zero = c_zero < c_even;
                bestk[t * 4 + z * 2] = to_zero ? 0.0 : even;
                best[z][0] = c_zero < c_even ? c_zero : c_even; /* np.minimum: equal values are the same number */
                bestk[t * 4 + z * 2 + 1] = odd;
                best[z][1] = c_odd;
            }
            double next[4];
            for (int target = 0; target < 4; target++) {
                const int8_t *in0 = TCQ_INCOMING[target][0], *in1 = TCQ_INCOMING[target][1];
                double a = cost[in0[0]] + best[in0[0] >> 1][in0[1]];
                double c = cost[in1[0]] + best[in1[0] >> 1][in1[1]];
                choice[t * 4 + target] = c < a;
                next[target] = c < a ? c : a;
            }
            memcpy(cost, next, sizeof cost);
        }
        int state = 0;
        for (int s = 1; s < 4; s++)
            if (cost[s] < cost[state])
                state = s;
        for (Py_ssize_t t = run - 1; t >= 0; t--) {
            const int8_t *in = TCQ_INCOMING[state][choice[t * 4 + state]];
            int z = in[0] >> 1;
            if (start + t < n) {
                levels[start + t] = (int64_t)bestk[t * 4 + z * 2 + in[1]];
                quant[start + t] = (int8_t)z;
            }
            state = in[0];
        }
    }
    Py_END_ALLOW_THREADS
    free(choice);
    free(bestk);
    release(&b);
    Py_RETURN_NONE;
fail:
    release(&b);
    return NULL;
}

static PyMethodDef methods[] = {
    {"huffman_table", huffman_table, METH_VARARGS, "the canonical code's LSB-first decode table"},
    {"huffman_decode", huffman_decode, METH_VARARGS, "decode every huffman segment; their end bit positions"},
    {"huffman_pack", huffman_pack, METH_VARARGS, "pack the symbols' codes into byte-aligned segments"},
    {"rans_table", rans_table, METH_VARARGS, "the rans decode table"},
    {"rans_decode", rans_decode, METH_VARARGS, "decode the interleaved rans lanes; the words read or -1"},
    {"set_simd", set_simd, METH_VARARGS, "choose the rans decode path (tests); the paths this CPU runs"},
    {"golomb_pairs", golomb_pairs, METH_VARARGS, "read pairs of Exp-Golomb codes"},
    {"rans_encode", rans_encode, METH_VARARGS, "run the rans lanes backwards; the first word's index"},
    {"histogram", histogram, METH_VARARGS, "occurrences of every symbol"},
    {"normalize", normalize, METH_VARARGS, "rans frequency normalization for several totals"},
    {"golomb_costs", golomb_costs, METH_VARARGS, "Exp-Golomb code sizes of some values for every order"},
    {"tcq_viterbi", tcq_viterbi, METH_VARARGS, "the tcq trellis search over every run"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_ckernels", "The huffman, rans and tcq inner loops in C (see _ckernels_api.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__ckernels(void)
{
#ifdef CK_AVX2
    ck_perm_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt"))
        ck_simd_max = CK_SIMD_AVX2;
    if (ck_simd_max && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
        && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vbmi2"))
        ck_simd_max = CK_SIMD_AVX512;
    ck_simd = ck_simd_max;
#endif
    return PyModule_Create(&module);
}
