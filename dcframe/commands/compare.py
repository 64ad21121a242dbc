"""`dcframe compare IN`: what each stage buys, and Huffman against generic coders on the same streams."""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
from pathlib import Path
from typing import Any

from dcframe import console
from dcframe.analysis.compare import DEFAULT_CODERS, DEFAULT_PRESET, DEFAULT_SAMPLE_BYTES, SLOW_CODERS, compare_model
from dcframe.core.errors import DcfError
from dcframe.io.modelio import read_model

PLOT_FORMATS = (".png", ".svg")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "compare", help="stage-by-stage sizes; Huffman vs zstd/lzma/bz2/zlib on the same streams",
        description="Run each tensor's chain stage by stage, code the streams its lossy prefix leaves (and the raw "
                    "weights) with Huffman and with generic coders, and code the raw model losslessly, plain and "
                    "byte-grouped. Every coder's output is decoded and checked before it is reported.")
    p.add_argument("input", help="model file (.safetensors .npz .npy .pt)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("-p", "--pipeline", help='stage chain, e.g. "prune(sparsity=0.9) | sparse | kmeans | huffman"')
    group.add_argument("--preset", help=f"named per-tensor rules (default: {DEFAULT_PRESET})")
    p.add_argument("--coders", default=",".join(DEFAULT_CODERS),
                   help=f"comma-separated coders; id-N sets a level (default: the fast %(default)s; the slow "
                        f"{','.join(SLOW_CODERS)} only when named)")
    p.add_argument("--sample-mib", type=float, default=DEFAULT_SAMPLE_BYTES / 2**20, metavar="N",
                   help="code the raw weights (weights row, lossless baselines) on a sample of about N MiB when the "
                        "model is bigger: evenly spaced chunks of every tensor; 0: the whole model "
                        "(default: %(default)g)")
    p.add_argument("--repeat", type=int, default=3, metavar="N",
                   help="time each encode and decode N times and report the median (default: %(default)s)")
    p.add_argument("--plot", metavar="FILE", help="also draw the sizes to FILE.png or FILE.svg (needs dcframe[plot])")
    console.add_output_flags(p, json_help="print every number as one JSON object (schema dcframe.compare/1)")
    return p


def check_plot_target(path: str) -> None:
    """Fail before measuring if the plot cannot be written: unknown format or matplotlib missing."""
    if Path(path).suffix.lower() not in PLOT_FORMATS:
        raise DcfError(f"--plot {path}: the file name must end in .png or .svg")
    if importlib.util.find_spec("matplotlib") is None:
        raise DcfError("--plot needs matplotlib, which is not installed; run: pip install 'dcframe[plot]'")


def run(args: argparse.Namespace) -> int:
    if args.repeat < 1:
        raise DcfError(f"--repeat {args.repeat}: must be at least 1")
    if not (args.sample_mib >= 0 and math.isfinite(args.sample_mib)):
        raise DcfError(f"--sample-mib {args.sample_mib}: must be 0 (the whole model) or a size in MiB")
    if args.plot:
        check_plot_target(args.plot)
    tensors = read_model(args.input)
    budget = max(1, round(args.sample_mib * 2**20)) if args.sample_mib > 0 else None

    def progress(label: str, total: int):
        return console.progress_bar(total, label, enabled=not args.quiet)

    report = compare_model(tensors, pipeline=args.pipeline, preset=args.preset, coders=args.coders,
                           repeat=args.repeat, file=str(args.input), file_bytes=os.path.getsize(args.input),
                           progress=progress, sample_bytes=budget)
    if args.plot:
        plot(report, args.plot)
    if args.json:
        console.print_json(report)
    else:
        print_tables(report)
        if args.plot:
            console.stdout.print(f"plot written to {args.plot}")
    return 0


def _best(row: dict[str, Any], marks: dict[str, Any], name: str) -> str:
    labels = [label for key, label in (("smallest", "smallest"), ("fastest_encode", "fastest enc"),
                                       ("fastest_decode", "fastest dec")) if marks.get(key) == name]
    return ", ".join(labels)


def sample_text(sample: dict[str, Any]) -> str:
    """What the raw-bytes measurements coded, for a table title: the whole model, or which sample of it."""
    if not sample["sampled"]:
        return f"the whole model ({console.human_bytes(sample['bytes'])})"
    return (f"a sample of {console.human_bytes(sample['bytes'])} of {console.human_bytes(sample['of_bytes'])} "
            f"({sample['bytes'] / sample['of_bytes']:.1%}, {sample['chunks']} chunks)")


def print_tables(report: dict[str, Any]) -> None:
    """The three parts of a compare report as tables that cut no name or number at any width, smallest and fastest
    rows marked."""
    out, Col = console.stdout, console.Col
    for group in report["pipelines"]:
        steps = group["steps"]
        columns = [Col("tensor", "text"), *(Col("original" if s["stage"] == "input" else s["stage"]) for s in steps),
                   Col("ratio"), Col("packed ratio")]
        rows = [[r["name"], *[console.human_bytes(s["total_bytes"]) for s in r["steps"]], f"{r['ratio']:.2f}x",
                 f"{r['steps'][-1]['packed_ratio']:.2f}x"]
                for r in report["tensors"] if r["name"] in set(group["tensors"])]
        sections = ()
        if len(rows) > 1:
            sections = (len(rows) - 1,)
            rows.append(["total", *[console.human_bytes(s["total_bytes"]) for s in steps], f"{steps[-1]['ratio']:.2f}x",
                         f"{steps[-1]['packed_ratio']:.2f}x"])
        out.print(console.fit_table(f"stage by stage: {group['pipeline']}", columns, rows, sections))
    out.print("(sizes after each stage include every stage's metadata so far; "
              "packed ratio counts symbols at ceil(log2 alphabet) bits, as the paper does)", markup=False)
    for case in report["streams"]:
        count = case["count"]
        unit = "bytes of weights" if case["name"] == "weights" else "symbols"
        bound = case["entropy_bits"] / count if count else 0.0
        of = f", {sample_text(case['sample'])}" if case.get("sample", {}).get("sampled") else ""
        columns = [Col("coder", "label"), Col("bytes"), Col("side info"), Col("bits/ symbol"), Col("vs bound"),
                   Col("encode MB/s"), Col("decode MB/s"), Col("best", "text")]
        rows = []
        for row in case["coders"]:
            if row["error"]:
                rows.append([row["coder"], "", "", "", "", "", "", f"error: {row['error']}"])
                continue
            rows.append([row["coder"], str(row["bytes"]), str(row["meta_bytes"]), f"{row['bits_per_symbol']:.3f}",
                         f"{row['over_bound']:+.2%}" if row["over_bound"] is not None else "",
                         console.mb_s(row["encode_mb_s"]), console.mb_s(row["decode_mb_s"]),
                         _best(row, case, row["coder"])])
        title = (f"{case['name']}: {count} {unit}{of}, alphabet {case['alphabet']}, order-0 bound "
                 f"{console.human_bytes(case['entropy_bytes'])} ({bound:.3f} bits/symbol)")
        out.print(console.fit_table(title, columns, rows))
    base = report["baselines"]
    columns = [Col("transform", "label"), Col("coder", "label"), Col("bytes"), Col("ratio"), Col("bits/ weight"),
               Col("vs bound"), Col("encode MB/s"), Col("decode MB/s"), Col("best", "text")]
    rows = []
    for row in base["rows"]:
        if row["error"]:
            rows.append([row["transform"], row["coder"], "", "", "", "", "", "", f"error: {row['error']}"])
            continue
        over = row["over_bound"]
        rows.append([row["transform"], row["coder"], str(row["bytes"]), f"{row['ratio']:.3f}x",
                     f"{row['bits_per_weight']:.2f}", f"{over:+.2%}" if over is not None else "",
                     console.mb_s(row["encode_mb_s"]), console.mb_s(row["decode_mb_s"]),
                     _best(row, base, f"{row['transform']}:{row['coder']}")])
    out.print(console.fit_table(f"lossless baselines on {sample_text(base['sample'])}, plain and byte-grouped "
                                f"({base['planes']} planes)", columns, rows))
    if base["sample"]["sampled"]:
        out.print(f"(sampled: the same share of every tensor, as evenly spaced chunks of at most "
                  f"{console.human_bytes(base['sample']['chunk_bytes'])}; --sample-mib 0 codes the whole model)")
    best = max((r["ratio"] for r in base["rows"] if r["ratio"]), default=0.0)
    out.print(f"chain: {console.human_bytes(report['original_bytes'])} -> {console.human_bytes(report['final_bytes'])}"
              f" ({report['ratio']:.2f}x, container overhead not counted); best lossless baseline {best:.3f}x"
              f"{' (on the sample)' if base['sample']['sampled'] else ''}")


def plot(report: dict[str, Any], path: str) -> None:
    """Bytes per coder per stream (baselines included) and the stage-by-stage totals, as one PNG or SVG."""
    check_plot_target(path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [(c["name"], c["entropy_bytes"], c["coders"]) for c in report["streams"]]
    for transform in ("none", "bytegroup"):
        rows = [r for r in report["baselines"]["rows"] if r["transform"] == transform]
        bound = rows[0]["entropy_bits"] / 8 if rows else 0.0
        groups.append((f"lossless, {'plain' if transform == 'none' else 'byte-grouped'}", bound, rows))
    fig = plt.figure(figsize=(3.2 * len(groups), 8.5))
    grid = fig.add_gridspec(2, len(groups))
    colors = {c: f"C{i}" for i, c in enumerate(report["coders"])}
    for i, (title, bound, rows) in enumerate(groups):
        ax = fig.add_subplot(grid[0, i])
        rows = [r for r in rows if r["bytes"] is not None]
        sizes = [r["bytes"] + r["meta_bytes"] for r in rows]
        ax.bar(range(len(rows)), sizes, color=[colors[r["coder"]] for r in rows])
        ax.axhline(bound, color="black", linestyle="--", linewidth=1, label="order-0 bound")
        low = min([*sizes, bound]) if sizes else 0
        ax.set_ylim(0.9 * low, 1.04 * max([*sizes, bound, 1]))  # zoomed: the differences are a few percent
        ax.set_xticks(range(len(rows)), [r["coder"] for r in rows], rotation=45, ha="right")
        ax.set_title(title, fontsize="medium")
        if i == 0:
            ax.set_ylabel("bytes incl. side information (axis not from 0)")
            ax.legend(fontsize="small")
    ax = fig.add_subplot(grid[1, :])
    labels, sizes, ratios = [], [], []
    for n, group in enumerate(report["pipelines"]):
        for step in group["steps"]:
            labels.append(f"{'original' if step['stage'] == 'input' else step['stage']}\n[{n + 1}]")
            sizes.append(step["total_bytes"])
            ratios.append(step["ratio"])
    bars = ax.bar(range(len(sizes)), sizes, color="tab:gray")
    for bar, ratio in zip(bars, ratios, strict=True):
        ax.annotate(f"{ratio:.1f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                    va="bottom", fontsize="small")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yscale("log")
    ax.set_ylabel("bytes (log scale)")
    ax.set_title("stage by stage: " + "; ".join(f"[{n + 1}] {g['pipeline']} ({len(g['tensors'])} tensors)"
                                                 for n, g in enumerate(report["pipelines"])), fontsize="small")
    fig.tight_layout()
    try:
        fig.savefig(path)
    finally:
        plt.close(fig)
