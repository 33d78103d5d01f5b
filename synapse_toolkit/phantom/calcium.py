"""Synthetic two-photon calcium movies in the neurofinder layout.

Model (calibrated on the neurofinder crop in ``/work/shared/data/calcium``: background ~360
counts, somata ~+170, per-pixel temporal std ~0.7 x mean from photon counting):

- somata: soft ellipses (radius 4-6.5 px) with a dimmer nucleus (GCaMP is cytosolic), each with
  its own resting brightness;
- activity: Poisson spikes; each adds a dF/F transient with a short rise and an exponential decay;
- neuropil: a smooth spatial field whose brightness follows a slow shared signal plus a few
  out-of-focus active blobs; a couple of dark blood vessels;
- drift: slow bleaching plus a slow oscillation of the whole frame;
- noise: photon counting (Poisson photons x counts-per-photon gain) plus Gaussian read noise.

Output layout (as neurofinder datasets): ``images/image00000.tiff`` ... (uint16, one frame per
file), ``regions/regions.json`` (``[{"id": .., "coordinates": [[row, col], ...]}, ...]``),
``info.json``; plus phantom truth in ``phantom/`` (``traces.npy`` dF/F per cell and frame,
``spikes.json`` spike frames per cell, ``metadata.json``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from scipy import ndimage

from synapse_toolkit.data import Regions
from synapse_toolkit.errors import DataError
from synapse_toolkit.phantom.noise import rng_for
from synapse_toolkit.phantom.params import PHANTOM_DEFAULTS_VERSION, CalciumPhantomParams

STREAM_CALCIUM = 100


@dataclass
class CalciumPhantom:
    """A generated movie (T, H, W) uint16 with its ground truth."""

    params: CalciumPhantomParams
    movie: np.ndarray
    regions: Regions
    footprints: np.ndarray  # (N, H, W) float32 weights
    traces: np.ndarray  # (N, T) dF/F
    spikes: list[np.ndarray]  # frame indices per cell

    def region_ids(self) -> list[int]:
        return list(range(len(self.regions)))


def _place_cells(p: CalciumPhantomParams, rng: np.random.Generator) -> list[tuple[float, ...]]:
    h, w = p.shape
    cells: list[tuple[float, ...]] = []
    for _ in range(200 * max(p.n_cells, 1)):
        if len(cells) >= p.n_cells:
            break
        r = rng.uniform(*p.cell_radius_px)
        cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
        if any(np.hypot(cy - c[0], cx - c[1]) < 0.9 * (r + c[2]) for c in cells):
            continue
        ecc = rng.uniform(0.75, 1.0)
        cells.append((cy, cx, r, ecc, rng.uniform(0, np.pi)))
    return cells


def _footprint(cell: tuple[float, ...], shape: tuple[int, int]) -> np.ndarray:
    cy, cx, r, ecc, theta = cell
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    dy, dx = yy - cy, xx - cx
    u = dy * np.cos(theta) + dx * np.sin(theta)
    v = (-dy * np.sin(theta) + dx * np.cos(theta)) / ecc
    d = np.hypot(u, v) / r
    soma = 1.0 / (1.0 + np.exp((d - 1.0) * 8.0))
    nucleus = 0.45 * np.exp(-((d / 0.55) ** 2))
    return (soma * (1.0 - nucleus)).astype(np.float32)


def _trace(p: CalciumPhantomParams, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    dt = 1.0 / p.rate_hz
    n_spikes = rng.poisson(p.spike_rate_hz * dt, p.frames)
    amp = rng.uniform(*p.transient_amplitude, p.frames) * n_spikes
    decay = np.exp(-dt / p.decay_time_s)
    rise = np.exp(-dt / p.rise_time_s)
    c = amp
    slow = np.zeros(p.frames)
    fast = np.zeros(p.frames)
    for t in range(p.frames):  # double exponential: rise then decay
        prev_s = slow[t - 1] if t else 0.0
        prev_f = fast[t - 1] if t else 0.0
        slow[t] = prev_s * decay + c[t]
        fast[t] = prev_f * rise + c[t]
    return np.maximum(slow - fast * 0.9, 0.0), np.flatnonzero(n_spikes)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (f - f.mean()) / (f.std() + 1e-12)


def generate_calcium(
    params: CalciumPhantomParams | None = None, **overrides: Any
) -> CalciumPhantom:
    """Generate the movie (in memory; a 300 x 128 x 128 movie is ~10 MB)."""
    p = params or CalciumPhantomParams()
    if overrides:
        from dataclasses import replace

        p = replace(p, **overrides)
    rng = rng_for(p.seed, STREAM_CALCIUM)
    h, w = p.shape
    t = np.arange(p.frames)
    cells = _place_cells(p, rng)
    footprints = (
        np.stack([_footprint(c, (h, w)) for c in cells])
        if cells
        else np.zeros((0, h, w), np.float32)
    )
    brightness = rng.uniform(*p.cell_brightness, len(cells))
    traces, spikes = [], []
    for _ in cells:
        tr, sp = _trace(p, rng)
        traces.append(tr)
        spikes.append(sp)
    traces_arr = np.asarray(traces).reshape(len(cells), p.frames)
    # background: vignetting, texture, dark vessels
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    vignette = 1.0 - 0.25 * ((yy - 0.5) ** 2 + (xx - 0.5) ** 2)
    texture = 1.0 + 0.12 * _smooth_field(rng, (h, w), 6.0)
    background = p.baseline * vignette * texture
    for _ in range(int(rng.integers(1, 3))):
        a, c0 = rng.uniform(0, np.pi), rng.uniform(0.2, 0.8, 2) * np.array([h, w])
        dist = np.abs(
            (np.mgrid[0:h, 0:w][0] - c0[0]) * np.cos(a)
            - (np.mgrid[0:h, 0:w][1] - c0[1]) * np.sin(a)
        )
        background *= 1.0 - 0.55 * np.exp(-((dist / rng.uniform(2.0, 4.0)) ** 2))
    neuropil_map = np.clip(1.0 + _smooth_field(rng, (h, w), 3.0), 0.0, None)
    shared = ndimage.gaussian_filter1d(rng.standard_normal(p.frames), 5.0)
    shared = shared / (np.abs(shared).max() + 1e-12)
    drift = (1.0 - p.drift_fraction * t / max(p.frames - 1, 1)) * (
        1.0
        + 0.5 * p.drift_fraction * np.sin(2 * np.pi * t / max(p.frames, 2) * rng.uniform(0.5, 1.5))
    )
    expected = np.empty((p.frames, h, w), np.float32)
    oof = []  # out-of-focus active blobs
    for _ in range(3):
        centre = rng.uniform(0, 1, 2) * np.array([h, w])
        oof.append(_footprint((centre[0], centre[1], rng.uniform(10, 18), 1.0, 0.0), (h, w)))
    oof_traces = [_trace(p, rng)[0] * 0.5 for _ in oof]
    for k in range(p.frames):
        frame = background + p.neuropil_amplitude * p.baseline * neuropil_map * (
            1.0 + 0.5 * shared[k]
        )
        for fp, tr in zip(oof, oof_traces, strict=True):
            frame = frame + 0.15 * p.baseline * fp * tr[k]
        if len(cells):
            frame = frame + np.tensordot(brightness * (1.0 + traces_arr[:, k]), footprints, axes=1)
        expected[k] = frame * drift[k]
    photons = rng.poisson(np.maximum(expected, 0) / p.counts_per_photon)
    movie = photons * p.counts_per_photon + rng.normal(0.0, p.read_noise, expected.shape)
    movie = np.clip(np.round(movie), 0, 65535).astype(np.uint16)
    regions = Regions(tuple(np.argwhere(fp > 0.5) for fp in footprints))
    return CalciumPhantom(p, movie, regions, footprints, traces_arr, spikes)


def write_calcium(
    ph: CalciumPhantom, path: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Write in the neurofinder layout (atomic: a temporary folder renamed into place)."""
    target = Path(path)
    if target.exists() and not overwrite:
        raise DataError(f"{target}: already exists (pass --overwrite to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        (tmp / "images").mkdir()
        for k, frame in enumerate(ph.movie):
            tifffile.imwrite(tmp / "images" / f"image{k:05d}.tiff", frame)
        (tmp / "regions").mkdir()
        regions = [
            {"id": i, "coordinates": c.tolist()} for i, c in enumerate(ph.regions.coordinates)
        ]
        (tmp / "regions" / "regions.json").write_text(json.dumps(regions))
        p = ph.params
        info = {
            "id": f"phantom.{p.seed}",
            "dimensions": [p.shape[0], p.shape[1], p.frames],
            "rate-hz": p.rate_hz,
            "indicator": "GCaMP6s (simulated)",
            "method": "2-photon (simulated)",
            "lab": "syntk phantom",
            "phantom_defaults_version": PHANTOM_DEFAULTS_VERSION,
        }
        (tmp / "info.json").write_text(json.dumps(info, indent=2))
        (tmp / "phantom").mkdir()
        np.save(tmp / "phantom" / "traces.npy", ph.traces.astype(np.float32))
        (tmp / "phantom" / "spikes.json").write_text(json.dumps([s.tolist() for s in ph.spikes]))
        (tmp / "phantom" / "metadata.json").write_text(
            json.dumps({"params": p.to_dict()}, indent=2)
        )
        if target.exists():
            shutil.rmtree(target)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
