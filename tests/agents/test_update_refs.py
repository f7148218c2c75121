"""Update references: the aggregator's changelog keeps where an update is, and reads it back."""

from __future__ import annotations

import hashlib
import uuid

import pytest

from agents.settings import load_settings
from agents.update_refs import UpdateRef, UpdateRefError, fetch_refs, pack_refs, unpack_refs


def _ref(**kw: object) -> UpdateRef:
    base: dict[str, object] = dict(topic="edgeveil.updates", partition=1, offset=5,
                                   sha256="0" * 64, size=10)
    base.update(kw)
    return UpdateRef(**base)  # type: ignore[arg-type]


def test_chunks_round_trip_and_stay_small() -> None:
    a = _ref(offset=123456789, sha256=hashlib.sha256(b"x").hexdigest())
    b = _ref(partition=3, offset=0, sha256="ef" * 32, size=99)
    refs = {"t|n2|000000001": a, "t|n1|000000004": b}
    data = pack_refs(refs)
    assert unpack_refs(data) == refs
    # the point: ~100 bytes per reference in one changelog value, not ~100 KB per update
    assert len(data) < 150 * len(refs)


@pytest.mark.parametrize("data, words", [
    (b"\x00\x01not json", "not a chunk"),
    (b'{"kind": "something.else", "refs": {}}', "kind 'something.else'"),
    (b"[1, 2]", "kind 'list'"),
    (b'{"kind": "edgeveil.update_refs.v1", "refs": {"k": [1, 2]}}', "list of 5"),
    (b'{"kind": "edgeveil.update_refs.v1", "refs": {"k": ["t", "x", 0, "", 1]}}', "mistypes"),
])
def test_bad_values_are_typed_errors(data: bytes, words: str) -> None:
    with pytest.raises(UpdateRefError, match=words):
        unpack_refs(data)


def test_out_of_range_values_are_rejected() -> None:
    for bad in (_ref(partition=-1), _ref(offset=-3), _ref(sha256="abc"), _ref(size=-1)):
        with pytest.raises(UpdateRefError, match="out of range"):
            unpack_refs(pack_refs({"k": bad}))


@pytest.mark.kafka
def test_fetch_refs_reads_back_checks_digests_and_reports_missing(kafka_broker: str) -> None:
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    settings = load_settings(bootstrap_servers=kafka_broker)
    topic = f"t-refs-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker)
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    admin.close()
    producer = KafkaProducer(**settings.producer_config())
    values = {f"k{i}": f"update-{i}".encode() * (i + 1) for i in range(6)}
    refs: dict[str, UpdateRef] = {}
    for i, (key, value) in enumerate(values.items()):
        meta = producer.send(topic, value=value, partition=i % 2).get(timeout=30)
        refs[key] = UpdateRef(topic=topic, partition=meta.partition, offset=meta.offset,
                              sha256=hashlib.sha256(value).hexdigest(), size=len(value))
    producer.close()
    tampered = refs["k3"]
    refs["k3"] = UpdateRef(topic=topic, partition=tampered.partition, offset=tampered.offset,
                           sha256=hashlib.sha256(b"other bytes").hexdigest(), size=tampered.size)
    refs["beyond"] = UpdateRef(topic=topic, partition=0, offset=999, sha256="0" * 64, size=1)

    found, missing = fetch_refs(settings, refs, timeout_s=20)

    assert found == {k: v for k, v in values.items() if k != "k3"}
    assert missing == {"k3": "digest", "beyond": "absent"}
    assert fetch_refs(settings, {}) == ({}, {})
