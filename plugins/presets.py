"""Built-in presets: named per-tensor rules that expand to pipelines (spec/presets.md lists what each expands to).

A preset is {"description": str, "rules": [{"match": {"ndim": [...]} | {"min_ndim": n} | {"name": "glob"} | {},
"pipeline": str}]};
the first matching rule wins. `lossless` keeps a single rule: Policy.lossless_pipeline reads its first rule.
"""

from __future__ import annotations

from dcframe import hookimpl

LOSSLESS = "zstd(level=19)"
# Deep Compression (Han, Mao & Dally 2016): prune, store relative indices, share weights by k-means, Huffman-code both
# streams. Fully connected layers: 5-bit indices and 5-bit weights (the paper's LeNet and AlexNet fc settings);
# 92% pruned (the paper's LeNet-300-100 keeps 8%). Conv layers: 8-bit indices and weights, 65% pruned (AlexNet conv).
# k-means as in the paper, linear init and plain Lloyd: retraining follows, and it recovers more from the large
# weights that linear init keeps than from a lower SSE (the kmeans default, near-optimal SSE, suits no retraining).
HAN_FC = "prune(sparsity=0.92) | sparse(index_bits=5) | kmeans(bits=5, init=linear, method=lloyd) | huffman"
HAN_CONV = "prune(sparsity=0.65) | sparse(index_bits=8) | kmeans(bits=8, init=linear, method=lloyd) | huffman"
QUANTIZE8 = "kmeans(bits=8) | huffman"


@hookimpl
def dcframe_presets():
    return {
        "lossless": {
            "description": "exact: every tensor through zstd -19",
            "rules": [{"pipeline": LOSSLESS}],
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
        "quantize8": {
            "description": "weight sharing only: 8-bit k-means codebook, Huffman-coded indices, no pruning",
            "rules": [{"match": {}, "pipeline": QUANTIZE8}],
        },
    }
