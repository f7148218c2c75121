"""Helpers shared by the Kafka tests."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any


def delete_federation_topics(bootstrap_servers: str, *, settings: object = None,
                             extra: tuple[str, ...] = ()) -> None:
    """Delete the EdgeVeil federation topics (and ``extra``) so a test starts from empty
    topics; ``settings`` (agents.settings.Settings) connects to a secured broker as the admin."""
    from kafka.admin import KafkaAdminClient

    from agents.topics import FEDERATION_TOPICS

    security = settings.kafka_python_security() if settings is not None else {}  # type: ignore[attr-defined]
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, **security)
    try:
        names = [t.name for t in FEDERATION_TOPICS] + list(extra)
        stale = [t for t in names if t in set(admin.list_topics())]
        if stale:
            admin.delete_topics(stale)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and set(stale) & set(admin.list_topics()):
                time.sleep(0.2)
    finally:
        admin.close()


def start_workers(workers: Iterable[Any], timeout: float = 180) -> None:
    """Start faust workers together (their start-ups overlap), then wait until each is ready."""
    workers = list(workers)
    for w in workers:
        w.start(wait_ready=False)
    for w in workers:
        w.wait_ready(timeout)
