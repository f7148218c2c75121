"""`faust -A <module> worker` runs the agents README says it does: each app module, imported
fresh in its own interpreter (as `faust -A` does), registers exactly its agents."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import importlib, json, sys
mod = importlib.import_module(sys.argv[1])
app = mod.app
app.discover()  # what `faust worker` does before it starts: imports the autodiscover list
print(json.dumps(sorted(a.name.rsplit('.', 1)[-1] for a in app.agents.values())))
"""

EXPECTED = {
    "agents.app": ["echo"],
    # the round's agent and the fleet page's consumers (agents.fleet registers them on this app)
    "agents.aggregator": ["aggregate", "fleet-control", "fleet-dlq", "fleet-telemetry"],
    "agents.edge": ["on_control", "on_model"],
}


def _agents_of(module: str) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGEVEIL_DATA_DIR": "/tmp/edgeveil-probe"}
    out = subprocess.run([sys.executable, "-c", PROBE, module], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", sorted(EXPECTED))
def test_app_module_registers_its_agents_on_a_fresh_import(module: str) -> None:
    assert _agents_of(module) == EXPECTED[module]


def test_every_worker_command_in_the_docs_names_a_module_with_agents() -> None:
    text = "\n".join(p.read_text() for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md"),
                                               *(ROOT / "compose").rglob("*.yml")])
    modules = set(re.findall(r"faust -A (agents\.[a-z_]+) worker", text))
    assert modules, "no `faust -A ... worker` command found in the docs"
    assert modules <= set(EXPECTED), f"documented worker modules without a test: {modules}"
