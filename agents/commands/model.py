"""`edgeveil model promote | rollback | status`: staged rollout of global models.

Each command reads the rollout command in force from ``edgeveil.control``, builds the next one
with :mod:`pipeline.serving.rollout`, signs it with the federation's model authority key (the
aggregator's, ``keys/aggregator.key`` of the run directory) and publishes it. Edges obey only
correctly signed commands that are newer than the one they applied.
"""

from __future__ import annotations

import getpass
import socket
import time
from pathlib import Path

import typer

from agents.settings import default_run_dir


def _run_dir(run_dir: Path) -> Path:
    from agents.federation import load_config

    try:
        load_config(run_dir)
    except (FileNotFoundError, ValueError) as exc:
        typer.secho(f"{run_dir} is not a federation run directory: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    return run_dir.resolve()


def _check_published(root: Path, version: int, public_key: bytes) -> None:
    """Refuse a version the aggregator never published (its signed copy in ``models/``)."""
    from pipeline.codec import CodecError
    from pipeline.codec.global_model import decode_global_model

    models = root / "models"
    path = models / f"v{version:04d}.evm"
    if not path.is_file():
        published = sorted(int(p.stem[1:]) for p in models.glob("v*.evm") if p.stem[1:].isdigit())
        have = f"v{published[0]}..v{published[-1]}" if published else "none yet"
        typer.secho(f"v{version} was never published (published: {have})", fg="red", err=True)
        raise typer.Exit(2)
    try:
        decode_global_model(path.read_bytes(), public_key=public_key)
    except CodecError as exc:
        typer.secho(f"{path} does not verify ({exc}); refusing to roll out v{version}",
                    fg="red", err=True)
        raise typer.Exit(2) from exc


def _issue(run_dir: Path, version: int, build: str, target: list[str] | None) -> None:
    from rich.console import Console
    from rich.table import Table

    from agents import federation
    from agents.control import publish_control, read_control
    from agents.settings import load_settings
    from pipeline.serving.rollout import encode_control, promote, rollback, served_version

    root = _run_dir(run_dir)
    cfg = federation.load_config(root)
    settings = load_settings()
    priv, pub = federation.aggregator_keys(root, passphrase=settings.passphrase())
    _check_published(root, version, pub)
    settings = federation.admin_settings(root, base=settings)  # on a secured cluster: as admin
    try:
        current = read_control(settings, task=cfg.task, public_key=pub)
    except Exception as exc:  # noqa: BLE001 - any client error means the broker is unreachable
        typer.secho(f"cannot read {cfg.task}'s rollout from Kafka at "
                    f"{settings.bootstrap_servers}: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    issuer = f"{getpass.getuser()}@{socket.gethostname()}"
    try:
        if build == "promote":
            control = promote(current, task=cfg.task, version=version, nodes=cfg.nodes,
                              target=target or [], issued_at=time.time(), issuer=issuer)
        else:
            control = rollback(current, task=cfg.task, version=version, issued_at=time.time(),
                               issuer=issuer)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    offset = publish_control(settings, encode_control(control, private_key=priv), task=cfg.task)
    table = Table(title=f"rollout command {control.seq}: {control.action} v{version} "
                        f"(edgeveil.control offset {offset})")
    table.add_column("node")
    table.add_column("serves", justify="right")
    table.add_column("role")
    for node in cfg.nodes:
        v = served_version(control, node, latest=None)
        canary = control.canary_version is not None and node in control.canary_nodes
        table.add_row(node, "newest" if v is None else f"v{v}", "canary" if canary else "")
    Console().print(table)


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Staged rollout of global models: canary groups and rollback.",
                        no_args_is_help=True)
    run_dir_opt = typer.Option(default_run_dir(),
                               "--run-dir", help="Federation run directory (holds the key that "
                               "signs models and rollout commands).")

    @group.command("promote")
    def promote_cmd(
        version: int = typer.Argument(..., min=0, help="Global model version to roll out."),
        to: list[str] = typer.Option(..., "--to", help="Who serves it: a percentage of the "
                                     "nodes (10%), 'all', or node ids / 1-based positions "
                                     "(repeat or comma-separate)."),
        run_dir: Path = run_dir_opt,
    ) -> None:
        """A canary group (or everyone) serves VERSION; the other nodes keep the stable one."""
        _issue(run_dir, version, "promote", to)

    @group.command("rollback")
    def rollback_cmd(
        version: int = typer.Argument(..., min=0, help="Version every node serves again."),
        run_dir: Path = run_dir_opt,
    ) -> None:
        """Every node serves VERSION again (verified again on each edge); any canary ends."""
        _issue(run_dir, version, "rollback", None)

    @group.command("status")
    def status_cmd(run_dir: Path = run_dir_opt) -> None:
        """The rollout command in force."""
        import json

        from agents import federation
        from agents.control import read_control

        root = _run_dir(run_dir)
        cfg = federation.load_config(root)
        pub = federation.aggregator_public_key(root)
        control = read_control(federation.admin_settings(root), task=cfg.task, public_key=pub)
        if control is None:
            typer.echo(f"no rollout command for {cfg.task}: every node serves the newest model")
        else:
            typer.echo(json.dumps(json.loads(control.encode()), indent=2))

    app.add_typer(group, name="model")
