"""The uniform stage: laws, distortion, weighted means, GPTQ, the rel_step fit, and one-line errors."""

import subprocess
import sys

import msgpack
import numpy as np
import pytest
from dcframe_plugins.uniform import Uniform, quantize_levels
from hypothesis import given
from hypothesis import strategies as st

import dcframe
from dcframe import Bytes, ConfigError, Dense, FormatError, LimitError, Symbols, write_model
from dcframe.core.dtypes import f32_to_bf16
from dcframe.core.orchestrator import _OUTPUT_LIMIT
from dcframe.testing import check_config, check_hostile, check_stage, encode_decode, stream_bytes

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16}


def dense(values: np.ndarray, dtype: str, **side) -> Dense:
    """`values` in `dtype` (BF16 as bit patterns), with side inputs."""
    if dtype == "BF16":
        return Dense(f32_to_bf16(values.astype(np.float32)), "BF16", side)
    return Dense(values.astype(DTYPES[dtype]), dtype, side)


def correlated(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Calibration inputs X [rows, cols] with strongly correlated neighbouring features."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, cols))
    for j in range(1, cols):
        x[:, j] += 0.9 * x[:, j - 1]
    return x


def check_with_side(stage: Uniform, stream: Dense) -> Dense:
    """check_stage's laws for a stage reading side inputs: the re-encode gets the same side inputs back."""
    check_config(stage)
    _, _, decoded = encode_decode(stage, stream)
    _, _, again = encode_decode(stage, Dense(decoded.array, decoded.dtype, stream.side))
    assert stream_bytes(again) == stream_bytes(decoded), "not idempotent on its output"
    check_hostile(stage, stream)
    return decoded


@pytest.mark.parametrize("dtype", ["F64", "F32", "F16", "BF16"])
@pytest.mark.parametrize("config", [{"step": 0.1}, {"step": 0.37, "dead_zone": 0.4}, {"step": 3.0}])
def test_laws_round(dtype, config):
    w = np.random.default_rng(1).laplace(scale=0.5, size=(40, 30))
    check_stage(Uniform(**config), dense(w, dtype))
    check_stage(Uniform(**config), dense(np.zeros((0, 3)), dtype))  # empty tensor
    check_stage(Uniform(**config), dense(np.array(0.3), dtype))  # scalar


@pytest.mark.parametrize("dtype", ["F64", "F32", "F16", "BF16"])
@pytest.mark.parametrize("weighting", ["activation", "fisher"])
def test_laws_weighted(dtype, weighting):
    rng = np.random.default_rng(2)
    w = rng.normal(size=(20, 16))
    decoded = check_with_side(Uniform(step=0.2, weighting=weighting), dense(w, dtype, **{weighting: rng.exponential(
        size=w.shape)}))
    assert decoded.array.shape == w.shape


@pytest.mark.parametrize("dtype", ["F64", "F32", "F16", "BF16"])
@pytest.mark.parametrize("dead_zone", [0.0, 0.5, 1.25])
def test_laws_gptq(dtype, dead_zone):
    x = correlated(300, 24)
    w = np.random.default_rng(3).normal(size=(10, 24))
    stage = Uniform(step=0.25, method="gptq", dead_zone=dead_zone)
    decoded = check_with_side(stage, dense(w, dtype, hessian=x.T @ x / len(x)))
    values = np.unique(decoded.values())
    centres = np.sign(values) * (np.round(np.abs(values) / 0.25 - dead_zone) + dead_zone) * 0.25
    assert np.array_equal(values, centres)  # the bins' centres (0.25 and the dead zones are exact in every dtype)


def test_decoded_values_are_bin_means_and_symbols_follow_levels():
    w = np.array([0.1, 0.2, 0.9, 1.2, -1.0, -1.4, 0.0, 2.6], np.float64)
    outputs, meta, decoded = encode_decode(Uniform(step=1.0), Dense.of(w))
    # levels: 0, 0, 1, 1, -1, -1, 0, 3 -> symbols by ascending level: -1 -> 0, 0 -> 1, 1 -> 2, 3 -> 3
    assert outputs["indices"].array.tolist() == [1, 1, 2, 2, 0, 0, 1, 3]
    assert outputs["indices"].alphabet == 4
    assert np.frombuffer(meta["codebook"], np.float64).tolist() == pytest.approx([-1.2, 0.1, 1.05, 2.6])
    assert decoded.array.tolist() == pytest.approx([0.1, 0.1, 1.05, 1.05, -1.2, -1.2, 0.1, 2.6])


def test_levels_round_half_away_from_zero_and_dead_zone():
    x = np.array([0.5, -0.5, 1.49, 1.5, -2.5, 0.79, 0.8, -0.8, 1.8])
    assert quantize_levels(x, 1.0).tolist() == [1, -1, 1, 2, -3, 1, 1, -1, 2]
    # dead_zone 0.3: the zero bin is |x| < 0.8, every other bin keeps the width of one step
    assert quantize_levels(x, 1.0, 0.3).tolist() == [0, 0, 1, 1, -2, 0, 1, -1, 2]


def test_mse_is_step_squared_over_12_on_smooth_data():
    w = np.random.default_rng(4).normal(size=200_000)
    for step in (0.05, 0.2):
        _, _, decoded = encode_decode(Uniform(step=step), Dense.of(w))
        assert np.mean((decoded.array - w) ** 2) == pytest.approx(step * step / 12, rel=0.03)


@given(st.integers(0, 2**32 - 1), st.floats(0.01, 2.0), st.floats(0.0, 1.0))
def test_conditional_means_never_increase_the_mse_over_bin_centres(seed, step, dead_zone):
    w = np.random.default_rng(seed).laplace(size=500)
    _, _, decoded = encode_decode(Uniform(step=step, dead_zone=dead_zone), Dense.of(w))
    centres = quantize_levels(w, step, dead_zone) * step
    assert np.sum((decoded.array - w) ** 2) <= np.sum((centres - w) ** 2) * (1 + 1e-12)


@given(st.integers(0, 2**32 - 1), st.floats(0.05, 1.0), st.sampled_from(["activation", "fisher"]))
def test_weighted_means_lower_the_weighted_mse(seed, step, weighting):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=400)
    importance = rng.exponential(size=400) ** 3  # strongly uneven
    _, _, plain = encode_decode(Uniform(step=step), Dense.of(w))
    _, _, weighted = encode_decode(Uniform(step=step, weighting=weighting), Dense(w, "F64", {weighting: importance}))
    loss = [float(np.sum(importance * (d.array - w) ** 2)) for d in (plain, weighted)]
    assert loss[1] <= loss[0] * (1 + 1e-12)
    assert np.array_equal(quantize_levels(weighted.array, step), quantize_levels(plain.array, step))  # same bins


