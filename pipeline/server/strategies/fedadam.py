"""FedAdam: adaptive server optimizer over the FedAvg pseudo-gradient.

Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar & McMahan 2021, "Adaptive Federated
Optimization" (ICLR), Algorithm 2 (no bias correction). With ``Δ̄`` the sample-weighted mean
client delta::

    m ← β₁ m + (1 − β₁) Δ̄
    v ← β₂ v + (1 − β₂) Δ̄²
    w ← w + η m / (√v + τ)

``m`` starts at 0 and ``v`` at ``τ²`` (the paper's ``v₋₁ ≥ τ²``). Defaults follow the paper's
grid: ``η = 10⁻²``, ``β₁ = 0.9``, ``β₂ = 0.99``, ``τ = 10⁻³``. Optionally ``η`` decays
exponentially, ``η_t = η γᵗ`` at the t-th step (t from 0), so late rounds move the model less.
(On pedestrian-forecast with DP, γ = 0.995 over 300 rounds was worse than a constant η:
docs/fl.md.)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.server.strategies.aggregate import add_scaled
from pipeline.server.strategies.base import ClientResult, Weights, copy_weights
from pipeline.server.strategies.fedavg import weighted_mean_delta
from pipeline.server.strategies.fedavgm import _load_moment

__all__ = ["FedAdam"]

logger = logging.getLogger(__name__)


class FedAdam:
    """Server-side Adam (FedAdam).

    Parameters
    ----------
    server_lr : float
        ``η``.
    beta1, beta2 : float
        Moment decay rates in ``[0, 1)``.
    tau : float
        Adaptivity ``τ > 0``.
    lr_decay : float
        ``γ`` in ``(0, 1]``: the step size is multiplied by it after every step (1: constant).

    Examples
    --------
    >>> import numpy as np
    >>> from pipeline.server.strategies.base import ClientResult
    >>> s = FedAdam(server_lr=1.0, beta1=0.0, beta2=0.0, tau=1.0)
    >>> g = {"w": np.array([0.0, 0.0], np.float32)}
    >>> r = [ClientResult(node_id="a", delta={"w": np.array([1.0, -3.0])}, num_examples=1)]
    >>> s.aggregate(g, r)["w"].tolist()    # m/(sqrt(v)+1) = 1/2, -3/4
    [0.5, -0.75]
    """

    name = "fedadam"

    def __init__(
        self, *, server_lr: float = 1e-2, beta1: float = 0.9, beta2: float = 0.99,
        tau: float = 1e-3, lr_decay: float = 1.0,
    ) -> None:
        if not server_lr > 0:
            raise ValueError(f"server_lr must be > 0, got {server_lr!r}")
        for label, beta in (("beta1", beta1), ("beta2", beta2)):
            if not 0 <= beta < 1:
                raise ValueError(f"{label} must be in [0, 1), got {beta!r}")
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau!r}")
        self.server_lr = float(server_lr)
        self.beta1 = float(beta1)
        self.beta2 = float(beta2)
        self.tau = float(tau)
        if not 0 < lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1], got {lr_decay!r}")
        self.lr_decay = float(lr_decay)
        self._steps = 0
        self._m: dict[str, np.ndarray] | None = None
        self._v: dict[str, np.ndarray] | None = None

    def aggregate(self, global_weights: Weights, results: Sequence[ClientResult]) -> Weights:
        """Apply one Adam step; an empty (or zero-weight) round returns a copy, state unchanged."""
        avg = weighted_mean_delta(global_weights, results, strategy=self.name)
        if avg is None:
            return copy_weights(global_weights)
        mean = {k: v.astype(np.float64) for k, v in avg.items()}
        if self._m is None or self._v is None or self._m.keys() != mean.keys():
            self._m = {k: np.zeros(np.shape(v), np.float64) for k, v in mean.items()}
            self._v = {k: np.full(np.shape(v), self.tau**2, np.float64) for k, v in mean.items()}
        step: dict[str, np.ndarray] = {}
        for k, d in mean.items():
            m, v = self._m[k], self._v[k]
            m *= self.beta1
            m += (1.0 - self.beta1) * d
            v *= self.beta2
            v += (1.0 - self.beta2) * d * d
            step[k] = m / (np.sqrt(v) + self.tau)
        lr = self.server_lr * self.lr_decay ** self._steps
        self._steps += 1
        return add_scaled(global_weights, step, scale=lr)

    def state_dict(self) -> dict[str, Any]:
        """First and second moments (``None`` before the first step) and the step count."""
        return {
            "name": self.name,
            "steps": self._steps,
            "m": None if self._m is None else {k: v.copy() for k, v in self._m.items()},
            "v": None if self._v is None else {k: v.copy() for k, v in self._v.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; ``ValueError`` on a mismatch."""
        # "steps" is absent from states written before lr_decay existed: they restart at 0
        if not {"name", "m", "v"} <= set(state) <= {"name", "m", "v", "steps"} \
                or state["name"] != self.name:
            raise ValueError("not a FedAdam state")
        steps = state.get("steps", 0)
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise ValueError(f"FedAdam state: steps must be an int >= 0, got {steps!r}")
        m, v = _load_moment(state, "m"), _load_moment(state, "v")
        if (m is None) != (v is None) or (m is not None and v is not None and m.keys() != v.keys()):
            raise ValueError("FedAdam state: m and v disagree")
        self._m, self._v, self._steps = m, v, steps
