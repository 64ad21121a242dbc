"""`dcframe tune MODEL --budget B -o RULES.json`: per-tensor sensitivity, settings for a metric budget, a rules file."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from .. import console
from ..console import Col, fit_table
from ..errors import ConfigError
from ..hffolder import is_folder, read_folder
from ..modelio import read_model, refuse_overwriting_input
from ..tune import (
    DEFAULT_REL_STEPS,
    TuneResult,
    is_lenet,
    lenet_evaluators,
    load_evaluator,
    sweep_size,
    tune,
    write_rules_file,
)
from . import add_force_flag, refuse_existing_output


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("tune", help="choose per-tensor settings for a metric budget; write a rules file",
                       description="Sweep each weight tensor alone over uniform step sizes (and the lossless chain), "
                                   "then choose one setting per tensor, smallest total, within --budget of the "
                                   "dense model's metric; writes a rules file for `compress --rules-file`.")
    p.add_argument("input", help="model file (.safetensors .npz .npy .pt), or a Hugging Face folder (with --text)")
    p.add_argument("-o", "--output", required=True, help="rules file to write (JSON, dcframe.rules/1)")
    p.add_argument("--budget", type=float, required=True,
                   help="allowed metric loss against the dense model, on the evaluator's (validation) data")
    p.add_argument("--eval", dest="evaluator", metavar="MODULE:FUNCTION",
                   help="metric, higher is better: FUNCTION(dict name -> numpy array) -> float; "
                        "default for the bundled LeNet-300-100: accuracy on a validation split of its training digits")
    p.add_argument("--steps", default=",".join(map(str, DEFAULT_REL_STEPS)), metavar="R1,R2,...",
                   help="uniform step sizes to try, relative to each tensor's RMS (default: %(default)s)")
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
    output = Path(args.output)
    refuse_overwriting_input(output, args.input)
    refuse_existing_output(output, args.force)
    if not (math.isfinite(args.budget) and args.budget >= 0):
        raise ConfigError(f"--budget {args.budget}: give a finite metric loss >= 0")
    if is_folder(args.input):
        return run_pretrained(args, output)
    steps = parse_steps(args.steps)
    evaluate = load_evaluator(args.evaluator) if args.evaluator else None
    model = read_model(args.input)
    tensors = {name: model[name] for name in model}
    test = None
    if evaluate is None:
        if not is_lenet(tensors):
            raise ConfigError(f"{args.input}: give --eval MODULE:FUNCTION (only the bundled LeNet-300-100 has a "
                              f"built-in evaluator)")
        evaluate, test = lenet_evaluators()
    with console.progress_bar(sweep_size(tensors, steps), "sweeping", enabled=not args.quiet, unit="items") as adv:
        result = tune(tensors, evaluate, args.budget, steps, test=test, progress=adv)
    write_rules_file(output, result.rules)
    if args.json:
        console.print_json(result.as_dict())
    else:
        show(result)
        console.note(f"wrote {len(result.rules)} rules to {output}; replay: dcframe compress {args.input} "
                     f"--rules-file {output}")
    return 0


def run_pretrained(args: argparse.Namespace, output: Path) -> int:
    """A Hugging Face folder: tune on the outputs for --text's lines (dcframe.tunehf)."""
    from ..calibration import Calibration
    from ..hf import load_pretrained, read_lines
    from ..tune import tunable
    from ..tunehf import EmbeddingMetric, ModelSlot, tune_pretrained
    from ..tunehf import sweep_size as hf_sweep_size

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
    test = EmbeddingMetric(slot, tokenizer, held_out) if held_out is not None else None
    with console.progress_bar(hf_sweep_size(tensors), "sweeping", enabled=not args.quiet, unit="items") as adv:
        result = tune_pretrained(tensors, evaluate, args.budget, calibration, test=test, progress=adv)
    write_rules_file(output, result.rules)
    if args.json:
        console.print_json(result.as_dict())
    else:
        show(result)
        replay = f" --calibration {args.calibration}" if args.calibration else ""
        console.note(f"wrote {len(result.rules)} rules to {output}; replay: dcframe compress {args.input} "
                     f"--rules-file {output}{replay}")
    return 0


def show(result: TuneResult) -> None:
    """The chosen setting per tensor and the totals."""
    rows = [[name, p.pipeline, f"{p.nbytes:,}", f"{result.lossless[name].nbytes / max(p.nbytes, 1):.1f}x",
             f"{result.dense_metric - p.metric:+.4f}"] for name, p in result.chosen.items()]
    cols = [Col("tensor", "text"), Col("chosen pipeline", "text"), Col("bytes"), Col("vs lossless"),
            Col("metric cost alone")]
    console.stdout.print(fit_table("dcframe tune", cols, rows))
    ratio = result.lossless_bytes / max(result.total_bytes, 1)
    lines = [f"streams: {result.total_bytes:,} bytes ({ratio:.2f}x smaller than lossless {result.lossless_bytes:,})",
             f"validation metric: {result.metric:.4f} (dense {result.dense_metric:.4f}, loss "
             f"{result.dense_metric - result.metric:.4f}, budget {result.budget})",
             f"evaluations: {result.evaluations}"]
    if result.test_metric is not None:
        lines.append(f"test metric (never used to choose): {result.test_metric:.4f} (dense {result.test_dense:.4f})")
    for line in lines:
        console.stdout.print(line, markup=False, highlight=False)
