"""Fetch throughput and cache-verification cost of the dataset registry, on 127.0.0.1.

Serves a random file of ``--mb`` megabytes from a local HTTP server, then times:
a first fetch (download + sha256 + rename), a resumed fetch after the connection is cut halfway,
a cached fetch (verification stamp: no re-hash) and a full ``verify`` (re-hash).
The retry back-off pause is set to 0 so the resumed run times the data path only.

    python benchmarks/bench_datasets_fetch.py --mb 200
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from synapse_toolkit.datasets import DatasetRegistry, fetch, verify_entry
from synapse_toolkit.datasets import download as download_module


def serve(data: bytes, cut_once_at: int | None) -> tuple[ThreadingHTTPServer, str]:
    state = {"cut": cut_once_at}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            start = 0
            if rng := self.headers.get("Range"):
                start = int(rng.removeprefix("bytes=").split("-")[0])
            body = memoryview(data)[start:]
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if state["cut"] is not None:
                self.wfile.write(body[: state["cut"]])
                state["cut"] = None
                self.close_connection = True
                return
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/data.bin"


def timed(label: str, nbytes: int, fn: Callable[[], object]) -> None:
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    print(f"{label:<38} {dt:7.3f} s  {nbytes / dt / 1e6:8.0f} MB/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=200)
    args = parser.parse_args()
    data = os.urandom(args.mb * 1_000_000)
    digest = hashlib.sha256(data).hexdigest()
    os.environ["NO_PROXY"] = "127.0.0.1"
    download_module.BACKOFF_BASE = 0.0  # time the data path, not the retry pause
    with tempfile.TemporaryDirectory() as tmp:
        for run, cut in (("first fetch", None), ("fetch, cut at 50% then resumed", len(data) // 2)):
            os.environ["SYNTK_DATA_DIR"] = str(Path(tmp) / run.split()[0] / str(cut))
            httpd, url = serve(data, cut)
            registry = DatasetRegistry()
            registry.add({"name": "bench/file", "url": url, "sha256": digest})
            timed(run, len(data), partial(fetch, "bench/file", registry=registry, retries=1))
            httpd.shutdown()
        entry = registry.get("bench/file")
        timed(
            "cached fetch (stamp, no re-hash)",
            len(data),
            lambda: fetch("bench/file", registry=registry),
        )
        timed("verify (full re-hash)", len(data), lambda: verify_entry(entry))


if __name__ == "__main__":
    main()
