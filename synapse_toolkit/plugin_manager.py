"""Plugin discovery: every plugin, built-in or third-party, comes from the ``syntk`` entry points.

Entry points are loaded one by one, syntk's own first; a plugin that fails to import or to
register (any exception, ``SystemExit`` included) is recorded with its name, distribution and
error, leaves nothing registered and does not stop the others (see :func:`load_plugins`). A stage
name already taken by an earlier plugin is refused for the later one (status ``conflict``, both
plugins named); a built-in is never displaced. ``SYNTK_DISABLE_PLUGIN_AUTOLOAD`` set to a true
value (1, true, yes, on; any case) loads only the plugins shipped with syntk itself.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import traceback
from dataclasses import dataclass, field
from functools import lru_cache
from types import ModuleType
from typing import Any

import pluggy

from synapse_toolkit import hookspecs
from synapse_toolkit.errors import SyntkError
from synapse_toolkit.stage_registry import StageRegistry

ENTRY_POINT_GROUP = "syntk"
BUILTIN_DISTRIBUTION = "synapse-toolkit"
DISABLE_ENV = "SYNTK_DISABLE_PLUGIN_AUTOLOAD"


@dataclass
class PluginStatus:
    """One discovered plugin and how loading it went."""

    name: str
    distribution: str
    version: str
    module: str
    status: str = "ok"  # "ok" | "failed" | "disabled" | "conflict"
    error: str = ""
    stages: list[str] = field(default_factory=list)
    hooks: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class PluginSet:
    """The loaded plugin manager, the stage registry it filled, and each plugin's status."""

    manager: pluggy.PluginManager
    stages: StageRegistry
    statuses: list[PluginStatus]

    def status(self, name: str) -> PluginStatus | None:
        return next((s for s in self.statuses if s.name == name), None)


def _dist_of(ep: md.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return ("unknown", "")
    return (dist.metadata["Name"] or "unknown", dist.version or "")


TRUTHY = ("1", "true", "yes", "on")


def _entry_points() -> list[md.EntryPoint]:
    """syntk's own entry points first, then third-party ones, each group by name."""
    eps = md.entry_points(group=ENTRY_POINT_GROUP)
    seen: dict[str, md.EntryPoint] = {}
    for ep in eps:
        seen.setdefault(ep.name, ep)
    return sorted(seen.values(), key=lambda e: (_dist_of(e)[0] != BUILTIN_DISTRIBUTION, e.name))


def autoload_disabled() -> bool:
    """Whether the environment asks to skip third-party plugins."""
    return os.environ.get(DISABLE_ENV, "").strip().lower() in TRUTHY


def _register_one(
    pm: pluggy.PluginManager,
    registry: StageRegistry,
    status: PluginStatus,
    load: Any,
    owners: dict[str, str],
) -> None:
    """Import and register one plugin; on any failure nothing of it stays registered."""
    registry.begin(status.name)
    try:
        module = load()
        pm.register(module, name=status.name)
        status.hooks = sorted(h.name for h in pm.get_hookcallers(module) or [])
        impl = getattr(module, "syntk_register_stages", None)
        if impl is not None:
            impl(registry=registry)
    except KeyboardInterrupt:
        registry.rollback()
        _unregister(pm, status.name)
        raise
    except BaseException as exc:  # SystemExit and friends from a plugin are contained too
        registry.rollback()
        _unregister(pm, status.name)
        status.status = "failed"
        status.error = _describe(exc)
        return
    registry.commit()
    status.stages = [f"{r.kind}:{r.name}" for r in registry.by_plugin(status.name)]
    clashes = [c for c in registry.conflicts if c[2] == status.name]
    if clashes:
        status.status = "conflict"
        status.error = "; ".join(
            f"{kind} {name!r} not registered: already provided by plugin {holder} "
            f"({owners.get(holder, '?')}); this one is from {status.distribution}"
            for kind, name, _, holder in clashes
        )


def load_plugins(extra_modules: dict[str, ModuleType] | None = None) -> PluginSet:
    """Discover, import and register all plugins; never raises for a single broken plugin.

    ``extra_modules`` registers in-process plugin modules (name → module) after the entry
    points, through the same path — used by tests and by embedding applications.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    registry = StageRegistry()
    statuses: list[PluginStatus] = []
    owners: dict[str, str] = {}
    disabled = autoload_disabled()
    for ep in _entry_points():
        dist, version = _dist_of(ep)
        status = PluginStatus(ep.name, dist, version, ep.value)
        statuses.append(status)
        owners[ep.name] = dist
        if disabled and dist != BUILTIN_DISTRIBUTION:
            status.status = "disabled"
            status.error = f"{DISABLE_ENV} is set"
            continue
        _register_one(pm, registry, status, ep.load, owners)
    for name, module in (extra_modules or {}).items():
        status = PluginStatus(name, "<in-process>", "", module.__name__)
        statuses.append(status)
        owners[name] = status.distribution
        _register_one(pm, registry, status, lambda m=module: m, owners)
    return PluginSet(pm, registry, statuses)


def _unregister(pm: pluggy.PluginManager, name: str) -> None:
    plugin = pm.get_plugin(name)
    if plugin is not None:
        pm.unregister(plugin)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SyntkError):
        return str(exc)
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" ({last[0].filename}:{last[0].lineno})" if last else ""
    return f"{type(exc).__name__}: {exc}{where}"


@lru_cache(maxsize=1)
def get_plugins() -> PluginSet:
    """The process-wide plugin set (loaded once)."""
    return load_plugins()


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide pluggy manager with all plugins registered."""
    return get_plugins().manager


def reset_plugins() -> None:
    """Forget the cached plugin set (tests, or after installing a plugin)."""
    get_plugins.cache_clear()
