"""A federation over mutual TLS with ACLs on the real broker: rounds complete, and revocation."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from agents import acls, federation
from agents.topics import ANALYTICS, DLQ, MODELS, TELEMETRY, UPDATES, changelog_topics
from agents.workers import FaustWorker
from pipeline.codec import encode_update
from pipeline.codec.global_model import decode_global_model
from schemas.messages import DlqEntry, Telemetry
from schemas.update import ModelUpdate, PrivacyStamp
from tests.conftest import SecureKafka
from tests.kafka_helpers import delete_federation_topics, start_workers

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _fleet(secure_kafka: SecureKafka, tmp_path: Path, cfg: federation.FederationPlan,
           ) -> tuple[Path, str, dict[str, str]]:
    """Run dir (certificates from the broker's CA), fresh topics and ACLs; the aggregator's
    app id and the environment every worker shares."""
    root = federation.init_run_dir(tmp_path / "run", cfg, ca_dir=secure_kafka.ca_dir)
    app_id = f"s{uuid.uuid4().hex[:6]}-aggregator"
    admin = secure_kafka.admin_settings()
    delete_federation_topics(secure_kafka.bootstrap_servers, settings=admin)
    acls.setup_federation(admin, cfg.nodes, aggregator_app_id=app_id)
    env = {"EDGEVEIL_BOOTSTRAP_SERVERS": secure_kafka.bootstrap_servers,
           "EDGEVEIL_RUN_DIR": str(root), "EDGEVEIL_DATA_DIR": str(root / "faust")}
    return root, app_id, env


def _aggregator(root: Path, app_id: str, env: dict[str, str]) -> FaustWorker:
    return FaustWorker("agents.aggregator", env={
        **env, **federation.client_env(root, federation.AGGREGATOR), "EDGEVEIL_APP_ID": app_id})


def _reader(root: Path, settings, *topics: str):  # type: ignore[no-untyped-def]
    from kafka import KafkaConsumer

    reader = federation.client_settings(root, federation.READER, base=settings)
    return KafkaConsumer(*topics, auto_offset_reset="earliest", consumer_timeout_ms=500,
                         **reader.consumer_config())


def test_secured_federation_aggregator_and_two_edge_workers_complete_rounds(
        secure_kafka: SecureKafka, tmp_path: Path) -> None:
    from pipeline.tasks import get_task

    kwargs = {"sensors": 2, "max_train_per_node": 1000}
    nodes = get_task("pedestrian-forecast", **kwargs).node_ids()
    rounds = 2
    cfg = federation.FederationPlan(task="pedestrian-forecast", task_options=kwargs, quorum=2,
                                      rounds=rounds, epsilon=4.0, nodes=nodes, deadline_s=300)
    root, app_id, env = _fleet(secure_kafka, tmp_path, cfg)
    pub = federation.aggregator_public_key(root)
    # every worker is its own identity: the aggregator, and each edge as its node (own group)
    workers = [_aggregator(root, app_id, env)]
    workers += [FaustWorker("agents.edge", env={
        **env, **federation.client_env(root, node), "EDGEVEIL_APP_ID": federation.edge_group(node),
        "EDGEVEIL_EDGE_NODES": node}) for node in nodes]
    consumer = _reader(root, secure_kafka.admin_settings(), MODELS.name, TELEMETRY.name,
                       ANALYTICS.name, DLQ.name)
    models: dict[int, object] = {}
    telemetry: dict[str, Telemetry] = {}
    dlq: list[DlqEntry] = []
    try:
        start_workers(workers)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (rounds in models and set(nodes) <= {
                n for n, t in telemetry.items() if t.model_version >= rounds}):
            for msg in consumer:
                if msg.topic == MODELS.name:
                    m = decode_global_model(msg.value, public_key=pub)
                    models[m.header.version] = m
                elif msg.topic == TELEMETRY.name:
                    t = Telemetry.decode(msg.value)
                    telemetry[t.node_id] = t
                elif msg.topic == DLQ.name:
                    dlq.append(DlqEntry.from_headers(msg.headers))
            assert all(w.running for w in workers), "\n".join(w.output[-3000:] for w in workers)
    finally:
        outputs = [w.output for w in workers]
        for w in workers:
            w.stop()
        consumer.close()
    assert rounds in models, f"versions {sorted(models)}\n" + "\n".join(o[-3000:] for o in outputs)
    for v in range(1, rounds + 1):
        assert sorted(models[v].header.participants) == sorted(nodes), v
    assert set(nodes) <= set(telemetry)
    assert not dlq, [e.reason for e in dlq]
    # nothing was refused along the way: no worker met an authorization error
    for out in outputs:
        assert "AuthorizationFailed" not in out and "AuthorizationException" not in out
    # the notebook reads the models over mTLS as the run's read-only reader
    text = _run_notebook_loading_cells(root, secure_kafka.bootstrap_servers)
    assert f"versions: {list(range(rounds + 1))} source: kafka" in text


def _run_notebook_loading_cells(root: Path, bootstrap: str) -> str:
    import os

    import nbformat
    from nbclient import NotebookClient

    repo = Path(__file__).resolve().parents[2]
    nb = nbformat.read(repo / "notebooks" / "analysis.ipynb", as_version=4)
    last = next(i for i, c in enumerate(nb.cells) if "def models_from_kafka" in c.source)
    nb.cells = nb.cells[:last + 1]
    env = {"EDGEVEIL_RUN_DIR": str(root), "EDGEVEIL_BOOTSTRAP_SERVERS": bootstrap,
           "EDGEVEIL_SECURITY_PROTOCOL": "SSL"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(repo)}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []))


def _update(root: Path, node: str, weights: dict, *, rnd: int, base: int) -> bytes:
    rng = np.random.default_rng(abs(hash((node, rnd))) % 2**32)
    delta = {k: (rng.normal(size=v.shape) * 0.01).astype(np.float32) for k, v in weights.items()}
    stamp = PrivacyStamp(epsilon=0.3 * rnd, delta=1e-5, noise_multiplier=1.1, sample_rate=0.05,
                         steps=10, accountant="prv")
    u = ModelUpdate(node_id=node, task="pedestrian-forecast", round=rnd, base_version=base,
                    num_examples=50, metrics={"mae": 10.0}, privacy=stamp, delta=delta)
    return encode_update(u, private_key=federation.node_key(root, node), compression="int8")


def _send_as(root: Path, settings, node: str, value: bytes) -> None:  # type: ignore[no-untyped-def]
    from kafka import KafkaProducer

    as_node = federation.client_settings(root, node, base=settings)
    producer = KafkaProducer(**as_node.producer_config(), max_block_ms=10_000, retries=0)
    try:
        producer.send(UPDATES.name, key=node.encode(), value=value).get(timeout=20)
    finally:
        producer.close(timeout=5)


def test_revoked_node_is_refused_its_queued_update_goes_to_the_dlq_and_the_round_completes(
        secure_kafka: SecureKafka, tmp_path: Path) -> None:
    from kafka.errors import TopicAuthorizationFailedError
    from typer.testing import CliRunner

    from agents.cli import app as cli

    kwargs = {"sensors": 3, "max_train_per_node": 64}
    from pipeline.tasks import get_task

    nodes = get_task("pedestrian-forecast", **kwargs).node_ids()
    cfg = federation.FederationPlan(task="pedestrian-forecast", task_options=kwargs, quorum=3,
                                      min_quorum=2, deadline_s=5.0, rounds=3, nodes=nodes)
    root, app_id, env = _fleet(secure_kafka, tmp_path, cfg)
    admin = secure_kafka.admin_settings()
    pub = federation.aggregator_public_key(root)
    a, b, revoked = nodes
    consumer = _reader(root, admin, MODELS.name, DLQ.name)
    models: dict[int, object] = {}
    dlq: list[tuple[DlqEntry, bytes]] = []

    def follow(until, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
        end = time.monotonic() + timeout
        while not until() and time.monotonic() < end:
            for msg in consumer:
                if msg.topic == MODELS.name:
                    m = decode_global_model(msg.value, public_key=pub)
                    models[m.header.version] = m
                else:
                    dlq.append((DlqEntry.from_headers(msg.headers), msg.value))

    worker = _aggregator(root, app_id, env)
    try:
        worker.start(timeout=180)
        follow(lambda: 0 in models)
        w0 = dict(models[0].weights)
        # the node's update reaches the aggregator and waits in the open round (quorum 3)
        queued = _update(root, revoked, w0, rnd=1, base=0)
        _send_as(root, admin, revoked, queued)
        end = time.monotonic() + 30
        while "1 buffered" not in worker.output and time.monotonic() < end:
            time.sleep(0.2)
        assert "1 buffered" in worker.output, worker.output[-3000:]

        result = CliRunner().invoke(cli, ["federation", "revoke", revoked, "--run-dir", str(root)],
                                    env={"EDGEVEIL_BOOTSTRAP_SERVERS": secure_kafka.bootstrap_servers})
        assert result.exit_code == 0, result.output
        assert "ACL(s) removed" in result.output
        assert acls.list_acls(admin, f"User:{revoked}") == []
        # setting the federation up again does not give a revoked node its ACLs back
        again = CliRunner().invoke(cli, ["federation", "acls", str(root), "--aggregator-app-id",
                                         app_id], env={"EDGEVEIL_BOOTSTRAP_SERVERS":
                                                       secure_kafka.bootstrap_servers})
        assert again.exit_code == 0, again.output
        assert acls.list_acls(admin, f"User:{revoked}") == []
        # the running aggregator re-reads its registry: the queued update goes to the DLQ
        follow(lambda: any(e.reason == "revoked" for e, _ in dlq), timeout=30)
        entry, value = next((e, v) for e, v in dlq if e.reason == "revoked")
        assert value == queued and entry.source_topic == UPDATES.name
        # the revoked node's connection can do nothing any more
        with pytest.raises(TopicAuthorizationFailedError):
            _send_as(root, admin, revoked, _update(root, revoked, w0, rnd=2, base=0))
        # the others finish the round without it (deadline, min_quorum 2)
        for node in (a, b):
            _send_as(root, admin, node, _update(root, node, w0, rnd=1, base=0))
        follow(lambda: 1 in models, timeout=60)
    finally:
        output = worker.output
        worker.stop()
        consumer.close()
    assert 1 in models, output[-4000:]
    assert sorted(models[1].header.participants) == sorted([a, b])
    assert "key registry reloaded" in output and revoked in output
    assert federation.registry(root).is_revoked(revoked)
    assert changelog_topics(app_id)  # the aggregator ran on the admin-made changelogs


def test_demo_runs_secured(tmp_path: Path) -> None:
    """`edgeveil demo --secure` end to end, small: its own secured broker, the admin's topics and
    ACLs, the workers with their own certificates, the monitor as the reader."""
    from agents.demo import run_demo

    summary = run_demo(out_dir=tmp_path / "out", rounds=1, nodes=2, edge_workers=1, camera=None,
                       secure=True, timeout_s=240)
    assert summary["secure"] is True
    assert summary["completed_rounds"] == 1 and summary["dlq"] == []
    assert 0 < summary["setup_seconds"] < summary["seconds"]
    logs = "\n".join(p.read_text() for p in (tmp_path / "out" / "logs").glob("*.log"))
    assert "AuthorizationFailed" not in logs
