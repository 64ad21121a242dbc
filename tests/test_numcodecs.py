"""dcframe chains as a numcodecs codec (the extra dcframe[zarr]): numcodecs' own codec laws, Zarr arrays, bad chunks."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

numcodecs = pytest.importorskip("numcodecs")
zarr = pytest.importorskip("zarr")

from numcodecs.registry import entries, get_codec  # noqa: E402
from numcodecs.tests.common import (  # noqa: E402
    check_config,
    check_encode_decode,
    check_encode_decode_array,
    check_err_decode_object_buffer,
    check_err_encode_object_buffer,
)

from dcframe.bindings.numcodecs_codec import DcframeCodec  # noqa: E402
from dcframe.core.errors import ConfigError, DcfError, FormatError, IntegrityError  # noqa: E402

HUFFMAN = "kmeans(bits=8) | huffman"  # exact on data with <= 256 distinct values (kmeans keeps them as centroids)
LOSSY = "kmeans(bits=4) | huffman"


def few_values(shape, distinct=200, dtype="<f4", seed=0) -> np.ndarray:
    """Floats with at most `distinct` different values: what an 8-bit kmeans | huffman chain stores exactly."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, distinct, shape) / 7).astype(dtype)


FIXTURES = Path(__file__).parent / "numcodecs_fixtures"
# name -> (config, the original chunk): chunks written by this codec, committed, so a change that cannot read them fails
FIXTURE_CASES = {
    "huffman-exact": ({"id": "dcframe", "pipeline": HUFFMAN, "dtype": "<f4", "shape": None}, lambda: few_values(1000)),
    "kmeans4-lossy": ({"id": "dcframe", "pipeline": LOSSY, "dtype": "<f4", "shape": None},
                      lambda: np.random.default_rng(7).normal(size=1000).astype("f4")),
    "sparse-u1": ({"id": "dcframe", "pipeline": "sparse | huffman", "dtype": "|u1", "shape": [10, 100]},
                  lambda: (np.arange(1000) % 7 == 0).astype("u1") * 200),
}


def write_fixtures() -> None:
    """Regenerate the committed chunks (only when the format changes on purpose): python -c 'import
    tests.test_numcodecs as t; t.write_fixtures()'. Each case: config.json, data.npy, chunk, decoded.npy."""
    for name, (config, make) in FIXTURE_CASES.items():
        folder = FIXTURES / name
        folder.mkdir(parents=True, exist_ok=True)
        codec, data = get_codec(config), make()
        chunk = codec.encode(data)
        (folder / "config.json").write_text(json.dumps(config) + "\n")
        (folder / "chunk").write_bytes(chunk)
        np.save(folder / "data.npy", data)
        np.save(folder / "decoded.npy", codec.decode(chunk))


@pytest.mark.parametrize("name", sorted(FIXTURE_CASES))
def test_committed_chunks_still_decode(name):
    folder = FIXTURES / name
    codec = get_codec(json.loads((folder / "config.json").read_text()))
    decoded = codec.decode((folder / "chunk").read_bytes())
    assert decoded.tobytes() == np.load(folder / "decoded.npy").tobytes()
    data = np.load(folder / "data.npy")
    if not codec._chain.lossy:
        assert decoded.tobytes() == data.tobytes()


def test_the_entry_point_finds_the_codec():
    assert "dcframe" in entries  # numcodecs.codecs entry point, from pyproject.toml
    codec = get_codec({"id": "dcframe", "pipeline": HUFFMAN, "dtype": "<f4", "shape": None})
    assert type(codec) is DcframeCodec and codec.pipeline == HUFFMAN


@pytest.mark.parametrize("codec", [DcframeCodec(HUFFMAN), DcframeCodec("zstd", "<i2"), DcframeCodec(LOSSY, "<f2"),
                                   DcframeCodec("sparse | huffman", "|u1", shape=[4, 25])])
def test_config_round_trips_through_json(codec):
    check_config(codec)
    config = json.loads(json.dumps(codec.get_config()))
    assert config == {"id": "dcframe", "pipeline": codec.pipeline, "dtype": codec.dtype, "shape": codec.shape}
    assert DcframeCodec.from_config({k: v for k, v in config.items() if k != "id"}) == codec


