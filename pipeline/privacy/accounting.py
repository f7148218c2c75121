"""Pure ε computation over a ledger history (the math, apart from the ledger's storage).

The history is loaded into a fresh Opacus ``PRVAccountant`` or ``RDPAccountant``. Because DP
composition is commutative, entries with the same ``(noise_multiplier, sample_rate)`` are merged
before the accountant sees them: PRV composition cost grows with the number of distinct entries,
not with the number of steps.

Examples
--------
>>> from pipeline.privacy.ledger import LedgerEntry
>>> round(compute_epsilon([LedgerEntry(1.0, 0.01, 100)], delta=1e-5, mechanism="rdp"), 3)
1.214
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

from opacus.accountants import PRVAccountant, RDPAccountant

if TYPE_CHECKING:
    from pipeline.privacy.ledger import LedgerEntry

__all__ = ["Mechanism", "compute_epsilon", "merge_history"]

Mechanism = Literal["prv", "rdp"]


def merge_history(entries: Iterable[LedgerEntry]) -> tuple[tuple[float, float, int], ...]:
    """Merge entries with equal ``(noise_multiplier, sample_rate)``, summing steps (sorted)."""
    steps: dict[tuple[float, float], int] = {}
    for e in entries:
        key = (float(e.noise_multiplier), float(e.sample_rate))
        steps[key] = steps.get(key, 0) + int(e.steps)
    return tuple((nm, q, s) for (nm, q), s in sorted(steps.items()))


@lru_cache(maxsize=4096)
def _epsilon(history: tuple[tuple[float, float, int], ...], delta: float, mechanism: str) -> float:
    if not history:
        return 0.0
    accountant = PRVAccountant() if mechanism == "prv" else RDPAccountant()
    accountant.history = list(history)
    return float(accountant.get_epsilon(delta=delta))


def compute_epsilon(entries: Iterable[LedgerEntry], *, delta: float,
                    mechanism: Mechanism = "prv") -> float:
    """Return ε at ``delta`` for a DP-SGD history (0.0 for an empty history).

    Parameters
    ----------
    entries
        Ledger entries, any order.
    delta
        Target δ.
    mechanism
        ``"prv"`` (PRV accountant, Gopi et al. 2021) or ``"rdp"`` (Rényi DP, Mironov 2017).
    """
    if mechanism not in ("prv", "rdp"):
        raise ValueError(f"mechanism must be 'prv' or 'rdp', got {mechanism!r}")
    return _epsilon(merge_history(entries), float(delta), mechanism)
