"""The `rans` stage: symbols -> bytes with static order-0 rANS over many interleaved lanes.

Byte layout (spec/stages/rans.md); integers little-endian, varints unsigned LEB128 of at most 3 bytes:

    u8 n | varint D | u8 k | table bits | varint K | u32 states[K] | u16 words[W]

The table holds, per used symbol, its gap to the previous one (Exp-Golomb order 0) and its frequency - 1 (order k),
bit-packed LSB-first and padded to a byte; the frequencies sum to 2^n. Symbol i goes to lane i mod K; every lane
holds a 32-bit state in [2^16, 2^32) and renormalizes by 16-bit words, so one numpy step codes one symbol of every
lane at once (encode runs the steps backwards). The encoder starts every lane at 2^16, so a decoder ends with every
state at 2^16 and every word read. Compiled kernels (`_kernels`: the C extension where it was built, or numba with the
`fast` extra) run the lanes and read the table instead, with the same bytes, symbols and errors; the C kernels also
count the symbols and normalize the frequencies.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from dcframe import Bytes, FormatError, Stage, Symbols, hookimpl
from dcframe.core.streams import coder_symbols, declared_symbols

from ._kernels import compiled, symbol_counts

MAX_ALPHABET = 1 << 16
STATE_LOW = 1 << 16  # L: states live in [L, 2^32); the encoder's initial state and the decoder's final one
MAX_STEPS = 1 << 16  # symbols per lane, so a decode takes at most this many numpy steps
MAX_LANES = 1 << 20
MIN_PER_LANE = 1024  # short streams get fewer lanes: each costs a 4-byte final state
VARINT_BYTES = 3  # every varint value is < 2^21
MAX_WIDTH = 16  # Exp-Golomb: at most 16 bits after the leading zeros and the 1 (gaps and freq - 1 are < 2^16),
# so a table entry takes at most 66 bits and a decoder reads at most 66 x D bits (D <= N, D <= 2^16) of table
MAX_ORDER = 15  # Exp-Golomb order of the frequencies
EXCHANGE_ROUNDS = 32  # the normalizer's unit moves between symbols (each round moves at most one unit per symbol)


def _check_int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"rans: {name} must be an integer from {low} to {high}, got {value!r}")
    return value


def normalize(counts: np.ndarray, bits: int) -> np.ndarray:
    """Frequencies >= 1 summing to 2^bits for positive `counts`, near the minimum of sum(count x -log2(freq)).

    max(1, floor(share x scale)) with the largest scale whose sum is <= 2^bits (bisection); the units left over go,
    one each, to the symbols whose code length drops most from one more unit; then single units move from symbol to
    symbol while a move lowers the cost (at a fixed point no move does: the optimum, the cost being convex in each
    frequency). Needs counts.size <= 2^bits.
    """
    return normalize_all(counts, [bits])[0]


def normalize_all(counts: np.ndarray, bits: list[int]) -> list[np.ndarray]:
    """`normalize(counts, b)` for every b in `bits`, the bisections of all run together (one numpy step each for
    every total): the same floating-point operations per total, so the same frequencies, in far fewer calls."""
    totals = np.left_shift(1, np.array(bits, dtype=np.int64))
    kernels = compiled(int(counts.sum()))
    if kernels is not None and hasattr(kernels, "normalize"):  # the C kernels: the same operations, no numpy calls
        return list(kernels.normalize(counts, totals, *_log_steps(), EXCHANGE_ROUNDS))
    share = counts.astype(np.float64) / float(counts.sum())
    lo = np.zeros(totals.size)
    hi = 2.0 * totals + 1  # fill(lo) sums to counts.size <= total; fill(hi) to more than total
    for _ in range(64):
        mid = (lo + hi) / 2
        fits = np.maximum(1, np.floor(share * mid[:, None])).sum(axis=1) <= totals  # sums of integers: exact
        lo = np.where(fits, mid, lo)
        hi = np.where(fits, hi, mid)
    fills = np.maximum(1, np.floor(share * lo[:, None])).astype(np.int64)
    return [_settle(counts, fill, int(total)) for fill, total in zip(fills, totals, strict=True)]


@cache
def _log_steps() -> tuple[np.ndarray, np.ndarray]:
    """Tables over f = 0..2^16 of log2((f + 1) / f) and log2(f / (f - 1)) (inf where undefined): what one unit more or
    less changes a code length by. Both normalizers (numpy, C) read them, so they compare the very same numbers."""
    f = np.arange(1, (1 << 16) + 1, dtype=np.int64)
    up = np.concatenate([[np.inf], np.log2((f + 1) / f)])
    down = np.concatenate([[np.inf, np.inf], np.log2(f[1:] / (f[1:] - 1))])
    return up, down


def _settle(counts: np.ndarray, freq: np.ndarray, total: int) -> np.ndarray:
    """normalize's last two steps: hand out the units left over, then move single units while that lowers the cost."""
    more, less = _log_steps()
    while (left := total - int(freq.sum())) > 0:  # one round in practice: fewer units left than symbols
        gain = counts * more[freq]
        freq[np.argsort(-gain, kind="stable")[:left]] += 1
    for _ in range(EXCHANGE_ROUNDS):  # move single units while that lowers the cost (the floor of 1 skews shares)
        gain = counts * more[freq]
        loss = np.where(freq > 1, counts * less[freq], np.inf)
        up, down = np.argsort(-gain, kind="stable"), np.argsort(loss, kind="stable")
        moves = int(np.count_nonzero(gain[up] > loss[down] * (1 + 1e-12)))  # a prefix: gains fall, losses rise
        if not moves:
            break
        freq[up[:moves]] += 1
        freq[down[:moves]] -= 1
    return freq


