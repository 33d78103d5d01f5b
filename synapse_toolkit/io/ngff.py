"""OME-Zarr (NGFF 0.5) views of volume artifacts, so napari, neuroglancer and ``ome_zarr`` open
them as images and labels with their scale and translation in nanometres.

A syntk volume artifact is a zarr v3 *array* (``<port>.zarr``, attributes ``voxel_size_nm`` and
``offset_nm``, z, y, x); every syntk reader opens it as such. NGFF needs a *group* holding the
array, so beside each artifact :func:`write_ngff_view` writes ``<port>.ome.zarr``: a group whose
``ome`` attributes describe one multiscale level ``0``, and ``0`` the same array with its chunk
files hard-linked (no second copy of the data; copied when the file system refuses links).
Label volumes carry ``image-label`` metadata. syntk's own attributes stay on the array.

Volumes read in place from an input file (``.ref.json``) have no zarr store and get no view;
:func:`export_run` (``syntk export ome-zarr RUN_DIR``) copies them into OME-Zarr on request.
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

__all__ = [
    "NGFF_VERSION",
    "export_run",
    "ngff_attributes",
    "view_path",
    "write_ngff_view",
    "write_ome_zarr",
]

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


def write_ome_zarr(vol: Any, path: Path, *, labels: bool) -> Path:
    """Copy ``vol`` (a :class:`~synapse_toolkit.data.Volume`, e.g. read from HDF5) into a new
    one-level OME-Zarr image at ``path``, block by block; replaces an old ``path``."""
    import numpy as np
    import zarr

    from synapse_toolkit.artifacts import atomic_replace_dir
    from synapse_toolkit.blockwise import iter_blocks

    shape = tuple(vol.shape)
    ndim = len(shape)
    chunks = (*shape[:-3], *(min(s, c) for s, c in zip(shape[-3:], (32, 256, 256), strict=True)))
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        arr = group.create_array("0", shape=shape, dtype=vol.dtype, chunks=chunks,
                                 dimension_names=["c", "z", "y", "x"][4 - ndim :])  # fmt: skip
        for b in iter_blocks(vol.spatial_shape, (chunks[-3], shape[-2], shape[-1])):
            key = (slice(None), *b.write) if ndim == 4 else b.write
            arr[key] = np.asarray(vol.data[key])
        arr.attrs.update({"voxel_size_nm": list(vol.voxel_size_nm),
                          "offset_nm": list(vol.offset_nm), "name": vol.name})  # fmt: skip
        group.attrs.update(ngff_attributes(ndim, vol.voxel_size_nm, vol.offset_nm,
                                           name=vol.name, labels=labels))  # fmt: skip
        atomic_replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def export_run(run_dir: Path) -> list[Path]:
    """OME-Zarr for every volume artifact of a run: the (linked) view of zarr artifacts, a copy
    of volumes read in place from an input file (``.ref.json``, e.g. CREMI raw). Returns them."""
    from synapse_toolkit.artifact_types import VOLUME_TYPES
    from synapse_toolkit.artifacts import ArtifactStore

    manifest_path = run_dir / "manifest.json"
    if not manifest_path.is_file():
        raise DataError(f"{run_dir}: no manifest.json (not a syntk run directory)")
    manifest = json.loads(manifest_path.read_text())
    store = ArtifactStore(run_dir)
    out: list[Path] = []
    try:
        for rec in (manifest.get("stages") or {}).values():
            for record in (rec.get("outputs") or {}).values():
                if record.get("type") not in VOLUME_TYPES:
                    continue
                path = run_dir / record["path"]
                labels = record["type"] == "labels"
                if path.name.endswith(".ref.json"):
                    target = path.with_name(path.name.removesuffix(".ref.json") + VIEW_SUFFIX)
                    out.append(write_ome_zarr(store.load(record), target, labels=labels))
                else:
                    view = write_ngff_view(path, record["type"])
                    if view is not None:
                        out.append(view)
    finally:
        store.close()
    return out
