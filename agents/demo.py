"""`edgeveil demo`: the whole system on one machine, with real processes and a real broker.

Starts a local Kafka, writes a federation run directory (21 nodes = the 21 Auckland sensors),
starts the aggregator (with its fleet page, ``/fleet.json`` and ``/metrics``) and the edge workers
as real ``faust worker`` processes, follows the rounds on the topics (a live table), writes
``out/report.html``, and stops everything — also on Ctrl-C.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from agents import federation
from agents.broker import LocalKafka
from agents.settings import load_settings
from agents.topics import (
    ANALYTICS,
    DLQ,
    FEDERATION_TOPICS,
    FRAMES_ANONYMIZED,
    MODELS,
    TELEMETRY,
    ensure_topics,
)
from agents.workers import FaustWorker

log = logging.getLogger(__name__)


@dataclass
class DemoState:
    """Everything the demo saw on the topics."""

    models: dict[int, Any] = field(default_factory=dict)  # version -> GlobalModel
    mae: dict[int, float] = field(default_factory=dict)
    telemetry: dict[str, Any] = field(default_factory=dict)  # node -> latest Telemetry
    analytics: list[Any] = field(default_factory=list)
    dlq: list[Any] = field(default_factory=list)
    frames: list[bytes] = field(default_factory=list)  # anonymized JPEG previews
    round_seconds: dict[int, float] = field(default_factory=dict)
    fleet_url: str = ""


def run_demo(*, out_dir: Path = Path("out"), rounds: int = 5, nodes: int = 21, epsilon: float = 2.0,
             edge_workers: int = 2, camera: Path | None = None, timeout_s: float = 540.0,
             bootstrap_servers: str | None = None, secure: bool = False, web_port: int = 6066,
             console: Console | None = None) -> dict[str, Any]:
    """Run the federated demo end to end; returns the summary written to ``out/summary.json``.

    ``bootstrap_servers`` runs against an existing broker (its topics must be fresh) instead of
    starting a local one. ``secure`` starts the local broker with mutual TLS and ACLs
    (:class:`agents.broker.BrokerSecurity`): the admin creates the topics and ACLs, the
    aggregator and each edge worker connect with their own certificate, and the live table reads
    as the read-only ``reader``. The aggregator serves the fleet page on ``web_port`` (another free
    port when that one is taken); its URL is printed and kept in the summary (``fleet_url``).
    """
    from kafka import KafkaConsumer

    from pipeline.codec.global_model import decode_global_model
    from pipeline.tasks import get_task
    from pipeline.weights import set_weights
    from schemas.messages import AnalyticsRecord, DlqEntry, Telemetry

    con = console or Console()
    out_dir.mkdir(parents=True, exist_ok=True)
    run_root = out_dir / "run"
    shutil.rmtree(run_root, ignore_errors=True)
    t_start = time.monotonic()

    con.print(f"[bold]1.[/] loading the pedestrian-forecast task ({nodes} Auckland sensors)")
    task_kwargs: dict[str, Any] = {"sensors": nodes}
    task = get_task("pedestrian-forecast", **task_kwargs)
    node_ids = task.node_ids()
    cfg = federation.FederationPlan(
        task="pedestrian-forecast", task_options=task_kwargs, quorum=len(node_ids),
        min_quorum=max(1, len(node_ids) // 2), deadline_s=180.0, rounds=rounds,
        epsilon=epsilon, nodes=node_ids)
    federation.init_run_dir(run_root, cfg)
    agg_pub = federation.aggregator_public_key(run_root)
    naive = task.seasonal_naive(split="test")["mae"]

    state = DemoState()
    workers: list[FaustWorker] = []
    if secure and bootstrap_servers:
        raise ValueError("secure=True starts its own secured broker; it cannot use an existing one")
    security = None
    if secure:
        from agents.broker import BrokerSecurity

        security = BrokerSecurity(broker=federation.tls_identity(run_root, federation.BROKER),
                                  admin=federation.tls_identity(run_root, federation.ADMIN))
    broker = (_ExistingBroker(bootstrap_servers, out_dir) if bootstrap_servers
              else LocalKafka(security=security))
    t_setup = time.monotonic()
    with broker as kafka:
        kind = " (mutual TLS, ACLs)" if secure else ""
        con.print(f"[bold]2.[/] Kafka{kind} up at {kafka.bootstrap_servers} "
                  f"({time.monotonic() - t_start:.0f}s)")
        base = load_settings(bootstrap_servers=kafka.bootstrap_servers)
        env = {"EDGEVEIL_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
               "EDGEVEIL_RUN_DIR": str(run_root.resolve()),
               "EDGEVEIL_DATA_DIR": str(kafka.data_dir / "faust")}
        if secure:
            from agents import acls

            admin = federation.client_settings(run_root, federation.ADMIN, base=base)
            done = acls.setup_federation(admin, node_ids, aggregator_app_id="demo-aggregator")
            con.print(f"   as admin: {len(done['topics_created'])} topics, {done['acls']} ACLs")
            settings = federation.client_settings(run_root, federation.READER, base=base)
        else:
            settings = base
            ensure_topics(settings, FEDERATION_TOPICS)

        def identity(party: str) -> dict[str, str]:
            return federation.client_env(run_root, party) if secure else {}

        logs = out_dir / "logs"
        logs.mkdir(exist_ok=True)
        port = _free_port(web_port)
        state.fleet_url = f"http://127.0.0.1:{port}/fleet"
        workers.append(FaustWorker("agents.aggregator", log_file=logs / "aggregator.log",
                                   env={**env, "EDGEVEIL_APP_ID": "demo-aggregator",
                                        "EDGEVEIL_WEB_PORT": str(port),
                                        "EDGEVEIL_WEB_BIND": "127.0.0.1",
                                        **identity(federation.AGGREGATOR)}, web=True))
        bounds = _split(len(node_ids), edge_workers)
        for i, (lo, hi) in enumerate(bounds):
            # secured: a worker simulating several devices connects as its first node
            first = node_ids[lo - 1]
            wenv = {**env, "EDGEVEIL_APP_ID": (federation.edge_group(first) if secure
                                               else f"demo-edge{i + 1}-edge"),
                    "EDGEVEIL_EDGE_NODES": f"{lo}-{hi}", **identity(first)}
            if camera is not None and i == 0:
                wenv["EDGEVEIL_CAMERA"] = str(camera)
                wenv["EDGEVEIL_CAMERA_NODE"] = node_ids[lo - 1]
            workers.append(FaustWorker("agents.edge", log_file=logs / f"edge{i + 1}.log",
                                       env=wenv))
        consumer = KafkaConsumer(MODELS.name, TELEMETRY.name, ANALYTICS.name, DLQ.name,
                                 FRAMES_ANONYMIZED.name, auto_offset_reset="earliest",
                                 consumer_timeout_ms=300, **settings.consumer_config())
        try:
            for w in workers:
                w.start(wait_ready=False)
            for w in workers:
                w.wait_ready(240)
            setup_s = time.monotonic() - t_setup
            con.print(f"[bold]3.[/] aggregator + {edge_workers} edge workers ready "
                      f"({time.monotonic() - t_start:.0f}s; broker, topics"
                      f"{', ACLs' if secure else ''} and workers in {setup_s:.1f}s); rounds start")
            con.print(f"   fleet page: [link={state.fleet_url}]{state.fleet_url}[/link] "
                      f"(also /fleet.json, /metrics) while the demo runs", soft_wrap=True)
            deadline = time.monotonic() + timeout_s
            last_version_at = time.monotonic()
            with Live(_table(state, rounds, naive), console=con, refresh_per_second=2) as live:
                while time.monotonic() < deadline:
                    for msg in consumer:
                        if msg.topic == MODELS.name:
                            m = decode_global_model(msg.value, public_key=agg_pub)
                            v = m.header.version
                            if v not in state.models:
                                now = time.monotonic()
                                state.round_seconds[v] = now - last_version_at
                                last_version_at = now
                                state.models[v] = m
                                model = task.build_model()
                                set_weights(model, m.weights)
                                state.mae[v] = task.evaluate(model, split="test")["mae"]
                        elif msg.topic == TELEMETRY.name:
                            t = Telemetry.decode(msg.value)
                            state.telemetry[t.node_id] = t
                        elif msg.topic == ANALYTICS.name:
                            state.analytics.append(AnalyticsRecord.decode(msg.value))
                        elif msg.topic == DLQ.name:
                            state.dlq.append(DlqEntry.from_headers(msg.headers))
                        elif msg.topic == FRAMES_ANONYMIZED.name and len(state.frames) < 6:
                            state.frames.append(msg.value)
                    live.update(_table(state, rounds, naive))
                    if rounds in state.models and _all_swapped(state, node_ids, rounds):
                        break
                    dead = [w for w in workers if not w.running]
                    if dead:
                        raise RuntimeError(f"worker {dead[0].app} died:\n{dead[0].output[-3000:]}")
        finally:
            consumer.close()
            for w in workers:
                w.stop()
    elapsed = time.monotonic() - t_start
    summary = _summary(state, rounds=rounds, naive=naive, elapsed=elapsed, nodes=node_ids,
                       epsilon=epsilon)
    summary["secure"] = secure
    summary["setup_seconds"] = round(setup_s, 1)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    report = write_report(out_dir / "report.html", state, summary, nodes=node_ids)
    ok = summary["completed_rounds"] == rounds
    colour = "green" if ok else "red"
    con.print(f"[bold {colour}]4.[/] {summary['completed_rounds']}/{rounds} rounds in "
              f"{elapsed:.0f}s; test MAE {summary['mae_by_version'].get(str(rounds), float('nan')):.1f} "
              f"(seasonal-naive {naive:.1f}); report: {report}")
    return summary


def _free_port(preferred: int) -> int:
    """``preferred`` if nothing listens on it on 127.0.0.1, else a free port."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _ExistingBroker:
    """Context manager with LocalKafka's two attributes, for a broker someone else runs."""

    def __init__(self, bootstrap_servers: str, out_dir: Path) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.data_dir = out_dir / "broker-client"

    def __enter__(self) -> _ExistingBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _split(n: int, k: int) -> list[tuple[int, int]]:
    k = max(1, min(k, n))
    size, extra = divmod(n, k)
    out, lo = [], 1
    for i in range(k):
        hi = lo + size - 1 + (1 if i < extra else 0)
        out.append((lo, hi))
        lo = hi + 1
    return out


