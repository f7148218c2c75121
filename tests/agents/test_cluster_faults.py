"""3-node KRaft cluster: a node SIGKILLed mid-stream loses no acknowledged write."""

from __future__ import annotations

import time

import pytest

from agents.settings import load_settings
from agents.topics import TopicSpec, ensure_topics

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

TOPIC = TopicSpec("edgeveil.test.durable", partitions=6)
N = 3000


def test_sigkill_one_node_mid_stream_loses_no_acked_message(kafka_cluster_factory) -> None:
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.admin import KafkaAdminClient

    cluster = kafka_cluster_factory(3)
    settings = load_settings(bootstrap_servers=cluster.bootstrap_servers, replication_factor=3)
    ensure_topics(settings, [TOPIC])
    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap_servers)
    desc = admin.describe_topics([TOPIC.name])[0]
    admin.close()
    assert all(len(p["replica_nodes"]) == 3 for p in desc["partitions"])

    producer = KafkaProducer(
        **settings.producer_config(), retries=20, retry_backoff_ms=200,
        request_timeout_ms=15000, delivery_timeout_ms=120000, linger_ms=5,
    )
    acked: set[bytes] = set()
    failed = 0
    pending = []

    def drain(block: bool) -> None:
        nonlocal failed
        keep = []
        for value, fut in pending:
            if block or fut.is_done:
                try:
                    fut.get(timeout=120)
                    acked.add(value)
                except Exception:  # noqa: BLE001 - an unacknowledged write may be lost
                    failed += 1
            else:
                keep.append((value, fut))
        pending[:] = keep

    killed_at = restarted_at = None
    for i in range(N):
        value = f"m{i:05d}".encode()
        pending.append((value, producer.send(TOPIC.name, key=str(i % 13).encode(), value=value)))
        if i == N // 3:
            drain(True)
            cluster.kill(1)  # SIGKILL: no clean shutdown
            assert not cluster.nodes[1].running
            killed_at = i
        if i == 2 * N // 3:
            drain(True)
            cluster.restart(1)
            restarted_at = i
        if i % 100 == 0:
            drain(False)
            time.sleep(0.01)
    producer.flush()
    drain(True)
    producer.close()
    assert killed_at and restarted_at
    assert len(acked) >= N * 0.95, f"only {len(acked)} of {N} acknowledged ({failed} failed)"

    consumer = KafkaConsumer(
        TOPIC.name, auto_offset_reset="earliest", consumer_timeout_ms=5000,
        enable_auto_commit=False, **settings.consumer_config(),
    )
    read = set()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not acked <= read:
        for msg in consumer:
            read.add(msg.value)
    consumer.close()
    missing = acked - read
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:5]}"
