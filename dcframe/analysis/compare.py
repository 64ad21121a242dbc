"""What each stage buys and how entropy coders compare on the same data, measured as plain data (no printing).

`compare_model(tensors, ...)` returns one dict (schema `dcframe.compare/1`, documented in README) with three parts:

- ``tensors`` / ``pipelines``: the size after every step of each tensor's chain (dense -> pruned + sparse -> quantized
  -> entropy coded), per tensor and summed per pipeline, side information (each step's metadata) counted.
- ``streams``: the streams the lossy prefix of the chains leaves (relative-index positions, cluster indices, any dense
  values left) plus the raw weights' bytes, each coded by every coder: bytes, bits per symbol, the order-0 entropy
  bound, median encode/decode time. Every output is decoded and checked equal before its row is returned.
- ``baselines``: lossless coding of the model's raw bytes, plain and byte-grouped (one stream per byte plane, as the
  `bytegroup` stage splits them: floats rotated left by one bit so that the exponent has a byte of its own).
- ``sample``: what the raw-bytes measurements (the ``weights`` case and the baselines) coded. A model larger than
  `sample_bytes` is sampled (`sample_tensors`): every tensor gives the same fraction of its elements, as evenly spaced
  chunks of at most SAMPLE_CHUNK_BYTES, so lzma or zstd -19 on an 87 MB model takes seconds, not half an hour.

The default coders are the fast ones (DEFAULT_CODERS, >= 40 MB/s encode on real weights); the slow ones (SLOW_CODERS,
1-13 MB/s) are opt-in by naming them, as `tests/bench/bench_compare.py` measures.

Coders are stages from the registry: a symbols->bytes stage (huffman) gets the symbols, a bytes->bytes stage (zstd,
lzma, bz2, zlib) gets them as the smallest little-endian unsigned ints that hold them (what the `raw` stage writes).
"""

from __future__ import annotations

import math
import re
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from dcframe import __version__
from dcframe.core.errors import ConfigError, DcfError, PipelineError
from dcframe.core.orchestrator import as_dense, fit_chains, order0_entropy_bits, run_steps
from dcframe.core.pipeline import ROOT, SERIALIZER, Chain, Policy, Step
from dcframe.core.registry import Registry, get_registry
from dcframe.core.stage import Stage
from dcframe.core.streams import BYTES, DENSE, SYMBOLS, Bytes, Dense, Stream, Symbols

SCHEMA = "dcframe.compare/1"
DEFAULT_CODERS = ("huffman", "zstd-3", "zlib-1")  # fast: 40-300 MB/s encode on a real transformer's weights
SLOW_CODERS = ("zstd-19", "lzma", "bz2", "zlib")  # 1-13 MB/s there (zlib's default level is 9): opt-in via coders
DEFAULT_PRESET = "han"
DEFAULT_SAMPLE_BYTES = 16 * 2**20  # raw bytes a model may have before its raw-bytes measurements are sampled
SAMPLE_CHUNK_BYTES = 64 * 2**10  # the longest run of consecutive bytes a sample takes from one tensor
WEIGHTS = "weights"  # the case name of the raw weights' bytes
MB = 1e6

Advance = Callable[[str, int], None]  # advance(what, amount): `amount` more of the step's total is done
Progress = Callable[[str, int], AbstractContextManager[Advance]]  # progress(step, total) -> context giving advance


def no_progress(label: str, total: int) -> AbstractContextManager[Advance]:
    """The silent Progress: a context whose advance does nothing."""
    return nullcontext(lambda name, amount: None)


@dataclass(frozen=True)
class Coder:
    """A lossless entropy/byte coder under test: a registered stage giving one bytes stream."""

    name: str  # as the user wrote it: "zstd-19"
    stage: Stage

    @property
    def takes_symbols(self) -> bool:
        return SYMBOLS in self.stage.takes


