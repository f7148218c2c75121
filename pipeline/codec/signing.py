"""Ed25519 node keys and the aggregator's key registry.

Ed25519 (Bernstein et al. 2012, "High-speed high-security signatures"; RFC 8032) via PyNaCl.
A node signs every encoded update with its 32-byte private seed; the aggregator verifies against
the public key registered for the node id and rejects unknown nodes.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import nacl.exceptions
import nacl.signing

from pipeline.codec.exceptions import RevokedNodeError, SignatureError, UnknownNodeError

__all__ = [
    "KEY_SIZE",
    "SIGNATURE_SIZE",
    "KeyRegistry",
    "generate_keypair",
    "public_key_of",
    "sign",
    "verify",
]

logger = logging.getLogger(__name__)

KEY_SIZE = 32
SIGNATURE_SIZE = 64
_REGISTRY_FORMAT = "edgeveil.keyregistry.v1"


def generate_keypair() -> tuple[bytes, bytes]:
    """Return a new Ed25519 ``(private 32-byte seed, public 32-byte key)`` pair.

    Examples
    --------
    >>> private, public = generate_keypair()
    >>> len(private), len(public)
    (32, 32)
    """
    key = nacl.signing.SigningKey.generate()
    return bytes(key), bytes(key.verify_key)


def public_key_of(private_key: bytes) -> bytes:
    """Derive the public key of a 32-byte private seed.

    Examples
    --------
    >>> private, public = generate_keypair()
    >>> public_key_of(private) == public
    True
    """
    return bytes(_signing_key(private_key).verify_key)


def _signing_key(private_key: bytes) -> nacl.signing.SigningKey:
    if not isinstance(private_key, (bytes, bytearray)) or len(private_key) != KEY_SIZE:
        raise ValueError(f"private_key must be {KEY_SIZE} bytes (an Ed25519 seed)")
    return nacl.signing.SigningKey(bytes(private_key))


def sign(message: bytes, *, private_key: bytes) -> bytes:
    """Return the 64-byte detached Ed25519 signature of ``message``.

    Examples
    --------
    >>> private, public = generate_keypair()
    >>> len(sign(b"hello", private_key=private))
    64
    """
    return bytes(_signing_key(private_key).sign(message).signature)


def verify(message: bytes | memoryview, signature: bytes, *, public_key: bytes) -> None:
    """Check a detached signature; raise :class:`SignatureError` (``bad_signature``) if wrong.

    Examples
    --------
    >>> private, public = generate_keypair()
    >>> signature = sign(b"hi", private_key=private)
    >>> verify(b"hi", signature, public_key=public) is None  # no error: the signature matches
    True
    >>> try:
    ...     verify(b"ho", signature, public_key=public)
    ... except SignatureError as err:
    ...     print(err.reason)
    bad_signature
    """
    _verify_with(nacl.signing.VerifyKey(public_key), message, signature)


def _verify_with(
    key: nacl.signing.VerifyKey, message: bytes | memoryview, signature: bytes
) -> None:
    if len(signature) != SIGNATURE_SIZE:
        raise SignatureError("bad_signature", "signature must be 64 bytes")
    try:
        key.verify(bytes(message), bytes(signature))
    except nacl.exceptions.BadSignatureError:
        raise SignatureError("bad_signature", "Ed25519 signature does not match") from None
    except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
        raise SignatureError("bad_signature", f"signature check failed: {exc}") from None


class KeyRegistry:
    """Node id → Ed25519 public key, as known to the aggregator.

    Parameters
    ----------
    keys : Mapping[str, bytes], optional
        Initial entries.

    Examples
    --------
    >>> reg = KeyRegistry()
    >>> private, public = generate_keypair()
    >>> reg.register("node-1", public)
    >>> reg.public_key("node-1") == public, "node-1" in reg, len(reg)
    (True, True, 1)
    """

    def __init__(self, keys: dict[str, bytes] | None = None) -> None:
        self._keys: dict[str, bytes] = {}
        self._verify_keys: dict[str, nacl.signing.VerifyKey] = {}
        self._revoked: dict[str, float] = {}  # node id -> when it was revoked (epoch s)
        for node_id, key in (keys or {}).items():
            self.register(node_id, key)

    def register(self, node_id: str, public_key: bytes, *, replace: bool = False) -> None:
        """Register ``node_id``'s public key.

        Re-registering the same key is a no-op; a different key needs ``replace=True``
        (key rotation), otherwise ``ValueError``. A revoked node can be registered again only
        with ``replace=True`` (a deliberate re-enrolment with a new key).
        """
        if not isinstance(node_id, str) or not node_id:
            raise ValueError("node_id must be a non-empty str")
        if node_id in self._revoked and not replace:
            raise ValueError(f"node {node_id!r} was revoked; pass replace=True to enrol it again")
        if not isinstance(public_key, (bytes, bytearray)) or len(public_key) != KEY_SIZE:
            raise ValueError(f"public_key must be {KEY_SIZE} bytes")
        key = bytes(public_key)
        old = self._keys.get(node_id)
        if old is not None and old != key and not replace:
            raise ValueError(
                f"node {node_id!r} already has a different key; pass replace=True to rotate"
            )
        try:
            verify_key = nacl.signing.VerifyKey(key)
        except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
            raise ValueError(f"not an Ed25519 public key: {exc}") from None
        self._revoked.pop(node_id, None)
        self._keys[node_id] = key
        self._verify_keys[node_id] = verify_key
        if old is not None and old != key:
            logger.info("rotated public key of node %s", node_id)

    def unregister(self, node_id: str) -> None:
        """Forget ``node_id`` (it becomes unknown, not revoked); unknown ids are ignored."""
        self._keys.pop(node_id, None)
        self._verify_keys.pop(node_id, None)

    def revoke(self, node_id: str, *, at: float) -> bool:
        """Drop ``node_id``'s key and remember it as revoked (at epoch ``at``): its updates are
        then rejected with reason ``revoked``. Returns False when it was revoked already.

        Examples
        --------
        >>> reg = KeyRegistry({"n1": generate_keypair()[1]})
        >>> reg.revoke("n1", at=0.0), "n1" in reg, reg.is_revoked("n1")
        (True, False, True)
        """
        if node_id in self._revoked:
            return False
        self._keys.pop(node_id, None)
        self._verify_keys.pop(node_id, None)
        self._revoked[node_id] = float(at)
        return True

    def is_revoked(self, node_id: str) -> bool:
        """True when ``node_id`` was revoked."""
        return node_id in self._revoked

    @property
    def revoked(self) -> dict[str, float]:
        """Revoked node ids and when (epoch s)."""
        return dict(self._revoked)

    def sync_from(self, other: KeyRegistry) -> tuple[list[str], list[str]]:
        """Take ``other``'s keys and revocations in place (a running aggregator re-reads its
        registry file); returns the node ids added (or re-keyed) and those removed.

        The three maps are swapped whole, so a thread verifying meanwhile sees the old registry
        or the new one, never a mix of the two.
        """
        added = sorted(n for n, k in other._keys.items() if self._keys.get(n) != k)
        removed = sorted(set(self._keys) - set(other._keys))
        self._verify_keys = dict(other._verify_keys)
        self._keys = dict(other._keys)
        self._revoked = dict(other._revoked)
        return added, removed

    def _unknown(self, node_id: str) -> UnknownNodeError:
        if node_id in self._revoked:
            return RevokedNodeError("revoked", f"node {node_id!r} was revoked")
        return UnknownNodeError("unknown_node", f"no public key registered for node {node_id!r}")

    def public_key(self, node_id: str) -> bytes:
        """Return ``node_id``'s public key; raise :class:`UnknownNodeError` (a ``KeyError``),
        :class:`RevokedNodeError` for a revoked node."""
        try:
            return self._keys[node_id]
        except KeyError:
            raise self._unknown(node_id) from None

    def verify(self, node_id: str, message: bytes | memoryview, signature: bytes) -> None:
        """Verify ``signature`` by ``node_id`` over ``message``.

        Raises
        ------
        UnknownNodeError
            ``reason="unknown_node"``.
        RevokedNodeError
            ``reason="revoked"``: the node's key was revoked.
        SignatureError
            ``reason="bad_signature"``.
        """
        key = self._verify_keys.get(node_id)
        if key is None:
            raise self._unknown(node_id)
        _verify_with(key, message, signature)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._keys))

    def save(self, path: str | Path) -> None:
        """Write the registry as JSON (keys base64) atomically to ``path``.

        Examples
        --------
        >>> import tempfile, pathlib
        >>> reg = KeyRegistry({"n1": generate_keypair()[1]})
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "keys.json"
        >>> reg.save(p)
        >>> KeyRegistry.load(p).public_key("n1") == reg.public_key("n1")
        True
        """
        target = Path(path)
        doc: dict[str, object] = {
            "format": _REGISTRY_FORMAT,
            "keys": {n: base64.b64encode(k).decode("ascii") for n, k in sorted(self._keys.items())},
        }
        if self._revoked:
            doc["revoked"] = dict(sorted(self._revoked.items()))
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(doc, fh, indent=2)
                fh.write("\n")
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | Path) -> KeyRegistry:
        """Read a registry written by :meth:`save` and return it (a classmethod).

        Raises ``ValueError`` if the file is not a key registry.
        """
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        if (
            not isinstance(doc, dict)
            or doc.get("format") != _REGISTRY_FORMAT
            or not isinstance(doc.get("keys"), dict)
        ):
            raise ValueError(f"{path} is not an EdgeVeil key registry ({_REGISTRY_FORMAT})")
        reg = cls()
        for node_id, b64 in doc["keys"].items():
            reg.register(node_id, base64.b64decode(b64, validate=True))
        revoked = doc.get("revoked", {})
        if not isinstance(revoked, dict):
            raise ValueError(f"{path}: 'revoked' must map node ids to times")
        for node_id, at in revoked.items():
            reg.revoke(str(node_id), at=float(at))
        return reg
