"""In-process simulation: learns, is reproducible, and respects the privacy ledger."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from pipeline.codec import CodecError, KeyRegistry, generate_keypair
from pipeline.node import EdgeNode
from pipeline.plan import FederationPlan
from pipeline.privacy.ledger import BudgetExceededError, PrivacyLedger
from pipeline.sim import InProcessServer, simulate
from pipeline.tasks import get_task
from pipeline.weights import get_weights

FASHION = {"max_train_per_node": 300, "max_test": 400}


@pytest.fixture(autouse=True)
def _threads():  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def fashion():  # type: ignore[no-untyped-def]
    return get_task("fashion-mnist", num_nodes=3, seed=0, **FASHION)


def test_fashion_simulation_improves_and_is_reproducible(fashion, tmp_path):  # type: ignore[no-untyped-def]
    plan = FederationPlan(task="fashion-mnist", rounds=3, epsilon=8.0, accountant="rdp", seed=1,
                          local_steps=6, batch_size=50, lr=1.0)
    a = simulate(plan, task=fashion, out=tmp_path / "a")
    b = simulate(plan, task=fashion)
    assert a.final_metrics["accuracy"] > a.initial_metrics["accuracy"] + 0.1
    assert [r.metric for r in a.rounds] == [r.metric for r in b.rounds]
    assert all(np.array_equal(a.weights[k], b.weights[k]) for k in a.weights)
    assert max(a.epsilons.values()) <= 8.0
    rows = [json.loads(line) for line in (tmp_path / "a" / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert rows[0]["bytes_per_update"] <= 0.25 * rows[0]["raw_float32_bytes"]
    assert (tmp_path / "a" / "rounds.csv").exists() and (tmp_path / "a" / "summary.json").exists()
    assert FederationPlan.load(tmp_path / "a" / "plan.json") == plan  # the recipe, re-runnable


def test_pedestrian_simulation_improves():  # type: ignore[no-untyped-def]
    task = get_task("pedestrian-forecast", sensors=2, max_train_per_node=3000)
    plan = FederationPlan(task="pedestrian-forecast", rounds=3, epsilon=4.0, accountant="rdp",
                          local_steps=10, batch_size=300)
    res = simulate(plan, task=task, eval_split="val")
    assert res.final_metrics["mae"] < 0.7 * res.initial_metrics["mae"]


def test_restart_never_lowers_epsilon_and_exhausted_nodes_stop(fashion, tmp_path):  # type: ignore[no-untyped-def]
    plan = FederationPlan(task="fashion-mnist", rounds=2, epsilon=3.0, accountant="rdp",
                          local_steps=3, batch_size=50)
    first = simulate(plan, task=fashion, out=tmp_path)
    # "restart" on the same folder: ledgers are reloaded, the plan no longer fits the budget
    second = simulate(plan, task=fashion, out=tmp_path)
    for node, eps in first.epsilons.items():
        assert second.epsilons[node] >= eps
        assert second.epsilons[node] <= 3.0
    assert set(second.rounds[-1].nodes_refused) == set(fashion.node_ids())


def test_edge_node_refuses_to_train_or_publish_over_budget(fashion, tmp_path):  # type: ignore[no-untyped-def]
    private, _ = generate_keypair()
    ledger = PrivacyLedger.open(tmp_path / "n.json", node_id="fmnist-00", budget=1.0,
                                delta=1e-5, mechanism="rdp")
    node = EdgeNode(node_id="fmnist-00", task=fashion, private_key=private, ledger=ledger,
                    noise_multiplier=0.8, batch_size=50)
    weights = get_weights(fashion.build_model())
    with pytest.raises(BudgetExceededError) as err:
        for r in range(1, 100):
            node.train_round(weights, round=r, version=0)
    assert err.value.epsilon_after > 1.0
    steps_on_disk = PrivacyLedger.open(tmp_path / "n.json", node_id="fmnist-00", budget=1.0,
                                       delta=1e-5, mechanism="rdp").total_steps
    assert steps_on_disk == ledger.total_steps  # everything trained was recorded durably
    assert ledger.epsilon() <= 1.0


def test_server_admits_a_node_update_once_and_refuses_tampering(fashion):  # type: ignore[no-untyped-def]
    private, public = generate_keypair()
    keys = KeyRegistry()
    keys.register("fmnist-00", public)
    weights = get_weights(fashion.build_model())
    # a quorum of 2 that never comes: end_round() closes with what arrived (the agent's deadline)
    server = InProcessServer.build(task=fashion.name, keys=keys, initial=weights, nodes=2)
    node = EdgeNode(node_id="fmnist-00", task=fashion, private_key=private,
                    ledger=PrivacyLedger(node_id="fmnist-00", budget=10, delta=1e-5,
                                         mechanism="rdp"),
                    noise_multiplier=1.0, batch_size=50,
                    train_config=replace(fashion.train_config, local_steps=5))
    data = node.train_round(weights, round=1, version=0)
    tampered = bytearray(data)
    tampered[-1] ^= 1
    with pytest.raises(CodecError) as err:
        server.receive(bytes(tampered))
    assert err.value.reason == "bad_signature"
    update, tau = server.receive(data)
    assert (update.node_id, tau) == ("fmnist-00", 0)
    server.receive(data)  # a redelivery of the same bytes is a duplicate, dropped silently
    assert len(server.stored) == 1
    outcome = server.end_round()
    assert outcome is not None and outcome.version == server.version == 1
    assert outcome.participants == ("fmnist-00",)
    server.receive(data)  # redelivered after the round closed: still a silent duplicate
    other = node.train_round(weights, round=1, version=1)  # other bytes for the same (node, round)
    with pytest.raises(CodecError) as err:
        server.receive(other)
    assert err.value.reason == "replay"
    assert server.end_round() is None  # nothing arrived: no new version


def test_async_fedbuff_simulation_sees_real_staleness(fashion):  # type: ignore[no-untyped-def]
    # 3 nodes, a server step every 2 updates: in round 1 the third update arrives one version
    # late, and so on; FedBuff down-weights them and a version counts only when it stepped
    plan = FederationPlan(task="fashion-mnist", rounds=3, epsilon=8.0, accountant="rdp", seed=2,
                          local_steps=3, batch_size=50, lr=1.0, mode="async", buffer_size=2,
                          strategy="fedbuff", strategy_options={"buffer_size": 2})
    a = simulate(plan, task=fashion, workers=1)
    taus = [dict(r.staleness) for r in a.rounds]
    assert taus[0] == {"fmnist-00": 0, "fmnist-01": 0, "fmnist-02": 1}
    assert any(t > 0 for row in taus[1:] for t in row.values())
    # 9 updates, a step per 2 buffered: 4 versions, one update still waiting in the buffer
    assert [r.version for r in a.rounds] == [1, 3, 4]
    b = simulate(plan, task=fashion, workers=1)
    assert all(np.array_equal(a.weights[k], b.weights[k]) for k in a.weights)
    sync_plan = plan.replace(mode="sync", strategy="fedavg", strategy_options={})
    sync = simulate(sync_plan, task=fashion, workers=1)
    assert [r.version for r in sync.rounds] == [1, 2, 3]
    assert all(t == 0 for r in sync.rounds for t in r.staleness.values())
    # a sync quorum of 2: the third update of each round comes after the close, as a stale one
    quorum = simulate(sync_plan.replace(quorum=2), task=fashion, workers=1)
    assert [r.updates_rejected for r in quorum.rounds] == [("fmnist-02: stale",)] * 3
    with pytest.raises(ValueError, match="mode"):
        plan.replace(mode="sometimes")


def test_node_workers_change_nothing_but_speed(fashion, tmp_path):  # type: ignore[no-untyped-def]
    # one torch thread everywhere (fixture): in-process, 2 and 3 forked workers are bit-identical
    plan = FederationPlan(task="fashion-mnist", rounds=2, epsilon=8.0, accountant="rdp", seed=3,
                          local_steps=3, batch_size=50, lr=1.0)
    one = simulate(plan, task=fashion, workers=1)
    for workers in (2, 3):
        many = simulate(plan, task=fashion, workers=workers, out=tmp_path / str(workers))
        assert [r.metric for r in many.rounds] == [r.metric for r in one.rounds]
        assert many.initial_metrics == one.initial_metrics
        assert many.epsilons == one.epsilons
        assert all(np.array_equal(many.weights[k], one.weights[k]) for k in one.weights)
        # each worker flushed its nodes' ledgers before their updates left it
        for node, eps in many.epsilons.items():
            on_disk = PrivacyLedger.open(tmp_path / str(workers) / "ledgers" /
                                         f"{node}.ledger.json", node_id=node, budget=8.0,
                                         delta=1e-5, mechanism="rdp")
            assert on_disk.total_steps == 2 * 3 and on_disk.epsilon() == eps
    with pytest.raises(ValueError):
        simulate(plan, task=fashion, workers=0)


def test_balance_spreads_batches_over_workers():  # type: ignore[no-untyped-def]
    from pipeline.sim import balance

    bins = balance([262, 260, 155, 275, 158, 127, 296, 302, 243, 427], 2)
    assert sorted(i for b in bins for i in b) == list(range(10))
    loads = [sum([262, 260, 155, 275, 158, 127, 296, 302, 243, 427][i] for i in b) for b in bins]
    assert max(loads) - min(loads) <= 50
    assert balance([1.0], 3) == [[0], [], []]


def test_worker_errors_reach_the_caller(fashion):  # type: ignore[no-untyped-def]
    class Broken:
        def __getattr__(self, name):  # type: ignore[no-untyped-def]
            return getattr(fashion, name)

        def loss_fn(self):  # type: ignore[no-untyped-def]
            raise RuntimeError("boom in a node worker")

    with pytest.raises(RuntimeError, match="boom in a node worker"):
        simulate(FederationPlan(task="fashion-mnist", rounds=2, epsilon=8.0, accountant="rdp",
                                local_steps=2, batch_size=50), task=Broken(), workers=2)
