"""libdcf, the C decoder (libdcf/): built with `make` into a temporary folder, it decodes every valid golden vector
bit for bit, rejects every invalid one with its class, decodes Python-written files (Hypothesis: small tensors
through the lossless/han/quantize8/pretrained presets and rans/uniform chains) identically, and an AddressSanitizer +
UBSan build survives thousands of mutated files with no finding. `dcf-decode` writes safetensors or fails in one line
leaving nothing behind."""

from __future__ import annotations

import copy
import importlib
import json
import os
import pkgutil
import random
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import msgpack
import numpy as np
import pytest
from dcframe_plugins.rans import Rans
from hypothesis import given, settings
from hypothesis import strategies as st
from rowscale_files import rowscale_files

import dcframe

ROOT = Path(__file__).resolve().parent.parent
LIBDCF = ROOT / "libdcf"
VECTORS = ROOT / "spec" / "vectors"
INDEX = json.loads((VECTORS / "index.json").read_text(encoding="utf-8"))
CC = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")
MAKE = shutil.which("make")
UNSUPPORTED = {"lzma", "bz2"}  # libdcf declares them unsupported (spec/stages/generic.md allows it)

pytestmark = pytest.mark.skipif(CC is None or MAKE is None, reason="no C compiler or make: libdcf cannot be built")


