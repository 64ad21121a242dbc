"""Build dcframe/data/digits.npz from scikit-learn's copy of the UCI handwritten digits (run once; needs scikit-learn).

The file keeps the original 8x8 images (intensities 0-16, uint8) with a stratified, seeded split: 50 test images per
class (500), the other 1,297 for training, in a seeded order. dcframe.analysis.demo.load_digits() resamples them to 28x28 with
exact integer arithmetic (bilinear, see dcframe.analysis.demo.resample_28), so the package ships ~30 KB instead of ~0.5 MB.

    python scripts/make_digits.py [--seed 0] [--out dcframe/data/digits.npz]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

TEST_PER_CLASS = 50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "dcframe" / "data" / "digits.npz"))
    args = parser.parse_args()
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.uint8)  # integers 0..16 stored as floats by scikit-learn
    assert np.array_equal(images, digits.images)
    labels = digits.target.astype(np.uint8)
    rng = np.random.default_rng(args.seed)
    test = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:TEST_PER_CLASS] for c in range(10)]))
    train = np.setdiff1d(np.arange(len(labels)), test)
    train = train[rng.permutation(len(train))]
    np.savez_compressed(args.out, x_train=images[train], y_train=labels[train], x_test=images[test],
                        y_test=labels[test])
    print(f"wrote {args.out}: {len(train)} train, {len(test)} test images of 8x8")


if __name__ == "__main__":
    main()
