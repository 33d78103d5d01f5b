"""Read and write CREMI HDF5 files (format 0.2) as syntk data objects.

Layout (all optional): ``volumes/raw``, ``volumes/labels/neuron_ids``,
``volumes/labels/clefts`` (attributes ``resolution`` and, when non-zero, ``offset``; z, y, x nm),
and ``annotations/{ids,types,locations}`` with ``annotations/presynaptic_site/partners`` and
``annotations/comments/{target_ids,comments}``; ``annotations`` carries an ``offset`` attribute and
its locations are relative to it. Writing is atomic: a temporary file beside the target is renamed
over it only when complete.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from synapse_toolkit.data import Annotations, Volume
from synapse_toolkit.errors import DataError
from synapse_toolkit.fsio import file_mode
from synapse_toolkit.io.checks import roi_slices

RAW = "volumes/raw"
NEURON_IDS = "volumes/labels/neuron_ids"
CLEFTS = "volumes/labels/clefts"
VOLUME_KEYS = {"raw": RAW, "neuron_ids": NEURON_IDS, "clefts": CLEFTS}
#: Cleft volumes mark "no cleft" with this id (so id 0 is a real cleft).
#: Neuron ids mark unlabelled voxels with this id; cleft volumes mark an invalid region with
#: the next.


@dataclass
class CremiData:
    """The contents of a CREMI file; any part may be missing (None)."""

    raw: Volume | None = None
    neuron_ids: Volume | None = None
    clefts: Volume | None = None
    annotations: Annotations | None = None
    file_attrs: dict[str, Any] = field(default_factory=lambda: {"file_format": "0.2"})

    def volumes(self) -> dict[str, Volume]:
        return {k: v for k, v in (("raw", self.raw), ("neuron_ids", self.neuron_ids),
                                  ("clefts", self.clefts)) if v is not None}  # fmt: skip


def _read_volume(f: h5py.File, key: str, path: Path, lazy: bool) -> Volume | None:
    """The volume ``key`` of ``f``: its h5py dataset (``lazy``) or its array, which then keeps
    the file's attributes (``Volume.source_attrs``)."""
    if key not in f:
        return None
    ds = f[key]
    if not isinstance(ds, h5py.Dataset):
        raise DataError(f"{path}: {key} is not a dataset")
    if "resolution" not in ds.attrs:
        raise DataError(f"{path}: {key} has no 'resolution' attribute (z, y, x nm)")
    resolution = tuple(np.asarray(ds.attrs["resolution"], dtype=np.float64).tolist())
    offset = tuple(np.asarray(ds.attrs.get("offset", (0.0, 0.0, 0.0)), np.float64).tolist())
    data = ds if lazy else ds[...]
    attrs = {} if lazy else {k: _attr(v) for k, v in f.attrs.items()}
    try:
        return Volume(data, resolution, offset, name=key.rsplit("/", 1)[-1], source_attrs=attrs)
    except DataError as exc:
        raise DataError(f"{path}: {key}: {exc}") from None


def _decode(values: np.ndarray) -> tuple[str, ...]:
    return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in values)


def _read_annotations(f: h5py.File, path: Path) -> Annotations | None:
    if "annotations" not in f:
        return None
    g = f["annotations"]
    try:
        ids = g["ids"][...] if "ids" in g else np.zeros(0, np.uint64)
        types = _decode(g["types"][...]) if "types" in g else ()
        locations = g["locations"][...] if "locations" in g else np.zeros((0, 3))
        partners = (
            g["presynaptic_site/partners"][...]
            if "presynaptic_site/partners" in g
            else np.zeros((0, 2), np.uint64)
        )
        comments: dict[int, str] = {}
        if "comments/target_ids" in g:
            targets = g["comments/target_ids"][...]
            texts = _decode(g["comments/comments"][...])
            comments = {int(t): c for t, c in zip(targets, texts, strict=True)}
        offset = tuple(np.asarray(g.attrs.get("offset", (0.0, 0.0, 0.0)), np.float64).tolist())
        return Annotations(ids, types, locations, partners, offset, comments)
    except (KeyError, ValueError, DataError) as exc:
        raise DataError(f"{path}: annotations: {exc}") from None


