"""Which implementation runs the huffman and rans inner loops: compiled kernels or numpy.

Two kernel modules do the same work: the C extension `_ckernels` (through `_ckernels_api`), which setup.py builds
wherever `pip install` finds a compiler, and `_numba_kernels`, which needs numba, the `fast` extra (pip install
'dcframe[fast]'). Either is imported on the first encode or decode that wants it, never when dcframe or a stage module
is imported. Every path gives the same bytes, the same symbols and the same errors. The environment variable
DCFRAME_KERNELS chooses, read on every call:
`auto` (default): the C kernels when built (they import in about a millisecond, so every stream takes them), else
numba's once a stream of IMPORT_MIN+ symbols has loaded them (importing numba and its cached kernels costs a process
about 0.3-1 s, more than the numpy path spends on smaller streams), else numpy; `c` or `numba`: those kernels for
every stream (a ConfigError if they do not import); `numpy`: never kernels.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

import numpy as np

from dcframe import ConfigError
from dcframe.core import streams

ENV = "DCFRAME_KERNELS"
CHOICES = ("auto", "c", "numba", "numpy")
IMPORT_MIN = 1 << 17  # symbols of the first stream worth importing numba for, under `auto`
MODULES = {"c": "_ckernels_api", "numba": "_numba_kernels"}
HOW = {"c": "reinstall with a C compiler present (pip install . builds dcframe_plugins._ckernels)",
       "numba": "pip install 'dcframe[fast]'"}
_modules: dict[str, ModuleType] = {}
_missing: dict[str, str] = {}  # why a kernel module could not be imported, once that was tried


def _load(kind: str = "numba") -> ModuleType | None:
    """The kernel module of `kind` (c or numba), imported once; None (and the reason kept) when it does not import."""
    if kind not in _modules and kind not in _missing:
        if sys.byteorder != "little":  # the kernels read the payload as native 64-bit words
            _missing[kind] = "the kernels assume a little-endian machine"
            return None
        try:
            _modules[kind] = importlib.import_module(f".{MODULES[kind]}", __package__)
        except Exception as exc:  # not built or installed, or broken (ImportError, OSError from llvmlite, MemoryError
            _missing[kind] = f"{type(exc).__name__}: {exc}"  # under an address-space limit): numpy does the same work
    return _modules.get(kind)


def installed(kind: str | None = None) -> bool:
    """Whether the kernels of `kind` (c or numba; None: either) import here."""
    return any(_load(k) is not None for k in ((kind,) if kind else MODULES))


def available() -> tuple[str, ...]:
    """The kernel kinds that import here, C first (the order `auto` prefers them in)."""
    return tuple(kind for kind in MODULES if _load(kind) is not None)


def choice() -> str:
    """DCFRAME_KERNELS, checked (a ConfigError for anything but CHOICES)."""
    value = os.environ.get(ENV, "").strip().lower() or "auto"
    if value not in CHOICES:
        raise ConfigError(f"{ENV}={value!r} is not one of {', '.join(CHOICES)}")
    return value


def compiled(symbols: int) -> ModuleType | None:
    """The compiled kernels for a stream of `symbols` symbols, or None for the numpy path (see the module doc)."""
    chosen = choice()
    if chosen == "numpy":
        return None
    if chosen == "auto":
        c = _load("c")
        if c is not None:
            return c
        if "numba" not in _modules and symbols < IMPORT_MIN:
            return None
        return _load("numba")
    module = _load(chosen)
    if module is None:
        raise ConfigError(f"{ENV}={chosen}, but the kernels do not import ({_missing[chosen]}); {HOW[chosen]}")
    return module


def symbol_counts(symbols: np.ndarray, alphabet: int) -> np.ndarray:
    """np.bincount(symbols, minlength=alphabet) (int64) of uint8 / uint16 symbols below `alphabet`: the C kernels'
    histogram where they run (bincount widens every symbol to 64 bits first), else dcframe's blocked bincount."""
    kernels = compiled(symbols.size)
    if kernels is not None and hasattr(kernels, "histogram"):
        return kernels.histogram(symbols, alphabet)
    return streams.symbol_counts(symbols, alphabet)
