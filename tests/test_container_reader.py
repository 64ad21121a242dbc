"""The container reader's rules for untrusted msgpack and fields (spec/FORMAT.md sections 2, 3, 8), each hit with a
hand-built file whose checksums are valid: what is refused, with which class, when (open or read), and at what cost."""

from __future__ import annotations

import json
import struct
import tracemalloc
import zlib
from pathlib import Path

import msgpack
import numpy as np
import pytest
from container_tools import Parts, join, split

import dcframe
from dcframe import Container, FormatError, LimitError
from dcframe.cli import main
from dcframe.core.container import BYTES_PER_CONTAINER, MAX_DEPTH, OBJECT_FACTOR


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> bytes:
    """A small valid container of three tensors, two of them lossy (so records carry stats)."""
    rng = np.random.default_rng(3)
    path = tmp_path_factory.mktemp("base") / "base.dcf"
    tensors = {"a": rng.standard_normal((20, 10)).astype(np.float32), "b": np.arange(7, dtype=np.int16),
               "c": rng.standard_normal(64).astype(np.float32)}
    dcframe.compress(tensors, path, preset="quantize8", metadata={"model": "m"})
    return path.read_bytes()


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "h.dcf"
    path.write_bytes(data)
    return path


def _open_fails(tmp_path: Path, data: bytes, error=FormatError, match: str | None = None) -> Exception:
    with pytest.raises(error, match=match) as info:
        Container(_write(tmp_path, data)).close()
    return info.value


def _read_fails(tmp_path: Path, data: bytes, name: str, error=FormatError, match: str | None = None) -> Exception:
    with Container(_write(tmp_path, data)) as c:
        for other in c.names:  # a damaged tensor does not prevent reading the others
            if other != name:
                c.read(other)
        with pytest.raises(error, match=match) as info:
            c.read(name)
    return info.value


def _with_index(data: bytes, edit) -> bytes:
    """Re-pack the index map after `edit(index)` (raw msgpack bytes allowed: edit may return bytes)."""
    offset, length, _, _ = struct.unpack("<QII8s", data[-24:])
    index = msgpack.unpackb(data[offset:offset + length], raw=False)
    packed = edit(index)
    packed = packed if isinstance(packed, bytes) else msgpack.packb(index, use_bin_type=True)
    return data[:offset] + packed + struct.pack("<QII8s", offset, len(packed), zlib.crc32(packed), b"DCFINDEX")


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


# -- item 10: inspect never crashes on what a file says --------------------------------------------------------------


def test_inspect_tolerates_a_subnormal_entropy(tmp_path, base, capsys):
    """entropy_bits of 5e-324 made `over_entropy` divide by zero (ZeroDivisionError in inspect and inspect --json)."""
    parts = split(base)
    stream = next(iter(parts.tensors[0][0]["stats"]["entropy_bits"]))
    parts.tensors[0][0]["stats"]["entropy_bits"] = {stream: 5e-324}
    path = _write(tmp_path, join(parts))
    assert main(["inspect", str(path)]) == 0
    capsys.readouterr()
    assert main(["inspect", "--json", str(path)]) == 0
    row = json.loads(capsys.readouterr().out)["tensors"][0]
    assert row["entropy"][stream]["over_entropy"] is None


