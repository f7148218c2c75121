"""The faust application of EdgeVeil: one App, configured from :mod:`agents.settings`.

:func:`make_app` builds each worker's App. This module's own ``app`` is the echo app (one agent,
:mod:`agents.echo`, imported through ``autodiscover``)::

    faust -A agents.app worker -l info

EdgeVeil's agents are registered by the modules that build their apps:
``faust -A agents.aggregator worker`` and ``faust -A agents.edge worker``.
"""

from __future__ import annotations

from pathlib import Path

import faust
from faust.auth import SASLCredentials, SSLCredentials

from agents.settings import Settings, load_settings

settings: Settings = load_settings()


def _credentials(s: Settings) -> SASLCredentials | SSLCredentials | None:
    """faust's credentials from the settings: the same TLS context kafka-python clients get
    (Settings.ssl_context: CA, client certificate, key permissions and passphrase checked)."""
    if s.security_protocol.startswith("SASL"):
        return SASLCredentials(
            username=s.sasl_username, password=s.sasl_password,
            mechanism=s.sasl_mechanism or "PLAIN", ssl_context=s.ssl_context(),
        )
    if s.security_protocol == "SSL":
        return SSLCredentials(s.ssl_context())
    return None


def make_app(role: str, *, autodiscover: list[str] | None = None, s: Settings | None = None) -> faust.App:
    """A faust App for one worker role (``echo``, ``aggregator``, ``edge``).

    The app id (consumer group, changelog-topic prefix) is ``<EDGEVEIL_APP_ID>-<role>`` unless
    ``EDGEVEIL_APP_ID`` already ends with the role, so several edge workers can each get their own
    group (every edge must see every global model).
    """
    s = s or settings
    app_id = s.app_id if s.app_id.endswith(role) else f"{s.app_id}-{role}"
    Path(s.data_dir, app_id).mkdir(parents=True, exist_ok=True)
    return faust.App(
        app_id,
        broker=s.faust_broker,
        broker_credentials=_credentials(s),
        store="memory://",  # tables recover from their changelog topics on restart
        autodiscover=autodiscover or False,
        origin="agents",
        topic_partitions=s.topic_partitions,
        topic_replication_factor=s.replication_factor,
        producer_max_request_size=s.max_message_bytes,
        producer_acks=-1,
        consumer_max_fetch_size=s.max_message_bytes,
        consumer_auto_offset_reset="earliest",
        # a crashed worker's partitions move to its replacement within ~10 s (Kafka's default
        # session is 45 s); heartbeats every 3 s keep a live worker in the group
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        # `faust worker` switches the web server on unless --without-web: only the aggregator
        # runs with it (fleet page, /fleet.json, /metrics). faust's own table and router views
        # stay off: the tables are not for the network.
        web_enabled=False,
        web_port=s.web_port,
        web_bind=s.web_bind,
        web_tables_enabled=False,
        web_router_enabled=False,
        datadir=f"{s.data_dir}/{app_id}",
        # on a secured cluster only the admin creates topics (`edgeveil federation acls` makes
        # every topic, the changelogs included): the workers declare none, and the leader topic,
        # which no agent here uses, is not needed
        topic_allow_declare=not s.secured,
        topic_disable_leader=s.secured,
    )


#: the foundation's echo app: ``faust -A agents.app worker``
app = make_app("echo", autodiscover=["agents.echo"])
