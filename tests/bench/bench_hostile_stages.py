"""Memory and time of `dcframe verify` on every hostile stage case (tests/hostile/stage_cases.py), against the
documented bound: decoding one tensor needs at most 2 x B + 64 MiB beyond the interpreter's baseline, B =
decode_bound of the tensor. The baseline is measured in the same run (verify of a one-tensor file).

Run: python tests/bench/bench_hostile_stages.py [case ...]   (Linux: peak RSS from wait4's ru_maxrss)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from container_tools import split  # noqa: E402
from hostile.stage_cases import CASES  # noqa: E402

import dcframe  # noqa: E402
from dcframe.core.orchestrator import decode_bound  # noqa: E402

MiB = 1 << 20


def run(path: Path) -> tuple[int, float, float]:
    """Exit code, seconds and peak RSS (MiB) of `dcframe verify path` in a child process."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "dcframe.cli", "verify", str(path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    return os.waitstatus_to_exitcode(status), time.perf_counter() - start, usage.ru_maxrss / 1024


def file_bound(path: Path) -> int:
    """The largest decode bound of the file's tensors (declared shape and dtype, stored bytes; 1 MiB if malformed)."""
    parts = split(path.read_bytes())
    bounds = []
    for record, streams in parts.tensors:
        try:
            bounds.append(decode_bound(record["dtype"], record["shape"], sum(len(s) for s in streams.values())))
        except (dcframe.DcfError, TypeError, ValueError):
            bounds.append(MiB)
    return max(bounds)


def main() -> None:
    names = sys.argv[1:] or list(CASES)
    with tempfile.TemporaryDirectory() as tmp:
        base_path = Path(tmp) / "baseline.dcf"
        dcframe.compress({"w": np.zeros(4, np.float32)}, base_path, pipeline="zstd(level=3)")
        _, _, baseline = run(base_path)
        print(f"baseline (verify of a 4-element file): {baseline:.0f} MiB RSS\n")
        print("| case | file bytes | exit | seconds | peak RSS - baseline (MiB) | bound 2B + 64 MiB | ratio |")
        print("|---|---|---|---|---|---|---|")
        for name in names:
            path = Path(tmp) / f"{name}.dcf"
            path.write_bytes(CASES[name]())
            code, seconds, rss = run(path)
            limit = (2 * file_bound(path) + 64 * MiB) / MiB
            extra = max(0.0, rss - baseline)
            print(f"| {name} | {path.stat().st_size} | {code} | {seconds:.2f} | {extra:.0f} | {limit:.0f} | "
                  f"{extra / limit:.2f} |")
            path.unlink()


if __name__ == "__main__":
    main()
