"""A federation's run directory: its configuration and its keys.

Layout of ``$EDGEVEIL_RUN_DIR`` (created by :func:`init_run_dir`, e.g. by ``edgeveil demo``)::

    federation.json            the FederationPlan (pipeline.plan: task, strategy, round policy,
                               DP budget, local training, personalisation, seed)
    keys/registry.json         node id -> Ed25519 public key (what the aggregator trusts), and the
                               revoked node ids (``edgeveil federation revoke``)
    keys/aggregator.key|.pub   the aggregator's key pair (edges verify global models with .pub)
    keys/nodes/<node>.key      each node's private key (in deployment: only on that node)
    tls/ca.crt|ca.key          the fleet's CA (pipeline.identity)
    tls/<party>.crt|.key       X.509 client certificates, CN = id: admin, aggregator, reader, and
                               broker (CN = admin, also a server certificate for the broker)
    tls/nodes/<node>.crt|.key  each node's certificate (CN = node id)
    ledgers/<node>.ledger.json each node's privacy ledger (written by the edge)
    personal/<node>.npz        each node's personalised weights, when the plan personalises
                               (written by the edge; they never leave it)
    models/v<N>.evm            every global model as published (for notebooks and reports)

Private keys (Ed25519 and TLS) are PKCS#8 PEM files with mode 0600, encrypted when a passphrase is
given (``EDGEVEIL_KEY_PASSPHRASE`` or ``EDGEVEIL_KEY_PASSPHRASE_FILE``); a key file that group or
others can read is refused. In a real deployment the private keys never share a folder; the
layout keeps the demo and the tests self-contained.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from agents.settings import Settings, load_settings
from pipeline.codec import KeyRegistry, generate_keypair, public_key_of
from pipeline.identity import FleetPki, TlsIdentity, load_ed25519_seed, write_ed25519_seed
from pipeline.plan import FederationPlan

#: the parties besides the nodes that get a certificate (CN = the name)
ADMIN = "admin"
AGGREGATOR = "aggregator"
READER = "reader"
BROKER = "broker"
#: the names a broker's certificate is valid for (loopback, and the compose service)
BROKER_NAMES = ("127.0.0.1", "localhost", "kafka")


def run_dir() -> Path:
    """The run directory named by ``EDGEVEIL_RUN_DIR`` (an error names the variable if unset)."""
    value = load_settings().run_dir
    if not value:
        raise RuntimeError(
            "EDGEVEIL_RUN_DIR is not set: point it at a federation run directory "
            "(create one with `edgeveil federation init DIR`)"
        )
    path = Path(value)
    if not (path / "federation.json").is_file():
        raise FileNotFoundError(f"{path / 'federation.json'} not found; is EDGEVEIL_RUN_DIR right?")
    return path


def load_config(path: Path | None = None) -> FederationPlan:
    """Read the plan in ``federation.json`` of ``path`` (default :func:`run_dir`); a
    ``ValueError`` names the file and every bad field."""
    return FederationPlan.load(path or run_dir())


def init_run_dir(path: Path, config: FederationPlan, *, passphrase: bytes | None = None,
                 ca_dir: Path | None = None, cert_days: int = 365) -> Path:
    """Create ``path`` with ``config``, fresh Ed25519 keys and TLS certificates.

    The CA is made in ``path/tls`` unless ``ca_dir`` names an existing one (a fleet whose
    broker already trusts that CA); each node, the aggregator, the read-only ``reader`` and the
    ``admin`` get a client certificate whose CN is their id, and the broker a server certificate
    (CN ``admin``: the only super user). With ``passphrase`` every private key is encrypted.
    """
    if not config.nodes:
        raise ValueError("config.nodes is empty: name the federation's nodes")
    if config.local_head:
        raise ValueError("local_head is simulation-only for now: an edge worker keeps a node's "
                         "head in memory, so a restart would lose it")
    if config.epsilon is None:
        raise ValueError("the plan has no privacy budget (epsilon is null): a federation "
                         "publishes only DP-noised updates")
    reserved = {ADMIN, AGGREGATOR, READER, BROKER} & set(config.nodes)
    if reserved:
        raise ValueError(f"node ids {sorted(reserved)} are reserved for the fleet's own parties")
    keys = path / "keys"
    (keys / "nodes").mkdir(parents=True, exist_ok=True)
    (path / "models").mkdir(exist_ok=True)
    (path / "ledgers").mkdir(exist_ok=True)
    registry = KeyRegistry()
    for node in config.nodes:
        priv, pub = generate_keypair()
        write_ed25519_seed(keys / "nodes" / f"{node}.key", priv, passphrase=passphrase)
        registry.register(node, pub)
    registry.save(keys / "registry.json")
    priv, pub = generate_keypair()
    write_ed25519_seed(keys / "aggregator.key", priv, passphrase=passphrase)
    (keys / "aggregator.pub").write_bytes(pub)
    _init_tls(path / "tls", config.nodes, passphrase=passphrase, ca_dir=ca_dir, days=cert_days)
    (path / "federation.json").write_text(config.to_json())
    return path


def _init_tls(tls: Path, nodes: list[str], *, passphrase: bytes | None, ca_dir: Path | None,
              days: int) -> None:
    if ca_dir is not None:
        ca = FleetPki(ca_dir, passphrase=passphrase)
        ca.ca()  # readable with this passphrase?
        tls.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ca.ca_cert_path, tls / "ca.crt")
    else:
        ca = FleetPki.create(tls, passphrase=passphrase)
    for name in (ADMIN, AGGREGATOR, READER):
        ca.issue(name, folder=tls, days=days)
    ca.issue(ADMIN, folder=tls / BROKER, server_names=BROKER_NAMES, days=days)
    for node in nodes:
        ca.issue(node, folder=tls / "nodes", days=days)


def tls_identity(root: Path, party: str) -> TlsIdentity:
    """The TLS files of ``party`` (a node id, ``aggregator``, ``reader``, ``admin`` or
    ``broker``) in run directory ``root``."""
    tls = root / "tls"
    if party == BROKER:
        folder, cn = tls / BROKER, ADMIN
    elif party in (ADMIN, AGGREGATOR, READER):
        folder, cn = tls, party
    else:
        folder, cn = tls / "nodes", party
    ident = TlsIdentity(party, tls / "ca.crt", folder / f"{cn}.crt", folder / f"{cn}.key")
    if not ident.cert.is_file():
        raise FileNotFoundError(f"no certificate for {party!r} at {ident.cert}; "
                                "was the run directory made by `edgeveil federation init`?")
    return ident


def client_env(root: Path, party: str) -> dict[str, str]:
    """The ``EDGEVEIL_*`` variables that make a process connect over mutual TLS as ``party``."""
    ident = tls_identity(root, party)
    return {"EDGEVEIL_SECURITY_PROTOCOL": "SSL", "EDGEVEIL_SSL_CAFILE": str(ident.ca),
            "EDGEVEIL_SSL_CERTFILE": str(ident.cert), "EDGEVEIL_SSL_KEYFILE": str(ident.key)}


def client_settings(root: Path, party: str, *, base: Settings | None = None) -> Settings:
    """``base`` (default: :func:`agents.settings.load_settings`) connecting as ``party``."""
    ident = tls_identity(root, party)
    return replace(base or load_settings(), security_protocol="SSL", ssl_cafile=str(ident.ca),
                   ssl_certfile=str(ident.cert), ssl_keyfile=str(ident.key))


def admin_settings(root: Path, *, base: Settings | None = None, always: bool = False,
                   ) -> Settings:
    """The operator's settings: on a secured cluster (or ``always``, for the security commands)
    the run's admin certificate, unless the settings name a certificate of their own."""
    settings = base or load_settings()
    if settings.ssl_certfile or not (always or settings.secured):
        return settings
    return client_settings(root, ADMIN, base=settings)


