"""Regressions found by QA running the installed CLI as a user would (issues #2 and #8)."""

import subprocess
import sys

import numpy as np

from dcframe import write_model


def cli(*args):
    return subprocess.run([sys.executable, "-m", "dcframe.cli", *map(str, args)], capture_output=True, text=True)


def test_tensor_names_with_brackets_are_printed_not_parsed_as_markup(tmp_path):
    names = ["x[/y]", "[bold]w", "a[/]"]
    write_model(tmp_path / "m.npz", {n: np.ones((4, 4), np.float32) for n in names})
    dcf = tmp_path / "m[bold].dcf"
    for args in (("compress", tmp_path / "m.npz", "-o", dcf, "-q", "-v"), ("inspect", dcf, "-v"), ("verify", dcf)):
        out = cli(*args)
        assert out.returncode == 0 and "Traceback" not in out.stderr, (args, out.stderr[-500:])
        for name in names:
            assert name in out.stdout, (args, name)
    out = cli("decompress", dcf, "-o", tmp_path / "r[bold]x.npz")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-500:]


def test_a_failing_stage_names_the_tensor(tmp_path):
    write_model(tmp_path / "m.npz", {"ok.weight": np.ones((8, 8), np.float32),
                                     "bad.weight": np.full((8, 8), np.nan, np.float32)})
    out = cli("compress", tmp_path / "m.npz", "-o", tmp_path / "m.dcf", "-j", "1", "-p",
              "prune(sparsity=0.5) | sparse | kmeans(bits=2) | huffman")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    line = out.stderr.strip()
    assert "\n" not in line and "tensor 'bad.weight'" in line and "kmeans" in line, line
    assert not (tmp_path / "m.dcf").exists()


def test_stderr_messages_are_not_folded_when_piped(tmp_path):
    write_model(tmp_path / "m.npz", {f"some.rather.long.tensor.name.{i}": np.ones(64, np.float32) for i in range(4)})
    dcf = tmp_path / "m.dcf"
    assert cli("compress", tmp_path / "m.npz", "-o", dcf, "-q", "-p", "raw").returncode == 0
    data = bytearray(dcf.read_bytes())
    pos = 0
    for _ in range(4):  # damage every tensor's stream (64 ones each)
        pos = data.index(np.float32(1).tobytes() * 64, pos)
        data[pos] ^= 0xFF
        pos += 256
    dcf.write_bytes(bytes(data))
    out = cli("verify", dcf)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "4 damaged tensor(s)" in lines[0], lines


def test_a_garbage_npz_or_npy_never_advises_unpickling(tmp_path):
    for suffix in (".npz", ".npy"):
        path = tmp_path / f"garbage{suffix}"
        path.write_bytes(b"garbage\n" * 8)
        out = cli("compress", path, "-o", tmp_path / "x.dcf")
        line = out.stderr.strip()
        assert out.returncode == 1 and "\n" not in line and path.name in line, line
        assert "allow_pickle" not in line and "trust" not in line, line


def test_sigterm_cleans_up_like_ctrl_c(tmp_path):
    """`kill PID` mid-compress (parallel): existing output kept, no temporary file, no orphaned worker left."""
    import signal
    import time

    rng = np.random.default_rng(0)
    write_model(tmp_path / "m.safetensors", {f"w{i}": rng.standard_normal(4_000_000).astype(np.float32)
                                             for i in range(3)})
    out = tmp_path / "m.dcf"
    out.write_bytes(b"precious")
    proc = subprocess.Popen([sys.executable, "-m", "dcframe.cli", "compress", str(tmp_path / "m.safetensors"),
                             "-o", str(out), "-p", "zstd(level=19)", "-j", "2", "-q", "-f"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(2.5)
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=120)  # orphaned workers would hold stderr open: this would time out
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("workers outlived the terminated parent") from None
    assert proc.returncode != 0 and "Traceback" not in err, err
    assert out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.dcf", "m.safetensors"]


def test_a_plugin_allow_list_without_presets_says_how_to_get_them(tmp_path):
    import os

    write_model(tmp_path / "m.npz", {"w": np.ones((4, 4), np.float32)})
    env = dict(os.environ, DCFRAME_PLUGINS="raw,generic")
    out = subprocess.run([sys.executable, "-m", "dcframe.cli", "compress", str(tmp_path / "m.npz"), "-o",
                          str(tmp_path / "m.dcf")], capture_output=True, text=True, env=env)
    line = out.stderr.strip()
    assert out.returncode == 1 and "\n" not in line and "'lossless'" in line and "DCFRAME_PLUGINS" in line, line
    env["DCFRAME_PLUGINS"] = "raw,generic,presets"  # the lossless preset's chain needs bytegroup and rans too
    out = subprocess.run([sys.executable, "-m", "dcframe.cli", "compress", str(tmp_path / "m.npz"), "-o",
                          str(tmp_path / "m.dcf")], capture_output=True, text=True, env=env)
    line = out.stderr.strip()
    assert out.returncode == 1 and "\n" not in line and "'bytegroup'" in line and "DCFRAME_PLUGINS" in line, line
    env["DCFRAME_PLUGINS"] = "raw,generic,presets,bytegroup,rans"
    out = subprocess.run([sys.executable, "-m", "dcframe.cli", "compress", str(tmp_path / "m.npz"), "-o",
                          str(tmp_path / "m.dcf"), "-q", "--json"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr


def test_decompress_a_tensor_named_twice_writes_it_once(tmp_path):
    write_model(tmp_path / "m.npz", {"w": np.arange(6, dtype=np.float32), "b": np.ones(2, np.float32)})
    assert cli("compress", tmp_path / "m.npz", "-o", tmp_path / "m.dcf", "-q", "--json").returncode == 0
    for suffix in (".safetensors", ".npz"):
        out = cli("decompress", tmp_path / "m.dcf", "-o", tmp_path / f"r{suffix}", "--tensor", "w", "--tensor", "w")
        assert out.returncode == 0 and "wrote 1 tensors" in out.stderr, out.stderr
        import dcframe
        back = dcframe.read_model(tmp_path / f"r{suffix}")
        assert list(back) == ["w"] and back["w"].array.tobytes() == np.arange(6, dtype=np.float32).tobytes()
