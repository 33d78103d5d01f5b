"""Stage contracts: what every pipeline stage plugin implements.

A stage plugin subclasses one of the kind bases below, parametrised by its options class::

    class Waterz(Agglomerator["Waterz.Options"]):
        name = "waterz"
        inputs = {"affinities": Port("affinities", grid="in"), ...}
        outputs = {"segmentation": Port("labels"), ...}

        class Options(StageOptions):
            threshold: float = 0.5

        def run(self, inputs):
            self.options.threshold  # typed: a type checker knows Waterz.Options

It declares

- ``name``: the plugin name used in pipeline TOML (``plugin = "cremi-hdf5"``);
- ``Options``: a pydantic model (unknown keys are errors) for its ``options`` table; the
  generic parameter gives ``self.options`` its type;
- ``inputs`` / ``outputs``: named :class:`Port` s with the artifact type they carry
  (:mod:`synapse_toolkit.artifact_types`: ``intensity``, ``labels``, ``affinities``, ``map``,
  ``annotations``, ``partners``, ``regions``, ``clusters``, ``scores``, ``transform``,
  ``file``). ``pipeline validate`` checks every wire against them, the runner checks every
  returned value;
- ``run(inputs) -> outputs``: maps input port names to data objects and returns a dict of output
  port names to data objects.

The kinds and their standard ports (each kind base declares them; a plugin of that kind must
keep them, and may add more):

================  ================================================  =============================
kind              standard inputs                                   standard outputs
================  ================================================  =============================
loader            none (reads ``context.input_path``/options)       any of raw (intensity),
                                                                    neuron_ids/clefts (labels),
                                                                    annotations
aligner           ``raw`` (intensity) + other volumes (or           aligned volumes + ``transform``
                  ``transform`` to invert)
detector          ``raw`` (intensity)                               float maps (``affinities``,
                                                                    ``map``), same grid as raw
agglomerator      ``affinities`` (+ optional ``fragments``)         ``segmentation`` (labels)
partner-assigner  detector maps + ``segmentation`` (labels)         ``partners``
clusterer         ``raw`` + ``partners``                            ``clusters``
scorer            ``prediction`` + ``truth``                        ``scores``
postprocessor     a map or volume                                   a derived volume
writer            the artifacts to export                           ``file`` (what it wrote)
================  ================================================  =============================

Stages must not load whole volumes where they can stream: read regions with
:meth:`~synapse_toolkit.data.Volume.read` and write large outputs through
:meth:`StageContext.create_volume`, which gives a zarr array in the stage's scratch directory.
Plugins may add stage kinds of their own (e.g. calcium ROI extraction) with
``registry.add_stage(kind, cls)``.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from synapse_toolkit import artifact_types
from synapse_toolkit.data import Volume
from synapse_toolkit.errors import DataError

#: The seven built-in stage kinds, in pipeline order.
STAGE_KINDS = (
    "loader",
    "aligner",
    "detector",
    "agglomerator",
    "partner-assigner",
    "clusterer",
    "scorer",
)


class StageOptions(BaseModel):
    """Base for a stage's options: unknown keys are rejected, values are validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelOptions(StageOptions):
    """Options of a stage that runs an ONNX model given as ``model`` (a registry name; the
    subclass sets its default) or ``model_path`` (a file, checked against ``sha256`` when given):
    a ``model`` ending in ``.onnx`` is taken as ``model_path``, so the file ``syntk adapt`` or a
    trainer wrote can be named either way."""

    model: str = Field("", description="Registry model name (default: the bundled one).")
    model_path: Path | None = Field(None, description="An ONNX file instead of `model`.")
    sha256: str | None = Field(None, description="Expected sha256 of `model_path`.")

    @model_validator(mode="before")
    @classmethod
    def _onnx_file_as_model_path(cls, data: Any) -> Any:
        if isinstance(data, dict) and str(data.get("model", "")).endswith(".onnx"):
            if data.get("model_path") is not None:
                raise ValueError("give the ONNX file as `model` or `model_path`, not both")
            data = {**data, "model_path": data["model"]}
        return data


