"""Shared fixtures: small synthetic CREMI files and exposure of the example plugin."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from synapse_toolkit.data import Annotations, Volume
from synapse_toolkit.io.cremi import CremiData, write_cremi
from synapse_toolkit.plugin_manager import reset_plugins

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_PLUGIN = REPO / "examples" / "third_party_plugin"


def make_cremi_data(seed: int = 0, shape: tuple[int, int, int] = (6, 40, 50)) -> CremiData:
    """A small CREMI-layout sample: raw, neuron ids, clefts and two partner pairs."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=shape, dtype=np.uint8)
    ids = np.zeros(shape, np.uint64)
    ids[:, : shape[1] // 2] = 5
    ids[:, shape[1] // 2 :] = 7
    clefts = np.full(shape, 0xFFFFFFFFFFFFFFFF, np.uint64)
    clefts[2:4, shape[1] // 2 - 1 : shape[1] // 2 + 1, 10:20] = 0
    ann = Annotations(
        ids=np.array([1, 2, 3, 4], np.uint64),
        types=("presynaptic_site", "postsynaptic_site", "presynaptic_site", "postsynaptic_site"),
        locations_nm=np.array([[80, 60, 60], [80, 100, 60], [120, 60, 120], [120, 100, 120.5]]),
        partners=np.array([[1, 2], [3, 4]], np.uint64),
        offset_nm=(40.0, 0.0, 8.0),
        comments={2: "polyadic?"},
    )
    res, off = (40.0, 4.0, 4.0), (40.0, 0.0, 8.0)
    return CremiData(
        raw=Volume(raw, res, off, "raw"),
        neuron_ids=Volume(ids, res, off, "neuron_ids"),
        clefts=Volume(clefts, res, off, "clefts"),
        annotations=ann,
    )


@pytest.fixture
def cremi_file(tmp_path: Path) -> Path:
    return write_cremi(tmp_path / "sample.hdf", make_cremi_data())


@pytest.fixture
def example_plugin_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Expose examples/third_party_plugin as an installed distribution (a .dist-info on sys.path),
    the way `pip install` would, without network or build. Returns env vars for subprocesses."""
    site = tmp_path / "site"
    info = site / "syntk_example_plugin-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: syntk-example-plugin\nVersion: 0.1.0\n"
    )
    (info / "entry_points.txt").write_text(
        "[syntk]\nexample-membrane = syntk_example_plugin\nexample-broken = syntk_example_broken\n"
    )
    monkeypatch.syspath_prepend(str(EXAMPLE_PLUGIN))
    monkeypatch.syspath_prepend(str(site))
    reset_plugins()
    yield {"PYTHONPATH": f"{site}:{EXAMPLE_PLUGIN}"}
    for mod in ("syntk_example_plugin", "syntk_example_broken"):
        sys.modules.pop(mod, None)
    reset_plugins()
