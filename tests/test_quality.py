"""Label-free quality signal and thresholds (synapse_toolkit.inference.quality): boundary fraction
streamed by blocks, the stored reference and its warning band, distribution- and size-matched
thresholds, and the one warning line."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from synapse_toolkit.inference import quality
from tests.tiny_training import small_volume


def _affs(lab: np.ndarray, inside: float = 0.95, boundary: float = 0.05) -> np.ndarray:
    from synapse_toolkit.affinities import NEAREST_NEIGHBOURS, labels_to_affinities

    a = labels_to_affinities(lab, NEAREST_NEIGHBOURS)
    return np.where(a > 0, inside, boundary).astype(np.float32)


def test_signals_stream_by_blocks_and_count_weak_voxels() -> None:
    a = np.random.default_rng(0).random((3, 37, 9, 8)).astype(np.float32)
    s = quality.signals(a, z_block=5)
    w = a.min(axis=0)
    assert s["boundary_fraction"] == pytest.approx((w < 0.5).mean(), abs=1e-4)
    for t in (0.05, 0.3, 0.95):
        assert s["below"][f"{t:.2f}"] == pytest.approx((w < t).mean(), abs=1e-5)


def test_signals_read_a_zarr_array_chunk_by_chunk(tmp_path) -> None:
    """Counts are additive: reading by the array's chunks (y, x too) gives the same signals."""
    import zarr

    a = np.random.default_rng(1).random((3, 11, 23, 17)).astype(np.float32)
    z = zarr.create_array(store=str(tmp_path / "a.zarr"), shape=a.shape, dtype="float32",
                          chunks=(3, 4, 10, 6))  # fmt: skip
    z[...] = a
    assert quality.signals(z) == quality.signals(a, z_block=11, yx_block=64)
    assert quality.signals(a, z_block=3, yx_block=5) == quality.signals(a, z_block=11, yx_block=64)


def test_warning_band_and_one_line() -> None:
    _, lab = small_volume()
    good = _affs(lab)
    ref = quality.reference([good], (0.8, 1.5), "made-up crop", "test")
    assert ref["warn_below"] == pytest.approx(0.8 * ref["boundary_fraction"], abs=1e-4)
    assert quality.warning(ref["boundary_fraction"], ref) is None
    # a model that sees membranes as interior: boundaries at 0.6 instead of 0.05
    faint = _affs(lab, boundary=0.6)
    line = quality.warning(quality.signals(faint)["boundary_fraction"], ref)
    assert line is not None and "syntk adapt" in line and "\n" not in line
    records: dict = {}
    log = logging.getLogger("test-quality")
    rec = quality.check(faint, {quality.QUALITY_KEY: ref}, records.__setitem__, log)
    assert records["quality"] is rec and rec["warning"] == line == records["quality_warning"]
    rec = quality.check(good, {}, records.__setitem__, log)  # no reference: no warning
    assert rec["warning"] is None and "reference_boundary_fraction" not in rec


def test_ridge_recall_tells_traced_from_missed_membranes() -> None:
    """Raw with dark one-voxel membranes: the ridge filter finds them; affinities that mark
    them as boundary trace nearly all its ridges, affinities that see them as interior none."""
    from synapse_toolkit.inference import ridges

    raw, lab = small_volume(shape=(4, 48, 48))
    strength = ridges.ridge_map(raw)
    assert strength[lab == 0].mean() > 5 * strength[lab > 0].mean()
    traced = ridges.ridge_recall(raw, _affs(lab), 0.1)
    missed = ridges.ridge_recall(raw, _affs(lab, boundary=0.6), 0.1)
    assert traced["ridge_fraction"] == missed["ridge_fraction"] > 0.02
    assert traced["ridge_recall"] > 0.9 and missed["ridge_recall"] == 0.0
    with pytest.raises(ValueError, match="differ"):
        ridges.ridge_recall(raw[:2], _affs(lab), 0.1)


def test_warning_carries_the_ridge_second_opinion_only_when_it_fires(monkeypatch) -> None:
    from synapse_toolkit.inference import ridges

    raw, lab = small_volume(shape=(4, 48, 48))
    good, faint = _affs(lab), _affs(lab, boundary=0.6)
    ref = quality.reference([good], (0.8, 1.5), "made-up crop", "test")
    ref["ridges"] = {"threshold": 0.1, "recall": 0.95}
    meta = {quality.QUALITY_KEY: ref}
    log = logging.getLogger("test-quality")
    records: dict = {}
    rec = quality.check(faint, meta, records.__setitem__, log, ridge_inputs=(raw, faint))
    assert rec["ridges"]["ridge_recall"] == 0.0 and rec["ridges"]["reference_ridge_recall"] == 0.95
    assert "second opinion" in rec["warning"] and "0.0% of the dark ridges" in rec["warning"]
    assert "95.0% on its validation data" in rec["warning"] and "\n" not in rec["warning"]
    plain = quality.check(faint, meta, records.__setitem__, log)  # no raw given: no opinion
    assert "ridges" not in plain and "second opinion" not in plain["warning"]

    def fail(*_a, **_k):
        raise AssertionError("ridge recall computed inside the band")

    monkeypatch.setattr(ridges, "ridge_recall", fail)
    rec = quality.check(good, meta, records.__setitem__, log, ridge_inputs=(raw, good))
    assert rec["warning"] is None and "ridges" not in rec


