"""`edgeveil aggregator` runs faust's web server and says where the fleet page is; edges do not."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from agents import federation
from agents.cli import app


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return federation.init_run_dir(tmp_path / "run", federation.FederationPlan(nodes=["a", "b"]))


def _exec_args(monkeypatch, run_dir: Path, *args: str, env: dict | None = None) -> tuple[str, list]:
    import agents.topics

    calls: list[list[str]] = []
    monkeypatch.setattr(agents.topics, "ensure_topics", lambda *a, **k: [])
    monkeypatch.setattr("os.execv", lambda exe, argv: calls.append(argv))
    res = CliRunner().invoke(app, [*args, "--run-dir", str(run_dir)], env=env or {})
    assert res.exit_code == 0, res.output
    (argv,) = calls
    return res.output, argv


def test_aggregator_serves_the_fleet_page(monkeypatch, run_dir: Path) -> None:
    out, argv = _exec_args(monkeypatch, run_dir, "aggregator")
    assert "fleet page: http://127.0.0.1:6066/fleet" in out
    assert argv[argv.index("-A") + 1] == "agents.aggregator"
    assert "--without-web" not in argv
    out, _ = _exec_args(monkeypatch, run_dir, "aggregator",
                        env={"EDGEVEIL_WEB_PORT": "7070", "EDGEVEIL_WEB_BIND": "0.0.0.0"})
    assert "fleet page: http://0.0.0.0:7070/fleet" in out


def test_edges_run_without_a_web_server(monkeypatch, run_dir: Path) -> None:
    out, argv = _exec_args(monkeypatch, run_dir, "edge")
    assert "--without-web" in argv and "fleet page" not in out


def test_model_commands_refuse_a_version_never_published(run_dir: Path) -> None:
    res = CliRunner().invoke(app, ["model", "rollback", "7", "--run-dir", str(run_dir)])
    assert res.exit_code == 2
    assert "v7 was never published (published: none yet)" in res.output