def parse_coders(spec: str | Sequence[str], registry: Registry | None = None) -> list[Coder]:
    """Parse "huffman,zstd-3,lzma" into coders; `id-N` sets the stage's level (or lzma's preset) to N."""
    registry = registry or get_registry()
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec)]
    if not names or any(not n for n in names):
        raise PipelineError(f"--coders {spec!r}: give coder names separated by commas, e.g. huffman,zstd-19,lzma")
    coders = []
    for name in names:
        match = re.fullmatch(r"(.+?)-(-?\d+)", name)
        stage_id, level = (match[1], match[2]) if match and match[1] in registry.stages else (name, "")
        cls = registry.info(stage_id).cls
        config: dict[str, Any] = {}
        if level:
            key = next((k for k in ("level", "preset") if k in cls.parameters()), None)
            if key is None:
                raise PipelineError(f"coder {name!r}: stage '{stage_id}' has no level or preset to set")
            config[key] = int(level)
        stage = registry.build(stage_id, config)
        if stage.lossy or list(stage.gives.values()) != [BYTES] or not set(stage.takes) & {SYMBOLS, BYTES}:
            raise PipelineError(f"coder {name!r}: stage '{stage_id}' is not a lossless symbols->bytes or "
                                f"bytes->bytes coder")
        coders.append(Coder(name, stage))
    if len({c.name for c in coders}) != len(coders):
        raise PipelineError(f"--coders {spec!r} names a coder twice")
    return coders


def meta_size(meta: Any) -> int:
    """Bytes of a stage's metadata as the container stores it (msgpack): the side information outside the stream."""
    return len(msgpack.packb(meta, use_bin_type=True))


def packed_bits(stream: Stream) -> int:
    """Bits of a stream packed tightly: symbols at ceil(log2(alphabet)) bits, dense at its dtype's width."""
    if isinstance(stream, Symbols):
        return int(stream.array.size) * max(1, (int(stream.alphabet) - 1).bit_length())
    return 8 * stream.nbytes


def _stream_row(name: str, stream: Stream) -> dict[str, Any]:
    count = len(stream.data) if isinstance(stream, Bytes) else int(stream.array.size)
    return {"name": name, "kind": stream.kind, "count": count,
            "alphabet": int(stream.alphabet) if isinstance(stream, Symbols) else None,
            "bytes": stream.nbytes, "packed_bytes": math.ceil(packed_bits(stream) / 8)}


def _step_row(stage: str, config: dict[str, Any] | None, streams: dict[str, Stream], meta_bytes: int,
              side_bytes: int, original: int) -> dict[str, Any]:
    rows = [_stream_row(n, s) for n, s in streams.items()]
    stream_bytes = sum(r["bytes"] for r in rows)
    packed = sum(r["packed_bytes"] for r in rows)
    total, total_packed = stream_bytes + side_bytes, packed + side_bytes
    return {"stage": stage, "config": config, "streams": rows, "stream_bytes": stream_bytes, "packed_bytes": packed,
            "meta_bytes": meta_bytes, "total_bytes": total, "total_packed_bytes": total_packed,
            "ratio": _ratio(original, total), "packed_ratio": _ratio(original, total_packed)}


def _ratio(original: int, size: int) -> float:
    return original / size if size else 0.0


def lossy_prefix(chain: Chain) -> int:
    """How many leading steps transform dense data (prune, sparse, kmeans): what the entropy coders then get."""
    last = 0
    for i, step in enumerate(chain.steps):
        if DENSE in step.stage.takes and step.stage.id != SERIALIZER:
            last = i + 1
    return last


@dataclass
class _Part:
    tensor: str
    symbols: Symbols


def _case_name(step: Step, local: str) -> str:
    return f"{step.stage.id}.{local}"


def stage_by_stage(name: str, dense: Dense, chain: Chain,
                   pipeline: str | None = None) -> tuple[dict[str, Any], dict[str, list[_Part]]]:
    """Run one tensor through its chain, recording sizes after every step; also return the lossy prefix's streams."""
    original = dense.nbytes
    streams: dict[str, Stream] = {ROOT: dense}
    steps = [_step_row("input", None, streams, 0, 0, original)]
    prefix = lossy_prefix(chain)
    origin: dict[str, str] = {}  # stream name -> case name, for the streams the lossy prefix produced
    cases: dict[str, list[_Part]] = {}
    side = 0
    for i, step in enumerate(chain.steps):
        record: list = []
        run_steps([step], streams, record)
        meta = meta_size([app[2] for app in record[0]])
        side += meta
        for source, outs, _ in record[0]:
            origin.pop(source, None)
            for local, out in zip(step.stage.gives, outs, strict=True):
                origin[out] = _case_name(step, local)
        steps.append(_step_row(step.stage.id, step.stage.get_config(), streams, meta, side, original))
        if i + 1 == prefix:
            for sname, s in streams.items():
                if sname in origin and not isinstance(s, Bytes):
                    cases.setdefault(origin[sname], []).append(_Part(name, as_symbols(s)))
    final = steps[-1]["total_bytes"]
    row = {"name": name, "dtype": dense.dtype, "shape": list(dense.array.shape), "pipeline": pipeline or str(chain),
           "original_bytes": original, "steps": steps, "final_bytes": final, "ratio": _ratio(original, final)}
    return row, cases


