"""What the CLI shows people: tables, progress bars and JSON, all through rich, all to the right stream."""

from __future__ import annotations

import functools
import heapq
import json
import math
import os
import sys
import textwrap
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

stdout = Console(highlight=False)
if not stdout.is_terminal and not os.environ.get("COLUMNS", "").isdigit():  # piped: wide tables, unless COLUMNS says
    stdout = Console(highlight=False, width=200)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)  # messages stay one line, never folded


def add_output_flags(parser, json_help: str = "print one JSON object instead of tables") -> None:
    """The flags every reporting command shares."""
    parser.add_argument("--json", action="store_true", help=json_help)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def add_tensors_flag(parser) -> None:
    """`--tensors` / `-v`: the per-tensor and per-stream tables before the summary."""
    parser.add_argument("-v", "--tensors", action="store_true",
                        help="also list every tensor and stream (the default is a summary)")


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=_plain) + "\n")


def _plain(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return obj.hex()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot serialize {type(obj).__name__}")


def note(message: str) -> None:
    """A one-line message for the person at the terminal, on stderr (never folded, never parsed as markup)."""
    stderr.print(escape(message))


def warn(message: str) -> None:
    """A one-line warning on stderr."""
    stderr.print(f"dcframe: warning: {escape(message)}")


@contextmanager
def progress_bar(total: int, label: str, enabled: bool = True, unit: str = "bytes") -> Iterator:
    """A progress bar on stderr counting bytes (or, with another `unit`, items) with an ETA; a no-op when disabled
    or stderr is not a terminal. Yields advance(name, amount)."""
    if not enabled or not stderr.is_terminal:
        yield lambda name, nbytes: None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), counter_column(unit), TimeRemainingColumn(),
                  TextColumn("{task.fields[tensor]}"), console=stderr, transient=True) as progress:
        task = progress.add_task(label, total=total, tensor="")
        yield lambda name, nbytes: progress.update(task, advance=nbytes, tensor=name)


def counter_column(unit: str = "bytes") -> ProgressColumn:
    """done/total in a progress bar: bytes in binary units (KiB, MiB: what the summaries print), else a count."""
    return DownloadColumn(binary_units=True) if unit == "bytes" else MofNCompleteColumn()


def mb_s(value: float | None) -> str:
    """A speed in MB/s with three significant digits (never "0.0" for a measured speed); "" when not measured."""
    if value is None:
        return ""
    if value >= 100 or value <= 0:
        return f"{value:.0f}"
    return f"{value:.{2 - math.floor(math.log10(value))}f}"


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


MAX_TABLE_ROWS = 1000  # tensors a table shows (the largest); rich takes milliseconds a row, JSON lists them all
WORST_SHOWN = 5  # lossy tensors the summary lists, by relative error
TEXT_MIN = 30  # columns a text column (names, pipelines) needs before a table drops its borders to make room


def shown_tensors(tensors: list[dict[str, Any]], limit: int = MAX_TABLE_ROWS) -> list[dict[str, Any]]:
    """The rows a table shows: every tensor, or with more than `limit`, the `limit` largest in file order."""
    if len(tensors) <= limit:
        return tensors
    keep = set(heapq.nlargest(limit, range(len(tensors)), key=lambda i: tensors[i]["original_bytes"]))
    return [t for i, t in enumerate(tensors) if i in keep]


@dataclass(frozen=True)
class Col:
    """A table column of one kind: "number" (right-aligned) and "label" (left-aligned) are never wrapped or cut,
    their heading wraps instead; "text" (names, pipelines) takes the width left and folds over lines, never cut."""

    heading: str
    kind: str = "number"


