"""Synful partners block by block, with bounded memory.

The ``synful`` stage predicts into a zarr array of the mask and the head's three channels (tiled,
written block by block: :func:`predict_synful`; done as a whole, marked with the model's and the
raw volume's fingerprint), then extracts partners as :mod:`synapse_toolkit.blocktasks` blocks
(:func:`synful_blockwise`):

- each block reads its write ROI grown by ``context`` voxels and finds the mask components there
  (:func:`synapse_toolkit.synapses.synful.block_sites`); it keeps the components whose first
  voxel (C order) lies in its write ROI, so each component belongs to exactly one block;
- a kept component that touches a face of the read ROI inside the volume may continue beyond it;
  the block records it instead of measuring it, and afterwards its region is grown until the
  whole component fits (:func:`synapse_toolkit.synapses.synful.complete_component`; rare when
  ``context`` exceeds the components' extent);
- the sites of all blocks, in the order of their first voxels, are finished on the small table:
  pre sites, segment ids looked up at points, grouping, de-duplication
  (:func:`synapse_toolkit.synapses.synful.finish_partners`).

The table equals :func:`synapse_toolkit.synapses.synful.extract_partners` on the whole volume for
any block shape and context (the whole volume is one block of it). Each block writes its sites
and a done marker holding the fingerprint of its inputs, so a killed run resumes block by block
with byte-identical output.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synapse_toolkit.blocktasks import (
    ArrayRef,
    BlockTask,
    DoneMarkers,
    Fingerprint,
    array_ref,
    atomic_write_bytes,
    atomic_write_npz,
    make_tasks,
    release_workers,
)
from synapse_toolkit.data import PartnerTable
from synapse_toolkit.errors import DataError
from synapse_toolkit.synapses.blockwise import Progress, _phase, _work_and_pool
from synapse_toolkit.synapses.synful import (
    DIRECTION,
    MASK,
    N_CHANNELS,
    VECTOR,
    Partial,
    Sites,
    SynfulSettings,
    block_sites,
    complete_component,
    finish_partners,
    tta_arguments,
)
from synapse_toolkit.synapses.targets import Grid

#: bump when a block's output for the same input changes (invalidates done markers)
FORMAT_VERSION = 1
#: chunks (z, y, x) of the stored prediction: small, so that reading a block with its context
#: decodes little beyond it
PREDICTION_CHUNKS = (8, 64, 64)


def head_channels(head: str) -> list[int]:
    """The model's output channels a head needs: the mask and its three field channels."""
    field = VECTOR if head == "vector" else DIRECTION
    return [MASK, *range(field.start, field.stop)]


def predict_synful(
    model: Any,
    raw: Any,
    work_dir: Path | str,
    head: str = "vector",
    *,
    overlap: Sequence[int] | None = None,
    block_shape: Sequence[int] = (32, 256, 256),
    progress: Any = None,
    intensity_scale: float | None = None,
    tta: bool = False,
) -> Any:
    """The (4, z, y, x) float32 zarr array ``<work_dir>/prediction.zarr`` of a synful
    :class:`~synapse_toolkit.inference.onnx_model.OnnxModel` on ``raw`` (z, y, x): the mask and
    the head's three channels, predicted tile by tile and written block by block; with ``tta``
    each tile is the average of its 8 mirrorings (vector components negated along the mirrored
    axes). A prediction whose marker records the same model, head, overlap, input scale, TTA
    and raw bytes is reused."""
    import zarr

    from synapse_toolkit.blockwise import iter_blocks
    from synapse_toolkit.fsio import sha256_file

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    shape = tuple(int(n) for n in raw.shape[-3:])
    channels = head_channels(head)
    ov = tuple(overlap) if overlap is not None else model.default_overlap()
    bs = tuple(min(int(b), n) for b, n in zip(block_shape, shape, strict=True))
    fp = Fingerprint(FORMAT_VERSION, "prediction", sha256_file(Path(model.path)), channels, ov,
                     shape)  # fmt: skip
    if intensity_scale is not None:  # (absent: the fingerprints of earlier runs stay valid)
        fp.add_config("intensity_scale", float(intensity_scale))
    if tta:
        fp.add_config("tta", True)
    for b in iter_blocks(shape, bs):
        fp.add_array(np.asarray(raw[b.write]))
    digest = fp.hexdigest()
    path, marker = work / "prediction.zarr", work / "prediction.json"
    try:
        if json.loads(marker.read_text())["fingerprint"] == digest:
            return zarr.open_array(store=str(path), mode="r")
    except (OSError, ValueError, KeyError):
        pass
    marker.unlink(missing_ok=True)
    chunks = tuple(min(c, b) for c, b in zip(PREDICTION_CHUNKS, bs, strict=True))
    out = zarr.create_array(
        store=str(path), shape=(len(channels), *shape), dtype=np.float32,
        chunks=(len(channels), *chunks), fill_value=0, overwrite=True,
        config={"write_empty_chunks": True},
    )  # fmt: skip
    model.predict(
        raw, out, ov, progress=progress, channels=channels, block_shape=bs, scratch_dir=work,
        intensity_scale=intensity_scale, **(tta_arguments() if tta else {}),
    )  # fmt: skip
    atomic_write_bytes(marker, json.dumps({"fingerprint": digest}).encode())
    return out