def open_hdf5_file(
    path: Path, directory_hint: str = 'a zarr store needs the zarr loader, plugin = "zarr"'
) -> h5py.File:
    """``path`` opened read-only; one DataError naming it when it is missing, a directory (with
    ``directory_hint``) or not HDF5."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: a directory, not an HDF5 file ({directory_hint})")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file ({exc})") from None


def hdf5_dataset_names(f: h5py.File) -> list[str]:
    """Paths of every dataset in the open file ``f`` (groups walked)."""
    names: list[str] = []
    f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    return names


def choose_hdf5_dataset(f: h5py.File, path: Path, key: str | None) -> str:
    """The dataset of the open file ``f`` that ``FILE[:KEY]`` names: ``key``, or without one
    ``stack`` or the file's only dataset; a DataError naming ``path`` and listing the datasets
    otherwise."""
    names = hdf5_dataset_names(f)
    name = key or ("stack" if "stack" in names else names[0] if len(names) == 1 else "")
    if not name:
        raise DataError(f"{path}: name a dataset as {path}:KEY (has {names})")
    if not isinstance(f.get(name), h5py.Dataset):
        raise DataError(f"{path}: no dataset {name!r} (has {names})")
    return name


def read_cremi(path: str | os.PathLike[str]) -> CremiData:
    """Read a whole CREMI file into memory."""
    p = Path(path)
    with open_hdf5_file(p) as f:
        return CremiData(
            raw=_read_volume(f, RAW, p, lazy=False),
            neuron_ids=_read_volume(f, NEURON_IDS, p, lazy=False),
            clefts=_read_volume(f, CLEFTS, p, lazy=False),
            annotations=_read_annotations(f, p),
            file_attrs={k: _attr(v) for k, v in f.attrs.items()},
        )


@contextlib.contextmanager
def open_cremi(path: str | os.PathLike[str]) -> Iterator[CremiData]:
    """Open a CREMI file with volumes backed by h5py datasets (read block by block)."""
    p = Path(path)
    f = open_hdf5_file(p)
    try:
        yield open_cremi_lazy(f, p)
    finally:
        f.close()


def open_cremi_lazy(f: h5py.File, path: Path) -> CremiData:
    """CremiData whose volumes read from the open file ``f`` (the caller keeps it open)."""
    return CremiData(
        raw=_read_volume(f, RAW, path, lazy=True),
        neuron_ids=_read_volume(f, NEURON_IDS, path, lazy=True),
        clefts=_read_volume(f, CLEFTS, path, lazy=True),
        annotations=_read_annotations(f, path),
        file_attrs={k: _attr(v) for k, v in f.attrs.items()},
    )


def _attr(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _write_volume(
    f: h5py.File, key: str, vol: Volume, compression: str | None, block_z: int
) -> None:
    shape = vol.shape
    chunks = tuple(min(s, c) for s, c in zip(shape, (1, 1, 64, 64)[-len(shape) :], strict=True))
    ds = f.create_dataset(key, shape=shape, dtype=vol.dtype, compression=compression, chunks=chunks)
    nz = vol.spatial_shape[0]
    for z0 in range(0, nz, block_z):
        zs = slice(z0, min(nz, z0 + block_z))
        if len(shape) == 4:
            ds[:, zs] = vol.data[:, zs]
        else:
            ds[zs] = vol.data[zs]
    ds.attrs["resolution"] = np.asarray(vol.voxel_size_nm, dtype=np.float64)
    ds.attrs["comment"] = ""
    if any(o != 0 for o in vol.offset_nm):
        ds.attrs["offset"] = np.asarray(vol.offset_nm, dtype=np.float64)


def _write_annotations(f: h5py.File, ann: Annotations) -> None:
    g = f.create_group("annotations")
    if any(o != 0 for o in ann.offset_nm):
        g.attrs["offset"] = np.asarray(ann.offset_nm, dtype=np.float64)
    g.create_dataset("ids", data=ann.ids.astype(np.uint64))
    g.create_dataset("types", data=np.asarray(ann.types, dtype=object),
                     dtype=h5py.string_dtype(), compression="gzip")  # fmt: skip
    g.create_dataset("locations", data=ann.locations_nm.astype(np.float64))
    g.create_group("presynaptic_site").create_dataset(
        "partners", data=ann.partners.astype(np.uint64)
    )
    if ann.comments:
        c = g.create_group("comments")
        c.create_dataset("target_ids", data=np.asarray(list(ann.comments), dtype=np.uint64))
        c.create_dataset("comments", data=np.asarray(list(ann.comments.values()), dtype=object),
                         dtype=h5py.string_dtype())  # fmt: skip


def write_cremi(
    path: str | os.PathLike[str],
    data: CremiData,
    *,
    compression: str | None = "gzip",
    overwrite: bool = False,
    block_z: int = 8,
) -> Path:
    """Write ``data`` as a CREMI file atomically; refuse to replace an existing file unless asked.

    Volumes are copied ``block_z`` sections at a time, so h5py/zarr-backed inputs stream.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise DataError(f"{target}: already exists (refusing to overwrite)")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.fchmod(fd, file_mode())
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with h5py.File(tmp, "w") as f:
            for k, v in data.file_attrs.items():
                f.attrs[k] = v
            for name, key in VOLUME_KEYS.items():
                vol = getattr(data, name)
                if vol is not None:
                    _write_volume(f, key, vol, compression, block_z)
            if data.annotations is not None:
                _write_annotations(f, data.annotations)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def crop_cremi(data: CremiData, roi: Sequence[Sequence[int]], where: str = "") -> CremiData:
    """The region ``roi`` ((start, stop) voxels per z, y, x) of ``data``'s volumes, in memory:
    each volume read there with its offset moved to the region's corner, and the annotations
    whose sites lie inside the region (partner rows whose two sites both do). ``where`` (a file
    or config key) goes into the error when the region does not fit."""
    label = where or "crop"
    vols = data.volumes()
    if not vols:
        raise DataError(f"{label}: no volumes to crop")
    first = next(iter(vols.values()))
    shape = first.spatial_shape
    sl = roi_slices(roi, shape, label)
    res = np.asarray(first.voxel_size_nm)
    shift = np.asarray([r.start for r in sl]) * res  # nm from a volume's corner to the region's
    out: dict[str, Volume] = {}
    for name, v in vols.items():
        if v.spatial_shape != shape or v.voxel_size_nm != first.voxel_size_nm:
            raise DataError(f"{label}: {name} does not share the raw volume's grid")
        z, y, x = (float(c) for c in np.asarray(v.offset_nm) + shift)
        out[name] = Volume(v.read(sl), v.voxel_size_nm, (z, y, x), v.name, v.source_attrs)
    ann = data.annotations
    if ann is not None and len(ann):
        corner = np.asarray(first.offset_nm) + shift
        hi = corner + np.asarray([r.stop - r.start for r in sl]) * res
        world = ann.world_locations()
        inside = np.all((world >= corner) & (world < hi), axis=1)
        kept = set(ann.ids[inside].tolist())
        rows = [p for p in ann.partners.tolist() if p[0] in kept and p[1] in kept]
        types = tuple(t for t, k in zip(ann.types, inside, strict=True) if k)
        comments = {i: c for i, c in ann.comments.items() if i in kept}
        pairs = np.asarray(rows, np.uint64).reshape(-1, 2)
        ann = Annotations(ann.ids[inside], types, ann.locations_nm[inside], pairs, ann.offset_nm,
                          comments)  # fmt: skip
    return CremiData(out.get("raw"), out.get("neuron_ids"), out.get("clefts"), ann,
                     dict(data.file_attrs))  # fmt: skip
