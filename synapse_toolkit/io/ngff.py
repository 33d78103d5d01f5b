"""OME-Zarr (NGFF 0.5) views of volume artifacts, so napari, neuroglancer and ``ome_zarr`` open
them as images and labels with their scale and translation in nanometres.

A syntk volume artifact is a zarr v3 *array* (``<port>.zarr``, attributes ``voxel_size_nm`` and
``offset_nm``, z, y, x); every syntk reader opens it as such. NGFF needs a *group* holding the
array, so beside each artifact :func:`write_ngff_view` writes ``<port>.ome.zarr``: a group whose
``ome`` attributes describe one multiscale level ``0``, and ``0`` the same array with its chunk
files hard-linked (no second copy of the data; copied when the file system refuses links).
Label volumes carry ``image-label`` metadata. syntk's own attributes stay on the array.

Volumes read in place from an input file (``.ref.json``) have no zarr store and get no view.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from synapse_toolkit.errors import DataError

__all__ = ["NGFF_VERSION", "ngff_attributes", "view_path", "write_ngff_view"]

NGFF_VERSION = "0.5"
VIEW_SUFFIX = ".ome.zarr"


def view_path(array_dir: Path) -> Path:
    """``<port>.ome.zarr`` beside the artifact ``<port>.zarr``."""
    return array_dir.with_name(array_dir.name.removesuffix(".zarr") + VIEW_SUFFIX)


def ngff_attributes(
    ndim: int,
    voxel_size_nm: Sequence[float],
    offset_nm: Sequence[float],
    *,
    name: str = "",
    labels: bool = False,
) -> dict[str, Any]:
    """The group attributes of a one-level NGFF 0.5 image: axes (c,) z, y, x in nanometres, scale
    = voxel size, translation = offset (both nm)."""
    if ndim not in (3, 4) or len(voxel_size_nm) != 3 or len(offset_nm) != 3:
        raise DataError(f"NGFF view needs a (C,) z, y, x volume, got {ndim} dimensions")
    axes: list[dict[str, str]] = [
        {"name": a, "type": "space", "unit": "nanometer"} for a in ("z", "y", "x")
    ]
    scale, shift = [float(v) for v in voxel_size_nm], [float(v) for v in offset_nm]
    if ndim == 4:
        axes.insert(0, {"name": "c", "type": "channel"})
        scale, shift = [1.0, *scale], [0.0, *shift]
    ome: dict[str, Any] = {
        "version": NGFF_VERSION,
        "multiscales": [{
            "name": name,
            "axes": axes,
            "datasets": [{"path": "0", "coordinateTransformations": [
                {"type": "scale", "scale": scale},
                {"type": "translation", "translation": shift},
            ]}],
        }],
    }  # fmt: skip
    if labels:
        ome["image-label"] = {"version": NGFF_VERSION}
    return {"ome": ome}


def write_ngff_view(array_dir: Path, artifact_type: str) -> Path | None:
    """Write (or replace) the NGFF view of the zarr array artifact ``array_dir``; returns its
    path, or None when ``array_dir`` is not a zarr array (a ``.ref.json``, a group)."""
    meta_path = array_dir / "zarr.json"
    if not array_dir.name.endswith(".zarr") or not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    attrs = meta.get("attributes") or {}
    if meta.get("node_type") != "array" or "voxel_size_nm" not in attrs:
        return None
    ndim = len(meta["shape"])
    group = ngff_attributes(
        ndim, attrs["voxel_size_nm"], attrs.get("offset_nm", (0.0, 0.0, 0.0)),
        name=str(attrs.get("name", "")), labels=artifact_type == "labels",
    )  # fmt: skip
    view = view_path(array_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{view.name}.", dir=array_dir.parent))
    try:
        _link_tree(array_dir, tmp / "0")
        meta["dimension_names"] = ["c", "z", "y", "x"][4 - ndim :]
        (tmp / "0" / "zarr.json").write_text(json.dumps(meta, indent=2))
        doc = {"zarr_format": 3, "node_type": "group", "attributes": group}
        (tmp / "zarr.json").write_text(json.dumps(doc, indent=2))
        from synapse_toolkit.artifacts import atomic_replace_dir

        atomic_replace_dir(tmp, view)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return view


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link every file of ``src`` under ``dst`` (copy where links are refused)."""
    for dirpath, _, names in os.walk(src):
        target = dst / Path(dirpath).relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        for n in names:
            s, d = Path(dirpath) / n, target / n
            if n == "zarr.json" and Path(dirpath) == src:
                continue  # rewritten with dimension names
            try:
                os.link(s, d)
            except OSError:
                shutil.copy2(s, d)
