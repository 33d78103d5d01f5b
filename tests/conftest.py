"""Shared fixtures: small synthetic CREMI files and exposure of the example plugin."""

from __future__ import annotations

import sys
from collections.abc import Callable
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


def calcium_trainer_setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, frames: int = 40,
    thresholds: tuple[float, ...] = (0.5,),
) -> tuple[Path, Callable[[Path], None]]:  # fmt: skip
    """A phantom field of view in ``tmp_path / "data"``, laid out as the calcium trainer
    (``syntk_calcium.train``) reads the neurofinder crop; one small phantom as its only training
    and validation phantom; a small threshold grid. Returns the data folder and a function that
    puts the small phantom into a run folder's phantom cache."""
    import json

    from syntk_calcium import train as tr

    from synapse_toolkit.phantom.calcium import generate_calcium

    ph = generate_calcium(seed=21, shape=(256, 256), n_cells=40, frames=frames)
    data = tmp_path / "data"
    data.mkdir()
    np.save(data / "mean_fullfov_512x512_float32.npy", ph.movie.mean(axis=0).astype(np.float32))
    (data / "regions_fullfov_left_half.json").write_text(json.dumps(ph.regions.to_neurofinder()))
    small = generate_calcium(seed=22, shape=(96, 96), n_cells=10, frames=20)
    monkeypatch.setattr(tr, "PHANTOM_TRAIN", (1,))
    monkeypatch.setattr(tr, "PHANTOM_VAL", (1,))
    monkeypatch.setattr(tr, "GRID", {"threshold": thresholds, "core_threshold": (0.5,),
                                     "min_size": (10,)})  # fmt: skip

    def cache_phantom(out: Path) -> None:
        (out / "phantoms").mkdir(parents=True, exist_ok=True)
        np.savez(out / "phantoms" / "phantom_1.npz",
                 mean=small.movie.mean(axis=0).astype(np.float32),
                 regions=json.dumps(small.regions.to_neurofinder()))  # fmt: skip

    return data, cache_phantom
