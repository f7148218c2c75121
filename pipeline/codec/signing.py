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

from pipeline.codec.exceptions import SignatureError, UnknownNodeError

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
    >>> verify(b"hi", sign(b"hi", private_key=private), public_key=public)  # no error
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
        for node_id, key in (keys or {}).items():
            self.register(node_id, key)

    def register(self, node_id: str, public_key: bytes, *, replace: bool = False) -> None:
        """Register ``node_id``'s public key.

        Re-registering the same key is a no-op; a different key needs ``replace=True``
        (key rotation), otherwise ``ValueError``.
        """
        if not isinstance(node_id, str) or not node_id:
            raise ValueError("node_id must be a non-empty str")
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
        self._keys[node_id] = key
        self._verify_keys[node_id] = verify_key
        if old is not None and old != key:
            logger.info("rotated public key of node %s", node_id)

    def unregister(self, node_id: str) -> None:
        """Forget ``node_id`` (revocation); unknown ids are ignored."""
        self._keys.pop(node_id, None)
        self._verify_keys.pop(node_id, None)

    def public_key(self, node_id: str) -> bytes:
        """Return ``node_id``'s public key; raise :class:`UnknownNodeError` (a ``KeyError``)."""
        try:
            return self._keys[node_id]
        except KeyError:
            raise UnknownNodeError(
                "unknown_node", f"no public key registered for node {node_id!r}"
            ) from None

    def verify(self, node_id: str, message: bytes | memoryview, signature: bytes) -> None:
        """Verify ``signature`` by ``node_id`` over ``message``.

        Raises
        ------
        UnknownNodeError
            ``reason="unknown_node"``.
        SignatureError
            ``reason="bad_signature"``.
        """
        key = self._verify_keys.get(node_id)
        if key is None:
            raise UnknownNodeError("unknown_node", f"no public key registered for node {node_id!r}")
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
        doc = {
            "format": _REGISTRY_FORMAT,
            "keys": {n: base64.b64encode(k).decode("ascii") for n, k in sorted(self._keys.items())},
        }
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
        return reg
