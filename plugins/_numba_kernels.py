"""Compiled inner loops of the huffman and rans stages (numba, the `fast` extra), imported only through `_kernels`.

Each kernel does exactly what the numpy path of its stage does, on inputs the stage has already checked: the same
bytes out of an encoder, the same symbols and end positions (huffman) or final states and word count (rans) out of a
decoder, so the stage's own checks afterwards raise the same FormatError. Every read on a hostile stream stays inside
the buffers the stage hands over (positions are clamped or counted before an access); numba does no bounds checks.
"""

from __future__ import annotations

import numpy as np
from numba import njit

JIT = {"cache": True, "nogil": True}


@njit(**JIT)
def _bits64(words: np.ndarray, pos: np.uint64, qmax: np.uint64) -> np.uint64:
    """The 64 stream bits from bit `pos` (LSB-first), word index clamped to `qmax` (words[qmax + 1] exists)."""
    q = min(pos >> np.uint64(6), qmax)
    r = pos & np.uint64(63)
    return (words[q] >> r) | ((words[q + np.uint64(1)] << np.uint64(1)) << (np.uint64(63) - r))


@njit(**JIT)
def huffman_table(lengths: np.ndarray, width: int, limit: int) -> np.ndarray:
    """The LSB-first decode table over `width` bits of the canonical code of `lengths` (checked: each <= limit,
    Kraft-valid): entry = length << 16 | symbol; 0 (length 0) where no code fits. Symbols in (length, symbol) order
    get consecutive codes, code = sum over earlier symbols of 2^(length - theirs), the stage's `canonical_codes`."""
    lut = np.zeros(1 << width, dtype=np.int32)
    first = np.zeros(width + 2, dtype=np.int64)  # per length: the running sum of 2^(limit - length) before it
    for s in range(lengths.size):
        if lengths[s]:
            first[lengths[s] + 1] += 1 << (limit - lengths[s])
    for n in range(1, width + 1):
        first[n + 1] += first[n]
    for s in range(lengths.size):  # symbol order: within a length, consecutive codes
        n = lengths[s]
        if n == 0:
            continue
        c = first[n] >> (limit - n)
        first[n] += 1 << (limit - n)
        rev = 0
        for b in range(n):  # the code's MSB-first bits, read LSB-first
            rev |= ((c >> b) & 1) << (n - 1 - b)
        entry = (n << 16) | s
        for hi in range(1 << (width - n)):
            lut[rev | (hi << n)] = entry
    return lut


@njit(**JIT)
def huffman_decode(words: np.ndarray, starts: np.ndarray, nsyms: np.ndarray, seg: int, lut: np.ndarray, width: int,
                   out: np.ndarray) -> np.ndarray:
    """Decode every segment into `out`, four at a time (independent bit readers keep the core busy); return each
    segment's end bit position.

    `words` is the payload as little-endian 64-bit words plus at least one zero word; reads are clamped to the last
    two, so a hostile segment running past the payload reads zeros there (and fails the stage's end check). Bit
    positions and output indices are unsigned: numba adds no negative-index fix-ups (about 1.2-1.4x faster)."""
    u64 = np.uint64
    qmax = u64(words.size - 2)
    mask = u64((1 << width) - 1)
    refill = 64 // width  # codes one 64-bit read always holds
    nseg = starts.size
    end_pos = np.empty(nseg, dtype=np.int64)
    full = nseg - 1 if nsyms[nseg - 1] != seg else nseg  # segments of exactly `seg` symbols
    useg = u64(seg)
    k = 0
    while k + 4 <= full:
        p0, p1, p2, p3 = u64(starts[k]) << u64(3), u64(starts[k + 1]) << u64(3), u64(starts[k + 2]) << u64(3), \
            u64(starts[k + 3]) << u64(3)
        o0 = u64(k) * useg
        o1, o2, o3 = o0 + useg, o0 + u64(2) * useg, o0 + u64(3) * useg
        for i in range(0, seg, refill):
            w0, w1 = _bits64(words, p0, qmax), _bits64(words, p1, qmax)
            w2, w3 = _bits64(words, p2, qmax), _bits64(words, p3, qmax)
            for j in range(i, min(i + refill, seg)):
                uj = u64(j)
                e0, e1 = lut[w0 & mask], lut[w1 & mask]
                e2, e3 = lut[w2 & mask], lut[w3 & mask]
                out[o0 + uj] = e0 & 0xFFFF
                out[o1 + uj] = e1 & 0xFFFF
                out[o2 + uj] = e2 & 0xFFFF
                out[o3 + uj] = e3 & 0xFFFF
                n0, n1, n2, n3 = u64(e0 >> 16), u64(e1 >> 16), u64(e2 >> 16), u64(e3 >> 16)
                w0, w1 = w0 >> n0, w1 >> n1
                w2, w3 = w2 >> n2, w3 >> n3
                p0, p1, p2, p3 = p0 + n0, p1 + n1, p2 + n2, p3 + n3
        end_pos[k], end_pos[k + 1], end_pos[k + 2], end_pos[k + 3] = p0, p1, p2, p3
        k += 4
    for rest in range(k, nseg):  # the others one at a time
        pos = u64(starts[rest]) << u64(3)
        o = u64(rest) * useg
        n = nsyms[rest]
        for i in range(0, n, refill):
            w = _bits64(words, pos, qmax)
            for j in range(i, min(i + refill, n)):
                e = lut[w & mask]
                out[o + u64(j)] = e & 0xFFFF
                w >>= u64(e >> 16)
                pos += u64(e >> 16)
        end_pos[rest] = pos
    return end_pos


