"""`edgeveil demo`: start a local Kafka, run a real faust worker, round-trip messages, stop.

This is the foundation demo: it proves the moving parts (broker from Maven jars, faust worker,
kafka-python clients, topic size limits) on this machine. The full federated-learning demo
replaces it once the edge and aggregator agents exist.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

log = logging.getLogger(__name__)


def run_foundation_demo(*, messages: int = 200, out_dir: Path = Path("out"),
                        console: Console | None = None) -> dict[str, object]:
    """Round-trip ``messages`` keyed messages through a faust agent on a fresh local broker."""
    from kafka import KafkaConsumer, KafkaProducer

    from agents.broker import LocalKafka
    from agents.settings import load_settings
    from agents.topics import ECHO_IN, ECHO_OUT, ensure_topics
    from agents.workers import FaustWorker

    con = console or Console()
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with LocalKafka() as kafka:
        con.print(f"[bold]1.[/] Kafka {kafka.version} (KRaft) up at {kafka.bootstrap_servers} "
                  f"in {time.monotonic() - t0:.1f}s")
        settings = load_settings(bootstrap_servers=kafka.bootstrap_servers)
        ensure_topics(settings, [ECHO_IN, ECHO_OUT])
        env = {"EDGEVEIL_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
               "EDGEVEIL_DATA_DIR": str(kafka.data_dir / "faust")}
        t1 = time.monotonic()
        with FaustWorker("agents.app", env=env, log_file=out_dir / "demo-worker.log") as worker:
            con.print(f"[bold]2.[/] faust worker (pid {worker.proc.pid if worker.proc else '?'}) "
                      f"ready in {time.monotonic() - t1:.1f}s")
            producer = KafkaProducer(**settings.producer_config())
            t2 = time.monotonic()
            for i in range(messages):
                producer.send(ECHO_IN.name, key=f"camera-{i % 7}".encode(), value=f"{i}".encode())
            producer.flush()
            producer.close()
            con.print(f"[bold]3.[/] sent {messages} keyed messages to {ECHO_IN.name}")
            consumer = KafkaConsumer(ECHO_OUT.name, auto_offset_reset="earliest",
                                     consumer_timeout_ms=1000, **settings.consumer_config())
            got: list[dict[str, object]] = []
            deadline = time.monotonic() + 60
            while len(got) < messages and time.monotonic() < deadline:
                got.extend(json.loads(m.value) for m in consumer)
            consumer.close()
            elapsed = time.monotonic() - t2
    per_partition = Counter(int(r["partition"]) for r in got)  # type: ignore[call-overload]
    table = Table(title="faust agent round trip")
    table.add_column("partition")
    table.add_column("messages", justify="right")
    for p in sorted(per_partition):
        table.add_row(str(p), str(per_partition[p]))
    con.print(table)
    summary = {"sent": messages, "echoed": len(got), "seconds": round(elapsed, 2),
               "partitions": dict(sorted(per_partition.items())), "ok": len(got) == messages}
    (out_dir / "demo-summary.json").write_text(json.dumps(summary, indent=2))
    colour = "green" if summary["ok"] else "red"
    con.print(f"[bold {colour}]4.[/] the agent echoed {len(got)}/{messages} in {elapsed:.1f}s; "
              f"broker and worker stopped. Summary: {out_dir / 'demo-summary.json'}")
    return summary


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        rounds: int = typer.Option(5, min=1, help="Federated rounds."),
        nodes: int = typer.Option(21, min=2, max=21, help="Edge nodes (Auckland sensors)."),
        epsilon: float = typer.Option(2.0, min=0.05, help="Per-node ε budget (δ = 1e-5)."),
        edge_workers: int = typer.Option(2, min=1, help="Edge worker processes."),
        camera: bool = typer.Option(True, help="Give one node a live camera on vtest.avi."),
        out: Path = typer.Option(Path("out"), help="Where report.html, summary and logs go."),
        echo: bool = typer.Option(False, "--echo", help="Only the broker + faust round-trip check."),
        secure: bool = typer.Option(False, "--secure", help="A secured broker: mutual TLS, ACLs, "
                                    "every worker with its own certificate."),
        web_port: int = typer.Option(6066, help="Port of the aggregator's fleet page (another "
                                                "free one if taken)."),
    ) -> None:
        """Run the whole system: local Kafka, aggregator and edge workers, rounds, report."""
        from agents.broker import KafkaHarnessError
        from agents.demo import default_camera, run_demo
        from agents.workers import WorkerError

        try:
            if echo:
                summary = run_foundation_demo(out_dir=out)
                ok = bool(summary["ok"])
            else:
                summary = run_demo(out_dir=out, rounds=rounds, nodes=nodes, epsilon=epsilon,
                                   edge_workers=edge_workers, secure=secure,
                                   camera=default_camera() if camera else None,
                                   web_port=web_port)
                ok = summary["completed_rounds"] == rounds
        except KeyboardInterrupt:
            typer.echo("interrupted; broker and workers stopped")
            raise typer.Exit(130) from None
        except (KafkaHarnessError, WorkerError, RuntimeError) as exc:
            typer.secho(str(exc), fg="red", err=True)
            raise typer.Exit(1) from exc
        if not ok:
            raise typer.Exit(1)
