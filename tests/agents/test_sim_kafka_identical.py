"""One aggregation core: the same encoded updates through simulate's server and through the
Kafka aggregator worker give bit-identical global weights, version by version.

Sync rounds with FedAvg, and async FedBuff with a server step every 2 of 3 nodes' updates, so
updates arrive τ = 1 version late and are down-weighted (and FedBuff does not step on every
update: those versions must not be published).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agents import federation
from agents.settings import load_settings
from agents.topics import FEDERATION_TOPICS, UPDATES, ensure_topics
from agents.workers import FaustWorker
from pipeline.sim import InProcessServer
from tests.agents.test_aggregator_kafka import (
    NODES,
    _env,
    _Models,
    _run_dir,
    _update,
    _wait_admitted,
)
from tests.kafka_helpers import delete_federation_topics

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

CASES = {
    "sync-fedavg": dict(mode="sync", strategy="fedavg", strategy_options={}),
    "async-fedbuff": dict(mode="async", strategy="fedbuff", strategy_options={"buffer_size": 2},
                          buffer_size=2, max_staleness=4),
}


@pytest.mark.parametrize("case", list(CASES))
def test_simulate_and_kafka_aggregator_publish_identical_models(
        kafka_broker: str, tmp_path: Path, case: str) -> None:
    from kafka import KafkaProducer

    overrides: dict[str, Any] = dict(CASES[case])
    delete_federation_topics(kafka_broker)
    root = _run_dir(tmp_path, **overrides)
    cfg = federation.load_config(root)
    settings = load_settings(bootstrap_servers=kafka_broker)
    ensure_topics(settings, FEDERATION_TOPICS)
    _, pub = federation.aggregator_keys(root)
    models = _Models(settings, pub)
    producer = KafkaProducer(**settings.producer_config())
    env = _env(kafka_broker, root, f"t-{uuid.uuid4().hex[:6]}-aggregator")
    with FaustWorker("agents.aggregator", env=env) as worker:
        w0 = dict(models.wait_for(0, worker=worker).weights)
        # the server simulate() builds from the same plan
        server = InProcessServer.from_plan(cfg, keys=federation.registry(root), initial=w0,
                                           nodes=len(cfg.nodes), keep_history=True)
        taus: list[int] = []
        for rnd in (1, 2, 3):
            base = server.version  # every node trains from the newest version at round start
            for node in NODES:
                blob = _update(root, node, server.weights, rnd=rnd, base=base, scale=0.01)
                taus.append(server.receive(blob)[1])
                producer.send(UPDATES.name, key=node.encode(), value=blob)
                producer.flush()
                # the updates topic has several partitions (keyed by node): wait for each
                # admission so the agent sees the arrival order the server saw
                _wait_admitted(worker, len(taus))
            server.end_round()
        versions = sorted(server.history)[1:]
        if case == "sync-fedavg":
            assert versions == [1, 2, 3] and set(taus) == {0}
        else:
            # 9 updates, a step per 2: v1..v4, the 9th waits in FedBuff's buffer
            assert versions == [1, 2, 3, 4] and taus.count(1) >= 3
        for v in versions:
            got = models.wait_for(v, worker=worker)
            for k in w0:
                np.testing.assert_array_equal(got.weights[k], server.history[v][k],
                                              err_msg=f"{case} v{v} {k}")
        assert models.seen.keys() <= set(server.history), "a version FedBuff never stepped"
        assert worker.running
    producer.close()
    models.consumer.close()
