"""Typed rejections of the update codec and admission gate.

Every error carries ``reason``, a short machine string an agent can put on the DLQ entry
(``edgeveil.dlq``), and ``detail``, a human sentence. ``reason`` values are stable API.
"""

from __future__ import annotations

from pipeline.exceptions import EdgeVeilError

__all__ = [
    "BadMagicError",
    "CodecError",
    "DecompressionError",
    "HeaderError",
    "NonFiniteError",
    "ReplayError",
    "RevokedNodeError",
    "ShapeMismatchError",
    "SignatureError",
    "StaleUpdateError",
    "TooLargeError",
    "TruncatedError",
    "UnknownNodeError",
    "UnsupportedVersionError",
]


class CodecError(EdgeVeilError):
    """An encoded update was rejected.

    Parameters
    ----------
    reason : str
        Short machine string for the DLQ (e.g. ``"bad_signature"``).
    detail : str
        Human-readable explanation.

    Examples
    --------
    >>> err = CodecError("bad_magic", "not an EdgeVeil update")
    >>> (err.reason, str(err))
    ('bad_magic', 'bad_magic: not an EdgeVeil update')
    """

    default_reason = "codec_error"

    def __init__(self, reason: str | None = None, detail: str = "") -> None:
        self.reason: str = reason or self.default_reason
        self.detail: str = detail
        super().__init__(f"{self.reason}: {detail}" if detail else self.reason)

    def __reduce__(self) -> tuple[type[CodecError], tuple[str, str]]:
        return (type(self), (self.reason, self.detail))


class TooLargeError(CodecError):
    """Input (or its declared decompressed size) exceeds the configured limit: ``too_large``."""

    default_reason = "too_large"


class BadMagicError(CodecError):
    """Input does not start with ``b"EVU"``: ``bad_magic``."""

    default_reason = "bad_magic"


class UnsupportedVersionError(CodecError):
    """Unknown frame format version or header schema version: ``unsupported_version``."""

    default_reason = "unsupported_version"


class TruncatedError(CodecError):
    """Lengths do not add up (short input, trailing bytes): ``truncated``."""

    default_reason = "truncated"


class HeaderError(CodecError):
    """The signed JSON header is not valid JSON or violates the schema: ``bad_header``."""

    default_reason = "bad_header"


class SignatureError(CodecError):
    """Signature check failed: ``bad_signature``, ``unknown_node`` or ``unsigned``."""

    default_reason = "bad_signature"


class UnknownNodeError(SignatureError, KeyError):
    """No public key is registered for the node: ``unknown_node``."""

    default_reason = "unknown_node"

    def __str__(self) -> str:  # KeyError would repr() the message
        return Exception.__str__(self)


class RevokedNodeError(UnknownNodeError):
    """The node's key was revoked (``edgeveil federation revoke``): ``revoked``."""

    default_reason = "revoked"


class DecompressionError(CodecError):
    """The payload is not one zstd frame of exactly the declared size: ``bad_payload``."""

    default_reason = "bad_payload"


class ShapeMismatchError(CodecError):
    """Tensors differ from the task's model: ``shape_mismatch``, ``dtype_mismatch`` or
    ``tensor_names``."""

    default_reason = "shape_mismatch"


class NonFiniteError(CodecError):
    """A tensor (or int8 scale) holds NaN or ±Inf: ``non_finite``."""

    default_reason = "non_finite"


class ReplayError(CodecError):
    """The (node, round) pair was already admitted (``replay``) or is older than the replay
    window remembers (``replay_window``)."""

    default_reason = "replay"


class StaleUpdateError(CodecError):
    """The update's base version is too old (``stale``) or newer than the server's
    (``future_version``)."""

    default_reason = "stale"
