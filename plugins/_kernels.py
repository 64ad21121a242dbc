"""Which implementation runs the huffman and rans inner loops: compiled kernels or numpy.

The kernels (`_numba_kernels`) need numba, the `fast` extra (pip install 'dcframe[fast]'); they are imported on the
first encode or decode that wants them, never when dcframe or a stage module is imported. Both paths give the same
bytes, the same symbols and the same errors. The environment variable DCFRAME_KERNELS chooses, read on every call:
`auto` (default; numba when it imports), `numpy` (always the numpy path) or `numba` (a ConfigError if it is missing).
"""

from __future__ import annotations

import os
from types import ModuleType

from dcframe import ConfigError

ENV = "DCFRAME_KERNELS"
CHOICES = ("auto", "numba", "numpy")
_module: ModuleType | None = None
_missing: str | None = None  # why the kernels could not be imported, once that was tried


def _load() -> ModuleType | None:
    """The kernels module, imported once; None (and the reason kept) when numba is not there."""
    global _module, _missing
    if _module is None and _missing is None:
        try:
            from . import _numba_kernels
        except ImportError as exc:
            _missing = str(exc)
        else:
            _module = _numba_kernels
    return _module


def compiled() -> ModuleType | None:
    """The compiled kernels to use now, or None for the numpy path (DCFRAME_KERNELS=numpy, or numba not installed)."""
    choice = os.environ.get(ENV, "").strip().lower() or "auto"
    if choice not in CHOICES:
        raise ConfigError(f"{ENV}={choice!r} is not one of {', '.join(CHOICES)}")
    if choice == "numpy":
        return None
    module = _load()
    if module is None and choice == "numba":
        raise ConfigError(f"{ENV}=numba, but the kernels do not import ({_missing}); pip install 'dcframe[fast]'")
    return module
