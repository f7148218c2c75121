"""The secured broker: who can connect, and what each identity may do (real Kafka, mTLS, ACLs)."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from pathlib import Path

import pytest

from agents import acls, federation
from agents.topics import FEDERATION_TOPICS, MODELS, UPDATES, changelog_topics
from pipeline.identity import FleetPki
from tests.conftest import SecureKafka
from tests.kafka_helpers import delete_federation_topics

pytestmark = [pytest.mark.kafka]

NODES = ["akl-107-quay-street", "akl-188-quay-street-lower-albert-ew"]
TASK_KWARGS = {"sensors": 2, "max_train_per_node": 64}


@pytest.fixture(scope="module")
def fleet(secure_kafka: SecureKafka, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A federation of two nodes whose certificates the secured broker's CA signed, its topics
    and ACLs set up by the admin."""
    root = federation.init_run_dir(
        tmp_path_factory.mktemp("secure-fleet") / "run",
        federation.FederationPlan(task="pedestrian-forecast", task_options=TASK_KWARGS,
                                    quorum=2, rounds=2, nodes=NODES),
        ca_dir=secure_kafka.ca_dir)
    app_id = f"t{uuid.uuid4().hex[:6]}-aggregator"
    admin = secure_kafka.admin_settings()
    delete_federation_topics(secure_kafka.bootstrap_servers, settings=admin)
    done = acls.setup_federation(admin, NODES, aggregator_app_id=app_id)
    return {"root": root, "app_id": app_id, "admin": admin, "setup": done}


def _as(fleet: dict, party: str):  # type: ignore[no-untyped-def]
    return federation.client_settings(fleet["root"], party, base=fleet["admin"])


def _end_offsets(settings, topic: str) -> int:  # type: ignore[no-untyped-def]
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(**settings.consumer_config())
    try:
        parts = c.partitions_for_topic(topic) or set()
        ends = c.end_offsets([TopicPartition(topic, p) for p in parts])
        return sum(ends.values())
    finally:
        c.close()


def test_setup_created_topics_changelogs_and_least_privilege_acls(fleet: dict) -> None:
    created = set(fleet["setup"]["topics_created"])
    assert {t.name for t in FEDERATION_TOPICS} <= created
    assert {t.name for t in changelog_topics(fleet["app_id"])} <= created
    rules = set(acls.list_acls(fleet["admin"]))
    assert set(acls.federation_acls(NODES, aggregator_app_id=fleet["app_id"])) <= rules
    edge = {r for r in rules if r.principal == f"User:{NODES[0]}"}
    # an edge never READs updates, never WRITEs models, and no one but the admin may CREATE,
    # DELETE or ALTER anything
    assert not {r for r in edge if r.name == UPDATES.name and r.operation == "READ"}
    assert not {r for r in edge if r.name == MODELS.name and r.operation == "WRITE"}
    assert not {r for r in rules if r.operation in ("CREATE", "DELETE", "ALTER", "ALL")}
    # idempotent
    assert acls.setup_federation(fleet["admin"], NODES,
                                 aggregator_app_id=fleet["app_id"])["acls_new"] == 0


def test_an_edge_may_do_its_job_and_nothing_else(fleet: dict) -> None:
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
    from kafka.admin import NewTopic
    from kafka.errors import (
        GroupAuthorizationFailedError,
        TopicAuthorizationFailedError,
    )

    edge = _as(fleet, NODES[0])
    admin = fleet["admin"]
    models_before = _end_offsets(admin, MODELS.name)
    updates_before = _end_offsets(admin, UPDATES.name)

    producer = KafkaProducer(**edge.producer_config(), max_block_ms=10_000, retries=0)
    try:
        # its job: an update goes through
        producer.send(UPDATES.name, key=NODES[0].encode(), value=b"x").get(timeout=20)
        # not its job: a forged global model is refused by the broker
        with pytest.raises(TopicAuthorizationFailedError):
            producer.send(MODELS.name, key=b"pedestrian-forecast", value=b"forged").get(timeout=20)
    finally:
        producer.close(timeout=5)
    assert _end_offsets(admin, UPDATES.name) == updates_before + 1
    assert _end_offsets(admin, MODELS.name) == models_before  # nothing reached the topic

    # reading the other nodes' updates is refused
    spy = KafkaConsumer(UPDATES.name, group_id=federation.edge_group(NODES[0]),
                        enable_auto_commit=False,
                        auto_offset_reset="earliest", consumer_timeout_ms=5000,
                        **edge.consumer_config())
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            spy.poll(timeout_ms=10_000)
            list(spy)
    finally:
        spy.close()

    client = KafkaAdminClient(bootstrap_servers=edge.bootstrap_servers, **edge.kafka_python_security())
    try:
        # another group's offsets (the other node's) are refused; its own group is allowed
        with pytest.raises(GroupAuthorizationFailedError):
            client.list_group_offsets(federation.edge_group(NODES[1]))
        client.list_group_offsets(federation.edge_group(NODES[0]))
        # creating or deleting topics is the admin's alone
        with pytest.raises(TopicAuthorizationFailedError):
            _raise_first(client.create_topics([NewTopic("edgeveil.rogue", 1, 1)]))
        with pytest.raises(TopicAuthorizationFailedError):
            _raise_first(client.delete_topics([UPDATES.name]))
    finally:
        client.close()
    names = _admin_topics(admin)
    assert UPDATES.name in names and "edgeveil.rogue" not in names

    # the read-only reader reads models but cannot write anything
    reader = _as(fleet, federation.READER)
    producer = KafkaProducer(**reader.producer_config(), max_block_ms=10_000, retries=0)
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            producer.send(UPDATES.name, key=b"r", value=b"x").get(timeout=20)
    finally:
        producer.close(timeout=5)
    assert _end_offsets(admin, UPDATES.name) == updates_before + 1


