"""Fuzzing the reader with mutated real containers: every case ends in decoded tensors or a DcfError.

Three levels of mutation, so that the checksums do not stop everything at the door:
- bytes: bit flips, truncations, splices, insertions anywhere in the file (the CRCs and bounds must catch them);
- streams: a stored stream's bytes are mutated and its CRC fixed up, so the stage decoders see hostile data;
- fields: a value in a record (shape, dtype, steps meta, stream descriptors) or in the index (chains and their
  configs) is replaced, deleted or swapped with another, and the file re-packed with valid CRCs and offsets.
Every case runs under a memory bound (a soft RLIMIT_AS: an over-allocation shows up as a MemoryError, which fails
the test) and a time bound (SIGALRM). Inputs that ever failed are kept in tests/fuzz_corpus/ and replayed.
DCF_FUZZ_EXAMPLES scales the number of cases (HYPOTHESIS_PROFILE=fuzz for random local runs).
"""

from __future__ import annotations

import contextlib
import copy
import os
import resource
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest
from container_tools import Parts, join, split
from hypothesis import given, settings
from hypothesis import strategies as st

import dcframe
from dcframe import Container, DcfError, Dense
from dcframe.api import verify
from dcframe.core.report import container_report

CORPUS = Path(__file__).parent / "fuzz_corpus"
EXAMPLES = int(os.environ.get("DCF_FUZZ_EXAMPLES", "400"))
MEMORY_HEADROOM = 1 << 30  # bytes of address space a case may add to the process (legit cases need a few MB)
TIME_LIMIT = 10.0  # seconds per case

SEED_CHAINS = [
    ("zstd", "zstd(level=3)", {}),
    ("zlib", "zlib(level=6)", {}),
    ("lzma", "lzma(preset=1)", {}),
    ("bz2", "bz2(level=1)", {}),
    ("raw", "raw", {}),
    ("han", None, {"preset": "han"}),
    ("quantize8", None, {"preset": "quantize8"}),
    ("sparse-huffman-zstd", "prune(sparsity=0.7) | sparse(index_bits=3) | huffman(segment_size=16) | zstd(level=1)",
     {}),
    ("kmeans-huffman", "kmeans(bits=3) | huffman(max_bits=4, segment_size=7)", {}),
    ("multichunk", "zstd(level=1)", {"chunk_size": 64}),
]


class CaseTimeout(Exception):
    """A case ran over TIME_LIMIT."""


