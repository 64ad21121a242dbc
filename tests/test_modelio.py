"""Model files: every dtype, name and shape survives .safetensors and .npz; the safetensors library agrees."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import dense_tensors

from dcframe import Dense, ModelIOError, read_model, write_model


@given(tensors=st.lists(dense_tensors(), min_size=1, max_size=4), suffix=st.sampled_from([".safetensors", ".npz"]))
def test_write_read_roundtrip(tmp_path_factory, tensors, suffix):
    path = tmp_path_factory.mktemp("io") / f"m{suffix}"
    named = {f"layer{i}.w": t for i, t in enumerate(tensors)}
    write_model(path, named)
    back = read_model(path)
    assert list(back) == list(named)
    for name, t in named.items():
        got = back[name]
        assert (got.dtype, got.array.shape) == (t.dtype, t.array.shape)
        assert got.array.tobytes() == np.ascontiguousarray(t.array).tobytes()


def test_safetensors_library_reads_what_we_write(tmp_path):
    from safetensors.numpy import load_file, save_file

    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2], dtype=np.int16)}
    write_model(tmp_path / "ours.safetensors", tensors)
    theirs = load_file(tmp_path / "ours.safetensors")
    assert all(theirs[k].tobytes() == v.tobytes() for k, v in tensors.items())
    save_file(tensors, tmp_path / "theirs.safetensors")
    ours = read_model(tmp_path / "theirs.safetensors")
    assert all(ours[k].array.tobytes() == v.tobytes() for k, v in tensors.items())


def test_npy_is_one_tensor_named_by_the_file(tmp_path):
    np.save(tmp_path / "embedding.npy", np.ones((3, 2), np.float64))
    assert list(read_model(tmp_path / "embedding.npy")) == ["embedding"]


@pytest.mark.parametrize("payload, needle", [
    (b"\x07\0\0\0\0\0\0\0{\"a\":1}", "malformed"),
    (b"\xff\xff\xff\xff\0\0\0\0{}", "does not fit"),
    (b"\x02\0\0\0\0\0\0\0[]", "not a JSON object"),
])
def test_hostile_safetensors_headers(tmp_path, payload, needle):
    (tmp_path / "x.safetensors").write_bytes(payload)
    with pytest.raises(ModelIOError, match=needle):
        read_model(tmp_path / "x.safetensors")


def test_safetensors_offsets_are_checked(tmp_path):
    header = b'{"w":{"dtype":"F32","shape":[1000],"data_offsets":[0,4000]}}'
    (tmp_path / "x.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 16)
    with pytest.raises(ModelIOError, match="offsets"):
        read_model(tmp_path / "x.safetensors")


def test_pickled_npz_is_refused(tmp_path):
    np.savez(tmp_path / "p.npz", obj=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ModelIOError):
        read_model(tmp_path / "p.npz")["obj"]


def test_bf16_widening_is_exact_and_rounding_is_to_nearest_even():
    from dcframe.core.dtypes import bf16_to_f32, f32_to_bf16

    bits = np.arange(0, 1 << 16, dtype=np.uint16)
    finite = np.isfinite(bf16_to_f32(bits))
    assert f32_to_bf16(bf16_to_f32(bits))[finite].tobytes() == bits[finite].tobytes()
    halfway = np.array([0x3F808000, 0x3F818000], dtype=np.uint32).view(np.float32)
    assert f32_to_bf16(halfway).tolist() == [0x3F80, 0x3F82]
    assert Dense.of(bits, "BF16").values().dtype == np.float32


def test_pickled_module_pt_is_refused_in_one_clean_line(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 3)), tmp_path / "full.pt")
    with pytest.raises(ModelIOError) as info:
        read_model(tmp_path / "full.pt")
    message = str(info.value)
    assert "\x1b" not in message and "\n" not in message  # torch bolds part of its text with ANSI escapes
    assert "pickled Python objects" in message and "state_dict()" in message
    assert "Sequential was not an allowed global by default.)" in message  # torch's sentence, whole
    (tmp_path / "junk.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(ModelIOError, match=r"junk.pt: cannot load as a PyTorch state dict \(torch: [^()]+\.\)$"):
        read_model(tmp_path / "junk.pt")