def test_gptq_lowers_the_output_error_against_round():
    x = correlated(1000, 200, seed=5)
    w = np.random.default_rng(6).normal(size=(64, 200)).astype(np.float32)
    stream = Dense(w, "F32", {"hessian": x.T @ x / len(x)})
    errors = {}
    for method in ("round", "gptq"):
        _, _, decoded = encode_decode(Uniform(step=0.5, method=method), stream)
        errors[method] = np.linalg.norm(x @ (w.astype(np.float64) - decoded.array).T)
    assert errors["gptq"] < 0.8 * errors["round"], errors


def test_gptq_decodes_to_grid_points_and_leaves_grid_weights_alone():
    x = correlated(200, 16)
    w = np.random.default_rng(7).normal(size=(6, 16))
    stream = Dense(w, "F64", {"hessian": x.T @ x / len(x)})
    _, _, decoded = encode_decode(Uniform(step=0.125, method="gptq"), stream)
    assert np.array_equal(decoded.array / 0.125, np.round(decoded.array / 0.125))  # 0.125 is exact: exact multiples
    grid = np.round(w * 8) / 8 + 0.0  # (+0.0: no negative zeros, which decode as +0.0)
    _, _, same = encode_decode(Uniform(step=0.125, method="gptq"), Dense(grid, "F64", stream.side))
    assert same.array.tobytes() == grid.tobytes()