def sanitizers_available(tmp: Path) -> bool:
    """Whether the compiler links and runs a program with -fsanitize=address,undefined (its runtime is installed)."""
    src = tmp / "probe.c"
    src.write_text("int main(void) { return 0; }\n", encoding="utf-8")
    res = subprocess.run([CC, "-fsanitize=address,undefined", str(src), "-o", str(tmp / "probe")], capture_output=True)
    return res.returncode == 0 and subprocess.run([str(tmp / "probe")], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """libdcf built (lib, tools) with the warning flags of its Makefile, into a temporary folder."""
    out = tmp_path_factory.mktemp("libdcf-build")
    res = subprocess.run([MAKE, "-C", str(LIBDCF), f"BUILD={out}", f"CC={CC}", "-j2", "lib", "tool"],
                         capture_output=True, text=True)
    assert res.returncode == 0, f"make failed:\n{res.stdout}\n{res.stderr}"
    return out


@pytest.fixture(scope="module")
def refused(build: Path) -> set[str]:
    """Stages this build refuses as UnsupportedError: lzma and bz2, and zstd / zlib when built without them."""
    have = subprocess.run([str(build / "dcf-check"), "--features"], capture_output=True, text=True, check=True).stdout
    return UNSUPPORTED | ({"zstd", "zlib"} - set(have.split()))


@pytest.fixture(scope="module")
def scalar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SIMD=0 build of the tools (only the portable loops: what ARM phones run)."""
    scalar = tmp_path_factory.mktemp("libdcf-scalar")
    res = subprocess.run([MAKE, "-C", str(LIBDCF), f"BUILD={scalar}", f"CC={CC}", "SIMD=0", "-j2", "tool"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return scalar


@pytest.mark.parametrize("compiler", ["gcc", "clang"])
def test_the_library_and_tools_build_warning_free_with_gcc_and_clang(tmp_path, compiler):
    """Both compilers, both loop sets: -Wall -Wextra -Werror is in the Makefile, so a warning fails the build (a
    clang-only error - a gather scale clang did not take as a constant - once passed a gcc-only suite)."""
    path = shutil.which(compiler)
    if path is None:
        pytest.skip(f"{compiler} is not installed")
    for simd in ("1", "0"):
        out = tmp_path / f"{compiler}-{simd}"
        res = subprocess.run([MAKE, "-C", str(LIBDCF), f"BUILD={out}", f"CC={path}", f"SIMD={simd}", "-j2", "lib",
                              "tool"], capture_output=True, text=True)
        assert res.returncode == 0, f"{compiler} SIMD={simd}:\n{res.stdout}\n{res.stderr}"


def chain_of(container: dcframe.Container, name: str) -> set[str]:
    """Stage ids of tensor `name`'s chain."""
    return {s["id"] for s in container.chains[container.record(name)["chain"]]}


def decodes_as_dcframe(build: Path, scalar: Path, files: list[Path], want: list[bytes], cases: list,
                       tmp_path: Path) -> None:
    """Every file's tensor 'x' decodes to dcframe's bytes `want` from memory and through a read callback, and
    from memory on the portable (SIMD=0) build; `cases` name the files in failures."""
    for tool, mode in [(build / "dcf-check", "memory"), (build / "dcf-check", "reader"),
                       (scalar / "dcf-check", "memory")]:
        out = tmp_path / f"out-{tool.parent.name}-{mode}"
        out.mkdir()
        for k, r in enumerate(check(tool, files, out, mode)):
            code, j = r["tensors"]["x"]
            assert code == "OK", (tool, mode, cases[k])
            assert (out / f"{k}-{j}.bin").read_bytes() == want[k], (tool, mode, cases[k])


def check(tool: Path, files: list[Path], outdir: Path | None = None, mode: str = "memory") -> list[dict]:
    """Run dcf-check on `files` (opened from memory, by path (mmap) or through a read callback); per file
    {"open": class, "tensors": {name: (class, index)}}."""
    lst = (outdir or files[0].parent) / f"list-{os.getpid()}-{random.random():.9f}.txt"
    lst.write_text("".join(f"{f}\n" for f in files), encoding="utf-8")
    args = [str(tool)] + (["-o", str(outdir)] if outdir else []) + ([f"--{mode}"] if mode != "memory" else [])
    args.append(str(lst))
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


@pytest.mark.parametrize("mode", ["memory", "path", "reader"])
def test_valid_vectors_decode_bit_for_bit(build: Path, refused: set[str], tmp_path: Path, mode: str) -> None:
    """Every tensor of every valid vector decodes to exactly the expected bytes (from memory, through dcf_open_path
    and through dcf_open_reader); those whose chain has a stage this build refuses (lzma, bz2) are UnsupportedError."""
    files = [VECTORS / v["file"] for v in INDEX["valid"]]
    results = check(build / "dcf-check", files, tmp_path, mode)
    for i, (v, r) in enumerate(zip(INDEX["valid"], results, strict=True)):
        assert r["open"] == "OK", v["file"]
        expected = (VECTORS / v["expected"]).read_bytes()
        assert list(r["tensors"]) == [t["name"] for t in v["tensors"]], v["file"]
        container = dcframe.open_container(VECTORS / v["file"])
        for t in v["tensors"]:
            code, j = r["tensors"][t["name"]]
            if chain_of(container, t["name"]) & refused:
                assert code == "UnsupportedError", (v["file"], t["name"])
                continue
            assert code == "OK", (v["file"], t["name"], code)
            got = (tmp_path / f"{i}-{j}.bin").read_bytes()
            assert got == expected[t["offset"]:t["offset"] + t["length"]], (v["file"], t["name"])


@pytest.mark.parametrize("mode", ["memory", "path", "reader"])
def test_invalid_vectors_rejected_with_their_class(build: Path, refused: set[str], mode: str) -> None:
    """Opening fails (tensor null) or reading the tensor fails, with exactly the vector's error class."""
    files = [VECTORS / v["file"] for v in INDEX["invalid"]]
    for v, r in zip(INDEX["invalid"], check(build / "dcf-check", files, mode=mode), strict=True):
        if v["tensor"] is None:
            assert r["open"] == v["error"], v["file"]
            continue
        assert r["open"] == "OK", v["file"]
        expected = "UnsupportedError" if set(v["exercises"]) & refused else v["error"]
        assert r["tensors"][v["tensor"]][0] == expected, v["file"]


def test_built_without_codecs_says_so(tmp_path: Path) -> None:
    """`make ZSTD=0 ZLIB=0`: zstd and zlib tensors fail as UnsupportedError naming the missing library; the
    codec-free stages still decode."""
    out = tmp_path / "b"
    res = subprocess.run([MAKE, "-C", str(LIBDCF), f"BUILD={out}", f"CC={CC}", "ZSTD=0", "ZLIB=0", "-j2",
                          str(out / "dcf-check")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    files = [VECTORS / "valid" / f for f in ("lossless-zstd.dcf", "lossless-zlib.dcf", "han-conv.dcf")]
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"{f}\n" for f in files), encoding="utf-8")
    res = subprocess.run([str(out / "dcf-check"), str(lst)], capture_output=True, text=True,
                         env={**os.environ, "DCF_CHECK_VERBOSE": "1"})
    codes = [line.split(" ")[2] for line in res.stdout.splitlines() if line.split(" ")[1] != "open"]
    assert codes[:2] == ["UnsupportedError"] * 2 and codes[-1] == "OK"
    assert "built without zstd" in res.stderr and "built without zlib" in res.stderr


@pytest.fixture(scope="module")
def bench_tool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dcf-bench (decode timings and peak heap per open mode), built once; it needs <zstd.h> (its reference)."""
    if subprocess.run([CC, "-include", "zstd.h", "-x", "c", "-", "-fsyntax-only"], input="int x;\n", text=True,
                      capture_output=True).returncode:
        pytest.skip("dcf-bench needs <zstd.h> (libzstd-dev), which this system lacks")
    out = tmp_path_factory.mktemp("libdcf-bench")
    res = subprocess.run([MAKE, "-C", str(LIBDCF), f"BUILD={out}", f"CC={CC}", str(out / "dcf-bench")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return out / "dcf-bench"


def bench_decode(tool: Path, tmp_path: Path, tensors: dict[str, np.ndarray], name: str, **how: str) -> dict:
    """dcf-bench's decode record (time, output bytes, peak heap per open mode, stored bytes) for one tensor written
    to tmp_path/name.dcf with `how` (a preset or a pipeline)."""
    path = tmp_path / f"{name}.dcf"
    dcframe.compress(tensors, path, **how)
    out = subprocess.run([str(tool), "decode", str(path), "1"], capture_output=True, text=True, check=True).stdout
    (r,) = [json.loads(line) for line in out.splitlines()]
    return r


def test_peak_heap_within_output_plus_one_mib(bench_tool: Path, tmp_path: Path) -> None:
    """Decoding a han and a quantize8 tensor into the caller's buffer holds at most 1 MiB of heap from memory and
    through a read callback too, though the quantize8 tensor stores 1.5 MB of Huffman bytes (a counting allocator
    given to the open call sees every allocation, zstd's included): the read callback mode reads the Huffman
    payload a group of segments at a time."""
    w = np.random.default_rng(0).standard_normal((1500, 1000)).astype(np.float32)
    for preset in ("han", "quantize8"):
        r = bench_decode(bench_tool, tmp_path, {"w": w}, preset, preset=preset)
        assert r["bytes"] == w.nbytes
        assert 0 < r["peak_heap_memory"] <= 2**20, (preset, r)
        assert 0 < r["peak_heap_reader"] <= 2**20, (preset, r)
    assert r["region_bytes"] > 2**20  # quantize8: more stored bytes than the bound


STREAMED_CHAINS = [  # (name, data, how): chains whose stages read their stored input through bounded windows
    ("lossless", "normal", {"preset": "lossless"}),             # bytegroup | zstd(level=5) | rans(lanes=256)
    ("han-rans", "normal", {"preset": "han-rans"}),
    ("zstd19", "normal", {"pipeline": "zstd(level=19)"}),
    ("zlib", "normal", {"pipeline": "zlib"}),
    ("rans", "laplace", {"pipeline": "kmeans(bits=8) | rans"}),
    ("bytegroup-raw", "normal", {"pipeline": "bytegroup | rans"}),  # the mantissa planes stored as they are
    ("bytegroup-zlib", "normal", {"pipeline": "bytegroup | zlib | rans"}),
    ("kmeans-raw", "laplace", {"pipeline": "kmeans(clusters=1000) | raw"}),  # 2-byte symbols stored as they are
]


@pytest.mark.parametrize("name,data,how", STREAMED_CHAINS, ids=[c[0] for c in STREAMED_CHAINS])
def test_read_callback_heap_within_output_plus_one_mib(bench_tool: Path, tmp_path: Path, name: str, data: str,
                                                       how: dict) -> None:
    """rans, zstd, zlib and bytegroup chains of a few MB decode with at most 1 MiB of heap beyond the output in
    every mode, through a read callback too: their stored bytes are read through bounded windows, and a mantissa
    that comes out of a codec is decompressed into the output buffer itself."""
    rng = np.random.default_rng(2)
    x = (rng.laplace(size=(1500, 1000)) if data == "laplace" else rng.standard_normal((1500, 1000)) * 0.05)
    r = bench_decode(bench_tool, tmp_path, {"x": x.astype(np.float32)}, name, **how)
    assert r["bytes"] == 6_000_000
    if name != "han-rans":  # han-rans stores little; the others store more than the bound
        assert r["region_bytes"] > 2**20, r
    for mode in ("memory", "path", "reader"):
        assert 0 < r[f"peak_heap_{mode}"] <= 2**20, (mode, r)


BYTEGROUP_CASES = [  # (pipeline, dtype, elements): the mantissa out of a codec is rebuilt in the output, in rounds
    ("bytegroup | zstd(level=5) | rans(lanes=256)", "float32", 300_000),  # the lossless preset's chain
    ("bytegroup | zstd(level=5) | rans(lanes=256)", "float64", 120_007),  # 7 planes: many rounds
    ("bytegroup | zstd(level=5) | rans(lanes=256)", "float16", 200_001),  # 1 plane: one round
    ("bytegroup | zlib | rans", "int32", 100_003),
    ("bytegroup | zlib | huffman", "float32", 1_366),                    # 4098 mantissa bytes: one round, then the rest
    ("bytegroup | rans", "float64", 90_001),                              # stored planes: read a block at a time
    ("prune(sparsity=0.5) | sparse | bytegroup | zstd | rans", "float32", 100_000),  # pulled in parts by sparse
    ("kmeans(bits=8) | raw", "float32", 100_001),                         # raw symbols: read into the pull's buffer
    ("kmeans(clusters=1000) | raw", "float32", 100_001),
]


def test_bytegroup_and_raw_streams_decode_as_dcframe(build: Path, scalar: Path, refused: set[str],
                                                     tmp_path: Path) -> None:
    """bytegroup chains whose mantissa planes come out of zstd or zlib (rebuilt inside the output buffer, in rounds
    that move the planes up), are stored as they are (read a block of each plane at a time through a read
    callback), or are pulled in parts (by sparse), decode to dcframe's bytes for 1 to 7 mantissa planes, from
    memory, by path and through a read callback, on both builds; so do raw symbols read into the pull's buffer.
    A build without zstd or zlib (no headers on this machine) refuses those chains as UnsupportedError instead."""
    rng = np.random.default_rng(11)
    files, want = [], []
    for i, (pipeline, dtype, n) in enumerate(BYTEGROUP_CASES):
        x = rng.standard_normal(n) * 1000 if dtype == "int32" else rng.standard_normal(n) * 0.05
        path = tmp_path / f"bg{i}.dcf"
        dcframe.compress({"x": x.astype(dtype).reshape(-1, 1)}, path, pipeline=pipeline)
        c = dcframe.open_container(path)
        assert chain_of(c, "x") & {"bytegroup", "raw"}, pipeline
        files.append(path)
        want.append(np.ascontiguousarray(c.read("x").array).tobytes())
    for tool, mode in [(build / "dcf-check", "memory"), (build / "dcf-check", "reader"),
                       (build / "dcf-check", "path"), (scalar / "dcf-check", "reader")]:
        out = tmp_path / f"out-{tool.parent.name}-{mode}"
        out.mkdir()
        for k, r in enumerate(check(tool, files, out, mode)):
            code, j = r["tensors"]["x"]
            if chain_of(dcframe.open_container(files[k]), "x") & refused:
                assert code == "UnsupportedError", (tool, mode, BYTEGROUP_CASES[k])
                continue
            assert code == "OK", (tool, mode, BYTEGROUP_CASES[k])
            assert (out / f"{k}-{j}.bin").read_bytes() == want[k], (tool, mode, BYTEGROUP_CASES[k])


def test_damaged_streamed_stages_fail_alike_in_every_mode(build: Path, refused: set[str], tmp_path: Path) -> None:
    """rans, zstd, zlib and bytegroup streams damaged (bytes flipped, cut or extended, CRCs fixed so the damage
    reaches the stage) fail with the same class and the same message from memory, by path and through a read
    callback, where their stored bytes are read through windows: the codecs get the same input slices in every
    mode, and dcframe gives the same class."""
    rng_np = np.random.default_rng(4)
    x = (rng_np.standard_normal((600, 400)) * 0.05).astype(np.float32)  # stored streams of several windows
    rng = random.Random(6)
    damaged = []
    pipelines = ["bytegroup | zstd(level=5) | rans(lanes=256)", "zstd(level=19)", "zlib", "kmeans(bits=8) | rans",
                 "bytegroup | zlib | rans"]  # those this build refuses (no zstd or zlib headers) left out
    for i, pipeline in enumerate(p for p in pipelines if not any(lib in p for lib in refused & {"zstd", "zlib"})):
        src = tmp_path / f"s{i}.dcf"
        dcframe.compress({"x": x}, src, pipeline=pipeline)
        index, tensors = split(src.read_bytes())
        name, rec, streams = tensors[0]
        for m in range(12):
            one = dict(streams)
            sname = rng.choice(sorted(one))
            b = bytearray(one[sname])
            if m % 4 == 0:
                b = b[:rng.randrange(len(b))]
            elif m % 4 == 1:
                b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 9)))
            else:
                for _ in range(1 + m % 3):
                    b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            one[sname] = bytes(b)
            damaged.append(tmp_path / f"d{i}-{m}.dcf")
            damaged[-1].write_bytes(join(json.loads(json.dumps(index)), [(name, rec, one)]))
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"{f}\n" for f in damaged), encoding="utf-8")
    answers = {}
    for mode in ("memory", "path", "reader"):
        res = subprocess.run([str(build / "dcf-check"), *([f"--{mode}"] if mode != "memory" else []), str(lst)],
                             capture_output=True, text=True, env={**os.environ, "DCF_CHECK_VERBOSE": "1"})
        assert res.returncode == 0, res.stderr
        answers[mode] = (res.stdout, res.stderr)
    assert answers["path"] == answers["memory"] and answers["reader"] == answers["memory"]
    codes = [line.split(" ")[2] for line in answers["memory"][0].splitlines() if line.split(" ")[1] != "open"]
    assert codes.count("FormatError") >= len(damaged) // 2, codes
    for f, code in zip(damaged, codes, strict=True):
        try:
            dcframe.open_container(f).read("x")
            assert code == "OK", f
        except dcframe.DcfError as exc:
            assert code == type(exc).__name__, (f, str(exc))


def test_peak_heap_by_path_within_output_plus_one_mib(bench_tool: Path, tmp_path: Path) -> None:
    """A file opened by path (dcf_open_path maps it) decodes one tensor with at most 1 MiB of heap beyond the
    output, even when the tensor's stored bytes (2.3 MB of near-incompressible floats here) are larger."""
    w = np.random.default_rng(1).standard_normal((1000, 600)).astype(np.float32)
    r = bench_decode(bench_tool, tmp_path, {"w": w}, "zstd", pipeline="zstd")
    assert r["bytes"] == w.nbytes
    assert (tmp_path / "zstd.dcf").stat().st_size > 2 * 2**20
    assert 0 < r["peak_heap_path"] <= 2**20, r


def test_rans_vector_and_scalar_paths_agree(build: Path, scalar: Path, tmp_path: Path) -> None:
    """rANS streams decode to dcframe's bytes both 8 lanes at a time (AVX2, on x86-64 CPUs that have it) and by the
    portable scalar loop (a SIMD=0 build: what ARM phones run), for lane counts around the 8-lane groups and pulls
    that stop inside a step (kmeans pulls 4096 symbols; no K here divides it)."""
    rng = np.random.default_rng(3)
    files, want = [], []
    for i, (lanes, bits, clusters) in enumerate([(1, 12, 8), (7, 14, 32), (9, 16, 200), (33, 10, 64), (200, 14, 256)]):
        x = (rng.laplace(size=(3000, 40)) if i % 2 else rng.standard_normal((3000, 40))).astype(np.float32)
        path = tmp_path / f"r{i}.dcf"
        pipeline = f"kmeans(clusters={clusters}) | rans(lanes={lanes}, scale_bits={bits})"
        dcframe.compress({"x": x}, path, pipeline=pipeline)
        c = dcframe.open_container(path)
        assert "rans" in {s["id"] for s in c.chains[c.record("x")["chain"]]}
        files.append(path)
        want.append(np.ascontiguousarray(c.read("x").array).tobytes())
    for tool in (build / "dcf-check", scalar / "dcf-check"):
        out = tmp_path / tool.parent.name
        out.mkdir(exist_ok=True)
        for k, (f, r) in enumerate(zip(files, check(tool, files, out), strict=True)):
            code, j = r["tensors"]["x"]
            assert code == "OK", (tool, f)
            assert (out / f"{k}-{j}.bin").read_bytes() == want[k], (tool, f)


SIMD_PATHS = ["scalar", "avx2", "avx512:two", "avx512:packed", "avx512:perm", "avx512:perm256"]  # DCF_SIMD values
SIMD_LANES = [1, 7, 8, 15, 16, 17, 33, 64, 256]
SIMD_TABLES = [  # (alphabet, used, scale bits): each AVX-512 table form where it fits, both symbol widths
    (32, 32, 14), (256, 200, 14), (256, 150, 12), (3000, 32, 16), (3000, 700, 14), (1000, 100, 8)]


def simd_paths(build: Path) -> list[str]:
    """The DCF_SIMD values whose rANS path this CPU runs (`dcf-check --features` names the path in force)."""
    have = []
    for path in SIMD_PATHS:
        res = subprocess.run([str(build / "dcf-check"), "--features"], capture_output=True, text=True, check=True,
                             env={**os.environ, "DCF_SIMD": path})
        if res.stdout.split()[-1] == path.split(":")[0]:
            have.append(path)
    assert have[0] == "scalar", have
    return have


def test_rans_simd_paths_decode_alike(build: Path, tmp_path: Path) -> None:
    """Every rANS path (DCF_SIMD: scalar, AVX2, AVX-512 with each table form, where the CPU has them) decodes
    hand-made rans streams as dcframe does, with the same verdict and message when cut short or damaged: lane
    counts below, at and around the 8- and 16-lane groups (a last step of about lanes / 2 symbols), byte and
    16-bit symbols, pulls that stop inside a step (uniform pulls 4096 symbols), from memory and through a read
    callback (the words through a 64 KiB window)."""
    paths = simd_paths(build)
    rng = np.random.default_rng(11)
    files, want = [], []
    for alphabet, used, bits in SIMD_TABLES:
        for lanes in SIMD_LANES:
            n = 1024 * lanes + lanes // 2 + 1  # `lanes` lanes (one per 1024 symbols), the last step partial
            base = tmp_path / "base.dcf"
            levels = np.arange(n) % alphabet
            dcframe.compress({"x": levels.astype(np.float32).reshape(1, n)}, base, pipeline="uniform(step=1.0) | rans")
            index, ((name, rec, streams),) = split(base.read_bytes())
            a = rec["steps"][1][0][2]["alphabet"]  # the levels present: min(n, alphabet); symbol s decodes to s
            values = np.sort(rng.choice(a, min(used, a), replace=False))
            p = rng.random(values.size) ** 3 + 1e-3
            symbols = values[rng.choice(values.size, n, p=p / p.sum())].astype(np.uint8 if a <= 256 else np.uint16)
            data = Rans(scale_bits=bits, lanes=lanes).encode(dcframe.Symbols(symbols, a))[0]["data"].data
            flipped = data[:-4] + bytes([data[-4] ^ 1]) + data[-3:]  # a late word: the end states differ
            for k, stream in enumerate([data, data[:-2], data[:-2 * lanes], flipped]):  # cut: truncated
                if k and lanes not in (1, 15, 17, 256):
                    continue
                f = tmp_path / f"r{alphabet}-{used}-{bits}-{lanes}-{k}.dcf"
                f.write_bytes(join(copy.deepcopy(index), [(name, copy.deepcopy(rec), {"data": stream})]))
                files.append(f)
                try:
                    want.append(np.ascontiguousarray(dcframe.open_container(f).read("x").array).tobytes())
                except dcframe.DcfError as exc:
                    want.append(type(exc).__name__)
    assert len({w for w in want if isinstance(w, str)}) == 1 and sum(isinstance(w, bytes) for w in want) > 50
    answers = {}
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"{f}\n" for f in files), encoding="utf-8")
    for path in paths:
        for mode in ("memory", "reader"):  # from memory; through a read callback (the words through a window)
            out = tmp_path / f"{path.replace(':', '-')}-{mode}"
            out.mkdir()
            res = subprocess.run([str(build / "dcf-check"), "-o", str(out), *(["--reader"] if mode == "reader" else []),
                                  str(lst)], capture_output=True, text=True, timeout=600,
                                 env={**os.environ, "DCF_SIMD": path, "DCF_CHECK_VERBOSE": "1"})
            assert res.returncode == 0, res.stderr
            answers[path, mode] = (res.stdout, res.stderr)
            for line in res.stdout.splitlines():
                k, j, code = line.split(" ")[:3]
                case = (path, mode, files[int(k)])
                if j == "open":
                    assert code == "OK", case
                elif isinstance(want[int(k)], bytes):
                    assert code == "OK" and (out / f"{k}-{j}.bin").read_bytes() == want[int(k)], case
                else:
                    assert code == want[int(k)], case
    assert [key for key, answer in answers.items() if answer != answers["scalar", "memory"]] == []


