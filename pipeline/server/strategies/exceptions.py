"""Errors raised by aggregation strategies."""

from __future__ import annotations

from pipeline.exceptions import EdgeVeilError

__all__ = ["IncompatibleUpdateError", "NotEnoughResultsError", "StrategyError"]


class StrategyError(EdgeVeilError):
    """Base class of strategy errors."""


class IncompatibleUpdateError(StrategyError, ValueError):
    """A client delta's tensor names or shapes differ from the global model's.

    Parameters
    ----------
    node_id : str
        The offending client.
    detail : str
        What differs.

    Examples
    --------
    >>> IncompatibleUpdateError("n1", "missing 'w'").node_id
    'n1'
    """

    def __init__(self, node_id: str, detail: str) -> None:
        self.node_id = node_id
        self.detail = detail
        super().__init__(f"update from {node_id!r} does not fit the global model: {detail}")


class NotEnoughResultsError(StrategyError, ValueError):
    """A robust rule needs more results than it got (e.g. Krum needs ``n > 2f + 2``).

    Examples
    --------
    >>> NotEnoughResultsError("krum", needed=5, got=3).needed
    5
    """

    def __init__(self, strategy: str, *, needed: int, got: int) -> None:
        self.strategy = strategy
        self.needed = needed
        self.got = got
        super().__init__(f"{strategy} needs at least {needed} results, got {got}")
