"""ONNX Runtime sessions that use CUDA only when it really works (no torch here).

``onnxruntime-gpu`` lists ``CUDAExecutionProvider`` as available even when the CUDA/cuDNN libraries
are missing, then falls back to CPU with two lines of noise on stderr. So: silence the logger,
create the session with CUDA first, and read back which providers the session actually got.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from synapse_toolkit.errors import SyntkError

_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


def _ort():
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # errors only: no CUDA fallback noise
    return onnxruntime


def create_session(
    model: str | Path | bytes,
    *,
    providers: Sequence[str] | None = None,
    num_threads: int | None = None,
) -> Any:
    """An ``InferenceSession``: CUDA if it loads, else CPU (or exactly ``providers`` if given)."""
    ort = _ort()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if num_threads is not None:
        opts.intra_op_num_threads = int(num_threads)
        opts.inter_op_num_threads = 1
    src = model if isinstance(model, bytes) else str(model)
    if not isinstance(model, bytes) and not Path(model).exists():
        raise SyntkError(f"{model}: ONNX model not found")
    if providers is None:
        wanted = [_CUDA, _CPU] if _CUDA in ort.get_available_providers() else [_CPU]
    else:
        wanted = list(providers)
        unknown = [p for p in wanted if p not in ort.get_available_providers()]
        if unknown:
            raise SyntkError(f"providers {unknown}: not in this ONNX Runtime (it has "
                             f"{ort.get_available_providers()})")  # fmt: skip
    probing_cuda = _CUDA in wanted
    if probing_cuda:  # a CUDA provider that cannot load logs an ERROR line: silence it too
        ort.set_default_logger_severity(4)
        opts.log_severity_level = 4

    def cannot_load(exc: Exception) -> SyntkError:
        label = model if not isinstance(model, bytes) else "<bytes>"
        return SyntkError(f"{label}: cannot load ONNX model: {exc}")

    try:
        session = ort.InferenceSession(src, sess_options=opts, providers=wanted)
    except Exception as exc:
        if not (_CUDA in wanted and providers is None):
            raise cannot_load(exc) from exc
        try:  # CUDA failed outright: CPU only
            session = ort.InferenceSession(src, sess_options=opts, providers=[_CPU])
        except Exception as cpu_exc:
            raise cannot_load(cpu_exc) from None
    finally:
        if probing_cuda:
            ort.set_default_logger_severity(3)
    return session


def uses_cuda(session: Any) -> bool:
    """Whether the session really runs on CUDA (``get_providers`` after creation)."""
    return _CUDA in session.get_providers()


def model_metadata(session: Any) -> dict[str, Any]:
    """``metadata_props`` of the model, JSON-decoded where possible."""
    props = session.get_modelmeta().custom_metadata_map
    out: dict[str, Any] = {}
    for k, v in props.items():
        try:
            out[k] = json.loads(v)
        except (TypeError, ValueError):
            out[k] = v
    return out


def predictor(session: Any):
    """A function ``(1, C, z, y, x) float32 -> prediction`` for :func:`predict_tiled`."""
    name = session.get_inputs()[0].name

    def predict(x: np.ndarray) -> np.ndarray:
        return session.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]

    return predict
