"""Export a prediction ensemble: checkpoints of one architecture as one ONNX model whose output
is the mean of theirs (Lakshminarayanan et al. 2017), so the stages and `syntk evaluate
isbi-select` run it like any other model. Unlike averaging weights
(`average_checkpoints.py`), averaging predictions does not need the members in one basin.

    python benchmarks/ensemble_checkpoints.py runs/sstem_ens/A.onnx \\
        runs/sstem_malis/it002000.pt runs/sstem_malis/it003000.pt runs/sstem_malis/it003375.pt
    syntk evaluate isbi-select --model runs/sstem_ens/A.onnx --sections 16-19 --threads 2
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from synapse_toolkit.errors import SyntkError


class MeanOfNets(nn.Module):
    """The elementwise mean of the members' outputs (same input, same output shape)."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise SyntkError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        first: Any = members[0]
        self.input_channels = int(getattr(first, "input_channels", first.config.in_channels))
        self.config = first.config  # export_model reads config.in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(dim=0)


def export_ensemble(checkpoints: Sequence[str | Path], out: str | Path) -> dict[str, Any]:
    """Export the mean of ``checkpoints`` (training checkpoints of one architecture) as one
    ONNX model, with the first checkpoint's metadata (offsets, intensity reference, input
    shape, the training config's ``[domain]``) and ``ensemble_of`` naming every member and its
    iteration. The waterz setting is chosen afterwards, on validation data, for the ensemble."""
    from synapse_toolkit.nn.export import checkpoint_metadata, export_model, load_checkpoint

    if not checkpoints:
        raise SyntkError("an ensemble needs at least one checkpoint")
    loaded = [load_checkpoint(p) for p in checkpoints]
    first_ckpt = loaded[0][1]
    for path, (_net, ckpt) in zip(checkpoints, loaded, strict=True):
        if ckpt["model_config"] != first_ckpt["model_config"]:
            raise SyntkError(f"{path}: not the same architecture as {checkpoints[0]}")
        if ckpt.get("offsets") != first_ckpt.get("offsets"):
            raise SyntkError(f"{path}: predicts other offsets than {checkpoints[0]}")
    meta = checkpoint_metadata(first_ckpt)
    del meta["iteration"]  # one per member, in ensemble_of
    meta["ensemble_of"] = [
        {"checkpoint": str(p), "iteration": c.get("iteration")}
        for p, (_n, c) in zip(checkpoints, loaded, strict=True)
    ]
    meta.update((first_ckpt.get("train_config") or {}).get("domain") or {})
    shape = first_ckpt.get("input_shape")
    if shape is None:
        raise SyntkError(f"{checkpoints[0]}: no input_shape stored")
    net = MeanOfNets([n for n, _c in loaded])
    return export_model(net, shape, out, metadata=meta)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("checkpoints", nargs="+")
    a = ap.parse_args()
    if a.out.exists():
        raise SystemExit(f"{a.out}: exists; not overwritten")
    info = export_ensemble(a.checkpoints, a.out)
    print(json.dumps({k: info[k] for k in ("path", "sha256", "bytes", "max_abs_diff")}))


if __name__ == "__main__":
    main()
