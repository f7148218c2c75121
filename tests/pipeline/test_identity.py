"""Key files, certificates and revocation without a broker."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import pytest

from pipeline.codec import KeyRegistry, RevokedNodeError, UnknownNodeError, generate_keypair, sign
from pipeline.identity import (
    FleetPki,
    IdentityError,
    KeyPassphraseError,
    KeyPermissionError,
    certificate_cn,
    client_ssl_context,
    load_certificate,
    load_ed25519_seed,
    load_private_key,
    read_passphrase,
    write_ed25519_seed,
    write_pkcs12,
)


def test_keys_are_written_0600_and_looser_permissions_are_refused(tmp_path: Path) -> None:
    ident = FleetPki.create(tmp_path / "ca").issue("node-1")
    assert ident.key.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "ca" / "ca.key").stat().st_mode & 0o777 == 0o600
    load_private_key(ident.key)  # fine as written
    for mode in (0o640, 0o604, 0o660):
        ident.key.chmod(mode)
        with pytest.raises(KeyPermissionError) as err:
            load_private_key(ident.key)
        assert err.value.mode == mode
        assert f"chmod 600 {ident.key}" in str(err.value)
        with pytest.raises(KeyPermissionError):
            client_ssl_context(ident)


def test_an_encrypted_key_round_trips_and_a_wrong_or_missing_passphrase_is_a_clear_error(
        tmp_path: Path) -> None:
    pki = FleetPki.create(tmp_path / "ca", passphrase=b"correct horse")
    ident = pki.issue("node-1")
    assert b"ENCRYPTED PRIVATE KEY" in ident.key.read_bytes()
    key = load_private_key(ident.key, passphrase=b"correct horse")
    cert = load_certificate(ident.cert)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()
    with pytest.raises(KeyPassphraseError) as err:
        load_private_key(ident.key, passphrase=b"battery staple")
    assert err.value.reason == "wrong"
    with pytest.raises(KeyPassphraseError) as err:
        load_private_key(ident.key)
    assert err.value.reason == "missing" and "EDGEVEIL_KEY_PASSPHRASE" in str(err.value)
    # a TLS context for Python clients decrypts it too; the wrong passphrase fails before OpenSSL
    assert isinstance(client_ssl_context(ident, passphrase=b"correct horse"), ssl.SSLContext)
    with pytest.raises(KeyPassphraseError):
        client_ssl_context(ident, passphrase=b"nope")
    # the broker's form: a PKCS#12 keystore under the same passphrase
    p12 = write_pkcs12(tmp_path / "ks.p12", ident, passphrase=b"correct horse")
    from cryptography.hazmat.primitives.serialization import pkcs12

    loaded = pkcs12.load_key_and_certificates(p12.read_bytes(), b"correct horse")
    assert loaded[1] is not None and certificate_cn(loaded[1]) == "node-1"
    assert p12.stat().st_mode & 0o777 == 0o600


def test_ed25519_seed_files_plain_encrypted_and_legacy(tmp_path: Path) -> None:
    seed, _ = generate_keypair()
    plain = write_ed25519_seed(tmp_path / "a.key", seed)
    enc = write_ed25519_seed(tmp_path / "b.key", seed, passphrase=b"pw")
    assert load_ed25519_seed(plain) == seed
    assert load_ed25519_seed(enc, passphrase=b"pw") == seed
    with pytest.raises(KeyPassphraseError):
        load_ed25519_seed(enc, passphrase=b"wrong")
    legacy = tmp_path / "c.key"
    legacy.write_bytes(seed)
    legacy.chmod(0o644)
    with pytest.raises(KeyPermissionError):  # the old raw format is checked as well
        load_ed25519_seed(legacy)
    legacy.chmod(0o600)
    assert load_ed25519_seed(legacy) == seed
    with pytest.raises(IdentityError):
        load_ed25519_seed(tmp_path / "missing.key")


def test_passphrase_from_a_value_or_a_private_file(tmp_path: Path) -> None:
    f = tmp_path / "pass"
    f.write_text("s3cret\n")
    f.chmod(0o600)
    assert read_passphrase(file=f) == b"s3cret"
    assert read_passphrase("s3cret") == b"s3cret"
    f.chmod(0o644)
    with pytest.raises(KeyPermissionError):
        read_passphrase(file=f)
    with pytest.raises(ValueError):
        read_passphrase("a", f)


def test_certificates_name_their_holder_and_the_ca_signs_them(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    pki = FleetPki.create(tmp_path / "ca")
    broker = pki.issue("admin", folder=tmp_path / "broker", server_names=("127.0.0.1", "kafka"))
    node = pki.issue("akl-107-quay-street", days=30)
    ca = load_certificate(pki.ca_cert_path)
    for ident in (broker, node):
        cert = load_certificate(ident.cert)
        ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes,  # type: ignore[union-attr]
                               ec.ECDSA(cert.signature_hash_algorithm))  # type: ignore[arg-type]
        assert cert.subject.rfc4514_string() == f"CN={certificate_cn(cert)}"
    assert certificate_cn(load_certificate(node.cert)) == "akl-107-quay-street"
    left = load_certificate(node.cert).not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=29) < left <= dt.timedelta(days=30)
    with pytest.raises(ValueError):
        pki.issue("a,CN=admin")  # no principal injection through the CN
    with pytest.raises(FileExistsError):
        FleetPki.create(tmp_path / "ca")  # a CA is never overwritten


def test_registry_revocation_gives_reason_revoked_and_survives_a_reload(tmp_path: Path) -> None:
    priv, pub = generate_keypair()
    reg = KeyRegistry({"n1": pub, "n2": generate_keypair()[1]})
    assert reg.revoke("n1", at=123.0)
    assert not reg.revoke("n1", at=124.0)
    with pytest.raises(RevokedNodeError) as err:
        reg.verify("n1", b"m", sign(b"m", private_key=priv))
    assert err.value.reason == "revoked"
    with pytest.raises(UnknownNodeError) as unknown:
        reg.verify("n3", b"m", sign(b"m", private_key=priv))
    assert unknown.value.reason == "unknown_node"
    reg.save(tmp_path / "r.json")
    again = KeyRegistry.load(tmp_path / "r.json")
    assert again.revoked == {"n1": 123.0} and "n2" in again
    with pytest.raises(ValueError):
        again.register("n1", pub)  # re-enrolment must be deliberate
    # a running aggregator's registry takes the file's state in place
    live = KeyRegistry({"n1": pub, "n2": again.public_key("n2")})
    added, removed = live.sync_from(again)
    assert removed == ["n1"] and added == [] and live.is_revoked("n1")


@pytest.mark.parametrize("module", ["pipeline.identity"])
def test_examples(module: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module),
                             optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0
