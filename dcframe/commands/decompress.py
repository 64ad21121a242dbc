"""`dcframe decompress IN.dcf -o OUT.safetensors|.npz`: decode tensors back into a model file."""

from __future__ import annotations

import argparse

from .. import console
from ..container import Container
from ..errors import DcfError
from ..modelio import refuse_overwriting_input, write_model_stream
from . import add_force_flag, refuse_existing_output


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("decompress", help="decode a .dcf container into .safetensors or .npz",
                       description="Decode a .dcf container into a model file; its extension picks the format.")
    p.add_argument("input", help=".dcf container")
    p.add_argument("-o", "--output", required=True, help="model file to write (.safetensors or .npz)")
    p.add_argument("--tensor", action="append", metavar="NAME", help="decode only this tensor (repeatable)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_force_flag(p)
    return p


def run(args: argparse.Namespace) -> int:
    refuse_overwriting_input(args.output, args.input)  # whatever the extensions say
    refuse_existing_output(args.output, args.force)
    with Container(args.input) as container:
        names = list(dict.fromkeys(args.tensor)) if args.tensor else container.names  # a name given twice: once
        missing = [n for n in names if n not in container.entries]
        if missing:
            raise DcfError(f"{args.input}: no tensor named {', '.join(map(repr, missing))}; "
                           f"it has {len(container.names)} (see `dcframe inspect`)")
        specs = {name: container.header(name) for name in names}  # checked: the output header needs them
        total = sum(container.entries[n].total_length for n in names)
        with console.progress_bar(total, "decoding", enabled=not args.quiet) as advance:

            def decoded():  # one tensor in memory at a time: decoded, written, dropped
                for name in names:
                    tensor = container.read(name)
                    advance(name, container.entries[name].total_length)
                    yield name, tensor

            write_model_stream(args.output, specs, decoded())
    if not args.quiet:
        console.stderr.print(f"wrote {len(names)} tensors to {args.output}", markup=False)
    return 0
