"""The fleet view: one row per node and a header, from the state the aggregator keeps.

Pure functions over plain dicts (what the aggregator's faust tables hold), so the same code
serves ``/fleet.json``, the fleet page, the Prometheus metrics and tests without a broker.

A node is ``alive`` while its last heartbeat is at most ``stale_after_s`` old, ``stale`` after
that, and ``never`` before its first heartbeat. The heartbeat's age is measured from the
timestamp the edge wrote into it (so a restarted aggregator replaying old heartbeats from its
changelog still shows them as old).

Examples
--------
>>> view = fleet_view(nodes=["a", "b"], heartbeats={"a": {"ts": 95.0, "epsilon": 0.5,
...                   "model_version": 3, "fps": 4.9, "fail_closed": 0}}, updates={},
...                   versions={3: {"metrics": {"train_loss": 0.2}}}, control=None,
...                   round_state={"version": 3, "buffered": 1, "quorum": 2},
...                   counters={}, budget=2.0, stale_after_s=10.0, now=100.0)
>>> [(r.node_id, r.status, r.model_version, r.epsilon_fraction) for r in view.rows]
[('a', 'alive', 3, 0.25), ('b', 'never', None, None)]
>>> view.header["quorum_progress"]
0.5
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from schemas.control import RolloutControl

__all__ = ["FleetRow", "FleetView", "fleet_view"]

#: the metric charted per version, in order of preference (the nodes' example-weighted reports)
CHART_METRICS = ("mae", "val_mae", "train_loss")


@dataclass(frozen=True)
class FleetRow:
    """One node as the fleet page shows it."""

    node_id: str
    status: str  # alive | stale | never
    heartbeat_age_s: float | None
    fps: float | None
    frames_in: int | None
    fail_closed: int | None
    epsilon: float | None
    budget: float
    epsilon_fraction: float | None
    model_version: int | None  # the version it serves (its last heartbeat)
    wanted_version: int | None  # what the rollout asks of it (None: the newest)
    role: str  # canary | stable | latest (no rollout command in force)
    pending: bool  # serves something else than it should
    cpu_percent: float | None
    rss_bytes: int | None
    last_update: dict[str, Any] | None  # round, base_version, bytes, status, reason, ts


@dataclass(frozen=True)
class FleetView:
    """The whole page: ``header`` (round, quorum, DLQ, rollout, chart) and ``rows``."""

    header: dict[str, Any]
    rows: list[FleetRow] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``/fleet.json``)."""
        return {"header": self.header, "rows": [asdict(r) for r in self.rows]}


def _num(d: Mapping[str, Any], key: str) -> Any:
    v = d.get(key)
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def chart_metric(versions: Mapping[int, Mapping[str, Any]]) -> str | None:
    """The metric the chart shows: the first of :data:`CHART_METRICS` any version reports."""
    for name in CHART_METRICS:
        if any(name in (v.get("metrics") or {}) for v in versions.values()):
            return name
    return None


def fleet_view(*, nodes: Sequence[str], heartbeats: Mapping[str, Mapping[str, Any]],
               updates: Mapping[str, Mapping[str, Any]],
               versions: Mapping[int, Mapping[str, Any]], control: RolloutControl | None,
               round_state: Mapping[str, Any], counters: Mapping[str, Mapping[str, float]],
               budget: float, stale_after_s: float, now: float, task: str = "",
               rounds: int | None = None,
               rejected_controls: Sequence[Mapping[str, Any]] = ()) -> FleetView:
    """Build the fleet view (see the module docstring for the status rules).

    ``versions`` maps a published version to ``{"metrics", "participants", "created_at",
    "round_seconds", "update_bytes_mean"}``; ``counters`` maps a counter family to
    ``{label: count}`` (``"dlq"`` by reason, ``"updates"`` by outcome, ...).
    """
    if stale_after_s <= 0:
        raise ValueError("stale_after_s must be > 0")
    latest = max(versions) if versions else None
    rows: list[FleetRow] = []
    for node in nodes:
        hb = heartbeats.get(node)
        if hb is None:
            status, age = "never", None
        else:
            age = max(0.0, now - float(hb.get("ts", 0.0)))
            status = "alive" if age <= stale_after_s else "stale"
        hb = hb or {}
        eps = _num(hb, "epsilon")
        served = _num(hb, "model_version")
        served = None if served is None or served < 0 else int(served)
        wanted = control.version_for(node) if control is not None else None
        if control is None:
            role = "latest"
        elif control.canary_version is not None and node in control.canary_nodes:
            role = "canary"
        else:
            role = "stable"
        target = wanted if wanted is not None else latest
        rows.append(FleetRow(
            node_id=node, status=status, heartbeat_age_s=None if age is None else round(age, 1),
            fps=_num(hb, "fps"), frames_in=_num(hb, "frames_in"),
            fail_closed=_num(hb, "fail_closed"), epsilon=eps, budget=budget,
            epsilon_fraction=None if eps is None or budget <= 0 else round(eps / budget, 4),
            model_version=served, wanted_version=wanted, role=role,
            pending=status == "alive" and target is not None and served != target,
            cpu_percent=_num(hb, "cpu_percent"), rss_bytes=_num(hb, "rss_bytes"),
            last_update=dict(updates[node]) if node in updates else None))
    metric = chart_metric(versions)
    chart = [{"version": v, "value": versions[v]["metrics"][metric]}
             for v in sorted(versions) if metric and metric in (versions[v].get("metrics") or {})]
    served_by: dict[str, int] = {}
    for r in rows:
        if r.status == "alive" and r.model_version is not None:
            served_by[str(r.model_version)] = served_by.get(str(r.model_version), 0) + 1
    dlq = counters.get("dlq", {})
    quorum = int(round_state.get("quorum") or 0)
    buffered = int(round_state.get("buffered") or 0)
    header = {
        "task": task,
        "now": now,
        "latest_version": latest,
        "round": round_state.get("version"),
        "rounds": rounds,
        "buffered": buffered,
        "quorum": quorum,
        "quorum_progress": round(buffered / quorum, 4) if quorum else None,
        "round_open_s": (round(now - float(round_state["opened_at"]), 1)
                         if round_state.get("opened_at") else None),
        "dlq_total": int(sum(dlq.values())),
        "dlq_by_reason": dict(sorted(dlq.items())),
        "updates_by_outcome": dict(sorted(counters.get("updates", {}).items())),
        "nodes": len(rows),
        "alive": sum(r.status == "alive" for r in rows),
        "stale": sum(r.status == "stale" for r in rows),
        "never": sum(r.status == "never" for r in rows),
        "served_by_version": dict(sorted(served_by.items(), key=lambda kv: int(kv[0]))),
        "stale_after_s": stale_after_s,
        "budget": budget,
        "chart_metric": metric,
        "chart": chart,
        "rollout": None if control is None else {
            "seq": control.seq, "action": control.action, "stable_version": control.stable_version,
            "canary_version": control.canary_version, "canary_nodes": list(control.canary_nodes),
            "canary_percent": control.canary_percent, "issued_at": control.issued_at,
            "issuer": control.issuer},
        "rejected_controls": [dict(r) for r in rejected_controls],
    }
    return FleetView(header=header, rows=rows)
