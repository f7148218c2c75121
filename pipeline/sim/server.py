"""The aggregator side of :func:`pipeline.sim.simulate`: the round coordinator, in-process."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from pipeline.codec import KeyRegistry
from pipeline.node.edge import Weights
from pipeline.plan import FederationPlan
from pipeline.server.rounds import RoundCoordinator, RoundOutcome, RoundPolicy
from pipeline.server.strategies import make_strategy
from schemas.update import ModelUpdate

logger = logging.getLogger(__name__)


class InProcessServer:
    """The aggregator side of :func:`simulate`.

    A :class:`~pipeline.server.rounds.RoundCoordinator` driven as the Kafka aggregator agent drives
    it — offer each update as it arrives, aggregate when :meth:`~RoundCoordinator.due` (async) or
    when the round ends (sync), publish a version only when the strategy stepped, commit — with
    the admitted bytes in a dict instead of a changelog table. Built by :meth:`build`.

    Examples
    --------
    >>> import numpy as np
    >>> from pipeline.codec import KeyRegistry
    >>> server = InProcessServer.build(task="t", keys=KeyRegistry(),
    ...                                initial={"w": np.zeros(2, np.float32)}, nodes=3,
    ...                                strategy="fedbuff", strategy_options={"buffer_size": 2},
    ...                                mode="async", buffer_size=2)
    >>> server.version, server.coordinator.policy.buffer_size
    (0, 2)
    """

    def __init__(self, coordinator: RoundCoordinator, initial: Mapping[str, np.ndarray], *,
                 keep_history: bool = False) -> None:
        self.coordinator = coordinator
        self.weights: Weights = {k: np.asarray(v, np.float32).copy() for k, v in initial.items()}
        self.stored: dict[str, bytes] = {}
        #: what the last aggregation did (participants, ε by node, metrics), ``None`` before one
        self.last_outcome: RoundOutcome | None = None
        #: with ``keep_history``: the weights of every version made, by version (0: initial)
        self.history: dict[int, Weights] | None = {0: self.weights} if keep_history else None

    @classmethod
    def build(cls, *, task: str, keys: KeyRegistry, initial: Mapping[str, np.ndarray],
              nodes: int, strategy: str = "fedavg",
              strategy_options: Mapping[str, Any] | None = None,
              mode: Literal["sync", "async"] = "sync", buffer_size: int | None = None,
              max_staleness: int = 4, policy: RoundPolicy | None = None,
              keep_history: bool = False) -> InProcessServer:
        """The coordinator :func:`simulate` uses: sync rounds close when all ``nodes`` arrived;
        async aggregates every ``buffer_size`` (default ``nodes``) admitted updates; no
        wall-clock deadline. ``policy`` replaces all of that."""
        policy = policy or RoundPolicy(mode=mode, quorum=nodes, buffer_size=buffer_size or nodes,
                                       max_staleness=max_staleness, deadline_s=math.inf)
        coordinator = RoundCoordinator(
            task=task, keys=keys, policy=policy,
            expected={k: (tuple(v.shape), "float32") for k, v in initial.items()},
            strategy=make_strategy(strategy, **dict(strategy_options or {})))
        return cls(coordinator, initial, keep_history=keep_history)

    @classmethod
    def from_plan(cls, plan: FederationPlan, *, keys: KeyRegistry,
                  initial: Mapping[str, np.ndarray], nodes: int,
                  keep_history: bool = False) -> InProcessServer:
        """The server a plan describes: its strategy and its round policy for ``nodes`` nodes
        (no wall-clock deadline: a simulated round ends when its updates are in)."""
        return cls.build(task=plan.task, keys=keys, initial=initial, nodes=nodes,
                         strategy=plan.strategy, strategy_options=plan.strategy_options,
                         policy=plan.round_policy(nodes, deadline=False),
                         keep_history=keep_history)

    @property
    def version(self) -> int:
        return self.coordinator.version

    def receive(self, data: bytes, *, now: float = 0.0) -> tuple[ModelUpdate, int]:
        """Admit one update and aggregate if the policy says the round is due (a sync quorum, or
        a full async buffer), as the agent does after every admission.

        Returns the update and its staleness τ. Raises :class:`~pipeline.codec.CodecError`
        (with the reason the agent would send to the DLQ) if it is refused.
        """
        offer = self.coordinator.offer(data, now=now)
        if not offer.duplicate:
            self.stored[offer.key] = data
            if self.coordinator.due(now=now):
                self.close()
        return offer.update, offer.staleness

    def end_round(self) -> RoundOutcome | None:
        """Sync mode, the round's updates are in: aggregate what is buffered below the quorum
        (the agent's deadline); ``None`` if nothing is."""
        if self.coordinator.policy.mode != "sync" or not self.coordinator.buffer:
            return None
        return self.close()

    def close(self) -> RoundOutcome:
        """Aggregate the buffer; the weights and version move only if the strategy stepped."""
        outcome = self.coordinator.aggregate(self.weights, self.stored)
        self.last_outcome = outcome
        if outcome.stepped:
            self.weights = {k: np.asarray(v, np.float32) for k, v in outcome.weights.items()}
            if self.history is not None:
                self.history[outcome.version] = self.weights
        for key in self.coordinator.commit(outcome):
            self.stored.pop(key, None)
        return outcome


