"""compose/docker-compose.yml against the Compose Specification's JSON Schema.

No Docker engine runs on dev/CI machines, so the file is validated structurally: the official
schema (vendored by check-jsonschema), the broker's size limits against agents.settings, and every
build reference pointing at a file that exists.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from agents.settings import MAX_MESSAGE_BYTES

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose" / "docker-compose.yml"


def _schema() -> dict:
    # locate the vendored file without importing check_jsonschema (its CLI module needs a newer
    # click than faust allows; only the schema file is used here)
    spec = importlib.util.find_spec("check_jsonschema")
    assert spec and spec.submodule_search_locations, "pip install check-jsonschema"
    root = Path(next(iter(spec.submodule_search_locations)))
    return json.loads((root / "builtin_schemas" / "vendor" / "compose-spec.json").read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_file_matches_the_compose_specification(compose: dict) -> None:
    schema = _schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    assert "2020-12" in schema["$schema"]
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_the_validator_rejects_a_broken_file(compose: dict) -> None:
    broken = json.loads(json.dumps(compose))
    broken["services"]["kafka"]["ports"] = "9092"  # must be a list
    broken["services"]["kafka"]["healthcheck"]["retries"] = "many"  # must be a number
    broken["volumez"] = {}  # unknown top-level key
    schema = _schema()
    errors = list(jsonschema.validators.validator_for(schema)(schema).iter_errors(broken))
    assert len(errors) >= 3, [e.message for e in errors]


def test_broker_limits_match_the_settings(compose: dict) -> None:
    env = compose["services"]["kafka"]["environment"]
    assert int(env["KAFKA_MESSAGE_MAX_BYTES"]) == MAX_MESSAGE_BYTES
    assert int(env["KAFKA_REPLICA_FETCH_MAX_BYTES"]) == MAX_MESSAGE_BYTES
    for name, svc in compose["services"].items():
        if name != "kafka" and "build" in svc:  # the EdgeVeil workers (not Prometheus, Grafana)
            assert int(svc["environment"]["EDGEVEIL_MAX_MESSAGE_BYTES"]) == MAX_MESSAGE_BYTES


def test_build_context_and_dockerfile_exist(compose: dict) -> None:
    for svc in compose["services"].values():
        if "build" in svc:
            ctx = (COMPOSE.parent / svc["build"]["context"]).resolve()
            assert ctx == ROOT
            assert (ctx / svc["build"]["dockerfile"]).is_file()
    dockerfile = (ROOT / "compose" / "Dockerfile").read_text()
    for path in ("pyproject.toml", "constraints.txt", "schemas", "pipeline", "agents"):
        assert path in dockerfile


def test_the_stack_is_secured_like_the_harness(compose: dict) -> None:
    """The compose broker requires client certificates on every listener and runs the same
    authorizer settings as agents.broker.security; every worker connects over TLS."""
    from agents.broker import AUTHORIZER, PRINCIPAL_MAPPING_RULES

    env = compose["services"]["kafka"]["environment"]
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(protocols.values()) == {"SSL"}
    assert env["KAFKA_SSL_CLIENT_AUTH"] == "required"
    assert env["KAFKA_AUTHORIZER_CLASS_NAME"] == AUTHORIZER
    assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert env["KAFKA_SUPER_USERS"] == "User:admin"
    # compose turns $$ into $
    assert env["KAFKA_SSL_PRINCIPAL_MAPPING_RULES"].replace("$$", "$") == PRINCIPAL_MAPPING_RULES
    workers = {n: svc for n, svc in compose["services"].items() if "build" in svc}
    assert {"aggregator", "acls", "edge-1"} <= set(workers)
    for name, svc in workers.items():  # every EdgeVeil container talks TLS to the broker
        assert svc["environment"]["EDGEVEIL_SECURITY_PROTOCOL"] == "SSL", name


def test_every_edgeveil_command_in_the_stack_is_one_the_cli_accepts(compose: dict,
                                                                   tmp_path: Path) -> None:
    """Each service's `edgeveil …` command parses with the real CLI (an unknown option or
    sub-command exits 2), and the camera node named in the environment is one that
    `federation init --nodes 21` makes and that its edge worker hosts."""
    import shlex

    from typer.testing import CliRunner

    from agents.cli import app

    commands = []
    for name, svc in compose["services"].items():
        cmd = svc.get("command")
        if isinstance(cmd, list) and cmd[:1] == ["edgeveil"]:
            commands.append((name, cmd[1:]))
        elif isinstance(cmd, list) and cmd[:2] == ["sh", "-c"]:
            for part in cmd[2].replace("(", " ").replace(")", " ").split("&&"):
                words = shlex.split(part.replace("||", " "))
                if "edgeveil" in words:
                    commands.append((name, words[words.index("edgeveil") + 1:]))
    assert len(commands) >= 5, commands
    for name, args in commands:
        res = CliRunner().invoke(app, [*args, "--help"])
        assert res.exit_code == 0, (name, args, res.output[-400:])
    cam = compose["services"]["edge-3"]["environment"]["EDGEVEIL_CAMERA_NODE"]
    res = CliRunner().invoke(app, ["federation", "init", str(tmp_path / "run"), "--nodes", "21"])
    assert res.exit_code == 0, res.output
    nodes = json.loads((tmp_path / "run" / "federation.json").read_text())["nodes"]
    assert cam in nodes[14:21]  # edge-3 hosts nodes 15-21
