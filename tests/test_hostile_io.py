"""Issue #15, writer side: hostile model files, outputs that must not be replaced, limits the writer must keep,
tensor names per output format, processes that must die with their parent, plugins from two distributions.

Every hostile input is built here by a small generator; nothing large is committed.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from container_tools import join, split

import dcframe
from dcframe.cli import main
from dcframe.core import container as container_module
from dcframe.core.container import ContainerWriter, Limits
from dcframe.core.errors import FormatError, LimitError, ModelIOError
from dcframe.core.files import remove_stale_temporaries
from dcframe.core.orchestrator import encode_tensor
from dcframe.core.pipeline import Policy
from dcframe.core.streams import Dense
from dcframe.io.modelio import read_model, write_model

GOOD = {"w": np.arange(12, dtype=np.float32).reshape(3, 4)}
LINUX = sys.platform.startswith("linux")


def one_error_line(capsys) -> str:
    """The CLI's stderr: exactly one `dcframe: error:` line, no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip()
    assert line.startswith("dcframe: error:") and "\n" not in line, err
    assert line != "dcframe: error:", err
    return line


@pytest.fixture
def good_dcf(tmp_path) -> Path:
    path = tmp_path / "good.dcf"
    dcframe.compress(GOOD, path)
    return path


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# --- item 5: many tensors, linear -----------------------------------------------------------------------------------
class CountingKey(str):
    """A lookup key that counts the comparisons made with it (a list scan makes one per element)."""

    comparisons = 0

    def __eq__(self, other):
        CountingKey.comparisons += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_model_tensor_lookup_does_not_scan_the_names(tmp_path, suffix):
    path = tmp_path / f"many{suffix}"
    write_model(path, {f"t{i}": np.zeros(1, np.float32) for i in range(3000)})
    model = read_model(path)
    CountingKey.comparisons = 0
    assert model[CountingKey("t2999")].array.shape == (1,)
    assert CountingKey.comparisons <= 4  # a dict lookup, not a scan of 3000 names


def test_tables_list_the_largest_tensors_when_there_are_many(tmp_path, monkeypatch, capsys):
    from dcframe import console

    sizes = [4, 400, 40, 4000, 8]
    path = tmp_path / "m.dcf"
    dcframe.compress({f"t{i}": np.zeros(n, np.float32) for i, n in enumerate(sizes)}, path)
    report = dcframe.inspect(path)
    assert [t["name"] for t in console.shown_tensors(report["tensors"], limit=2)] == ["t1", "t3"]
    assert console.shown_tensors(report["tensors"], limit=5) == report["tensors"]
    real = console.shown_tensors
    monkeypatch.setattr(console, "shown_tensors", lambda tensors: real(tensors, limit=3))
    console.report_tables(report, tensors=True)
    out = capsys.readouterr().out
    assert "the 3 largest of 5 tensors are listed" in out and " t1 " in out and " t0 " not in out


def test_compress_reads_each_npz_member_once(tmp_path, monkeypatch):
    from dcframe.io import modelio

    np.savez(tmp_path / "m.npz", **{f"t{i}": np.full(3, i, np.float32) for i in range(5)})
    real, reads = modelio._npz_member, []
    monkeypatch.setattr(modelio, "_npz_member", lambda *a, **k: reads.append(a[3]) or real(*a, **k))
    assert main(["compress", str(tmp_path / "m.npz"), "-o", str(tmp_path / "m.dcf"), "-q", "--json"]) == 0
    assert sorted(reads) == [f"t{i}" for i in range(5)]
    assert read_model(tmp_path / "m.npz").nbytes("t2") == 12


# --- item 6 and 11: the writer keeps the reader's limits, and a refusal keeps the old output -----------------------
def test_compress_33_dimensions_keeps_the_existing_output(tmp_path, good_dcf, capsys):
    model = tmp_path / "deep.npy"
    np.save(model, np.zeros((1,) * 33, np.float32))
    before = good_dcf.read_bytes()
    assert main(["compress", str(model), "-o", str(good_dcf), "-q", "-f"]) == 1
    assert "33 dimensions exceed the limit of 32" in one_error_line(capsys)
    assert good_dcf.read_bytes() == before
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("shape, needle", [((1 << 60, 0), "2\\^53"), ((1,) * 33, "33 dimensions"),
                                           ((1 << 53, 0), "2\\^53")])
