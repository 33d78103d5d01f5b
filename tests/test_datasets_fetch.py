"""Fetching through a local HTTP server: verification, mismatches, interruptions, offline mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from synapse_toolkit.datasets import (
    UnpinnedDownloadWarning,
    cached_file,
    fetch,
    resolve_dataset,
    verify_entry,
)
from synapse_toolkit.errors import DataError
from tests.datasets_fixtures import FileServer, data_dir, registry_with, server, sha256

__all__ = ["data_dir", "server"]  # pytest fixtures used below

PAYLOAD = bytes(range(256)) * 4000  # 1 MB, not a multiple of the download chunk size


def _pinned(server: FileServer, name: str = "t/sample", data: bytes = PAYLOAD, **extra):
    server.files["sample.hdf"] = data
    return {"name": name, "url": server.url("sample.hdf"), "sha256": sha256(data), **extra}


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".lock"))


def test_fetch_downloads_verifies_and_caches(server: FileServer, data_dir: Path) -> None:
    registry = registry_with(_pinned(server, size=len(PAYLOAD)))
    (path,) = fetch("t/sample", registry=registry)
    assert path == data_dir / "t" / "sample" / "sample.hdf"
    assert path.read_bytes() == PAYLOAD
    assert len(server.requests) == 1
    # a second fetch uses the verified cache and never contacts the server
    assert fetch("t/sample", registry=registry) == [path]
    assert resolve_dataset("t/sample", registry=registry) == path
    assert len(server.requests) == 1
    assert verify_entry(registry.get("t/sample")).status == "ok"
    assert not list(data_dir.rglob("*.part"))


def test_hash_mismatch_fails_and_leaves_nothing_complete(
    server: FileServer, data_dir: Path
) -> None:
    entry = _pinned(server)
    server.files["sample.hdf"] = PAYLOAD[:-1] + b"X"  # the server now serves other bytes
    registry = registry_with(entry)
    with pytest.raises(DataError, match=r"t/sample.*sha256 mismatch.*expected") as err:
        fetch("t/sample", registry=registry)
    assert entry["sha256"] in str(err.value)
    assert sha256(server.files["sample.hdf"]) in str(err.value)
    target = cached_file(registry.get("t/sample"))
    assert not target.exists()
    assert _leftovers(data_dir) == []  # no .part, no temporary file
    with pytest.raises(DataError, match=r"not in the cache"):
        resolve_dataset("t/sample", registry=registry, download=False)
    server.files["sample.hdf"] = PAYLOAD  # fixed upstream: the next fetch succeeds
    assert fetch("t/sample", registry=registry)[0].read_bytes() == PAYLOAD


def test_size_mismatch_is_refused_before_download(server: FileServer, data_dir: Path) -> None:
    registry = registry_with(_pinned(server, size=len(PAYLOAD) + 1))
    with pytest.raises(DataError, match=r"serves 1024000 bytes but the registry expects 1024001"):
        fetch("t/sample", registry=registry)
    assert _leftovers(data_dir) == []


def test_interrupted_download_leaves_nothing_complete_then_resumes(
    server: FileServer, data_dir: Path
) -> None:
    registry = registry_with(_pinned(server))
    server.cut_next("sample.hdf", after=300_000)
    with pytest.raises(DataError, match=r"connection"):
        fetch("t/sample", registry=registry, retries=0)
    entry = registry.get("t/sample")
    assert not cached_file(entry).exists()
    assert verify_entry(entry).status == "missing"
    with pytest.raises(DataError, match=r"not in the cache"):
        resolve_dataset("t/sample", registry=registry, download=False)
    part = cached_file(entry).with_name("sample.hdf.part")
    kept = part.stat().st_size  # what arrived is kept, only under the .part name
    assert 0 < kept <= 300_000

    (path,) = fetch("t/sample", registry=registry, retries=0)
    assert path.read_bytes() == PAYLOAD
    assert server.requests[-1][1]["Range"] == f"bytes={kept}-"
    assert not part.exists()


def test_retries_resume_within_one_fetch(server: FileServer, data_dir: Path) -> None:
    registry = registry_with(_pinned(server))
    server.cut_next("sample.hdf", after=100_000, times=2)
    (path,) = fetch("t/sample", registry=registry, retries=2)
    assert path.read_bytes() == PAYLOAD
    ranges = [h.get("Range") for _, h in server.requests]
    assert len(ranges) == 3 and ranges[0] is None
    starts = [int(r.removeprefix("bytes=").rstrip("-")) for r in ranges[1:]]
    assert 0 < starts[0] < starts[1] <= 200_000  # each attempt resumed where the last stopped


def test_resume_without_server_range_support_restarts(server: FileServer, data_dir: Path) -> None:
    server.support_range = False
    registry = registry_with(_pinned(server))
    server.cut_next("sample.hdf", after=50_000)
    (path,) = fetch("t/sample", registry=registry, retries=1)
    assert path.read_bytes() == PAYLOAD


def test_corrupted_cache_is_replaced_online_and_refused_offline(
    server: FileServer, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = registry_with(_pinned(server))
    (path,) = fetch("t/sample", registry=registry)
    path.write_bytes(b"garbage" + PAYLOAD[7:])  # same size, different bytes, new mtime
    monkeypatch.setenv("SYNTK_OFFLINE", "1")
    with pytest.raises(
        DataError, match=r"does not match its sha256.*syntk datasets fetch t/sample"
    ):
        resolve_dataset("t/sample", registry=registry)
    monkeypatch.delenv("SYNTK_OFFLINE")
    with pytest.warns(UserWarning, match=r"does not match its sha256; downloading again"):
        fetch("t/sample", registry=registry)
    assert path.read_bytes() == PAYLOAD
    assert verify_entry(registry.get("t/sample")).status == "ok"


def test_resolve_without_download_never_uses_the_network(
    server: FileServer, data_dir: Path
) -> None:
    registry = registry_with(_pinned(server))
    with pytest.raises(DataError, match=r"not in the cache .*downloading was not requested"):
        resolve_dataset("t/sample", registry=registry, download=False)
    (path,) = fetch("t/sample", registry=registry)
    path.write_bytes(PAYLOAD[::-1])
    with pytest.raises(
        DataError, match=r"does not match its sha256.*syntk datasets fetch t/sample"
    ):
        resolve_dataset("t/sample", registry=registry, download=False)
    assert len(server.requests) == 1


def test_verify_detects_tampering(server: FileServer, data_dir: Path) -> None:
    registry = registry_with(_pinned(server))
    (path,) = fetch("t/sample", registry=registry)
    with open(path, "r+b") as f:
        f.write(b"\xff")
    result = verify_entry(registry.get("t/sample"))
    assert result.status == "mismatch"
    assert result.actual == sha256(path.read_bytes())


def test_offline_uses_cache_and_never_touches_network(
    server: FileServer, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = registry_with(_pinned(server), _pinned(server, name="t/other"))
    (path,) = fetch("t/sample", registry=registry)
    n_requests = len(server.requests)
    monkeypatch.setenv("SYNTK_OFFLINE", "1")

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("network used in offline mode")

    monkeypatch.setattr(requests.Session, "request", no_network)
    assert resolve_dataset("t/sample", registry=registry) == path
    with pytest.raises(DataError) as err:
        resolve_dataset("t/other", registry=registry)
    message = str(err.value)
    assert "SYNTK_OFFLINE" in message and "`syntk datasets fetch t/other`" in message
    assert len(server.requests) == n_requests
    assert not (data_dir / "t" / "other").exists()


def test_mirror_used_when_primary_fails(server: FileServer, data_dir: Path) -> None:
    server.files["good.hdf"] = PAYLOAD
    server.files["bad.hdf"] = b"not the data"
    registry = registry_with(
        {
            "name": "t/mirrored",
            "url": server.url("missing.hdf"),
            "mirrors": [server.url("bad.hdf"), server.url("good.hdf")],
            "filename": "data.hdf",
            "sha256": sha256(PAYLOAD),
        }
    )
    (path,) = fetch("t/mirrored", registry=registry, retries=0)
    assert path.name == "data.hdf" and path.read_bytes() == PAYLOAD
    assert [p for p, _ in server.requests] == ["/missing.hdf", "/bad.hdf", "/good.hdf"]


def test_all_urls_failing_names_each(server: FileServer, data_dir: Path) -> None:
    registry = registry_with(
        {"name": "t/gone", "url": server.url("gone.hdf"), "sha256": sha256(b"x")}
    )
    with pytest.raises(DataError, match=r"t/gone: could not fetch.*gone.hdf answered HTTP 404"):
        fetch("t/gone", registry=registry)


def test_unpinned_first_download_warns_records_and_pins(server: FileServer, data_dir: Path) -> None:
    server.files["movie.tif"] = PAYLOAD
    registry = registry_with({"name": "t/movie", "url": server.url("movie.tif"), "unpinned": True})
    with pytest.warns(UnpinnedDownloadWarning, match=sha256(PAYLOAD)):
        (path,) = fetch("t/movie", registry=registry)
    lock = json.loads((data_dir / "unpinned.lock.json").read_text())
    assert lock["entries"]["t/movie"]["sha256"] == sha256(PAYLOAD)
    assert lock["entries"]["t/movie"]["url"] == server.url("movie.tif")
    assert verify_entry(registry.get("t/movie")).status == "ok"

    # later downloads must match the recorded hash
    path.unlink()
    server.files["movie.tif"] = PAYLOAD[::-1]
    with pytest.raises(DataError, match=r"sha256 mismatch"):
        fetch("t/movie", registry=registry)
    assert not path.exists()
    server.files["movie.tif"] = PAYLOAD
    assert fetch("t/movie", registry=registry) == [path]


def test_groups_fetch_every_member(server: FileServer, data_dir: Path) -> None:
    server.files["a.hdf"], server.files["b.hdf"] = b"a" * 10, b"b" * 20
    registry = registry_with(
        {"name": "g/a", "url": server.url("a.hdf"), "sha256": sha256(b"a" * 10), "groups": ["g"]},
        {"name": "g/b", "url": server.url("b.hdf"), "sha256": sha256(b"b" * 20), "groups": ["g"]},
    )
    paths = fetch("g", registry=registry)
    assert [p.read_bytes() for p in paths] == [b"a" * 10, b"b" * 20]
    with pytest.raises(DataError, match=r"is a group"):
        resolve_dataset("g", registry=registry)


def test_pipeline_input_dataset_resolves_through_the_registry(
    server: FileServer, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    import synapse_toolkit.datasets.fetching as fetch_module
    from synapse_toolkit.config import InputConfig
    from synapse_toolkit.errors import ConfigError
    from synapse_toolkit.pipeline import resolve_input

    registry = registry_with(_pinned(server))
    monkeypatch.setattr(fetch_module, "get_registry", lambda: registry)
    config = SimpleNamespace(input=InputConfig(dataset="t/sample"))
    monkeypatch.setenv("SYNTK_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"input.dataset: .*`syntk datasets fetch t/sample`"):
        resolve_input(config)  # type: ignore[arg-type]
    monkeypatch.delenv("SYNTK_OFFLINE")
    path = resolve_input(config)  # type: ignore[arg-type]
    assert path.read_bytes() == PAYLOAD


def test_unreachable_server_is_a_clear_error(data_dir: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    registry = registry_with(
        {"name": "t/down", "url": f"http://127.0.0.1:{port}/x.hdf", "sha256": sha256(b"x")}
    )
    with pytest.raises(
        DataError, match=r"t/down: .*failed after 2 attempts: cannot connect"
    ) as err:
        fetch("t/down", registry=registry, retries=1)
    assert "partial file" not in str(err.value)
    assert _leftovers(data_dir) == []
