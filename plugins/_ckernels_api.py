"""The C kernels (`_ckernels`, built by setup.py where a compiler exists) behind the interface of `_numba_kernels`.

Each function allocates its outputs as numpy arrays and hands every array to the C function by the buffer protocol,
so the C needs no numpy headers. Same arguments, same results as the numba kernels (see that module's doc), plus
`histogram`, `normalize` and `golomb_costs`, the rans encoder's statistics. Imported only through `_kernels`.
"""

from __future__ import annotations

import numpy as np

from . import _ckernels as _c


def huffman_table(lengths: np.ndarray, width: int, limit: int) -> np.ndarray:
    """The LSB-first decode table of the canonical code of `lengths`: entry = length << 16 | symbol, 0 if none."""
    lut = np.empty(1 << width, dtype=np.int32)
    _c.huffman_table(np.ascontiguousarray(lengths, dtype=np.int64), width, limit, lut)
    return lut


def huffman_decode(words: np.ndarray, starts: np.ndarray, nsyms: np.ndarray, seg: int, lut: np.ndarray, width: int,
                   out: np.ndarray) -> np.ndarray:
    """Decode every segment into `out`; return each segment's end bit position."""
    end_pos = np.empty(starts.size, dtype=np.int64)
    _c.huffman_decode(words, np.ascontiguousarray(starts, dtype=np.int64), np.ascontiguousarray(nsyms, dtype=np.int64),
                      seg, lut, width, out, end_pos)
    return end_pos


def huffman_pack(symbols: np.ndarray, lens: np.ndarray, rev: np.ndarray, seg: int) -> tuple[np.ndarray, np.ndarray]:
    """Every symbol's code LSB-first, each segment from a byte boundary: payload and segment ends."""
    ends = np.empty(-(-symbols.size // seg), dtype=np.int64)
    payload = _c.huffman_pack(np.ascontiguousarray(symbols), np.ascontiguousarray(lens, dtype=np.int64),
                              np.ascontiguousarray(rev, dtype=np.uint64), seg, ends)
    return np.frombuffer(payload, dtype=np.uint8), ends


def rans_table(symbols: np.ndarray, freq: np.ndarray, bits: int) -> np.ndarray:
    """The decode table over the 2^bits slots: entry = freq << 32 | bias << 16 | symbol."""
    table = np.empty(1 << bits, dtype=np.uint64)
    _c.rans_table(np.ascontiguousarray(symbols, dtype=np.int64), np.ascontiguousarray(freq, dtype=np.int64), bits,
                  table)
    return table


def rans_decode(x: np.ndarray, words: np.ndarray, nwords: int, count: int, bits: int, table: np.ndarray,
                out: np.ndarray, low: int) -> int:
    """Decode `count` symbols into `out`, the int64 states `x` updated in place; the words read, or -1 (truncated)."""
    return _c.rans_decode(x, words, nwords, count, bits, table, out, low)


def golomb_pairs(bits: np.ndarray, pairs: int, order0: int, order1: int,
                 max_width: int) -> tuple[int, np.ndarray, np.ndarray, int]:
    """`pairs` pairs of Exp-Golomb codes from the unpacked bits: status (0 ok), both value arrays, the end bit."""
    first, second = np.zeros(pairs, dtype=np.int64), np.zeros(pairs, dtype=np.int64)
    status, stop = _c.golomb_pairs(np.ascontiguousarray(bits, dtype=np.uint8), pairs, order0, order1, max_width,
                                   first, second)
    return status, first, second, stop


def rans_encode(symbols: np.ndarray, freq: np.ndarray, cum: np.ndarray, bits: int, lanes: int,
                low: int) -> tuple[np.ndarray, np.ndarray]:
    """Run every lane backwards from state `low`: the final states and the words in decoder read order."""
    x = np.empty(lanes, dtype=np.int64)
    words = np.empty(symbols.size, dtype=np.uint16)
    at = _c.rans_encode(np.ascontiguousarray(symbols), np.ascontiguousarray(freq, dtype=np.int64),
                        np.ascontiguousarray(cum, dtype=np.int64), bits, lanes, low, x, words)
    return x, words[at:]


def histogram(symbols: np.ndarray, alphabet: int) -> np.ndarray:
    """np.bincount(symbols, minlength=alphabet) for uint8 / uint16 symbols below `alphabet`, without widening them."""
    counts = np.empty(alphabet, dtype=np.int64)
    _c.histogram(np.ascontiguousarray(symbols), counts)
    return counts


def normalize(counts: np.ndarray, totals: np.ndarray, up: np.ndarray, down: np.ndarray, rounds: int) -> np.ndarray:
    """rans.normalize_all's frequencies, one row per total, from the log2 step tables the numpy path uses."""
    out = np.empty((totals.size, counts.size), dtype=np.int64)
    _c.normalize(np.ascontiguousarray(counts, dtype=np.int64), np.ascontiguousarray(totals, dtype=np.int64), up, down,
                 rounds, out)
    return out


def golomb_costs(values: np.ndarray, orders: int) -> np.ndarray:
    """The bits of the values' Exp-Golomb codes for each order 0..orders - 1 (rans.best_order's costs)."""
    out = np.empty(orders, dtype=np.int64)
    _c.golomb_costs(np.ascontiguousarray(values, dtype=np.int64), out)
    return out


def tcq_viterbi(y: np.ndarray, run: int, bits: list | None, rate_weight: float) -> tuple[np.ndarray, np.ndarray]:
    """tcq.viterbi over every run of the flat values `y` (in steps): each element's level and quantizer."""
    levels, quantizer = np.empty(y.size, dtype=np.int64), np.empty(y.size, dtype=np.int8)
    (low0, bits0), (low1, bits1) = bits if bits is not None else ((0, np.zeros(1)), (0, np.zeros(1)))
    _c.tcq_viterbi(np.ascontiguousarray(y, dtype=np.float64), run, np.ascontiguousarray(bits0, dtype=np.float64),
                   low0, np.ascontiguousarray(bits1, dtype=np.float64), low1, float(rate_weight),
                   bits is not None and rate_weight != 0, levels, quantizer)
    return levels, quantizer
