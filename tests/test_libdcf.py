"""libdcf, the C decoder (libdcf/): built with `make` into a temporary folder, it decodes every valid golden vector
bit for bit, rejects every invalid one with its class, decodes Python-written files (Hypothesis: small tensors
through the lossless/han/quantize8/pretrained presets and rans/uniform chains) identically, and an AddressSanitizer +
UBSan build survives thousands of mutated files with no finding. `dcf-decode` writes safetensors or fails in one line
leaving nothing behind."""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dcframe

ROOT = Path(__file__).resolve().parent.parent
LIBDCF = ROOT / "libdcf"
VECTORS = ROOT / "spec" / "vectors"
INDEX = json.loads((VECTORS / "index.json").read_text(encoding="utf-8"))
CC = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")
MAKE = shutil.which("make")
UNSUPPORTED = {"lzma", "bz2"}  # libdcf declares them unsupported (spec/stages/generic.md allows it)

pytestmark = pytest.mark.skipif(CC is None or MAKE is None, reason="no C compiler or make: libdcf cannot be built")


def _asan_works(build: Path) -> bool:
    """Whether the sanitizer runtime is installed (the asan target links and runs)."""
    res = subprocess.run([MAKE, "-C", str(LIBDCF), f"BUILD={build}", f"CC={CC}", "asan"], capture_output=True, text=True)
    if res.returncode != 0:
        return False
    return subprocess.run([str(build / "dcf-check-asan")], capture_output=True).returncode == 2


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """libdcf built (lib, tools) with the warning flags of its Makefile, into a temporary folder."""
    out = tmp_path_factory.mktemp("libdcf-build")
    res = subprocess.run([MAKE, "-C", str(LIBDCF), f"BUILD={out}", f"CC={CC}", "-j2", "lib", "tool"],
                         capture_output=True, text=True)
    assert res.returncode == 0, f"make failed:\n{res.stdout}\n{res.stderr}"
    return out


def check(tool: Path, files: list[Path], outdir: Path | None = None) -> list[dict]:
    """Run dcf-check on `files`; per file {"open": class, "tensors": {name: (class, index)}}."""
    lst = (outdir or files[0].parent) / f"list-{os.getpid()}-{random.random():.9f}.txt"
    lst.write_text("".join(f"{f}\n" for f in files), encoding="utf-8")
    args = [str(tool)] + (["-o", str(outdir)] if outdir else []) + [str(lst)]
    res = subprocess.run(args, capture_output=True, text=True, timeout=600)
    lst.unlink()
    assert res.returncode == 0, res.stderr
    out: list[dict] = [{"open": None, "tensors": {}} for _ in files]
    for line in res.stdout.splitlines():
        parts = line.split(" ", 4)
        if parts[1] == "open":
            out[int(parts[0])]["open"] = parts[2]
        else:
            out[int(parts[0])]["tensors"][parts[4]] = (parts[2], int(parts[1]))
    return out


# -- golden vectors -----------------------------------------------------------------------------------------------


def test_valid_vectors_decode_bit_for_bit(build: Path, tmp_path: Path) -> None:
    """Every tensor of every valid vector decodes to exactly the expected bytes; lzma/bz2 ones are UnsupportedError."""
    files = [VECTORS / v["file"] for v in INDEX["valid"]]
    results = check(build / "dcf-check", files, tmp_path)
    for i, (v, r) in enumerate(zip(INDEX["valid"], results, strict=True)):
        assert r["open"] == "OK", v["file"]
        expected = (VECTORS / v["expected"]).read_bytes()
        assert list(r["tensors"]) == [t["name"] for t in v["tensors"]], v["file"]
        for t in v["tensors"]:
            code, j = r["tensors"][t["name"]]
            if set(v["stages"]) & UNSUPPORTED:
                assert code == "UnsupportedError", (v["file"], t["name"])
                continue
            assert code == "OK", (v["file"], t["name"], code)
            got = (tmp_path / f"{i}-{j}.bin").read_bytes()
            assert got == expected[t["offset"]:t["offset"] + t["length"]], (v["file"], t["name"])


