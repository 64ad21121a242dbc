"""One module per CLI command: add_parser(subparsers) and run(args); the few checks several commands share."""

from __future__ import annotations

import os

from ..errors import ModelIOError


def add_force_flag(parser) -> None:
    """`-f/--force`: replace an existing output (as zstd, gzip and xz do, the CLI refuses otherwise)."""
    parser.add_argument("-f", "--force", action="store_true", help="overwrite an existing output file")


def refuse_existing_output(output: str | os.PathLike, force: bool) -> None:
    """Refuse to replace a file (or a symlink, even a dangling one) at `output` unless `force`; nothing is touched."""
    if not force and os.path.lexists(output):
        raise ModelIOError(f"{output}: already exists; use -f/--force to overwrite it")