WIDTH_CASES = [  # (pipeline, data): symbol streams of 2 bytes (alphabet over 256) and 1 byte, into each consumer
    ("kmeans(clusters=1000) | rans(lanes=24)", "normal"),                   # 16-bit rans: 3 vector groups
    ("uniform(step=0.002) | rans(lanes=13, scale_bits=16)", "normal"),     # 16-bit, 1 group + 5 scalar lanes
    ("prune(sparsity=0.7) | sparse(index_bits=12) | kmeans(bits=4) | rans", "laplace"),  # 12-bit positions
    ("prune(sparsity=0.7) | sparse(index_bits=12) | kmeans(bits=4) | huffman", "laplace"),
    ("prune(sparsity=0.7) | sparse(index_bits=12) | kmeans(bits=4) | raw", "laplace"),
]


def test_symbol_streams_of_each_width_decode_as_dcframe(build: Path, scalar: Path, tmp_path: Path) -> None:
    """Symbol streams carry the spec's width (1 byte for alphabets up to 256, else 2): 16-bit rans (vector and
    scalar), huffman and raw symbols feed kmeans, uniform and sparse positions, next to byte symbols in the same
    tensor, and decode to dcframe's bytes from memory and through a read callback, on both builds."""
    rng = np.random.default_rng(17)
    files, want = [], []
    for i, (pipeline, kind) in enumerate(WIDTH_CASES):
        x = (rng.standard_normal((1200, 100)) if kind == "normal" else rng.laplace(size=(1200, 100))).astype(np.float32)
        path = tmp_path / f"w{i}.dcf"
        dcframe.compress({"x": x}, path, pipeline=pipeline)
        c = dcframe.open_container(path)
        alphabets = [meta.get("alphabet", 0) for step in c.record("x")["steps"] for _, _, meta in step]
        assert max(alphabets) > 256, (pipeline, alphabets)
        files.append(path)
        want.append(np.ascontiguousarray(c.read("x").array).tobytes())
    decodes_as_dcframe(build, scalar, files, want, WIDTH_CASES, tmp_path)


