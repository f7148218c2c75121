"""One KRaft node (broker + controller in one JVM): its ports, configuration, storage and process."""

from __future__ import annotations

import base64
import logging
import signal
import socket
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from agents.broker.errors import KafkaHarnessError
from agents.broker.security import AUTHORIZER, PRINCIPAL_MAPPING_RULES, BrokerSecurity
from agents.settings import MAX_MESSAGE_BYTES
from pipeline.identity import check_private_file, write_pkcs12

log = logging.getLogger(__name__)

_JVM_TIER = ("-XX:TieredStopAtLevel=1",)

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
