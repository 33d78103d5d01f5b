"""The waterz agglomerator stage: one segmentation per threshold, threshold selection against
truth, fragments untouched, clean stdout; and the raw waterz wrapper."""

from __future__ import annotations

import numpy as np
import pytest
from syntk_neurons.stages import WaterzAgglomerator

from synapse_toolkit.affinities import labels_to_affinities
from synapse_toolkit.data import Volume
from synapse_toolkit.errors import SyntkError
from synapse_toolkit.inference.agglomeration import agglomerate, scoring_function, sweep
from synapse_toolkit.inference.segmetrics import segmentation_scores
from synapse_toolkit.stages import StageContext


def _cubes() -> np.ndarray:
    """Four boxes separated by one-voxel boundaries (label 0)."""
    lab = np.zeros((8, 20, 20), np.uint64)
    lab[:, 1:10, 1:10] = 1
    lab[:, 1:10, 11:19] = 2
    lab[:, 11:19, 1:10] = 3
    lab[:, 11:19, 11:19] = 4
    return lab


def _noisy_affs(lab: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    affs = labels_to_affinities(lab) * 0.8 + 0.1
    return np.clip(affs + rng.normal(0, 0.05, affs.shape), 0, 1).astype(np.float32)


def _run(tmp_path, inputs, **options):
    stage = WaterzAgglomerator(
        WaterzAgglomerator.Options(**options), StageContext("agglo", tmp_path)
    )
    return stage.run(inputs)


def test_sweep_selects_a_threshold_that_recovers_truth(tmp_path, capfd) -> None:
    lab = _cubes()
    affs = Volume(_noisy_affs(lab), (10, 10, 10))
    out = _run(
        tmp_path,
        {"affinities": affs, "truth": Volume(lab, (10, 10, 10))},
        thresholds=[0.05, 0.5, 0.95],
        scoring="mean",
    )
    assert out["segmentations"].shape == (3, *lab.shape)
    scores = out["scores"]
    assert scores.values["best_threshold"] == 0.5
    s = segmentation_scores(out["segmentation"].read(), lab)
    assert s.voi < 0.05 and s.arand < 0.01  # a corner voxel may join a boundary fragment
    sweep_rows = scores.details["sweep"]
    assert sweep_rows[-1]["voi_merge"] > 1  # 0.95: everything merged
    assert capfd.readouterr().out == ""  # waterz's printing is redirected


def test_without_truth_uses_given_threshold_and_keeps_fragments(tmp_path) -> None:
    lab = _cubes()
    affs = _noisy_affs(lab, 1)
    frag = np.arange(lab.size, dtype=np.uint64).reshape(lab.shape) // 40 + 1
    frag_copy = frag.copy()
    out = _run(
        tmp_path,
        {"affinities": Volume(affs, (1, 1, 1)), "fragments": Volume(frag, (1, 1, 1))},
        thresholds=[0.2, 0.9],
        threshold=0.9,
        scoring="quantile50",
    )
    np.testing.assert_array_equal(frag, frag_copy)
    segs = out["segmentations"].read()
    np.testing.assert_array_equal(out["segmentation"].read(), segs[1])
    assert len(np.unique(segs[1])) < len(np.unique(segs[0]))
    assert "scores" not in out


def test_generator_results_are_copies_and_ascending() -> None:
    lab = _cubes()
    segs = agglomerate(_noisy_affs(lab), [0.9, 0.05], scoring="mean")
    assert len(np.unique(segs[0])) > len(np.unique(segs[1]))  # 0.05 first (ascending)
    assert segs[0] is not segs[1] and segs[0].dtype == np.uint64
    rows = sweep(_noisy_affs(lab), lab, [0.5], scoring="quantile75")
    assert rows[0]["voi"] < 0.05


def test_bad_inputs_are_clear_errors(tmp_path) -> None:
    with pytest.raises(SyntkError, match="unknown waterz scoring"):
        scoring_function("quantile12")
    with pytest.raises(SyntkError, match=r"\(>=3, z, y, x\)"):
        _run(tmp_path, {"affinities": Volume(np.zeros((2, 3, 3, 3), np.float32), (1, 1, 1))})
    with pytest.raises(SyntkError, match="truth shape"):
        _run(
            tmp_path,
            {
                "affinities": Volume(np.zeros((3, 3, 3, 3), np.float32), (1, 1, 1)),
                "truth": Volume(np.zeros((2, 3, 3), np.uint64), (1, 1, 1)),
            },
        )


def test_metrics_helper_known_values() -> None:
    gt = np.repeat(np.array([1, 2], np.uint64), 50).reshape(1, 10, 10)
    merged = np.ones_like(gt)
    s = segmentation_scores(merged, gt)
    assert s.voi_merge == pytest.approx(1.0) and s.voi_split == pytest.approx(0.0)
    split = np.arange(gt.size).reshape(gt.shape) // 25
    s2 = segmentation_scores(split, gt)
    assert s2.voi_split == pytest.approx(1.0) and s2.voi_merge == pytest.approx(0.0)
    ignored = gt.copy()
    ignored[:, :5] = 0  # truth 0 = boundary: left out
    assert segmentation_scores(merged, ignored).voi_merge == pytest.approx(0.0)


def test_segmentation_scores_are_the_cremi_scorer() -> None:
    from synapse_toolkit.metrics.cremi_neurons import score_neuron_ids

    rng = np.random.default_rng(4)
    truth = rng.integers(0, 6, size=(4, 20, 20))
    test = (truth + (rng.random(truth.shape) < 0.2) * rng.integers(1, 4, truth.shape)) % 7
    a = segmentation_scores(test, truth, ignore_label=None)
    b = score_neuron_ids(truth.astype(np.uint64), test.astype(np.uint64))
    assert (a.voi_split, a.voi_merge, a.arand) == (b.voi_split, b.voi_merge, b.adapted_rand)
    flat = segmentation_scores(test[0], truth[0], ignore_label=None)  # 2D sections work too
    assert flat.voi_split == score_neuron_ids(truth[:1].astype(np.uint64),
                                              test[:1].astype(np.uint64)).voi_split  # fmt: skip


def test_plugin_registers_its_stages_and_model() -> None:
    import syntk_neurons

    from synapse_toolkit.plugin_manager import load_plugins

    plugins = load_plugins(extra_modules={"neurons-under-test": syntk_neurons})
    reg = plugins.stages
    assert reg.get("agglomerator", "waterz").cls is WaterzAgglomerator
    assert reg.get("detector", "affinity-unet").cls.__name__ == "AffinityDetector"
    assert reg.get("loader", "hdf5-volumes").cls.__name__ == "Hdf5VolumesLoader"
    from syntk_neurons.models import registry_entries

    for entry in registry_entries():  # shipped models are pinned by their sidecar hash
        assert len(entry["sha256"]) == 64 and entry["kind"] == "model"
