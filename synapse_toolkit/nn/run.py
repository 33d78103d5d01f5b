"""What every trainer shares: device choice (CUDA when it really works, else CPU), seeding,
thread count, a wall-clock and CPU-time budget, mixed precision, and atomic checkpoint writes.

A trainer makes one :class:`TrainingRun` from its config, moves its network and batches to
``run.device``, asks ``run.out_of_time()`` after each step and saves checkpoints with
``run.save``. Export does not care where training ran: checkpoints hold CPU tensors.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import model_validator

from synapse_toolkit.config import StrictModel
from synapse_toolkit.errors import ConfigError

Device = Literal["auto", "cpu", "cuda"]


def select_device(preference: Device = "auto") -> Any:
    """``cuda`` when asked or (``auto``) when a CUDA device really runs a kernel; else ``cpu``."""
    import torch

    if preference == "cpu":
        return torch.device("cpu")
    usable = False
    if torch.cuda.is_available():
        try:
            torch.zeros(1, device="cuda").add_(1)
            usable = True
        except RuntimeError:
            usable = False
    if preference == "cuda" and not usable:
        raise ConfigError("training.device = 'cuda' but no usable CUDA device (use 'auto')")
    return torch.device("cuda" if usable else "cpu")


class DeviceOptions(StrictModel):
    """Where a trainer runs: the ``[training]`` keys of every trainer's section."""

    #: "auto": CUDA when a device really works, else CPU
    device: Device = "auto"
    #: on CUDA, forward passes in float16 with loss scaling (:class:`MixedPrecision`); losses
    #: and weights stay float32; ignored on CPU
    mixed_precision: bool = False


class RunSection(DeviceOptions):
    """The ``[training]`` fields every synapse-side trainer shares (each trainer's section
    subclasses it and may change the defaults)."""

    iterations: int = 3000
    time_limit_minutes: float | None = 25.0
    batch_size: int = 1
    lr: float = 1e-3
    seed: int = 0
    num_threads: int = 2
    log_every: int = 20
    out_dir: str = "runs/train"
    onnx: str | None = None  # where to export (default: <out_dir>/model.onnx)

    @model_validator(mode="after")
    def _one_starting_point(self) -> Self:
        """A run starts from at most one of its section's ``init_*`` weights (a checkpoint, an
        exported model, an exported trunk): each would overwrite what the other loaded."""
        given = [f"training.{k}" for k in INIT_FIELDS if getattr(self, k, None)]
        if len(given) > 1:
            raise ValueError(f"give one starting point, not {' and '.join(given)}")
        return self


#: the ``[training]`` keys that name starting weights (those a section has)
INIT_FIELDS = ("init_checkpoint", "init_from_model", "init_trunk_from")


class TrainingRun:
    """Device, seed, threads and time budget of one training run."""

    def __init__(
        self,
        *,
        seed: int,
        num_threads: int,
        time_limit_minutes: float | None = None,
        cpu_time_limit_minutes: float | None = None,
        device: Device = "auto",
    ) -> None:
        import torch

        torch.set_num_threads(num_threads)
        torch.manual_seed(seed)
        self.device = select_device(device)
        self.time_limit_minutes = time_limit_minutes
        self.cpu_time_limit_minutes = cpu_time_limit_minutes
        self.restart_clock()

    def restart_clock(self) -> None:
        """Start the budget now (e.g. after data preparation that should not count)."""
        self._wall0 = time.time()
        self._cpu0 = time.process_time()

    @property
    def elapsed(self) -> float:
        """Wall seconds since the clock started."""
        return time.time() - self._wall0

    @property
    def cpu_used(self) -> float:
        """CPU seconds of this process (all threads) since the clock started."""
        return time.process_time() - self._cpu0

    def out_of_time(self) -> bool:
        """Whether the wall-clock or CPU-time budget is spent."""
        wall = self.time_limit_minutes is not None and self.elapsed > 60 * self.time_limit_minutes
        cpu = (
            self.cpu_time_limit_minutes is not None
            and self.cpu_used > 60 * self.cpu_time_limit_minutes
        )
        return wall or cpu

    def budget_line(self, iteration: int) -> str:
        return (f"time limit reached at iteration {iteration}: wall {self.elapsed / 60:.1f} min, "
                f"CPU {self.cpu_used / 60:.1f} min")  # fmt: skip

    def describe(self) -> str:
        return f"device {self.device}"

    @staticmethod
    def save(obj: Any, path: Path) -> Path:
        """``torch.save`` to a temporary name beside ``path``, then rename (tensors on CPU)."""
        import torch

        obj = _to_cpu(obj)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(obj, tmp)
        os.replace(tmp, path)
        return path