def _raise_first(result: object) -> None:
    """kafka-python's admin returns per-topic errors in the response, or raises; raise them."""
    from kafka.errors import for_code

    for item in getattr(result, "topic_errors", None) or getattr(result, "topics", None) or []:
        code = item[1] if isinstance(item, tuple) else getattr(item, "error_code", 0)
        if code:
            raise for_code(code)(str(item))


def _admin_topics(settings) -> set[str]:  # type: ignore[no-untyped-def]
    from kafka import KafkaAdminClient

    client = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers,
                              **settings.kafka_python_security())
    try:
        return set(client.list_topics())
    finally:
        client.close()


def _connect_fails(settings) -> Exception:  # type: ignore[no-untyped-def]
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    producer = None
    try:
        producer = KafkaProducer(**settings.producer_config(), max_block_ms=5000, retries=0,
                                 bootstrap_timeout_ms=5000, reconnect_backoff_max_ms=500)
        producer.send(UPDATES.name, key=b"intruder", value=b"x").get(timeout=10)
    except KafkaError as exc:
        return exc
    finally:
        if producer is not None:
            producer.close(timeout=2)
    raise AssertionError("the connection was accepted")


def test_no_certificate_a_foreign_ca_or_an_expired_certificate_cannot_connect(
        fleet: dict, secure_kafka: SecureKafka, tmp_path: Path) -> None:
    from dataclasses import replace

    admin = fleet["admin"]
    before = _end_offsets(admin, UPDATES.name)
    edge = _as(fleet, NODES[0])
    ca = federation.tls_identity(fleet["root"], NODES[0]).ca
    # no client certificate (trusts the broker, presents nothing)
    _connect_fails(replace(edge, ssl_certfile=None, ssl_keyfile=None))
    # the same CN from another CA
    other = FleetPki.create(tmp_path / "other-ca").issue(NODES[0])
    _connect_fails(replace(edge, ssl_certfile=str(other.cert), ssl_keyfile=str(other.key)))
    # the right CA, but expired yesterday
    now = dt.datetime.now(dt.UTC)
    expired = FleetPki(secure_kafka.ca_dir).issue(
        NODES[0], folder=tmp_path / "expired", not_before=now - dt.timedelta(days=30),
        not_after=now - dt.timedelta(days=1))
    _connect_fails(replace(edge, ssl_cafile=str(ca), ssl_certfile=str(expired.cert),
                           ssl_keyfile=str(expired.key)))
    # plaintext to the TLS listener
    _connect_fails(replace(edge, security_protocol="PLAINTEXT"))
    assert _end_offsets(admin, UPDATES.name) == before


def test_scram_sha_512_over_tls(fleet: dict, secure_kafka: SecureKafka) -> None:
    """The optional SASL_SSL listener: SCRAM-SHA-512 logins over TLS, the same ACLs (a SCRAM
    user without ACLs sees no topic); a wrong password cannot connect."""
    from dataclasses import replace

    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    base = replace(fleet["admin"], bootstrap_servers=secure_kafka.cluster.sasl_bootstrap_servers,
                   security_protocol="SASL_SSL", ssl_certfile=None, ssl_keyfile=None,
                   sasl_mechanism="SCRAM-SHA-512")
    admin = replace(base, sasl_username="admin", sasl_password=secure_kafka.scram["admin"])
    assert UPDATES.name in _admin_topics(admin)  # the super user sees everything
    reader = replace(base, sasl_username="scram-reader",
                     sasl_password=secure_kafka.scram["scram-reader"])
    assert not _admin_topics(reader) & {t.name for t in FEDERATION_TOPICS}  # no ACL: nothing
    wrong = replace(base, sasl_username="admin", sasl_password="not-the-password")
    with pytest.raises(KafkaError):
        client = KafkaAdminClient(bootstrap_servers=wrong.bootstrap_servers,
                                  bootstrap_timeout_ms=5000, **wrong.kafka_python_security())
        try:
            client.list_topics()
        finally:
            client.close()


@pytest.mark.slow
def test_three_node_cluster_replicates_over_mutual_tls(secure_kafka: SecureKafka) -> None:
    """Inter-broker replication and controller traffic of a 3-node KRaft cluster run over the
    TLS listeners with client certificates; a topic with replication factor 3 keeps all three
    replicas in sync after an acks=all write."""
    from kafka import KafkaAdminClient, KafkaProducer
    from kafka.admin import NewTopic

    from agents.broker import BrokerSecurity, KafkaCluster

    sec = secure_kafka.cluster.security
    with KafkaCluster(3, security=BrokerSecurity(broker=sec.broker, admin=sec.admin)) as cluster:
        settings = cluster.settings()
        props = cluster.nodes[0].properties_file.read_text()
        assert "listener.security.protocol.map=CONTROLLER:SSL,SSL:SSL" in props
        assert "inter.broker.listener.name=SSL" in props and "PLAINTEXT" not in props
        admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap_servers,
                                 **settings.kafka_python_security())
        try:
            admin.create_topics([NewTopic("edgeveil.replicated", 1, 3)])
            producer = KafkaProducer(**settings.producer_config())
            producer.send("edgeveil.replicated", b"v").get(timeout=30)
            producer.close()
            deadline = time.monotonic() + 30
            while True:
                (topic,) = admin.describe_topics(["edgeveil.replicated"])
                (part,) = topic["partitions"]
                isr = part.get("isr_nodes", part.get("isr"))
                if len(isr) == 3 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            replicas = part.get("replica_nodes", part.get("replicas"))
            assert sorted(replicas) == [1, 2, 3] and sorted(isr) == [1, 2, 3], part
        finally:
            admin.close()
