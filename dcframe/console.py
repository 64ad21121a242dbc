"""What the CLI shows people: tables, progress bars and JSON, all through rich, all to the right stream."""

from __future__ import annotations

import functools
import heapq
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

stdout = Console(highlight=False)
if not stdout.is_terminal:  # piped output: wide tables rather than folded cells
    stdout = Console(highlight=False, width=200)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)  # messages stay one line, never folded


def add_output_flags(parser, json_help: str = "print one JSON object instead of tables") -> None:
    """The flags every reporting command shares."""
    parser.add_argument("--json", action="store_true", help=json_help)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


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
    counter = DownloadColumn() if unit == "bytes" else MofNCompleteColumn()
    with Progress(TextColumn("{task.description}"), BarColumn(), counter, TimeRemainingColumn(),
                  TextColumn("{task.fields[tensor]}"), console=stderr, transient=True) as progress:
        task = progress.add_task(label, total=total, tensor="")
        yield lambda name, nbytes: progress.update(task, advance=nbytes, tensor=name)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


MAX_TABLE_ROWS = 1000  # tensors a table shows (the largest); rich takes milliseconds a row, JSON lists them all


def shown_tensors(tensors: list[dict[str, Any]], limit: int = MAX_TABLE_ROWS) -> list[dict[str, Any]]:
    """The rows a table shows: every tensor, or with more than `limit`, the `limit` largest in file order."""
    if len(tensors) <= limit:
        return tensors
    keep = set(heapq.nlargest(limit, range(len(tensors)), key=lambda i: tensors[i]["original_bytes"]))
    return [t for i, t in enumerate(tensors) if i in keep]


def report_tables(report: dict[str, Any]) -> None:
    """Print a container report: one row per tensor, then per-stream detail where there is any, then totals.

    With more than MAX_TABLE_ROWS tensors only the largest are listed (and a line says so).
    """
    table = Table(title=escape(str(report["file"])), title_justify="left")
    shown = shown_tensors(report["tensors"])
    lossy = any("rms" in t for t in shown)
    columns = ["tensor", "dtype", "shape", "pipeline", "original", "compressed", "ratio", "bits/w"]
    columns += ["sparsity", "clusters", "rms err", "rel err", "max err"] if lossy else []
    for col in columns:
        table.add_column(col, justify="left" if col in ("tensor", "dtype", "shape", "pipeline") else "right",
                         overflow="fold")
    for t in shown:
        row = [escape(t["name"]), t["dtype"], "x".join(map(str, t["shape"])) or "scalar",
               escape(short_pipeline(t["pipeline"])),
               human_bytes(t["original_bytes"]), human_bytes(t["compressed_bytes"]), f"{t['ratio']:.2f}x",
               f"{t['bits_per_weight']:.3f}"]
        if lossy:
            row += [_opt(t, "sparsity", "{:.1%}"), _opt(t, "distinct", "{}"), _opt(t, "rms", "{:.3g}"),
                    _opt(t, "rel_rms", "{:.1%}"), _opt(t, "max_abs", "{:.3g}")]
        table.add_row(*row)
    stdout.print(table)
    detail = Table(title="streams", title_justify="left")
    for col in ("tensor", "stream", "stored", "bits/kept weight", "entropy bound", "over bound"):
        detail.add_column(col, justify="left" if col in ("tensor", "stream") else "right")
    rows = 0
    for t in shown:
        entropy = t.get("entropy", {})
        for name, size in t["streams"].items():
            e = entropy.get(name)
            if len(t["streams"]) == 1 and not e:
                continue
            rows += 1
            per_weight = t.get("stream_bits_per_kept_weight", {}).get(name)
            detail.add_row(escape(t["name"]), escape(name), human_bytes(size),
                           f"{per_weight:.2f}" if per_weight else "",
                           human_bytes(e["entropy_bytes"]) if e else "",
                           f"{e['over_entropy']:+.2%}" if e and e["over_entropy"] is not None else "")
    if rows:
        stdout.print(detail)
    if len(shown) < len(report["tensors"]):
        stdout.print(f"(the {len(shown)} largest of {len(report['tensors'])} tensors are listed; "
                     f"--json lists every one)")
    stdout.print(
        f"total: {human_bytes(report['original_bytes'])} -> {human_bytes(report['compressed_bytes'])} "
        f"({report['compressed_bytes']} bytes), ratio {report['ratio']:.2f}x; "
        f"container overhead {report['overhead_bytes']} bytes"
    )


@functools.lru_cache(maxsize=256)
def short_pipeline(text: str) -> str:
    """A stored pipeline with only the parameters that differ from the stage's defaults (for tables; JSON has all)."""
    from .errors import DcfError
    from .pipeline import parse_pipeline
    from .stage import format_stage

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
