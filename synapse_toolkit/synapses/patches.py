"""Synapse-centred, consistently oriented 3D EM patches for clustering.

One patch per synapse (rows of a :class:`~synapse_toolkit.data.PartnerTable` sharing a
``synapse_id`` form one synapse: its pre site and the mean of its post sites). The patch is
centred on the midpoint between pre and (mean) post site and rotated in-plane so that the
pre→post direction points along +x of the patch: patch column index grows from the pre-synaptic
towards the post-synaptic side. Sections (z) are not rotated. Sampling is trilinear on the
output grid ``voxel_size_nm`` (z, y, x nm); each synapse reads only the bounding box of its own
sample points from the volume (h5py/zarr arrays are never loaded whole). Points outside the
volume take the nearest edge value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from synapse_toolkit.data import PartnerTable, Volume
from synapse_toolkit.errors import DataError


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

    def __len__(self) -> int:
        return int(self.synapse_id.shape[0])

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
    rows: list[np.ndarray] = []
    for k, u in enumerate(order):
        r = np.flatnonzero(inverse == u)
        pre[k] = partners.pre_nm[r[0]]
        post[k] = partners.post_nm[r].mean(axis=0)
        rows.append(r)
    return SynapseSites(ids[order].astype(np.uint64), pre, post, tuple(rows))


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
    """Sample ``raw`` at world points (3, ...) nm, reading only their bounding box (float32)."""
    if len(raw.shape) != 3:
        raise DataError(f"patches need a 3D intensity volume, got shape {raw.shape}")
    vs = np.asarray(raw.voxel_size_nm).reshape(3, *([1] * (world.ndim - 1)))
    off = np.asarray(raw.offset_nm).reshape(3, *([1] * (world.ndim - 1)))
    vox = (world - off) / vs
    shape = np.asarray(raw.spatial_shape)
    lo = np.clip(np.floor(vox.reshape(3, -1).min(axis=1)).astype(int) - 1, 0, shape - 1)
    hi = np.clip(np.ceil(vox.reshape(3, -1).max(axis=1)).astype(int) + 2, lo + 1, shape)
    box = np.asarray(
        raw.data[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))],
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
