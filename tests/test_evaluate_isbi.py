"""`syntk evaluate isbi` / synapse_toolkit.evaluation.isbi on a small ISBI-layout folder made here:
membrane-outlined cells as PNG sections (image/<i>.png, label/<i>.png, 0 = membrane)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from synapse_toolkit.cli.evaluate_isbi import print_report
from synapse_toolkit.cli.main import app
from synapse_toolkit.errors import SyntkError
from synapse_toolkit.evaluation import isbi as ev
from synapse_toolkit.inference.onnx_model import OnnxModel
from synapse_toolkit.models import resolve_model

from .test_sstem import _encode_png


def _sections(n: int = 4, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Voronoi cells with 2-px dark membranes; raw uint8 and label (255 cell, 0 membrane)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    raws, labels = [], []
    for _ in range(n):
        pts = rng.uniform(0, size, (12, 2))
        d = (yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2
        order = np.sort(d, axis=-1)
        membrane = np.sqrt(order[..., 1]) - np.sqrt(order[..., 0]) < 2.0
        raw = np.where(membrane, 50, 170) + rng.normal(0, 8, (size, size))
        raws.append(np.clip(raw, 0, 255).astype(np.uint8))
        labels.append(np.where(membrane, 0, 255).astype(np.uint8))
    return np.stack(raws), np.stack(labels)


@pytest.fixture
def isbi_dir(tmp_path: Path) -> Path:
    raw, lab = _sections()
    for sub, stack in (("image", raw), ("label", lab)):
        (tmp_path / "isbi" / sub).mkdir(parents=True)
        for i, img in enumerate(stack):
            (tmp_path / "isbi" / sub / f"{i}.png").write_bytes(_encode_png(img, [0] * len(img)))
    return tmp_path / "isbi"


def test_evaluate_scores_the_model_via_the_pipeline_and_the_raw_bar(
    isbi_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rep = ev.evaluate(isbi_dir, test="2-3", select="0-1")
    assert rep["test_sections"] == [2, 3] and rep["selection_sections"] == [0, 1]
    m = rep["model"]
    assert len(m["held_out"]["sections"]) == 2
    # no truth wired: the model's stored setting (chosen on its validation sections) is used
    stored = OnnxModel(resolve_model("test", name=ev.DEFAULT_MODEL).path, 1).metadata
    assert m["model_agglomeration"] == stored["agglomeration"]
    assert m["best_on_test"]["cremi_score"] <= m["held_out"]["cremi_score"] + 1e-12
    bar = rep["raw_bar"]
    assert bar["chosen_on_selection"]["sigma"] in ev.SIGMAS
    assert bar["best_on_test"]["cremi_score"] <= bar["held_out"]["cremi_score"] + 1e-12
    # clean dark membranes: intensity alone separates the cells almost perfectly
    assert bar["held_out"]["cremi_score"] < 0.2
    print_report(rep)
    table = capsys.readouterr().out
    assert "raw-intensity bar" in table and "sections 0-1" in table and "optimistic" in table


def test_sections_are_checked(isbi_dir: Path) -> None:
    assert ev.parse_sections("0-2,5") == [0, 1, 2, 5]
    for bad in ("a-b", "3-1", "-1"):
        with pytest.raises(SyntkError, match="expected ranges"):
            ev.parse_sections(bad)
    with pytest.raises(SyntkError, match="overlap"):
        ev.evaluate(isbi_dir, test="1-2", select="0-1")
    with pytest.raises(SyntkError, match="image/ and label/"):
        ev.read_sections(isbi_dir / "image", [0])


def test_cli_prints_json(isbi_dir: Path) -> None:
    args = ["evaluate", "isbi", "--isbi", str(isbi_dir), "--test", "3", "--select", "0-2"]
    res = CliRunner().invoke(app, [*args, "--json", "--no-baselines"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["test_sections"] == [3] and "raw_bar" not in rep
    res = CliRunner().invoke(app, ["evaluate", "isbi", "--isbi", str(isbi_dir / "nowhere")])
    assert res.exit_code == 1 and "image/ and label/" in res.output


def test_export_stores_the_validation_setting_and_domain(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from synapse_toolkit.models import sidecar_sha256
    from synapse_toolkit.nn.unet import UNet3D, UNetConfig

    cfg = UNetConfig.from_dict({"in_channels": 1, "out_channels": 3, "num_fmaps": 2,
                                "downsample_factors": [[1, 2, 2]], "padding": "same"})  # fmt: skip
    ckpt = tmp_path / "best.pt"
    validation = [{"raw": "isbi.h5", "roi": [[16, 20], [0, 512], [0, 512]]}]
    torch.save(
        {
            "model_config": cfg.to_dict(),
            "state_dict": UNet3D(cfg).state_dict(),
            "iteration": 7,
            "input_shape": [4, 16, 16],
            "offsets": [[-1, 0, 0], [0, -1, 0], [0, 0, -1]],
            "train_config": {
                "data": {"volumes": [], "validation": validation},
                "training": {"validation_scoring": "quantile50", "validation_metric": "sections"},
                "domain": {"modality": "ssTEM", "training_data": "real"},
            },
            "validation": {"best": {"threshold": 0.35, "cremi_score": 0.5}},
        },
        ckpt,
    )
    out = tmp_path / "m.onnx"
    info = ev.export(ckpt, out)
    meta = OnnxModel(out, 1).metadata
    agg = meta["agglomeration"]
    assert (agg["scoring"], agg["threshold"], agg["validation_cremi_score"]) == (
        "quantile50",
        0.35,
        0.5,
    )
    assert "isbi.h5 roi [[16, 20]" in agg["chosen_on"] and "sections CREMI" in agg["chosen_on"]
    assert meta["modality"] == "ssTEM" and meta["training_data"] == "real"
    assert meta["iteration"] == 7
    assert sidecar_sha256(out) == info["sha256"]
    del validation[:]
    torch.save({"model_config": cfg.to_dict(), "state_dict": UNet3D(cfg).state_dict()}, ckpt)
    with pytest.raises(SyntkError, match="no validation record"):
        ev.export(ckpt, out)


def test_select_agglomeration_chooses_on_the_given_sections(isbi_dir: Path) -> None:
    grid = [{"method": "affinities"},
            {"method": "distance_2d", "boundary_threshold": 0.5, "dt_sigma": 1.0,
             "min_distance": 3}]  # fmt: skip
    sel = ev.select_agglomeration("neurons/sstem_affinities", isbi_dir, "0-1",
                                  scorings=("quantile50", "mean"), fragment_settings=grid,
                                  thresholds=(0.2, 0.5, 0.8))  # fmt: skip
    rows = sel["rows"]
    assert len(rows) == 2 * 2 * 3
    best = min(rows, key=lambda r: r["cremi_score"])
    choice = sel["choice"]
    assert (choice["scoring"], choice["threshold"], choice["fragments"]) == (
        best["scoring"], best["threshold"], best["fragments"],
    )  # fmt: skip
    assert choice["validation_cremi_score"] == best["cremi_score"]
    assert "sections 0-1" in choice["chosen_on"]
    assert len(ev.fragment_grid()) == 10


def test_select_agglomeration_scores_only_its_sections_within_the_context(isbi_dir: Path) -> None:
    grid = [{"method": "affinities"}]
    sel = ev.select_agglomeration("neurons/sstem_affinities", isbi_dir, "2-3", context="0-3",
                                  scorings=("quantile50",), fragment_settings=grid,
                                  thresholds=(0.3, 0.6))  # fmt: skip
    raw, cells = ev.read_sections(isbi_dir, [0, 1, 2, 3])
    affs = ev.model_affinities("neurons/sstem_affinities", raw)
    expected = ev.sweep(affs[:, 2:], cells[2:], "quantile50", (0.3, 0.6))
    got = [{k: v for k, v in r.items() if k not in ("fragments", "scoring")} for r in sel["rows"]]
    assert got == expected
    # predicted alone, the two sections see less context: not the same affinities
    alone = ev.model_affinities("neurons/sstem_affinities", raw[2:])
    assert not np.allclose(alone, affs[:, 2:])
    assert "within sections 0-3" in sel["choice"]["chosen_on"]
    with pytest.raises(SyntkError, match="does not include"):
        ev.select_agglomeration("neurons/sstem_affinities", isbi_dir, "2-3", context="0-2")


def test_isbi_select_cli_writes_the_choice_and_refuses_held_out_sections(
    isbi_dir: Path, tmp_path: Path
) -> None:
    import shutil

    from synapse_toolkit.models import sidecar_sha256

    model = tmp_path / "m.onnx"
    shutil.copy(resolve_model("test", name="neurons/sstem_affinities").path, model)
    base = ["evaluate", "isbi-select", "--isbi", str(isbi_dir), "--model", str(model)]
    res = CliRunner().invoke(app, [*base, "--sections", "19-21"])
    assert res.exit_code == 1 and "held-out" in res.output
    res = CliRunner().invoke(app, [*base, "--sections", "18-19", "--context", "18-21"])
    assert res.exit_code == 1 and "--context 18-21 overlaps the held-out" in res.output
    res = CliRunner().invoke(app, [*base, "--sections", "0-3", "--write", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    agg = OnnxModel(model, 1).metadata["agglomeration"]
    assert agg == out["agglomeration"] and "fragments" in agg
    assert len(out["rows"]) == 10 * len(ev.SELECT_SCORINGS) * len(ev.THRESHOLDS)
    assert sidecar_sha256(model) == out["written"]["sha256"]


def test_tta_reaches_the_affinity_stage(isbi_dir: Path) -> None:
    raw, _ = ev.read_sections(isbi_dir, [0, 1])
    single = ev.model_affinities("neurons/sstem_affinities", raw)
    tta = ev.model_affinities("neurons/sstem_affinities", raw, tta=True)
    assert tta.shape == single.shape
    assert np.abs(tta - single).max() > 1e-3  # 8 mirrorings averaged, not the single pass
