"""The phantom seed registry: roles are disjoint, training configs use registered training seeds,
and the benchmarks refuse to select on held-out seeds or to report on seen ones."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from synapse_toolkit.evaluation.phantom_seeds import (
    ROLES,
    check_report_seeds,
    check_selection_seeds,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("family", sorted(ROLES))
def test_roles_are_disjoint(family: str) -> None:
    roles = ROLES[family]  # type: ignore[index]
    assert not roles.training & roles.development
    assert not roles.training & roles.held_out
    assert not roles.development & roles.held_out


def _seed_lists(node: Any, path: str = "") -> list[tuple[str, list[int]]]:
    if isinstance(node, dict):
        return [x for k, v in node.items() for x in _seed_lists(v, f"{path}.{k}")]
    if path.endswith("seeds") and isinstance(node, list):
        return [(path, node)]
    return []


CONFIGS = sorted([*ROOT.glob("examples/train/*.toml"), *ROOT.glob("plugins/*/configs/*.toml")])


def test_training_configs_use_registered_seeds() -> None:
    """A config's training seeds are registered training seeds and its validation seeds are
    training or development seeds, of the family its generator belongs to."""
    checked = 0
    for config in CONFIGS:
        family = "clustering" if "cluster" in config.name else "em"
        roles = ROLES[family]  # type: ignore[index]
        for key, seeds in _seed_lists(tomllib.loads(config.read_text())):
            allowed = roles.training | (roles.development if "validation" in key else set())
            assert set(seeds) <= allowed, (config.name, key, sorted(set(seeds) - allowed))
            checked += 1
    assert checked >= 10  # the synapse and clustering configs carry seed lists


def test_selection_reads_development_seeds_only() -> None:
    check_selection_seeds([1201, 9091, 9601])
    for seed, role in ((9301, "held out"), (1001, "training"), (9901, "unused")):
        with pytest.raises(SystemExit, match=f"{seed} \\({role}\\)"):
            check_selection_seeds([1201, seed])
    check_selection_seeds([2101], family="clustering")
    with pytest.raises(SystemExit, match="3201"):
        check_selection_seeds([3201], family="clustering")


def test_reports_refuse_seen_seeds() -> None:
    check_report_seeds([9301, 9501, 3001])
    with pytest.raises(SystemExit, match=r"1201 \(development\).*--dev"):
        check_report_seeds([9301, 1201])
    check_report_seeds([1201], allow_development=True)
    with pytest.raises(SystemExit, match=r"1101 \(training\)"):
        check_report_seeds([1101], allow_development=True)
    with pytest.raises(SystemExit, match="2005"):
        check_report_seeds([2005], family="clustering")


def test_tuning_on_held_out_seeds_is_refused() -> None:
    """``eval_partners.py --tune`` chose settings on any seeds it was given until the registry."""
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "eval_partners.py"),
            "--tune",
            "--seeds",
            "9301",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "9301 (held out)" in proc.stderr
    assert "Traceback" not in proc.stderr
