"""Average the weights of training checkpoints of one run (uniform; SWA-style, Izmailov et al.
2018) into a new checkpoint whose other entries (config, validation record) are the middle
checkpoint's. Only for networks without normalisation statistics, like the affinity U-Nets.

    python benchmarks/average_checkpoints.py runs/sstem_swa/A.pt \\
        runs/sstem_malis/it002000.pt runs/sstem_malis/it002500.pt \\
        runs/sstem_malis/it003000.pt runs/sstem_malis/it003375.pt
    syntk evaluate isbi-export runs/sstem_swa/A.pt runs/sstem_swa/A.onnx
    syntk evaluate isbi-select --model runs/sstem_swa/A.onnx --sections 16-19 --threads 2
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from synapse_toolkit.errors import SyntkError
from synapse_toolkit.nn.checkpoint import load_state


def average(paths: list[str]) -> dict[str, Any]:
    states = [load_state(p) for p in paths]
    keys = set(states[0]["state_dict"])
    for p, s in zip(paths, states, strict=True):
        if set(s["state_dict"]) != keys:
            raise SyntkError(f"{p}: not the same network as {paths[0]}")
        if any("running_mean" in k for k in s["state_dict"]):
            raise SyntkError(
                f"{p}: has normalisation statistics; averaging would need them re-estimated"
            )
    out = dict(states[len(states) // 2])
    out.pop("optimizer", None)
    out["state_dict"] = {
        k: sum(s["state_dict"][k].float() for s in states) / len(states) for k in out["state_dict"]
    }
    out["averaged_from"] = list(paths)
    return out


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("checkpoints", nargs="+")
    a = ap.parse_args()
    if a.out.exists():
        raise SystemExit(f"{a.out}: exists; not overwritten")
    torch.save(average(a.checkpoints), a.out)


if __name__ == "__main__":
    main()