def test_fit_uses_the_rms_of_every_tensor_of_the_chain(tmp_path):
    rng = np.random.default_rng(8)
    a, b = rng.normal(size=(30, 20)).astype(np.float32), 5 * rng.normal(size=(10, 10)).astype(np.float32)
    rms = np.sqrt((np.sum(a.astype(np.float64) ** 2) + np.sum(b.astype(np.float64) ** 2)) / (a.size + b.size))
    fitted = Uniform(rel_step=0.5, dead_zone=0.1).fit(lambda: iter([Dense.of(a), Dense.of(b)]))
    assert fitted.get_config() == {"step": float(f"{0.5 * rms:.6g}"), "rel_step": None, "dead_zone": 0.1,
                                   "weighting": "none", "method": "round"}
    path = tmp_path / "m.dcf"
    dcframe.compress({"a": a, "b": b}, path, pipeline="uniform(rel_step=0.5) | huffman")
    with dcframe.open_container(path) as c:
        assert c.chains[0][0]["config"]["step"] == float(f"{0.5 * rms:.6g}")
        decoded = c.read("b").array
    assert np.abs(decoded - b).max() < 0.5 * rms  # a weight and its bin's mean share a bin one step wide
    again = tmp_path / "again.dcf"
    dcframe.compress({"a": a, "b": b}, again, pipeline="uniform(rel_step=0.5) | huffman")
    assert again.read_bytes() == path.read_bytes()  # deterministic
    zero = Uniform(rel_step=0.25).fit(lambda: iter([Dense.of(np.zeros(4, np.float32))]))
    assert zero.step == 0.25  # no scale to take: zeros quantize exactly with any step


def one_line(exc: pytest.ExceptionInfo, *needles: str) -> None:
    text = str(exc.value)
    assert "\n" not in text and text.startswith("stage 'uniform'"), text
    for needle in needles:
        assert needle in text, text


def test_encode_errors_are_one_line():
    w = Dense.of(np.random.default_rng(9).normal(size=(4, 5)).astype(np.float32))
    x = correlated(100, 5)
    wide = np.random.default_rng(9).normal(size=(64, 5))
    hessian = x.T @ x / len(x)  # the updates move weights between BF16 values, whose grid points then round away
    cases = [
        (Uniform(rel_step=0.1), w, ("fitted",)),
        (Uniform(step=1e-6), Dense.of(np.linspace(-1, 1, 300_000)), ("levels", "larger step")),
        (Uniform(step=1e-300), w, ("larger step",)),
        (Uniform(step=1.0), Dense.of(np.array([1.0, np.nan], np.float32)), ("NaN",)),
        (Uniform(step=1.0), Dense.of(np.arange(4, dtype=np.int32)), ("float",)),
        (Uniform(step=1.0, weighting="activation"), w, ("'activation' side input", "--calibration")),
        (Uniform(step=1.0, weighting="fisher"), w, ("'fisher' side input", "--calibration")),
        (Uniform(step=1.0, weighting="fisher"), Dense(w.array, "F32", {"fisher": -np.ones((4, 5))}), ("negative",)),
        (Uniform(step=1.0, weighting="fisher"), Dense(w.array, "F32", {"fisher": np.ones((5, 4))}), ("[5, 4]",)),
        (Uniform(step=1.0, method="gptq"), w, ("'hessian' side input", "--calibration")),
        (Uniform(step=1.0, method="gptq"), Dense(w.array, "F32", {"hessian": -np.eye(5)}), ("positive semi",)),
        (Uniform(step=1.0, method="gptq"), Dense(w.array, "F32", {"hessian": np.eye(4)}), ("expected [5, 5]",)),
        (Uniform(step=1.0, method="gptq"), Dense.of(np.ones((2, 3, 4), np.float32)), ("2-D",)),
        (Uniform(step=0.001, method="gptq"), dense(wide, "BF16", hessian=hessian), ("finer than BF16",)),
    ]
    for stage, stream, needles in cases:
        with pytest.raises(ConfigError) as exc:
            stage.encode(stream)
        one_line(exc, *needles)


@pytest.mark.parametrize("config, needle", [
    ({}, "exactly one"), ({"step": 1.0, "rel_step": 1.0}, "exactly one"), ({"step": 0}, "step"),
    ({"step": True}, "step"), ({"rel_step": float("inf")}, "rel_step"), ({"step": 1, "dead_zone": -1}, "dead_zone"),
    ({"step": 1, "weighting": "hessian"}, "weighting"), ({"step": 1, "method": "lloyd"}, "method"),
    ({"step": 1, "method": "gptq", "weighting": "fisher"}, "gptq"), ({"step": 1, "bits": 3}, "bits")])
