"""Finds stages and presets through pluggy and the entry-point group `dcframe.stages`, on first use.

Set DCFRAME_PLUGINS to a comma-separated list of entry points to load only those (a service that opens untrusted
files loads only the stages it trusts): `name` allows the entry point `name` of any distribution, `dist:name` only
the one of that distribution (e.g. `dcframe:huffman`). Unset, every installed plugin loads. Two distributions that
provide one stage id are an error naming both, never a silent choice.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pluggy

from dcframe.core import hookspecs
from dcframe.core.errors import MissingStageError, PipelineError
from dcframe.core.stage import Stage

ENTRY_POINT_GROUP = "dcframe.stages"
ALLOW_ENV = "DCFRAME_PLUGINS"


@dataclass(frozen=True)
class StageInfo:
    """A registered stage class and the distribution that provided it."""

    cls: type[Stage]
    package: str
    package_version: str
    plugin: str


def _origin(dist: metadata.Distribution | None, seen: dict[int, tuple[str, str]]) -> tuple[str, str]:
    """A distribution's name and version. Each `.name` or `.version` parses its whole METADATA file again (with a
    long README in it, ~5 ms a time for every stage module of every CLI run), so it is read once per distribution."""
    if dist is None:
        return "?", "?"
    if id(dist) not in seen:
        fields = dist.metadata
        seen[id(dist)] = (fields["Name"] or "?", fields["Version"] or "?")
    return seen[id(dist)]


class Registry:
    """The stages and presets of the plugins that are installed and allowed."""

    def __init__(self) -> None:
        self.manager = pluggy.PluginManager("dcframe")
        self.manager.add_hookspecs(hookspecs)
        self._stages: dict[str, StageInfo] | None = None
        self._presets: dict[str, dict[str, Any]] | None = None
        self._origins: dict[str, tuple[str, str, str]] = {}
        self.broken: dict[str, str] = {}  # entry-point name -> why it failed to load

    def load_entry_points(self) -> None:
        """Register every allowed module of the `dcframe.stages` entry-point group."""
        allow = allow_list()
        origins: dict[int, tuple[str, str]] = {}  # id(distribution) -> (name, version): its metadata parsed once
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist, version = _origin(ep.dist, origins)
            key = f"{canonical_dist(dist)}:{ep.name}"  # plugins are told apart by distribution, not by name alone
            if (allow is not None and ep.name not in allow and key not in allow) or self.manager.has_plugin(key):
                continue  # not allowed, or the same distribution found twice on sys.path
            try:
                module = ep.load()
            except Exception as exc:  # a broken plugin must not take the others down; it is reported instead
                self.broken[key] = f"{type(exc).__name__}: {exc}"
                continue
            if self.manager.is_registered(module):
                continue
            self.register(module, key, dist, version, plugin=ep.name)

    def register(self, module: object, name: str, package: str = "?", package_version: str = "?",
                 plugin: str | None = None) -> None:
        """Register a plugin module (or object with hook implementations) by hand; `plugin` is its entry-point
        name (default: `name`)."""
        self.manager.register(module, name=name)
        self._origins[name] = (package, package_version, plugin or name)
        self._stages = self._presets = None

    def _collect(self) -> None:
        stages: dict[str, StageInfo] = {}
        presets: dict[str, dict[str, Any]] = {}
        for impl in self.manager.hook.dcframe_stages.get_hookimpls():
            package, version, plugin = self._origins.get(impl.plugin_name, ("?", "?", impl.plugin_name))
            for cls in impl.function() or []:
                if cls.id in stages and stages[cls.id].cls is not cls:
                    other = stages[cls.id]
                    raise PipelineError(
                        f"stage id '{cls.id}' is provided by both {other.package} (plugin '{other.plugin}') and "
                        f"{package} (plugin '{plugin}'); uninstall one, or allow only one with {ALLOW_ENV}="
                        f"{canonical_dist(other.package)}:{other.plugin},... (distribution:entry point)"
                    )
                stages[cls.id] = StageInfo(cls, package, version, plugin)
        for impl in self.manager.hook.dcframe_presets.get_hookimpls():
            presets.update(impl.function() or {})
        self._stages, self._presets = stages, presets

    @property
    def stages(self) -> dict[str, StageInfo]:
        if self._stages is None:
            self._collect()
        return self._stages  # type: ignore[return-value]

    @property
    def presets(self) -> dict[str, dict[str, Any]]:
        if self._presets is None:
            self._collect()
        return self._presets  # type: ignore[return-value]

    def info(self, stage_id: str, package: str | None = None) -> StageInfo:
        """The registered stage of that id, or MissingStageError naming it (and its package when known)."""
        try:
            return self.stages[stage_id]
        except KeyError:
            where = f" (from package '{package}')" if package else ""
            hint = f"install {package}" if package and package != "?" else "see `dcframe stages` for what is installed"
            if os.environ.get(ALLOW_ENV) is not None:
                hint += f", or allow its plugin in {ALLOW_ENV}"
            if self.broken:
                hint += "; plugins that failed to load: " + "; ".join(f"{k} ({v})" for k, v in self.broken.items())
            raise MissingStageError(f"stage '{stage_id}'{where} is not installed; {hint}") from None

    def build(self, stage_id: str, config: dict[str, Any], package: str | None = None) -> Stage:
        """Instantiate a stage from its id and config."""
        return self.info(stage_id, package).cls.from_config(config)


def canonical_dist(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): lower case, runs of - _ . as one '-'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def allow_list() -> set[str] | None:
    """The entries of DCFRAME_PLUGINS (`name` or `dist:name`, the distribution canonicalized), or None if unset."""
    allowed = os.environ.get(ALLOW_ENV)
    if allowed is None:
        return None
    out = set()
    for item in (n.strip() for n in allowed.split(",")):
        dist, sep, name = item.rpartition(":")
        if item:
            out.add(f"{canonical_dist(dist.strip())}:{name.strip()}" if sep else item)
    return out


_registry: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loading entry points the first time it is asked for."""
    global _registry
    if _registry is None:
        _registry = Registry()
        _registry.load_entry_points()
    return _registry


def reset_registry() -> None:
    """Forget loaded plugins so the next get_registry() reads entry points again (tests, after pip install)."""
    global _registry
    _registry = None
