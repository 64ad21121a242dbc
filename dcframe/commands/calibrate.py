"""`dcframe calibrate MODEL_DIR --text FILE -o calib.safetensors`: record the statistics data-aware stages need."""

from __future__ import annotations

import argparse
from pathlib import Path

from dcframe import console
from dcframe.core.errors import DcfError


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("calibrate", help="record calibration statistics of a Hugging Face model on sample text",
                       description="Run sample text through a Hugging Face model folder and save, per weight, the "
                                   "statistics that data-aware stages use (spec/calibration.md). Needs the hf "
                                   "extra: pip install 'dcframe[hf]'.")
    p.add_argument("model", help="Hugging Face model folder (config.json, weights, tokenizer)")
    p.add_argument("--text", required=True, metavar="FILE", help="UTF-8 text, one sample per line")
    p.add_argument("--samples", type=int, default=128, metavar="N", help="lines to use (default: 128)")
    p.add_argument("--max-length", type=int, default=128, metavar="T", help="tokens per sample (default: 128)")
    p.add_argument("--no-sensitivity", action="store_true",
                   help="skip the backward pass per line that records how sensitive the mean-pooled output is to "
                        "each layer output (the 'output' statistic tune and rowscale(by=output) use)")
    p.add_argument("-o", "--output", required=True, help="calibration file to write (.safetensors)")
    console.add_output_flags(p)
    return p


def run(args: argparse.Namespace) -> int:
    if args.samples < 1 or args.max_length < 1:
        raise DcfError("--samples and --max-length take 1 or more")
    if Path(args.output).suffix.lower() != ".safetensors":
        raise DcfError(f"{args.output}: a calibration is written as .safetensors")
    from dcframe.bindings.hf import embedding_sensitivity_loss, load_pretrained, read_lines, text_batches

    lines = read_lines(args.text, args.samples)
    model, tokenizer = load_pretrained(args.model)
    from dcframe.bindings.torchcalib import calibrate

    with console.progress_bar(len(lines), "calibrating", enabled=not args.quiet, unit="samples") as advance:
        calib = calibrate(model, text_batches(tokenizer, lines, args.max_length),
                          loss=None if args.no_sensitivity else embedding_sensitivity_loss(), fisher=False,
                          progress=lambda seen: advance("", 1), source=str(args.model))
    calib.save(args.output)
    summary = {"file": str(args.output), "model": str(args.model), "samples": calib.samples,
               "weights": len(calib.entries),
               "hessians": sum(1 for stats in calib.entries.values() if "hessian" in stats)}
    if args.json:
        console.print_json(summary)
    else:
        console.note(f"{args.output}: {summary['samples']} samples, statistics of {summary['weights']} weights "
                     f"({summary['hessians']} with X^T X)")
    return 0
