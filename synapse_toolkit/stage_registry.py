"""The registry that plugins fill through ``syntk_register_stages(registry)``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from synapse_toolkit.errors import PluginError
from synapse_toolkit.stages import KIND_BASES, STAGE_KINDS, Stage


@dataclass(frozen=True)
class RegisteredStage:
    """A stage class with the plugin (entry point) that registered it."""

    cls: type[Stage[Any]]
    plugin: str

    @property
    def kind(self) -> str:
        return self.cls.kind

    @property
    def name(self) -> str:
        return self.cls.name


class StageConflict(PluginError):
    """A plugin registered a (kind, name) that an earlier plugin already holds."""


class StageRegistry:
    """Stage classes by (kind, name). One ``add_*`` per built-in kind, ``add_stage`` for others.

    Registration is transactional per plugin: :meth:`begin` opens a pending set, :meth:`commit`
    publishes it, :meth:`rollback` drops it, so a plugin that fails half-way leaves nothing
    registered. A name already held by an earlier plugin is not replaced: the later stage is
    recorded in :attr:`conflicts` and the rest of its plugin still registers.
    """

    def __init__(self) -> None:
        self._stages: dict[tuple[str, str], RegisteredStage] = {}
        self._pending: dict[tuple[str, str], RegisteredStage] | None = None
        self.current_plugin = "<unknown>"
        #: (kind, name, later plugin, holding plugin) for every refused duplicate
        self.conflicts: list[tuple[str, str, str, str]] = []

    # -- transactions -------------------------------------------------------------------------
    def begin(self, plugin: str) -> None:
        """Start registering the stages of ``plugin``."""
        self.current_plugin = plugin
        self._pending = {}

    def commit(self) -> list[RegisteredStage]:
        """Publish the pending stages; returns them."""
        pending = self._pending or {}
        self._stages.update(pending)
        self._pending = None
        return list(pending.values())

    def rollback(self) -> None:
        """Drop the pending stages and any conflicts they recorded."""
        self.conflicts = [c for c in self.conflicts if c[2] != self.current_plugin]
        self._pending = None

    # -- registration -------------------------------------------------------------------------
    def add_stage(self, kind: str, cls: type[Stage[Any]]) -> None:
        """Register ``cls`` under ``kind``; built-in kinds require the matching base class."""
        if not (isinstance(cls, type) and issubclass(cls, Stage)):
            raise PluginError(f"plugin {self.current_plugin}: {cls!r} is not a Stage subclass")
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {self.current_plugin}: {cls.__name__} has no `name`")
        base = KIND_BASES.get(kind)
        if base is not None and not issubclass(cls, base):
            raise PluginError(
                f"plugin {self.current_plugin}: {cls.__name__} registered as {kind} "
                f"but does not subclass {base.__name__}"
            )
        if base is None and kind in STAGE_KINDS:
            raise PluginError(f"plugin {self.current_plugin}: bad kind {kind!r}")
        problem = cls.contract_problem() if base is not None else None
        if problem:
            raise PluginError(f"plugin {self.current_plugin}: {cls.__name__}: {problem}")
        cls.kind = kind
        key = (kind, name)
        if key in self._stages:
            holder = self._stages[key].plugin
            if self._pending is None:
                raise StageConflict(f"plugin {self.current_plugin}: {kind} {name!r} is already "
                                    f"registered by {holder}")  # fmt: skip
            self.conflicts.append((kind, name, self.current_plugin, holder))
            return
        if self._pending is None:
            self._stages[key] = RegisteredStage(cls, self.current_plugin)
            return
        if key in self._pending:
            raise PluginError(
                f"plugin {self.current_plugin}: {kind} {name!r} is registered twice by this plugin"
            )
        self._pending[key] = RegisteredStage(cls, self.current_plugin)

    def add_loader(self, cls: type[Stage[Any]]) -> None:
        self.add_stage("loader", cls)

    def add_aligner(self, cls: type[Stage[Any]]) -> None:
        self.add_stage("aligner", cls)

    def add_detector(self, cls: type[Stage[Any]]) -> None:
        self.add_stage("detector", cls)

    def add_agglomerator(self, cls: type[Stage[Any]]) -> None:
        self.add_stage("agglomerator", cls)

    def add_partner_assigner(self, cls: type[Stage[Any]]) -> None:
        self.add_stage("partner-assigner", cls)

    def add_clusterer(self, cls: type[Stage[Any]]) -> None:
        self.add_stage("clusterer", cls)

    def add_scorer(self, cls: type[Stage[Any]]) -> None:
        self.add_stage("scorer", cls)

    def add_postprocessor(self, cls: type[Stage[Any]]) -> None:
        self.add_stage("postprocessor", cls)

    def add_writer(self, cls: type[Stage[Any]]) -> None:
        self.add_stage("writer", cls)

    # -- lookup -------------------------------------------------------------------------------
    def kinds(self) -> list[str]:
        extra = sorted({k for k, _ in self._stages} - set(STAGE_KINDS))
        return [*STAGE_KINDS, *extra]

    def names(self, kind: str) -> list[str]:
        return sorted(n for k, n in self._stages if k == kind)

    def get(self, kind: str, name: str) -> RegisteredStage:
        try:
            return self._stages[(kind, name)]
        except KeyError:
            available = ", ".join(self.names(kind)) or "none"
            raise PluginError(f"no {kind} plugin {name!r} (available: {available})") from None

    def all(self) -> list[RegisteredStage]:
        return sorted(self._stages.values(), key=lambda r: (r.kind, r.name))

    def by_plugin(self, plugin: str) -> list[RegisteredStage]:
        return [r for r in self.all() if r.plugin == plugin]