def fit_table(title: str | None, columns: Sequence[Col], rows: Sequence[Sequence[str]],
              sections: Collection[int] = (), width: int | None = None) -> Table:
    """A table whose numbers and names are never truncated at `width` (default: stdout's): number and label
    columns get the width of their longest value, text columns the rest; boxed when that leaves the text columns
    TEXT_MIN, else borderless. Cells are plain text (no markup); rows whose index is in `sections` end a section."""
    width = width or stdout.width
    fixed = [max([cell_len(r[i]) for r in rows] + [max(map(cell_len, c.heading.split()), default=0)])
             for i, c in enumerate(columns) if c.kind != "text"]
    texts = [min(TEXT_MIN, max([cell_len(r[i]) for r in rows] + [cell_len(c.heading)]))
             for i, c in enumerate(columns) if c.kind == "text"]
    boxed = sum(fixed) + sum(texts) + 3 * len(columns) + 1 <= width
    table = Table(title=title, title_justify="left", box=box.HEAVY_HEAD if boxed else box.SIMPLE_HEAD,
                  show_edge=boxed, pad_edge=boxed, collapse_padding=not boxed)
    widths = iter(fixed)
    for col in columns:
        if col.kind == "text":
            table.add_column(col.heading, justify="left", overflow="fold")
        else:
            table.add_column(textwrap.fill(col.heading, next(widths)), no_wrap=True,
                             justify="left" if col.kind == "label" else "right")
    for i, row in enumerate(rows):
        table.add_row(*map(Text, row), end_section=i in sections)
    return table


def report_tables(report: dict[str, Any], tensors: bool = False) -> None:
    """Print a container report: with `tensors`, one row per tensor and per-stream detail first; then the summary
    (totals, one line per pipeline, the worst lossy tensors by relative error), which fits 80 columns.

    With more than MAX_TABLE_ROWS tensors only the largest are listed (and a line says so).
    """
    chains = {p: i for i, p in enumerate(dict.fromkeys(t["pipeline"] for t in report["tensors"]), 1)}
    if tensors:
        _tensor_tables(report, chains)
    _summary(report, chains)
    if not tensors:
        stdout.print("per tensor: --tensors (-v); every number: --json", markup=False)


def _summary(report: dict[str, Any], chains: dict[str, int]) -> None:
    """Totals, one row per pipeline, and the worst lossy tensors."""
    stdout.print(str(report["file"]), markup=False)
    stdout.print(f"{len(report['tensors']):,} tensors: {human_bytes(report['original_bytes'])} -> "
                 f"{human_bytes(report['compressed_bytes'])}, ratio {report['ratio']:.2f}x", markup=False)
    stdout.print(f"{report['compressed_bytes']:,} bytes, of which container overhead {report['overhead_bytes']:,} "
                 f"({_share(report['overhead_bytes'], report['compressed_bytes'])})", markup=False)
    groups: dict[str, list[dict[str, Any]]] = {p: [] for p in chains}
    for t in report["tensors"]:
        groups[t["pipeline"]].append(t)
    rows = []
    for pipeline, members in groups.items():
        original = sum(t["original_bytes"] for t in members)
        compressed = sum(t["compressed_bytes"] for t in members)
        weights = sum(math.prod(t["shape"]) for t in members)
        rows.append([str(chains[pipeline]), short_pipeline(pipeline), f"{len(members):,}", human_bytes(original),
                     human_bytes(compressed), f"{original / compressed if compressed else 0.0:.2f}x",
                     f"{8 * compressed / weights if weights else 0.0:.2f}"])
    columns = [Col("#"), Col("pipeline", kind="text"), Col("tensors"), Col("original"), Col("compressed"),
               Col("ratio"), Col("bits/w")]
    _show(fit_table(None, columns, rows))
    lossy = [t for t in report["tensors"] if "rel_rms" in t]
    if not lossy:
        return
    worst = heapq.nlargest(WORST_SHOWN, lossy, key=lambda t: t["rel_rms"])
    rows = [[t["name"], _shape(t), str(chains[t["pipeline"]]), f"{t['rel_rms']:.1%}", _opt(t, "rms", "{:.3g}"),
             _opt(t, "max_abs", "{:.3g}")] for t in worst]
    title = (f"worst {len(worst)} of {len(lossy):,} lossy tensors by rel err (RMS error / the tensor's RMS)"
             if len(lossy) > len(worst) else "lossy tensors by rel err (RMS error / the tensor's RMS)")
    columns = [Col("tensor", kind="text"), Col("shape"), Col("#"), Col("rel err"), Col("rms err"), Col("max err")]
    _show(fit_table(title, columns, rows))


