"""Pipeline strings, chain type-checking, rules and presets."""

import pytest

from dcframe import ConfigError, MissingStageError, PipelineError, Policy, Rule, parse_pipeline
from dcframe.core.pipeline import build_chain, format_pipeline

LOSSLESS_CHAIN = "bytegroup | zstd(level=5) | rans(scale_bits=14, lanes=256)"  # the lossless preset in reports


def test_parse_with_literals_and_bare_words():
    stages = parse_pipeline("zstd(level=3) | zlib(level = 1)|bz2")
    assert format_pipeline(stages) == "zstd(level=3) | zlib(level=1) | bz2(level=9)"


def test_bare_words_are_strings_even_python_keywords():
    from dcframe.core.pipeline import _parse_stage

    assert _parse_stage("prune(sparsity=0.9, scope=global)", "") == ("prune", {"sparsity": 0.9, "scope": "global"})
    assert _parse_stage("kmeans(init=kmeans++, bits=4)", "") == ("kmeans", {"init": "kmeans++", "bits": 4})
    assert _parse_stage("x(a=-3, b=1e-3, c=a-b)", "") == ("x", {"a": -3, "b": 1e-3, "c": "a-b"})
    assert _parse_stage("x(a=tensor, b=True, c=none, d='if')", "") == ("x", {"a": "tensor", "b": True, "c": None,
                                                                        "d": "if"})


@pytest.mark.parametrize("text, message", [
    ("zstd(", "cannot parse stage"),
    ("zstd(3)", "cannot parse stage"),
    ("zstd | | zlib", "empty stage"),
    ("zstd(level=__import__('os'))", "not a literal"),
    ("zstd(**{'level': 3})", "not allowed"),
])
def test_bad_pipeline_strings(text, message):
    with pytest.raises(PipelineError, match=message):
        parse_pipeline(text)


def test_unknown_stage_and_parameter():
    with pytest.raises(MissingStageError, match="stage 'nosuch' is not installed"):
        parse_pipeline("nosuch(x=1)")
    with pytest.raises(ConfigError, match="stage 'zstd' has no parameter 'lvl'"):
        parse_pipeline("zstd(lvl=3)")
    with pytest.raises(ConfigError, match="zstd: level must be"):
        parse_pipeline("zstd(level=99)")


def test_serializer_is_inserted_where_bytes_are_needed():
    chain = build_chain(parse_pipeline("zstd(level=3)"))
    assert str(chain) == "raw | zstd(level=3)"
    assert chain.final == {"data": "bytes"}


def test_impossible_chain_is_refused_before_any_data():
    with pytest.raises(PipelineError, match="stage 'huffman' takes symbols, but 'zstd' before it gives bytes"):
        build_chain(parse_pipeline("zstd | huffman"))


def test_rules_choose_per_tensor_first_match_wins():
    policy = Policy(pipeline="zstd(level=3)", rules=["*.bias=zlib(level=1)", "dim:1=bz2", Rule("lzma", "emb*"),
                                                     "dim:3+=zlib(level=2)"])
    assert policy.pipeline_for("conv", (4, 3, 3, 3), "F32") == "zlib(level=2)"
    assert policy.pipeline_for("conv1d", (4, 3, 3), "F32") == "zlib(level=2)"
    assert policy.pipeline_for("fc.bias", (10,), "F32") == "zlib(level=1)"
    assert policy.pipeline_for("norm", (10,), "F32") == "bz2"
    assert policy.pipeline_for("emb.weight", (10, 4), "F32") == "lzma"
    assert policy.pipeline_for("fc.weight", (10, 4), "F32") == "zstd(level=3)"


@pytest.mark.parametrize("text", ["nothing", "=zstd", "dim:x=zstd", "*.bias="])
def test_bad_rules(text):
    with pytest.raises(PipelineError):
        Rule.parse(text)


def test_pipeline_and_preset_are_exclusive_and_presets_must_exist():
    with pytest.raises(PipelineError, match="not both"):
        Policy(pipeline="zstd", preset="lossless")
    with pytest.raises(PipelineError, match="unknown preset 'nope'"):
        Policy(preset="nope")


def test_integer_tensors_fall_back_to_lossless_next_to_a_fitted_lossy_chain(tmp_path):
    import numpy as np

    import dcframe

    tensors = {"w": np.linspace(-1, 1, 40, dtype=np.float32).reshape(4, 10), "n": np.arange(5, dtype=np.int32)}
    report = dcframe.compress(tensors, tmp_path / "m.dcf", pipeline="prune(sparsity=0.5, scope=global) | zstd")
    chains = {t["name"]: t["pipeline"] for t in report["tensors"]}
    assert chains["n"] == LOSSLESS_CHAIN and chains["w"].startswith("prune(")
    assert dcframe.decompress(tmp_path / "m.dcf")["n"].array.tobytes() == tensors["n"].tobytes()


def test_a_lossy_pipeline_leaves_rank_0_and_1_tensors_exact_unless_a_rule_names_them(tmp_path):
    import numpy as np

    import dcframe

    rng = np.random.default_rng(0)
    tensors = {"fc.weight": rng.normal(size=(30, 20)).astype(np.float32),
               "fc.bias": rng.normal(size=30).astype(np.float32),
               "norm.weight": rng.normal(size=20).astype(np.float32),
               "scale": np.float32(0.3)}
    path = tmp_path / "m.dcf"
    report = dcframe.compress(tensors, path, pipeline="kmeans(bits=2) | huffman")
    chains = {t["name"]: t["pipeline"] for t in report["tensors"]}
    assert chains["fc.weight"].startswith("kmeans(")
    out = dcframe.decompress(path)
    for name in ("fc.bias", "norm.weight", "scale"):
        assert chains[name] == LOSSLESS_CHAIN
        assert out[name].array.tobytes() == np.asarray(tensors[name]).tobytes()
    assert np.unique(out["fc.weight"].array).size <= 4
    named = dcframe.compress(tensors, path, pipeline="kmeans(bits=2) | huffman",
                             rules=["*.bias=kmeans(bits=2) | huffman"])
    chains = {t["name"]: t["pipeline"] for t in named["tensors"]}
    assert chains["fc.bias"].startswith("kmeans(") and chains["norm.weight"] == LOSSLESS_CHAIN
    lossless = dcframe.compress(tensors, path, pipeline="zstd(level=3)")  # a lossless pipeline applies to every rank
    assert {t["pipeline"] for t in lossless["tensors"]} == {"raw | zstd(level=3)"}