@njit(**JIT)
def huffman_pack(symbols: np.ndarray, lens: np.ndarray, rev: np.ndarray, seg: int) -> tuple[np.ndarray, np.ndarray]:
    """Write every symbol's (bit-reversed) code LSB-first, each segment from a byte boundary: payload and ends."""
    count = symbols.size
    nseg = (count + seg - 1) // seg
    ends = np.empty(nseg, dtype=np.int64)
    done = 0
    for k in range(nseg):
        bits = 0
        for i in range(k * seg, min((k + 1) * seg, count)):
            bits += lens[symbols[i]]
        done += (bits + 7) >> 3
        ends[k] = done
    payload = np.zeros(done + 8, dtype=np.uint8)
    at = 0
    for k in range(nseg):
        acc = np.uint64(0)
        have = 0
        for i in range(k * seg, min((k + 1) * seg, count)):
            s = symbols[i]
            acc |= rev[s] << np.uint64(have)
            have += lens[s]
            if have >= 32:  # flush 4 bytes: at most 31 + 16 bits are ever held
                for b in range(4):
                    payload[at + b] = np.uint8((acc >> np.uint64(8 * b)) & np.uint64(0xFF))
                at += 4
                acc >>= np.uint64(32)
                have -= 32
        while have > 0:
            payload[at] = np.uint8(acc & np.uint64(0xFF))
            at += 1
            acc >>= np.uint64(8)
            have -= 8
    return payload[:done], ends


@njit(**JIT)
def rans_table(symbols: np.ndarray, freq: np.ndarray, bits: int) -> np.ndarray:
    """The decode table over the 2^bits slots: entry = freq << 32 | bias << 16 | symbol, one load per symbol."""
    table = np.empty(1 << bits, dtype=np.uint64)
    slot = 0
    for i in range(symbols.size):
        head = (np.uint64(freq[i]) << np.uint64(32)) | np.uint64(symbols[i])
        for bias in range(freq[i]):
            table[slot] = head | (np.uint64(bias) << np.uint64(16))
            slot += 1
    return table


