"""`edgeveil simulate` and `edgeveil privacy show` end to end (no broker)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from agents.cli import app


def test_simulate_then_privacy_show(tmp_path):  # type: ignore[no-untyped-def]
    runner = CliRunner()
    res = runner.invoke(app, ["simulate", "--task", "pedestrian-forecast", "--nodes", "2",
                              "--rounds", "2", "--epsilon", "4", "--accountant", "rdp",
                              "--local-steps", "3", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "pedestrian-forecast: mae" in res.output
    assert len((tmp_path / "rounds.jsonl").read_text().splitlines()) == 2
    shown = runner.invoke(app, ["privacy", "show", str(tmp_path), "--json"])
    assert shown.exit_code == 0, shown.output
    rows = json.loads(shown.output)
    assert len(rows) == 2 and all(0 < r["epsilon"] <= 4 for r in rows)
    table = runner.invoke(app, ["privacy", "show", str(tmp_path)])
    assert table.exit_code == 0 and "akl-" in table.output


def test_privacy_show_reports_corrupt_ledger(tmp_path):  # type: ignore[no-untyped-def]
    (tmp_path / "x.ledger.json").write_text("{not json")
    res = CliRunner().invoke(app, ["privacy", "show", str(tmp_path)])
    assert res.exit_code == 2
    assert "corrupt" in res.output or "corrupt" in (res.stderr if res.stderr_bytes else "")


def test_simulate_workers_option_keeps_the_result(tmp_path):  # type: ignore[no-untyped-def]
    runner = CliRunner()
    metrics = []
    for w in (1, 2):
        out = tmp_path / f"w{w}"
        res = runner.invoke(app, ["simulate", "--task", "pedestrian-forecast", "--nodes", "2",
                                  "--rounds", "1", "--epsilon", "4", "--accountant", "rdp",
                                  "--local-steps", "2", "--workers", str(w), "--out", str(out)])
        assert res.exit_code == 0, res.output
        metrics.append(json.loads((out / "rounds.jsonl").read_text().splitlines()[0])["metric"])
    assert metrics[0] == metrics[1]
    bad = runner.invoke(app, ["simulate", "--task", "pedestrian-forecast", "--workers", "0",
                              "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2  # typer rejects it before any work


def test_simulate_local_sgd_with_server_adam_options(tmp_path):  # type: ignore[no-untyped-def]
    runner = CliRunner()
    base = ["simulate", "--task", "pedestrian-forecast", "--nodes", "2", "--rounds", "2",
            "--epsilon", "4", "--accountant", "rdp", "--local-steps", "3", "--workers", "1"]
    runs = {}
    for decay in ("0.99", "0.5"):
        out = tmp_path / decay
        res = runner.invoke(app, [*base, "--strategy", "fedadam", "--local-optimizer", "sgd",
                                  "--lr", "0.1", "--strategy-options",
                                  f'{{"server_lr": 0.03, "lr_decay": {decay}}}',
                                  "--out", str(out)])
        assert res.exit_code == 0, res.output
        runs[decay] = [json.loads(x)["metric"]
                       for x in (out / "rounds.jsonl").read_text().splitlines()]
    # the options reach the server optimizer: the decay only changes the second step
    assert runs["0.99"][0] == runs["0.5"][0]
    assert runs["0.99"][1] != runs["0.5"][1]
    for bad_args in (["--strategy-options", "{server_lr"],
                     ["--strategy-options", "[1]"],
                     ["--local-optimizer", "rmsprop"]):
        bad = runner.invoke(app, [*base, *bad_args, "--out", str(tmp_path / "bad")])
        assert bad.exit_code == 2, bad.output
    unknown = runner.invoke(app, [*base, "--strategy", "fedadam", "--strategy-options",
                                  '{"nope": 1}', "--out", str(tmp_path / "bad2")])
    assert unknown.exit_code == 2 and "nope" in unknown.output  # refused before any work
