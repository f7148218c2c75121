"""Federated rounds in one process, through the same code the Kafka agents run.

Every node is a :class:`pipeline.node.EdgeNode`, the class the Kafka edge agent runs: it holds its
task partition, its durable :class:`~pipeline.privacy.ledger.PrivacyLedger` and its signing key
and turns a global model into signed, compressed update bytes. The aggregator side is
:class:`pipeline.sim.server.InProcessServer`: the :class:`~pipeline.server.rounds.RoundCoordinator`
the Kafka aggregator agent runs (verify, admit each (node, round) once, aggregate in key order,
publish a version only when the strategy stepped), driven by function calls instead of a topic.
:func:`simulate` wires N nodes to it, in ``sync`` rounds or ``async`` (FedBuff) with real
staleness; the same updates give bit-identical global weights here and over Kafka
(``tests/agents/test_sim_kafka_identical.py``). By default the nodes live in forked worker
processes (:mod:`pipeline.sim.pool`), one per CPU; updates reach the server in node order
whatever the layout, so it does not change the result.

Examples
--------
>>> from pipeline.plan import FederationPlan
>>> from pipeline.sim import simulate
>>> plan = FederationPlan(task="fashion-mnist", rounds=1, epsilon=5.0, local_steps=2,
...                       batch_size=32, task_options={"num_nodes": 2, "max_train_per_node": 128,
...                                                    "max_test": 128})
>>> result = simulate(plan)
>>> len(result.rounds), sorted(result.epsilons) == sorted(plan.nodes or result.epsilons)
(1, True)
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.codec import (
    CodecError,
    KeyRegistry,
    generate_keypair,
)
from pipeline.node.build import build_nodes, local_config, make_task
from pipeline.node.edge import Weights
from pipeline.plan import FederationPlan
from pipeline.privacy.accounting import Mechanism
from pipeline.sim.pool import (
    _NodePool,
    _personalize_nodes,
    _torch_threads,
    _train_nodes,
    _worker_count,
)
from pipeline.sim.server import InProcessServer
from pipeline.tasks import Task
from pipeline.tasks.base import Split
from pipeline.weights import get_weights, set_weights

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class RoundRow:
    """One row of the simulation log (JSON lines and CSV)."""

    round: int
    metric_name: str
    metric: float
    metrics: Mapping[str, float]
    epsilon_max: float
    epsilons: Mapping[str, float]
    bytes_per_update: float
    raw_float32_bytes: int
    seconds: float
    nodes_refused: tuple[str, ...] = ()
    #: global version after this round (in ``async`` mode it may move several times a round)
    version: int = 0
    #: updates the aggregator refused this round, ``node: reason`` (e.g. ``stale`` in async mode)
    updates_rejected: tuple[str, ...] = ()
    #: staleness τ of each admitted update this round (all 0 in ``sync`` mode)
    staleness: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SimulationResult:
    """Everything :func:`simulate` measured."""

    task: str
    initial_metrics: Mapping[str, float]
    rounds: tuple[RoundRow, ...]
    final_metrics: Mapping[str, float]
    epsilons: Mapping[str, float]
    noise_multipliers: Mapping[str, float]
    weights: Mapping[str, np.ndarray] = field(repr=False)
    seconds: float = 0.0
    #: after ``personalize_steps``: each node's fine-tuned weights (kept on the node in
    #: deployment) and its metrics on ``eval_split`` for its own data; empty otherwise.
    personal_weights: Mapping[str, Mapping[str, np.ndarray]] = field(default_factory=dict,
                                                                     repr=False)
    personal_metrics: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    personal_seconds: float = 0.0


def simulate(
    plan: FederationPlan,
    *,
    task: Task | None = None,
    out: Path | str | None = None,
    eval_every: int = 1,
    eval_split: Split = "test",
    progress: Callable[[int, RoundRow], None] | None = None,
    workers: int | None = None,
) -> SimulationResult:
    """Run ``plan`` with every node and the aggregator in this process.

    The plan (:class:`~pipeline.plan.FederationPlan`) is the recipe the Kafka federation runs
    too: task, nodes, strategy, round policy, DP budget and accountant, local training,
    personalisation, compression and seed. σ is calibrated so that every planned DP-SGD step —
    ``rounds × local_steps + personalize_steps`` — fits in ``epsilon``.

    Parameters
    ----------
    plan
        The recipe. ``plan.nodes`` empty: every node of the task.
    task
        A task already built from ``plan.task`` (tests reuse one); default: built from the plan.
    out
        Folder for ``rounds.jsonl``, ``rounds.csv``, ``summary.json``, ``plan.json`` and
        ``ledgers/``; ``None`` keeps ledgers in memory and writes nothing.
    eval_every, eval_split
        Evaluate the global model every n rounds (and always after the last) on this split.
    progress
        Called after each round with ``(round, row)`` (the CLI draws its progress bar with it).
    workers
        Train the nodes in this many forked worker processes, each with
        ``max(1, torch.get_num_threads() // workers)`` torch threads (nodes are balanced over
        the workers by batch size). ``None`` (default): one per available CPU, at most one per
        node; ``1``: every node in this process, one after the other. A node's update depends
        only on the seed and its torch thread count, not on the worker layout: with one thread
        per worker, 2 and 10 workers give the same result. Updates arrive in node order.

    Round policy: ``sync`` — every round, all nodes train from the current version and the
    round closes at ``quorum`` arrivals (default: all; later ones are refused as ``stale``, as
    over Kafka) or when the round's updates are in. ``async`` — the updates are offered one by
    one in node order and the coordinator aggregates every ``buffer_size`` (default: the node
    count) admitted updates, so with ``buffer_size`` below the node count the later updates of a
    round arrive τ > 0 versions late (FedBuff down-weights them; older than ``max_staleness``:
    refused as ``stale``); each round's nodes train from the newest version. A version counts
    only when the strategy stepped.

    Personalisation: ``personalize_steps`` > 0 — after the last round every node fine-tunes
    the final global model with that many more DP-SGD steps on its own data
    (:meth:`EdgeNode.personalize`), recorded in its ledger; the result then holds
    ``personal_weights`` and each node's ``personal_metrics`` on ``eval_split``.
    ``local_head`` — every node keeps the model's last layer to itself.

    Raises
    ------
    BudgetExceededError
        never for a calibrated plan; with a fixed ``noise_multiplier`` nodes over budget are
        skipped and listed in ``RoundRow.nodes_refused`` instead.
    ValueError
        ``plan.nodes`` names a node the task does not have, or ``task`` is another task.
    """
    rounds, epsilon, delta, seed = plan.rounds, plan.epsilon, plan.delta, plan.seed
    strategy = plan.strategy
    accountant: Mechanism = plan.accountant
    personalize_steps, local_head = plan.personalize_steps, plan.local_head
    t_start = time.perf_counter()
    torch.manual_seed(seed)
    the_task = task if task is not None else make_task(plan.task, plan.task_options, seed=seed)
    if the_task.name != plan.task:
        raise ValueError(f"task {the_task.name!r} given for a plan of {plan.task!r}")
    node_ids = list(plan.nodes) or list(the_task.node_ids())
    missing = sorted(set(node_ids) - set(the_task.node_ids()))
    if missing:
        raise ValueError(f"plan nodes {missing} are not nodes of {plan.task!r} "
                         f"with options {plan.task_options}")
    cfg = local_config(the_task, lr=plan.lr, batch_size=plan.batch_size,
                       local_steps=plan.local_steps, momentum=plan.momentum,
                       optimizer=plan.local_optimizer)
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(seed)
    model = the_task.build_model()
    initial = get_weights(model)
    keys = KeyRegistry()
    private_keys: dict[str, bytes] = {}
    for nid in node_ids:
        private_keys[nid], public = generate_keypair()
        keys.register(nid, public)
    built = build_nodes(the_task, private_keys=private_keys, rounds=rounds, epsilon=epsilon,
                        delta=delta, accountant=accountant,
                        ledger_dir=out_dir / "ledgers" if out_dir else None, train_config=cfg,
                        noise_multiplier=plan.noise_multiplier, compression=plan.compression,
                        seed=seed, personalize_steps=personalize_steps, local_head=local_head,
                        keep_optimizer_state=plan.keep_optimizer_state, federation=node_ids)
    edge = [built[nid] for nid in node_ids]
    sigmas = {n.node_id: float(n.noise_multiplier) for n in edge
              if n.ledger is not None and n.noise_multiplier is not None}
    logger.info("simulate %s: %d nodes, %d rounds, eps=%s, sigma=%s", the_task.name, len(edge),
                rounds, epsilon, sorted(set(round(s, 3) for s in sigmas.values())))
    server = InProcessServer.from_plan(plan, keys=keys, initial=initial, nodes=len(edge))
    raw_bytes = sum(int(v.size) * 4 for v in initial.values())
    eval_model = the_task.build_model()

    def _evaluate(weights: Mapping[str, np.ndarray]) -> dict[str, float]:
        set_weights(eval_model, weights)
        return the_task.evaluate(eval_model, split=eval_split)

    metric_name = the_task.primary_metric
    rows: list[RoundRow] = []
    n_workers = _worker_count(workers, len(edge))
    caller_threads = torch.get_num_threads()
    worker_threads = max(1, caller_threads // n_workers)
    pool = _NodePool(edge, workers=n_workers, threads=worker_threads) if n_workers > 1 else None
    try:
        if pool is not None:
            # the nodes train round 1 while this process evaluates the initial model
            pool.submit(server.weights, round=1, version=server.version)
            with _torch_threads(worker_threads):
                initial_metrics = _evaluate(initial)
        else:
            initial_metrics = _evaluate(initial)
        metrics = initial_metrics
        t0 = time.perf_counter()
        for r in range(1, rounds + 1):
            if pool is not None:
                outcomes, node_eps = pool.collect()
            else:
                outcomes, node_eps = _train_nodes(edge, server.weights, round=r,
                                                  version=server.version)
            refused: list[str] = []
            rejected: list[str] = []
            update_sizes: list[int] = []
            staleness: dict[str, int] = {}
            for index, data, refusal in outcomes:  # arrival order: node order
                if data is None:
                    logger.warning("%s", refusal)
                    refused.append(edge[index].node_id)
                    continue
                try:
                    update, tau = server.receive(data, now=float(r))
                except CodecError as err:
                    logger.warning("round %d: update of %s refused: %s", r,
                                   edge[index].node_id, err)
                    rejected.append(f"{edge[index].node_id}: {err.reason}")
                    continue
                update_sizes.append(len(data))
                staleness[update.node_id] = tau
            server.end_round()
            if not update_sizes:
                logger.warning("round %d: no update arrived; global model unchanged", r)
            weights = server.weights
            overlapped = pool is not None and r < rounds
            if pool is not None and overlapped:
                # round r+1 trains from these weights while they are evaluated here
                pool.submit(weights, round=r + 1, version=server.version)
            if r % eval_every == 0 or r == rounds:
                with _torch_threads(worker_threads if overlapped else caller_threads):
                    metrics = _evaluate(weights)
            eps = {n.node_id: node_eps[n.node_id] for n in edge}
            t1 = time.perf_counter()
            row = RoundRow(round=r, metric_name=metric_name,
                           metric=float(metrics[metric_name]),
                           metrics={k: v for k, v in metrics.items() if ":" not in k},
                           epsilon_max=max(eps.values()), epsilons=eps,
                           bytes_per_update=float(np.mean(update_sizes or [0])),
                           raw_float32_bytes=raw_bytes, seconds=t1 - t0,
                           nodes_refused=tuple(refused), version=server.version,
                           updates_rejected=tuple(rejected), staleness=staleness)
            t0 = t1
            rows.append(row)
            if out_dir is not None:
                _append_row(out_dir, row)
            if progress is not None:
                progress(r, row)
        seconds = time.perf_counter() - t_start
        personal: dict[str, Weights] = {}
        personal_metrics: dict[str, dict[str, float]] = {}
        final_eps = dict(rows[-1].epsilons)
        t_personal = time.perf_counter()
        if personalize_steps or local_head:
            options = {"steps": personalize_steps, "lr": plan.personalize_lr,
                       "layers": plan.personalize_layers, "round": rounds + 1,
                       "optimizer": plan.personalize_optimizer}
            if pool is not None:
                pool.submit_personalize(server.weights, options)
                done, node_eps = pool.collect()
            else:
                done, node_eps = _personalize_nodes(edge, server.weights, options=options)
            final_eps = {n.node_id: node_eps[n.node_id] for n in edge}
            for index, weights, refusal in done:
                nid = edge[index].node_id
                if weights is None:
                    logger.warning("%s", refusal)
                    continue
                personal[nid] = weights
                set_weights(eval_model, weights)
                personal_metrics[nid] = the_task.evaluate(
                    eval_model, split=eval_split, node_id=nid)
    finally:
        if pool is not None:
            pool.close()
    sim = SimulationResult(task=the_task.name, initial_metrics=initial_metrics,
                           rounds=tuple(rows), final_metrics=metrics,
                           epsilons=final_eps, noise_multipliers=sigmas,
                           weights=server.weights, seconds=seconds,
                           personal_weights=personal, personal_metrics=personal_metrics,
                           personal_seconds=(time.perf_counter() - t_personal
                                             if personalize_steps or local_head else 0.0))
    if out_dir is not None:
        summary = {k: v for k, v in asdict(sim).items() if k not in ("weights", "rounds", "personal_weights")}
        summary.update(rounds=len(rows), strategy=strategy, seed=seed, delta=delta,
                       accountant=accountant, compression=plan.compression, budget=epsilon)
        (out_dir / "plan.json").write_text(plan.to_json())
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    return sim


_CSV_FIELDS = ["round", "metric_name", "metric", "epsilon_max", "bytes_per_update",
               "raw_float32_bytes", "seconds", "nodes_refused"]


def _append_row(out_dir: Path, row: RoundRow) -> None:
    with (out_dir / "rounds.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(asdict(row), default=float) + "\n")
    csv_path = out_dir / "rounds.csv"
    new = not csv_path.exists()
    with csv_path.open("a", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=_CSV_FIELDS + [f"eps:{k}" for k in row.epsilons])
        if new:
            w.writeheader()
        rec: dict[str, Any] = {k: getattr(row, k) for k in _CSV_FIELDS}
        rec["nodes_refused"] = ";".join(row.nodes_refused)
        rec.update({f"eps:{k}": v for k, v in row.epsilons.items()})
        w.writerow(rec)


def summarize_rows(rows: Sequence[RoundRow]) -> list[dict[str, Any]]:
    """Return the rows as plain dicts (for JSON)."""
    return [asdict(r) for r in rows]
