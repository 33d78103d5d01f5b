"""neurofinder ROI metrics: recall, precision, combined, inclusion, exclusion.

Semantics of the neurofinder reference (codeneuro/neurofinder-python):

- A region is a list of (row, col) pixels; its centre is the mean coordinate.
- Greedy matching in ground-truth order: each truth region takes the nearest still-unused
  predicted centre if that distance is *strictly* below ``threshold`` (5 px by default); ties go
  to the predicted region listed first.
- recall = matches / #truth, precision = matches / #predicted,
  combined = 2PR / (P + R) (0 if both are 0).
- For matched pairs (A truth, B prediction), with h = the pixels of A (counted with
  multiplicity) that are also pixels of B: inclusion = mean h / |A|, exclusion = mean h / |B|.
  With no match the reference gives inclusion 0.0 and exclusion 1.0; so does this.

Where the reference divides by zero (no truth or no predicted regions): the ratio is 0.0, or
1.0 when both are empty.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from synapse_toolkit.data import Regions
from synapse_toolkit.errors import DataError


@dataclass(frozen=True)
class NeurofinderScores:
    recall: float
    precision: float
    combined: float
    inclusion: float
    exclusion: float
    n_truth: int
    n_pred: int
    matches: list[tuple[int, int]] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, float]:
        d = asdict(self)
        d.pop("matches")
        return d


def load_regions(path: str | os.PathLike[str]) -> Regions:
    """Read a neurofinder JSON file: a list of ``{"coordinates": [[row, col], ...]}``."""
    p = Path(path)
    try:
        items = json.loads(p.read_text())
    except FileNotFoundError:
        raise DataError(f"{p}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{p}: not a readable neurofinder JSON file ({exc})") from None
    if not isinstance(items, list):
        raise DataError(f"{p}: expected a JSON list of regions")
    try:
        return Regions.from_neurofinder(items)
    except DataError as exc:
        raise DataError(f"{p}: {exc}") from None


def match_regions(truth: Regions, pred: Regions, threshold: float = 5.0) -> list[tuple[int, int]]:
    """Greedy centre matching in truth order: (truth index, predicted index) pairs."""
    tc, pc = truth.centers(), pred.centers()
    free = list(range(len(pred)))
    matches: list[tuple[int, int]] = []
    for i in range(len(truth)):
        if not free:
            break
        d = np.sqrt(((pc[free] - tc[i]) ** 2).sum(axis=1))
        k = int(np.argmin(d))
        if d[k] < threshold:
            matches.append((i, free.pop(k)))
    return matches


def _hits(a: np.ndarray, b: np.ndarray) -> int:
    """Pixels of ``a`` (with multiplicity) that are pixels of ``b``."""
    bset = {(int(r), int(c)) for r, c in b}
    return sum((int(r), int(c)) in bset for r, c in a)


def _ratio(num: float, den: int, both_empty: bool) -> float:
    return num / den if den else (1.0 if both_empty else 0.0)


def score_neurofinder(truth: Regions, pred: Regions, threshold: float = 5.0) -> NeurofinderScores:
    """neurofinder scores of ``pred`` against ``truth`` (see the module docstring)."""
    matches = match_regions(truth, pred, threshold)
    n_t, n_p = len(truth), len(pred)
    both_empty = n_t == 0 and n_p == 0
    recall = _ratio(len(matches), n_t, both_empty)
    precision = _ratio(len(matches), n_p, both_empty)
    combined = 2 * recall * precision / (recall + precision) if recall + precision > 0 else 0.0
    if matches:
        inc, exc = [], []
        for i, j in matches:
            a, b = truth.coordinates[i], pred.coordinates[j]
            h = _hits(a, b)
            inc.append(h / len(a) if len(a) else np.nan)
            exc.append(h / len(b) if len(b) else np.nan)
        inclusion, exclusion = float(np.nanmean(inc)), float(np.nanmean(exc))
    else:
        inclusion, exclusion = 0.0, 1.0
    return NeurofinderScores(recall, precision, combined, inclusion, exclusion, n_t, n_p, matches)
