"""Built-in presets: named per-tensor rules that expand to pipelines (spec/presets.md lists what each expands to).

A preset is {"description": str, "rules": [{"match": {"ndim": [...]} | {"min_ndim": n} | {"name": "glob"} | {},
"pipeline": str}]};
the first matching rule wins. `lossless` keeps a single rule: Policy.lossless_pipeline reads its first rule.
A preset's text may change between versions; files written with an older text stay decodable, since a container stores
the chain each tensor went through, never the preset (the old `lossless`, `zstd(level=19)`, is still a valid chain).
"""

from __future__ import annotations

from dcframe import hookimpl

LOSSLESS = "zstd(level=19)"  # the exact chain of rank 0-1 tensors in the lossy presets (their files stay as they were)
# The lossless preset: byte planes (the exponent on a plane of its own, spec/stages/bytegroup.md), the exponent plane
# rANS-coded, the mantissa planes through zstd (F32's lower planes shrink 1.5%, level 5 taking 0.07% more than level 1;
# BF16's and F16's pass at +0.004%). At or above ZipNN's ratio on a real transformer in F32, BF16 and F16, several
# times faster than zstd -19 (tests/bench/bench_lossless.py). 256 lanes: a quarter of the numpy steps of rans's
# default 64 on the largest tensors; 1024 would cost 0.05-0.1% of the file, under ZipNN's BF16 ratio.
BYTEGROUP = "bytegroup | zstd(level=5) | rans(lanes=256)"
# Deep Compression (Han, Mao & Dally 2016): prune, store relative indices, share weights by k-means, Huffman-code both
# streams. Fully connected layers: 5-bit indices and 5-bit weights (the paper's LeNet and AlexNet fc settings);
# 92% pruned (the paper's LeNet-300-100 keeps 8%). Conv layers: 8-bit indices and weights, 65% pruned (AlexNet conv).
# k-means as in the paper, linear init and plain Lloyd: retraining follows, and it recovers more from the large
# weights that linear init keeps than from a lower SSE (the kmeans default, near-optimal SSE, suits no retraining).
HAN_FC = "prune(sparsity=0.92) | sparse(index_bits=5) | kmeans(bits=5, init=linear, method=lloyd) | huffman"
HAN_CONV = "prune(sparsity=0.65) | sparse(index_bits=8) | kmeans(bits=8, init=linear, method=lloyd) | huffman"
QUANTIZE8 = "kmeans(bits=8) | huffman"
# The paper's chain with rANS in place of Huffman (issue 13 item 5): the same streams within ~0.1% of their order-0
# entropy instead of Huffman's +1-4%; rank 0-1 tensors as in han (zstd -19: on vectors of a few hundred floats the
# lossless preset's three stages cost more side information than byte grouping saves).
HAN_RANS_FC = HAN_FC.replace("| huffman", "| rans")
HAN_RANS_CONV = HAN_CONV.replace("| huffman", "| rans")

# Pretrained models that will not be retrained (spec/presets.md, "pretrained"): trellis-coded quantization (tcq: at
# equal squared error 4-10% fewer bits than the entropy-constrained uniform quantizer it replaced), one step per chain
# (rel_step x the RMS of its tensors: the same distortion for every weight), rANS-coded levels (within ~0.1% of their
# entropy). Token embedding tables (a lookup: a row's error stays in its token) and attention query/key projections
# (their error is softened by the softmax) take coarser steps than the other matrices; rank 0-1 tensors stay exact.
# The steps were chosen on all-MiniLM-L6-v2 (tests/bench/bench_pretrained.py): uniform's 0.085 / 0.25 / 0.2 with a
# 0.2 dead zone, then x 1.2 for tcq, whose error at a step is lower: on held-out sentences of the design split 6.85x
# at mean cosine 0.9958 -> 7.11x at 0.9956, and on all-mpnet-base-v2 6.35x at 0.9967 -> 6.60x at 0.9969.
# With a calibration, the token embedding rows of tokens its text never used take a step twice as coarse (rowscale:
# a lookup's error stays in its row, and on held-out text of the calibration's kind 93% of the tokens were seen):
# alone, a file 10.5% smaller at -0.0003 mean cosine on held-out sentences of the same source. Position and token-type
# embeddings (added to every token's input) take a chain of their own; the matrices with X^T X take GPTQ (uniform),
# which tcq's per-row trellis cannot follow. The embeddings' tcq steps are 1.3x uniform's there: 8.57x at mean cosine
# 0.9960 -> 8.76x at 0.9959 on the design split of all-MiniLM-L6-v2. See spec/presets.md.
TOKEN_EMBEDDINGS = ("*word_embeddings.weight", "*embed_tokens.weight", "*wte.weight", "*tok_embeddings.weight")
# Query/key projections as BERT/RoBERTa, Llama/BART, DistilBERT, DeBERTa-v2 and MPNet/T5 (`attn.q`, `SelfAttention.k`)
# name them. MPNet's `attn.q` / `attn.k` fell through to the matrices' step before: all-mpnet-base-v2 6.23x -> 6.36x,
# mean cosine 0.9962 -> 0.9967 under `pretrained`.
QUERY_KEY = ("*query.weight", "*key.weight", "*q_proj.weight", "*k_proj.weight", "*q_lin.weight", "*k_lin.weight",
             "*query_proj.weight", "*key_proj.weight", "*.q.weight", "*.k.weight")


