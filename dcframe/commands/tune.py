"""`dcframe tune MODEL (--budget B | --target-ratio R) -o RULES.json`: per-tensor sensitivity, an allocation of
settings, a rules file; optionally retrained (the bundled LeNet), plotted, saved."""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path

from dcframe import console
from dcframe.analysis.tune import (
    TuneResult,
    check_goal,
    is_lenet,
    lenet_evaluators,
    lenet_retrainer,
    load_evaluator,
    sweep_size,
    tune,
    write_rules_file,
)
from dcframe.analysis.tunegrid import DEFAULT_GRID, GRIDS, resolve_grid
from dcframe.api import compress
from dcframe.commands import add_force_flag, refuse_existing_output
from dcframe.console import Col, fit_table
from dcframe.core.errors import ConfigError
from dcframe.core.files import TEMP_TAG, refuse_overwriting_input
from dcframe.core.streams import HESSIAN
from dcframe.io.hffolder import is_folder, read_folder
from dcframe.io.modelio import read_model


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("tune", help="choose per-tensor settings for a metric budget or a target ratio; write a rules "
                                    "file",
                       description="Sweep each weight tensor alone over a grid of settings (pruning, k-means bits, "
                                   "uniform steps, lossless), then choose one setting per tensor: the smallest file "
                                   "within --budget of the dense model's metric, or the best metric at --target-ratio; "
                                   "verified end to end; writes a rules file for `compress --rules-file`.")
    p.add_argument("input", help="model file (.safetensors .npz .npy .pt), or a Hugging Face folder (with --text)")
    p.add_argument("-o", "--output", required=True, help="rules file to write (JSON, dcframe.rules/1)")
    p.add_argument("--budget", type=float, help="allowed metric loss against the dense model, on the evaluator's "
                                                "(validation) data")
    p.add_argument("--target-ratio", type=float, metavar="R",
                   help="instead of --budget: the best metric with the file >= R x smaller than the original")
    p.add_argument("--eval", dest="evaluator", metavar="MODULE:FUNCTION",
                   help="metric, higher is better: FUNCTION(dict name -> numpy array) -> float; "
                        "default for the bundled LeNet-300-100, on a validation split of its training digits: "
                        "accuracy with --budget (the budget's unit), the mean log-likelihood of the true digit with "
                        "--target-ratio (it ranks models that all classify the split perfectly)")
    p.add_argument("--grid", default=DEFAULT_GRID, metavar="NAME|FILE",
                   help=f"candidates per tensor: {', '.join(GRIDS)} or a grid file (JSON dcframe.grid/1); "
                        f"default %(default)s")
    p.add_argument("--steps", metavar="R1,R2,...",
                   help="replace the grid's uniform step sizes (relative to each tensor's RMS)")
    p.add_argument("--retrain", action="store_true",
                   help="bundled LeNet-300-100: retrain each verified allocation (the demo's loop, on the training "
                        "digits outside the validation split) and judge it retrained")
    p.add_argument("--pre-budget", type=float, metavar="B",
                   help="with --retrain --budget: the loss allowed before retraining on the first try "
                        "(default: budget + 0.1 x the dense metric)")
    p.add_argument("--save", metavar="FILE.dcf", help="also write the chosen model's container (retrained with "
                                                      "--retrain)")
    p.add_argument("--plot", metavar="FILE.png", help="draw the sensitivity figure and the size-metric frontier "
                                                      "(needs matplotlib: the plot extra)")
    hf = p.add_argument_group("a Hugging Face folder (the hf extra): metric = mean cosine of mean-pooled outputs "
                                   "against the dense model's, no retraining")
    hf.add_argument("--text", metavar="FILE", help="sentences to tune on, one per line (the calibration's)")
    hf.add_argument("--samples", type=int, default=256, help="lines of --text used (default: %(default)s)")
    hf.add_argument("--calibration", metavar="FILE",
                    help="calibration of the same lines (dcframe calibrate): GPTQ steps and weighted distortion; "
                         "give it to compress too when replaying the rules")
    hf.add_argument("--test-text", metavar="FILE", help="held-out sentences, reported once, never used to choose")
    console.add_output_flags(p)
    add_force_flag(p)
    return p


def parse_steps(text: str) -> list[float]:
    """--steps as a list of positive numbers."""
    try:
        steps = [float(s) for s in text.split(",")]
    except ValueError:
        raise ConfigError(f"--steps {text!r}: expected numbers separated by commas, e.g. 0.1,0.2") from None
    if not all(0 < s < math.inf for s in steps):
        raise ConfigError(f"--steps {text!r}: every step must be a number > 0")
    return steps


