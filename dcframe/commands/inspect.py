"""`dcframe inspect IN.dcf`: per tensor sizes, ratios, bits per weight, streams and stats."""

from __future__ import annotations

import argparse

from .. import console
from ..api import inspect


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("inspect", help="show what a .dcf container holds and what each byte is for",
                       description="Show per tensor: chain, sizes, ratio, bits per weight, streams, error stats.")
    p.add_argument("input", help=".dcf container")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    return p


def run(args: argparse.Namespace) -> int:
    report = inspect(args.input)
    if args.json:
        console.print_json(report)
    else:
        console.report_tables(report)
    return 0
