"""Exponential moving average (Polyak averaging) of a network's weights: the mean teacher of
consistency training, and the averaged weights a supervised run can validate and export."""

from __future__ import annotations

import copy
from typing import Any


def ema_copy(net: Any) -> Any:
    """A frozen copy of ``net`` in eval mode, to be kept as the average of its weights."""
    avg = copy.deepcopy(net).eval()
    for p in avg.parameters():
        p.requires_grad_(False)
    return avg


def ema_update(avg: Any, net: Any, decay: float) -> None:
    """``avg <- decay * avg + (1 - decay) * net`` for every parameter; buffers are copied."""
    import torch

    with torch.no_grad():
        for pa, pn in zip(avg.parameters(), net.parameters(), strict=True):
            pa.mul_(decay).add_(pn.detach(), alpha=1 - decay)
        for ba, bn in zip(avg.buffers(), net.buffers(), strict=True):
            ba.copy_(bn)
