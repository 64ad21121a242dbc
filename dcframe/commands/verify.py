"""`dcframe verify IN.dcf`: check every checksum and decode every tensor, writing nothing; name the damaged ones."""

from __future__ import annotations

import argparse

from rich.markup import escape
from rich.table import Table

from dcframe import console
from dcframe.api import verify
from dcframe.core.container import Container


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("verify", help="check a .dcf container: checksums and a full decode, nothing written",
                       description="Check every checksum of a .dcf container and decode every tensor (nothing is "
                                   "written). Exit 1 if any tensor is damaged; the others stay readable.")
    p.add_argument("input", help=".dcf container")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def run(args: argparse.Namespace) -> int:
    with Container(args.input) as container:  # an unreadable index is one error line, exit 1
        total = container.size
    with console.progress_bar(total, "verifying", enabled=not (args.quiet or args.json)) as advance:
        result = verify(args.input, progress=advance)
    if args.json:
        console.print_json(result)
    else:
        table = Table(title=escape(f"{args.input}: {len(result['tensors'])} tensors"), title_justify="left")
        for col in ("tensor", "status"):
            table.add_column(col, overflow="fold")
        for row in result["tensors"]:
            if row["ok"]:
                status = "ok"
            elif row["name"] in result["unreadable"]:
                status = "[yellow]STAGE NOT INSTALLED[/yellow]"
            else:
                status = "[red]DAMAGED[/red]"
            error = "" if row["ok"] else f": {escape(console.one_line(row['error']))}"
            table.add_row(escape(console.one_line(row["name"])), status + error)
        console.stdout.print(table)
        if result["damaged"]:
            console.stderr.print(escape(console.one_line(
                f"dcframe: {len(result['damaged'])} damaged tensor(s): {', '.join(result['damaged'])}; the others "
                f"can still be read (dcframe decompress --tensor NAME)")))
        if result["unreadable"]:
            console.stderr.print(escape(console.one_line(
                f"dcframe: {len(result['unreadable'])} tensor(s) need a stage that is not installed: "
                f"{', '.join(result['unreadable'])}; install it to check them")))
    return 0 if result["ok"] else 1
