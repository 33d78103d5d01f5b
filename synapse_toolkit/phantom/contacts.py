"""Finding contacts between neurons in the global label field (for synapses and decoys)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synapse_toolkit.phantom.cells import NeuronField

_MARCH_STEP_NM = 8.0
_MARCH_MAX_NM = 480.0


@dataclass
class Contact:
    """A point ``boundary_nm`` on the surface between neuron ``inner`` and ``outer``;
    ``normal`` points from ``inner`` into ``outer`` (unit, z y x)."""

    inner: int
    outer: int
    boundary_nm: np.ndarray
    normal: np.ndarray


def random_directions(rng: np.random.Generator, n: int, max_z: float = 0.3) -> np.ndarray:
    """Unit vectors mostly in the section plane (|z component| <= max_z), as clefts are
    best visible (and most often annotated) when cut across."""
    theta = rng.uniform(0, 2 * np.pi, n)
    dz = rng.uniform(-max_z, max_z, n)
    d = np.stack([dz, np.cos(theta), np.sin(theta)], axis=1)
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def march(
    field: NeuronField, starts: np.ndarray, directions: np.ndarray, max_nm: float = _MARCH_MAX_NM
) -> list[Contact | None]:
    """From each start, walk along its direction to the first label change (vectorised, in
    chunks of 8192 starts to bound memory)."""
    n = len(starts)
    if n == 0:
        return []
    if n > 8192:
        out_all: list[Contact | None] = []
        for a in range(0, n, 8192):
            out_all += march(field, starts[a : a + 8192], directions[a : a + 8192], max_nm)
        return out_all
    t = np.arange(_MARCH_STEP_NM, max_nm + 1e-9, _MARCH_STEP_NM)
    inner = field.label_at(starts)
    pts = starts[:, None, :] + t[None, :, None] * directions[:, None, :]
    labels = field.label_at(pts.reshape(-1, 3)).reshape(n, len(t))
    changed = labels != inner[:, None]
    has = changed.any(axis=1)
    first = np.argmax(changed, axis=1)
    lo = np.where(first > 0, t[np.maximum(first - 1, 0)], 0.0)
    hi = t[first]
    outer = labels[np.arange(n), first]
    for _ in range(6):  # bisection to ~0.1 nm
        mid = 0.5 * (lo + hi)
        lab = field.label_at(starts + mid[:, None] * directions)
        same = lab == inner
        lo = np.where(same, mid, lo)
        hi = np.where(same, hi, mid)
    out: list[Contact | None] = []
    for i in range(n):
        if not has[i]:
            out.append(None)
            continue
        b = starts[i] + 0.5 * (lo[i] + hi[i]) * directions[i]
        out.append(Contact(int(inner[i]), int(outer[i]), b, directions[i].copy()))
    return out


def contact_is_extended(
    field: NeuronField, contacts: list[Contact], lateral_nm: float
) -> np.ndarray:
    """True where the A/B interface continues ``lateral_nm`` away from the contact point in
    at least 3 of 4 perpendicular directions (so a cleft patch fits)."""
    if not contacts:
        return np.zeros(0, bool)
    probes = []
    for c in contacts:
        n = c.normal
        ref = np.array([1.0, 0.0, 0.0]) if abs(n[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
        e1 = np.cross(n, ref)
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(n, e1)
        for e in (e1, -e1, e2, -e2):
            base = c.boundary_nm + lateral_nm * e
            probes.append(base - 30.0 * n)
            probes.append(base + 30.0 * n)
    labels = field.label_at(np.asarray(probes)).reshape(len(contacts), 4, 2)
    inner = np.array([c.inner for c in contacts], np.uint64)[:, None]
    outer = np.array([c.outer for c in contacts], np.uint64)[:, None]
    ok = (labels[:, :, 0] == inner) & (labels[:, :, 1] == outer)
    return ok.sum(axis=1) >= 3
