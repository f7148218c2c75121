"""Durable per-node privacy ledger.

The ledger's only state is an append-only history of :class:`LedgerEntry`
``(noise_multiplier, sample_rate, steps)`` records, the same history an Opacus accountant keeps
(Opacus ``accountants/accountant.py``). Epsilon is never stored: it is computed on demand by
loading the history into a fresh ``PRVAccountant`` or ``RDPAccountant``
(:mod:`pipeline.privacy.accounting`).

Durability (architecture invariant 3): :meth:`PrivacyLedger.flush` writes the history to disk
atomically (write a temporary file, ``fsync``, ``os.replace``, ``fsync`` the folder). The edge node
flushes before it encodes an update, so a published update's spend is always on disk, and because
the history only grows, ε never goes down across a crash and restart. A file that cannot be read or
whose checksum does not match raises :class:`LedgerCorruptError`; the ledger never silently resets
to zero. Only a *missing* file starts an empty ledger.

Examples
--------
>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "node-0.ledger.json"
>>> ledger = PrivacyLedger.open(path, node_id="node-0", budget=3.0, delta=1e-5)
>>> ledger.step(noise_multiplier=1.0, sample_rate=0.01, steps=100)
>>> ledger.flush()
>>> round(PrivacyLedger.open(path, node_id="node-0", budget=3.0, delta=1e-5).epsilon(), 2)
0.73
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipeline.exceptions import EdgeVeilError
from pipeline.privacy.accounting import Mechanism, compute_epsilon

__all__ = [
    "BudgetExceededError",
    "LedgerCorruptError",
    "LedgerEntry",
    "PrivacyLedger",
    "ledger_path",
    "load_ledgers",
]

logger = logging.getLogger(__name__)

_FORMAT = "edgeveil.privacy-ledger"
_VERSION = 1
_STATE_KEYS = frozenset({"format", "version", "node_id", "mechanism", "delta", "budget", "history"})


@dataclass(frozen=True)
class LedgerEntry:
    """One homogeneous run of DP-SGD steps.

    Parameters
    ----------
    noise_multiplier
        Gaussian noise standard deviation divided by the clipping norm.
    sample_rate
        Poisson sampling probability of each example in a step.
    steps
        Number of noisy optimizer steps taken with these parameters.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        if not self.noise_multiplier > 0:
            raise ValueError(f"noise_multiplier must be > 0, got {self.noise_multiplier}")
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {self.sample_rate}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")

    def as_tuple(self) -> tuple[float, float, int]:
        """Return the Opacus accountant history tuple ``(noise_multiplier, sample_rate, steps)``."""
        return (float(self.noise_multiplier), float(self.sample_rate), int(self.steps))


class BudgetExceededError(EdgeVeilError, RuntimeError):
    """Training (or publishing) would take a node past its ε budget.

    Attributes
    ----------
    node_id, epsilon_after, budget, delta
    """

    def __init__(self, *, node_id: str, epsilon_after: float, budget: float, delta: float) -> None:
        self.node_id = node_id
        self.epsilon_after = epsilon_after
        self.budget = budget
        self.delta = delta
        super().__init__(
            f"node {node_id!r}: privacy budget exhausted — this round would bring ε to "
            f"{epsilon_after:.3f} (δ={delta:g}), above the budget ε={budget:g}; refusing to train "
            f"or publish. Raise the budget, the noise multiplier, or stop this node."
        )


