"""`syntk datasets list|info|fetch|path|verify` through the real `syntk` app (CliRunner)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import synapse_toolkit.cli.datasets as cli_datasets
from synapse_toolkit.cli.main import app
from synapse_toolkit.datasets import DatasetRegistry, load_registry
from tests.datasets_fixtures import FileServer, data_dir, registry_with, server, sha256

__all__ = ["data_dir", "server"]  # pytest fixtures used below

runner = CliRunner()


def invoke(*args: str):  # -> click.testing.Result
    return runner.invoke(app, ["datasets", *args], env={"COLUMNS": "200"})


@pytest.fixture
def shipped(monkeypatch: pytest.MonkeyPatch) -> DatasetRegistry:
    registry = load_registry(plugins=False)
    monkeypatch.setattr(cli_datasets, "get_registry", lambda: registry)
    return registry


@pytest.fixture
def local(server: FileServer, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> DatasetRegistry:
    server.files["a.hdf"] = b"A" * 3000
    server.files["b.tif"] = b"B" * 10
    registry = registry_with(
        {"name": "t/a", "url": server.url("a.hdf"), "sha256": sha256(b"A" * 3000),
         "size": 3000, "groups": ["t"], "licence": "CC0", "citation": "Someone 2024"},
        {"name": "t/b", "url": server.url("b.tif"), "unpinned": True, "groups": ["t"]},
    )  # fmt: skip
    monkeypatch.setattr(cli_datasets, "get_registry", lambda: registry)
    return registry


def test_list_shows_every_entry_with_size_and_pin_status(shipped: DatasetRegistry) -> None:
    result = invoke("list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for entry in shipped.entries():
        row = next(line for line in lines if f" {entry.name} " in line)
        assert ("unpinned" if not entry.pinned else "pinned") in row
        if entry.size is None:
            assert " ? " in row  # sizes not published: shown as unknown
        else:
            assert " MB " in row or " kB " in row or " GB " in row
    for group in ("cremi", "cremi/padded", "cremi/test", "snemi3d", "neurofinder/test"):
        assert any(line.startswith(f"│ {group} ") for line in lines), group


def test_list_shows_known_sizes(local: DatasetRegistry) -> None:
    result = invoke("list")
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if " t/a " in line)
    assert "3.0 kB" in row and "pinned" in row


def test_info_shows_citation_licence_and_hash(shipped: DatasetRegistry) -> None:
    result = invoke("info", "cremi/sample_A")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "Funke" in text and "licence" in text and "not stated by the provider" in text
    assert "4c563d1b78acb2bcfb3ea958b6fe1533422f7f4a19f3e05b600bfa11430b510d" in text
    assert "40 x 4 x 4 nm (z, y, x)" in text
    group = invoke("info", "cremi")
    assert group.exit_code == 0 and "cremi/sample_C" in group.output


def test_unknown_name_is_one_error_line(shipped: DatasetRegistry) -> None:
    result = invoke("info", "cremi/sampleA")
    assert result.exit_code == 1
    assert "error: unknown dataset or model 'cremi/sampleA'; did you mean" in result.output


def test_fetch_path_verify_round_trip(local: DatasetRegistry, data_dir: Path) -> None:
    missing = invoke("path", "t/a")
    assert missing.exit_code == 1 and "syntk datasets fetch t/a" in missing.output

    result = invoke("fetch", "t")
    assert result.exit_code == 0, result.output
    assert "unpinned" in result.output and "warning" in result.output  # t/b first download
    path_a = data_dir / "t" / "a" / "a.hdf"
    assert f"t/a\t{path_a}" in result.output

    located = invoke("path", "t/a")
    assert located.exit_code == 0 and located.output.strip() == str(path_a)

    ok = invoke("verify")
    assert ok.exit_code == 0, ok.output
    assert ok.output.count(" ok ") == 2

    path_a.write_bytes(b"a" * 3000)
    bad = invoke("verify", "t/a")
    assert bad.exit_code == 1
    assert "MISMATCH" in bad.output and "error: 1 entry failed verification" in bad.output


def test_fetch_offline_names_the_command(
    local: DatasetRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SYNTK_OFFLINE", "1")
    result = invoke("fetch", "t/a")
    assert result.exit_code == 1
    assert "SYNTK_OFFLINE" in result.output and "`syntk datasets fetch t/a`" in result.output


def test_fetch_needs_names_or_all(local: DatasetRegistry, server: FileServer) -> None:
    assert "use --all" in invoke("fetch").output
    result = invoke("fetch", "--all")
    assert result.exit_code == 0, result.output
    assert len(server.requests) == 2