def _all_swapped(state: DemoState, nodes: list[str], version: int) -> bool:
    return all(n in state.telemetry and state.telemetry[n].model_version >= version for n in nodes)


def _table(state: DemoState, rounds: int, naive: float) -> Table:
    t = Table(title=f"EdgeVeil federated rounds (test MAE; seasonal-naive {naive:.1f})")
    for col in ("version", "participants", "test MAE", "mean ε", "max ε", "bytes/update", "round s"):
        t.add_column(col, justify="right")
    for v in sorted(state.models):
        h = state.models[v].header
        eps = list(h.epsilon_by_node.values())
        sizes = list(h.update_bytes.values())
        t.add_row(str(v), str(len(h.participants)), f"{state.mae.get(v, float('nan')):.1f}",
                  f"{sum(eps) / len(eps):.3f}" if eps else "-", f"{max(eps):.3f}" if eps else "-",
                  f"{sum(sizes) / len(sizes):,.0f}" if sizes else "-",
                  f"{state.round_seconds.get(v, 0):.1f}")
    loaded = [tm.model_version for tm in state.telemetry.values()]
    t.caption = (f"target {rounds} rounds · edges reporting: {len(loaded)} · "
                 f"lowest model loaded: v{min(loaded) if loaded else '-'} · DLQ: {len(state.dlq)}")
    return t