def test_writer_refuses_shapes_a_reader_refuses(good_dcf, shape, needle):
    before = good_dcf.read_bytes()
    with pytest.raises(LimitError, match=needle):
        dcframe.compress({"x": np.zeros(shape, np.float32)}, good_dcf)
    assert good_dcf.read_bytes() == before and leftovers(good_dcf.parent) == []


def _encoded(name: str = "w", **changes):
    encoded = encode_tensor(name, GOOD["w"], Policy(pipeline="zstd(level=1)").chain_for_pipeline("zstd(level=1)"))
    for key, value in changes.items():
        setattr(encoded, key, value)
    return encoded


def _write(path: Path, tensors, limits: Limits | None = None) -> None:
    with ContainerWriter(path) as writer:
        if limits:
            writer.limits = limits
        for t in tensors:
            writer.add(t)


@pytest.mark.parametrize("limits, tensors, needle", [
    (Limits(max_tensors=3), [_encoded(f"t{i}") for i in range(4)], "at most 3 tensors"),
    (Limits(max_record_bytes=2000), [_encoded("n" * 3000)], "record takes"),
    (Limits(max_index_bytes=500), [_encoded("n" * 100 + str(i)) for i in range(5)], "the index would take"),
    (Limits(max_tensor_bytes=40), [_encoded()], "declares 48 bytes"),
])
def test_writer_checks_counts_and_lengths_before_the_rename(good_dcf, limits, tensors, needle):
    before = good_dcf.read_bytes()
    with pytest.raises(LimitError, match=needle):
        _write(good_dcf, tensors, limits)
    assert good_dcf.read_bytes() == before and leftovers(good_dcf.parent) == []


@pytest.mark.parametrize("meta, error", [({"n": 1 << 60}, LimitError), ({"n": -(1 << 60)}, LimitError),
                                          ({1: 2}, FormatError), ({"x": np.int64(3)}, FormatError)])
def test_writer_refuses_meta_outside_plain_msgpack(good_dcf, meta, error):
    encoded = _encoded()
    encoded.steps = [[(src, outs, {**m, **meta}) for src, outs, m in step] for step in encoded.steps]
    before = good_dcf.read_bytes()
    writer = ContainerWriter(good_dcf)  # used without `with`: the refusal itself drops the temporary file
    with pytest.raises(error):
        writer.add(encoded)
    assert good_dcf.read_bytes() == before and leftovers(good_dcf.parent) == []


def test_writer_refuses_meta_nested_deeper_than_readers_go(good_dcf):
    deep: list = []
    for _ in range(1100):
        deep = [deep]
    encoded = _encoded()
    encoded.steps = [[(src, outs, {**m, "deep": deep}) for src, outs, m in step] for step in encoded.steps]
    with pytest.raises(FormatError, match="nests deeper"):
        _write(good_dcf, [encoded])


def test_writer_output_at_the_limits_is_readable(tmp_path):
    path = tmp_path / "edge.dcf"
    dcframe.compress({"x": np.zeros((1,) * 31 + (0,), np.float32), "y": np.zeros(((1 << 53) - 1, 0), np.uint8)},
                     path)
    assert dcframe.verify(path)["ok"]


