"""Resolving a stage's model: by registry name (pinned there) or by path (checked, or recorded).

Every detector resolves its ONNX file here, so no model runs unverified:

- a registry name goes through :func:`synapse_toolkit.datasets.model_path`, which re-hashes the
  file against the registry's sha256;
- a path is checked against an explicit ``sha256`` option or its ``<file>.sha256`` sidecar;
- an unpinned path is hashed, the hash is returned for the run manifest, and one notice line is
  logged. The pipeline's fingerprint includes the hash of every file option, so ``--resume``
  reruns a stage whose model file changed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synapse_toolkit.errors import DataError
from synapse_toolkit.fsio import sha256_file

_HEX = set("0123456789abcdef")


@dataclass(frozen=True)
class ResolvedModel:
    """A verified model file and how it was pinned (``"registry"``, ``"sha256"``,
    ``"sidecar"`` or ``"unpinned"``)."""

    path: Path
    sha256: str
    pinned_by: str

    def as_record(self) -> dict[str, str]:
        """What a stage notes about its model in the run manifest (``record("model", …)``)."""
        return {"path": str(self.path), "sha256": self.sha256, "pinned_by": self.pinned_by}


def sidecar_sha256(model_file: Path) -> str | None:
    """The hash in ``<model>.sha256`` (first word), or None if there is no sidecar."""
    side = model_file.with_suffix(".sha256")
    if not side.exists():
        return None
    words = side.read_text(encoding="utf-8", errors="replace").split()
    if not words or len(words[0]) != 64 or not set(words[0].lower()) <= _HEX:
        raise DataError(f"{side}: not a sha256 sidecar (expected 64 hex digits first)")
    return words[0].lower()


def resolve_model(
    who: str,
    *,
    name: str | None = None,
    path: Path | None = None,
    sha256: str | None = None,
    logger: logging.Logger | None = None,
) -> ResolvedModel:
    """The verified model for stage ``who``; raises DataError naming the file on a mismatch."""
    if path is None:
        if not name:
            raise DataError(f"{who}: no model given (set `model` or `model_path`)")
        from synapse_toolkit.datasets import get_registry, model_path

        file = model_path(name)
        return ResolvedModel(file, str(get_registry().get(name).sha256), "registry")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{who}: model file {path} not found")
    expected, how = (sha256.lower(), "sha256") if sha256 else (sidecar_sha256(path), "sidecar")
    actual = sha256_file(path)
    if expected is None:
        (logger or logging.getLogger("syntk")).warning(
            "%s: model %s is not pinned (no sha256 option or sidecar); recorded sha256 %s",
            who, path, actual,
        )  # fmt: skip
        return ResolvedModel(path, actual, "unpinned")
    if actual != expected:
        raise DataError(f"{who}: {path} does not match its sha256 {expected} (got {actual})")
    return ResolvedModel(path, actual, how)


def names_a_file(model: str) -> bool:
    """Whether a model option names a file (an ``.onnx`` path or any existing path), not a
    registry model."""
    p = Path(model)
    return p.suffix == ".onnx" or p.exists()


def resolve_name_or_path(who: str, model: str) -> ResolvedModel:
    """:func:`resolve_model` for an option that takes a registry name or a file path."""
    if names_a_file(model):
        return resolve_model(who, path=Path(model))
    return resolve_model(who, name=model)


def bundled_model_entry(
    name: str, package: str, models_dir: Path, file: str, **fields: Any
) -> dict[str, Any] | None:
    """The registry entry of a model file a plugin ships in ``models_dir`` beside its
    ``.sha256`` sidecar, or None while the file (or its sidecar) is absent."""
    path = models_dir / file
    sha = sidecar_sha256(path) if path.exists() else None
    if sha is None:
        return None
    return {"name": name, "kind": "model", "package": package, "path": f"models/{file}",
            "sha256": sha, "size": path.stat().st_size, "licence": "BSD-3-Clause",
            **fields}  # fmt: skip
