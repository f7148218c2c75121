"""Binary codec of global models (``edgeveil.models``), signed by the aggregator.

Frame (:mod:`pipeline.codec.frame`, the framing updates use too): ``b"EVM"`` + format byte, header (u32 length + canonical JSON of
:class:`~schemas.messages.GlobalModelHeader` plus the tensor table), weights (u32 length + zstd of
the concatenated float32 little-endian tensors), ONNX (u32 length + bytes), then a 64-byte Ed25519
signature over everything before it. Edges refuse a model whose signature does not verify against
the aggregator's public key: a forged model must never be hot-swapped into a camera.

Examples
--------
>>> import numpy as np
>>> from pipeline.codec import generate_keypair
>>> from schemas.messages import GlobalModel, GlobalModelHeader, check_fields
>>> priv, pub = generate_keypair()
>>> h = GlobalModelHeader(task="t", version=1, round=1, participants=["a"], num_examples=10,
...                       strategy="fedavg", metrics={}, epsilon_by_node={"a": 0.5}, delta=1e-5,
...                       created_at=0.0)
>>> blob = encode_global_model(GlobalModel(h, {"w": np.ones(3, np.float32)}), private_key=priv)
>>> decode_global_model(blob, public_key=pub).weights["w"].tolist()
[1.0, 1.0, 1.0]
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping

import numpy as np
import zstandard

from pipeline.codec import verify
from pipeline.codec.exceptions import CodecError
from pipeline.codec.frame import U32, FrameReader, pack_frame
from schemas.messages import GlobalModel, GlobalModelHeader, check_fields

__all__ = ["GLOBAL_MAGIC", "decode_global_model", "encode_global_model"]

GLOBAL_MAGIC = b"EVM\x01"
_MAX_BYTES = 64 * 2**20
_SIG = 64


def encode_global_model(model: GlobalModel, *, private_key: bytes, level: int = 3) -> bytes:
    """Encode and sign ``model`` with the aggregator's Ed25519 ``private_key``."""
    tensors = []
    chunks = []
    for name, arr in model.weights.items():
        a = np.ascontiguousarray(arr, dtype="<f4")
        if not np.isfinite(a).all():
            raise ValueError(f"global model tensor {name!r} has non-finite values")
        tensors.append({"name": name, "shape": list(a.shape)})
        chunks.append(a.tobytes())
    header = {"header": dataclasses.asdict(model.header), "tensors": tensors}
    hbytes = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    payload = zstandard.ZstdCompressor(level=level).compress(b"".join(chunks))
    return pack_frame(GLOBAL_MAGIC, [(U32, hbytes), (U32, payload), (U32, model.onnx)],
                      private_key=private_key)


def decode_global_model(data: bytes, *, public_key: bytes, max_bytes: int = _MAX_BYTES) -> GlobalModel:
    """Verify and decode a global model; raise :class:`~pipeline.codec.CodecError` if anything is off."""
    if len(data) > max_bytes:
        raise CodecError("too_large", f"{len(data)} bytes > limit {max_bytes}")
    if len(data) < len(GLOBAL_MAGIC) + 12 + _SIG:
        raise CodecError("truncated", f"only {len(data)} bytes")
    if data[:4] != GLOBAL_MAGIC:
        raise CodecError("bad_magic", f"expected {GLOBAL_MAGIC!r}, got {bytes(data[:4])!r}")
    frame = FrameReader(memoryview(data), start=len(GLOBAL_MAGIC))
    # the signature covers every byte before it: verify before parsing anything
    verify(bytes(frame.body), bytes(data[-_SIG:]), public_key=public_key)
    header_raw = frame.section(U32, "header")
    payload = frame.section(U32, "weights")
    onnx = bytes(frame.section(U32, "ONNX model"))
    frame.signature()  # no byte between the last section and the signature
    try:
        doc = json.loads(bytes(header_raw))
        check_fields(GlobalModelHeader, doc["header"])
        header = GlobalModelHeader(**doc["header"])
        specs = _tensor_specs(doc["tensors"])
    except (KeyError, TypeError, ValueError, RecursionError) as exc:
        raise CodecError("bad_header", str(exc)) from None
    expected = sum(math.prod(shape) for _, shape in specs) * 4
    if expected > max_bytes * 64:  # zstd could not have shrunk real float32 weights that much
        raise CodecError("too_large", f"header declares {expected} bytes of tensors")
    try:
        raw = zstandard.ZstdDecompressor().decompress(bytes(payload), max_output_size=expected)
    except zstandard.ZstdError as exc:
        raise CodecError("bad_payload", f"weights do not decompress: {exc}") from None
    if len(raw) != expected:
        raise CodecError("bad_payload", f"{len(raw)} bytes of tensors, expected {expected}")
    weights: dict[str, np.ndarray] = {}
    off = 0
    for name, shape in specs:
        n = math.prod(shape)
        weights[name] = np.frombuffer(raw, dtype="<f4", count=n, offset=off).reshape(shape).copy()
        off += n * 4
    return GlobalModel(header=header, weights=weights, onnx=onnx)


def _tensor_specs(specs: object) -> list[tuple[str, list[int]]]:
    """The tensor table of a signed header, checked: unique str names, shapes of ints >= 0."""
    if not isinstance(specs, list):
        raise ValueError("tensors must be a list")
    names: set[str] = set()
    out: list[tuple[str, list[int]]] = []
    for s in specs:
        if not isinstance(s, dict) or set(s) != {"name", "shape"}:
            raise ValueError(f"tensor spec {s!r} must be {{name, shape}}")
        name, shape = s["name"], s["shape"]
        if not isinstance(name, str) or name in names:
            raise ValueError(f"tensor name {name!r} is not a new str")
        if (not isinstance(shape, list) or len(shape) > 8
                or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31
                           for d in shape)):
            raise ValueError(f"tensor {name!r} shape {shape!r} is not a list of ints >= 0")
        names.add(name)
        out.append((name, [int(d) for d in shape]))
    return out


def weights_close(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], *, atol: float = 0.0) -> bool:
    """True when ``a`` and ``b`` have the same names, shapes and values (within ``atol``)."""
    return a.keys() == b.keys() and all(
        a[k].shape == b[k].shape and np.allclose(a[k], b[k], atol=atol, rtol=0) for k in a
    )
