"""What the training commands share: overriding ``[training]`` keys from flags, the
``--resume`` and ``--overwrite`` flags, and the one-line error when torch is missing."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from synapse_toolkit.errors import SyntkError

#: every trainer's ``--resume`` (:func:`synapse_toolkit.nn.run.resume_from`)
ResumeOpt = Annotated[bool, typer.Option(
    "--resume", help="Continue an interrupted run from <out_dir>/latest.pt, exactly where it "
    "stopped, up to training.iterations in all (a fresh time budget).")]  # fmt: skip


#: the synapse trainers' and the cluster encoder's ``--overwrite``
#: (:func:`synapse_toolkit.nn.run.check_export`)
OverwriteOpt = Annotated[bool, typer.Option(
    "--overwrite", help="Let a new run replace the existing file its config exports to (the "
    "shipped configs export over the shipped models).")]  # fmt: skip


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
