"""Scores of a segmentation section by section (2D), as used for serial-section EM in 2D.

Each z-section is scored on its own: the segmentation is split into its 2D connected pieces per
section (a 3D segment that leaves a section and comes back counts as two pieces there), the
truth is the 2D connected components of its cell pixels (label 0, membrane, is ignored), and the
CREMI score of a section is sqrt(VOI * ARAND) with VOI = split + merge in bits. The figure of a
volume is the mean over its sections.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np

#: 4-connectivity in each section: the neighbours that nearest-neighbour affinities connect
CONNECTIVITY_2D: Final = 4


def split_sections(seg: np.ndarray) -> np.ndarray:
    """uint64 labels of the 2D connected pieces of each segment, section by section.

    Ids are unique over the whole volume; label 0 stays 0 (unassigned).
    """
    import cc3d

    seg = np.asarray(seg)
    if seg.ndim != 3:
        raise ValueError(f"split_sections needs (z, y, x), got shape {seg.shape}")
    out = np.zeros(seg.shape, np.uint64)
    base = 0
    for z in range(seg.shape[0]):
        s = np.ascontiguousarray(seg[z])
        # cc3d labels runs of equal non-zero values; the +1 keeps label 0 a segment of its own
        pieces = cc3d.connected_components(
            s.astype(np.uint64) + np.uint64(1), connectivity=CONNECTIVITY_2D
        ).astype(np.uint64)
        n = int(pieces.max())
        pieces[s == 0] = 0
        nz = pieces > 0
        pieces[nz] += np.uint64(base)
        out[z] = pieces
        base += n
    return out


def section_truth(cells: np.ndarray) -> np.ndarray:
    """Truth per section: 2D connected components of ``cells != 0``; 0 (membrane) elsewhere."""
    cells = np.asarray(cells) != 0
    if cells.ndim != 3:
        raise ValueError(f"section_truth needs (z, y, x), got shape {cells.shape}")
    return split_sections(cells.astype(np.uint8))


def score_sections(seg: np.ndarray, truth_cells: np.ndarray) -> dict[str, Any]:
    """Mean 2D CREMI score, VOI (split, merge) and ARAND over the sections of ``seg``.

    ``truth_cells``: non-zero on cell pixels (any labels; only their 2D connectivity counts).
    Returns the means and a ``sections`` list with each section's figures.
    """
    from synapse_toolkit.inference.segmetrics import segmentation_scores

    seg = np.asarray(seg)
    if seg.shape != np.shape(truth_cells):
        raise ValueError(f"segmentation {seg.shape} and truth {np.shape(truth_cells)} differ")
    pieces = split_sections(seg)
    truth = section_truth(truth_cells)
    rows = []
    for z in range(seg.shape[0]):
        s = segmentation_scores(pieces[z], truth[z], ignore_label=0)
        voi = s.voi_split + s.voi_merge
        rows.append(
            {
                "section": z,
                "voi_split": s.voi_split,
                "voi_merge": s.voi_merge,
                "voi": voi,
                "arand": s.arand,
                "cremi_score": float(np.sqrt(voi * s.arand)),
            }
        )
    keys = ("voi_split", "voi_merge", "voi", "arand", "cremi_score")
    return {**{k: float(np.mean([r[k] for r in rows])) for k in keys}, "sections": rows}


def mean_section_scores(seg: np.ndarray, truth_cells: np.ndarray) -> dict[str, float]:
    """The means of :func:`score_sections` without the per-section list (a threshold sweep's
    row)."""
    return {k: v for k, v in score_sections(seg, truth_cells).items() if k != "sections"}