def _tensors() -> dict[str, Dense]:
    rng = np.random.default_rng(8)
    bf16 = (rng.standard_normal((6, 10)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return {
        "fc.weight": Dense.of(rng.standard_normal((48, 40)).astype(np.float32)),
        "conv.weight": Dense.of(rng.standard_normal((6, 4, 3, 3)).astype(np.float16)),
        "fc.bias": Dense.of(rng.standard_normal(40).astype(np.float32)),
        "emb": Dense(bf16, "BF16"),
        "steps": Dense.of(np.arange(-5, 20, dtype=np.int8)),
        "mask": Dense.of(rng.random(30) < 0.3),
    }


_SEEDS: list[bytes] = []


def seed_files() -> list[bytes]:
    """Real containers, one per chain (the tensors are small so that thousands of cases run in seconds)."""
    if not _SEEDS:
        with tempfile.TemporaryDirectory() as directory:
            for name, pipeline, extra in SEED_CHAINS:
                path = Path(directory) / f"{name}.dcf"
                kwargs = dict(extra)
                if pipeline is not None:
                    kwargs["pipeline"] = pipeline
                dcframe.compress(_tensors(), path, **kwargs)
                _SEEDS.append(path.read_bytes())
    return _SEEDS


@contextlib.contextmanager
def bounded(seconds: float = TIME_LIMIT, headroom: int = MEMORY_HEADROOM):
    """Run a block under a soft address-space limit (current size + headroom) and a wall-clock alarm."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        current = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = current + headroom if hard == resource.RLIM_INFINITY else min(hard, current + headroom)

    def alarm(signum, frame):
        raise CaseTimeout(f"case ran over {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


DCF_ERRORS = {cls.__name__ for cls in (DcfError, *dcframe.DcfError.__subclasses__())} | {
    "IntegrityError", "LimitError"}


def _check_error(exc: DcfError) -> None:
    message = str(exc)
    assert "MemoryError" not in message, f"over-allocation surfaced as: {message}"
    assert message, "an error without a message"


def exercise(data: bytes) -> int:
    """Open, verify, report and decode a file in every way a user can: returns the number of tensors decoded.

    Anything but a DcfError (or a clean decode) propagates and fails the calling test.
    """
    fd, name = tempfile.mkstemp(suffix=".dcf")
    decoded = 0
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        with bounded():
            try:
                result = verify(name)  # opens the container, checks every CRC, decodes every tensor
                for row in result["tensors"]:
                    if row["ok"]:
                        decoded += 1
                    else:
                        assert row["kind"] in DCF_ERRORS, row
                        assert "MemoryError" not in row["error"], row["error"]
                with Container(name) as container:
                    container_report(container)
            except DcfError as exc:
                _check_error(exc)
    finally:
        os.unlink(name)
    return decoded


# --- strategies -------------------------------------------------------------------------------------------------
INTERESTING_INTS = [0, 1, -1, 2, 7, 8, 255, 256, 4096, 65535, 65536, 2**24, 2**30, 2**31 - 1, 2**32 - 1, 2**32,
                    2**40, 2**53 - 1, 2**53, 2**62, 2**63 - 1, -(2**63)]
values = st.one_of(
    st.sampled_from(INTERESTING_INTS),
    st.integers(-(2**63), 2**64 - 1),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["F32", "F16", "BF16", "I8", "U64", "BOOL", "data", "values", "positions", "zstd", ""]),
    st.text(max_size=6),
    st.binary(max_size=48),
    st.lists(st.sampled_from(INTERESTING_INTS), max_size=5),
    st.dictionaries(st.sampled_from(["size", "count", "shape", "alphabet", "dtype", "codebook", "x"]),
                    st.sampled_from(INTERESTING_INTS), max_size=3),
)


def _paths(obj, prefix=()):
    """Every (container, key) position in a nested msgpack structure, leaves and inner nodes alike."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield (*prefix, k)
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield (*prefix, i)
            yield from _paths(v, (*prefix, i))


def _get(obj, path):
    for key in path:
        obj = obj[key]
    return obj


def _set(obj, path, value) -> None:
    _get(obj, path[:-1])[path[-1]] = value


def _delete(obj, path) -> None:
    del _get(obj, path[:-1])[path[-1]]


def mutate_bytes(data: bytes, draw) -> bytes:
    """One raw mutation anywhere in the file."""
    buf = bytearray(data)
    op = draw(st.sampled_from(["flip", "truncate", "splice", "insert", "delete", "overwrite"]))
    pos = draw(st.integers(0, len(buf) - 1))
    if op == "flip":
        for _ in range(draw(st.integers(1, 8))):
            p = draw(st.integers(0, len(buf) - 1))
            buf[p] ^= 1 << draw(st.integers(0, 7))
    elif op == "truncate":
        del buf[pos:]
    elif op == "splice":
        end = draw(st.integers(pos, len(buf)))
        other = draw(st.integers(0, len(buf) - 1))
        buf[pos:end] = buf[other:other + (end - pos)]
    elif op == "insert":
        buf[pos:pos] = draw(st.binary(min_size=1, max_size=16))
    elif op == "delete":
        del buf[pos:pos + draw(st.integers(1, 16))]
    else:
        blob = draw(st.sampled_from([b"\xff" * 8, b"\x00" * 8, b"\x7f\xff\xff\xff", b"\xc6\xff\xff\xff\xff"]))
        buf[pos:pos + len(blob)] = blob
    return bytes(buf)


def mutate_stream(parts: Parts, draw) -> None:
    """Mutate one stored stream's bytes (its CRC is recomputed by join)."""
    candidates = [(i, s) for i, (_, streams) in enumerate(parts.tensors) for s in streams]
    i, sname = draw(st.sampled_from(candidates))
    blob = parts.tensors[i][1][sname]
    if blob:
        blob = mutate_bytes(blob, draw)
    else:
        blob = draw(st.binary(min_size=1, max_size=64))
    if draw(st.booleans()) and blob:  # and sometimes a second, different mutation
        blob = mutate_bytes(blob, draw)
    parts.tensors[i][1][sname] = blob


def mutate_field(parts: Parts, draw) -> bool:
    """Replace, delete or swap one value of a record or of the index; returns whether stream descriptors were hit."""
    where = draw(st.sampled_from(["record", "record", "record", "index"]))
    if where == "index":
        root = parts.index
    else:
        root = parts.tensors[draw(st.integers(0, len(parts.tensors) - 1))][0]
    paths = list(_paths(root))
    path = draw(st.sampled_from(paths))
    op = draw(st.sampled_from(["replace", "replace", "replace", "delete", "swap"]))
    if op == "replace":
        _set(root, path, draw(values))
    elif op == "delete":
        _delete(root, path)
    else:
        other = draw(st.sampled_from(paths))
        a, b = copy.deepcopy(_get(root, path)), copy.deepcopy(_get(root, other))
        with contextlib.suppress(KeyError, IndexError, TypeError):
            _set(root, path, b)
            _set(root, other, a)
    return where == "record" and bool(path) and path[0] == "streams"


def _pack(parts: Parts, keep_descriptors: bool, chunk_size: int) -> bytes | None:
    try:
        return join(parts, chunk_size=chunk_size, fix_streams=not keep_descriptors)
    except (OverflowError, ValueError, TypeError, KeyError, IndexError):
        return None  # the mutation made something msgpack (or this little writer) cannot express


def _record(data: bytes, kind: str) -> None:
    """Keep an input that failed in the corpus (the failing test still fails)."""
    CORPUS.mkdir(exist_ok=True)
    import hashlib

    (CORPUS / f"{kind}-{hashlib.sha1(data).hexdigest()[:12]}.dcf").write_bytes(data)


def _run(data: bytes, kind: str) -> None:
    try:
        exercise(data)
    except BaseException:
        if os.environ.get("DCF_FUZZ_RECORD"):
            _record(data, kind)
        raise


# --- tests ------------------------------------------------------------------------------------------------------
def test_seeds_decode():
    for data in seed_files():
        assert exercise(data) == len(_tensors())


@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_fuzz_bytes(data):
    seeds = seed_files()
    seed = seeds[data.draw(st.integers(0, len(seeds) - 1))]
    mutated = mutate_bytes(seed, data.draw)
    if data.draw(st.booleans()):
        mutated = mutate_bytes(mutated, data.draw) if mutated else mutated
    _run(mutated, "bytes")


@settings(max_examples=2 * EXAMPLES)
@given(data=st.data())
def test_fuzz_streams_past_the_checksums(data):
    seeds = seed_files()
    index = data.draw(st.integers(0, len(seeds) - 1))
    parts = split(seeds[index])
    for _ in range(data.draw(st.integers(1, 2))):
        mutate_stream(parts, data.draw)
    chunk = SEED_CHAINS[index][2].get("chunk_size", 1 << 24)
    _run(join(parts, chunk_size=chunk), "stream")


@settings(max_examples=2 * EXAMPLES)
@given(data=st.data())
def test_fuzz_fields_past_the_checksums(data):
    seeds = seed_files()
    index = data.draw(st.integers(0, len(seeds) - 1))
    parts = split(seeds[index])
    keep = False
    for _ in range(data.draw(st.integers(1, 3))):
        keep = mutate_field(parts, data.draw) or keep
    if data.draw(st.booleans()):
        mutate_stream(parts, data.draw)
    packed = _pack(parts, keep, SEED_CHAINS[index][2].get("chunk_size", 1 << 24))
    if packed is not None:
        _run(packed, "field")


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.dcf")), ids=lambda p: p.name)
def test_corpus_replays(path):
    """Inputs that once crashed, hung or over-allocated: each must now end in tensors or a DcfError."""
    exercise(path.read_bytes())


def test_memory_bound_is_real():
    """The harness's bound does catch an over-allocation (so a passing fuzz run means something)."""
    with pytest.raises(MemoryError), bounded(headroom=64 << 20):
        np.ones(1 << 28, dtype=np.uint8)


def test_time_bound_is_real():
    with pytest.raises(CaseTimeout), bounded(seconds=0.05):
        while True:
            pass
