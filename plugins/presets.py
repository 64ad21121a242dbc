"""Built-in presets: named per-tensor rules that expand to pipelines."""

from __future__ import annotations

from dcframe import hookimpl

LOSSLESS = "zstd(level=19)"


@hookimpl
def dcframe_presets():
    return {
        "lossless": {
            "description": "exact: every tensor through zstd -19",
            "rules": [{"pipeline": LOSSLESS}],
        },
    }
