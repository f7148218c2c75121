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
from dataclasses import dataclass
from pathlib import Path

from agents.settings import MAX_MESSAGE_BYTES, cache_dir

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.1.1"
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
    ) -> None:
        self.spec = spec
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
        self.properties_file.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (s.data_dir / "log4j2.properties").write_text(
            _LOG4J2.format(log=self.log_file, level=self.log_level)
        )

    def format(self, cluster_id: str) -> None:
        if (self.spec.data_dir / "log" / "meta.properties").exists():
            return
        cmd = [
            "java", "-cp", f"{self.libs}/*", f"-Dlog4j2.configurationFile={self.spec.data_dir / 'log4j2.properties'}",
            "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(self.properties_file),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise KafkaHarnessError(f"formatting KRaft storage failed:\n{proc.stdout}{proc.stderr}")

    def start(self) -> None:
        if self.running:
            return
        cmd = [
            "java", f"-Xms{self.heap}", f"-Xmx{self.heap}", "-XX:+UseG1GC",
            "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.spec.data_dir / 'log4j2.properties'}",
            "-cp", f"{self.libs}/*", "kafka.Kafka", str(self.properties_file),
        ]
        out = open(self.spec.data_dir / "stdout.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        (self.spec.data_dir / "pid").write_text(str(self.proc.pid))

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
    """

    def __init__(
        self,
        size: int = 1,
        *,
        data_dir: Path | None = None,
        version: str = KAFKA_VERSION,
        heap: str = "512m",
        log_level: str = "WARN",
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
        self.nodes: list[KafkaNode] = []

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(n.address for n in self.nodes)

    def start(self, timeout: float = 90.0) -> KafkaCluster:
        libs = ensure_jars(self.version)
        specs = [
            _NodeSpec(i + 1, free_port(), free_port(), self.data_dir / f"node{i + 1}")
            for i in range(self.size)
        ]
        voters = ",".join(f"{s.node_id}@127.0.0.1:{s.controller_port}" for s in specs)
        cid = _cluster_id()
        self.nodes = [
            KafkaNode(
                s, voters=voters, libs=libs, replication_factor=self.replication_factor,
                min_insync=self.min_insync, heap=self.heap, log_level=self.log_level,
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
                if metadata_broker_count(self.bootstrap_servers) >= want:
                    return
            except Exception as exc:  # noqa: BLE001 - retried until the deadline
                last = exc
            time.sleep(0.5)
        raise KafkaHarnessError(
            f"Kafka at {self.bootstrap_servers} did not answer metadata with {want} broker(s) within "
            f"{timeout:.0f}s (last error: {last}).\n{self.nodes[0].tail_log()}"
        )

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
    """A single-node broker on a free loopback port."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(1, **kwargs)  # type: ignore[arg-type]


def metadata_broker_count(bootstrap_servers: str, timeout_ms: int = 3000) -> int:
    """Number of brokers a metadata request to ``bootstrap_servers`` lists (raises if none answer)."""
    from kafka import KafkaAdminClient

    with _quiet_kafka_logs():
        return _broker_count(KafkaAdminClient, bootstrap_servers, timeout_ms)


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


def _broker_count(client: type, bootstrap_servers: str, timeout_ms: int) -> int:
    admin = client(
        bootstrap_servers=bootstrap_servers,
        request_timeout_ms=timeout_ms,
        client_id="edgeveil-probe",
    )
    try:
        info = admin.describe_cluster()
        return len(info.get("brokers", []))
    finally:
        admin.close()


# --------------------------------------------------------------------------- CLI daemon


def _daemon_dir() -> Path:
    return cache_dir() / "run" / "daemon"


def daemon_up(*, port: int | None = None, timeout: float = 90.0) -> dict[str, object]:
    """Start (or find running) the persistent single-node broker used by `edgeveil kafka up`.

    The broker keeps running after this process exits; :func:`daemon_down` stops it. Its data stays
    under ``$EDGEVEIL_CACHE/run/daemon`` across restarts.
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
    spec = _NodeSpec(1, int(ports["broker"]), int(ports["controller"]), d / "node1")
    node = KafkaNode(spec, voters=f"1@127.0.0.1:{spec.controller_port}", libs=libs,
                     replication_factor=1, min_insync=1)
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
            if metadata_broker_count(node.address) >= 1:
                return daemon_status()
        except Exception:  # noqa: BLE001
            time.sleep(0.5)
    node.stop()
    raise KafkaHarnessError(f"broker did not answer within {timeout:.0f}s:\n{node.tail_log()}")


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
            answers = metadata_broker_count(address) >= 1
        except Exception:  # noqa: BLE001
            answers = False
    return {"running": alive, "answers": answers, "pid": pid, "bootstrap_servers": address,
            "data_dir": str(d)}


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
