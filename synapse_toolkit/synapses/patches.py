"""Synapse-centred, consistently oriented 3D EM patches for clustering.

One patch per synapse (rows of a :class:`~synapse_toolkit.data.PartnerTable` sharing a
``synapse_id`` form one synapse: its pre site and the mean of its post sites). The patch is
centred on the midpoint between pre and (mean) post site and rotated in-plane so that the
pre→post direction points along +x of the patch: patch column index grows from the pre-synaptic
towards the post-synaptic side. Sections (z) are not rotated. Sampling is trilinear on the
output grid ``voxel_size_nm`` (z, y, x nm); each synapse reads only the bounding box of its own
sample points from the volume (h5py/zarr arrays are never loaded whole). Points outside the
volume take the nearest edge value.

Contact-aligned patches (:func:`contact_patches`) need a segmentation as well: the patch is
oriented towards the synapse's first post site, its central section is snapped to a section of
the volume, and every patch row (each section, each y) is shifted along x so that the boundary
between the pre- and the post-synaptic segment falls at column ``x // 2`` (the first
post-synaptic column). This straightens curved contacts, so that what lies at a given distance
from the cleft (membranes, the post-synaptic density, docked vesicles) lines up across synapses.
A second channel marks the rows where that boundary was found (the contact). Given a cleft
probability map instead (:func:`centre_rows_on_map`), each row is shifted so that the centre of
the cleft (the probability-weighted mean column above :data:`CLEFT_THRESHOLD`) falls there: on a
predicted segmentation the segment boundary wanders across the cleft, the predicted cleft does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from synapse_toolkit.cremi_ids import CLEFT_BACKGROUND
from synapse_toolkit.data import PartnerTable, Volume
from synapse_toolkit.errors import DataError
from synapse_toolkit.synapses import CLEFT_THRESHOLD
from synapse_toolkit.synapses.partners import read_points


@dataclass(frozen=True)
class PatchSpec:
    """Patch size and sampling grid, both (z, y, x) in nm."""

    size_nm: tuple[float, float, float] = (200.0, 512.0, 512.0)
    voxel_size_nm: tuple[float, float, float] = (40.0, 8.0, 8.0)

    def __post_init__(self) -> None:
        if len(self.size_nm) != 3 or len(self.voxel_size_nm) != 3:
            raise DataError("patch size_nm and voxel_size_nm need 3 values (z, y, x)")
        if min(self.size_nm) <= 0 or min(self.voxel_size_nm) <= 0:
            raise DataError(
                f"patch size_nm {self.size_nm} and voxel_size_nm {self.voxel_size_nm} "
                "must be positive"
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        """Patch shape in voxels (z, y, x): size / voxel size, rounded, at least 1."""
        z, y, x = (
            max(1, round(s / v)) for s, v in zip(self.size_nm, self.voxel_size_nm, strict=True)
        )
        return (z, y, x)


@dataclass(frozen=True)
class SynapseSites:
    """One row per synapse: id, pre site, mean post site (nm), and the partner rows it joins."""

    synapse_id: np.ndarray  # (N,) uint64
    pre_nm: np.ndarray  # (N, 3)
    post_nm: np.ndarray  # (N, 3)
    rows: tuple[np.ndarray, ...]  # partner-table rows of each synapse
    first_post_nm: np.ndarray | None = None  # (N, 3) post site of each synapse's first row

    def __len__(self) -> int:
        return int(self.synapse_id.shape[0])

    def take(self, index: np.ndarray) -> SynapseSites:
        """The synapses at positions ``index``, in that order."""
        idx = np.asarray(index, np.int64)
        first = None if self.first_post_nm is None else self.first_post_nm[idx]
        return SynapseSites(self.synapse_id[idx], self.pre_nm[idx], self.post_nm[idx],
                            tuple(self.rows[i] for i in idx), first)  # fmt: skip

    @property
    def centres_nm(self) -> np.ndarray:
        return 0.5 * (self.pre_nm + self.post_nm)

    @property
    def angles(self) -> np.ndarray:
        """In-plane angle (radians) of pre→post, measured from +x towards +y."""
        d = self.post_nm - self.pre_nm
        return np.arctan2(d[:, 1], d[:, 2])


def synapse_sites(partners: PartnerTable) -> SynapseSites:
    """Group partner rows by ``synapse_id`` (first-appearance order)."""
    ids, first, inverse = np.unique(partners.synapse_id, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    pre = np.zeros((len(ids), 3))
    post = np.zeros((len(ids), 3))
    first_post = np.zeros((len(ids), 3))
    rows: list[np.ndarray] = []
    for k, u in enumerate(order):
        r = np.flatnonzero(inverse == u)
        pre[k] = partners.pre_nm[r[0]]
        post[k] = partners.post_nm[r].mean(axis=0)
        first_post[k] = partners.post_nm[r[0]]
        rows.append(r)
    return SynapseSites(ids[order].astype(np.uint64), pre, post, tuple(rows), first_post)


def patch_coordinates(centre_nm: np.ndarray, angle: float, spec: PatchSpec) -> np.ndarray:
    """World coordinates (3, z, y, x) nm of the patch samples for one synapse.

    Patch axis x runs along (cos angle, sin angle) in world (x, y); patch axis y along the
    perpendicular (-sin angle, cos angle), a proper rotation (no mirroring).
    """
    nz, ny, nx = spec.shape
    vz, vy, vx = spec.voxel_size_nm
    z = (np.arange(nz) - (nz - 1) / 2.0) * vz
    v = (np.arange(ny) - (ny - 1) / 2.0) * vy
    u = (np.arange(nx) - (nx - 1) / 2.0) * vx
    zz, vv, uu = np.meshgrid(z, v, u, indexing="ij")
    c, s = np.cos(angle), np.sin(angle)
    wx = centre_nm[2] + uu * c - vv * s
    wy = centre_nm[1] + uu * s + vv * c
    wz = centre_nm[0] + zz
    return np.stack([wz, wy, wx])


def sample_patch(raw: Volume, world: np.ndarray, order: int = 1) -> np.ndarray:
    """Sample ``raw`` at world points (3, ...) nm, reading only their bounding box (float32).
    A one-channel map (1, z, y, x) is sampled as its channel."""
    lead: tuple[int, ...] = ()
    if len(raw.shape) == 4 and raw.shape[0] == 1:
        lead = (0,)
    elif len(raw.shape) != 3:
        raise DataError(f"patches need a 3D intensity volume, got shape {raw.shape}")
    vs = np.asarray(raw.voxel_size_nm).reshape(3, *([1] * (world.ndim - 1)))
    off = np.asarray(raw.offset_nm).reshape(3, *([1] * (world.ndim - 1)))
    vox = (world - off) / vs
    shape = np.asarray(raw.spatial_shape)
    lo = np.clip(np.floor(vox.reshape(3, -1).min(axis=1)).astype(int) - 1, 0, shape - 1)
    hi = np.clip(np.ceil(vox.reshape(3, -1).max(axis=1)).astype(int) + 2, lo + 1, shape)
    box = np.asarray(
        raw.data[(*lead, *(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True)))],
        dtype=np.float32,
    )
    local = vox - lo.reshape(3, *([1] * (world.ndim - 1)))
    return ndimage.map_coordinates(box, local, order=order, mode="nearest").astype(np.float32)


def extract_patches(
    raw: Volume,
    sites: SynapseSites,
    spec: PatchSpec = PatchSpec(),
    *,
    angle_jitter: Sequence[float] | np.ndarray | None = None,
    centre_jitter_nm: np.ndarray | None = None,
) -> np.ndarray:
    """(N, z, y, x) float32 patches, intensities as stored (e.g. 0-255 for uint8 raw).

    ``angle_jitter`` (radians, per synapse) and ``centre_jitter_nm`` ((N, 3)) perturb the
    orientation and centre, for training augmentation.
    """
    out = np.zeros((len(sites), *spec.shape), np.float32)
    centres = sites.centres_nm
    angles = sites.angles
    for i in range(len(sites)):
        c = centres[i] + (0.0 if centre_jitter_nm is None else centre_jitter_nm[i])
        a = float(angles[i]) + (0.0 if angle_jitter is None else float(angle_jitter[i]))
        out[i] = sample_patch(raw, patch_coordinates(c, a, spec))
    return out


def standardise(patches: np.ndarray, eps: float = 1e-3) -> np.ndarray:
    """Each patch to zero mean and unit standard deviation (removes gain/offset changes)."""
    p = np.asarray(patches, np.float32)
    axes = tuple(range(1, p.ndim))
    mean = p.mean(axis=axes, keepdims=True)
    std = p.std(axis=axes, keepdims=True)
    return ((p - mean) / np.maximum(std, eps)).astype(np.float32)


#: Points whose bounding box exceeds this many voxels are read by cells of :data:`SAMPLE_CELL`
#: voxels (z, y, x), so sampling sites spread over a volume never reads the whole volume.
SAMPLE_BOX_VOXELS = 1 << 22
SAMPLE_CELL = (32, 256, 256)


def sample_labels(labels: Volume, world: np.ndarray) -> np.ndarray:
    """Nearest-voxel label ids at world points (3, ...) nm (ids kept exact; edge-clamped)."""
    if len(labels.shape) != 3:
        raise DataError(f"patches need a 3D label volume, got shape {labels.shape}")
    vs = np.asarray(labels.voxel_size_nm).reshape(3, *([1] * (world.ndim - 1)))
    off = np.asarray(labels.offset_nm).reshape(3, *([1] * (world.ndim - 1)))
    shape = np.asarray(labels.spatial_shape).reshape(3, *([1] * (world.ndim - 1)))
    vox = np.clip(np.round((world - off) / vs).astype(np.int64), 0, shape - 1)
    ids = read_points(labels.data, vox.reshape(3, -1).T, SAMPLE_BOX_VOXELS, SAMPLE_CELL)
    return ids.reshape(world.shape[1:])


def straighten_rows(
    raw: np.ndarray, labels: np.ndarray, pre_id: int, post_id: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Shift each row (last axis) of ``raw`` (..., width + 2r) so that its pre→post label
    boundary nearest the centre lands at column ``width // 2`` of the ``width`` columns kept;
    rows without such a boundary within ``r`` columns of the centre are kept unshifted.
    Returns the (..., width) rows and a boolean mask of the rows that were aligned."""
    n = raw.shape[-1]
    r = (n - width) // 2
    centre = width // 2 + r
    cand = (labels[..., :-1] == pre_id) & (labels[..., 1:] == post_id)  # boundary at t + 1
    dist = np.abs(np.arange(1, n) - centre).astype(np.float64)
    dist = np.where(cand, dist, np.inf)
    best = np.argmin(dist, axis=-1)
    found = np.take_along_axis(dist, best[..., None], axis=-1)[..., 0] <= r
    if pre_id == 0 or post_id == 0 or pre_id == post_id:
        found[...] = False
    shift = np.where(found, centre - (best + 1), 0)
    idx = np.arange(width) + r - shift[..., None]
    return np.take_along_axis(raw, idx, axis=-1), found


