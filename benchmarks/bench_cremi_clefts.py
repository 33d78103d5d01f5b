"""Benchmark: CREMI cleft scoring of a CREMI-size pair (125 x 1250 x 1250 uint64).

Truth: ~500 sheet-like clefts (3 x 30 x 30 voxels) on background 2**64-1; prediction: the same
sheets shifted by up to 3 voxels in y/x, 10% of them missed, 100 false sheets added. Prints time
and peak memory of ``score_clefts`` for in-memory arrays and for an HDF5 file read block by block
(only cleft-voxel coordinates are kept).

    python benchmarks/bench_cremi_clefts.py [--shape 125 1250 1250] [--no-hdf5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cremi_neurons import measure

from synapse_toolkit.metrics.cremi_clefts import BACKGROUND, score_clefts


def make_pair(shape: tuple[int, int, int], n: int = 500, seed: int = 0):
    rng = np.random.default_rng(seed)
    truth = np.full(shape, BACKGROUND, np.uint64)
    pred = np.full(shape, BACKGROUND, np.uint64)
    size = np.array([3, 30, 30])
    for i in range(n):
        z, y, x = (rng.integers(0, s - b - 4) for s, b in zip(shape, size, strict=True))
        truth[z : z + 3, y : y + 30, x : x + 30] = i
        if rng.random() < 0.9:
            dy, dx = rng.integers(0, 4, 2)
            pred[z : z + 3, y + dy : y + dy + 30, x + dx : x + dx + 30] = i
    for i in range(100):
        z, y, x = (rng.integers(0, s - b) for s, b in zip(shape, size, strict=True))
        pred[z : z + 3, y : y + 30, x : x + 30] = 10_000 + i
    return truth, pred


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=(125, 1250, 1250))
    ap.add_argument("--no-hdf5", action="store_true")
    args = ap.parse_args()
    truth, pred = make_pair(tuple(args.shape))
    nbytes = truth.nbytes + pred.nbytes
    vs = (40.0, 4.0, 4.0)
    score_clefts(truth[:4, :64, :64], pred[:4, :64, :64], voxel_size_nm=vs)
    s, dt, mem, cpu = measure(lambda: score_clefts(truth, pred, voxel_size_nm=vs))
    print(f"in memory: {dt:.2f} s (CPU {cpu:.2f} s), peak +{mem / 1e9:.2f} GB "
          f"({mem / nbytes:.2f}x the two inputs)")  # fmt: skip
    print(f"  FP={s.false_positives} FN={s.false_negatives} test voxels={s.n_test_voxels} "
          f"truth voxels={s.n_truth_voxels} score={s.cremi_score:.3f} nm")  # fmt: skip
    if args.no_hdf5:
        return
    with tempfile.TemporaryDirectory() as d:
        with h5py.File(Path(d) / "c.h5", "w") as f:
            f.create_dataset("t", data=truth, chunks=(8, 256, 256))
            f.create_dataset("p", data=pred, chunks=(8, 256, 256))
        truth = pred = np.zeros(0)  # free the arrays: only the file is read now
        with h5py.File(Path(d) / "c.h5", "r") as f:
            s2, dt2, mem2, cpu2 = measure(lambda: score_clefts(f["t"], f["p"], voxel_size_nm=vs))
        print(f"HDF5 block by block: {dt2:.2f} s (CPU {cpu2:.2f} s), peak +{mem2 / 1e9:.2f} GB; "
              f"same result: {s2.as_dict() == s.as_dict()}")  # fmt: skip


if __name__ == "__main__":
    main()
