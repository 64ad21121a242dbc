"""Every limit of spec/FORMAT.md section 8, hit on purpose with a hand-made hostile file (CRCs valid, so the check
itself is what refuses it), and refused before anything big is allocated (tracemalloc peak)."""

from __future__ import annotations

import struct
import tracemalloc
import zlib

import msgpack
import numpy as np
import pytest
from container_tools import join, split

import dcframe
from dcframe import Container, FormatError, LimitError, Limits
from dcframe.core.orchestrator import OUTPUT_FACTOR, OUTPUT_SLACK, check_output, decode_bound, output_limit

SMALL = 16 << 20  # peak bytes any refused file may cost


def _container(tmp_path, pipeline: str = "zstd(level=3)", shape=(32, 24)) -> bytes:
    rng = np.random.default_rng(5)
    path = tmp_path / "seed.dcf"
    dcframe.compress({"w": rng.standard_normal(shape).astype(np.float32)}, path, pipeline=pipeline)
    return path.read_bytes()


def _refused(tmp_path, data: bytes, error=FormatError, match: str | None = None, limits: Limits | None = None):
    """Open and decode `data`; it must fail with `error` matching `match`, under SMALL bytes of peak allocation."""
    path = tmp_path / "hostile.dcf"
    path.write_bytes(data)
    tracemalloc.start()
    try:
        with pytest.raises(error, match=match) as info:
            with Container(path, limits=limits) as c:
                for name in c.names:
                    c.read(name)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < SMALL, f"refusing cost {peak} bytes"
    assert "MemoryError" not in str(info.value)
    return info.value


def _meta(parts, stage_index: int) -> dict:
    record = parts.tensors[0][0]
    return record["steps"][stage_index][0][2]


@pytest.mark.parametrize("codec", ["zstd(level=3)", "zlib", "lzma(preset=1)", "bz2(level=1)"])
def test_tiny_stream_claiming_a_huge_size_is_refused_before_allocating(tmp_path, codec):
    parts = split(_container(tmp_path, codec))
    _meta(parts, 1)["size"] = 1 << 40  # the stored stream is a few KB; its meta claims a terabyte
    err = _refused(tmp_path, join(parts), LimitError, "declared size")
    assert codec.split("(")[0] in str(err) and "'w'" in str(err)


def test_claimed_size_just_over_the_tensor_bound_is_refused(tmp_path):
    parts = split(_container(tmp_path))
    stored = sum(len(s) for s in parts.tensors[0][1].values())
    bound = decode_bound("F32", [32, 24], stored)
    assert bound == OUTPUT_FACTOR * max(32 * 24 * 4, stored) + OUTPUT_SLACK
    _meta(parts, 1)["size"] = bound + 1
    _refused(tmp_path, join(parts), LimitError, "limit")


def test_output_limit_is_scoped_to_one_decode():
    default = output_limit()
    with pytest.raises(LimitError):
        check_output("x", default + 1)
    check_output("x", default)  # no error at the limit


def test_sparse_shape_bomb_is_refused_before_allocating(tmp_path):
    parts = split(_container(tmp_path, "sparse | zstd(level=1)"))
    _meta(parts, 0)["shape"] = [1 << 34]  # 2^34 F32 zeros = 64 GiB from a few bytes
    _refused(tmp_path, join(parts), LimitError)


def test_declared_tensor_beyond_the_file_bound_is_refused(tmp_path):
    parts = split(_container(tmp_path))
    parts.tensors[0][0]["shape"] = [1 << 20, 1 << 20]  # 4 TiB of F32 from a 4 KB file
    _refused(tmp_path, join(parts), LimitError, "declares")


def test_stricter_limits_are_honoured(tmp_path):
    data = _container(tmp_path)
    _refused(tmp_path, data, LimitError, "tensors exceed", limits=Limits(max_tensors=0))
    _refused(tmp_path, data, LimitError, "index of", limits=Limits(max_index_bytes=16))


def test_too_many_dimensions(tmp_path):
    parts = split(_container(tmp_path))
    parts.tensors[0][0]["shape"] = [1] * 33
    _refused(tmp_path, join(parts), LimitError, "33 dimensions")


def test_chunk_over_the_limit(tmp_path):
    parts = split(_container(tmp_path))
    record = parts.tensors[0][0]
    record["streams"] = [["data", 1 << 31, 0, [1 << 31]]]
    _refused(tmp_path, join(parts, fix_streams=False), LimitError)


@pytest.mark.parametrize("field, value", [
    ("size", 10**6),  # more than the file holds
    ("chunks", [1, 2, 3]),  # chunks do not add up
])
def test_stream_sizes_must_match_the_file(tmp_path, field, value):
    parts = split(_container(tmp_path))
    record = parts.tensors[0][0]
    blob = parts.tensors[0][1]["data"]
    desc = ["data", len(blob), zlib.crc32(blob), [len(blob)]]
    desc[1 if field == "size" else 3] = value
    record["streams"] = [desc]
    _refused(tmp_path, join(parts, fix_streams=False), FormatError)


