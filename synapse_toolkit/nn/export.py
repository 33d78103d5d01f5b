"""Export a trained U-Net to ONNX (opset 20, weights embedded) and verify it against torch."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from synapse_toolkit.errors import DataError, SyntkError
from synapse_toolkit.fsio import sha256_file as sha256_of

OPSET = 20
TOLERANCE = 1e-4


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """torch's ONNX exporter logs a line per torchvision operator it skips and warns about its
    own deprecated internals on every export: neither concerns the user, so both are held back
    (errors still raise)."""
    import logging
    import warnings

    exporter = logging.getLogger("torch.onnx")
    level = exporter.level
    exporter.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        exporter.setLevel(level)


def export_model(
    net: Any,
    input_shape: Sequence[int],
    out_path: str | Path,
    *,
    metadata: dict[str, Any] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``net`` as ONNX for a fixed input tile ``(1, C, *input_shape)``.

    The file is self-contained (``external_data=False``), carries ``metadata`` (JSON values under
    ``metadata_props``), is written atomically, and is checked: ONNX Runtime output vs torch
    output on a random input must agree within 1e-4 (max abs; times the largest |output| when
    that exceeds 1), else :class:`SyntkError`.
    """
    import onnx
    import torch

    out_path = Path(out_path)
    net = net.eval().cpu()
    cin = int(getattr(net, "input_channels", net.config.in_channels))
    shape = tuple(int(s) for s in input_shape)
    if hasattr(net, "is_valid_input_shape") and not net.is_valid_input_shape(shape):
        raise SyntkError(
            f"input shape {list(shape)} is not valid for this U-Net; "
            f"try {list(net.valid_input_shape(shape))}"
        )
    x = torch.from_numpy(np.random.default_rng(seed).random((1, cin, *shape), dtype=np.float32))
    with torch.no_grad():
        expected = net(x).numpy()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        raw_path = Path(tmp) / "model.onnx"
        with _quiet_exporter():
            torch.onnx.export(
                net,
                (x,),
                str(raw_path),
                input_names=["raw"],
                output_names=["prediction"],
                opset_version=OPSET,
                external_data=False,
                dynamo=True,
                verbose=False,
            )
        model = onnx.load(str(raw_path))
        meta = {
            "input_shape": list(shape),
            "output_shape": list(expected.shape[2:]),
            "in_channels": cin,
            "out_channels": int(expected.shape[1]),
            **(metadata or {}),
        }
        for key, value in meta.items():
            entry = model.metadata_props.add()
            entry.key = key
            entry.value = json.dumps(value)
        final_tmp = Path(tmp) / "final.onnx"
        onnx.save_model(model, str(final_tmp), save_as_external_data=False)
        from synapse_toolkit.onnx_runtime import create_session

        session = create_session(final_tmp, providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        diff = float(np.max(np.abs(got - expected)))
        # relative to the output's magnitude (outputs in nm reach hundreds; float32 rounding
        # grows with them); 1e-4 absolute for outputs within [-1, 1]
        limit = TOLERANCE * max(1.0, float(np.max(np.abs(expected))))
        if not diff < limit:
            raise SyntkError(
                f"{out_path}: ONNX output differs from torch by {diff:.3g} (> {limit:.3g})"
            )
        os.replace(final_tmp, out_path)
    return {
        "path": str(out_path),
        "sha256": sha256_of(out_path),
        "bytes": out_path.stat().st_size,
        "max_abs_diff": diff,
        "opset": OPSET,
        **meta,
    }


def load_checkpoint(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """The U-Net and the checkpoint dict written by :mod:`synapse_toolkit.nn.training`."""

    from synapse_toolkit.nn.checkpoint import load_state
    from synapse_toolkit.nn.unet import UNet3D, UNetConfig

    path = Path(path)
    ckpt = load_state(path)
    try:
        net = UNet3D(UNetConfig.from_dict(ckpt["model_config"]))
        net.load_state_dict(ckpt["state_dict"])
    except (KeyError, RuntimeError, OSError, ValueError) as exc:
        raise SyntkError(f"{path}: not a syntk checkpoint ({exc})") from exc
    return net.eval(), ckpt


def training_intensity_reference(train_config: dict[str, Any]) -> dict[str, Any] | None:
    """Grey-value quantiles of the training volumes (their ROIs) and the input scale they got.

    ``None`` when the config lists no volumes. Paths resolve as in training (from the working
    directory); a missing file is an error naming it.
    """
    from synapse_toolkit.inference.intensity import quantiles, unit_scale
    from synapse_toolkit.nn.training import VolumeSpec, load_volume

    specs = [VolumeSpec(**v) for v in train_config.get("data", {}).get("volumes", [])]
    if not specs:
        return None
    raws = [load_volume(spec, need_labels=False)[0] for spec in specs]
    dtypes = {r.dtype for r in raws}
    return {
        "quantiles": [round(float(q), 6) for q in quantiles(raws)],
        # as synapse_toolkit.nn.augment scales crops (a mix of dtypes is taken as is)
        "scale": unit_scale(dtypes.pop()) if len(dtypes) == 1 else 1.0,
        "volumes": [spec.raw for spec in specs],
    }


def export_checkpoint(
    checkpoint: str | Path,
    out_path: str | Path,
    input_shape: Sequence[int] | None = None,
    intensity_reference: bool = True,
) -> dict[str, Any]:
    """Export a training checkpoint; the tile shape defaults to the training input shape.

    With ``intensity_reference``, the training volumes' grey-value quantiles go into the
    metadata, so inference can match other volumes' intensities to them
    (:mod:`synapse_toolkit.inference.intensity`).
    """
    net, ckpt = load_checkpoint(checkpoint)
    shape = input_shape or ckpt.get("input_shape")
    if shape is None:
        raise SyntkError(f"{checkpoint}: no input_shape stored; pass one")
    try:
        meta = checkpoint_metadata(ckpt, intensity_reference=intensity_reference)
    except DataError as exc:  # the training volumes moved or are not on this machine
        raise DataError(
            f"{exc} (a training volume of {checkpoint}, read for the intensity reference; "
            "--no-intensity-reference exports without it)"
        ) from None
    return export_model(net, shape, out_path, metadata=meta)


def checkpoint_metadata(
    ckpt: dict[str, Any], *, intensity_reference: bool = True
) -> dict[str, Any]:
    """The ONNX metadata a training checkpoint contributes: offsets, iteration, model config
    and (with ``intensity_reference``) its training volumes' grey-value quantiles."""
    meta = {
        "offsets": ckpt.get("offsets"),
        "iteration": ckpt.get("iteration"),
        "model_config": ckpt["model_config"],
    }
    if intensity_reference and ckpt.get("train_config"):
        reference = training_intensity_reference(ckpt["train_config"])
        if reference is not None:
            meta["intensity_reference"] = reference
    return meta


def update_metadata(
    path: str | Path, updates: dict[str, Any], *, sidecar: bool = True
) -> dict[str, Any]:
    """Set ``metadata_props`` entries (JSON values) of the ONNX model at ``path`` in place.

    The graph and its weights are left as they are (checked: every initializer is byte-identical
    after the rewrite); the file is replaced atomically and, with ``sidecar``, its
    ``<name>.sha256`` is rewritten. Returns the path, new sha256, bytes and the keys set.
    """
    import onnx

    from synapse_toolkit.fsio import atomic_write_text

    path = Path(path)
    if not path.is_file():
        raise SyntkError(f"{path}: model not found")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError and others for a damaged file
        raise SyntkError(f"{path}: cannot read ONNX model ({exc})") from exc
    before = [t.SerializeToString() for t in model.graph.initializer]
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in updates]
    del model.metadata_props[:]
    for key, value in [*kept, *((k, json.dumps(v)) for k, v in updates.items())]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    if [t.SerializeToString() for t in model.graph.initializer] != before:
        raise SyntkError(f"{path}: weights changed while editing metadata")
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        out = Path(tmp) / path.name
        onnx.save_model(model, str(out), save_as_external_data=False)
        os.replace(out, path)
    sha = sha256_of(path)
    if sidecar:
        atomic_write_text(path.with_suffix(".sha256"), f"{sha}  {path.name}\n")
    return {"path": str(path), "sha256": sha, "bytes": path.stat().st_size, "set": list(updates)}
