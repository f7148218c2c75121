"""Coordinate-wise median aggregation.

Yin, Chen, Ramchandran & Bartlett 2018, "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates" (ICML). Each coordinate of the new delta is the median of that coordinate
over the clients; ``num_examples`` is ignored (a Byzantine client could inflate it).
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.server.strategies.aggregate import add_scaled, coordinate_median
from pipeline.server.strategies.base import ClientResult, Weights, check_results, copy_weights

__all__ = ["Median"]


class Median:
    """Coordinate-wise median of client deltas.

    Parameters
    ----------
    server_lr : float
        Scale of the median delta applied to the global model.

    Examples
    --------
    >>> import numpy as np
    >>> from pipeline.server.strategies.base import ClientResult
    >>> rs = [ClientResult(node_id=str(i), delta={"w": np.array([v])}, num_examples=1)
    ...       for i, v in enumerate((1.0, 2.0, 900.0))]
    >>> Median().aggregate({"w": np.array([10.0], np.float32)}, rs)["w"].tolist()
    [12.0]
    """

    name = "median"

    def __init__(self, *, server_lr: float = 1.0) -> None:
        if not server_lr > 0:
            raise ValueError(f"server_lr must be > 0, got {server_lr!r}")
        self.server_lr = float(server_lr)

    def aggregate(self, global_weights: Weights, results: Sequence[ClientResult]) -> Weights:
        """Return ``global + η · median(deltas)``; empty results return a copy."""
        check_results(global_weights, results)
        if not results:
            return copy_weights(global_weights)
        delta = coordinate_median([(r.delta, r.num_examples) for r in results])
        return add_scaled(global_weights, delta, scale=self.server_lr)
