"""`dcframe compare`: every coder row decodes back, its bytes are what it produced, no row beats the entropy bound,
the JSON schema keeps its keys, the plot is a real PNG/SVG."""

import contextlib
import importlib.util
import json
import math

import numpy as np
import pytest
from dcframe_plugins.bytegroup import split_planes
from hypothesis import given
from hypothesis import strategies as st

from dcframe import Bytes, ConfigError, Dense, MissingStageError, PipelineError, Policy, write_model
from dcframe.analysis import compare
from dcframe.analysis.compare import (
    DEFAULT_CODERS,
    DEFAULT_SAMPLE_BYTES,
    SLOW_CODERS,
    byte_planes,
    compare_model,
    parse_coders,
)
from dcframe.cli import main
from dcframe.core.orchestrator import encode_tensor
from dcframe.core.registry import get_registry

CODERS = ("huffman", "zstd-3", "zstd-19", "lzma", "bz2", "zlib")
PIPELINE = "prune(sparsity=0.9) | sparse(index_bits=4) | kmeans(bits=4) | huffman"


def gaussian_model(seed: int = 0) -> dict[str, np.ndarray]:
    """I.i.d. weights: pruning them leaves i.i.d. gaps (geometric, memoryless) and k-means i.i.d. indices, so the
    order-0 entropy is a true lower bound for every coder on those streams."""
    rng = np.random.default_rng(seed)
    return {
        "fc1.weight": rng.standard_normal((200, 120)).astype(np.float32),
        "fc1.bias": rng.standard_normal(120).astype(np.float32),
        "fc2.weight": rng.standard_normal((120, 40)).astype(np.float32),
        "half": rng.standard_normal(300).astype(np.float16),
        "steps": np.arange(50, dtype=np.int64),
    }


@pytest.fixture(scope="module")
def measured():
    keep: dict = {}
    report = compare_model(gaussian_model(), preset="han", coders=CODERS, repeat=2, keep=keep)
    return report, keep


def entropy_bits(symbols: np.ndarray) -> float:
    """Order-0 entropy in bits, computed here from scratch (sum over symbols of -log2 of its frequency)."""
    if symbols.size == 0:
        return 0.0
    _, counts = np.unique(symbols, return_counts=True)
    return sum(c * math.log2(symbols.size / c) for c in counts.tolist())


def decode_independently(coder_name: str, output: bytes, metas: list) -> np.ndarray:
    """Decode a coder's output with stages built afresh from the registry, not through dcframe.analysis.compare."""
    registry = get_registry()
    (coder,) = parse_coders(coder_name)
    stage = registry.build(coder.stage.id, coder.stage.get_config())
    if "symbols" in stage.takes:
        (meta,) = metas
        return stage.decode({"data": Bytes(output)}, meta).array
    raw_meta, meta = metas
    packed = stage.decode({"data": Bytes(output)}, meta)
    return registry.build("raw", {}).decode({"data": packed}, raw_meta).array


def test_cases_measured(measured):
    report, _ = measured
    names = [s["name"] for s in report["streams"]]
    assert names == ["sparse.positions", "kmeans.indices", "weights"]
    assert report["coders"] == list(CODERS)
    for case in report["streams"]:
        assert [r["coder"] for r in case["coders"]] == list(CODERS)
        assert all(r["error"] is None and r["verified"] for r in case["coders"]), case["coders"]
    # the han preset: matrices through the Deep Compression chain, the rest lossless
    assert report["streams"][0]["tensors"] == ["fc1.weight", "fc2.weight"]
    assert report["streams"][2]["tensors"] == list(gaussian_model())


def test_every_row_decodes_to_its_input_and_reports_its_length(measured):
    report, keep = measured
    rows = [(case["name"], row) for case in report["streams"] for row in case["coders"]]
    rows += [(row["transform"], row) for row in report["baselines"]["rows"]]
    assert len(rows) == len(keep) == 3 * len(CODERS) + 2 * len(CODERS)
    for key, row in rows:
        parts = keep[(key, row["coder"])]
        assert row["bytes"] == sum(len(output) for _, output, _ in parts)
        for symbols, output, metas in parts:
            decoded = decode_independently(row["coder"], output, metas)
            assert decoded.size == symbols.array.size
            assert decoded.astype(np.uint64).tobytes() == symbols.array.astype(np.uint64).tobytes(), key