def test_invalid_vectors_rejected_with_their_class(build: Path) -> None:
    """Opening fails (tensor null) or reading the tensor fails, with exactly the vector's error class."""
    files = [VECTORS / v["file"] for v in INDEX["invalid"]]
    for v, r in zip(INDEX["invalid"], check(build / "dcf-check", files), strict=True):
        if v["tensor"] is None:
            assert r["open"] == v["error"], v["file"]
            continue
        assert r["open"] == "OK", v["file"]
        expected = "UnsupportedError" if set(v["exercises"]) & UNSUPPORTED else v["error"]
        assert r["tensors"][v["tensor"]][0] == expected, v["file"]


# -- Python-written files -----------------------------------------------------------------------------------------

PRESETS = ["lossless", "han", "quantize8", "pretrained"]
PIPELINES = ["kmeans(bits=6) | rans", "uniform(step=0.05) | huffman", "uniform(step=0.02, dead_zone=0.3) | rans",
             "prune(sparsity=0.7) | sparse(index_bits=3) | rans", "zlib", "sparse(index_bits=2) | huffman | zstd"]
DTYPES = ["float32", "float64", "float16"]


@st.composite
def tensor_sets(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """A few small float tensors of rank 0-3 (some sparse, some with few distinct values)."""
    out = {}
    for k in range(draw(st.integers(1, 4))):
        shape = tuple(draw(st.lists(st.integers(0, 40), min_size=0, max_size=3)))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        x = rng.standard_normal(shape) * draw(st.sampled_from([0.01, 1.0, 30.0]))
        if draw(st.booleans()):
            x[np.abs(x) < np.quantile(np.abs(x), 0.8) if x.size else 0] = 0.0
        out[f"t{k}.weight"] = np.asarray(x).astype(draw(st.sampled_from(DTYPES)))
    return out


@settings(max_examples=30)
@given(tensors=tensor_sets(), how=st.sampled_from([("preset", p) for p in PRESETS] + [("pipeline", p) for p in PIPELINES]))
def test_python_written_files_decode_identically(build: Path, tmp_path_factory: pytest.TempPathFactory,
                                                 tensors: dict[str, np.ndarray], how: tuple[str, str]) -> None:
    """Whatever Python writes, libdcf decodes to the same bytes as dcframe's own reader."""
    tmp = tmp_path_factory.mktemp("py")
    path = tmp / "m.dcf"
    dcframe.compress(tensors, path, **{how[0]: how[1]})
    r = check(build / "dcf-check", [path], tmp)[0]
    assert r["open"] == "OK"
    c = dcframe.open_container(path)
    for name in c.names:
        code, j = r["tensors"][name]
        assert code == "OK", (name, how)
        want = c.read(name)
        assert (tmp / f"0-{j}.bin").read_bytes() == np.ascontiguousarray(want.array).tobytes(), (name, how)


# -- the command-line tool ----------------------------------------------------------------------------------------


def read_safetensors(path: Path) -> dict[str, tuple[str, list[int], bytes]]:
    """A minimal safetensors reader: {name: (dtype, shape, bytes)}."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    return {k: (v["dtype"], v["shape"], body[v["data_offsets"][0]:v["data_offsets"][1]]) for k, v in header.items()}


def test_dcf_decode_writes_safetensors_and_lists(build: Path, tmp_path: Path) -> None:
    """dcf-decode FILE OUT gives the tensors dcframe reads; --list names each with dtype and shape."""
    src = VECTORS / "valid" / "han.dcf"
    out = tmp_path / "out.safetensors"
    res = subprocess.run([str(build / "dcf-decode"), str(src), str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    got = read_safetensors(out)
    c = dcframe.open_container(src)
    assert list(got) == c.names
    for name in c.names:
        want = c.read(name)
        assert got[name] == (want.dtype, list(want.array.shape), np.ascontiguousarray(want.array).tobytes())
    listing = subprocess.run([str(build / "dcf-decode"), "--list", str(src)], capture_output=True, text=True)
    assert listing.returncode == 0
    first = listing.stdout.splitlines()[0].split("\t")
    assert first[0] == c.names[0] and first[1] == c.read(c.names[0]).dtype


@pytest.mark.parametrize("vector", ["invalid/stream-crc.dcf", "invalid/bad-magic.dcf", "invalid/huffman-kraft.dcf"])
def test_dcf_decode_fails_in_one_line_leaving_nothing(build: Path, tmp_path: Path, vector: str) -> None:
    """A damaged file: exit 1, one line on stderr naming the file, no output or temporary file left."""
    out = tmp_path / "out.safetensors"
    res = subprocess.run([str(build / "dcf-decode"), str(VECTORS / vector), str(out)], capture_output=True, text=True)
    assert res.returncode == 1
    assert len(res.stderr.strip().splitlines()) == 1 and vector.split("/")[1] in res.stderr
    assert list(tmp_path.iterdir()) == []


# -- mutation fuzzing under AddressSanitizer + UBSan --------------------------------------------------------------


def mutants(seed_files: list[bytes], n: int, rng: random.Random) -> list[bytes]:
    """Bit flips, truncations, byte splices from another file, and msgpack length fields inflated."""
    out = []
    for _ in range(n):
        b = bytearray(rng.choice(seed_files))
        kind = rng.randrange(5)
        if kind == 0:
            for _ in range(rng.randint(1, 4)):
                i = rng.randrange(len(b))
                b[i] ^= 1 << rng.randrange(8)
        elif kind == 1:
            b = b[:rng.randrange(len(b))]
        elif kind == 2:
            other = rng.choice(seed_files)
            i, j = rng.randrange(len(b)), rng.randrange(len(other))
            b[i:i + rng.randint(1, 64)] = other[j:j + rng.randint(1, 64)]
        elif kind == 3:  # a str/bin/array/map length, or a fixarray/fixmap count, made larger
            spots = [i for i, x in enumerate(b) if x in (0xc4, 0xc5, 0xc6, 0xd9, 0xda, 0xdc, 0xde) or 0x81 <= x <= 0x9f]
            if spots:
                i = rng.choice(spots)
                if b[i] >= 0x81 and b[i] <= 0x9f:
                    b[i] = (b[i] & 0xf0) | 0x0f
                elif i + 1 < len(b):
                    b[i + 1] = 0xff
        else:  # a random byte of a valid file's tail (index, trailer) changed
            i = len(b) - 1 - rng.randrange(min(len(b), 200))
            b[i] = rng.randrange(256)
        out.append(bytes(b))
    return out


def test_mutation_fuzz_under_sanitizers(tmp_path: Path) -> None:
    """4000 mutants of the golden vectors and Python-written files: no sanitizer finding, every file answered."""
    if not _asan_works(tmp_path / "b"):
        pytest.skip("the compiler has no working AddressSanitizer/UBSan runtime")
    tool = tmp_path / "b" / "dcf-check-asan"
    seeds = [(VECTORS / v["file"]).read_bytes() for v in INDEX["valid"]]
    rng_np = np.random.default_rng(0)
    for i, preset in enumerate(PRESETS):
        p = tmp_path / f"seed{i}.dcf"
        dcframe.compress({"w": rng_np.standard_normal((30, 20)).astype(np.float32),
                          "b": rng_np.standard_normal(7).astype(np.float32)}, p, preset=preset)
        seeds.append(p.read_bytes())
    files = []
    for k, data in enumerate(mutants(seeds, 4000, random.Random(17))):
        f = tmp_path / f"m{k}.dcf"
        f.write_bytes(data)
        files.append(f)
    halves = [files[: len(files) // 2], files[len(files) // 2:]]
    procs = []
    for h, part in enumerate(halves):
        lst = tmp_path / f"list{h}.txt"
        lst.write_text("".join(f"{f}\n" for f in part), encoding="utf-8")
        procs.append(subprocess.Popen([str(tool), str(lst)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env={**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0"}))
    answered = 0
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-4000:]
        assert "runtime error" not in err and "AddressSanitizer" not in err and "LeakSanitizer" not in err, err[-4000:]
        answered += sum(1 for line in out.splitlines() if line.split(" ")[1] == "open")
    assert answered == len(files)
