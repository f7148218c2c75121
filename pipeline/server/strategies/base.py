"""The Strategy protocol and the values it works on (after Flower's ``strategy.py``).

A strategy turns the current global weights and a batch of client deltas into new global weights.
Deltas are ``local - global`` (see :class:`schemas.update.ModelUpdate`), so plain FedAvg is
``global + Σ n_k Δ_k / Σ n_k`` (McMahan et al. 2017, "Communication-Efficient Learning of Deep
Networks from Decentralized Data", AISTATS).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from pipeline.server.strategies.exceptions import IncompatibleUpdateError

__all__ = [
    "ClientResult",
    "StatefulStrategy",
    "Strategy",
    "Weights",
    "check_results",
    "copy_weights",
]

logger = logging.getLogger(__name__)

Weights = dict[str, np.ndarray]
"""Ordered ``name -> array`` of model parameters or deltas."""


@dataclass(frozen=True, eq=False)
class ClientResult:
    """One admitted client delta, as a strategy sees it.

    Parameters
    ----------
    node_id : str
        Sender.
    delta : Weights
        ``local - global`` per tensor.
    num_examples : int
        Training examples behind the delta (FedAvg weight), ``>= 0``.
    staleness : int
        ``τ`` from :class:`pipeline.server.admission.UpdateAdmission`, ``>= 0``.

    Examples
    --------
    >>> import numpy as np
    >>> ClientResult(node_id="n1", delta={"w": np.ones(2, np.float32)}, num_examples=10).staleness
    0
    """

    node_id: str
    delta: Weights
    num_examples: int
    staleness: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.num_examples, (int, np.integer)) or self.num_examples < 0:
            raise ValueError(f"num_examples must be an int >= 0, got {self.num_examples!r}")
        if not isinstance(self.staleness, (int, np.integer)) or self.staleness < 0:
            raise ValueError(f"staleness must be an int >= 0, got {self.staleness!r}")


@runtime_checkable
class Strategy(Protocol):
    """Aggregation rule.

    Contract of :meth:`aggregate`:

    * it returns NEW global weights (fresh arrays, same names, shapes and dtypes as
      ``global_weights``); inputs are never mutated;
    * an empty ``results`` returns a copy of ``global_weights`` unchanged (a round where every
      client dropped is not an error; buffered strategies also return the copy while they wait);
    * a result whose tensors do not match the global model raises
      :class:`~pipeline.server.strategies.exceptions.IncompatibleUpdateError` naming the node — the
      caller (agent) drops or DLQs it and retries with the rest;
    * robust rules that need more results raise
      :class:`~pipeline.server.strategies.exceptions.NotEnoughResultsError`.
    """

    name: str

    def aggregate(self, global_weights: Weights, results: Sequence[ClientResult]) -> Weights:
        """Return the new global weights after applying ``results``."""
        ...


@runtime_checkable
class StatefulStrategy(Strategy, Protocol):
    """A strategy with server state (momentum, Adam moments, buffer, accountant) to checkpoint."""

    def state_dict(self) -> dict[str, Any]:
        """Return the state as plain Python / numpy values."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; raise ``ValueError`` on a mismatch."""
        ...


def copy_weights(weights: Mapping[str, np.ndarray]) -> Weights:
    """Return a deep copy of ``weights`` (new arrays, same order).

    Examples
    --------
    >>> import numpy as np
    >>> w = {"a": np.zeros(2)}
    >>> copy_weights(w)["a"] is w["a"]
    False
    """
    return {k: np.array(v, copy=True) for k, v in weights.items()}


def check_results(
    global_weights: Mapping[str, np.ndarray], results: Sequence[ClientResult]
) -> None:
    """Raise :class:`IncompatibleUpdateError` if any delta does not fit ``global_weights``.

    Examples
    --------
    >>> import numpy as np
    >>> g = {"w": np.zeros(2, np.float32)}
    >>> check_results(g, [ClientResult(node_id="n1", delta={"w": np.ones(2)}, num_examples=1)])
    """
    for r in results:
        if r.delta.keys() != global_weights.keys():
            missing = sorted(set(global_weights) - set(r.delta))
            extra = sorted(set(r.delta) - set(global_weights))
            raise IncompatibleUpdateError(
                r.node_id, f"missing tensors {missing}, unexpected {extra}"
            )
        for name, g in global_weights.items():
            d = np.shape(r.delta[name])
            if d != np.shape(g):
                raise IncompatibleUpdateError(
                    r.node_id, f"tensor {name!r} has shape {d}, expected {np.shape(g)}"
                )
