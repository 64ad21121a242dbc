"""Pipelines: parsing "stage(k=v) | stage" strings, type-checking chains, and choosing a chain per tensor."""

from __future__ import annotations

import ast
import fnmatch
import keyword
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dcframe.core.dtypes import is_float
from dcframe.core.errors import PipelineError
from dcframe.core.registry import ALLOW_ENV, Registry, get_registry
from dcframe.core.stage import Stage
from dcframe.core.streams import BYTES, DENSE, KINDS

SERIALIZER = "raw"  # the stage that turns dense or symbol streams into bytes; appended where a chain needs it
ROOT = "data"  # the name of the stream a tensor starts as


def parse_pipeline(text: str, registry: Registry | None = None) -> list[Stage]:
    """Parse "prune(sparsity=0.9) | sparse | huffman" into configured stages (values are literals, never evaluated)."""
    registry = registry or get_registry()
    stages = []
    for part in text.split("|"):
        part = part.strip()
        if not part:
            raise PipelineError(f"empty stage in pipeline {text!r}")
        stage_id, config = _parse_stage(part, text)
        stages.append(registry.build(stage_id, config))
    return stages


_BARE_WORD = re.compile(r"=\s*([A-Za-z_][\w.+\-]*)\s*(?=[,)])")


def _quote_keywords(part: str) -> str:
    """Quote bare words that are not Python names (init=kmeans++) or that Python reserves (scope=global), so they
    parse as the strings they mean."""

    def quote(m: re.Match) -> str:
        word = m.group(1)
        if word in ("True", "False", "None") or (word.isidentifier() and not keyword.iskeyword(word)):
            return m.group(0)
        return f"={word!r}"

    return _BARE_WORD.sub(quote, part)


def _parse_stage(part: str, text: str) -> tuple[str, dict[str, Any]]:
    try:
        node = ast.parse(_quote_keywords(part), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # deep nesting overflows the parser's stack
        raise PipelineError(
            f"cannot parse stage {part!r} in pipeline {text!r}; write it as name(key=value, ...)") from None
    if isinstance(node, ast.Name):
        return node.id, {}
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)) or node.args:
        raise PipelineError(f"cannot parse stage {part!r} in pipeline {text!r}; write it as name(key=value, ...)")
    config = {}
    for kw in node.keywords:
        if kw.arg is None:
            raise PipelineError(f"stage {part!r}: ** is not allowed in a pipeline")
        config[kw.arg] = _literal(kw.value, part)
    return node.func.id, config


def _literal(node: ast.expr, part: str) -> Any:
    if isinstance(node, ast.Name):  # a bare word is a string: scope=global
        return {"true": True, "false": False, "none": None}.get(node.id.lower(), node.id)
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise PipelineError(f"stage {part!r}: {ast.unparse(node)!r} is not a literal value") from None


def format_pipeline(stages: Sequence[Stage]) -> str:
    """The pipeline string of a chain, parseable by parse_pipeline."""
    return " | ".join(repr(s) for s in stages)


@dataclass(frozen=True)
class Step:
    """One stage of a checked chain and the stream names it applies to."""

    stage: Stage
    inputs: tuple[str, ...]
    outputs: dict[str, tuple[str, ...]]  # input name -> output names, in the stage's `gives` order


@dataclass(frozen=True)
class Chain:
    """A type-checked sequence of stages, with the serializer inserted where bytes are needed."""

    steps: tuple[Step, ...]
    final: dict[str, str] = field(default_factory=dict)  # stream name -> kind after the last step

    @property
    def stages(self) -> list[Stage]:
        return [s.stage for s in self.steps]

    @property
    def lossy(self) -> bool:
        return any(s.stage.lossy for s in self.steps)

    def __str__(self) -> str:
        return format_pipeline(self.stages)


def build_chain(stages: Sequence[Stage], registry: Registry | None = None) -> Chain:
    """Check that each stage takes what the one before it gives; insert `raw` before bytes stages and at the end."""
    registry = registry or get_registry()
    streams = {ROOT: DENSE}
    steps: list[Step] = []
    previous = "the input tensor"
    queue = list(stages)
    while queue or any(kind != BYTES for kind in streams.values()):
        stage = queue.pop(0) if queue else registry.build(SERIALIZER, {})
        for kind in (*stage.takes, *stage.gives.values()):
            if kind not in KINDS:
                raise PipelineError(f"stage '{stage.id}' declares unknown stream kind {kind!r}")
        inputs = tuple(name for name, kind in streams.items() if kind in stage.takes)
        if not inputs:
            if BYTES in stage.takes and stage.id != SERIALIZER:
                queue.insert(0, stage)
                queue.insert(0, registry.build(SERIALIZER, {}))
                continue
            have = " and ".join(sorted(set(streams.values())))
            raise PipelineError(
                f"stage '{stage.id}' takes {' or '.join(stage.takes)}, but {previous} before it gives {have}"
            )
        outputs = {}
        for name in inputs:
            del streams[name]
            names = []
            for local, kind in stage.gives.items():
                out = name if len(stage.gives) == 1 else local
                if out in streams:
                    out = f"{name}.{local}"
                if out in streams:
                    raise PipelineError(f"stage '{stage.id}' would write stream {out!r} twice")
                streams[out] = kind
                names.append(out)
            outputs[name] = tuple(names)
        steps.append(Step(stage, inputs, outputs))
        previous = f"'{stage.id}'"
    return Chain(tuple(steps), dict(streams))


