"""`syntk view`: napari layers built as data (no display), the one-line hint without the viewer
extra, and napari itself opening a run offscreen (skipped when the extra is not installed)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from synapse_toolkit.cli.main import app
from synapse_toolkit.errors import DataError
from synapse_toolkit.io.ngff import view_path
from synapse_toolkit.viewer import STATE_COLOURS, VIEWER_EXTRA_HINT, layer_specs
from tests.test_report import _em_run


def test_run_layers_in_nm(tmp_path: Path) -> None:
    specs = {s.name: s for s in layer_specs(_em_run(tmp_path / "run"))}
    assert list(specs) == ["raw", "truth segmentation", "segmentation", "truth clefts", "clefts",
                           "synaptic sites", "partners (pre -> post)"]  # fmt: skip
    assert specs["raw"].kind == "image" and specs["raw"].kwargs["scale"] == (40.0, 4.0, 4.0)
    assert specs["segmentation"].kind == "labels"
    assert specs["truth segmentation"].kwargs["visible"] is False
    truth_clefts = specs["truth clefts"].data
    z2 = np.asarray(truth_clefts[2])
    assert set(np.unique(z2).tolist()) == {0, 4}  # CREMI's "no label" background reads as 0
    points, vectors = specs["synaptic sites"], specs["partners (pre -> post)"]
    # one matched pair, one false positive, one missed truth pair: 3 pairs, 6 sites
    assert points.data.shape == (6, 3) and vectors.data.shape == (3, 2, 3)
    assert sorted(vectors.kwargs["properties"]["state"].tolist()) == ["fn", "fp", "tp"]
    assert vectors.kwargs["scale"] == points.kwargs["scale"] == (40.0, 4.0, 4.0)
    vs = np.array(vectors.kwargs["scale"])
    np.testing.assert_allclose(vectors.data[0, 0] * vs, [80, 100, 60])  # pre site, nm
    np.testing.assert_allclose((vectors.data[0, 0] + vectors.data[0, 1]) * vs, [80, 160, 60])
    assert points.kwargs["properties"]["synapse"].tolist()[:3] == [1, 2, -1]


def test_cremi_file_and_zarr_layers(tmp_path: Path, cremi_file: Path) -> None:
    specs = {s.name: s for s in layer_specs(cremi_file)}
    assert {"raw", "neuron_ids", "clefts", "synaptic sites"} <= set(specs)
    assert specs["raw"].kwargs["translate"] == (40.0, 0.0, 8.0)
    run = _em_run(tmp_path / "run")
    art = run / "artifacts/segment/segmentation.zarr"
    for path in (art, view_path(art)):
        (spec,) = layer_specs(path)
        assert spec.kind == "labels" and spec.kwargs["scale"] == (40.0, 4.0, 4.0)
    other = tmp_path / "notes.txt"
    other.write_text("x")
    with pytest.raises(DataError, match="not a run directory"):
        layer_specs(other)


def test_view_without_the_extra_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "napari", None)  # import napari -> ImportError
    res = CliRunner().invoke(app, ["view", str(_em_run(tmp_path / "run"))])
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines() == [f"error: {VIEWER_EXTRA_HINT}"]
    monkeypatch.delitem(sys.modules, "napari")
    if importlib.util.find_spec("napari") is not None:  # napari without a Qt binding
        monkeypatch.setattr("synapse_toolkit.viewer.QT_BINDINGS", ("NoSuchQtBinding",))
        res = CliRunner().invoke(app, ["view", str(tmp_path / "run")])
        assert res.exit_code == 1
        assert res.stderr.strip().splitlines() == [f"error: {VIEWER_EXTRA_HINT}"]


SCRIPT = """
import sys
from synapse_toolkit.viewer import open_viewer
viewer = open_viewer(sys.argv[1], block=False)
viewer.window._qt_window.resize(700, 500)
viewer.dims.set_point(0, 280.0)  # z = 7 sections of 40 nm: the false positive and the miss
viewer.reset_view()  # the whole section in view (a screenshot size would crop the centre)
shot = viewer.screenshot(sys.argv[2], canvas_only=True)
print(",".join(layer.name for layer in viewer.layers))
print(viewer.dims.current_step[0], shot.shape, "".join(viewer.dims.axis_labels))
viewer.close()
"""


@pytest.mark.skipif(
    importlib.util.find_spec("napari") is None or shutil.which("xvfb-run") is None,
    reason="needs napari (the viewer extra) and xvfb-run (napari draws with OpenGL)",
)
def test_napari_opens_a_run_under_xvfb(tmp_path: Path) -> None:
    run = _em_run(tmp_path / "run")
    shot = tmp_path / "shot.png"
    args = ["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24", sys.executable, "-c", SCRIPT,
            str(run), str(shot)]  # fmt: skip
    out = subprocess.run(args, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    names, step = out.stdout.strip().splitlines()[-2:]
    assert names.split(",")[0] == "raw"
    assert {"segmentation", "clefts", "synaptic sites", "partners (pre -> post)"} <= set(
        names.split(",")
    )
    assert step.startswith("7 ")  # the z slider steps by 40 nm sections
    assert step.endswith(" zyx")  # and is labelled z
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)
    assert min(img.shape[:2]) >= 200
    assert img[..., :3].std() > 0.05  # EM and overlays drawn, not a blank canvas
    # the sites on this section are drawn: the false positive (amber) and the miss (red)
    rgb = np.round(img[..., :3] * 255)
    for colour in (STATE_COLOURS["fp"], STATE_COLOURS["fn"]):
        want = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(rgb - want).max(axis=-1) < 20).sum() > 20, colour


def test_no_display_is_one_error_line_not_a_qt_abort() -> None:
    from synapse_toolkit.errors import SyntkError
    from synapse_toolkit.viewer import no_display

    with pytest.raises(SyntkError, match="no display.*xvfb-run.*neuroglancer"):
        no_display({}, "linux")
    for env in (
        {"DISPLAY": ":99"},
        {"WAYLAND_DISPLAY": "wayland-0"},
        {"QT_QPA_PLATFORM": "offscreen"},
    ):
        no_display(env, "linux")
    no_display({}, "darwin")  # macOS and Windows always have a window server
