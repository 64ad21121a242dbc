"""`dcframe compare` at scale: the bundled LeNet-300-100, synthetic models of 10^5 to 10^7 (or more) weights, and the
wall time of `dcframe compare`'s defaults on a real model against `dcframe compress --preset han` on it.

Run: python tests/bench/bench_compare.py [--sizes 1e5,1e6,1e7|none] [--repeat 3] [--model FILE] [--with-slow]
     [--with-full] [--out bench_compare.md]
Real model (default: all-MiniLM-L6-v2's model.safetensors, 90.9 MB, in ~/.cache/dcframe-bench if there): both
commands run as subprocesses, as a person runs them, in the same run; `--with-slow` adds compare with every coder
(zstd -19, lzma, bz2, zlib -9 too) and `--with-full` compare with `--sample-mib 0` (and how far the sample's lossless
ratios are from the whole model's).
Synthetic models: fully connected layers of 1000 inputs, Laplace weights (scale 0.05) as trained fc layers roughly
are, small normal biases; the `han` preset (prune 92%, 5-bit indices and k-means, Huffman; biases zstd -19).
Reference, measured in the same run on the same streams: zstd -19 (size) and zstd -3 (speed) against Huffman.
Prints (and with --out writes) markdown: machine, versions, command, then one table per question.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zstandard

import dcframe
from dcframe import read_model
from dcframe.analysis.compare import DEFAULT_CODERS, SLOW_CODERS, compare_model

BUNDLED = Path(dcframe.__file__).parent / "data" / "lenet_300_100.safetensors"
REAL = Path.home() / ".cache" / "dcframe-bench" / "all-minilm-l6-v2" / "model.safetensors"
ALL_CODERS = ",".join((*DEFAULT_CODERS, *SLOW_CODERS))  # every coder compare knows by name


def synthetic(weights: int, seed: int = 0) -> dict[str, np.ndarray]:
    """About `weights` float32 weights as fc layers of 1000 inputs (at most 1000 outputs each) plus biases."""
    rng = np.random.default_rng(seed)
    tensors, left, i = {}, weights, 0
    while left > 0:
        out = max(1, min(1000, left // 1000))
        cols = 1000 if left >= 1000 else left
        tensors[f"fc{i}.weight"] = rng.laplace(scale=0.05, size=(out if cols == 1000 else 1, cols)).astype(np.float32)
        left -= tensors[f"fc{i}.weight"].size
        tensors[f"fc{i}.bias"] = rng.normal(scale=0.01, size=tensors[f"fc{i}.weight"].shape[0]).astype(np.float32)
        i += 1
    return tensors


def machine() -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = "?"
    return [f"- machine: {cpu}, {os.cpu_count()} cores (shared), {platform.system()} {platform.release()}",
            f"- versions: dcframe {dcframe.__version__} ({commit or '?'}), Python {platform.python_version()}, "
            f"numpy {np.__version__}, zstandard {zstandard.__version__} (libzstd {zstandard.ZSTD_VERSION})",
            f"- command: `python {' '.join(sys.argv)}`"]


def row(rows: list[dict], name: str) -> dict:
    return next(r for r in rows if r["coder"] == name)


def wall(command: list[str]) -> tuple[float, str]:
    """Run a dcframe command as a subprocess (a fresh interpreter, as a person runs it): seconds and its stdout."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "dcframe.cli", *command], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if out.returncode:
        raise SystemExit(f"dcframe {' '.join(command)} failed: {out.stderr.strip()}")
    return elapsed, out.stdout


