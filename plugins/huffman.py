"""The `huffman` stage: symbols -> bytes with an optimal length-limited canonical Huffman code.

Byte layout (spec/stages/huffman.md), all integers little-endian, bits LSB-first:

    u32 T | u8 lengths[T] | u32 S | u32 ends[ceil(count / S)] | payload

The code is built with package-merge (optimal under the length limit), stored as code lengths only, and the
symbols are cut into segments of S symbols, each starting on a byte boundary. The encoder picks S per stream (at
most `segment_size`, see `choose_segment_size`) so that mid-size streams still have hundreds of segments. The decoder
runs every segment in lockstep: one numpy step decodes one symbol of every segment at once (a long stream from
its segments' words interleaved, and as many codes per 64-bit refill as the stream's bits per symbol suggest, with
the steps redone where a segment ran out of bits); a stream of a few segments is decoded by a plain loop instead.
Compiled kernels (`_kernels`: the C extension where it was built, or numba with the `fast` extra) pack and decode
instead, with the same bytes, symbols and errors.
"""

from __future__ import annotations

import numpy as np

from dcframe import Bytes, ConfigError, FormatError, Stage, Symbols, hookimpl
from dcframe.core.streams import coder_symbols, declared_symbols

from ._kernels import compiled, symbol_counts

LIMIT = 16  # the longest code a decoder accepts
MAX_ALPHABET = 1 << 16
MAX_SEGMENT = 1 << 16  # symbols per segment: a vector decoder's steps, so decode time stays linear in the symbols
MAX_PAYLOAD = (1 << 32) - 1
LANES = 4096  # segments decoded together; keeps the working set of one lockstep in cache
CHUNK_CELLS = 1 << 20  # symbols (lanes x steps) a lane block decodes into a cache-sized buffer before they are
# transposed into the output: one block-sized buffer (10 MB at 10^7 symbols) made 10^7 decodes ~1.2x slower
GUESS_BITS = 48  # a refill is guessed to hold the codes of this many bits on average (it holds 64)
INTERLEAVE_BYTES = 1 << 20  # lane blocks of this much payload or more are decoded from their words interleaved
TILE = 256  # lanes and rows per piece when the lanes' payloads are interleaved or a buffer is transposed
SEGMENT_BITS = 8192  # the encoder aims at about this many payload bits per segment (offset + padding ~0.43%)
FEW_LANES = 256  # streams of LONG_STREAM+ symbols with fewer segments than this get smaller segments, towards this
LONG_STREAM = 1 << 16  # many, of no less than SEGMENT_BITS / 2 payload bits (side information ~0.87%)
WANT_LANES = 2048  # at least this many segments, while segments stay at most `segment_size` symbols
SCALAR_LANES = 12  # fewer segments than this: a plain loop beats numpy calls over so few lanes (at most
# 12 x MAX_SEGMENT symbols, so its cost stays bounded too)
ENCODE_BLOCK = 1 << 18  # about this many symbols (whole segments) are packed at a time, for the same reason


def _check_int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"huffman: {name} must be an integer from {low} to {high}, got {value!r}")
    return value


def limited_code_lengths(weights: np.ndarray, limit: int) -> np.ndarray:
    """Optimal code lengths <= `limit` for positive `weights` (package-merge, vectorized per level)."""
    n = int(weights.size)
    if n == 1:
        return np.ones(1, dtype=np.uint8)
    if n > 1 << limit:
        raise ValueError(f"{n} symbols do not fit in codes of {limit} bits")
    order = np.argsort(weights, kind="stable")
    leaf_w = weights[order].astype(np.int64)
    leaf_ids = np.arange(n, dtype=np.int64)
    cur_w, cur_pkg, cur_leaf = leaf_w, np.zeros(n, dtype=bool), leaf_ids
    levels = [(cur_pkg, cur_leaf)]
    for _ in range(limit - 1):
        m = cur_w.size // 2
        pkg_w = cur_w[0:2 * m:2] + cur_w[1:2 * m:2]
        merged_w = np.concatenate([leaf_w, pkg_w])
        merged_pkg = np.concatenate([np.zeros(n, dtype=bool), np.ones(m, dtype=bool)])
        merged_leaf = np.concatenate([leaf_ids, np.full(m, -1, dtype=np.int64)])
        pick = np.argsort(merged_w, kind="stable")  # leaves first on equal weights
        cur_w, cur_pkg, cur_leaf = merged_w[pick], merged_pkg[pick], merged_leaf[pick]
        levels.append((cur_pkg, cur_leaf))
    lengths = np.zeros(n, dtype=np.int64)
    take = 2 * n - 2
    for pkg, leaf in reversed(levels):
        sel_pkg = pkg[:take]
        lengths[leaf[:take][~sel_pkg]] += 1
        take = 2 * int(np.count_nonzero(sel_pkg))
    out = np.empty(n, dtype=np.uint8)
    out[order] = lengths
    return out


