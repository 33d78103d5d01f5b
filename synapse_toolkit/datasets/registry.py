"""The dataset/model registry: TOML files shipped with syntk plus entries added by plugins.

Registry files (``registry/*.toml`` in the source tree, ``synapse_toolkit/_registry/*.toml`` in an
installed wheel — see :func:`registry_dir`) contain::

    [groups."cremi"]                 # optional group descriptions
    description = "CREMI cropped training samples A, B, C"

    [[dataset]]                      # one table per file or archive
    name = "cremi/sample_A"
    url = "https://..."
    sha256 = "..."                   # or: unpinned = true
    groups = ["cremi"]

    [[model]]                        # ONNX models: same fields, kind = "model"
    name = "neurons/fib_affinities"
    package = "syntk_neurons"
    path = "models/fib_affinities.onnx"
    sha256 = "..."

Plugins add entries with the ``syntk_register_datasets(registry)`` hook, calling
:meth:`DatasetRegistry.add`, :meth:`DatasetRegistry.add_group` or
:meth:`DatasetRegistry.load_toml`.
"""

from __future__ import annotations

import difflib
import re
import tomllib
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import synapse_toolkit
from synapse_toolkit.datasets.entries import NAME_PATTERN, Entry, EntryKind, make_entry
from synapse_toolkit.errors import DataError

_TABLE_KINDS: dict[str, EntryKind] = {"dataset": "dataset", "model": "model"}


def registry_dir() -> Path:
    """The directory holding the registry TOML files.

    An installed wheel carries them in ``synapse_toolkit/_registry/``; an editable install or a
    source checkout uses the repository's ``registry/`` next to the package.
    """
    package_dir = Path(synapse_toolkit.__file__).resolve().parent
    candidates = (package_dir / "_registry", package_dir.parent / "registry")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise DataError(
        "syntk's registry files are missing: looked in " + " and ".join(map(str, candidates))
    )


@dataclass
class Group:
    """A named set of entries (``syntk datasets fetch cremi`` fetches all members)."""

    name: str
    description: str = ""
    members: list[str] = field(default_factory=list)


