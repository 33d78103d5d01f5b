"""Safe unpacking of zip and tar archives.

Every member is checked before anything is written: absolute paths, drive letters, ``..``
components, links that point outside the destination, zip symlinks and tar device files are
refused with an error naming the archive and the member. The archive is unpacked into a
temporary folder beside the destination, which is renamed into place only when complete.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path

from synapse_toolkit.datasets.entries import ArchiveFormat
from synapse_toolkit.errors import DataError

_DRIVE = re.compile(r"^[A-Za-z]:")


def _safe_member_path(archive: Path, name: str) -> str:
    """The member's normalised relative path, or a DataError if it could escape."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or _DRIVE.match(posix):
        raise DataError(f"archive {archive}: refusing member {name!r} with an absolute path")
    parts = [p for p in posix.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise DataError(f"archive {archive}: refusing member {name!r} containing '..'")
    if not parts:
        raise DataError(f"archive {archive}: refusing member with empty name {name!r}")
    return "/".join(parts)


def _check_link(archive: Path, member: str, target: str, *, relative_to_member: bool) -> None:
    """Refuse a link whose target is absolute or resolves outside the archive root."""
    posix = target.replace("\\", "/")
    base = posixpath.dirname(member) if relative_to_member else ""
    resolved = posixpath.normpath(posixpath.join(base, posix))
    if (
        posix.startswith("/")
        or _DRIVE.match(posix)
        or resolved == ".."
        or resolved.startswith("../")
    ):
        raise DataError(
            f"archive {archive}: refusing link {member!r} -> {target!r} (points outside)"
        )


def check_zip(archive: Path, zf: zipfile.ZipFile) -> list[tuple[zipfile.ZipInfo, str]]:
    members = []
    for info in zf.infolist():
        rel = _safe_member_path(archive, info.filename)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise DataError(f"archive {archive}: refusing symbolic link member {info.filename!r}")
        members.append((info, rel))
    return members


def check_tar(archive: Path, tf: tarfile.TarFile) -> list[tarfile.TarInfo]:
    members = tf.getmembers()
    for m in members:
        rel = _safe_member_path(archive, m.name)
        if m.issym():
            _check_link(archive, rel, m.linkname, relative_to_member=True)
        elif m.islnk():
            _check_link(archive, rel, m.linkname, relative_to_member=False)
        elif not (m.isfile() or m.isdir()):
            raise DataError(f"archive {archive}: refusing special file member {m.name!r}")
    return members


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info, rel in check_zip(archive, zf):
            target = dest.joinpath(*rel.split("/"))
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)


def _extract_tar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive) as tf:
        check_tar(archive, tf)
        if hasattr(tarfile, "data_filter"):  # second line of defence (Python >= 3.11.4)
            tf.extractall(dest, filter="data")
        else:  # pragma: no cover - old Python; members were checked above
            tf.extractall(dest)


def safe_extract(archive: Path, dest: Path, fmt: ArchiveFormat) -> None:
    """Unpack ``archive`` into ``dest`` (replacing it) after checking every member."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    try:
        try:
            (_extract_zip if fmt == "zip" else _extract_tar)(archive, tmp)
        except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
            raise DataError(f"archive {archive} is not a readable {fmt} file: {exc}") from None
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp)
