"""Getting registry entries onto disk, verified: fetch, resolve, verify, model paths.

A cached file is verified against its sha256 before any network use; a download is written to a
``.part`` file, hashed, and renamed into place only when its hash matches (pooch does the
hash-check-and-rename), so no partial or mismatched file is ever found under the final name.
``SYNTK_OFFLINE=1`` turns every would-be download into an error naming the ``syntk datasets
fetch`` command that brings the file.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pooch
import requests

from synapse_toolkit.datasets import cache
from synapse_toolkit.datasets.archives import safe_extract
from synapse_toolkit.datasets.download import DownloadProgress, ResumableDownloader
from synapse_toolkit.datasets.entries import Entry
from synapse_toolkit.datasets.registry import DatasetRegistry, get_registry
from synapse_toolkit.errors import DataError

CONTENTS_DIR = "contents"
_EXTRACTED_MARK = ".syntk-extracted.json"
DEFAULT_RETRIES = 3


class UnpinnedDownloadWarning(UserWarning):
    """An unpinned entry was downloaded for the first time and its hash recorded."""


def fetch_command(name: str) -> str:
    return f"syntk datasets fetch {name}"


# -- where things live ----------------------------------------------------------------------------
def cached_file(entry: Entry) -> Path:
    """Where the entry's file is (bundled) or would be (downloads) on disk."""
    if entry.bundled:
        return _bundled_file(entry)
    folder = cache.entry_dir(entry.name)
    target = folder / entry.local_filename
    if target.resolve().parent != folder.resolve():
        raise DataError(f"dataset {entry.name}: file name {entry.local_filename!r} leaves its "
                        f"folder {folder}")  # fmt: skip
    return target


def _bundled_file(entry: Entry) -> Path:
    """The file inside its package, found without importing the package."""
    try:
        spec = importlib.util.find_spec(str(entry.package))
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location).joinpath(*str(entry.path).split("/"))
        if candidate.is_file():
            return candidate
    if not locations:
        raise DataError(f"{entry.name}: package {entry.package!r} is not installed")
    raise DataError(f"{entry.name}: file {entry.path!r} is missing from package {entry.package}")


def _contents_dir(entry: Entry) -> Path:
    return cache.entry_dir(entry.name) / CONTENTS_DIR


def _result_path(entry: Entry, file: Path) -> Path:
    """An archive resolves to its unpacked folder, or to its single top-level item."""
    if entry.archive_format is None:
        return file
    contents = _contents_dir(entry)
    items = [p for p in contents.iterdir() if p.name != _EXTRACTED_MARK]
    return items[0] if len(items) == 1 else contents


def is_cached(entry: Entry) -> bool:
    """Cheap check (no hashing): is the final file present?"""
    try:
        return cached_file(entry).is_file()
    except DataError:
        return False


def expected_hash(entry: Entry) -> str | None:
    """The pinned sha256, or the hash recorded on an unpinned entry's first download."""
    return entry.sha256 if entry.pinned else cache.locked_hash(entry.name)


# -- fetching --------------------------------------------------------------------------------------
def fetch_entry(
    entry: Entry,
    *,
    progress: DownloadProgress | None = None,
    retries: int = DEFAULT_RETRIES,
    download: bool = True,
) -> Path:
    """Make the entry's verified file (and unpacked archive) available; return its path.

    With ``download=False`` (or ``SYNTK_OFFLINE=1``) the network is never used: a missing or
    damaged file is an error naming the ``syntk datasets fetch`` command.
    """
    if entry.bundled:
        return _verified_bundled(entry)
    file = cached_file(entry)
    no_network = _no_network_reason(download)
    if no_network and not file.is_file():
        raise DataError(
            f"{entry.name} is not in the cache ({file}) and {no_network}; "
            f"run `{fetch_command(entry.name)}`"
            + (" with network access" if cache.offline() else "")
        )
    with cache.file_lock(file.with_name(f".{file.name}.lock")):
        _ensure_file(entry, file, progress=progress, retries=retries, no_network=no_network)
        if entry.archive_format is not None:
            _ensure_extracted(entry, file)
    return _result_path(entry, file)


def _verified_bundled(entry: Entry) -> Path:
    file = _bundled_file(entry)
    actual = cache.file_sha256(file)
    if actual != entry.sha256:
        raise DataError(
            f"{entry.name}: {file} does not match its sha256 in the registry "
            f"(expected {entry.sha256}, got {actual}); the installed file is damaged or stale"
        )
    return file


def _no_network_reason(download: bool) -> str | None:
    if cache.offline():
        return f"{cache.OFFLINE_ENV} is set, so it cannot be downloaded"
    return None if download else "downloading was not requested"


def _ensure_file(
    entry: Entry,
    file: Path,
    *,
    progress: DownloadProgress | None,
    retries: int,
    no_network: str | None,
) -> None:
    expected = expected_hash(entry)
    if file.is_file():
        if expected is None:  # unpinned, cached, but its recorded hash was lost
            _record_unpinned(entry, file, cache.file_sha256(file), "the cached file")
            return
        if cache.matches(file, expected, size=entry.size):
            return
        if no_network:
            raise DataError(
                f"{entry.name}: the cached file {file} does not match its sha256 {expected} "
                f"({no_network}); run `{fetch_command(entry.name)}` to download it again"
            )
        warnings.warn(
            f"{entry.name}: the cached file {file} does not match its sha256; downloading again",
            stacklevel=3,
        )
        cache.remove_file(file)
    _download(entry, file, expected, progress=progress, retries=retries)


