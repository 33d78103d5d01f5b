"""Every training config shipped in the repository validates with the loader its command uses,
so a change to a trainer's schema cannot leave a documented reproduction command broken."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted([*ROOT.glob("examples/train/*.toml"), *ROOT.glob("plugins/*/configs/*.toml")])


def _loader(path: Path) -> Callable[[Path], Any]:
    """`syntk train affinities` for configs without a `kind`, except the pruner's (whose kind
    is the `syntk train-synapses pruner` argument); `syntk train-synapses KIND` otherwise."""
    from synapse_toolkit.nn.training import load_config
    from synapse_toolkit.synapses.train_cluster_encoder import load_cluster_config
    from synapse_toolkit.synapses.train_detectors import load_detector_config
    from synapse_toolkit.synapses.train_pruner import load_pruner_config
    from synapse_toolkit.synapses.train_synful import load_synful_config

    kind = tomllib.loads(path.read_text()).get("kind")
    if kind is None:
        return load_pruner_config if "pruner" in path.stem else load_config
    return {
        "clefts": load_detector_config,
        "polarity": load_detector_config,
        "synful": load_synful_config,
        "cluster-encoder": load_cluster_config,
    }[kind]


def test_configs_are_found() -> None:
    assert len(CONFIGS) >= 20


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_training_config_validates(path: Path) -> None:
    _loader(path)(path)
