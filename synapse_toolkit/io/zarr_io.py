"""Zarr volumes in the CREMI layout (``volumes/raw``, ``volumes/labels/...``).

Each array carries ``resolution`` and ``offset`` attributes (z, y, x nm) as CREMI datasets do.
Arrays open lazily, so stages read them block by block.
"""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from synapse_toolkit.blockwise import iter_blocks
from synapse_toolkit.data import Volume
from synapse_toolkit.errors import DataError
from synapse_toolkit.io.cremi import VOLUME_KEYS


def copy_slab(src: zarr.Array, index: int, dst: zarr.Array) -> None:
    """``dst[...] = src[index]``, copying the encoded chunks when the layouts allow it.

    When both arrays live in local stores and ``src`` is chunked ``(1, *dst.chunks)`` with the
    same dtype, fill value and codecs, a chunk of ``src[index]`` and the matching chunk of ``dst``
    encode to the same bytes (zarr v3 stores a chunk's elements in C order through the codec
    chain), so the files are copied instead of decoding and re-encoding the slab. Otherwise the
    slab is read and written through zarr.
    """
    from zarr.core.metadata import ArrayV3Metadata
    from zarr.storage import LocalStore

    src_store, dst_store, src_meta, dst_meta = src.store, dst.store, src.metadata, dst.metadata
    if not (
        isinstance(src_store, LocalStore)
        and isinstance(dst_store, LocalStore)
        and isinstance(src_meta, ArrayV3Metadata)
        and isinstance(dst_meta, ArrayV3Metadata)
        and src.shape[1:] == dst.shape
        and src.chunks == (1, *dst.chunks)
        and src.dtype == dst.dtype
        and src_meta.fill_value == dst_meta.fill_value
        and src_meta.codecs == dst_meta.codecs
    ):
        dst[...] = src[index]
        return
    src_root = Path(src_store.root) / src.path
    dst_root = Path(dst_store.root) / dst.path
    grid = [range(-(-s // c)) for s, c in zip(dst.shape, dst.chunks, strict=True)]
    for coords in itertools.product(*grid):
        src_file = src_root / src_meta.chunk_key_encoding.encode_chunk_key((index, *coords))
        dst_file = dst_root / dst_meta.chunk_key_encoding.encode_chunk_key(coords)
        if src_file.exists():  # a missing chunk is all fill value in both arrays
            dst_file.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src_file, dst_file)
        else:
            dst_file.unlink(missing_ok=True)


def open_zarr_volume(path: str | os.PathLike[str], key: str) -> Volume:
    """A lazily read volume from ``path``/``key``; errors name the store and key."""
    root = Path(path)
    if not root.exists():
        raise DataError(f"{root}: zarr store not found")
    try:
        arr = zarr.open_array(str(root), path=key, mode="r")
    except Exception as exc:  # zarr raises several types for a missing key
        raise DataError(f"{root}: no array {key!r} ({type(exc).__name__})") from None
    attrs: dict[str, Any] = dict(arr.attrs)  # JSON; Volume checks the placement values
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
    try:
        group = zarr.open_group(str(root), mode="r")
    except Exception as exc:  # a plain folder, a file, or an array where a group belongs
        raise DataError(f"{root}: not a zarr group ({type(exc).__name__})") from None
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
