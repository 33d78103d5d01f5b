"""Start training from an exported model: copy the weights of an ONNX file (registry name or
``.onnx`` path, sha256-checked as the stages resolve models) into a torch module whose state-dict
names are the graph's initializer names (the module that was exported)."""

from __future__ import annotations

from typing import Any

import numpy as np

from synapse_toolkit.errors import ConfigError


def exported_weights(option: str, model: str) -> dict[str, np.ndarray]:
    """The named tensors of an exported model (registry name or ``.onnx``); ``option`` names
    the config key in errors."""
    from synapse_toolkit.models import resolve_name_or_path
    from synapse_toolkit.nn.adapt import onnx_tensors

    return onnx_tensors(resolve_name_or_path(option, model).path)


def load_exported(module: Any, option: str, model: str, *, with_output_layer: bool) -> int:
    """Copy every same-named, same-shaped tensor of an exported model into ``module`` (the
    output layer, names containing ``.head.``, only if ``with_output_layer``); any tensor
    missing is a ConfigError naming ``option``. Returns the number copied."""
    import torch

    weights = exported_weights(option, model)
    state = module.state_dict()
    wanted = [k for k in state if with_output_layer or ".head." not in k]
    take = {
        k: torch.from_numpy(np.array(weights[k]))
        for k in wanted
        if k in weights and tuple(weights[k].shape) == tuple(state[k].shape)
    }
    if len(take) != len(wanted):
        raise ConfigError(
            f"{option} {model}: {len(wanted) - len(take)} of {len(wanted)} "
            "tensors missing or of another shape"
        )
    state.update(take)
    module.load_state_dict(state)
    return len(take)
