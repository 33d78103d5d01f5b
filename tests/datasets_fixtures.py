"""A local HTTP file server on 127.0.0.1 and helpers for the dataset-registry tests.

The server serves in-memory files, honours ``Range`` requests (unless told not to), and can
drop the connection after a number of body bytes, the way a flaky network does.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from synapse_toolkit.datasets import DatasetRegistry
from synapse_toolkit.datasets import download as download_module


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class FileServer:
    """State shared with the request handler; ``url(name)`` gives a file's address."""

    files: dict[str, bytes] = field(default_factory=dict)
    #: path -> [bytes to send before dropping the connection, how many more times to do so]
    cut: dict[str, list[int]] = field(default_factory=dict)
    support_range: bool = True
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    port: int = 0

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def cut_next(self, name: str, after: int, times: int = 1) -> None:
        self.cut[f"/{name}"] = [after, times]


def _handler(state: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            state.requests.append((self.path, dict(self.headers)))
            data = state.files.get(self.path.lstrip("/"))
            if data is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            etag = f'"{sha256(data)[:16]}"'
            start = 0
            range_header = self.headers.get("Range")
            if_range = self.headers.get("If-Range")
            if state.support_range and range_header and if_range in (None, etag):
                start = int(range_header.removeprefix("bytes=").split("-")[0])
            body = data[start:]
            if start:
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("ETag", etag)
            if state.support_range:
                self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            cut = state.cut.get(self.path)
            if cut and cut[1] > 0:
                cut[1] -= 1
                self.wfile.write(body[: cut[0]])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client hanging up early (as the tests make it do) is not an error here."""


@pytest.fixture
def server() -> Iterator[FileServer]:
    state = FileServer()
    httpd = _QuietServer(("127.0.0.1", 0), _handler(state))
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh cache (SYNTK_DATA_DIR), online, no proxy for 127.0.0.1, no retry back-off."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("SYNTK_DATA_DIR", str(cache))
    monkeypatch.delenv("SYNTK_OFFLINE", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr(download_module, "BACKOFF_BASE", 0.0)
    return cache


def registry_with(*entries: dict[str, Any]) -> DatasetRegistry:
    """A registry holding only the given entries (added the way a plugin adds them)."""
    registry = DatasetRegistry()
    registry.current_plugin = "tests"
    for entry in entries:
        registry.add(entry)
    return registry
