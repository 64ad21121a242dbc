"""Lossless chains give back every tensor bit for bit, in memory and through a container file."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from strategies import dense_tensors, lossless_chains

import dcframe
from dcframe.core.orchestrator import roundtrip
from dcframe.core.pipeline import build_chain, parse_pipeline


def same(a: dcframe.Dense, b: dcframe.Dense) -> bool:
    return (a.dtype == b.dtype and a.array.shape == b.array.shape
            and np.ascontiguousarray(a.array).tobytes() == np.ascontiguousarray(b.array).tobytes())


@given(tensor=dense_tensors(), pipeline=lossless_chains)
def test_lossless_chain_is_bit_exact_in_memory(tensor, pipeline):
    chain = build_chain(parse_pipeline(pipeline))
    assert same(roundtrip(chain, tensor), tensor)


@given(tensors=st.lists(dense_tensors(), min_size=1, max_size=4), pipeline=lossless_chains,
       chunk=st.sampled_from([1, 7, 1 << 24]))
def test_lossless_chain_is_bit_exact_through_a_file(tmp_path_factory, tensors, pipeline, chunk):
    path = tmp_path_factory.mktemp("rt") / "m.dcf"
    named = {f"t{i}": t for i, t in enumerate(tensors)}
    dcframe.compress(named, path, pipeline=pipeline, chunk_size=chunk)
    back = dcframe.decompress(path)
    assert list(back) == list(named)
    for name, tensor in named.items():
        assert same(back[name], tensor), name


def test_default_is_lossless_and_integers_stay_lossless(tmp_path):
    tensors = {"w": np.linspace(-1, 1, 50, dtype=np.float32).reshape(5, 10), "steps": np.arange(7, dtype=np.int64)}
    report = dcframe.compress(tensors, tmp_path / "m.dcf")
    assert {t["pipeline"] for t in report["tensors"]} == {"bytegroup | zstd(level=5) | rans(scale_bits=14, lanes=256)"}
    back = dcframe.decompress(tmp_path / "m.dcf")
    assert back["w"].array.tobytes() == tensors["w"].tobytes()
    assert back["steps"].array.tobytes() == tensors["steps"].tobytes()


def test_read_one_tensor_lazily(tmp_path):
    tensors = {f"t{i}": np.full((3, 4), i, dtype=np.float32) for i in range(5)}
    dcframe.compress(tensors, tmp_path / "m.dcf", pipeline="zlib")
    with dcframe.open_container(tmp_path / "m.dcf") as c:
        assert c.names == list(tensors)
        assert c.read("t3").array.tobytes() == tensors["t3"].tobytes()
