"""The aggregator worker over a real broker: rounds, DLQ reasons, and a SIGKILL mid-round."""

from __future__ import annotations

import re
import struct
import time
import uuid
import zlib
from pathlib import Path

import numpy as np
import pytest

from agents import federation
from agents.settings import load_settings
from agents.topics import DLQ, FEDERATION_TOPICS, MODELS, UPDATES, ensure_topics
from agents.workers import FaustWorker
from pipeline.codec import encode_update
from pipeline.codec.global_model import decode_global_model
from pipeline.server.rounds import RoundCoordinator, RoundPolicy
from pipeline.server.strategies import make_strategy
from schemas.messages import DlqEntry
from schemas.update import ModelUpdate, PrivacyStamp
from tests.kafka_helpers import delete_federation_topics

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

NODES = ["akl-107-quay-street", "akl-188-quay-street-lower-albert-ew",
         "akl-188-quay-street-lower-albert-ns"]


def _run_dir(tmp_path: Path, **overrides) -> Path:
    cfg = federation.FederationPlan(
        task="pedestrian-forecast", task_options={"sensors": 3, "max_train_per_node": 64},
        quorum=3, rounds=5, nodes=NODES, **overrides,
    )
    return federation.init_run_dir(tmp_path / "run", cfg)


def _update(root: Path, node: str, weights0: dict, *, rnd: int, base: int, scale: float) -> bytes:
    # crc32, not hash(): str hashes change with PYTHONHASHSEED, so every run had other updates
    rng = np.random.default_rng(zlib.crc32(f"{node}/{rnd}".encode()))
    delta = {k: (rng.normal(size=v.shape) * scale).astype(np.float32) for k, v in weights0.items()}
    stamp = PrivacyStamp(epsilon=0.3 * rnd, delta=1e-5, noise_multiplier=1.1, sample_rate=0.05,
                         steps=10, accountant="prv")
    u = ModelUpdate(node_id=node, task="pedestrian-forecast", round=rnd, base_version=base,
                    num_examples=50 + NODES.index(node) * 10, metrics={"mae": 10.0 + rnd},
                    privacy=stamp, delta=delta)
    return encode_update(u, private_key=federation.node_key(root, node), compression="int8")


def _payload_span(blob: bytes) -> tuple[int, int]:
    """[start, end) of the zstd payload in an encoded update (layout in pipeline/codec/codec.py)."""
    (node_len,) = struct.unpack_from(">H", blob, 4)
    pos = 6 + node_len
    (header_len,) = struct.unpack_from(">I", blob, pos)
    pos += 4 + header_len
    (payload_len,) = struct.unpack_from(">I", blob, pos)
    return pos + 4, pos + 4 + payload_len


class _Models:
    """Reads global models from the compacted topic as they appear."""

    def __init__(self, settings, public_key: bytes) -> None:
        from kafka import KafkaConsumer

        self.pub = public_key
        self.consumer = KafkaConsumer(MODELS.name, auto_offset_reset="earliest",
                                      consumer_timeout_ms=500, **settings.consumer_config())
        self.seen: dict[int, object] = {}

    def wait_for(self, version: int, timeout: float = 90.0, worker: FaustWorker | None = None):
        deadline = time.monotonic() + timeout
        while version not in self.seen and time.monotonic() < deadline:
            for msg in self.consumer:
                m = decode_global_model(msg.value, public_key=self.pub)
                self.seen[m.header.version] = m
        if version not in self.seen:
            out = worker.output[-4000:] if worker else ""
            raise AssertionError(f"model v{version} not published; seen {sorted(self.seen)}\n{out}")
        return self.seen[version]


def _expected(root: Path, w0: dict, blobs: list[bytes], version: int):
    cfg = federation.load_config(root)
    coord = RoundCoordinator(task=cfg.task, keys=federation.registry(root),
                             expected={k: (v.shape, "float32") for k, v in w0.items()},
                             strategy=make_strategy("fedavg"), policy=RoundPolicy(quorum=3))
    coord.version = version
    stored = {coord.offer(b, now=0).key: b for b in blobs}
    return coord.aggregate(w0, stored)