HUFFMAN_CASES = [  # (pipeline, data): the table and lookups per window libdcf picks for each (checked by hand)
    ("kmeans(clusters=32) | huffman", "laplace"),                       # 4-symbol table, 5 lookups (maxlen 11)
    ("uniform(step=0.5) | huffman", "laplace"),                         # 4-symbol table, 4 lookups, full entries
    ("kmeans(clusters=16) | huffman", "sparse"),                        # 4-symbol table, mostly 1-bit zeros
    ("kmeans(clusters=32) | huffman(max_bits=8, segment_size=37)", "laplace"),  # 1-symbol table, 5 lookups; 4096 % 37
    ("kmeans(bits=8, init=linear, method=lloyd) | huffman", "normal"),  # 1-symbol table, 4 lookups
    ("uniform(step=0.002) | huffman(max_bits=16, segment_size=1000)", "normal"),  # alphabet > 256, 3 lookups
    ("uniform(step=0.5) | huffman(segment_size=5)", "laplace"),         # segments shorter than a round
    ("uniform(step=100.0) | huffman", "normal"),                        # one used symbol: no fast kernel
]


def huffman_files(tmp_path: Path) -> tuple[list[Path], list[bytes]]:
    """HUFFMAN_CASES written by dcframe (120000 values each: segment counts that are not multiples of 4), with the
    bytes dcframe decodes them to."""
    rng = np.random.default_rng(5)
    files, want = [], []
    for i, (pipeline, kind) in enumerate(HUFFMAN_CASES):
        x = (rng.standard_normal((1200, 100)) if kind == "normal" else rng.laplace(size=(1200, 100))).astype(np.float32)
        if kind == "sparse":
            x[rng.random(x.shape) < 0.85] = 0
        path = tmp_path / f"h{i}.dcf"
        dcframe.compress({"x": x}, path, pipeline=pipeline)
        c = dcframe.open_container(path)
        assert "huffman" in chain_of(c, "x"), pipeline
        files.append(path)
        want.append(np.ascontiguousarray(c.read("x").array).tobytes())
    return files, want


