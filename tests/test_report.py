"""The run report: PNGs valid and of the size the page states, the page references only files that
exist, sections chosen where errors are, overlays coloured by outcome, and the CLI hooks."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from synapse_toolkit.artifacts import ArtifactStore
from synapse_toolkit.cli.main import app
from synapse_toolkit.cremi_ids import NO_LABEL
from synapse_toolkit.data import (
    Annotations,
    PartnerTable,
    Regions,
    ScoreRecord,
    Volume,
    WrittenFile,
)
from synapse_toolkit.errors import DataError
from synapse_toolkit.report import FN_COLOUR, FP_COLOUR, TP_COLOUR, write_report

RES, OFF = (40.0, 4.0, 4.0), (0.0, 0.0, 0.0)


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", path
    w, h = struct.unpack(">II", head[16:24])
    return int(w), int(h)


def _make_run(root: Path, stages: dict[str, tuple[str, dict[str, Any], dict[str, Any]]]) -> Path:
    """A run directory: ``stages`` maps name -> (kind, {port: (value, type)}, config inputs)."""
    store = ArtifactStore(root)
    scratch = root / ".scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    records, cfg = {}, {}
    for name, (kind, outputs, inputs) in stages.items():
        outs = {p: store.save(name, p, v, scratch, t) for p, (v, t) in outputs.items()}
        records[name] = {"kind": kind, "plugin": inputs.pop("_plugin", name), "seconds": 0.5,
                         "outputs": outs}  # fmt: skip
        cfg[name] = {"kind": kind, "inputs": inputs}
    manifest = {"status": "complete", "config": {"name": "t", "stages": cfg}, "stages": records,
                "input": {"path": "synthetic"}}  # fmt: skip
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def _em_run(root: Path) -> Path:
    rng = np.random.default_rng(0)
    shape = (10, 64, 64)
    raw = rng.integers(60, 200, size=shape, dtype=np.uint8)
    seg = np.zeros(shape, np.uint64)
    seg[:, :32], seg[:, 32:] = 3, 9
    truth = np.zeros(shape, np.uint64)
    truth[:, :, :32], truth[:, :, 32:] = 5, 7
    clefts = np.zeros(shape, np.uint64)
    clefts[2, 30:34, 10:40] = 1
    truth_clefts = np.full(shape, NO_LABEL, np.uint64)
    truth_clefts[2, 30:34, 10:40] = 4  # the prediction is exact at z = 2: no error colours there
    # pair 0 at z = 2 (matched), pair 1 at z = 7 (false positive); truth pair 1 at z = 7 (missed)
    pred = PartnerTable(
        pre_nm=[[80, 100, 60], [280, 40, 200]], post_nm=[[80, 160, 60], [280, 200, 40]],
        pre_segment=[3, 3], post_segment=[9, 9], score=[0.9, 0.8], synapse_id=[1, 2],
    )  # fmt: skip
    ann = Annotations(
        ids=np.array([1, 2, 3, 4], np.uint64),
        types=(Annotations.PRE, Annotations.POST, Annotations.PRE, Annotations.POST),
        locations_nm=np.array([[80, 100, 60], [80, 160, 60], [280, 200, 220], [280, 60, 220]]),
        partners=np.array([[1, 2], [3, 4]], np.uint64),
    )
    vol = lambda a, n: Volume(a, RES, OFF, n)  # noqa: E731
    neuron_scores = ScoreRecord("cremi-neurons", {"voi_split": 0.5, "voi_merge": 0.25})
    partner_scores = ScoreRecord(
        "cremi-partners", {"fscore": 0.5, "fp": 1, "fn": 1}, {"matches": [[0, 0, 0.0]]}
    )
    return _make_run(root, {
        "load": ("loader", {"raw": (vol(raw, "raw"), "intensity"),
                            "neuron_ids": (vol(truth, "neuron_ids"), "labels"),
                            "clefts": (vol(truth_clefts, "clefts"), "labels"),
                            "annotations": (ann, "annotations")}, {}),
        "segment": ("agglomerator", {"segmentation": (vol(seg, "segmentation"), "labels")}, {}),
        "cleft_labels": ("postprocessor", {"clefts": (vol(clefts, "clefts"), "labels")}, {}),
        "partners": ("partner-assigner", {"partners": (pred, "partners")}, {}),
        "score_neurons": ("scorer", {"scores": (neuron_scores, "scores")},
                          {"_plugin": "cremi-neurons", "prediction": "segment.segmentation",
                           "truth": "load.neuron_ids"}),
        "score_partners": ("scorer", {"scores": (partner_scores, "scores")},
                           {"_plugin": "cremi-partners", "prediction": "partners.partners",
                            "truth": "load.annotations"}),
    })  # fmt: skip


def _check_page(html_path: Path) -> list[str]:
    """Every local reference exists; every PNG is valid and of the size the page states; every
    PNG in report/ is shown. Returns the image names."""
    page = html_path.read_text()
    root = html_path.parent
    refs = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page)
    assert refs
    for ref in refs:
        assert not ref.startswith(("http:", "https:", "/")), ref  # self-contained, relative
        assert (root / ref).is_file(), ref
    imgs = re.findall(r"<img src='([^']+)' width='(\d+)' height='(\d+)'", page)
    assert len(imgs) == len([r for r in refs if r.startswith("report/")])
    for src, w, h in imgs:
        assert _png_size(root / src) == (int(w), int(h))
        assert 200 <= int(w) <= 2400 and 100 <= int(h) <= 2400
    shown = {Path(src).name for src, _, _ in imgs}
    assert shown == {p.name for p in (root / "report").glob("*.png")}
    return sorted(shown)


def _has_colour(png: Path, hex_colour: str, tol: int = 30, min_pixels: int = 20) -> bool:
    import matplotlib.image as mpimg

    rgb = (mpimg.imread(png)[..., :3] * 255).astype(int)
    want = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(rgb - want).max(axis=-1) <= tol).sum()) >= min_pixels


def test_em_report_pages_and_images(tmp_path: Path) -> None:
    run = _em_run(tmp_path / "run")
    html_path = write_report(run)
    assert html_path == run / "report.html"
    names = _check_page(html_path)
    # sections at the partners: z = 7 holds a false positive and a miss, z = 2 a match
    assert "section_z7.png" in names and "section_z2.png" in names
    assert any(n.startswith("section_y") for n in names) and "timings.png" in names
    z7, z2 = run / "report/section_z7.png", run / "report/section_z2.png"
    assert _has_colour(z7, FN_COLOUR) and _has_colour(z7, FP_COLOUR)
    assert not _has_colour(z2, FN_COLOUR) and not _has_colour(z2, FP_COLOUR)
    page = html_path.read_text()
    assert "1 matched, 1 false positive, 1 missed" in page
    row = re.search(r"<td>voi_split</td>.*?</tr>", page)
    assert row is not None and "lower is better" in row.group(0)
    row = re.search(r"<td>fscore</td>.*?</tr>", page)
    assert row is not None and "higher is better" in row.group(0)
    # a second report replaces the first
    (run / "report" / "stale.png").write_bytes(b"x")
    write_report(run)
    assert not (run / "report" / "stale.png").exists()
    assert not list(run.glob(".report-*"))


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Chromium (Debian chromium)")
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    """The page as a browser draws it: the section pictures are loaded and shown (the
    segmentation's colours, which only the pictures hold, are on the screenshot)."""
    run = _em_run(tmp_path / "run")
    write_report(run)
    shot = tmp_path / "page.png"
    args = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,5000",
            f"--screenshot={shot}", (run / "report.html").as_uri()]  # fmt: skip
    subprocess.run(args, capture_output=True, timeout=180, check=True)
    assert _png_size(shot) == (1200, 5000)
    import matplotlib.image as mpimg

    rgb = (mpimg.imread(shot)[..., :3] * 255).astype(int)
    vivid = rgb.max(axis=-1) - rgb.min(axis=-1) > 60
    for colour in (FN_COLOUR, FP_COLOUR, TP_COLOUR):  # the page's own legend and arrows
        want = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
        vivid &= np.abs(rgb - want).max(axis=-1) > 40
    assert vivid.sum() > 50_000, vivid.sum()  # ~700,000 here; without the pictures ~1,500


