"""Shared fixtures: a real Apache Kafka broker (session-scoped) and a 3-node cluster factory.

Tests that need a broker are marked ``kafka``. Locally a broker that cannot start skips them with
the reason; under ``CI=true`` it is an error, so CI never passes without running them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _broker_unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true and the Kafka broker could not start: {reason}", pytrace=False)
    pytest.skip(f"no Kafka broker: {reason}")


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[str]:
    """Bootstrap address of a real single-node Kafka started for this test session."""
    from agents.broker import KafkaHarnessError, LocalKafka

    cluster = LocalKafka()
    try:
        cluster.start()
    except (KafkaHarnessError, OSError) as exc:
        cluster.stop()
        _broker_unavailable(str(exc))
    try:
        yield cluster.bootstrap_servers
    finally:
        cluster.stop()
        cluster.remove_data()


@pytest.fixture
def kafka_cluster_factory() -> Iterator[object]:
    """Start 3-node KRaft clusters on demand; every one started is stopped after the test."""
    from agents.broker import KafkaCluster, KafkaHarnessError

    started: list[KafkaCluster] = []

    def make(size: int = 3) -> KafkaCluster:
        c = KafkaCluster(size)
        started.append(c)
        try:
            c.start(timeout=150)
        except (KafkaHarnessError, OSError) as exc:
            _broker_unavailable(str(exc))
        return c

    yield make
    for c in started:
        c.stop(timeout=5)  # data is discarded: no need to wait out a quorum-less shutdown
        c.remove_data()



@pytest.fixture
def fresh_federation_topics(kafka_broker: str) -> str:
    """The session broker with the EdgeVeil federation topics deleted (each test starts clean)."""
    from tests.kafka_helpers import delete_federation_topics

    delete_federation_topics(kafka_broker)
    return kafka_broker


class SecureKafka:
    """A secured session broker (mutual TLS, ACLs) and the CA that signed its identities."""

    def __init__(self, cluster: object, ca_dir: object, scram: dict[str, str]) -> None:
        self.cluster = cluster
        self.ca_dir = ca_dir
        self.scram = scram

    @property
    def bootstrap_servers(self) -> str:
        return self.cluster.bootstrap_servers  # type: ignore[attr-defined]

    def admin_settings(self):  # type: ignore[no-untyped-def]
        return self.cluster.settings()  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafka]:
    """A real single-node Kafka that requires client certificates on every listener (SSL;
    SASL_SSL with SCRAM-SHA-512 beside it), runs StandardAuthorizer with
    allow.everyone.if.no.acl.found=false, and has User:admin as its only super user."""
    from agents.broker import BrokerSecurity, KafkaHarnessError, LocalKafka
    from pipeline.identity import FleetPki

    root = tmp_path_factory.mktemp("fleet-ca")
    pki = FleetPki.create(root / "ca")
    broker = pki.issue("admin", folder=root / "broker", server_names=("127.0.0.1", "localhost"))
    admin = pki.issue("admin", folder=root / "admin")
    scram = {"admin": "admin-" + os.urandom(6).hex(), "scram-reader": "rd-" + os.urandom(6).hex()}
    cluster = LocalKafka(security=BrokerSecurity(broker=broker, admin=admin, scram_users=scram))
    try:
        cluster.start()
    except (KafkaHarnessError, OSError) as exc:
        cluster.stop()
        _broker_unavailable(str(exc))
    try:
        yield SecureKafka(cluster, pki.root, scram)
    finally:
        cluster.stop()
        cluster.remove_data()


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """A real headless Chromium (tests.browser.Browser); a missing browser fails under CI."""
    from tests.browser import Browser, missing

    why = missing()
    if why:
        if IN_CI:
            pytest.fail(f"CI=true and the browser cannot start: {why}", pytrace=False)
        pytest.skip(why)
    b = Browser()
    try:
        yield b
    finally:
        b.quit()


@pytest.fixture(scope="session")
def artifacts() -> object:
    """The folder test screenshots are saved in (out/test-artifacts by default)."""
    from tests.browser import artifacts_dir

    return artifacts_dir()

