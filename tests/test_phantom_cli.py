"""`syntk phantom em|calcium` through the Typer app."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from synapse_toolkit.cli.main import app
from synapse_toolkit.io.cremi import read_cremi
from synapse_toolkit.phantom.store import read_phantom, read_phantom_truth

runner = CliRunner()


def test_em_hdf5(tmp_path: Path) -> None:
    out = tmp_path / "p.h5"
    args = ["phantom", "em", str(out), "--shape", "6", "96", "96", "--seed", "3",
            "--synapses", "2", "--types", "2"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "seed 3" in result.output
    data = read_cremi(out)
    assert data.raw.shape == (6, 96, 96) and data.raw.dtype == np.uint8
    assert data.raw.voxel_size_nm == (40.0, 4.0, 4.0)
    assert len(data.annotations.partners) >= 1
    truth = read_phantom_truth(out)
    n = len(truth.synapses["type"])
    assert f"{n} synapses" in result.output and n >= 1
    assert set(truth.synapses["type"].tolist()) <= {0, 1}
    # same command, same bytes
    again = tmp_path / "q.h5"
    assert runner.invoke(app, ["phantom", "em", str(again), *args[3:]]).exit_code == 0
    assert out.read_bytes() == again.read_bytes()


def test_em_zarr_with_artefacts_and_voxel_size(tmp_path: Path) -> None:
    out = tmp_path / "p.zarr"
    args = ["phantom", "em", str(out), "--shape", "8", "64", "96", "--voxel-size", "30", "5", "5",
            "--misalign", "--defects", "--block", "3", "40", "40", "--synapses", "1"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = read_phantom(out)
    assert data.raw.shape == (8, 64, 96) and data.raw.voxel_size_nm == (30.0, 5.0, 5.0)
    truth = read_phantom_truth(out)
    assert truth.shifts_px.shape == (8, 2) and truth.metadata["params"]["misalign"] is True


def test_em_errors(tmp_path: Path) -> None:
    out = tmp_path / "p.h5"
    out.write_bytes(b"x")
    result = runner.invoke(app, ["phantom", "em", str(out), "--shape", "4", "32", "32"])
    assert result.exit_code == 1 and "already exists" in result.stderr
    result = runner.invoke(app, ["phantom", "em", str(tmp_path / "p.tif")])
    assert result.exit_code == 1 and "must end in .h5" in result.stderr
    result = runner.invoke(app, ["phantom", "em", str(tmp_path / "a.h5"), "--types", "9"])
    assert result.exit_code == 1 and "synapse types" in result.stderr


def test_calcium(tmp_path: Path) -> None:
    out = tmp_path / "nf"
    args = ["phantom", "calcium", str(out), "--frames", "12", "--shape", "40", "48",
            "--cells", "5", "--seed", "2"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(list((out / "images").glob("*.tiff"))) == 12
    assert len(json.loads((out / "regions" / "regions.json").read_text())) == 5
    assert json.loads((out / "info.json").read_text())["dimensions"] == [40, 48, 12]
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "already exists" in again.stderr
    result = runner.invoke(app, ["phantom", "calcium", str(tmp_path / "x"), "--shape", "4", "4"])
    assert result.exit_code == 1 and "8x8" in result.stderr
