"""The napari reader contribution: which paths it takes, the layer tuples it returns, and a
manifest npe2 accepts (the manifest check is skipped without the viewer extra)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from synapse_toolkit.napari_reader import get_reader, read
from tests.test_report import _em_run

REPO = Path(__file__).resolve().parents[1]


def test_reader_takes_runs_cremi_files_and_zarr_volumes(tmp_path: Path, cremi_file: Path) -> None:
    run = _em_run(tmp_path / "run")
    for path in (run, cremi_file, run / "artifacts/segment/segmentation.zarr"):
        assert get_reader(str(path)) is read
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    assert get_reader(str(notes)) is None
    assert get_reader(str(tmp_path)) is None  # a folder that is not a run
    assert get_reader([str(run)]) is None
    layers = read(str(run))
    assert [(meta["name"], kind) for _, meta, kind in layers][:3] == [
        ("raw", "image"), ("truth segmentation", "labels"), ("segmentation", "labels"),
    ]  # fmt: skip
    assert layers[0][1]["scale"] == (40.0, 4.0, 4.0)
    assert read(str(notes)) == []


def test_manifest_is_valid_and_registered() -> None:
    npe2 = pytest.importorskip("npe2")
    manifest = npe2.PluginManifest.from_file(REPO / "synapse_toolkit" / "napari.yaml")
    (reader,) = manifest.contributions.readers
    (command,) = manifest.contributions.commands
    assert reader.command == command.id and reader.accepts_directories
    assert command.python_name == "synapse_toolkit.napari_reader:get_reader"
    eps = importlib.metadata.entry_points(group="napari.manifest")
    assert any(ep.value == "synapse_toolkit:napari.yaml" for ep in eps)