@dataclass(frozen=True)
class Port:
    """A named input or output of a stage, and what it must carry.

    ``type`` is an artifact type (:mod:`synapse_toolkit.artifact_types`: ``intensity``,
    ``labels``, ``affinities``, ``map``, ``partners``, ...). Volume ports may narrow it:
    ``channels`` (exact) or ``min_channels`` for channels-first volumes, and ``grid``: input
    ports with the same ``grid`` name must share voxel size, offset and spatial shape.
    """

    type: str
    doc: str = ""
    required: bool = True
    channels: int | None = None
    min_channels: int | None = None
    grid: str | None = None

    def __post_init__(self) -> None:
        artifact_types.get(self.type)  # raises on an unknown type

    @property
    def artifact(self) -> artifact_types.ArtifactType:
        return artifact_types.get(self.type)

    def describe(self) -> str:
        """``type`` plus its narrowing, e.g. ``affinities[>=3]``."""
        extra = (
            f"[{self.channels}]" if self.channels else
            f"[>={self.min_channels}]" if self.min_channels else ""
        )  # fmt: skip
        return f"{self.type}{extra}"

    def problem(self, value: Any) -> str | None:
        """Why ``value`` does not fit this port, or None."""
        art = self.artifact
        if not isinstance(value, art.cls):
            return f"is a {type(value).__name__}, not {art.cls.__name__} ({self.type})"
        if not isinstance(value, Volume):
            return None
        shape = tuple(value.shape)
        if art.ndims and len(shape) not in art.ndims:
            dims = " or ".join(str(n) for n in art.ndims)
            return f"has shape {shape}; a {self.type} volume has {dims} dimensions"
        if not art.dtype_ok(value.dtype):
            return f"has dtype {value.dtype}; a {self.type} volume needs {art.dtype} values"
        channels = shape[0] if len(shape) == 4 else None
        want_min = self.min_channels or art.min_channels
        if self.channels is not None and channels not in (self.channels, None):
            return f"has {channels} channels; expected {self.channels}"
        if want_min is not None and (channels or 1) < want_min:
            return f"has {channels or 1} channel(s); expected at least {want_min}"
        return None


def check_grids(where: str, ports: Mapping[str, Port], values: Mapping[str, Any]) -> None:
    """Inputs whose ports share a ``grid`` name must lie on one grid; DataError otherwise."""
    groups: dict[str, list[tuple[str, Volume]]] = {}
    for name, port in ports.items():
        value = values.get(name)
        if port.grid and isinstance(value, Volume):
            groups.setdefault(port.grid, []).append((name, value))
    for members in groups.values():
        first_name, first = members[0]
        for name, vol in members[1:]:
            diff = Placement.of(first).difference(Placement.of(vol))
            if diff:
                raise DataError(f"{where}: inputs {first_name} and {name} differ in {diff}")


ProgressFactory = Callable[[str, int | None], "ProgressTask"]


class ProgressTask:
    """A progress handle a stage advances; the runner renders it (rich) or ignores it (quiet)."""

    def __init__(self, on_advance: Callable[[int], None] | None = None) -> None:
        self._on_advance = on_advance

    def advance(self, n: int = 1) -> None:
        if self._on_advance is not None:
            self._on_advance(n)


def _no_progress(description: str, total: int | None) -> ProgressTask:
    return ProgressTask()