def test_huffman_fast_and_scalar_paths_agree(build: Path, scalar: Path, tmp_path: Path) -> None:
    """Huffman streams decode to dcframe's bytes with the AVX2 + BMI2 kernels (x86-64 CPUs that have them), also
    through a read callback (the payload read a group of segments at a time), and with the portable ones (a SIMD=0
    build), for multi-symbol and single-symbol tables, 3 to 5 lookups a window, segments shorter than a round, pulls
    that stop inside a group of segments, and a one-symbol code."""
    files, want = huffman_files(tmp_path)
    decodes_as_dcframe(build, scalar, files, want, HUFFMAN_CASES, tmp_path)


def test_huffman_damaged_payloads_rejected_as_dcframe_does(build: Path, scalar: Path, tmp_path: Path) -> None:
    """Payload bytes of long Huffman streams changed (CRCs fixed, so the change reaches the decoder): both builds,
    from memory and through a read callback, give dcframe's verdict and, where it decodes, its bytes. Codes that
    run past their segment's end are caught by the end-of-segment check after the unchecked rounds, exactly where
    the one-at-a-time procedure catches them."""
    files, _ = huffman_files(tmp_path)
    rng = random.Random(9)
    damaged = []
    for k, f in enumerate(files[:6]):
        index, tensors = split(f.read_bytes())
        name, rec, streams = tensors[0]
        sname = max(streams, key=lambda s: len(streams[s]))
        for m in range(10):
            b = bytearray(streams[sname])
            for _ in range(1 + m % 3):
                i = rng.randrange(len(b) // 2, len(b))  # the payload is the stream's tail
                b[i] ^= 1 << rng.randrange(8)
            one = dict(streams, **{sname: bytes(b)})
            damaged.append(tmp_path / f"d{k}-{m}.dcf")
            damaged[-1].write_bytes(join(json.loads(json.dumps(index)), [(name, rec, one)]))
    verdicts = []
    for f in damaged:
        try:
            verdicts.append(("OK", np.ascontiguousarray(dcframe.open_container(f).read("x").array).tobytes()))
        except dcframe.DcfError as exc:
            verdicts.append((type(exc).__name__, b""))
    assert {v[0] for v in verdicts} >= {"OK", "FormatError"}, "the damage should both pass and fail somewhere"
    for tool, mode in [
            (build / "dcf-check", "memory"), (build / "dcf-check", "reader"), (scalar / "dcf-check", "memory")
    ]:
        out = tmp_path / f"dout-{tool.parent.name}-{mode}"
        out.mkdir()
        for k, (f, r) in enumerate(zip(damaged, check(tool, damaged, out, mode), strict=True)):
            code, j = r["tensors"]["x"]
            assert code == verdicts[k][0], (tool, f)
            if code == "OK":
                assert (out / f"{k}-{j}.bin").read_bytes() == verdicts[k][1], (tool, f)



def test_rowscale_decodes_as_dcframe(build: Path, scalar: Path, refused: set[str], tmp_path: Path) -> None:
    """rowscale (spec/stages/rowscale.md) decodes to dcframe's bytes from memory and through a read callback, on
    both builds: exponents pulled a block of rows at a time (more rows than a block, rows of one element, rows longer
    than a block, no rows, empty rows), its output pulled in parts by sparse and its values pulled from sparse, and
    crafted files whose exponents overflow every float dtype to infinity (NaN payloads kept)."""
    files, want, names = rowscale_files(tmp_path)
    keep = [k for k, f in enumerate(files) if not chain_of(dcframe.open_container(f), "x") & refused]
    decodes_as_dcframe(build, scalar, [files[k] for k in keep], [want[k] for k in keep], [names[k] for k in keep],
                       tmp_path)

# -- Python-written files -----------------------------------------------------------------------------------------

PRESETS = ["lossless", "han", "quantize8", "pretrained"]
PIPELINES = ["kmeans(bits=6) | rans", "uniform(step=0.05) | huffman", "uniform(step=0.02, dead_zone=0.3) | rans",
             "prune(sparsity=0.7) | sparse(index_bits=3) | rans", "zlib", "sparse(index_bits=2) | huffman | zstd"]
DTYPES = ["float32", "float64", "float16"]
WAYS = [("preset", p) for p in PRESETS] + [("pipeline", p) for p in PIPELINES]


@st.composite
def tensor_sets(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """A few small float tensors of rank 0-3 (some sparse, some with few distinct values)."""
    out = {}
    for k in range(draw(st.integers(1, 4))):
        shape = tuple(draw(st.lists(st.integers(0, 40), min_size=0, max_size=3)))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        x = np.asarray(rng.standard_normal(shape) * draw(st.sampled_from([0.01, 1.0, 30.0])))
        if draw(st.booleans()) and x.size:
            x = np.where(np.abs(x) < np.quantile(np.abs(x), 0.8), 0.0, x)
        out[f"t{k}.weight"] = x.astype(draw(st.sampled_from(DTYPES)))
    return out


@settings(max_examples=30)
@given(tensors=tensor_sets(), how=st.sampled_from(WAYS))
def test_python_written_files_decode_identically(build: Path, refused: set[str],
                                                 tmp_path_factory: pytest.TempPathFactory,
                                                 tensors: dict[str, np.ndarray], how: tuple[str, str]) -> None:
    """Whatever Python writes, libdcf decodes to the same bytes as dcframe's own reader (a codec this build
    lacks: UnsupportedError)."""
    tmp = tmp_path_factory.mktemp("py")
    path = tmp / "m.dcf"
    dcframe.compress(tensors, path, **{how[0]: how[1]})
    r = check(build / "dcf-check", [path], tmp)[0]
    assert r["open"] == "OK"
    c = dcframe.open_container(path)
    for name in c.names:
        code, j = r["tensors"][name]
        if chain_of(c, name) & refused:
            assert code == "UnsupportedError", (name, how)
            continue
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
    src = VECTORS / "valid" / "han-conv.dcf"  # prune | sparse | kmeans | huffman: no optional codec
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


def split(data: bytes) -> tuple[dict, list[tuple[str, dict, dict[str, bytes]]]]:
    """A valid file's index and, per tensor, (name, record, {stream: bytes})."""
    off, length, _, _ = struct.unpack("<QII8s", data[-24:])
    index = msgpack.unpackb(data[off:off + length])
    tensors = []
    for name, o, rl, _, _ in index["tensors"]:
        rec = msgpack.unpackb(data[o:o + rl])
        pos, streams = o + rl, {}
        for sname, _, _, chunks in rec["streams"]:
            parts = []
            for c in chunks:
                h = 2 if c < 256 else 3 if c < 65536 else 5
                parts.append(data[pos + h:pos + h + c])
                pos += h + c
            streams[sname] = b"".join(parts)
        tensors.append((name, rec, streams))
    return index, tensors


def join(index: dict, tensors: list[tuple[str, dict, dict[str, bytes]]]) -> bytes:
    """A file from an index and tensors, with every offset, length and CRC-32 recomputed."""
    out, entries = bytearray(b"\x89DCF\r\n\x1a\n"), []
    for name, rec, streams in tensors:
        rec["streams"] = [[n, len(b), zlib.crc32(b), [len(b)] if b else []] for n, b in streams.items()]
        r = msgpack.packb(rec)
        start = len(out)
        out += r
        for b in streams.values():
            if b:
                n = len(b)
                out += (b"\xc4" + struct.pack("<B", n) if n < 256 else b"\xc5" + struct.pack(">H", n) if n < 65536
                        else b"\xc6" + struct.pack(">I", n)) + b
        entries.append([name, start, len(r), len(out) - start, zlib.crc32(r)])
    index["tensors"] = entries
    ib = msgpack.packb(index)
    return bytes(out + ib + struct.pack("<QII8s", len(out), len(ib), zlib.crc32(ib), b"DCFINDEX"))


ODD = [0, 1, -1, 2, 3, 7, 8, 255, 256, 65535, 65536, 65537, 2**31, 2**32, 2**32 + 1, 2**40, 2**53 - 1, 2**53, True,
       False, None, "x", "F32", b"\x00\x01", [], [1, 2], {}, 1.5, -0.0, float("nan")]


def odd_maps(rec: dict, index: dict, rng: random.Random) -> list[dict]:
    """Maps a structured mutation may change: the record and every application's meta, or (one time in five) the
    stage configs of the tensor's chain."""
    chain = rec.get("chain")
    if rng.random() < 0.2 and isinstance(chain, int) and 0 <= chain < len(index["chains"]):
        return [d.setdefault("config", {}) for d in index["chains"][chain]]
    maps = [rec]
    for step in rec.get("steps", []):
        maps += [app[2] for app in step if isinstance(app, list) and len(app) == 3 and isinstance(app[2], dict)]
    return maps


def structured_mutant(data: bytes, rng: random.Random) -> bytes:
    """Change one field or stream of a valid file, then fix every CRC and length, so the change reaches the
    stages' own checks instead of stopping at a checksum."""
    index, tensors = split(data)
    if not tensors:
        return data
    name, rec, streams = rng.choice(tensors)
    kind = rng.randrange(4)
    if kind == 0 and streams:  # stream bytes: flip, cut, extend, or a u32 set to an odd value
        s = rng.choice(list(streams))
        b = bytearray(streams[s])
        op = rng.randrange(4)
        if op == 0 and b:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif op == 1:
            b = b[:rng.randrange(len(b) + 1)]
        elif op == 2:
            b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 9)))
        elif len(b) >= 4:
            i = rng.randrange(len(b) - 3)
            b[i:i + 4] = struct.pack("<I", rng.choice([0, 1, 2, 255, 65536, 65537, 2**31, 2**32 - 1]))
        streams[s] = bytes(b)
    else:  # a value of the record, a meta or a config replaced, deleted, or a shape dimension changed
        m = rng.choice(odd_maps(rec, index, rng))
        key = rng.choice(list(m)) if m and rng.random() < 0.85 else rng.choice(["shape", "count", "size", "codebook"])
        if key == "shape" and isinstance(m.get("shape"), list) and m["shape"] and rng.random() < 0.5:
            m["shape"][rng.randrange(len(m["shape"]))] = rng.choice([0, 1, 2, 1000, 2**20, 2**33])
        elif rng.random() < 0.15:
            m.pop(key, None)
        else:
            m[key] = rng.choice(ODD)
    try:
        return join(index, tensors)
    except (TypeError, ValueError, OverflowError):  # e.g. a name no longer a str: keep the raw mutation
        return data


