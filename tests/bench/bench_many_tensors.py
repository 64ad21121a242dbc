"""Many tiny tensors: `dcframe compress` time should grow linearly with the tensor count (issue #15, item 5).

Run: python tests/bench/bench_many_tensors.py [--counts 10000,20000,40000] [--format safetensors|npz] [--table]
Each count runs `dcframe compress` in a fresh process on a model of that many 2-element float32 tensors and prints
seconds and seconds per 1,000 tensors; "vs first" is the per-1k time against the smallest count, measured in the
same run: about 1.0 everywhere means linear (before the fix, 10k/20k/40k took 2.4/6.7/22.6 s: a ratio of ~2.4 at
40k). By default the command runs with --json (the report is built, printed and discarded); --table prints the rich
per-tensor tables instead (`--tensors`, capped at console.MAX_TABLE_ROWS rows).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dcframe.io.modelio import write_model


def model(path: Path, count: int) -> None:
    """A model of `count` tiny float32 tensors, named like a deep network's parameters."""
    one = np.zeros(2, np.float32)
    write_model(path, {f"blocks.{i}.weight": one for i in range(count)})


def run(model_path: Path, out: Path, table: bool) -> float:
    """Seconds one `dcframe compress` process takes (start-up included: it is the same for every count)."""
    args = [sys.executable, "-m", "dcframe.cli", "compress", str(model_path), "-o", str(out), "-q", "-j", "1"]
    started = time.perf_counter()
    done = subprocess.run(args + (["--tensors"] if table else ["--json"]), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, env=dict(os.environ, COLUMNS="200"))
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"compress of {model_path} failed: {done.stderr.strip()}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="10000,20000,40000", help="comma-separated tensor counts")
    parser.add_argument("--format", default="safetensors", choices=("safetensors", "npz"))
    parser.add_argument("--table", action="store_true", help="print tables (default: --json)")
    args = parser.parse_args()
    counts = sorted(int(c) for c in args.counts.split(","))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for count in counts:
            path = Path(tmp) / f"m{count}.{args.format}"
            model(path, count)
            seconds = run(path, Path(tmp) / f"m{count}.dcf", args.table)
            rows.append((count, seconds, seconds / count * 1000))
            path.unlink()
    reference = rows[0][2]
    print(f"| tensors | seconds | seconds per 1k | vs first ({args.format}, {'table' if args.table else 'json'}) |")
    print("|---:|---:|---:|---:|")
    for count, seconds, per_k in rows:
        print(f"| {count} | {seconds:.2f} | {per_k:.3f} | {per_k / reference:.2f}x |")


if __name__ == "__main__":
    main()