def _tensor_tables(report: dict[str, Any], chains: dict[str, int]) -> None:
    """One row per tensor (sizes, then error stats where there are any), then the streams; `#` is the pipeline's
    row in the summary."""
    shown = shown_tensors(report["tensors"])
    rows = [[t["name"], t["dtype"], _shape(t), str(chains[t["pipeline"]]), human_bytes(t["original_bytes"]),
             human_bytes(t["compressed_bytes"]), f"{t['ratio']:.2f}x", f"{t['bits_per_weight']:.3f}"] for t in shown]
    columns = [Col("tensor", kind="text"), Col("dtype", kind="label"), Col("shape"), Col("#"), Col("original"),
               Col("compressed"), Col("ratio"), Col("bits/w")]
    _show(fit_table(str(report["file"]), columns, rows))
    lossy = [t for t in shown if "rms" in t]
    if lossy:
        rows = [[t["name"], _opt(t, "sparsity", "{:.1%}"), _opt(t, "distinct", "{}"), _opt(t, "rms", "{:.3g}"),
                 _opt(t, "rel_rms", "{:.1%}"), _opt(t, "max_abs", "{:.3g}")] for t in lossy]
        columns = [Col("tensor", kind="text"), Col("sparsity"), Col("clusters"), Col("rms err"), Col("rel err"),
                   Col("max err")]
        _show(fit_table("errors", columns, rows))
    rows = []
    for t in shown:
        entropy = t.get("entropy", {})
        for name, size in t["streams"].items():
            e = entropy.get(name)
            if len(t["streams"]) == 1 and not e:
                continue
            per_weight = t.get("stream_bits_per_kept_weight", {}).get(name)
            rows.append([t["name"], name, human_bytes(size), f"{per_weight:.2f}" if per_weight else "",
                         human_bytes(e["entropy_bytes"]) if e else "",
                         f"{e['over_entropy']:+.2%}" if e and e["over_entropy"] is not None else ""])
    if rows:
        columns = [Col("tensor", kind="text"), Col("stream", kind="text"), Col("stored"),
                   Col("bits/kept weight"), Col("entropy bound"), Col("over bound")]
        _show(fit_table("streams", columns, rows))
    if len(shown) < len(report["tensors"]):
        stdout.print(f"(the {len(shown)} largest of {len(report['tensors'])} tensors are listed; "
                     f"--json lists every one)")


def _show(table: Table) -> None:
    """A table and a blank line, so that a borderless table ends visibly before the next title."""
    stdout.print(table)
    stdout.print()


def _shape(tensor: dict[str, Any]) -> str:
    return "x".join(map(str, tensor["shape"])) or "scalar"


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "-"


@functools.lru_cache(maxsize=256)
def short_pipeline(text: str) -> str:
    """A stored pipeline with only the parameters that differ from the stage's defaults (for tables; JSON has all)."""
    from dcframe.core.errors import DcfError
    from dcframe.core.pipeline import parse_pipeline
    from dcframe.core.stage import format_stage

    try:
        stages = parse_pipeline(text)
    except DcfError:
        return text  # a stage not installed here: show what the file says
    parts = []
    for stage in stages:
        defaults = {name: p.default for name, p in stage.parameters().items()}
        changed = {k: v for k, v in stage.get_config().items() if defaults.get(k, object()) != v}
        parts.append(format_stage(stage.id, changed))
    return " | ".join(parts)


def _opt(row: dict[str, Any], key: str, fmt: str) -> str:
    return fmt.format(row[key]) if key in row else ""


MAX_MESSAGE = 2000  # characters of an error message the CLI prints; the rest is cut from the middle
# Every control character (C0, DEL, C1) and the Unicode line and paragraph separators, as a visible escape.
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))} | {0x2028: "\\u2028", 0x2029: "\\u2029"}


def one_line(message: str, limit: int = MAX_MESSAGE) -> str:
    """A message as one printable line: control characters escaped (a name from a file may hold a newline), and
    at most `limit` characters, keeping its start and its end (where the advice is)."""
    text = message.translate(_CONTROL)
    if len(text) <= limit:
        return text
    tail = limit // 4
    return f"{text[:limit - tail]} ...[{len(text) - limit} characters left out]... {text[-tail:]}"
