"""What a volume looks like and what a model was trained on: choosing a model by domain, and one
warning line when a model trained on synthetic phantoms runs on a volume that is not a phantom.

- **Input domain** (:func:`input_domain`): the voxel size (z, y, x nm) and whether the volume is a
  syntk phantom, known from the ``generator`` attribute the phantom writer puts on its files
  (``"syntk phantom em"``, HDF5 file / zarr group attribute). A volume is taken as serial-section
  EM (``ssTEM``) when its z voxel is at least :data:`ANISOTROPY_SSTEM` times its in-plane voxel,
  else as isotropic (``FIB-SEM``); a phantom is ``phantom`` whatever its grid.
- **Model domain** (:func:`model_domain`): ``modality``, ``training_data`` ("real" or "synthetic")
  and ``voxel_size_nm`` from the ONNX model's metadata, else from its registry entry
  (:class:`synapse_toolkit.datasets.entries.Entry`).
- :func:`choose_model`: the registry model for a task (e.g. ``"affinities"``) whose modality
  matches the input's, closest in voxel size (registration order breaks ties).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from synapse_toolkit.errors import DataError

if TYPE_CHECKING:
    from synapse_toolkit.data import Volume
    from synapse_toolkit.datasets.entries import Entry
    from synapse_toolkit.datasets.registry import DatasetRegistry

#: z voxel / in-plane voxel from which a volume counts as serial-section (anisotropic) EM
ANISOTROPY_SSTEM = 2.0
PHANTOM_GENERATOR_PREFIX = "syntk phantom"


@dataclass(frozen=True)
class InputDomain:
    """What is known about an input volume."""

    voxel_size_nm: tuple[float, float, float]
    phantom: bool
    generator: str | None = None
    source: str | None = None

    @property
    def anisotropy(self) -> float:
        z, y, x = self.voxel_size_nm
        return z / max(y, x)

    @property
    def modality(self) -> str:
        """``phantom``, ``ssTEM`` (anisotropic) or ``FIB-SEM`` (isotropic)."""
        if self.phantom:
            return "phantom"
        return "ssTEM" if self.anisotropy >= ANISOTROPY_SSTEM else "FIB-SEM"

    def describe(self) -> str:
        vs = " x ".join(f"{v:g}" for v in self.voxel_size_nm)
        kind = "a syntk phantom" if self.phantom else "not a phantom (no `generator` attribute)"
        where = f"{self.source} " if self.source else ""
        return f"{where}at {vs} nm, {kind}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "voxel_size_nm": list(self.voxel_size_nm),
                "modality": self.modality}  # fmt: skip


@dataclass(frozen=True)
class ModelDomain:
    """What a model was trained on (any field may be unknown)."""

    modality: str | None = None
    training_data: str | None = None
    voxel_size_nm: tuple[float, float, float] | None = None

    @property
    def synthetic(self) -> bool:
        return self.training_data == "synthetic" or self.modality == "phantom"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.voxel_size_nm is not None:
            d["voxel_size_nm"] = list(self.voxel_size_nm)
        return {k: v for k, v in d.items() if v is not None}


def _attr_str(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def source_attrs(volume: Volume) -> tuple[dict[str, Any], str | None]:
    """Attributes of the file or store a volume is read from (file/group first, then the array's
    own), and that file's name; for in-memory arrays the ``source_attrs`` they were read with."""
    data = volume.data
    attrs: dict[str, Any] = dict(volume.source_attrs)
    source: str | None = None
    try:
        import h5py

        if isinstance(data, h5py.Dataset):
            source = str(data.file.filename)
            attrs.update(dict(data.file.attrs))
            attrs.update(dict(data.attrs))
            return attrs, source
    except ImportError:  # pragma: no cover - h5py is a dependency
        pass
    try:
        import zarr

        if isinstance(data, zarr.Array):
            store = str(data.store).removeprefix("file://")
            source = store or None
            try:
                root = zarr.open_group(data.store, mode="r")
                attrs.update(dict(root.attrs))
            except Exception:  # the array is the store's root: no group above it
                pass
            attrs.update(dict(data.attrs))
    except ImportError:  # pragma: no cover - zarr is a dependency
        pass
    return attrs, source


def input_domain(volume: Volume) -> InputDomain:
    """The domain of ``volume``: its voxel size and whether a syntk phantom generator made it."""
    attrs, source = source_attrs(volume)
    generator = _attr_str(attrs.get("generator"))
    phantom = bool(generator and generator.startswith(PHANTOM_GENERATOR_PREFIX))
    z, y, x = (float(v) for v in volume.voxel_size_nm)
    return InputDomain((z, y, x), phantom, generator, source)


def model_domain(meta: Mapping[str, Any] | None, entry: Entry | None = None) -> ModelDomain:
    """A model's domain from its ONNX metadata, completed from its registry entry."""
    meta = meta or {}

    def pick(key: str) -> Any:
        value = meta.get(key)
        if value is None and entry is not None:
            value = getattr(entry, key, None)
        return value

    vs = pick("voxel_size_nm")
    voxel = None if vs is None else tuple(float(v) for v in vs)
    modality, data = pick("modality"), pick("training_data")
    return ModelDomain(
        None if modality is None else str(modality),
        None if data is None else str(data),
        None if voxel is None else (voxel[0], voxel[1], voxel[2]),
    )


def domain_warning(who: str, model: str, model_dom: ModelDomain, inp: InputDomain) -> str | None:
    """One line when a model trained on synthetic phantoms runs on a volume that is not one."""
    if not model_dom.synthetic or inp.phantom:
        return None
    return (
        f"{who}: model {model} was trained on synthetic phantom volumes only; the input "
        f"({inp.describe()}) is real data, where this model is not validated"
    )


def _voxel_distance(a: Sequence[float] | None, b: Sequence[float]) -> float:
    if a is None:
        return math.inf
    return sum(abs(math.log(float(p) / float(q))) for p, q in zip(a, b, strict=True))


def choose_model(
    task: str, inp: InputDomain, registry: DatasetRegistry | None = None
) -> tuple[Entry, str]:
    """The registry model for ``task`` that fits ``inp`` and a one-line reason.

    Candidates: registry models with that ``task`` and a declared ``modality``. The input's
    modality (:attr:`InputDomain.modality`) must match; among those the closest voxel size (sum
    of |log ratio| over z, y, x) wins, then registration order. With no model of that modality,
    the closest in voxel size among all candidates is used and the reason says so.
    """
    if registry is None:
        from synapse_toolkit.datasets import get_registry

        registry = get_registry()
    models = [e for e in registry.entries("model") if e.task == task and e.modality]
    if not models:
        raise DataError(f"model = 'auto': the registry has no model for task {task!r}")
    same = [e for e in models if e.modality == inp.modality]
    pool = same or models
    best = min(pool, key=lambda e: _voxel_distance(e.voxel_size_nm, inp.voxel_size_nm))
    vs = " x ".join(f"{v:g}" for v in inp.voxel_size_nm)
    if same:
        why = f"input looks like {inp.modality} ({vs} nm"
        why += ", syntk phantom)" if inp.phantom else f", z/xy {inp.anisotropy:.1f})"
    else:
        why = (f"no {task} model for {inp.modality} input ({vs} nm); closest voxel size "
               f"among {', '.join(e.name for e in models)}")  # fmt: skip
    return best, why
