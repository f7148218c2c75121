"""`edgeveil simulate` and `edgeveil privacy show`: federated learning without a broker.

`simulate` runs every edge node and the aggregator in one process through the same
``pipeline.node`` / ``pipeline.sim`` code (codec, signatures, admission, strategies, ledger) that the Kafka
agents run. `privacy show` prints each node's privacy spend from its durable ledger.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def simulate(
        task: str = typer.Option(..., "--task", "-t",
                                 help="fashion-mnist or pedestrian-forecast."),
        nodes: int = typer.Option(None, "--nodes", "-n", help="Edge nodes (default: all)."),
        rounds: int = typer.Option(10, "--rounds", "-r", help="Planned federated rounds."),
        epsilon: float = typer.Option(3.0, "--epsilon", "-e",
                                      help="Per-node ε budget for the whole run (≤ 0: no DP)."),
        delta: float = typer.Option(1e-5, "--delta", help="δ of the budget."),
        strategy: str = typer.Option("fedavg", "--strategy", "-s",
                                     help="fedavg, fedavgm, fedadam, median, trimmed_mean, "
                                          "krum, fedbuff."),
        strategy_options: str = typer.Option(
            "{}", "--strategy-options",
            help='JSON keyword arguments of the strategy, e.g. \'{"server_lr": 0.03, '
                 '"lr_decay": 0.995}\' for fedadam.'),
        accountant: str = typer.Option("prv", "--accountant", help="prv or rdp."),
        compression: str = typer.Option("int8", "--compression",
                                        help="int8, float16 or float32."),
        local_steps: int = typer.Option(None, "--local-steps", help="DP-SGD steps per round."),
        lr: float = typer.Option(None, "--lr", help="Local learning rate (default: the task's)."),
        local_optimizer: str = typer.Option(None, "--local-optimizer",
                                            help="sgd or adam (default: the task's)."),
        seed: int = typer.Option(0, "--seed", help="Same seed, same result."),
        workers: int = typer.Option(None, "--workers", min=1,
                                    help="Processes training the nodes (default: one per CPU; "
                                    "any number gives the same result)."),
        out: Path = typer.Option(Path("runs/simulate"), "--out", "-o",
                                 help="Folder for rounds.jsonl/.csv, summary.json, ledgers/."),
    ) -> None:
        """Run federated rounds of TASK with every node and the aggregator in this process."""
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        from agents.commands._training import training_options
        from pipeline.privacy.ledger import BudgetExceededError, LedgerCorruptError
        from pipeline.sim import RoundRow
        from pipeline.sim import simulate as run

        if accountant not in ("prv", "rdp"):
            raise typer.BadParameter("--accountant must be prv or rdp")
        options = training_options(strategy_options, local_optimizer, lr)
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                      TextColumn("{task.completed}/{task.total} rounds"),
                      TextColumn("{task.fields[info]}"), TimeElapsedColumn()) as bar:
            job = bar.add_task(f"{task}", total=rounds, info="")

            def progress(r: int, row: RoundRow) -> None:
                bar.update(job, completed=r,
                           info=f"{row.metric_name}={row.metric:.4f} ε≤{row.epsilon_max:.2f} "
                                f"{row.bytes_per_update / 1024:.0f} KiB/update")

            try:
                result = run(task=task, nodes=nodes, rounds=rounds,
                             epsilon=epsilon if epsilon > 0 else None, delta=delta,
                             strategy=strategy, strategy_options=options,
                             accountant=accountant,  # type: ignore[arg-type]
                             compression=compression, local_steps=local_steps, seed=seed,
                             lr=lr, local_optimizer=local_optimizer,  # type: ignore[arg-type]
                             workers=workers, out=out, progress=progress)
            except (ValueError, LedgerCorruptError, BudgetExceededError) as exc:
                typer.secho(str(exc), fg="red", err=True)
                raise typer.Exit(1) from exc
        metric = result.rounds[-1].metric_name
        typer.echo(f"{task}: {metric} {result.initial_metrics[metric]:.4f} -> "
                   f"{result.final_metrics[metric]:.4f} in {result.seconds:.1f} s; "
                   f"max ε per node {max(result.epsilons.values()):.3f}; results in {out}")

    privacy = typer.Typer(help="Inspect the durable per-node privacy ledgers.",
                          no_args_is_help=True)

    @privacy.command()
    def show(
        folder: Path = typer.Argument(Path("runs/simulate"),
                                      help="Run folder (with ledgers/) or a ledgers folder."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Print each node's privacy spend (ε at its δ) against its budget."""
        from pipeline.privacy.ledger import LedgerCorruptError, load_ledgers

        where = folder / "ledgers" if (folder / "ledgers").is_dir() else folder
        try:
            ledgers = load_ledgers(where)
        except LedgerCorruptError as exc:
            typer.secho(str(exc), fg="red", err=True)
            raise typer.Exit(2) from exc
        if not ledgers:
            typer.secho(f"no ledgers under {where}", fg="yellow", err=True)
            raise typer.Exit(1)
        rows = [{"node": lg.node_id, "epsilon": lg.epsilon(), "delta": lg.delta,
                 "budget": lg.budget, "steps": lg.total_steps, "accountant": lg.mechanism}
                for lg in ledgers]
        if as_json:
            typer.echo(json.dumps(rows, indent=1))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"privacy spend in {where}")
        for col in ("node", "ε spent", "budget", "δ", "steps", "accountant", "left"):
            table.add_column(col)
        for r in rows:
            left = r["budget"] - r["epsilon"]
            table.add_row(r["node"], f"{r['epsilon']:.3f}", f"{r['budget']:g}", f"{r['delta']:g}",
                          str(r["steps"]), r["accountant"],
                          f"{left:.3f}" if math.isfinite(left) else "-")
        Console().print(table)

    app.add_typer(privacy, name="privacy")
