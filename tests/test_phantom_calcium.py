"""Calcium phantom: neurofinder layout, realistic statistics, ground truth, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from synapse_toolkit.data import Regions
from synapse_toolkit.errors import SyntkError
from synapse_toolkit.phantom.calcium import generate_calcium, write_calcium
from synapse_toolkit.phantom.params import CalciumPhantomParams


@pytest.fixture(scope="module")
def movie():
    return generate_calcium(CalciumPhantomParams(frames=120, shape=(96, 80), n_cells=20, seed=3))


def test_layout_matches_neurofinder(movie, tmp_path: Path) -> None:
    out = write_calcium(movie, tmp_path / "nf")
    frames = sorted((out / "images").glob("image*.tiff"))
    assert [f.name for f in frames[:2]] == ["image00000.tiff", "image00001.tiff"]
    assert len(frames) == 120
    stack = np.stack([tifffile.imread(f) for f in frames])
    assert stack.dtype == np.uint16 and stack.shape == (120, 96, 80)
    np.testing.assert_array_equal(stack, movie.movie)
    regions = json.loads((out / "regions" / "regions.json").read_text())
    assert len(regions) == 20 and all(set(r) == {"id", "coordinates"} for r in regions)
    back = Regions.from_neurofinder(regions)
    for a, b in zip(back.coordinates, movie.regions.coordinates, strict=True):
        np.testing.assert_array_equal(a, b)
    info = json.loads((out / "info.json").read_text())
    assert info["dimensions"] == [96, 80, 120] and info["rate-hz"] == 7.0
    assert np.load(out / "phantom" / "traces.npy").shape == (20, 120)
    with pytest.raises(SyntkError, match="already exists"):
        write_calcium(movie, out)


def test_regions_are_somata_inside_the_frame(movie) -> None:
    h, w = movie.params.shape
    sizes = []
    masks = np.zeros((h, w), int)
    for c in movie.regions.coordinates:
        assert c.min() >= 0 and c[:, 0].max() < h and c[:, 1].max() < w
        sizes.append(len(c))
        masks[c[:, 0], c[:, 1]] += 1
    assert 30 <= np.median(sizes) <= 130  # neurofinder ROIs are 30-116 px
    assert (masks > 1).sum() < 0.05 * (masks > 0).sum()  # little overlap


def test_intensities_resemble_the_real_crop(movie) -> None:
    """The neurofinder crop: mean ~390 counts, median ~330, ROI ~530 vs ~365 outside, per-pixel
    temporal std ~240 (photon counting)."""
    m = movie.movie.astype(np.float64)
    inside = np.zeros(m.shape[1:], bool)
    for c in movie.regions.coordinates:
        inside[c[:, 0], c[:, 1]] = True
    assert 250 < np.median(m) < 450
    assert 150 < m.std(axis=0).mean() < 350
    assert m[:, inside].mean() > 1.2 * m[:, ~inside].mean()
    assert (m == 0).mean() > 0.005  # photon-starved pixels, as in the real data


def test_transients_follow_spikes_and_decay(movie) -> None:
    p = movie.params
    tr = movie.traces
    active = [i for i, s in enumerate(movie.spikes) if len(s)]
    assert active
    i = active[0]
    s = int(movie.spikes[i][0])
    assert np.all(tr[i, :s] == 0)
    peak = s + int(np.argmax(tr[i, s : s + 5]))
    assert tr[i, peak] > 0.3
    nxt = [x for x in movie.spikes[i] if x > s]
    end = min(nxt[0] if nxt else p.frames, peak + 6)
    if end - peak >= 3:  # exponential decay with the documented time constant
        ratio = tr[i, peak + 2] / tr[i, peak + 1]
        assert ratio == pytest.approx(np.exp(-1 / (p.rate_hz * p.decay_time_s)), rel=0.1)
    # the soma brightens with its transient
    fp = movie.footprints[i] > 0.5
    m = movie.movie.astype(float)[:, fp].mean(axis=1)
    assert m[peak] > np.median(m)


def test_same_seed_same_movie_and_seed_matters() -> None:
    p = CalciumPhantomParams(frames=20, shape=(32, 32), n_cells=4, seed=1)
    a, b = generate_calcium(p), generate_calcium(p)
    np.testing.assert_array_equal(a.movie, b.movie)
    c = generate_calcium(CalciumPhantomParams(frames=20, shape=(32, 32), n_cells=4, seed=2))
    assert not np.array_equal(a.movie, c.movie)


def test_bad_parameters_raise() -> None:
    with pytest.raises(SyntkError, match="8x8"):
        CalciumPhantomParams(shape=(4, 4))
    with pytest.raises(SyntkError, match="cell count"):
        CalciumPhantomParams(n_cells=-1)


def test_ground_truth_against_itself_is_perfect(movie, tmp_path: Path) -> None:
    from synapse_toolkit.metrics.neurofinder import load_regions, score_neurofinder

    out = write_calcium(movie, tmp_path / "nf")
    regions = load_regions(out / "regions" / "regions.json")
    s = score_neurofinder(regions, movie.regions)
    assert (s.recall, s.precision, s.combined, s.inclusion, s.exclusion) == (1, 1, 1, 1, 1)