def _varints(values: np.ndarray) -> np.ndarray:
    """LEB128 bytes of non-negative values < 2^21, concatenated in order."""
    v = values.astype(np.int64)
    nbytes = 1 + (v >= 1 << 7) + (v >= 1 << 14)
    out = np.empty((v.size, VARINT_BYTES), dtype=np.uint8)
    for k in range(VARINT_BYTES):
        out[:, k] = ((v >> (7 * k)) & 0x7F) | ((nbytes > k + 1) << 7)
    return out[np.arange(VARINT_BYTES) < nbytes[:, None]]


def _read_varint(data: np.ndarray, start: int, what: str) -> tuple[int, int]:
    """One shortest-form LEB128 value (< 2^21) from data[start:]; returns it and the offset past it. A plain loop
    over at most VARINT_BYTES bytes: numpy calls would cost more than the whole read."""
    window = data[start:start + VARINT_BYTES].tolist()
    size = next((i + 1 for i, byte in enumerate(window) if byte < 0x80), 0)
    if not size:  # no final byte within VARINT_BYTES: a longer varint, or the stream ends
        raise FormatError(f"rans: {what}: the stream ends inside a varint, or it is longer than {VARINT_BYTES} bytes")
    if size > 1 and window[size - 1] == 0:
        raise FormatError(f"rans: {what}: a varint not in shortest form")
    value = 0
    for byte in reversed(window[:size]):
        value = (value << 7) | (byte & 0x7F)
    return value, start + size


def choose_scale(counts: np.ndarray, scale_bits: int) -> tuple[int, np.ndarray]:
    """Scale bits n and frequencies (spec: Encoding step 4): the n from ceil(log2(distinct)) (at least 1) to
    `scale_bits` giving the smallest table plus ideal code size; more precision costs table bytes on short streams."""
    low = max(1, int(counts.size - 1).bit_length())
    best = None
    candidates = list(range(low, max(low, scale_bits) + 1))
    for bits, freq in zip(candidates, normalize_all(counts, candidates), strict=True):
        cost = float(np.dot(counts, bits - np.log2(freq))) / 8 + best_order(freq - 1)[1] / 8
        if best is None or cost < best[0]:
            best = (cost, bits, freq)
    return best[1], best[2]


def _golomb_widths(values: np.ndarray, order: np.ndarray | int) -> np.ndarray:
    """m per value: values + 2^order has m + 1 bits (the Exp-Golomb code takes m - order zeros and those bits).
    frexp's exponent: exact for every integer below 2^53, as the C kernels' bit counts are."""
    return np.frexp(values.astype(np.float64) + np.left_shift(1, order))[1].astype(np.int64) - 1


def best_order(values: np.ndarray) -> tuple[int, int]:
    """The Exp-Golomb order 0..MAX_ORDER coding `values` in the fewest bits, and those bits."""
    kernels = compiled(values.size)
    if kernels is not None and hasattr(kernels, "golomb_costs"):
        costs = kernels.golomb_costs(values, MAX_ORDER + 1)
    else:
        orders = np.arange(MAX_ORDER + 1)
        costs = (2 * _golomb_widths(values[None, :], orders[:, None]) - orders[:, None] + 1).sum(axis=1)
    k = int(np.argmin(costs))
    return k, int(costs[k])


