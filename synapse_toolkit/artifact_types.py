"""The one registry of artifact types: what a port can carry, how it is stored, what it must be.

A port declares one of these names (``Port("affinities", ...)``). Volume types carry a role
that the pipeline checks twice: when a config is validated (a wire must connect compatible
types) and when a stage returns (the value must fit its port: dimensions, channels, dtype).

==============  =========  =================================================================
type            storage    what it is
==============  =========  =================================================================
``intensity``   volume     an image: EM grey values, a calcium projection; (z, y, x)
``labels``      volume     integer ids, (z, y, x): segmentations, clefts, fragments
``affinities``  volume     (C >= 3, z, y, x) affinities, channel c = offset c
``map``         volume     a float prediction map (probability, proximity, boundary),
                           (z, y, x) or (C, z, y, x)
``volume``      volume     any volume whose role is not stated (accepted where any volume
                           is wanted, and wanted where any volume fits)
``annotations`` json       CREMI point annotations (:class:`~synapse_toolkit.data.Annotations`)
``partners``    json       a :class:`~synapse_toolkit.data.PartnerTable`
``regions``     json       calcium ROIs (:class:`~synapse_toolkit.data.Regions`)
``clusters``    json       :class:`~synapse_toolkit.data.ClusterAssignments`
``scores``      json       :class:`~synapse_toolkit.data.ScoreRecord`
``transform``   json       :class:`~synapse_toolkit.data.SectionTransform`
``file``        file       a file a writer wrote (:class:`~synapse_toolkit.data.WrittenFile`)
==============  =========  =================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from synapse_toolkit import data

Storage = Literal["volume", "json", "file"]
DtypeFamily = Literal["any", "float", "integer"]


@dataclass(frozen=True)
class ArtifactType:
    """One artifact type: its Python class, storage and the shape rules of its volumes."""

    name: str
    cls: type
    storage: Storage
    doc: str
    ndims: tuple[int, ...] = ()  # allowed numbers of dimensions (volumes)
    dtype: DtypeFamily = "any"
    min_channels: int | None = None  # for channels-first volumes

    @property
    def is_volume(self) -> bool:
        return self.storage == "volume"

    def dtype_ok(self, dtype: np.dtype) -> bool:
        if self.dtype == "float":
            return bool(np.issubdtype(dtype, np.floating))
        if self.dtype == "integer":
            return bool(np.issubdtype(dtype, np.integer))
        return bool(np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_))


def _types() -> dict[str, ArtifactType]:
    v = data.Volume
    items = [
        ArtifactType("intensity", v, "volume", "image intensities (z, y, x)", (3,)),
        ArtifactType("labels", v, "volume", "integer ids (z, y, x)", (3,), "integer"),
        ArtifactType("affinities", v, "volume", "affinities (C>=3, z, y, x)", (4,), min_channels=3),
        ArtifactType("map", v, "volume", "float prediction map", (3, 4), "float"),
        ArtifactType("volume", v, "volume", "a volume of unstated role", (3, 4)),
        ArtifactType("annotations", data.Annotations, "json", "CREMI annotations"),
        ArtifactType("partners", data.PartnerTable, "json", "synaptic partner table"),
        ArtifactType("regions", data.Regions, "json", "calcium ROIs"),
        ArtifactType("clusters", data.ClusterAssignments, "json", "synapse clusters"),
        ArtifactType("scores", data.ScoreRecord, "json", "metric values"),
        ArtifactType("transform", data.SectionTransform, "json", "per-section shifts (nm)"),
        ArtifactType("file", data.WrittenFile, "file", "a file written by a writer"),
    ]
    return {t.name: t for t in items}


#: Every artifact type by name.
ARTIFACT_TYPES: dict[str, ArtifactType] = _types()

#: Types stored as JSON documents, by name (how the artifact store reads them back).
JSON_TYPES: dict[str, Any] = {n: t.cls for n, t in ARTIFACT_TYPES.items() if t.storage == "json"}

#: Volume types (stored as zarr, or referenced in place).
VOLUME_TYPES = frozenset(n for n, t in ARTIFACT_TYPES.items() if t.is_volume)


def get(name: str) -> ArtifactType:
    """The artifact type ``name``; a clear error naming the choices otherwise."""
    try:
        return ARTIFACT_TYPES[name]
    except KeyError:
        raise ValueError(
            f"unknown artifact type {name!r}; choose from {', '.join(ARTIFACT_TYPES)}"
        ) from None


def compatible(produced: str, wanted: str) -> bool:
    """Whether an output of type ``produced`` may feed an input of type ``wanted``."""
    if produced == wanted:
        return True
    return produced in VOLUME_TYPES and wanted in VOLUME_TYPES and "volume" in (produced, wanted)
