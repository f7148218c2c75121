"""The one frozen settings object of EdgeVeil's agents.

Broker addresses, security and size limits live here and in ``compose/`` only. Values come from
(lowest to highest precedence) the defaults below, a TOML config file (``EDGEVEIL_CONFIG`` or
``--config``), and ``EDGEVEIL_*`` environment variables.

Size limits are set together for model-sized messages: a global model (weights + ONNX export) or a
float32 update of a few million parameters must pass the producer, the broker, the topic, the
replica fetcher and the consumer alike. One number, :data:`MAX_MESSAGE_BYTES`, drives all five.
"""

from __future__ import annotations

import os
import ssl
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from pipeline.assets import cache_dir

#: One limit for every hop of a model-sized message (16 MiB).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Connection and sizing settings shared by every agent, CLI command and test harness."""

    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    sasl_mechanism: str | None = None  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    #: passphrase of encrypted private keys (TLS and Ed25519), or a 0600 file holding it
    key_passphrase: str | None = field(default=None, repr=False)
    key_passphrase_file: str | None = None
    max_message_bytes: int = MAX_MESSAGE_BYTES
    topic_partitions: int = 4
    replication_factor: int = 1
    app_id: str = "edgeveil"
    data_dir: str = str(cache_dir() / "agents")
    #: the aggregator's web server (fleet page, /fleet.json, /metrics); 0.0.0.0 to reach it from
    #: other hosts (compose's Prometheus)
    web_port: int = 6066
    web_bind: str = "127.0.0.1"
    #: the fleet page marks a node stale when its last heartbeat is older than this (seconds;
    #: edges send one every 2 s)
    fleet_stale_s: float = 10.0
    #: the local cache (venv, Kafka jars, broker data, assets). pipeline/ cannot import agents,
    #: so :mod:`pipeline.assets` reads ``EDGEVEIL_CACHE`` itself; this field documents it and
    #: is what agents pass on
    cache: str = str(cache_dir())
    #: federation run directory (config, keys, ledgers, models) of ``edgeveil aggregator/edge``
    run_dir: str | None = None
    #: nodes an edge worker hosts: ``all``, 1-based positions ``1-11``, or comma-separated ids
    edge_nodes: str = "all"
    #: an edge worker's camera (file, URL or V4L2 index) and the node it feeds
    camera: str | None = None
    camera_node: str | None = None
    camera_fps: float = 5.0
    camera_interval_s: float = 10.0
    #: one anonymized preview frame per this many seconds (0 = none)
    preview_every_s: float = 10.0
    #: ``edgeveil demo`` feeds vtest.avi to a node when installed; false turns that off
    demo_camera: bool = True

    @property
    def faust_broker(self) -> str:
        """The broker URL list in faust's ``kafka://host:port;...`` form."""
        return ";".join(f"kafka://{h.strip()}" for h in self.bootstrap_servers.split(",") if h)

    @property
    def secured(self) -> bool:
        """True unless the protocol is PLAINTEXT. On a secured cluster only the admin creates
        topics (`edgeveil federation acls`); workers declare none."""
        return self.security_protocol != "PLAINTEXT"

    def passphrase(self) -> bytes | None:
        """The key passphrase (from ``key_passphrase`` or the 0600 ``key_passphrase_file``)."""
        from pipeline.identity import read_passphrase

        return read_passphrase(self.key_passphrase, self.key_passphrase_file)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS client context of ``SSL``/``SASL_SSL`` (``None`` otherwise): trusts only
        ``ssl_cafile``, presents ``ssl_certfile``/``ssl_keyfile`` when set. Key-file permissions
        and the passphrase are checked here, with clear errors
        (:class:`pipeline.identity.KeyPermissionError`, ``KeyPassphraseError``)."""
        if not self.security_protocol.endswith("SSL"):
            return None
        from pipeline.identity import client_ssl_context

        if not self.ssl_cafile:
            raise ValueError(f"security_protocol {self.security_protocol} needs ssl_cafile "
                             "(EDGEVEIL_SSL_CAFILE): the CA that signed the broker's certificate")
        return client_ssl_context(cafile=self.ssl_cafile, certfile=self.ssl_certfile,
                                  keyfile=self.ssl_keyfile, passphrase=self.passphrase())

    def kafka_python_security(self) -> dict[str, Any]:
        """Security keyword arguments for kafka-python clients (the protocol alone for
        PLAINTEXT)."""
        out: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.sasl_mechanism:
            out.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        ctx = self.ssl_context()
        if ctx is not None:
            out["ssl_context"] = ctx
        return out

    def producer_config(self) -> dict[str, Any]:
        """kafka-python ``KafkaProducer`` keyword arguments sized for model messages."""
        return {
            "bootstrap_servers": self.bootstrap_servers,
            "max_request_size": self.max_message_bytes,
            "acks": "all",
            **self.kafka_python_security(),
        }

    def consumer_config(self) -> dict[str, Any]:
        """kafka-python ``KafkaConsumer`` keyword arguments sized for model messages."""
        return {
            "bootstrap_servers": self.bootstrap_servers,
            "max_partition_fetch_bytes": self.max_message_bytes,
            "fetch_max_bytes": self.max_message_bytes,
            **self.kafka_python_security(),
        }

    def topic_config(self) -> dict[str, str]:
        """Per-topic configs every EdgeVeil topic gets."""
        return {"max.message.bytes": str(self.max_message_bytes)}


_ENV_PREFIX = "EDGEVEIL_"


_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")


#: ``EDGEVEIL_*`` names that are not :class:`Settings` fields: the config file's own path, the
#: per-asset overrides of :func:`pipeline.assets.locate` and the test suite's artifact directory
NOT_FIELDS = ("EDGEVEIL_CONFIG", "EDGEVEIL_ASSET_<NAME>", "EDGEVEIL_TEST_ARTIFACTS")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _coerce(name: str, raw: Any) -> Any:
    target = {f.name: f.type for f in fields(Settings)}[name]
    if target in ("bool", bool):
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text not in _TRUE + _FALSE:
            raise ValueError(f"{name} must be a boolean ({'/'.join(_TRUE + _FALSE)}), got {raw!r}")
        return text in _TRUE
    if target in ("int", int):
        return int(raw)
    if name == "security_protocol":
        value = str(raw).upper()
        if value not in _PROTOCOLS:
            raise ValueError(f"security_protocol must be one of {_PROTOCOLS}, got {raw!r}")
        return value
    if target in ("float", float):
        return float(raw)
    return raw if raw != "" else None


def default_run_dir() -> Path:
    """The CLI's default run directory: ``run_dir`` when set (``EDGEVEIL_RUN_DIR`` or the config
    file), else ``out/run``."""
    return Path(load_settings().run_dir or "out/run")


def load_settings(config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Build :class:`Settings` from defaults, a TOML file, the environment and ``overrides``.

    Examples
    --------
    >>> s = load_settings(bootstrap_servers="127.0.0.1:19092")
    >>> s.faust_broker
    'kafka://127.0.0.1:19092'
    """
    values: dict[str, Any] = {}
    names = {f.name for f in fields(Settings)}
    path = config_file or os.environ.get("EDGEVEIL_CONFIG")
    if path:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"EdgeVeil config file not found: {p}")
        data = tomllib.loads(p.read_text())
        section = data.get("kafka", data)
        unknown = set(section) - names
        if unknown:
            raise ValueError(f"unknown settings in {p}: {sorted(unknown)}; valid: {sorted(names)}")
        values.update({k: _coerce(k, v) for k, v in section.items()})
    for name in names:
        env = os.environ.get(_ENV_PREFIX + name.upper())
        if env is not None:
            values[name] = _coerce(name, env)
    values.update({k: _coerce(k, v) if k == "security_protocol" else v
                   for k, v in overrides.items() if v is not None})
    return replace(Settings(), **values)