def test_bad_configs_are_config_errors(config, needle):
    with pytest.raises(ConfigError, match=needle) as exc:
        Uniform.from_config(config)
    one_line(exc)


def test_decode_errors_name_the_stage():
    outputs, meta, _ = encode_decode(Uniform(step=0.5), Dense.of(np.linspace(-2, 2, 50, dtype=np.float32)))
    for change, error in (({"codebook": meta["codebook"][:-4]}, FormatError), ({"dtype": "I32"}, FormatError),
                          ({"codebook": meta["codebook"][:-1]}, FormatError), ({"shape": [51]}, FormatError),
                          ({"shape": [1] * 33}, FormatError)):
        with pytest.raises(error) as exc:
            Uniform(step=0.5).decode(outputs, msgpack.unpackb(msgpack.packb({**meta, **change})))
        assert str(exc.value).startswith("uniform:") and "kmeans" not in str(exc.value), str(exc.value)


def test_decode_bound_is_a_limit_error_naming_the_stage():
    huge = Dense.of(np.zeros(2**16, np.float32))
    outputs, meta, _ = encode_decode(Uniform(step=0.5), huge)
    token = _OUTPUT_LIMIT.set(2**16)  # the bound a container read sets for the tensor being decoded
    try:
        with pytest.raises(LimitError, match="^uniform: "):
            Uniform(step=0.5).decode(outputs, meta)
    finally:
        _OUTPUT_LIMIT.reset(token)


