"""Federated rounds in one process, through the same code the Kafka agents run.

:class:`EdgeNode` is one edge device: it holds its task partition, its durable
:class:`~pipeline.ledger.PrivacyLedger` and its signing key, and turns a global model into signed,
compressed update bytes (:meth:`EdgeNode.train_round`). The aggregator side is
:class:`InProcessServer`: the :class:`~pipeline.rounds.RoundCoordinator` the Kafka aggregator agent
runs (verify, admit each (node, round) once, aggregate in key order with a strategy from
:func:`pipeline.strategies.make_strategy`, publish a version only when the strategy stepped),
driven by function calls instead of a topic. :func:`simulate` wires N nodes to it, in ``sync``
rounds or ``async`` (FedBuff) with real staleness; the same updates give bit-identical global
weights here and over Kafka (``tests/agents/test_sim_kafka_identical.py``).
By default :func:`simulate` forks one worker process per CPU and each worker keeps its share of
the nodes (data, ledger, key) for the whole run: global weights go in, signed update bytes come
out, and the server receives them in node order, so the layout does not change the result.

Order of operations inside :meth:`EdgeNode.train_round` (privacy invariant 3):

1. compute ε after the planned round from the ledger; refuse with
   :class:`~pipeline.ledger.BudgetExceededError` if it would exceed the budget;
2. train with Opacus DP-SGD (every noisy step lands in the ledger via the optimizer hook);
3. flush the ledger to disk (fsync + rename) and re-check the budget;
4. only then encode and sign the update.

Examples
--------
>>> from pipeline.simulation import simulate
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
import math
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from pipeline.codec import (
    CodecError,
    Compression,
    KeyRegistry,
    encode_update,
    generate_keypair,
)
from pipeline.dp import make_private, noise_multiplier_for_budget, train_steps
from pipeline.ledger import BudgetExceededError, PrivacyLedger, ledger_path
from pipeline.ledger_analysis import Mechanism
from pipeline.rounds import RoundCoordinator, RoundOutcome, RoundPolicy
from pipeline.strategies import make_strategy
from pipeline.tasks import Task, TrainConfig, get_task
from pipeline.tasks.base import Split
from pipeline.weights import get_weights, set_weights, weight_delta
from schemas.update import ModelUpdate, PrivacyStamp

__all__ = [
    "EdgeNode",
    "InProcessServer",
    "NO_DP_EPSILON",
    "PersonalLayers",
    "RoundRow",
    "SimulationResult",
    "simulate",
]

logger = logging.getLogger(__name__)

Weights = dict[str, np.ndarray]

#: Which parameters :meth:`EdgeNode.personalize` fine-tunes.
PersonalLayers = Literal["all", "head"]

#: ε written in the stamp of a non-private update (anchors only): "unbounded", kept finite for
#: the wire contract.
NO_DP_EPSILON = sys.float_info.max


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


class EdgeNode:
    """One edge device: local data, DP-SGD, ledger and signing key.

    Parameters
    ----------
    node_id
        Wire-safe id (``[A-Za-z0-9_.:/-]``).
    task
        The task; the node only reads ``task.train_data(node_id)``.
    private_key
        Ed25519 private key (``pipeline.codec.generate_keypair()[0]``).
    ledger
        The node's privacy ledger; ``None`` trains without DP (benchmark anchors only).
    noise_multiplier
        DP-SGD σ; required when ``ledger`` is given.
    train_config
        Local hyper-parameters (default: ``task.train_config``).
    compression
        Update tensor encoding.
    seed, index
        Round r uses a seed derived from (seed, index, r).
    batch_size
        Expected local batch size (default ``train_config.batch_size``); :func:`simulate` sets it
        per node so that every node has the same sample rate.
    local_head
        FedPer-style personalisation: the last parametrised layer (the head) stays on the node.
        Each round trains the global body with this node's own head (DP-SGD on all parameters,
        as usual), and the update carries zeros for the head, so the server only averages the
        body. :meth:`personal_model` is the global model with this node's head.
    keep_optimizer_state
        Carry the local optimizer's state (Adam's moments, SGD momentum) from one round to the
        next instead of starting it fresh: it stays on the node (derived from the node's own
        noised gradients only, so post-processing under DP).

    Examples
    --------
    See :func:`simulate`.
    """

    def __init__(
        self,
        *,
        node_id: str,
        task: Task,
        private_key: bytes,
        ledger: PrivacyLedger | None,
        noise_multiplier: float | None = None,
        train_config: TrainConfig | None = None,
        compression: Compression = Compression.INT8,
        seed: int = 0,
        index: int = 0,
        batch_size: int | None = None,
        local_head: bool = False,
        keep_optimizer_state: bool = False,
    ) -> None:
        if ledger is not None and (noise_multiplier is None or noise_multiplier <= 0):
            raise ValueError("a DP node needs noise_multiplier > 0")
        self.node_id = node_id
        self.task = task
        self.ledger = ledger
        self.noise_multiplier = noise_multiplier
        self.config = train_config or task.train_config
        self.compression = Compression(compression)
        self.seed = seed
        self.index = index
        self._private_key = private_key
        self.data = task.train_data(node_id)
        self.batch_size = min(batch_size or self.config.batch_size, len(self.data))
        self.last_update: ModelUpdate | None = None
        self.personal_weights: Weights | None = None
        self.local_head = local_head
        self._head: Weights | None = None
        self.keep_optimizer_state = keep_optimizer_state
        self._optimizer_state: dict[str, Any] | None = None

    @property
    def sample_rate(self) -> float:
        """Poisson sample rate q of the local loader (Opacus: ``1 / len(loader)``)."""
        return 1.0 / len(DataLoader(self.data, batch_size=self.batch_size))

    @property
    def num_examples(self) -> int:
        """Local training examples."""
        return len(self.data)

    def _train(self, model: torch.nn.Module, generator: torch.Generator, *,
               steps: int | None = None, lr: float | None = None,
               optimizer_name: Literal["sgd", "adam"] | None = None,
               keep_state: bool = False) -> float:
        cfg = self.config
        if optimizer_name is not None:
            cfg = replace(cfg, optimizer=optimizer_name)
        steps = cfg.local_steps if steps is None else steps
        optimizer = cfg.make_optimizer([p for p in model.parameters() if p.requires_grad], lr=lr)
        if keep_state and self._optimizer_state is not None:
            optimizer.load_state_dict(self._optimizer_state)
        loss = self._train_with(model, generator, optimizer, steps)
        if keep_state:
            self._optimizer_state = optimizer.state_dict()
        return loss

    def _train_with(self, model: torch.nn.Module, generator: torch.Generator,
                    optimizer: torch.optim.Optimizer, steps: int) -> float:
        cfg = self.config
        loader = DataLoader(self.data, batch_size=self.batch_size, shuffle=True,
                            generator=generator)
        if self.ledger is None:
            loss_fn = self.task.loss_fn()
            total = 0.0
            it = iter(loader)
            for _ in range(steps):
                try:
                    x, y = next(it)
                except StopIteration:
                    it = iter(loader)
                    x, y = next(it)
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(x), y)
                loss.backward()
                optimizer.step()
                total += float(loss.detach())
            return total / steps
        assert self.noise_multiplier is not None
        dp = make_private(module=model, optimizer=optimizer, data_loader=loader,
                          ledger=self.ledger, noise_multiplier=self.noise_multiplier,
                          max_grad_norm=cfg.max_grad_norm, grad_sample_mode=cfg.grad_sample_mode,
                          noise_generator=generator)
        return train_steps(dp, loss_fn=self.task.loss_fn(), steps=steps)

    def check_budget(self, steps: int | None = None) -> float:
        """Return ε after ``steps`` more local steps (default: one round); raise
        ``BudgetExceededError`` if that is above the budget."""
        if self.ledger is None or self.noise_multiplier is None:
            return NO_DP_EPSILON
        return self.ledger.check_round(noise_multiplier=self.noise_multiplier,
                                       sample_rate=self.sample_rate,
                                       steps=self.config.local_steps if steps is None else steps)

    def personal_model(self, global_weights: Mapping[str, np.ndarray]) -> Weights:
        """The model this node forecasts with: ``global_weights`` with its own head, if it keeps
        one (``local_head``) and has trained it; a copy of ``global_weights`` otherwise."""
        out = {k: np.array(v, np.float32, copy=True) for k, v in global_weights.items()}
        if self._head is not None:
            out.update({k: v.copy() for k, v in self._head.items()})
        return out

    def personalize(self, global_weights: Mapping[str, np.ndarray], *, steps: int,
                    lr: float | None = None, layers: PersonalLayers = "all",
                    round: int = 0, optimizer: Literal["sgd", "adam"] | None = None) -> Weights:
        """Fine-tune :meth:`personal_model` of ``global_weights`` (global model, or global body
        with this node's head) on this node's data with DP-SGD; keep the result here.

        The personalised model never leaves the node (nothing is encoded or published); the node
        serves its forecasts with it, so its training is DP-SGD like any round: the budget is
        checked for all ``steps`` first, every noisy step lands in the ledger, and the ledger is
        flushed (and re-checked) before the weights are returned and used. Plan the budget for
        it: :func:`simulate` calibrates σ for ``rounds × local_steps + steps``.

        Parameters
        ----------
        steps
            DP-SGD steps at the node's σ and sample rate.
        lr
            Learning rate (default: the local one of ``train_config``).
        layers
            ``"all"`` trains every parameter; ``"head"`` only the last parametrised layer
            (fewer noised coordinates, the shared body stays as the federation learned it).
        round
            Part of the seed (use the round after the last federated one).
        optimizer
            ``"sgd"`` or ``"adam"`` (default: the local one of ``train_config``).

        Raises
        ------
        BudgetExceededError
            before training if the steps would exceed the budget (nothing trained or recorded),
            or after, if the recorded spend does.
        """
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.check_budget(steps)
        gen_seed = _seed(self.seed, self.index, round, 1)
        torch.manual_seed(gen_seed)
        generator = torch.Generator().manual_seed(gen_seed)
        model = self.task.build_model()
        set_weights(model, self.personal_model(global_weights))
        if layers == "head":
            head = _head_parameters(model)
            for p in model.parameters():
                p.requires_grad_(any(p is h for h in head))
        elif layers != "all":
            raise ValueError(f"layers must be 'all' or 'head', got {layers!r}")
        self._train(model, generator, steps=steps, lr=lr, optimizer_name=optimizer)
        if self.ledger is not None:
            self.ledger.check_publish()  # durable before the model serves anything
        self.personal_weights = get_weights(model)
        return self.personal_weights

    def train_round(self, global_weights: Mapping[str, np.ndarray], *, round: int,
                    version: int) -> bytes:
        """Train one round from ``global_weights`` and return the signed, encoded update.

        Raises
        ------
        BudgetExceededError
            before training, when the round would take ε above the budget (nothing trained,
            nothing recorded), or before publishing, if the recorded spend exceeds it.
        """
        self.check_budget()
        gen_seed = _seed(self.seed, self.index, round)
        torch.manual_seed(gen_seed)
        generator = torch.Generator().manual_seed(gen_seed)
        model = self.task.build_model()
        set_weights(model, self.personal_model(global_weights))
        loss = self._train(model, generator, keep_state=self.keep_optimizer_state)
        trained = get_weights(model)
        delta = weight_delta(trained, global_weights)
        if self.local_head:
            names = _head_names(model)
            self._head = {k: trained[k] for k in names}
            for k in names:  # the head never leaves the node
                delta[k] = np.zeros_like(delta[k])
        if self.ledger is not None:
            epsilon = self.ledger.check_publish()  # durable before anything leaves the node
            stamp = PrivacyStamp(epsilon=epsilon, delta=self.ledger.delta,
                                 noise_multiplier=float(self.noise_multiplier or 0.0),
                                 sample_rate=self.sample_rate, steps=self.config.local_steps,
                                 accountant=self.ledger.mechanism)
        else:
            stamp = PrivacyStamp(epsilon=NO_DP_EPSILON, delta=0.0, noise_multiplier=0.0,
                                 sample_rate=self.sample_rate, steps=self.config.local_steps,
                                 accountant="rdp")
        update = ModelUpdate(node_id=self.node_id, task=self.task.name, round=round,
                             base_version=version, num_examples=self.num_examples,
                             metrics={"train_loss": loss}, privacy=stamp, delta=delta)
        self.last_update = update
        return encode_update(update, private_key=self._private_key, compression=self.compression)


def _head_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Parameters of the last submodule (in registration order) that owns parameters."""
    owners = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    if not owners:
        raise ValueError("model has no parameters")
    return list(owners[-1].parameters(recurse=False))


def _head_names(model: torch.nn.Module) -> list[str]:
    """Weight names (as in :func:`~pipeline.weights.get_weights`) of the head parameters."""
    head = _head_parameters(model)
    return [n for n, p in model.named_parameters() if any(p is h for h in head)]


# ---------------------------------------------------------------------------- node workers
_Outcome = tuple[int, bytes | None, str | None]  # (node index, update bytes, refusal message)


def _train_nodes(nodes: Sequence[EdgeNode], weights: Mapping[str, np.ndarray], *, round: int,
                 version: int) -> tuple[list[_Outcome], dict[str, float]]:
    """Run one round on ``nodes`` one after the other; budget refusals become outcomes."""
    outcomes: list[_Outcome] = []
    for node in nodes:
        try:
            outcomes.append((node.index, node.train_round(weights, round=round,
                                                          version=version), None))
        except BudgetExceededError as exc:
            outcomes.append((node.index, None, str(exc)))
    eps = {n.node_id: (n.ledger.epsilon() if n.ledger else float("inf")) for n in nodes}
    return outcomes, eps


_Personal = tuple[int, Weights | None, str | None]  # (node index, personal weights, refusal)


def _personalize_nodes(nodes: Sequence[EdgeNode], weights: Mapping[str, np.ndarray], *,
                       options: Mapping[str, Any]) -> tuple[list[_Personal], dict[str, float]]:
    """Personalise ``nodes`` from ``weights`` one after the other (see :meth:`EdgeNode.personalize`).

    The personal weights come back to the caller only because the simulation evaluates them in
    one place; a deployed node keeps them and evaluates or serves them itself.
    """
    out: list[_Personal] = []
    for node in nodes:
        if not options["steps"]:  # nothing to train: the model it has (local head or global)
            out.append((node.index, node.personal_model(weights), None))
            continue
        try:
            out.append((node.index, node.personalize(weights, **options), None))
        except BudgetExceededError as exc:
            out.append((node.index, None, str(exc)))
    eps = {n.node_id: (n.ledger.epsilon() if n.ledger else float("inf")) for n in nodes}
    return out, eps


def _worker_main(conn: Any, nodes: Sequence[EdgeNode], threads: int) -> None:
    """Body of a forked node worker: owns ``nodes`` (data, ledger, key) for the whole run."""
    torch.set_num_threads(threads)
    try:
        while True:
            msg = conn.recv()
            if msg[0] == "stop":
                return
            if msg[0] == "personalize":
                try:
                    conn.send(("ok", *_personalize_nodes(nodes, msg[1], options=msg[2])))
                except Exception as exc:  # noqa: BLE001 - re-raised in the parent
                    conn.send(("error", exc))
                continue
            _, r, version, weights = msg
            try:
                conn.send(("ok", *_train_nodes(nodes, weights, round=r, version=version)))
            except Exception as exc:  # noqa: BLE001 - re-raised in the parent
                conn.send(("error", exc))
    except (EOFError, KeyboardInterrupt):
        return
    finally:
        conn.close()


def balance(costs: Sequence[float], workers: int) -> list[list[int]]:
    """Assign jobs to ``workers`` bins, largest first to the least loaded (LPT), deterministic.

    Examples
    --------
    >>> balance([5, 1, 4, 2, 3], 2)
    [[0, 1, 3], [2, 4]]
    """
    bins: list[list[int]] = [[] for _ in range(workers)]
    load = [0.0] * workers
    for i in sorted(range(len(costs)), key=lambda j: (-costs[j], j)):
        w = min(range(workers), key=lambda k: (load[k], k))
        bins[w].append(i)
        load[w] += costs[i]
    return [sorted(b) for b in bins]


class _NodePool:
    """Edge nodes trained in forked worker processes, ``threads`` torch threads each.

    Each worker is forked once with its share of the :class:`EdgeNode` objects and keeps them
    (data, ledger, signing key) for the whole run: only global weights go in and signed update
    bytes, refusals and ε values come out, exactly what would cross the network. Every node
    still checks its budget before training and flushes its ledger before it encodes.
    """

    def __init__(self, nodes: Sequence[EdgeNode], *, workers: int, threads: int) -> None:
        ctx = mp.get_context("fork")
        groups = balance([float(n.batch_size) for n in nodes], workers)
        self._conns: list[Any] = []
        self._procs: list[Any] = []
        try:
            for group in groups:
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_worker_main, daemon=True,
                                   args=(child, [nodes[i] for i in group], threads),
                                   name=f"edgeveil-nodes-{len(self._procs)}")
                proc.start()
                child.close()
                self._conns.append(parent)
                self._procs.append(proc)
        except BaseException:
            self.close()
            raise

    def submit(self, weights: Mapping[str, np.ndarray], *, round: int, version: int) -> None:
        """Start round ``round`` from ``weights`` on every worker (returns at once)."""
        plain = {k: np.asarray(v) for k, v in weights.items()}
        for conn in self._conns:
            conn.send(("train", round, version, plain))

    def submit_personalize(self, weights: Mapping[str, np.ndarray],
                           options: Mapping[str, Any]) -> None:
        """Start :meth:`EdgeNode.personalize` from ``weights`` on every worker."""
        plain = {k: np.asarray(v) for k, v in weights.items()}
        for conn in self._conns:
            conn.send(("personalize", plain, dict(options)))

    def collect(self) -> tuple[list[Any], dict[str, float]]:
        """Wait for the submitted job; outcomes in node order and every node's ε."""
        outcomes: list[Any] = []
        eps: dict[str, float] = {}
        error: BaseException | None = None
        for conn in self._conns:
            try:
                msg = conn.recv()
            except EOFError:
                error = error or RuntimeError("a node worker died")
                continue
            if msg[0] == "error":
                error = error or msg[1]
                continue
            outcomes.extend(msg[1])
            eps.update(msg[2])
        if error is not None:
            raise error
        return sorted(outcomes, key=lambda o: o[0]), eps

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send(("stop",))
            except (OSError, ValueError):
                pass
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join()
        for conn in self._conns:
            conn.close()
        self._conns, self._procs = [], []


