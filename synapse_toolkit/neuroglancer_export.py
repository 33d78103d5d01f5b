"""A neuroglancer state for a run directory, and a local static file server for it.

The state (``<run>/neuroglancer.json``) shows the OME-Zarr views of the run's volumes
(``syntk export ome-zarr`` makes any missing ones) as image and segmentation layers, and the
synaptic partners as line annotations (pre -> post) in nm. Sources are ``zarr3://`` URLs under
``base_url``, the address :func:`serve` answers on (CORS open, so a neuroglancer client on another
origin may read the files).
"""

from __future__ import annotations

import functools
import json
import urllib.parse
from collections.abc import Callable
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from synapse_toolkit.errors import DataError, SyntkError
from synapse_toolkit.fsio import atomic_write_text

__all__ = ["CLIENT", "neuroglancer_state", "serve", "state_url", "write_state"]

#: a public neuroglancer client; the state travels in the URL fragment (never sent to it)
CLIENT = "https://neuroglancer-demo.appspot.com"


def neuroglancer_state(run_dir: Path, base_url: str, levels: int = 0) -> dict[str, Any]:
    """The state: dimensions x, y, z in metres from the raw voxel size, image layers (raw, maps),
    segmentation layers (labels) and a line annotation per partner pair; the OME-Zarr views are
    (re)written with ``levels`` pyramid levels."""
    from synapse_toolkit.io.ngff import export_run
    from synapse_toolkit.report import Run, partner_pairs

    views = export_run(run_dir, levels)
    run = Run.open(run_dir)
    base = base_url.rstrip("/")
    layers: list[dict[str, Any]] = []
    raw_scale: list[float] | None = None
    centre_nm: list[float] | None = None
    shape: list[int] = [1, 1, 1]
    for view in views:
        ome = json.loads((view / "zarr.json").read_text())["attributes"]["ome"]
        ms = ome["multiscales"][0]
        if ms["axes"][0]["name"] == "c":
            continue  # multi-channel volumes (affinities, sweeps): not drawn
        rel = view.relative_to(run_dir).as_posix()
        name = rel.removeprefix("artifacts/").removesuffix(".ome.zarr").replace("/", ".")
        kind = "segmentation" if "image-label" in ome else "image"
        layer: dict[str, Any] = {"type": kind, "source": f"zarr3://{base}/{rel}/", "name": name}
        if kind == "segmentation" and name.startswith("load."):
            layer["visible"] = False  # truth under the prediction
        if kind == "image" and not name.startswith("load."):
            layer["visible"] = False  # prediction maps
        layers.append(layer)
        if name == "load.raw" or (raw_scale is None and kind == "image"):
            transforms = ms["datasets"][0]["coordinateTransformations"]
            scale, shift = transforms[0]["scale"], transforms[1]["translation"]
            shape = json.loads((view / "0" / "zarr.json").read_text())["shape"]
            raw_scale = list(scale)
            # the view starts centred on the raw volume, wide enough to show all of it
            centre_nm = [o + (n - 1) / 2 * v for o, n, v in zip(shift, shape, scale, strict=True)]
    if not layers:
        raise DataError(f"{run_dir}: no volume artifacts to show")
    layers.sort(key=lambda d: (d["type"] != "image" or not d["name"].endswith("raw"), d["type"]))
    pairs, _ = partner_pairs(run)
    run.store.close()
    if pairs is not None and len(pairs.state):
        colours = {"tp": "#2ca02c", "fp": "#ffb000", "fn": "#e8171f"}
        annotations = [
            {"type": "line", "id": str(i), "pointA": pairs.pre[i, ::-1].tolist(),
             "pointB": pairs.post[i, ::-1].tolist(), "props": [colours[s]]}
            for i, s in enumerate(pairs.state)
        ]  # fmt: skip
        layers.append({
            "type": "annotation", "name": "partners (pre -> post)",
            "source": {"url": "local://annotations", "transform": {"outputDimensions": {
                "x": [1e-9, "m"], "y": [1e-9, "m"], "z": [1e-9, "m"]}}},
            "annotationProperties": [{"id": "color", "type": "rgb", "default": "#ffffff"}],
            "annotations": annotations,
            "shader": "void main() { setColor(prop_color()); setLineWidth(3.0); }",
        })  # fmt: skip
    zyx = np.asarray(raw_scale or [1.0, 1.0, 1.0], np.float64) * 1e-9
    state: dict[str, Any] = {
        "dimensions": {"x": [zyx[2], "m"], "y": [zyx[1], "m"], "z": [zyx[0], "m"]},
        "layers": layers,
        "layout": "4panel",
    }
    if centre_nm is not None and raw_scale is not None:
        # position in the dimensions' units (raw voxels), x, y, z; zoom in raw voxels per pixel
        state["position"] = [c / v for c, v in zip(centre_nm[::-1], raw_scale[::-1], strict=True)]
        state["crossSectionScale"] = max(shape[-1], shape[-2]) / 450.0
    return state


def write_state(run_dir: Path, base_url: str, levels: int = 0) -> Path:
    """Write ``<run>/neuroglancer.json``; returns its path."""
    path = run_dir / "neuroglancer.json"
    state = neuroglancer_state(run_dir, base_url, levels)
    atomic_write_text(path, json.dumps(state, indent=2))
    return path


def state_url(state: dict[str, Any], client: str = CLIENT) -> str:
    """The neuroglancer URL that opens ``state``."""
    return f"{client}/#!" + urllib.parse.quote(json.dumps(state, separators=(",", ":")))


class _CorsHandler(SimpleHTTPRequestHandler):
    on_request: Callable[[str], None] | None = None  # set per server by serve()

    def end_headers(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # quiet, unless asked
        if self.on_request is not None:
            self.on_request(urllib.parse.unquote(self.path))


def serve(
    run_dir: Path,
    host: str = "127.0.0.1",
    port: int = 9015,
    on_request: Callable[[str], None] | None = None,
) -> ThreadingHTTPServer:
    """A static file server for ``run_dir`` with CORS open (call ``serve_forever`` on it);
    ``on_request`` is called with the path of every request answered."""
    attrs = {"on_request": None if on_request is None else staticmethod(on_request)}
    handler_class = type("Handler", (_CorsHandler,), attrs)
    handler = functools.partial(handler_class, directory=str(run_dir))
    if not 0 <= port < 65536:
        raise SyntkError(f"--port {port}: a port number is 1..65535 (0: any free one)")
    try:
        return ThreadingHTTPServer((host, port), handler)
    except OSError as exc:  # the port is taken, or not ours to bind
        raise SyntkError(f"cannot serve {run_dir} on {host}:{port}: {exc.strerror}") from None