def test_cli_too_fine_a_step_fails_in_one_line_and_writes_nothing(tmp_path):
    src = tmp_path / "m.safetensors"
    write_model(src, {"w": np.linspace(-1, 1, 100_000, dtype=np.float32).reshape(100, 1000)})
    out = tmp_path / "m.dcf"
    result = subprocess.run([sys.executable, "-m", "dcframe.cli", "compress", str(src), "-o", str(out), "-p",
                             "uniform(step=1e-7) | huffman"], capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and "uniform" in line and "larger step" in line, line
    assert not out.exists()


def test_hostile_symbol_streams_are_format_errors_naming_the_stage():
    outputs, meta, _ = encode_decode(Uniform(step=0.5), Dense.of(np.linspace(-2, 2, 50, dtype=np.float32)))
    alphabet = outputs["indices"].alphabet
    for streams in ({}, {"indices": Bytes(b"\x00" * 50)}, {"indices": Symbols(np.full(50, alphabet, np.uint16), 999)},
                    {"indices": Symbols(np.zeros(49, np.uint8), alphabet)},
                    {"indices": Symbols(np.zeros((5, 10), np.uint8), alphabet)},
                    {"indices": Symbols(np.full(50, -1, np.int64), alphabet)},
                    {"indices": Symbols(np.zeros(50, np.float32), alphabet)}):
        with pytest.raises(FormatError, match="^uniform: "):
            Uniform(step=0.5).decode(streams, meta)


def test_one_value_per_bin_is_exact_so_retrained_shared_weights_survive():
    """The retraining loop's contract: shared values that stay within their bins are reproduced bit for bit."""
    rng = np.random.default_rng(10)
    for dtype in ("F64", "F32", "F16", "BF16"):
        levels = np.arange(-20, 21)
        values = dense((levels + rng.uniform(-0.45, 0.45, levels.size)) * 0.05, dtype).values()
        tensor = dense(rng.choice(values, size=(30, 30)), dtype)
        _, _, decoded = encode_decode(Uniform(step=0.05), tensor)
        assert stream_bytes(decoded) == stream_bytes(tensor), dtype


@given(st.integers(0, 2**32 - 1), st.sampled_from([0.01, 0.05, 0.3]), st.sampled_from([0.0, 0.2, 1.0]),
       st.sampled_from(["low", "high", "inside"]))
def test_shared_bounds_are_each_bins_extreme_floats(seed, step, dead_zone, where):
    """Every value of [low, high] quantizes to the shared value's level, the next float out of it does not, and a
    tensor moved anywhere within its bounds (one value per bin) re-encodes bit for bit."""
    rng = np.random.default_rng(seed)
    stage = Uniform(step=step, dead_zone=dead_zone)
    tensor = Dense(rng.laplace(scale=0.1, size=(20, 20)).astype(np.float32), "F32")
    book = np.unique(encode_decode(stage, tensor)[2].array)
    low, high = stage.shared_bounds(book)
    levels = quantize_levels(book.astype(np.float64), step, dead_zone)

    def level(v):
        return quantize_levels(v.astype(np.float64), step, dead_zone)

    assert np.array_equal(level(low), levels) and np.array_equal(level(high), levels)
    assert not (level(np.nextafter(low, np.float32(-np.inf))) == levels).any()
    assert not (level(np.nextafter(high, np.float32(np.inf))) == levels).any()
    moved = {"low": low, "high": high, "inside": low + (high - low) * rng.random(low.size).astype(np.float32)}[where]
    moved = np.clip(moved, low, high)
    retrained = Dense(moved[rng.integers(0, book.size, (20, 20))], "F32")
    assert stream_bytes(encode_decode(stage, retrained)[2]) == stream_bytes(retrained)


def test_cli_without_calibration_fails_in_one_line_naming_tensor_and_input(tmp_path):
    src = tmp_path / "m.safetensors"
    write_model(src, {"fc.weight": np.ones((8, 4), np.float32)})
    out = tmp_path / "m.dcf"
    result = subprocess.run([sys.executable, "-m", "dcframe.cli", "compress", str(src), "-o", str(out), "-p",
                             "uniform(rel_step=0.25, weighting=fisher) | huffman"], capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and "fc.weight" in line and "'fisher'" in line and "--calibration" in line, line
    assert not out.exists()


def test_retraining_loop_keeps_uniform_shared_weights_exactly(tmp_path):
    """imposes "shared": the loop hands the shared values to the retrainer and the file decodes to what it returned,
    with rel_step kept as fitted though the retrained weights' RMS moved."""
    rng = np.random.default_rng(11)
    tensors = {"a": rng.laplace(scale=0.02, size=(60, 50)).astype(np.float32),
               "b": rng.laplace(scale=0.05, size=(20, 30)).astype(np.float32)}
    returned = {}

    def retrainer(weights, constraints, phase):
        assert set(constraints) == {"a", "b"} and phase.imposes == {"shared"}
        moved = {n: (constraints[n].codebook * np.float32(1.002))[constraints[n].assignment].reshape(w.shape)
                 for n, w in weights.items()}  # every shared value moves a little, and the chain's RMS with it
        returned.update(moved)
        return moved

    path = tmp_path / "r.dcf"
    dcframe.compress_with_retraining(tensors, path, retrainer, pipeline="uniform(rel_step=0.5) | huffman")
    decoded = dcframe.decompress(path)
    assert all(decoded[n].array.tobytes() == returned[n].tobytes() for n in tensors)


def test_auto_uses_what_the_side_inputs_allow():
    x = correlated(400, 24, seed=9)
    rng = np.random.default_rng(10)
    w = rng.normal(size=(12, 24))
    act = rng.exponential(size=w.shape)
    cases = [({"hessian": x.T @ x / len(x)}, Uniform(step=0.3, method="gptq")),
             ({"activation": act}, Uniform(step=0.3, weighting="activation")),
             ({}, Uniform(step=0.3))]
    for side, same_as in cases:
        auto = encode_decode(Uniform(step=0.3, method="auto"), dense(w, "F32", **side))[2]
        expected = encode_decode(same_as, dense(w, "F32", **side))[2]
        assert auto.array.tobytes() == expected.array.tobytes(), sorted(side)
        check_with_side(Uniform(step=0.3, method="auto"), dense(w, "F32", **side))
    conv = rng.normal(size=(4, 3, 2, 2))  # a hessian is used only for 2-D weights; a kernel falls back to round
    auto = encode_decode(Uniform(step=0.3, method="auto"), dense(conv, "F32"))[2]
    assert auto.array.tobytes() == encode_decode(Uniform(step=0.3), dense(conv, "F32"))[2].array.tobytes()
    with pytest.raises(ConfigError):
        Uniform.from_config({"step": 0.3, "method": "auto", "weighting": "fisher"})
