"""The fleet page, /metrics and staged rollout during a federation over the real broker.

One federation (3 nodes, 2 rounds) runs for the whole module: the aggregator with its web server
and two edge workers (node 1 alone; nodes 2 and 3 together, so one worker serves two versions
at once during the canary). The tests run in file order and each leaves the fleet as the next
one expects: rollout commands, forged messages, a refused model, then killing the second edge
worker and restarting the aggregator. Screenshots go to out/test-artifacts/.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agents import federation
from agents.settings import Settings, load_settings
from agents.topics import CONTROL, DLQ, FEDERATION_TOPICS, MODELS, TELEMETRY, UPDATES, ensure_topics
from agents.workers import FaustWorker
from schemas.messages import DlqEntry, Telemetry

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

TASK_KWARGS = {"sensors": 3, "max_train_per_node": 2000}
ROUNDS = 2
STALE_S = 5.0


@dataclass
class Fleet:
    root: Path
    nodes: list[str]
    settings: Settings
    url: str
    env: dict[str, str]
    workers: dict[str, FaustWorker]
    timings: dict[str, float] = field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/fleet.json", timeout=10) as r:
            return json.load(r)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as r:
            assert r.headers["Content-Type"].startswith("text/plain")
            return r.read().decode()

    def served(self) -> dict[str, tuple[str, int | None]]:
        return {r["node_id"]: (r["status"], r["model_version"]) for r in self.json()["rows"]}

    def wait(self, check, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = check()
            except OSError as exc:  # the page is not up (yet)
                last = exc
            if last and not isinstance(last, Exception):
                return last
            time.sleep(0.3)
        outputs = "\n".join(f"--- {n}\n{w.output[-2500:]}" for n, w in self.workers.items())
        raise AssertionError(f"{what}: not seen in {timeout:.0f} s (last: {last!r})\n{outputs}")

    def cli(self, *args: str) -> str:
        from typer.testing import CliRunner

        from agents.cli import app

        res = CliRunner().invoke(app, [*args, "--run-dir", str(self.root)],
                                 env={"EDGEVEIL_BOOTSTRAP_SERVERS": self.settings.bootstrap_servers})
        assert res.exit_code == 0, res.output
        return res.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _records(settings: Settings, topic: str) -> list[Any]:
    """Every record now on ``topic`` (all partitions, from the beginning to the end offsets)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(**settings.consumer_config(), enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        end = c.end_offsets(tps)
        out: list[Any] = []
        deadline = time.monotonic() + 30
        while any(c.position(tp) < end[tp] for tp in tps) and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=500).values():
                out.extend(r for r in recs if r.offset < end[TopicPartition(r.topic, r.partition)])
        return out
    finally:
        c.close()


def _count(settings: Settings, topic: str) -> int:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(**settings.consumer_config())
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
        begin, end = c.beginning_offsets(tps), c.end_offsets(tps)
        return sum(end[tp] - begin[tp] for tp in tps)
    finally:
        c.close()


def _two_heartbeats_later(fleet, timeout: float = 30) -> None:
    """Return once the page has taken two new heartbeats from every node (a heartbeat resets the
    row's ``heartbeat_age_s``, so the age going down between two scrapes is one)."""
    prev: dict[str, float | None] = {}
    beats = dict.fromkeys(fleet.nodes, 0)

    def two_each() -> bool:
        for r in fleet.json()["rows"]:
            age, before = r["heartbeat_age_s"], prev.get(r["node_id"])
            if age is not None and before is not None and age < before:
                beats[r["node_id"]] = beats.get(r["node_id"], 0) + 1
            prev[r["node_id"]] = age
        return all(beats[n] >= 2 for n in fleet.nodes)

    fleet.wait(two_each, timeout, f"two new heartbeats from every node (so far {beats})")


def _dlq(settings: Settings) -> list[DlqEntry]:
    return [DlqEntry.from_headers(r.headers) for r in _records(settings, DLQ.name)]


def _families(text: str) -> dict[str, Any]:
    from prometheus_client.parser import text_string_to_metric_families

    return {f.name: f for f in text_string_to_metric_families(text)}


def _total(fam: Any, **labels: str) -> float:
    return sum(s.value for s in fam.samples if s.name.endswith("_total")
               and all(s.labels.get(k) == v for k, v in labels.items()))


