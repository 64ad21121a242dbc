"""`dcframe decompress IN.dcf -o OUT.safetensors|.npz|OUT_DIR`: decode tensors back into a model file or folder."""

from __future__ import annotations

import argparse

from dcframe import console
from dcframe.commands import add_executor_flags, add_force_flag, executor_from_flags, refuse_existing_output
from dcframe.core.container import Container
from dcframe.core.errors import DcfError, FormatError
from dcframe.core.files import refuse_overwriting_input
from dcframe.core.orchestrator import default_jobs
from dcframe.io.hffolder import is_folder, write_folder
from dcframe.io.modelio import write_model_stream


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("decompress", help="decode a .dcf container into .safetensors, .npz or a model folder",
                       description="Decode a .dcf container into a model file (its extension picks the format) or "
                                   "a Hugging Face folder.")
    p.add_argument("input", help=".dcf container")
    p.add_argument("-o", "--output", required=True,
                   help="model file to write (.safetensors or .npz), or a folder (new or empty; any other name) to "
                        "recreate the model's folder: its shards, index and non-weight files")
    p.add_argument("--single-file", action="store_true",
                   help="in the output folder, merge the shards into one model.safetensors")
    p.add_argument("--tensor", action="append", metavar="NAME", help="decode only this tensor (repeatable)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_executor_flags(p, "a folder's shards are decoded, one task per shard (a single file is decoded here)")
    p.add_argument("-j", "--jobs", type=int, default=None, metavar="N",
                   help="threads decoding a file's tensors where their chains allow it (the lossless preset's with "
                        "compiled kernels; default: the cores), or with --executor dask the LocalCluster's workers "
                        "(default 2)")
    add_force_flag(p)
    return p


def run(args: argparse.Namespace) -> int:
    refuse_overwriting_input(args.output, args.input)  # whatever the extensions say
    if args.jobs is not None and args.jobs < 1:
        raise DcfError(f"--jobs {args.jobs}: give 1 or more workers")
    jobs = default_jobs() if args.jobs is None else args.jobs
    if args.single_file or _is_folder_output(args.output):
        return _to_folder(args, jobs)  # a folder: new, empty, or replaced with --force (its own rule)
    refuse_existing_output(args.output, args.force, args.input)
    with Container(args.input) as container:
        names = list(dict.fromkeys(args.tensor)) if args.tensor else container.names  # a name given twice: once
        missing = [n for n in names if n not in container.entries]
        if missing:
            raise DcfError(f"{args.input}: no tensor named {', '.join(map(repr, missing))}; "
                           f"it has {len(container.names)} (see `dcframe inspect`)")
        specs = {name: container.header(name) for name in names}  # checked: the output header needs them
        total = sum(container.entries[n].total_length for n in names)
        with console.progress_bar(total, "decoding", enabled=not args.quiet) as advance:

            def decoded():  # a few tensors in memory at a time: decoded, written, dropped
                for name, tensor in container.read_many(names, jobs):
                    advance(name, container.entries[name].total_length)
                    yield name, tensor

            write_model_stream(args.output, specs, decoded(), _metadata(container, args.output))
    if not args.quiet:
        console.stderr.print(f"wrote {len(names)} tensors to {args.output}", markup=False)
    return 0


def _metadata(container: Container, output: str) -> dict[str, str] | None:
    """The safetensors __metadata__ the container's layout keeps (the entries all its shards share), if any; a bad
    layout spoils only that, with a warning (FORMAT.md 3.3: it never prevents reading the tensors)."""
    if not output.lower().endswith(".safetensors"):
        return None
    try:
        layout = container.layout()
    except FormatError as exc:
        console.warn(f"{exc}; writing {output} without __metadata__")
        return None
    return layout.common_metadata() if layout else None


def _is_folder_output(output: str) -> bool:
    """A folder is written for an existing directory or a name that is not a model file's."""
    return is_folder(output) or not output.lower().endswith((".safetensors", ".npz"))


def _to_folder(args: argparse.Namespace, jobs: int) -> int:
    """Recreate the model's folder (README: "Hugging Face folders")."""
    if args.tensor:
        raise DcfError("--tensor writes a model file (.safetensors or .npz); a folder gets every tensor")
    with Container(args.input) as container:
        total = sum(e.total_length for e in container.entries.values())
        with console.progress_bar(total, "decoding", enabled=not args.quiet) as advance:
            written = write_folder(args.output, container, single_file=args.single_file,
                                   overwrite=getattr(args, "force", False), progress=advance,
                                   executor=executor_from_flags(args), jobs=jobs)
    if not args.quiet:
        console.stderr.print(f"wrote {len(container.names)} tensors and {len(written)} files to {args.output}",
                             markup=False)
    return 0
