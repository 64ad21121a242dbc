"""Big-model benchmark: a synthetic float32 transformer checkpoint through `dcframe compress` (han, zstd) and back.

    python tests/bench/bench_bigmodel.py [--params 1e9] [--jobs 1,2] [--pipelines han,zstd] [--dir DIR] [--keep]
                                         [--reuse]

The checkpoint (.safetensors, 4 bytes per parameter; default 1e9 parameters = 4 GB) is generated to disk tensor by
tensor, shaped like a decoder-only transformer (token embedding, per layer q/k/v/o d x d, MLP 4d x d and d x 4d,
norms and biases). Each row runs the CLI in a fresh child process and reports wall time, throughput (input bytes
per second), the child's peak RSS as the OS counts it (getrusage RUSAGE_CHILDREN ru_maxrss of a wrapper process that
runs only that command) and the peak of the summed RSS of the whole process tree (the workers of --jobs included),
sampled from /proc every 50 ms. CPU s is the user + system time of the whole process tree: on a shared machine,
where other jobs take cores, it shows the work done when wall times cannot (a parallel run that does little more
work than the serial one is as fast as the free cores allow). Reference in the same run: --jobs 1 of the same
pipeline (speed-up column), and the model's largest tensor (the working set the memory target is measured against).
Target: peak RSS < 3 GiB, near-linear speed-up from 1 to 2 jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GiB = 1 << 30
PIPELINES = {"han": ["--preset", "han"], "zstd": ["-p", "zstd(level=3)"]}


def transformer_shapes(params: float) -> list[tuple[str, tuple[int, ...]]]:
    """Tensor names and shapes of a decoder-only transformer with about `params` parameters."""
    d = 2048 if params >= 5e8 else 1024 if params >= 1e8 else 512 if params >= 1e7 else 128
    vocab = 32000 if params >= 1e7 else 1000
    per_layer = 12 * d * d + 13 * d
    layers = max(1, round((params - vocab * d) / per_layer))
    shapes = [("model.embed_tokens.weight", (vocab, d))]
    for i in range(layers):
        p = f"model.layers.{i}"
        for proj in ("q", "k", "v", "o"):
            shapes.append((f"{p}.self_attn.{proj}_proj.weight", (d, d)))
            shapes.append((f"{p}.self_attn.{proj}_proj.bias", (d,)))
        shapes += [(f"{p}.mlp.up_proj.weight", (4 * d, d)), (f"{p}.mlp.up_proj.bias", (4 * d,)),
                   (f"{p}.mlp.down_proj.weight", (d, 4 * d)), (f"{p}.mlp.down_proj.bias", (d,)),
                   (f"{p}.input_layernorm.weight", (d,)), (f"{p}.post_attention_layernorm.weight", (d,))]
    shapes.append(("model.norm.weight", (d,)))
    return shapes


def _header(shapes: list[tuple[str, tuple[int, ...]]]) -> dict:
    header, offset = {}, 0
    for name, shape in shapes:
        n = int(np.prod(shape)) * 4
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    return header


def write_checkpoint(path: Path, shapes: list[tuple[str, tuple[int, ...]]], seed: int = 0) -> int:
    """Write a safetensors file tensor by tensor (never the whole model in memory); returns its size."""
    header = _header(shapes)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape in shapes:
            count = int(np.prod(shape))
            scale = 1.0 if "norm" in name else 0.02
            for start in range(0, count, 1 << 24):
                chunk = rng.standard_normal(min(1 << 24, count - start), dtype=np.float32)
                chunk *= scale
                f.write(chunk.tobytes())
    return path.stat().st_size


_WRAPPER = r"""
import json, os, resource, subprocess, sys, threading, time

def tree_rss(root):
    kids = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(pid))
            except (OSError, ValueError, IndexError):
                pass
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
        stack.extend(kids.get(pid, []))
    return total

start = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
peak = 0
while proc.poll() is None:
    peak = max(peak, tree_rss(proc.pid))
    time.sleep(0.05)
err = proc.stderr.read().decode()
wall = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": proc.returncode, "wall": wall, "maxrss": usage.ru_maxrss * 1024, "tree_peak": peak,
                  "cpu": usage.ru_utime + usage.ru_stime, "stderr": err[-2000:]}))
