"""FedAvg: sample-weighted average of client deltas.

McMahan, Moore, Ramage, Hampson & Agüera y Arcas 2017, "Communication-Efficient Learning of
Deep Networks from Decentralized Data" (AISTATS). The new global model is
``w + η Σ n_k Δ_k / Σ n_k`` with server learning rate ``η = 1`` by default.

:class:`RunningFedAvg` keeps only a float64 running sum per tensor, so an aggregator that adds
updates as they are decoded uses memory independent of how many it has seen.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.server.strategies.aggregate import add_scaled
from pipeline.server.strategies.base import ClientResult, Weights, check_results, copy_weights
from pipeline.server.strategies.exceptions import IncompatibleUpdateError

__all__ = ["FedAvg", "RunningFedAvg", "weighted_mean_delta"]

logger = logging.getLogger(__name__)


class RunningFedAvg:
    """Streaming weighted mean of deltas with O(model size) memory.

    Parameters
    ----------
    like : Mapping[str, numpy.ndarray], optional
        Template (names and shapes) every added delta must match; by default the first one added.

    Examples
    --------
    >>> import numpy as np
    >>> from pipeline.server.strategies.base import ClientResult
    >>> avg = RunningFedAvg()
    >>> avg.add(ClientResult(node_id="a", delta={"w": np.array([1.0, 2.0])}, num_examples=1))
    >>> avg.add(ClientResult(node_id="b", delta={"w": np.array([4.0, 8.0])}, num_examples=2))
    >>> avg.count, avg.result()["w"].tolist()
    (2, [3.0, 6.0])
    """

    def __init__(self, *, like: Mapping[str, np.ndarray] | None = None) -> None:
        self._sum: dict[str, np.ndarray] | None = None
        self._shapes: dict[str, tuple[int, ...]] | None = None
        if like is not None:
            self._init(like)
        self._total = 0.0
        self._count = 0

    def _init(self, like: Mapping[str, np.ndarray]) -> None:
        self._shapes = {k: tuple(np.shape(v)) for k, v in like.items()}
        self._sum = {k: np.zeros(s, np.float64) for k, s in self._shapes.items()}

    @property
    def count(self) -> int:
        """Number of updates added."""
        return self._count

    @property
    def total_weight(self) -> float:
        """Sum of the weights added (``Σ n_k`` unless ``weight=`` was given)."""
        return self._total

    def add(self, result: ClientResult, *, weight: float | None = None) -> None:
        """Add one delta with weight ``result.num_examples`` (or ``weight``).

        Raises :class:`IncompatibleUpdateError` (nothing is added) if its tensors differ.
        """
        w = float(result.num_examples if weight is None else weight)
        if not w >= 0 or not np.isfinite(w):
            raise ValueError(f"weight must be finite and >= 0, got {w!r}")
        if self._sum is None:
            self._init(result.delta)
        assert self._sum is not None and self._shapes is not None
        if result.delta.keys() != self._shapes.keys():
            raise IncompatibleUpdateError(
                result.node_id, "tensor names differ from the running sum's"
            )
        for k, s in self._shapes.items():
            if tuple(np.shape(result.delta[k])) != s:
                raise IncompatibleUpdateError(
                    result.node_id,
                    f"tensor {k!r} has shape {np.shape(result.delta[k])}, expected {s}",
                )
        for k, acc in self._sum.items():
            acc += np.asarray(result.delta[k], dtype=np.float64) * w
        self._total += w
        self._count += 1

    def result(self) -> Weights:
        """Return the weighted mean delta (float32).

        Raises ``ValueError`` when nothing (or only zero weight) was added.
        """
        if self._sum is None or self._total <= 0:
            raise ValueError("no weighted updates were added")
        return {k: (acc / self._total).astype(np.float32) for k, acc in self._sum.items()}

    def reset(self) -> None:
        """Forget every added update (keeps the template)."""
        if self._sum is not None:
            for acc in self._sum.values():
                acc.fill(0.0)
        self._total = 0.0
        self._count = 0

    def state_dict(self) -> dict[str, Any]:
        """Running sum, total and count (for checkpointing a half-filled buffer)."""
        return {
            "sum": None if self._sum is None else {k: v.copy() for k, v in self._sum.items()},
            "total": self._total,
            "count": self._count,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; ``ValueError`` on mismatched keys."""
        if set(state) != {"sum", "total", "count"}:
            raise ValueError("not a RunningFedAvg state: keys differ")
        if state["sum"] is None:
            self._sum, self._shapes = None, None
        else:
            self._init(state["sum"])
            assert self._sum is not None
            for k, v in state["sum"].items():
                self._sum[k][...] = v
        self._total = float(state["total"])
        self._count = int(state["count"])


class FedAvg:
    """Sample-weighted FedAvg with an optional server learning rate.

    Parameters
    ----------
    server_lr : float
        ``η``; 1.0 is classic FedAvg.

    Examples
    --------
    >>> import numpy as np
    >>> from pipeline.server.strategies.base import ClientResult
    >>> g = {"w": np.array([10.0, 10.0], np.float32)}
    >>> rs = [ClientResult(node_id="a", delta={"w": np.array([1.0, 0.0])}, num_examples=3),
    ...       ClientResult(node_id="b", delta={"w": np.array([-3.0, 4.0])}, num_examples=1)]
    >>> FedAvg().aggregate(g, rs)["w"].tolist()
    [10.0, 11.0]
    """

    name = "fedavg"

    def __init__(self, *, server_lr: float = 1.0) -> None:
        if not server_lr > 0:
            raise ValueError(f"server_lr must be > 0, got {server_lr!r}")
        self.server_lr = float(server_lr)

    def aggregate(self, global_weights: Weights, results: Sequence[ClientResult]) -> Weights:
        """Return ``global + η · weighted mean delta``; empty or zero-weight rounds return a copy."""
        mean = weighted_mean_delta(global_weights, results, strategy=self.name)
        if mean is None:
            return copy_weights(global_weights)
        return add_scaled(global_weights, mean, scale=self.server_lr)


def weighted_mean_delta(global_weights: Weights, results: Sequence[ClientResult], *,
                        strategy: str = "fedavg") -> dict[str, np.ndarray] | None:
    """The sample-weighted mean delta of ``results`` (checked against ``global_weights``).

    ``None`` when there is nothing to average (no results, or every one has zero examples): the
    caller keeps the global model and its server-optimizer state unchanged.
    """
    check_results(global_weights, results)
    running = RunningFedAvg(like=global_weights)
    for r in results:
        running.add(r)
    if running.total_weight <= 0:
        if results:
            logger.warning("%s: %d results with zero examples; global model unchanged",
                           strategy, len(results))
        return None
    return running.result()