def test_matched_threshold_undoes_a_monotone_remapping() -> None:
    src = np.random.default_rng(1).random((3, 12, 40, 40)).astype(np.float32)
    ref = quality.reference([src], (0.5, 2.0), "src", "test")
    target = src**3  # the same volume, affinities miscalibrated by a monotone map
    t = quality.matched_threshold(quality.weakest_affinity(target), ref, 0.5)
    assert t == pytest.approx(0.5**3, abs=0.03)
    assert quality.matched_threshold(quality.weakest_affinity(src), ref, 0.5) == pytest.approx(
        0.5, abs=0.03
    )


def test_segment_size_falls_with_splits_and_size_match_finds_it() -> None:
    _, lab = small_volume(shape=(12, 40, 40))
    whole = (lab > 0).astype(np.uint64)
    assert quality.segment_size(lab, (12, 40, 40)) < quality.segment_size(whole, (12, 40, 40))
    # tiles: sizes are measured inside each tile
    halves = quality.segment_size(whole, (12, 20, 40))
    assert halves == pytest.approx(quality.segment_size(whole[:, :20], (12, 20, 40)), rel=0.2)
    curve = {0.3: 10.0, 0.5: 100.0, 0.7: 1000.0}
    assert quality.size_matched_threshold(curve, 120.0) == 0.5
    assert quality.size_matched_threshold(curve, 5000.0) == 0.7


def test_size_curve_uses_the_stored_fragments() -> None:
    from synapse_toolkit.inference.agglomeration import agglomerate
    from synapse_toolkit.inference.fragments import make_fragments

    _, lab = small_volume(shape=(8, 40, 40))
    rng = np.random.default_rng(3)
    affs = np.clip(_affs(lab, 0.8, 0.2) + rng.normal(0, 0.15, (3, *lab.shape)), 0, 1)
    affs = affs.astype(np.float32)
    setting = {"method": "distance_2d", "boundary_threshold": 0.5, "dt_sigma": 1.0,
               "min_distance": 3}  # fmt: skip
    curve = quality.size_curve(affs, "mean", [0.5], setting)
    seg = agglomerate(affs, [0.5], fragments=make_fragments(affs, setting), scoring="mean")[0]
    assert curve[0.5] == pytest.approx(quality.segment_size(seg))
    own = quality.size_curve(affs, "mean", [0.5])
    assert own[0.5] != pytest.approx(curve[0.5])  # waterz's own fragments give other segments


def test_affinity_stage_records_the_signal_and_warns_once(tmp_path) -> None:
    pytest.importorskip("onnx")
    from syntk_neurons.stages import AffinityDetector

    from synapse_toolkit.data import Volume
    from synapse_toolkit.nn.export import update_metadata
    from synapse_toolkit.stages import StageContext
    from tests.test_tiled_inference import _tiny_onnx

    raw = (np.random.default_rng(2).random((9, 23, 17)) * 255).astype(np.uint8)

    class Lines(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.WARNING)
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())

    def run(ref: dict, name: str) -> tuple[dict, list[str]]:
        model = tmp_path / f"{name}.onnx"  # one file per reference (sessions are cached)
        _tiny_onnx(model)
        update_metadata(model, {quality.QUALITY_KEY: ref})
        ctx = StageContext(name, tmp_path / name, block_shape=(4, 8, 8))
        seen = Lines()
        ctx.logger.addHandler(seen)
        try:
            opts = AffinityDetector.Options(model_path=model, overlap=(1, 2, 2))
            affs = AffinityDetector(opts, ctx).run({"raw": Volume(raw, (10, 10, 10))})
        finally:
            ctx.logger.removeHandler(seen)
        weakest = affs["affinities"].read()[:3].min(axis=0)
        assert ctx.notes["quality"]["boundary_fraction"] == pytest.approx(
            float((weakest < 0.5).mean()), abs=1e-4
        )
        return dict(ctx.notes), [m for m in seen.lines if "syntk adapt" in m]

    notes, lines = run({"boundary_fraction": 0.5, "warn_below": 0.0, "warn_above": 1.0}, "fits")
    assert "quality_warning" not in notes and not lines
    notes, lines = run({"boundary_fraction": 0.3, "warn_below": 0.1, "warn_above": 0.5}, "far")
    assert len(lines) == 1 and notes["quality_warning"] == lines[0]
    assert notes["quality"]["reference_boundary_fraction"] == 0.3


def test_a_value_just_outside_the_band_does_not_print_as_its_edge() -> None:
    ref = {"boundary_fraction": 0.339, "warn_below": 0.2951, "warn_above": 0.5085}
    line = quality.warning(0.2949, ref)
    assert line is not None and "0.2949 is below" in line and "(0.2951..0.5085)" in line
    assert "0.600 is above" in (quality.warning(0.6, ref) or "")
    assert quality.warning(0.3, ref) is None