def test_repr_rebuilds_the_codec():
    codec = DcframeCodec(LOSSY, ">f4", shape=[10, 10])
    assert eval(repr(codec), {"DcframeCodec": DcframeCodec}) == codec


@pytest.mark.parametrize("pipeline,array", [
    (HUFFMAN, few_values(1000)),
    (HUFFMAN, few_values((20, 30), dtype="<f2")),
    ("sparse | huffman", np.random.default_rng(1).integers(0, 256, 999).astype("u1") * (np.arange(999) % 3 == 0)),
    ("zstd", np.arange(-500, 500, dtype=">i2")),  # big-endian chunks come back big-endian
    ("lossless", np.linspace(-1, 1, 777, dtype="<f8")),
])
def test_numcodecs_encode_decode_laws_on_exact_chains(pipeline, array):
    codec = DcframeCodec(pipeline, array.dtype.str)
    check_encode_decode(array, codec)  # numpy arrays, bytes, bytearray, array.array, into `out`
    check_encode_decode_array(array, codec)
    assert codec.decode(codec.encode(array)).tobytes() == array.reshape(-1).tobytes()  # -0.0 and NaN bits too


def test_object_buffers_are_refused_with_a_type_error():
    check_err_encode_object_buffer(DcframeCodec("zstd", "<i8"))
    check_err_decode_object_buffer(DcframeCodec("zstd", "<i8"))


def test_an_empty_chunk_round_trips():
    codec = DcframeCodec(HUFFMAN)
    out = codec.decode(codec.encode(np.zeros(0, "f4")))
    assert out.dtype == np.float32 and out.size == 0


def test_lossy_kmeans_reads_back_within_its_codebook():
    rng = np.random.default_rng(3)
    array = rng.normal(size=5000).astype("f4")
    codec = DcframeCodec(LOSSY)
    decoded = codec.decode(codec.encode(array))
    codebook = np.unique(decoded)
    assert 1 < codebook.size <= 16
    nearest = np.abs(array[:, None] - codebook[None, :]).min(axis=1)
    assert np.allclose(np.abs(array - decoded), nearest, rtol=0, atol=1e-6)  # every weight sits on its nearest centroid
    again = codec.decode(codec.encode(decoded))
    assert again.tobytes() == decoded.tobytes()  # idempotent: encoding the approximation keeps it


def test_a_shape_is_used_and_checked():
    codec = DcframeCodec("prune(sparsity=0.5) | sparse | huffman", shape=[10, 20])
    array = np.random.default_rng(4).normal(size=200).astype("f4")
    decoded = codec.decode(codec.encode(array))
    assert np.count_nonzero(decoded) == 100
    with pytest.raises(ConfigError, match=r"199 elements does not fit shape \[10, 20\]"):
        codec.encode(array[:199])


def write_zarr(store, codec, data, chunks):
    array = zarr.create_array(store, shape=data.shape, chunks=chunks, dtype=data.dtype, compressors=codec,
                              zarr_format=2)
    array[:] = data
    return array


def test_a_zarr_array_with_the_huffman_codec_reads_back_exactly(tmp_path):
    data = few_values((300, 250), seed=5)  # edge chunks are partial: 300 x 250 in 128 x 128 chunks
    write_zarr(str(tmp_path / "a.zarr"), DcframeCodec(HUFFMAN), data, (128, 128))
    stored = json.loads((tmp_path / "a.zarr" / ".zarray").read_text())
    assert stored["compressor"] == {"id": "dcframe", "pipeline": HUFFMAN, "dtype": "<f4", "shape": None}
    back = zarr.open_array(str(tmp_path / "a.zarr"), mode="r")  # the codec found again from the stored config
    assert back[:].tobytes() == data.tobytes()
    assert back[100:200, 17:33].tobytes() == data[100:200, 17:33].tobytes()
    chunk = (tmp_path / "a.zarr" / "0.0").read_bytes()
    assert len(chunk) < 128 * 128 * 4 * 0.3  # 200 distinct values: ~7.6 bits a weight plus the container


