"""`dcframe inspect IN.dcf`: a summary of sizes, ratios and errors; per tensor and per stream with --tensors."""

from __future__ import annotations

import argparse

from dcframe import console
from dcframe.api import inspect


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("inspect", help="show what a .dcf container holds and what each byte is for",
                       description="Show sizes, ratios and the worst errors per pipeline; with --tensors, per "
                                   "tensor: chain, sizes, ratio, bits per weight, streams, error stats.")
    p.add_argument("input", help=".dcf container")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    console.add_tensors_flag(p)
    return p


def run(args: argparse.Namespace) -> int:
    report = inspect(args.input)
    if args.json:
        console.print_json(report)
    else:
        console.report_tables(report, tensors=args.tensors)
    return 0
