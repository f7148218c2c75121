"""The fleet page of the aggregator worker: ``/fleet``, ``/fleet.json`` and ``/metrics``.

Served by faust's own web server (``app.page``) from changelog-backed tables, so a restarted
worker shows the same page:

=====================  ============================================================  ==========
table                  holds                                                        fed by
=====================  ============================================================  ==========
``fleet-nodes``        node -> its newest heartbeat (fps, fail-closed, ε, version…)  ``edgeveil.telemetry``
``fleet-updates``      node -> its last update (round, bytes, admitted/duplicate/     the aggregator's
                       rejected + reason)                                            admission
``fleet-versions``     version -> metrics, participants, round latency, bytes        each publication
``fleet-counters``     counter family -> label -> count (updates, DLQ, telemetry,    all of the above
                       models, control messages)
``fleet-rollout``      task -> the rollout command in force; rejected commands       ``edgeveil.control``
=====================  ============================================================  ==========

Writes the aggregator makes on its hot path (update outcomes, counters) are buffered in memory
and flushed every :data:`FLUSH_S` seconds (:meth:`Fleet.flush`: at most one write per node and
one per counter family), so admission costs no extra changelog write per update; pages and
metrics read the tables plus what is not flushed yet.

The page itself is one static file (``agents/web/fleet.html``: inline CSS, a small script that
polls ``/fleet.json`` every second, an SVG chart; nothing from the internet).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import faust

from agents import federation
from agents.settings import Settings
from agents.streams import raw_topic
from agents.topics import CONTROL, DLQ, TELEMETRY
from pipeline.codec.exceptions import CodecError
from pipeline.server.fleet import FleetView, fleet_view
from pipeline.serving.rollout import check_sequence, decode_control
from schemas.control import RolloutControl
from schemas.messages import DlqEntry, MessageError, Telemetry

log = logging.getLogger(__name__)

PAGE = Path(__file__).resolve().parent / "web" / "fleet.html"
#: how many recent DLQ entries and rejected control messages the page lists
RECENT = 10
#: seconds between writes of the buffered update outcomes and counters to their tables
FLUSH_S = 2.0


class Fleet:
    """Tables, agents and pages of the fleet view on one faust app (the aggregator's).

    Parameters
    ----------
    app
        The aggregator's faust app.
    settings
        For the stale time; the web port and bind come from the app's configuration.
    round_state
        Returns the open round: ``version``, ``buffered``, ``quorum``, ``opened_at``
        (``{}`` before the aggregator has loaded its state).
    """

    def __init__(self, app: faust.App, *, settings: Settings,
                 round_state: Callable[[], dict[str, Any]]) -> None:
        self.app = app
        self.settings = settings
        self.round_state = round_state
        self.cfg: federation.FederationPlan | None = None
        self.public_key: bytes | None = None
        # buffered hot-path writes (flushed by the timer)
        self._counts: dict[str, Counter[str]] = {}
        self._updates: dict[str, dict[str, Any]] = {}
        self._recent_dlq: deque[dict[str, Any]] = deque(maxlen=RECENT)

        def raw(spec: Any) -> Any:
            return raw_topic(app, spec)

        def table(name: str) -> Any:
            return app.Table(name, default=None, key_type=str, use_partitioner=True, partitions=1)

        self.nodes = table("fleet-nodes")
        self.updates = table("fleet-updates")
        self.versions = table("fleet-versions")
        self.counters = table("fleet-counters")
        self.control = table("fleet-rollout")
        self._tables = (self.nodes, self.updates, self.versions, self.counters, self.control)

        app.agent(raw(TELEMETRY), name="fleet-telemetry")(self._on_telemetry)
        app.agent(raw(DLQ), name="fleet-dlq")(self._on_dlq)
        app.agent(raw(CONTROL), name="fleet-control")(self._on_control)
        app.timer(interval=FLUSH_S, name="fleet-flush")(self._flush_timer)
        app.on_worker_init.connect(self._on_worker_init)  # type: ignore[arg-type]
        app.on_before_shutdown.connect(self._on_shutdown)  # type: ignore[arg-type]

        # faust calls a page handler as handler(view, request): plain functions, not methods
        async def fleet_page(view: Any, request: Any) -> Any:
            return self._page(view)

        async def fleet_json(view: Any, request: Any) -> Any:
            return view.json(self.view().to_json(), headers={"Cache-Control": "no-store"})

        async def metrics(view: Any, request: Any) -> Any:
            return self._metrics(view)

        app.page("/fleet", name="fleet")(fleet_page)
        app.page("/fleet.json", name="fleet-json")(fleet_json)
        app.page("/metrics", name="metrics")(metrics)

    # ------------------------------------------------------------------ runtime
    def _on_worker_init(self, app: Any, **kwargs: Any) -> None:
        """Built when the worker starts: the federation config and the model authority's key."""
        root = federation.run_dir()
        self.cfg = federation.load_config(root)
        self.public_key = federation.aggregator_public_key(root)
        log.info("fleet page on http://%s:%d/fleet (also /fleet.json, /metrics)",
                 self.app.conf.web_bind, self.app.conf.web_port)

    def _config(self) -> federation.FederationPlan:
        if self.cfg is None:  # used outside a worker (tests): build on first use
            self._on_worker_init(self.app)
        assert self.cfg is not None
        return self.cfg

    async def _metadata(self) -> None:
        """The producer must know the changelogs' partitions before a use_partitioner write."""
        producer = self.app.producer._ensure_producer()  # type: ignore[attr-defined]
        for t in self._tables:
            await producer.partitions_for(t.changelog_topic.get_topic_name())

    def _ready(self) -> bool:
        recovery = self.app.tables.recovery  # type: ignore[attr-defined]
        return bool(recovery.completed.is_set() and not self.app.in_recovery
                    and self.app.consumer.assignment())

    # ------------------------------------------------------------------ recording
    def count(self, family: str, label: str, n: int = 1) -> None:
        """Add ``n`` to a counter (flushed to ``fleet-counters`` within :data:`FLUSH_S`)."""
        self._counts.setdefault(family, Counter())[label] += n

    def record_update(self, node_id: str, *, round_: int | None, base_version: int | None,
                      size: int, outcome: str, reason: str = "") -> None:
        """One update on ``edgeveil.updates`` and what the aggregator did with it."""
        self.count("updates", f"{outcome}:{reason}" if reason else outcome)
        self._updates[node_id] = {"round": round_, "base_version": base_version, "bytes": size,
                                  "status": outcome, "reason": reason, "ts": time.time()}

    async def record_version(self, version: int, *, metrics: dict[str, float],
                             participants: int, created_at: float,
                             round_seconds: float | None, update_bytes_mean: float | None) -> None:
        """One published global version (written at once: one write per round)."""
        await self._metadata()
        self.versions[str(version)] = {
            "metrics": dict(metrics), "participants": participants, "created_at": created_at,
            "round_seconds": round_seconds, "update_bytes_mean": update_bytes_mean}
        self.count("models", "published")

    def flush(self) -> None:
        """Write the buffered update outcomes and counter increments to their tables (call
        after :meth:`_metadata`, with no await in between)."""
        for node, rec in self._updates.items():
            self.updates[node] = rec
        self._updates = {}
        for family, delta in self._counts.items():
            cur = dict(self.counters.get(family) or {})
            for label, n in delta.items():
                cur[label] = cur.get(label, 0) + n
            self.counters[family] = cur
        self._counts = {}
        if self._recent_dlq:
            recent = list(self.control.get("dlq-recent") or []) + list(self._recent_dlq)
            self.control["dlq-recent"] = recent[-RECENT:]
            self._recent_dlq.clear()

    async def _on_shutdown(self, app: Any, **kwargs: Any) -> None:
        """SIGTERM: write what is buffered before faust flushes the producer."""
        if self._ready() and (self._updates or self._counts or self._recent_dlq):
            await self._metadata()
            self.flush()

    async def _flush_timer(self) -> None:
        if not self._ready() or not (self._updates or self._counts or self._recent_dlq):
            return
        await self._metadata()
        self.flush()

    # ------------------------------------------------------------------ agents
    async def _on_telemetry(self, stream: Any) -> None:
        """Keep each node's newest heartbeat."""
        cfg = self._config()
        known = set(cfg.nodes)
        async for event in stream.events():
            try:
                t = Telemetry.decode(event.message.value or b"")
            except MessageError as err:
                self.count("telemetry", f"invalid:{err.reason}")
                continue
            if t.node_id not in known:
                self.count("telemetry", "unknown_node")
                continue
            self.count("telemetry", "ok")
            old = self.nodes.get(t.node_id)
            if old is not None and float(old.get("ts", 0.0)) > t.ts:
                continue  # an older heartbeat arriving late
            await self._metadata()
            self.nodes[t.node_id] = asdict(t)

    async def _on_dlq(self, stream: Any) -> None:
        """Count every DLQ entry by agent and reason; keep the last few for the page."""
        async for event in stream.events():
            msg = event.message
            try:
                e = DlqEntry.from_headers(msg.headers or [])
            except MessageError:
                self.count("dlq", "unknown:bad_dlq_headers")
                continue
            self.count("dlq", f"{e.agent}:{e.reason}")
            key = msg.key.decode(errors="replace") if msg.key else ""
            self._recent_dlq.append({"agent": e.agent, "reason": e.reason, "key": key[:80],
                                     "detail": e.detail[:200], "source_topic": e.source_topic,
                                     "offset": e.offset, "ts": e.ts})

    async def _on_control(self, stream: Any) -> None:
        """Follow the rollout command in force; record (never apply) what fails verification."""
        cfg = self._config()
        async for event in stream.events():
            msg = event.message
            current = self.current_control()
            try:
                assert self.public_key is not None
                control = decode_control(msg.value or b"", public_key=self.public_key)
                check_sequence(current, control, task=cfg.task)
            except CodecError as err:
                self.count("control", f"rejected:{err.reason}")
                rejected = list(self.control.get("rejected") or [])
                rejected.append({"reason": err.reason, "detail": err.detail[:200],
                                 "offset": msg.offset, "ts": time.time()})
                await self._metadata()
                self.control["rejected"] = rejected[-RECENT:]
                log.warning("control message at %s@%d rejected: %s", msg.topic, msg.offset, err)
                continue
            self.count("control", "applied")
            await self._metadata()
            self.control[cfg.task] = json.loads(control.encode())
            log.info("rollout command %d in force: %s v%s (stable v%s, canary %s)", control.seq,
                     control.action, control.canary_version, control.stable_version,
                     control.canary_nodes)

    def current_control(self) -> RolloutControl | None:
        doc = self.control.get(self._config().task)
        if not doc:
            return None
        return RolloutControl.decode(json.dumps(doc))

    # ------------------------------------------------------------------ views
    def counter_snapshot(self) -> dict[str, dict[str, float]]:
        """Counters as flushed plus the increments not flushed yet."""
        out: dict[str, dict[str, float]] = {}
        for family, values in list(self.counters.items()):
            out[family] = dict(values or {})
        for family, delta in self._counts.items():
            cur = out.setdefault(family, {})
            for label, n in delta.items():
                cur[label] = cur.get(label, 0) + n
        return out

    def version_table(self) -> dict[int, dict[str, Any]]:
        return {int(k): dict(v) for k, v in list(self.versions.items()) if v is not None}

    def view(self, now: float | None = None) -> FleetView:
        """The fleet view from the tables (and the buffered writes)."""
        cfg = self._config()
        counters = self.counter_snapshot()
        updates = {k: dict(v) for k, v in list(self.updates.items()) if v is not None}
        updates.update(self._updates)
        view = fleet_view(
            nodes=cfg.nodes, heartbeats={k: v for k, v in list(self.nodes.items()) if v},
            updates=updates, versions=self.version_table(), control=self.current_control(),
            round_state=self.round_state(), counters=counters, budget=cfg.epsilon,
            stale_after_s=self.settings.fleet_stale_s, now=time.time() if now is None else now,
            task=cfg.task, rounds=cfg.rounds,
            rejected_controls=list(self.control.get("rejected") or []))
        recent = list(self.control.get("dlq-recent") or []) + list(self._recent_dlq)
        view.header["dlq_recent"] = recent[-RECENT:][::-1]
        return view

    def _page(self, view: Any) -> Any:
        data = json.dumps(self.view().to_json()).replace("</", "<\\/")
        html = PAGE.read_text(encoding="utf-8").replace("__INITIAL_STATE__", data)
        return view.html(html, headers={"Cache-Control": "no-store"})

    def _metrics(self, view: Any) -> Any:
        from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

        from agents.metrics import fleet_registry

        body = generate_latest(fleet_registry(self))
        return view.bytes(body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})

    # ------------------------------------------------------------------ lag
    def consumer_lag(self) -> dict[tuple[str, int], int]:
        """(topic, partition) -> records not yet committed by this worker (from the consumer's
        last fetch: the partition's end offset minus the committed offset)."""
        monitor = self.app.monitor
        out: dict[tuple[str, int], int] = {}
        for tp, end in list((monitor.tp_end_offsets or {}).items()):
            committed = (monitor.tp_committed_offsets or {}).get(tp)
            out[(tp.topic, tp.partition)] = max(0, int(end) - int(committed or 0))
        return out
