"""FedBuff: buffered asynchronous aggregation with staleness weighting.

Nguyen, Malik, Zhan, Yousefpour, Rabbat, Malek & Huba 2022, "Federated Learning with Buffered
Asynchronous Aggregation" (AISTATS), Algorithm 1. Clients train from whatever global version
they last pulled; the server buffers their deltas and, once ``K`` have arrived, applies::

    w ← w + η · (1/K) Σ_{k=1..K} s(τ_k) Δ_k,      s(τ) = 1 / sqrt(1 + τ)

where ``τ_k`` is the staleness from :class:`pipeline.server.admission.UpdateAdmission`. The buffer is a
running sum (:class:`~pipeline.server.strategies.fedavg.RunningFedAvg`), so memory is one model no
matter how large ``K`` is.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.server.strategies.aggregate import add_scaled, staleness_weight
from pipeline.server.strategies.base import ClientResult, Weights, check_results, copy_weights
from pipeline.server.strategies.fedavg import RunningFedAvg

__all__ = ["FedBuff"]

logger = logging.getLogger(__name__)


class FedBuff:
    """Buffered asynchronous aggregation.

    :meth:`aggregate` adds the results to the buffer; every time the buffer reaches
    ``buffer_size`` it applies a server step and empties. It returns the (possibly unchanged)
    global weights; :attr:`last_steps` says how many server steps the call applied, so the
    caller knows whether to publish a new global version.

    Parameters
    ----------
    buffer_size : int
        ``K``, deltas per server step.
    server_lr : float
        ``η_g``.

    Examples
    --------
    >>> import numpy as np
    >>> from pipeline.server.strategies.base import ClientResult
    >>> s = FedBuff(buffer_size=2)
    >>> g = {"w": np.array([0.0], np.float32)}
    >>> g = s.aggregate(g, [ClientResult(node_id="a", delta={"w": np.array([2.0])}, num_examples=5)])
    >>> s.last_steps, s.pending, g["w"].tolist()
    (0, 1, [0.0])
    >>> g = s.aggregate(g, [ClientResult(node_id="b", delta={"w": np.array([4.0])}, num_examples=1,
    ...                                  staleness=3)])
    >>> s.last_steps, g["w"].tolist()      # (1.0 * 2 + 0.5 * 4) / 2
    (1, [2.0])
    """

    name = "fedbuff"

    def __init__(self, *, buffer_size: int = 10, server_lr: float = 1.0) -> None:
        if not isinstance(buffer_size, int) or buffer_size < 1:
            raise ValueError(f"buffer_size must be an int >= 1, got {buffer_size!r}")
        if not server_lr > 0:
            raise ValueError(f"server_lr must be > 0, got {server_lr!r}")
        self.buffer_size = buffer_size
        self.server_lr = float(server_lr)
        self._buffer = RunningFedAvg()
        self.last_steps = 0
        self.total_steps = 0

    @property
    def pending(self) -> int:
        """Deltas waiting in the buffer."""
        return self._buffer.count

    def aggregate(self, global_weights: Weights, results: Sequence[ClientResult]) -> Weights:
        """Buffer ``results`` and apply a server step per ``buffer_size`` deltas.

        An empty ``results``, or one that does not fill the buffer, returns a copy of the global
        weights. A mismatched delta raises before anything is buffered.
        """
        check_results(global_weights, results)
        weights = copy_weights(global_weights)
        self.last_steps = 0
        for r in results:
            self._buffer.add(r, weight=staleness_weight(int(r.staleness)))
            if self._buffer.count >= self.buffer_size:
                # result() divides by Σ s(τ); FedBuff divides by K.
                scale = self.server_lr * self._buffer.total_weight / self.buffer_size
                weights = add_scaled(weights, self._buffer.result(), scale=scale)
                self._buffer.reset()
                self.last_steps += 1
                self.total_steps += 1
        if self.last_steps:
            logger.debug(
                "fedbuff applied %d server step(s); %d pending", self.last_steps, self.pending
            )
        return weights

    def state_dict(self) -> dict[str, Any]:
        """Buffer contents and step counter."""
        return {
            "name": self.name,
            "buffer": self._buffer.state_dict(),
            "total_steps": self.total_steps,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; ``ValueError`` on a mismatch."""
        if set(state) != {"name", "buffer", "total_steps"} or state["name"] != self.name:
            raise ValueError("not a FedBuff state")
        self._buffer.load_state_dict(state["buffer"])
        self.total_steps = int(state["total_steps"])