@pytest.fixture(scope="module")
def fleet(kafka_broker: str, tmp_path_factory) -> Any:
    from pipeline.tasks import get_task
    from tests.kafka_helpers import delete_federation_topics, start_workers

    delete_federation_topics(kafka_broker)
    t0 = time.monotonic()
    nodes = get_task("pedestrian-forecast", **TASK_KWARGS).node_ids()
    root = federation.init_run_dir(tmp_path_factory.mktemp("fleet") / "run",
                                   federation.FederationPlan(
                                       task="pedestrian-forecast", task_options=TASK_KWARGS,
                                       quorum=3, rounds=ROUNDS, epsilon=4.0, nodes=nodes,
                                       deadline_s=300))
    settings = load_settings(bootstrap_servers=kafka_broker)
    ensure_topics(settings, FEDERATION_TOPICS)
    port = _free_port()
    tag = uuid.uuid4().hex[:6]
    env = {"EDGEVEIL_BOOTSTRAP_SERVERS": kafka_broker, "EDGEVEIL_RUN_DIR": str(root),
           "EDGEVEIL_DATA_DIR": str(root / "faust"), "EDGEVEIL_WEB_PORT": str(port),
           "EDGEVEIL_FLEET_STALE_S": str(STALE_S)}
    workers = {
        "aggregator": FaustWorker("agents.aggregator", web=True,
                                  env={**env, "EDGEVEIL_APP_ID": f"f{tag}-aggregator"}),
        "edge1": FaustWorker("agents.edge", env={**env, "EDGEVEIL_APP_ID": f"f{tag}-e1-edge",
                                                 "EDGEVEIL_EDGE_NODES": "1"}),
        "edge2": FaustWorker("agents.edge", env={**env, "EDGEVEIL_APP_ID": f"f{tag}-e2-edge",
                                                 "EDGEVEIL_EDGE_NODES": "2-3"}),
    }
    f = Fleet(root=root, nodes=nodes, settings=settings, url=f"http://127.0.0.1:{port}",
              env=env, workers=workers)
    try:
        start_workers(workers.values())
        f.wait(lambda: set(f.served().values()) == {("alive", ROUNDS)}, 300,
               f"every node alive and serving v{ROUNDS}")
        f.timings["federation_s"] = time.monotonic() - t0
        yield f
    finally:
        for w in workers.values():
            w.stop()


def test_fleet_page_lists_every_node_with_its_version_and_epsilon(fleet, browser,
                                                                   artifacts) -> None:
    from pipeline.codec.global_model import decode_global_model

    browser.get(f"{fleet.url}/fleet")
    rows = browser.wait_for(lambda: (r := browser.js(
        "return Array.from(document.querySelectorAll('#rows tr')).map(tr => "
        "[tr.dataset.node, tr.dataset.status, tr.dataset.version, tr.dataset.epsilon, "
        "tr.innerText])")) and len(r) == 3 and all(x[1] == "alive" for x in r) and r, 30,
        "three alive rows")
    assert [r[0] for r in rows] == fleet.nodes
    # the ε each row shows is what the last global model records for that node
    _, pub = federation.aggregator_keys(fleet.root)
    last = [decode_global_model(r.value, public_key=pub) for r in _records(fleet.settings,
                                                                           MODELS.name)][-1]
    assert last.header.version == ROUNDS
    for node, _status, version, eps, text in rows:
        assert version == str(ROUNDS)
        assert float(eps) == pytest.approx(last.header.epsilon_by_node[node], rel=1e-6)
        assert f"{float(eps):.3f} / 4.00" in text and f"v{ROUNDS}" in text
        assert "admitted" in text  # its last update
    header = browser.js("return document.getElementById('round').innerText")
    assert header == f"v{ROUNDS} of {ROUNDS}"
    assert browser.js("return document.getElementById('alive').innerText") == "3/3 alive"
    assert "train_loss" in browser.js("return document.getElementById('chart-title').textContent")
    assert browser.js("return document.querySelectorAll('#chart circle').length") == ROUNDS
    # the page polls the aggregator and loads nothing else: no CDN, nothing from the internet
    urls = browser.wait_for(lambda: browser.js(
        "return performance.getEntriesByType('resource').map(e => e.name)"), 5, "a poll")
    assert all(u.startswith(f"{fleet.url}/") for u in urls), urls
    browser.screenshot(artifacts / "fleet-page.png")


