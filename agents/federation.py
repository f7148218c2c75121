"""A federation's run directory: its configuration and its keys.

Layout of ``$EDGEVEIL_RUN_DIR`` (created by :func:`init_run_dir`, e.g. by ``edgeveil demo``)::

    federation.json            FederationConfig (task, strategy, round policy, rounds, DP budget)
    keys/registry.json         node id -> Ed25519 public key (what the aggregator trusts)
    keys/aggregator.key|.pub   the aggregator's key pair (edges verify global models with .pub)
    keys/nodes/<node>.key      each node's private key (in deployment: only on that node)
    ledgers/<node>.json        each node's privacy ledger (written by the edge)
    models/v<N>.evm            every global model as published (for notebooks and reports)

In a real deployment the private keys never share a folder; the layout keeps the demo and the
tests self-contained.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from pipeline.codec import KeyRegistry, generate_keypair, public_key_of


@dataclass(frozen=True)
class FederationConfig:
    """What the aggregator and edges of one federation agree on."""

    task: str = "pedestrian-forecast"
    task_kwargs: dict[str, Any] = field(default_factory=dict)
    strategy: str = "fedavg"
    strategy_kwargs: dict[str, Any] = field(default_factory=dict)
    mode: str = "sync"  # sync | async (FedBuff)
    quorum: int = 3
    min_quorum: int = 1
    deadline_s: float = 120.0
    buffer_size: int = 10
    max_staleness: int = 4
    rounds: int = 5
    epsilon: float = 2.0
    delta: float = 1e-5
    compression: str = "int8"
    seed: int = 0
    nodes: list[str] = field(default_factory=list)
    #: the edges' local training, overriding the task's (``None``: the task's own); e.g.
    #: ``"sgd"`` and ``0.1`` with ``strategy="fedadam"`` for pedestrian-forecast (docs/fl.md)
    local_optimizer: str | None = None
    lr: float | None = None


def run_dir() -> Path:
    """The run directory named by ``EDGEVEIL_RUN_DIR`` (an error names the variable if unset)."""
    value = os.environ.get("EDGEVEIL_RUN_DIR")
    if not value:
        raise RuntimeError(
            "EDGEVEIL_RUN_DIR is not set: point it at a federation run directory "
            "(create one with `edgeveil federation init DIR`)"
        )
    path = Path(value)
    if not (path / "federation.json").is_file():
        raise FileNotFoundError(f"{path / 'federation.json'} not found; is EDGEVEIL_RUN_DIR right?")
    return path


def load_config(path: Path | None = None) -> FederationConfig:
    """Read ``federation.json`` of ``path`` (default :func:`run_dir`)."""
    root = path or run_dir()
    data = json.loads((root / "federation.json").read_text())
    names = {f.name for f in fields(FederationConfig)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown keys in {root / 'federation.json'}: {sorted(unknown)}")
    cfg = replace(FederationConfig(), **data)
    if cfg.local_optimizer not in (None, "sgd", "adam"):
        raise ValueError(f"{root / 'federation.json'}: local_optimizer must be \"sgd\", "
                         f"\"adam\" or null, got {cfg.local_optimizer!r}")
    if cfg.lr is not None and not (isinstance(cfg.lr, (int, float)) and cfg.lr > 0):
        raise ValueError(f"{root / 'federation.json'}: lr must be > 0 or null, got {cfg.lr!r}")
    return cfg


def init_run_dir(path: Path, config: FederationConfig) -> Path:
    """Create ``path`` with ``config`` and fresh Ed25519 keys for the aggregator and every node."""
    if not config.nodes:
        raise ValueError("config.nodes is empty: name the federation's nodes")
    keys = path / "keys"
    (keys / "nodes").mkdir(parents=True, exist_ok=True)
    (path / "models").mkdir(exist_ok=True)
    (path / "ledgers").mkdir(exist_ok=True)
    registry = KeyRegistry()
    for node in config.nodes:
        priv, pub = generate_keypair()
        (keys / "nodes" / f"{node}.key").write_bytes(priv)
        registry.register(node, pub)
    registry.save(keys / "registry.json")
    priv, pub = generate_keypair()
    (keys / "aggregator.key").write_bytes(priv)
    (keys / "aggregator.pub").write_bytes(pub)
    for f in (keys / "aggregator.key", *(keys / "nodes").iterdir()):
        f.chmod(0o600)
    (path / "federation.json").write_text(json.dumps(asdict(config), indent=2))
    return path


def node_key(root: Path, node: str) -> bytes:
    """The private key of ``node``."""
    key = root / "keys" / "nodes" / f"{node}.key"
    if not key.is_file():
        raise FileNotFoundError(f"no private key for node {node!r} at {key}")
    return key.read_bytes()


def aggregator_keys(root: Path) -> tuple[bytes, bytes]:
    """(private, public) key of the aggregator."""
    priv = (root / "keys" / "aggregator.key").read_bytes()
    pub = (root / "keys" / "aggregator.pub").read_bytes()
    if public_key_of(priv) != pub:
        raise ValueError("keys/aggregator.key and keys/aggregator.pub do not belong together")
    return priv, pub


def registry(root: Path) -> KeyRegistry:
    """The node key registry the aggregator trusts."""
    return KeyRegistry.load(root / "keys" / "registry.json")