@dataclass
class StageContext:
    """What the runner gives a stage: where to write, how to report, how much to use.

    ``scratch_dir`` is private to this stage run; volumes created with :meth:`create_volume`
    live there until the runner moves them atomically into the run's artifact directory.
    """

    stage_name: str
    scratch_dir: Path
    input_path: Path | None = None
    run_dir: Path | None = None
    n_threads: int = 2
    block_shape: tuple[int, int, int] = (32, 256, 256)
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("syntk"))
    progress_factory: ProgressFactory = _no_progress
    #: facts the stage reports for the run manifest (e.g. the sha256 of the model it used)
    notes: dict[str, Any] = field(default_factory=dict)
    #: where blockwise stages run their blocks (:mod:`synapse_toolkit.engines`; None: local)
    engine: Any = None

    def block_pool(
        self,
        n_workers: int | None = None,
        executor: str = "processes",
        name: str = "blocks",
        n_blocks: int | None = None,
    ) -> Any:
        """A ``concurrent.futures`` executor for this stage's blocks, from the run's engine
        (``[execution]``): a local pool of ``n_workers`` (default: the engine's; one thread when
        there is a single block, which a process would only delay), or the dask cluster. The
        caller shuts it down (a dask cluster stays up for the next stage)."""
        from synapse_toolkit.engines import Engine

        engine = self.engine if self.engine is not None else Engine()
        if n_blocks == 1 and engine.name == "local":
            n_workers, executor = 1, "threads"
        return engine.pool(n_workers, executor, name)  # type: ignore[arg-type]

    def block_workers(self, n_workers: int | None = None) -> int:
        """``n_workers`` if given, else the run engine's worker count (1 without an engine)."""
        if n_workers:
            return n_workers
        return int(self.engine.n_workers) if self.engine is not None else 1

    def work_dir(self) -> Path:
        """``<run dir>/blockwise/<stage>``: block outputs and done markers that survive a kill
        (a fresh run removes them; ``--resume`` keeps them)."""
        return Path(self.run_dir or self.scratch_dir) / "blockwise" / self.stage_name

    def run_file(self, filename: str) -> Path:
        """``filename`` in the run directory, for files a stage exports (a plain name, never the
        pipeline's input); DataError otherwise."""
        if Path(filename).is_absolute() or ".." in Path(filename).parts:
            raise DataError(f"stage {self.stage_name}: options.filename must be a plain name "
                            "inside the run directory")  # fmt: skip
        target = (self.run_dir or Path.cwd()) / filename
        if self.input_path is not None and target.resolve() == Path(self.input_path).resolve():
            raise DataError(f"{target}: refusing to overwrite the pipeline input")
        return target

    def record(self, key: str, value: Any) -> None:
        """Record a JSON-able fact about this stage run in the manifest (under ``notes``)."""
        self.notes[key] = value

    def progress(self, description: str, total: int | None = None) -> ProgressTask:
        """Start a progress task (e.g. one tick per block)."""
        return self.progress_factory(f"{self.stage_name}: {description}", total)

    def track(
        self, items: Iterable[Any], description: str, total: int | None = None
    ) -> Iterator[Any]:
        """Iterate ``items`` while advancing a progress task."""
        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        task = self.progress(description, total)
        for item in items:
            yield item
            task.advance()

    def create_volume(
        self,
        port: str,
        shape: tuple[int, ...],
        dtype: Any,
        like: Volume | None = None,
        *,
        voxel_size_nm: tuple[float, float, float] | None = None,
        offset_nm: tuple[float, float, float] | None = None,
        chunks: tuple[int, ...] | None = None,
        fill_value: Any = 0,
        dense: bool = False,
    ) -> Volume:
        """A zarr-backed output volume for ``port``, to be filled block by block.

        Placement comes from ``like`` unless ``voxel_size_nm``/``offset_nm`` are given.
        ``dense=True`` stores every chunk without first testing whether it is all
        ``fill_value`` (zarr's default test skips storing such chunks, which saves disk on sparse
        outputs such as cleft masks but costs a pass over every chunk: writing a waterz
        segmentation took 40% less time without it, ``benchmarks/bench_agglomeration.py``).
        """
        import zarr

        if like is None and voxel_size_nm is None:
            raise ValueError("create_volume needs `like` or `voxel_size_nm`")
        vs = voxel_size_nm if voxel_size_nm is not None else like.voxel_size_nm  # type: ignore[union-attr]
        off = offset_nm if offset_nm is not None else (like.offset_nm if like else (0.0, 0.0, 0.0))
        if chunks is None:
            spatial = tuple(min(s, b) for s, b in zip(shape[-3:], self.block_shape, strict=True))
            chunks = (*shape[:-3], *spatial)
        path = self.scratch_dir / f"{port}.zarr"
        arr = zarr.create_array(
            store=str(path), shape=shape, dtype=np.dtype(dtype), chunks=chunks,
            fill_value=fill_value, overwrite=True, config={"write_empty_chunks": dense},
        )  # fmt: skip
        return Volume(arr, vs, off, name=port)


OptionsT = TypeVar("OptionsT", bound=StageOptions)


