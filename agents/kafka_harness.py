"""A real Apache Kafka (KRaft) on loopback, started from Maven Central jars.

Dev and CI machines have Java and Maven but no Docker engine, so the broker runs straight from the
``kafka_2.13`` jars that ``compose/kafka/pom.xml`` names. Jars and broker data live under the
EdgeVeil cache directory (``$EDGEVEIL_CACHE``, default ``~/.cache/edgeveil``), never in the clone.

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

import base64
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agents.settings import MAX_MESSAGE_BYTES, Settings, cache_dir, load_settings
from pipeline.identity import IdentityError, TlsIdentity, check_private_file, write_pkcs12

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.1.1"
_JVM_TIER = ("-XX:TieredStopAtLevel=1",)
_POM = Path(__file__).resolve().parent.parent / "compose" / "kafka" / "pom.xml"

_LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = {level}
logger.apache.name = org.apache.kafka
logger.apache.level = {level}
"""


class KafkaHarnessError(RuntimeError):
    """The local broker could not be set up, started or reached; the message says what to do."""


#: the authorizer of KRaft clusters (ACLs live in the metadata log)
AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
#: certificate subject ``CN=<id>`` (alone or first) -> principal ``User:<id>``
PRINCIPAL_MAPPING_RULES = "RULE:^CN=([^,]+)(,.*)?$/$1/,DEFAULT"


@dataclass(frozen=True)
class BrokerSecurity:
    """How a secured broker authenticates and authorizes (see docs/security.md).

    The client listener is ``SSL`` and requires a client certificate signed by ``broker.ca``
    (mutual TLS); the certificate's CN is the principal. Brokers and controllers talk to each
    other over TLS with the same requirement, presenting ``broker`` (whose CN is the admin
    principal: the only super user). ``StandardAuthorizer`` is on and
    ``allow.everyone.if.no.acl.found`` is false, so a principal without an ACL can do nothing.

    Parameters
    ----------
    broker
        The brokers' certificate (CN = ``admin``, with ``127.0.0.1``/``localhost`` as names),
        its key and the CA every party must be signed by.
    admin
        The operator's client identity (CN = ``admin``): what the harness probes with and what
        creates topics and ACLs.
    key_password
        Passphrase of the broker's key file when it is encrypted (``ssl.key.password``).
    scram_users
        With these, a second listener ``SASL_SSL`` accepts SCRAM-SHA-512 logins (name ->
        password, created when the storage is formatted) over TLS without a client certificate.
    """

    broker: TlsIdentity
    admin: TlsIdentity
    key_password: str | None = field(default=None, repr=False)
    scram_users: dict[str, str] = field(default_factory=dict, repr=False)
    admin_principal: str = "admin"

    @property
    def sasl(self) -> bool:
        return bool(self.scram_users)


# --------------------------------------------------------------------------- distribution


def kafka_home(version: str = KAFKA_VERSION) -> Path:
    """The cache folder that holds ``libs/`` for one Kafka version."""
    return cache_dir() / f"kafka-{version}"