def hostile_cases() -> dict[str, Callable[[], bytes]]:
    """Every CASES entry of tests/hostile/ (hand-built files at and beyond each limit), named module-case."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import hostile

    out = {}
    for info in pkgutil.iter_modules(hostile.__path__):
        module = importlib.import_module(f"hostile.{info.name}")
        out.update({f"{info.name}-{k}": v for k, v in module.CASES.items()})
    return out


def test_mutation_fuzz_under_sanitizers(tmp_path: Path) -> None:
    """5000 mutants of the golden vectors and Python-written files (3000 byte-level, 2000 structured with their
    CRCs fixed; some seeds store streams larger than the 64 KiB windows stored bytes are read through), and every
    hand-built case of tests/hostile/, each decoded from memory, by path and through a read callback: no sanitizer
    finding, no leak, every file answered."""
    if not sanitizers_available(tmp_path):
        pytest.skip(f"{CC} has no working AddressSanitizer/UBSan runtime")
    res = subprocess.run([MAKE, "-C", str(LIBDCF), f"BUILD={tmp_path / 'b'}", f"CC={CC}", "-j2",
                          str(tmp_path / "b" / "dcf-check-asan")], capture_output=True, text=True)
    assert res.returncode == 0, f"make asan failed:\n{res.stdout}\n{res.stderr}"
    tool = tmp_path / "b" / "dcf-check-asan"
    seeds = [(VECTORS / v["file"]).read_bytes() for v in INDEX["valid"] if not set(v["stages"]) & UNSUPPORTED]
    rng_np = np.random.default_rng(0)
    for i, preset in enumerate(PRESETS):
        p = tmp_path / f"seed{i}.dcf"
        dcframe.compress({"w": rng_np.standard_normal((30, 20)).astype(np.float32),
                          "b": rng_np.standard_normal(7).astype(np.float32)}, p, preset=preset)
        seeds.append(p.read_bytes())
    big = (rng_np.standard_normal((400, 250)) * 0.05).astype(np.float32)  # streams over the 64 KiB windows
    for i, pipeline in enumerate(["bytegroup | zstd(level=5) | rans(lanes=256)", "kmeans(bits=8) | rans", "zlib"]):
        p = tmp_path / f"big{i}.dcf"
        dcframe.compress({"w": big}, p, pipeline=pipeline)
        seeds.append(p.read_bytes())
    rng = random.Random(17)
    files = []
    structured = [structured_mutant(rng.choice(seeds), rng) for _ in range(2000)]
    for k, data in enumerate(mutants(seeds, 3000, rng) + structured):
        f = tmp_path / f"m{k}.dcf"
        f.write_bytes(data)
        files.append(f)
    for name, make in hostile_cases().items():
        files.append(tmp_path / f"hostile-{name}.dcf")
        files[-1].write_bytes(make())
    halves = [files[: len(files) // 2], files[len(files) // 2:]]
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0"}
    findings = ("runtime error", "AddressSanitizer", "LeakSanitizer")
    for mode in ([], ["--path"], ["--reader"]):  # from memory; mapped; through a read callback (read on demand)
        procs = []
        for h, part in enumerate(halves):
            lst = tmp_path / f"list{h}.txt"
            lst.write_text("".join(f"{f}\n" for f in part), encoding="utf-8")
            procs.append(subprocess.Popen([str(tool), *mode, str(lst)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True, env=env))
        answered = 0
        for p in procs:
            out, err = p.communicate(timeout=600)
            assert p.returncode == 0, err[-4000:]
            assert not any(x in err for x in findings), err[-4000:]
            answered += sum(1 for line in out.splitlines() if line.split(" ")[1] == "open")
        assert answered == len(files), mode


@pytest.mark.parametrize("mode", ["memory", "path", "reader"])
def test_mutants_get_the_same_verdict_as_dcframe(build: Path, refused: set[str], tmp_path: Path, mode: str) -> None:
    """Differential: on 1200 mutants (half structured, CRCs fixed) libdcf opens, rejects (with the same class) and
    decodes (to the same bytes) exactly as dcframe's reader does, from memory, by path and through a read callback.
    Bytes are not compared for tensors whose chain has zstd: a corrupted frame without a content checksum decodes
    to different garbage in different zstd versions (libdcf agrees with the system's `zstd -d`)."""
    seeds = [(VECTORS / v["file"]).read_bytes() for v in INDEX["valid"] if not set(v["stages"]) & UNSUPPORTED]
    rng = random.Random(2)
    files = []
    data = [structured_mutant(rng.choice(seeds), rng) for _ in range(600)] + mutants(seeds, 600, rng)
    for k, one in enumerate(data):
        files.append(tmp_path / f"m{k}.dcf")
        files[-1].write_bytes(one)
    for i, (f, r) in enumerate(zip(files, check(build / "dcf-check", files, tmp_path, mode), strict=True)):
        try:
            c = dcframe.open_container(f)
        except dcframe.DcfError as exc:
            assert r["open"] == type(exc).__name__, (f, str(exc))
            continue
        assert r["open"] == "OK", f
        for name in c.names:
            code, j = r["tensors"][name]
            skip = False
            try:
                skip = bool(chain_of(c, name) & refused)  # libdcf refuses the stage, or fails earlier as dcframe does
                want = c.read(name)
            except dcframe.DcfError as exc:
                assert code in ({"UnsupportedError"} if skip else set()) | {type(exc).__name__}, (f, name, str(exc))
                continue
            if skip:
                assert code == "UnsupportedError", (f, name)
                continue
            assert code == "OK", (f, name)
            if "zstd" not in chain_of(c, name):
                assert (tmp_path / f"{i}-{j}.bin").read_bytes() == np.ascontiguousarray(want.array).tobytes(), (f, name)


def test_stages_are_checked_in_chain_order_as_dcframe_does(build: Path, tmp_path: Path) -> None:
    """A bad config in the chain's first stage is reported before a missing later stage (dcframe builds the stages
    in chain order: missing, version, config, stage after stage), and the other way round."""
    index, tensors = split((VECTORS / "valid" / "prune-zstd.dcf").read_bytes())
    files = []
    for bad_first in (True, False):
        ix = json.loads(json.dumps(index))
        chain = ix["chains"][0]  # prune | raw | zstd
        (chain[0] if bad_first else chain[2])["config"] = {"sparsity": 1.5} if bad_first else {"level": 99}
        (chain[2] if bad_first else chain[0])["id"] = "nosuch"
        files.append(tmp_path / f"order-{bad_first}.dcf")
        files[-1].write_bytes(join(ix, tensors))
    results = check(build / "dcf-check", files)
    expected = ["FormatError", "MissingStageError"]
    for f, r, want in zip(files, results, expected, strict=True):
        (code, _), = r["tensors"].values()
        assert code == want, f
        with pytest.raises(dcframe.DcfError) as exc:
            c = dcframe.open_container(f)
            c.read(c.names[0])
        assert type(exc.value).__name__ == want
