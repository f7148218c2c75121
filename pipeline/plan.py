"""One federation plan: the recipe `edgeveil simulate`, `edgeveil federation init`, the benches
and the Kafka agents all run.

A :class:`FederationPlan` is frozen and validated (pydantic, unknown keys refused). A run
directory's ``federation.json`` *is* a plan (:meth:`FederationPlan.to_json`,
:meth:`FederationPlan.load`), so the recipe a simulation measured runs unchanged over Kafka::

    edgeveil simulate --plan recipe.json
    edgeveil federation init runs/fed --plan recipe.json

Fields, by what they decide:

* **task** — ``task``, ``task_options`` (e.g. ``{"sensors": 8}``), ``nodes`` (the ids; empty:
  every node of the task);
* **aggregation** — ``strategy``, ``strategy_options``; round policy ``mode`` (``sync`` rounds or
  ``async`` FedBuff), ``quorum`` (``None``: every node), ``min_quorum``, ``deadline_s``,
  ``buffer_size`` (``None``: the node count), ``max_staleness``; ``rounds`` (global versions);
* **privacy** — ``epsilon`` per node over the whole plan (``None``: no DP, benchmark anchors
  only), ``delta``, ``accountant`` (``prv``/``rdp``), ``noise_multiplier`` (fixed σ instead of
  calibrating it from the budget);
* **local training** — ``local_optimizer``, ``lr``, ``momentum``, ``local_steps``,
  ``batch_size`` (``None``: the task's), ``keep_optimizer_state``;
* **personalisation** — ``personalize_steps`` DP-SGD steps on each node after the last round
  (counted in σ and the ledger), ``personalize_lr``, ``personalize_layers``,
  ``personalize_optimizer``, ``local_head`` (the last layer never leaves the node);
* ``compression`` of the updates and ``seed``.

Examples
--------
>>> plan = FederationPlan(task="pedestrian-forecast", task_options={"sensors": 8}, rounds=30,
...                       epsilon=2.0, strategy="fedadam", local_optimizer="sgd", lr=0.1)
>>> plan.round_policy(8).quorum          # quorum None: every node closes a sync round
8
>>> FederationPlan(rounds=0)
Traceback (most recent call last):
...
pydantic_core._pydantic_core.ValidationError: 1 validation error for FederationPlan
rounds
  Input should be greater than or equal to 1 [type=greater_than_equal, input_value=0, input_type=int]
...
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from pipeline.server.rounds import RoundPolicy

__all__ = ["FederationPlan", "node_count_option"]

Optimizer = Literal["sgd", "adam"]


def node_count_option(task: str, nodes: int) -> dict[str, int]:
    """The task option that limits ``task`` to its first ``nodes`` nodes.

    Examples
    --------
    >>> node_count_option("fashion-mnist", 4)
    {'num_nodes': 4}
    """
    return {"num_nodes" if task == "fashion-mnist" else "sensors": nodes}


class FederationPlan(BaseModel):
    """What the aggregator and every edge of one federation agree on (see the module doc)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # task
    task: str = "pedestrian-forecast"
    task_options: dict[str, Any] = Field(default_factory=dict)
    nodes: list[str] = Field(default_factory=list)
    # aggregation
    strategy: str = "fedavg"
    strategy_options: dict[str, Any] = Field(default_factory=dict)
    mode: Literal["sync", "async"] = "sync"
    quorum: int | None = Field(default=None, ge=1)
    min_quorum: int = Field(default=1, ge=1)
    deadline_s: float = Field(default=120.0, gt=0)
    buffer_size: int | None = Field(default=None, ge=1)
    max_staleness: int = Field(default=4, ge=0)
    rounds: int = Field(default=5, ge=1)
    # privacy
    epsilon: float | None = Field(default=2.0, gt=0)
    delta: float = Field(default=1e-5, gt=0, lt=1)
    accountant: Literal["prv", "rdp"] = "prv"
    noise_multiplier: float | None = Field(default=None, gt=0)
    # local training (None: the task's own)
    local_optimizer: Optimizer | None = None
    lr: float | None = Field(default=None, gt=0)
    momentum: float | None = Field(default=None, ge=0, lt=1)
    local_steps: int | None = Field(default=None, ge=1)
    batch_size: int | None = Field(default=None, ge=1)
    keep_optimizer_state: bool = False
    # personalisation after the last round
    personalize_steps: int = Field(default=0, ge=0)
    personalize_lr: float | None = Field(default=None, gt=0)
    personalize_layers: Literal["all", "head"] = "all"
    personalize_optimizer: Optimizer | None = None
    local_head: bool = False
    # the wire and reproducibility
    compression: Literal["int8", "float16", "float32"] = "int8"
    seed: int = 0

    @field_validator("nodes")
    @classmethod
    def _unique_nodes(cls, nodes: list[str]) -> list[str]:
        if len(set(nodes)) != len(nodes):
            raise ValueError("node ids must be unique")
        return nodes

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str) -> str:
        from pipeline.tasks import TASKS

        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; known: {sorted(TASKS)}")
        return task

    @model_validator(mode="after")
    def _consistent(self) -> FederationPlan:
        from pipeline.server.strategies import make_strategy

        make_strategy(self.strategy, **self.strategy_options)  # ValueError names the problem
        if self.quorum is not None and self.min_quorum > self.quorum:
            raise ValueError(f"min_quorum {self.min_quorum} > quorum {self.quorum}")
        if self.nodes and self.quorum is not None and self.quorum > len(self.nodes):
            raise ValueError(f"quorum {self.quorum} > {len(self.nodes)} nodes: no round would close")
        return self

    def replace(self, **changes: Any) -> FederationPlan:
        """A copy with ``changes``, validated like a new plan.

        Examples
        --------
        >>> FederationPlan(rounds=3).replace(mode="async", buffer_size=2).round_policy(5).buffer_size
        2
        """
        return type(self).model_validate({**self.model_dump(), **changes})

    # ------------------------------------------------------------------ derived
    def round_policy(self, nodes: int, *, deadline: bool = True) -> RoundPolicy:
        """The aggregator's :class:`~pipeline.server.rounds.RoundPolicy` for ``nodes`` nodes:
        ``quorum`` and ``buffer_size`` default to every node (``deadline=False``: no wall-clock
        deadline, as in simulation)."""
        from pipeline.server.rounds import RoundPolicy

        quorum = self.quorum or nodes
        return RoundPolicy(mode=self.mode, quorum=quorum, min_quorum=min(self.min_quorum, quorum),
                           deadline_s=self.deadline_s if deadline else math.inf,
                           buffer_size=self.buffer_size or nodes, max_staleness=self.max_staleness)

    # ------------------------------------------------------------------ files
    def to_json(self) -> str:
        """The plan as indented JSON (what ``federation.json`` holds)."""
        return self.model_dump_json(indent=2)

    @classmethod
    def load(cls, path: Path | str) -> FederationPlan:
        """Read a plan file (or a run directory's ``federation.json``).

        Raises ``ValueError`` naming the file and every bad field. A ``federation.json`` of
        earlier versions (``task_kwargs``, ``strategy_kwargs``) is read too.
        """
        p = Path(path)
        if p.is_dir():
            p = p / "federation.json"
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{p}: not JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{p}: a plan is a JSON object, got {type(data).__name__}")
        for old, new in (("task_kwargs", "task_options"), ("strategy_kwargs", "strategy_options")):
            if old in data and new not in data:
                data[new] = data.pop(old)
        try:
            return cls.model_validate(data)
        except ValueError as exc:
            raise ValueError(f"{p}: {exc}") from exc
