"""Run the synapse U-Nets (ONNX) over volumes, tile by tile (no torch)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from synapse_toolkit.errors import DataError


class DenseModel:
    """An exported synapse U-Net (cleft probability or signed proximity) with its metadata."""

    def __init__(self, path: str | os.PathLike[str], n_threads: int = 2) -> None:
        from synapse_toolkit.onnx_runtime import create_session, model_metadata

        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"{self.path}: model file not found")
        self.session = create_session(self.path, num_threads=n_threads)
        self.metadata: dict[str, Any] = model_metadata(self.session)
        try:
            self.input_shape = tuple(int(v) for v in self.metadata["input_shape"])
            self.output_shape = tuple(int(v) for v in self.metadata["output_shape"])
        except KeyError as exc:
            raise DataError(
                f"{self.path}: ONNX metadata lacks {exc} (not a syntk model?)"
            ) from None
        self.kind = str(self.metadata.get("kind", ""))

    def predict(
        self,
        source: Any,
        out: Any | None = None,
        overlap: tuple[int, int, int] | None = None,
        progress: Any = None,
        tta_offsets: Sequence[Sequence[int]] | None = None,
    ) -> Any:
        """Predict ``source`` ((z, y, x) array-like, uint8 or float in [0, 1]; matched to the
        model's intensity reference when it has one) into ``out``
        ((C, z, y, x), zero-initialised; a new float32 array if None). ``overlap`` defaults to
        the model's metadata (larger for ``same``-padded models, whose tile borders are weak).
        ``tta_offsets`` (one affinity offset per output channel) averages the 8 mirrorings
        (:func:`~synapse_toolkit.inference.tiled.flip_tta`)."""
        from synapse_toolkit.inference.intensity import model_preprocess
        from synapse_toolkit.inference.tiled import flip_tta, predict_tiled
        from synapse_toolkit.onnx_runtime import predictor

        shape = tuple(int(s) for s in source.shape[-3:])
        if out is None:
            out = np.zeros((int(self.metadata.get("out_channels", 1)), *shape), np.float32)
        if overlap is None:
            overlap = tuple(int(v) for v in self.metadata.get("overlap", (2, 8, 8)))  # type: ignore[assignment]
        predict = predictor(self.session)
        if tta_offsets is not None:
            predict = flip_tta(predict, tta_offsets)
        predict_tiled(
            predict, source, out, self.input_shape, self.output_shape,
            overlap=overlap, progress=progress, preprocess=model_preprocess(self.metadata, source),
        )  # fmt: skip
        return out