@pytest.mark.parametrize("metadata, match", [
    ({b"key": "v"}, "not a string"),  # a binary key: TypeError in inspect before
    ({"k": _nested(1000)}, "arrays and maps"),  # RecursionError before; 1000 empty-ish arrays are over the budget
    ({"k": _nested(MAX_DEPTH)}, "nest deeper"),
    ({"k": 5}, "map of strings to strings"),
])
def test_bad_metadata_is_one_line_error(tmp_path, base, capsys, metadata, match):
    def edit(index):
        index["metadata"] = metadata
        return msgpack.packb(index, use_bin_type=True)
    path = _write(tmp_path, _with_index(base, edit))
    for command in (["inspect"], ["inspect", "--json"], ["verify"], ["decompress", "-o", str(tmp_path / "x.npz")]):
        assert main([*command, str(path)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("dcframe: error: ") and err.count("\n") == 1 and match in err, err
    assert not (tmp_path / "x.npz").exists()


def test_version_of_booleans_is_refused(tmp_path, base):
    def edit(index):
        index["version"] = [True, False]
    _open_fails(tmp_path, _with_index(base, edit), FormatError, "bad format version")


# -- msgpack rules (FORMAT.md 2) --------------------------------------------------------------------------------------


def test_duplicate_map_key_is_refused(tmp_path, base):
    def edit(index):
        packed = msgpack.packb(index, use_bin_type=True)
        body = b"".join(msgpack.packb(k) + msgpack.packb(v, use_bin_type=True) for k, v in index.items())
        key = msgpack.packb("producer") + msgpack.packb("again")
        assert packed.endswith(body)
        return bytes([0x80 | (len(index) + 1)]) + body + key  # fixmap: the index has fewer than 15 keys
    _open_fails(tmp_path, _with_index(base, edit), FormatError, "repeats a key")


def test_integer_beyond_2_53_is_refused(tmp_path, base):
    parts = split(base)
    parts.tensors[1][0]["extra"] = 2**53
    data = join(parts)
    _read_fails(tmp_path, data, parts.tensors[1][0]["name"], FormatError, "outside")
    parts.tensors[1][0]["extra"] = 2**53 - 1  # at the limit: fine
    with Container(_write(tmp_path, join(parts))) as c:
        c.read(parts.tensors[1][0]["name"])


def test_nesting_depth_limit(tmp_path, base):
    """MAX_DEPTH levels of arrays and maps (the record map counting as 1) are read; one more is refused."""
    parts = split(base)
    name = parts.tensors[2][0]["name"]
    parts.tensors[2][0]["extra"] = _nested(MAX_DEPTH - 1)
    with Container(_write(tmp_path, join(parts))) as c:
        c.read(name)
    parts.tensors[2][0]["extra"] = _nested(MAX_DEPTH)
    _read_fails(tmp_path, join(parts), name, FormatError, "nest deeper")


def test_float32_is_accepted_where_float64_is_written(tmp_path, base):
    """Writers use float 64; a reader accepts float 32 as well (FORMAT.md 2), e.g. from another implementation."""
    parts = split(base)
    data = join(parts, pack=lambda obj: msgpack.packb(obj, use_bin_type=True, use_single_float=True))
    assert data != join(parts)
    with Container(_write(tmp_path, data)) as c:
        record = c.record(parts.tensors[0][0]["name"])
        assert isinstance(record["stats"]["rms"], float)
        for name in c.names:
            c.read(name)


def test_bytes_left_inside_a_record_are_refused(tmp_path, base):
    parts = split(base)
    data = join(parts)
    offset, length, _, _ = struct.unpack("<QII8s", data[-24:])
    index = msgpack.unpackb(data[offset:offset + length], raw=False)
    name, start, rec_len, total, _ = index["tensors"][0]
    # the record claims one more byte: the first byte of its first chunk header, which is still in the file
    index["tensors"][0][2] = rec_len + 1
    index["tensors"][0][4] = zlib.crc32(data[start:start + rec_len + 1])
    ib = msgpack.packb(index, use_bin_type=True)
    bad = data[:offset] + ib + struct.pack("<QII8s", offset, len(ib), zlib.crc32(ib), b"DCFINDEX")
    _read_fails(tmp_path, bad, name, FormatError, "not valid msgpack")


# -- fields of the index and records (FORMAT.md 3, 4) -----------------------------------------------------------------


def test_stage_version_below_one_is_refused(tmp_path, base):
    def edit(index):
        index["chains"][0][0]["version"] = 0
    _open_fails(tmp_path, _with_index(base, edit), FormatError, "version int >= 1")


def test_package_is_optional(tmp_path, base):
    def edit(index):
        for chain in index["chains"]:
            for stage in chain:
                del stage["package"]
    with Container(_write(tmp_path, _with_index(base, edit))) as c:
        for name in c.names:
            c.read(name)


def test_empty_application_list_is_refused(tmp_path, base):
    parts = split(base)
    parts.tensors[0][0]["steps"][0] = []
    _read_fails(tmp_path, join(parts), parts.tensors[0][0]["name"], FormatError, "non-empty")


def test_duplicate_tensor_name_is_refused(tmp_path, base):
    parts = split(base)
    parts.tensors[1][0]["name"] = parts.tensors[0][0]["name"]
    _open_fails(tmp_path, join(parts), FormatError, "listed twice")


def test_records_not_tiling_the_file_are_malformed_not_over_a_limit(tmp_path, base):
    """An offset that stays inside the file but leaves a gap: FormatError at open (was LimitError)."""
    def edit(index):
        index["tensors"][1][1] += 1
        index["tensors"][0][3] += 1
    err = _open_fails(tmp_path, _with_index(base, edit), FormatError, "tile")
    assert not isinstance(err, LimitError)


def test_entry_running_past_the_file_is_over_a_limit(tmp_path, base):
    def edit(index):
        index["tensors"][-1][3] += 10**9
    _open_fails(tmp_path, _with_index(base, edit), LimitError, "run past the end")


def test_oversized_record_is_refused_at_open(tmp_path, base):
    def edit(index):
        index["tensors"][0][2] = index["tensors"][0][3] = (64 << 20) + 1
    _open_fails(tmp_path, _with_index(base, edit), LimitError, "exceeds the limit")


@pytest.mark.parametrize("field, value", [(1, "8"), (2, -1), (4, 2**32), (3, True)])
def test_bad_entry_field_is_refused_at_open(tmp_path, base, field, value):
    def edit(index):
        index["tensors"][0][field] = value
    _open_fails(tmp_path, _with_index(base, edit), FormatError)


# -- item 3: what a small file of tiny objects may cost ---------------------------------------------------------------


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("where", ["index", "record"])
def test_millions_of_empty_arrays_are_refused_cheaply(tmp_path, base, where):
    """2 MB of empty msgpack arrays cost 144 MB of Python lists (exit 0) before; now the array-and-map budget of
    64 + n/8 stops them within the documented OBJECT_FACTOR x the file's size (FORMAT.md 8.1)."""
    n = 2_000_000
    if where == "index":
        def edit(index):
            packed = msgpack.packb(index, use_bin_type=True)
            junk = msgpack.packb("junk") + b"\xdd" + struct.pack(">I", n) + b"\x90" * n  # array32 of n []
            return bytes([packed[0] + 1]) + packed[1:] + junk  # fixmap: one key more
        data = _with_index(base, edit)
    else:
        parts = split(base)
        parts.tensors[0][0]["junk"] = [[] for _ in range(n)]
        data = join(parts)
    path = _write(tmp_path, data)

    def run():
        with pytest.raises(FormatError, match="arrays and maps"):
            with Container(path) as c:
                for name in c.names:
                    c.read(name)
    assert _peak(run) < OBJECT_FACTOR * len(data)


def test_budget_admits_every_valid_vector():
    """The budget (64 + n/8 arrays and maps per object) is far above what valid files use."""
    vectors = Path(__file__).resolve().parent.parent / "spec" / "vectors" / "valid"
    for path in sorted(vectors.glob("*.dcf")):
        with Container(path) as c:
            for name in c.names:
                c.record(name)
    assert BYTES_PER_CONTAINER == 8


def test_decompress_holds_one_record_at_a_time(tmp_path):
    """decompress used to collect every record before writing: 40 records of 512 KiB (an unknown key each) held
    20 MiB at once; now each record is dropped once its dtype and shape are taken."""
    rng = np.random.default_rng(1)
    seed = tmp_path / "seed.dcf"
    dcframe.compress({f"t{i}": rng.standard_normal(4).astype(np.float32) for i in range(40)}, seed, pipeline="raw")
    parts = split(seed.read_bytes())
    for record, _ in parts.tensors:
        record["pad"] = bytes(512 << 10)
    path = _write(tmp_path, join(parts))
    out = tmp_path / "out.npz"
    peak = _peak(lambda: main(["decompress", "-q", str(path), "-o", str(out)]))
    assert out.exists() and peak < 8 << 20, peak


def test_parts_roundtrip_is_exact(base):
    """container_tools reproduces the file the writer made (so the hostile edits above change only what they say)."""
    assert join(split(base)) == base
    assert isinstance(split(base), Parts)