"""


def measure(cmd: list[str]) -> dict:
    """Run `cmd` under a fresh wrapper process; its RUSAGE_CHILDREN then covers this command only."""
    out = subprocess.run([sys.executable, "-c", _WRAPPER, *cmd], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    if result["rc"] != 0:
        raise SystemExit(f"command failed ({result['rc']}): {' '.join(cmd)}\n{result['stderr']}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=float, default=1e9, help="parameters of the synthetic model (default 1e9)")
    ap.add_argument("--jobs", default="1,2", help="comma-separated --jobs values (default 1,2)")
    ap.add_argument("--pipelines", default="han,zstd", help=f"any of {', '.join(PIPELINES)}")
    ap.add_argument("--dir", default=None, help="where to write the files (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--reuse", action="store_true",
                    help="use DIR/model.safetensors as it is if it has the expected size (from an earlier --keep run)")
    args = ap.parse_args()
    shapes = transformer_shapes(args.params)
    n_params = sum(int(np.prod(s)) for _, s in shapes)
    model_bytes = 4 * n_params
    largest = max(shapes, key=lambda t: int(np.prod(t[1])))
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="dcf-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    needed = 3 * model_bytes + GiB  # the model, a zstd container of about its size, a decompressed copy
    free = shutil.disk_usage(base).free
    if free < needed:
        print(f"Not enough free disk in {base}: this run needs about {needed / GiB:.1f} GiB, {free / GiB:.1f} GiB "
              f"is free. Try a smaller --params or another --dir.")
        return
    jobs = [int(j) for j in args.jobs.split(",")]
    try:
        model = base / "model.safetensors"
        t0 = time.perf_counter()
        expected = 8 + len(json.dumps(_header(shapes), separators=(",", ":")).encode()) + 7
        expected = expected - (expected - 8) % 8 + model_bytes
        if not (args.reuse and model.exists() and model.stat().st_size == expected):
            write_checkpoint(model, shapes)
        print(f"synthetic model: {n_params / 1e6:.0f}M parameters, {len(shapes)} tensors, "
              f"{model_bytes / GiB:.2f} GiB; largest tensor {largest[0]} {list(largest[1])} = "
              f"{4 * int(np.prod(largest[1])) / GiB:.3f} GiB; generated in {time.perf_counter() - t0:.0f} s")
        print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}, numpy {np.__version__}\n")
        print("| pipeline | step | jobs | wall s | CPU s | MB/s | speed-up | peak RSS (max process) "
              "| peak RSS (process tree) | output |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name in args.pipelines.split(","):
            if name == "han" and not _han_available():
                print("| han | - | - | - | - | - | - | - | - | skipped: the han stages are not installed |")
                continue
            reference = None
            out = base / f"{name}.dcf"
            for j in jobs:
                cmd = [sys.executable, "-m", "dcframe.cli", "compress", str(model), "-o", str(out), *PIPELINES[name],
                       "--jobs", str(j), "-q"]
                r = measure(cmd)
                reference = reference or r["wall"]
                _row(name, "compress", j, r, model_bytes, reference / r["wall"], out.stat().st_size)
            back = base / f"{name}.back.safetensors"
            r = measure([sys.executable, "-m", "dcframe.cli", "decompress", str(out), "-o", str(back), "-q"])
            _row(name, "decompress", 1, r, model_bytes, None, back.stat().st_size)
            back.unlink()
            out.unlink()
        print(f"\ntarget: peak RSS < 3 GiB (the largest tensor is {4 * int(np.prod(largest[1])) / GiB:.2f} GiB, "
              f"the model {model_bytes / GiB:.2f} GiB); speed-up 1 -> 2 jobs near 2x")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


def _han_available() -> bool:
    from dcframe.core.registry import get_registry

    return all(s in get_registry().stages for s in ("prune", "sparse", "kmeans", "huffman"))


def _row(name: str, step: str, jobs: int, r: dict, model_bytes: int, speedup: float | None, out_bytes: int) -> None:
    mbps = model_bytes / r["wall"] / 1e6
    sp = f"{speedup:.2f}x" if speedup is not None else ""
    print(f"| {name} | {step} | {jobs} | {r['wall']:.1f} | {r['cpu']:.1f} | {mbps:.0f} | {sp} "
          f"| {r['maxrss'] / GiB:.2f} GiB | {r['tree_peak'] / GiB:.2f} GiB | {out_bytes / 1e6:.0f} MB |", flush=True)


if __name__ == "__main__":
    main()