# --- item 7: no orphans, no stale temporaries ------------------------------------------------------------------------
SLOW_COMPRESS = textwrap.dedent("""
    import sys, time
    import numpy as np
    import dcframe
    from dcframe.core import orchestrator

    real = orchestrator.encode_tensor
    def slow(*args, **kwargs):
        time.sleep(120)
        return real(*args, **kwargs)
    orchestrator.encode_tensor = slow
    orchestrator.threadable = lambda stages: False  # worker processes (tests/test_threads.py: threads)
    tensors = {f"t{i}": np.zeros(1000, np.float32) for i in range(6)}
    dcframe.compress(tensors, sys.argv[1], pipeline="zstd(level=1)", jobs=2)
""")


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not LINUX, reason="reads /proc; PR_SET_PDEATHSIG is Linux")
def test_sigkill_of_a_parallel_compress_kills_its_workers_and_the_next_run_cleans_up(tmp_path):
    out = tmp_path / "m.dcf"
    out.write_bytes(b"old")
    script = tmp_path / "slow.py"
    script.write_text(SLOW_COMPRESS)
    proc = subprocess.Popen([sys.executable, str(script), str(out)], stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    deadline = time.monotonic() + 30
    while len(_children(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    workers = _children(proc.pid)
    assert len(workers) >= 2, "the workers did not start"
    time.sleep(0.5)  # let them take their tensors
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=20)  # every writer of stderr is gone (before: orphans held it for minutes)
    deadline = time.monotonic() + 10
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(_alive, workers)), "workers outlived their parent"
    stale = leftovers(tmp_path)
    assert len(stale) == 1 and f"dcftmp-{proc.pid}-" in stale[0]  # the killed run could not clean up
    assert out.read_bytes() == b"old"
    np.savez(tmp_path / "in.npz", **GOOD)
    done = subprocess.run([sys.executable, "-m", "dcframe.cli", "compress", str(tmp_path / "in.npz"), "-o", str(out),
                           "-q", "-f"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert leftovers(tmp_path) == []  # the next run removed it


INTERRUPTED_COMPRESS = SLOW_COMPRESS.replace(
    "dcframe.compress(tensors, sys.argv[1], pipeline=\"zstd(level=1)\", jobs=2)", textwrap.dedent("""
    import os, signal, threading
    threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGINT)).start()  # Ctrl-C while both workers are busy
    try:
        dcframe.compress(tensors, sys.argv[1], pipeline="zstd(level=1)", jobs=2)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    """))


def test_interrupted_parallel_compress_stops_without_waiting_for_busy_workers(tmp_path):
    """Ctrl-C (or SIGTERM, which the CLI turns into it) ends the workers; it used to wait for their tensors."""
    script = tmp_path / "interrupted.py"
    script.write_text(INTERRUPTED_COMPRESS)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "m.dcf")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    try:
        out, err = proc.communicate(timeout=40)  # the workers sleep 120 s per tensor
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("the interrupted compress waited for its workers") from None
    assert out.strip() == "interrupted" and proc.returncode == 0, err
    assert "Traceback" not in err, err  # not even from the pool's threads
    assert sorted(p.name for p in tmp_path.iterdir()) == ["interrupted.py"]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.skipif(os.name != "posix", reason="process checks are POSIX")
def test_only_stale_temporaries_of_gone_processes_are_removed(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        old = time.time() - 3600
        names = {"dead_old": f".m.dcf.dcftmp-{_dead_pid()}-abc_12.tmp",
                 "alive_old": f".m.dcf.dcftmp-{sleeper.pid}-abc_12.tmp",
                 "dead_new": f".m.dcf.dcftmp-{_dead_pid()}-xyz_34.tmp",
                 "foreign": ".m.dcf.abc123.tmp"}
        for key, name in names.items():
            (tmp_path / name).write_bytes(b"partial")
            if key != "dead_new":
                os.utime(tmp_path / name, (old, old))
        os.utime(tmp_path / names["dead_new"], (time.time() + 3600,) * 2)  # newer than this process
        assert remove_stale_temporaries(tmp_path) == [names["dead_old"]]
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(v for k, v in names.items() if k != "dead_old")
    finally:
        sleeper.kill()
        sleeper.wait()


# --- item 8: outputs that are not regular files, modes, output == input --------------------------------------------
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("command", ["compress", "decompress"])
def test_fifo_output_is_refused_and_kept(tmp_path, good_dcf, capsys, command):
    fifo = tmp_path / ("out.dcf" if command == "compress" else "out.npz")
    os.mkfifo(fifo)
    source = tmp_path / "m.npz"
    np.savez(source, **GOOD)
    args = [str(source) if command == "compress" else str(good_dcf), "-o", str(fifo), "-q"]
    assert main([command, *args]) == 1
    assert "already exists" in one_error_line(capsys)
    assert main([command, *args, "-f"]) == 1
    assert "it is a FIFO" in one_error_line(capsys)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and leftovers(tmp_path) == []


def test_character_device_output_is_refused(tmp_path, capsys):
    if not Path("/dev/null").exists():
        pytest.skip("no /dev/null")
    link = tmp_path / "null.dcf"
    link.symlink_to("/dev/null")  # the output resolves to a character device
    source = tmp_path / "m.npz"
    np.savez(source, **GOOD)
    assert main(["compress", str(source), "-o", str(link), "-q", "-f"]) == 1
    assert "character device" in one_error_line(capsys)
    assert link.is_symlink() and stat.S_ISCHR(os.stat(link).st_mode)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_existing_outputs_keep_their_mode(tmp_path, good_dcf):
    good_dcf.chmod(0o600)
    dcframe.compress(GOOD, good_dcf)
    assert stat.S_IMODE(good_dcf.stat().st_mode) == 0o600
    back = tmp_path / "back.safetensors"
    back.write_bytes(b"old")
    back.chmod(0o640)
    assert main(["decompress", str(good_dcf), "-o", str(back), "-q", "-f"]) == 0
    assert stat.S_IMODE(back.stat().st_mode) == 0o640 and read_model(back)["w"].array.tolist() == GOOD["w"].tolist()


def test_decompress_refuses_to_overwrite_its_input(tmp_path, good_dcf, capsys):
    disguised = tmp_path / "x.npz"
    disguised.write_bytes(good_dcf.read_bytes())  # a container with an .npz name
    assert main(["decompress", str(disguised), "-o", str(disguised), "-q"]) == 1
    assert "the output is the input" in one_error_line(capsys)
    assert disguised.read_bytes() == good_dcf.read_bytes()


@pytest.mark.parametrize("how", ["symlink", "hardlink"])
def test_compress_and_decompress_refuse_the_input_by_another_path(tmp_path, good_dcf, capsys, how):
    source = tmp_path / "m.npz"
    np.savez(source, **GOOD)
    for command, src in (("compress", source), ("decompress", good_dcf)):
        alias = tmp_path / f"alias-{command}.{'dcf' if command == 'compress' else 'npz'}"
        alias.symlink_to(src) if how == "symlink" else os.link(src, alias)
        before = src.read_bytes()
        assert main([command, str(src), "-o", str(alias), "-q"]) == 1
        assert "the output is the input" in one_error_line(capsys)
        assert src.read_bytes() == before


def test_symlink_loop_input_is_one_line(tmp_path, capsys):
    (tmp_path / "a.npz").symlink_to(tmp_path / "b.npz")
    (tmp_path / "b.npz").symlink_to(tmp_path / "a.npz")
    assert main(["compress", str(tmp_path / "a.npz"), "-o", str(tmp_path / "x.dcf"), "-q"]) == 1
    assert "symbolic links" in one_error_line(capsys)


# --- item 9: which names each output format carries -----------------------------------------------------------------
@pytest.mark.parametrize("name, needle", [("a\0b", "NUL"), ("../../x", "outside"), ("/abs/x", "outside"),
                                          ("a/../../x", "outside"), ("C:x", "outside"), ("a\\b", "backslash"),
                                          ("n" * 100_000, "at most 65531 bytes"),
                                          ("__dcframe_dtypes__", "BF16"), ("\udc80", "Unicode")])
def test_npz_output_refuses_names_it_cannot_carry(tmp_path, name, needle):
    out = tmp_path / "out.npz"
    out.write_bytes(b"old")
    with pytest.raises(ModelIOError, match=needle) as info:
        write_model(out, {name: np.zeros(2, np.float32), "fine": np.zeros(1, np.float32)})
    assert "cannot write tensor" in str(info.value) and len(str(info.value)) < 500
    assert out.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_safetensors_output_refuses_the_metadata_key(tmp_path):
    with pytest.raises(ModelIOError, match="__metadata__"):
        write_model(tmp_path / "out.safetensors", {"__metadata__": np.zeros(2, np.float32)})
    assert list(tmp_path.iterdir()) == []


def test_safetensors_header_over_the_readers_limit_is_refused(tmp_path, monkeypatch):
    from dcframe.io import modelio

    monkeypatch.setattr(modelio, "MAX_SAFETENSORS_HEADER", 1000)
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"old")
    with pytest.raises(ModelIOError, match="header would take"):
        write_model(out, {f"tensor_with_a_long_name_{i}": np.zeros(1, np.float32) for i in range(30)})
    assert out.read_bytes() == b"old" and leftovers(tmp_path) == []


@pytest.mark.parametrize("suffix, names", [
    (".npz", ["a/b", "é", "x\ny", "__metadata__", "a..b", "." * 3, ""]),
    (".safetensors", ["../../x", "/abs/x", "a\0b", "a\\b", "x\ny", "n" * 100_000, "__dcframe_dtypes__"]),
])
def test_names_a_format_carries_come_back_exactly(tmp_path, suffix, names):
    out = tmp_path / f"out{suffix}"
    tensors = {name: np.full(2, i, np.float32) for i, name in enumerate(names)}
    write_model(out, tensors)
    back = read_model(out)
    assert sorted(back) == sorted(names)
    assert all(back[n].array.tolist() == tensors[n].tolist() for n in names)
    if suffix == ".npz":
        with zipfile.ZipFile(out) as z:
            assert all(not m.startswith("/") and ".." not in m.split("/") for m in z.namelist())


def test_decompress_of_a_100k_character_name_to_npz_is_one_line(tmp_path, capsys):
    path = tmp_path / "long.dcf"
    dcframe.compress({"n" * 100_000: np.zeros(2, np.float32)}, path)
    out = tmp_path / "out.npz"
    assert main(["decompress", str(path), "-o", str(out), "-q"]) == 1
    line = one_error_line(capsys)
    assert "at most 65531 bytes" in line and len(line) < 3000 and not out.exists()
    assert main(["decompress", str(path), "-o", str(tmp_path / "out.safetensors"), "-q"]) == 0


def test_decompress_of_an_escaping_name_to_npz_writes_nothing(tmp_path, capsys):
    path = tmp_path / "evil.dcf"
    dcframe.compress({"../../evil": np.zeros(2, np.float32)}, path)
    assert main(["decompress", str(path), "-o", str(tmp_path / "out.npz"), "-q"]) == 1
    assert "'../../evil'" in one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.dcf"]


# --- item 10 and 11: hostile model inputs -------------------------------------------------------------------------
def _safetensors(path: Path, header: bytes | str, data: bytes = b"") -> Path:
    header = header.encode() if isinstance(header, str) else header
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def _npz(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


HOSTILE_MODELS = {
    "deep-json": (lambda p: _safetensors(p / "m.safetensors", "[" * 100_000 + "]" * 100_000), "nests too deeply"),
    "deep-json-object": (lambda p: _safetensors(p / "m.safetensors", '{"a":' * 50_000 + "1" + "}" * 50_000),
                         "nests too deeply"),
    "bool-shape": (lambda p: _safetensors(
        p / "m.safetensors", '{"x":{"dtype":"F32","shape":[true],"data_offsets":[0,4]}}', b"\0" * 4), "bad shape"),
    "bool-offsets": (lambda p: _safetensors(
        p / "m.safetensors", '{"x":{"dtype":"F32","shape":[1],"data_offsets":[false,4]}}', b"\0" * 4), "offsets"),
    "2^64-dimension": (lambda p: _safetensors(
        p / "m.safetensors", '{"x":{"dtype":"F32","shape":[18446744073709551616,0],"data_offsets":[0,0]}}'),
        "bad shape"),
    "duplicate-key": (lambda p: _safetensors(
        p / "m.safetensors", '{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                             '"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4), "appears twice"),
    "npz-member-not-npy": (lambda p: _npz(p / "m.npz", {"x.npy": b"hello"}), "not an .npy array"),
    "npz-member-not-named-npy": (lambda p: _npz(p / "m.npz", {"x.txt": b"hello"}), "is not an .npy array"),
    "npz-0d-dtypes-member": (lambda p: _npz(p / "m.npz", {"x.npy": _npy_bytes(np.zeros(2, np.float32)),
                                                          "__dcframe_dtypes__.npy": _npy_bytes(np.array(5))}),
                             "list of 'name=DTYPE' strings"),
    "npz-f64-marked-i8": (lambda p: _npz(p / "m.npz", {
        "x.npy": _npy_bytes(np.arange(3, dtype=np.float64)),
        "__dcframe_dtypes__.npy": _npy_bytes(np.array(["x=I8"]))}), "bit for bit"),
    "npz-dtypes-names-nothing": (lambda p: _npz(p / "m.npz", {
        "x.npy": _npy_bytes(np.zeros(2, np.uint16)), "__dcframe_dtypes__.npy": _npy_bytes(np.array(["y=BF16"]))}),
        "names no tensor"),
    "npz-object-array": (lambda p: _npz(p / "m.npz", {"x.npy": _npy_bytes(np.array([None, 1], dtype=object))}),
                         "never unpickles"),
    "npz-short-member": (lambda p: _npz(p / "m.npz", {"x.npy": _npy_bytes(np.zeros(100, np.float32))[:-40]}),
                         "more than its member holds"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_MODELS))
def test_hostile_model_files_are_one_line_errors(tmp_path, capsys, case):
    build, needle = HOSTILE_MODELS[case]
    model = build(tmp_path)
    out = tmp_path / "out.dcf"
    assert main(["compress", str(model), "-o", str(out), "-q"]) == 1
    line = one_error_line(capsys)
    assert needle in line and str(model) in line, line
    assert not out.exists()


def test_npz_bf16_marks_still_read(tmp_path):
    bits = np.array([0x3F80, 0x4000], np.uint16)
    write_model(tmp_path / "m.npz", {"x": Dense(bits, "BF16")})
    back = read_model(tmp_path / "m.npz")["x"]
    assert back.dtype == "BF16" and back.array.tobytes() == bits.tobytes()


def test_npz_0d_arrays_of_every_dtype_round_trip(tmp_path):
    arrays = {name: np.array(1, dtype=dt) for name, dt in
              [("f2", "f2"), ("f4", "f4"), ("f8", "f8"), ("i1", "i1"), ("u2", "u2"), ("b", "?"), (">f4", ">f4")]}
    np.savez(tmp_path / "m.npz", **arrays)
    model = read_model(tmp_path / "m.npz")
    assert all(model[n].array.shape == () and model[n].array.item() == 1 for n in arrays)


def test_huge_pipeline_text_is_one_short_line(tmp_path, capsys):
    np.save(tmp_path / "a.npy", np.zeros(3, np.float32))
    assert main(["compress", str(tmp_path / "a.npy"), "-o", str(tmp_path / "a.dcf"), "-q",
                 "--pipeline=" + "-" * 200_000]) == 1
    line = one_error_line(capsys)
    assert "cannot parse stage" in line and len(line) < 3000 and "characters left out" in line


def test_control_characters_in_errors_are_escaped(tmp_path, good_dcf, capsys):
    parts = split(good_dcf.read_bytes())
    parts.index["chains"][0][0]["id"] = "evil\nstage\x1b[31m"
    bad = tmp_path / "bad.dcf"
    bad.write_bytes(join(parts))
    assert main(["decompress", str(bad), "-o", str(tmp_path / "out.npz"), "-q"]) == 1
    line = one_error_line(capsys)
    assert "evil\\x0astage\\x1b[31m" in line and "\x1b" not in line


def test_verify_prints_a_damaged_name_with_a_newline_on_one_line(tmp_path, capsys):
    path = tmp_path / "m.dcf"
    dcframe.compress({"bad\nname": np.arange(100, dtype=np.float32)}, path)
    data = bytearray(path.read_bytes())
    with dcframe.open_container(path) as c:
        entry = c.entries["bad\nname"]
    data[entry.offset + entry.total_length - 5] ^= 0xFF
    path.write_bytes(data)
    assert main(["verify", str(path), "-q"]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip().count("\n") == 0 and "bad\\x0aname" in captured.err
    assert "bad\\x0aname" in captured.out


def test_disk_full_names_the_output(tmp_path, capsys, monkeypatch):
    """The write and the flush of the buffered tail both fail, as on a real full disk."""
    real = os.fdopen

    class Full:
        def __init__(self, f):
            self._f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def close(self):
            self._f.close()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self._f, name)

    monkeypatch.setattr(container_module.os, "fdopen", lambda fd, mode="r", *a, **k: Full(real(fd, mode, *a, **k)))
    np.savez(tmp_path / "m.npz", **GOOD)
    out = tmp_path / "m.dcf"
    assert main(["compress", str(tmp_path / "m.npz"), "-o", str(out), "-q"]) == 1
    line = one_error_line(capsys)
    assert f"cannot write {out}" in line and "No space left on device" in line
    assert leftovers(tmp_path) == []


# --- item 12: plugin trust --------------------------------------------------------------------------------------------
IMPOSTOR = {
    "pyproject.toml": textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=64"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "dcframe-impostor"
        version = "6.6.6"
        dependencies = []

        [project.entry-points."dcframe.stages"]
        huffman = "dcframe_impostor"
    """),
    "dcframe_impostor/__init__.py": textwrap.dedent("""
        import os
        from pathlib import Path

        import dcframe
        from dcframe_plugins.generic import Zlib

        marker = os.environ.get("IMPOSTOR_MARKER")
        if marker:
            Path(marker).write_text("loaded")


        class Huffman(Zlib):
            id = "huffman"


        @dcframe.hookimpl
        def dcframe_stages():
            return [Huffman]
    """),
}


@pytest.fixture(scope="module")
def impostor_site(tmp_path_factory):
    source = tmp_path_factory.mktemp("impostor")
    for rel, text in IMPOSTOR.items():
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_text(text)
    target = tmp_path_factory.mktemp("impostor_site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, cwd=tmp_path_factory.mktemp("build"))
    return target


def _cli(*args, site: Path, allow: str | None, marker: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(site) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               IMPOSTOR_MARKER=str(marker))
    env.pop("DCFRAME_PLUGINS", None)
    if allow is not None:
        env["DCFRAME_PLUGINS"] = allow
    return subprocess.run([sys.executable, "-m", "dcframe.cli", *map(str, args)], capture_output=True, text=True,
                          env=env)


@pytest.mark.parametrize("allow", [None, "raw,generic,presets,huffman"])
def test_two_providers_of_a_stage_id_are_an_error_naming_both(impostor_site, tmp_path, allow):
    done = _cli("stages", "--json", site=impostor_site, allow=allow, marker=tmp_path / "m")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    line = done.stderr.strip()
    assert "'huffman'" in line and "dcframe-impostor" in line and "dcframe (plugin" in line, line
    assert "DCFRAME_PLUGINS=dcframe:huffman" in line


def test_allow_list_by_distribution_keeps_the_builtin(impostor_site, tmp_path):
    marker = tmp_path / "marker"
    done = _cli("stages", "--json", site=impostor_site, allow="raw,generic,presets,dcframe:huffman", marker=marker)
    assert done.returncode == 0, done.stderr
    huffman = [s for s in json.loads(done.stdout)["stages"] if s["id"] == "huffman"]
    assert len(huffman) == 1 and huffman[0]["package"] == "dcframe"
    assert not marker.exists()  # the impostor's module was never imported
    chosen = _cli("stages", "--json", site=impostor_site, allow="raw,generic,dcframe-impostor:huffman",
                  marker=marker)
    assert chosen.returncode == 0 and marker.exists()
    assert [s["package"] for s in json.loads(chosen.stdout)["stages"] if s["id"] == "huffman"] == ["dcframe-impostor"]
