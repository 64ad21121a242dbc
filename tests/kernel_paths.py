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


def simd_paths() -> tuple[tuple[str, str], ...]:
    """The C kernels' rans decode paths this CPU runs, as (path, table form) pairs for `simd_path`: the scalar loop,
    then AVX2 and AVX-512 (each of its table forms) where the CPU has them; () without the C kernels."""
    c = _kernels._load("c")
    if c is None:
        return ()
    paths = c._c.set_simd("auto")
    forms = ("two", "packed", "perm", "perm256") if "avx512" in paths else ()
    return (("scalar", "auto"),) + (("avx2", "auto"),) * ("avx2" in paths) + tuple(("avx512", f) for f in forms)


@contextmanager
def simd_path(path: str, form: str = "auto") -> Iterator[None]:
    """The C kernels' rans decode on one path inside the block (a form the table does not fit runs as "two"), the
    best path the CPU has (as at import) after it."""
    c = _kernels._load("c")._c
    c.set_simd(path, form)
    try:
        yield
    finally:
        c.set_simd("auto")
