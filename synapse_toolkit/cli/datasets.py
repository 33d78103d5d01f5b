"""`syntk datasets`: list, inspect, fetch, locate and verify registry datasets and models."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from synapse_toolkit.datasets import (
    DatasetRegistry,
    Entry,
    cache_dir,
    cached_file,
    fetch_entry,
    get_registry,
    is_cached,
    verify_entry,
)
from synapse_toolkit.errors import DataError
from synapse_toolkit.fsio import dumps

app = typer.Typer(
    help="Dataset and model registry: sha256-verified, cached downloads.",
    no_args_is_help=True,
)
_out = Console(highlight=False)
_err = Console(stderr=True, highlight=False)


def human_size(size: int | None) -> str:
    """Bytes as a short human-readable size ('?' when unknown)."""
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def _total_size(entries: list[Entry]) -> str:
    if any(e.size is None for e in entries):
        known = sum(e.size or 0 for e in entries)
        return f">= {human_size(known)}" if known else "?"
    return human_size(sum(e.size or 0 for e in entries))


def _pin(entry: Entry) -> str:
    return "pinned" if entry.pinned else "[yellow]unpinned[/]"


def _expand(registry: DatasetRegistry, names: list[str]) -> list[Entry]:
    seen: dict[str, Entry] = {}
    for name in names:
        for entry in registry.expand(name):
            seen.setdefault(entry.name, entry)
    return list(seen.values())


JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _entry_json(entry: Entry) -> dict[str, object]:
    doc = entry.model_dump(mode="json", exclude_none=True)
    doc["bundled"] = entry.bundled
    doc["cached"] = True if entry.bundled else is_cached(entry)
    return doc


@app.command("list")
def list_entries(as_json: JsonFlag = False) -> None:
    """Every dataset and model with its size and pinned/unpinned status, then the groups."""
    registry = get_registry()
    if as_json:
        group_docs = [{"name": g.name, "members": list(g.members), "description": g.description}
                      for g in registry.groups()]  # fmt: skip
        doc = {"entries": [_entry_json(e) for e in registry.entries()], "groups": group_docs,
               "cache": str(cache_dir())}  # fmt: skip
        typer.echo(dumps(doc, indent=1))
        return
    table = Table(title="syntk registry", title_justify="left")
    table.add_column("name", no_wrap=True)
    table.add_column("kind")
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("pinned", no_wrap=True)
    table.add_column("cached")
    table.add_column("groups")
    for entry in registry.entries():
        kind = entry.kind + (" (bundled)" if entry.bundled else "")
        kind += f" ({entry.archive_format})" if entry.archive_format else ""
        cached = "bundled" if entry.bundled else ("yes" if is_cached(entry) else "no")
        table.add_row(
            entry.name, kind, human_size(entry.size), _pin(entry), cached, ", ".join(entry.groups)
        )
    _out.print(table)
    groups = Table(title="groups (fetch all members with `syntk datasets fetch GROUP`)",
                   title_justify="left")  # fmt: skip
    for column in ("group", "entries", "total size", "description"):
        groups.add_column(column)
    for group in registry.groups():
        members = [registry.get(m) for m in group.members]
        groups.add_row(group.name, str(len(members)), _total_size(members), group.description)
    _out.print(groups)
    _out.print(f"cache: {cache_dir()}")


@app.command()
def info(
    name: Annotated[str, typer.Argument(help="Entry or group name.")], as_json: JsonFlag = False
) -> None:
    """Everything the registry knows about an entry: source, checksum, citation, licence."""
    registry = get_registry()
    group = registry.group(name)
    if as_json:
        if group is not None and group.members:
            doc: dict[str, object] = {"group": name, "description": group.description,
                                      "members": [_entry_json(registry.get(m))
                                                  for m in group.members]}  # fmt: skip
        else:
            doc = {**_entry_json(registry.get(name)), "local_path": _local(registry.get(name))}
        typer.echo(dumps(doc, indent=1))
        return
    if group is not None and group.members:
        _out.print(f"[bold]{name}[/] (group): {group.description}")
        for member in group.members:
            entry = registry.get(member)
            _out.print(f"  {member}  {human_size(entry.size)}  {_pin(entry)}")
        return
    entry = registry.get(name)
    rows: list[tuple[str, str]] = [
        ("name", entry.name),
        ("kind", entry.kind + (" (bundled)" if entry.bundled else "")),
        ("description", entry.description),
        ("source", entry.source),
        *((f"mirror {i + 1}", url) for i, url in enumerate(entry.mirrors)),
        ("sha256", entry.sha256 or "unpinned (hash recorded locally on first download)"),
        ("size", human_size(entry.size) + (f" ({entry.size} bytes)" if entry.size else "")),
        ("archive", entry.archive_format or "no"),
        ("voxel size", _voxel(entry)),
        ("domain", _domain(entry)),
        ("axis order", entry.axis_order or "?"),
        ("contains", ", ".join(entry.datasets) or "?"),
        ("groups", ", ".join(entry.groups) or "-"),
        ("licence", entry.licence),
        ("citation", entry.citation or "-"),
        ("homepage", entry.homepage or "-"),
        ("reproduce", entry.reproduce or "-"),
        ("registered by", entry.plugin),
        ("local path", _local(entry)),
    ]
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in rows:
        if value:
            table.add_row(key, value)
    _out.print(table)


def _voxel(entry: Entry) -> str:
    if entry.voxel_size_nm is None:
        return "?"
    return " x ".join(f"{v:g}" for v in entry.voxel_size_nm) + " nm (z, y, x)"


def _domain(entry: Entry) -> str:
    """A model's training domain, e.g. 'affinities; ssTEM, real data' ('' when not declared)."""
    parts = [entry.modality, None if entry.training_data is None else f"{entry.training_data} data"]
    said = ", ".join(p for p in parts if p)
    return "; ".join(p for p in (entry.task, said) if p)


