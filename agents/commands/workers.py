"""`edgeveil federation init`, `edgeveil aggregator`, `edgeveil edge`: run the real workers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer


def _exec_worker(app_module: str, env: dict[str, str], log_level: str, *,
                 web: bool = False) -> None:
    """Create the topics with their configs, then become a `faust worker` process (with faust's
    web server when ``web``: the aggregator's fleet page and /metrics)."""
    from agents.settings import load_settings
    from agents.topics import FEDERATION_TOPICS, ensure_topics

    os.environ.update(env)
    try:
        created = ensure_topics(load_settings(), FEDERATION_TOPICS)
    except Exception as exc:  # noqa: BLE001 - any client error means the broker is unreachable
        typer.secho(f"cannot reach Kafka at {load_settings().bootstrap_servers}: {exc}\n"
                    "Start one with `edgeveil kafka up` or set EDGEVEIL_BOOTSTRAP_SERVERS.",
                    fg="red", err=True)
        raise typer.Exit(2) from exc
    if created:
        typer.echo(f"created topics: {', '.join(created)}")
    if web:
        s = load_settings()
        typer.echo(f"fleet page: http://{s.web_bind}:{s.web_port}/fleet "
                   "(also /fleet.json, /metrics)")
    os.execv(sys.executable, [sys.executable, "-m", "faust", "-A", app_module, "worker",
                              "-l", log_level, *([] if web else ["--without-web"])])


def _check_run_dir(run_dir: Path) -> Path:
    from agents.federation import load_config

    try:
        load_config(run_dir)
    except (FileNotFoundError, ValueError) as exc:
        typer.secho(f"{run_dir} is not a federation run directory: {exc}\n"
                    "Create one with `edgeveil federation init DIR`.", fg="red", err=True)
        raise typer.Exit(2) from exc
    return run_dir.resolve()


def register(app: typer.Typer) -> None:
    fed = typer.Typer(help="Create and inspect federation run directories.", no_args_is_help=True)

    @fed.command("init")
    def init(
        run_dir: Path = typer.Argument(..., help="Folder to create."),
        task: str = typer.Option("pedestrian-forecast", help="pedestrian-forecast | fashion-mnist"),
        nodes: int = typer.Option(21, min=1, help="Number of nodes (sensors / partitions)."),
        rounds: int = typer.Option(5, min=1),
        epsilon: float = typer.Option(2.0, min=0.01, help="Per-node ε budget over all rounds."),
        strategy: str = typer.Option("fedavg"),
        quorum: int = typer.Option(0, help="Updates per round (0 = every node)."),
        mode: str = typer.Option("sync", help="sync | async (FedBuff)."),
        strategy_options: str = typer.Option(
            "{}", help='JSON keyword arguments of the strategy, e.g. \'{"server_lr": 0.03}\'.'),
        local_optimizer: str = typer.Option(None, help="Edges' local optimizer: sgd or adam "
                                                       "(default: the task's)."),
        lr: float = typer.Option(None, help="Edges' local learning rate (default: the task's)."),
    ) -> None:
        """Write federation.json and fresh Ed25519 keys for the aggregator and every node."""
        from agents.commands._training import training_options
        from agents.federation import FederationConfig, init_run_dir
        from pipeline.strategies import make_strategy
        from pipeline.tasks import get_task

        options = training_options(strategy_options, local_optimizer, lr)
        try:
            make_strategy(strategy, **options)  # the aggregator would fail on it at start
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc

        kwargs = {"sensors": nodes} if task == "pedestrian-forecast" else {"num_nodes": nodes}
        node_ids = get_task(task, **kwargs).node_ids()
        cfg = FederationConfig(task=task, task_kwargs=kwargs, strategy=strategy,
                               strategy_kwargs=options, mode=mode,
                               quorum=quorum or len(node_ids), rounds=rounds, epsilon=epsilon,
                               nodes=node_ids, local_optimizer=local_optimizer, lr=lr)
        init_run_dir(run_dir, cfg)
        typer.echo(f"federation of {len(node_ids)} nodes written to {run_dir}")
        typer.echo(f"  export EDGEVEIL_RUN_DIR={run_dir.resolve()}")

    app.add_typer(fed, name="federation")

    @app.command()
    def aggregator(
        run_dir: Path = typer.Option(Path(os.environ.get("EDGEVEIL_RUN_DIR", "out/run")),
                                     help="Federation run directory."),
        log_level: str = typer.Option("info"),
    ) -> None:
        """Run the aggregator as a faust worker (verify, aggregate, publish global models).

        It also serves the fleet page on EDGEVEIL_WEB_BIND:EDGEVEIL_WEB_PORT (127.0.0.1:6066):
        /fleet, /fleet.json and Prometheus /metrics.
        """
        root = _check_run_dir(run_dir)
        _exec_worker("agents.aggregator", {"EDGEVEIL_RUN_DIR": str(root)}, log_level, web=True)

    @app.command()
    def edge(
        nodes: str = typer.Option("all", help="Nodes to host: all, 1-7, or node ids."),
        run_dir: Path = typer.Option(Path(os.environ.get("EDGEVEIL_RUN_DIR", "out/run")),
                                     help="Federation run directory."),
        log_level: str = typer.Option("info"),
    ) -> None:
        """Run edge nodes as a faust worker (DP training, updates, forecasts, telemetry)."""
        root = _check_run_dir(run_dir)
        _exec_worker("agents.edge", {"EDGEVEIL_RUN_DIR": str(root), "EDGEVEIL_EDGE_NODES": nodes},
                     log_level)