def run(args: argparse.Namespace) -> int:
    outputs = [Path(p) for p in (args.output, args.save, args.plot) if p]
    for output in outputs:
        refuse_overwriting_input(output, args.input)
        refuse_existing_output(output, args.force, args.input)
    if len(set(outputs)) < len(outputs):
        raise ConfigError("-o, --save and --plot must name different files")
    check_goal(args.budget, args.target_ratio, args.pre_budget)
    if is_folder(args.input):
        if args.retrain or args.plot or args.pre_budget is not None:
            raise ConfigError(f"{args.input}: a model folder is tuned without retraining (no --retrain or "
                              f"--pre-budget) and without --plot")
        return run_pretrained(args, Path(args.output))
    if args.pre_budget is not None and not (args.retrain and args.budget is not None):
        raise ConfigError("--pre-budget applies with --retrain and --budget only")
    grid = resolve_grid(args.grid)
    if args.steps:
        grid = grid.with_steps(parse_steps(args.steps))
    if args.plot:
        from dcframe.analysis.demo import require_matplotlib

        require_matplotlib()  # fail before the work, not after
    evaluate = load_evaluator(args.evaluator) if args.evaluator else None
    model = read_model(args.input)
    tensors = {name: model[name] for name in model}
    test = None
    if (evaluate is None or args.retrain) and not is_lenet(tensors):
        what = "a built-in evaluator" if evaluate is None else "a built-in retrainer"
        raise ConfigError(f"{args.input}: only the bundled LeNet-300-100 has {what}"
                          + (" (give --eval MODULE:FUNCTION)" if evaluate is None else
                             "; from Python, pass tune(..., retrainer=...)"))
    names = {}
    if evaluate is None:
        metric = "accuracy" if args.budget is not None else "loglik"
        evaluate, test = lenet_evaluators(metric)
        names = {"metric": "validation " + ("accuracy" if metric == "accuracy" else "log-likelihood (nats)"),
                 "test_name": "test accuracy"}
    retrainer = lenet_retrainer() if args.retrain else None
    total = sweep_size(tensors, grid=grid)
    with console.progress_bar(total, "sweeping", enabled=not args.quiet, unit="items") as adv:
        result = tune(tensors, evaluate, args.budget, test=test, progress=adv, grid=grid,
                      target_ratio=args.target_ratio, retrainer=retrainer, pre_budget=args.pre_budget,
                      save=args.save)
    if args.plot:
        from dcframe.analysis.tuneplot import plot_tune

        plot_tune(result, args.plot)
    write_rules_file(args.output, result.rules)
    if args.json:
        console.print_json(result.as_dict())
    else:
        show(result, **names)
        replay = "dcframe.compress_with_retraining(..., rules=...)" if result.retrained else \
            f"dcframe compress {args.input} --rules-file {args.output}"
        console.note(f"wrote {len(result.rules)} rules to {args.output}; replay: {replay}")
    return 0


def run_pretrained(args: argparse.Namespace, output: Path) -> int:
    """A Hugging Face folder: tune on the outputs for --text's lines (dcframe.analysis.tunehf)."""
    from dcframe.analysis.tune import tunable
    from dcframe.analysis.tunehf import EmbeddingMetric, ModelSlot, tune_pretrained
    from dcframe.analysis.tunehf import sweep_size as hf_sweep_size
    from dcframe.bindings.hf import load_pretrained, read_lines
    from dcframe.io.calibration import Calibration

    if not args.text:
        raise ConfigError(f"{args.input}: a model folder is tuned on its outputs: give --text FILE "
                          f"(one sentence per line)")
    if args.samples < 1:
        raise ConfigError(f"--samples {args.samples}: give at least 1")
    folder = read_folder(args.input)
    tensors = {name: folder[name] for name in folder}
    calibration = Calibration.load(args.calibration) if args.calibration else None
    lines = read_lines(args.text, args.samples)
    held_out = read_lines(args.test_text) if args.test_text else None
    if held_out is not None and set(lines) & set(held_out):
        console.warn(f"{args.test_text}: {len(set(lines) & set(held_out))} of its lines are also in {args.text}; "
                     f"its metric is not on unseen data")
    model, tokenizer = load_pretrained(args.input)
    slot = ModelSlot(model)
    slot.check_names([n for n in tensors if tunable(tensors[n])], str(args.input))
    if not args.quiet:
        console.note(f"running the dense model on {len(lines)} lines" +
                     (f" and {len(held_out)} held-out lines" if held_out is not None else ""))
    evaluate = load_evaluator(args.evaluator) if args.evaluator else EmbeddingMetric(slot, tokenizer, lines)
    folds = half_calibrations(model, tokenizer, lines, calibration, args.quiet) if not args.evaluator else []
    test = EmbeddingMetric(slot, tokenizer, held_out) if held_out is not None else None
    save = Path(args.save) if args.save else None
    # Trial files go to a staging folder beside --save (named as the stale-temporary cleanup expects) and only the
    # chosen one is moved into place: a run that fails after writing a trial leaves no file at --save.
    staging = tempfile.TemporaryDirectory(prefix=f".{save.name}.{TEMP_TAG}-{os.getpid()}-", suffix=".tmp",
                                          dir=save.parent) if save else tempfile.TemporaryDirectory()
    with staging as tmp:
        trial = Path(tmp) / "trial.dcf"
        written: list[int] = []

        def file_bytes(rules: list[str]) -> int:
            """Write the file `rules` give into the staging folder and return its size."""
            written.append(compress(folder, trial, rules=rules, calibration=calibration)["compressed_bytes"])
            return written[-1]

        total = hf_sweep_size(tensors, calibration=calibration)
        with console.progress_bar(total, "sweeping", enabled=not args.quiet, unit="items") as adv:
            result = tune_pretrained(tensors, evaluate, args.budget, calibration, test=test, progress=adv,
                                     target_ratio=args.target_ratio,
                                     file_bytes=file_bytes if args.target_ratio is not None else None,
                                     folds=folds)
        if save and args.target_ratio is None:
            if not args.quiet:
                console.note(f"writing {save}")
            file_bytes(result.rules)
        if save:
            os.replace(trial, save)
    result.file_bytes = written[-1] if written else None
    write_rules_file(output, result.rules)
    if args.json:
        console.print_json(result.as_dict())
    else:
        show(result)
        replay = f" --calibration {args.calibration}" if args.calibration else ""
        console.note(f"wrote {len(result.rules)} rules to {output}; replay: dcframe compress {args.input} "
                     f"--rules-file {output}{replay}")
    return 0