class InProcessServer:
    """The aggregator side of :func:`simulate`.

    A :class:`~pipeline.rounds.RoundCoordinator` driven as the Kafka aggregator agent drives
    it — offer each update as it arrives, aggregate when :meth:`~RoundCoordinator.due` (async) or
    when the round ends (sync), publish a version only when the strategy stepped, commit — with
    the admitted bytes in a dict instead of a changelog table. Built by :meth:`build`.

    Examples
    --------
    >>> import numpy as np
    >>> from pipeline.codec import KeyRegistry
    >>> server = InProcessServer.build(task="t", keys=KeyRegistry(),
    ...                                initial={"w": np.zeros(2, np.float32)}, nodes=3,
    ...                                strategy="fedbuff", strategy_options={"buffer_size": 2},
    ...                                mode="async", buffer_size=2)
    >>> server.version, server.coordinator.policy.buffer_size
    (0, 2)
    """

    def __init__(self, coordinator: RoundCoordinator, initial: Mapping[str, np.ndarray], *,
                 keep_history: bool = False) -> None:
        self.coordinator = coordinator
        self.weights: Weights = {k: np.asarray(v, np.float32).copy() for k, v in initial.items()}
        self.stored: dict[str, bytes] = {}
        #: with ``keep_history``: the weights of every version made, by version (0: initial)
        self.history: dict[int, Weights] = {0: self.weights} if keep_history else {}
        self._keep_history = keep_history

    @classmethod
    def build(cls, *, task: str, keys: KeyRegistry, initial: Mapping[str, np.ndarray],
              nodes: int, strategy: str = "fedavg",
              strategy_options: Mapping[str, Any] | None = None,
              mode: Literal["sync", "async"] = "sync", buffer_size: int | None = None,
              max_staleness: int = 4, keep_history: bool = False) -> InProcessServer:
        """The coordinator :func:`simulate` uses: sync rounds close when all ``nodes`` arrived;
        async aggregates every ``buffer_size`` (default ``nodes``) admitted updates."""
        policy = RoundPolicy(mode=mode, quorum=nodes, buffer_size=buffer_size or nodes,
                             max_staleness=max_staleness, deadline_s=math.inf)
        coordinator = RoundCoordinator(
            task=task, keys=keys, policy=policy,
            expected={k: (tuple(v.shape), "float32") for k, v in initial.items()},
            strategy=make_strategy(strategy, **dict(strategy_options or {})))
        return cls(coordinator, initial, keep_history=keep_history)

    @property
    def version(self) -> int:
        return self.coordinator.version

    def receive(self, data: bytes, *, now: float = 0.0) -> tuple[ModelUpdate, int]:
        """Admit one update and, in async mode, aggregate if the buffer is full.

        Returns the update and its staleness τ. Raises :class:`~pipeline.codec.CodecError`
        (with the reason the agent would send to the DLQ) if it is refused.
        """
        offer = self.coordinator.offer(data, now=now)
        if not offer.duplicate:
            self.stored[offer.key] = data
            if self.coordinator.policy.mode == "async" and self.coordinator.due(now=now):
                self.close()
        return offer.update, offer.staleness

    def end_round(self) -> RoundOutcome | None:
        """Sync mode: aggregate what arrived this round (``None`` if nothing did)."""
        if self.coordinator.policy.mode != "sync" or not self.coordinator.buffer:
            return None
        return self.close()

    def close(self) -> RoundOutcome:
        """Aggregate the buffer; the weights and version move only if the strategy stepped."""
        outcome = self.coordinator.aggregate(self.weights, self.stored)
        if outcome.stepped:
            self.weights = {k: np.asarray(v, np.float32) for k, v in outcome.weights.items()}
            if self._keep_history:
                self.history[outcome.version] = self.weights
        for key in self.coordinator.commit(outcome):
            self.stored.pop(key, None)
        return outcome


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


