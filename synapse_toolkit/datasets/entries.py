"""One registry entry: a downloadable file or archive, or a file shipped inside a package.

An entry is either a **dataset** (resolved with :func:`synapse_toolkit.datasets.resolve_dataset`)
or a **model** (an ONNX file resolved with :func:`synapse_toolkit.datasets.model_path`). Its source
is either ``url`` (plus optional ``mirrors`` serving the same bytes) or ``package`` + ``path``
(a *bundled* file inside an installed Python package).

Every entry is pinned by ``sha256`` unless it says ``unpinned = true`` (only allowed for
downloads whose provider publishes no checksum): the first download of an unpinned entry is
accepted with a warning and its hash recorded in the cache's lock file; later downloads must
match that hash. Bundled files and models must be pinned.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any, Literal
from urllib.parse import unquote, urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from synapse_toolkit.errors import DataError

#: Entry and group names: ``/``-separated parts, each starting with a letter or digit.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+\-]*(/[A-Za-z0-9][A-Za-z0-9._+\-]*)*$"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
EntryKind = Literal["dataset", "model"]
ArchiveFormat = Literal["zip", "tar"]
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


class Entry(BaseModel):
    """A dataset or model file: where it comes from, how it is pinned, and what it contains."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN, description="registry name, e.g. 'cremi/sample_A'")
    kind: EntryKind = "dataset"
    url: str | None = Field(None, description="primary download URL")
    mirrors: tuple[str, ...] = Field((), description="further URLs serving the same bytes")
    package: str | None = Field(None, description="bundled: importable package holding the file")
    path: str | None = Field(None, description="bundled: file path inside `package`")
    filename: str | None = Field(None, description="local file name (default: from the URL)")
    sha256: str | None = Field(None, description="hex sha256 of the file (pinned entries)")
    unpinned: bool = Field(False, description="no published checksum: trust on first download")
    size: int | None = Field(None, ge=0, description="file size in bytes, if known")
    archive: ArchiveFormat | None = Field(None, description="zip/tar: unpacked after download")
    licence: str = "not stated by the provider"
    citation: str = ""
    homepage: str = ""
    description: str = ""
    voxel_size_nm: tuple[float, float, float] | None = Field(None, description="z, y, x in nm")
    axis_order: str | None = Field(None, description="e.g. 'zyx' or 'tyx'")
    datasets: tuple[str, ...] = Field((), description="keys inside the file / archive members")
    groups: tuple[str, ...] = Field((), description="group names this entry belongs to")
    reproduce: str = Field("", description="command that re-creates the file (models)")
    task: str | None = Field(None, description="models: what it predicts, e.g. 'affinities'")
    modality: str | None = Field(
        None, description="models: imaging it was trained on, e.g. 'ssTEM', 'FIB-SEM', 'phantom'"
    )
    training_data: Literal["real", "synthetic"] | None = Field(
        None, description="models: trained on real or synthetic (phantom) volumes"
    )
    plugin: str = Field("registry", description="who registered the entry")

    @field_validator("sha256")
    @classmethod
    def _check_sha256(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.lower().removeprefix("sha256:")
        if not _SHA256.match(value):
            raise ValueError("must be 64 hexadecimal digits")
        return value

    @field_validator("groups")
    @classmethod
    def _check_groups(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for group in value:
            if not re.match(NAME_PATTERN, group):
                raise ValueError(f"bad group name {group!r}")
        return value

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str | None) -> str | None:
        if value is not None:
            parts = PurePosixPath(value).parts
            if not parts or PurePosixPath(value).is_absolute() or ".." in parts:
                raise ValueError("must be a relative path inside the package without '..'")
        return value

    @field_validator("filename")
    @classmethod
    def _check_filename(cls, value: str | None) -> str | None:
        if value is not None and (
            "/" in value or "\\" in value or value in (".", "..") or value.startswith(".")
        ):
            raise ValueError("must be a plain file name")
        return value

    @model_validator(mode="after")
    def _check_source(self) -> Entry:
        bundled = self.package is not None or self.path is not None
        if bundled and (self.package is None or self.path is None):
            raise ValueError("a bundled entry needs both `package` and `path`")
        if bundled == (self.url is not None):
            raise ValueError("give exactly one source: `url` or `package` + `path`")
        if bundled and self.mirrors:
            raise ValueError("a bundled entry has no mirrors")
        if self.sha256 is None and not self.unpinned:
            raise ValueError(
                "no `sha256`; set `unpinned = true` only if the provider publishes no checksum"
            )
        if self.sha256 is not None and self.unpinned:
            raise ValueError("`unpinned = true` contradicts the given `sha256`")
        if self.unpinned and (bundled or self.kind == "model"):
            raise ValueError("bundled files and models must be pinned by `sha256`")
        if not bundled:
            for url in (self.url, *self.mirrors):
                if urlparse(str(url)).scheme not in ("http", "https"):
                    raise ValueError(f"URL {url!r} is not http(s)")
            if self.filename is None and not _url_basename(str(self.url)):
                raise ValueError("cannot derive a file name from the URL; set `filename`")
        return self

    # -- derived properties --------------------------------------------------------------------
    @property
    def bundled(self) -> bool:
        return self.package is not None

    @property
    def pinned(self) -> bool:
        return self.sha256 is not None

    @property
    def urls(self) -> tuple[str, ...]:
        """The primary URL followed by the mirrors (empty for bundled entries)."""
        return () if self.url is None else (self.url, *self.mirrors)

    @property
    def local_filename(self) -> str:
        """The file name used in the cache (or inside the package, for bundled entries)."""
        if self.filename is not None:
            return self.filename
        if self.path is not None:
            return PurePosixPath(self.path).name
        return _url_basename(str(self.url))

    @property
    def archive_format(self) -> ArchiveFormat | None:
        """``archive`` if given, else guessed from the file name (``.zip``, ``.tar.*``)."""
        if self.archive is not None:
            return self.archive
        lower = self.local_filename.lower()
        if lower.endswith(".zip"):
            return "zip"
        if lower.endswith(_TAR_SUFFIXES):
            return "tar"
        return None

    @property
    def source(self) -> str:
        """A short description of where the file comes from."""
        return f"package {self.package}: {self.path}" if self.bundled else str(self.url)


def _url_basename(url: str) -> str:
    """The last path segment of ``url``, decoded; empty unless it is a plain file name (an
    encoded separator such as ``%2F`` or a NUL must never reach the file system)."""
    name = unquote(PurePosixPath(urlparse(url).path).name)
    unsafe = any(c in name for c in "/\\\0") or name in ("", ".", "..") or name.startswith(".")
    return "" if unsafe else name


def make_entry(data: dict[str, Any], *, where: str, kind: EntryKind | None = None) -> Entry:
    """Validate one entry table; the error names ``where`` (file or plugin) and the entry."""
    values = dict(data)
    if kind is not None:
        values.setdefault("kind", kind)
    try:
        return Entry.model_validate(values)
    except ValidationError as exc:
        label = values.get("name", "<no name>")
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'entry'}: {err['msg']}"
            for err in exc.errors()
        )
        raise DataError(f"{where}: bad registry entry {label!r}: {problems}") from None