def test_entropy_bound_independent(measured):
    report, keep = measured
    for case in report["streams"]:
        parts = keep[(case["name"], "huffman")]
        bound = sum(entropy_bits(symbols.array) for symbols, _, _ in parts)
        assert case["entropy_bits"] == pytest.approx(bound, rel=1e-9)
        assert case["count"] == sum(symbols.array.size for symbols, _, _ in parts)
        for row in case["coders"]:
            bits = 8 * row["bytes"]
            assert row["bits_per_symbol"] == pytest.approx(bits / case["count"])
            assert row["below_bound"] == (bits + 8 * row["meta_bytes"] < case["entropy_bits"])
            total = bits + 8 * row["meta_bytes"]
            assert row["over_bound"] == pytest.approx(total / bound - 1)
            if row["coder"] == "huffman":
                # a prefix code per symbol never beats the empirical entropy; table and offsets only add to it
                assert bits >= bound, case["name"]
            elif case["name"] != "weights":
                # i.i.d. symbols: nothing beats n*H by more than the type's description (k*log2(n) bits)
                slack = sum(symbols.alphabet * math.log2(symbols.array.size + 1) for symbols, _, _ in parts)
                assert bits >= bound - slack, (case["name"], row)
    for row in report["baselines"]["rows"]:
        parts = keep[(row["transform"], row["coder"])]
        bound = sum(entropy_bits(symbols.array) for symbols, _, _ in parts)
        assert row["entropy_bits"] == pytest.approx(bound, rel=1e-9)
        if row["coder"] == "huffman":
            assert 8 * row["bytes"] >= bound


def test_stage_by_stage_matches_the_orchestrator(measured):
    report, _ = measured
    model = gaussian_model()
    policy = Policy(preset="han")
    for row in report["tensors"]:
        dense = Dense.of(model[row["name"]])
        pipeline = policy.pipeline_for(row["name"], dense.array.shape, dense.dtype)
        assert row["pipeline"] == pipeline
        encoded = encode_tensor(row["name"], dense, policy.chain_for_pipeline(pipeline), stats=False)
        first, last = row["steps"][0], row["steps"][-1]
        assert first["stage"] == "input" and first["total_bytes"] == dense.nbytes == row["original_bytes"]
        assert [s["stage"] for s in row["steps"][1:]] == [s.stage.id for s in encoded.chain.steps]
        assert last["stream_bytes"] == sum(len(b) for b in encoded.streams.values())
        assert last["total_bytes"] == last["stream_bytes"] + sum(s["meta_bytes"] for s in row["steps"])
        assert row["final_bytes"] == last["total_bytes"]
    fc1 = next(r for r in report["tensors"] if r["name"] == "fc1.weight")
    sparse = fc1["steps"][2]
    assert sparse["stage"] == "sparse"
    kinds = {s["name"]: (s["kind"], s["alphabet"]) for s in sparse["streams"]}
    assert kinds == {"positions": ("symbols", 32), "values": ("dense", None)}  # han-fc: 5-bit
    positions = next(s for s in sparse["streams"] if s["name"] == "positions")
    assert positions["packed_bytes"] == math.ceil(positions["count"] * 5 / 8)
    assert report["original_bytes"] == sum(v.nbytes for v in model.values())
    assert report["final_bytes"] == sum(r["final_bytes"] for r in report["tensors"])
    total = next(p for p in report["pipelines"] if p["tensors"] == ["fc1.weight", "fc2.weight"])
    fc = [r for r in report["tensors"] if r["name"] in ("fc1.weight", "fc2.weight")]
    assert total["steps"][-1]["total_bytes"] == sum(r["final_bytes"] for r in fc)


def test_baselines_cover_the_model(measured):
    report, keep = measured
    base = report["baselines"]
    model = gaussian_model()
    assert base["original_bytes"] == sum(v.nbytes for v in model.values())
    assert base["weights"] == sum(v.size for v in model.values())
    assert base["planes"] == 2 + 4 + 8  # F16, F32, I64 element widths
    (plain, _, _), = keep[("none", "zstd-19")]
    assert plain.array.tobytes() == b"".join(v.tobytes() for v in model.values())
    for row in base["rows"]:
        assert row["ratio"] == pytest.approx(base["original_bytes"] / (row["bytes"] + row["meta_bytes"]))


DTYPES = ["F32", "F16", "F64", "BF16", "I8", "U8", "I32", "BOOL"]


