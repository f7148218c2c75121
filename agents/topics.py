"""Topic names and their configs, and creating them with kafka-python's admin client."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from agents.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    """One topic and the configs EdgeVeil creates it with."""

    name: str
    partitions: int = 4
    config: dict[str, str] = field(default_factory=dict)


ECHO_IN = TopicSpec("edgeveil.echo.in")
ECHO_OUT = TopicSpec("edgeveil.echo.out")

FOUNDATION_TOPICS = (ECHO_IN, ECHO_OUT)

_DAY_MS = 24 * 3600 * 1000

#: signed, noised updates; key = node id
UPDATES = TopicSpec("edgeveil.updates", 4, {"retention.ms": str(7 * _DAY_MS)})
#: global models; key = task; compacted so a new edge finds the latest model of every task
MODELS = TopicSpec("edgeveil.models", 1, {
    "cleanup.policy": "compact", "min.compaction.lag.ms": "0", "segment.ms": str(3600 * 1000),
})
#: anonymized per-interval counts and forecasts; key = node id
ANALYTICS = TopicSpec("edgeveil.analytics", 4, {"retention.ms": str(30 * _DAY_MS)})
#: heartbeats; key = node id
TELEMETRY = TopicSpec("edgeveil.telemetry", 1, {"retention.ms": str(1 * _DAY_MS)})
#: rejected messages, untouched, with the reason in headers
DLQ = TopicSpec("edgeveil.dlq", 1, {"retention.ms": str(30 * _DAY_MS)})
#: optional, rate-limited anonymized JPEG previews (never raw frames)
FRAMES_ANONYMIZED = TopicSpec("edgeveil.frames.anonymized", 1, {"retention.ms": str(3600 * 1000)})

#: signed staged-rollout commands (``edgeveil model promote|rollback``); key = task; compacted: each
#: message carries the task's whole rollout state, so the newest one is all an edge needs
CONTROL = TopicSpec("edgeveil.control", 1, {
    "cleanup.policy": "compact", "min.compaction.lag.ms": "0", "segment.ms": str(3600 * 1000),
})

FEDERATION_TOPICS = (UPDATES, MODELS, ANALYTICS, TELEMETRY, DLQ, FRAMES_ANONYMIZED, CONTROL)

#: the aggregator worker's faust tables and their partitions (agents/aggregator.py, and the fleet
#: page's in agents/fleet.py); on a secured cluster the admin creates their changelog topics,
#: since no worker may create topics (tests/agents/test_federation_keys.py checks this list
#: against the tables the app really has)
AGGREGATOR_TABLES = (
    ("aggregator-state", UPDATES.partitions), ("aggregator-ref-chunks", UPDATES.partitions),
    ("aggregator-global", UPDATES.partitions), ("fleet-nodes", 1), ("fleet-updates", 1),
    ("fleet-versions", 1), ("fleet-counters", 1), ("fleet-rollout", 1),
)


def changelog_topics(app_id: str) -> tuple[TopicSpec, ...]:
    """The changelog topics of faust app ``app_id``'s aggregator tables (faust names them
    ``<app id>-<table>-changelog``; compacted, with the table's partitions).

    Examples
    --------
    >>> [t.name for t in changelog_topics("edgeveil-aggregator")][0]
    'edgeveil-aggregator-aggregator-state-changelog'
    """
    return tuple(TopicSpec(f"{app_id}-{table}-changelog", partitions,
                           {"cleanup.policy": "compact"}) for table, partitions in AGGREGATOR_TABLES)


def ensure_topics(settings: Settings, specs: tuple[TopicSpec, ...] | list[TopicSpec]) -> list[str]:
    """Create the topics in ``specs`` that do not exist yet; return the names created.

    Every topic gets ``max.message.bytes`` from ``settings`` (model-sized messages) and the
    replication factor of the settings.
    """
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers, client_id="edgeveil-admin",
        **settings.kafka_python_security(),
    )
    try:
        existing = set(admin.list_topics())
        new = [
            NewTopic(
                s.name, num_partitions=s.partitions,
                replication_factor=settings.replication_factor,
                topic_configs={**settings.topic_config(), **s.config},
            )
            for s in specs
            if s.name not in existing
        ]
        if new:
            try:
                admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
            log.info("created topics %s", [t.name for t in new])
        return [t.name for t in new]
    finally:
        admin.close()