@dataclass(frozen=True)
class Rule:
    """Chooses `pipeline` for tensors whose name matches `pattern` and, if given, whose rank is in `ndim` or is at
    least `min_ndim`."""

    pipeline: str
    pattern: str = "*"
    ndim: tuple[int, ...] | None = None
    min_ndim: int | None = None

    def matches(self, name: str, shape: Sequence[int]) -> bool:
        if not fnmatch.fnmatchcase(name, self.pattern):
            return False
        if self.min_ndim is not None and len(shape) < self.min_ndim:
            return False
        return self.ndim is None or len(shape) in self.ndim

    @classmethod
    def parse(cls, text: str) -> Rule:
        """Parse a CLI rule "GLOB=PIPELINE", "dim:N[,M]=PIPELINE" (rank N or M) or "dim:N+=PIPELINE" (rank >= N)."""
        selector, sep, pipeline = text.partition("=")
        if not sep or not selector.strip() or not pipeline.strip():
            raise PipelineError(f"rule {text!r} must look like 'GLOB=PIPELINE' or 'dim:N=PIPELINE'")
        selector = selector.strip()
        if selector.startswith("dim:"):
            try:
                if selector.endswith("+"):
                    return cls(pipeline.strip(), "*", None, int(selector[4:-1]))
                ndim = tuple(int(n) for n in selector[4:].split(","))
            except ValueError:
                raise PipelineError(f"rule {text!r}: 'dim:' takes ranks such as dim:1, dim:3,4 or dim:3+") from None
            return cls(pipeline.strip(), "*", ndim)
        return cls(pipeline.strip(), selector)

    @classmethod
    def from_preset(cls, rule: dict[str, Any]) -> Rule:
        match = rule.get("match", {})
        ndim = match.get("ndim")
        if isinstance(ndim, int):
            ndim = (ndim,)
        return cls(rule["pipeline"], match.get("name", "*"), tuple(ndim) if ndim is not None else None,
                   match.get("min_ndim"))


MIN_LOSSY_NDIM = 2  # a lossy --pipeline applies to tensors of at least this rank; the rest get the lossless chain


class Policy:
    """Decides the chain of each tensor: user rules first, then the pipeline or preset, lossless for non-floats."""

    def __init__(
        self,
        pipeline: str | None = None,
        preset: str | None = None,
        rules: Sequence[Rule | str] = (),
        registry: Registry | None = None,
    ) -> None:
        self.registry = registry or get_registry()
        self._chains: dict[str, Chain] = {}
        self.rules = [Rule.parse(r) if isinstance(r, str) else r for r in rules]
        if pipeline is not None and preset is not None:
            raise PipelineError("give a pipeline or a preset, not both")
        if pipeline is not None:
            # A lossy pipeline is meant for weight matrices and kernels: rank 0-1 tensors (biases, norms, scales)
            # stay exact unless a rule names them (spec/presets.md, "Safe by default").
            lossy = self.chain_for_pipeline(pipeline).lossy
            self.rules.append(Rule(pipeline, min_ndim=MIN_LOSSY_NDIM if lossy else None))
        else:
            self.rules.extend(Rule.from_preset(r) for r in self.preset(preset or "lossless")["rules"])
        for rule in self.rules:  # parse and check every pipeline before any data is touched
            self.chain_for_pipeline(rule.pipeline)
        self.lossless_pipeline()  # the fallback for non-float tensors is a chain of this policy too

    def preset(self, name: str) -> dict[str, Any]:
        try:
            return self.registry.presets[name]
        except KeyError:
            known = ", ".join(sorted(self.registry.presets)) or "none installed"
            hint = ""
            if os.environ.get(ALLOW_ENV) is not None:  # the built-in presets are the 'presets' entry point
                hint = f" (the built-in presets come from the 'presets' plugin: allow it in {ALLOW_ENV})"
            raise PipelineError(f"unknown preset {name!r}; known presets: {known}{hint}") from None

    def chain_for_pipeline(self, pipeline: str) -> Chain:
        if pipeline not in self._chains:
            self._chains[pipeline] = build_chain(parse_pipeline(pipeline, self.registry), self.registry)
        return self._chains[pipeline]

    def pipeline_for(self, name: str, shape: Sequence[int], dtype: str) -> str:
        """The pipeline string that applies to one tensor."""
        for rule in self.rules:
            if rule.matches(name, shape):
                chain = self.chain_for_pipeline(rule.pipeline)
                if chain.lossy and not is_float(dtype):
                    break  # integers and booleans are never approximated
                return rule.pipeline
        return self.lossless_pipeline()

    def lossless_pipeline(self) -> str:
        rules = self.preset("lossless")["rules"] if "lossless" in self.registry.presets else []
        pipeline = rules[0]["pipeline"] if rules else SERIALIZER
        self.chain_for_pipeline(pipeline)
        return pipeline
