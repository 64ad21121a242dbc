"""Coverage-guided fuzzing of the reader with atheris (local runs only; atheris is not a dependency).

    pip install atheris
    python tests/bench/fuzz_atheris.py -atheris_runs=200000          # or -max_total_time=600

Each input picks a real seed container (tests/test_fuzz.py's chains) and a mode: the raw file bytes as given, or
one stored stream of one tensor replaced by the input's bytes with its CRC fixed up, or one record field replaced,
so that libFuzzer's coverage feedback reaches the stage decoders. Failures (anything but a DcfError, a blown memory
or time bound) are written by libFuzzer as crash-* files: copy them to tests/fuzz_corpus/ as regression inputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

with atheris.instrument_imports():
    import msgpack
    import numpy  # noqa: F401
    from container_tools import join, split
    from test_fuzz import SEED_CHAINS, exercise, seed_files

    import dcframe  # noqa: F401

SEEDS = seed_files()  # also loads the stage plugins
atheris.instrument_all()  # coverage of everything loaded, the plugins' decoders included
PARTS = [split(s) for s in SEEDS]
FIELDS = ["shape", "dtype", "chain", "steps"]


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    index = fdp.ConsumeIntInRange(0, len(SEEDS) - 1)
    mode = fdp.ConsumeIntInRange(0, 2)
    chunk = SEED_CHAINS[index][2].get("chunk_size", 1 << 24)
    if mode == 0:
        exercise(fdp.ConsumeBytes(fdp.remaining_bytes()))
        return
    parts = split(SEEDS[index])
    tensor = fdp.ConsumeIntInRange(0, len(parts.tensors) - 1)
    record, streams = parts.tensors[tensor]
    if mode == 1:
        names = list(streams)
        streams[names[fdp.ConsumeIntInRange(0, len(names) - 1)]] = fdp.ConsumeBytes(fdp.remaining_bytes())
    else:
        key = FIELDS[fdp.ConsumeIntInRange(0, len(FIELDS) - 1)]
        try:
            record[key] = msgpack.unpackb(fdp.ConsumeBytes(fdp.remaining_bytes()), raw=False)
        except Exception:  # not msgpack: nothing to test
            return
    try:
        packed = join(parts, chunk_size=chunk)
    except (OverflowError, ValueError, TypeError):
        return
    exercise(packed)


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
