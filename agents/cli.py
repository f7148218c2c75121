"""The ``edgeveil`` command line.

Every command group lives in ``agents/commands/<group>.py`` and adds itself through
``register(app)``; this module only assembles them.
"""

from __future__ import annotations

import importlib
import logging

import typer

app = typer.Typer(
    name="edgeveil",
    help=(
        "EdgeVeil: privacy-preserving edge AI and federated learning over Apache Kafka.\n\n"
        "Start here: `edgeveil kafka up` starts a local broker, `edgeveil demo` runs the whole "
        "system, `edgeveil COMMAND --help` explains each command."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: command modules, in the order their commands appear in --help
COMMAND_MODULES = ["kafka", "demo", "workers", "model", "fl", "anonymize"]


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at DEBUG level."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:  # the Kafka clients narrate every connection at INFO
        for noisy in ("kafka", "aiokafka", "faust", "mode"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


for _name in COMMAND_MODULES:
    importlib.import_module(f"agents.commands.{_name}").register(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