def _summary(state: DemoState, *, rounds: int, naive: float, elapsed: float,
             nodes: list[str], epsilon: float) -> dict[str, Any]:
    last = state.models.get(max(state.models)) if state.models else None
    return {
        "completed_rounds": max((v for v in state.models), default=0),
        "planned_rounds": rounds,
        "epsilon_budget": epsilon,
        "fleet_url": state.fleet_url,
        "seconds": round(elapsed, 1),
        "mae_by_version": {str(v): round(m, 3) for v, m in sorted(state.mae.items())},
        "seasonal_naive_mae": round(naive, 3),
        "epsilon_by_node": dict(last.header.epsilon_by_node) if last else {},
        "update_bytes_mean": (sum(last.header.update_bytes.values()) / len(last.header.update_bytes)
                              if last and last.header.update_bytes else None),
        "dlq": [e.reason for e in state.dlq],
        "nodes": len(nodes),
        "analytics_records": len(state.analytics),
        "served_forecasts": sum(1 for a in state.analytics if a.forecast is not None),
        "anonymized_previews": len(state.frames),
    }


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


_REPORT_CSS = """
body{font:15px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;max-width:64em;margin:1.5em auto;
padding:0 1em;color:#111827}
h1{font-size:1.6em;margin:.2em 0 .6em}h2{font-size:1.15em;margin:1.6em 0 .5em}
.card{display:grid;grid-template-columns:repeat(auto-fit,minmax(11em,1fr));gap:.8em;
border:1px solid #e5e7eb;border-radius:10px;padding:1em 1.2em;background:#f8fafc}
.kpi .label{font-size:.8em;letter-spacing:.02em;color:#6b7280;font-weight:600}
.kpi .value{font-size:1.5em;font-weight:650}.kpi .note{font-size:.85em;color:#6b7280}
.good{color:#1a7f37}.bad{color:#c62828}
.verdict{margin:.8em 0 0;font-size:1.05em}
table{border-collapse:collapse;width:100%;font-size:.92em}
th,td{text-align:left;padding:.35em .55em;border-bottom:1px solid #e5e7eb}td.num{white-space:nowrap}
th{color:#6b7280;font-weight:600;background:#f1f5f9}td.num{text-align:right;font-variant-numeric:tabular-nums}
.bar{display:inline-block;width:6em;height:.55em;background:#eef2f7;border-radius:4px;
vertical-align:middle;margin-left:.4em;overflow:hidden}.bar span{display:block;height:100%;background:#1a7f37}
.bar.hi span{background:#b35900}
img.plot{max-width:100%}details{margin-top:1.5em}summary{cursor:pointer;font-weight:600}
pre{background:#f4f4f4;padding:1em;overflow:auto}footer{margin-top:2em;color:#6b7280;font-size:.85em}
"""


