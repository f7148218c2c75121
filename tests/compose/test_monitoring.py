"""compose/'s Prometheus and Grafana: their files checked against each other and the code.

No Docker engine (nor Prometheus or Grafana) runs on dev/CI machines, so, as for the compose
file, the configs are validated structurally: a JSON Schema of the parts of Prometheus'
configuration the stack uses, the scrape target against the aggregator service, the Grafana
datasource against the Prometheus service, the dashboard provider against its mount, and every
metric a dashboard panel queries against what the aggregator exposes (``agents.metrics``;
tests/agents/test_fleet_kafka.py checks a real /metrics has each of them).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from agents.metrics import METRIC_NAMES

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "compose"

_DURATION = r"^[0-9]+(ms|s|m|h|d|w|y)$"
PROMETHEUS_SCHEMA = {
    "type": "object",
    "required": ["scrape_configs"],
    "additionalProperties": False,
    "properties": {
        "global": {"type": "object", "additionalProperties": False, "properties": {
            "scrape_interval": {"type": "string", "pattern": _DURATION},
            "scrape_timeout": {"type": "string", "pattern": _DURATION},
            "evaluation_interval": {"type": "string", "pattern": _DURATION}}},
        "scrape_configs": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["job_name", "static_configs"],
            "additionalProperties": False, "properties": {
                "job_name": {"type": "string", "minLength": 1},
                "metrics_path": {"type": "string", "pattern": "^/"},
                "scrape_interval": {"type": "string", "pattern": _DURATION},
                "static_configs": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["targets"], "additionalProperties": False,
                    "properties": {"targets": {"type": "array", "minItems": 1, "items": {
                        "type": "string", "pattern": r"^[A-Za-z0-9_.-]+:[0-9]{1,5}$"}},
                        "labels": {"type": "object"}}}}}}},
    },
}


def _yaml(path: str) -> dict:
    return yaml.safe_load((COMPOSE_DIR / path).read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return _yaml("docker-compose.yml")


def _mounts(svc: dict) -> dict[str, Path]:
    """container path -> host path of a service's bind mounts (relative to compose/)."""
    out = {}
    for v in svc.get("volumes", []):
        host, container = v.split(":")[:2]
        if host.startswith("."):
            out[container] = (COMPOSE_DIR / host).resolve()
    return out


def test_prometheus_scrapes_the_aggregators_metrics(compose: dict) -> None:
    prom = compose["services"]["prometheus"]
    config_path = _mounts(prom)["/etc/prometheus/prometheus.yml"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    config = yaml.safe_load(config_path.read_text())
    jsonschema.validate(config, PROMETHEUS_SCHEMA)
    (job,) = config["scrape_configs"]
    env = compose["services"]["aggregator"]["environment"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"aggregator:{env['EDGEVEIL_WEB_PORT']}"]
    assert env["EDGEVEIL_WEB_BIND"] == "0.0.0.0"  # reachable from the prometheus container
    assert f"127.0.0.1:{env['EDGEVEIL_WEB_PORT']}:{env['EDGEVEIL_WEB_PORT']}" in \
        compose["services"]["aggregator"]["ports"]


def test_the_prometheus_schema_rejects_a_broken_config() -> None:
    config = _yaml("prometheus/prometheus.yml")
    broken = json.loads(json.dumps(config))
    broken["global"]["scrape_interval"] = "5 seconds"
    broken["scrape_configs"][0]["static_configs"][0]["targets"] = ["aggregator"]  # no port
    broken["scrape_config"] = []  # misspelt key
    errors = list(jsonschema.Draft202012Validator(PROMETHEUS_SCHEMA).iter_errors(broken))
    assert len(errors) >= 3, [e.message for e in errors]


def test_grafana_is_provisioned_with_the_datasource_and_dashboard(compose: dict) -> None:
    graf = compose["services"]["grafana"]
    mounts = _mounts(graf)
    prov = mounts["/etc/grafana/provisioning"]
    (ds,) = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    assert "127.0.0.1:9090:9090" in compose["services"]["prometheus"]["ports"]
    (provider,) = yaml.safe_load((prov / "dashboards" / "edgeveil.yml").read_text())["providers"]
    dash_dir = mounts[provider["options"]["path"]]
    dashboards = sorted(dash_dir.glob("*.json"))
    assert [p.name for p in dashboards] == ["edgeveil.json"]
    assert graf["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert graf["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    home = graf["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/edgeveil.json"
    dash = json.loads(dashboards[0].read_text())
    assert dashboard_problems(dash, datasource_uid=ds["uid"]) == []


_METRIC = re.compile(r"\bedgeveil_[a-z_]+\b")


def dashboard_problems(dash: dict, *, datasource_uid: str) -> list[str]:
    """What is wrong with a Grafana dashboard: layout, datasources, unknown metrics."""
    problems = []
    for key in ("uid", "title", "panels", "schemaVersion"):
        if key not in dash:
            problems.append(f"missing {key}")
    ids = [p.get("id") for p in dash.get("panels", [])]
    if len(ids) != len(set(ids)):
        problems.append("duplicate panel ids")
    known = set(METRIC_NAMES)
    for p in dash.get("panels", []):
        where = f"panel {p.get('id')} {p.get('title')!r}"
        if not {"x", "y", "w", "h"} <= set(p.get("gridPos", {})):
            problems.append(f"{where}: gridPos")
        if not p.get("targets"):
            problems.append(f"{where}: no query")
        for t in p.get("targets", []):
            if t.get("datasource", p.get("datasource", {})).get("uid") != datasource_uid:
                problems.append(f"{where}: datasource is not {datasource_uid}")
            for name in _METRIC.findall(t.get("expr", "")):
                base = re.sub(r"_(bucket|sum|count)$", "", name)
                if name not in known and base not in known:
                    problems.append(f"{where}: unknown metric {name}")
    return problems


def test_the_dashboard_check_catches_mistakes() -> None:
    dash = json.loads((COMPOSE_DIR / "grafana" / "dashboards" / "edgeveil.json").read_text())
    dash["panels"][0]["targets"][0]["expr"] = "sum(edgeveil_node_upp)"
    dash["panels"][1]["id"] = dash["panels"][0]["id"]
    dash["panels"][2]["targets"][0]["datasource"] = {"uid": "other"}
    problems = dashboard_problems(dash, datasource_uid="edgeveil-prometheus")
    assert any("edgeveil_node_upp" in p for p in problems)
    assert "duplicate panel ids" in problems
    assert any("datasource" in p for p in problems)
