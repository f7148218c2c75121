"""Update codec: compression, Ed25519 signatures, strict decoding, one framing for updates and
global models (``frame``, ``global_model``)."""

from pipeline.codec.codec import (
    FORMAT_VERSION,
    MAGIC,
    MAX_UPDATE_BYTES,
    decode_update,
    encode_update,
    peek_node_id,
)
from pipeline.codec.compression import Compression, dequantize, quantize
from pipeline.codec.exceptions import (
    BadMagicError,
    CodecError,
    DecompressionError,
    HeaderError,
    NonFiniteError,
    ReplayError,
    RevokedNodeError,
    ShapeMismatchError,
    SignatureError,
    StaleUpdateError,
    TooLargeError,
    TruncatedError,
    UnknownNodeError,
    UnsupportedVersionError,
)
from pipeline.codec.signing import KeyRegistry, generate_keypair, public_key_of, sign, verify

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_UPDATE_BYTES",
    "BadMagicError",
    "CodecError",
    "Compression",
    "DecompressionError",
    "HeaderError",
    "KeyRegistry",
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
    "decode_update",
    "dequantize",
    "encode_update",
    "generate_keypair",
    "peek_node_id",
    "public_key_of",
    "quantize",
    "sign",
    "verify",
]
