"""`edgeveil federation init`, `edgeveil aggregator`, `edgeveil edge`: run the real workers."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from agents.commands._plan import PLAN_HELP
from agents.settings import default_run_dir

if TYPE_CHECKING:
    from agents.settings import Settings


def _exec_worker(app_module: str, env: dict[str, str], log_level: str, *,
                 web: bool = False) -> None:
    """Create the topics with their configs (not on a secured cluster: there the admin does,
    `edgeveil federation acls`), then become a `faust worker` process (with faust's web server
    when ``web``: the aggregator's fleet page and /metrics)."""
    from agents.settings import load_settings
    from agents.topics import FEDERATION_TOPICS, ensure_topics

    os.environ.update(env)
    if load_settings().secured:
        os.execv(sys.executable, [sys.executable, "-m", "faust", "-A", app_module, "worker",
                                  "-l", log_level, "--without-web"])
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


def _aggregator_app_id(app_id: str) -> str:
    """The aggregator's faust app id for ``EDGEVEIL_APP_ID`` (as agents.app.make_app forms it)."""
    return app_id if app_id.endswith("aggregator") else f"{app_id}-aggregator"


def _admin_settings(root: Path) -> Settings:
    """The settings of the admin: the run's admin certificate unless the environment names
    one (a cluster secured with another CA)."""
    from agents.federation import admin_settings

    return admin_settings(root, always=True)


def _check_run_dir(run_dir: Path) -> Path:
    from agents.federation import load_config

    try:
        load_config(run_dir)
    except (FileNotFoundError, ValueError) as exc:
        typer.secho(f"{run_dir} is not a federation run directory: {exc}\n"
                    "Create one with `edgeveil federation init DIR`.", fg="red", err=True)
        raise typer.Exit(2) from exc
    return run_dir.resolve()


def _identity_env(root: Path, party: str, *, edge_group: str | None = None) -> dict[str, str]:
    """On a secured cluster, the TLS files of ``party`` from the run directory (unless the
    environment names a certificate already) and, for an edge, its consumer group."""
    from agents.federation import client_env
    from agents.settings import Settings, load_settings

    settings = load_settings()
    if not settings.secured:
        return {}
    env: dict[str, str] = {}
    if settings.security_protocol.endswith("SSL") and not settings.ssl_certfile:
        env.update(client_env(root, party))
        env.pop("EDGEVEIL_SECURITY_PROTOCOL")  # keep SSL or SASL_SSL as set
    if edge_group and settings.app_id == Settings.app_id:  # no app id of the user's own
        env["EDGEVEIL_APP_ID"] = edge_group
    return env


def _passphrase() -> bytes | None:
    from agents.settings import load_settings
    from pipeline.identity import IdentityError

    try:
        return load_settings().passphrase()
    except (IdentityError, ValueError) as exc:
        typer.secho(f"key passphrase: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc


def register(app: typer.Typer) -> None:
    fed = typer.Typer(help="Create federation run directories; secure them (ACLs, revocation, "
                      "rotation).", no_args_is_help=True)

    @fed.command("init")
    def init(
        run_dir: Path = typer.Argument(..., help="Folder to create."),
        plan_file: Path = typer.Option(None, "--plan", exists=True, dir_okay=False,
                                       help=PLAN_HELP + " E.g. the plan.json of an "
                                       "`edgeveil simulate` run: the measured recipe, unchanged."),
        task: str = typer.Option(None, help="pedestrian-forecast (plan default) | fashion-mnist"),
        nodes: int = typer.Option(None, min=1, help="Number of nodes: the task's first N "
                                                    "(sensors / partitions; default: all)."),
        rounds: int = typer.Option(None, min=1, help="Global versions (plan: 5)."),
        epsilon: float = typer.Option(None, min=0.01,
                                      help="Per-node ε budget over the whole plan (plan: 2.0)."),
        accountant: str = typer.Option(None, help="prv (plan default) or rdp."),
        strategy: str = typer.Option(None, help="fedavg (plan default), fedadam, fedbuff, ..."),
        quorum: int = typer.Option(None, help="Updates per sync round (plan: every node)."),
        mode: str = typer.Option(None, help="sync (plan default) | async (FedBuff)."),
        buffer_size: int = typer.Option(None, help="Async: updates per aggregation."),
        strategy_options: str = typer.Option(
            None, help='JSON keyword arguments of the strategy, e.g. \'{"server_lr": 0.03}\'.'),
        local_optimizer: str = typer.Option(None, help="Edges' local optimizer: sgd or adam "
                                                       "(default: the task's)."),
        lr: float = typer.Option(None, help="Edges' local learning rate (default: the task's)."),
        local_steps: int = typer.Option(None, help="Edges' DP-SGD steps per round."),
        personalize_steps: int = typer.Option(
            None, help="DP-SGD fine-tuning steps per node after the last round (in the budget; "
                       "the personal model stays on the node)."),
        seed: int = typer.Option(None, help="Seed of the plan (plan: 0)."),
        ca: Path = typer.Option(None, help="Existing CA folder (ca.crt, ca.key) to issue the "
                                "certificates from (default: a new CA in RUN_DIR/tls)."),
        cert_days: int = typer.Option(365, min=1, help="Certificate lifetime in days."),
    ) -> None:
        """Write federation.json (the plan), fresh Ed25519 keys, a CA and X.509 certificates
        (CN = id) for the aggregator, every node, the read-only reader and the admin.

        Private keys are 0600 PKCS#8 files, encrypted with the passphrase in
        EDGEVEIL_KEY_PASSPHRASE or EDGEVEIL_KEY_PASSPHRASE_FILE when one is set."""
        from agents.commands._plan import build_plan
        from agents.federation import init_run_dir
        from pipeline.node.build import make_task

        plan = build_plan(plan_file, task=task, nodes=nodes, strategy_options=strategy_options,
                          rounds=rounds, epsilon=epsilon, accountant=accountant,
                          strategy=strategy, quorum=quorum, mode=mode, buffer_size=buffer_size,
                          local_optimizer=local_optimizer, lr=lr, local_steps=local_steps,
                          personalize_steps=personalize_steps, seed=seed)
        if plan.epsilon is None:
            raise typer.BadParameter("a federation needs a privacy budget: the plan's epsilon "
                                     "is null (no-DP plans are for simulated anchors only)")
        if not plan.nodes:
            ids = make_task(plan.task, plan.task_options, seed=plan.seed).node_ids()
            plan = plan.replace(nodes=list(ids))
        passphrase = _passphrase()
        try:
            init_run_dir(run_dir, plan, passphrase=passphrase, ca_dir=ca, cert_days=cert_days)
        except (FileExistsError, OSError, ValueError) as exc:
            typer.secho(f"cannot initialise {run_dir}: {exc}", fg="red", err=True)
            raise typer.Exit(2) from exc
        typer.echo(f"federation of {len(plan.nodes)} nodes written to {run_dir} "
                   f"(keys {'encrypted' if passphrase else 'unencrypted'}, mode 0600; "
                   f"certificates in {run_dir / 'tls'})")
        typer.echo(f"  export EDGEVEIL_RUN_DIR={run_dir.resolve()}")

    @fed.command("acls")
    def acls_cmd(
        run_dir: Path = typer.Argument(default_run_dir(),
                                       help="Federation run directory."),
        aggregator_app_id: str = typer.Option(None, help="The aggregator's faust app id "
                                              "(default: EDGEVEIL_APP_ID + '-aggregator')."),
        show: bool = typer.Option(False, "--show", help="Only list the cluster's ACLs."),
    ) -> None:
        """As the admin: create every topic and the least-privilege ACLs of the federation.

        Connects with the run's admin certificate unless EDGEVEIL_SSL_CERTFILE names another."""
        from agents import acls
        from agents.federation import ADMIN, active_nodes

        root = _check_run_dir(run_dir)
        settings = _admin_settings(root)
        app_id = aggregator_app_id or _aggregator_app_id(settings.app_id)
        try:
            if show:
                for rule in acls.list_acls(settings):
                    typer.echo(f"{rule.principal:28} {rule.operation:9} {rule.resource} "
                               f"{rule.pattern.lower()} {rule.name}")
                return
            # revoked nodes get no ACLs back
            done = acls.setup_federation(settings, active_nodes(root), aggregator_app_id=app_id)
        except Exception as exc:  # noqa: BLE001 - any client error: say what and where
            typer.secho(f"cannot set up the federation on {settings.bootstrap_servers} as "
                        f"{ADMIN}: {exc}", fg="red", err=True)
            raise typer.Exit(1) from exc
        typer.echo(f"topics created: {', '.join(done['topics_created']) or 'none (all existed)'}")
        typer.echo(f"ACLs: {done['acls']} ({done['acls_new']} new); aggregator app id {app_id}")

    @fed.command("revoke")
    def revoke_cmd(
        node: str = typer.Argument(..., help="Node id to revoke."),
        run_dir: Path = typer.Option(default_run_dir(),
                                     help="Federation run directory."),
    ) -> None:
        """Revoke NODE: remove its ACLs and take its key out of the aggregator's registry.

        A running aggregator reloads the registry within a second; updates of NODE still
        waiting in the open round, or still on the topic, go to edgeveil.dlq with reason
        `revoked`. NODE's certificate is not un-issued: it still completes a TLS handshake
        until it expires, but every request it makes is refused."""
        import time

        from agents import acls, federation

        root = _check_run_dir(run_dir)
        settings = _admin_settings(root)
        try:
            removed = acls.remove_principal(settings, f"User:{node}")
        except Exception as exc:  # noqa: BLE001
            typer.secho(f"cannot remove the ACLs of {node} on {settings.bootstrap_servers}: "
                        f"{exc}", fg="red", err=True)
            raise typer.Exit(1) from exc
        try:
            changed = federation.revoke_key(root, node, at=time.time())
        except KeyError as exc:
            typer.secho(str(exc.args[0]), fg="red", err=True)
            raise typer.Exit(2) from exc
        typer.echo(f"{node}: {removed} ACL(s) removed; key "
                   f"{'revoked in' if changed else 'was already revoked in'} "
                   f"{federation.registry_path(root)}")

    @fed.command("rotate")
    def rotate_cmd(
        node: str = typer.Argument(..., help="Node id whose keys to renew."),
        run_dir: Path = typer.Option(default_run_dir(),
                                     help="Federation run directory."),
        cert_days: int = typer.Option(365, min=1, help="Certificate lifetime in days."),
    ) -> None:
        """Give NODE a new Ed25519 signing key (the aggregator takes it within a second) and a
        new TLS key and certificate from the run's CA."""
        from agents import federation
        from pipeline.identity import IdentityError

        root = _check_run_dir(run_dir)
        try:
            ident = federation.rotate_node(root, node, passphrase=_passphrase(), days=cert_days)
        except (KeyError, IdentityError) as exc:
            typer.secho(str(exc), fg="red", err=True)
            raise typer.Exit(2) from exc
        typer.echo(f"{node}: new signing key registered; new certificate {ident.cert}")

    app.add_typer(fed, name="federation")

    @app.command()
    def aggregator(
        run_dir: Path = typer.Option(default_run_dir(),
                                     help="Federation run directory."),
        log_level: str = typer.Option("info"),
    ) -> None:
        """Run the aggregator as a faust worker (verify, aggregate, publish global models).

        It also serves the fleet page on EDGEVEIL_WEB_BIND:EDGEVEIL_WEB_PORT (127.0.0.1:6066):
        /fleet, /fleet.json and Prometheus /metrics.
        """
        from agents.federation import AGGREGATOR

        root = _check_run_dir(run_dir)
        _exec_worker("agents.aggregator", {"EDGEVEIL_RUN_DIR": str(root),
                                           **_identity_env(root, AGGREGATOR)}, log_level,
                     web=True)

    @app.command()
    def edge(
        nodes: str = typer.Option("all", help="Nodes to host: all, 1-7, or node ids."),
        run_dir: Path = typer.Option(default_run_dir(),
                                     help="Federation run directory."),
        log_level: str = typer.Option("info"),
    ) -> None:
        """Run edge nodes as a faust worker (DP training, updates, forecasts, telemetry)."""
        from agents.edge import select_nodes
        from agents.federation import edge_group, load_config

        root = _check_run_dir(run_dir)
        try:
            hosted = select_nodes(nodes, load_config(root).nodes)
        except (ValueError, IndexError) as exc:
            raise typer.BadParameter(str(exc)) from exc
        # on a secured cluster the worker authenticates as its (first) node: one device, one
        # identity; a worker simulating several devices shares the first one's
        _exec_worker("agents.edge", {"EDGEVEIL_RUN_DIR": str(root), "EDGEVEIL_EDGE_NODES": nodes,
                                     **_identity_env(root, hosted[0],
                                                     edge_group=edge_group(hosted[0]))},
                     log_level)
