"""A tiny BERT folder (WordPiece tokenizer files, config, safetensors weights) built with transformers for tests."""

import numpy as np

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "a", "mat", "dog", "ran"]


def tiny_bert(folder, hidden: int = 16, position_ids: bool = False) -> None:
    """Write a 1-layer BERT with `hidden` units into `folder`; with `position_ids`, also the int buffer that older
    checkpoints store in their weights file although it is not in the model's state dict."""
    import torch
    import transformers
    from safetensors.numpy import load_file, save_file

    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    config = transformers.BertConfig(vocab_size=len(WORDS), hidden_size=hidden, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=32)
    torch.manual_seed(3)
    transformers.BertModel(config).save_pretrained(folder, safe_serialization=True)
    if position_ids:
        weights = folder / "model.safetensors"
        save_file({**load_file(weights), "embeddings.position_ids": np.arange(32, dtype=np.int64)[None]}, weights,
                  metadata={"format": "pt"})