def centre_rows_on_map(
    raw: np.ndarray, cleft: np.ndarray, width: int, threshold: float = CLEFT_THRESHOLD
) -> tuple[np.ndarray, np.ndarray]:
    """Shift each row (last axis) of ``raw`` (..., width + 2r) so that the centre of mass of
    ``cleft`` (same shape; values above ``threshold`` within ``r`` columns of the centre) lands
    at column ``width // 2`` of the ``width`` columns kept; rows without such values are kept
    unshifted. Returns the (..., width) rows and a boolean mask of the rows that were aligned."""
    n = raw.shape[-1]
    r = (n - width) // 2
    centre = width // 2 + r
    cols = np.arange(n, dtype=np.float64)
    w = np.where((np.abs(cols - centre) <= r) & (cleft > threshold), cleft, 0.0)
    total = w.sum(axis=-1)
    found = total > 0
    pos = (w * cols).sum(axis=-1) / np.where(found, total, 1.0)
    shift = np.where(found, np.round(centre - pos).astype(np.int64), 0)
    idx = np.arange(width) + r - shift[..., None]
    return np.take_along_axis(raw, idx, axis=-1), found


class _CleftMaskArray:
    """A CREMI cleft-label array read as a one-channel map (1, z, y, x): 1.0 inside a cleft,
    0.0 in the background; each read touches only the requested block."""

    def __init__(self, labels: Any) -> None:
        self._labels = labels
        self.shape = (1, *(int(n) for n in labels.shape))
        self.dtype = np.dtype(np.float32)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis or k is None for k in key):  # rare: read all, then index
            whole = np.asarray(self._labels[...]) != CLEFT_BACKGROUND
            return whole.astype(np.float32)[np.newaxis][key]
        block = np.asarray(self._labels[key[1:]]) != CLEFT_BACKGROUND
        return block.astype(np.float32)[np.newaxis][(key[0],)]

    def __setitem__(self, key: Any, value: Any) -> None:
        raise TypeError("a cleft mask map is read-only")


