"""Benchmark: decoding han-fc tensors in Node (spec/js, dcf-js) against dcframe's numpy decoder in the same run.

Target (issue #7): a 10^7-weight han-fc tensor decodes in Node in under 2 s on this machine.
Run: `python tests/bench/bench_js_decode.py [--sizes 1000000 10000000]` (needs `node` and `npm ci` in spec/js).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

import dcframe

JS = Path(__file__).resolve().parents[2] / "spec" / "js"


def python_best_ms(path: Path, reps: int) -> float:
    """Best wall time of dcframe decoding the file's one tensor, in ms."""
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        dcframe.decompress(path)
        best = min(best, (time.perf_counter() - t0) * 1e3)
    return best


def main() -> None:
    """Print a markdown table: weights, file size, Python decode, Node decode, and the 2 s target check."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    node = shutil.which("node")
    if node is None:
        raise SystemExit("node is not on PATH")
    if not (JS / "node_modules").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=JS, check=True)
    print("| weights | file bytes | dcframe (numpy) decode ms | dcf-js (Node) decode ms | Node / numpy | < 2 s |")
    print("|---:|---:|---:|---:|---:|:---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            w = np.random.default_rng(0).laplace(0, 0.05, size=(n // 1000, 1000)).astype(np.float32)
            path = Path(tmp) / f"w{n}.dcf"
            dcframe.compress({"w": w}, path, preset="han-fc")
            py = python_best_ms(path, args.reps)
            out = subprocess.run([node, str(JS / "src" / "cli.js"), "time", str(path), "w", str(args.reps)],
                                 capture_output=True, text=True, check=True)
            js = json.loads(out.stdout)["best_ms"]
            ok = "yes" if n != 10_000_000 or js < 2000 else "NO"
            print(f"| {n:,} | {path.stat().st_size:,} | {py:.0f} | {js:.0f} | {js / py:.2f} | {ok} |")


if __name__ == "__main__":
    main()