class Stage(ABC, Generic[OptionsT]):
    """Base class of every stage plugin. Subclass a kind base, not this class directly."""

    kind: ClassVar[str]
    name: ClassVar[str]
    version: ClassVar[str] = "0"
    description: ClassVar[str] = ""
    inputs: ClassVar[Mapping[str, Port]] = {}
    outputs: ClassVar[Mapping[str, Port]] = {}
    #: ports every plugin of this kind must declare (checked at registration)
    standard_inputs: ClassVar[Mapping[str, Port]] = {}
    standard_outputs: ClassVar[Mapping[str, Port]] = {}

    class Options(StageOptions):
        pass

    def __init__(self, options: OptionsT, context: StageContext) -> None:
        self.options: OptionsT = options
        self.context = context

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in cls.__dict__.get("__orig_bases__", ()):
            for arg in get_args(base):
                if isinstance(arg, type) and issubclass(arg, StageOptions):
                    cls.Options = arg  # type: ignore[misc,assignment]  # Stage[SomeOptions] names it

    @abstractmethod
    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Compute the output artifacts from the input artifacts."""

    def close(self) -> None:
        """Release resources (open files) after the run; called once by the runner."""

    @classmethod
    def contract_problem(cls) -> str | None:
        """Why this class breaks its kind's standard ports, or None."""
        for side, standard, declared in (
            ("input", cls.standard_inputs, cls.inputs),
            ("output", cls.standard_outputs, cls.outputs),
        ):
            for port, spec in standard.items():
                got = declared.get(port)
                if got is None:
                    return f"a {cls.kind} must declare {side} {port!r} ({spec.describe()})"
                if not artifact_types.compatible(got.type, spec.type):
                    return (f"{side} {port!r} carries {got.type}; a {cls.kind} "
                            f"{side} {port!r} carries {spec.type}")  # fmt: skip
        return None

    @classmethod
    def contract(cls) -> dict[str, Any]:
        """A JSON-able description of the stage (for `syntk plugins list` and docs)."""

        def port(p: Port) -> dict[str, Any]:
            return {"type": p.describe(), "required": p.required, "doc": p.doc,
                    **({"grid": p.grid} if p.grid else {})}  # fmt: skip

        return {
            "kind": cls.kind,
            "name": cls.name,
            "version": cls.version,
            "description": cls.description,
            "inputs": {k: port(p) for k, p in cls.inputs.items()},
            "outputs": {k: port(p) for k, p in cls.outputs.items()},
            "options": cls.Options.model_json_schema(),
        }


@dataclass(frozen=True)
class Placement:
    """Where a volume lies: voxel size and offset (nm, z, y, x) and spatial shape (voxels)."""

    voxel_size_nm: tuple[float, float, float]
    offset_nm: tuple[float, float, float]
    shape: tuple[int, int, int]

    @classmethod
    def of(cls, vol: Volume) -> Placement:
        return cls(vol.voxel_size_nm, vol.offset_nm, vol.spatial_shape)

    def difference(self, other: Placement) -> str | None:
        """The first property in which two placements differ, with both values, or None."""
        for what, a, b in (
            ("voxel size (nm)", self.voxel_size_nm, other.voxel_size_nm),
            ("offset (nm)", self.offset_nm, other.offset_nm),
            ("shape (z, y, x)", self.shape, other.shape),
        ):
            if tuple(a) != tuple(b):
                return f"{what}: {tuple(a)} vs {tuple(b)}"
        return None


class Loader(Stage[OptionsT]):
    """Reads input data. No inputs; reads ``context.input_path`` unless an option names a file.

    Outputs are whatever the source holds, e.g. ``raw`` (``intensity``), ``neuron_ids`` and
    ``clefts`` (``labels``), ``annotations``. Large volumes are returned lazily
    (h5py/zarr-backed), not loaded. Loaders must reject data that would poison a run before
    any compute (:func:`synapse_toolkit.io.checks.check_loaded`).

    :meth:`probe` may read the placement of each volume output from metadata alone, so that
    ``syntk pipeline validate`` can reject volumes on different grids wired into one stage.
    """

    kind: ClassVar[str] = "loader"

    @classmethod
    def probe(cls, options: Any, input_path: Path | None) -> Mapping[str, Placement]:
        """Placement of each volume output, from metadata only (no voxel data); {} if unknown."""
        return {}


class Aligner(Stage[OptionsT]):
    """Estimates and applies per-section transforms (z, y, x nm frames).

    Inputs: the volumes to align (``raw`` required) — or, in inverse mode, the volumes to map back
    plus ``transform``. Outputs: aligned volumes under the same port names and ``transform``
    (:class:`~synapse_toolkit.data.SectionTransform`, per-section shifts in nm).
    """

    kind: ClassVar[str] = "aligner"


