"""A resumable HTTP downloader for pooch, with retries and progress reporting.

pooch hands the downloader a temporary file beside the final one; it checks the sha256 and only
then renames it into place (deleting it otherwise). This downloader keeps the bytes received so
far in a persistent ``<file>.part`` so an interrupted download resumes with an HTTP ``Range``
request (guarded by ``If-Range`` with the server's ETag or Last-Modified), retries failed
connections with back-off, and moves the finished ``.part`` onto pooch's temporary file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Protocol

import requests

from synapse_toolkit import __version__
from synapse_toolkit.errors import DataError

CHUNK_SIZE = 1 << 16
#: Seconds before the n-th retry: min(BACKOFF_BASE * 2**n, BACKOFF_MAX).
BACKOFF_BASE = 1.0
BACKOFF_MAX = 30.0
TIMEOUT = (30.0, 120.0)  # connect, read (seconds)
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class DownloadProgress(Protocol):
    """Receives download progress (the CLI shows it with rich)."""

    def start(self, label: str, total: int | None, completed: int) -> None: ...

    def advance(self, nbytes: int) -> None: ...

    def finish(self) -> None: ...


class _NoProgress:
    def start(self, label: str, total: int | None, completed: int) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def finish(self) -> None:
        pass


class _Retryable(Exception):
    """A failure worth retrying (connection dropped, timeout, 5xx)."""


class ResumableDownloader:
    """A pooch downloader: ``downloader(url, output_file, pooch)``.

    :param part_path: where unfinished bytes persist between attempts and between runs.
    :param expected_size: bytes the file must have (a server reporting another size is refused).
    :param retries: further attempts after a failed one, each resuming where it stopped.
    """

    def __init__(
        self,
        part_path: Path,
        *,
        label: str,
        expected_size: int | None = None,
        retries: int = 3,
        progress: DownloadProgress | None = None,
        session: requests.Session | None = None,
    ) -> None:
        self.part_path = part_path
        self.meta_path = part_path.with_name(part_path.name + ".json")
        self.label = label
        self.expected_size = expected_size
        self.retries = retries
        self.progress = progress or _NoProgress()
        self.session = session
        #: sha256 of the last completed download (for error messages).
        self.sha256: str | None = None

    def __call__(self, url: str, output_file: Any, pooch: Any, check_only: bool = False) -> Any:
        if check_only:
            return True
        session = self.session or requests.Session()
        session.headers.setdefault("User-Agent", f"syntk/{__version__}")
        try:
            self._download(session, url)
        finally:
            if self.session is None:
                session.close()
        os.replace(self.part_path, str(output_file))
        self._forget_meta()
        return None

    # -- one download with retries ------------------------------------------------------------
    def _download(self, session: requests.Session, url: str) -> None:
        errors: list[str] = []
        for attempt in range(self.retries + 1):
            try:
                self._attempt(session, url)
                return
            except _Retryable as exc:
                errors.append(str(exc))
                if attempt == self.retries:
                    break
                time.sleep(min(BACKOFF_BASE * 2**attempt, BACKOFF_MAX))
            finally:
                self.progress.finish()
        tries = f"{self.retries + 1} attempt{'s' if self.retries else ''}"
        kept = (
            f" (the partial file {self.part_path} is kept; fetching again resumes it)"
            if self.part_path.exists()
            else ""
        )
        raise DataError(
            f"{self.label}: download from {url} failed after {tries}: {errors[-1]}{kept}"
        )

    def _attempt(self, session: requests.Session, url: str) -> None:
        offset = self._resumable_offset(url)
        headers = {"Accept-Encoding": "identity"}
        meta = self._read_meta()
        if offset:
            headers["Range"] = f"bytes={offset}-"
            validator = meta.get("etag") or meta.get("last_modified")
            if validator:
                headers["If-Range"] = validator
        try:
            response = session.get(url, headers=headers, stream=True, timeout=TIMEOUT)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise _Retryable(f"cannot connect: {exc}") from None
        with response:
            if response.status_code == 416 and offset:  # range not satisfiable: start over
                self._discard_part()
                raise _Retryable("server refused to resume; restarting")
            if response.status_code >= 500:
                raise _Retryable(f"HTTP {response.status_code} {response.reason}")
            if response.status_code not in (200, 206):
                raise DataError(
                    f"{self.label}: {url} answered HTTP {response.status_code} {response.reason}"
                )
            start, total = self._body_range(response, offset)
            self._check_size(url, total)
            self._write_meta(url, response)
            self._receive(response, start, total)

    def _body_range(self, response: requests.Response, offset: int) -> tuple[int, int | None]:
        """Where the body starts in the file and the file's total size, if the server says."""
        if response.status_code == 206:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != offset:
                self._discard_part()
                raise _Retryable("server sent an unexpected byte range; restarting")
            total = match.group(3)
            return offset, None if total == "*" else int(total)
        length = response.headers.get("Content-Length")
        return 0, int(length) if length and length.isdigit() else None

    def _check_size(self, url: str, total: int | None) -> None:
        if total is not None and self.expected_size is not None and total != self.expected_size:
            self._discard_part()
            raise DataError(
                f"{self.label}: {url} serves {total} bytes but the registry expects "
                f"{self.expected_size}; refusing the download"
            )

    def _receive(self, response: requests.Response, start: int, total: int | None) -> None:
        self.part_path.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        if start:
            with open(self.part_path, "rb") as f:
                while len(data := f.read(min(1 << 20, start - f.tell()))):
                    digest.update(data)
        self.progress.start(self.label, total, start)
        with open(self.part_path, "r+b" if start else "wb") as f:
            f.seek(start)
            f.truncate()
            try:
                for chunk in response.iter_content(CHUNK_SIZE):
                    f.write(chunk)
                    digest.update(chunk)
                    self.progress.advance(len(chunk))
            except (requests.RequestException, ConnectionError) as exc:
                raise _Retryable(f"connection lost after {f.tell()} bytes: {exc}") from None
            received = f.tell()
        if total is not None and received != total:
            raise _Retryable(f"connection closed after {received} of {total} bytes")
        self.sha256 = digest.hexdigest()

    # -- the .part file and its metadata ---------------------------------------------------------
    def _resumable_offset(self, url: str) -> int:
        if not self.part_path.exists():
            return 0
        if self._read_meta().get("url") != url:
            self._discard_part()
            return 0
        return self.part_path.stat().st_size

    def _read_meta(self) -> dict[str, Any]:
        try:
            with open(self.meta_path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_meta(self, url: str, response: requests.Response) -> None:
        self.meta_path.parent.mkdir(parents=True, exist_ok=True)
        etag = response.headers.get("ETag")
        meta = {
            "url": url,
            # weak ETags may not be used in If-Range
            "etag": etag if etag and not etag.startswith("W/") else None,
            "last_modified": response.headers.get("Last-Modified"),
        }
        with open(self.meta_path, "w") as f:
            json.dump(meta, f)

    def _discard_part(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.part_path.unlink()
        self._forget_meta()

    def _forget_meta(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.meta_path.unlink()
