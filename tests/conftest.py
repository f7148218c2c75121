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
    from agents.kafka_harness import KafkaHarnessError, LocalKafka

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
    from agents.kafka_harness import KafkaCluster, KafkaHarnessError

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

