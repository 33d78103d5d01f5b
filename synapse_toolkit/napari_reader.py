"""napari reader contribution (npe2, ``napari.yaml``): syntk run directories, CREMI files and
syntk zarr volumes open by drag and drop, with the layers of ``syntk view``."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from synapse_toolkit.errors import SyntkError
from synapse_toolkit.viewer import layer_specs

LayerData = tuple[Any, dict[str, Any], str]


def _readable(path: Path) -> bool:
    if path.is_dir():
        return (path / "manifest.json").is_file() or (
            path.name.endswith(".zarr") and (path / "zarr.json").is_file()
        )
    return path.suffix.lower() in (".hdf", ".h5", ".hdf5", ".cremi")


def get_reader(path: str | os.PathLike[str] | list[Any]) -> Callable[[Any], list[LayerData]] | None:
    """The reader for ``path``, or None when it is not something syntk reads (napari then asks
    the next plugin)."""
    if isinstance(path, list):
        return None
    return read if _readable(Path(path)) else None


def read(path: str | os.PathLike[str]) -> list[LayerData]:
    """napari layer data tuples ``(data, kwargs, kind)`` for ``path``."""
    try:
        specs = layer_specs(path)
    except SyntkError:
        return []
    out: list[LayerData] = []
    for s in specs:
        out.append((s.data, {"name": s.name, **s.kwargs}, s.kind))
    return out