def common_batch_sizes(sizes: Sequence[int], *, batch_size: int) -> list[int]:
    """Per-node batch sizes giving every node the same sample rate q = 1/k.

    k is chosen so that a node of median size gets about ``batch_size``. Sharing q (and hence σ)
    means one noise calibration and one ε computation per round serve every node: the PRV
    accountant costs about a second per distinct history on this CPU.

    Examples
    --------
    >>> common_batch_sizes([1000, 2000, 4000], batch_size=100)
    [50, 100, 200]
    """
    k = max(1, round(float(np.median(sizes)) / batch_size))
    return [max(1, -(-n // k)) for n in sizes]


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _worker_count(workers: int | None, nodes: int) -> int:
    if workers is not None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        n = min(workers, nodes)
    else:
        n = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                else (os.cpu_count() or 1), nodes)
    if n > 1 and ("fork" not in mp.get_all_start_methods() or mp.current_process().daemon):
        logger.info("cannot fork node workers here: training the nodes in this process")
        return 1
    return max(1, n)


def _noise_for(node: EdgeNode, *, epsilon: float, delta: float, rounds: int,
               accountant: Mechanism, extra_steps: int = 0) -> float:
    return noise_multiplier_for_budget(epsilon=epsilon, delta=delta, sample_rate=node.sample_rate,
                                       steps=rounds * node.config.local_steps + extra_steps,
                                       accountant=accountant)


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
        Passed to :func:`pipeline.strategies.make_strategy`.
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
        How the aggregator closes rounds (:class:`~pipeline.rounds.RoundPolicy`). ``"sync"``
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
    opts = dict(task_options or {})
    if isinstance(task, str):
        if nodes is not None:
            opts.setdefault("num_nodes" if task == "fashion-mnist" else "sensors", nodes)
        if task == "fashion-mnist":
            opts.setdefault("seed", seed)
        the_task: Task = get_task(task, **opts)
    else:
        the_task = task
    node_ids = the_task.node_ids()
    base = the_task.train_config
    cfg = TrainConfig(lr=lr if lr is not None else base.lr,
                      batch_size=batch_size or base.batch_size,
                      local_steps=local_steps or base.local_steps,
                      max_grad_norm=base.max_grad_norm, grad_sample_mode=base.grad_sample_mode,
                      momentum=base.momentum if momentum is None else momentum,
                      optimizer=local_optimizer or base.optimizer)
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(seed)
    model = the_task.build_model()
    initial = get_weights(model)
    keys = KeyRegistry()
    edge: list[EdgeNode] = []
    sigmas: dict[str, float] = {}
    sizes = [len(the_task.train_data(n)) for n in node_ids]
    batches = common_batch_sizes(sizes, batch_size=cfg.batch_size)
    for i, nid in enumerate(node_ids):
        private, public = generate_keypair()
        keys.register(nid, public)
        ledger = None
        if epsilon is not None:
            path = ledger_path(out_dir / "ledgers", nid) if out_dir else None
            ledger = (PrivacyLedger.open(path, node_id=nid, budget=epsilon, delta=delta,
                                         mechanism=accountant) if path else
                      PrivacyLedger(node_id=nid, budget=epsilon, delta=delta,
                                    mechanism=accountant))
        node = EdgeNode(node_id=nid, task=the_task, private_key=private, ledger=ledger,
                        noise_multiplier=1.0 if ledger else None, train_config=cfg,
                        compression=Compression(compression), seed=seed, index=i,
                        batch_size=batches[i], local_head=local_head,
                        keep_optimizer_state=keep_optimizer_state)
        if ledger is not None:
            node.noise_multiplier = noise_multiplier or _noise_for(
                node, epsilon=epsilon or 0.0, delta=delta, rounds=rounds, accountant=accountant,
                extra_steps=personalize_steps)
            sigmas[nid] = node.noise_multiplier
        edge.append(node)
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
