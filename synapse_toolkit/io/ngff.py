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

On request (``levels`` > 0, ``syntk export ome-zarr --levels N``) a view holds a multiscale
pyramid: levels ``1..N``, each made from the one before by a factor 2 on every axis whose voxel
size stays within the coarsest axis' (so anisotropic EM is halved in y, x first), on all axes once
the voxels are near isotropic. Intensity is averaged, labels take the most frequent id of each
block (ties: the smaller id). Scales are in nm; a coarse voxel's centre is the centre of the fine
voxels it covers, so level ``k`` is translated by ``(factor - 1) / 2`` fine voxels.
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
    "downsample_block",
    "export_run",
    "ngff_attributes",
    "pyramid_factors",
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
    factors: Sequence[Sequence[int]] = ((1, 1, 1),),
) -> dict[str, Any]:
    """The group attributes of an NGFF 0.5 image: axes (c,) z, y, x in nanometres; level ``k``
    (path ``"k"``) has scale = voxel size x ``factors[k]`` (z, y, x, relative to level 0) and
    translation = offset + (factor - 1) / 2 voxels (both nm)."""
    if ndim not in (3, 4) or len(voxel_size_nm) != 3 or len(offset_nm) != 3:
        raise DataError(f"NGFF view needs a (C,) z, y, x volume, got {ndim} dimensions")
    axes: list[dict[str, str]] = [
        {"name": a, "type": "space", "unit": "nanometer"} for a in ("z", "y", "x")
    ]
    if ndim == 4:
        axes.insert(0, {"name": "c", "type": "channel"})
    datasets = []
    for k, f in enumerate(factors):
        vs = [float(v) for v in voxel_size_nm]
        scale = [v * int(n) for v, n in zip(vs, f, strict=True)]
        shift = [float(o) + (int(n) - 1) / 2 * v for o, v, n in zip(offset_nm, vs, f, strict=True)]
        if ndim == 4:
            scale, shift = [1.0, *scale], [0.0, *shift]
        datasets.append(
            {
                "path": str(k),
                "coordinateTransformations": [
                    {"type": "scale", "scale": scale},
                    {"type": "translation", "translation": shift},
                ],
            }
        )
    ome: dict[str, Any] = {
        "version": NGFF_VERSION,
        "multiscales": [{"name": name, "axes": axes, "datasets": datasets}],
    }  # fmt: skip
    if labels:
        ome["image-label"] = {"version": NGFF_VERSION}
    return {"ome": ome}


