"""Hugging Face model folders through transformers (the optional extra ``dcframe[hf]``; the core never imports it).

``load_pretrained(folder)`` gives the model (AutoModel, evaluation mode, on the CPU) and its tokenizer, loaded from the
folder alone (never from a hub); ``text_batches(tokenizer, lines)`` turns lines of text into model inputs, one sample
per line, so that no padding enters the calibration statistics; ``embedding_sensitivity_loss()`` is the loss whose
gradients tell which layer outputs the embedding's cosine is sensitive to.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from dcframe.core.errors import ModelIOError

MAX_LENGTH = 128  # tokens per sample


def load_pretrained(folder: str | os.PathLike) -> tuple[Any, Any]:
    """The model and tokenizer of a Hugging Face folder (config.json, weights, tokenizer files)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ModelIOError(f"{folder}: not a Hugging Face model folder (no config.json)")
    try:
        import transformers
    except ImportError:
        raise ModelIOError("reading a Hugging Face folder needs transformers: pip install 'dcframe[hf]'") from None
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = transformers.AutoModel.from_pretrained(folder, local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelIOError(f"{folder}: transformers cannot load it ({first})") from None
    model.eval()
    return model, tokenizer


def read_lines(path: str | os.PathLike, samples: int | None = None) -> list[str]:
    """The non-empty lines of a UTF-8 text file, at most `samples` of them."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelIOError(f"{path}: cannot read text ({exc})") from None
    lines = [line for line in lines if line]
    if not lines:
        raise ModelIOError(f"{path}: no text (one sample per line)")
    return lines[:samples] if samples else lines


def text_batches(tokenizer: Any, lines: Sequence[str], max_length: int = MAX_LENGTH) -> Iterator[dict]:
    """One tokenized sample per line, as keyword arguments of the model."""
    for line in lines:
        yield dict(tokenizer(line, return_tensors="pt", truncation=True, max_length=max_length))


def embedding_sensitivity_loss(seed: int = 0) -> Callable[[Any, dict], Any]:
    """A loss whose squared gradients measure how the mean cosine of mean-pooled outputs (tune's metric) reacts to
    each weight and layer output: <v, e> for the sample's pooled output e and a random v ~ N(0, P) / |e|, P the
    projection orthogonal to e. Its gradient is zero on average, but E[(v . de)^2] = |P de|^2 / |e|^2, twice the
    cosine loss of a small change de, so E[g^2] is the diagonal of that loss's Gauss-Newton matrix."""
    import torch

    generator = torch.Generator().manual_seed(seed)

    def loss(model: Any, batch: dict) -> Any:
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype) if "attention_mask" in batch \
            else torch.ones_like(hidden[..., :1])
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        with torch.no_grad():
            norm = pooled.norm(dim=1, keepdim=True).clamp_min(1e-30)
            unit = pooled / norm
            u = torch.randn(pooled.shape, generator=generator, dtype=pooled.dtype)
            v = (u - (u * unit).sum(1, keepdim=True) * unit) / norm
        return (pooled * v).sum()

    return loss