def test_metrics_parse_and_counters_match_the_topics(fleet) -> None:
    from agents.metrics import METRIC_NAMES

    s = fleet.settings
    fams = _families(fleet.metrics())
    exposed = {n for f in fams.values() for n in {f.name, f.name + "_total"}}
    assert set(METRIC_NAMES) <= exposed, set(METRIC_NAMES) - exposed
    updates = _count(s, UPDATES.name)
    assert updates == 3 * ROUNDS
    assert _total(fams["edgeveil_updates"]) == updates
    assert _total(fams["edgeveil_updates"], outcome="admitted") == updates
    assert _total(fams["edgeveil_models_published"]) == len(_records(s, MODELS.name)) == ROUNDS + 1
    assert _total(fams["edgeveil_dlq_messages"]) == _count(s, DLQ.name)
    assert _total(fams["edgeveil_control_messages"]) == _count(s, CONTROL.name)

    def telemetry_matches() -> bool:  # heartbeats keep coming: equal at some scrape
        n = _count(s, TELEMETRY.name)
        return _total(_families(fleet.metrics())["edgeveil_telemetry_messages"]) == n > 0

    fleet.wait(telemetry_matches, 20, "telemetry counter == records on edgeveil.telemetry")
    hist = fams["edgeveil_round_latency_seconds"]
    count = [x.value for x in hist.samples if x.name.endswith("_count")]
    assert count == [ROUNDS]
    version = {x.labels["node"]: x.value for x in fams["edgeveil_node_model_version"].samples}
    assert version == {n: ROUNDS for n in fleet.nodes}
    up = {x.labels["node"]: x.value for x in fams["edgeveil_node_up"].samples}
    assert up == {n: 1.0 for n in fleet.nodes}
    eps = {x.labels["node"]: x.value for x in fams["edgeveil_node_epsilon_spent"].samples}
    rows = {r["node_id"]: r for r in fleet.json()["rows"]}
    assert eps == pytest.approx({n: rows[n]["epsilon"] for n in fleet.nodes})
    # faust's own table and router views stay off: the tables are not served raw
    import urllib.error

    for path in ("/table/fleet-nodes/", "/router/"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(fleet.url + path, timeout=10)
        assert err.value.code == 404, path
    lag = {(x.labels["topic"], x.labels["partition"]): x.value
           for x in fams["edgeveil_consumer_lag"].samples}
    assert {t for t, _ in lag} >= {UPDATES.name, TELEMETRY.name}
    assert all(v >= 0 for v in lag.values())


def _wait_serving(fleet, want: dict[str, int], what: str) -> float:
    t0 = time.monotonic()
    fleet.wait(lambda: fleet.served() == {n: ("alive", v) for n, v in want.items()}, 30, what)
    return time.monotonic() - t0


def test_canary_serves_the_new_version_while_the_rest_keep_the_old_then_rollback(
        fleet, browser, artifacts) -> None:
    a, b, c = fleet.nodes
    out = fleet.cli("model", "rollback", "1")
    assert "rollback v1" in out
    fleet.timings["rollback_s"] = _wait_serving(fleet, {a: 1, b: 1, c: 1}, "everyone on v1")
    # the canary is node 2, hosted with node 3 by the same worker: one process, two versions
    out = fleet.cli("model", "promote", "2", "--to", b)
    assert "canary" in out
    fleet.timings["canary_s"] = _wait_serving(fleet, {a: 1, b: 2, c: 1}, "canary on v2")
    doc = fleet.json()
    roles = {r["node_id"]: r["role"] for r in doc["rows"]}
    assert roles == {a: "stable", b: "canary", c: "stable"}
    assert doc["header"]["rollout"]["canary_version"] == 2
    assert doc["header"]["rollout"]["stable_version"] == 1
    # the edges also say so on the analytics topic: forecasts from the version each serves
    from agents.topics import ANALYTICS
    from schemas.messages import AnalyticsRecord

    recs = [AnalyticsRecord.decode(r.value) for r in _records(fleet.settings, ANALYTICS.name)]
    latest = {r.node_id: r.model_version for r in recs if r.forecast is not None}
    assert latest == {a: 1, b: 2, c: 1}
    browser.get(f"{fleet.url}/fleet")
    browser.wait_for(lambda: browser.js(
        "return document.querySelector(`#rows tr[data-node='" + b + "'] .badge.canary`) !== null"),
        10, "canary badge")
    browser.screenshot(artifacts / "fleet-canary.png")
    fleet.cli("model", "rollback", "1")
    _wait_serving(fleet, {a: 1, b: 1, c: 1}, "everyone back on v1")


def test_a_forged_control_message_changes_nothing_and_is_reported(fleet) -> None:
    from agents.control import publish_control, read_control
    from pipeline.codec import generate_keypair
    from pipeline.serving.rollout import encode_control, promote

    s = fleet.settings
    _, pub = federation.aggregator_keys(fleet.root)
    current = read_control(s, task="pedestrian-forecast", public_key=pub)
    assert current is not None and current.stable_version == 1
    status = json.loads(fleet.cli("model", "status"))
    assert (status["seq"], status["action"], status["stable_version"]) == (current.seq,
                                                                            "rollback", 1)
    dlq_before = len(_dlq(s))
    forged = promote(current, task="pedestrian-forecast", version=2, nodes=fleet.nodes,
                     target=["all"], issued_at=time.time(), issuer="mallory")
    publish_control(s, encode_control(forged, private_key=generate_keypair()[0]),
                    task="pedestrian-forecast")

    def reported() -> list[DlqEntry]:
        new = [e for e in _dlq(s)[dlq_before:] if e.source_topic == CONTROL.name]
        return new if len(new) >= 2 else []

    entries = fleet.wait(reported, 20, "both edge workers report the forged command")
    assert {(e.agent, e.reason) for e in entries} == {("edge", "bad_signature")}
    doc = fleet.wait(lambda: (d := fleet.json())["header"]["rejected_controls"] and d, 10,
                     "the fleet page lists the rejected command")
    assert doc["header"]["rejected_controls"][-1]["reason"] == "bad_signature"
    assert doc["header"]["rollout"]["seq"] == current.seq  # the genuine command stays in force
    fams = _families(fleet.metrics())
    assert _total(fams["edgeveil_control_messages"], outcome="rejected",
                  reason="bad_signature") == 1
    _two_heartbeats_later(fleet)  # and nobody moved
    assert fleet.served() == {n: ("alive", 1) for n in fleet.nodes}
    assert json.loads(fleet.cli("model", "status"))["seq"] == current.seq


def test_a_model_that_fails_the_edge_checks_is_never_served(fleet) -> None:
    """A correctly signed v3 with wrong tensor shapes, then a genuine command to serve it."""
    from agents.control import publish_control, read_control
    from pipeline.codec.global_model import encode_global_model
    from pipeline.serving.rollout import encode_control, promote
    from schemas.messages import GlobalModel, GlobalModelHeader

    s = fleet.settings
    priv, pub = federation.aggregator_keys(fleet.root)
    header = GlobalModelHeader(task="pedestrian-forecast", version=3, round=3, participants=[],
                               num_examples=0, strategy="fedavg", metrics={},
                               epsilon_by_node={}, delta=1e-5, created_at=time.time())
    bad = encode_global_model(GlobalModel(header, {"w": np.ones(5, np.float32)}, b"x"),
                              private_key=priv)
    from kafka import KafkaProducer

    producer = KafkaProducer(**s.producer_config())
    producer.send(MODELS.name, key=b"pedestrian-forecast", value=bad).get(30)
    producer.close()
    current = read_control(s, task="pedestrian-forecast", public_key=pub)
    serve3 = promote(current, task="pedestrian-forecast", version=3, nodes=fleet.nodes,
                     target=["all"], issued_at=time.time(), issuer="test")
    publish_control(s, encode_control(serve3, private_key=priv), task="pedestrian-forecast")
    entries = fleet.wait(lambda: [e for e in _dlq(s) if e.reason == "shape_mismatch"]
                         if len([e for e in _dlq(s) if e.reason == "shape_mismatch"]) >= 2
                         else [], 20, "both edge workers refuse v3")
    assert {(e.agent, e.source_topic) for e in entries} == {("edge", MODELS.name)}
    doc = fleet.wait(lambda: (d := fleet.json())["header"]["rollout"]["seq"] == serve3.seq and d,
                     10, "the command is in force")
    _two_heartbeats_later(fleet)
    doc = fleet.json()
    assert {(r["model_version"], r["wanted_version"], r["pending"]) for r in doc["rows"]} == {
        (1, 3, True)}
    # back to v1 everywhere for the next tests
    fleet.cli("model", "rollback", "1")
    fleet.wait(lambda: not any(r["pending"] for r in fleet.json()["rows"]), 20, "no pending")


def test_killing_an_edge_worker_turns_its_rows_stale(fleet, browser, artifacts) -> None:
    from kafka import KafkaProducer

    a, b, c = fleet.nodes
    browser.get(f"{fleet.url}/fleet")

    def statuses() -> dict[str, str]:
        return browser.js("return Object.fromEntries(Array.from("
                          "document.querySelectorAll('#rows tr')).map(tr => "
                          "[tr.dataset.node, tr.dataset.status]))")

    browser.wait_for(lambda: set(statuses().values()) == {"alive"}, 10, "all alive")
    t_kill = time.monotonic()
    fleet.workers["edge2"].kill()
    browser.wait_for(lambda: statuses() == {a: "alive", b: "stale", c: "stale"}, STALE_S + 15,
                     "nodes 2 and 3 stale, node 1 alive")
    fleet.timings["stale_after_kill_s"] = time.monotonic() - t_kill
    assert "2 stale" in browser.js("return document.getElementById('nodes-sub').innerText")
    browser.screenshot(artifacts / "fleet-stale.png")
    # page latency: one heartbeat written to the topic (as node 3's edge would) shows in the page
    t = Telemetry(node_id=c, fps=12.5, frames_in=250, fail_closed=3, epsilon=0.5,
                  cpu_percent=1.0, rss_bytes=1, model_version=1)
    producer = KafkaProducer(**fleet.settings.producer_config())
    t_send = time.monotonic()
    producer.send(TELEMETRY.name, key=c.encode(), value=t.encode()).get(30)
    producer.close()
    text = browser.wait_for(lambda: browser.js(
        f"const tr = document.querySelector(`#rows tr[data-node='{c}']`);"
        "return tr.dataset.status === 'alive' ? tr.innerText : null"), 10,
        "the new heartbeat on the page")
    fleet.timings["page_update_s"] = time.monotonic() - t_send
    assert "12.5" in text
    assert browser.js(f"return document.querySelector(`#rows tr[data-node='{c}']`)"
                      ".cells[5].innerText") == "3"  # frames failed closed
    browser.wait_for(lambda: statuses()[c] == "stale", STALE_S + 5, "node 3 stale again")


def test_a_restarted_aggregator_shows_the_same_page(fleet, artifacts) -> None:
    def stable(doc: dict[str, Any]) -> dict[str, Any]:
        h = doc["header"]
        rows = {r["node_id"]: (r["model_version"], r["epsilon"], r["role"], r["last_update"])
                for r in doc["rows"]}
        return {"rows": rows, "latest": h["latest_version"], "chart": h["chart"],
                "rollout": h["rollout"], "dlq": h["dlq_by_reason"],
                "updates": h["updates_by_outcome"], "rejected": h["rejected_controls"],
                "stale": {r["node_id"]: r["status"] for r in doc["rows"]
                          if r["node_id"] != fleet.nodes[0]}}

    before = stable(fleet.json())
    assert before["stale"] == {fleet.nodes[1]: "stale", fleet.nodes[2]: "stale"}
    old = fleet.workers["aggregator"]
    old.stop()
    new = FaustWorker("agents.aggregator", web=True, env=old.env)
    fleet.workers["aggregator"] = new
    t0 = time.monotonic()
    new.start(wait_ready=True, timeout=120)
    doc = fleet.wait(lambda: (d := fleet.json())["header"]["latest_version"] is not None and d,
                     60, "the restarted aggregator's page")
    fleet.timings["restart_page_s"] = time.monotonic() - t0
    assert stable(doc) == before
    # node 1's worker kept beating while the aggregator was down: once the telemetry agent has
    # read those heartbeats, its row is alive again
    fleet.wait(lambda: fleet.json()["rows"][0]["status"] == "alive", 20, "node 1 alive again")
    (artifacts / "fleet-timings.json").write_text(
        json.dumps({k: round(v, 2) for k, v in fleet.timings.items()}, indent=2))