@dataclass(frozen=True)
class _SynfulJob:
    prediction: ArrayRef  # (4 or 7, z, y, x)
    field: tuple[int, int]  # the head's channels (start, stop)
    segmentation: ArrayRef
    shape: tuple[int, int, int]
    voxel_size_nm: tuple[float, float, float]
    offset_nm: tuple[float, float, float]
    settings: SynfulSettings
    work_dir: str

    @property
    def grid(self) -> Grid:
        return Grid(self.shape, self.voxel_size_nm, self.offset_nm)

    def markers(self) -> DoneMarkers:
        return DoneMarkers(Path(self.work_dir) / "done" / "synful")

    def path(self, task: BlockTask) -> Path:
        return Path(self.work_dir) / "synful" / f"{task.block_id}.npz"


def _inputs(job: _SynfulJob, task: BlockTask) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    pred = job.prediction.open()
    prob = np.asarray(pred[(MASK, *task.read)])
    field = np.asarray(pred[(slice(*job.field), *task.read)])
    seg = np.asarray(job.segmentation.open()[task.read])
    fp = Fingerprint(FORMAT_VERSION, "synful", job.shape, task.read_roi, task.write_roi,
                     repr(job.settings))  # fmt: skip
    return prob, field, seg, fp.add_array(prob).add_array(field).add_array(seg).hexdigest()


def _check(job: _SynfulJob, task: BlockTask) -> dict[str, Any] | None:
    m = job.markers()
    if m.read(task) is None or not job.path(task).exists():
        return None
    return m.is_done(task, _inputs(job, task)[3])


def _block(job: _SynfulJob, task: BlockTask) -> dict[str, Any]:
    prob, field, seg, fp = _inputs(job, task)
    origin = [a for a, _ in task.read_roi]
    sites, partial = block_sites(prob, field, seg, job.grid, job.settings, origin, task.write_roi)
    atomic_write_npz(
        job.path(task), first=sites.first, location=sites.location, score=sites.score,
        vector=sites.vector, partial_first=np.asarray([p[0] for p in partial], np.int64),
        partial_box=np.asarray([p[1] for p in partial], np.int64).reshape(-1, 3, 2),
    )  # fmt: skip
    info = {"n_sites": len(sites.first), "n_partial": len(partial)}
    job.markers().mark(task, fp, info)
    return info


def _load(job: _SynfulJob, task: BlockTask) -> tuple[Sites, list[Partial]]:
    with np.load(job.path(task)) as z:
        sites = Sites(z["first"], z["location"], z["score"], z["vector"])
        partial = [
            (int(f), tuple((int(a), int(b)) for a, b in box))
            for f, box in zip(z["partial_first"], z["partial_box"], strict=True)
        ]
    return sites, partial


class _Channels:
    """Channel ``c`` ((z, y, x) view) or channels ``c0:c1`` ((c, z, y, x) view) of a
    (C, z, y, x) array, read region by region."""

    def __init__(self, arr: Any, channels: int | slice) -> None:
        self.arr, self.channels = arr, channels

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        if isinstance(self.channels, slice):
            if key[0] != slice(None):
                raise IndexError("select all channels of a channel range")
            key = key[1:]
        return np.asarray(self.arr[(self.channels, *key)])


