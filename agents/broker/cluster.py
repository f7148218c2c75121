"""A cluster of local KRaft nodes, and the metadata probe that says when it is ready.

Two shapes are offered:

* :class:`LocalKafka` -- one combined broker+controller node on a free port (tests, demo, CLI).
* :class:`KafkaCluster` -- three combined nodes, replication factor 3, ``min.insync.replicas=2``,
  with :meth:`KafkaCluster.kill` (SIGKILL) and :meth:`KafkaCluster.restart` for fault tests.

Examples
--------
>>> with LocalKafka() as kafka:                       # doctest: +SKIP
...     print(kafka.bootstrap_servers)
127.0.0.1:39217
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from agents.broker.errors import KafkaHarnessError
from agents.broker.jars import KAFKA_VERSION, ensure_jars
from agents.broker.node import KafkaNode, _cluster_id, _NodeSpec, free_port
from agents.broker.security import BrokerSecurity
from agents.settings import Settings, cache_dir, load_settings
from pipeline.identity import IdentityError, TlsIdentity

log = logging.getLogger(__name__)


class KafkaCluster:
    """``size`` KRaft nodes on loopback; ``size=1`` is the ordinary local broker.

    Parameters
    ----------
    size
        Number of nodes. With 3 nodes topics default to replication factor 3 and
        ``min.insync.replicas`` 2.
    data_dir
        Where node data goes; a fresh folder under the cache by default. Pass an existing one to
        reuse a broker's data across runs.
    security
        Secure the cluster (mutual TLS, ACLs; see :class:`BrokerSecurity`). ``None``: the
        plaintext broker of development.
    optimising_jit
        Run the JVM with its optimising compiler (C2). Default: on for a secured cluster (TLS
        is several times slower without it), off for plaintext (C1 only starts faster).
        Benchmarks comparing the two pass ``True`` for both.
    """

    def __init__(
        self,
        size: int = 1,
        *,
        data_dir: Path | None = None,
        version: str = KAFKA_VERSION,
        heap: str = "512m",
        log_level: str = "WARN",
        security: BrokerSecurity | None = None,
        optimising_jit: bool | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self.size = size
        self.version = version
        self.data_dir = data_dir or cache_dir() / "run" / f"kafka-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._owns_dir = data_dir is None
        rf = 3 if size >= 3 else size
        self.replication_factor = rf
        self.min_insync = 2 if size >= 3 else 1
        self.heap = heap
        self.log_level = log_level
        self.security = security
        self.optimising_jit = optimising_jit
        self.nodes: list[KafkaNode] = []

    @property
    def bootstrap_servers(self) -> str:
        """The client listeners (``SSL`` ones on a secured cluster)."""
        return ",".join(n.address for n in self.nodes)

    @property
    def sasl_bootstrap_servers(self) -> str | None:
        """The ``SASL_SSL`` (SCRAM-SHA-512) listeners, when ``security.scram_users`` is set."""
        addresses = [a for n in self.nodes if (a := n.sasl_address)]
        return ",".join(addresses) or None

    def settings(self, identity: TlsIdentity | None = None, **overrides: object) -> Settings:
        """Client :class:`~agents.settings.Settings` for this cluster: plaintext, or mutual TLS
        as ``identity`` (default: the admin identity of ``security``)."""
        values: dict[str, object] = {"bootstrap_servers": self.bootstrap_servers,
                                     "replication_factor": self.replication_factor}
        if self.security is not None:
            ident = identity or self.security.admin
            values.update(security_protocol="SSL", ssl_cafile=str(ident.ca),
                          ssl_certfile=str(ident.cert), ssl_keyfile=str(ident.key),
                          key_passphrase=self.security.key_password)
        values.update(overrides)
        return load_settings(**values)

    def start(self, timeout: float = 90.0) -> KafkaCluster:
        libs = ensure_jars(self.version)
        sasl = self.security is not None and self.security.sasl
        specs = [
            _NodeSpec(i + 1, free_port(), free_port(), self.data_dir / f"node{i + 1}",
                      sasl_port=free_port() if sasl else None)
            for i in range(self.size)
        ]
        voters = ",".join(f"{s.node_id}@127.0.0.1:{s.controller_port}" for s in specs)
        cid = _cluster_id()
        self.nodes = [
            KafkaNode(
                s, voters=voters, libs=libs, replication_factor=self.replication_factor,
                min_insync=self.min_insync, heap=self.heap, log_level=self.log_level,
                security=self.security, optimising_jit=self.optimising_jit,
            )
            for s in specs
        ]
        for n in self.nodes:
            n.write_config()
            n.format(cid)
        for n in self.nodes:
            n.start()
        self._write_state()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = 90.0, *, brokers: int | None = None) -> None:
        """Block until a metadata request lists ``brokers`` live brokers (default: all)."""
        want = brokers or sum(1 for n in self.nodes if n.running)
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            dead = [n for n in self.nodes if n.proc is not None and not n.running]
            if dead and brokers is None:
                n = dead[0]
                raise KafkaHarnessError(
                    f"kafka node {n.spec.node_id} exited with {n.proc.returncode if n.proc else '?'}:\n"
                    f"{n.tail_log()}"
                )
            try:
                if metadata_broker_count(self.bootstrap_servers, settings=self._probe_settings()) >= want:
                    return
            except IdentityError:  # our own key cannot be used: no point in retrying
                raise
            except Exception as exc:  # noqa: BLE001 - retried until the deadline
                last = exc
            time.sleep(0.5)
        raise KafkaHarnessError(
            f"Kafka at {self.bootstrap_servers} did not answer metadata with {want} broker(s) within "
            f"{timeout:.0f}s (last error: {last}).\n{self.nodes[0].tail_log()}"
        )

    def _probe_settings(self) -> Settings | None:
        return self.settings() if self.security is not None else None

    def kill(self, index: int) -> None:
        """SIGKILL node ``index`` (0-based)."""
        self.nodes[index].kill()

    def restart(self, index: int, timeout: float = 90.0) -> None:
        """Start node ``index`` again on its old ports and data, and wait until it is back."""
        self.nodes[index].start()
        self._write_state()
        self.wait_ready(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every node. SIGTERM goes to all nodes at once: stopping them one by one can hang
        the last ones, which wait for a controller quorum that is already gone."""
        for n in self.nodes:
            if n.running and n.proc:
                n.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for n in self.nodes:
            if n.proc and n.proc.poll() is None:
                try:
                    n.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("kafka node %s ignored SIGTERM; killing", n.spec.node_id)
                    n.kill()
        state = self.data_dir / "state.json"
        state.unlink(missing_ok=True)

    def remove_data(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def _write_state(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "bootstrap_servers": self.bootstrap_servers,
            "version": self.version,
            "nodes": [
                {"id": n.spec.node_id, "pid": n.proc.pid if n.proc else None, "address": n.address}
                for n in self.nodes
            ],
        }
        (self.data_dir / "state.json").write_text(json.dumps(state, indent=2))

    def __enter__(self) -> KafkaCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._owns_dir:
            self.remove_data()


class LocalKafka(KafkaCluster):
    """A single-node broker on a free loopback port (``security=`` secures it)."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(1, **kwargs)  # type: ignore[arg-type]


def metadata_broker_count(bootstrap_servers: str, timeout_ms: int = 3000, *,
                          settings: Settings | None = None) -> int:
    """Number of brokers a metadata request to ``bootstrap_servers`` lists (raises if none answer).

    ``settings`` supplies the security of a secured broker (TLS identity, SASL).
    """
    from kafka import KafkaAdminClient

    security = settings.kafka_python_security() if settings is not None else {}
    with _quiet_kafka_logs():
        return _broker_count(KafkaAdminClient, bootstrap_servers, timeout_ms, **security)


@contextlib.contextmanager
def _quiet_kafka_logs() -> Iterator[None]:
    """kafka-python logs every refused connection at ERROR; while polling a starting broker
    those are expected, so they are silenced for the probe."""
    logger = logging.getLogger("kafka")
    old = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(old)


def _broker_count(client: type, bootstrap_servers: str, timeout_ms: int,
                  **security: object) -> int:
    admin = client(
        bootstrap_servers=bootstrap_servers,
        request_timeout_ms=timeout_ms,
        client_id="edgeveil-probe",
        **security,
    )
    try:
        info = admin.describe_cluster()
        return len(info.get("brokers", []))
    finally:
        admin.close()


def iter_logs(cluster: KafkaCluster) -> Iterator[tuple[int, str]]:
    """(node id, last log lines) for each node: what to print when a test fails."""
    for n in cluster.nodes:
        yield n.spec.node_id, n.tail_log()
