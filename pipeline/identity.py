"""Fleet identities: a small CA, X.509 client certificates (CN = id) and private keys at rest.

Everything here is broker-free and runs in a notebook: the CA and the certificates are made with
the ``cryptography`` package, private keys are written as PKCS#8 PEM with mode 0600 (encrypted
with a passphrase when one is given), and a key file that group or others may read is refused
before it is opened. The Kafka side (listeners, ACLs) lives in ``agents/``; this module only makes
and reads files.

A certificate's subject is only ``CN=<id>`` so the broker's principal mapping rule
(``RULE:^CN=([^,]+)$/$1/``) turns it into ``User:<id>``.

Examples
--------
>>> import tempfile, pathlib
>>> pki = FleetPki.create(pathlib.Path(tempfile.mkdtemp()) / "tls")
>>> ident = pki.issue("node-1")
>>> certificate_cn(load_certificate(ident.cert))
'node-1'
>>> oct(ident.key.stat().st_mode & 0o777)
'0o600'
"""

from __future__ import annotations

import datetime as dt
import os
import ssl
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pipeline.exceptions import EdgeVeilError

__all__ = [
    "CertificateError",
    "FleetPki",
    "IdentityError",
    "KeyPassphraseError",
    "KeyPermissionError",
    "TlsIdentity",
    "certificate_cn",
    "check_private_file",
    "client_ssl_context",
    "issue_certificate",
    "load_certificate",
    "load_ed25519_seed",
    "load_private_key",
    "new_ca",
    "read_passphrase",
    "write_certificate",
    "write_ed25519_seed",
    "write_pkcs12",
    "write_private_key",
]

#: the only bits a private key file (or passphrase file) may have
PRIVATE_MODE = 0o600


class IdentityError(EdgeVeilError):
    """A key, certificate or passphrase file cannot be used; ``path`` names it."""

    def __init__(self, path: str | os.PathLike[str], message: str) -> None:
        self.path = Path(path)
        super().__init__(f"{self.path}: {message}")


class KeyPermissionError(IdentityError, PermissionError):
    """A private key file is readable or writable by group or others (``mode`` holds its bits)."""

    def __init__(self, path: str | os.PathLike[str], mode: int) -> None:
        self.mode = mode
        super().__init__(
            path, f"private key file has mode {mode:04o}; group and others must have no access. "
            f"Run `chmod 600 {path}` (and check who else could have read it)")