def _require(tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if not path:
        raise KafkaHarnessError(f"`{tool}` is not on PATH. {hint}")
    return path


def ensure_jars(version: str = KAFKA_VERSION, *, quiet: bool = True) -> Path:
    """Return the ``libs`` folder of Kafka ``version``, fetching the jars with Maven if needed.

    Raises
    ------
    KafkaHarnessError
        Java or Maven is missing, or Maven could not fetch the jars.
    """
    _require("java", "Install a Java 17+ runtime: `apt-get install -y openjdk-17-jre-headless`.")
    libs = kafka_home(version) / "libs"
    marker = libs / ".complete"
    if marker.exists():
        return libs
    mvn = _require("mvn", "Install Maven (`apt-get install -y maven`) or run `make setup`.")
    libs.mkdir(parents=True, exist_ok=True)
    log.info("fetching Apache Kafka %s jars from Maven Central into %s", version, libs)
    cmd = [
        mvn, "-B", "-f", str(_POM), "dependency:copy-dependencies",
        f"-DoutputDirectory={libs}", f"-Dkafka.version={version}",
    ]
    if quiet:
        cmd.insert(1, "-q")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not any(libs.glob("kafka_2.13-*.jar")):
        raise KafkaHarnessError(
            f"Maven could not fetch the Kafka jars (exit {proc.returncode}). Run\n  {' '.join(cmd)}\n"
            f"by hand to see why.\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    marker.write_text(version)
    return libs


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cluster_id() -> str:
    """A random KRaft cluster id (22 url-safe base64 characters, like ``kafka-storage random-uuid``).

    Never starts with ``-``: the StorageTool's argument parser would read such an id as an option
    and refuse to format (about one id in 64 did).
    """
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


# --------------------------------------------------------------------------- one node


@dataclass
class _NodeSpec:
    node_id: int
    broker_port: int
    controller_port: int
    data_dir: Path
    sasl_port: int | None = None


class KafkaNode:
    """One KRaft node (broker + controller in one JVM), run as a child process."""

    def __init__(
        self,
        spec: _NodeSpec,
        *,
        voters: str,
        libs: Path,
        replication_factor: int,
        min_insync: int,
        heap: str = "512m",
        log_level: str = "WARN",
        security: BrokerSecurity | None = None,
        optimising_jit: bool | None = None,
    ) -> None:
        self.spec = spec
        self.security = security
        self.optimising_jit = optimising_jit
        self.voters = voters
        self.libs = libs
        self.replication_factor = replication_factor
        self.min_insync = min_insync
        self.heap = heap
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.spec.broker_port}"

    @property
    def sasl_address(self) -> str | None:
        return f"127.0.0.1:{self.spec.sasl_port}" if self.spec.sasl_port else None

    @property
    def properties_file(self) -> Path:
        return self.spec.data_dir / "server.properties"

    @property
    def log_file(self) -> Path:
        return self.spec.data_dir / "server.log"

    def write_config(self) -> None:
        s = self.spec
        s.data_dir.mkdir(parents=True, exist_ok=True)
        props = {
            "process.roles": "broker,controller",
            "node.id": s.node_id,
            "controller.quorum.voters": self.voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{s.broker_port},CONTROLLER://127.0.0.1:{s.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{s.broker_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": s.data_dir / "log",
            "num.partitions": 4,
            "default.replication.factor": self.replication_factor,
            "min.insync.replicas": self.min_insync,
            "offsets.topic.replication.factor": self.replication_factor,
            "offsets.topic.num.partitions": 4,
            "transaction.state.log.replication.factor": self.replication_factor,
            "transaction.state.log.min.isr": self.min_insync,
            "share.coordinator.state.topic.replication.factor": self.replication_factor,
            "share.coordinator.state.topic.min.isr": self.min_insync,
            "group.initial.rebalance.delay.ms": 0,
            "auto.create.topics.enable": "true",
            # model-sized messages: every hop gets the same limit (see agents/settings.py)
            "message.max.bytes": MAX_MESSAGE_BYTES,
            "replica.fetch.max.bytes": MAX_MESSAGE_BYTES,
            "replica.fetch.response.max.bytes": MAX_MESSAGE_BYTES * 2,
            "socket.request.max.bytes": MAX_MESSAGE_BYTES * 4,
            "log.segment.bytes": 64 * 1024 * 1024,
            "log.retention.check.interval.ms": 60_000,
            "unclean.leader.election.enable": "false",
        }
        if self.security is not None:
            props.update(self._security_props())
        self.properties_file.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        self.properties_file.chmod(0o600)  # may hold the key password
        (s.data_dir / "log4j2.properties").write_text(
            _LOG4J2.format(log=self.log_file, level=self.log_level)
        )

    def _security_props(self) -> dict[str, object]:
        """Listeners, TLS and authorizer settings of a secured node (BrokerSecurity)."""
        sec = self.security
        assert sec is not None
        s = self.spec
        if sec.key_password:
            # an encrypted key: a PKCS#12 keystore under the same passphrase (Java 17 cannot
            # decrypt PBES2 PKCS#8 in Kafka's PEM keystore)
            keystore = write_pkcs12(s.data_dir / "keystore.p12", sec.broker,
                                    passphrase=sec.key_password.encode())
            store: dict[str, object] = {"ssl.keystore.type": "PKCS12",
                                        "ssl.keystore.location": keystore,
                                        "ssl.keystore.password": sec.key_password,
                                        "ssl.key.password": sec.key_password}
        else:
            # the key and certificate in one PEM file: Kafka's PEM keystore
            # (ssl.keystore.type=PEM) reads both from ssl.keystore.location
            check_private_file(sec.broker.key)
            keystore = s.data_dir / "keystore.pem"
            keystore.touch(mode=0o600)
            keystore.write_bytes(sec.broker.key.read_bytes() + sec.broker.cert.read_bytes())
            store = {"ssl.keystore.type": "PEM", "ssl.keystore.location": keystore}
        listeners = [f"SSL://127.0.0.1:{s.broker_port}", f"CONTROLLER://127.0.0.1:{s.controller_port}"]
        advertised = [f"SSL://127.0.0.1:{s.broker_port}"]
        protocols = "CONTROLLER:SSL,SSL:SSL"
        props: dict[str, object] = {
            **store,
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": sec.broker.ca,
            "ssl.client.auth": "required",  # every listener, the controller's included
            "ssl.principal.mapping.rules": PRINCIPAL_MAPPING_RULES,
            "inter.broker.listener.name": "SSL",
            "authorizer.class.name": AUTHORIZER,
            "allow.everyone.if.no.acl.found": "false",
            "super.users": f"User:{sec.admin_principal}",
            "auto.create.topics.enable": "false",
        }
        if sec.sasl and s.sasl_port:
            listeners.append(f"SASL_SSL://127.0.0.1:{s.sasl_port}")
            advertised.append(f"SASL_SSL://127.0.0.1:{s.sasl_port}")
            protocols += ",SASL_SSL:SASL_SSL"
            props.update({
                "sasl.enabled.mechanisms": "SCRAM-SHA-512",
                # SCRAM authenticates here; a client certificate is not asked for
                "listener.name.sasl_ssl.ssl.client.auth": "none",
                "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config":
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            })
        props.update({"listeners": ",".join(listeners),
                      "advertised.listeners": ",".join(advertised),
                      "listener.security.protocol.map": protocols})
        return props

    def format(self, cluster_id: str) -> None:
        if (self.spec.data_dir / "log" / "meta.properties").exists():
            return
        cmd = [
            "java", "-cp", f"{self.libs}/*", f"-Dlog4j2.configurationFile={self.spec.data_dir / 'log4j2.properties'}",
            "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(self.properties_file),
        ]
        if self.security is not None:
            for name, password in self.security.scram_users.items():
                cmd += ["--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise KafkaHarnessError(f"formatting KRaft storage failed:\n{proc.stdout}{proc.stderr}")

    def start(self) -> None:
        if self.running:
            return
        cmd = [
            "java", f"-Xms{self.heap}", f"-Xmx{self.heap}", "-XX:+UseG1GC",
            *self._jit_flags(), "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.spec.data_dir / 'log4j2.properties'}",
            "-cp", f"{self.libs}/*", "kafka.Kafka", str(self.properties_file),
        ]
        out = open(self.spec.data_dir / "stdout.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        (self.spec.data_dir / "pid").write_text(str(self.proc.pid))

    def _jit_flags(self) -> list[str]:
        """C1 only (``TieredStopAtLevel=1``) starts a plaintext broker faster; a TLS broker keeps
        the optimising compiler, without which encrypting every fetch is several times slower."""
        full = self.security is not None if self.optimising_jit is None else self.optimising_jit
        return [] if full else list(_JVM_TIER)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the node: no clean shutdown, as a crashed machine would do."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM and wait for a controlled shutdown; SIGKILL after ``timeout`` seconds."""
        if not self.proc or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("kafka node %s ignored SIGTERM for %.0fs; killing", self.spec.node_id, timeout)
            self.kill()

    def tail_log(self, n: int = 40) -> str:
        for f in (self.spec.data_dir / "stdout.log", self.log_file):
            if f.exists():
                lines = f.read_text(errors="replace").splitlines()[-n:]
                if lines:
                    return "\n".join(lines)
        return "(no log output)"


# --------------------------------------------------------------------------- cluster


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


# --------------------------------------------------------------------------- CLI daemon


def _daemon_dir() -> Path:
    return cache_dir() / "run" / "daemon"


def daemon_up(*, port: int | None = None, timeout: float = 90.0,
              security: BrokerSecurity | None = None) -> dict[str, object]:
    """Start (or find running) the persistent single-node broker used by `edgeveil kafka up`.

    The broker keeps running after this process exits; :func:`daemon_down` stops it. Its data stays
    under ``$EDGEVEIL_CACHE/run/daemon`` across restarts. With ``security`` it is a secured
    broker (mutual TLS, ACLs); the admin identity is remembered so `status` can probe it.
    """
    status = daemon_status()
    if status.get("running"):
        return status
    d = _daemon_dir()
    state = d / "ports.json"
    libs = ensure_jars()
    if state.exists():
        ports = json.loads(state.read_text())
    else:
        ports = {"broker": port or 9092, "controller": free_port(), "cluster_id": _cluster_id()}
    if port and ports["broker"] != port:
        ports["broker"] = port
    ports["security"] = _security_state(security)
    spec = _NodeSpec(1, int(ports["broker"]), int(ports["controller"]), d / "node1")
    node = KafkaNode(spec, voters=f"1@127.0.0.1:{spec.controller_port}", libs=libs,
                     replication_factor=1, min_insync=1, security=security)
    if _port_in_use(spec.broker_port):
        raise KafkaHarnessError(
            f"port {spec.broker_port} is in use by another program; pass --port to pick another"
        )
    node.write_config()
    node.format(str(ports["cluster_id"]))
    node.start()
    d.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps(ports))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not node.running:
            raise KafkaHarnessError(f"broker exited during start:\n{node.tail_log()}")
        try:
            if metadata_broker_count(node.address, settings=_daemon_settings(ports)) >= 1:
                return daemon_status()
        except IdentityError:
            node.stop()
            raise
        except Exception:  # noqa: BLE001
            time.sleep(0.5)
    node.stop()
    raise KafkaHarnessError(f"broker did not answer within {timeout:.0f}s:\n{node.tail_log()}")


def _security_state(security: BrokerSecurity | None) -> dict[str, str] | None:
    """What `kafka status` needs to probe a secured daemon: the admin's files (no secrets)."""
    if security is None:
        return None
    a = security.admin
    return {"ca": str(a.ca), "cert": str(a.cert), "key": str(a.key)}


def _daemon_settings(ports: dict[str, object]) -> Settings | None:
    sec = ports.get("security")
    if not isinstance(sec, dict):
        return None
    return load_settings(bootstrap_servers=f"127.0.0.1:{ports['broker']}",
                         security_protocol="SSL", ssl_cafile=sec["ca"], ssl_certfile=sec["cert"],
                         ssl_keyfile=sec["key"])


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie left by our own parent is not alive
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def daemon_status() -> dict[str, object]:
    """What `edgeveil kafka status` reports: running?, pid, address, and whether it answers."""
    d = _daemon_dir()
    pid_file = d / "node1" / "pid"
    state = d / "ports.json"
    if not pid_file.exists() or not state.exists():
        return {"running": False, "data_dir": str(d)}
    pid = int(pid_file.read_text())
    ports = json.loads(state.read_text())
    address = f"127.0.0.1:{ports['broker']}"
    alive = _pid_alive(pid)
    answers = False
    if alive:
        try:
            answers = metadata_broker_count(address, settings=_daemon_settings(ports)) >= 1
        except Exception:  # noqa: BLE001
            answers = False
    return {"running": alive, "answers": answers, "pid": pid, "bootstrap_servers": address,
            "data_dir": str(d), "secure": bool(ports.get("security"))}


def daemon_down(timeout: float = 30.0) -> bool:
    """Stop the `edgeveil kafka up` broker; returns False when none was running."""
    status = daemon_status()
    if not status.get("running"):
        return False
    pid = int(status["pid"])  # type: ignore[call-overload]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.2)
    if _pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
    return True


def iter_logs(cluster: KafkaCluster) -> Iterator[tuple[int, str]]:
    """(node id, last log lines) for each node: what to print when a test fails."""
    for n in cluster.nodes:
        yield n.spec.node_id, n.tail_log()