def _env(kafka_broker: str, root: Path, app_id: str) -> dict[str, str]:
    return {"EDGEVEIL_BOOTSTRAP_SERVERS": kafka_broker, "EDGEVEIL_RUN_DIR": str(root),
            "EDGEVEIL_APP_ID": app_id, "EDGEVEIL_DATA_DIR": str(root / "faust")}


def _wait_admitted(worker: FaustWorker, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # the agent logs one line per batch: "admitted <k> update(s) of <task> in ..."
        found = re.findall(r"admitted (\d+) update\(s\) of pedestrian-forecast ", worker.output)
        if sum(int(k) for k in found) >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"aggregator admitted fewer than {n} updates\n{worker.output[-3000:]}")


def _wait_committed(bootstrap: str, group: str, topic: str, n: int, timeout: float = 60) -> None:
    """Poll the broker until ``group`` has committed ``n`` records of ``topic`` (all partitions)."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        deadline = time.monotonic() + timeout
        committed = 0
        while time.monotonic() < deadline:
            offsets = admin.list_group_offsets({group: None}).get(group, {})
            committed = sum(o.offset for tp, o in offsets.items() if tp.topic == topic)
            if committed >= n:
                return
            time.sleep(0.2)
    finally:
        admin.close()
    raise AssertionError(f"group {group} committed {committed} < {n} records of {topic}")


def test_rounds_and_dlq_reasons_over_the_broker(kafka_broker: str, tmp_path: Path) -> None:
    from kafka import KafkaConsumer, KafkaProducer

    delete_federation_topics(kafka_broker)
    root = _run_dir(tmp_path)
    settings = load_settings(bootstrap_servers=kafka_broker)
    ensure_topics(settings, FEDERATION_TOPICS)
    _, pub = federation.aggregator_keys(root)
    models = _Models(settings, pub)
    producer = KafkaProducer(**settings.producer_config())
    app_id = f"t-{uuid.uuid4().hex[:6]}-aggregator"
    with FaustWorker("agents.aggregator", env=_env(kafka_broker, root, app_id)) as worker:
        v0 = models.wait_for(0, worker=worker)
        w0 = dict(v0.weights)
        assert v0.onnx[:4] != b"" and v0.header.participants == []

        round1 = [_update(root, n, w0, rnd=1, base=0, scale=0.01) for n in NODES]
        for n, b in zip(NODES, round1, strict=True):
            producer.send(UPDATES.name, key=n.encode(), value=b)
        producer.send(UPDATES.name, key=NODES[0].encode(), value=round1[0])  # redelivery
        producer.flush()
        v1 = models.wait_for(1, worker=worker)
        want = _expected(root, w0, round1, 0)
        assert sorted(v1.header.participants) == sorted(NODES)
        for k in w0:
            np.testing.assert_array_equal(v1.weights[k], want.weights[k])
        assert v1.header.epsilon_by_node[NODES[0]] == pytest.approx(0.3)
        assert v1.header.metrics["mae"] == pytest.approx(11.0)

        # bad input next to good updates of round 2
        good2 = [_update(root, n, dict(v1.weights), rnd=2, base=1, scale=0.01) for n in NODES]
        # one flipped byte inside the signed payload: lengths and header stay intact, so the only
        # possible rejection is the signature
        tampered = bytearray(good2[1])
        start, end = _payload_span(good2[1])
        tampered[(start + end) // 2] ^= 0xFF
        forged_root = _run_dir(tmp_path / "other")  # same node names, other keys
        unsigned = _update(forged_root, NODES[2], w0, rnd=2, base=1, scale=0.01)
        bad = {
            "malformed": b"this is not an update",
            "tampered": bytes(tampered),
            "truncated": good2[2][:-1],  # the signature lost its last byte
            "unsigned": unsigned,
            "stale": _update(root, NODES[1], w0, rnd=7, base=0, scale=0.01),
            "replay": _update(root, NODES[0], w0, rnd=1, base=1, scale=0.5),
        }
        producer.send(UPDATES.name, key=NODES[0].encode(), value=good2[0])
        for name, blob in bad.items():
            producer.send(UPDATES.name, key=name.encode(), value=blob)
        for n, b in zip(NODES[1:], good2[1:], strict=True):
            producer.send(UPDATES.name, key=n.encode(), value=b)
        producer.flush()
        v2 = models.wait_for(2, worker=worker)
        assert sorted(v2.header.participants) == sorted(NODES)
        want2 = _expected(root, dict(v1.weights), good2, 1)
        for k in w0:
            np.testing.assert_array_equal(v2.weights[k], want2.weights[k])
        assert worker.running, "the aggregator must keep running after bad input"

    dlq = KafkaConsumer(DLQ.name, auto_offset_reset="earliest", consumer_timeout_ms=3000,
                        **settings.consumer_config())
    entries = {}
    for msg in dlq:
        entry = DlqEntry.from_headers(msg.headers)
        entries[msg.key.decode()] = (entry, msg.value)
    dlq.close()
    producer.close()
    assert set(entries) == set(bad), entries.keys()
    assert entries["malformed"][0].reason == "bad_magic"
    assert entries["tampered"][0].reason == "bad_signature"
    assert entries["truncated"][0].reason == "truncated"
    assert entries["unsigned"][0].reason == "bad_signature"
    assert entries["stale"][0].reason == "stale"
    assert entries["replay"][0].reason == "replay"
    for name, (entry, value) in entries.items():
        assert value == bad[name], f"DLQ must keep the rejected bytes of {name}"
        assert entry.source_topic == UPDATES.name and entry.agent == "aggregator"


def test_sigkill_mid_round_resumes_without_loss_or_double_count(kafka_broker: str, tmp_path: Path) -> None:
    from kafka import KafkaProducer

    delete_federation_topics(kafka_broker)
    root = _run_dir(tmp_path)
    settings = load_settings(bootstrap_servers=kafka_broker)
    ensure_topics(settings, FEDERATION_TOPICS)
    _, pub = federation.aggregator_keys(root)
    models = _Models(settings, pub)
    producer = KafkaProducer(**settings.producer_config())
    app_id = f"t-{uuid.uuid4().hex[:6]}-aggregator"
    env = _env(kafka_broker, root, app_id)

    worker = FaustWorker("agents.aggregator", env=env).start()
    try:
        w0 = dict(models.wait_for(0, worker=worker).weights)
        blobs = [_update(root, n, w0, rnd=1, base=0, scale=0.02) for n in NODES]
        for n, b in zip(NODES[:2], blobs[:2], strict=True):
            producer.send(UPDATES.name, key=n.encode(), value=b)
        producer.flush()
        _wait_admitted(worker, 2)
        admitted_at = time.monotonic()  # the round opened before this
        # committed: the restart must resume from the changelog, not count these again
        _wait_committed(kafka_broker, app_id, UPDATES.name, 2)
        # not a wait for a thread: the round must be older than a restart takes, so a deadline
        # counted from the restart could not pass the check below
        time.sleep(max(0.0, admitted_at + 4.0 - time.monotonic()))
        worker.kill()
        assert not worker.running
    finally:
        worker.stop()

    open_before_restart = time.monotonic() - admitted_at
    with FaustWorker("agents.aggregator", env=env) as worker2:
        # a redelivery of an update the dead worker had admitted, then the missing one
        producer.send(UPDATES.name, key=NODES[1].encode(), value=blobs[1])
        producer.send(UPDATES.name, key=NODES[2].encode(), value=blobs[2])
        producer.flush()
        v1 = models.wait_for(1, worker=worker2)
        resumed = re.search(r"resumed pedestrian-forecast at version 0 with 2 buffered updates "
                            r"\(round open for ([\d.]+) s\)", worker2.output)
        assert resumed, worker2.output[-2000:]
        # the deadline counts from when the round opened before the kill, not from the restart
        assert float(resumed.group(1)) >= open_before_restart
    producer.close()
    want = _expected(root, w0, blobs, 0)
    assert sorted(v1.header.participants) == sorted(NODES)
    assert v1.header.num_examples == want.num_examples  # nothing counted twice
    for k in w0:
        np.testing.assert_array_equal(v1.weights[k], want.weights[k])
    assert 2 not in models.seen
