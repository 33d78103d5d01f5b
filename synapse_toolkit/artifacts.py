"""The artifact store of a pipeline run: every stage output, written atomically.

Layout of a run directory::

    <run>/manifest.json                  config, versions, timings, fingerprints (atomic rewrite)
    <run>/artifacts/<stage>/<port>.zarr   volumes (zarr, attrs voxel_size_nm / offset_nm)
    <run>/artifacts/<stage>/<port>.json   tables, annotations, regions, clusters, scores
    <run>/artifacts/<stage>/<port>.ref.json  a volume read in place from an input file (no copy)
    <run>/.scratch/                       stage scratch space, moved into place when complete
    <run>/<file>                          files a writer stage wrote (declared as ``file`` outputs)

Everything lands by rename from a temporary name, so an interrupted run never leaves a file that
looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import zarr

from synapse_toolkit.artifact_types import JSON_TYPES, VOLUME_TYPES
from synapse_toolkit.blockwise import iter_blocks
from synapse_toolkit.data import Volume, WrittenFile
from synapse_toolkit.errors import DataError
from synapse_toolkit.fsio import atomic_write_text, dumps, sha256_file
from synapse_toolkit.io.ngff import write_ngff_view

__all__ = ["ArtifactStore", "atomic_replace_dir", "atomic_write_text"]


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
    def save(
        self, stage: str, port: str, value: Any, scratch: Path, type_name: str | None = None
    ) -> dict[str, Any]:
        """Store one output; returns its manifest record ({type, path, integrity stamp}).

        ``type_name`` is the port's artifact type (for volumes: labels, affinities, ...)."""
        target_dir = self.artifact_dir / stage
        target_dir.mkdir(parents=True, exist_ok=True)
        if isinstance(value, Volume):
            record = self._save_volume(target_dir, port, value, scratch)
            if type_name in VOLUME_TYPES:
                record["type"] = type_name
            write_ngff_view(self.run_dir / record["path"], record["type"])  # napari, neuroglancer
            return self._stamped(record)
        if isinstance(value, WrittenFile):
            path = Path(value.path)
            path = path if path.is_absolute() else self.run_dir / path
            if not path.exists() or not _inside(path, self.run_dir):
                raise DataError(f"stage {stage}: output {port!r} names {path}, which is not a "
                                "file in the run directory")  # fmt: skip
            rel = str(path.resolve().relative_to(self.run_dir.resolve()))
            return self._stamped({"type": "file", "path": rel})
        for type_name, cls in JSON_TYPES.items():
            if isinstance(value, cls):
                path = target_dir / f"{port}.json"
                doc = {"type": type_name, "data": value.to_dict()}
                atomic_write_text(path, dumps(doc))
                return self._stamped(
                    {"type": type_name, "path": str(path.relative_to(self.run_dir))}
                )
        raise DataError(
            f"stage {stage}: output {port!r} is a {type(value).__name__}, not a syntk data type"
        )

    def _save_volume(
        self, target_dir: Path, port: str, vol: Volume, scratch: Path
    ) -> dict[str, Any]:
        kind = "labels" if vol.is_labels else "volume"
        data = vol.data
        attrs: dict[str, Any] = {
            "voxel_size_nm": list(vol.voxel_size_nm),
            "offset_nm": list(vol.offset_nm),
            "name": vol.name,
        }
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

    # -- integrity ------------------------------------------------------------------------------
    def _stamped(self, record: dict[str, Any]) -> dict[str, Any]:
        """``record`` with a cheap integrity stamp: size, mtime and a digest."""
        return {**record, **self._stamp(self.run_dir / record["path"])}

    def _stamp(self, path: Path) -> dict[str, Any]:
        if path.is_dir():  # a zarr store: names and sizes of its files
            listing = sorted((str(f.relative_to(path)), f.stat().st_size) for f in _files(path))
            digest = sha256_text(json.dumps(listing))
            return {"size": sum(n for _, n in listing), "digest": digest}
        st = path.stat()
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "digest": sha256_file(path)}

    def problem(self, record: dict[str, Any]) -> str | None:
        """Why a recorded artifact can no longer be trusted (gone, changed, its source moved),
        or None if it is intact. Files are re-hashed only when their size or mtime changed."""
        path = self.run_dir / record["path"]
        if not path.exists():
            return f"{record['path']} is missing"
        if path.name.endswith(".ref.json"):
            try:
                src = Path(json.loads(path.read_text())["file"])
            except (OSError, ValueError, KeyError):
                return f"{record['path']} is unreadable"
            if not src.exists():
                return f"{src} (read in place by {record['path']}) is gone"
        if "digest" not in record:
            return None
        if path.is_file():
            st = path.stat()
            if st.st_size != record.get("size"):
                return f"{record['path']} changed size"
            if st.st_mtime_ns == record.get("mtime_ns"):
                return None
        if self._stamp(path)["digest"] != record["digest"]:
            return f"{record['path']} changed since it was written"
        return None

    # -- reading --------------------------------------------------------------------------------
    def load(self, record: dict[str, Any]) -> Any:
        """Open a stored artifact (volumes lazily)."""
        path = self.run_dir / record["path"]
        if not path.exists():
            raise DataError(f"{path}: artifact missing")
        if record["type"] == "file":
            return WrittenFile(str(path))
        if record["type"] in VOLUME_TYPES:
            if path.name.endswith(".ref.json"):
                ref = json.loads(path.read_text())
                if not Path(ref["file"]).exists():
                    raise DataError(f"{ref['file']}: input file is gone (read by {path})")
                f = h5py.File(ref["file"], "r")
                self._open_files.append(f)
                return Volume(f[ref["key"]], ref["voxel_size_nm"], ref["offset_nm"], ref["name"])
            arr = zarr.open_array(str(path), mode="r")
            a: dict[str, Any] = dict(arr.attrs)
            return Volume(arr, a["voxel_size_nm"], a["offset_nm"], a.get("name", ""))
        doc = json.loads(path.read_text())
        return JSON_TYPES[doc["type"]].from_dict(doc["data"])

    def exists(self, record: dict[str, Any]) -> bool:
        return self.problem(record) is None

    def close(self) -> None:
        for f in self._open_files:
            f.close()
        self._open_files.clear()


def _files(root: Path) -> Iterator[Path]:
    for dirpath, _, names in os.walk(root):
        for n in names:
            yield Path(dirpath) / n


def sha256_text(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()
