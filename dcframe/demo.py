"""The bundled LeNet-300-100 through prune -> retrain -> quantize -> retrain centroids -> Huffman, as data.

Everything the `dcframe demo` command prints comes from run_demo(): the paper's per-layer table (Han et al. 2016,
Tables 2-5), the accuracy after each step, and the sweep of accuracy against compression rate.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data"
DIGITS = DATA / "digits.npz"
MODEL = DATA / "lenet_300_100.safetensors"


def _interpolation_tenths(n_out: int, n_in: int) -> np.ndarray:
    """10x the bilinear interpolation matrix (half-pixel centres, clamped edges): integers for 8 -> 20 pixels."""
    pos10 = np.clip((np.arange(n_out) * 2 + 1) * 5 * n_in // n_out - 5, 0, 10 * (n_in - 1))  # source position * 10
    lo, frac = pos10 // 10, pos10 % 10
    m = np.zeros((n_out, n_in), np.int64)
    np.add.at(m, (np.arange(n_out), lo), 10 - frac)
    np.add.at(m, (np.arange(n_out), np.minimum(lo + 1, n_in - 1)), frac)
    return m


def resample_28(images: np.ndarray) -> np.ndarray:
    """8x8 digits (0-16) -> 28x28 uint8 (0-255): bilinear to 20x20, centred with a 4-pixel border, like MNIST.

    Exact integer arithmetic (the interpolation weights are tenths), so every platform gets the same pixels.
    """
    r = _interpolation_tenths(20, images.shape[-1])
    acc = np.einsum("ij,njk,lk->nil", r, images.astype(np.int64), r)  # 100 x the interpolated 0-16 value
    out = np.zeros((len(images), 28, 28), np.uint8)
    out[:, 4:24, 4:24] = (acc * 255 * 2 + 1600) // 3200  # round(acc / 100 * 255 / 16), halves up
    return out


@cache
def load_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The bundled digits as (x_train, y_train, x_test, y_test): float32 rows of 784 pixels in [0, 1], int labels."""
    with np.load(DIGITS) as f:
        parts = [f[k] for k in ("x_train", "y_train", "x_test", "y_test")]
    x_train, x_test = (resample_28(p).reshape(len(p), 784).astype(np.float32) / np.float32(255)
                       for p in (parts[0], parts[2]))
    return x_train, parts[1].astype(np.int64), x_test, parts[3].astype(np.int64)
