"""Benchmark: CREMI neuron scoring (VOI + adapted Rand) of a CREMI-size uint64 pair.

Truth: 125 x 1250 x 1250 uint64, a blocky partition of ~20k segments under random uint64 ids.
Prediction: the same partition with ~10% of segments merged or split and 5% salt-and-pepper
voxels of random uint64 ids (~9.8M distinct ids). Prints syntk's time and peak memory (increase
of the process RSS, sampled every millisecond) beside a naive numpy baseline
(np.unique relabel of both volumes, np.unique of the label pairs), and checks both agree.

    python benchmarks/bench_cremi_neurons.py                 # full size, baseline included
    python benchmarks/bench_cremi_neurons.py --shape 25 1250 1250 --threads 2
    python benchmarks/bench_cremi_neurons.py --baseline-sections 25   # baseline on 25 sections, x5
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cremi_data import make_pair

from synapse_toolkit.metrics.cremi_neurons import (
    NeuronScores,
    score_neuron_ids,
)

_PAGE = 4096


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def measure(fn: Callable[[], Any]) -> tuple[Any, float, int, float]:
    """(result, wall seconds, peak RSS increase in bytes, process CPU seconds) of ``fn()``."""
    base = _rss()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.001)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    c0 = time.process_time()
    t0 = time.perf_counter()
    result = fn()
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0
    done.set()
    th.join()
    peak[0] = max(peak[0], _rss())
    return result, dt, peak[0] - base, cpu


def naive_scores(truth: np.ndarray, pred: np.ndarray) -> NeuronScores:
    """The textbook numpy way: np.unique relabel, then np.unique of label pairs."""
    t = truth.reshape(-1)
    p = pred.reshape(-1)
    keep = t != np.uint64(0xFFFFFFFFFFFFFFFF)
    _, ti = np.unique(t[keep], return_inverse=True)
    pu, pi = np.unique(p[keep], return_inverse=True)
    key = ti.astype(np.int64) * np.int64(pu.size) + pi
    del ti
    pairs, n_ij = np.unique(key, return_counts=True)
    del key
    ti = pairs // pu.size
    pi_ = pairs % pu.size
    n_j = np.bincount(ti, weights=n_ij)
    n_i = np.bincount(pi_, weights=n_ij)
    n = float(n_ij.sum())
    c = n_ij.astype(np.float64)
    split = float(np.sum(c * np.log2(n_j[ti] / c)) / n)
    merge = float(np.sum(c * np.log2(n_i[pi_] / c)) / n)
    nz = pu[pi_] != 0
    c_n = float(c[~nz].sum()) / t.size
    sum_a = float(np.sum(n_j**2))
    sum_b = float(np.sum(np.bincount(pi_[nz], weights=n_ij[nz]) ** 2)) + c_n
    sum_ab = float(np.sum(c[nz] ** 2)) + c_n
    prec, rec = sum_ab / sum_b, sum_ab / sum_a
    return NeuronScores(split, merge, 1 - 2 * prec * rec / (prec + rec), prec, rec, t.size,
                        int(t.size - keep.sum()))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=(125, 1250, 1250))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--border-nm", type=float, default=None, help="also time a border mask")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument(
        "--baseline-sections", type=int, default=None,
        help="run the baseline on the first N sections and scale its time linearly",
    )  # fmt: skip
    args = ap.parse_args()
    shape = tuple(args.shape)

    t0 = time.perf_counter()
    truth, pred = make_pair(shape=shape)
    gen = time.perf_counter() - t0
    nbytes = truth.nbytes + pred.nbytes
    print(f"data: 2 x {shape} uint64 = {nbytes / 1e9:.2f} GB, generated in {gen:.1f} s")
    print(f"distinct ids: truth ~{5 * 64 * 64}, prediction ~{int(0.05 * truth.size)} (salt)")

    score_neuron_ids(truth[:2, :64, :64], pred[:2, :64, :64])  # compile numba kernels (cached)
    best = None
    for _ in range(args.repeats):
        res, dt, mem, cpu = measure(lambda: score_neuron_ids(truth, pred, n_threads=args.threads))
        if best is None or dt < best[1]:
            best = (res, dt, mem, cpu)
    assert best is not None
    res, dt, mem, cpu = best
    mvox = truth.size / 1e6
    print(f"load average before timing: {os.getloadavg()[0]:.1f} (2 cores shared => wall > CPU/2)")
    print(
        f"syntk   : {dt:7.2f} s  ({mvox / dt:7.1f} Mvox/s)  CPU {cpu:.2f} s  peak "
        f"+{mem / 1e9:.2f} GB ({mem / nbytes:.2f}x the two inputs)  [best of {args.repeats}]"
    )
    print(f"          split={res.voi_split:.6f} merge={res.voi_merge:.6f} "
          f"arand={res.adapted_rand:.6f} cremi={res.cremi_score:.6f}")  # fmt: skip
    if args.border_nm:
        _, dtb, memb, cpub = measure(
            lambda: score_neuron_ids(truth, pred, border_threshold_nm=args.border_nm,
                                     voxel_size_nm=(40.0, 4.0, 4.0), n_threads=args.threads)
        )  # fmt: skip
        print(
            f"syntk + {args.border_nm:g} nm border mask: {dtb:.2f} s (CPU {cpub:.2f} s), "
            f"peak +{memb / 1e9:.2f} GB"
        )

    if args.no_baseline:
        return
    k = args.baseline_sections or shape[0]
    tb, pb = truth[:k], pred[:k]
    base, dtb, memb, cpub = measure(lambda: naive_scores(tb, pb))
    scale = shape[0] / k
    label = "" if k == shape[0] else f" (on {k} sections, time x{scale:g})"
    print(
        f"baseline: {dtb * scale:7.2f} s  CPU {cpub * scale:.2f} s  "
        f"peak +{memb * scale / 1e9:.2f} GB{label}"
    )
    print(f"speed-up: {dtb * scale / dt:.1f}x wall, {cpub / cpu * scale:.1f}x CPU")
    if k == shape[0]:
        for key in ("voi_split", "voi_merge", "adapted_rand"):
            a, b = getattr(res, key), getattr(base, key)
            assert abs(a - b) <= 1e-9 * max(1.0, abs(b)), (key, a, b)
        print("baseline and syntk agree (1e-9)")


if __name__ == "__main__":
    main()