def test_a_zarr_array_with_a_lossy_kmeans_chain_stays_on_its_codebooks():
    data = np.random.default_rng(6).normal(size=(64, 64)).astype("f4")
    store = zarr.storage.MemoryStore()
    write_zarr(store, DcframeCodec(LOSSY), data, (32, 32))
    back = zarr.open_array(store, mode="r")[:]
    for i in range(0, 64, 32):
        for j in range(0, 64, 32):
            block = back[i:i + 32, j:j + 32]
            assert np.unique(block).size <= 16  # each chunk has its own 16-entry codebook
    assert np.sqrt(np.mean((back - data) ** 2)) < 0.15  # 16 levels over a unit normal: rms error ~0.1


def test_a_zarr_format_3_array_reads_back_exactly_in_a_process_that_never_imports_dcframe(tmp_path):
    from dcframe.bindings.zarr3_codec import DcframeZarr3

    data = few_values((200, 300), seed=8)
    with pytest.warns(UserWarning, match="not in the Zarr version 3 specification"):  # zarr's note on numcodecs codecs
        serializer = DcframeZarr3(pipeline=HUFFMAN, dtype="<f4")
    array = zarr.create_array(str(tmp_path / "v3.zarr"), shape=data.shape, chunks=(128, 128), dtype="f4",
                              serializer=serializer, compressors=None)
    array[:] = data
    stored = json.loads((tmp_path / "v3.zarr" / "zarr.json").read_text())
    assert stored["codecs"] == [{"name": "numcodecs.dcframe", "configuration": {"pipeline": HUFFMAN, "dtype": "<f4"}}]
    np.save(tmp_path / "data.npy", data)
    script = ("import sys, numpy as np, zarr; before = 'dcframe' in sys.modules; "
              "a = zarr.open_array(sys.argv[1], mode='r')[:]; "
              "print(before, 'dcframe' in sys.modules, a.tobytes() == np.load(sys.argv[2]).tobytes())")
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", script, str(tmp_path / "v3.zarr"),
                           str(tmp_path / "data.npy")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "True", "True"]  # loaded through the entry point, and exact


def test_bad_configs_fail_when_the_codec_is_built():
    with pytest.raises(DcfError, match="nosuchstage"):
        DcframeCodec("nosuchstage | huffman")
    with pytest.raises(ConfigError, match="not a numpy dtype"):
        DcframeCodec("zstd", "float99")
    with pytest.raises(ConfigError, match="not a bool, integer or float"):
        DcframeCodec("zstd", "<U4")
    with pytest.raises(DcfError, match="huffman"):
        DcframeCodec("huffman")  # takes symbols; a chunk is dense
    from dcframe.bindings.zarr3_codec import DcframeZarr3

    with pytest.warns(UserWarning), pytest.raises(DcfError, match="nosuchstage"):
        DcframeZarr3(pipeline="nosuchstage", dtype="<f4")  # at once, not at the array's first write


def test_a_buffer_that_is_not_whole_elements_is_refused():
    with pytest.raises(ConfigError, match="7 bytes is not a whole number of <f4 elements"):
        DcframeCodec().encode(b"1234567")


@pytest.mark.parametrize("damage,error", [
    (lambda b: b"not a container at all", FormatError),
    (lambda b: b[: len(b) // 2], FormatError),
    (lambda b: b[:100] + bytes([b[100] ^ 0xFF]) + b[101:], FormatError),
])
def test_damaged_chunks_raise_one_dcframe_error_naming_the_codec(damage, error):
    codec = DcframeCodec(HUFFMAN)
    with pytest.raises(error) as caught:
        codec.decode(damage(codec.encode(few_values(2000))))
    message = str(caught.value)
    assert message.startswith("codec 'dcframe': ") and "dcframe-codec-" not in message  # no temporary path


def test_a_flipped_stream_byte_is_an_integrity_error():
    codec = DcframeCodec("zstd")
    encoded = bytearray(codec.encode(np.arange(4096, dtype="f4")))
    encoded[40] ^= 0x01  # inside the first stream: its CRC32 fails
    with pytest.raises(IntegrityError, match="codec 'dcframe'"):
        codec.decode(bytes(encoded))


def test_a_chunk_of_another_dtype_is_refused():
    encoded = DcframeCodec("zstd", "<f4").encode(np.arange(10, dtype="f4"))
    with pytest.raises(FormatError, match="holds F32 elements, the codec's dtype is <i4"):
        DcframeCodec("zstd", "<i4").decode(encoded)
