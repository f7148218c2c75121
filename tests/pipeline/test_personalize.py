"""Per-node personalisation after federated rounds: DP-SGD, in the ledger, within the budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.codec import generate_keypair
from pipeline.node import EdgeNode
from pipeline.plan import FederationPlan
from pipeline.privacy import noise_multiplier_for_budget
from pipeline.privacy.ledger import BudgetExceededError, PrivacyLedger
from pipeline.sim import simulate
from pipeline.tasks import get_task
from pipeline.weights import get_weights


@pytest.fixture(autouse=True)
def _threads():  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ped():  # type: ignore[no-untyped-def]
    return get_task("pedestrian-forecast", sensors=2, max_train_per_node=1500)


def _node(task, nid, index, tmp_path, *, budget=4.0, sigma=1.0):  # type: ignore[no-untyped-def]
    private, _ = generate_keypair()
    ledger = PrivacyLedger.open(tmp_path / f"{nid}.json", node_id=nid, budget=budget,
                                delta=1e-5, mechanism="rdp")
    return EdgeNode(node_id=nid, task=task, private_key=private, ledger=ledger,
                    noise_multiplier=sigma, index=index, batch_size=150)


def test_simulate_personalises_within_the_budget_and_records_every_step(ped, tmp_path):  # type: ignore[no-untyped-def]
    rounds, local, extra = 2, 4, 6
    plan = FederationPlan(task="pedestrian-forecast", rounds=rounds, epsilon=3.0,
                          accountant="rdp", local_steps=local, batch_size=150,
                          personalize_steps=extra)
    res = simulate(plan, task=ped, eval_split="val", out=tmp_path, workers=2)
    assert set(res.personal_weights) == set(ped.node_ids()) == set(res.personal_metrics)
    for nid in ped.node_ids():
        ledger = PrivacyLedger.open(tmp_path / "ledgers" / f"{nid}.ledger.json", node_id=nid,
                                    budget=3.0, delta=1e-5, mechanism="rdp")
        # the fine-tuning steps are on disk, after the federated ones
        assert ledger.total_steps == rounds * local + extra
        assert ledger.epsilon() == pytest.approx(res.epsilons[nid])
        assert res.epsilons[nid] <= 3.0
        # σ was calibrated for the whole plan, not for the federated rounds alone
        q = ledger.history[0].sample_rate
        assert res.noise_multipliers[nid] == pytest.approx(noise_multiplier_for_budget(
            epsilon=3.0, delta=1e-5, sample_rate=q, steps=rounds * local + extra,
            accountant="rdp"))
        # each node forecasts with its own model, which is not the global one
        w = res.personal_weights[nid]
        assert any(not np.array_equal(w[k], res.weights[k]) for k in w)
        assert res.personal_metrics[nid]["mae"] > 0
    # ε during the rounds stayed below the final ε (fine-tuning spent the rest)
    assert max(r.epsilon_max for r in res.rounds) < max(res.epsilons.values())
    a, b = (res.personal_weights[n] for n in ped.node_ids())
    assert any(not np.array_equal(a[k], b[k]) for k in a)


def test_personalisation_is_off_by_default(ped):  # type: ignore[no-untyped-def]
    plan = FederationPlan(task="pedestrian-forecast", rounds=1, epsilon=3.0, accountant="rdp",
                          local_steps=2, batch_size=150)
    res = simulate(plan, task=ped, eval_split="val", workers=1)
    assert not res.personal_weights and not res.personal_metrics
    with pytest.raises(ValueError, match="personalize_steps"):
        FederationPlan(task="pedestrian-forecast", personalize_steps=-1)


def test_personal_model_stays_on_its_node(ped, tmp_path):  # type: ignore[no-untyped-def]
    a_id, b_id = ped.node_ids()
    a, b = _node(ped, a_id, 0, tmp_path), _node(ped, b_id, 1, tmp_path)
    torch.manual_seed(0)
    global_w = get_weights(ped.build_model())
    before = {k: v.copy() for k, v in global_w.items()}
    mine = a.personalize(global_w, steps=3)
    assert all(np.array_equal(global_w[k], before[k]) for k in before)  # global untouched
    assert a.personal_weights is mine and b.personal_weights is None
    assert any(not np.array_equal(mine[k], before[k]) for k in before)
    assert a.ledger is not None and b.ledger is not None
    assert a.ledger.total_steps == 3 and b.ledger.total_steps == 0
    assert a.ledger.is_durable  # flushed before the model serves forecasts
    assert a.last_update is None  # nothing was encoded for the wire


def test_head_only_changes_only_the_last_layer(ped, tmp_path):  # type: ignore[no-untyped-def]
    node = _node(ped, ped.node_ids()[0], 0, tmp_path)
    torch.manual_seed(0)
    global_w = get_weights(ped.build_model())
    mine = node.personalize(global_w, steps=3, layers="head", lr=1e-2)
    changed = {k for k in global_w if not np.array_equal(mine[k], global_w[k])}
    assert changed == {"net.4.weight", "net.4.bias"}
    assert node.ledger is not None and node.ledger.total_steps == 3
    with pytest.raises(ValueError):
        node.personalize(global_w, steps=3, layers="body")  # type: ignore[arg-type]


def test_personalise_refuses_over_budget_without_training(ped, tmp_path):  # type: ignore[no-untyped-def]
    node = _node(ped, ped.node_ids()[0], 0, tmp_path, budget=1.0, sigma=0.6)
    global_w = get_weights(ped.build_model())
    with pytest.raises(BudgetExceededError):
        node.personalize(global_w, steps=10_000)
    assert node.ledger is not None and node.ledger.total_steps == 0
    assert node.personal_weights is None
    with pytest.raises(ValueError):
        node.personalize(global_w, steps=0)


def test_local_head_never_leaves_the_node(ped, tmp_path):  # type: ignore[no-untyped-def]
    a_id, b_id = ped.node_ids()
    node = _node(ped, a_id, 0, tmp_path)
    node.local_head = True
    torch.manual_seed(0)
    global_w = get_weights(ped.build_model())
    assert all(np.array_equal(node.personal_model(global_w)[k], global_w[k]) for k in global_w)
    node.train_round(global_w, round=1, version=0)
    update = node.last_update
    assert update is not None
    # the head's delta on the wire is zero, the body's is not
    assert not np.any(update.delta["net.4.weight"]) and not np.any(update.delta["net.4.bias"])
    assert np.any(update.delta["net.0.weight"])
    mine = node.personal_model(global_w)
    assert not np.array_equal(mine["net.4.weight"], global_w["net.4.weight"])
    assert np.array_equal(mine["net.0.weight"], global_w["net.0.weight"])  # body: global


def test_simulate_with_local_heads(ped):  # type: ignore[no-untyped-def]
    plan = FederationPlan(task="pedestrian-forecast", rounds=2, epsilon=3.0, accountant="rdp",
                          local_steps=3, batch_size=150, local_head=True)
    res = simulate(plan, task=ped, eval_split="val", workers=1)
    torch.manual_seed(0)
    init = get_weights(ped.build_model())
    # the server never moved the head; each node's head is its own
    assert all(np.array_equal(res.weights[k], init[k]) for k in ("net.4.weight", "net.4.bias"))
    heads = [res.personal_weights[n]["net.4.weight"] for n in ped.node_ids()]
    assert not np.array_equal(heads[0], heads[1])
    for w in res.personal_weights.values():
        assert np.array_equal(w["net.0.weight"], res.weights["net.0.weight"])


def test_personalise_optimizer_choice(ped, tmp_path):  # type: ignore[no-untyped-def]
    # one step from the same weights: Adam's first step moves every coordinate by about lr
    # (m / sqrt(v) = ±1), SGD's by lr × (clipped gradient + noise), far less here
    torch.manual_seed(0)
    global_w = get_weights(ped.build_model())
    lr = 1e-3
    moved = {}
    for opt in ("adam", "sgd"):
        node = _node(ped, ped.node_ids()[0], 0, tmp_path / opt)
        mine = node.personalize(global_w, steps=1, lr=lr, optimizer=opt)  # type: ignore[arg-type]
        moved[opt] = np.concatenate([np.abs(mine[k] - global_w[k]).ravel() for k in global_w])
        assert node.ledger is not None and node.ledger.total_steps == 1
    assert np.median(moved["adam"]) == pytest.approx(lr, rel=0.05)
    assert moved["sgd"].max() < 0.1 * lr and moved["sgd"].max() > 0


def test_local_sgd_with_a_fedadam_server_improves(ped):  # type: ignore[no-untyped-def]
    plan = FederationPlan(task="pedestrian-forecast", rounds=4, epsilon=4.0, accountant="rdp",
                          local_steps=5, batch_size=150, strategy="fedadam",
                          strategy_options={"server_lr": 0.03})
    sgd = simulate(plan.replace(local_optimizer="sgd", lr=0.1), task=ped,
                   eval_split="val", workers=1)
    assert sgd.final_metrics["mae"] < 0.7 * sgd.initial_metrics["mae"]
    # the task's local Adam: other steps
    adam = simulate(plan, task=ped, eval_split="val", workers=1)
    assert not np.array_equal(sgd.weights["net.0.weight"], adam.weights["net.0.weight"])
    with pytest.raises(ValueError, match="local_optimizer"):
        plan.replace(local_optimizer="rmsprop")


def test_keep_optimizer_state_carries_adam_over_rounds(ped, tmp_path):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    global_w = get_weights(ped.build_model())
    kept = _node(ped, ped.node_ids()[0], 0, tmp_path / "kept", budget=20.0)
    kept.keep_optimizer_state = True
    fresh = _node(ped, ped.node_ids()[0], 0, tmp_path / "fresh", budget=20.0)
    assert kept.config.optimizer == "adam"
    for r in (1, 2):
        kept.train_round(global_w, round=r, version=r - 1)
        fresh.train_round(global_w, round=r, version=r - 1)
    state = kept._optimizer_state
    assert state is not None and fresh._optimizer_state is None
    # Adam counted every step of both rounds: its moments were not reset in between
    steps = {float(s["step"]) for s in state["state"].values()}
    assert steps == {2.0 * kept.config.local_steps}
    # same data, noise and start in round 2: only the carried moments differ
    assert kept.last_update is not None and fresh.last_update is not None
    assert not np.allclose(kept.last_update.delta["net.0.weight"],
                           fresh.last_update.delta["net.0.weight"])
