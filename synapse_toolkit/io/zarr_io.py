"""Zarr volumes in the CREMI layout (``volumes/raw``, ``volumes/labels/...``).

Each array carries ``resolution`` and ``offset`` attributes (z, y, x nm) as CREMI datasets do.
Arrays open lazily, so stages read them block by block.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import zarr

from synapse_toolkit.blockwise import iter_blocks
from synapse_toolkit.data import Volume
from synapse_toolkit.errors import DataError
from synapse_toolkit.io.cremi import VOLUME_KEYS


def open_zarr_volume(path: str | os.PathLike[str], key: str) -> Volume:
    """A lazily read volume from ``path``/``key``; errors name the store and key."""
    root = Path(path)
    if not root.exists():
        raise DataError(f"{root}: zarr store not found")
    try:
        arr = zarr.open_array(str(root), path=key, mode="r")
    except Exception as exc:  # zarr raises several types for a missing key
        raise DataError(f"{root}: no array {key!r} ({type(exc).__name__})") from None
    attrs = dict(arr.attrs)
    if "resolution" not in attrs:
        raise DataError(f"{root}: {key} has no 'resolution' attribute (z, y, x nm)")
    try:
        return Volume(arr, attrs["resolution"], attrs.get("offset", (0.0, 0.0, 0.0)),
                      name=key.rsplit("/", 1)[-1])  # fmt: skip
    except DataError as exc:
        raise DataError(f"{root}: {key}: {exc}") from None


def read_zarr_volumes(path: str | os.PathLike[str]) -> dict[str, Volume]:
    """The CREMI-layout volumes present in a zarr store (lazy)."""
    root = Path(path)
    if not root.exists():
        raise DataError(f"{root}: zarr store not found")
    group = zarr.open_group(str(root), mode="r")
    out = {}
    for name, key in VOLUME_KEYS.items():
        try:
            group[key]
        except KeyError:
            continue
        out[name] = open_zarr_volume(root, key)
    return out


def write_zarr_volume(
    path: str | os.PathLike[str],
    key: str,
    vol: Volume,
    *,
    chunks: tuple[int, int, int] = (16, 256, 256),
    overwrite: bool = False,
) -> Volume:
    """Write ``vol`` into ``path``/``key`` block by block; returns the stored (lazy) volume.

    The array is written under a temporary key's directory and renamed into place when complete.
    """
    root = Path(path)
    final = root / key
    if final.exists() and not overwrite:
        raise DataError(f"{root}: {key} already exists (refusing to overwrite)")
    zarr.open_group(str(root), mode="a")
    tmp_key = f"{key}.partial"
    shutil.rmtree(root / tmp_key, ignore_errors=True)
    spatial = tuple(min(s, c) for s, c in zip(vol.spatial_shape, chunks, strict=True))
    full_chunks = (*vol.shape[:-3], *spatial)
    arr = zarr.create_array(store=str(root), name=tmp_key, shape=vol.shape, dtype=vol.dtype,
                            chunks=full_chunks, overwrite=True)  # fmt: skip
    for b in iter_blocks(vol.spatial_shape, spatial):
        sel = (slice(None), *b.write) if len(vol.shape) == 4 else b.write
        arr[sel] = np.asarray(vol.data[sel])
    arr.attrs.update({"resolution": list(vol.voxel_size_nm), "offset": list(vol.offset_nm)})
    if final.exists():
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(root / tmp_key, final)
    return open_zarr_volume(root, key)
