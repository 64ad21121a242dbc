"""The stage contract, which every built-in and third-party stage keeps.

A stage is one step of a compression chain. It is a class with:

- ``id``: a unique lower-case name (``"huffman"``); two classes share an id only if each decodes the other's output.
- ``version``: an integer, raised whenever the bytes a stage writes change; a decoder refuses a newer version.
- ``takes``: the stream kinds it encodes (``"dense"``, ``"symbols"``, ``"bytes"``); streams of other kinds pass by.
- ``gives``: output name -> kind. A stage with one output keeps its input's stream name; a stage with several names
  them (``sparse`` gives ``positions`` and ``values``).
- ``lossy``: True if decode returns an approximation. ``imposes``: the constraints a lossy stage leaves for retraining
  (``"zeros"``: zeroed weights stay zero; ``"shared"``: weights with equal values stay tied). A stage imposing
  ``"shared"`` that encodes a tied value exactly only inside some interval (uniform: its bin) says so in
  ``shared_bounds``; retrainers keep every shared value within its bounds.
- an ``__init__`` whose keyword parameters are the whole config; ``get_config()`` returns them as plain msgpack data
  (int, float, str, bool, None, list, dict) and ``from_config(get_config())`` rebuilds an equal stage.
- ``encode(stream) -> (streams, meta)`` and ``decode(streams, meta) -> stream``: pure functions, no I/O, no global
  state.
  ``meta`` holds what decode needs beyond the streams (a codebook, a shape), as plain msgpack data; bin is allowed.
  decode MUST check everything it reads from meta and the streams, and raise FormatError on anything inconsistent,
  never allocate more than the sizes it was told to expect. Before allocating an output whose size comes from meta,
  it calls ``dcframe.check_output(self.id, nbytes)``: while a tensor decodes, no stream may exceed
  ``dcframe.output_limit()`` (a small multiple of the tensor's declared size), so a tiny stream cannot claim gigabytes.

A stage needing a look at every tensor before encoding any (global pruning) overrides ``fit``. If that look can be
cut into passes that map each stream to a small result and merge the results in any order (histograms, counts), it
may also define ``fit_plan`` (a FitPlan, below): an executor then runs each pass's map where the tensors are, and
the fitted stage is the same as ``fit``'s.

Side inputs. Data-aware stages (Wanda pruning, importance-weighted k-means) need statistics of the model's data that
are not in the tensor. They arrive at encode time only, in ``Dense.side`` (name -> numpy array), filled from a
calibration (``compress(..., calibration=)``, spec/calibration.md) for the tensors it covers; they are never stored,
and decode never needs them, so files and golden vectors do not depend on them. Names (``dcframe.core.streams``):

- ``"activation"``: element-aligned (the stream's shape), E[x^2] of the input feature each weight multiplies;
- ``"fisher"``: element-aligned, the mean squared gradient of a loss with respect to each weight;
- ``"hessian"``: tensor-level, X^T X / n ([in, in]) of a 2-D weight [out, in] whose rows are output features.

A stage reads ``stream.side.get(name)``, and either works without it (falling back to its data-free rule) or raises
ConfigError naming what is missing. A stage that gives a dense stream passes side inputs on: the same elements in the
same layout keep them all (``Dense(array, dtype, stream.side)``, ``with_values``); a subset of the elements keeps the
element-aligned ones, selected (``stream.select(indices)``); other outputs carry none. ``require_side`` fetches one
and checks it, with the error message every built-in stage gives.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Generator, Iterable
from typing import Any, ClassVar

import numpy as np

from dcframe.core.errors import ConfigError
from dcframe.core.streams import Dense, Stream

Meta = dict[str, Any]
# A fit in passes: the generator yields a picklable function of one stream, is sent an iterable of that function's
# results over every stream of the chain (in any order), and finally returns its result (the fitted stage).
FitPlan = Generator[Callable[[Any], Any], Iterable[Any], Any]


def run_fit_plan(plan: FitPlan, streams: Callable[[], Iterable[Stream]]) -> Any:
    """Run a FitPlan here: each pass maps its function over `streams()`, one stream at a time."""
    try:
        request = next(plan)
        while True:
            request = plan.send(request(s) for s in streams())
    except StopIteration as done:
        return done.value


class Stage:
    """Base class of every stage; subclasses set the class attributes and implement encode and decode."""

    id: ClassVar[str]
    version: ClassVar[int] = 1
    takes: ClassVar[tuple[str, ...]]
    gives: ClassVar[dict[str, str]]
    lossy: ClassVar[bool] = False
    imposes: ClassVar[frozenset[str]] = frozenset()

    def encode(self, stream: Stream) -> tuple[dict[str, Stream], Meta]:
        raise NotImplementedError

    def decode(self, streams: dict[str, Stream], meta: Meta) -> Stream:
        raise NotImplementedError

    def fit(self, streams: Callable[[], Iterable[Stream]]) -> Stage:
        """Return the stage to use on every tensor of its chain, given a way to iterate over their input streams."""
        return self

    def shared_bounds(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """For a stage imposing "shared": the closed float32 interval [low, high] around each of the distinct
        `values` it decoded, within which a retrained value still encodes exactly (one value per bin); None when
        any value does (kmeans on <= k distinct values)."""
        return None

    def fit_plan(self) -> FitPlan | None:
        """Optional: `fit` as a FitPlan an executor may distribute (its result: the same stage as `fit`'s); None
        when this stage has nothing to fit, or fits only through `fit`."""
        return None

    @classmethod
    def parameters(cls) -> dict[str, inspect.Parameter]:
        """The config keys this stage accepts, from its __init__ signature."""
        params = inspect.signature(cls.__init__).parameters
        kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        return {name: p for name, p in params.items() if name != "self" and p.kind in kinds}

    def get_config(self) -> dict[str, Any]:
        """The parameters that rebuild this stage, as plain msgpack data."""
        return {name: getattr(self, name) for name in self.parameters()}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Stage:
        """Build the stage from a config; unknown or invalid keys raise ConfigError naming the stage."""
        unknown = set(config) - set(cls.parameters())
        if unknown:
            raise ConfigError(
                f"stage '{cls.id}' has no parameter {', '.join(sorted(map(repr, unknown)))}; "
                f"it accepts: {', '.join(cls.parameters()) or 'nothing'}"
            )
        try:
            return cls(**config)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"stage '{cls.id}': {exc}") from None

    @classmethod
    def describe(cls) -> str:
        """The first line of the class docstring."""
        return (inspect.getdoc(cls) or "").strip().splitlines()[0] if cls.__doc__ else ""

    def __repr__(self) -> str:
        return format_stage(self.id, self.get_config())


def require_side(stream: Dense, name: str, where: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The side input `name` of `stream`, present, of `shape` (default: the stream's) and finite; else ConfigError
    starting with `where` (which stage, and what needs it) and saying how to provide it."""
    value = stream.side.get(name)
    if value is None:
        raise ConfigError(f"{where} needs the '{name}' side input, which this tensor lacks: pass a calibration that "
                          f"covers it (--calibration FILE, or calibration= in Python), or give it another chain")
    value = np.asarray(value)
    expected = tuple(stream.array.shape) if shape is None else tuple(shape)
    if value.shape != expected:
        raise ConfigError(f"{where}: side input '{name}' has shape {list(value.shape)}, expected {list(expected)}")
    if not np.isfinite(value).all():
        raise ConfigError(f"{where}: side input '{name}' holds NaN or infinity")
    return value


def format_stage(stage_id: str, config: dict[str, Any]) -> str:
    """A stage as written in a pipeline string: `id` or `id(key=value, ...)`."""
    args = ", ".join(f"{k}={v!r}" for k, v in config.items())
    return f"{stage_id}({args})" if args else stage_id
