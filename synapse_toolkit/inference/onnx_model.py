"""The one ONNX runner every dense detector uses: a model file, its metadata, and tiled
prediction over a volume of any size (no torch).

:class:`OnnxModel` opens the session (CUDA when it really loads, CPU otherwise), reads the tile
shapes, channel count and affinity offsets from the model's metadata (falling back to the
graph's fixed shapes), and :meth:`OnnxModel.predict` tiles a (z, y, x) array-like into a
zero-initialised (C, z, y, x) output: grey values matched to the model's intensity reference,
optional 8-mirroring test-time augmentation, blended overlapping tiles.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from synapse_toolkit.errors import DataError, PluginError


class OnnxModel:
    """An exported U-Net with its metadata, ready to predict volumes tile by tile."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        n_threads: int = 2,
        providers: Sequence[str] | None = None,
    ) -> None:
        from synapse_toolkit.onnx_runtime import create_session, model_metadata

        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"{self.path}: model file not found")
        self.session = create_session(self.path, providers=providers, num_threads=n_threads)
        self.metadata: dict[str, Any] = model_metadata(self.session)
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        in_shape = self.metadata.get("input_shape") or inp.shape[2:]
        out_shape = self.metadata.get("output_shape") or out.shape[2:]
        channels = self.metadata.get("out_channels") or out.shape[1]
        if not all(isinstance(s, int) for s in (*in_shape, *out_shape, channels)):
            raise PluginError(f"{self.path}: no fixed tile shape in its metadata or graph "
                              f"(input {inp.shape}, output {out.shape})")  # fmt: skip
        if len(in_shape) != 3 or len(out_shape) != 3:
            raise PluginError(f"{self.path}: tiles must be (z, y, x), got input {list(in_shape)} "
                              f"and output {list(out_shape)}")  # fmt: skip
        self.input_shape = (int(in_shape[0]), int(in_shape[1]), int(in_shape[2]))
        self.output_shape = (int(out_shape[0]), int(out_shape[1]), int(out_shape[2]))
        self.out_channels = int(channels)
        self.kind = str(self.metadata.get("kind", ""))

    @property
    def uses_cuda(self) -> bool:
        from synapse_toolkit.onnx_runtime import uses_cuda

        return bool(uses_cuda(self.session))

    def default_overlap(self) -> tuple[int, int, int]:
        """Tile overlap from the metadata (larger for ``same``-padded models)."""
        z, y, x = (int(v) for v in self.metadata.get("overlap", (2, 8, 8)))
        return (z, y, x)

    def predict(
        self,
        source: Any,
        out: Any | None = None,
        overlap: Sequence[int] | None = None,
        progress: Callable[[int], None] | None = None,
        tta_offsets: Sequence[Sequence[int]] | None = None,
        *,
        tta_vectors: Sequence[Sequence[int]] = (),
        match_intensity: bool = True,
        match_spectrum: bool = True,
        intensity_scale: float | None = None,
        pad_mode: str = "reflect",
        intensity_source: Any | None = None,
        channels: Sequence[int] | None = None,
        block_shape: Sequence[int] | None = None,
        scratch_dir: str | os.PathLike[str] | None = None,
    ) -> Any:
        """Predict ``source`` ((z, y, x) array-like) into ``out`` ((C, z, y, x),
        zero-initialised; a new float32 array if None). Grey values are matched to the model's
        intensity reference when it has one (``match_intensity``), else scaled by
        ``intensity_scale`` (default: one over the integer type's maximum, 1 for floats:
        :func:`~synapse_toolkit.inference.intensity.unit_scale`); sections are first filtered to the
        model's spectrum reference when it has one (``match_spectrum``). ``tta_offsets`` (one
        affinity offset per output channel) averages the 8 mirrorings; ``tta_vectors``: channel
        triplets of vector components, negated along the mirrored axes. ``intensity_source`` is
        the array whose grey values define the matching and default scale when ``source`` is a
        resampled copy.
        ``channels`` keeps only these output channels (``out`` then has that many);
        ``block_shape`` and ``scratch_dir`` are passed to
        :func:`~synapse_toolkit.inference.tiled.predict_tiled`."""
        from synapse_toolkit.inference.intensity import model_preprocess
        from synapse_toolkit.inference.tiled import flip_tta, predict_tiled
        from synapse_toolkit.onnx_runtime import predictor

        shape = tuple(int(s) for s in source.shape[-3:])
        keep = list(channels) if channels is not None else None
        if out is None:
            out = np.zeros((self.out_channels if keep is None else len(keep), *shape), np.float32)
        predict = predictor(self.session)
        if tta_offsets is not None:
            predict = flip_tta(predict, tta_offsets, vectors=tta_vectors)
        if keep is not None:
            full = predict

            def predict(x: np.ndarray) -> np.ndarray:
                return np.asarray(full(x))[:, keep]

        prep = model_preprocess(
            self.metadata, source if intensity_source is None else intensity_source,
            intensity_scale=intensity_scale, match_intensity=match_intensity,
            match_spectrum=match_spectrum,
        )  # fmt: skip
        predict_tiled(
            predict, source, out, self.input_shape, self.output_shape,
            overlap=tuple(overlap) if overlap is not None else self.default_overlap(),
            progress=progress, preprocess=prep, pad_mode=pad_mode, block_shape=block_shape,
            scratch_dir=scratch_dir,
        )  # fmt: skip
        return out
