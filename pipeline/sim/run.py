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
>>> from pipeline.sim import simulate
>>> result = simulate(task="fashion-mnist", nodes=2, rounds=1, epsilon=5.0, seed=0,
...                   task_options={"max_train_per_node": 128, "max_test": 128},
...                   local_steps=2, batch_size=32)
>>> len(result.rounds)
1
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from pipeline.codec import (
    CodecError,
    Compression,
    KeyRegistry,
    generate_keypair,
)
from pipeline.node.build import build_nodes, local_config, make_task
from pipeline.node.edge import PersonalLayers, Weights
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
    *,
    task: str | Task,
    rounds: int,
    epsilon: float | None,
    nodes: int | None = None,
    strategy: str = "fedavg",
    strategy_options: Mapping[str, Any] | None = None,
    delta: float = 1e-5,
    accountant: Mechanism = "prv",
    noise_multiplier: float | None = None,
    compression: Compression | str = Compression.INT8,
    seed: int = 0,
    out: Path | str | None = None,
    task_options: Mapping[str, Any] | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    local_steps: int | None = None,
    eval_every: int = 1,
    eval_split: Split = "test",
    progress: Callable[[int, RoundRow], None] | None = None,
    workers: int | None = None,
    personalize_steps: int = 0,
    personalize_lr: float | None = None,
    personalize_layers: PersonalLayers = "all",
    local_head: bool = False,
    local_optimizer: Literal["sgd", "adam"] | None = None,
    momentum: float | None = None,
    personalize_optimizer: Literal["sgd", "adam"] | None = None,
    keep_optimizer_state: bool = False,
    mode: Literal["sync", "async"] = "sync",
    buffer_size: int | None = None,
    max_staleness: int = 4,
) -> SimulationResult:
    """Run ``rounds`` federated rounds of ``task`` with every node and the aggregator in-process.

    Parameters
    ----------
    task
        Task name (built with ``task_options`` and ``nodes``) or a ready :class:`Task`.
    rounds
        Planned rounds; the noise multiplier is calibrated so the whole plan spends ≤ ``epsilon``.
    epsilon
        Per-node ε budget at ``delta``; ``None`` trains without DP (anchor runs only).
    nodes
        Number of nodes (fashion: partitions; pedestrian: first n sensors); default: the task's.
    strategy, strategy_options
        Passed to :func:`pipeline.server.strategies.make_strategy`.
    accountant
        ``"prv"`` (default) or ``"rdp"``.
    noise_multiplier
        Fixed σ instead of calibrating from the budget.
    compression
        Update encoding (``int8``, ``float16``, ``float32``).
    seed
        Same seed → same result (model init, partitions, sampling and noise).
    out
        Folder for ``rounds.jsonl``, ``rounds.csv``, ``summary.json`` and ``ledgers/``;
        ``None`` keeps ledgers in memory and writes nothing.
    lr, batch_size, local_steps, local_optimizer, momentum
        Override the task's :class:`TrainConfig` (``local_optimizer`` ``"sgd"`` or ``"adam"``;
        ``momentum`` is SGD's). Plain local SGD with an adaptive server (``strategy="fedadam"``)
        lets the server's optimizer see the average of all nodes' noised steps instead of each
        node normalising its own noise.
    eval_every
        Evaluate the global model every n rounds (and always after the last).
    progress
        Called after each round with ``(round, row)`` (the CLI draws its progress bar with it).
    workers
        Train the nodes in this many forked worker processes, each with
        ``max(1, torch.get_num_threads() // workers)`` torch threads (nodes are balanced over
        the workers by batch size). ``None`` (default): one per available CPU, at most one per
        node; ``1``: every node in this process, one after the other. A node's update depends
        only on the seed and its torch thread count, not on the worker layout: with one thread
        per worker, 2 and 10 workers give the same result. Updates arrive in node order.
    personalize_steps, personalize_lr, personalize_layers, personalize_optimizer
        ``0`` (default): every node ends with the global model. ``n > 0``: after the last round
        every node fine-tunes the final global model with ``n`` more DP-SGD steps on its own data
        (:meth:`EdgeNode.personalize`, ``layers`` ``"all"`` or ``"head"``), recorded in its
        ledger; σ is calibrated for the whole plan, ``rounds × local_steps + n`` steps, so the
        total stays within ``epsilon``. The result then holds ``personal_weights`` and each
        node's ``personal_metrics`` on ``eval_split``. ``personalize_optimizer`` and
        ``personalize_lr`` default to the local ones: set both when they differ (local SGD at
        lr 0.1, fine-tuning with Adam at 3e-4, as measured for pedestrian-forecast).
    mode, buffer_size, max_staleness
        How the aggregator closes rounds (:class:`~pipeline.server.rounds.RoundPolicy`). ``"sync"``
        (default): every round, all nodes train from the current version and the round closes
        once all of them have arrived. ``"async"``: the updates are offered one by one in node
        order and the coordinator aggregates every ``buffer_size`` (default: the node count)
        admitted updates, so with ``buffer_size`` below the node count the later updates of a
        round arrive τ > 0 versions late (down-weighted by FedBuff; older than
        ``max_staleness`` refused as ``stale``); each round's nodes then train from the newest
        version. Use ``strategy="fedbuff"`` with the same ``buffer_size`` in
        ``strategy_options`` for FedBuff; a version counts only when the strategy stepped.
    keep_optimizer_state
        Every node keeps its local optimizer's state from round to round (see
        :class:`EdgeNode`) instead of starting it fresh each round.
    local_head
        Every node keeps the model's last layer to itself (see :class:`EdgeNode`); the result's
        ``personal_weights`` are then the final global body with each node's head (fine-tuned
        further if ``personalize_steps`` > 0).

    Raises
    ------
    BudgetExceededError
        never for a calibrated plan; with a fixed ``noise_multiplier`` nodes over budget are
        skipped and listed in ``RoundRow.nodes_refused`` instead.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if personalize_steps < 0:
        raise ValueError(f"personalize_steps must be >= 0, got {personalize_steps}")
    t_start = time.perf_counter()
    torch.manual_seed(seed)
    the_task = (make_task(task, task_options, nodes=nodes, seed=seed) if isinstance(task, str)
                else task)
    node_ids = the_task.node_ids()
    cfg = local_config(the_task, lr=lr, batch_size=batch_size, local_steps=local_steps,
                       momentum=momentum, optimizer=local_optimizer)
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
                        noise_multiplier=noise_multiplier, compression=compression, seed=seed,
                        personalize_steps=personalize_steps, local_head=local_head,
                        keep_optimizer_state=keep_optimizer_state)
    edge = [built[nid] for nid in node_ids]
    sigmas = {n.node_id: float(n.noise_multiplier) for n in edge
              if n.ledger is not None and n.noise_multiplier is not None}
    logger.info("simulate %s: %d nodes, %d rounds, eps=%s, sigma=%s", the_task.name, len(edge),
                rounds, epsilon, sorted(set(round(s, 3) for s in sigmas.values())))
    server = InProcessServer.build(task=the_task.name, keys=keys, initial=initial, nodes=len(edge),
                                   strategy=strategy, strategy_options=strategy_options,
                                   mode=mode, buffer_size=buffer_size,
                                   max_staleness=max_staleness)
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
            if server.end_round() is None and mode == "sync":
                logger.warning("round %d closed with no updates; global model unchanged", r)
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
            options = {"steps": personalize_steps, "lr": personalize_lr,
                       "layers": personalize_layers, "round": rounds + 1,
                       "optimizer": personalize_optimizer}
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
                       accountant=accountant, compression=Compression(compression).value,
                       budget=epsilon)
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