def pki(root: Path, *, passphrase: bytes | None = None) -> FleetPki:
    """The run directory's CA (to issue or rotate certificates)."""
    return FleetPki(root / "tls", passphrase=passphrase)


def edge_group(node: str) -> str:
    """The consumer group (= faust app id) of an edge worker that authenticates as ``node``;
    its ACLs allow that group only."""
    return f"edgeveil-{node}-edge"


def node_key(root: Path, node: str, *, passphrase: bytes | None = None) -> bytes:
    """The Ed25519 private seed of ``node`` (its key file's permissions checked first)."""
    key = root / "keys" / "nodes" / f"{node}.key"
    if not key.is_file():
        raise FileNotFoundError(f"no private key for node {node!r} at {key}")
    return load_ed25519_seed(key, passphrase=passphrase)


def aggregator_public_key(root: Path) -> bytes:
    """The aggregator's public key (what edges, the demo and notebooks verify models with)."""
    return (root / "keys" / "aggregator.pub").read_bytes()


def aggregator_keys(root: Path, *, passphrase: bytes | None = None) -> tuple[bytes, bytes]:
    """(private, public) key of the aggregator."""
    priv = load_ed25519_seed(root / "keys" / "aggregator.key", passphrase=passphrase)
    pub = aggregator_public_key(root)
    if public_key_of(priv) != pub:
        raise ValueError("keys/aggregator.key and keys/aggregator.pub do not belong together")
    return priv, pub


def registry_path(root: Path) -> Path:
    return root / "keys" / "registry.json"


def registry(root: Path) -> KeyRegistry:
    """The node key registry the aggregator trusts."""
    return KeyRegistry.load(registry_path(root))


def active_nodes(root: Path) -> list[str]:
    """The federation's nodes minus the revoked ones (whose ACLs must not come back)."""
    reg = registry(root)
    return [n for n in load_config(root).nodes if not reg.is_revoked(n)]


def revoke_key(root: Path, node: str, *, at: float) -> bool:
    """Take ``node``'s key out of the registry and mark it revoked (a running aggregator reloads
    the file within a second). False when it was revoked already; ``KeyError`` for an id the
    federation does not have."""
    reg = registry(root)
    if node not in reg and not reg.is_revoked(node):
        raise KeyError(f"node {node!r} is not in {registry_path(root)}")
    changed = reg.revoke(node, at=at)
    if changed:
        reg.save(registry_path(root))
    return changed


def rotate_node(root: Path, node: str, *, passphrase: bytes | None = None,
                days: int = 365) -> TlsIdentity:
    """Give ``node`` a new Ed25519 key (registered in place of the old one) and a new TLS key
    and certificate from the run's CA. The old certificate stays valid until it expires (the
    broker checks no revocation list): see docs/security.md."""
    reg = registry(root)
    if node not in reg:
        raise KeyError(f"node {node!r} has no key in {registry_path(root)} (revoked or unknown)")
    priv, pub = generate_keypair()
    write_ed25519_seed(root / "keys" / "nodes" / f"{node}.key", priv, passphrase=passphrase)
    reg.register(node, pub, replace=True)
    reg.save(registry_path(root))
    return pki(root, passphrase=passphrase).issue(node, folder=root / "tls" / "nodes", days=days)
