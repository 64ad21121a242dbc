"""The bundled LeNet-300-100 pruned without retraining: Wanda against magnitude, test accuracy at each sparsity.

Run: python tests/bench/bench_lenet_wanda.py [--sparsities 0.5,0.7,0.8,0.9,0.95] [--samples 256]
Calibration: the layer inputs of --samples training digits (never the 500 test digits the accuracy is measured on),
E[x^2] per input feature as dcframe.torch.calibrate records it, X^T X / n for sparsegpt. Every row compresses
`prune(sparsity=s, criterion=c) | zstd` (rank 0-1 tensors stay exact) and decodes the file before measuring.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import dcframe
from dcframe.analysis.demo import load_digits
from dcframe.analysis.mlp import accuracy, layer_names
from dcframe.io.calibration import Calibration

MODEL = Path(dcframe.__file__).parent / "data" / "lenet_300_100.safetensors"


def layer_inputs(params: dict[str, np.ndarray], x: np.ndarray) -> dict[str, np.ndarray]:
    """The input of every layer of the MLP on the rows of `x`."""
    inputs, h = {}, x.astype(np.float64)
    layers = layer_names(params)
    for i, layer in enumerate(layers):
        inputs[f"{layer}.weight"] = h
        h = h @ params[f"{layer}.weight"].T + params[f"{layer}.bias"]
        if i < len(layers) - 1:
            h = np.maximum(h, 0)
    return inputs


def calibration(params: dict[str, np.ndarray], x: np.ndarray) -> Calibration:
    entries = {}
    for name, h in layer_inputs(params, x).items():
        entries[name] = {"activation": (h * h).mean(0)[None, :].astype(np.float32),
                         "hessian": (h.T @ h / len(h)).astype(np.float32)}
    return Calibration(entries, samples=len(x), source="bundled digits")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsities", default="0.5,0.7,0.8,0.9,0.95")
    parser.add_argument("--samples", type=int, default=256)
    args = parser.parse_args()
    x_train, _, x_test, y_test = load_digits()
    model = dcframe.read_model(MODEL)
    params = {name: np.array(model[name].array) for name in model}
    calib = calibration(params, x_train[np.random.default_rng(0).permutation(len(x_train))[:args.samples]])
    print(f"bundled LeNet-300-100, no retraining; calibration: {args.samples} training digits; accuracy on the "
          f"{len(y_test)} test digits; dense: {accuracy(params, x_test, y_test):.2%}\n")
    print("| sparsity | magnitude | wanda | sparsegpt |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for sparsity in (float(s) for s in args.sparsities.split(",")):
            row = []
            for criterion in ("magnitude", "wanda", "sparsegpt"):
                path = Path(tmp) / f"{criterion}.dcf"
                dcframe.compress(params, path, pipeline=f'prune(sparsity={sparsity}, criterion="{criterion}") | zstd',
                                 calibration=calib, stats=False)
                decoded = {name: d.array for name, d in dcframe.decompress(path).items()}
                row.append(f"{accuracy(decoded, x_test, y_test):.2%}")
            print(f"| {sparsity:.0%} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