@given(st.lists(st.tuples(st.sampled_from(DTYPES), st.integers(0, 40), st.integers(0, 2**32 - 1)), max_size=5))
def test_byte_planes_are_the_bytegroup_stages(specs):
    tensors = []
    for dtype, n, seed in specs:
        carrier = {"F32": "<u4", "F16": "<u2", "F64": "<u8", "BF16": "<u2", "I8": "i1", "U8": "u1", "I32": "<i4",
                   "BOOL": "?"}[dtype]
        raw = np.random.default_rng(seed).integers(0, 256, n * np.dtype(carrier).itemsize, dtype=np.uint8)
        array = raw.astype(bool) if dtype == "BOOL" else raw.view(carrier)
        if dtype != "BF16" and dtype != "BOOL":
            array = array.view({"F32": "<f4", "F16": "<f2", "F64": "<f8"}.get(dtype, carrier))
        tensors.append(Dense(array, dtype))
    planes = byte_planes(tensors)
    assert sum(p.size for p in planes) == sum(d.nbytes for d in tensors)
    widths = sorted({d.array.dtype.itemsize for d in tensors})
    expected = [np.concatenate([split_planes(d.array, d.dtype)[p] for d in tensors if d.array.dtype.itemsize == w])
                for w in widths for p in range(w)]  # the bytegroup stage's planes, tensor after tensor
    assert [p.tobytes() for p in planes] == [e.tobytes() for e in expected]


def test_byte_planes_put_the_exponent_in_its_own_plane():
    values = np.array([1.0, -1.0, 2.0, -0.5], dtype=np.float32)
    top = byte_planes([Dense.of(values)])[0]
    assert top.tolist() == [127, 127, 128, 126]  # the 8 exponent bits, sign moved to the lowest plane


def test_parse_coders():
    zstd, lzma, huffman = parse_coders("zstd-3, lzma-6,huffman")
    assert (zstd.name, zstd.stage.id, zstd.stage.get_config()) == ("zstd-3", "zstd", {"level": 3})
    assert lzma.stage.get_config() == {"preset": 6} and not lzma.takes_symbols
    assert huffman.takes_symbols
    assert parse_coders("zstd--5")[0].stage.get_config() == {"level": -5}
    with pytest.raises(MissingStageError, match="nosuch"):
        parse_coders("nosuch")
    with pytest.raises(PipelineError, match="not a lossless"):
        parse_coders("kmeans")
    with pytest.raises(PipelineError, match="twice"):
        parse_coders("zlib,zlib")
    with pytest.raises(PipelineError, match="level"):
        parse_coders("huffman-3")


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "m.safetensors"
    rng = np.random.default_rng(3)
    write_model(path, {"w": rng.standard_normal((64, 32)).astype(np.float32),
                       "b": rng.standard_normal(32).astype(np.float32)})
    return path


# The documented --json schema (README, "dcframe compare"): within schema 1 keys are only ever added (the `sample`
# keys were); removing or renaming one here means a new schema version.
TOP_KEYS = {"schema", "dcframe_version", "file", "file_bytes", "pipeline", "preset", "coders", "repeat",
            "original_bytes", "final_bytes", "ratio", "tensors", "pipelines", "streams", "baselines", "sample"}
TENSOR_KEYS = {"name", "dtype", "shape", "pipeline", "original_bytes", "steps", "final_bytes", "ratio"}
STEP_KEYS = {"stage", "config", "streams", "stream_bytes", "packed_bytes", "meta_bytes", "total_bytes",
             "total_packed_bytes", "ratio", "packed_ratio"}
STEP_STREAM_KEYS = {"name", "kind", "count", "alphabet", "bytes", "packed_bytes"}
PIPELINE_KEYS = {"pipeline", "tensors", "original_bytes", "steps"}
PIPELINE_STEP_KEYS = STEP_KEYS - {"streams"}
CASE_KEYS = {"name", "tensors", "count", "alphabet", "input_bytes", "entropy_bits", "entropy_bytes", "coders",
             "smallest", "fastest_encode", "fastest_decode"}
CODER_KEYS = {"coder", "bytes", "meta_bytes", "bits_per_symbol", "over_bound", "below_bound", "ratio",
              "encode_seconds", "decode_seconds", "encode_mb_s", "decode_mb_s", "verified", "error"}
BASELINE_KEYS = {"original_bytes", "weights", "planes", "rows", "smallest", "fastest_encode", "fastest_decode",
                 "sample"}
SAMPLE_KEYS = {"sampled", "budget_bytes", "chunk_bytes", "chunks", "bytes", "weights", "of_bytes", "of_weights"}
BASELINE_ROW_KEYS = CODER_KEYS | {"transform", "entropy_bits", "bits_per_weight"}