def uniform(rel_step: float, method: str | None = None) -> str:
    extra = f", method={method}" if method else ""
    return f"uniform(rel_step={rel_step}, dead_zone=0.2{extra}) | rans"


def tcq(rel_step: float, weighting: str | None = None) -> str:
    extra = f", weighting={weighting}" if weighting else ""
    return f"tcq(rel_step={rel_step}{extra}) | rans"


POOLER = "*pooler.dense.weight"  # BERT's pooler: an RMS far below the other matrices' (0.009 against 0.06)


OTHER_EMBEDDINGS = ("*position_embeddings.weight", "*token_type_embeddings.weight")  # added to every token's input


def pretrained_rules(matrices: str, embeddings: str, query_key: str, other_embeddings: str = "") -> list[dict]:
    """Rank 0-1 exact, token embeddings, query/key projections, the pooler (a chain of its own, so its step follows
    its own RMS), position and token-type embeddings when `other_embeddings` is given, then every other tensor of
    rank >= 2."""
    return [{"match": {"ndim": [0, 1]}, "pipeline": LOSSLESS},
            *({"match": {"name": g}, "pipeline": embeddings} for g in TOKEN_EMBEDDINGS),
            *({"match": {"name": g}, "pipeline": query_key} for g in QUERY_KEY),
            {"match": {"name": POOLER}, "pipeline": "tcq(rel_step=0.102, rate_weight=0.1) | rans"},  # its own string
            *({"match": {"name": g}, "pipeline": other_embeddings} for g in OTHER_EMBEDDINGS if other_embeddings),
            {"match": {}, "pipeline": matrices}]


@hookimpl
def dcframe_presets():
    return {
        "lossless": {
            "description": "exact: byte planes, the exponent plane rANS-coded, the mantissa planes through zstd -5",
            "rules": [{"pipeline": BYTEGROUP}],
        },
        "han-fc": {
            "description": "Deep Compression for fully connected layers: prune 92%, 5-bit indices and k-means, Huffman",
            "rules": [{"match": {}, "pipeline": HAN_FC}],
        },
        "han-conv": {
            "description": "Deep Compression for conv layers: prune 65%, 8-bit indices and k-means, Huffman",
            "rules": [{"match": {}, "pipeline": HAN_CONV}],
        },
        "han": {
            "description": "Deep Compression per tensor: conv (rank >= 3) as han-conv, matrices (rank 2) as han-fc, "
                           "everything else (biases, norms, scalars) lossless",
            "rules": [
                {"match": {"min_ndim": 3}, "pipeline": HAN_CONV},
                {"match": {"ndim": [2]}, "pipeline": HAN_FC},
                {"match": {}, "pipeline": LOSSLESS},
            ],
        },
        "han-rans": {
            "description": "han with rANS in place of Huffman (conv as han-conv, matrices as han-fc, both streams "
                           "rANS-coded); everything else lossless as in han",
            "rules": [
                {"match": {"min_ndim": 3}, "pipeline": HAN_RANS_CONV},
                {"match": {"ndim": [2]}, "pipeline": HAN_RANS_FC},
                {"match": {}, "pipeline": LOSSLESS},
            ],
        },
        "quantize8": {
            "description": "weight sharing only: 8-bit k-means codebook, Huffman-coded indices, no pruning; rank 0-1 "
                           "tensors exact",
            "rules": [{"match": {"min_ndim": 2}, "pipeline": QUANTIZE8}, {"match": {}, "pipeline": LOSSLESS}],
        },
        "pretrained": {
            "description": "for a pretrained model that will not be retrained, no data needed: trellis-coded "
                           "quantization (one step per kind of tensor, coarser for token embeddings and query/key), "
                           "rANS-coded; rank 0-1 tensors exact",
            "rules": pretrained_rules(tcq(0.102), tcq(0.3), tcq(0.24)),
        },
        "pretrained-calibrated": {
            "description": "pretrained with a calibration (--calibration): GPTQ on the matrices whose X^T X it has, "
                           "tcq with activation-weighted levels on the embeddings, token embeddings twice as coarse "
                           "on the tokens the calibration text never used (rowscale), coarser steps as in pretrained",
            "rules": pretrained_rules(uniform(0.17, "auto"), "rowscale | " + tcq(0.32, "auto"),
                                      uniform(0.25, "auto"), tcq(0.18, "auto")),
        },
    }