def as_symbols(stream: Dense | Symbols) -> Symbols:
    """Symbols as they are; a dense stream as its little-endian bytes, each byte one symbol (alphabet 256)."""
    if isinstance(stream, Symbols):
        return stream
    return Symbols(np.ascontiguousarray(stream.array).reshape(-1).view(np.uint8), 256)


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


@dataclass
class CoderRun:
    """One coder on one stream: its output, side information and median times."""

    output: bytes
    metas: list  # the metadata decode needs: [coder meta], or [raw meta, coder meta] for a bytes coder
    meta_bytes: int
    encode_seconds: float
    decode_seconds: float


def _encoder(coder: Coder, raw: Stage, symbols: Symbols) -> Callable[[], tuple[bytes, list]]:
    def encode() -> tuple[bytes, list]:
        if coder.takes_symbols:
            out, meta = coder.stage.encode(symbols)
            return out["data"].data, [meta]
        packed, raw_meta = raw.encode(symbols)
        out, meta = coder.stage.encode(packed["data"])
        return out["data"].data, [raw_meta, meta]
    return encode


def _decoder(coder: Coder, raw: Stage, output: bytes, metas: list) -> Callable[[], Symbols]:
    def decode() -> Symbols:
        if coder.takes_symbols:
            return coder.stage.decode({"data": Bytes(output)}, metas[0])
        packed = coder.stage.decode({"data": Bytes(output)}, metas[1])
        return raw.decode({"data": packed}, metas[0])
    return decode


def run_coder(coder: Coder, symbols: Symbols, repeat: int = 3, raw: Stage | None = None) -> CoderRun:
    """Encode `symbols` `repeat` times (median time), decode as often, and check the result equals the input."""
    raw = raw or get_registry().build(SERIALIZER, {})
    encode = _encoder(coder, raw, symbols)
    (output, metas), first = _timed(encode)
    enc = [first] + [_timed(encode)[1] for _ in range(repeat - 1)]
    decode = _decoder(coder, raw, output, metas)
    decoded, first = _timed(decode)
    dec = [first] + [_timed(decode)[1] for _ in range(repeat - 1)]
    if not (isinstance(decoded, Symbols) and decoded.array.size == symbols.array.size
            and np.array_equal(decoded.array, symbols.array)):
        raise DcfError(f"coder {coder.name!r} did not decode back to its input")
    return CoderRun(output, metas, sum(meta_size(m) for m in metas), statistics.median(enc), statistics.median(dec))


def _rate(nbytes: int, seconds: float) -> float | None:
    return nbytes / seconds / MB if seconds > 0 else None


def _coder_row(coder: str, nbytes: int, meta_bytes: int, count: int, input_bytes: int, bound_bits: float,
               enc: float, dec: float) -> dict[str, Any]:
    bits = 8 * nbytes
    return {"coder": coder, "bytes": nbytes, "meta_bytes": meta_bytes,
            "bits_per_symbol": bits / count if count else 0.0,
            "over_bound": (bits + 8 * meta_bytes) / bound_bits - 1 if bound_bits > 0 else None,
            "below_bound": bits + 8 * meta_bytes < bound_bits,
            "ratio": _ratio(input_bytes, nbytes + meta_bytes),
            "encode_seconds": enc, "decode_seconds": dec,
            "encode_mb_s": _rate(input_bytes, enc), "decode_mb_s": _rate(input_bytes, dec),
            "verified": True, "error": None}


def _error_row(coder: str, error: str) -> dict[str, Any]:
    return {"coder": coder, "bytes": None, "meta_bytes": None, "bits_per_symbol": None, "over_bound": None,
            "below_bound": None, "ratio": None, "encode_seconds": None, "decode_seconds": None,
            "encode_mb_s": None, "decode_mb_s": None, "verified": False, "error": error}