def test_calcium_report_outlines_found_missed_false(tmp_path: Path) -> None:
    img = np.random.default_rng(1).random((1, 1, 40, 40)).astype(np.float32)
    square = lambda r, c: np.array([(r + i, c + j) for i in range(4) for j in range(4)])  # noqa: E731
    truth = Regions((square(5, 5), square(20, 20), square(30, 5)))
    pred = Regions((square(5, 6), square(20, 21), square(30, 30)))
    (tmp_path / "run").mkdir()
    import matplotlib.image as mpimg

    mpimg.imsave(tmp_path / "run" / "rois.png", img[0, 0])  # a writer stage's picture
    run = _make_run(tmp_path / "run", {
        "overlay": ("writer", {"file": (WrittenFile("rois.png"), "file")}, {}),
        "load": ("loader", {"summary": (Volume(img, (1e3,) * 3, OFF, "summary"), "volume"),
                            "truth": (truth, "regions")}, {}),
        "regions": ("roi-extractor", {"regions": (pred, "regions")}, {}),
        "score": ("scorer", {"scores": (ScoreRecord("neurofinder", {"recall": 2 / 3},
                                                    {"threshold_px": 5.0}), "scores")},
                  {"_plugin": "neurofinder", "prediction": "regions.regions",
                   "truth": "load.truth"}),
    })  # fmt: skip
    names = _check_page(write_report(run))
    assert "regions.png" in names
    assert "<img src='rois.png'" in (run / "report.html").read_text()
    assert (
        "regions.regions: 3 ROIs (2 found, 1 missed, 1 false)" in (run / "report.html").read_text()
    )


