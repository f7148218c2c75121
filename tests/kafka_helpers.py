"""Helpers shared by the Kafka tests."""

from __future__ import annotations

import time


def delete_federation_topics(bootstrap_servers: str) -> None:
    """Delete the EdgeVeil federation topics so a test starts from empty topics."""
    from kafka.admin import KafkaAdminClient

    from agents.topics import FEDERATION_TOPICS

    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers)
    try:
        stale = [t.name for t in FEDERATION_TOPICS if t.name in set(admin.list_topics())]
        if stale:
            admin.delete_topics(stale)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and set(stale) & set(admin.list_topics()):
                time.sleep(0.2)
    finally:
        admin.close()
