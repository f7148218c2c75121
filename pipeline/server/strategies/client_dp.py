"""Client-level differential privacy at the aggregator (DP-FedAvg).

McMahan, Ramage, Talwar & Zhang 2018, "Learning Differentially Private Recurrent Language
Models" (ICLR). Each client delta is clipped to L2 norm ``C``; the clipped deltas are summed,
Gaussian noise ``N(0, σ²C²)`` is added per coordinate, and the sum is divided by a denominator
(the expected number of clients ``qW`` when given — the paper's fixed-denominator estimator —
otherwise the number of results). Clients are weighted uniformly: ``num_examples`` would raise
the sensitivity. The noised mean is then handed, as a single result, to an inner strategy
(FedAvg by default, or a server optimizer such as FedAdam); that is post-processing and does not
change the guarantee.

The guarantee is for the *user* (client) level and is tracked by this strategy's own Opacus
accountant (``opacus.accountants``: RDP, Mironov 2017, or PRV, Gopi et al. 2021), one step of
``(σ, q)`` per non-empty aggregation, where ``q`` is the client sampling rate. It holds only if
clients are sampled with rate ``q`` as stated; the aggregator cannot check that. numpy's
generator is not a cryptographic RNG and floating-point noise has known weaknesses (Mironov
2012); this is a research-grade mechanism.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from pipeline.server.strategies.aggregate import clip_l2
from pipeline.server.strategies.base import (
    ClientResult,
    Strategy,
    Weights,
    check_results,
    copy_weights,
)
from pipeline.server.strategies.fedavg import FedAvg

__all__ = ["ClientDP"]

logger = logging.getLogger(__name__)


class ClientDP:
    """Clip, sum, noise, average — then delegate to ``inner``.

    Parameters
    ----------
    noise_multiplier : float
        ``σ``: noise std relative to ``clip_norm``.
    clip_norm : float
        ``C``: maximum L2 norm of a client delta (all tensors together).
    sample_rate : float
        ``q``: probability that a client takes part in a round, in ``(0, 1]``.
    accountant : {"rdp", "prv"}
        Opacus accountant.
    target_delta : float
        ``δ`` at which :meth:`epsilon` reports by default.
    expected_clients : float, optional
        Fixed denominator ``qW``; default: the number of results in the round.
    inner : Strategy, optional
        Applies the noised mean delta; default :class:`~pipeline.server.strategies.fedavg.FedAvg`.
    seed : int, optional
        Seed of the noise generator (tests only); default fresh OS entropy.

    Examples
    --------
    >>> import numpy as np
    >>> from pipeline.server.strategies.base import ClientResult
    >>> s = ClientDP(noise_multiplier=0.0, clip_norm=1.0, sample_rate=1.0)
    >>> rs = [ClientResult(node_id="a", delta={"w": np.array([3.0, 4.0])}, num_examples=9),
    ...       ClientResult(node_id="b", delta={"w": np.array([0.2, 0.0])}, num_examples=1)]
    >>> [round(v, 6) for v in s.aggregate({"w": np.zeros(2, np.float32)}, rs)["w"].tolist()]
    [0.4, 0.4]
    """

    def __init__(
        self,
        *,
        noise_multiplier: float,
        clip_norm: float,
        sample_rate: float,
        accountant: Literal["rdp", "prv"] = "rdp",
        target_delta: float = 1e-5,
        expected_clients: float | None = None,
        inner: Strategy | None = None,
        seed: int | None = None,
    ) -> None:
        if not noise_multiplier >= 0:
            raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier!r}")
        if not clip_norm > 0:
            raise ValueError(f"clip_norm must be > 0, got {clip_norm!r}")
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
        if not 0 < target_delta < 1:
            raise ValueError(f"target_delta must be in (0, 1), got {target_delta!r}")
        if expected_clients is not None and not expected_clients > 0:
            raise ValueError(f"expected_clients must be > 0, got {expected_clients!r}")
        if accountant not in ("rdp", "prv"):
            raise ValueError(f"accountant must be 'rdp' or 'prv', got {accountant!r}")
        from opacus.accountants import create_accountant  # heavy (torch): imported on demand

        self.noise_multiplier = float(noise_multiplier)
        self.clip_norm = float(clip_norm)
        self.sample_rate = float(sample_rate)
        self.target_delta = float(target_delta)
        self.expected_clients = None if expected_clients is None else float(expected_clients)
        self.inner: Strategy = inner if inner is not None else FedAvg()
        self.name = "dp_fedavg" if self.inner.name == "fedavg" else f"dp_{self.inner.name}"
        self._accountant = create_accountant(mechanism=accountant)
        self._rng = np.random.default_rng(seed)
        self.last_clipped = 0

    @property
    def accountant(self) -> str:
        """Mechanism of the accountant (``"rdp"`` or ``"prv"``)."""
        return str(self._accountant.mechanism())

    @property
    def rounds(self) -> int:
        """Noised aggregations accounted so far."""
        return sum(int(steps) for _, _, steps in self._accountant.history)

    def epsilon(self, *, delta: float | None = None) -> float:
        """Client-level ε spent so far at ``delta`` (default ``target_delta``); 0 before any round.

        Infinite when ``noise_multiplier`` is 0.
        """
        if not self._accountant.history:
            return 0.0
        if self.noise_multiplier == 0:
            return float("inf")
        return float(
            self._accountant.get_epsilon(delta=self.target_delta if delta is None else delta)
        )

    def aggregate(self, global_weights: Weights, results: Sequence[ClientResult]) -> Weights:
        """Clip each delta to ``clip_norm``, add noise to the sum, average, delegate to ``inner``.

        An empty round returns a copy of the global weights and spends no privacy.
        """
        check_results(global_weights, results)
        if not results:
            return copy_weights(global_weights)
        total = {k: np.zeros(np.shape(v), np.float64) for k, v in global_weights.items()}
        clipped = 0
        for r in results:
            delta, norm = clip_l2(r.delta, max_norm=self.clip_norm)
            clipped += norm > self.clip_norm
            for k, acc in total.items():
                acc += delta[k]
        std = self.noise_multiplier * self.clip_norm
        denominator = (
            self.expected_clients if self.expected_clients is not None else float(len(results))
        )
        noised: Weights = {}
        for k, acc in total.items():
            if std > 0:
                acc += self._rng.normal(0.0, std, size=acc.shape)
            noised[k] = (acc / denominator).astype(np.float32)
        self._accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)
        self.last_clipped = int(clipped)
        logger.debug(
            "client DP: %d/%d deltas clipped, sigma=%g",
            clipped,
            len(results),
            self.noise_multiplier,
        )
        return self.inner.aggregate(
            global_weights, [ClientResult(node_id="dp-aggregate", delta=noised, num_examples=1)]
        )

    def state_dict(self) -> dict[str, Any]:
        """Accountant history (and the inner strategy's state when it has one)."""
        inner_state = self.inner.state_dict() if hasattr(self.inner, "state_dict") else None
        return {
            "name": self.name,
            "accountant": {"mechanism": self.accountant, "history": list(self._accountant.history)},
            "inner": inner_state,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; ``ValueError`` on a mismatched name or mechanism."""
        if set(state) != {"name", "accountant", "inner"} or state["name"] != self.name:
            raise ValueError("not a ClientDP state for this configuration")
        acc = state["accountant"]
        if acc.get("mechanism") != self.accountant:
            raise ValueError(
                f"accountant mechanism {acc.get('mechanism')!r} != {self.accountant!r}"
            )
        self._accountant.history = [tuple(h) for h in acc["history"]]
        if state["inner"] is not None:
            loader = getattr(self.inner, "load_state_dict", None)
            if loader is None:
                raise ValueError("saved inner state but the inner strategy is stateless")
            loader(state["inner"])
