"""``blockwise-waterz``: the ``waterz`` agglomerator with bounded memory, block by block.

Same ports and threshold options as ``waterz``; the work runs in
:mod:`synapse_toolkit.inference.agglomeration_blockwise` (per-block fragments and edges, one global
merge of the fragment graph, blockwise relabel). Scoring against truth is blockwise too (the
project's CREMI scorer streaming blocks, no border mask, ``ignore_label`` left out), so no stage
step holds a whole volume.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from synapse_toolkit import __version__
from synapse_toolkit.blockwise import count_blocks
from synapse_toolkit.cremi_ids import NEURON_IGNORE
from synapse_toolkit.data import Volume
from synapse_toolkit.errors import DataError
from synapse_toolkit.stages import Agglomerator, Port
from syntk_neurons.stages import (
    WaterzAgglomerator,
    agglomeration_outputs,
    fragment_setting,
    model_agglomeration,
    zarr_array,
)


class _Slab:
    """A 3D read-only view ``arr[index]`` of a 4D array, read region by region."""

    def __init__(self, arr: Any, index: int) -> None:
        self.arr, self.index = arr, index
        self.shape = tuple(arr.shape[1:])
        self.dtype = np.dtype(arr.dtype)
        self.ndim = 3

    def __getitem__(self, roi: Any) -> np.ndarray:
        return np.asarray(self.arr[(self.index, *roi)])


class _Ignoring:
    """Truth read region by region, ``ignore_label`` turned into CREMI's ignore label."""

    def __init__(self, arr: Any, ignore_label: int | None) -> None:
        self.arr, self.ignore = arr, ignore_label
        self.shape = tuple(arr.shape)
        self.dtype = np.dtype(np.uint64)
        self.ndim = 3

    def __getitem__(self, roi: Any) -> np.ndarray:
        raw = np.asarray(self.arr[roi])
        t = raw.astype(np.uint64)
        if self.ignore is not None:
            t[raw == self.ignore] = NEURON_IGNORE
        return t


