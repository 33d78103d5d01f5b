"""Label sampling at points spread over a volume reads it cell by cell, with the same ids."""

from __future__ import annotations

import numpy as np

from synapse_toolkit.data import Volume
from synapse_toolkit.synapses import patches


class _Counting:
    """A read-only array that records the largest box read."""

    def __init__(self, a: np.ndarray) -> None:
        self.a, self.shape, self.dtype, self.ndim, self.largest = a, a.shape, a.dtype, 3, 0

    def __getitem__(self, roi):
        box = self.a[roi]
        self.largest = max(self.largest, box.size)
        return box

    def __setitem__(self, roi, value) -> None:
        raise AssertionError("read-only")


def test_spread_points_are_read_by_cells_with_the_same_ids(monkeypatch):
    monkeypatch.setattr(patches, "SAMPLE_BOX_VOXELS", 4096)
    monkeypatch.setattr(patches, "SAMPLE_CELL", (4, 16, 16))
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 2**40, size=(12, 64, 80), dtype=np.uint64)
    data = _Counting(lab)
    vol = Volume(data, (40.0, 4.0, 4.0), offset_nm=(80.0, 8.0, 0.0))
    world = np.stack([
        rng.uniform(40, 600, 500), rng.uniform(-20, 300, 500), rng.uniform(0, 340, 500),
    ]).reshape(3, 20, 25)  # fmt: skip
    got = patches.sample_labels(vol, world)
    vox = np.round((world - np.array([80.0, 8.0, 0.0])[:, None, None])
                   / np.array([40.0, 4.0, 4.0])[:, None, None]).astype(int)  # fmt: skip
    vox = np.clip(vox, 0, np.array(lab.shape)[:, None, None] - 1)
    assert got.shape == (20, 25) and got.dtype == lab.dtype
    assert np.array_equal(got, lab[vox[0], vox[1], vox[2]])
    assert data.largest <= 4 * 16 * 16  # never the points' whole bounding box
    near = patches.sample_labels(vol, world[:, :1, :1])  # one point: one voxel
    assert near.shape == (1, 1) and near[0, 0] == lab[tuple(vox[:, 0, 0])]
