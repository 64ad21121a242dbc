"""Code and documentation stay together: every built-in stage has a spec page with the fixed headings, FORMAT.md's
stage table lists it, and every CLI command appears in README."""

import re
from pathlib import Path

import pytest

from dcframe.cli import COMMANDS
from dcframe.core.registry import get_registry

ROOT = Path(__file__).resolve().parent.parent
HEADINGS = ["## Summary", "## Configuration", "## Streams", "## Metadata", "## Encoding", "## Decoding",
            "## Validation", "## Version history"]
BUILTIN = [info for info in get_registry().stages.values() if info.plugin in
           {"raw", "generic", "prune", "sparse", "kmeans", "uniform", "huffman", "rans", "bytegroup"}]


def spec_page(stage_id: str) -> Path:
    """A stage's page: stages/<id>.md, or the page whose title names it among others (the generic codecs)."""
    for page in sorted((ROOT / "spec" / "stages").glob("*.md")):
        title = page.read_text().splitlines()[0]
        if re.search(rf"`{re.escape(stage_id)}`", title):
            return page
    raise AssertionError(f"stage '{stage_id}' has no page in spec/stages/")


def test_every_builtin_stage_is_registered():
    assert {i.cls.id for i in BUILTIN} == {"raw", "zlib", "zstd", "lzma", "bz2", "prune", "sparse", "kmeans", "uniform",
                                             "huffman", "rans", "bytegroup"}


@pytest.mark.parametrize("info", BUILTIN, ids=lambda i: i.cls.id)
def test_every_builtin_stage_has_a_complete_spec_page(info):
    text = spec_page(info.cls.id).read_text()
    positions = [text.find(h) for h in HEADINGS]
    assert all(p >= 0 for p in positions), [h for h, p in zip(HEADINGS, positions, strict=True) if p < 0]
    assert positions == sorted(positions), "headings out of order"
    for name in info.cls.parameters():
        assert f"`{name}`" in text, f"parameter {name!r} of '{info.cls.id}' is not documented on its page"
    assert f"`{info.cls.id}`" in (ROOT / "spec" / "FORMAT.md").read_text()


def test_every_command_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    for module in COMMANDS:
        assert f"dcframe {module.rsplit('.', 1)[1]}" in readme, module
