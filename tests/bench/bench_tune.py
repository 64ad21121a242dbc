"""`dcframe tune` on the bundled LeNet-300-100: file ratio and accuracy per grid and goal, with and without retraining.

    python tests/bench/bench_tune.py [--budget 0.005] [--quick]

Every row chooses on the validation split of the training digits only (tune.lenet_evaluators: accuracy for a
budget, the mean log-likelihood of the true digit for a target ratio, as the CLI does); retraining
(dcframe.analysis.tune.lenet_retrainer: the demo's loop) sees only the other training digits. The 500 test digits are
evaluated once per row, on the chosen model's file, never used to choose. References measured in the same run: the
lossless file (the "vs lossless" column), the dense model's accuracies, and the demo's hand-picked rates (prune 0.96 /
0.92 / 0.75, 5 bits, retrained on all training digits). Targets: issue #12, retrained, >= 60x at test accuracy
within 0.4 points of the dense model; issue #13, uniform + rans retrained (the uniform-rans row), >= 60x at no loss.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from dcframe import compress, decompress
from dcframe.analysis.demo import MODEL, load_model, run_demo
from dcframe.analysis.tune import LENET_METRICS, lenet_evaluators, lenet_retrainer, tune


def rows(budget: float, quick: bool) -> list[tuple[str, str, dict]]:
    """(label, validation metric chosen on, tune() keywords) per row: accuracy for a budget (its unit), the mean
    log-likelihood for a target ratio (as `dcframe tune` chooses for the bundled LeNet)."""
    out = [("uniform grid, no retraining", "accuracy", {"budget": budget, "grid": "uniform"}),
           ("wide grid, no retraining", "accuracy", {"budget": budget, "grid": "wide"}),
           ("paper grid, retrained, budget 0", "accuracy", {"budget": 0.0, "grid": "paper",
                                                            "retrainer": lenet_retrainer()}),
           ("paper grid, retrained, target 60x", "loglik", {"target_ratio": 60.0, "grid": "paper",
                                                             "retrainer": lenet_retrainer()}),
           ("uniform-rans grid, retrained, budget 0", "accuracy", {"budget": 0.0, "grid": "uniform-rans",
                                                                   "retrainer": lenet_retrainer()}),
           ("uniform-rans grid, retrained, target 60x", "loglik", {"target_ratio": 60.0, "grid": "uniform-rans",
                                                                    "retrainer": lenet_retrainer()}),
           ("uniform-rans grid, retrained, target 60x (reference: chosen on accuracy)", "accuracy",
            {"target_ratio": 60.0, "grid": "uniform-rans", "retrainer": lenet_retrainer()})]
    return out[:1] + out[2:3] if quick else out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=0.005, help="validation loss for the rows without retraining")
    parser.add_argument("--quick", action="store_true", help="two rows only")
    parser.add_argument("--rows", default="", metavar="I,J", help="only these rows (0-based, e.g. 4 for uniform-rans)")
    args = parser.parse_args()
    model = load_model(MODEL)
    val, test = lenet_evaluators("accuracy")
    metrics = {m: lenet_evaluators(m)[0] for m in LENET_METRICS}
    dense_test = test(model)
    with tempfile.TemporaryDirectory() as tmp:
        lossless = compress(model, Path(tmp) / "exact.dcf")["compressed_bytes"]
        start = time.perf_counter()
        demo = run_demo(Path(tmp) / "demo.dcf")
        demo_s = time.perf_counter() - start
        print(f"dense: validation accuracy {val(model):.2%}, log-likelihood {metrics['loglik'](model):.4f}; "
              f"test {dense_test:.2%}; lossless file {lossless:,} bytes\n")
        print("| row | chosen on | file bytes | ratio vs original | vs lossless | validation accuracy "
              "| validation log-likelihood | test | test loss (points) | tune s | evaluations |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        print(f"| demo's hand-picked rates (reference) | - | {demo['file_bytes']:,} | {demo['ratio']:.1f}x "
              f"| {lossless / demo['file_bytes']:.1f}x | - | - | {demo['accuracy']['final']:.2%} "
              f"| {100 * (dense_test - demo['accuracy']['final']):.1f} | {demo_s:.1f} | - |")
        picked = [int(i) for i in args.rows.split(",") if i]
        table = rows(args.budget, args.quick)
        chosen = []
        for label, metric, kwargs in [table[i] for i in picked] if picked else table:
            path = Path(tmp) / "tuned.dcf"
            start = time.perf_counter()
            result = tune(model, metrics[metric], save=path, **kwargs)
            seconds = time.perf_counter() - start
            decoded = {n: d.values() for n, d in decompress(path).items()}
            size = path.stat().st_size
            acc = test(decoded)  # once, on the file
            print(f"| {label} | {metric} | {size:,} | {result.original_bytes / size:.1f}x | {lossless / size:.1f}x "
                  f"| {val(decoded):.2%} | {metrics['loglik'](decoded):.4f} | {acc:.2%} "
                  f"| {100 * (dense_test - acc):.1f} | {seconds:.1f} | {result.evaluations} |", flush=True)
            chosen.append(f"- {label}: " + "; ".join(result.rules))
        print("\nchosen settings (rules):", *chosen, sep="\n")


if __name__ == "__main__":
    main()
