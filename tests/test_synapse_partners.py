"""The partner API: CREMI layout round trip, segment lookup, de-duplication, scoring."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import h5py
import numpy as np

from synapse_toolkit.data import PartnerTable, SectionTransform, Volume
from synapse_toolkit.io.cremi import read_cremi
from synapse_toolkit.synapses.partners import (
    deduplicate,
    evaluate_partners,
    lookup_segments,
    read_partners_cremi,
    transform_partners,
    write_partners_cremi,
)

DATA = Path(__file__).parent / "data" / "synapses"
P07 = DATA / "P07_polyadic_duplicates_misses.truth.hdf"


def _truth_table() -> tuple[PartnerTable, Volume]:
    truth = read_cremi(P07)
    table = lookup_segments(PartnerTable.from_annotations(truth.annotations), truth.neuron_ids)
    return table, truth.neuron_ids


def test_cremi_layout_round_trip(tmp_path: Path) -> None:
    table, seg = _truth_table()
    offset = (40.0, 8.0, 4.0)
    path = write_partners_cremi(tmp_path / "pred.hdf", table, offset_nm=offset, neuron_ids=seg)
    with h5py.File(path, "r") as f:
        ann = f["annotations"]
        np.testing.assert_array_equal(ann.attrs["offset"], offset)
        types = [t.decode() if isinstance(t, bytes) else t for t in ann["types"][...]]
        assert types.count("presynaptic_site") == 8  # one per synapse (polyadic pre shared)
        assert types.count("postsynaptic_site") == 10
        assert ann["presynaptic_site/partners"].shape == (10, 2)
        assert ann["locations"].shape == (18, 3)
        assert f["volumes/labels/neuron_ids"].attrs["resolution"].tolist() == [40.0, 4.0, 4.0]
    back = read_partners_cremi(path)
    np.testing.assert_allclose(back.pre_nm, table.pre_nm)
    np.testing.assert_allclose(back.post_nm, table.post_nm)
    np.testing.assert_array_equal(back.pre_segment, table.pre_segment)
    np.testing.assert_array_equal(back.post_segment, table.post_segment)
    assert (table.pre_segment != 0).all()


def test_evaluate_truth_against_itself_and_a_corrupted_copy() -> None:
    truth = read_cremi(P07)
    table, seg = _truth_table()
    score = evaluate_partners(table, truth.annotations, seg)
    assert score.values["fscore"] == 1.0 and score.values["tp"] == 10
    # swap the direction of one pair: 1 FP + 1 FN (CREMI case P06 semantics)
    pre, post = table.pre_nm.copy(), table.post_nm.copy()
    pre[3], post[3] = table.post_nm[3], table.pre_nm[3]
    bad = PartnerTable(pre, post, table.post_segment, table.pre_segment, table.score,
                       np.arange(10))  # fmt: skip
    s = evaluate_partners(bad, truth.annotations, seg)
    assert s.values["tp"] == 9 and s.values["fp"] == 1 and s.values["fn"] == 1


def test_deduplicate_keeps_best_of_same_segment_pair() -> None:
    table, _ = _truth_table()
    twice = PartnerTable(
        np.concatenate([table.pre_nm, table.pre_nm + 50.0]),
        np.concatenate([table.post_nm, table.post_nm + 50.0]),
        np.concatenate([table.pre_segment, table.pre_segment]),
        np.concatenate([table.post_segment, table.post_segment]),
        np.concatenate([np.full(10, 0.9), np.full(10, 0.5)]),
        np.arange(20),
    )
    kept = deduplicate(twice, 400.0)
    # the shifted copies go; P07 itself has two pairs repeating a segment pair nearby
    assert len(kept) == len(deduplicate(table, 400.0)) == 9 and np.all(kept.score == 0.9)
    assert len(deduplicate(twice, 10.0)) == 20


def test_deduplicate_by_other_segment_ids_keeps_the_rows_own() -> None:
    table, _ = _truth_table()
    split = dataclasses.replace(
        table, post_segment=table.post_segment + np.arange(len(table), dtype=np.uint64) * 1000
    )  # every row's post in its own (over-split) segment: nothing is a duplicate
    assert len(deduplicate(split, 400.0)) == len(table)
    merged = deduplicate(split, 400.0, segments=(table.pre_segment, table.post_segment))
    assert len(merged) == len(deduplicate(table, 400.0)) == 9
    assert set(merged.post_segment.tolist()) <= set(split.post_segment.tolist())


def test_transform_partners_forward_and_back() -> None:
    table, seg = _truth_table()
    t = SectionTransform(np.random.default_rng(0).integers(-5, 6, (20, 2)) * 4.0)
    there = transform_partners(table, t, seg)
    assert not np.allclose(there.pre_nm, table.pre_nm)
    back = transform_partners(there, t.inverse(), seg)
    np.testing.assert_allclose(back.pre_nm, table.pre_nm)
    np.testing.assert_allclose(back.post_nm, table.post_nm)


def test_score_cli_reads_the_written_partners(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from synapse_toolkit.cli.main import app

    table, _seg = _truth_table()
    pred = write_partners_cremi(tmp_path / "pred.hdf", table)
    runner = CliRunner()
    result = runner.invoke(app, ["score", "cremi-partners", str(P07), str(pred), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["values"]["fscore"] == 1.0
    # one pair dropped: recall 9/10
    part = write_partners_cremi(tmp_path / "part.hdf", table.select(np.arange(10) != 4))
    result = runner.invoke(app, ["score", "cremi-partners", str(P07), str(part), "--json"])
    assert json.loads(result.output)["values"]["recall"] == 0.9


def test_segment_ids_at_points_read_in_few_boxes() -> None:
    from synapse_toolkit.synapses.partners import segment_ids_at

    class Counting:
        def __init__(self, a: np.ndarray) -> None:
            self.a, self.shape, self.dtype, self.ndim, self.reads = a, a.shape, a.dtype, 3, 0

        def __getitem__(self, roi: object) -> np.ndarray:
            self.reads += 1
            return self.a[roi]  # type: ignore[index]

        def __setitem__(self, roi: object, value: object) -> None:
            raise AssertionError("read-only")

    rng = np.random.default_rng(0)
    lab = rng.integers(1, 2**40, size=(10, 64, 64), dtype=np.uint64)
    data = Counting(lab)
    vol = Volume(data, (40.0, 4.0, 4.0), offset_nm=(40.0, 0.0, 0.0))  # type: ignore[arg-type]
    pts = np.stack([rng.uniform(0, 480, 300), rng.uniform(-10, 260, 300),
                    rng.uniform(0, 250, 300)], axis=1)  # fmt: skip
    got = segment_ids_at(vol, pts)
    v = (pts - [40.0, 0.0, 0.0]) / [40.0, 4.0, 4.0]
    vox = (np.sign(v) * np.floor(np.abs(v) + 0.5)).astype(int)  # CREMI: half away from zero
    inside = np.all((vox >= 0) & (vox < lab.shape), axis=1)
    assert np.array_equal(got[inside], lab[tuple(vox[inside].T)]) and np.all(got[~inside] == 0)
    assert 0 < inside.sum() < 300 and data.reads <= 2
