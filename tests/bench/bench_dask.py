"""Dask benchmark: a synthetic sharded checkpoint through `dcframe compress` serially, with --jobs 2 and on a
2-worker Dask LocalCluster (`--executor dask -j 2`).

    python tests/bench/bench_dask.py [--params 1e9] [--dtype BF16|F32] [--pipelines han,lossless]
                                     [--modes serial,jobs2,dask2] [--dir DIR] [--model DIR]

The checkpoint is a Hugging Face folder made here (under a temporary directory, deleted after): transformer-shaped
tensors (bench_bigmodel.transformer_shapes), BF16 by default (2 bytes per parameter; F32 with --dtype), split into
4 shards model-0000k-of-00004.safetensors with their index and a config.json. Each row runs the CLI in a fresh child
process and reports: wall time; CPU seconds of the whole process tree (user + system, every worker included) and of
the client alone; throughput (input bytes / wall); per worker, input bytes / wall / workers and input bytes per CPU
second of the workers (what a worker does on a free core, whatever the load); per worker process, the CPU seconds
of its busiest thread (the one running the tasks) and that over the wall time (busy: below 100% on a quiet machine,
the worker waited for work), and the CPU seconds of its other threads (Dask's event loop and monitors); the peak RSS
of the client and of each worker process (sampled from /proc every 50 ms); whether the output is byte-identical to
the serial run's.
Reference in the same run: the serial row of the same pipeline (speed-up). Targets: dask2 >= 1.6x serial on han;
client peak RSS <= 1.5 GiB. On a shared machine (other jobs on the cores), wall times and speed-ups move with the
load: compare CPU s, which does not.
"""

from __future__ import annotations

import argparse
import hashlib
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_bigmodel import transformer_shapes  # noqa: E402

GiB = 1 << 30
SHARDS = 4
PIPELINES = {"han": ["--preset", "han"], "lossless": ["--preset", "lossless"]}
MODES = {"serial": ["-j", "1"], "jobs2": ["-j", "2"], "dask2": ["--executor", "dask", "-j", "2"]}
ITEMSIZE = {"BF16": 2, "F32": 4}


