"""`edgeveil kafka up | down | status`: a persistent local broker for development."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from agents.broker import (
    BrokerSecurity,
    KafkaHarnessError,
    daemon_down,
    daemon_status,
    daemon_up,
)
from agents.settings import default_run_dir


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Run a local single-node Apache Kafka (KRaft) from Maven Central jars.",
                        no_args_is_help=True)

    @group.command()
    def up(
        port: int = typer.Option(9092, help="Broker port on 127.0.0.1."),
        timeout: float = typer.Option(90.0, help="Seconds to wait for the broker to answer."),
        secure: bool = typer.Option(False, "--secure", help="Mutual TLS on every listener, "
                                    "StandardAuthorizer, no ACL = deny, super user admin "
                                    "(certificates from --run-dir)."),
        run_dir: Path = typer.Option(default_run_dir(),
                                     help="Federation run directory whose tls/ the secured "
                                     "broker uses (`edgeveil federation init`)."),
    ) -> None:
        """Start the broker in the background (fetching the jars on first use)."""
        from agents.settings import load_settings
        from pipeline.identity import IdentityError

        security = None
        try:
            if secure:
                from agents.federation import ADMIN, BROKER, tls_identity

                passphrase = load_settings().passphrase()
                security = BrokerSecurity(
                    broker=tls_identity(run_dir, BROKER), admin=tls_identity(run_dir, ADMIN),
                    key_password=passphrase.decode() if passphrase else None)
            status = daemon_up(port=port, timeout=timeout, security=security)
        except (KafkaHarnessError, IdentityError, FileNotFoundError) as exc:
            typer.secho(str(exc), fg="red", err=True)
            raise typer.Exit(1) from exc
        kind = "secured: mutual TLS + ACLs" if status.get("secure") else "plaintext"
        typer.echo(f"Kafka ({kind}) is up at {status['bootstrap_servers']} (pid {status['pid']}).")
        typer.echo(f"  export EDGEVEIL_BOOTSTRAP_SERVERS={status['bootstrap_servers']}")
        if status.get("secure"):
            typer.echo("  export EDGEVEIL_SECURITY_PROTOCOL=SSL   # then: edgeveil federation "
                       "acls; workers pick their certificates from the run directory")

    @group.command()
    def down() -> None:
        """Stop the broker started by `edgeveil kafka up` (its data is kept)."""
        if daemon_down():
            typer.echo("Kafka stopped.")
        else:
            typer.echo("No local Kafka was running.")

    @group.command()
    def status(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
        """Say whether the local broker runs and answers metadata requests."""
        st = daemon_status()
        if as_json:
            typer.echo(json.dumps(st))
        elif st.get("running"):
            ok = "answers" if st.get("answers") else "does NOT answer yet"
            typer.echo(f"Kafka pid {st['pid']} at {st['bootstrap_servers']} {ok}.")
        else:
            typer.echo("No local Kafka is running. Start one with `edgeveil kafka up`.")
        if not st.get("running"):
            raise typer.Exit(3)

    app.add_typer(group, name="kafka")