@njit(**JIT)
def rans_decode(x: np.ndarray, words: np.ndarray, nwords: int, count: int, bits: int, table: np.ndarray,
                out: np.ndarray, low: int) -> int:
    """Decode `count` symbols, symbol i from lane i mod lanes, updating the states `x` in place; return the words
    read, or -1 after the first step whose lanes needed more than the stream's `nwords` words (the numpy path's
    "truncated"). `words` (uint16) holds at least nwords + lanes entries (zeros past nwords): one step reads at most
    one word per lane, so a lane reads its next word before it knows whether it needs it, and no branch mispredicts.
    States are uint32 and indices unsigned: no negative-index fix-ups, fewer registers (about 4x the int64 loop)."""
    lanes = np.uint64(x.size)
    mask = np.uint32((1 << bits) - 1)
    shift = np.uint32(bits)
    floor = np.uint32(low)
    state = x.astype(np.uint32)
    read = np.uint64(0)
    limit = np.uint64(nwords)
    total = np.uint64(count)
    done = np.uint64(0)
    while done < total:
        n = min(lanes, total - done)
        for j in range(n):
            s = state[j]
            e = table[s & mask]
            out[done + np.uint64(j)] = e & np.uint64(0xFFFF)
            s = np.uint32(e >> np.uint64(32)) * (s >> shift) + np.uint32((e >> np.uint64(16)) & np.uint64(0xFFFF))
            word = np.uint32(words[read])
            need = s < floor
            state[j] = ((s << np.uint32(16)) | word) if need else s
            read += np.uint64(need)
        done += n
        if read > limit:
            return np.int64(-1)
    x[:] = state
    return np.int64(read)  # int64 both ways: numba would unify int64 and uint64 returns to a float


@njit(**JIT)
def golomb_pairs(bits: np.ndarray, pairs: int, order0: int, order1: int,
                 max_width: int) -> tuple[int, np.ndarray, np.ndarray, int]:
    """Read `pairs` pairs of Exp-Golomb codes (orders order0, order1) from the unpacked bits; return a status (0 ok,
    1 a code runs past the bits or has more than `max_width` bits after its leading 1), both value arrays and the
    bit position past the last code. The numpy path's `golomb_unpack`, one code after the other."""
    size = bits.size
    first = np.zeros(pairs, dtype=np.int64)
    second = np.zeros(pairs, dtype=np.int64)
    p = 0
    for i in range(2 * pairs):
        order = order0 if i % 2 == 0 else order1
        z = 0
        while p + z < size and bits[p + z] == 0 and z + order <= max_width:
            z += 1
        if p + z >= size or z + order > max_width or p + 2 * z + 1 + order > size:
            return 1, first, second, p
        v = 1
        for b in range(p + z + 1, p + 2 * z + 1 + order):
            v = (v << 1) | bits[b]
        v -= 1 << order
        if i % 2 == 0:
            first[i // 2] = v
        else:
            second[i // 2] = v
        p += 2 * z + 1 + order
    return 0, first, second, p


@njit(**JIT)
def rans_encode(symbols: np.ndarray, freq: np.ndarray, cum: np.ndarray, bits: int, lanes: int,
                low: int) -> tuple[np.ndarray, np.ndarray]:
    """Run every lane backwards from state `low`; return the final states and the words in decoder read order
    (step by step, lane by lane: written from the back while the steps run backwards).

    state // f by a float multiply: state < 2^32, so state x (1/f) is within 1 of the quotient, and one correction
    of the remainder makes it exact (a 64-bit division costs several times more)."""
    count = symbols.size
    x = np.full(lanes, low, dtype=np.int64)
    words = np.empty(count, dtype=np.uint16)  # a step emits at most one word per lane
    inverse = np.zeros(freq.size)
    for s in range(freq.size):
        if freq[s]:
            inverse[s] = 1.0 / freq[s]
    at = count
    last_row = ((count - 1) // lanes) * lanes
    for i0 in range(last_row, -1, -lanes):
        for j in range(min(lanes, count - i0) - 1, -1, -1):
            s = symbols[i0 + j]
            f = freq[s]
            state = x[j]
            if state >= f << (32 - bits):
                at -= 1
                words[at] = state & 0xFFFF
                state >>= 16
            q = np.int64(state * inverse[s])
            r = state - q * f
            if r >= f:
                q += 1
                r -= f
            elif r < 0:
                q -= 1
                r += f
            x[j] = (q << bits) + r + cum[s]
    return x, words[at:]