def split_shards(shapes: list[tuple[str, tuple[int, ...]]], itemsize: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Consecutive tensors in SHARDS groups of about equal bytes (as Hugging Face's save_pretrained cuts them)."""
    total = sum(int(np.prod(s)) for _, s in shapes) * itemsize
    groups: list[list] = [[]]
    done = 0
    for name, shape in shapes:
        if done >= total * len(groups) / SHARDS and len(groups) < SHARDS:
            groups.append([])
        groups[-1].append((name, shape))
        done += int(np.prod(shape)) * itemsize
    return groups


def write_shard(path: Path, shapes: list[tuple[str, tuple[int, ...]]], dtype: str, rng: np.random.Generator) -> None:
    """One safetensors shard, tensor by tensor in 16 M-element pieces (never a whole tensor in memory twice)."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in shapes:
        n = int(np.prod(shape)) * ITEMSIZE[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for name, shape in shapes:
            count = int(np.prod(shape))
            scale = 1.0 if "norm" in name else 0.02
            for start in range(0, count, 1 << 24):
                chunk = rng.standard_normal(min(1 << 24, count - start), dtype=np.float32) * np.float32(scale)
                if dtype == "BF16":  # round to nearest even, as torch does
                    bits = chunk.view(np.uint32)
                    chunk = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
                f.write(chunk.tobytes())


def write_folder(folder: Path, params: float, dtype: str) -> tuple[int, int, int]:
    """The sharded checkpoint; returns (parameters, tensors, largest tensor's bytes)."""
    shapes = transformer_shapes(params)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    weight_map = {}
    groups = split_shards(shapes, ITEMSIZE[dtype])
    for k, group in enumerate(groups, 1):
        name = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
        write_shard(folder / name, group, dtype, rng)
        weight_map.update({t: name for t, _ in group})
    n_params = sum(int(np.prod(s)) for _, s in shapes)
    index = {"metadata": {"total_size": n_params * ITEMSIZE[dtype]}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (folder / "config.json").write_text('{"model_type": "llama"}\n')
    return n_params, len(shapes), max(int(np.prod(s)) for _, s in shapes) * ITEMSIZE[dtype]


def folder_sizes(folder: Path, params: float, dtype: str) -> tuple[int, int, int]:
    """What write_folder returns, for a folder it made earlier with these arguments (checked against its index)."""
    shapes = transformer_shapes(params)
    n_params = sum(int(np.prod(s)) for _, s in shapes)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    if index["metadata"]["total_size"] != n_params * ITEMSIZE[dtype] or len(index["weight_map"]) != len(shapes):
        raise SystemExit(f"{folder}: not the checkpoint of --params {params:g} --dtype {dtype}")
    return n_params, len(shapes), max(int(np.prod(s)) for _, s in shapes) * ITEMSIZE[dtype]


_WRAPPER = r"""
import json, os, resource, subprocess, sys, time

PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")

def tree(root):
    kids = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(pid))
            except (OSError, ValueError, IndexError):
                pass
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append((pid, bool(kids.get(pid))))
        stack.extend(kids.get(pid, []))
    return out

def rss(pid):
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except OSError:
        return 0

def own_cpu(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (OSError, ValueError, IndexError):
        return None

def thread_cpu(pid):
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        cpu = own_cpu(f"{pid}/task/{tid}")
        if cpu is not None:
            out[tid] = cpu
    return out

start = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
peaks, threads, cpus, parents = {}, {}, {}, set()
while proc.poll() is None:
    for pid, parent in tree(proc.pid):
        if parent:
            parents.add(pid)
        peaks[pid] = max(peaks.get(pid, 0), rss(pid))
        cpus[pid] = own_cpu(pid) or cpus.get(pid, 0.0)
        if pid != proc.pid:
            threads.setdefault(pid, {}).update(thread_cpu(pid))
    time.sleep(0.05)
err = proc.stderr.read().decode()
wall = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
# CPU of the tree: what the kernel gives back for processes reaped by their parents, or, when more, the sum of
# every process's own CPU as last seen (workers forked from a forkserver that nobody waits for are not counted in
# RUSAGE_CHILDREN; a process loses at most its last 50 ms here)
cpu = max(usage.ru_utime + usage.ru_stime, sum(cpus.values()))
client_cpu = cpus.get(proc.pid, 0.0)
client = peaks.pop(proc.pid, 0)
# workers: not the resource tracker (small), nor a forkserver (the parent of workers)
workers = sorted((p for p in peaks if peaks[p] > 64 << 20 and p not in parents), key=peaks.get, reverse=True)
# A worker's busiest thread runs the tasks (Dask: its task thread; a pool process: its only one); the others are
# its event loop, monitors and the like. As last seen, up to 50 ms before the end.
task = [max(threads.get(p, {}).values(), default=0.0) for p in workers]
other = [sum(threads.get(p, {}).values()) - t for p, t in zip(workers, task)]
print(json.dumps({"rc": proc.returncode, "wall": wall, "cpu": cpu,
                  "client_cpu": client_cpu, "client_rss": client, "worker_rss": [peaks[p] for p in workers],
                  "task_cpu": task, "other_cpu": other, "stderr": err[-2000:]}))
"""


def measure(cmd: list[str]) -> dict:
    """Run `cmd` under a fresh wrapper process; its RUSAGE_CHILDREN then covers this command's process tree only."""
    out = subprocess.run([sys.executable, "-c", _WRAPPER, *cmd], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    if result["rc"] != 0:
        raise SystemExit(f"command failed ({result['rc']}): {' '.join(cmd)}\n{result['stderr']}")
    return result


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def workers_of(mode: str) -> int:
    return 1 if mode == "serial" else 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=float, default=1e9, help="parameters of the synthetic model (default 1e9)")
    ap.add_argument("--dtype", choices=sorted(ITEMSIZE), default="BF16", help="tensor dtype (default BF16)")
    ap.add_argument("--pipelines", default="han,lossless", help=f"any of {', '.join(PIPELINES)}")
    ap.add_argument("--modes", default="serial,jobs2,dask2", help=f"any of {', '.join(MODES)}; serial first")
    ap.add_argument("--dir", default=None, help="where to write the files (default: a temporary directory)")
    ap.add_argument("--model", default=None, help="a checkpoint folder an earlier run made with the same --params "
                    "and --dtype, kept by you (write_folder), instead of making one (which takes a minute at 1e9)")
    args = ap.parse_args()
    modes = args.modes.split(",")
    base = Path(tempfile.mkdtemp(prefix="dcf-bench-dask-", dir=args.dir))
    try:
        t0 = time.perf_counter()
        folder = Path(args.model) if args.model else base / "model"
        n_params, n_tensors, largest = (folder_sizes if args.model else write_folder)(folder, args.params, args.dtype)
        model_bytes = n_params * ITEMSIZE[args.dtype]
        print(f"synthetic checkpoint: {n_params / 1e6:,.0f}M parameters ({args.dtype}), {n_tensors} tensors in "
              f"{SHARDS} shards, {model_bytes / GiB:.2f} GiB; largest tensor {largest / GiB:.3f} GiB; generated in "
              f"{time.perf_counter() - t0:.0f} s")
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start (shared); "
              f"python {sys.version.split()[0]}, numpy {np.__version__}\n")
        print("| pipeline | mode | wall s | speed-up | CPU s (tree) | client CPU s | MB/s | MB/s per worker "
              "| MB per worker CPU s | worker task CPU s (busy) | worker other CPU s | client peak RSS "
              "| worker peak RSS | output | identical |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for name in args.pipelines.split(","):
            reference = digest_ref = None
            for mode in modes:
                out = base / f"{name}-{mode}.dcf"
                cmd = [sys.executable, "-m", "dcframe.cli", "compress", str(folder), "-o", str(out),
                       *PIPELINES[name], *MODES[mode], "-q"]
                r = measure(cmd)
                size, sha = out.stat().st_size, digest(out)
                out.unlink()
                reference = reference or r["wall"]
                digest_ref = digest_ref or sha
                mbps = model_bytes / r["wall"] / 1e6
                workers = ", ".join(f"{w / GiB:.2f}" for w in r["worker_rss"]) or "-"
                busy = ", ".join(f"{t:.1f} ({t / r['wall']:.0%})" for t in r["task_cpu"]) or "-"
                other = ", ".join(f"{t:.1f}" for t in r["other_cpu"]) or "-"
                worker_cpu = r["cpu"] - (r["client_cpu"] if mode != "serial" else 0.0)  # serial: the client works
                print(f"| {name} | {mode} | {r['wall']:.1f} | {reference / r['wall']:.2f}x | {r['cpu']:.1f} "
                      f"| {r['client_cpu']:.1f} | {mbps:.0f} | {mbps / workers_of(mode):.0f} "
                      f"| {model_bytes / worker_cpu / 1e6:.0f} | {busy} | {other} "
                      f"| {r['client_rss'] / GiB:.2f} GiB | {workers} GiB | {size / 1e6:,.0f} MB "
                      f"| {'yes' if sha == digest_ref else 'NO'} |", flush=True)
        print(f"\ntargets: dask2 >= 1.6x serial on han; client peak RSS <= 1.5 GiB (largest tensor "
              f"{largest / GiB:.2f} GiB, model {model_bytes / GiB:.2f} GiB); load average at the end "
              f"{os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
