"""Three edge workers and the aggregator, as separate faust processes, over a real broker."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from agents import federation
from agents.settings import load_settings
from agents.topics import ANALYTICS, FEDERATION_TOPICS, MODELS, TELEMETRY, ensure_topics
from agents.workers import FaustWorker
from pipeline.codec.global_model import decode_global_model
from schemas.messages import AnalyticsRecord, Telemetry
from tests.kafka_helpers import delete_federation_topics, start_workers

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

TASK_KWARGS = {"sensors": 3, "max_train_per_node": 2000}


def test_three_edges_and_aggregator_complete_rounds_and_improve(kafka_broker: str,
                                                                tmp_path: Path) -> None:
    import torch
    from kafka import KafkaConsumer

    from pipeline.tasks import get_task
    from pipeline.weights import set_weights

    delete_federation_topics(kafka_broker)

    task = get_task("pedestrian-forecast", **TASK_KWARGS)
    nodes = task.node_ids()
    rounds = 3
    root = federation.init_run_dir(tmp_path / "run", federation.FederationPlan(
        task="pedestrian-forecast", task_options=TASK_KWARGS, quorum=3, rounds=rounds,
        epsilon=4.0, nodes=nodes, deadline_s=300))
    settings = load_settings(bootstrap_servers=kafka_broker)
    ensure_topics(settings, FEDERATION_TOPICS)
    tag = uuid.uuid4().hex[:6]
    base = {"EDGEVEIL_BOOTSTRAP_SERVERS": kafka_broker, "EDGEVEIL_RUN_DIR": str(root),
            "EDGEVEIL_DATA_DIR": str(root / "faust")}
    _, pub = federation.aggregator_keys(root)

    workers = [FaustWorker("agents.aggregator",
                           env={**base, "EDGEVEIL_APP_ID": f"t{tag}-aggregator"})]
    workers += [FaustWorker("agents.edge", env={**base, "EDGEVEIL_APP_ID": f"t{tag}-e{i}-edge",
                                                "EDGEVEIL_EDGE_NODES": str(i + 1)})
                for i in range(3)]
    consumer = KafkaConsumer(MODELS.name, TELEMETRY.name, ANALYTICS.name,
                             auto_offset_reset="earliest",
                             consumer_timeout_ms=500, **settings.consumer_config())
    models: dict[int, object] = {}
    telemetry: dict[str, Telemetry] = {}
    forecasts: dict[tuple[str, int], AnalyticsRecord] = {}
    try:
        start_workers(workers)
        deadline = time.monotonic() + 420
        def finished() -> bool:
            return rounds in models and all((n, rounds) in forecasts for n in nodes)

        while not finished() and time.monotonic() < deadline:
            for msg in consumer:
                if msg.topic == MODELS.name:
                    m = decode_global_model(msg.value, public_key=pub)
                    models[m.header.version] = m
                elif msg.topic == ANALYTICS.name:
                    a = AnalyticsRecord.decode(msg.value)
                    if a.forecast is not None and a.model_version is not None:
                        forecasts[(a.node_id, a.model_version)] = a
                else:
                    t = Telemetry.decode(msg.value)
                    telemetry[t.node_id] = t
            assert all(w.running for w in workers), "\n".join(w.output[-2000:] for w in workers)
    finally:
        outputs = [w.output for w in workers]
        for w in workers:
            w.stop()
        consumer.close()
    assert rounds in models, f"versions seen {sorted(models)}\n" + "\n".join(o[-2500:] for o in outputs)

    for v in range(1, rounds + 1):
        assert sorted(models[v].header.participants) == sorted(nodes), v
        eps = models[v].header.epsilon_by_node
        assert all(0 < e <= 4.0 for e in eps.values())
    # ε grows round by round and never exceeds the budget
    e1, e3 = models[1].header.epsilon_by_node, models[3].header.epsilon_by_node
    assert all(e3[n] > e1[n] for n in nodes)

    def mae(v: int) -> float:
        torch.manual_seed(0)
        m = task.build_model()
        set_weights(m, models[v].weights)
        return task.evaluate(m, split="val")["mae"]

    maes = [mae(v) for v in range(rounds + 1)]
    assert maes[-1] < maes[0] * 0.9, maes
    assert np.isfinite(maes).all()
    # every node reported a heartbeat with its spend
    assert set(nodes) <= set(telemetry)
    ledgers = list((root / "ledgers").glob("*.json"))
    assert len(ledgers) == 3

    # every edge served forecasts from the hot-swapped ONNX model; they match PyTorch on the
    # same global weights and the same test window
    for node in nodes:
        for v in (1, rounds):
            rec = forecasts.get((node, v))
            assert rec is not None, (node, v, sorted(forecasts))
            torch.manual_seed(0)
            m = task.build_model()
            set_weights(m, models[v].weights)
            w = task.windows(node, "test")
            i = (v * 97) % len(w.x)
            expected = task.counts_from_output(node, m(torch.from_numpy(w.x[i:i + 1]))
                                               .detach().numpy())[0]
            assert rec.forecast == pytest.approx(expected, rel=1e-3, abs=0.05), (node, v)
            assert rec.counts["person"] == int(round(float(w.counts[i])))
