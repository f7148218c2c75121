"""FedAvgM: FedAvg with server momentum.

Hsu, Qi & Brown 2019, "Measuring the Effects of Non-Identical Data Distribution for Federated
Visual Classification" (arXiv:1909.06335); also the ``FedAvgM`` instance of Reddi et al. 2021,
"Adaptive Federated Optimization" (ICLR). With ``Δ̄`` the sample-weighted mean client delta::

    v ← β v + Δ̄
    w ← w + η v
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.server.strategies.aggregate import add_scaled
from pipeline.server.strategies.base import ClientResult, Weights, copy_weights
from pipeline.server.strategies.fedavg import weighted_mean_delta

__all__ = ["FedAvgM"]

logger = logging.getLogger(__name__)


def _load_moment(state: Mapping[str, Any], key: str) -> dict[str, np.ndarray] | None:
    value = state[key]
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"{key} must be a mapping of arrays or None")
    return {k: np.array(v, dtype=np.float64) for k, v in value.items()}


class FedAvgM:
    """Server-momentum FedAvg.

    Parameters
    ----------
    server_lr : float
        ``η``.
    momentum : float
        ``β`` in ``[0, 1)``; 0 is FedAvg.

    Examples
    --------
    >>> import numpy as np
    >>> from pipeline.server.strategies.base import ClientResult
    >>> s = FedAvgM(server_lr=1.0, momentum=0.5)
    >>> g = {"w": np.array([0.0], np.float32)}
    >>> r = [ClientResult(node_id="a", delta={"w": np.array([2.0])}, num_examples=1)]
    >>> g = s.aggregate(g, r); g["w"].tolist()        # v = 2
    [2.0]
    >>> s.aggregate(g, r)["w"].tolist()               # v = 0.5*2 + 2 = 3
    [5.0]
    """

    name = "fedavgm"

    def __init__(self, *, server_lr: float = 1.0, momentum: float = 0.9) -> None:
        if not server_lr > 0:
            raise ValueError(f"server_lr must be > 0, got {server_lr!r}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        self.server_lr = float(server_lr)
        self.momentum = float(momentum)
        self._velocity: dict[str, np.ndarray] | None = None

    def aggregate(self, global_weights: Weights, results: Sequence[ClientResult]) -> Weights:
        """Apply one momentum step; an empty (or zero-weight) round returns a copy, state unchanged."""
        mean = weighted_mean_delta(global_weights, results, strategy=self.name)
        if mean is None:
            return copy_weights(global_weights)
        if self._velocity is None or self._velocity.keys() != mean.keys():
            self._velocity = {k: np.zeros(np.shape(v), np.float64) for k, v in mean.items()}
        for k, v in self._velocity.items():
            v *= self.momentum
            v += mean[k]
        return add_scaled(global_weights, self._velocity, scale=self.server_lr)

    def state_dict(self) -> dict[str, Any]:
        """Velocity (``None`` before the first step) and hyper-parameters."""
        return {
            "name": self.name,
            "velocity": None
            if self._velocity is None
            else {k: v.copy() for k, v in self._velocity.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; ``ValueError`` on a mismatch."""
        if set(state) != {"name", "velocity"} or state["name"] != self.name:
            raise ValueError("not a FedAvgM state")
        self._velocity = _load_moment(state, "velocity")