def test_json_schema_is_stable(model_file, capsys):
    assert main(["compare", str(model_file), "--json", "--repeat", "1", "--coders", "huffman,zlib",
                 "--pipeline", PIPELINE]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == TOP_KEYS
    assert report["schema"] == "dcframe.compare/1"
    assert report["file_bytes"] == model_file.stat().st_size
    assert (report["pipeline"], report["preset"], report["coders"]) == (PIPELINE, None, ["huffman", "zlib"])
    for t in report["tensors"]:
        assert set(t) == TENSOR_KEYS
        for step in t["steps"]:
            assert set(step) == STEP_KEYS
            assert all(set(s) == STEP_STREAM_KEYS for s in step["streams"])
    for p in report["pipelines"]:
        assert set(p) == PIPELINE_KEYS and all(set(s) == PIPELINE_STEP_KEYS for s in p["steps"])
    # the 1-D tensor takes the lossless chain: its exponent plane is the stream rans codes there
    assert [c["name"] for c in report["streams"]] == ["sparse.positions", "kmeans.indices", "bytegroup.exponent",
                                                      "weights"]
    for case in report["streams"]:
        extra = {"sample"} if case["name"] == "weights" else set()
        assert set(case) == CASE_KEYS | extra and all(set(r) == CODER_KEYS for r in case["coders"])
    assert set(report["baselines"]) == BASELINE_KEYS
    assert set(report["sample"]) == SAMPLE_KEYS
    assert report["baselines"]["sample"] == report["streams"][-1]["sample"] == report["sample"]
    assert not report["sample"]["sampled"]  # 8 KiB: far below the default budget, coded whole
    assert all(set(r) == BASELINE_ROW_KEYS for r in report["baselines"]["rows"])


def test_default_preset_and_tables(model_file, capsys):
    assert main(["compare", str(model_file), "--repeat", "1", "--coders", "huffman,zstd-3"]) == 0
    out = capsys.readouterr().out
    assert "stage by stage: prune(sparsity=0.92)" in out  # han: the matrix gets han-fc
    for needle in ("sparse.positions", "kmeans.indices", "weights", "lossless baselines", "bytegroup", "smallest",
                   "fastest dec"):
        assert needle in out, needle


def test_cli_errors(model_file, capsys, monkeypatch):
    assert main(["compare", str(model_file), "--plot", "out.gif"]) == 1
    assert ".png or .svg" in capsys.readouterr().err
    assert main(["compare", str(model_file), "--repeat", "0"]) == 1
    assert "--repeat" in capsys.readouterr().err
    assert main(["compare", str(model_file), "--coders", "zstd,,lzma"]) == 1
    assert "comma" in capsys.readouterr().err
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    assert main(["compare", str(model_file), "--plot", "out.png"]) == 1
    err = capsys.readouterr().err.strip()
    assert "pip install 'dcframe[plot]'" in err and "\n" not in err


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                    reason="matplotlib is not installed (pip install 'dcframe[plot]')")
@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_plot_writes_a_valid_file(model_file, tmp_path, capsys, suffix):
    target = tmp_path / f"sizes{suffix}"
    assert main(["compare", str(model_file), "--repeat", "1", "--coders", "huffman,zlib", "--json",
                 "--plot", str(target)]) == 0
    json.loads(capsys.readouterr().out)  # the JSON stays clean when a plot is written
    data = target.read_bytes()
    if suffix == ".png":
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" in data[-12:]
    else:
        assert b"<svg" in data[:2000] and data.rstrip().endswith(b"</svg>")



