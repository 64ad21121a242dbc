"""Metadata memory of opening and inspecting a container, per byte of the file (spec/FORMAT.md 8.1).

For msgpack payloads chosen to be the costliest per byte in Python objects (empty arrays and maps, short strings,
3-byte ints) placed in a record and in the index, and for a valid index of many tensors, prints the peak of Python
allocations (tracemalloc) while dcframe opens the file and reads every record, against the reference of plain
msgpack.unpackb on the same bytes, measured in the same run. Run: python tests/bench/bench_metadata_memory.py
"""

from __future__ import annotations

import struct
import sys
import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from container_tools import Parts, join  # noqa: E402

from dcframe import Container, DcfError  # noqa: E402
from dcframe.core.container import OBJECT_FACTOR  # noqa: E402

N = 1 << 21
RAW = {"id": "raw", "version": 1, "config": {}, "package": "dcframe"}
PLACE = "@@payload@@"


def _array(item: bytes, n: int = N) -> bytes:
    return b"\xdd" + struct.pack(">I", n) + item * n


PAYLOADS: dict[str, bytes] = {
    "empty arrays": _array(b"\x90"),
    "empty maps": _array(b"\x80"),
    "2-char strings": _array(b"\xa2ab"),
    "1-char non-Latin-1 strings": _array(b"\xa2\xc4\x81"),
    "2-char non-Latin-1 strings": _array(b"\xa4\xc4\x81\xc4\x81"),
    "3-byte ints": _array(b"\xcd\x12\x34"),
    "arrays of one 2-char string": _array(b"\x91\xa2ab"),
    "4-byte bins": _array(b"\xc4\x02ab"),
}


def _file(payload: bytes, where: str) -> bytes:
    record = {"name": "w", "dtype": "F32", "shape": [1], "chain": 0,
              "steps": [[["data", ["data"], {"dtype": "F32", "shape": [1]}]]]}
    index = {"format": "dcf", "version": [1, 0], "metadata": {}, "chains": [[RAW]]}
    (record if where == "record" else index)["junk"] = PLACE
    pack = lambda obj: msgpack.packb(obj, use_bin_type=True).replace(msgpack.packb(PLACE), payload)  # noqa: E731
    return join(Parts(index, [(record, {"data": bytes(4)})]), pack=pack)


def _many_tensors(n: int) -> bytes:
    tensors = []
    for i in range(n):
        record = {"name": f"t{i}", "dtype": "F32", "shape": [1], "chain": 0,
                  "steps": [[["data", ["data"], {"dtype": "F32", "shape": [1]}]]]}
        tensors.append((record, {"data": bytes(4)}))
    return join(Parts({"format": "dcf", "version": [1, 0], "metadata": {}, "chains": [[RAW]]}, tensors))


def _peak(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        try:
            fn()
        except DcfError:
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _open_all(path: Path) -> None:
    with Container(path) as c:
        for name in c.names:
            c.record(name)


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = {f"{k} in {w}": _file(v, w) for k, v in PAYLOADS.items() for w in ("record", "index")}
        cases["valid: 2^17 tensors"] = _many_tensors(1 << 17)
        for name, data in cases.items():
            path = Path(tmp) / "f.dcf"
            path.write_bytes(data)
            reference = _peak(lambda data=data: [msgpack.unpackb(data[o:o + n], raw=False) for o, n in _objects(data)])
            peak = _peak(lambda path=path: _open_all(path))
            rows.append((name, len(data), reference, peak))
    print(f"| payload | file bytes | msgpack.unpackb peak / byte | dcframe open+records peak / byte | "
          f"ratio | under {OBJECT_FACTOR} x |")
    print("|---|---:|---:|---:|---:|---|")
    for name, size, ref, peak in rows:
        print(f"| {name} | {size} | {ref / size:.1f} | {peak / size:.1f} | {peak / ref:.2f} | "
              f"{'yes' if peak < OBJECT_FACTOR * size else 'NO'} |")


def _objects(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) of the index and every record, read from the trailer and index (the files are ours)."""
    offset, length = struct.unpack("<QI", data[-24:-12])
    index = msgpack.unpackb(data[offset:offset + length], raw=False)
    return [(offset, length)] + [(e[1], e[2]) for e in index["tensors"]]


if __name__ == "__main__":
    main()
