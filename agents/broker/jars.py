"""The Kafka distribution: the ``kafka_2.13`` jars fetched by Maven into the EdgeVeil cache.

Dev and CI machines have Java and Maven but no Docker engine, so the broker runs straight from the
jars that ``compose/kafka/pom.xml`` names. Jars and broker data live under the EdgeVeil cache
directory (``$EDGEVEIL_CACHE``, default ``~/.cache/edgeveil``), never in the clone.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

from agents.broker.errors import KafkaHarnessError
from agents.settings import cache_dir

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.1.1"
_POM = Path(__file__).resolve().parents[2] / "compose" / "kafka" / "pom.xml"


def kafka_home(version: str = KAFKA_VERSION) -> Path:
    """The cache folder that holds ``libs/`` for one Kafka version."""
    return cache_dir() / f"kafka-{version}"


def _require(tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if not path:
        raise KafkaHarnessError(f"`{tool}` is not on PATH. {hint}")
    return path


def ensure_jars(version: str = KAFKA_VERSION, *, quiet: bool = True) -> Path:
    """Return the ``libs`` folder of Kafka ``version``, fetching the jars with Maven if needed.

    Raises
    ------
    KafkaHarnessError
        Java or Maven is missing, or Maven could not fetch the jars.
    """
    _require("java", "Install a Java 17+ runtime: `apt-get install -y openjdk-17-jre-headless`.")
    libs = kafka_home(version) / "libs"
    marker = libs / ".complete"
    if marker.exists():
        return libs
    mvn = _require("mvn", "Install Maven (`apt-get install -y maven`) or run `make setup`.")
    libs.mkdir(parents=True, exist_ok=True)
    log.info("fetching Apache Kafka %s jars from Maven Central into %s", version, libs)
    cmd = [
        mvn, "-B", "-f", str(_POM), "dependency:copy-dependencies",
        f"-DoutputDirectory={libs}", f"-Dkafka.version={version}",
    ]
    if quiet:
        cmd.insert(1, "-q")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not any(libs.glob("kafka_2.13-*.jar")):
        raise KafkaHarnessError(
            f"Maven could not fetch the Kafka jars (exit {proc.returncode}). Run\n  {' '.join(cmd)}\n"
            f"by hand to see why.\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    marker.write_text(version)
    return libs
