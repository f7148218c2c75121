"""The fleet view (pipeline.server.fleet): statuses, rollout roles, the header."""

from __future__ import annotations

import pytest

from pipeline.server.fleet import fleet_view
from schemas.control import RolloutControl

NOW = 1000.0


def _hb(ts: float, version: int, eps: float = 1.0, **kw) -> dict:
    return {"ts": ts, "model_version": version, "epsilon": eps, "fps": 5.0, "frames_in": 50,
            "fail_closed": 0, "cpu_percent": 10.0, "rss_bytes": 2**20, **kw}


def _view(**kw):
    args = dict(nodes=["a", "b", "c", "d"], heartbeats={}, updates={}, versions={},
                control=None, round_state={}, counters={}, budget=2.0, stale_after_s=10.0,
                now=NOW)
    return fleet_view(**{**args, **kw})


def test_status_follows_the_heartbeat_timestamp() -> None:
    view = _view(heartbeats={"a": _hb(NOW - 2, 3), "b": _hb(NOW - 10, 3), "c": _hb(NOW - 10.5, 3),
                             "d": _hb(NOW + 5, 3)})  # d's clock runs ahead: age 0, not negative
    assert [(r.node_id, r.status, r.heartbeat_age_s) for r in view.rows] == [
        ("a", "alive", 2.0), ("b", "alive", 10.0), ("c", "stale", 10.5), ("d", "alive", 0.0)]
    assert (view.header["alive"], view.header["stale"], view.header["never"]) == (3, 1, 0)
    assert _view().rows[0].status == "never"
    with pytest.raises(ValueError):
        _view(stale_after_s=0)


def test_epsilon_fraction_versions_and_pending() -> None:
    versions = {v: {"metrics": {"train_loss": 1.0 / (v + 1)}} for v in range(4)}
    view = _view(heartbeats={"a": _hb(NOW, 3, eps=1.5), "b": _hb(NOW, 2), "c": _hb(NOW, -1)},
                 versions=versions)
    rows = {r.node_id: r for r in view.rows}
    assert rows["a"].epsilon_fraction == 0.75 and rows["a"].budget == 2.0
    assert rows["c"].model_version is None  # -1: serves nothing yet
    # without a command every node should serve the newest published version (3)
    assert (rows["a"].pending, rows["b"].pending, rows["c"].pending) == (False, True, True)
    assert rows["d"].pending is False  # never seen: not "pending"
    assert {r.role for r in view.rows} == {"latest"}
    assert view.header["served_by_version"] == {"2": 1, "3": 1}
    assert view.header["chart_metric"] == "train_loss"
    assert [p["version"] for p in view.header["chart"]] == [0, 1, 2, 3]


def test_roles_under_a_canary_command() -> None:
    c = RolloutControl(task="t", seq=2, action="promote", stable_version=1, canary_version=2,
                       canary_nodes=["b"], canary_percent=25.0)
    view = _view(heartbeats={n: _hb(NOW, 1) for n in "abcd"}, control=c,
                 versions={1: {}, 2: {}, 3: {}})
    rows = {r.node_id: r for r in view.rows}
    assert (rows["b"].role, rows["b"].wanted_version, rows["b"].pending) == ("canary", 2, True)
    assert (rows["a"].role, rows["a"].wanted_version, rows["a"].pending) == ("stable", 1, False)
    assert view.header["rollout"]["canary_nodes"] == ["b"]


def test_header_round_quorum_dlq_and_last_update() -> None:
    view = _view(round_state={"version": 4, "buffered": 3, "quorum": 4, "opened_at": NOW - 7.25},
                 counters={"dlq": {"aggregator:bad_signature": 2, "edge:stale_control": 1},
                           "updates": {"admitted": 9, "rejected:bad_signature": 2}},
                 updates={"a": {"round": 5, "bytes": 900, "status": "rejected",
                                "reason": "bad_signature"}}, rounds=10, task="t")
    h = view.header
    assert (h["round"], h["rounds"], h["quorum_progress"], h["round_open_s"]) == (4, 10, 0.75, 7.2)
    assert h["dlq_total"] == 3
    assert view.rows[0].last_update["reason"] == "bad_signature"
    assert view.rows[1].last_update is None
    doc = view.to_json()
    assert doc["rows"][0]["node_id"] == "a" and doc["header"]["task"] == "t"