def canonical_codes(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Canonical codes (MSB-first values) of a length table, and the used symbols sorted by (length, symbol)."""
    lengths = lengths.astype(np.int64)
    used = np.flatnonzero(lengths)
    ordered = used[np.argsort(lengths[used], kind="stable")]  # flatnonzero is ascending, so ties stay by symbol
    ls = lengths[ordered]
    codes = np.zeros(lengths.size, dtype=np.int64)
    if ordered.size:
        # code[i] = (code[i-1] + 1) << (len[i] - len[i-1]), i.e. code[i] = sum_{j<i} 2^(len[i]-len[j])
        # computed exactly as a running sum of 2^(LIMIT - len) scaled back down.
        weights = np.left_shift(1, LIMIT - ls)
        starts = np.concatenate([[0], np.cumsum(weights)[:-1]])
        codes[ordered] = starts >> (LIMIT - ls)
    return codes, ordered


_REV8 = np.array([int(f"{v:08b}"[::-1], 2) for v in range(256)], dtype=np.int64)  # each byte, bits reversed


def bit_reverse(values: np.ndarray, widths: np.ndarray | int) -> np.ndarray:
    """Reverse the low `widths` bits of each value (to store MSB-first codes in an LSB-first stream); values and
    widths up to LIMIT (16) bits: two byte lookups, a fixed cost of a few numpy calls per table."""
    values = values.astype(np.int64)
    rev16 = (_REV8[values & 0xFF] << 8) | _REV8[(values >> 8) & 0xFF]
    return rev16 >> (LIMIT - np.asarray(widths, dtype=np.int64))


def choose_segment_size(count: int, payload_bits: int, maximum: int) -> int:
    """Symbols per segment (spec: Encoding step 7): about SEGMENT_BITS payload bits; smaller (down to half those bits)
    for long streams left with fewer than FEW_LANES segments; fewer symbols if there would be more than WANT_LANES
    segments; never above `maximum`, and `maximum` itself when the stream fits in one segment of that size."""
    if count <= maximum:
        return maximum
    bits = max(1, payload_bits)
    seg = -(-SEGMENT_BITS * count // bits)
    if count >= LONG_STREAM and -(-count // seg) < FEW_LANES:
        seg = max(-(-(SEGMENT_BITS // 2) * count // bits), -(-count // FEW_LANES))
    return max(1, min(maximum, max(seg, -(-count // WANT_LANES))))


class Huffman(Stage):
    """Canonical Huffman coding, optimal under a `max_bits` code-length limit, in byte-aligned segments."""

    id = "huffman"
    takes = ("symbols",)
    gives = {"data": "bytes"}

    def __init__(self, max_bits: int = 12, segment_size: int = 4096):
        self.max_bits = _check_int("max_bits", max_bits, 1, LIMIT)
        self.segment_size = _check_int("segment_size", segment_size, 1, MAX_SEGMENT)

    def encode(self, stream: Symbols) -> tuple[dict[str, Bytes], dict]:
        """Code the symbols; table, segment ends and payload all go into the one output stream."""
        alphabet = int(stream.alphabet)
        symbols = coder_symbols("huffman", stream, MAX_ALPHABET)
        count = int(symbols.size)
        meta = {"count": count, "alphabet": alphabet}
        if count == 0:
            return {"data": Bytes(b"")}, meta
        freq = symbol_counts(symbols, alphabet)
        used = np.flatnonzero(freq)
        # automatic raise: a limit below ceil(log2(distinct symbols)) cannot hold them all
        limit = max(self.max_bits, int(used.size - 1).bit_length())
        table = np.zeros(int(used[-1]) + 1, dtype=np.uint8)
        table[used] = limited_code_lengths(freq[used], limit)
        codes, _ = canonical_codes(table)
        rev = bit_reverse(codes, table).astype(np.uint64)
        seg = choose_segment_size(count, int(np.dot(freq[used], table[used])), self.segment_size)
        kernels = compiled(count)
        if kernels is not None:
            payload, ends = kernels.huffman_pack(np.ascontiguousarray(symbols), table.astype(np.int64), rev, seg)
        else:
            payload, ends = _pack(symbols, table, rev, seg)
        if payload.size > MAX_PAYLOAD:
            raise ConfigError(f"huffman: payload of {payload.size} bytes exceeds 2^32 - 1; split the tensor")
        parts = [np.array([table.size], "<u4").tobytes(), table.tobytes(),
                 np.array([seg], "<u4").tobytes(), ends.astype("<u4").tobytes(), payload.tobytes()]
        return {"data": Bytes(b"".join(parts))}, meta

    def decode(self, streams: dict[str, Bytes], meta: dict) -> Symbols:
        """Check meta and stream against each other, then decode; anything inconsistent is a FormatError."""
        data = streams["data"].data
        count, alphabet, dtype = declared_symbols(self.id, meta, data, MAX_ALPHABET)
        if count == 0:
            return Symbols(np.zeros(0, dtype=dtype), alphabet)
        return Symbols(_decode(memoryview(data).cast("B"), count, alphabet, dtype), alphabet)


def _pack(symbols: np.ndarray, table: np.ndarray, rev: np.ndarray, seg: int) -> tuple[np.ndarray, np.ndarray]:
    """Write every symbol's code LSB-first, each segment from a byte boundary; return payload and segment ends.

    Works on blocks of whole segments (about 2^18 symbols) so the temporaries stay in cache; blocks start on byte
    boundaries, so their payloads simply follow one another.
    """
    count = symbols.size
    per_block = max(1, ENCODE_BLOCK // seg) * seg
    lens_table = table.astype(np.int64)
    chunks, ends, done = [], [], 0
    for lo in range(0, count, per_block):
        part = symbols[lo:lo + per_block]
        data, seg_ends = _pack_block(part, lens_table, rev, seg)
        chunks.append(data)
        ends.append(seg_ends + done)
        done += data.size
    return np.concatenate(chunks), np.concatenate(ends)


def _pack_block(symbols: np.ndarray, lens_table: np.ndarray, rev: np.ndarray,
                seg: int) -> tuple[np.ndarray, np.ndarray]:
    """Pack a run of whole segments (the last may be short) starting at byte 0."""
    count = symbols.size
    nseg = -(-count // seg)
    lens = np.take(lens_table, symbols)
    cum = np.cumsum(lens)
    seg_last = np.minimum(np.arange(1, nseg + 1, dtype=np.int64) * seg, count) - 1
    seg_bits_end = cum[seg_last]
    seg_bits = np.diff(seg_bits_end, prepend=0)
    seg_bytes = (seg_bits + 7) >> 3
    ends = np.cumsum(seg_bytes)
    # global bit position = start of own segment + bits before it within the segment
    shift = 8 * (ends - seg_bytes) - (seg_bits_end - seg_bits)
    pos = cum - lens
    if nseg > 1:
        pos += np.repeat(shift, np.diff(seg_last, prepend=-1))
    off = np.bitwise_and(pos.view(np.uint64), np.uint64(63))
    codes = np.take(rev, symbols)
    contrib = codes << off
    nwords = int(ends[-1] + 7) >> 3
    words = np.zeros(nwords + 1, dtype=np.uint64)
    # every 64-bit word up to the one holding the last code start holds a code start (a code is <= 16 bits, padding
    # < 8), so each word's codes are the run starting at its first start
    used = int(pos[-1]) // 64 + 1
    first = np.searchsorted(pos, np.arange(used, dtype=np.int64) * 64)
    words[:used] = np.add.reduceat(contrib, first)  # bits of different codes never overlap: sum == or
    # a code crossing into the next word is the last one starting in its word
    last = np.append(first[1:] - 1, count - 1)
    cross = last[(pos[last] & 63) + lens[last] > 64]
    if cross.size:
        words[(pos[cross] >> 6) + 1] |= codes[cross] >> (np.uint64(64) - off[cross])
    return words.astype("<u8").view(np.uint8)[: int(ends[-1])], ends


def _decode(data: memoryview, count: int, alphabet: int, dtype: np.dtype) -> np.ndarray:
    """Check the stream's header against count and alphabet, then decode every segment in lockstep."""
    size = len(data)
    if size < 4:
        raise FormatError(f"huffman: stream of {size} bytes is shorter than its 4-byte table size")
    tsize = int.from_bytes(data[0:4], "little")
    if not 1 <= tsize <= alphabet:
        raise FormatError(f"huffman: code table of {tsize} entries for an alphabet of {alphabet}")
    if size < 8 + tsize:
        raise FormatError(f"huffman: stream of {size} bytes is too short for a {tsize}-entry code table")
    table = np.frombuffer(data, dtype=np.uint8, count=tsize, offset=4)
    seg = int.from_bytes(data[4 + tsize:8 + tsize], "little")
    if not 1 <= seg <= MAX_SEGMENT:
        raise FormatError(f"huffman: segment size {seg} is outside 1..{MAX_SEGMENT}")
    lengths = table.astype(np.int64)
    if int(lengths.max()) > LIMIT:
        raise FormatError(f"huffman: code length {int(lengths.max())} exceeds the limit of {LIMIT} bits")
    used = np.flatnonzero(lengths)
    if used.size == 0:
        raise FormatError("huffman: code table has no symbol")
    kraft = int(np.sum(np.left_shift(1, LIMIT - lengths[used])))
    if used.size == 1:
        if lengths[used[0]] != 1:
            raise FormatError("huffman: a single-symbol code table must give it length 1")
    elif kraft != 1 << LIMIT:
        raise FormatError(f"huffman: code lengths are not a complete prefix code (Kraft sum {kraft}/{1 << LIMIT})")
    nseg = -(-count // seg)
    rest = size - 8 - tsize
    if 4 * nseg > rest:
        raise FormatError(f"huffman: {count} symbols need {nseg} segment offsets, the stream has {rest} bytes left")
    plen = rest - 4 * nseg
    min_len, max_len = int(lengths[used].min()), int(lengths[used].max())
    if count * min_len > 8 * plen:
        raise FormatError(f"huffman: {count} symbols of >= {min_len} bits cannot fit in {plen} payload bytes")
    ends = np.frombuffer(data, dtype="<u4", count=nseg, offset=8 + tsize).astype(np.int64)
    if int(ends[-1]) != plen:
        raise FormatError(f"huffman: last segment ends at {int(ends[-1])}, the payload has {plen} bytes")
    nsyms = np.full(nseg, seg, dtype=np.int64)
    nsyms[-1] = count - seg * (nseg - 1)
    starts = np.concatenate([[0], ends[:-1]])
    sizes = ends - starts
    if np.any(sizes < (nsyms * min_len + 7) >> 3) or np.any(sizes > (nsyms * max_len + 7) >> 3):
        raise FormatError("huffman: segment offsets are not increasing or do not match the segment symbol counts")
    width = max_len
    # the payload, zero padded by 16 bytes plus the farthest a lane can read past it (a step takes <= width bits),
    # so the lockstep decoder's refills need no clamp
    words = np.zeros((plen + 23 + (min(seg, count) * width + 7) // 8) >> 3, dtype="<u8")
    buf = words.view(np.uint8)
    buf[:plen] = np.frombuffer(data, dtype=np.uint8, count=plen, offset=size - plen)
    kernels = compiled(count)
    if kernels is not None:
        out = np.empty(count, dtype=dtype)
        lut = kernels.huffman_table(lengths, width, LIMIT)
        end_pos = kernels.huffman_decode(words, starts, nsyms, seg, lut, width, out)
    else:
        codes, ordered = canonical_codes(lengths)
        out, end_pos = _decode_numpy(buf, starts, ends, nsyms, seg, count, lengths, codes, ordered, width,
                                     dtype)
    # exact bit consumption: every segment ends inside its last byte, and the padding bits above are zero
    last_byte = ends - 1
    used_bits = end_pos - 8 * last_byte
    if np.any((used_bits < 1) | (used_bits > 8)):
        raise FormatError("huffman: a segment's codes do not end in its last byte")
    if np.any(buf[last_byte].astype(np.int64) >> used_bits):
        raise FormatError("huffman: a segment's padding bits are not zero or hold an invalid code")
    return out


def _decode_numpy(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, nsyms: np.ndarray, seg: int, count: int,
                  lengths: np.ndarray, codes: np.ndarray, ordered: np.ndarray, width: int,
                  dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """The numpy decoders: a plain loop over few segments, else lockstep steps; returns the symbols and every
    segment's end bit position. (A two-symbol table for byte symbols, tried until issue 13's second pass, lost to
    the one-symbol steps once those shed their call overhead: 20 vs 30 M symbols/s at 10^5, 65 vs 83 at 10^7.)"""
    # decode tables over a window of max_len bits, first stream bit = least significant bit of the index
    msb_sym = np.repeat(ordered, np.left_shift(1, width - lengths[ordered]))
    msb_len = np.repeat(lengths[ordered], np.left_shift(1, width - lengths[ordered]))
    if msb_sym.size < 1 << width:  # only the single-symbol table is incomplete: mark the rest invalid (length 0)
        msb_sym = np.concatenate([msb_sym, np.zeros((1 << width) - msb_sym.size, dtype=np.int64)])
        msb_len = np.concatenate([msb_len, np.zeros((1 << width) - msb_len.size, dtype=np.int64)])
    idx = bit_reverse(np.arange(1 << width, dtype=np.int64), width)
    lut_sym = msb_sym[idx].astype(dtype)
    lut_len = msb_len[idx].astype(np.int64)
    if starts.size < SCALAR_LANES:
        return _decode_scalar(buf, starts, nsyms, lut_sym, lut_len, width, dtype)
    return _decode_lockstep(buf, starts, ends, nsyms, seg, count, lut_sym, lut_len, width, dtype)


def _decode_scalar(buf: np.ndarray, starts: np.ndarray, nsyms: np.ndarray, lut_sym: np.ndarray,
                   lut_len: np.ndarray, width: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Decode a few segments (at most SCALAR_COUNT symbols) one symbol at a time: cheaper than numpy steps over a
    handful of lanes. Returns the symbols and every segment's end bit position, as the lockstep decoder does."""
    data = buf.tobytes()  # zero padded: reads past the payload see zeros
    syms, lens = lut_sym.tolist(), lut_len.tolist()
    mask = (1 << width) - 1
    out: list[int] = []
    end_pos = np.empty(starts.size, dtype=np.int64)
    for k in range(starts.size):
        byte = int(starts[k])
        acc, have, used = 0, 0, 0
        for _ in range(int(nsyms[k])):
            if have < width:  # top up to >= 56 bits; a hostile lane stops at the buffer's zero padding
                acc |= int.from_bytes(data[byte:byte + 7], "little") << have
                byte, have = byte + 7, have + 56
            i = acc & mask
            n = lens[i]
            out.append(syms[i])
            acc >>= n
            have -= n
            used += n
        end_pos[k] = 8 * int(starts[k]) + used
    return np.array(out, dtype=dtype), end_pos


def _decode_lockstep(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, nsyms: np.ndarray, seg: int,
                     count: int, lut_sym: np.ndarray, lut_len: np.ndarray, width: int,
                     dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Decode every segment in lockstep, LANES segments at a time (one numpy step decodes one symbol of each), a
    long block from its lanes' words interleaved; returns the symbols and every segment's end bit position."""
    nseg = starts.size
    steps = seg if nseg > 1 else count
    out = np.empty((nseg, steps), dtype=dtype)
    end_pos = np.empty(nseg, dtype=np.int64)
    words = buf.view(np.uint64)
    for lo in range(0, nseg, LANES):
        hi = min(lo + LANES, nseg)
        # the last segment may be short: its end is its position after its own symbols, not after `steps`
        snap = int(nsyms[-1]) - 1 if hi == nseg else -1
        size = int(ends[hi - 1] - starts[lo])
        guess = GUESS_BITS * int(nsyms[lo:hi].sum()) // max(1, 8 * size)  # codes in GUESS_BITS, on average
        base, skip = starts[lo:hi] >> 3, (starts[lo:hi] & 7) << 3  # a lane's first word, its bits before the lane
        rows = int((skip + 8 * (ends[lo:hi] - starts[lo:hi])).max() + 63) // 64 + 2  # its words, and one more
        # interleave unless the payload is in cache anyway, or its lanes' sizes differ so much that the copy would
        # take over twice its bytes (each lane's words are copied as if it were the longest)
        if INTERLEAVE_BYTES <= size and 8 * rows * (hi - lo) <= 2 * size + (1 << 16):
            lanes = _interleave(words, base, rows).reshape(-1).view(np.int64)
            end_pos[lo:hi], last_end = _lockstep_block(lanes, hi - lo, skip, out[lo:hi], steps, snap, guess,
                                                       lut_sym, lut_len, width)
            end_pos[lo:hi] += base << 6
            shift = int(base[-1]) << 6
        else:  # the payload as it is
            end_pos[lo:hi], last_end = _lockstep_block(words.view(np.int64), 0, 8 * starts[lo:hi], out[lo:hi],
                                                       steps, snap, guess, lut_sym, lut_len, width)
            shift = 0
        if last_end is not None:
            end_pos[-1] = last_end + shift
    return out.reshape(-1)[:count], end_pos


def _interleave(words: np.ndarray, base: np.ndarray, rows: int) -> np.ndarray:
    """The lanes' words side by side: row i holds word base[k] + i of each lane k. A refill then reads a few rows
    instead of as many pages as lanes: 1.1-1.3x faster decodes at 10^7 symbols. Words past the buffer (hostile
    lanes only: a valid lane's words end within its `ends`) read as its last word."""
    nlanes = base.size
    out = np.empty((rows, nlanes), dtype=np.uint64)
    fit = words.size - rows  # lanes starting up to here have all their rows inside the buffer
    windows = np.lib.stride_tricks.sliding_window_view(words, rows) if fit >= 0 else None
    for j in range(0, nlanes, TILE):
        at = base[j:j + TILE]
        inside = windows is not None and int(at[-1]) <= fit
        for i in range(0, rows, TILE):  # a tile of TILE lanes' words, copied then transposed
            if inside:
                part = windows[at, i:i + TILE]
            else:
                part = words.take(at[:, None] + np.arange(i, min(i + TILE, rows), dtype=np.int64), mode="clip")
            out[i:i + TILE, j:j + TILE] = part.T
    return out


def _lockstep_block(source: np.ndarray, stride: int, start: np.ndarray, out: np.ndarray, steps: int, snap: int,
                    guess: int, lut_sym: np.ndarray, lut_len: np.ndarray,
                    width: int) -> tuple[np.ndarray, int | None]:
    """Decode `steps` symbols of every lane of one block into the rows of `out`, lane k from bit start[k]; return
    each lane's end bit position, and the last lane's after step `snap` (if >= 0). Bit p of lane k is bit p % 64 of
    source[p // 64] if `stride` is 0 (the payload as it is), else of source[(p // 64) x stride + k] (interleaved).

    A refill reads every lane's next 64 bits from two words of `source` (clamped, so a hostile lane running past
    its words reads other words and fails the end check, as it would reading the next segment). Symbols go to a
    cache-sized buffer of CHUNK_CELLS, transposed into `out` in tiles. The step's calls take arrays only (0-d
    constants), outputs positional: a Python int operand costs a ufunc call about as much as its work on a few
    hundred lanes (and np.take's wrapper more than the method), which is what small streams pay."""
    nlanes = start.size
    refill = 64 // width  # codes one refill always holds
    # codes decoded per refill while lanes do not run out of bits: a guess beyond `refill` pays a check of four calls
    # per refill, worth it from 3 codes more on
    group = min(64, guess) if guess >= refill + 3 else refill
    groups = redone = 0
    chunk = min(steps, max(1, CHUNK_CELLS // nlanes))
    take_lo, take_hi, take_sym, take_len = source.take, source[max(1, stride):].take, lut_sym.take, lut_len.take
    shr, shl, band, bor, sub, add, mul = (np.right_shift, np.left_shift, np.bitwise_and, np.bitwise_or, np.subtract,
                                          np.add, np.multiply)
    lane = np.arange(nlanes, dtype=np.int64)
    pos = start.copy()  # per lane: the bit its next code starts at
    q, r, w, high, idx, ln = (np.empty_like(pos) for _ in range(6))
    six, low6, sixty4, mask, row = (np.array(v, dtype=np.int64) for v in (6, 63, 64, (1 << width) - 1, stride))
    uq, ur, uw, uh = (a.view(np.uint64) for a in (q, r, w, high))  # logical shifts
    block = np.empty((chunk, nlanes), dtype=out.dtype)
    rows = list(block)
    saved, used = np.empty_like(pos), np.empty_like(pos)
    last_end = None

    def fill() -> None:
        """w = the next 64 stream bits of every lane, first bit in bit 0."""
        shr(pos, six, q)
        if stride:
            mul(q, row, q)
            add(q, lane, q)
        take_lo(q, 0, w, "clip")
        take_hi(q, 0, high, "clip")
        band(pos, low6, r)
        shr(uw, ur, uw)
        sub(sixty4, r, q)
        shl(uh, uq, uh)  # a shift by 64 gives 0
        bor(w, high, w)

    def run(t0: int, t1: int, c0: int) -> None:
        """Steps t0..t1-1 from w, as filled: one symbol of every lane each."""
        nonlocal last_end
        for t in range(t0, t1):
            band(w, mask, idx)
            take_sym(idx, 0, rows[t - c0], "wrap")  # in range ("wrap" is the cheapest mode)
            take_len(idx, 0, ln, "wrap")
            shr(w, ln, w)
            add(pos, ln, pos)  # per step: cheaper than one reduce over the group's lengths
            if t == snap:
                last_end = int(pos[-1])

    for c0 in range(0, steps, chunk):
        c1 = min(c0 + chunk, steps)
        t = c0
        while t < c1:
            g = min(group, c1 - t)
            fill()
            if g > refill:
                np.copyto(saved, pos)
            run(t, t + g, c0)
            groups += 1
            if g > refill and int(np.maximum.reduce(sub(pos, saved, used))) > 64:
                # a lane's codes ran past its 64 fresh bits (so the codes after that one may be wrong): redo these
                # steps with refills that always suffice; guess fewer codes if more than 1 in 16 groups needs it
                np.copyto(pos, saved)
                for t0 in range(t, t + g, refill):
                    fill()
                    run(t0, min(t0 + refill, t + g), c0)
                redone += 1
                if 16 * redone > groups:
                    group = max(refill, group - 1)
            t += g
        for j in range(0, nlanes, TILE):  # in tiles of TILE lanes: 10x faster than one strided copy
            out[j:j + TILE, c0:c1] = block[:c1 - c0, j:j + TILE].T
    return pos, last_end


@hookimpl
def dcframe_stages():
    return [Huffman]
