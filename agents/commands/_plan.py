"""The federation plan from `--plan FILE` and command-line flags, shared by `edgeveil simulate`
and `edgeveil federation init` (not a command group: no ``register``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from pipeline.plan import FederationPlan, node_count_option

#: the help text of ``--plan``
PLAN_HELP = ("A plan file (JSON, e.g. a run's plan.json or federation.json); flags given "
             "next to it override its fields.")


def build_plan(plan_file: Path | None, *, task: str | None = None, nodes: int | None = None,
               strategy_options: str | None = None, **fields: Any) -> FederationPlan:
    """The plan in ``plan_file`` (or the defaults) with every flag that was given applied.

    ``nodes`` limits the task to its first n nodes; ``strategy_options`` is JSON. Every
    problem — unreadable file, bad JSON, a field out of range, unknown strategy options — is a
    ``typer.BadParameter`` (exit 2) naming it, before any work starts.
    """
    base: dict[str, Any] = {}
    if plan_file is not None:
        try:
            base = FederationPlan.load(plan_file).model_dump()
        except (OSError, ValueError) as exc:
            raise typer.BadParameter(f"--plan: {exc}") from exc
    changes = {k: v for k, v in fields.items() if v is not None}
    if task is not None:
        changes["task"] = task
    if strategy_options is not None:
        try:
            options = json.loads(strategy_options)
        except json.JSONDecodeError as exc:
            raise typer.BadParameter(f"--strategy-options is not JSON: {exc}") from exc
        if not isinstance(options, dict):
            raise typer.BadParameter("--strategy-options must be a JSON object")
        changes["strategy_options"] = options
    if nodes is not None:
        name = changes.get("task", base.get("task", FederationPlan().task))
        changes["task_options"] = {**base.get("task_options", {}), **node_count_option(name, nodes)}
        changes["nodes"] = []  # the task's first n nodes
    try:
        return FederationPlan.model_validate({**base, **changes})
    except ValueError as exc:
        raise typer.BadParameter(_explain(exc)) from exc


def _explain(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):  # pydantic: one line per field
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'plan'}: {e['msg']}"
                         for e in errors())
    return str(exc)
