"""A real Apache Kafka (KRaft) on loopback, started from Maven Central jars.

For tests, the demo and `edgeveil kafka up`. One module per job:

* :mod:`agents.broker.jars` -- the Kafka version and its jars, fetched by Maven into the cache.
* :mod:`agents.broker.security` -- :class:`BrokerSecurity` (mutual TLS, SCRAM, ACLs) and the
  authorizer settings the compose file shares.
* :mod:`agents.broker.node` -- :class:`KafkaNode`: one broker+controller JVM, its configuration,
  storage format and process; free ports and cluster ids.
* :mod:`agents.broker.cluster` -- :class:`KafkaCluster` and :class:`LocalKafka`, and the metadata
  probe that says when they are ready.
* :mod:`agents.broker.daemon` -- the persistent broker of `edgeveil kafka up | status | down`.
* :mod:`agents.broker.errors` -- :class:`KafkaHarnessError`.
"""

from __future__ import annotations

from agents.broker.cluster import KafkaCluster, LocalKafka, iter_logs, metadata_broker_count
from agents.broker.daemon import daemon_down, daemon_status, daemon_up
from agents.broker.errors import KafkaHarnessError
from agents.broker.jars import KAFKA_VERSION, ensure_jars, kafka_home
from agents.broker.node import KafkaNode, free_port
from agents.broker.security import AUTHORIZER, PRINCIPAL_MAPPING_RULES, BrokerSecurity

__all__ = [
    "AUTHORIZER",
    "KAFKA_VERSION",
    "PRINCIPAL_MAPPING_RULES",
    "BrokerSecurity",
    "KafkaCluster",
    "KafkaHarnessError",
    "KafkaNode",
    "LocalKafka",
    "daemon_down",
    "daemon_status",
    "daemon_up",
    "ensure_jars",
    "free_port",
    "iter_logs",
    "kafka_home",
    "metadata_broker_count",
]