def complete_partials(job: _SynfulJob, partial: list[Partial]) -> Sites:
    """Sites of the components that continued beyond their blocks, each grown once (in order of
    the partial first voxels, so a component's own first voxel comes before its other pieces)."""
    pred = job.prediction.open()
    prob, field = _Channels(pred, MASK), _Channels(pred, slice(*job.field))
    seg = job.segmentation.open()
    done: list[tuple[tuple[slice, ...], np.ndarray]] = []
    found = []
    for p in sorted(set(partial)):
        at = np.unravel_index(p[0], job.shape)
        if any(
            all(s.start <= a < s.stop for s, a in zip(box, at, strict=True))
            and mask[tuple(a - s.start for s, a in zip(box, at, strict=True))]
            for box, mask in done
        ):
            continue  # a piece of a component grown already
        sites, box, mask = complete_component(prob, field, seg, job.grid, job.settings, p)
        done.append((box, mask))
        found.append(sites)
    return Sites.concat(found)


def synful_blockwise(
    prediction: Any,
    segmentation: Any,
    voxel_size_nm: Sequence[float],
    offset_nm: Sequence[float] = (0.0, 0.0, 0.0),
    *,
    settings: SynfulSettings | None = None,
    clefts: Any = None,
    block_shape: Sequence[int] | None = None,
    context: Sequence[int] = (4, 48, 48),
    work_dir: Path | str | None = None,
    pool: Any = None,
    n_workers: int = 1,
    executor: str = "threads",
    max_retries: int = 2,
    progress: Progress | None = None,
) -> tuple[PartnerTable, dict[str, Any]]:
    """Synful partners of ``prediction`` ((7, z, y, x) model output, or (4, z, y, x): the mask
    and the head's channels as :func:`predict_synful` stores them) and ``segmentation`` (z, y, x)
    block by block (module docstring); ``clefts`` (CREMI labels) set the direction head's
    distance. Arrays are numpy (threads only), zarr or HDF5. Returns the table and
    counts/timings."""
    s = settings or SynfulSettings()
    shp = tuple(int(v) for v in prediction.shape)
    if len(shp) != 4 or shp[0] not in (4, N_CHANNELS):
        raise DataError(f"synful prediction must be (7 or 4, z, y, x), got {shp}")
    shape = (shp[1], shp[2], shp[3])
    if tuple(segmentation.shape) != shape:
        raise DataError(f"synful: segmentation {tuple(segmentation.shape)} != prediction {shape}")
    head = VECTOR if s.head == "vector" else DIRECTION
    field = (1, 4) if shp[0] == 4 else (int(head.start), int(head.stop))
    bs = tuple(int(b) for b in (block_shape or shape))
    tasks = make_tasks(shape, bs, tuple(int(c) for c in context),
                       voxel_size_nm=voxel_size_nm, offset_nm=offset_nm)  # fmt: skip
    seconds: dict[str, float] = {}
    skipped: dict[str, int] = {}
    with _work_and_pool(work_dir, pool, n_workers, executor, "synful") as (work, pool):
        job = _SynfulJob(
            prediction=array_ref(prediction), field=field,
            segmentation=array_ref(segmentation), shape=shape,
            voxel_size_nm=tuple(float(v) for v in voxel_size_nm),  # type: ignore[arg-type]
            offset_nm=tuple(float(v) for v in offset_nm),  # type: ignore[arg-type]
            settings=s, work_dir=str(work),
        )  # fmt: skip
        _phase("synful sites", tasks, functools.partial(_block, job),
               functools.partial(_check, job), pool, max(1, n_workers), max_retries, progress,
               seconds, skipped)  # fmt: skip
        release_workers(pool)
        t0 = time.perf_counter()
        parts = [_load(job, t) for t in tasks]
        partial = [p for _, ps in parts for p in ps]
        grown = complete_partials(job, partial)
        seconds["synful partial components"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        sites = Sites.concat([*(p for p, _ in parts), grown])
        table = finish_partners(sites, job.segmentation.open(), job.grid, s, clefts)
        seconds["synful finish"] = round(time.perf_counter() - t0, 3)
    info = {"n_blocks": len(tasks), "n_sites": len(sites.first), "n_partial": len(set(partial)),
            "n_partial_sites": len(grown.first)}  # fmt: skip
    return table, {**info, "seconds": seconds, "skipped_blocks": skipped}
