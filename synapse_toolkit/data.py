"""The data contract every stage reads and writes.

All spatial quantities are in **nanometres** and in axis order **(z, y, x)**, as in CREMI files.
Objects are frozen dataclasses validated on creation; a violation raises
:class:`~synapse_toolkit.errors.DataError` naming the offending field.

- :class:`Volume` — an array-like (numpy, h5py or zarr) with voxel size and offset. Intensity
  volumes, probability maps (channels first: ``(c, z, y, x)``) and label volumes are all Volumes;
  ``is_labels`` tells them apart. Volumes are never loaded whole by the contract: use
  :meth:`Volume.read` with a region.
- :class:`Annotations` — CREMI point annotations (pre/post-synaptic sites and partner pairs).
- :class:`PartnerTable` — the output of every partner assigner: one row per pre→post pair.
- :class:`Regions` — calcium-imaging ROIs (neurofinder layout: lists of (row, col) pixels).
- :class:`ClusterAssignments` — a cluster label per synapse.
- :class:`ScoreRecord` — named metric values from a scorer.
- :class:`SectionTransform` — per-section in-plane shifts (nm) from an aligner.

Every type converts to and from plain JSON-able dicts (``to_dict``/``from_dict``), which is how
the pipeline stores them as artifacts; volumes are stored as zarr arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from synapse_toolkit.errors import DataError

Vec3 = tuple[float, float, float]
Roi = tuple[slice, ...]


@runtime_checkable
class ArrayLike(Protocol):
    """What a Volume needs from its backing array (numpy, h5py.Dataset and zarr.Array qualify)."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> Any: ...

    def __getitem__(self, key: Any) -> Any: ...

    def __setitem__(self, key: Any, value: Any) -> None: ...


def _vec3(value: Sequence[float], name: str) -> Vec3:
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.shape != (3,):
        raise DataError(f"{name} must have 3 values (z, y, x) in nm, got {arr.tolist()}")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{name} contains NaN or infinity: {arr.tolist()}")
    return (float(arr[0]), float(arr[1]), float(arr[2]))


@dataclass(frozen=True)
class Volume:
    """A 3D (or channels-first 4D) array with its physical placement.

    ``data`` has shape ``(z, y, x)`` or ``(c, z, y, x)``; ``voxel_size_nm`` and ``offset_nm`` are
    (z, y, x) in nm; ``offset_nm`` is the world position of voxel (0, 0, 0)'s corner, CREMI-style.
    ``source_attrs``: attributes of the file an in-memory volume was read from (e.g. a phantom's
    ``generator``); an h5py or zarr volume's own file is read instead.
    """

    data: ArrayLike
    voxel_size_nm: Vec3
    offset_nm: Vec3 = (0.0, 0.0, 0.0)
    name: str = ""
    source_attrs: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        label = f"volume {self.name!r}" if self.name else "volume"
        if not isinstance(self.data, ArrayLike):
            raise DataError(f"{label}: data must be an array (numpy, h5py or zarr)")
        if len(self.data.shape) not in (3, 4):
            raise DataError(
                f"{label}: expected 3 (z, y, x) or 4 (c, z, y, x) dimensions, "
                f"got shape {tuple(self.data.shape)}"
            )
        object.__setattr__(
            self, "voxel_size_nm", _vec3(self.voxel_size_nm, f"{label} voxel_size_nm")
        )
        object.__setattr__(self, "offset_nm", _vec3(self.offset_nm, f"{label} offset_nm"))
        if min(self.voxel_size_nm) <= 0:
            raise DataError(f"{label}: voxel_size_nm must be positive, got {self.voxel_size_nm}")

    # -- shape -------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.data.shape)

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        s = self.shape[-3:]
        return (s[0], s[1], s[2])

    @property
    def num_channels(self) -> int | None:
        return self.shape[0] if len(self.shape) == 4 else None

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    @property
    def is_labels(self) -> bool:
        """Integer 3D volumes are label volumes (segment or cleft ids)."""
        return len(self.shape) == 3 and np.issubdtype(self.dtype, np.integer)

    @property
    def extent_nm(self) -> Vec3:
        z, y, x = (n * v for n, v in zip(self.spatial_shape, self.voxel_size_nm, strict=True))
        return (z, y, x)

    # -- access ------------------------------------------------------------------------------
    def read(self, roi: Roi | None = None) -> np.ndarray:
        """Read a region (spatial slices, channels kept) into memory; the whole volume if None."""
        if roi is None:
            return np.asarray(self.data[...])
        key = (slice(None), *roi) if len(self.shape) == 4 else roi
        return np.asarray(self.data[key])

    def with_data(self, data: ArrayLike, name: str | None = None) -> Volume:
        """The same placement with other data (e.g. a prediction for this raw volume)."""
        return Volume(data, self.voxel_size_nm, self.offset_nm, self.name if name is None else name)

    # -- coordinates -------------------------------------------------------------------------
    def world_to_voxel(self, points_nm: np.ndarray) -> np.ndarray:
        """Continuous voxel coordinates of world points (N, 3) nm."""
        pts = np.asarray(points_nm, dtype=np.float64).reshape(-1, 3)
        return (pts - np.asarray(self.offset_nm)) / np.asarray(self.voxel_size_nm)

    def voxel_to_world(self, voxels: np.ndarray) -> np.ndarray:
        """World positions (nm) of voxel coordinates (N, 3)."""
        vox = np.asarray(voxels, dtype=np.float64).reshape(-1, 3)
        return vox * np.asarray(self.voxel_size_nm) + np.asarray(self.offset_nm)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": str(self.dtype),
            "voxel_size_nm": list(self.voxel_size_nm),
            "offset_nm": list(self.offset_nm),
        }


