"""neurofinder metrics equal the reference values; matching rules; edge cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from synapse_toolkit.data import Regions
from synapse_toolkit.errors import DataError
from synapse_toolkit.metrics.neurofinder import load_regions, match_regions, score_neurofinder

DATA = Path(__file__).parent / "data" / "neurofinder-reference"


def test_reference_values() -> None:
    spec = json.loads((DATA / "expected.json").read_text())
    truth = load_regions(DATA / spec["ground_truth"])
    pred = load_regions(DATA / spec["estimate"])
    got = score_neurofinder(truth, pred, threshold=spec["threshold"]).as_dict()
    for k, v in spec["expected"].items():
        assert got[k] == pytest.approx(v, rel=1e-12), k


def _sq(r: int, c: int, n: int = 2) -> list[list[int]]:
    return [[r + i, c + j] for i in range(n) for j in range(n)]


def test_threshold_is_strict_and_greedy_in_truth_order() -> None:
    truth = Regions.from_neurofinder([{"coordinates": _sq(0, 0)}, {"coordinates": _sq(0, 3)}])
    pred = Regions.from_neurofinder([{"coordinates": _sq(0, 2)}, {"coordinates": _sq(0, 5)}])
    # truth 0 (centre x=0.5) takes pred 0 (x=2.5, distance 2); truth 1 then takes pred 1
    assert match_regions(truth, pred, 5.0) == [(0, 0), (1, 1)]
    far = Regions.from_neurofinder([{"coordinates": _sq(0, 5)}])  # distance exactly 5
    assert match_regions(Regions(truth.coordinates[:1]), far, 5.0) == []
    assert match_regions(Regions(truth.coordinates[:1]), far, 5.0001) == [(0, 0)]


def test_no_match_and_empty_definitions() -> None:
    a = Regions.from_neurofinder([{"coordinates": _sq(0, 0)}])
    b = Regions.from_neurofinder([{"coordinates": _sq(50, 50)}])
    s = score_neurofinder(a, b)
    assert (s.recall, s.precision, s.combined, s.inclusion, s.exclusion) == (0, 0, 0, 0.0, 1.0)
    empty = Regions(())
    e = score_neurofinder(empty, empty)
    assert (e.recall, e.precision, e.combined) == (1.0, 1.0, 1.0)
    assert score_neurofinder(a, empty).recall == 0.0


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_regions(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json"):
        load_regions(bad)
    bad.write_text('[{"coords": []}]')
    with pytest.raises(DataError, match="coordinates"):
        load_regions(bad)
