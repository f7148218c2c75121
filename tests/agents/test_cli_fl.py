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