def _as_points(value: Any, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 3), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise DataError(f"{name} must have shape (N, 3) (z, y, x nm), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.all(np.isfinite(arr), axis=1))[0])
        raise DataError(f"{name} row {bad} contains NaN or infinity: {arr[bad].tolist()}")
    return arr


def _as_ids(value: Any, name: str, n: int | None = None) -> np.ndarray:
    arr = np.asarray(value)
    if arr.size == 0:
        arr = np.zeros((0,), dtype=np.uint64)
    if arr.ndim != 1:
        raise DataError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{name} must hold integer ids, got dtype {arr.dtype}")
    if arr.size and np.issubdtype(arr.dtype, np.signedinteger) and arr.min() < 0:
        raise DataError(f"{name} holds negative ids")
    if n is not None and arr.shape[0] != n:
        raise DataError(f"{name} has {arr.shape[0]} entries, expected {n}")
    return arr.astype(np.uint64)


@dataclass(frozen=True)
class Annotations:
    """CREMI point annotations.

    ``locations_nm`` are (N, 3) z, y, x nm **relative to** ``offset_nm`` (as stored in CREMI
    files); :meth:`world_locations` adds the offset. ``partners`` is (M, 2) of
    (pre-synaptic site id, post-synaptic site id); one pre id may appear in several rows
    (polyadic synapses).
    """

    ids: np.ndarray
    types: tuple[str, ...]
    locations_nm: np.ndarray
    partners: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.uint64))
    offset_nm: Vec3 = (0.0, 0.0, 0.0)
    comments: Mapping[int, str] = field(default_factory=dict)

    PRE: ClassVar[str] = "presynaptic_site"
    POST: ClassVar[str] = "postsynaptic_site"

    def __post_init__(self) -> None:
        ids = _as_ids(self.ids, "annotations ids")
        n = ids.shape[0]
        types = tuple(str(t) for t in self.types)
        if len(types) != n:
            raise DataError(f"annotations types has {len(types)} entries, expected {n}")
        locations = _as_points(self.locations_nm, "annotations locations")
        if locations.shape[0] != n:
            raise DataError(f"annotations locations has {locations.shape[0]} rows, expected {n}")
        if len(np.unique(ids)) != n:
            raise DataError("annotations ids are not unique")
        partners = np.asarray(self.partners)
        partners = np.zeros((0, 2), np.uint64) if partners.size == 0 else partners
        if partners.ndim != 2 or partners.shape[1] != 2:
            raise DataError(f"annotations partners must have shape (M, 2), got {partners.shape}")
        partners = partners.astype(np.uint64)
        known = set(ids.tolist())
        missing = [int(i) for i in partners.reshape(-1) if int(i) not in known]
        if missing:
            raise DataError(f"annotations partners name unknown site id {missing[0]}")
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "types", types)
        object.__setattr__(self, "locations_nm", locations)
        object.__setattr__(self, "partners", partners)
        object.__setattr__(self, "offset_nm", _vec3(self.offset_nm, "annotations offset_nm"))
        object.__setattr__(self, "comments", {int(k): str(v) for k, v in self.comments.items()})

    @classmethod
    def empty(cls) -> Annotations:
        return cls(np.zeros(0, np.uint64), (), np.zeros((0, 3)))

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def world_locations(self) -> np.ndarray:
        return self.locations_nm + np.asarray(self.offset_nm)

    def location_of(self, site_id: int) -> np.ndarray:
        """World location (nm) of one site id."""
        idx = np.flatnonzero(self.ids == np.uint64(site_id))
        if idx.size == 0:
            raise DataError(f"annotation id {site_id} not found")
        return self.world_locations()[idx[0]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ids": self.ids.tolist(),
            "types": list(self.types),
            "locations_nm": self.locations_nm.tolist(),
            "partners": self.partners.tolist(),
            "offset_nm": list(self.offset_nm),
            "comments": {str(k): v for k, v in self.comments.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Annotations:
        return cls(
            ids=np.asarray(d["ids"], dtype=np.uint64),
            types=tuple(d["types"]),
            locations_nm=np.asarray(d["locations_nm"], dtype=np.float64),
            partners=np.asarray(d.get("partners", []), dtype=np.uint64),
            offset_nm=tuple(d.get("offset_nm", (0.0, 0.0, 0.0))),
            comments={int(k): v for k, v in d.get("comments", {}).items()},
        )


@dataclass(frozen=True)
class PartnerTable:
    """Synaptic partners: one row per pre→post pair, the common output of all partner assigners.

    Columns (length N): ``pre_nm``/``post_nm`` world locations (N, 3) nm; ``pre_segment`` /
    ``post_segment`` the neuron segment ids at those locations (0 = unknown); ``score`` the
    assigner's confidence; ``synapse_id`` groups rows of one synapse (a polyadic synapse is one
    pre site with several rows). ``synapse_type`` is an optional integer class per row (-1 unknown).
    """

    pre_nm: np.ndarray
    post_nm: np.ndarray
    pre_segment: np.ndarray
    post_segment: np.ndarray
    score: np.ndarray
    synapse_id: np.ndarray
    synapse_type: np.ndarray | None = None

    def __post_init__(self) -> None:
        pre = _as_points(self.pre_nm, "partners pre_nm")
        n = pre.shape[0]
        post = _as_points(self.post_nm, "partners post_nm")
        if post.shape[0] != n:
            raise DataError(f"partners post_nm has {post.shape[0]} rows, expected {n}")
        score = np.asarray(self.score, dtype=np.float64).reshape(-1)
        if score.shape[0] != n:
            raise DataError(f"partners score has {score.shape[0]} entries, expected {n}")
        if np.any(np.isnan(score)):
            raise DataError("partners score contains NaN")
        stype = (
            np.full(n, -1, np.int64)
            if self.synapse_type is None
            else np.asarray(self.synapse_type, np.int64).reshape(-1)
        )
        if stype.shape[0] != n:
            raise DataError(f"partners synapse_type has {stype.shape[0]} entries, expected {n}")
        object.__setattr__(self, "pre_nm", pre)
        object.__setattr__(self, "post_nm", post)
        object.__setattr__(
            self, "pre_segment", _as_ids(self.pre_segment, "partners pre_segment", n)
        )
        object.__setattr__(
            self, "post_segment", _as_ids(self.post_segment, "partners post_segment", n)
        )
        object.__setattr__(self, "score", score)
        object.__setattr__(self, "synapse_id", _as_ids(self.synapse_id, "partners synapse_id", n))
        object.__setattr__(self, "synapse_type", stype)

    def __len__(self) -> int:
        return int(self.pre_nm.shape[0])

    @classmethod
    def empty(cls) -> PartnerTable:
        z = np.zeros((0, 3))
        e = np.zeros(0, np.uint64)
        return cls(z, z, e, e, np.zeros(0), e)

    def select(self, mask: np.ndarray) -> PartnerTable:
        """Rows where ``mask`` is True."""
        m = np.asarray(mask, dtype=bool)
        assert self.synapse_type is not None
        return PartnerTable(
            self.pre_nm[m], self.post_nm[m], self.pre_segment[m], self.post_segment[m],
            self.score[m], self.synapse_id[m], self.synapse_type[m],
        )  # fmt: skip

    def to_annotations(self, offset_nm: Sequence[float] = (0.0, 0.0, 0.0)) -> Annotations:
        """CREMI annotations: one pre site per synapse id, one post site per row.

        Pre sites of rows sharing a ``synapse_id`` are merged at their first row's location
        (polyadic synapse). Locations are stored relative to ``offset_nm``.
        """
        off = np.asarray(_vec3(offset_nm, "offset_nm"))
        ids: list[int] = []
        types: list[str] = []
        locs: list[np.ndarray] = []
        partners: list[tuple[int, int]] = []
        pre_site: dict[int, int] = {}
        next_id = 0
        for row in range(len(self)):
            sid = int(self.synapse_id[row])
            if sid not in pre_site:
                pre_site[sid] = next_id
                ids.append(next_id)
                types.append(Annotations.PRE)
                locs.append(self.pre_nm[row] - off)
                next_id += 1
            ids.append(next_id)
            types.append(Annotations.POST)
            locs.append(self.post_nm[row] - off)
            partners.append((pre_site[sid], next_id))
            next_id += 1
        return Annotations(
            ids=np.asarray(ids, np.uint64),
            types=tuple(types),
            locations_nm=np.asarray(locs, np.float64).reshape(-1, 3),
            partners=np.asarray(partners, np.uint64).reshape(-1, 2),
            offset_nm=tuple(off),
        )

    @classmethod
    def from_annotations(cls, ann: Annotations) -> PartnerTable:
        """One row per partner pair; segment ids unknown (0), score 1; synapse id = pre site id."""
        world = ann.world_locations()
        index = {int(i): k for k, i in enumerate(ann.ids.tolist())}
        pre = [world[index[int(p)]] for p, _ in ann.partners]
        post = [world[index[int(q)]] for _, q in ann.partners]
        n = len(ann.partners)
        return cls(
            np.asarray(pre).reshape(-1, 3),
            np.asarray(post).reshape(-1, 3),
            np.zeros(n, np.uint64),
            np.zeros(n, np.uint64),
            np.ones(n),
            ann.partners[:, 0].copy(),
        )

    def to_dict(self) -> dict[str, Any]:
        assert self.synapse_type is not None
        return {
            "pre_nm": self.pre_nm.tolist(),
            "post_nm": self.post_nm.tolist(),
            "pre_segment": self.pre_segment.tolist(),
            "post_segment": self.post_segment.tolist(),
            "score": self.score.tolist(),
            "synapse_id": self.synapse_id.tolist(),
            "synapse_type": self.synapse_type.tolist(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PartnerTable:
        return cls(
            np.asarray(d["pre_nm"], np.float64),
            np.asarray(d["post_nm"], np.float64),
            np.asarray(d["pre_segment"], np.uint64),
            np.asarray(d["post_segment"], np.uint64),
            np.asarray(d["score"], np.float64),
            np.asarray(d["synapse_id"], np.uint64),
            np.asarray(d.get("synapse_type", [-1] * len(d["score"])), np.int64),
        )


@dataclass(frozen=True)
class Regions:
    """Calcium-imaging regions of interest, neurofinder layout.

    Each region is an (K, 2) integer array of (row, col) pixel coordinates.
    """

    coordinates: tuple[np.ndarray, ...]

    def __post_init__(self) -> None:
        regions = []
        for i, c in enumerate(self.coordinates):
            arr = np.asarray(c)
            if arr.size == 0:
                arr = np.zeros((0, 2), dtype=np.int64)
            if arr.ndim != 2 or arr.shape[1] != 2:
                raise DataError(f"region {i} must have shape (K, 2) (row, col), got {arr.shape}")
            integral = np.issubdtype(arr.dtype, np.integer)
            if not integral and (not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr))):
                raise DataError(f"region {i} has non-integer pixel coordinates")
            regions.append(arr.astype(np.int64))
        object.__setattr__(self, "coordinates", tuple(regions))

    def __len__(self) -> int:
        return len(self.coordinates)

    def centers(self) -> np.ndarray:
        """Mean (row, col) of each region, shape (N, 2)."""
        if not self.coordinates:
            return np.zeros((0, 2))
        return np.asarray([c.mean(axis=0) for c in self.coordinates], dtype=np.float64)

    def to_neurofinder(self) -> list[dict[str, Any]]:
        return [{"coordinates": c.tolist()} for c in self.coordinates]

    @classmethod
    def from_neurofinder(cls, items: Sequence[Mapping[str, Any]]) -> Regions:
        try:
            return cls(tuple(np.asarray(item["coordinates"]) for item in items))
        except (KeyError, TypeError) as exc:
            raise DataError(
                f"neurofinder regions need a 'coordinates' list per region: {exc}"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        return {"regions": self.to_neurofinder()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Regions:
        return cls.from_neurofinder(d["regions"])


@dataclass(frozen=True)
class ClusterAssignments:
    """A cluster label per synapse (``synapse_ids`` as in a :class:`PartnerTable`)."""

    synapse_ids: np.ndarray
    labels: np.ndarray
    embedding: np.ndarray | None = None

    def __post_init__(self) -> None:
        ids = _as_ids(self.synapse_ids, "clusters synapse_ids")
        labels = np.asarray(self.labels).reshape(-1)
        if labels.shape[0] != ids.shape[0]:
            raise DataError(
                f"clusters labels has {labels.shape[0]} entries, expected {ids.shape[0]}"
            )
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise DataError("clusters labels must be integers")
        object.__setattr__(self, "synapse_ids", ids)
        object.__setattr__(self, "labels", labels.astype(np.int64))
        if self.embedding is not None:
            emb = np.asarray(self.embedding, dtype=np.float64)
            if emb.ndim != 2 or emb.shape[0] != ids.shape[0]:
                raise DataError(f"clusters embedding must have shape (N, D), got {emb.shape}")
            object.__setattr__(self, "embedding", emb)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "synapse_ids": self.synapse_ids.tolist(),
            "labels": self.labels.tolist(),
        }
        if self.embedding is not None:
            d["embedding"] = self.embedding.tolist()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClusterAssignments:
        emb = d.get("embedding")
        return cls(
            np.asarray(d["synapse_ids"], np.uint64),
            np.asarray(d["labels"], np.int64),
            None if emb is None else np.asarray(emb),
        )


@dataclass(frozen=True)
class ScoreRecord:
    """Named metric values (floats and counts) from one scorer, plus free-form details."""

    metric: str
    values: Mapping[str, float]
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        vals: dict[str, float] = {}
        for key, value in self.values.items():
            try:
                vals[str(key)] = float(value)
            except (TypeError, ValueError):
                raise DataError(f"score {self.metric}.{key} is not a number: {value!r}") from None
        object.__setattr__(self, "values", vals)

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "values": dict(self.values), "details": dict(self.details)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScoreRecord:
        return cls(d["metric"], d["values"], d.get("details", {}))


@dataclass(frozen=True)
class SectionTransform:
    """Per-section in-plane translations, the aligner's output.

    ``shifts_nm[z] = (dy, dx)`` is the displacement (nm) applied to section ``z`` to align it:
    aligned(y, x) = original(y - dy, x - dx). :meth:`inverse` undoes it exactly.
    """

    shifts_nm: np.ndarray

    def __post_init__(self) -> None:
        arr = np.asarray(self.shifts_nm, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise DataError(
                f"transform shifts_nm must have shape (Z, 2) (dy, dx nm), got {arr.shape}"
            )
        if not np.all(np.isfinite(arr)):
            raise DataError("transform shifts_nm contains NaN or infinity")
        object.__setattr__(self, "shifts_nm", arr)

    def inverse(self) -> SectionTransform:
        return SectionTransform(-self.shifts_nm)

    def apply_to_points(
        self, points_nm: np.ndarray, offset_z_nm: float, voxel_z_nm: float
    ) -> np.ndarray:
        """Move world points (N, 3) by the shift of the section they lie in."""
        pts = np.array(points_nm, dtype=np.float64).reshape(-1, 3)
        z = np.clip(np.floor((pts[:, 0] - offset_z_nm) / voxel_z_nm).astype(int), 0,
                    len(self.shifts_nm) - 1)  # fmt: skip
        pts[:, 1:] += self.shifts_nm[z]
        return pts

    def to_dict(self) -> dict[str, Any]:
        return {"shifts_nm": self.shifts_nm.tolist()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SectionTransform:
        return cls(np.asarray(d["shifts_nm"], dtype=np.float64).reshape(-1, 2))


#: Artifact types that are stored as JSON documents (everything but Volume).
@dataclass(frozen=True)
class WrittenFile:
    """A file a writer stage produced (e.g. ``prediction.hdf`` in the run directory).

    Writers return one per file they write, so the run manifest lists it with its size and
    sha256, a fresh run removes the previous run's files, and ``--resume`` reruns the writer
    when the file is gone or changed.
    """

    path: str

    def __post_init__(self) -> None:
        if not self.path:
            raise DataError("a written file needs a path")
