"""Coordinate-wise trimmed mean aggregation.

Yin, Chen, Ramchandran & Bartlett 2018, "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates" (ICML): per coordinate, drop the ``⌊βn⌋`` largest and ``⌊βn⌋`` smallest
values and average the rest. Tolerates up to ``⌊βn⌋`` Byzantine clients per coordinate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pipeline.server.strategies.aggregate import add_scaled, trimmed_mean
from pipeline.server.strategies.base import ClientResult, Weights, check_results, copy_weights
from pipeline.server.strategies.exceptions import NotEnoughResultsError

__all__ = ["TrimmedMean"]


class TrimmedMean:
    """β-trimmed mean of client deltas (unweighted).

    Parameters
    ----------
    beta : float
        Fraction trimmed at each end, ``0 <= beta < 0.5``.
    server_lr : float
        Scale of the aggregated delta.

    Examples
    --------
    >>> import numpy as np
    >>> from pipeline.server.strategies.base import ClientResult
    >>> rs = [ClientResult(node_id=str(i), delta={"w": np.array([v])}, num_examples=1)
    ...       for i, v in enumerate((-50.0, 1.0, 2.0, 3.0, 70.0))]
    >>> TrimmedMean(beta=0.2).aggregate({"w": np.array([0.0], np.float32)}, rs)["w"].tolist()
    [2.0]
    """

    name = "trimmed_mean"

    def __init__(self, *, beta: float = 0.1, server_lr: float = 1.0) -> None:
        if not 0 <= beta < 0.5:
            raise ValueError(f"beta must be in [0, 0.5), got {beta!r}")
        if not server_lr > 0:
            raise ValueError(f"server_lr must be > 0, got {server_lr!r}")
        self.beta = float(beta)
        self.server_lr = float(server_lr)

    def aggregate(self, global_weights: Weights, results: Sequence[ClientResult]) -> Weights:
        """Return ``global + η · trimmed_mean(deltas)``; empty results return a copy."""
        check_results(global_weights, results)
        if not results:
            return copy_weights(global_weights)
        n = len(results)
        if n - 2 * math.floor(self.beta * n) < 1:  # only reachable for beta close to 0.5
            raise NotEnoughResultsError(self.name, needed=n + 1, got=n)
        delta = trimmed_mean([(r.delta, r.num_examples) for r in results], beta=self.beta)
        return add_scaled(global_weights, delta, scale=self.server_lr)
