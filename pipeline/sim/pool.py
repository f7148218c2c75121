"""Forked worker processes that keep their share of the simulated nodes for a whole run."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from pipeline.node.edge import EdgeNode, Weights
from pipeline.privacy.ledger import BudgetExceededError

logger = logging.getLogger(__name__)

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


