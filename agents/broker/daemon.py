"""The persistent single-node broker of `edgeveil kafka up | status | down`."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

from agents.broker.cluster import metadata_broker_count
from agents.broker.errors import KafkaHarnessError
from agents.broker.jars import ensure_jars
from agents.broker.node import KafkaNode, _cluster_id, _NodeSpec, free_port
from agents.broker.security import BrokerSecurity
from agents.settings import Settings, cache_dir, load_settings
from pipeline.identity import IdentityError


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