def golomb_pack(values: np.ndarray, orders: np.ndarray) -> np.ndarray:
    """Exp-Golomb codes (value i of order orders[i]) one after the other, LSB-first, zero-padded to whole bytes.

    The code of v in order k: w = v + 2^k has m + 1 bits; write m - k zero bits, then w from its top bit down.
    """
    values, orders = values.astype(np.int64), orders.astype(np.int64)
    w = values + np.left_shift(1, orders)
    m = _golomb_widths(values, orders)
    sizes = 2 * m - orders + 1
    starts = np.cumsum(sizes) - sizes
    field = np.repeat(np.arange(values.size), m + 1)  # one entry per bit of w
    j = np.arange(field.size) - np.repeat(np.cumsum(m + 1) - (m + 1), m + 1)  # 0 = w's top bit
    bits = np.zeros(8 * -(-int(sizes.sum()) // 8), dtype=np.uint8)
    bits[starts[field] + (m - orders)[field] + j] = (w[field] >> (m[field] - j)) & 1
    return np.packbits(bits, bitorder="little")


def golomb_unpack(data: np.ndarray, start: int, pairs: int, orders: tuple[int, int],
                  what: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Read `pairs` pairs of Exp-Golomb codes (orders[0], orders[1]) from byte `start`: return both value arrays and
    the byte offset past the zero-padded last byte. A code has at most MAX_WIDTH bits after its leading 1; the codes
    are read from at most the bits `pairs` pairs of the longest codes take."""
    bits = np.unpackbits(data[start:start + -(-pairs * 2 * (2 * MAX_WIDTH + 1) // 8)], bitorder="little")
    kernels = compiled(pairs)  # under `auto`: the kernels if the stream's decoder has loaded them
    if kernels is not None:
        status, first, second, stop = kernels.golomb_pairs(bits, pairs, orders[0], orders[1], MAX_WIDTH)
        found = None if status else (first, second, stop)
    else:
        found = _golomb_doubling(bits, pairs, orders)
    if found is None:
        raise FormatError(f"rans: {what}: the stream ends inside its codes, or a code is longer than allowed")
    first, second, stop = found
    nbytes = -(-stop // 8)
    if np.any(bits[stop:8 * nbytes]):
        raise FormatError(f"rans: {what}: the padding bits after the last code are not zero")
    return first, second, start + nbytes


def _golomb_doubling(bits: np.ndarray, pairs: int,
                     orders: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, int] | None:
    """golomb_unpack's numpy path: code starts from pointer doubling over every bit position, so the work is
    O(bits x log(pairs)) in numpy steps whatever the bytes hold. Both value arrays and the bit position past the
    last code, or None if a code runs past the bits or is too long."""
    size = bits.size  # < 2^23: int32 positions keep the temporaries at about 20 bytes per table bit
    pos = np.arange(size + 2, dtype=np.int32)  # size + 1: "no code here", which maps to itself
    ones = np.flatnonzero(bits).astype(np.int32)
    zeros = np.append(ones, np.int32(2 * size + 2 * MAX_WIDTH))[np.searchsorted(ones, pos)] - pos

    def jump(order: int) -> np.ndarray:
        end = pos + 2 * zeros + 1 + order
        return np.where((zeros + order <= MAX_WIDTH) & (end <= size), end, size + 1)

    def value(at: np.ndarray, order: int) -> np.ndarray:
        width = zeros[at] + order  # bits after the leading 1
        j = np.arange(MAX_WIDTH)
        idx = np.minimum(at[:, None] + zeros[at][:, None] + 1 + j, size - 1)
        low = np.where(j < width[:, None], bits[idx].astype(np.int64) << np.maximum(width[:, None] - 1 - j, 0), 0)
        return (np.left_shift(1, width) | low.sum(axis=1)) - (1 << order)
    first, second = jump(orders[0]), jump(orders[1])
    step = second[first]
    heads = np.zeros(1, dtype=np.int32)  # starts of the first 1, 2, 4, ... pairs
    while heads.size < pairs:
        heads = np.concatenate([heads, step[heads]])
        step = step[step]
    heads = heads[:pairs]
    seconds = first[heads]
    stop = int(second[seconds[-1]])
    if stop > size or int(heads.max()) >= size or int(seconds.max()) >= size:
        return None
    return value(heads, orders[0]), value(seconds, orders[1]), stop


def choose_lanes(count: int, lanes: int) -> int:
    """Lanes for a stream (spec: Encoding step 5): at most `lanes`, one per MIN_PER_LANE symbols, but never so few
    that a lane holds more than MAX_STEPS symbols."""
    return max(1, min(lanes, -(-count // MIN_PER_LANE)), -(-count // MAX_STEPS))


class Rans(Stage):
    """Static order-0 rANS: frequencies normalized to 2^`scale_bits`, `lanes` interleaved 32-bit states."""

    id = "rans"
    takes = ("symbols",)
    gives = {"data": "bytes"}

    def __init__(self, scale_bits: int = 14, lanes: int = 64):
        self.scale_bits = _check_int("scale_bits", scale_bits, 1, 16)
        self.lanes = _check_int("lanes", lanes, 1, MAX_LANES)

    def encode(self, stream: Symbols) -> tuple[dict[str, Bytes], dict]:
        """Code the symbols; the frequency table, final states and words all go into the one output stream."""
        alphabet = int(stream.alphabet)
        symbols = coder_symbols("rans", stream, MAX_ALPHABET)
        count = int(symbols.size)
        meta = {"count": count, "alphabet": alphabet}
        if count == 0:
            return {"data": Bytes(b"")}, meta
        counts = symbol_counts(symbols, alphabet)
        used = np.flatnonzero(counts)
        bits, freq_used = choose_scale(counts[used], self.scale_bits)
        freq = np.zeros(alphabet, dtype=np.int64)
        freq[used] = freq_used
        lanes = choose_lanes(count, self.lanes)
        states, words = _encode(symbols, freq, bits, lanes)
        gaps = np.diff(used, prepend=-1) - 1
        order = best_order(freq[used] - 1)[0]
        table = golomb_pack(np.column_stack([gaps, freq[used] - 1]).reshape(-1), np.tile([0, order], used.size))
        parts = [bytes([bits]), _varints(np.array([used.size])).tobytes(), bytes([order]), table.tobytes(),
                 _varints(np.array([lanes])).tobytes(), states.astype("<u4").tobytes(), words.astype("<u2").tobytes()]
        return {"data": Bytes(b"".join(parts))}, meta

    def decode(self, streams: dict[str, Bytes], meta: dict) -> Symbols:
        """Check meta and stream against each other, then decode; anything inconsistent is a FormatError."""
        data = streams["data"].data
        count, alphabet, dtype = declared_symbols(self.id, meta, data, MAX_ALPHABET)
        if count == 0:
            return Symbols(np.zeros(0, dtype=dtype), alphabet)
        return Symbols(_decode(np.frombuffer(data, dtype=np.uint8), count, alphabet, dtype), alphabet)


def _encode(symbols: np.ndarray, freq: np.ndarray, bits: int, lanes: int) -> tuple[np.ndarray, np.ndarray]:
    """Run every lane backwards from state L; return the final states and the words in decoder read order."""
    kernels = compiled(symbols.size)
    if kernels is not None:
        cum = np.cumsum(freq) - freq
        return kernels.rans_encode(np.ascontiguousarray(symbols), freq, cum, bits, lanes, STATE_LOW)
    count = symbols.size
    steps = -(-count // lanes)
    last = count - (steps - 1) * lanes  # lanes holding a symbol in the last step
    cum = np.concatenate([[0], np.cumsum(freq)[:-1]])
    grid = np.zeros(steps * lanes, dtype=symbols.dtype)
    grid[:count] = symbols
    grid = grid.reshape(steps, lanes)
    f_all = freq[grid].astype(np.uint64)
    c_all = cum[grid].astype(np.uint64)
    limit_all = f_all << np.uint64(32 - bits)  # a state at or above this must emit a word first
    word_grid = np.zeros((steps, lanes), dtype=np.uint64)
    emit_grid = np.zeros((steps, lanes), dtype=bool)
    x = np.full(lanes, STATE_LOW, dtype=np.uint64)
    shift, n, low = np.uint64(16), np.uint64(bits), np.uint64(0xFFFF)
    for t in range(steps - 1, -1, -1):
        a = lanes if t < steps - 1 else last
        xs, f = x[:a], f_all[t, :a]
        emit = xs >= limit_all[t, :a]
        emit_grid[t, :a] = emit
        word_grid[t, :a] = xs & low
        xs = np.where(emit, xs >> shift, xs)
        x[:a] = ((xs // f) << n) + xs % f + c_all[t, :a]
    return x, word_grid[emit_grid]


def _decode(data: np.ndarray, count: int, alphabet: int, dtype: np.dtype) -> np.ndarray:
    """Parse and check the header against count and alphabet, then decode every lane in lockstep."""
    size = data.size
    if size < 1:
        raise FormatError("rans: empty stream for a non-zero count")
    kernels = compiled(count)  # first: under `auto`, a long stream loads them for its table too
    bits = int(data[0])
    if not 1 <= bits <= 16:
        raise FormatError(f"rans: scale bits {bits} outside 1..16")
    distinct, pos = _read_varint(data, 1, "symbol count")
    if not 1 <= distinct <= min(alphabet, 1 << bits, count):
        raise FormatError(f"rans: {distinct} distinct symbols for {count} symbols, an alphabet of {alphabet} and "
                          f"total 2^{bits}")
    if pos >= size or data[pos] > MAX_ORDER:
        raise FormatError(f"rans: no Exp-Golomb order, or one above {MAX_ORDER}")
    gaps, freq, pos = golomb_unpack(data, pos + 1, distinct, (0, int(data[pos])), "frequency table")
    symbols = np.cumsum(gaps + 1) - 1
    freq += 1
    if int(symbols[-1]) >= alphabet:
        raise FormatError(f"rans: frequency table names symbol {int(symbols[-1])}, the alphabet is {alphabet}")
    if int(freq.sum()) != 1 << bits:
        raise FormatError(f"rans: frequencies sum to {int(freq.sum())}, not 2^{bits}")
    lanes, pos = _read_varint(data, pos, "lane count")
    steps = -(-count // lanes) if lanes else 0
    if not 1 <= lanes <= count or steps > MAX_STEPS:
        raise FormatError(f"rans: {lanes} lanes for {count} symbols (1..count lanes, at most {MAX_STEPS} symbols "
                          f"per lane)")
    rest = size - pos - 4 * lanes
    if rest < 0 or rest % 2:
        raise FormatError(f"rans: {size - pos} bytes after the header do not hold {lanes} states and 16-bit words")
    x = np.frombuffer(data, dtype="<u4", count=lanes, offset=pos).astype(np.int64)
    if int(x.min()) < STATE_LOW:
        raise FormatError(f"rans: a lane's state {int(x.min())} is below 2^16")
    nwords = rest // 2
    words_at = pos + 4 * lanes
    if kernels is not None:
        words = np.zeros(nwords + lanes, dtype=np.uint16)  # padded: one step reads at most `lanes` words
        words[:nwords] = np.frombuffer(data, dtype="<u2", count=nwords, offset=words_at)
        out = np.empty(count, dtype=dtype)
        table = kernels.rans_table(symbols, freq, bits)
        read = kernels.rans_decode(x, words, nwords, count, bits, table, out, STATE_LOW)
    else:
        words = np.zeros(nwords + lanes, dtype=np.int64)
        words[:nwords] = np.frombuffer(data, dtype="<u2", count=nwords, offset=words_at)
        out, read = _decode_lanes(x, words, nwords, count, bits, symbols, freq, dtype)
    if read < 0:
        raise FormatError(f"rans: the lanes need more than the stream's {nwords} words (truncated)")
    _check_end(read, nwords, x)
    return out


def _decode_lanes(x: np.ndarray, words: np.ndarray, nwords: int, count: int, bits: int, symbols: np.ndarray,
                  freq: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, int]:
    """The numpy path: one step decodes one symbol of every lane (x updated in place); returns the symbols and the
    words read, or -1 once a step needed more than `nwords` (as the kernel does). Plain expressions: on arrays of
    a few dozen lanes they beat ufuncs with out= and np.take, whose argument handling costs more than the copies."""
    slot_sym = np.repeat(symbols, freq).astype(dtype)
    slot_freq = np.repeat(freq, freq)
    slot_bias = np.arange(1 << bits, dtype=np.int64) - np.repeat(np.cumsum(freq) - freq, freq)
    lanes = x.size
    steps = -(-count // lanes)
    out = np.empty((steps, lanes), dtype=slot_sym.dtype)
    mask = (1 << bits) - 1
    read = 0
    for t in range(steps):
        a = min(lanes, count - t * lanes)
        xs = x[:a]
        slot = xs & mask
        out[t, :a] = slot_sym[slot]
        xs = slot_freq[slot] * (xs >> bits) + slot_bias[slot]
        need = xs < STATE_LOW
        k = int(np.count_nonzero(need))
        if k:
            xs[need] = (xs[need] << 16) | words[read:read + k]
            read += k
            if read > nwords:
                return out.reshape(-1)[:count], -1
        x[:a] = xs
    return out.reshape(-1)[:count], read


def _check_end(read: int, nwords: int, x: np.ndarray) -> None:
    """The decoder's exact end (spec: Decoding, last step): every word read, every lane back at state L."""
    if read != nwords:
        raise FormatError(f"rans: {nwords - read} of {nwords} words left unread")
    if np.any(x != STATE_LOW):
        raise FormatError("rans: a lane does not end in the encoder's initial state 2^16 (damaged stream)")


@hookimpl
def dcframe_stages():
    return [Rans]