def _kpi(label: str, value: str, note: str = "", cls: str = "") -> str:
    return (f"<div class='kpi'><div class='label'>{html.escape(label)}</div>"
            f"<div class='value {cls}'>{value}</div><div class='note'>{note}</div></div>")


def _summary_card(summary: dict[str, Any]) -> str:
    """Rounds, final metric vs the seasonal-naive baseline, ε of budget, bytes, DLQ."""
    done, planned = summary["completed_rounds"], summary.get("planned_rounds", summary["completed_rounds"])
    maes = summary["mae_by_version"]
    final = maes.get(str(done))
    naive = summary["seasonal_naive_mae"]
    eps = list(summary["epsilon_by_node"].values())
    budget = summary.get("epsilon_budget")
    size = summary.get("update_bytes_mean")
    dlq = len(summary["dlq"])
    parts = [_kpi("rounds", f"{done} / {planned}", f"{summary['nodes']} nodes · {summary['seconds']:.0f} s",
                  "good" if done == planned else "bad")]
    if final is not None:
        better = final < naive
        rel = (naive - final) / naive * 100
        parts.append(_kpi("final test MAE", f"{final:.1f}",
                          f"seasonal-naive {naive:.1f} ({abs(rel):.1f} % {'better' if better else 'worse'})",
                          "good" if better else "bad"))
    if eps:
        note = f"of {budget:g} per node (δ = 1e-5)" if budget else "(δ = 1e-5)"
        parts.append(_kpi("ε spent (max node)", f"{max(eps):.3f}", note,
                          "bad" if budget and max(eps) > budget else ""))
    parts.append(_kpi("bytes per update", f"{size / 1024:.1f} KiB" if size else "–",
                      "mean of the last round (int8, zstd, signed)"))
    parts.append(_kpi("dead-letter queue", str(dlq),
                      ", ".join(sorted(set(summary["dlq"]))) or "nothing rejected",
                      "bad" if dlq else "good"))
    verdict = ""
    first = maes.get("0")
    if final is not None and first is not None:
        within = not budget or max(eps or [0.0]) <= budget
        verdict = (f"<p class='verdict'>The federated model went from MAE {first:.1f} (v0) to "
                   f"{final:.1f} (v{done}) on 2025 test data, "
                   f"{'beating' if final < naive else 'not beating'} the seasonal-naive forecast "
                   f"({naive:.1f}); {'no' if within else 'some'} node spent more than its ε "
                   f"budget.</p>")
    return f"<div class='card'>{''.join(parts)}</div>{verdict}"


def _node_table(state: DemoState, summary: dict[str, Any], nodes: list[str]) -> str:
    budget = summary.get("epsilon_budget") or 0
    rows = []
    last = state.models[max(state.models)].header if state.models else None
    for n in nodes:
        rounds_in = sum(1 for m in state.models.values() if n in m.header.participants)
        eps = last.epsilon_by_node.get(n) if last else None
        size = last.update_bytes.get(n) if last else None
        t = state.telemetry.get(n)
        forecasts = sum(1 for a in state.analytics if a.node_id == n and a.forecast is not None)
        frac = min(1.0, eps / budget) if eps is not None and budget else 0.0
        bar = (f"<span class='bar{' hi' if frac >= 0.8 else ''}'><span style='width:{frac * 100:.0f}%'>"
               f"</span></span>") if eps is not None else ""
        camera = (f"{t.fps:.1f} fps · {t.fail_closed} failed closed of {t.frames_in}"
                  if t is not None and t.frames_in else "–")
        rows.append(
            f"<tr><td>{html.escape(n)}</td><td class='num'>{rounds_in}</td>"
            f"<td class='num'>{'–' if eps is None else f'{eps:.3f}'}{bar}</td>"
            f"<td class='num'>{'–' if size is None else f'{size / 1024:.1f} KiB'}</td>"
            f"<td class='num'>{'–' if t is None or t.model_version < 0 else f'v{t.model_version}'}</td>"
            f"<td class='num'>{forecasts}</td><td>{camera}</td></tr>")
    return ("<table><thead><tr><th>node</th><th>rounds contributed</th><th>ε spent</th>"
            "<th>last update</th><th>serves</th><th>forecasts served</th><th>camera</th></tr>"
            "</thead><tbody>" + "".join(rows) + "</tbody></table>")