def _download(
    entry: Entry,
    file: Path,
    expected: str | None,
    *,
    progress: DownloadProgress | None,
    retries: int,
) -> None:
    failures: list[str] = []
    for url in entry.urls:
        downloader = ResumableDownloader(
            file.with_name(file.name + ".part"),
            label=entry.name,
            expected_size=entry.size,
            retries=retries,
            progress=progress,
        )
        try:
            with _quiet_pooch():
                pooch.retrieve(
                    url,
                    known_hash=None if expected is None else f"sha256:{expected}",
                    fname=file.name,
                    path=file.parent,
                    downloader=downloader,
                    progressbar=False,
                )
        except ValueError as exc:  # pooch: hash mismatch; it deleted the download
            if downloader.sha256 is None:  # not a hash check: some other bad value
                failures.append(f"{url}: {exc}")
            else:
                failures.append(
                    f"{url}: sha256 mismatch (expected {expected}, got {downloader.sha256}); "
                    "the download was discarded"
                )
            continue
        except DataError as exc:
            failures.append(str(exc).removeprefix(f"{entry.name}: "))
            continue
        except (requests.RequestException, OSError) as exc:
            failures.append(f"{url}: {type(exc).__name__}: {exc}")
            continue
        sha = downloader.sha256 or cache.file_sha256(file)
        if expected is None:
            _record_unpinned(entry, file, sha, url)
        cache.write_stamp(file, sha)
        return
    raise DataError(f"{entry.name}: could not fetch a verified copy: " + " | ".join(failures))


def _record_unpinned(entry: Entry, file: Path, sha: str, source: str) -> None:
    lock = cache.record_hash(entry.name, sha, file.stat().st_size, source)
    cache.write_stamp(file, sha)
    warnings.warn(
        f"{entry.name} is unpinned (its provider publishes no checksum): accepted {source} "
        f"with sha256 {sha} and recorded it in {lock}; later downloads must match it",
        UnpinnedDownloadWarning,
        stacklevel=4,
    )


@contextlib.contextmanager
def _quiet_pooch() -> Iterator[None]:
    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _ensure_extracted(entry: Entry, archive: Path) -> None:
    fmt = entry.archive_format
    assert fmt is not None
    sha = expected_hash(entry)
    contents = _contents_dir(entry)
    mark = contents / _EXTRACTED_MARK
    try:
        if json.loads(mark.read_text()).get("sha256") == sha:
            return
    except (OSError, ValueError):
        pass
    safe_extract(archive, contents, fmt)
    cache.write_json_atomic(mark, {"archive": archive.name, "sha256": sha})


# -- public API ------------------------------------------------------------------------------------
def fetch(
    name: str,
    *,
    registry: DatasetRegistry | None = None,
    progress: DownloadProgress | None = None,
    retries: int = DEFAULT_RETRIES,
) -> list[Path]:
    """Fetch an entry or every member of a group; returns the local paths."""
    reg = registry or get_registry()
    return [fetch_entry(e, progress=progress, retries=retries) for e in reg.expand(name)]


def resolve_dataset(
    name: str, *, registry: DatasetRegistry | None = None, download: bool = True
) -> Path:
    """The local path of a registry dataset (``input.dataset = "cremi/sample_A"`` in a TOML).

    Downloads the dataset if it is missing and ``download`` is true (and not offline); an
    archive resolves to its unpacked folder (or its single top-level item).
    """
    reg = registry or get_registry()
    entry = reg.get(name)
    if entry.kind != "dataset":
        raise DataError(f"{name!r} is a model, not a dataset; use model_path({name!r})")
    return fetch_entry(entry, download=download)


def model_path(name: str, *, registry: DatasetRegistry | None = None) -> Path:
    """The path of a registry ONNX model, returned only after its sha256 is verified."""
    reg = registry or get_registry()
    entry = reg.get(name)
    if entry.kind != "model":
        raise DataError(f"{name!r} is a dataset, not a model; use resolve_dataset({name!r})")
    if entry.bundled:
        return _verified_bundled(entry)
    file = fetch_entry(entry)
    if not cache.matches(file, str(entry.sha256), full=True):  # re-hash: never trust a stamp
        raise DataError(f"model {name}: {file} does not match its sha256 {entry.sha256}")
    return file


Status = Literal["ok", "mismatch", "missing", "unrecorded"]


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of re-hashing one entry's file."""

    entry: Entry
    status: Status
    path: Path | None
    expected: str | None
    actual: str | None = None


def verify_entry(entry: Entry) -> VerifyResult:
    """Re-hash the entry's file (ignoring stamps) and compare with its expected sha256."""
    try:
        file = cached_file(entry)
    except DataError:
        return VerifyResult(entry, "missing", None, entry.sha256)
    expected = expected_hash(entry)
    if not file.is_file():
        return VerifyResult(entry, "missing", file, expected)
    actual = cache.file_sha256(file)
    if expected is None:
        return VerifyResult(entry, "unrecorded", file, None, actual)
    if actual != expected:
        return VerifyResult(entry, "mismatch", file, expected, actual)
    if not entry.bundled:
        cache.write_stamp(file, actual)
    return VerifyResult(entry, "ok", file, expected, actual)
