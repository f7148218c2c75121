"""Multi-Krum aggregation.

Blanchard, El Mhamdi, Guerraoui & Stainer 2017, "Machine Learning with Adversaries: Byzantine
Tolerant Gradient Descent" (NeurIPS). Each delta is scored by the sum of squared distances to
its ``n − f − 2`` nearest neighbours; the ``m`` lowest-scoring deltas are averaged
(unweighted). ``m = 1`` is Krum; the default ``m = n − f``. Needs ``n > 2f + 2``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pipeline.server.strategies.aggregate import add_scaled, multi_krum
from pipeline.server.strategies.base import ClientResult, Weights, check_results, copy_weights
from pipeline.server.strategies.exceptions import NotEnoughResultsError

__all__ = ["MultiKrum"]

logger = logging.getLogger(__name__)


class MultiKrum:
    """Multi-Krum over client deltas.

    Parameters
    ----------
    num_byzantine : int
        ``f``, Byzantine clients tolerated.
    num_selected : int, optional
        ``m``; default ``n − f`` each round.
    server_lr : float
        Scale of the aggregated delta.

    Attributes
    ----------
    last_selected : tuple of str
        Node ids averaged in the last non-empty round (for logs and telemetry).

    Examples
    --------
    >>> import numpy as np
    >>> from pipeline.server.strategies.base import ClientResult
    >>> rs = [ClientResult(node_id=str(i), delta={"w": np.array([v])}, num_examples=1)
    ...       for i, v in enumerate((0.0, 1.0, 2.0, 1.0, 99.0))]
    >>> s = MultiKrum(num_byzantine=1)
    >>> s.aggregate({"w": np.array([0.0], np.float32)}, rs)["w"].tolist(), sorted(s.last_selected)
    ([1.0], ['0', '1', '2', '3'])
    """

    name = "krum"

    def __init__(
        self, *, num_byzantine: int = 1, num_selected: int | None = None, server_lr: float = 1.0
    ) -> None:
        if not isinstance(num_byzantine, int) or num_byzantine < 0:
            raise ValueError(f"num_byzantine must be an int >= 0, got {num_byzantine!r}")
        if num_selected is not None and (not isinstance(num_selected, int) or num_selected < 1):
            raise ValueError(f"num_selected must be an int >= 1 or None, got {num_selected!r}")
        if not server_lr > 0:
            raise ValueError(f"server_lr must be > 0, got {server_lr!r}")
        self.num_byzantine = num_byzantine
        self.num_selected = num_selected
        self.server_lr = float(server_lr)
        self.last_selected: tuple[str, ...] = ()

    def aggregate(self, global_weights: Weights, results: Sequence[ClientResult]) -> Weights:
        """Return ``global + η · multi_krum(deltas)``; empty results return a copy.

        Raises :class:`NotEnoughResultsError` when ``n <= 2f + 2`` or ``n < m``.
        """
        check_results(global_weights, results)
        if not results:
            return copy_weights(global_weights)
        n = len(results)
        needed = max(2 * self.num_byzantine + 3, self.num_selected or 0)
        if n < needed:
            raise NotEnoughResultsError(self.name, needed=needed, got=n)
        delta, chosen = multi_krum(
            [(r.delta, r.num_examples) for r in results],
            num_byzantine=self.num_byzantine,
            num_selected=self.num_selected,
        )
        self.last_selected = tuple(results[i].node_id for i in chosen)
        dropped = sorted(set(r.node_id for r in results) - set(self.last_selected))
        logger.debug("multi-krum kept %d of %d, dropped %s", len(chosen), n, dropped)
        return add_scaled(global_weights, delta, scale=self.server_lr)