class LedgerCorruptError(EdgeVeilError, RuntimeError):
    """The ledger file exists but cannot be trusted (unreadable, wrong format, bad checksum).

    Attributes
    ----------
    path, reason
    """

    def __init__(self, *, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(
            f"privacy ledger {path} is corrupt: {reason}. Refusing to start from ε=0; restore the "
            f"file from a backup or retire this node's identity."
        )


def _checksum(history: Sequence[Sequence[float | int]]) -> str:
    canonical = json.dumps([list(h) for h in history], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class PrivacyLedger:
    """Append-only DP-SGD spend of one node, optionally backed by a file.

    Parameters
    ----------
    node_id
        The node this ledger belongs to (checked when loading a file or a state dict).
    budget
        Maximum ε at ``delta`` over the node's lifetime.
    delta
        Target δ.
    mechanism
        ``"prv"`` (default, tighter) or ``"rdp"``.
    path
        Where :meth:`flush` writes; ``None`` keeps the ledger in memory (tests, centralized runs).

    Examples
    --------
    >>> ledger = PrivacyLedger(node_id="n", budget=2.0, delta=1e-5)
    >>> ledger.epsilon()
    0.0
    >>> ledger.epsilon_after(noise_multiplier=1.0, sample_rate=0.01, steps=100) < 2.0
    True
    """

    def __init__(
        self,
        *,
        node_id: str,
        budget: float,
        delta: float,
        mechanism: Mechanism = "prv",
        path: Path | None = None,
    ) -> None:
        if mechanism not in ("prv", "rdp"):
            raise ValueError(f"mechanism must be 'prv' or 'rdp', got {mechanism!r}")
        if not budget > 0:
            raise ValueError(f"budget must be > 0, got {budget}")
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        self.node_id = node_id
        self.budget = float(budget)
        self.delta = float(delta)
        self.mechanism: Mechanism = mechanism
        self.path = path
        self._history: list[LedgerEntry] = []
        self._durable_len = 0

    # ------------------------------------------------------------------ persistence
    @classmethod
    def open(
        cls,
        path: Path | str,
        *,
        node_id: str,
        budget: float,
        delta: float,
        mechanism: Mechanism = "prv",
    ) -> PrivacyLedger:
        """Open the ledger at ``path``, or start an empty one if no file exists there.

        Raises
        ------
        LedgerCorruptError
            the file exists but is unreadable, truncated, of another format or fails its checksum.
        ValueError
            the file belongs to another node, mechanism or δ.
        """
        path = Path(path)
        ledger = cls(node_id=node_id, budget=budget, delta=delta, mechanism=mechanism, path=path)
        if not path.exists():
            logger.info("new privacy ledger for %s at %s", node_id, path)
            return ledger
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LedgerCorruptError(path=path, reason=f"unreadable ({exc})") from exc
        if not isinstance(raw, dict) or raw.get("format") != _FORMAT:
            raise LedgerCorruptError(path=path, reason="not an EdgeVeil privacy ledger")
        checksum = raw.pop("checksum", None)
        history = raw.get("history")
        if not isinstance(history, list) or checksum != _checksum(history):
            raise LedgerCorruptError(path=path, reason="checksum mismatch")
        state_budget = raw.get("budget")
        raw["budget"] = ledger.budget  # the configured budget may change; history may not
        try:
            ledger.load_state_dict(raw)
        except (TypeError, KeyError) as exc:
            raise LedgerCorruptError(path=path, reason=f"malformed entries ({exc})") from exc
        if state_budget != ledger.budget:
            logger.warning("ledger %s: budget changed from %s to %s", path, state_budget, budget)
        ledger._durable_len = len(ledger._history)
        return ledger

    def state_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable snapshot (like ``PrivacyEngine.save_checkpoint``)."""
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "node_id": self.node_id,
            "mechanism": self.mechanism,
            "delta": self.delta,
            "budget": self.budget,
            "history": [list(e.as_tuple()) for e in self._history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace the history with ``state``'s.

        Raises
        ------
        ValueError
            keys differ from :meth:`state_dict`'s, or node, mechanism, δ or version differ, or the
            loaded history is shorter than the current one (that would lower ε).
        """
        keys = set(state)
        if keys != _STATE_KEYS:
            raise ValueError(
                f"ledger state keys mismatch: missing {sorted(_STATE_KEYS - keys)}, "
                f"unexpected {sorted(keys - _STATE_KEYS)}"
            )
        if state["format"] != _FORMAT or state["version"] != _VERSION:
            raise ValueError(f"unsupported ledger format {state['format']!r} v{state['version']}")
        if state["mechanism"] != self.mechanism:
            raise ValueError(
                f"ledger mechanism mismatch: state has {state['mechanism']!r}, "
                f"ledger uses {self.mechanism!r}"
            )
        if state["node_id"] != self.node_id:
            raise ValueError(f"ledger node mismatch: {state['node_id']!r} != {self.node_id!r}")
        if float(state["delta"]) != self.delta:
            raise ValueError(f"ledger delta mismatch: {state['delta']} != {self.delta}")
        history = [LedgerEntry(float(nm), float(q), int(s)) for nm, q, s in state["history"]]
        if len(history) < len(self._history) or history[: len(self._history)] != self._history:
            raise ValueError("loaded ledger history is not an extension of the current one")
        self._history = history

    def flush(self) -> None:
        """Write the history to :attr:`path` atomically (no-op in memory or when unchanged)."""
        if self.path is None or self._durable_len == len(self._history):
            return
        state = self.state_dict()
        state["checksum"] = _checksum(state["history"])
        _atomic_write(self.path, json.dumps(state, indent=1))
        self._durable_len = len(self._history)
        logger.debug("ledger %s flushed: %d entries", self.path, self._durable_len)

    @property
    def is_durable(self) -> bool:
        """``True`` when every recorded step is on disk (always ``True`` in memory)."""
        return self.path is None or self._durable_len == len(self._history)

    # ------------------------------------------------------------------ accounting
    @property
    def history(self) -> tuple[LedgerEntry, ...]:
        """The append-only history, oldest first."""
        return tuple(self._history)

    @property
    def total_steps(self) -> int:
        """Number of noisy steps recorded."""
        return sum(e.steps for e in self._history)

    def step(self, *, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Append ``steps`` DP-SGD steps (merged into the last entry when parameters match)."""
        entry = LedgerEntry(float(noise_multiplier), float(sample_rate), int(steps))
        if self._history and self._durable_len < len(self._history):
            last = self._history[-1]
            if (last.noise_multiplier, last.sample_rate) == (entry.noise_multiplier,
                                                            entry.sample_rate):
                self._history[-1] = LedgerEntry(last.noise_multiplier, last.sample_rate,
                                                last.steps + entry.steps)
                return
        self._history.append(entry)

    def epsilon(self, *, delta: float | None = None) -> float:
        """ε spent so far at ``delta`` (default: the ledger's δ), computed from the history."""
        return compute_epsilon(self.history, delta=self.delta if delta is None else delta,
                               mechanism=self.mechanism)

    def epsilon_after(self, *, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """ε the node would have spent after ``steps`` more steps with these parameters."""
        extra = LedgerEntry(float(noise_multiplier), float(sample_rate), int(steps))
        return compute_epsilon((*self._history, extra), delta=self.delta, mechanism=self.mechanism)

    def check_round(self, *, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """Return ε after the planned round, or raise if it would exceed the budget.

        Raises
        ------
        BudgetExceededError
            ε after the round would be above :attr:`budget`.
        """
        eps = self.epsilon_after(noise_multiplier=noise_multiplier, sample_rate=sample_rate,
                                 steps=steps)
        if eps > self.budget:
            raise BudgetExceededError(node_id=self.node_id, epsilon_after=eps,
                                      budget=self.budget, delta=self.delta)
        return eps

    def check_publish(self) -> float:
        """Flush, then return current ε, or raise if the recorded spend is above the budget.

        Call this right before an update leaves the node.

        Raises
        ------
        BudgetExceededError
            the recorded spend already exceeds the budget.
        """
        self.flush()
        eps = self.epsilon()
        if eps > self.budget:
            raise BudgetExceededError(node_id=self.node_id, epsilon_after=eps,
                                      budget=self.budget, delta=self.delta)
        return eps

    def optimizer_hook(self, *, sample_rate: float) -> Callable[[Any], None]:
        """Return a ``DPOptimizer.attach_step_hook`` callback that records every noisy step."""

        def hook(optimizer: Any) -> None:
            self.step(noise_multiplier=float(optimizer.noise_multiplier), sample_rate=sample_rate)

        return hook

    def __repr__(self) -> str:
        return (f"PrivacyLedger(node_id={self.node_id!r}, mechanism={self.mechanism!r}, "
                f"steps={self.total_steps}, budget={self.budget}, delta={self.delta})")


def load_ledgers(folder: Path | str, *, mechanism: Literal["prv", "rdp"] | None = None,
                 ) -> list[PrivacyLedger]:
    """Open every ``*.ledger.json`` file under ``folder`` with the settings stored in it.

    Examples
    --------
    >>> load_ledgers("/nonexistent")
    []
    """
    out: list[PrivacyLedger] = []
    folder = Path(folder)
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.ledger.json")):
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            node_id, budget, delta = raw["node_id"], raw["budget"], raw["delta"]
            mech = mechanism or raw["mechanism"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LedgerCorruptError(path=path, reason=f"unreadable ({exc})") from exc
        out.append(PrivacyLedger.open(path, node_id=node_id, budget=budget, delta=delta,
                                      mechanism=mech))
    return out


def ledger_path(folder: Path | str, node_id: str) -> Path:
    """Return the conventional ledger file of ``node_id`` under ``folder``."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in node_id)
    return Path(folder) / f"{safe}.ledger.json"