def write_ngff_view(array_dir: Path, artifact_type: str, levels: int = 0) -> Path | None:
    """Write (or replace) the NGFF view of the zarr array artifact ``array_dir`` (with ``levels``
    downsampled levels); returns its path, or None when ``array_dir`` is not a zarr array (a
    ``.ref.json``, a group)."""
    meta_path = array_dir / "zarr.json"
    if not array_dir.name.endswith(".zarr") or not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    attrs = meta.get("attributes") or {}
    if meta.get("node_type") != "array" or "voxel_size_nm" not in attrs:
        return None
    ndim = len(meta["shape"])
    labels = artifact_type == "labels"
    view = view_path(array_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{view.name}.", dir=array_dir.parent))
    try:
        _link_tree(array_dir, tmp / "0")
        meta["dimension_names"] = ["c", "z", "y", "x"][4 - ndim :]
        (tmp / "0" / "zarr.json").write_text(json.dumps(meta, indent=2))
        factors = _write_pyramid(tmp, attrs["voxel_size_nm"], levels, labels=labels)
        group = ngff_attributes(
            ndim, attrs["voxel_size_nm"], attrs.get("offset_nm", (0.0, 0.0, 0.0)),
            name=str(attrs.get("name", "")), labels=labels, factors=factors,
        )  # fmt: skip
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


def write_ome_zarr(vol: Any, path: Path, *, labels: bool, levels: int = 0) -> Path:
    """Copy ``vol`` (a :class:`~synapse_toolkit.data.Volume`, e.g. read from HDF5) into a new
    OME-Zarr image at ``path`` (plus ``levels`` downsampled levels), block by block; replaces an
    old ``path``."""
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
        factors = _write_pyramid(tmp, vol.voxel_size_nm, levels, labels=labels)
        meta = ngff_attributes(
            ndim, vol.voxel_size_nm, vol.offset_nm, name=vol.name, labels=labels, factors=factors
        )
        group.attrs.update(meta)
        atomic_replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def export_run(run_dir: Path, levels: int = 0) -> list[Path]:
    """OME-Zarr for every volume artifact of a run: the (linked) view of zarr artifacts, a copy
    of volumes read in place from an input file (``.ref.json``, e.g. CREMI raw), each with
    ``levels`` downsampled levels. Returns them."""
    from synapse_toolkit.artifact_types import VOLUME_TYPES
    from synapse_toolkit.artifacts import ArtifactStore
    from synapse_toolkit.fsio import read_run_manifest

    manifest = read_run_manifest(run_dir)
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
                    vol = store.load(record)
                    out.append(write_ome_zarr(vol, target, labels=labels, levels=levels))
                else:
                    view = write_ngff_view(path, record["type"], levels)
                    if view is not None:
                        out.append(view)
    finally:
        store.close()
    return out


def pyramid_factors(
    voxel_size_nm: Sequence[float], shape: Sequence[int], levels: int
) -> list[tuple[int, int, int]]:
    """Per level (0 first) the z, y, x factor relative to level 0: each level halves the axes
    whose doubled voxel size stays within the coarsest axis' (all axes when none does); an axis
    of one voxel stays. Stops early when no axis has more than one voxel left."""
    size = [float(v) for v in voxel_size_nm]
    extent = [int(n) for n in shape]
    out = [(1, 1, 1)]
    for _ in range(max(0, levels)):
        coarsest = max(size)
        step = [2 if 2 * v <= coarsest * (1 + 1e-9) else 1 for v in size]
        if step == [1, 1, 1]:
            step = [2, 2, 2]
        step = [s if n > 1 else 1 for s, n in zip(step, extent, strict=True)]
        if step == [1, 1, 1]:
            break
        size = [v * s for v, s in zip(size, step, strict=True)]
        extent = [-(-n // s) for n, s in zip(extent, step, strict=True)]
        prev = out[-1]
        out.append((prev[0] * step[0], prev[1] * step[1], prev[2] * step[2]))
    return out


def downsample_block(block: Any, step: Sequence[int], *, labels: bool) -> Any:
    """Downsample the spatial (last three) axes of ``block`` by ``step`` (z, y, x): the mean
    (intensity, rounded for integer types) or the most frequent value (labels; ties: the smaller
    value). Edges that do not divide are padded by repeating the last voxel."""
    import numpy as np

    a = np.asarray(block)
    lead = a.shape[:-3]
    sz = [int(s) for s in step]
    pad = [(0, 0)] * len(lead) + [(0, -n % s) for n, s in zip(a.shape[-3:], sz, strict=True)]
    if any(p[1] for p in pad):
        a = np.pad(a, pad, mode="edge")
    z, y, x = (n // s for n, s in zip(a.shape[-3:], sz, strict=True))
    v = a.reshape(*lead, z, sz[0], y, sz[1], x, sz[2])
    n = len(lead)
    v = v.transpose(*range(n), n, n + 2, n + 4, n + 1, n + 3, n + 5)
    v = v.reshape(*lead, z, y, x, sz[0] * sz[1] * sz[2])
    if not labels:
        m = v.mean(axis=-1, dtype=np.float64)
        if np.issubdtype(a.dtype, np.integer):
            m = np.rint(m)
        return m.astype(a.dtype)
    v = np.sort(v, axis=-1)
    counts = (v[..., :, None] == v[..., None, :]).sum(axis=-1)  # k <= 8 values per block
    pick = np.argmax(counts, axis=-1)  # first (smallest) of the most frequent
    return np.take_along_axis(v, pick[..., None], axis=-1)[..., 0]


def _write_pyramid(
    group_dir: Path, voxel_size_nm: Sequence[float], levels: int, *, labels: bool
) -> list[tuple[int, int, int]]:
    """Write levels ``1..levels`` as arrays ``"k"`` beside level ``"0"`` in ``group_dir``, each
    from the one before, slab by slab in z; returns the factors of all levels (level 0 first)."""
    import zarr

    if levels <= 0:
        return [(1, 1, 1)]
    src = zarr.open_array(str(group_dir / "0"), mode="r")
    factors = pyramid_factors(voxel_size_nm, src.shape[-3:], levels)
    names = ["c", "z", "y", "x"][4 - src.ndim :]
    for k in range(1, len(factors)):
        step = [f // p for f, p in zip(factors[k], factors[k - 1], strict=True)]
        lead = tuple(src.shape[:-3])
        shape = (*lead, *(-(-n // s) for n, s in zip(src.shape[-3:], step, strict=True)))
        chunks = (*lead, *(min(n, c) for n, c in zip(shape[-3:], (32, 256, 256), strict=True)))
        dst = zarr.create_array(str(group_dir / str(k)), shape=shape, dtype=src.dtype,
                                chunks=chunks, dimension_names=names,
                                fill_value=0)  # fmt: skip
        slab = chunks[-3]
        for z0 in range(0, shape[-3], slab):
            z1 = min(shape[-3], z0 + slab)
            part = src[..., z0 * step[0] : z1 * step[0], :, :]
            dst[..., z0:z1, :, :] = downsample_block(part, step, labels=labels)
        src = dst
    return factors
