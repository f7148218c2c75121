"""Aggregation strategies: FedAvg, server optimizers, Byzantine-robust rules, FedBuff, client DP.

Build one with :func:`make_strategy`; each algorithm lives in its own module, citing its paper.
Modules are imported on demand so that, e.g., the Opacus accountant behind ``dp_fedavg`` is only
loaded when that strategy is asked for.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from pipeline.server.strategies.aggregate import (
    clip_l2,
    coordinate_median,
    krum_scores,
    multi_krum,
    staleness_weight,
    trimmed_mean,
    weighted_average,
)
from pipeline.server.strategies.base import (
    ClientResult,
    StatefulStrategy,
    Strategy,
    Weights,
    check_results,
    copy_weights,
)
from pipeline.server.strategies.exceptions import (
    IncompatibleUpdateError,
    NotEnoughResultsError,
    StrategyError,
)
from pipeline.server.strategies.fedavg import FedAvg, RunningFedAvg

__all__ = [
    "STRATEGIES",
    "ClientResult",
    "FedAvg",
    "IncompatibleUpdateError",
    "NotEnoughResultsError",
    "RunningFedAvg",
    "StatefulStrategy",
    "Strategy",
    "StrategyError",
    "Weights",
    "check_results",
    "clip_l2",
    "coordinate_median",
    "copy_weights",
    "krum_scores",
    "make_strategy",
    "multi_krum",
    "staleness_weight",
    "trimmed_mean",
    "weighted_average",
]

STRATEGIES: dict[str, str] = {
    "fedavg": "pipeline.server.strategies.fedavg:FedAvg",
    "fedavgm": "pipeline.server.strategies.fedavgm:FedAvgM",
    "fedadam": "pipeline.server.strategies.fedadam:FedAdam",
    "median": "pipeline.server.strategies.median:Median",
    "trimmed_mean": "pipeline.server.strategies.trimmed_mean:TrimmedMean",
    "krum": "pipeline.server.strategies.krum:MultiKrum",
    "fedbuff": "pipeline.server.strategies.fedbuff:FedBuff",
    "dp_fedavg": "pipeline.server.strategies.client_dp:ClientDP",
}
"""Strategy name → ``module:Class``."""


def make_strategy(name: str, **kwargs: Any) -> Strategy:
    """Build the strategy called ``name`` with keyword options ``kwargs``.

    Parameters
    ----------
    name : str
        One of :data:`STRATEGIES`: ``fedavg``, ``fedavgm``, ``fedadam``, ``median``,
        ``trimmed_mean``, ``krum`` (Multi-Krum), ``fedbuff``, ``dp_fedavg``.
    **kwargs
        Passed to the strategy's constructor (all keyword-only).

    Raises
    ------
    ValueError
        For an unknown name, listing the valid ones; for an option the strategy does not
        take, listing the ones it does.

    Examples
    --------
    >>> make_strategy("fedavg", server_lr=1.0).name
    'fedavg'
    >>> try:
    ...     make_strategy("fedsgd")
    ... except ValueError as err:
    ...     print(str(err).split(";")[0])
    unknown strategy 'fedsgd'
    """
    try:
        target = STRATEGIES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown strategy {name!r}; valid names: {', '.join(sorted(STRATEGIES))}"
        ) from None
    module_name, cls_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    params = inspect.signature(cls).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise ValueError(f"strategy {name!r} has no option(s) {', '.join(unknown)}; "
                             f"its options: {', '.join(params) or 'none'}")
    strategy: Strategy = cls(**kwargs)
    return strategy
