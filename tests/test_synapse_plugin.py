"""The syntk_synapses stages through the stage contracts (registry, StageContext)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from synapse_toolkit.cremi_ids import CLEFT_BACKGROUND
from synapse_toolkit.data import Annotations, PartnerTable, SectionTransform, Volume
from synapse_toolkit.errors import DataError
from synapse_toolkit.plugin_manager import load_plugins
from synapse_toolkit.stages import StageContext
from synapse_toolkit.synapses.targets import Grid, signed_proximity

VS = (40.0, 4.0, 4.0)
MODELS = Path(__file__).resolve().parents[1] / "plugins" / "syntk_synapses" / "models"


def _registry():  # type: ignore[no-untyped-def]
    return load_plugins().stages


def _stage(kind: str, name: str, tmp: Path, **options):  # type: ignore[no-untyped-def]
    cls = _registry().get(kind, name).cls
    ctx = StageContext(stage_name=name, scratch_dir=tmp / name)
    ctx.scratch_dir.mkdir(parents=True, exist_ok=True)
    return cls(cls.Options(**options), ctx)


def _scene() -> tuple[np.ndarray, np.ndarray, Annotations]:
    seg = np.ones((8, 96, 96), np.uint64)
    seg[:, :, 48:] = 2
    grid = Grid(seg.shape, VS)
    ann = Annotations(
        np.arange(2), (Annotations.PRE, Annotations.POST),
        grid.to_world(np.array([[4, 48, 40], [4, 48, 56]])), np.array([[0, 1]]),
    )  # fmt: skip
    prox = signed_proximity(ann, grid, 100.0, seg)
    return seg, prox, ann


def test_stages_are_registered() -> None:
    reg = _registry()
    for kind, name in [
        ("aligner", "section-translation"), ("detector", "synapse-clefts"),
        ("detector", "synapse-polarity"), ("postprocessor", "cleft-labels"),
        ("partner-assigner", "emsynconn"), ("partner-assigner", "geometric-baseline"),
    ]:  # fmt: skip
        assert reg.get(kind, name).cls.name == name


def test_aligner_stage_estimate_and_inverse(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    from scipy import ndimage

    field = ndimage.gaussian_filter(rng.normal(size=(8, 96, 96)), (6, 6, 6), mode="wrap")
    raw = (np.clip(0.7 - 0.5 * np.exp(-((field / field.std()) ** 2) * 8), 0, 1) * 255).astype(
        np.uint8
    )
    seg = (field > 0).astype(np.uint64) + 1
    shifts = np.zeros((8, 2))
    shifts[4:] = (12.0, -8.0)  # a jump of (3, -2) px from section 4 on
    from synapse_toolkit.synapses.alignment import apply_transform

    t_true = SectionTransform(shifts)
    raw_m = apply_transform(raw, t_true, VS, labels=True)
    seg_m = apply_transform(seg, t_true, VS, labels=True)
    vol = Volume(raw_m, VS)
    ann = Annotations(np.arange(1), (Annotations.PRE,), np.array([[200.0, 180.0, 200.0]]))
    out = _stage("aligner", "section-translation", tmp_path).run(
        {"raw": vol, "neuron_ids": Volume(seg_m, VS), "annotations": ann}
    )
    est = out["transform"].shifts_nm
    np.testing.assert_allclose(est[4:] - est[:4].mean(0), np.tile(-shifts[4:], 1), atol=4.0)
    back = _stage("aligner", "section-translation", tmp_path / "inv", mode="inverse").run(
        {
            "neuron_ids": out["neuron_ids"],
            "transform": out["transform"],
            "annotations": out["annotations"],
        }
    )
    np.testing.assert_allclose(back["annotations"].world_locations(), ann.world_locations())
    inner = (slice(None), slice(16, -16), slice(16, -16))
    np.testing.assert_array_equal(np.asarray(back["neuron_ids"].read())[inner], seg_m[inner])
    with pytest.raises(DataError, match="transform"):
        _stage("aligner", "section-translation", tmp_path / "bad", mode="inverse").run({"raw": vol})


def test_emsynconn_and_baseline_stages(tmp_path: Path) -> None:
    seg, prox, _ = _scene()
    seg_v = Volume(seg, VS)
    prox_v = Volume(prox[None], VS)
    out = _stage("partner-assigner", "emsynconn", tmp_path, prune=False, min_voxels=20).run(
        {"proximity": prox_v, "segmentation": seg_v}
    )
    table: PartnerTable = out["partners"]
    assert len(table) == 1 and table.pre_segment[0] == 1 and table.post_segment[0] == 2
    assert out["annotations"].types == (Annotations.PRE, Annotations.POST)
    with pytest.raises(DataError, match="raw"):
        _stage("partner-assigner", "emsynconn", tmp_path / "p").run(
            {"proximity": prox_v, "segmentation": seg_v}
        )
    prob = np.zeros((1, *seg.shape), np.float32)
    prob[0, 3:6, 40:56, 47:49] = 0.95  # above the default (strict) threshold 0.9
    cl = _stage("postprocessor", "cleft-labels", tmp_path, min_voxels=10).run(
        {"cleft_probability": Volume(prob, VS)}
    )["clefts"]
    arr = np.asarray(cl.read())
    assert set(np.unique(arr).tolist()) == {1, int(CLEFT_BACKGROUND)}
    base = _stage("partner-assigner", "geometric-baseline", tmp_path).run(
        {"clefts": cl, "proximity": prox_v, "segmentation": seg_v}
    )["partners"]
    assert len(base) == 1 and base.pre_segment[0] == 1 and base.post_segment[0] == 2


def test_emsynconn_deduplicates_by_a_coarse_segmentation(tmp_path: Path) -> None:
    seg, prox, _ = _scene()
    fine = seg.copy()
    fine[4:][fine[4:] == 2] = 3  # the post neuron split in two at section 4
    inputs = {"proximity": Volume(prox[None], VS), "segmentation": Volume(fine, VS)}
    split = _stage("partner-assigner", "emsynconn", tmp_path / "a", prune=False,
                   min_voxels=20).run(inputs)["partners"]  # fmt: skip
    assert sorted(split.post_segment.tolist()) == [2, 3]  # one synapse, two rows
    one = _stage("partner-assigner", "emsynconn", tmp_path / "b", prune=False, min_voxels=20).run(
        {**inputs, "coarse_segmentation": Volume(seg, VS)}
    )["partners"]
    assert len(one) == 1 and one.post_segment[0] in (2, 3)  # its own (fine) segment id
    with pytest.raises(DataError, match="coarse_segmentation"):
        _stage("partner-assigner", "emsynconn", tmp_path / "c", prune=False).run(
            {**inputs, "coarse_segmentation": Volume(seg[:, :48], VS)}
        )


@pytest.mark.skipif(not (MODELS / "polarity.onnx").exists(), reason="model not trained yet")
def test_polarity_detector_runs_tiled(tmp_path: Path) -> None:
    raw = Volume(np.random.default_rng(0).integers(0, 255, (12, 160, 140), dtype=np.uint8), VS)
    out = _stage("detector", "synapse-polarity", tmp_path).run({"raw": raw})["proximity"]
    arr = np.asarray(out.read())
    assert arr.shape == (1, 12, 160, 140)
    assert arr.min() >= -1 and arr.max() <= 1 and np.isfinite(arr).all()