def test_tensor_names_with_brackets_print_as_text(tmp_path):
    import subprocess
    import sys

    np.savez(tmp_path / "m.npz", **{"w[/y]": np.random.default_rng(0).laplace(0, 0.05, (40, 30)).astype(np.float32)})
    out = subprocess.run([sys.executable, "-m", "dcframe.cli", "compare", str(tmp_path / "m.npz"), "--repeat", "1",
                          "--coders", "huffman,zlib", "-q"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "w[/y]" in out.stdout


def test_defaults_are_the_fast_coders(model_file, capsys):
    assert not set(DEFAULT_CODERS) & set(SLOW_CODERS)
    assert main(["compare", str(model_file), "--json", "--repeat", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["coders"] == list(DEFAULT_CODERS) == ["huffman", "zstd-3", "zlib-1"]
    for case in report["streams"]:
        assert [r["coder"] for r in case["coders"]] == list(DEFAULT_CODERS)
    levels = {c.name: c.stage.get_config() for c in parse_coders(DEFAULT_CODERS)}
    assert levels["zstd-3"] == {"level": 3} and levels["zlib-1"] == {"level": 1}  # zlib's own default is 9: slow
    # the slow ones stay one option away
    assert main(["compare", str(model_file), "--json", "--repeat", "1", "--coders", ",".join(SLOW_CODERS)]) == 0
    assert json.loads(capsys.readouterr().out)["coders"] == list(SLOW_CODERS)


def positional_model() -> dict[str, np.ndarray]:
    """Tensors whose values are their own flat positions, so a sample shows exactly which elements it took."""
    return {"big": np.arange(60_000, dtype=np.float32).reshape(300, 200), "mid": np.arange(9_000, dtype=np.int64),
            "half": np.arange(2_000, dtype=np.float16), "tiny": np.arange(3, dtype=np.float32)}


def runs_of(positions: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of each run of consecutive positions."""
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    return [(int(r[0]), r.size) for r in np.split(positions, breaks)]


def check_sample(model: dict[str, np.ndarray], samples: list[np.ndarray], budget: int, chunk: int) -> int:
    """Each tensor's sample is its share of the budget, as evenly spaced chunks of at most `chunk` bytes, taken
    from where it says (the values are the positions); returns the number of chunks."""
    total = sum(v.nbytes for v in model.values())
    chunks = 0
    for (name, original), values in zip(model.items(), samples, strict=True):
        taken = values.astype(np.int64)
        assert np.array_equal(original.reshape(-1)[taken], values), name  # the values are the positions taken
        assert taken.size == (math.floor(original.size * budget / total) or 1), name
        runs = runs_of(taken)
        chunks += len(runs)
        assert all(length * original.itemsize <= chunk for _, length in runs), name
        starts, lengths = np.array([s for s, _ in runs]), np.array([n for _, n in runs])
        if len(runs) > 1:  # evenly spaced: from the first element to the last, equal lengths and gaps (+-1)
            assert starts[0] == 0 and starts[-1] + lengths[-1] == original.size, name
            k, m, n = len(runs), taken.size, original.size
            ideal = np.arange(k) * (m / k + (n - m) / (k - 1))
            assert np.ptp(lengths) <= 1 and np.all(np.abs(starts - ideal) < 2), name
        elif taken.size < original.size:  # one chunk: the middle of the tensor
            assert starts[0] == (original.size - taken.size) // 2, name
    return chunks


def test_sampled_baselines_say_what_they_sampled():
    model = positional_model()
    total = sum(v.nbytes for v in model.values())
    budget = 40_000
    keep: dict = {}
    report = compare_model(model, pipeline="zstd(level=1)", coders="zstd-3", repeat=1, keep=keep, sample_bytes=budget)
    sample = report["sample"]
    assert sample["sampled"] and sample["budget_bytes"] == budget and sample["of_bytes"] == total
    assert sample["of_weights"] == sum(v.size for v in model.values())
    assert sample["chunk_bytes"] == compare.SAMPLE_CHUNK_BYTES
    widths = sum(v.itemsize for v in model.values())
    assert budget - widths <= sample["bytes"] <= budget + widths
    assert sample["weights"] == sum(math.floor(v.size * budget / total) or 1 for v in model.values())
    (plain, _, _), = keep[("none", "zstd-3")]
    assert plain.array.size == sample["bytes"] == report["baselines"]["original_bytes"]
    assert report["baselines"]["weights"] == sample["weights"]
    weights_case = report["streams"][-1]
    assert weights_case["name"] == "weights" and weights_case["input_bytes"] == sample["bytes"]
    assert weights_case["sample"] == sample == report["baselines"]["sample"]
    samples = [np.frombuffer(symbols.array.tobytes(), v.dtype) for v, (symbols, _, _) in
               zip(model.values(), keep[("weights", "zstd-3")], strict=True)]
    assert check_sample(model, samples, budget, compare.SAMPLE_CHUNK_BYTES) == sample["chunks"] == len(model)
    # smaller chunks: the same share of each tensor as more, shorter, evenly spaced chunks
    small, info = compare.sample_tensors([Dense.of(v) for v in model.values()], budget, chunk_bytes=2048)
    assert info["chunk_bytes"] == 2048 and info["bytes"] == sample["bytes"]
    assert check_sample(model, [d.array for d in small], budget, 2048) == info["chunks"] > 2 * len(model)


def test_sample_is_shown_in_the_tables(tmp_path, capsys):
    path = tmp_path / "m.safetensors"
    write_model(path, positional_model())
    assert main(["compare", str(path), "--pipeline", "zstd(level=1)", "--coders", "zstd-3", "--repeat", "1",
                 "--sample-mib", "0.02"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "lossless baselines on a sample of 20.5 KiB of 308.6 KiB (6.6%, 4 chunks)" in out
    assert "weights: 20968 bytes of weights, a sample of 20.5 KiB" in out and "(on the sample)" in out
    assert "evenly spaced chunks of at most 64.0 KiB; --sample-mib 0 codes the whole model" in out
    assert main(["compare", str(path), "--pipeline", "zstd(level=1)", "--coders", "zstd-3", "--repeat", "1",
                 "--sample-mib", "0"]) == 0
    assert "lossless baselines on the whole model (308.6 KiB)" in " ".join(capsys.readouterr().out.split())


def test_a_big_model_takes_the_sampled_path(tmp_path, capsys):
    path = tmp_path / "big.safetensors"
    rng = np.random.default_rng(5)
    big = {"emb": rng.laplace(scale=0.05, size=(4096, 1100)).astype(np.float32),  # 17.2 MiB: over the default
           "norm": rng.normal(size=1100).astype(np.float32)}
    write_model(path, big)
    assert main(["compare", str(path), "--json", "-q", "--pipeline", "zstd(level=1)", "--coders", "zstd-3",
                 "--repeat", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    sample = report["sample"]
    total = sum(v.nbytes for v in big.values())
    assert sample["sampled"] and sample["budget_bytes"] == DEFAULT_SAMPLE_BYTES < total == sample["of_bytes"]
    assert DEFAULT_SAMPLE_BYTES - 8 <= sample["bytes"] <= DEFAULT_SAMPLE_BYTES
    assert sample["chunks"] >= DEFAULT_SAMPLE_BYTES // compare.SAMPLE_CHUNK_BYTES
    assert report["baselines"]["original_bytes"] == report["streams"][-1]["input_bytes"] == sample["bytes"]
    assert report["original_bytes"] == total  # the stage-by-stage part always sees the whole model


def test_progress_covers_every_step():
    seen: dict[str, list] = {}

    @contextlib.contextmanager
    def progress(label, total):
        amounts: list[int] = []
        yield lambda name, amount: amounts.append(amount)
        seen[label] = [total, sum(amounts), len(amounts)]

    model = gaussian_model()
    compare_model(model, preset="han", coders="huffman,zlib-1", repeat=1, progress=progress, sample_bytes=10_000)
    assert list(seen) == ["stage by stage", "coding streams", "lossless baselines"]
    assert seen["stage by stage"] == [sum(v.nbytes for v in model.values())] * 2 + [len(model)]
    for label, (total, done, calls) in seen.items():
        assert total == done > 0 and calls >= 2, label  # counted to the end, in more than one step


def test_sample_size_errors(model_file, capsys):
    for bad in ("-1", "nan", "inf"):
        assert main(["compare", str(model_file), "--sample-mib", bad]) == 1
        err = capsys.readouterr().err.strip()
        assert "--sample-mib" in err and "\n" not in err
    with pytest.raises(ConfigError, match="sample_bytes"):
        compare_model(gaussian_model(), sample_bytes=0)


def test_rans_and_uniform_rows_beside_huffman():
    """`uniform | rans` and `kmeans | rans` chains: their index streams get rans and huffman rows on the same symbols;
    on these i.i.d. indices rans is closer to the order-0 bound than huffman, tables included."""
    model = gaussian_model()
    for quantizer in ("uniform(rel_step=0.25)", "kmeans(bits=4)"):
        report = compare_model(model, pipeline=f"prune(sparsity=0.5) | sparse | {quantizer} | rans",
                               coders="huffman,rans,zstd-3", repeat=1, sample_bytes=None)
        case = next(c for c in report["streams"] if c["name"] == f"{quantizer.split('(')[0]}.indices")
        rows = {r["coder"]: r for r in case["coders"]}
        assert rows["rans"]["verified"] and rows["huffman"]["verified"]
        assert rows["rans"]["bytes"] < rows["huffman"]["bytes"]
        assert 0 < rows["rans"]["over_bound"] < rows["huffman"]["over_bound"]
        assert report["pipelines"][0]["steps"][-1]["stage"] == "rans"
