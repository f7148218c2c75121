"""Replay and staleness gate for decoded updates, applied by the aggregator before aggregation.

Delivery on ``edgeveil.updates`` is at-least-once, so the same ``(node, round)`` may arrive
twice; it must never be counted twice. Staleness ``τ = current_version - base_version`` is the
number of global versions published since the node pulled its base model; synchronous FedAvg
admits ``τ = 0`` only, buffered asynchronous aggregation (FedBuff, Nguyen et al. 2022,
"Federated Learning with Buffered Asynchronous Aggregation", AISTATS) admits a bounded ``τ`` and
down-weights it.

Memory is bounded: per node the gate remembers the ``replay_window`` most recent admitted rounds.
A round older than everything remembered (once the window is full) is rejected as
``replay_window``: it cannot be told apart from a replay.
"""

from __future__ import annotations

import bisect
import logging
from typing import Any

from pipeline.codec.exceptions import ReplayError, StaleUpdateError
from schemas.update import ModelUpdate

__all__ = ["UpdateAdmission"]

logger = logging.getLogger(__name__)

_STATE_KIND = "edgeveil.update_admission.v1"


class UpdateAdmission:
    """Stateful replay/staleness gate.

    Parameters
    ----------
    max_staleness : int
        Largest admitted ``current_version - base_version``; 0 = synchronous rounds.
    replay_window : int
        Admitted rounds remembered per node.

    Examples
    --------
    >>> import numpy as np
    >>> from schemas.update import ModelUpdate, PrivacyStamp
    >>> stamp = PrivacyStamp(epsilon=1.0, delta=1e-5, noise_multiplier=1.0, sample_rate=0.1,
    ...                      steps=1, accountant="rdp")
    >>> u = ModelUpdate(node_id="n1", task="t", round=7, base_version=4, num_examples=1,
    ...                 metrics={}, privacy=stamp, delta={})
    >>> gate = UpdateAdmission(max_staleness=2)
    >>> gate.admit(u, current_version=5)
    1
    >>> try:
    ...     gate.admit(u, current_version=5)
    ... except ReplayError as err:
    ...     print(err.reason)
    replay
    """

    def __init__(self, *, max_staleness: int = 0, replay_window: int = 1024) -> None:
        if not isinstance(max_staleness, int) or max_staleness < 0:
            raise ValueError(f"max_staleness must be an int >= 0, got {max_staleness!r}")
        if not isinstance(replay_window, int) or replay_window < 1:
            raise ValueError(f"replay_window must be an int >= 1, got {replay_window!r}")
        self.max_staleness = max_staleness
        self.replay_window = replay_window
        self._seen: dict[tuple[str, str], list[int]] = {}  # (task, node) -> sorted admitted rounds

    def check(self, update: ModelUpdate, *, current_version: int) -> int:
        """Like :meth:`admit` but records nothing; returns the staleness τ."""
        if not isinstance(current_version, int) or current_version < 0:
            raise ValueError(f"current_version must be an int >= 0, got {current_version!r}")
        rounds = self._seen.get((update.task, update.node_id), [])
        i = bisect.bisect_left(rounds, update.round)
        if i < len(rounds) and rounds[i] == update.round:
            raise ReplayError(
                "replay",
                f"node {update.node_id!r} round {update.round} of task {update.task!r} was already admitted",
            )
        if i == 0 and len(rounds) >= self.replay_window:
            raise ReplayError(
                "replay_window",
                f"node {update.node_id!r} round {update.round} is older than the {self.replay_window} rounds remembered",
            )
        staleness = current_version - update.base_version
        if staleness < 0:
            raise StaleUpdateError(
                "future_version",
                f"base version {update.base_version} is newer than the current {current_version}",
            )
        if staleness > self.max_staleness:
            raise StaleUpdateError(
                "stale",
                f"staleness {staleness} (base {update.base_version}, current {current_version}) exceeds {self.max_staleness}",
            )
        return staleness

    def admit(self, update: ModelUpdate, *, current_version: int) -> int:
        """Admit ``update`` once and return its staleness ``τ = current_version - base_version``.

        Raises
        ------
        ReplayError
            ``replay`` (same task, node and round already admitted) or ``replay_window``.
        StaleUpdateError
            ``stale`` (τ > ``max_staleness``) or ``future_version`` (τ < 0).

        Rejected updates are not recorded.
        """
        staleness = self.check(update, current_version=current_version)
        rounds = self._seen.setdefault((update.task, update.node_id), [])
        bisect.insort(rounds, update.round)
        if len(rounds) > self.replay_window:
            del rounds[0]
        return staleness

    def seen(self, node_id: str, *, task: str) -> tuple[int, ...]:
        """Rounds of ``node_id`` on ``task`` currently remembered as admitted."""
        return tuple(self._seen.get((task, node_id), ()))

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state, for the aggregator's changelog-backed table.

        Examples
        --------
        >>> from schemas.update import ModelUpdate, PrivacyStamp
        >>> stamp = PrivacyStamp(epsilon=1.0, delta=1e-5, noise_multiplier=1.0, sample_rate=0.1,
        ...                      steps=1, accountant="rdp")
        >>> gate = UpdateAdmission(max_staleness=1)
        >>> for r in (3, 7):
        ...     _ = gate.admit(ModelUpdate(node_id="n1", task="t", round=r, base_version=5,
        ...                                num_examples=1, metrics={}, privacy=stamp, delta={}),
        ...                    current_version=5)
        >>> gate.state_dict()
        {'kind': 'edgeveil.update_admission.v1', 'max_staleness': 1, 'replay_window': 1024,
         'seen': [['t', 'n1', [3, 7]]]}
        >>> restored = UpdateAdmission(max_staleness=1)
        >>> restored.load_state_dict(gate.state_dict())
        >>> restored.seen("n1", task="t")
        (3, 7)
        """
        return {
            "kind": _STATE_KIND,
            "max_staleness": self.max_staleness,
            "replay_window": self.replay_window,
            "seen": [
                [task, node, list(rounds)] for (task, node), rounds in sorted(self._seen.items())
            ],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; ``ValueError`` on a foreign or malformed state.

        The configured ``max_staleness`` and ``replay_window`` of this object win over the saved
        ones (configuration may change across restarts); remembered rounds are kept.
        """
        if not isinstance(state, dict) or set(state) != {
            "kind",
            "max_staleness",
            "replay_window",
            "seen",
        }:
            raise ValueError("not an UpdateAdmission state: keys differ")
        if state["kind"] != _STATE_KIND:
            raise ValueError(f"state kind {state['kind']!r} is not {_STATE_KIND!r}")
        seen: dict[tuple[str, str], list[int]] = {}
        for entry in state["seen"]:
            if not (isinstance(entry, (list, tuple)) and len(entry) == 3):
                raise ValueError(f"malformed seen entry {entry!r}")
            task, node, rounds = entry
            if (
                not isinstance(task, str)
                or not isinstance(node, str)
                or not all(isinstance(r, int) and not isinstance(r, bool) for r in rounds)
            ):
                raise ValueError(f"malformed seen entry {entry!r}")
            seen[(task, node)] = sorted(set(rounds))[-self.replay_window :]
        self._seen = seen
