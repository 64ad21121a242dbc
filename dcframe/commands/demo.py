"""`dcframe demo`: the bundled LeNet-300-100 through prune -> retrain -> quantize -> retrain -> Huffman, as a table."""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from dcframe import console
from dcframe.analysis.demo import DemoSettings, plot_sweep, require_matplotlib, run_demo, run_sweep, sweep_points
from dcframe.console import Col, fit_table, short_pipeline
from dcframe.core.errors import DcfError

DEFAULT_OUTPUT = "lenet-300-100.dcf"


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="compress the bundled LeNet-300-100 with retraining; print the paper's table",
                       description="Deep Compression of the bundled LeNet-300-100 (trained on the bundled digits): "
                                   "prune, retrain, quantize, retrain the centroids, Huffman-code; print the paper's "
                                   "per-layer table (Tables 2-5) and the test accuracy after every step.")
    p.add_argument("-o", "--output", help=f"container to write (default: {DEFAULT_OUTPUT}; not with --sweep, "
                                          "which writes no container)")
    p.add_argument("--prune-epochs", type=int, default=DemoSettings.prune_epochs, metavar="N",
                   help="retraining epochs after pruning (default: %(default)s)")
    p.add_argument("--quant-epochs", type=int, default=DemoSettings.quant_epochs, metavar="N",
                   help="epochs retraining the centroids after quantization (default: %(default)s)")
    p.add_argument("--sweep", action="store_true",
                   help="instead: accuracy against compression rate for pruning only, quantization only and both")
    p.add_argument("--sweep-epochs", type=int, default=0, metavar="N",
                   help="with --sweep: retraining epochs per phase (default: 0, no retraining)")
    p.add_argument("--plot", metavar="FILE", help="with --sweep: draw the figure into FILE (.png/.svg/.pdf; "
                                                  "needs matplotlib)")
    console.add_output_flags(p)
    return p


@contextmanager
def _progress(total: int, enabled: bool):
    """A bar on stderr advanced by (message, units done) calls; a no-op when disabled or not a terminal."""
    if not enabled or not console.stderr.is_terminal:
        yield lambda what, done: None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console.stderr,
                  transient=True) as bar:
        task = bar.add_task("starting", total=total)
        yield lambda what, done: bar.update(task, advance=done, description=what)


def run(args: argparse.Namespace) -> int:
    if args.plot and not args.sweep:
        raise DcfError("--plot draws the sweep: use it with --sweep")
    if args.sweep and args.output:
        raise DcfError(f"-o {args.output}: --sweep writes no container (its files are temporary); "
                       f"use --json for its numbers or --plot FILE for the figure")
    if args.sweep:
        if args.plot:
            require_matplotlib()  # fail before the work, not after
        with _progress(sweep_points(), not args.quiet) as tell:
            sweep = run_sweep(epochs=args.sweep_epochs, progress=tell)
        if args.plot:
            plot_sweep(sweep, Path(args.plot))
        if args.json:
            console.print_json(sweep)
        else:
            _sweep_table(sweep)
            if args.plot:
                console.stdout.print(f"figure written to {args.plot}")
        return 0
    settings = DemoSettings(prune_epochs=args.prune_epochs, quant_epochs=args.quant_epochs)
    with _progress(settings.work, not args.quiet) as tell:
        result = run_demo(args.output or DEFAULT_OUTPUT, settings, progress=tell)
    if args.json:
        console.print_json(result)
    else:
        _tables(result)
    return 0


def _tables(result: dict[str, Any]) -> None:
    heads = ["layer", "#weights", "weights kept", "weight bits P+Q", "weight bits P+Q+H", "index bits P+Q",
             "index bits P+Q+H", "compress rate P+Q", "compress rate P+Q+H"]
    rows = [[r["layer"], f"{r['weights']:,}", f"{r['kept_pct']:.1f}%",
             f"{r['weight_bits_pq']:.1f}" if r["layer"] == "total" else str(r["weight_bits_pq"]),
             f"{r['weight_bits_pqh']:.1f}", f"{r['index_bits_pq']:.1f}", f"{r['index_bits_pqh']:.1f}",
             f"{r['rate_pq']:.1f}x", f"{r['rate_pqh']:.1f}x"] for r in result["layers"]]
    columns = [Col(h, kind="text" if h == "layer" else "number") for h in heads]
    console.stdout.print(fit_table(f"{result['model']} (Han et al. 2016, Tables 2-5 columns): {result['file']}",
                                   columns, rows, sections={len(rows) - 2}))
    a = result["accuracy"]
    steps = {"dense": "dense", "pruned": "pruned", "pruned_retrained": "pruned + retrained",
             "quantized": "quantized", "quantized_retrained": "quantized + retrained", "final": "decoded from file"}
    console.stdout.print(fit_table("test accuracy (500 held-out digits)", [Col(h) for h in steps.values()],
                                   [[f"{100 * a[k]:.2f}%" for k in steps]]))
    change = 100 * (a["final"] - a["dense"])
    console.stdout.print(
        f"{result['parameters']:,} parameters: {result['original_bytes']:,} bytes as float32 -> "
        f"{result['file_bytes']:,} bytes in {escape(str(result['file']))}: [bold]{result['ratio']:.1f}x[/bold], "
        f"accuracy {100 * a['dense']:.2f}% -> {100 * a['final']:.2f}% ({change + 0.0:+.2f} points) "
        f"in {result['seconds']:.1f} s")


def _sweep_table(sweep: dict[str, Any]) -> None:
    retrain = f"retrained {sweep['epochs']} epochs per phase" if sweep["epochs"] else "no retraining"
    rows, sections = [], set()
    for kind, points in sweep["series"].items():
        for i, p in enumerate(points):
            rows.append([kind if i == 0 else "", short_pipeline(p["pipeline"]), f"{p['ratio']:.1f}x",
                         f"{100 * p['accuracy']:.2f}%", f"{100 * (p['accuracy'] - sweep['dense_accuracy']):+.2f}"])
        sections.add(len(rows) - 1)
    columns = [Col("method", kind="label"), Col("weight pipeline", kind="text"), Col("compress rate"),
               Col("accuracy"), Col("vs dense")]
    console.stdout.print(fit_table(f"accuracy vs compression rate ({retrain}); dense accuracy "
                                   f"{100 * sweep['dense_accuracy']:.2f}%", columns, rows, sections))
