"""`syntk export neuroglancer`: the state's layers and partner lines in nm, and the local file
server answering with CORS open (no neuroglancer client is run: it needs a browser and network)."""

from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from synapse_toolkit.cli.main import app
from synapse_toolkit.errors import SyntkError
from synapse_toolkit.neuroglancer_export import neuroglancer_state, serve
from tests.test_report import _em_run


def test_state_layers_and_partner_lines(tmp_path: Path) -> None:
    run = _em_run(tmp_path / "run")
    state = neuroglancer_state(run, "http://127.0.0.1:1234/")
    assert state["dimensions"] == {"x": [4e-9, "m"], "y": [4e-9, "m"], "z": [4e-8, "m"]}
    by_name = {layer["name"]: layer for layer in state["layers"]}
    assert state["layers"][0]["name"] == "load.raw" and by_name["load.raw"]["type"] == "image"
    seg = by_name["segment.segmentation"]
    assert seg["type"] == "segmentation"
    assert seg["source"] == "zarr3://http://127.0.0.1:1234/artifacts/segment/segmentation.ome.zarr/"
    assert by_name["load.neuron_ids"]["visible"] is False
    for layer in state["layers"]:
        if isinstance(layer["source"], str):  # every source is an OME-Zarr view that exists
            rel = layer["source"].removeprefix("zarr3://http://127.0.0.1:1234/")
            assert (run / rel / "zarr.json").is_file()
    lines = by_name["partners (pre -> post)"]["annotations"]
    assert len(lines) == 3  # matched, false positive, missed
    assert lines[0]["pointA"] == [60.0, 100.0, 80.0]  # x, y, z nm of the matched pre site
    assert sorted(a["props"][0] for a in lines) == ["#2ca02c", "#e8171f", "#ffb000"]


def test_cli_writes_the_state_and_the_server_answers_with_cors(tmp_path: Path) -> None:
    run = _em_run(tmp_path / "run")
    res = CliRunner().invoke(app, ["export", "neuroglancer", str(run), "--port", "9999"])
    assert res.exit_code == 0, res.output
    out = res.stdout.splitlines()
    assert out[0] == f"state: {run / 'neuroglancer.json'}"
    assert out[1].startswith("https://neuroglancer-demo.appspot.com/#!%7B")
    assert json.loads((run / "neuroglancer.json").read_text())["layout"] == "4panel"
    server = serve(run, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        url = f"http://127.0.0.1:{port}/artifacts/segment/segmentation.ome.zarr/zarr.json"
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert resp.headers["Access-Control-Allow-Origin"] == "*"
            assert "multiscales" in json.loads(resp.read())["attributes"]["ome"]
        with pytest.raises(SyntkError, match=f"127.0.0.1:{port}: Address already in use"):
            serve(run, port=port)  # the port is taken: one line, not an OSError traceback
    finally:
        server.shutdown()
        server.server_close()
    res = CliRunner().invoke(app, ["export", "neuroglancer", str(run), "--port", "99999"])
    assert res.exit_code == 2 and "65535" in res.output  # no state with a port that cannot be


def test_state_opens_centred_and_neuroglancer_reads_it(tmp_path: Path) -> None:
    """The view starts on the raw volume's centre (raw voxels, x, y, z); with pyramid levels the
    sources carry them; the neuroglancer package's own state model accepts every layer."""
    import zarr

    run = _em_run(tmp_path / "run")
    state = neuroglancer_state(run, "http://127.0.0.1:1234/", levels=2)
    raw = zarr.open_group(str(run / "artifacts/load/raw.ome.zarr"), mode="r")
    z, y, x = raw["0"].shape
    ms = dict(raw.attrs)["ome"]["multiscales"][0]
    offset = ms["datasets"][0]["coordinateTransformations"][1]["translation"]
    assert state["position"] == [
        offset[2] / 4 + (x - 1) / 2, offset[1] / 4 + (y - 1) / 2, offset[0] / 40 + (z - 1) / 2
    ]  # fmt: skip
    assert [d["path"] for d in ms["datasets"]] == ["0", "1", "2"]
    neuroglancer = pytest.importorskip("neuroglancer")
    parsed = neuroglancer.ViewerState(state)
    kinds = {layer.name: type(layer.layer).__name__ for layer in parsed.layers}
    assert kinds["load.raw"] == "ImageLayer"
    assert kinds["segment.segmentation"] == "SegmentationLayer"
    assert kinds["partners (pre -> post)"] == "AnnotationLayer"
    assert len(parsed.layers["partners (pre -> post)"].annotations) == 3
    assert list(parsed.position) == state["position"]
