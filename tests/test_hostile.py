"""Every hostile-file generator of tests/hostile/ (each module's CASES) run through the CLI - inspect, inspect --json,
verify, decompress -o x.npz - in a subprocess under an address-space limit of the documented bound (spec/FORMAT.md
8.1: baseline + 2 x B + 64 MiB for the largest declared tensor, B its decode bound, plus 32 x the file's size for
metadata) and a time limit. Each command must exit 0 or 1 with no traceback, a failure must be one non-empty line
(no bare MemoryError), and a failed decompress must leave no output or temporary file behind.

One worker process runs all cases (a process per command would cost seconds of imports each): it measures its own
baseline address space after a warm-up run of every command, with OPENBLAS_NUM_THREADS=1 set for it (OpenBLAS
reserves address space per thread), and before each case sets RLIMIT_AS to that baseline plus the case's bound.
DCF_HOSTILE_EXAMPLES sets how many seeded generator cases tests/hostile/container_cases.py makes (24 in CI).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import pkgutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import hostile
import msgpack
import pytest

from dcframe.core.container import OBJECT_FACTOR  # FORMAT.md 8.1: metadata memory per byte of the file

TESTS = Path(__file__).resolve().parent
CASE_SECONDS = 20  # per case, all four commands
ITEMSIZE = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
            "I8": 1, "U8": 1, "BOOL": 1}
MIB = 1 << 20

WORKER = r'''
import io, json, os, resource, signal, sys, traceback
from contextlib import redirect_stderr, redirect_stdout
from dcframe.cli import main

class CaseTimeout(BaseException):
    pass

def on_alarm(signum, frame):
    raise CaseTimeout()

def address_space():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))

def commands(path, out):
    return [["inspect", path], ["inspect", "--json", path], ["verify", "-q", path],
            ["decompress", "-q", path, "-o", out]]

def run(argv):
    err, exc = io.StringIO(), None
    try:
        with redirect_stdout(io.StringIO()), redirect_stderr(err):
            rc = main(argv)
    except CaseTimeout:
        rc, exc = None, "timeout"
    except BaseException:
        rc, exc = None, traceback.format_exc()
    return {"argv": argv[:2], "rc": rc, "stderr": err.getvalue(), "exc": exc}

jobs = json.loads(sys.stdin.read())
warm = jobs.pop(0)
for argv in commands(warm["path"], warm["out"]):
    run(argv)
baseline = address_space()
hard = resource.getrlimit(resource.RLIMIT_AS)[1]
signal.signal(signal.SIGALRM, on_alarm)
for job in jobs:
    print(json.dumps({"start": job["name"]}), flush=True)
    limit = baseline + job["bound"]
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    signal.alarm(job["seconds"])
    results = []
    for argv in commands(job["path"], job["out"]):
        results.append(run(argv))
        results[-1]["out_exists"] = os.path.exists(job["out"])
        results[-1]["files"] = sorted(os.listdir(os.path.dirname(job["out"])))
        if os.path.exists(job["out"]):
            os.unlink(job["out"])
    signal.alarm(0)
    resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
    print(json.dumps({"name": job["name"], "baseline": baseline, "limit": limit, "results": results}), flush=True)
'''


def all_cases() -> dict[str, Any]:
    """Every CASES entry of every module in tests/hostile/, named module:case."""
    cases = {}
    for info in pkgutil.iter_modules(hostile.__path__):
        module = importlib.import_module(f"hostile.{info.name}")
        for name, make in getattr(module, "CASES", {}).items():
            cases[f"{info.name}:{name}"] = make
    return cases


CASES = all_cases()


def declared_bytes(data: bytes) -> int:
    """The largest tensor a file declares, read leniently and independently of dcframe (0 where the index or a
    record does not parse under small limits: then the reader must refuse it before decoding anything big)."""
    bound = min(1 << 40, max(1 << 30, (1 << 20) * len(data)))  # FORMAT.md 8: what a reader accepts at all
    limits = {"max_array_len": 1 << 17, "max_map_len": 256, "raw": False, "strict_map_key": False}
    try:
        offset, length = struct.unpack("<QI", data[-24:-12])
        index = msgpack.unpackb(data[offset:offset + length], **limits)
        largest = 0
        for _name, start, rec_len, _total, _crc in index["tensors"]:
            record = msgpack.unpackb(data[start:start + rec_len], **limits)
            largest = max(largest, math.prod(record["shape"]) * ITEMSIZE.get(record["dtype"], 8))
        return min(largest, bound)
    except Exception:  # hostile on purpose: anything unparsable declares nothing we would decode
        return 0


def memory_bound(data: bytes) -> int:
    """FORMAT.md 8.1: 2 x B + 64 MiB for one tensor's decode (B = 8 x max(declared, stored) + 1 MiB, the file's
    size standing in for the stored bytes) plus OBJECT_FACTOR x the file's size for the index and one record."""
    b = 8 * max(declared_bytes(data), len(data)) + MIB
    return 2 * b + 64 * MIB + OBJECT_FACTOR * len(data)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, dict[str, Any]]:
    """Run every case in one worker subprocess; returns name -> the worker's report (or what went wrong)."""
    root = tmp_path_factory.mktemp("hostile")
    warm_dir = root / "warm"
    warm_dir.mkdir()
    jobs = [{"path": str(warm_dir / "w.dcf"), "out": str(warm_dir / "x.npz")}]
    (warm_dir / "w.dcf").write_bytes(CASES["container_cases:valid-minimal"]())
    for i, (name, make) in enumerate(CASES.items()):
        folder = root / f"case{i}"
        folder.mkdir()
        data = make()
        (folder / "in.dcf").write_bytes(data)
        jobs.append({"name": name, "path": str(folder / "in.dcf"), "out": str(folder / "x.npz"),
                     "bound": memory_bound(data), "seconds": CASE_SECONDS})
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONPATH=str(TESTS.parent))
    proc = subprocess.run([sys.executable, "-c", WORKER], input=json.dumps(jobs), capture_output=True, text=True,
                          env=env, timeout=CASE_SECONDS * len(jobs) + 60)
    reports: dict[str, dict[str, Any]] = {}
    started = None
    for line in proc.stdout.splitlines():
        item = json.loads(line)
        if "start" in item:
            started = item["start"]
        else:
            reports[item["name"]] = item
    if started is not None and started not in reports:  # the worker died in this case (a crash, a kill)
        reports[started] = {"crash": f"worker exited {proc.returncode}: {proc.stderr[-2000:]}"}
    return reports


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_case_is_refused_or_read_within_bounds(outcomes, case):
    report = outcomes.get(case)
    assert report is not None, f"{case} never ran (an earlier case crashed the worker)"
    assert "crash" not in report, report.get("crash")
    for r in report["results"]:
        command = " ".join(r["argv"][:1] + [a for a in r["argv"][1:] if a.startswith("-")])
        assert r["exc"] is None, f"{command}: escaped the CLI:\n{r['exc']}"
        assert r["rc"] in (0, 1), f"{command}: exit {r['rc']}: {r['stderr']}"
        assert "Traceback" not in r["stderr"] and "MemoryError" not in r["stderr"] \
            and "Unable to allocate" not in r["stderr"], f"{command}: {r['stderr']}"
        if r["rc"] == 1:
            lines = r["stderr"].strip().splitlines()
            if command.startswith("verify") and lines and not lines[0].startswith("dcframe: error:"):
                continue  # verify's report of damaged tensors (table on stdout, a summary on stderr)
            assert len(lines) == 1 and len(lines[0]) > len("dcframe: error: "), f"{command}: {r['stderr']!r}"
        if r["argv"][0] == "decompress":
            if r["rc"] != 0:
                assert not r["out_exists"], f"{command} failed but left its output"
            assert set(r["files"]) <= {"in.dcf", "x.npz"}, f"{command} left {r['files']}"


def test_harness_measured_a_real_baseline(outcomes):
    """The worker's baseline is its own address space after imports and a warm-up (hundreds of MB with numpy),
    and every case ran under baseline + its bound."""
    reports = [r for r in outcomes.values() if "baseline" in r]
    assert reports and all(r["baseline"] > 50 * MIB and r["limit"] > r["baseline"] for r in reports)
    valid = outcomes["container_cases:valid-minimal"]
    assert all(r["rc"] == 0 for r in valid["results"]), valid
