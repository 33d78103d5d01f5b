"""What the training commands share: overriding ``[training]`` keys from flags, and the one-line
error when torch is missing."""

from __future__ import annotations

from typing import Any

from synapse_toolkit.errors import SyntkError


def need_torch() -> None:
    """Raise one clear error line when torch (the ``train`` extra) is not installed."""
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise SyntkError("training needs torch: pip install 'synapse-toolkit[train]'") from exc


def with_training_overrides(cfg: Any, **values: Any) -> Any:
    """``cfg`` with the given ``training.<key>`` values replaced (None = keep the config's)."""
    updates = {k: v for k, v in values.items() if v is not None}
    if not updates:
        return cfg
    return cfg.model_copy(update={"training": cfg.training.model_copy(update=updates)})
