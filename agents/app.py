"""The faust application of EdgeVeil: one App, configured from :mod:`agents.settings`.

Run a worker with::

    faust -A agents.app worker -l info

The agent modules (``agents/echo.py`` …) register their agents on this app when imported; the
``autodiscover`` list below imports them.
"""

from __future__ import annotations

import faust
from faust.auth import SASLCredentials, SSLCredentials

from agents.settings import Settings, load_settings

settings: Settings = load_settings()


def _credentials(s: Settings) -> SASLCredentials | SSLCredentials | None:
    if s.security_protocol.startswith("SASL"):
        ssl_context = None
        if s.security_protocol == "SASL_SSL":
            from aiokafka.helpers import create_ssl_context

            ssl_context = create_ssl_context(
                cafile=s.ssl_cafile, certfile=s.ssl_certfile, keyfile=s.ssl_keyfile
            )
        return SASLCredentials(
            username=s.sasl_username, password=s.sasl_password,
            mechanism=s.sasl_mechanism or "PLAIN", ssl_context=ssl_context,
        )
    if s.security_protocol == "SSL":
        from aiokafka.helpers import create_ssl_context

        return SSLCredentials(
            create_ssl_context(cafile=s.ssl_cafile, certfile=s.ssl_certfile, keyfile=s.ssl_keyfile)
        )
    return None


app = faust.App(
    settings.app_id,
    broker=settings.faust_broker,
    broker_credentials=_credentials(settings),
    store="memory://",
    autodiscover=["agents.echo"],
    origin="agents",
    topic_partitions=settings.topic_partitions,
    topic_replication_factor=settings.replication_factor,
    producer_max_request_size=settings.max_message_bytes,
    consumer_max_fetch_size=settings.max_message_bytes,
    consumer_auto_offset_reset="earliest",
    web_enabled=False,
    datadir=settings.data_dir,
)
