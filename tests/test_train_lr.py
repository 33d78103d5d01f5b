"""A continued run (init_from with optimizer state) trains at the configured learning rate."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_init_from_uses_the_configured_lr(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from synapse_toolkit.cli._training import with_training_overrides
    from synapse_toolkit.nn.training import load_config, train
    from tests.test_training import _config

    cfg = load_config(_config(tmp_path, loss="bce"))
    first = with_training_overrides(cfg, iterations=2, lr=1e-3)
    train(first, log=lambda _: None)
    saved = torch.load(tmp_path / "run" / "latest.pt", weights_only=True)
    assert saved["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3)
    second = with_training_overrides(
        cfg, iterations=1, lr=1e-5, init_from=str(tmp_path / "run" / "latest.pt"),
        out_dir=str(tmp_path / "run2"),
    )  # fmt: skip
    train(second, log=lambda _: None)
    again = torch.load(tmp_path / "run2" / "latest.pt", weights_only=True)
    assert again["iteration"] == 3
    assert again["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-5)
