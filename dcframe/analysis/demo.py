"""The bundled LeNet-300-100 through prune -> retrain -> quantize -> retrain centroids -> Huffman, as data.

Everything the `dcframe demo` command prints comes from run_demo(): the paper's per-layer table (Han et al. 2016,
Tables 2-5), the accuracy after each step, and the sweep of accuracy against compression rate.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from dcframe.analysis.mlp import accuracy, train
from dcframe.analysis.retrain import Constraints, PhaseInfo, compress_with_retraining
from dcframe.api import decompress
from dcframe.core.errors import DcfError
from dcframe.core.streams import Dense
from dcframe.io.modelio import read_model

DATA = Path(__file__).resolve().parent.parent / "data"  # dcframe/data
DIGITS = DATA / "digits.npz"
MODEL = DATA / "lenet_300_100.safetensors"
EXACT = "zstd(level=19)"  # the biases' chain, named (not the lossless preset's, which may change): the same file


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


@dataclass(frozen=True)
class DemoSettings:
    """The demo's compression and retraining settings (per-layer pruning as in the paper's Table 1 for LeNet)."""

    sparsity: tuple[tuple[str, float], ...] = (("fc1.weight", 0.96), ("fc2.weight", 0.92), ("fc3.weight", 0.75))
    weight_bits: int = 5
    index_bits: int = 5
    prune_epochs: int = 8
    quant_epochs: int = 4
    prune_lr: float = 1e-3
    quant_lr: float = 3e-4
    batch_size: int = 32
    weight_decay: float = 1e-4
    seed: int = 0
    coder: str = "huffman"  # the entropy coder of both streams, as the paper; "rans" gives the han-rans chain
    exact: str = EXACT  # the chain of the biases

    def rules(self) -> list[str]:
        """One rule per weight matrix; biases fall through to `exact`. k-means as the paper: linear init
        and plain Lloyd, since the centroids are retrained (the near-optimal default gives 52.0x at 97.60% here)."""
        return [f"{name}=prune(sparsity={s}) | sparse(index_bits={self.index_bits}) | kmeans(bits={self.weight_bits}, "
                f"init=linear, method=lloyd) | {self.coder}" for name, s in self.sparsity]

    @property
    def work(self) -> int:
        """Units of progress: one per training epoch, one per phase's approximation, one to write and check."""
        return self.prune_epochs + self.quant_epochs + 3


Progress = Callable[[str, int], None]  # (what is happening, units of work just finished)


def load_model(path: str | Path = MODEL) -> dict[str, np.ndarray]:
    """The bundled LeNet-300-100 as float32 arrays."""
    model = read_model(path)
    return {name: model[name].array for name in model}


def evaluate(params: Mapping[str, np.ndarray | Dense]) -> float:
    """Test accuracy of LeNet-300-100 weights (numpy arrays or decoded Dense tensors) on the bundled digits."""
    arrays = {k: (v.values() if isinstance(v, Dense) else np.asarray(v, np.float32)) for k, v in params.items()}
    _, _, x_test, y_test = load_digits()
    return accuracy(arrays, x_test, y_test)