class MixedPrecision:
    """Automatic mixed precision for one trainer, on CUDA: the network's forward pass runs under
    ``torch.autocast`` in float16, with a gradient scaler that skips steps whose gradients
    overflow. Trainers compute their losses in float32 on ``prediction.float()`` outside
    :meth:`autocast` (binary cross-entropy is not autocast-safe). On CPU it stays float32:
    bfloat16 autocast there turned the synapse U-Net's weights to NaN within two Adam steps in
    a test run, and it is only faster on CPUs with bfloat16 units anyway."""

    def __init__(self, requested: bool, device: Any) -> None:
        import torch

        self.requested = bool(requested)
        self.device_type = str(torch.device(device).type)
        self.enabled = self.requested and self.device_type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.enabled)

    def autocast(self) -> Any:
        """The context for the forward pass (a no-op when disabled)."""
        import torch

        return torch.autocast(self.device_type, dtype=torch.float16, enabled=self.enabled)

    def step(self, loss: Any, optimizer: Any) -> None:
        """Zero the gradients, back-propagate ``loss`` (scaled when enabled) and step."""
        optimizer.zero_grad()
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()

    def describe(self) -> str:
        if self.enabled:
            return "mixed precision float16"
        return "float32 (mixed precision runs on CUDA only)" if self.requested else "float32"


def _to_cpu(obj: Any) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def start_out_dir(out_dir: str | Path, resume: bool, init: str | Path | None = None) -> Path:
    """Create a trainer's output folder. Starting anew where an earlier run left ``latest.pt``
    (no ``resume``, and ``init``, the checkpoint the weights start from, not one of that run's) is
    refused in one line: its checkpoints and exported model would be replaced."""
    out = Path(out_dir)
    continuing = resume or (init is not None and Path(init).resolve().parent == out.resolve())
    if not continuing and (out / "latest.pt").exists():
        raise ConfigError(
            f"{out}: holds an earlier run (latest.pt); continue it with --resume, or give another "
            "out_dir (or remove this one) to start anew"
        )
    out.mkdir(parents=True, exist_ok=True)
    return out


def check_export(path: str | Path | None, resume: bool, overwrite: bool) -> None:
    """Before a new run starts: refuse the file it will export to when that exists (one error
    line naming it) unless ``overwrite``; a resumed run re-exports its own model."""
    from synapse_toolkit.fsio import check_destination

    if path is not None and not resume:
        check_destination(Path(path), overwrite=overwrite, what="exported model")


def resume_state(
    optimizer: Any, precision: MixedPrecision, rng: Any, **extra: Any
) -> dict[str, Any]:
    """What a run needs beyond its weights to continue exactly as if it had not stopped: the
    optimizer's and gradient scaler's states, the crop sampler's numpy ``rng`` state and torch's,
    and ``extra`` (e.g. the best validation so far). Saved as ``latest.pt``'s ``resume`` entry."""
    import torch

    return {"optimizer": optimizer.state_dict(), "scaler": precision.scaler.state_dict(),
            "sampler_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
            **extra}  # fmt: skip


def resume_from(
    out_dir: Path, net: Any, optimizer: Any, precision: MixedPrecision, rng: Any, log: Any
) -> dict[str, Any] | None:
    """Load ``<out_dir>/latest.pt`` for ``--resume``: its weights go into ``net``, its optimizer,
    scaler and random states into ``optimizer``, ``precision`` and ``rng``; returns the
    checkpoint (``iteration``, the extras in ``resume``), or None (logged) when there is none."""
    import torch

    from synapse_toolkit.nn.checkpoint import load_state

    latest = Path(out_dir) / "latest.pt"
    if not latest.exists():
        log(f"no {latest} to resume from: starting")
        return None
    state = load_state(latest)
    if "resume" not in state:
        raise ConfigError(f"{latest}: a checkpoint without the state to resume from")
    r = state["resume"]
    net.load_state_dict(state["state_dict"])
    optimizer.load_state_dict(r["optimizer"])
    precision.scaler.load_state_dict(r["scaler"])
    rng.bit_generator.state = r["sampler_rng"]
    torch.set_rng_state(r["torch_rng"])
    log(f"resuming from {latest} at iteration {state['iteration']}")
    return state
