"""Run code on one implementation of the huffman and rans inner loops: the numpy path or the compiled kernels."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from dcframe_plugins import _kernels


def available() -> tuple[str, ...]:
    """The paths this install can run: numpy always, c where the extension was built, numba with the `fast` extra."""
    return ("numpy", *_kernels.available())


@contextmanager
def coder_path(path: str) -> Iterator[None]:
    """DCFRAME_KERNELS=path inside the block, the caller's setting restored after it."""
    saved = os.environ.get(_kernels.ENV)
    os.environ[_kernels.ENV] = path
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(_kernels.ENV, None)
        else:
            os.environ[_kernels.ENV] = saved