def test_duplicate_stream_names(tmp_path):
    parts = split(_container(tmp_path))
    record = parts.tensors[0][0]
    blob = parts.tensors[0][1]["data"]
    record["streams"] = [["data", len(blob), zlib.crc32(blob), [len(blob)]]] * 2
    parts.tensors[0] = (record, {"data": blob, "data2": blob})
    _refused(tmp_path, join(parts, fix_streams=False), FormatError, "twice")


def test_ext_types_are_refused(tmp_path):
    parts = split(_container(tmp_path))
    parts.tensors[0][0]["stats"] = msgpack.ExtType(5, b"\x00" * 4)
    _refused(tmp_path, join(parts), FormatError, "msgpack")


def test_deeply_nested_msgpack_is_refused(tmp_path):
    data = bytearray(_container(tmp_path))
    offset, length, _, end = struct.unpack("<QII8s", data[-24:])
    index = b"\x91" * 100_000 + b"\xc0"  # an array in an array in ... 100000 deep
    tail = struct.pack("<QII8s", offset, len(index), zlib.crc32(index), end)
    _refused(tmp_path, bytes(data[:offset]) + index + tail, FormatError)


def test_booleans_are_not_integers(tmp_path):
    parts = split(_container(tmp_path))
    parts.tensors[0][0]["chain"] = False
    _refused(tmp_path, join(parts), FormatError, "chain")


@pytest.mark.parametrize("cut", [1, 24, 25, 100])
def test_truncated_files(tmp_path, cut):
    data = _container(tmp_path)
    _refused(tmp_path, data[:-cut], FormatError)


def test_index_must_end_where_the_trailer_starts(tmp_path):
    """Inside the file but short of the trailer: fields contradicting each other, FormatError (FORMAT.md 8.2);
    running past the trailer: LimitError."""
    data = bytearray(_container(tmp_path))
    offset, length, crc, end = struct.unpack("<QII8s", data[-24:])
    data[-24:] = struct.pack("<QII8s", offset - 1, length, crc, end)
    err = _refused(tmp_path, bytes(data), FormatError, "does not end at the trailer")
    assert not isinstance(err, LimitError)
    data[-24:] = struct.pack("<QII8s", offset + 1, length, crc, end)
    _refused(tmp_path, bytes(data), LimitError, "runs past the trailer")


def test_undamaged_tensors_stay_readable(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {f"t{i}": rng.standard_normal(500).astype(np.float32) for i in range(3)}
    path = tmp_path / "m.dcf"
    dcframe.compress(tensors, path, pipeline="zstd(level=1)")
    data = bytearray(path.read_bytes())
    with Container(path) as c:
        entry = c.entries["t1"]
    data[entry.offset + entry.total_length - 5] ^= 0x10
    path.write_bytes(data)
    result = dcframe.api.verify(path)
    assert result["damaged"] == ["t1"] and not result["ok"]
    with Container(path) as c:
        for name in ("t0", "t2"):
            assert c.read(name).array.tobytes() == tensors[name].tobytes()
        with pytest.raises(dcframe.IntegrityError, match="'t1'"):
            c.read("t1")


def test_verify_cli_names_the_damaged_tensor_and_writes_nothing(tmp_path, capsys):
    import json

    from dcframe.cli import main

    rng = np.random.default_rng(1)
    tensors = {f"t{i}": rng.standard_normal(300).astype(np.float32) for i in range(3)}
    path = tmp_path / "m.dcf"
    dcframe.compress(tensors, path, pipeline="zstd(level=1)")
    assert main(["verify", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    data = bytearray(path.read_bytes())
    with Container(path) as c:
        entry = c.entries["t2"]
    data[entry.offset + entry.total_length - 3] ^= 1
    path.write_bytes(data)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["verify", str(path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["damaged"] == ["t2"] and [t["ok"] for t in report["tensors"]] == [True, True, False]
    assert report["tensors"][2]["kind"] == "IntegrityError" and "'t2'" in report["tensors"][2]["error"]
    assert main(["verify", str(path)]) == 1
    assert "t2" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    assert main(["decompress", str(path), "-o", str(tmp_path / "ok.npz"), "--tensor", "t0", "--tensor", "t1",
                 "-q"]) == 0
    back = dcframe.read_model(tmp_path / "ok.npz")
    assert back["t1"].array.tobytes() == tensors["t1"].tobytes()
    path.write_bytes(b"not a container at all, but long enough to have a trailer")
    assert main(["verify", str(path)]) == 1
