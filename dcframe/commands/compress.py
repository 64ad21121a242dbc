"""`dcframe compress IN -o OUT.dcf`: run each tensor of a model file through its chain into a container."""

from __future__ import annotations

import argparse
from pathlib import Path

from dcframe import console
from dcframe.api import compress
from dcframe.commands import add_executor_flags, add_force_flag, executor_from_flags, refuse_existing_output
from dcframe.core.errors import DcfError
from dcframe.core.files import refuse_overwriting_input
from dcframe.core.orchestrator import default_jobs
from dcframe.core.pipeline import Rule
from dcframe.io.hffolder import is_folder, read_folder
from dcframe.io.modelio import read_model

SMALL_MODEL = 8 << 20  # bytes of tensors below which --jobs is ignored
MOVED_WARN = 0.2  # relative RMS error of a tensor beyond which compress warns (pruning moves weights that far; the
# pretrained presets' coarsest steps stay under it: 17% at most on all-MiniLM-L6-v2)


def moved_warning(report: dict) -> str | None:
    """One line when lossy tensors moved far from their values (RMS error / the tensor's RMS), else None."""
    moved = [t for t in report["tensors"] if t.get("rel_rms", 0.0) > MOVED_WARN]
    if not moved:
        return None
    worst = max(moved, key=lambda t: t["rel_rms"])
    return (f"{len(moved)} of {len(report['tensors'])} tensors moved more than {MOVED_WARN:.0%} of their RMS "
            f"(worst: '{worst['name']}', {worst['rel_rms']:.0%}) and nothing retrains them: a pretrained model may "
            f"be badly hurt. Check its outputs; try --preset pretrained (or with --calibration, "
            f"pretrained-calibrated), or retrain (README: 'Compressing a pretrained model you cannot retrain')")


def rule_warnings(rules: list[str], tensors: list[dict]) -> list[str]:
    """One line per --rule that matched no tensor by name and rank (a typo in a glob would pass silently)."""
    ranks = sorted({len(t["shape"]) for t in tensors})
    out = []
    for text in rules:
        rule = Rule.parse(text)
        if any(rule.matches(t["name"], t["shape"]) for t in tensors):
            continue
        hint = (f"the tensors have ranks {', '.join(map(str, ranks))}" if rule.pattern == "*" else
                f"names look like {tensors[0]['name']!r}" if tensors else "the model has no tensors")
        out.append(f"--rule {text!r} matched none of the {len(tensors):,} tensors ({hint}); it changed nothing")
    return out


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("compress", help="compress a model file into a .dcf container",
                       description="Compress a model (.safetensors .npz .npy .pt, or a Hugging Face folder) into a "
                                   ".dcf container.")
    p.add_argument("input", help="model file, or a Hugging Face folder (safetensors weights, config, tokenizer)")
    p.add_argument("-o", "--output", help="container to write (default: INPUT with .dcf)")
    p.add_argument("-p", "--pipeline",
                   help='stage chain, e.g. "prune(sparsity=0.9) | sparse | kmeans(bits=5) | huffman"')
    p.add_argument("--preset", help="named per-tensor rules (see `dcframe stages`); default: lossless")
    p.add_argument("--rule", action="append", default=[], metavar="GLOB=PIPELINE",
                   help="chain for tensors whose name matches GLOB (or 'dim:N=...' for rank N, 'dim:N+=...' for "
                        "rank N or more); first match wins")
    p.add_argument("--rules-file", metavar="FILE",
                   help="rules from a file (JSON dcframe.rules/1, as `dcframe tune` writes), tried before --rule")
    p.add_argument("--calibration", metavar="FILE",
                   help="calibration statistics (from `dcframe calibrate`) for data-aware stages: "
                        'prune(criterion="wanda"), kmeans(weighting="activation"); not stored in the output')
    p.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE", help="user metadata to store")
    p.add_argument("-j", "--jobs", type=int, default=None, metavar="N",
                   help="tensors compressed in parallel by N processes, or N threads where every chain allows "
                        "(the lossless preset's does, with the fast extra) (default: the number of cores; the "
                        "output bytes do not depend on N)")
    add_executor_flags(p, "tensors are encoded")
    p.add_argument("--no-stats", action="store_true",
                   help="do not store per-tensor statistics (entropy, reconstruction error) in the file: "
                        "~200 bytes less per lossy tensor, fewer columns in `inspect`")
    console.add_output_flags(p)
    console.add_tensors_flag(p)
    add_force_flag(p)
    return p


def run(args: argparse.Namespace) -> int:
    output = Path(args.output) if args.output else Path(args.input).with_suffix(".dcf")
    refuse_overwriting_input(output, args.input)  # the same file by any path: a symlink, a hard link
    refuse_existing_output(output, args.force, args.input)
    metadata = {}
    for item in args.metadata:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DcfError(f"--metadata {item!r}: expected KEY=VALUE")
        metadata[key] = value
    rules = list(args.rule)
    if args.rules_file:
        from dcframe.analysis.tune import read_rules_file  # the tuning module, only when a rules file needs it

        rules = [*read_rules_file(args.rules_file), *rules]
    jobs = default_jobs() if args.jobs is None else args.jobs
    if jobs < 1:
        raise DcfError(f"--jobs {args.jobs}: give 1 or more processes")
    executor = executor_from_flags(args)
    tensors = read_folder(args.input) if is_folder(args.input) else read_model(args.input)
    for what in getattr(tensors, "skipped", ()):
        console.warn(f"{args.input}: not stored: {what}")
    total = sum(tensors.nbytes(name) for name in tensors)  # from headers: the data is read once, to compress it
    if total < SMALL_MODEL:
        jobs = 1  # starting processes costs more than it saves; the bytes are the same either way
    with console.progress_bar(total, "compressing", enabled=not args.quiet) as advance:
        report = compress(tensors, output, pipeline=args.pipeline, preset=args.preset, rules=rules,
                          metadata=metadata, progress=advance, jobs=jobs, stats=not args.no_stats,
                          calibration=args.calibration, executor=executor)
    if args.json:
        console.print_json(report)
    else:
        console.report_tables(report, tensors=args.tensors)
    for warning in [*rule_warnings(rules, report["tensors"]), moved_warning(report)]:
        if warning:
            console.warn(warning)
    return 0
