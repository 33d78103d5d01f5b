"""Growing a trained affinity model by auxiliary outputs (target.extra_offsets +
training.init_added_outputs): the old channels and the trunk carry over, new channels start as
the nearest-neighbour channel of their axis, and the run trains and checkpoints all of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from synapse_toolkit.errors import ConfigError


def test_extra_offsets_follow_the_nearest_neighbours() -> None:
    from synapse_toolkit.nn.training import TargetSpec

    spec = TargetSpec(extra_offsets=[(0, -9, 0), (0, 0, -9)])
    assert spec.offsets() == ((-1, 0, 0), (0, -1, 0), (0, 0, -1), (0, -9, 0), (0, 0, -9))
    with pytest.raises(ConfigError, match="extra_offsets"):
        TargetSpec(extra_offsets=[(0, -1, 0)]).offsets()


def test_init_added_outputs_grows_the_head(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from synapse_toolkit.cli._training import with_training_overrides
    from synapse_toolkit.nn.training import load_config, train
    from tests.test_training import _config

    cfg = load_config(_config(tmp_path, loss="bce"))
    first = with_training_overrides(cfg, iterations=2)
    train(first, log=lambda _: None)
    old = torch.load(tmp_path / "run" / "latest.pt", weights_only=True)
    grown = cfg.model_copy(
        update={"target": cfg.target.model_copy(update={"extra_offsets": [(0, 0, -3), (0, -3, 0)]})}
    )
    plain = with_training_overrides(
        grown, iterations=1, lr=0.0, init_from=str(tmp_path / "run" / "latest.pt"),
        out_dir=str(tmp_path / "run2"),
    )  # fmt: skip
    with pytest.raises(ConfigError, match="another model"):
        train(plain, log=lambda _: None)
    second = plain.model_copy(
        update={"training": plain.training.model_copy(update={"init_added_outputs": True})}
    )
    train(second, log=lambda _: None)
    new = torch.load(tmp_path / "run2" / "latest.pt", weights_only=True)
    w_old, w_new = old["state_dict"]["head.weight"], new["state_dict"]["head.weight"]
    assert w_new.shape[0] == 5 and new["model_config"]["out_channels"] == 5
    # a step at lr 0 changed nothing: the old channels first, then copies of x (0,0,-3), y (0,-3,0)
    assert torch.equal(w_new[:3], w_old)
    assert torch.equal(w_new[3], w_old[2]) and torch.equal(w_new[4], w_old[1])
    assert [list(o) for o in new["offsets"]][3:] == [[0, 0, -3], [0, -3, 0]]
    for k, v in old["state_dict"].items():
        if not k.startswith("head."):
            assert torch.equal(new["state_dict"][k], v)
