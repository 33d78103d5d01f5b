"""The artifact store of a pipeline run: every stage output, written atomically.

Layout of a run directory::

    <run>/manifest.json                  config, versions, timings, fingerprints (atomic rewrite)
    <run>/artifacts/<stage>/<port>.zarr   volumes (zarr, attrs voxel_size_nm / offset_nm)
    <run>/artifacts/<stage>/<port>.json   tables, annotations, regions, clusters, scores
    <run>/artifacts/<stage>/<port>.ref.json  a volume read in place from an input file (no copy)
    <run>/.scratch/                       stage scratch space, moved into place when complete

Everything lands by rename from a temporary name, so an interrupted run never leaves a file that
looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import zarr

from synapse_toolkit.blockwise import iter_blocks
from synapse_toolkit.data import JSON_TYPES, Volume
from synapse_toolkit.errors import DataError


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_replace_dir(src: Path, dst: Path) -> None:
    """Move directory ``src`` to ``dst``, replacing any old ``dst`` without a window where
    a half-written ``dst`` exists."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        trash = dst.with_name(f".{dst.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(dst, trash)
        os.replace(src, dst)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(src, dst)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


class ArtifactStore:
    """Reads and writes the artifacts of one run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.artifact_dir = run_dir / "artifacts"
        self.scratch_root = run_dir / ".scratch"
        self._open_files: list[h5py.File] = []

    # -- scratch --------------------------------------------------------------------------------
    def new_scratch(self, stage: str) -> Path:
        self.scratch_root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{stage}-", dir=self.scratch_root))

    def clear_scratch(self) -> None:
        shutil.rmtree(self.scratch_root, ignore_errors=True)

    # -- writing --------------------------------------------------------------------------------
    def save(self, stage: str, port: str, value: Any, scratch: Path) -> dict[str, Any]:
        """Store one output; returns its manifest record ({type, path})."""
        target_dir = self.artifact_dir / stage
        target_dir.mkdir(parents=True, exist_ok=True)
        if isinstance(value, Volume):
            return self._save_volume(target_dir, port, value, scratch)
        for type_name, cls in JSON_TYPES.items():
            if isinstance(value, cls):
                path = target_dir / f"{port}.json"
                doc = {"type": type_name, "data": value.to_dict()}
                atomic_write_text(path, json.dumps(doc))
                return {"type": type_name, "path": str(path.relative_to(self.run_dir))}
        raise DataError(
            f"stage {stage}: output {port!r} is a {type(value).__name__}, not a syntk data type"
        )

    def _save_volume(
        self, target_dir: Path, port: str, vol: Volume, scratch: Path
    ) -> dict[str, Any]:
        kind = "labels" if vol.is_labels else "volume"
        data = vol.data
        attrs = {"voxel_size_nm": list(vol.voxel_size_nm), "offset_nm": list(vol.offset_nm),
                 "name": vol.name}  # fmt: skip
        final = target_dir / f"{port}.zarr"
        if isinstance(data, zarr.Array) and _inside(
            Path(str(data.store).removeprefix("file://")), scratch
        ):
            data.attrs.update(attrs)
            atomic_replace_dir(Path(str(data.store).removeprefix("file://")), final)
            return {"type": kind, "path": str(final.relative_to(self.run_dir))}
        if isinstance(data, h5py.Dataset) and not _inside(Path(data.file.filename), self.run_dir):
            ref = {"file": str(Path(data.file.filename).resolve()), "key": data.name, **attrs}
            path = target_dir / f"{port}.ref.json"
            atomic_write_text(path, json.dumps(ref))
            return {"type": kind, "path": str(path.relative_to(self.run_dir))}
        tmp = scratch / f"{port}.tmp.zarr"
        shape = vol.shape
        chunks = (
            *shape[:-3],
            *(min(s, c) for s, c in zip(shape[-3:], (32, 256, 256), strict=True)),
        )
        arr = zarr.create_array(store=str(tmp), shape=shape, dtype=vol.dtype, chunks=chunks,
                                overwrite=True)  # fmt: skip
        block = (max(1, 64 // max(1, shape[-2] // 256 + 1)), shape[-2], shape[-1])
        for b in iter_blocks(vol.spatial_shape, block):
            key = (slice(None), *b.write) if len(shape) == 4 else b.write
            arr[key] = np.asarray(data[key])
        arr.attrs.update(attrs)
        atomic_replace_dir(tmp, final)
        return {"type": kind, "path": str(final.relative_to(self.run_dir))}

    # -- reading --------------------------------------------------------------------------------
    def load(self, record: dict[str, Any]) -> Any:
        """Open a stored artifact (volumes lazily)."""
        path = self.run_dir / record["path"]
        if not path.exists():
            raise DataError(f"{path}: artifact missing")
        if record["type"] in ("volume", "labels"):
            if path.name.endswith(".ref.json"):
                ref = json.loads(path.read_text())
                f = h5py.File(ref["file"], "r")
                self._open_files.append(f)
                return Volume(f[ref["key"]], ref["voxel_size_nm"], ref["offset_nm"], ref["name"])
            arr = zarr.open_array(str(path), mode="r")
            a = dict(arr.attrs)
            return Volume(arr, a["voxel_size_nm"], a["offset_nm"], a.get("name", ""))
        doc = json.loads(path.read_text())
        return JSON_TYPES[doc["type"]].from_dict(doc["data"])

    def exists(self, record: dict[str, Any]) -> bool:
        return (self.run_dir / record["path"]).exists()

    def close(self) -> None:
        for f in self._open_files:
            f.close()
        self._open_files.clear()
