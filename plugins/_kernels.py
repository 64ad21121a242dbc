"""Which implementation runs the huffman and rans inner loops: compiled kernels or numpy.

The kernels (`_numba_kernels`) need numba, the `fast` extra (pip install 'dcframe[fast]'); they are imported on the
first encode or decode that wants them, never when dcframe or a stage module is imported. Both paths give the same
bytes, the same symbols and the same errors. The environment variable DCFRAME_KERNELS chooses, read on every call:
`auto` (default): the kernels once a stream of IMPORT_MIN+ symbols has loaded them (importing numba and its cached
kernels costs a process about 0.3-0.5 s of CPU, more than the numpy path spends on smaller streams), numpy before
that or without numba; `numba`: the kernels for every stream (a ConfigError if they do not import); `numpy`: never.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType

from dcframe import ConfigError

ENV = "DCFRAME_KERNELS"
CHOICES = ("auto", "numba", "numpy")
IMPORT_MIN = 1 << 17  # symbols of the first stream worth importing numba for, under `auto`
_module: ModuleType | None = None
_missing: str | None = None  # why the kernels could not be imported, once that was tried


def _load() -> ModuleType | None:
    """The kernels module, imported once; None (and the reason kept) when numba is not there."""
    global _module, _missing
    if _module is None and _missing is None:
        if sys.byteorder != "little":  # the kernels read the payload as native 64-bit words
            _missing = "the kernels assume a little-endian machine"
            return None
        try:
            from . import _numba_kernels
        except Exception as exc:  # not installed, or broken (ImportError, OSError from llvmlite, MemoryError under
            _missing = f"{type(exc).__name__}: {exc}"  # an address-space limit): the numpy path does the same work
        else:
            _module = _numba_kernels
    return _module


def installed() -> bool:
    """Whether the kernels import here (numba installed and working)."""
    return _load() is not None


def compiled(symbols: int) -> ModuleType | None:
    """The compiled kernels for a stream of `symbols` symbols, or None for the numpy path (see the module doc)."""
    choice = os.environ.get(ENV, "").strip().lower() or "auto"
    if choice not in CHOICES:
        raise ConfigError(f"{ENV}={choice!r} is not one of {', '.join(CHOICES)}")
    if choice == "numpy" or (choice == "auto" and _module is None and symbols < IMPORT_MIN):
        return None
    module = _load()
    if module is None and choice == "numba":
        raise ConfigError(f"{ENV}=numba, but the kernels do not import ({_missing}); pip install 'dcframe[fast]'")
    return module
