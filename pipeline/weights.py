"""Model weights as ``name -> float32 ndarray`` mappings, and update deltas.

These are the arrays that travel in a :class:`schemas.update.ModelUpdate` and that aggregation
strategies combine. Only trainable parameters and floating-point buffers are included, under the
names of the *unwrapped* module (no Opacus ``_module.`` prefix).

Examples
--------
>>> from torch import nn
>>> m = nn.Linear(2, 1)
>>> w = get_weights(m)
>>> sorted(w), w["weight"].dtype
(['bias', 'weight'], dtype('float32'))
>>> d = weight_delta(w, w)
>>> float(abs(d["weight"]).sum())
0.0
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

__all__ = ["apply_delta", "get_weights", "set_weights", "weight_delta", "weight_shapes"]

Weights = dict[str, np.ndarray]


def _unwrap(module: nn.Module) -> nn.Module:
    inner = getattr(module, "_module", None)
    return inner if isinstance(inner, nn.Module) else module


def get_weights(module: nn.Module) -> Weights:
    """Return a copy of the module's float state as ``{name: float32 array}``."""
    state = _unwrap(module).state_dict()
    return {k: v.detach().cpu().numpy().astype(np.float32, copy=True)
            for k, v in state.items() if v.is_floating_point()}


def set_weights(module: nn.Module, weights: Mapping[str, np.ndarray]) -> None:
    """Load ``weights`` into ``module`` in place.

    Raises
    ------
    ValueError
        names or shapes differ from the module's float state.
    """
    target = _unwrap(module)
    state = {k: v for k, v in target.state_dict().items() if v.is_floating_point()}
    if set(state) != set(weights):
        raise ValueError(f"weight names mismatch: missing {sorted(set(state) - set(weights))}, "
                         f"unexpected {sorted(set(weights) - set(state))}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(weights[k].shape):
            raise ValueError(f"shape mismatch for {k}: {tuple(weights[k].shape)} != {tuple(v.shape)}")
    target.load_state_dict({k: torch.from_numpy(np.asarray(weights[k], dtype=np.float32).copy())
                            for k in state}, strict=False)


def weight_shapes(weights: Mapping[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Return ``{name: (shape, "float32")}`` — the ``expected`` argument of the decoder."""
    return {k: (tuple(int(s) for s in v.shape), "float32") for k, v in weights.items()}


def weight_delta(new: Mapping[str, np.ndarray], old: Mapping[str, np.ndarray]) -> Weights:
    """Return ``new - old`` per name (float32)."""
    if set(new) != set(old):
        raise ValueError("weight_delta: the two weight sets have different names")
    return {k: (np.asarray(new[k], np.float32) - np.asarray(old[k], np.float32)) for k in new}


def apply_delta(weights: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray],
                *, scale: float = 1.0) -> Weights:
    """Return ``weights + scale * delta`` per name (float32)."""
    if set(weights) != set(delta):
        raise ValueError("apply_delta: weights and delta have different names")
    return {k: (np.asarray(weights[k], np.float32) + np.float32(scale) * np.asarray(delta[k],
                np.float32)).astype(np.float32) for k in weights}
