"""Benchmark: CREMI synaptic-partner F-score on 10,000 predicted vs 10,000 truth pairs.

Truth: pairs with pre sites uniform in a 5 x 5 x 5 um CREMI-like volume and post sites ~200 nm
away; segmentation: 125 x 625 x 625 uint64 (40 x 8 x 8 nm voxels), boxes of 400 x 800 x 800 nm.
Prediction: 80% of the truth pairs jittered (sigma 60 nm per site), 20% random pairs, shuffled.
Prints the time of ``score_partners`` (label lookup, k-d tree candidates, assignment).

    python benchmarks/bench_partners.py [--pairs 10000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from synapse_toolkit.data import Annotations, Volume
from synapse_toolkit.metrics.cremi_partners import score_partners


def _annotations(pre: np.ndarray, post: np.ndarray) -> Annotations:
    n = pre.shape[0]
    ids = np.arange(2 * n, dtype=np.uint64)
    types = ("presynaptic_site",) * n + ("postsynaptic_site",) * n
    return Annotations(ids, types, np.concatenate([pre, post]),
                       np.stack([ids[:n], ids[n:]], axis=1))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    shape, vs = (125, 625, 625), np.array([40.0, 8.0, 8.0])
    box = np.array([10, 100, 100])  # 400 x 800 x 800 nm segments
    ids = rng.integers(1, 2**63, size=tuple(-(-s // b) for s, b in zip(shape, box, strict=True)),
                       dtype=np.uint64)  # fmt: skip
    seg = ids[np.ix_(*(np.arange(s) // b for s, b in zip(shape, box, strict=True)))]
    vol = Volume(seg, tuple(vs))
    extent = np.array(shape) * vs - 1
    n = args.pairs
    pre = rng.uniform(0, extent, (n, 3))
    post = np.clip(pre + rng.normal(0, 120, (n, 3)), 0, extent)
    k = int(0.8 * n)
    p_pre = np.concatenate(
        [pre[:k] + rng.normal(0, 60, (k, 3)), rng.uniform(0, extent, (n - k, 3))]
    )
    p_post = np.concatenate([post[:k] + rng.normal(0, 60, (k, 3)),
                             rng.uniform(0, extent, (n - k, 3))])  # fmt: skip
    order = rng.permutation(n)
    truth = _annotations(pre, post)
    pred = _annotations(np.clip(p_pre[order], 0, extent), np.clip(p_post[order], 0, extent))
    score_partners(_annotations(pre[:5], post[:5]), truth, vol)  # warm up
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        s = score_partners(pred, truth, vol)
        times.append(time.perf_counter() - t0)
    print(f"{n} vs {n} pairs: {min(times):.3f} s (best of {args.repeats}; all: "
          f"{', '.join(f'{t:.3f}' for t in times)})")  # fmt: skip
    print(f"F={s.fscore:.4f} P={s.precision:.4f} R={s.recall:.4f} TP={s.tp} FP={s.fp} FN={s.fn}")


if __name__ == "__main__":
    main()
