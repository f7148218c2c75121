"""A run directory's keys and certificates: encrypted at rest, 0600, checked when used."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agents import federation
from pipeline.codec import public_key_of
from pipeline.identity import (
    KeyPassphraseError,
    KeyPermissionError,
    certificate_cn,
    load_certificate,
)


def test_run_dir_with_an_encrypted_keyring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = federation.FederationPlan(nodes=["n1", "n2"])
    root = federation.init_run_dir(tmp_path / "run", cfg, passphrase=b"pw")
    for key in [*root.glob("keys/**/*.key"), *root.glob("tls/**/*.key")]:
        assert key.stat().st_mode & 0o777 == 0o600, key
        assert b"ENCRYPTED PRIVATE KEY" in key.read_bytes(), key
    seed = federation.node_key(root, "n1", passphrase=b"pw")
    assert federation.registry(root).public_key("n1") == public_key_of(seed)
    with pytest.raises(KeyPassphraseError):
        federation.node_key(root, "n1")
    priv, pub = federation.aggregator_keys(root, passphrase=b"pw")
    assert federation.aggregator_public_key(root) == pub
    for party in ("n1", federation.AGGREGATOR, federation.READER, federation.ADMIN):
        assert certificate_cn(load_certificate(federation.tls_identity(root, party).cert)) == (
            party)
    assert certificate_cn(load_certificate(federation.tls_identity(root, "broker").cert)) == "admin"
    # the settings of a worker refuse a group-readable key with the reason
    from agents.settings import load_settings

    env = federation.client_env(root, "n1")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("EDGEVEIL_KEY_PASSPHRASE", "pw")
    assert load_settings().ssl_context() is not None
    Path(env["EDGEVEIL_SSL_KEYFILE"]).chmod(0o644)
    with pytest.raises(KeyPermissionError):
        load_settings().kafka_python_security()
    with pytest.raises(ValueError):
        federation.init_run_dir(tmp_path / "bad", federation.FederationPlan(nodes=["admin"]))
    # a second init refuses to overwrite the CA
    with pytest.raises(FileExistsError):
        federation.init_run_dir(root, cfg, passphrase=b"pw")
    assert os.environ["EDGEVEIL_SECURITY_PROTOCOL"] == "SSL"


@pytest.mark.parametrize("module", ["agents.acls", "agents.topics"])
def test_examples(module: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module),
                             optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0


def test_revoke_and_rotate_in_the_run_directory(tmp_path: Path) -> None:
    from agents import acls

    root = federation.init_run_dir(tmp_path / "run", federation.FederationPlan(nodes=["n1", "n2"]))
    old_seed = federation.node_key(root, "n2")
    old_cert = federation.tls_identity(root, "n2").cert.read_bytes()
    ident = federation.rotate_node(root, "n2")
    new_seed = federation.node_key(root, "n2")
    assert new_seed != old_seed and ident.cert.read_bytes() != old_cert
    assert federation.registry(root).public_key("n2") == public_key_of(new_seed)
    assert certificate_cn(load_certificate(ident.cert)) == "n2"
    assert federation.revoke_key(root, "n1", at=1.0)
    assert not federation.revoke_key(root, "n1", at=2.0)
    reg = federation.registry(root)
    assert reg.is_revoked("n1") and "n1" not in reg and "n2" in reg
    with pytest.raises(KeyError):
        federation.revoke_key(root, "n9", at=1.0)
    with pytest.raises(KeyError):
        federation.rotate_node(root, "n1")  # revoked: re-enrol under a new id instead
    # the ACL plan of the demo's 21 nodes (README): 16 per node, 16 aggregator, 12 reader
    nodes = [f"node-{i}" for i in range(21)]
    assert len(acls.federation_acls(nodes, aggregator_app_id="demo-aggregator")) == 364


def test_workers_take_their_identity_from_the_run_dir_on_a_secured_cluster(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agents.commands.workers import _identity_env

    root = federation.init_run_dir(tmp_path / "run", federation.FederationPlan(nodes=["n1"]))
    for var in ("EDGEVEIL_SECURITY_PROTOCOL", "EDGEVEIL_SSL_CERTFILE", "EDGEVEIL_APP_ID"):
        monkeypatch.delenv(var, raising=False)
    assert _identity_env(root, "n1", edge_group="edgeveil-n1-edge") == {}  # plaintext
    monkeypatch.setenv("EDGEVEIL_SECURITY_PROTOCOL", "SSL")
    env = _identity_env(root, "n1", edge_group=federation.edge_group("n1"))
    assert env["EDGEVEIL_SSL_CERTFILE"] == str(federation.tls_identity(root, "n1").cert)
    assert env["EDGEVEIL_APP_ID"] == "edgeveil-n1-edge"
    monkeypatch.setenv("EDGEVEIL_APP_ID", "mine")  # the user's own choices win
    monkeypatch.setenv("EDGEVEIL_SSL_CERTFILE", "/elsewhere/n1.crt")
    assert _identity_env(root, "n1", edge_group="edgeveil-n1-edge") == {}


def test_the_admin_creates_exactly_the_changelogs_the_aggregator_app_writes() -> None:
    """On a secured cluster no worker may create topics: the admin's list of the aggregator's
    changelog topics (agents.topics.changelog_topics) must match the app's real tables."""
    from agents import aggregator
    from agents.topics import changelog_topics

    app = aggregator.app
    real = {t.changelog_topic.get_topic_name(): t.partitions for t in app.tables.values()}
    planned = {t.name: t.partitions for t in changelog_topics(app.conf.id)}
    assert real == planned