def _local(entry: Entry) -> str:
    try:
        path = cached_file(entry)
    except DataError as exc:
        return f"unavailable: {exc}"
    return f"{path} ({'present' if path.is_file() else 'not downloaded'})"


class _RichProgress:
    """Adapts :class:`synapse_toolkit.datasets.DownloadProgress` to a rich progress bar."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: TaskID | None = None

    def start(self, label: str, total: int | None, completed: int) -> None:
        if self.task is None:
            self.task = self.progress.add_task(label, total=total, completed=completed)
        else:
            self.progress.reset(self.task, total=total, completed=completed, description=label)

    def advance(self, nbytes: int) -> None:
        if self.task is not None:
            self.progress.advance(self.task, nbytes)

    def finish(self) -> None:
        pass


@contextmanager
def _show_warnings() -> Iterator[None]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for w in caught:
                _err.print(f"[yellow]warning:[/] {w.message}")


@app.command()
def fetch(
    names: Annotated[list[str] | None, typer.Argument(help="Entries or groups.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Fetch every downloadable entry.")] = False,
    retries: Annotated[int, typer.Option(help="Retries per URL (each resumes).", min=0)] = 3,
) -> None:
    """Download (or verify the cached copy of) entries or groups; prints their local paths."""
    registry = get_registry()
    if all_ == bool(names):
        raise DataError("name entries or groups to fetch, or use --all (not both)")
    entries = registry.entries() if all_ else _expand(registry, names or [])
    entries = [e for e in entries if not (all_ and e.bundled)]
    missing = [e for e in entries if not e.bundled and not is_cached(e)]
    if missing:
        _err.print(
            f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, {len(missing)} to "
            f"download ({_total_size(missing)}) into {cache_dir()}"
        )
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    failures: list[str] = []
    fetched: list[str] = []
    progress = Progress(*columns, console=_err, redirect_stdout=False, redirect_stderr=False)
    with progress:
        for entry in entries:
            try:
                with _show_warnings():
                    path = fetch_entry(entry, progress=_RichProgress(progress), retries=retries)
            except DataError as exc:
                failures.append(str(exc))
                if len(entries) > 1:
                    _err.print(f"[red]failed:[/] {exc}")
                continue
            fetched.append(f"{entry.name}\t{path}")
    for line in fetched:
        typer.echo(line)
    if len(failures) == 1 and len(entries) == 1:
        raise DataError(failures[0])
    if failures:
        raise DataError(f"{len(failures)} of {len(entries)} fetches failed")


@app.command()
def path(name: Annotated[str, typer.Argument(help="Dataset or model name.")]) -> None:
    """Print the local path of a fetched entry (never downloads)."""
    registry = get_registry()
    entry = registry.get(name)
    typer.echo(str(fetch_entry(entry, download=False)))


@app.command()
def verify(
    name: Annotated[
        str | None, typer.Argument(help="Entry or group (default: all cached).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Re-hash cached files against their sha256; exit code 1 on any mismatch."""
    registry = get_registry()
    entries = registry.expand(name) if name else registry.entries()
    if as_json:
        results = [verify_entry(e) for e in entries]
        rows = [{"name": r.entry.name, "status": r.status, "path": str(r.path or ""),
                 "expected": r.expected, "actual": r.actual}
                for r in results if not (r.status == "missing" and name is None)]  # fmt: skip
        typer.echo(dumps(rows, indent=1))
        if any(r["status"] in ("mismatch", "missing") for r in rows):
            raise typer.Exit(1)
        return
    table = Table(title="verification", title_justify="left")
    for column in ("name", "status", "path", "detail"):
        table.add_column(column, overflow="fold")
    bad = 0
    not_cached = 0
    for entry in entries:
        result = verify_entry(entry)
        if result.status == "missing" and name is None:
            not_cached += 1
            continue
        if result.status == "ok":
            status, detail = "[green]ok[/]", result.actual or ""
        elif result.status == "unrecorded":
            status, detail = "[yellow]unrecorded[/]", f"no hash recorded; sha256 {result.actual}"
        elif result.status == "mismatch":
            bad += 1
            status = "[red]MISMATCH[/]"
            detail = f"expected {result.expected}, got {result.actual}"
        else:
            bad += 1
            status, detail = "[red]missing[/]", f"run `syntk datasets fetch {entry.name}`"
        table.add_row(entry.name, status, str(result.path or "-"), detail)
    _out.print(table)
    if not_cached:
        _out.print(f"{not_cached} entries are not cached (not checked)")
    if bad:
        raise DataError(f"{bad} entr{'y' if bad == 1 else 'ies'} failed verification")
