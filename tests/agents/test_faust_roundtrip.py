"""A real faust worker consumes 1,000 keyed messages from a real broker, in partition order."""

from __future__ import annotations

import json
import time
from collections import defaultdict

import pytest

from agents.settings import load_settings
from agents.topics import ECHO_IN, ECHO_OUT, ensure_topics
from agents.workers import FaustWorker

pytestmark = pytest.mark.kafka

N = 1000
KEYS = [f"camera-{i}" for i in range(17)]


def test_faust_agent_sees_every_message_in_partition_order(kafka_broker: str, tmp_path) -> None:
    from kafka import KafkaConsumer, KafkaProducer

    settings = load_settings(bootstrap_servers=kafka_broker)
    ensure_topics(settings, [ECHO_IN, ECHO_OUT])

    # Prepare: 1,000 keyed messages; per key the value counts up
    producer = KafkaProducer(**settings.producer_config())
    sent: dict[tuple[int, int], str] = {}
    per_key = defaultdict(int)
    futures = []
    for i in range(N):
        key = KEYS[i % len(KEYS)]
        value = f"{key}:{per_key[key]}"
        per_key[key] += 1
        futures.append(producer.send(ECHO_IN.name, key=key.encode(), value=value.encode()))
    producer.flush()
    for f in futures:
        md = f.get(timeout=30)
        sent[(md.partition, md.offset)] = ""
    producer.close()
    assert len(sent) == N
    assert len({p for p, _ in sent}) > 1, "messages should spread over several partitions"

    env = {"EDGEVEIL_BOOTSTRAP_SERVERS": kafka_broker, "EDGEVEIL_APP_ID": "edgeveil-test-echo",
           "EDGEVEIL_DATA_DIR": str(tmp_path / "faust")}
    consumer = KafkaConsumer(ECHO_OUT.name, auto_offset_reset="earliest",
                             consumer_timeout_ms=1000, **settings.consumer_config())
    records: list[dict] = []
    # Execute: a real worker process runs the echo agent
    with FaustWorker("agents.app", env=env) as worker:
        deadline = time.monotonic() + 120
        while len(records) < N and time.monotonic() < deadline:
            for msg in consumer:
                records.append(json.loads(msg.value))
                if len(records) >= N:
                    break
        output = worker.output
    consumer.close()

    # Assert: every message seen once, and within each partition in offset order
    assert len(records) == N, f"agent saw {len(records)} of {N}\n{output[-3000:]}"
    assert {(r["partition"], r["offset"]) for r in records} == set(sent)
    by_partition: dict[int, list[dict]] = defaultdict(list)
    for r in sorted(records, key=lambda r: r["seen"]):
        by_partition[r["partition"]].append(r)
    for part, rs in by_partition.items():
        offsets = [r["offset"] for r in rs]
        assert offsets == sorted(offsets), f"partition {part} out of order"
    by_key: dict[str, list[int]] = defaultdict(list)
    for r in sorted(records, key=lambda r: r["seen"]):
        by_key[r["key"]].append(int(r["value"].split(":")[1]))
    for key, seq in by_key.items():
        assert seq == list(range(len(seq))), f"key {key} out of order"
