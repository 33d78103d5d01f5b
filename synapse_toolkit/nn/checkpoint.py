"""Loading torch checkpoints without running code from them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from synapse_toolkit.errors import SyntkError


def load_state(path: str | Path) -> dict[str, Any]:
    """A checkpoint dict read with ``torch.load(weights_only=True)``: tensors, numbers, strings
    and containers only. A file that needs pickle to load is refused with one line."""
    import pickle
    import re

    import torch

    path = Path(path)
    if not path.is_file():
        raise SyntkError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        with path.open("rb") as f:
            pickled = f.read(1) == b"\x80"  # a pickle stream (protocol >= 2) outside a zip
        if found is None and not pickled:  # text, a truncated file, ...: no pickle at all
            raise SyntkError(f"{path}: not a readable torch checkpoint") from None
        why = f"it asks for {found.group(1)}" if found else "not a plain-weights torch checkpoint"
        raise SyntkError(
            f"{path}: refusing to load a checkpoint that needs pickle ({why})"
        ) from None
    except Exception as exc:  # any other failure: not a torch file (text, truncated, ...)
        raise SyntkError(
            f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(state, dict):
        raise SyntkError(f"{path}: not a syntk checkpoint (top level is {type(state).__name__})")
    return state
