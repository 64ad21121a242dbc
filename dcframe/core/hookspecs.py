"""The hooks a dcframe plugin module implements; plugins are found through the entry-point group `dcframe.stages`."""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("dcframe")
hookimpl = pluggy.HookimplMarker("dcframe")


@hookspec
def dcframe_stages() -> list[type]:
    """Return the Stage subclasses this plugin provides."""


@hookspec
def dcframe_presets() -> dict[str, dict]:
    """Return presets: name -> {"description": str, "rules": [{"match": {...}, "pipeline": str}, ...]}."""