def _marks(rows: list[dict[str, Any]]) -> dict[str, str | None]:
    ok = [r for r in rows if r["error"] is None]

    def best(key: str, sign: int) -> str | None:
        vals = [r for r in ok if r[key] is not None]
        return min(vals, key=lambda r: sign * r[key])["coder"] if vals else None

    return {"smallest": min(ok, key=lambda r: r["bytes"] + r["meta_bytes"])["coder"] if ok else None,
            "fastest_encode": best("encode_mb_s", -1), "fastest_decode": best("decode_mb_s", -1)}


def _runs(coder: Coder, parts: Sequence[Symbols], repeat: int, raw: Stage, advance: Advance,
          label: str) -> list[CoderRun]:
    """One coder on every part, advancing the progress bar by each part's bytes as it is done."""
    runs = []
    for part in parts:
        runs.append(run_coder(coder, part, repeat, raw))
        advance(f"{label} {coder.name}", part.nbytes)
    return runs


def compare_case(case: str, parts: list[_Part], coders: Sequence[Coder], repeat: int = 3,
                 keep: dict | None = None, advance: Advance | None = None) -> dict[str, Any]:
    """Every coder on one kind of stream (each tensor's part coded on its own, as the container does), summed."""
    raw = get_registry().build(SERIALIZER, {})
    advance = advance or (lambda name, amount: None)
    count = sum(int(p.symbols.array.size) for p in parts)
    input_bytes = sum(p.symbols.nbytes for p in parts)
    bound = sum(order0_entropy_bits(p.symbols.array, p.symbols.alphabet) for p in parts)
    rows = []
    for coder in coders:
        try:
            runs = _runs(coder, [p.symbols for p in parts], repeat, raw, advance, case)
        except (ConfigError, DcfError) as exc:
            rows.append(_error_row(coder.name, str(exc)))
            continue
        if keep is not None:
            keep[(case, coder.name)] = [(p.symbols, r.output, r.metas) for p, r in zip(parts, runs, strict=True)]
        rows.append(_coder_row(coder.name, sum(len(r.output) for r in runs), sum(r.meta_bytes for r in runs), count,
                               input_bytes, bound, sum(r.encode_seconds for r in runs),
                               sum(r.decode_seconds for r in runs)))
    return {"name": case, "tensors": [p.tensor for p in parts], "count": count,
            "alphabet": max((int(p.symbols.alphabet) for p in parts), default=0), "input_bytes": input_bytes,
            "entropy_bits": bound, "entropy_bytes": bound / 8, "coders": rows, **_marks(rows)}


def byte_planes(tensors: Sequence[Dense], registry: Registry | None = None) -> list[np.ndarray]:
    """The model's bytes as byte planes through the `bytegroup` stage (spec/stages/bytegroup.md): per element width,
    one stream per byte position, most significant first, each the concatenation of every tensor's plane.

    Each tensor is grouped by the stage (floats rotated left by one bit, so the top plane holds exponent bits only)
    and decoded back, checked bit-exact, before its planes are used.
    """
    stage = (registry or get_registry()).build("bytegroup", {})
    groups: dict[int, list[list[np.ndarray]]] = {}
    for dense in tensors:
        outputs, meta = stage.encode(dense)
        back = stage.decode(outputs, meta)
        if back.array.tobytes() != np.ascontiguousarray(dense.array).tobytes():
            raise DcfError("byte grouping did not invert")
        width, count = dense.array.dtype.itemsize, int(dense.array.size)
        mantissa = np.frombuffer(outputs["mantissa"].data, np.uint8).reshape(width - 1, count)
        groups.setdefault(width, []).append([np.asarray(outputs["exponent"].array, np.uint8), *mantissa])
    return [np.concatenate([planes[p] for planes in groups[width]])
            for width in sorted(groups) for p in range(width)]


