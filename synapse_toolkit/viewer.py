"""The desktop viewer: a run directory or a file as napari layers (``syntk view``).

:func:`layer_specs` builds the layers as plain data (no napari, no display) so it is tested
anywhere; :func:`open_viewer` hands them to napari (the optional ``viewer`` extra). Every layer is
placed in world nanometres: volumes carry ``scale`` = voxel size and ``translate`` = offset
(z, y, x), points and vectors are given in nm.

Layers of a run: the raw data; segmentation, truth segmentation, clefts and truth clefts as
labels; prediction maps (hidden); pre- and post-synaptic sites as points with properties
(``state`` tp / fp / fn when partners were scored, ``cluster`` when a clusterer ran); partner
vectors pre -> post coloured by state.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from synapse_toolkit.cremi_ids import CLEFT_INVALID_ID
from synapse_toolkit.data import Annotations, ClusterAssignments, PartnerTable, Volume
from synapse_toolkit.errors import DataError, SyntkError

__all__ = ["VIEWER_EXTRA_HINT", "LayerSpec", "layer_specs", "open_viewer"]

VIEWER_EXTRA_HINT = (
    "syntk view needs the viewer extra: pip install 'synapse-toolkit[viewer]' (napari and a Qt "
    "binding)"
)
QT_BINDINGS = ("PySide6", "PyQt6", "PyQt5", "PySide2")
STATE_COLOURS = {"tp": "#2ca02c", "fp": "#ffb000", "fn": "#e8171f"}


@dataclass
class LayerSpec:
    """One napari layer: ``kind`` is image, labels, points or vectors; ``kwargs`` go to
    ``viewer.add_<kind>``."""

    kind: str
    name: str
    data: Any
    kwargs: dict[str, Any] = field(default_factory=dict)


class _Unreserved:
    """A lazy label array with CREMI's reserved ids (no label, invalid) read as 0."""

    def __init__(self, data: Any) -> None:
        self._data = data
        self.shape = tuple(data.shape)
        self.dtype = np.dtype(data.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        a = np.asarray(self._data[key])
        return np.where(a >= np.uint64(CLEFT_INVALID_ID), np.uint64(0), a)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = self[...]
        return a if dtype is None else a.astype(dtype)


def _place(vol: Volume) -> dict[str, Any]:
    return {"scale": tuple(vol.voxel_size_nm), "translate": tuple(vol.offset_nm)}


def volume_layer(vol: Volume, name: str, kind: str, **kwargs: Any) -> LayerSpec:
    """An image or labels layer of ``vol`` in nm (the first channel axis becomes napari's
    ``channel_axis`` for images; labels must be 3D)."""
    data: Any = vol.data
    if kind == "labels":
        if len(vol.shape) != 3:
            raise DataError(f"{name}: labels must be (z, y, x), got shape {vol.shape}")
        if np.issubdtype(vol.dtype, np.unsignedinteger) and vol.dtype.itemsize == 8:
            data = _Unreserved(data)
        return LayerSpec("labels", name, data, {**_place(vol), **kwargs})
    if len(vol.shape) == 4:
        return LayerSpec("image", name, data, {**_place(vol), "channel_axis": 0, **kwargs})
    return LayerSpec("image", name, data, {**_place(vol), **kwargs})


def partner_layers(
    pre: np.ndarray,
    post: np.ndarray,
    state: list[str],
    synapse_ids: np.ndarray | None = None,
    clusters: ClusterAssignments | None = None,
    voxel_size_nm: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> list[LayerSpec]:
    """Sites as points (properties: role, state, synapse, cluster) and pre -> post vectors.

    ``pre``/``post`` are world nm; the layers hold them in units of ``voxel_size_nm`` with that
    scale, so napari's z slider steps by sections as it does for the volumes."""
    n = len(state)
    if n == 0:
        return []
    vs = np.asarray(voxel_size_nm, np.float64)
    pre, post = np.asarray(pre, np.float64) / vs, np.asarray(post, np.float64) / vs
    place = {"scale": tuple(float(v) for v in vs)}
    sid = np.zeros(n, np.int64) if synapse_ids is None else np.asarray(synapse_ids, np.int64)
    cluster = np.full(n, -1, np.int64)
    if clusters is not None and synapse_ids is not None:
        lookup = dict(zip(clusters.synapse_ids.tolist(), clusters.labels.tolist(), strict=True))
        cluster = np.array([lookup.get(int(s), -1) for s in sid], np.int64)
    colours = [STATE_COLOURS.get(s, "#ffffff") for s in state]
    props = {
        "role": np.array(["pre"] * n + ["post"] * n),
        "state": np.array(state * 2),
        "synapse": np.concatenate([sid, sid]),
        "cluster": np.concatenate([cluster, cluster]),
    }
    points = LayerSpec("points", "synaptic sites", np.concatenate([pre, post]), {
        "properties": props, "face_color": colours * 2, "size": 40.0 / vs[1],
        "symbol": ["disc"] * n + ["triangle_up"] * n, "out_of_slice_display": True, **place,
    })  # fmt: skip
    vectors = LayerSpec("vectors", "partners (pre -> post)", np.stack([pre, post - pre], axis=1),
                        {"edge_color": colours, "edge_width": 8.0 / vs[1],
                         "properties": {"state": np.array(state)}, **place})  # fmt: skip
    return [points, vectors]


def _run_layers(run_dir: Path) -> list[LayerSpec]:
    from synapse_toolkit.report import Run, partner_pairs

    run = Run.open(run_dir)
    specs: list[LayerSpec] = []
    raw_art = run.pick(("intensity",), loader=True, words=("raw",)) or run.pick(("intensity",))
    raw = run.load(raw_art)
    if isinstance(raw, Volume):
        specs.append(volume_layer(raw, "raw", "image"))
    for name, art in (
        ("truth segmentation", run.pick(("labels",), loader=True, words=("neuron",))),
        ("segmentation", run.pick(("labels",), loader=False, words=("segmentation", "seg"))),
        ("truth clefts", run.pick(("labels",), loader=True, words=("cleft",))),
        ("clefts", run.pick(("labels",), loader=False, words=("cleft",))),
    ):
        vol = run.load(art)
        if isinstance(vol, Volume) and len(vol.shape) == 3:
            # clefts are thin and drawn over the segmentation: at 0.5 napari 0.9.2 showed none
            opacity = 0.9 if "cleft" in name else 0.5
            specs.append(volume_layer(vol, name, "labels", visible="truth" not in name,
                                      opacity=opacity))  # fmt: skip
    for art in run.artifacts:
        if art.type == "map":
            vol = run.load(art)
            if isinstance(vol, Volume):
                specs.append(volume_layer(vol, art.key, "image", visible=False,
                                          blending="additive", colormap="magma"))  # fmt: skip
    pairs, _ = partner_pairs(run)
    clusters = next((c for a in run.artifacts if a.type == "clusters"
                     if isinstance(c := run.load(a), ClusterAssignments)), None)  # fmt: skip
    if pairs is not None:
        sids = None
        table = run.load(run.pick(("partners",), loader=False))
        if isinstance(table, PartnerTable) and len(table) == pairs.state.count(
            "tp"
        ) + pairs.state.count("fp"):
            sids = np.concatenate([table.synapse_id.astype(np.int64),
                                   np.full(pairs.state.count("fn"), -1, np.int64)])  # fmt: skip
        vs = raw.voxel_size_nm if isinstance(raw, Volume) else (1.0, 1.0, 1.0)
        specs += partner_layers(pairs.pre, pairs.post, pairs.state, sids, clusters, vs)
    if not specs:
        raise DataError(f"{run_dir}: nothing to show (no volume or partner artifacts)")
    return specs


def _file_layers(path: Path) -> list[LayerSpec]:
    if path.suffix.lower() in (".hdf", ".h5", ".hdf5", ".cremi"):
        from synapse_toolkit.io.cremi import open_cremi_lazy, open_hdf5_file

        data = open_cremi_lazy(open_hdf5_file(path), path)  # the viewer keeps the file open
        specs = []
        if data.raw is not None:
            specs.append(volume_layer(data.raw, "raw", "image"))
        for name, vol in (("neuron_ids", data.neuron_ids), ("clefts", data.clefts)):
            if vol is not None:
                specs.append(volume_layer(vol, name, "labels", opacity=0.5))
        ann = data.annotations
        if isinstance(ann, Annotations) and len(ann.partners):
            from synapse_toolkit.metrics.cremi_partners import pair_locations

            pre, post = pair_locations(ann, np.zeros(3))
            vs = data.raw.voxel_size_nm if data.raw is not None else (1.0, 1.0, 1.0)
            specs += partner_layers(pre, post, ["tp"] * len(pre), voxel_size_nm=vs)
        if not specs:
            raise DataError(f"{path}: no CREMI volumes or annotations found")
        return specs
    if path.is_dir() and path.name.endswith(".zarr"):
        import zarr

        try:
            node = zarr.open(str(path), mode="r")
        except Exception as exc:  # an empty or plain folder named .zarr
            raise DataError(f"{path}: not a zarr store ({type(exc).__name__})") from None
        arr = node["0"] if isinstance(node, zarr.Group) and "0" in node else node
        if not isinstance(arr, zarr.Array):
            raise DataError(f"{path}: not a zarr array or an OME-Zarr image")
        attrs: dict[str, Any] = dict(arr.attrs)
        if "voxel_size_nm" not in attrs:
            raise DataError(f"{path}: no voxel_size_nm attribute (not a syntk artifact)")
        vol = Volume(arr, attrs["voxel_size_nm"], attrs.get("offset_nm", (0, 0, 0)), path.stem)
        kind = "labels" if vol.is_labels and len(vol.shape) == 3 else "image"
        return [volume_layer(vol, path.name.split(".")[0], kind)]
    raise DataError(f"{path}: not a run directory, CREMI file (.hdf) or zarr volume")


def layer_specs(path: str | os.PathLike[str]) -> list[LayerSpec]:
    """The layers showing ``path``: a run directory (holds manifest.json), a CREMI HDF5 file or
    a zarr volume artifact (plain or its ``.ome.zarr`` view)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: not found")
    if p.is_dir() and (p / "manifest.json").is_file():
        return _run_layers(p)
    return _file_layers(p)


def add_layers(viewer: Any, specs: list[LayerSpec]) -> list[Any]:
    """Add ``specs`` to a napari viewer; returns the layers."""
    layers = []
    for s in specs:
        added = getattr(viewer, f"add_{s.kind}")(s.data, name=s.name, **s.kwargs)
        layers += added if isinstance(added, list) else [added]
    return layers


def no_display(env: Mapping[str, str], platform: str) -> None:
    """One error line instead of Qt aborting the process when Linux has no display to open a
    window on (no X11 or Wayland display, no Qt platform chosen)."""
    if not platform.startswith("linux"):
        return
    if any(env.get(k) for k in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")):
        return
    raise SyntkError(
        "syntk view: no display to open a window on (DISPLAY is not set); run it on a desktop, "
        "under `xvfb-run`, or use `syntk export neuroglancer RUN_DIR --serve` in a browser"
    )


def open_viewer(path: str | os.PathLike[str], *, block: bool = True) -> Any:
    """Open napari on ``path``; with ``block`` wait until the window closes. Returns the
    viewer."""
    import importlib.util

    try:
        import napari
    except ImportError:
        raise SyntkError(VIEWER_EXTRA_HINT) from None
    if not any(importlib.util.find_spec(m) for m in QT_BINDINGS):  # napari imports without Qt
        raise SyntkError(VIEWER_EXTRA_HINT)
    import inspect

    specs = layer_specs(path)
    no_display(os.environ, sys.platform)
    # napari >= 0.6: the scale bar reads nm from the layers. Given when a layer is made: set
    # afterwards, points and vectors were sliced at z x 1e-9 (napari 0.9.2) and never drawn.
    if "units" in inspect.signature(napari.layers.Points.__init__).parameters:
        for s in specs:
            s.kwargs.setdefault("units", ("nm",) * 3)
    viewer = napari.Viewer(title=f"syntk: {Path(path).name}")
    add_layers(viewer, specs)
    if viewer.dims.ndim == 3:
        viewer.dims.axis_labels = ("z", "y", "x")  # the slider is named z, not "-3"
    canvas = getattr(viewer, "canvas", None)  # napari >= 0.9 moved the scale bar
    bar = canvas.overlays.scale_bar if canvas is not None else viewer.scale_bar
    bar.visible = True
    if block:
        napari.run()
    return viewer