class BlockwiseWaterzAgglomerator(Agglomerator["BlockwiseWaterzAgglomerator.Options"]):
    """waterz agglomeration block by block: per-block watershed fragments with global ids, region
    edges with mergeable statistics (also across block faces), one global hierarchical merge of
    the fragment graph per threshold (waterz's scoring and queue semantics), blockwise relabel.

    Memory is bounded by the block (read ROI = block + ``context``) plus the fragment graph.
    Blocks record completion with an input fingerprint under ``work_dir`` (default:
    ``<run dir>/blockwise/<stage>``), so a rerun after a kill skips finished blocks.
    """

    name: ClassVar[str] = "blockwise-waterz"
    version: ClassVar[str] = __version__
    description: ClassVar[str] = "waterz agglomeration block by block (bounded memory, resumable)"
    inputs: ClassVar[Mapping[str, Port]] = WaterzAgglomerator.inputs
    outputs: ClassVar[Mapping[str, Port]] = WaterzAgglomerator.outputs

    class Options(WaterzAgglomerator.Options):
        block_shape: tuple[int, int, int] | None = Field(
            None, description="Block shape (z, y, x voxels); default: the run's block_shape."
        )
        context: tuple[int, int, int] = Field(
            (4, 32, 32), description="Voxels read around each block for its watershed (z, y, x)."
        )
        n_workers: int | None = Field(
            None, ge=1, description="Blocks processed at once (default: [execution] n_workers)."
        )
        executor: Literal["processes", "threads"] = Field(
            "processes",
            description="Worker kind: waterz holds the GIL, so threads do not run it in parallel.",
        )
        max_retries: int = Field(2, ge=0, description="Retries of a failing block.")
        work_dir: Path | None = Field(
            None, description="Fragments, edges and done markers (default under the run dir)."
        )
        keep_work: bool = Field(False, description="Keep work_dir after success.")
        affinity_dtype: Literal["float32", "uint8"] = Field(
            "float32",
            description="'uint8': agglomerate affinities as 8-bit storage holds them "
            "(round(a * 255) / 255): about 5x fewer watershed fragments and graph edges on the "
            "phantom, but other segmentations than the float32 setting was chosen for.",
        )

    def _work_dir(self) -> Path:
        opts = self.options
        if opts.work_dir is not None:
            return Path(opts.work_dir)
        return self.context.work_dir()

    def _section_fragments(self, affs_vol: Volume) -> Volume | None:
        """Fragments per ``fragments_from`` when they are not waterz's own (``None``): made a
        slab of sections at a time, each slab's boundary map read band by band (bounded
        memory; the same fragments as :func:`~synapse_toolkit.inference.fragments.make_fragments`
        on the whole volume)."""
        from synapse_toolkit.inference.fragments import (
            boundary_map_banded,
            distance_parameters,
            fragments_from_boundary,
        )

        setting = fragment_setting(affs_vol, self.options)
        self.context.record("fragments", setting)
        if setting["method"] == "affinities":
            return None
        self.context.logger.info("%s: fragments %s, section by section", self.name, setting)
        spatial = affs_vol.spatial_shape
        out = self.context.create_volume(
            "fragments", tuple(spatial), np.uint64, like=affs_vol,
            chunks=(1, *(min(s, b) for s, b in zip(spatial[1:], self.context.block_shape[1:],
                                                   strict=True))),
            dense=True,
        )  # fmt: skip
        chunks = getattr(affs_vol.data, "chunks", None) or (3, *self.context.block_shape)
        band, depth = int(chunks[2]), int(chunks[1])
        # sections per slab: a divisor of the chunk depth (each chunk read depth / n times),
        # with the slab's boundary map within ~64 MB
        per_section = 4 * int(spatial[1]) * int(spatial[2])
        n = max((d for d in range(1, depth + 1) if depth % d == 0 and d * per_section <= 2**26),
                default=1)  # fmt: skip
        base = np.uint64(0)
        for z0 in range(0, spatial[0], n):
            z1 = min(z0 + n, spatial[0])
            bmap = boundary_map_banded(affs_vol.data, z0, z1, band)
            f = fragments_from_boundary(bmap, **distance_parameters(setting))
            del bmap
            top = np.uint64(f.max())
            f += base  # in place: the slab's ids are numbered from 1
            out.data[z0:z1] = f
            base += top
        return out

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        from synapse_toolkit.inference.agglomeration import scoring_function
        from synapse_toolkit.inference.agglomeration_blockwise import agglomerate_blockwise
        from synapse_toolkit.io.zarr_io import copy_slab

        opts = self.options
        scoring_function(opts.scoring)  # validate early
        affs_vol: Volume = inputs["affinities"]
        if affs_vol.num_channels is None or affs_vol.num_channels < 3:
            raise DataError(
                f"{self.name}: affinities must be (>=3, z, y, x), got shape {affs_vol.shape}"
            )
        spatial = affs_vol.spatial_shape
        frag = inputs.get("fragments")
        truth = inputs.get("truth")
        for port, vol in (("fragments", frag), ("truth", truth)):
            if vol is not None and tuple(vol.shape) != tuple(spatial):
                raise DataError(f"{self.name}: {port} shape {vol.shape} != affinities {spatial}")
        if frag is None:
            frag = self._section_fragments(affs_vol)
        ths = sorted(opts.thresholds)
        scoring = opts.scoring
        target = opts.threshold if opts.threshold is not None else ths[len(ths) // 2]
        model_agg = (
            model_agglomeration(affs_vol, opts)
            if truth is None and opts.threshold is None
            else None
        )
        if model_agg is not None:  # as waterz: the setting stored by the affinity model
            scoring, target = str(model_agg["scoring"]), float(model_agg["threshold"])
            scoring_function(scoring)
            ths = sorted({*ths, target})
        b = opts.block_shape or self.context.block_shape
        bs = (int(b[0]), int(b[1]), int(b[2]))
        chunks = tuple(min(s, b) for s, b in zip(spatial, bs, strict=True))
        segs = self.context.create_volume(
            "segmentations", (len(ths), *spatial), np.uint64, like=affs_vol,
            chunks=(1, *chunks), dense=True,
        )  # fmt: skip
        work = self._work_dir()
        tasks: dict[str, Any] = {}

        def progress(phase: str, n: int) -> Any:
            tasks[phase] = self.context.progress(f"blocks ({phase})", n)
            return tasks[phase].advance

        res = agglomerate_blockwise(
            affs_vol.data, segs.data, ths, work,
            fragments=None if frag is None else frag.data, scoring=scoring,
            aff_threshold_low=opts.aff_threshold_low, aff_threshold_high=opts.aff_threshold_high,
            discretize_queue=opts.discretize_queue, block_shape=bs, context=opts.context,
            voxel_size_nm=affs_vol.voxel_size_nm, offset_nm=affs_vol.offset_nm,
            n_workers=self.context.block_workers(opts.n_workers), executor=opts.executor,
            max_retries=opts.max_retries,
            progress=progress, logger=self.context.logger, uint8=opts.affinity_dtype == "uint8",
            pool=self.context.block_pool(
                opts.n_workers, opts.executor, "blockwise-waterz", count_blocks(spatial, bs)
            ),
        )  # fmt: skip
        self.context.record("blockwise", res.to_dict())

        rows: list[dict[str, float]] = []
        best: dict[str, float] = {}
        if truth is not None:
            from synapse_toolkit.metrics.cremi_neurons import score_neuron_ids

            t_arr = _Ignoring(truth.data, opts.ignore_label)
            for i, th in enumerate(ths):
                s = score_neuron_ids(
                    t_arr, _Slab(segs.data, i), block_shape=bs, n_threads=self.context.n_threads
                )
                row = {
                    "threshold": th, "voi_split": s.voi_split, "voi_merge": s.voi_merge,
                    "voi": s.voi_total, "arand": s.adapted_rand, "cremi_score": s.cremi_score,
                }  # fmt: skip
                rows.append(row)
                if not best or row[opts.select_by] < best[opts.select_by]:
                    best = row
        chosen = best["threshold"] if best else min(ths, key=lambda t: abs(t - target))
        source = "model metadata" if model_agg is not None else (
            "option" if opts.threshold is not None else "median of thresholds"
        )  # fmt: skip
        self.context.record(
            "agglomeration",
            {"scoring": scoring, "threshold": chosen, "chosen_by": "truth" if best else source},
        )
        seg_out = self.context.create_volume(
            "segmentation", spatial, np.uint64, like=affs_vol, chunks=zarr_array(segs).chunks[1:],
            dense=True,
        )  # fmt: skip
        copy_slab(zarr_array(segs), ths.index(chosen), zarr_array(seg_out))
        if not opts.keep_work:
            shutil.rmtree(work, ignore_errors=True)
            if opts.work_dir is None:
                with contextlib.suppress(OSError):
                    work.parent.rmdir()  # <run dir>/blockwise, when no other stage uses it
        return agglomeration_outputs(seg_out, segs, rows, best, scoring, opts.select_by)
