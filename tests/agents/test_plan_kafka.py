"""One plan, simulated and over Kafka: `edgeveil simulate` writes the recipe (plan.json),
`edgeveil federation init --plan` runs it unchanged with real faust workers, and every node ends
with the same σ, DP-SGD steps and ε in its ledger as in the simulation — personalisation after
the last round included (the personal model stays on the node)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from agents import federation
from agents.cli import app
from agents.edge import personal_path
from agents.settings import load_settings
from agents.topics import FEDERATION_TOPICS, MODELS, ensure_topics
from agents.workers import FaustWorker
from pipeline.codec.global_model import decode_global_model
from pipeline.plan import FederationPlan
from pipeline.privacy.ledger import PrivacyLedger, ledger_path
from tests.kafka_helpers import delete_federation_topics, start_workers

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _ledger(folder: Path, node: str, plan: FederationPlan) -> PrivacyLedger:
    assert plan.epsilon is not None
    return PrivacyLedger.open(ledger_path(folder, node), node_id=node, budget=plan.epsilon,
                              delta=plan.delta, mechanism=plan.accountant)


def test_personalised_plan_runs_over_kafka_as_simulated(kafka_broker: str, tmp_path: Path) -> None:
    from kafka import KafkaConsumer

    # the personalised pedestrian recipe of the README, shrunk: local SGD, a FedAdam server,
    # Adam fine-tuning on each node after the last round
    runner = CliRunner()
    sim_out = tmp_path / "sim"
    res = runner.invoke(app, [
        "simulate", "--task", "pedestrian-forecast", "--nodes", "2", "--rounds", "2",
        "--epsilon", "3", "--accountant", "rdp", "--strategy", "fedadam",
        "--strategy-options", '{"server_lr": 0.03}', "--local-optimizer", "sgd", "--lr", "0.1",
        "--local-steps", "4", "--personalize-steps", "3", "--personalize-optimizer", "adam",
        "--personalize-lr", "0.0003", "--workers", "1", "--eval-split", "val",
        "--out", str(sim_out)])
    assert res.exit_code == 0, res.output
    assert "personalised: mean mae" in res.output
    plan = FederationPlan.load(sim_out / "plan.json")
    assert (plan.personalize_steps, plan.local_steps, plan.strategy) == (3, 4, "fedadam")

    root = tmp_path / "run"
    res = runner.invoke(app, ["federation", "init", str(root), "--plan", str(sim_out / "plan.json")])
    assert res.exit_code == 0, res.output
    ran = federation.load_config(root)
    assert ran.replace(nodes=[]) == plan  # the recipe, unchanged (init names the nodes)
    nodes = ran.nodes
    assert len(nodes) == 2

    delete_federation_topics(kafka_broker)
    settings = load_settings(bootstrap_servers=kafka_broker)
    ensure_topics(settings, FEDERATION_TOPICS)
    tag = uuid.uuid4().hex[:6]
    env = {"EDGEVEIL_BOOTSTRAP_SERVERS": kafka_broker, "EDGEVEIL_RUN_DIR": str(root),
           "EDGEVEIL_DATA_DIR": str(root / "faust")}
    _, pub = federation.aggregator_keys(root)
    workers = [FaustWorker("agents.aggregator", env={**env, "EDGEVEIL_APP_ID": f"t{tag}-agg"}),
               FaustWorker("agents.edge", env={**env, "EDGEVEIL_APP_ID": f"t{tag}-edge"})]
    consumer = KafkaConsumer(MODELS.name, auto_offset_reset="earliest", consumer_timeout_ms=500,
                             **settings.consumer_config())
    models = {}
    try:
        start_workers(workers)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (
                plan.rounds in models and all(personal_path(root, n).exists() for n in nodes)):
            for msg in consumer:
                m = decode_global_model(msg.value, public_key=pub)
                models[m.header.version] = m
            assert all(w.running for w in workers), "\n".join(w.output[-2000:] for w in workers)
    finally:
        outputs = [w.output for w in workers]
        for w in workers:
            w.stop()
        consumer.close()
    assert plan.rounds in models, "\n".join(o[-3000:] for o in outputs)
    final = models[plan.rounds].weights
    for node in nodes:
        sim_ledger, kafka_ledger = _ledger(sim_out / "ledgers", node, plan), _ledger(
            root / "ledgers", node, plan)
        # the same σ and sample rate on every step, the same steps (rounds x local + personal)
        assert [(e.noise_multiplier, e.sample_rate) for e in kafka_ledger.history] == [
            (e.noise_multiplier, e.sample_rate) for e in sim_ledger.history]
        assert kafka_ledger.total_steps == sim_ledger.total_steps == 2 * 4 + 3
        assert kafka_ledger.epsilon() == pytest.approx(sim_ledger.epsilon(), rel=1e-12)
        assert kafka_ledger.epsilon() <= 3.0
        # the personal model stayed on the node, and it is not the global model
        with np.load(personal_path(root, node)) as mine:
            assert set(mine.files) == set(final)
            assert any(not np.array_equal(mine[k], final[k]) for k in final)