def run_demo(output: str | Path = "lenet-300-100.dcf", settings: DemoSettings | None = None,
             progress: Progress | None = None) -> dict[str, Any]:
    """Prune, retrain, quantize, retrain centroids, Huffman-code and write `output`; return the table as data."""
    settings = settings or DemoSettings()
    tell = progress or (lambda what, done: None)
    x_train, y_train, _, _ = load_digits()
    model = load_model()
    accuracies: dict[str, float] = {"dense": evaluate(model)}

    def retrainer(weights: dict[str, np.ndarray], constraints: Mapping[str, Constraints],
                  phase: PhaseInfo) -> dict[str, np.ndarray]:
        pruning = "prune" in phase.stages.values() and phase.index == 1
        before, after = ("pruned", "pruned_retrained") if pruning else ("quantized", "quantized_retrained")
        accuracies[before] = evaluate(weights)
        tell(f"{phase}: retraining", 1)
        out = train(weights, x_train, y_train, epochs=settings.prune_epochs if pruning else settings.quant_epochs,
                    lr=settings.prune_lr if pruning else settings.quant_lr, batch_size=settings.batch_size,
                    weight_decay=settings.weight_decay, seed=settings.seed + phase.index, constraints=constraints,
                    on_epoch=lambda epoch, loss: tell(f"{phase}: epoch {epoch}, loss {loss:.4f}", 1))
        accuracies[after] = evaluate(out)
        return out

    start = time.perf_counter()
    report = compress_with_retraining(model, output, retrainer, pipeline=settings.exact, rules=settings.rules(),
                                      stats=False,
                                      metadata={"model": "LeNet-300-100", "dataset": "UCI digits 28x28 (bundled)"},
                                      progress=lambda message: tell(message, 0))
    tell("checking the written file", 1)
    decoded = decompress(output)
    accuracies["final"] = evaluate(decoded)
    if accuracies["final"] != accuracies.get("quantized_retrained"):
        raise DcfError(f"{output}: decoded weights score {accuracies['final']:.4f}, the retrained ones "
                       f"{accuracies.get('quantized_retrained')}: the container does not hold what was retrained")
    return {
        "model": "LeNet-300-100",
        "parameters": int(sum(v.size for v in model.values())),
        "file": str(output),
        "file_bytes": report["compressed_bytes"],
        "original_bytes": report["original_bytes"],
        "ratio": report["ratio"],
        "accuracy": accuracies,
        "accuracy_loss_pp": 100 * (accuracies["dense"] - accuracies["final"]),
        "layers": layer_table(report, decoded, settings.index_bits),
        "rules": settings.rules(),
        "seconds": time.perf_counter() - start,
        "report": report,
    }


