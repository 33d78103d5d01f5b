"""`copy_slab`: one slab of a (T, z, y, x) zarr array into a (z, y, x) array, by copying encoded
chunk files when the layouts match, through zarr otherwise; the result is the same either way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from synapse_toolkit.io.zarr_io import copy_slab


def _stack(tmp_path: Path) -> tuple[zarr.Array, np.ndarray]:
    rng = np.random.default_rng(0)
    data = rng.integers(1, 50, (3, 7, 10, 13)).astype(np.uint64)
    data[2] = 0  # an all-fill slab: zarr stores none of its chunks
    src = zarr.create_array(store=str(tmp_path / "src.zarr"), shape=data.shape, dtype="uint64",
                            chunks=(1, 4, 4, 5))  # edge chunks on every axis  # fmt: skip
    src[...] = data
    return src, data


def _chunk_files(arr: zarr.Array) -> dict[str, bytes]:
    root = Path(arr.store.root) / arr.path / "c"
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_matching_layout_copies_the_encoded_chunks(tmp_path: Path) -> None:
    src, data = _stack(tmp_path)
    dst = zarr.create_array(store=str(tmp_path / "dst.zarr"), shape=data.shape[1:],
                            dtype="uint64", chunks=(4, 4, 5))  # fmt: skip
    dst[...] = 7  # stale content must not survive (including where the slab is all fill)
    copy_slab(src, 1, dst)
    np.testing.assert_array_equal(dst[...], data[1])
    src_files = {k.removeprefix("1/"): v for k, v in _chunk_files(src).items() if k[0] == "1"}
    assert _chunk_files(dst) == src_files  # the slab's chunk files, no more, no fewer
    copy_slab(src, 2, dst)
    np.testing.assert_array_equal(dst[...], 0)
    assert _chunk_files(dst) == {}


def test_other_layouts_go_through_zarr(tmp_path: Path) -> None:
    src, data = _stack(tmp_path)
    for name, chunks, compressors in [("other-chunks", (7, 5, 13), "auto"),
                                      ("other-codec", (4, 4, 5), None)]:  # fmt: skip
        dst = zarr.create_array(store=str(tmp_path / f"{name}.zarr"), shape=data.shape[1:],
                                dtype="uint64", chunks=chunks, compressors=compressors)  # fmt: skip
        copy_slab(src, 0, dst)
        np.testing.assert_array_equal(dst[...], data[0])
