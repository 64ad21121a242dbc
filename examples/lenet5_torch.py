"""Deep Compression of a LeNet-5 in PyTorch: train, prune, retrain, quantize, retrain the centroids, Huffman-code.

The paper's LeNet-5 (Han et al. 2016, Table 3: conv 20 5x5, pool, conv 50 5x5, pool, fc 500, fc 10; 431,080
parameters) on the digits bundled with dcframe, resampled to 28x28, trained on the CPU in well under a minute:

    pip install 'dcframe[torch]'
    python examples/lenet5_torch.py [--output lenet5.dcf] [--epochs 8] [--threads 1] [--json]

It prints the dense accuracy, the accuracy after each step, the compression ratio and the paper's per-layer table.
Chains come from dcframe.bindings.torchio.layer_rules (conv weights han-conv, linear weights han-fc, by module type) with the
paper's per-layer pruning rates for LeNet-5.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dcframe import decompress, parse_pipeline
from dcframe.console import note
from dcframe.analysis.demo import layer_table, load_digits
from dcframe.bindings.torchio import compress_module, layer_rules, load_module
from dcframe.bindings.torchretrain import TorchRetrainer

# Fraction of weights kept per layer in the paper's LeNet-5 (Table 3): 66%, 12%, 8%, 19%.
PAPER_SPARSITY = {"conv1.weight": 0.34, "conv2.weight": 0.88, "fc1.weight": 0.92, "fc2.weight": 0.81}
PAPER = {"ratio": 39, "error_dense": 0.80, "error_compressed": 0.74}  # Table 1, MNIST, top-1 error in %


class LeNet5(nn.Module):
    """Caffe's LeNet-5 as in the paper: conv 20 5x5, max-pool 2, conv 50 5x5, max-pool 2, fc 500, ReLU, fc 10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(800, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.conv1(x), 2)
        x = F.max_pool2d(self.conv2(x), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The bundled digits as (x_train, y_train, x_test, y_test) tensors, images 1x28x28 in [0, 1]."""
    x_train, y_train, x_test, y_test = load_digits()
    return (torch.from_numpy(x_train).reshape(-1, 1, 28, 28), torch.from_numpy(y_train),
            torch.from_numpy(x_test).reshape(-1, 1, 28, 28), torch.from_numpy(y_test))


def batches(x: torch.Tensor, y: torch.Tensor, size: int, seed: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """A re-iterable source of shuffled minibatches: a new order (from `seed`) every time it is iterated."""

    class Epochs:
        def __init__(self) -> None:
            self.generator = torch.Generator().manual_seed(seed)

        def __iter__(self):  # noqa: ANN204
            order = torch.randperm(len(x), generator=self.generator)
            return iter([(x[order[i:i + size]], y[order[i:i + size]]) for i in range(0, len(x), size)])

        def __len__(self) -> int:  # batches per epoch: what lets a progress bar show counts and an ETA
            return -(-len(x) // size)

    return Epochs()


def loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of one minibatch: the (model, batch) -> loss closure TorchRetrainer takes."""
    x, y = batch
    return F.cross_entropy(model(x), y)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of `x` classified as `y`."""
    was = model.training
    model.eval()
    correct = int((model(x).argmax(1) == y).sum())
    model.train(was)
    return correct / len(y)


def train_dense(epochs: int = 8, seed: int = 0, lr: float = 1e-3) -> LeNet5:
    """A LeNet-5 trained from a seed on the bundled digits (Adam, batch 32, L2 1e-4)."""
    torch.manual_seed(seed)
    x_train, y_train, _, _ = digits()
    model = LeNet5()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    data = batches(x_train, y_train, 32, seed)
    model.train()
    for _ in range(epochs):
        for batch in data:
            optimizer.zero_grad(set_to_none=True)
            loss(model, batch).backward()
            optimizer.step()
    return model


def paper_table(report: dict[str, Any], path: str) -> list[dict[str, Any]]:
    """The paper's per-layer columns (dcframe.analysis.demo.layer_table), each layer with the index bits of its own chain."""
    decoded = decompress(path)
    by_name = {t["name"]: t for t in report["tensors"]}
    rows = []
    for name, dense in decoded.items():
        if dense.array.ndim < 2:
            continue
        bits = next((s.get_config()["index_bits"] for s in parse_pipeline(by_name[name]["pipeline"])
                     if s.id == "sparse"), 32)
        rows.append(layer_table(report, {name: dense}, bits)[0])
    total = layer_table(report, {r["layer"]: decoded[r["layer"]] for r in rows}, 5)[-1]  # sizes, kept, P+Q+H means
    kept = {r["layer"]: r["weights"] * r["kept_pct"] / 100 for r in rows}
    for key in ("weight_bits_pq", "index_bits_pq"):
        total[key] = sum(r[key] * kept[r["layer"]] for r in rows) / sum(kept.values())
    pq_bytes = sum(r["weights"] * 4 / r["rate_pq"] for r in rows) + sum(
        t["compressed_bytes"] for t in report["tensors"] if t["name"] not in kept) + report["overhead_bytes"]
    total["rate_pq"] = report["original_bytes"] / pq_bytes
    return [*rows, total]


def run(output: str = "lenet5.dcf", epochs: int = 8, prune_epochs: int = 4, quant_epochs: int = 2, seed: int = 0,
        sparsity: dict[str, float] | None = None, progress: Callable[[str], None] | None = None,
        bar: bool = False, jobs: int = 1) -> dict[str, Any]:
    """Train LeNet-5, compress it with retraining into `output`, load the file back; return the numbers.

    `progress` gets the phases and every retraining epoch's loss; `bar` draws a progress bar per phase on stderr."""
    start = time.perf_counter()
    say = progress or (lambda message: None)
    x_train, y_train, x_test, y_test = digits()
    say(f"training the dense LeNet-5 ({epochs} epochs)")
    model = train_dense(epochs, seed)
    acc = {"dense": accuracy(model, x_test, y_test)}

    def on_phase(m: nn.Module, phase: Any, when: str) -> None:
        step = "pruned" if "kmeans" not in phase.stages.values() else "quantized"
        acc[step if when == "before" else f"{step}_retrained"] = accuracy(m, x_test, y_test)
        say(f"{phase}: {when} retraining, test accuracy {acc[step if when == 'before' else step + '_retrained']:.4f}")

    retrainer = TorchRetrainer(
        model, loss=loss, data=batches(x_train, y_train, 32, seed + 1),
        optimizer={"prune": lambda p: torch.optim.Adam(p, lr=1e-3, weight_decay=1e-4),
                   "kmeans": lambda p: torch.optim.Adam(p, lr=1e-4)},
        epochs={"prune": prune_epochs, "kmeans": quant_epochs}, on_phase=on_phase, bar=bar)
    rules = layer_rules(model, sparsity=PAPER_SPARSITY if sparsity is None else sparsity)
    report = compress_module(model, output, rules=rules, retrainer=retrainer, progress=progress, jobs=jobs,
                             metadata={"model": "LeNet-5", "dataset": "UCI digits 28x28 (bundled with dcframe)"})
    loaded = LeNet5()
    load_module(output, loaded)  # strict: every key of the model, nothing else
    acc["final"] = accuracy(loaded, x_test, y_test)
    return {
        "model": "LeNet-5",
        "parameters": sum(p.numel() for p in loaded.parameters()),
        "file": output,
        "file_bytes": report["compressed_bytes"],
        "original_bytes": report["original_bytes"],
        "ratio": report["ratio"],
        "accuracy": acc,
        "accuracy_loss_pp": 100 * (acc["dense"] - acc["final"]),
        "layers": paper_table(report, output),
        "rules": [f"{r.pattern}={r.pipeline}" for r in rules],
        "seconds": time.perf_counter() - start,
    }


def format_result(result: dict[str, Any]) -> str:
    """The result as text: accuracies, ratio and the paper's per-layer table in markdown."""
    a = result["accuracy"]
    lines = [f"{result['model']}: {result['parameters']:,} parameters, {result['original_bytes']:,} bytes as float32 "
             f"-> {result['file_bytes']:,} bytes in {result['file']} ({result['ratio']:.1f}x; paper: {PAPER['ratio']}x "
             f"on MNIST)", ""]
    lines.append("| model | test accuracy |")
    lines.append("|---|---|")
    for key in ("dense", "pruned", "pruned_retrained", "quantized", "quantized_retrained", "final"):
        if key in a:
            lines.append(f"| {key.replace('_', ' + ')} | {100 * a[key]:.2f}% |")
    lines += ["", "| layer | #weights | weights kept | weight bits P+Q | weight bits P+Q+H | index bits P+Q "
              "| index bits P+Q+H | compress rate P+Q | compress rate P+Q+H |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["layers"]:
        lines.append(f"| {r['layer']} | {r['weights']:,} | {r['kept_pct']:.1f}% | {r['weight_bits_pq']:.1f} | "
                     f"{r['weight_bits_pqh']:.1f} | {r['index_bits_pq']:.1f} | {r['index_bits_pqh']:.1f} | "
                     f"{r['rate_pq']:.1f}x | {r['rate_pqh']:.1f}x |")
    lines.append(f"\naccuracy lost: {result['accuracy_loss_pp']:.2f} points; {result['seconds']:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="lenet5.dcf")
    parser.add_argument("--epochs", type=int, default=8, help="dense training epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: fastest for this small network on a busy machine)")
    parser.add_argument("--jobs", type=int, default=1, help="processes encoding the final weights (same bytes)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run(args.output, args.epochs, seed=args.seed,
                 progress=None if args.json else note, bar=not args.json, jobs=args.jobs)
    print(json.dumps(result, indent=2) if args.json else format_result(result))
    return 0 if math.isfinite(result["ratio"]) else 1


if __name__ == "__main__":
    sys.exit(main())