def cleft_mask_map(clefts: Volume) -> Volume:
    """A CREMI cleft-label volume (``volumes/labels/clefts``) as the one-channel cleft map that
    :func:`contact_patches` straightens on (1 inside a cleft), read lazily."""
    if len(clefts.shape) != 3:
        raise DataError(f"cleft labels must be 3D (z, y, x), got shape {clefts.shape}")
    return Volume(_CleftMaskArray(clefts.data), clefts.voxel_size_nm, clefts.offset_nm,
                  "cleft_mask")  # fmt: skip


def contact_patches(
    raw: Volume,
    labels: Volume | None,
    sites: SynapseSites,
    spec: PatchSpec,
    reach_nm: float = 64.0,
    *,
    cleft: Volume | None = None,
    cleft_threshold: float = CLEFT_THRESHOLD,
    angle_jitter: Sequence[float] | np.ndarray | None = None,
    centre_jitter_nm: np.ndarray | None = None,
) -> np.ndarray:
    """(N, 2, z, y, x) float32 contact-aligned patches: channel 0 raw intensities as stored,
    channel 1 = 1 on the rows whose pre→post segment boundary was found within ``reach_nm`` of
    the patch centre (they are shifted to put it at column x // 2), else 0.

    Segment ids are read from ``labels`` at the pre site and at the first post site. With a
    cleft probability map ``cleft``, rows are centred on the cleft instead
    (:func:`centre_rows_on_map`, values above ``cleft_threshold``) and ``labels`` is not read."""
    if cleft is None and labels is None:
        raise DataError("contact-aligned patches need a segmentation or a cleft probability map")
    nz, ny, nx = spec.shape
    vz, _, vx = spec.voxel_size_nm
    r = max(1, round(reach_nm / vx))
    vy = spec.voxel_size_nm[1]
    wide = PatchSpec((nz * vz, ny * vy, (nx + 2 * r) * vx), spec.voxel_size_nm)
    first = sites.first_post_nm if sites.first_post_nm is not None else sites.post_nm
    ids_pre = ids_post = np.zeros(0)
    if cleft is None and labels is not None and len(sites):
        ids_pre, ids_post = sample_labels(labels, sites.pre_nm.T), sample_labels(labels, first.T)
    d = first - sites.pre_nm
    angles = np.arctan2(d[:, 1], d[:, 2])
    rz, oz = float(raw.voxel_size_nm[0]), float(raw.offset_nm[0])
    out = np.zeros((len(sites), 2, nz, ny, nx), np.float32)
    for i in range(len(sites)):
        c = sites.centres_nm[i] + (0.0 if centre_jitter_nm is None else centre_jitter_nm[i])
        c = np.array(c, np.float64)
        c[0] = oz + round((c[0] - oz) / rz) * rz  # central section on a section of the volume
        a = float(angles[i]) + (0.0 if angle_jitter is None else float(angle_jitter[i]))
        world = patch_coordinates(c, a, wide)
        grey = sample_patch(raw, world)
        if cleft is not None:
            pm = sample_patch(cleft, world)
            out[i, 0], found = centre_rows_on_map(grey, pm, nx, cleft_threshold)
        else:
            assert labels is not None
            seg = sample_labels(labels, world)
            out[i, 0], found = straighten_rows(grey, seg, int(ids_pre[i]), int(ids_post[i]), nx)
        out[i, 1] = found[..., None]
    return out


def standardise_channels(patches: np.ndarray) -> np.ndarray:
    """Standardise channel 0 of (N, C, ...) patches per patch; other channels (masks) kept."""
    p = np.array(patches, np.float32)
    p[:, 0] = standardise(p[:, 0])
    return p
