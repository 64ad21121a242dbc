"""One module per CLI command: add_parser(subparsers) and run(args); the few checks several commands share."""

from __future__ import annotations

import os

from dcframe.core.errors import DcfError, ModelIOError


def add_force_flag(parser) -> None:
    """`-f/--force`: replace an existing output (as zstd, gzip and xz do, the CLI refuses otherwise)."""
    parser.add_argument("-f", "--force", action="store_true", help="overwrite an existing output file")


def refuse_existing_output(output: str | os.PathLike, force: bool, source: str | os.PathLike | None = None) -> None:
    """Refuse to replace a file (or a symlink, even a dangling one) at `output` unless `force`; nothing is touched.
    A missing `source` (the command's input) is named first: a mistyped input is the error to report, not the output
    (a link that leads nowhere is left to the reader, which says why)."""
    if source is not None and not os.path.lexists(source):
        raise ModelIOError(f"{source}: no such file")
    if not force and os.path.lexists(output):
        raise ModelIOError(f"{output}: already exists; use -f/--force to overwrite it")


def add_executor_flags(parser, what: str) -> None:
    """`--executor local|dask` and `--scheduler ADDR`: where `what` runs (the dask extra for a Dask cluster)."""
    parser.add_argument("--executor", choices=("local", "dask"), default=None,
                        help=f"where {what}: locally (default), or on a Dask cluster (the dask extra): a LocalCluster "
                             f"of --jobs workers (default 2) on this machine, or the --scheduler's")
    parser.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                        help="with --executor dask (implied): a running Dask scheduler; its workers must reach the "
                             "input and output paths as given (this machine, or a shared filesystem)")


def executor_from_flags(args):
    """The DaskExecutor that --executor dask / --scheduler ask for, else None (dask is imported only when used)."""
    if args.executor == "local":
        if args.scheduler:
            raise DcfError("--scheduler runs on a Dask cluster: give --executor dask (or leave --executor out)")
        return None
    if args.executor is None and not args.scheduler:
        return None
    from dcframe.bindings.daskexec import DEFAULT_WORKERS, DaskExecutor

    return DaskExecutor(scheduler=args.scheduler, workers=getattr(args, "jobs", None) or DEFAULT_WORKERS)
