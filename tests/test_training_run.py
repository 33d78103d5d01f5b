"""The training skeleton every trainer shares: device, budget, atomic checkpoints."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from synapse_toolkit.errors import ConfigError

torch = pytest.importorskip("torch")

from synapse_toolkit.nn.run import TrainingRun, select_device  # noqa: E402


def test_device_choice() -> None:
    assert select_device("cpu").type == "cpu"
    auto = select_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no usable CUDA device"):
            select_device("cuda")


def test_budget_and_seed() -> None:
    run = TrainingRun(seed=3, num_threads=1, time_limit_minutes=0.0005)
    a = torch.rand(3)
    assert not run.out_of_time() or run.elapsed > 0.03
    time.sleep(0.05)
    assert run.out_of_time() and "time limit reached at iteration 7" in run.budget_line(7)
    TrainingRun(seed=3, num_threads=1)
    assert torch.equal(a, torch.rand(3))  # same seed, same stream
    assert not TrainingRun(seed=0, num_threads=1).out_of_time()  # no budget: never out of time


def test_save_is_atomic_and_loads_safely(tmp_path: Path) -> None:
    from synapse_toolkit.nn.checkpoint import load_state

    path = TrainingRun.save({"state_dict": {"w": torch.ones(2)}, "iteration": 4}, tmp_path / "c.pt")
    assert load_state(path)["iteration"] == 4
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_mixed_precision_is_cuda_only_and_steps_like_plain_adam() -> None:
    from synapse_toolkit.nn.run import MixedPrecision

    cpu = MixedPrecision(True, torch.device("cpu"))
    assert not cpu.enabled and "CUDA only" in cpu.describe()
    assert MixedPrecision(False, "cpu").describe() == "float32"

    def trained(precision: MixedPrecision | None) -> torch.Tensor:
        torch.manual_seed(0)
        net = torch.nn.Conv3d(1, 2, 3)
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        x = torch.rand(2, 1, 5, 5, 5)
        for _ in range(3):
            if precision is None:
                loss = net(x).square().mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            else:
                with precision.autocast():
                    y = net(x)
                precision.step(y.float().square().mean(), opt)
        return net.weight.detach().clone()

    reference = trained(None)
    assert torch.equal(trained(cpu), reference)
    torch.manual_seed(0)
    assert not torch.equal(reference, torch.nn.Conv3d(1, 2, 3).weight)  # the steps did change it