def write_report(path: Path, state: DemoState, summary: dict[str, Any],
                 nodes: list[str] | None = None) -> Path:
    """A self-contained HTML report a person reads at a glance: a summary card (rounds, final
    metric vs the seasonal-naive baseline, ε of budget, bytes per update, DLQ), a per-node
    table, then the plots and anonymized previews; the raw summary JSON is collapsed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    imgs: list[tuple[str, str]] = []
    versions = sorted(state.mae)
    if versions:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.plot(versions, [state.mae[v] for v in versions], marker="o", label="global model")
        ax.axhline(summary["seasonal_naive_mae"], color="grey", ls="--", label="seasonal naive")
        ax.set_xlabel("global model version")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("2025 test MAE (people/hour)")
        ax.legend()
        imgs.append(("Test MAE per round", _png(fig)))
        plt.close(fig)
    if state.models:
        fig, ax = plt.subplots(figsize=(6, 3))
        eps_nodes = sorted({n for m in state.models.values() for n in m.header.epsilon_by_node})
        for n in eps_nodes:
            vs = [v for v in sorted(state.models) if n in state.models[v].header.epsilon_by_node]
            ax.plot(vs, [state.models[v].header.epsilon_by_node[n] for v in vs], alpha=0.6)
        if summary.get("epsilon_budget"):
            ax.axhline(summary["epsilon_budget"], color="#c62828", ls="--", label="budget")
            ax.legend()
        ax.set_xlabel("global model version")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("ε spent (δ=1e-5)")
        ax.set_title("ε per node")
        imgs.append(("Privacy spend per node", _png(fig)))
        plt.close(fig)
        last = state.models[max(state.models)].header
        if last.update_bytes:
            fig, ax = plt.subplots(figsize=(7, 3))
            names = sorted(last.update_bytes)
            ax.bar(range(len(names)), [last.update_bytes[n] / 1024 for n in names])
            ax.set_xticks(range(len(names)), [n.removeprefix("akl-")[:14] for n in names],
                          rotation=70, fontsize=7)
            ax.set_ylabel("update KiB (last round)")
            imgs.append(("Per-node contributions", _png(fig)))
            plt.close(fig)
    node_ids = nodes or sorted({n for m in state.models.values() for n in m.header.participants}
                               | set(state.telemetry))
    parts = [
        "<!doctype html><html lang='en'><meta charset='utf-8'><title>EdgeVeil demo report</title>",
        f"<style>{_REPORT_CSS}</style>",
        "<h1>EdgeVeil demo report</h1>",
        f"<section id='summary'>{_summary_card(summary)}</section>",
        f"<h2>Nodes</h2><section id='nodes'>{_node_table(state, summary, node_ids)}</section>",
    ]
    for title, data in imgs:
        parts.append(f"<h2>{html.escape(title)}</h2><img class='plot' alt='{html.escape(title)}' "
                     f"src='data:image/png;base64,{data}'>")
    if state.frames:
        parts.append("<h2>Anonymized camera previews</h2>")
        for jpg in state.frames:
            parts.append(f"<img width='384' alt='anonymized preview' "
                         f"src='data:image/jpeg;base64,{base64.b64encode(jpg).decode()}'>")
    parts.append("<details id='raw'><summary>Raw summary (summary.json)</summary>"
                 f"<pre>{html.escape(json.dumps(summary, indent=2))}</pre></details>")
    parts.append("<footer>Data: Auckland pedestrian counts © Heart of the City Auckland, "
                 "CC-BY-4.0.</footer></html>")
    path.write_text("\n".join(parts))
    return path


def default_camera() -> Path | None:
    """vtest.avi when installed and the vision pipeline is present, else None."""
    from agents.settings import load_settings

    if not load_settings().demo_camera:
        return None
    try:
        from pipeline.assets import locate

        return locate("vtest.avi")
    except Exception:  # noqa: BLE001 - the demo runs without a camera
        return None