class KeyPassphraseError(IdentityError):
    """An encrypted key without a passphrase, or a wrong one (``reason``: ``missing`` or
    ``wrong``)."""

    def __init__(self, path: str | os.PathLike[str], reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(path, message)


class CertificateError(IdentityError):
    """A certificate file that is missing or not a PEM X.509 certificate."""


# --------------------------------------------------------------------------- files


def check_private_file(path: str | os.PathLike[str]) -> None:
    """Raise :class:`KeyPermissionError` if group or others have any access to ``path``.

    Examples
    --------
    >>> import tempfile, os
    >>> fd, p = tempfile.mkstemp(); os.close(fd); os.chmod(p, 0o644)
    >>> try:
    ...     check_private_file(p)
    ... except KeyPermissionError as err:
    ...     print(oct(err.mode))
    0o644
    """
    p = Path(path)
    try:
        mode = stat.S_IMODE(p.stat().st_mode)
    except FileNotFoundError:
        raise IdentityError(p, "no such key file") from None
    if mode & 0o077:
        raise KeyPermissionError(p, mode)


def _write_private(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, created 0600 (never briefly world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, PRIVATE_MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _encryption(passphrase: bytes | None) -> serialization.KeySerializationEncryption:
    if passphrase is None:
        return serialization.NoEncryption()
    if not passphrase:
        raise ValueError("an empty passphrase encrypts nothing; pass None for a plain key")
    return serialization.BestAvailableEncryption(passphrase)


def write_private_key(path: str | os.PathLike[str], key: ec.EllipticCurvePrivateKey
                      | ed25519.Ed25519PrivateKey, *, passphrase: bytes | None = None) -> Path:
    """Write ``key`` as PKCS#8 PEM with mode 0600, encrypted when ``passphrase`` is given."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            _encryption(passphrase))
    return _write_private(Path(path), pem)


def load_private_key(path: str | os.PathLike[str], *, passphrase: bytes | None = None,
                     ) -> ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey:
    """Read a PKCS#8 PEM private key after checking its permissions.

    Raises
    ------
    KeyPermissionError
        Group or others have access to the file.
    KeyPassphraseError
        The key is encrypted and no passphrase was given (``missing``), or it is wrong
        (``wrong``).
    IdentityError
        The file is missing or holds no supported private key.
    """
    p = Path(path)
    check_private_file(p)
    data = p.read_bytes()
    encrypted = b"ENCRYPTED PRIVATE KEY" in data
    if encrypted and not passphrase:
        raise KeyPassphraseError(p, "missing", "the key is encrypted; set EDGEVEIL_KEY_PASSPHRASE "
                                 "or EDGEVEIL_KEY_PASSPHRASE_FILE")
    try:
        key = serialization.load_pem_private_key(data, password=passphrase if encrypted else None)
    except ValueError as exc:
        if encrypted:
            raise KeyPassphraseError(p, "wrong", "the passphrase does not decrypt this key "
                                     "(wrong passphrase or damaged file)") from None
        raise IdentityError(p, f"not a PEM private key: {exc}") from None
    except (TypeError, UnsupportedAlgorithm) as exc:
        raise IdentityError(p, f"cannot read the private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise IdentityError(p, f"unsupported key type {type(key).__name__}")
    return key


def write_ed25519_seed(path: str | os.PathLike[str], seed: bytes, *,
                       passphrase: bytes | None = None) -> Path:
    """Write a 32-byte Ed25519 signing seed as a PKCS#8 PEM key file (0600, optionally
    encrypted).

    Examples
    --------
    >>> import tempfile, pathlib, os
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "n.key"
    >>> seed = os.urandom(32)
    >>> _ = write_ed25519_seed(p, seed, passphrase=b"s3cret")
    >>> load_ed25519_seed(p, passphrase=b"s3cret") == seed
    True
    """
    key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(seed))
    return write_private_key(path, key, passphrase=passphrase)


def load_ed25519_seed(path: str | os.PathLike[str], *, passphrase: bytes | None = None) -> bytes:
    """The 32-byte Ed25519 seed in a key file written by :func:`write_ed25519_seed`.

    A file of exactly 32 raw bytes (the format before PKCS#8) is read as the seed itself; its
    permissions are checked all the same.
    """
    p = Path(path)
    check_private_file(p)
    if p.stat().st_size == 32 and not p.read_bytes().startswith(b"-----"):
        return p.read_bytes()
    key = load_private_key(p, passphrase=passphrase)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise IdentityError(p, "not an Ed25519 key")
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())


def read_passphrase(value: str | None = None, file: str | os.PathLike[str] | None = None,
                    ) -> bytes | None:
    """The key passphrase from a value (e.g. an env var) or a file (0600, trailing newline
    dropped); ``None`` when neither is given.

    Examples
    --------
    >>> read_passphrase("correct horse")
    b'correct horse'
    >>> read_passphrase() is None
    True
    """
    if value is not None and file is not None:
        raise ValueError("give the passphrase as a value or a file, not both")
    if file is not None:
        check_private_file(file)
        data = Path(file).read_bytes().rstrip(b"\r\n")
        if not data:
            raise KeyPassphraseError(file, "missing", "the passphrase file is empty")
        return data
    if value:
        return value.encode()
    return None


def write_certificate(path: str | os.PathLike[str], cert: x509.Certificate) -> Path:
    """Write ``cert`` as PEM (0644: certificates are public)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    p.chmod(0o644)
    return p


def load_certificate(path: str | os.PathLike[str]) -> x509.Certificate:
    """Read a PEM certificate; :class:`CertificateError` if it is missing or malformed."""
    p = Path(path)
    try:
        return x509.load_pem_x509_certificate(p.read_bytes())
    except FileNotFoundError:
        raise CertificateError(p, "no such certificate file") from None
    except ValueError as exc:
        raise CertificateError(p, f"not a PEM certificate: {exc}") from None


def certificate_cn(cert: x509.Certificate) -> str:
    """The subject's common name (the principal the broker maps the certificate to)."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        raise ValueError(f"certificate subject {cert.subject.rfc4514_string()} has no single CN")
    return str(names[0].value)


# --------------------------------------------------------------------------- CA and certificates


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_ca(common_name: str = "EdgeVeil fleet CA", *, days: int = 3650,
           ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new self-signed CA (EC P-256) that may sign end-entity certificates only."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue_certificate(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
                      common_name: str, *, days: int = 365,
                      server_names: tuple[str, ...] = (),
                      not_before: dt.datetime | None = None,
                      not_after: dt.datetime | None = None,
                      ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new EC P-256 key and a certificate for ``CN=common_name`` signed by the CA.

    Every certificate may authenticate a TLS client; with ``server_names`` (DNS names or IP
    addresses) it may also serve TLS (the broker's). ``not_before``/``not_after`` override the
    validity window (tests make expired certificates with them).
    """
    import ipaddress

    if not common_name or "," in common_name or "=" in common_name:
        raise ValueError(f"common name {common_name!r} must be non-empty without ',' or '='")
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    start = not_before or now - dt.timedelta(minutes=5)
    end = not_after or now + dt.timedelta(days=days)
    if end <= start:
        raise ValueError("not_after must be after not_before")
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server_names:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False,
                                     key_cert_sign=False, crl_sign=False,
                                     content_commitment=False, data_encipherment=False,
                                     key_agreement=True, encipher_only=False,
                                     decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
    )
    if server_names:
        alt: list[x509.GeneralName] = []
        for n in server_names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                alt.append(x509.DNSName(n))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


# --------------------------------------------------------------------------- a PKI folder


@dataclass(frozen=True)
class TlsIdentity:
    """The files one party presents: the CA it trusts, its certificate and its private key."""

    name: str
    ca: Path
    cert: Path
    key: Path


class FleetPki:
    """A folder holding the fleet's CA and the identities it issued.

    Layout: ``ca.crt``, ``ca.key`` (0600), and ``<name>.crt`` / ``<name>.key`` (0600) per
    identity. Keys are encrypted with ``passphrase`` when one is given.

    Parameters
    ----------
    root
        The folder.
    passphrase
        Encrypts every private key written, and decrypts the CA key.
    """

    def __init__(self, root: str | os.PathLike[str], *, passphrase: bytes | None = None) -> None:
        self.root = Path(root)
        self.passphrase = passphrase

    @property
    def ca_cert_path(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key_path(self) -> Path:
        return self.root / "ca.key"

    @classmethod
    def create(cls, root: str | os.PathLike[str], *, passphrase: bytes | None = None,
               common_name: str = "EdgeVeil fleet CA", days: int = 3650) -> FleetPki:
        """Make a new CA in ``root`` (which must not hold one yet)."""
        pki = cls(root, passphrase=passphrase)
        if pki.ca_cert_path.exists() or pki.ca_key_path.exists():
            raise FileExistsError(f"{pki.root} already holds a CA (ca.crt / ca.key)")
        pki.root.mkdir(parents=True, exist_ok=True)
        key, cert = new_ca(common_name, days=days)
        write_private_key(pki.ca_key_path, key, passphrase=passphrase)
        write_certificate(pki.ca_cert_path, cert)
        return pki

    def ca(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = load_private_key(self.ca_key_path, passphrase=self.passphrase)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise IdentityError(self.ca_key_path, "the CA key is not an EC key")
        return key, load_certificate(self.ca_cert_path)

    def paths(self, name: str, *, folder: str | os.PathLike[str] | None = None) -> TlsIdentity:
        """Where identity ``name``'s files are (whether or not they exist yet)."""
        base = Path(folder) if folder is not None else self.root
        return TlsIdentity(name, self.ca_cert_path, base / f"{name}.crt", base / f"{name}.key")

    def issue(self, name: str, *, folder: str | os.PathLike[str] | None = None,
              server_names: tuple[str, ...] = (), days: int = 365,
              not_before: dt.datetime | None = None, not_after: dt.datetime | None = None,
              ) -> TlsIdentity:
        """Issue (or re-issue: rotation) a certificate for ``CN=name`` with a fresh key."""
        ca_key, ca_cert = self.ca()
        key, cert = issue_certificate(ca_key, ca_cert, name, days=days, server_names=server_names,
                                      not_before=not_before, not_after=not_after)
        ident = self.paths(name, folder=folder)
        write_private_key(ident.key, key, passphrase=self.passphrase)
        write_certificate(ident.cert, cert)
        return ident


def write_pkcs12(path: str | os.PathLike[str], identity: TlsIdentity, *,
                 passphrase: bytes, name: str = "kafka") -> Path:
    """Write ``identity``'s key and certificate as a PKCS#12 keystore (0600) encrypted with
    ``passphrase`` (PBES2, AES-256-CBC, PBKDF2-HMAC-SHA256).

    What a Java broker reads when its key is encrypted at rest: Kafka's PEM keystore cannot
    decrypt PBES2-encrypted PKCS#8 keys on Java 17 ("PBES2 SecretKeyFactory not available"),
    its PKCS#12 keystore can.
    """
    from cryptography.hazmat.primitives.serialization import pkcs12

    key = load_private_key(identity.key, passphrase=passphrase)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise IdentityError(identity.key, "a TLS key must be an EC key")
    encryption = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(10_000)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(passphrase)
    )
    data = pkcs12.serialize_key_and_certificates(
        name.encode(), key, load_certificate(identity.cert), [load_certificate(identity.ca)],
        encryption)
    return _write_private(Path(path), data)


def client_ssl_context(identity: TlsIdentity | None = None, *,
                       cafile: str | os.PathLike[str] | None = None,
                       certfile: str | os.PathLike[str] | None = None,
                       keyfile: str | os.PathLike[str] | None = None,
                       passphrase: bytes | None = None) -> ssl.SSLContext:
    """A TLS client context that trusts only ``cafile`` and presents ``certfile``/``keyfile``.

    The key file's permissions are checked first, and a wrong or missing passphrase gives
    :class:`KeyPassphraseError` rather than OpenSSL's bare error. The broker's certificate must
    name the host the client connects to (hostname checking stays on).
    """
    if identity is not None:
        cafile, certfile, keyfile = identity.ca, identity.cert, identity.key
    if cafile is None:
        raise ValueError("a TLS client needs the CA file that signed the broker's certificate")
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cafile))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if certfile is not None:
        if keyfile is None:
            raise ValueError("a client certificate needs its key file")
        load_private_key(keyfile, passphrase=passphrase)  # permissions, passphrase: clear errors
        ctx.load_cert_chain(str(certfile), str(keyfile),
                            password=passphrase if passphrase else None)
    return ctx
