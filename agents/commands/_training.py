"""Option checks shared by `edgeveil simulate` and `edgeveil federation init` (not a command
group: no ``register``)."""

from __future__ import annotations

import json
from typing import Any

import typer


def training_options(strategy_options: str, local_optimizer: str | None,
                     lr: float | None) -> dict[str, Any]:
    """Return ``--strategy-options`` as a dict; ``typer.BadParameter`` (exit 2) for bad JSON, a
    non-object, an optimizer other than sgd/adam, or ``lr <= 0``."""
    if local_optimizer not in (None, "sgd", "adam"):
        raise typer.BadParameter("--local-optimizer must be sgd or adam")
    if lr is not None and lr <= 0:
        raise typer.BadParameter("--lr must be > 0")
    try:
        options = json.loads(strategy_options)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"--strategy-options is not JSON: {exc}") from exc
    if not isinstance(options, dict):
        raise typer.BadParameter("--strategy-options must be a JSON object")
    return options
