"""The local cache: its location, offline mode, hashing, verification stamps and the lock file.

Layout under :func:`cache_dir`::

    <cache>/<entry name>/<file name>          the verified file
    <cache>/<entry name>/<file name>.part     an unfinished download (never used as data)
    <cache>/<entry name>/.<file name>.verified  stamp: sha256, size and mtime at last verification
    <cache>/<entry name>/contents/            an unpacked archive
    <cache>/unpinned.lock.json                hashes recorded on first download of unpinned entries

A stamp lets a file whose size and modification time are unchanged skip re-hashing; ``syntk
datasets verify`` always re-hashes.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pooch

from synapse_toolkit.errors import DataError
from synapse_toolkit.fsio import sha256_file as file_sha256

DATA_DIR_ENV = "SYNTK_DATA_DIR"
OFFLINE_ENV = "SYNTK_OFFLINE"
LOCK_FILENAME = "unpinned.lock.json"


def cache_dir() -> Path:
    """``$SYNTK_DATA_DIR`` if set, else the OS cache directory for syntk."""
    env = os.environ.get(DATA_DIR_ENV, "").strip()
    return Path(env).expanduser() if env else Path(pooch.os_cache("syntk"))


def offline() -> bool:
    """True when ``SYNTK_OFFLINE`` is set to 1/true/yes/on: no network access at all."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def entry_dir(name: str, root: Path | None = None) -> Path:
    """The cache folder of one entry (its name's ``/`` parts become sub-folders); refuses a
    name whose folder would fall outside the cache."""
    base = cache_dir() if root is None else root
    parts = name.split("/")
    if any(p in ("", ".", "..") or "\\" in p or "\0" in p for p in parts):
        raise DataError(f"dataset name {name!r}: not a safe folder name")
    return base.joinpath(*parts)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file beside ``path`` and rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# -- verification stamps ----------------------------------------------------------------------
def _stamp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.verified")


def write_stamp(path: Path, sha256: str) -> None:
    st = path.stat()
    write_json_atomic(
        _stamp_path(path), {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    )


def remove_file(path: Path) -> None:
    """Delete a cached file and its stamp (missing files are fine)."""
    for p in (path, _stamp_path(path)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def matches(path: Path, sha256: str, *, size: int | None = None, full: bool = False) -> bool:
    """True if the file's sha256 is ``sha256``; an unchanged stamped file is not re-hashed."""
    st = path.stat()
    if size is not None and st.st_size != size:
        return False
    if not full:
        stamp = _read_json(_stamp_path(path))
        if stamp == {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}:
            return True
    if file_sha256(path) != sha256:
        return False
    write_stamp(path, sha256)
    return True


# -- lock file of unpinned entries ---------------------------------------------------------------
def _lock_path(root: Path | None = None) -> Path:
    return (cache_dir() if root is None else root) / LOCK_FILENAME


def locked_hash(name: str, root: Path | None = None) -> str | None:
    """The sha256 recorded for an unpinned entry on its first download, if any."""
    data = _read_json(_lock_path(root)) or {}
    record = data.get("entries", {}).get(name)
    return record.get("sha256") if isinstance(record, dict) else None


def record_hash(name: str, sha256: str, size: int, url: str, root: Path | None = None) -> Path:
    """Record an unpinned entry's hash in the lock file (atomic read-modify-write)."""
    path = _lock_path(root)
    with file_lock(path.with_name(path.name + ".lock")):
        data = _read_json(path) or {}
        entries = data.setdefault("entries", {})
        data["format"] = 1
        entries[name] = {
            "sha256": sha256,
            "size": size,
            "url": url,
            "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_json_atomic(path, data)
    return path


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (POSIX ``flock``; a no-op where unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
