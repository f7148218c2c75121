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

from agents.commands._plan import PLAN_HELP


def register(app: typer.Typer) -> None:
    @app.command()
    def simulate(
        plan_file: Path = typer.Option(None, "--plan", exists=True, dir_okay=False,
                                       help=PLAN_HELP),
        task: str = typer.Option(None, "--task", "-t",
                                 help="fashion-mnist or pedestrian-forecast (plan default: "
                                      "pedestrian-forecast)."),
        nodes: int = typer.Option(None, "--nodes", "-n", min=1,
                                  help="Edge nodes: the task's first N (default: all)."),
        rounds: int = typer.Option(None, "--rounds", "-r", help="Planned rounds (plan: 5)."),
        epsilon: float = typer.Option(None, "--epsilon", "-e",
                                      help="Per-node ε budget for the whole plan (plan: 2.0; "
                                           "≤ 0: no DP, for anchors only)."),
        delta: float = typer.Option(None, "--delta", help="δ of the budget (plan: 1e-5)."),
        accountant: str = typer.Option(None, "--accountant", help="prv (plan default) or rdp."),
        noise_multiplier: float = typer.Option(None, "--noise-multiplier",
                                               help="Fixed σ instead of calibrating it."),
        strategy: str = typer.Option(None, "--strategy", "-s",
                                     help="fedavg (plan default), fedavgm, fedadam, median, "
                                          "trimmed_mean, krum, fedbuff."),
        strategy_options: str = typer.Option(
            None, "--strategy-options",
            help='JSON keyword arguments of the strategy, e.g. \'{"server_lr": 0.03, '
                 '"lr_decay": 0.995}\' for fedadam.'),
        mode: str = typer.Option(None, "--mode", help="sync (plan default) or async (FedBuff)."),
        quorum: int = typer.Option(None, "--quorum", help="Updates that close a sync round "
                                                          "(plan: every node)."),
        buffer_size: int = typer.Option(None, "--buffer-size",
                                        help="Async: updates per aggregation (plan: all nodes)."),
        max_staleness: int = typer.Option(None, "--max-staleness",
                                          help="Async: oldest admitted update, in versions."),
        compression: str = typer.Option(None, "--compression",
                                        help="int8 (plan default), float16 or float32."),
        local_steps: int = typer.Option(None, "--local-steps", help="DP-SGD steps per round."),
        batch_size: int = typer.Option(None, "--batch-size", help="Local batch size."),
        lr: float = typer.Option(None, "--lr", help="Local learning rate (default: the task's)."),
        momentum: float = typer.Option(None, "--momentum", help="Local SGD momentum."),
        local_optimizer: str = typer.Option(None, "--local-optimizer",
                                            help="sgd or adam (default: the task's)."),
        personalize_steps: int = typer.Option(
            None, "--personalize-steps",
            help="DP-SGD fine-tuning steps per node after the last round (in the budget)."),
        personalize_lr: float = typer.Option(None, "--personalize-lr",
                                             help="Fine-tuning learning rate (default: the local one)."),
        personalize_optimizer: str = typer.Option(None, "--personalize-optimizer",
                                                  help="sgd or adam."),
        personalize_layers: str = typer.Option(None, "--personalize-layers", help="all or head."),
        local_head: bool = typer.Option(None, "--local-head/--no-local-head",
                                        help="Each node keeps the last layer to itself."),
        seed: int = typer.Option(None, "--seed", help="Same seed, same result (plan: 0)."),
        workers: int = typer.Option(None, "--workers", min=1,
                                    help="Processes training the nodes (default: one per CPU; "
                                    "any number gives the same result)."),
        eval_split: str = typer.Option("test", "--eval-split",
                                       help="Split the metrics are computed on: test or val."),
        out: Path = typer.Option(Path("runs/simulate"), "--out", "-o",
                                 help="Folder for rounds.jsonl/.csv, summary.json, plan.json, "
                                      "ledgers/."),
    ) -> None:
        """Run a federation plan with every node and the aggregator in this process.

        The plan is --plan FILE and/or the flags; the run's plan.json is the exact recipe, for
        `edgeveil federation init --plan` to run it over Kafka."""
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        from agents.commands._plan import build_plan
        from pipeline.privacy.ledger import BudgetExceededError, LedgerCorruptError
        from pipeline.sim import RoundRow
        from pipeline.sim import simulate as run

        if eval_split not in ("test", "val"):
            raise typer.BadParameter("--eval-split must be test or val")
        no_dp = epsilon is not None and epsilon <= 0
        plan = build_plan(
            plan_file, task=task, nodes=nodes, strategy_options=strategy_options, rounds=rounds,
            epsilon=None if no_dp else epsilon, delta=delta, accountant=accountant,
            noise_multiplier=noise_multiplier, strategy=strategy, mode=mode, quorum=quorum,
            buffer_size=buffer_size, max_staleness=max_staleness, compression=compression,
            local_steps=local_steps, batch_size=batch_size, lr=lr, momentum=momentum,
            local_optimizer=local_optimizer, personalize_steps=personalize_steps,
            personalize_lr=personalize_lr, personalize_optimizer=personalize_optimizer,
            personalize_layers=personalize_layers, local_head=local_head, seed=seed)
        if no_dp:
            plan = plan.replace(epsilon=None)
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                      TextColumn("{task.completed}/{task.total} rounds"),
                      TextColumn("{task.fields[info]}"), TimeElapsedColumn()) as bar:
            job = bar.add_task(plan.task, total=plan.rounds, info="")

            def progress(r: int, row: RoundRow) -> None:
                bar.update(job, completed=r,
                           info=f"{row.metric_name}={row.metric:.4f} ε≤{row.epsilon_max:.2f} "
                                f"{row.bytes_per_update / 1024:.0f} KiB/update")

            try:
                result = run(plan, workers=workers, out=out, progress=progress,
                             eval_split=eval_split)  # type: ignore[arg-type]
            except (ValueError, LedgerCorruptError, BudgetExceededError) as exc:
                typer.secho(str(exc), fg="red", err=True)
                raise typer.Exit(1) from exc
        metric = result.rounds[-1].metric_name
        typer.echo(f"{plan.task}: {metric} {result.initial_metrics[metric]:.4f} -> "
                   f"{result.final_metrics[metric]:.4f} in {result.seconds:.1f} s; "
                   f"max ε per node {max(result.epsilons.values()):.3f}; results in {out}")
        if result.personal_metrics:
            mean = sum(m[metric] for m in result.personal_metrics.values()) / len(
                result.personal_metrics)
            typer.echo(f"personalised: mean {metric} over the nodes' own data {mean:.4f}")

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
