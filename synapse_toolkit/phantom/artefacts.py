"""Section artefacts: per-section misalignment (integer shifts) and missing/defective sections.

Convention: a section with shift (dy, dx) pixels is the aligned section moved by (+dy, +dx):
``raw[z, y, x] == aligned[z, y - dy, x - dx]``, so ``aligned[z, y, x] == raw[z, y + dy, x + dx]``
(exactly, wherever both indices are inside the volume). Labels and annotations stay aligned.
"""

from __future__ import annotations

import numpy as np

from synapse_toolkit.phantom.noise import rng_for, tile_noise
from synapse_toolkit.phantom.params import EMPhantomParams

STREAM_MISALIGN = 40
STREAM_DEFECTS = 41
STREAM_DEFECT_NOISE = 42

DEFECT_KINDS = ("missing", "noise", "fold", "stain")


def section_shifts(params: EMPhantomParams) -> np.ndarray:
    """(Z, 2) int64 shifts (dy, dx) in pixels; zeros unless ``params.misalign``."""
    nz = params.shape[0]
    if not params.misalign:
        return np.zeros((nz, 2), np.int64)
    rng = rng_for(params.seed, STREAM_MISALIGN)
    steps = rng.normal(0.0, params.misalign_jitter_px, (nz, 2))
    jumps = rng.random(nz) < params.misalign_jump_probability
    steps[jumps] += (
        rng.choice([-1, 1], (int(jumps.sum()), 2))
        * rng.uniform(0.4, 1.0, (int(jumps.sum()), 2))
        * params.misalign_jump_px
    )
    walk = np.cumsum(steps, axis=0)
    walk -= np.median(walk, axis=0)
    return np.round(walk).astype(np.int64)


def section_defects(params: EMPhantomParams) -> dict[int, str]:
    """Section index -> defect kind; empty unless ``params.defects``. Never two in a row, never
    the first or last section (so every defect has intact neighbours)."""
    if not params.defects:
        return {}
    rng = rng_for(params.seed, STREAM_DEFECTS)
    nz = params.shape[0]
    out: dict[int, str] = {}
    for z in range(1, nz - 1):
        u = rng.random()
        kind_u = rng.random()
        if z - 1 in out:
            continue
        if u < params.missing_section_probability:
            out[z] = "missing"
        elif u < params.missing_section_probability + params.defective_section_probability:
            out[z] = DEFECT_KINDS[1 + int(kind_u * 3)]
    return out


def apply_defect(
    section: np.ndarray, kind: str, z: int, y0: int, x0: int, params: EMPhantomParams
) -> np.ndarray:
    """The defective version of one uint8 section whose (0, 0) is global pixel (y0, x0)."""
    if kind == "missing":
        return np.zeros_like(section)
    h, w = section.shape
    img = section.astype(np.float32) / 255.0
    rng = rng_for(params.seed, STREAM_DEFECTS, z + 1)
    extent = np.asarray(params.shape[1:])
    yy, xx = np.meshgrid(np.arange(y0, y0 + h), np.arange(x0, x0 + w), indexing="ij")
    if kind == "noise":  # charging / bad focus: low contrast, heavy noise
        noise = tile_noise(params.seed, STREAM_DEFECT_NOISE, (slice(z, z + 1), slice(y0, y0 + h),
                                                              slice(x0, x0 + w)))[0]  # fmt: skip
        img = 0.5 + 0.45 * (img - 0.6) + 0.22 * noise
    elif kind == "fold":  # a dark band along a random line
        angle = rng.uniform(0, np.pi)
        cy, cx = rng.uniform(0.2, 0.8, 2) * extent
        width = rng.uniform(6, 20)
        dist = np.abs((yy - cy) * np.cos(angle) - (xx - cx) * np.sin(angle))
        img = np.where(dist < width, 0.08 + 0.1 * img, img * np.clip(dist / (2 * width), 0.6, 1.0))
    elif kind == "stain":  # a large dark smudge
        cy, cx = rng.uniform(0.1, 0.9, 2) * extent
        r = rng.uniform(0.15, 0.35) * extent.min()
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
        img = img * (1 - 0.75 * blob)
    else:
        raise ValueError(f"unknown defect kind {kind!r}")
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