def lossless_baselines(tensors: Sequence[Dense], coders: Sequence[Coder], repeat: int = 3,
                       keep: dict | None = None, advance: Advance | None = None) -> dict[str, Any]:
    """Every coder over the given tensors' raw bytes, plain and byte-grouped; each result decoded and checked.

    `original_bytes` and `weights` are of the tensors given: a sample's, when compare_model sampled the model."""
    raw = get_registry().build(SERIALIZER, {})
    advance = advance or (lambda name, amount: None)
    original = sum(d.nbytes for d in tensors)
    plain = Symbols(np.concatenate([as_symbols(d).array for d in tensors]) if tensors else
                    np.zeros(0, np.uint8), 256)
    planes = [Symbols(p, 256) for p in byte_planes(tensors)]
    rows = []
    for transform, parts in (("none", [plain]), ("bytegroup", planes)):
        bound = sum(order0_entropy_bits(p.array, 256) for p in parts)
        for coder in coders:
            try:
                runs = _runs(coder, parts, repeat, raw, advance, transform)
            except (ConfigError, DcfError) as exc:
                row = _error_row(coder.name, str(exc))
            else:
                if keep is not None:
                    keep[(transform, coder.name)] = [(p, r.output, r.metas) for p, r in zip(parts, runs, strict=True)]
                row = _coder_row(coder.name, sum(len(r.output) for r in runs), sum(r.meta_bytes for r in runs),
                                 original, original, bound, sum(r.encode_seconds for r in runs),
                                 sum(r.decode_seconds for r in runs))
            row["transform"] = transform
            row["entropy_bits"] = bound
            row["bits_per_weight"] = None if row["bytes"] is None else 8 * (row["bytes"] + row["meta_bytes"]) / max(
                1, sum(int(d.array.size) for d in tensors))
            rows.append(row)
    return {"original_bytes": original, "weights": sum(int(d.array.size) for d in tensors),
            "planes": len(planes), "rows": rows, **_marks([dict(r, coder=f"{r['transform']}:{r['coder']}")
                                                           for r in rows])}