def test_roi_outline_sits_on_its_pixels() -> None:
    from synapse_toolkit.report import _outline

    region = np.array([(r, c) for r in range(10, 15) for c in range(20, 24)])  # rows 10-14
    (xy,) = _outline(region, (64, 64))
    assert xy[:, 0].min() >= 19 and xy[:, 0].max() <= 24  # x = columns, around 20-23
    assert xy[:, 1].min() >= 9 and xy[:, 1].max() <= 15  # y = rows, around 10-14
    assert xy[:, 0].min() < 20 and xy[:, 1].max() > 14  # the outline encloses the pixels
    (corner,) = _outline(np.array([(0, 0), (0, 1), (1, 0)]), (64, 64))  # at the border
    assert corner.min() >= -1
    assert _outline(np.array([(70, 70)]), (64, 64)) == []  # outside the image


def test_unreadable_artifact_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    run = _em_run(tmp_path / "run")
    for p in (run / "artifacts/segment/segmentation.zarr").rglob("*"):
        if p.is_file():
            p.unlink()
    page = write_report(run).read_text()
    assert "segment.segmentation: could not be read" in page
    _check_page(run / "report.html")


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no manifest.json"):
        write_report(tmp_path)
    res = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines() == [
        f"error: {tmp_path}: no manifest.json (not a syntk run directory)"
    ]


def _config(tmp_path: Path, cremi_file: Path, out: str) -> Path:
    cfg = tmp_path / f"{out}.toml"
    cfg.write_text(textwrap.dedent(f"""
        [input]
        path = "{cremi_file}"
        [output]
        dir = "{tmp_path / out}"
        [stages.load]
        kind = "loader"
        plugin = "cremi-hdf5"
        [stages.score]
        kind = "scorer"
        plugin = "cremi-partners"
        [stages.score.inputs]
        prediction = "load.partners"
        truth = "load.annotations"
        truth_neuron_ids = "load.neuron_ids"
    """))  # fmt: skip
    return cfg


def test_pipeline_run_writes_the_report(
    tmp_path: Path, cremi_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["pipeline", "run", str(_config(tmp_path, cremi_file, "a")), "-q"])
    assert res.exit_code == 0, res.output
    _check_page(tmp_path / "a" / "report.html")
    res = runner.invoke(
        app, ["pipeline", "run", str(_config(tmp_path, cremi_file, "b")), "-q", "--no-report"]
    )
    assert res.exit_code == 0 and not (tmp_path / "b" / "report.html").exists()

    def broken(run_dir: Path) -> Path:
        raise RuntimeError("boom")

    monkeypatch.setattr("synapse_toolkit.report.write_report", broken)
    res = runner.invoke(app, ["pipeline", "run", str(_config(tmp_path, cremi_file, "c")), "-q"])
    assert res.exit_code == 0
    assert res.stderr.strip().splitlines() == ["warning: no report (RuntimeError: boom)"]


def test_a_neuron_only_run_shows_no_empty_cleft_panel(tmp_path: Path) -> None:
    from synapse_toolkit.report import Grid, xy_panels

    rng = np.random.default_rng(1)
    shape = (6, 32, 32)
    seg = np.zeros(shape, np.uint64)
    seg[:, :, 16:] = 2
    run = _make_run(tmp_path / "run", {
        "load": ("loader", {"raw": (Volume(rng.integers(0, 255, shape, dtype=np.uint8), RES,
                                           OFF, "raw"), "intensity")}, {}),
        "segment": ("agglomerator", {"segmentation": (Volume(seg, RES, OFF, "segmentation"),
                                                      "labels")}, {}),
    })  # fmt: skip
    page = write_report(run).read_text()
    assert "Clefts and partners" not in page and "Segment colours are arbitrary" in page
    grid = Grid(np.asarray(RES, float), np.asarray(OFF, float), shape)
    layers = {"segmentation": Volume(seg, RES, OFF, "s"), "truth segmentation": None,
              "clefts": None, "truth clefts": None}  # fmt: skip
    assert [t for t, _ in xy_panels(layers, grid, OFF[0], with_partners=False)] == [
        "EM", "segmentation"
    ]  # fmt: skip
    titles = [t for t, _ in xy_panels(layers, grid, OFF[0], with_partners=True)]
    assert titles == ["EM", "segmentation", "truth clefts (blue)"]


def test_stage_warnings_are_escaped_once(tmp_path: Path) -> None:
    run = _em_run(tmp_path / "run")
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["stages"]["segment"]["notes"] = {"quality_warning": "this model's fit is <poor>"}
    (run / "manifest.json").write_text(json.dumps(manifest))
    page = write_report(run).read_text()
    warn = re.search(r"<div class='warn'>([^<]*quality_warning[^<]*)</div>", page)
    assert warn is not None
    assert "model&#x27;s fit is &lt;poor&gt;" in warn.group(1) and "&amp;" not in warn.group(1)
