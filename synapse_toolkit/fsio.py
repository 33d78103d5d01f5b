"""Files on disk: one sha256, atomic writes that honour the umask, standard JSON, a run lock.

Every file syntk writes lands by rename from a temporary name beside it, so an interrupted
write never leaves a file that looks complete; temporary names start with ``.`` and end with
``.tmp`` so the next run can remove them (:func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from synapse_toolkit.errors import DataError

_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain ``open(path, 'w')`` would give a new file under the current umask."""
    return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success it is renamed over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and rename."""
    with atomic_open(path) as f:
        f.write(text)


def standard_json(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by ``None`` (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: standard_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [standard_json(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return standard_json(value.item())
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """Standard JSON text (NaN/inf as ``null``)."""
    return json.dumps(standard_json(value), allow_nan=False, **kwargs)


def atomic_write_json(path: Path, value: Any, **kwargs: Any) -> None:
    """Write standard JSON atomically."""
    atomic_write_text(path, dumps(value, **kwargs))


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete ``.<name>.<random>.tmp`` files left in ``directory`` by a killed writer."""
    removed = []
    if directory.is_dir():
        for p in directory.glob(".*.tmp"):
            if p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


# -- destinations -------------------------------------------------------------------------------
def check_destination(
    dest: Path, *, inputs: tuple[Path, ...] = (), overwrite: bool = False, what: str = "output"
) -> None:
    """Refuse to write ``dest`` when it is a directory, one of ``inputs``, or (without
    ``overwrite``) an existing file. Raises :class:`DataError` with one line naming it."""
    if dest.is_dir():
        raise DataError(f"{dest}: is a directory; give a file name for the {what}")
    for src in inputs:
        with contextlib.suppress(OSError):
            if src.exists() and dest.exists() and os.path.samefile(src, dest):
                raise DataError(f"{dest}: refusing to overwrite an input file with the {what}")
    if dest.exists() and not overwrite:
        raise DataError(f"{dest}: file exists; pass --overwrite to replace it")


def read_run_manifest(run_dir: Path) -> dict[str, Any]:
    """The ``manifest.json`` of a syntk run directory; one DataError naming the file when it is
    missing, not JSON, or not a run's manifest (a JSON object with ``stages``)."""
    path = Path(run_dir) / "manifest.json"
    if not path.is_file():
        raise DataError(f"{run_dir}: no manifest.json (not a syntk run directory)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise DataError(f"{path}: not valid JSON ({' '.join(str(exc).split())})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("stages", {}), dict):
        raise DataError(f"{path}: not a syntk run manifest (expected a JSON object of stages)")
    return manifest


# -- run-directory lock -------------------------------------------------------------------------
LOCK_NAME = ".syntk.lock"


@dataclass
class RunLock:
    """An exclusive lock on a run directory, held for the life of one run.

    The lock is an ``flock`` on ``<dir>/.syntk.lock``, which the kernel releases when the
    holder dies, so a lock file left by a killed run is detected as stale and taken over. The
    file records the holder's pid, host and start time for the error message.
    """

    directory: Path
    _file: IO[str] | None = None
    took_over: dict[str, Any] | None = None

    def acquire(self) -> RunLock:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / LOCK_NAME
        f = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            f.seek(0)
            holder = _parse_holder(f.read())
            f.close()
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise DataError(f"{path}: cannot lock the run directory: {exc}") from None
            raise DataError(
                f"{self.directory}: in use by another syntk run (pid {holder.get('pid', '?')} "
                f"on {holder.get('host', '?')}, started {holder.get('started', '?')}); "
                "wait for it or choose another output.dir"
            ) from None
        f.seek(0)
        previous = _parse_holder(f.read())
        if previous:
            self.took_over = previous
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))  # fmt: skip
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is None:
            return
        with contextlib.suppress(OSError):
            self._file.seek(0)
            self._file.truncate()
            self._file.flush()
        fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
        self._file.close()
        self._file = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _parse_holder(text: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}
