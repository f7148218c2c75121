"""The layers contract: pipeline/ and schemas/ never import a broker client or agents/.

import-linter checks the static import graph (contracts in pyproject.toml); this test runs it so
that `pytest` alone enforces the contract, and also checks at run time that importing every
pipeline module loads no Kafka client.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_linter_contracts_hold() -> None:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is not installed (pip install import-linter)"
    proc = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "broken" not in proc.stdout.lower().replace("0 broken", "")


def test_pipeline_and_schemas_load_no_broker_client() -> None:
    code = (
        "import importlib, pkgutil, sys\n"
        "for pkg in ('schemas', 'pipeline'):\n"
        "    m = importlib.import_module(pkg)\n"
        "    for info in pkgutil.walk_packages(m.__path__, pkg + '.'):\n"
        "        importlib.import_module(info.name)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in "
        "('faust', 'kafka', 'aiokafka', 'mode', 'agents'))\n"
        "print(','.join(bad))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"broker-side modules loaded: {proc.stdout}"


def test_contract_catches_a_violation(tmp_path: Path) -> None:
    """The checker is not vacuous: a pipeline module importing kafka is reported."""
    for pkg in ("pipeline", "agents", "schemas"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "pipeline" / "leak.py").write_text("import kafka\n")
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe
    proc = subprocess.run([exe], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert proc.returncode != 0
    assert "pipeline.leak" in proc.stdout
