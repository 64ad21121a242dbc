"""`dcframe stages`: every installed stage and preset, with origin, stream kinds and parameters."""

from __future__ import annotations

import argparse
import inspect as pyinspect
from typing import Any

from rich.markup import escape
from rich.table import Table

from dcframe import console
from dcframe.core.registry import get_registry


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("stages", help="list installed stages and presets",
                       description="List every installed stage (with its package, kinds and parameters) and preset.")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    return p


def stage_listing() -> dict[str, Any]:
    """Stages, presets and broken plugins as plain data."""
    registry = get_registry()
    stages = []
    for stage_id, info in sorted(registry.stages.items()):
        cls = info.cls
        params = {name: (None if p.default is pyinspect.Parameter.empty else p.default)
                  for name, p in cls.parameters().items()}
        stages.append({"id": stage_id, "version": cls.version, "package": info.package,
                       "package_version": info.package_version, "takes": list(cls.takes),
                       "gives": dict(cls.gives), "lossy": cls.lossy, "parameters": params,
                       "description": cls.describe()})
    presets = {name: {"description": p.get("description", ""), "rules": p.get("rules", [])}
               for name, p in sorted(registry.presets.items())}
    return {"stages": stages, "presets": presets, "broken_plugins": dict(registry.broken)}


def run(args: argparse.Namespace) -> int:
    listing = stage_listing()
    if args.json:
        console.print_json(listing)
        return 0
    table = Table(title="stages", title_justify="left")
    for col in ("id", "package", "takes -> gives", "lossy", "parameters", "description"):
        table.add_column(col, overflow="fold")
    for s in listing["stages"]:
        params = ", ".join(f"{k}={v!r}" for k, v in s["parameters"].items())
        gives = ", ".join(f"{k}:{v}" for k, v in s["gives"].items())
        table.add_row(s["id"], f"{s['package']} {s['package_version']}", f"{'|'.join(s['takes'])} -> {gives}",
                      "yes" if s["lossy"] else "no", params, s["description"])
    console.stdout.print(table)
    presets = Table(title="presets", title_justify="left")
    for col in ("preset", "tensors", "pipeline"):
        presets.add_column(col, overflow="fold")
    for name, p in listing["presets"].items():
        for rule in p["rules"]:
            match = rule.get("match") or {}
            which = ", ".join(f"{k}={v}" for k, v in match.items()) or "all"
            presets.add_row(name, which, rule["pipeline"])
    console.stdout.print(presets)
    for name, why in listing["broken_plugins"].items():
        console.stderr.print(escape(console.one_line(f"warning: plugin '{name}' failed to load: {why}")))
    return 0
