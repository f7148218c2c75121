"""`edgeveil federation init` options and how the edges read them (no broker: the edge's
pipeline objects only; the Kafka round trip is tests/agents/test_federation_kafka.py)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from agents import federation
from agents.cli import app


def test_init_writes_training_and_strategy_options_the_edges_use(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["federation", "init", str(run), "--nodes", "2",
                                   "--strategy", "fedadam", "--strategy-options",
                                   '{"server_lr": 0.03}', "--local-optimizer", "sgd",
                                   "--lr", "0.1"])
    assert res.exit_code == 0, res.output
    cfg = federation.load_config(run)
    assert (cfg.strategy, cfg.strategy_options) == ("fedadam", {"server_lr": 0.03})
    assert (cfg.local_optimizer, cfg.lr) == ("sgd", 0.1)
    monkeypatch.setenv("EDGEVEIL_RUN_DIR", str(run))
    from agents.edge import _Edge

    edge = _Edge()
    assert len(edge.nodes) == 2
    for node in edge.nodes.values():
        assert (node.config.optimizer, node.config.lr) == ("sgd", 0.1)
        assert node.config.local_steps == edge.task.train_config.local_steps  # rest: the task's


def test_init_without_training_options_keeps_the_tasks(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    run = tmp_path / "run"
    assert CliRunner().invoke(app, ["federation", "init", str(run), "--nodes", "1"]).exit_code == 0
    monkeypatch.setenv("EDGEVEIL_RUN_DIR", str(run))
    from agents.edge import _Edge

    edge = _Edge()
    (node,) = edge.nodes.values()
    assert node.config == edge.task.train_config


@pytest.mark.parametrize("args", [["--local-optimizer", "rmsprop"], ["--lr", "-1"],
                                  ["--strategy-options", "{bad"],
                                  ["--strategy", "fedadam", "--strategy-options", '{"nope": 1}']])
def test_init_rejects_bad_options_before_writing(tmp_path, args):  # type: ignore[no-untyped-def]
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["federation", "init", str(run), "--nodes", "1", *args])
    assert res.exit_code == 2, res.output
    assert not (run / "federation.json").exists()


def test_load_config_rejects_a_bad_hand_edited_optimizer(tmp_path):  # type: ignore[no-untyped-def]
    run = federation.init_run_dir(tmp_path / "run", federation.FederationPlan(nodes=["a"]))
    data = json.loads((run / "federation.json").read_text())
    (run / "federation.json").write_text(json.dumps({**data, "local_optimizer": "lbfgs"}))
    with pytest.raises(ValueError, match="local_optimizer"):
        federation.load_config(run)


def test_kafka_edge_builds_the_nodes_simulate_builds(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    # one build path (pipeline.node.build): same recipe -> same sample rate and σ per node
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["federation", "init", str(run), "--nodes", "2", "--rounds", "1",
                                   "--epsilon", "2.0", "--local-optimizer", "sgd", "--lr", "0.1"])
    assert res.exit_code == 0, res.output
    monkeypatch.setenv("EDGEVEIL_RUN_DIR", str(run))
    from agents.edge import _Edge
    from pipeline.sim import simulate

    edge = _Edge()
    sim = simulate(federation.load_config(run), workers=1, eval_split="val")  # the same plan
    assert set(sim.noise_multipliers) == set(edge.nodes)
    for node_id, node in edge.nodes.items():
        assert node.noise_multiplier == sim.noise_multipliers[node_id]
        assert node.ledger.total_steps == 0  # built, not trained
    assert len({round(n.sample_rate, 12) for n in edge.nodes.values()}) == 1
