"""Helpers for strategy tests: tiny hand-checkable results."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.server.strategies import ClientResult


def results(
    *deltas: Sequence[float],
    examples: Sequence[int] | None = None,
    staleness: Sequence[int] | None = None,
) -> list[ClientResult]:
    """One ClientResult per delta, a single tensor "w"."""
    ns = examples or [1] * len(deltas)
    taus = staleness or [0] * len(deltas)
    return [
        ClientResult(
            node_id=f"n{i}", delta={"w": np.array(d, np.float32)}, num_examples=n, staleness=t
        )
        for i, (d, n, t) in enumerate(zip(deltas, ns, taus, strict=True))
    ]


def zeros(n: int) -> dict[str, np.ndarray]:
    return {"w": np.zeros(n, np.float32)}