class Detector(Stage[OptionsT]):
    """Predicts dense maps from EM: input ``raw`` (intensity); outputs float volumes with
    channels first (``affinities`` (3, z, y, x), a ``map`` such as cleft probability
    (1, z, y, x)) on the same grid as ``raw``. Must tile: read blocks with context, write blocks
    into ``context.create_volume``. ``raw`` comes in whatever dtype the file holds (uint8,
    uint16, float): a detector brings it to its network's input range itself, e.g. with
    :func:`~synapse_toolkit.inference.intensity.model_preprocess` (integer raw over its type's
    maximum, or matched to a stored grey-value reference) as the built-in detectors do.
    """

    kind: ClassVar[str] = "detector"
    standard_inputs: ClassVar[Mapping[str, Port]] = {"raw": Port("volume", "the input image")}


class Agglomerator(Stage[OptionsT]):
    """Turns ``affinities`` (and optionally ``fragments``) into a ``segmentation`` (labels)."""

    kind: ClassVar[str] = "agglomerator"
    standard_inputs: ClassVar[Mapping[str, Port]] = {
        "affinities": Port("affinities", "(C>=3, z, y, x) affinities")
    }
    standard_outputs: ClassVar[Mapping[str, Port]] = {
        "segmentation": Port("labels", "the segmentation")
    }


class PartnerAssigner(Stage[OptionsT]):
    """Finds synaptic partners from detector maps and a ``segmentation``; outputs ``partners``
    (:class:`~synapse_toolkit.data.PartnerTable`) and optionally ``annotations`` (CREMI form)."""

    kind: ClassVar[str] = "partner-assigner"
    standard_inputs: ClassVar[Mapping[str, Port]] = {
        "segmentation": Port("labels", "neuron segmentation")
    }
    standard_outputs: ClassVar[Mapping[str, Port]] = {"partners": Port("partners", "pairs")}


class Clusterer(Stage[OptionsT]):
    """Groups synapses: inputs ``raw`` and ``partners``; output ``clusters``."""

    kind: ClassVar[str] = "clusterer"
    standard_inputs: ClassVar[Mapping[str, Port]] = {"partners": Port("partners", "synapses")}
    standard_outputs: ClassVar[Mapping[str, Port]] = {"clusters": Port("clusters", "types")}


class Scorer(Stage[OptionsT]):
    """Compares ``prediction`` with ``truth``; output ``scores``
    (:class:`~synapse_toolkit.data.ScoreRecord`). ``syntk score NAME TRUTH PRED`` runs every
    registered scorer on files through :meth:`score_files`."""

    kind: ClassVar[str] = "scorer"
    standard_outputs: ClassVar[Mapping[str, Port]] = {"scores": Port("scores", "metric values")}
    #: for scoring files: port -> ("truth" | "prediction", dataset the loader gives), e.g.
    #: {"prediction": ("prediction", "neuron_ids")}; see :mod:`synapse_toolkit.scoring`
    file_inputs: ClassVar[Mapping[str, tuple[str, str]]] = {}
    #: metric names for which smaller / larger values are better (shown after score tables)
    lower_is_better: ClassVar[tuple[str, ...]] = ()
    higher_is_better: ClassVar[tuple[str, ...]] = ()


class Postprocessor(Stage[OptionsT]):
    """Derives a volume from another (e.g. cleft probability → cleft labels)."""

    kind: ClassVar[str] = "postprocessor"


class Writer(Stage[OptionsT]):
    """Exports artifacts to a file in the run directory; returns ``file``
    (:class:`~synapse_toolkit.data.WrittenFile`) so the run knows what it wrote. Writes
    atomically and never onto the pipeline's input."""

    kind: ClassVar[str] = "writer"
    standard_outputs: ClassVar[Mapping[str, Port]] = {"file": Port("file", "the file written")}


KIND_BASES: dict[str, type[Stage[Any]]] = {
    cls.kind: cls
    for cls in (Loader, Aligner, Detector, Agglomerator, PartnerAssigner, Clusterer, Scorer,
                Postprocessor, Writer)
}  # fmt: skip