def _position_entries(mask: np.ndarray, index_bits: int) -> int:
    """How many relative indices `sparse` stores for a mask: one per kept weight plus a filler per 2^b - 1 gap."""
    kept = np.flatnonzero(mask.reshape(-1))
    gaps = np.diff(kept, prepend=-1)
    return int(kept.size + ((gaps - 1) // ((1 << index_bits) - 1)).sum())


def layer_table(report: dict[str, Any], decoded: Mapping[str, Dense], index_bits: int) -> list[dict[str, Any]]:
    """The paper's per-layer columns (Tables 2-5) for every weight matrix, plus a total row over the whole file.

    weights kept: non-zeros after pruning. Bits are per kept weight. P+Q: fixed-width code (index_bits per stored
    relative index, fillers included; ceil(log2(clusters)) per weight) plus the float32 codebook. P+Q+H: the stream
    bytes as stored. Compress rate P+Q+H: 4 bytes per weight against the tensor's whole record in the file.
    """
    rows = []
    by_name = {t["name"]: t for t in report["tensors"]}
    for name, dense in decoded.items():
        values = dense.values()
        if values.ndim < 2:
            continue
        t = by_name[name]
        n = values.size
        mask = values != 0
        kept = int(mask.sum())
        clusters = int(np.unique(values[mask]).size)
        wbits = max(1, math.ceil(math.log2(clusters))) if clusters > 1 else 1
        entries = _position_entries(mask, index_bits)
        pq_bits = entries * index_bits + kept * wbits + 32 * clusters
        streams = t["streams"]
        rows.append({
            "layer": name,
            "weights": n,
            "kept_pct": 100 * kept / n,
            "weight_bits_pq": wbits,
            "weight_bits_pqh": 8 * streams.get("values", 0) / kept if kept else 0.0,
            "index_bits_pq": entries * index_bits / kept if kept else 0.0,
            "index_bits_pqh": 8 * streams.get("positions", 0) / kept if kept else 0.0,
            "rate_pq": 32 * n / pq_bits,
            "rate_pqh": t["original_bytes"] / t["compressed_bytes"],
        })
    weights = sum(r["weights"] for r in rows)
    kept = sum(r["weights"] * r["kept_pct"] / 100 for r in rows)

    def mean(key: str) -> float:  # averaged over kept weights, as the paper's total row
        return sum(r[key] * r["weights"] * r["kept_pct"] / 100 for r in rows) / kept if kept else 0.0

    pq_total = sum(32 * r["weights"] / r["rate_pq"] for r in rows) / 8 + sum(
        t["compressed_bytes"] for t in report["tensors"] if t["name"] not in {r["layer"] for r in rows})
    rows.append({
        "layer": "total",
        "weights": int(report["original_bytes"] // 4),
        "kept_pct": 100 * kept / weights if weights else 0.0,
        "weight_bits_pq": mean("weight_bits_pq"),
        "weight_bits_pqh": mean("weight_bits_pqh"),
        "index_bits_pq": mean("index_bits_pq"),
        "index_bits_pqh": mean("index_bits_pqh"),
        "rate_pq": report["original_bytes"] / (pq_total + report["overhead_bytes"]),
        "rate_pqh": report["ratio"],
    })
    return rows


# --- the sweep: accuracy against compression rate (the paper's Figure 6) -------------------------------------------
SWEEP = {
    "pruning": [f"prune(sparsity={s}, scope=global) | sparse(index_bits=5) | huffman"
                for s in (0.5, 0.7, 0.8, 0.9, 0.93, 0.95, 0.97, 0.98)],
    "quantization": [f"kmeans(bits={b}) | huffman" for b in (8, 6, 5, 4, 3, 2, 1)],
    "pruning+quantization": [f"prune(sparsity={s}, scope=global) | sparse(index_bits=5) | kmeans(bits={b}) | huffman"
                             for s, b in ((0.8, 6), (0.9, 5), (0.93, 5), (0.95, 4), (0.97, 4), (0.98, 3),
                                          (0.99, 3))],
}


def run_sweep(epochs: int = 0, settings: DemoSettings | None = None, progress: Progress | None = None,
              directory: str | Path | None = None) -> dict[str, Any]:
    """Accuracy against file compression rate for pruning only, quantization only and both, over every weight matrix.

    With epochs=0 nothing is retrained (each point is the plain approximation); otherwise every phase retrains for
    `epochs` epochs. Returns {"dense_accuracy", "epochs", "series": {name: [{"pipeline", "ratio", "accuracy"}]}}.
    """
    settings = settings or DemoSettings()
    tell = progress or (lambda what, done: None)
    x_train, y_train, _, _ = load_digits()
    model = load_model()

    def retrainer(weights, constraints, phase):  # noqa: ANN001 - the dcframe.analysis.retrain protocol
        if not epochs:
            return weights
        return train(weights, x_train, y_train, epochs=epochs, lr=settings.quant_lr if phase.index > 1 else
                     settings.prune_lr, batch_size=settings.batch_size, weight_decay=settings.weight_decay,
                     seed=settings.seed + phase.index, constraints=constraints)

    series: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        path = Path(tmp) / "sweep.dcf"
        for kind, pipelines in SWEEP.items():
            for pipeline in pipelines:
                tell(f"sweep: {kind}: {pipeline}", 1)
                report = compress_with_retraining(model, path, retrainer, pipeline=settings.exact,
                                                  rules=[f"*.weight={pipeline}"], stats=False)
                series.setdefault(kind, []).append(
                    {"pipeline": pipeline, "ratio": report["ratio"], "accuracy": evaluate(decompress(path))})
    return {"dense_accuracy": evaluate(model), "epochs": epochs, "series": series}


def sweep_points() -> int:
    """Units of progress of run_sweep."""
    return sum(len(p) for p in SWEEP.values())


def require_matplotlib() -> Any:
    """matplotlib.pyplot (non-interactive backend), or a DcfError saying how to install it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DcfError("plotting needs matplotlib, which is not installed: pip install 'dcframe[plot]' "
                       "(or pip install matplotlib)") from None
    return plt


def plot_sweep(sweep: dict[str, Any], path: str | Path) -> None:
    """Draw the sweep as the paper's figure (accuracy against compression rate); needs matplotlib."""
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (kind, points), marker in zip(sweep["series"].items(), "osd^", strict=False):
        ax.plot([p["ratio"] for p in points], [100 * p["accuracy"] for p in points], marker=marker, label=kind)
    ax.axhline(100 * sweep["dense_accuracy"], color="gray", linestyle="--", label="dense model")
    ax.set_xscale("log")
    ax.set_xlabel("compression rate (file size vs float32)")
    ax.set_ylabel("test accuracy (%)")
    retrain = f"retrained {sweep['epochs']} epochs per phase" if sweep["epochs"] else "no retraining"
    ax.set_title(f"LeNet-300-100 on digits: accuracy vs compression ({retrain})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
