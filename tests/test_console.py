"""What the CLI prints, unit by unit: progress counters, speeds, tables that fit the terminal."""

from io import StringIO

import pytest
from rich.console import Console
from rich.progress import Progress

from dcframe import console


def test_progress_counts_bytes_in_the_summary_units():
    column = console.counter_column("bytes")
    with Progress(column, console=Console(file=StringIO())) as progress:
        progress.add_task("x", total=int(90.9 * 2**20), completed=int(57.2 * 2**20))
        text = column.render(progress.tasks[0]).plain
    assert text == "57.2/90.9 MiB" and console.human_bytes(90.9 * 2**20) == "90.9 MiB"
    with Progress(console=Console(file=StringIO())) as progress:
        progress.add_task("x", total=12, completed=5)
        assert console.counter_column("samples").render(progress.tasks[0]).plain.replace(" ", "") == "5/12"


@pytest.mark.parametrize(("value", "shown"), [(0.0123, "0.0123"), (0.04, "0.0400"), (1.234, "1.23"),
                                              (12.34, "12.3"), (123.4, "123"), (4567.0, "4567"), (0.0, "0"),
                                              (None, "")])
def test_speeds_keep_three_significant_digits(value, shown):
    assert console.mb_s(value) == shown


def test_fit_table_never_cuts_numbers_and_folds_names():
    name = "encoder.layers.11.self_attention.query_key_value.weight"
    rows = [[name, "1,234,567.5 KiB", "123.45x"], ["b", "1 B", "1.00x"]]
    for width in (40, 60, 80, 200):
        out = Console(width=width, record=True, file=StringIO())
        out.print(console.fit_table("t", [console.Col("tensor", "text"), console.Col("original bytes"),
                                          console.Col("ratio")], rows, width=width))
        text = out.export_text()
        assert "…" not in text and "1,234,567.5 KiB" in text and "123.45x" in text
        assert max(len(line) for line in text.splitlines()) <= width
        pieces = [line.translate(str.maketrans("│┃", "  ")).split()[0] for line in text.splitlines()[3:]
                  if line.strip(" │┃") and not set(line.strip()) <= set("─└┴┘━┡╇┩")]
        assert "".join(pieces).startswith(name)  # folded over lines, never cut
