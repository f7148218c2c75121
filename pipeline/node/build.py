"""Building edge nodes: the one place `edgeveil simulate` and the Kafka edge agent both go through.

:func:`make_task` builds the task the same way from a name and options, :func:`local_config`
applies a recipe's overrides to the task's local training, and :func:`build_nodes` makes the
:class:`~pipeline.node.edge.EdgeNode` of each hosted node: one shared sample rate for the whole
federation (:func:`~pipeline.node.edge.common_batch_sizes`), its durable ledger, and σ calibrated
once per (sample rate, accountant) so that every planned step — ``rounds × local_steps`` plus the
final personalisation steps — fits in the budget.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from pipeline.codec import Compression
from pipeline.node.edge import EdgeNode, common_batch_sizes
from pipeline.plan import node_count_option
from pipeline.privacy import noise_multiplier_for_budget
from pipeline.privacy.accounting import Mechanism
from pipeline.privacy.ledger import PrivacyLedger, ledger_path
from pipeline.tasks import Task, TrainConfig, get_task

__all__ = ["build_nodes", "local_config", "make_task"]

logger = logging.getLogger(__name__)


def make_task(name: str, options: Mapping[str, Any] | None = None, *, nodes: int | None = None,
              seed: int = 0) -> Task:
    """Build task ``name``; ``nodes`` limits it to the first n nodes, and fashion-mnist's
    partition follows ``seed`` unless ``options`` set one.

    Examples
    --------
    >>> make_task("pedestrian-forecast", {"max_train_per_node": 64}, nodes=2).node_ids()[:1]
    ['akl-107-quay-street']
    """
    opts = dict(options or {})
    if nodes is not None:
        opts = {**node_count_option(name, nodes), **opts}
    if name == "fashion-mnist":
        opts.setdefault("seed", seed)
    return get_task(name, **opts)


def local_config(task: Task, *, lr: float | None = None, batch_size: int | None = None,
                 local_steps: int | None = None, momentum: float | None = None,
                 optimizer: Literal["sgd", "adam"] | None = None) -> TrainConfig:
    """The task's local training with a recipe's overrides (``None`` keeps the task's)."""
    base = task.train_config
    return replace(base, lr=base.lr if lr is None else float(lr),
                   batch_size=batch_size or base.batch_size,
                   local_steps=local_steps or base.local_steps,
                   momentum=base.momentum if momentum is None else momentum,
                   optimizer=optimizer or base.optimizer)


def build_nodes(
    task: Task,
    *,
    private_keys: Mapping[str, bytes],
    rounds: int,
    epsilon: float | None,
    delta: float = 1e-5,
    accountant: Mechanism = "prv",
    ledger_dir: Path | None = None,
    train_config: TrainConfig | None = None,
    noise_multiplier: float | None = None,
    compression: Compression | str = Compression.INT8,
    seed: int = 0,
    personalize_steps: int = 0,
    local_head: bool = False,
    keep_optimizer_state: bool = False,
    federation: Sequence[str] | None = None,
) -> dict[str, EdgeNode]:
    """One :class:`EdgeNode` per node of ``private_keys`` (the nodes this process hosts).

    Parameters
    ----------
    task
        The federation's task; batch sizes are shared over all nodes of the federation, so a
        node gets the same sample rate (and σ) wherever it is hosted.
    private_keys
        Node id → Ed25519 private key, for the hosted nodes.
    rounds, personalize_steps
        The plan: σ covers ``rounds × local_steps + personalize_steps`` DP-SGD steps.
    epsilon, delta, accountant
        Per-node budget; ``epsilon=None`` trains without DP (benchmark anchors only).
    ledger_dir
        Where each node's ledger file lives (``<node>.ledger.json``, reopened if present);
        ``None`` keeps the ledgers in memory.
    noise_multiplier
        A fixed σ instead of calibrating one from the budget.
    federation
        Every node of the federation, in its order (default ``task.node_ids()``): batch sizes
        are shared over them and a node's position seeds its sampling.

    Examples
    --------
    >>> from pipeline.codec import generate_keypair
    >>> task = make_task("pedestrian-forecast", {"max_train_per_node": 64}, nodes=2)
    >>> nodes = build_nodes(task, private_keys={n: generate_keypair()[0] for n in task.node_ids()},
    ...                     rounds=3, epsilon=2.0, accountant="rdp")
    >>> sorted(round(n.noise_multiplier, 3) for n in nodes.values()) == [
    ...     round(nodes["akl-107-quay-street"].noise_multiplier, 3)] * 2
    True
    """
    cfg = train_config or task.train_config
    all_ids = list(federation if federation is not None else task.node_ids())
    unknown = sorted(set(private_keys) - set(all_ids))
    if unknown:
        raise ValueError(f"nodes {unknown} are not in the federation {all_ids}")
    sizes = [len(task.train_data(n)) for n in all_ids]
    batches = common_batch_sizes(sizes, batch_size=cfg.batch_size)
    sigmas: dict[tuple[float, str], float] = {}
    nodes: dict[str, EdgeNode] = {}
    for node_id in [n for n in all_ids if n in private_keys]:
        index = all_ids.index(node_id)
        ledger = None
        if epsilon is not None:
            ledger = (PrivacyLedger.open(ledger_path(ledger_dir, node_id), node_id=node_id,
                                         budget=epsilon, delta=delta, mechanism=accountant)
                      if ledger_dir is not None else
                      PrivacyLedger(node_id=node_id, budget=epsilon, delta=delta,
                                    mechanism=accountant))
        node = EdgeNode(node_id=node_id, task=task, private_key=private_keys[node_id],
                        ledger=ledger, noise_multiplier=1.0 if ledger else None,
                        train_config=cfg, compression=Compression(compression), seed=seed,
                        index=index, batch_size=batches[index], local_head=local_head,
                        keep_optimizer_state=keep_optimizer_state)
        if ledger is not None and epsilon is not None:
            key = (round(node.sample_rate, 12), str(ledger.mechanism))
            if key not in sigmas:
                sigmas[key] = noise_multiplier or noise_multiplier_for_budget(
                    epsilon=epsilon, delta=delta, sample_rate=node.sample_rate,
                    steps=rounds * cfg.local_steps + personalize_steps,
                    accountant=ledger.mechanism)
            node.noise_multiplier = sigmas[key]  # replaces the placeholder above
        nodes[node_id] = node
    logger.info("built %d node(s) of %s: eps=%s, sigma=%s", len(nodes), task.name, epsilon,
                sorted({round(s, 3) for s in sigmas.values()}))
    return nodes