class DatasetRegistry:
    """Entries by name, plus groups. Names of entries and groups share one namespace."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self._groups: dict[str, Group] = {}
        #: The plugin currently registering (set by :func:`load_registry`); stamped on entries.
        self.current_plugin = "registry"
        #: ``(plugin, error)`` for each plugin whose dataset hook failed.
        self.plugin_errors: list[tuple[str, str]] = []

    # -- registration -------------------------------------------------------------------------
    def add(self, entry: Entry | Mapping[str, Any]) -> Entry:
        """Register an entry (an :class:`Entry` or a dict of its fields); names must be unique."""
        if not isinstance(entry, Entry):
            entry = make_entry(dict(entry), where=f"plugin {self.current_plugin}")
        if entry.plugin == "registry" and self.current_plugin != "registry":
            entry = entry.model_copy(update={"plugin": self.current_plugin})
        if entry.name in self._entries:
            other = self._entries[entry.name].plugin
            raise DataError(
                f"{entry.plugin}: registry entry {entry.name!r} is already registered by {other}"
            )
        if entry.name in self._groups:
            raise DataError(f"{entry.plugin}: {entry.name!r} is already the name of a group")
        for group in entry.groups:
            self._group(group, where=entry.plugin).members.append(entry.name)
        self._entries[entry.name] = entry
        return entry

    def add_group(self, name: str, description: str = "", members: Iterable[str] = ()) -> Group:
        """Declare a group (or describe an existing one) and optionally list its members."""
        group = self._group(name, where=self.current_plugin)
        if description:
            group.description = description
        for member in members:
            if member not in group.members:
                group.members.append(member)
        return group

    def _group(self, name: str, *, where: str) -> Group:
        if not re.match(NAME_PATTERN, name):
            raise DataError(f"{where}: bad group name {name!r}")
        if name in self._entries:
            raise DataError(f"{where}: group name {name!r} is already the name of an entry")
        return self._groups.setdefault(name, Group(name))

    def load_toml(self, path: Path) -> None:
        """Add every ``[[dataset]]``/``[[model]]`` entry and ``[groups.*]`` table of a file."""
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise DataError(f"registry file {path}: {exc}") from None
        unknown = set(data) - {"dataset", "model", "groups", "format"}
        if unknown:
            raise DataError(f"registry file {path}: unknown top-level keys {sorted(unknown)}")
        if data.get("format", 1) != 1:
            raise DataError(f"registry file {path}: unsupported format {data['format']!r}")
        for name, table in data.get("groups", {}).items():
            if not isinstance(table, dict) or set(table) - {"description", "members"}:
                raise DataError(f"registry file {path}: group {name!r} takes description/members")
            self.add_group(name, table.get("description", ""), table.get("members", ()))
        for table_name, kind in _TABLE_KINDS.items():
            tables = data.get(table_name, [])
            if not isinstance(tables, list):
                raise DataError(f"registry file {path}: use [[{table_name}]] tables")
            for table in tables:
                self.add(make_entry(table, where=f"registry file {path}", kind=kind))

    def check(self) -> None:
        """Drop (with a warning) group members that were never registered."""
        for group in self._groups.values():
            missing = [m for m in group.members if m not in self._entries]
            if missing:
                warnings.warn(f"group {group.name!r} names unknown entries {missing}", stacklevel=2)
                group.members = [m for m in group.members if m in self._entries]

    # -- lookup -------------------------------------------------------------------------------
    def entries(self, kind: EntryKind | None = None) -> list[Entry]:
        """All entries in registration order, optionally only datasets or only models."""
        return [e for e in self._entries.values() if kind is None or e.kind == kind]

    def groups(self) -> list[Group]:
        return [g for g in self._groups.values() if g.members]

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._groups

    def get(self, name: str) -> Entry:
        """The entry called ``name``; an unknown name raises with close matches."""
        try:
            return self._entries[name]
        except KeyError:
            if name in self._groups:
                members = ", ".join(self._groups[name].members)
                raise DataError(
                    f"{name!r} is a group ({members}); name one of its entries"
                ) from None
            raise DataError(self._unknown(name)) from None

    def group(self, name: str) -> Group | None:
        return self._groups.get(name)

    def expand(self, name: str) -> list[Entry]:
        """An entry name gives that entry; a group name gives its members."""
        if name in self._entries:
            return [self._entries[name]]
        group = self._groups.get(name)
        if group is not None and group.members:
            return [self.get(m) for m in group.members]
        raise DataError(self._unknown(name))

    def _unknown(self, name: str) -> str:
        known = list(self._entries) + [g.name for g in self.groups()]
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return f"unknown dataset or model {name!r}{hint} (see `syntk datasets list`)"


def load_registry(*, toml_dir: Path | None = None, plugins: bool = True) -> DatasetRegistry:
    """A registry filled from the TOML files and then from every plugin's dataset hook.

    A plugin whose hook raises is skipped with a warning (recorded in ``plugin_errors``).
    """
    registry = DatasetRegistry()
    directory = registry_dir() if toml_dir is None else toml_dir
    for path in sorted(directory.glob("*.toml")):
        registry.load_toml(path)
    if plugins:
        _call_plugin_hooks(registry)
    registry.current_plugin = "registry"
    registry.check()
    return registry


def _call_plugin_hooks(registry: DatasetRegistry) -> None:
    from synapse_toolkit.plugin_manager import get_plugin_manager

    hook = get_plugin_manager().hook.syntk_register_datasets
    for impl in hook.get_hookimpls():
        registry.current_plugin = impl.plugin_name
        try:
            impl.function(registry=registry)
        except Exception as exc:  # one broken plugin must not hide the others' datasets
            message = str(exc) if isinstance(exc, DataError) else f"{type(exc).__name__}: {exc}"
            registry.plugin_errors.append((impl.plugin_name, message))
            warnings.warn(
                f"plugin {impl.plugin_name} failed to register datasets: {message}",
                stacklevel=2,
            )


@lru_cache(maxsize=1)
def get_registry() -> DatasetRegistry:
    """The process-wide registry (registry files + plugins), loaded once."""
    return load_registry()


def reset_registry() -> None:
    """Forget the cached registry (tests, or after installing a plugin)."""
    get_registry.cache_clear()
