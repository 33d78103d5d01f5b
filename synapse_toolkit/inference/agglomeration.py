"""waterz agglomeration with the sharp edges filed off (no torch).

waterz facts handled here: ``agglomerate`` is a generator that yields *the same array updated in
place* (each result is copied), a ``fragments`` array passed in is overwritten (a copy is passed),
affinities must be C-contiguous float32 and fragments uint64, and it prints progress lines to file
descriptor 1 (redirected to /dev/null around the call so CLI output stays clean).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

from synapse_toolkit.errors import SyntkError

#: Quantiles compiled into the waterz wheel (others would need a C++ compiler + Boost).
PREBUILT_QUANTILES = (10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 80, 85, 90, 95)


def scoring_function(name: str) -> str:
    """waterz C++ scoring function for ``"mean"`` or ``"quantile<q>"`` (e.g. ``quantile75``)."""
    if name == "mean":
        return "OneMinus<MeanAffinity<RegionGraphType, ScoreValue>>"
    if name.startswith("quantile"):
        try:
            q = int(name[len("quantile") :])
        except ValueError:
            q = -1
        if q in PREBUILT_QUANTILES:
            return f"OneMinus<HistogramQuantileAffinity<RegionGraphType, {q}, ScoreValue, 256>>"
    raise SyntkError(
        f"unknown waterz scoring {name!r}: use 'mean' or 'quantile<q>' "
        f"with q in {PREBUILT_QUANTILES}"
    )


@contextlib.contextmanager
def stdout_to_devnull() -> Iterator[None]:
    """Send C-level (file descriptor 1) and Python-level stdout to /dev/null meanwhile."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):  # Python prints
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def agglomerate(
    affinities: np.ndarray,
    thresholds: Sequence[float],
    *,
    fragments: np.ndarray | None = None,
    scoring: str = "quantile50",
    aff_threshold_low: float = 0.0001,
    aff_threshold_high: float = 0.9999,
    discretize_queue: int = 256,
    on_segmentation: Callable[[float, np.ndarray], None] | None = None,
    quiet: bool = True,
) -> list[np.ndarray]:
    """One uint64 segmentation per threshold (ascending), each an independent copy.

    ``affinities``: ``(3, z, y, x)`` nearest-neighbour affinities (extra channels are ignored).
    ``fragments``: optional uint64 over-segmentation (not modified); otherwise waterz makes
    watershed fragments from the affinities using ``aff_threshold_low/high``. If
    ``on_segmentation`` is given, it receives each (threshold, segmentation) and nothing is kept.
    """
    import waterz

    affs = np.ascontiguousarray(np.asarray(affinities)[:3], dtype=np.float32)
    if affs.ndim != 4 or affs.shape[0] != 3:
        raise SyntkError(f"waterz needs affinities of shape (3, z, y, x), got {affs.shape}")
    ths = sorted(float(t) for t in thresholds)
    if not ths:
        raise SyntkError("waterz: give at least one threshold")
    frag = None
    if fragments is not None:
        frag = np.array(fragments, dtype=np.uint64, order="C", copy=True)
        if frag.shape != affs.shape[1:]:
            raise SyntkError(f"fragments shape {frag.shape} != affinities spatial {affs.shape[1:]}")
    results: list[np.ndarray] = []
    ctx = stdout_to_devnull() if quiet else contextlib.nullcontext()
    with ctx:
        gen = waterz.agglomerate(
            affs,
            ths,
            fragments=frag,
            aff_threshold_low=aff_threshold_low,
            aff_threshold_high=aff_threshold_high,
            scoring_function=scoring_function(scoring),
            discretize_queue=discretize_queue,
        )
        for th, seg in zip(ths, gen, strict=True):
            # without return_merge_history / return_region_graph waterz yields bare arrays
            assert isinstance(seg, np.ndarray)
            if on_segmentation is not None:
                on_segmentation(th, seg)
            else:
                results.append(np.array(seg, dtype=np.uint64, copy=True))
    return results


def sweep(
    affinities: np.ndarray,
    truth: np.ndarray,
    thresholds: Sequence[float],
    *,
    scoring: str = "quantile50",
    fragments: np.ndarray | None = None,
    ignore_label: int | None = 0,
    score: Callable[[np.ndarray, np.ndarray], Mapping[str, float]] | None = None,
    **kwargs,
) -> list[dict[str, float]]:
    """Agglomerate and score every threshold against ``truth``; one dict per threshold
    (``threshold`` and the scores). ``score(segmentation, truth)``: the scores (default: VOI and
    Rand of :func:`~synapse_toolkit.inference.segmetrics.segmentation_scores` with
    ``ignore_label``)."""
    from synapse_toolkit.inference.segmetrics import segmentation_scores

    def voi_rand(seg: np.ndarray, truth: np.ndarray) -> Mapping[str, float]:
        return segmentation_scores(seg, truth, ignore_label=ignore_label).to_dict()

    scorer = score or voi_rand
    rows: list[dict[str, float]] = []

    def keep(th: float, seg: np.ndarray) -> None:
        rows.append({"threshold": th, **scorer(seg, truth)})

    agglomerate(
        affinities,
        thresholds,
        fragments=fragments,
        scoring=scoring,
        on_segmentation=keep,
        **kwargs,
    )
    return rows
