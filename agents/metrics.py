"""Prometheus metrics of the aggregator worker (``/metrics``), read from the fleet tables.

A custom prometheus-client collector turns the fleet state into metric families at scrape time,
so the counters survive a worker restart (they live in ``fleet-counters``) and always agree
with the fleet page. Counters count records of the topics they name:

====================================  =========================================================
metric                                counts / shows
====================================  =========================================================
``edgeveil_updates_total``            records of ``edgeveil.updates`` by ``outcome`` (admitted,
                                      duplicate, rejected) and rejection ``reason``
``edgeveil_dlq_messages_total``       records of ``edgeveil.dlq`` by ``agent`` and ``reason``
``edgeveil_telemetry_messages_total`` records of ``edgeveil.telemetry`` by ``status``
``edgeveil_models_published_total``   global versions published to ``edgeveil.models``
``edgeveil_control_messages_total``   records of ``edgeveil.control`` by ``outcome`` / reason
``edgeveil_round_latency_seconds``    histogram: first admitted update → version published
``edgeveil_round_*``                  the open round: version, buffered updates, quorum
``edgeveil_node_*``                   per node: up, heartbeat age, ε spent and budget, camera
                                      fps, frames in, frames failed closed, model version
                                      served, CPU, memory
``edgeveil_consumer_lag``             the aggregator's uncommitted records per topic partition
====================================  =========================================================
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from agents.fleet import Fleet

#: round latency buckets (seconds): rounds take from well under a second to a deadline of minutes
ROUND_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

#: every metric family /metrics exposes (the Grafana dashboard may query only these)
METRIC_NAMES = (
    "edgeveil_updates_total",
    "edgeveil_dlq_messages_total",
    "edgeveil_telemetry_messages_total",
    "edgeveil_models_published_total",
    "edgeveil_control_messages_total",
    "edgeveil_round_latency_seconds",
    "edgeveil_round_version",
    "edgeveil_round_buffered_updates",
    "edgeveil_round_quorum",
    "edgeveil_model_metric",
    "edgeveil_node_up",
    "edgeveil_node_heartbeat_age_seconds",
    "edgeveil_node_epsilon_spent",
    "edgeveil_node_epsilon_budget",
    "edgeveil_node_fps",
    "edgeveil_node_frames_total",
    "edgeveil_node_fail_closed_frames_total",
    "edgeveil_node_model_version",
    "edgeveil_node_cpu_percent",
    "edgeveil_node_memory_bytes",
    "edgeveil_consumer_lag",
)


def _split(label: str) -> tuple[str, str]:
    head, _, tail = label.partition(":")
    return head, tail


class FleetCollector(Collector):
    """Metric families from one :class:`agents.fleet.Fleet`, computed at each scrape."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def collect(self) -> Iterator[Metric]:
        fleet = self.fleet
        counters = fleet.counter_snapshot()
        view = fleet.view()
        task = view.header["task"]

        updates = CounterMetricFamily("edgeveil_updates", "Records of edgeveil.updates the "
                                      "aggregator handled, by outcome and rejection reason.",
                                      labels=["task", "outcome", "reason"])
        for label, n in sorted(counters.get("updates", {}).items()):
            outcome, reason = _split(label)
            updates.add_metric([task, outcome, reason], n)
        yield updates

        dlq = CounterMetricFamily("edgeveil_dlq_messages", "Records of edgeveil.dlq, by the "
                                  "agent that rejected the message and the reason.",
                                  labels=["agent", "reason"])
        for label, n in sorted(counters.get("dlq", {}).items()):
            dlq.add_metric(list(_split(label)), n)
        yield dlq

        tel = CounterMetricFamily("edgeveil_telemetry_messages", "Records of edgeveil.telemetry, "
                                  "by status (ok, unknown_node, invalid:<reason>).",
                                  labels=["status"])
        for label, n in sorted(counters.get("telemetry", {}).items()):
            tel.add_metric([label], n)
        yield tel

        models = CounterMetricFamily("edgeveil_models_published", "Global versions published "
                                     "to edgeveil.models (v0 included).", labels=["task"])
        models.add_metric([task], counters.get("models", {}).get("published", 0))
        yield models

        ctl = CounterMetricFamily("edgeveil_control_messages", "Records of edgeveil.control, "
                                  "applied or rejected (with the reason).",
                                  labels=["outcome", "reason"])
        for label, n in sorted(counters.get("control", {}).items()):
            ctl.add_metric(list(_split(label)), n)
        yield ctl

        versions = fleet.version_table()
        seconds = [float(v["round_seconds"]) for v in versions.values()
                   if isinstance(v.get("round_seconds"), (int, float))]
        buckets = [(str(b), float(sum(s <= b for s in seconds))) for b in ROUND_BUCKETS]
        buckets.append(("+Inf", float(len(seconds))))
        hist = HistogramMetricFamily("edgeveil_round_latency_seconds", "Seconds from a round's "
                                     "first admitted update to its version's publication.",
                                     labels=["task"])
        hist.add_metric([task], buckets, sum_value=sum(seconds))
        yield hist

        h = view.header
        for name, doc, value in (
                ("edgeveil_round_version", "The newest global version.", h["round"]),
                ("edgeveil_round_buffered_updates", "Updates admitted to the open round.",
                 h["buffered"]),
                ("edgeveil_round_quorum", "Updates that close a round.", h["quorum"])):
            g = GaugeMetricFamily(name, doc, labels=["task"])
            if value is not None:
                g.add_metric([task], float(value))
            yield g

        metric = GaugeMetricFamily("edgeveil_model_metric", "The newest version's metrics as "
                                   "reported by its participants (example-weighted).",
                                   labels=["task", "metric"])
        if versions:
            for k, v in sorted((versions[max(versions)].get("metrics") or {}).items()):
                metric.add_metric([task, k], float(v))
        yield metric

        yield from self._nodes(view.to_json()["rows"])

        lag = GaugeMetricFamily("edgeveil_consumer_lag", "Records on a topic partition the "
                                "aggregator has not committed yet (end offset - committed).",
                                labels=["topic", "partition"])
        for (topic, partition), n in sorted(fleet.consumer_lag().items()):
            lag.add_metric([topic, str(partition)], float(n))
        yield lag

    @staticmethod
    def _nodes(rows: list[dict[str, Any]]) -> Iterator[Metric]:
        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=["node"])

        up = gauge("edgeveil_node_up", "1 while the node's heartbeats are fresh, 0 when stale "
                   "or never seen.")
        age = gauge("edgeveil_node_heartbeat_age_seconds", "Age of the node's last heartbeat.")
        eps = gauge("edgeveil_node_epsilon_spent", "Privacy spent by the node (ε at the "
                    "federation's δ).")
        budget = gauge("edgeveil_node_epsilon_budget", "The node's ε budget.")
        fps = gauge("edgeveil_node_fps", "Camera frames per second the node processes.")
        frames = CounterMetricFamily("edgeveil_node_frames", "Camera frames the node read "
                                     "since its worker started.", labels=["node"])
        failed = CounterMetricFamily("edgeveil_node_fail_closed_frames", "Frames released "
                                     "fully hidden (or dropped) because detection failed.",
                                     labels=["node"])
        version = gauge("edgeveil_node_model_version", "The global model version the node serves.")
        cpu = gauge("edgeveil_node_cpu_percent", "CPU use of the node's worker process.")
        mem = gauge("edgeveil_node_memory_bytes", "Resident memory of the node's worker process.")
        for r in rows:
            n = [r["node_id"]]
            up.add_metric(n, 1.0 if r["status"] == "alive" else 0.0)
            budget.add_metric(n, float(r["budget"]))
            for fam, key in ((age, "heartbeat_age_s"), (eps, "epsilon"), (fps, "fps"),
                             (frames, "frames_in"), (failed, "fail_closed"),
                             (version, "model_version"), (cpu, "cpu_percent"),
                             (mem, "rss_bytes")):
                if r[key] is not None:
                    fam.add_metric(n, float(r[key]))
        yield from (up, age, eps, budget, fps, frames, failed, version, cpu, mem)


def fleet_registry(fleet: Fleet) -> CollectorRegistry:
    """A registry holding only the fleet collector (one per scrape: nothing global)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(fleet))
    return registry