def half_calibrations(model, tokenizer, lines: list[str], calibration, quiet: bool) -> list:
    """X^T X of each half of the lines (odd and even), where the calibration has any and there are two lines or
    more: the GPTQ tensors are then judged on the half they were not fitted to (tunehf.fitting_factor)."""
    if calibration is None or len(lines) < 2 or \
            not any(HESSIAN in stats for stats in calibration.entries.values()):
        return []
    from dcframe.bindings.hf import text_batches
    from dcframe.bindings.torchcalib import calibrate

    if not quiet:
        console.note("recording X^T X on each half of the lines (GPTQ is judged on the half it was not fitted to)")
    return [calibrate(model, text_batches(tokenizer, lines[i::2]), loss=None, fisher=False) for i in (0, 1)]


def show(result: TuneResult, metric: str = "validation metric", test_name: str = "test metric") -> None:
    """The paper's per-layer columns plus the chosen setting and its metric cost, then the totals; `metric` and
    `test_name` say what the validation and test figures are (the built-in LeNet's: accuracy or log-likelihood)."""
    def cell(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    rows = [[r["tensor"], cell(r["weights"], ","), cell(r["kept_pct"], ".1f") + "%" * (r["kept_pct"] is not None),
             cell(r["bits"], ".2f"), cell(r["ratio"], ".1f") + "x" * (r["ratio"] is not None), r["pipeline"],
             f"{r['metric_cost']:+.4f}"] for r in result.layers()]
    cols = [Col("tensor", "text"), Col("#weights"), Col("weights kept"), Col("bits/kept weight"), Col("ratio"),
            Col("chosen setting", "text"), Col("metric cost alone")]
    console.stdout.print(fit_table("dcframe tune", cols, rows))
    goal = f"budget {result.budget}" if result.budget is not None else f"target ratio {result.target_ratio:g}x"
    stored = result.original_bytes / max(result.total_bytes, 1)
    lines = [f"stored (streams + metadata): {result.total_bytes:,} bytes, {stored:.1f}x smaller than the original "
             f"({result.lossless_bytes / max(result.total_bytes, 1):.2f}x smaller than lossless)"]
    if result.file_bytes is not None:
        lines.append(f"file: {result.file_bytes:,} bytes, {result.original_bytes / result.file_bytes:.1f}x")
    lines += [f"{metric}{' (retrained)' if result.retrained else ''}: {result.metric:.4f} (dense "
              f"{result.dense_metric:.4f}, loss {result.dense_metric - result.metric:.4f}, {goal})",
              f"evaluations: {result.evaluations}, allocations verified: {len(result.frontier)}"]
    if result.test_metric is not None:
        lines.append(f"{test_name} (never used to choose): {result.test_metric:.4f} (dense {result.test_dense:.4f})")
    if result.unreached:
        lines.append(f"not reaching the metric (unchanged with nearly all weights 0; offered coarser steps): "
                     f"{', '.join(result.unreached)}")
    for line in lines:
        console.stdout.print(line, markup=False, highlight=False)