def real_model(path: Path, with_slow: bool, with_full: bool) -> list[str]:
    """Wall time of compare's defaults on a real model against compress --preset han, measured here, now."""
    with tempfile.TemporaryDirectory() as tmp:
        runs = [("`dcframe compress MODEL -o OUT --preset han` (reference)",
                 wall(["compress", str(path), "-o", str(Path(tmp) / "m.dcf"), "--preset", "han", "-q"]))]
    runs.append(("`dcframe compare MODEL` (defaults)", wall(["compare", str(path), "--json", "-q"])))
    if with_slow:
        runs.append((f"`dcframe compare MODEL --coders {ALL_CODERS}`",
                     wall(["compare", str(path), "--json", "-q", "--coders", ALL_CODERS])))
    if with_full:
        runs.append(("`dcframe compare MODEL --sample-mib 0` (the whole model)",
                     wall(["compare", str(path), "--json", "-q", "--sample-mib", "0"])))
    ref = runs[0][1][0]
    lines = [f"## `dcframe compare` defaults on a real model: {path.parent.name} ({path.stat().st_size / 1e6:.1f} MB)",
             "", "| command | wall time | vs compress | coders | raw bytes coded |", "|---|---:|---:|---|---:|"]
    reports = {}
    for label, (seconds, stdout) in runs:
        report = json.loads(stdout) if stdout.startswith("{") else None
        coded = ""
        if report:
            reports[label] = report
            sample = report["sample"]
            coded = f"{sample['bytes'] / 2**20:.1f} of {sample['of_bytes'] / 2**20:.1f} MiB"
        coders = ", ".join(report["coders"]) if report else ""
        lines.append(f"| {label} | {seconds:.1f} s | {seconds / ref:.1f}x | {coders} | {coded} |")
    if with_full:
        sampled, full = (reports[label] for label, _ in (runs[1], runs[-1]))
        lines += ["", "Lossless ratios, default sample against the whole model (same coders, same run):", "",
                  "| transform | coder | sample | whole model | difference |", "|---|---|---:|---:|---:|"]
        whole = {(r["transform"], r["coder"]): r["ratio"] for r in full["baselines"]["rows"]}
        for r in sampled["baselines"]["rows"]:
            w = whole[(r["transform"], r["coder"])]
            lines.append(f"| {r['transform']} | {r['coder']} | {r['ratio']:.4f}x | {w:.4f}x | "
                         f"{r['ratio'] / w - 1:+.2%} |")
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e5,1e6,1e7", help="synthetic model sizes in weights (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="timing runs per coder, median (default %(default)s)")
    parser.add_argument("--big-repeat", type=int, default=1, help="timing runs for models of 10^7+ weights")
    parser.add_argument("--coders", default=ALL_CODERS, help="coders for the synthetic models (default: all)")
    parser.add_argument("--big-coders", default=None,
                        help="coders for models of 10^8+ weights (default: --coders)")
    parser.add_argument("--model", type=Path, default=REAL if REAL.exists() else None,
                        help="a real model for the wall-time table (default: %(default)s)")
    parser.add_argument("--with-slow", action="store_true", help="real model: also compare with every coder")
    parser.add_argument("--with-full", action="store_true", help="real model: also compare without sampling")
    parser.add_argument("--out", help="also write the markdown here")
    args = parser.parse_args()
    real = real_model(args.model, args.with_slow, args.with_full) if args.model else []

    models = []
    if BUNDLED.exists():
        models.append(("bundled LeNet-300-100", lambda: read_model(BUNDLED)))
    else:
        models.append(("synthetic LeNet-300-100 (bundled file absent)", lambda: synthetic(266_200)))
    for text in [] if args.sizes == "none" else args.sizes.split(","):
        n = int(float(text))
        models.append((f"synthetic 10^{round(np.log10(n))}" if n == 10 ** round(np.log10(n)) else f"synthetic {n}",
                       lambda n=n: synthetic(n)))

    results = []
    for label, load in models:
        tensors = load()
        n = sum(int(np.prod(tensors[k].array.shape if hasattr(tensors[k], "array") else tensors[k].shape))
                for k in tensors)
        coders = args.big_coders if args.big_coders and n >= 10 ** 8 else args.coders
        repeat = args.big_repeat if n >= 10 ** 7 else args.repeat
        start = time.perf_counter()
        report = compare_model(tensors, preset="han", coders=coders, repeat=repeat)
        elapsed = time.perf_counter() - start
        results.append((label, n, repeat, elapsed, report))
        print(f"{label}: {n} weights, {elapsed:.1f} s", file=sys.stderr)

    lines = ["# `dcframe compare` benchmark", "", *machine(), "", *real]
    lines += ["## What each stage buys (han preset), and how far lossless alone goes", "",
              "| model | weights | prune+sparse | +kmeans | +huffman (final) | best lossless plain | "
              "best lossless byte-grouped | compare time |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, n, _, elapsed, report in results:
        fc = max(report["pipelines"], key=lambda p: p["original_bytes"])
        ratio = {s["stage"]: s["ratio"] for s in fc["steps"]}
        base = report["baselines"]["rows"]

        def best(transform: str, base=base) -> str:
            rows = [r for r in base if r["transform"] == transform and r["ratio"]]
            top = max(rows, key=lambda r: r["ratio"])
            return f"{top['ratio']:.3f}x ({top['coder']})"

        lines.append(f"| {label} | {n:,} | {ratio.get('sparse', 0):.1f}x | {ratio.get('kmeans', 0):.1f}x | "
                     f"**{report['ratio']:.1f}x** | {best('none')} | {best('bytegroup')} | {elapsed:.1f} s |")
    lines += ["", "Stage ratios are for the fully connected layers' chain, metadata included; the final ratio is the "
              "whole model (biases lossless), container overhead excluded.", ""]
    for case in ("sparse.positions", "kmeans.indices", "weights"):
        lines += [f"## `{case}`: Huffman against generic coders (reference zstd -19 / -3, same run)", "",
                  "| model | symbols | order-0 bound | coder | bytes | vs bound | vs zstd-19 | encode MB/s | "
                  "decode MB/s | decode vs zstd-3 |",
                  "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
        for label, _, _, _, report in results:
            stream = next((s for s in report["streams"] if s["name"] == case), None)
            if stream is None:
                continue
            rows = stream["coders"]
            ref_size = row(rows, "zstd-19") if any(r["coder"] == "zstd-19" for r in rows) else None
            ref_speed = row(rows, "zstd-3") if any(r["coder"] == "zstd-3" for r in rows) else None
            for r in rows:
                if r["error"]:
                    continue
                marks = [m for m, k in (("smallest", "smallest"), ("fastest dec", "fastest_decode"))
                         if stream[k] == r["coder"]]
                name = f"**{r['coder']}**" if marks else r["coder"]
                vs = f"{(r['bytes'] + r['meta_bytes']) / (ref_size['bytes'] + ref_size['meta_bytes']):.3f}" \
                    if ref_size else ""
                dec = f"{r['decode_mb_s'] / ref_speed['decode_mb_s']:.3f}" if ref_speed and r["decode_mb_s"] else ""
                lines.append(f"| {label} | {stream['count']:,} | {stream['entropy_bytes']:,.0f} | {name} | "
                             f"{r['bytes'] + r['meta_bytes']:,} | {r['over_bound']:+.2%} | {vs} | "
                             f"{r['encode_mb_s']:.1f} | {r['decode_mb_s']:.1f} | {dec} |")
        lines.append("")
    lines += ["Bytes include side information (metadata; Huffman's table and offsets are inside its stream). "
              "MB/s are of the symbols as the smallest little-endian unsigned ints (1 byte each here), median of "
              f"{args.repeat} runs ({args.big_repeat} for 10^7+ weights); a generic coder's time includes that "
              "packing.",
              ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
