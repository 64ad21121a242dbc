"""`dcframe tune` on the bundled LeNet-300-100, no retraining: file ratio and accuracy for a budget, per step grid.

    python tests/bench/bench_tune.py [--budget 0.005]

Each row tunes on the validation split of the training digits (dcframe.tune.lenet_evaluators), compresses with the
rules, decodes the file and reports its ratio, its validation and test accuracy (the 500 test digits were never used
to choose) and the tuning time. Reference in the same run: the lossless file (ratio column against it) and the
dense model's accuracies.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from dcframe import compress, decompress
from dcframe.demo import MODEL, load_model
from dcframe.tune import DEFAULT_REL_STEPS, lenet_evaluators, tune

GRIDS = {"default": DEFAULT_REL_STEPS, "wide": (*DEFAULT_REL_STEPS, 0.75, 1.0, 1.5, 2.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=0.005)
    args = parser.parse_args()
    model = load_model(MODEL)
    val, test = lenet_evaluators()
    with tempfile.TemporaryDirectory() as tmp:
        lossless = compress(model, Path(tmp) / "exact.dcf")["compressed_bytes"]
        print(f"budget {args.budget}; dense: validation {val(model):.2%}, test {test(model):.2%}; "
              f"lossless file {lossless:,} bytes\n")
        print("| grid | steps | file bytes | ratio vs original | vs lossless | validation | test | tune s |")
        print("|---|---|---|---|---|---|---|---|")
        for label, steps in GRIDS.items():
            start = time.perf_counter()
            result = tune(model, val, args.budget, steps)
            seconds = time.perf_counter() - start
            report = compress(model, Path(tmp) / f"{label}.dcf", rules=result.rules)
            decoded = {n: d.values() for n, d in decompress(Path(tmp) / f"{label}.dcf").items()}
            print(f"| {label} | {','.join(map(str, steps))} | {report['compressed_bytes']:,} | {report['ratio']:.1f}x "
                  f"| {lossless / report['compressed_bytes']:.1f}x | {val(decoded):.2%} | {test(decoded):.2%} "
                  f"| {seconds:.1f} |")


if __name__ == "__main__":
    main()