def _sample_one(dense: Dense, fraction: float, chunk_bytes: int) -> tuple[Dense, int]:
    """`fraction` of one tensor's elements (at least one) as evenly spaced chunks, the first at its start and the last
    at its end (one chunk: the middle); the whole tensor when that is all of it. Returns the 1-D sample and its number
    of chunks."""
    flat = np.ascontiguousarray(dense.array).reshape(-1)
    n = flat.size
    m = min(n, max(1, math.floor(n * fraction)))
    if m >= n:
        return Dense(flat, dense.dtype), 1 if n else 0
    k = -(-m // max(1, chunk_bytes // flat.dtype.itemsize))  # chunks of at most chunk_bytes
    bounds = (np.arange(k + 1, dtype=np.int64) * m) // k  # where each chunk starts within the sample
    gaps = (np.arange(k, dtype=np.int64) * (n - m)) // (k - 1) if k > 1 else np.array([(n - m) // 2])  # skipped
    index = np.repeat(gaps, np.diff(bounds)) + np.arange(m, dtype=np.int64)
    return Dense(flat[index], dense.dtype), k


def sample_tensors(tensors: Sequence[Dense], budget: int | None,
                   chunk_bytes: int = SAMPLE_CHUNK_BYTES) -> tuple[list[Dense], dict[str, Any]]:
    """The tensors as they are if their bytes fit `budget` (or it is None), else a deterministic sample of each.

    Each tensor gives floor(budget / total bytes * its elements) elements (at least one) as evenly spaced chunks of
    at most `chunk_bytes`, so the sample holds at most the budget plus one element per tensor. Returns the (1-D)
    samples in order and what they are: the `sample` object of the compare report.
    """
    total = sum(d.nbytes for d in tensors)
    weights = sum(int(d.array.size) for d in tensors)
    sampled = budget is not None and total > budget
    if sampled:
        picked = [_sample_one(d, budget / total, chunk_bytes) for d in tensors]
        out, chunks = [d for d, _ in picked], sum(k for _, k in picked)
    else:
        out, chunks = list(tensors), sum(1 for d in tensors if d.array.size)
    return out, {"sampled": sampled, "budget_bytes": budget, "chunk_bytes": chunk_bytes, "chunks": chunks,
                 "bytes": sum(d.nbytes for d in out), "weights": sum(int(d.array.size) for d in out),
                 "of_bytes": total, "of_weights": weights}


def _sum_steps(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    original = sum(r["original_bytes"] for r in rows)
    for i, step in enumerate(rows[0]["steps"]):
        total = sum(r["steps"][i]["total_bytes"] for r in rows)
        total_packed = sum(r["steps"][i]["total_packed_bytes"] for r in rows)
        out.append({"stage": step["stage"], "config": step["config"],
                    "stream_bytes": sum(r["steps"][i]["stream_bytes"] for r in rows),
                    "packed_bytes": sum(r["steps"][i]["packed_bytes"] for r in rows),
                    "meta_bytes": sum(r["steps"][i]["meta_bytes"] for r in rows),
                    "total_bytes": total, "total_packed_bytes": total_packed,
                    "ratio": _ratio(original, total), "packed_ratio": _ratio(original, total_packed)})
    return out


def _total_bytes(tensors: Mapping[str, np.ndarray | Dense]) -> int:
    """The tensors' bytes, from a lazy model's headers where it has them (nothing is read for this)."""
    sizes = getattr(tensors, "nbytes", None)
    return sum(sizes(n) if callable(sizes) else tensors[n].nbytes for n in tensors)


def _check_positive(name: str, value: Any, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer{' or None' if optional else ''}, got {value!r}")


def compare_model(tensors: Mapping[str, np.ndarray | Dense], pipeline: str | None = None, preset: str | None = None,
                  coders: str | Sequence[str] = DEFAULT_CODERS, repeat: int = 3, file: str | None = None,
                  file_bytes: int | None = None, progress: Progress | None = None,
                  keep: dict | None = None, sample_bytes: int | None = DEFAULT_SAMPLE_BYTES) -> dict[str, Any]:
    """Measure a model: stage by stage, coder against coder on the lossy prefix's streams, lossless baselines.

    The raw-bytes measurements (`weights` case, baselines) code a sample when the model has more than `sample_bytes`
    (None: never; see sample_tensors). `progress(step, total)` is entered once per step (stages, coders, baselines)
    and gives advance(what, amount), amounts summing to `total` bytes. `keep`, if given, receives every coder's
    outputs, for tests: {(case or transform, coder): [(symbols, output, metas)]}.
    """
    _check_positive("repeat", repeat)
    _check_positive("sample_bytes", sample_bytes, optional=True)
    if pipeline is None and preset is None:
        preset = DEFAULT_PRESET
    policy = Policy(pipeline=pipeline, preset=preset)
    coder_list = parse_coders(coders, policy.registry)
    progress = progress or no_progress

    def items():
        for name in tensors:
            yield name, as_dense(tensors[name])

    chains = fit_chains(policy, items)
    rows, cases, dense_list = [], {}, []
    with progress("stage by stage", _total_bytes(tensors)) as advance:
        for name, dense in items():
            text = policy.pipeline_for(name, dense.array.shape, dense.dtype)
            row, tensor_cases = stage_by_stage(name, dense, chains[text], text)
            rows.append(row)
            for case, parts in tensor_cases.items():
                cases.setdefault(case, []).extend(parts)
            dense_list.append(dense)
            advance(name, dense.nbytes)
    sampled, sample = sample_tensors(dense_list, sample_bytes)
    weights = [_Part(name, as_symbols(d)) for name, d in zip(tensors, sampled, strict=True)]
    work = [*cases.items(), (WEIGHTS, weights)]
    streams = []
    with progress("coding streams", len(coder_list) * sum(p.symbols.nbytes for _, ps in work for p in ps)) as advance:
        for case, parts in work:
            streams.append(compare_case(case, parts, coder_list, repeat, keep, advance))
    streams[-1]["sample"] = sample
    with progress("lossless baselines", 2 * len(coder_list) * sample["bytes"]) as advance:
        baselines = lossless_baselines(sampled, coder_list, repeat, keep, advance)
    baselines["sample"] = sample
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["pipeline"], []).append(row)
    original = sum(r["original_bytes"] for r in rows)
    final = sum(r["final_bytes"] for r in rows)
    return {
        "schema": SCHEMA,
        "dcframe_version": __version__,
        "file": file,
        "file_bytes": file_bytes,
        "pipeline": pipeline,
        "preset": preset,
        "coders": [c.name for c in coder_list],
        "repeat": repeat,
        "original_bytes": original,
        "final_bytes": final,
        "ratio": _ratio(original, final),
        "tensors": rows,
        "pipelines": [{"pipeline": p, "tensors": [r["name"] for r in rs], "original_bytes":
                       sum(r["original_bytes"] for r in rs), "steps": _sum_steps(rs)} for p, rs in groups.items()],
        "streams": streams,
        "baselines": baselines,
        "sample": sample,
    }
