"""Update codec: round trips, error bounds and strict rejection of every bad input."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pipeline.codec import (
    BadMagicError,
    CodecError,
    Compression,
    DecompressionError,
    HeaderError,
    KeyRegistry,
    NonFiniteError,
    ShapeMismatchError,
    SignatureError,
    TooLargeError,
    TruncatedError,
    UnsupportedVersionError,
    decode_update,
    encode_update,
    generate_keypair,
    peek_node_id,
)
from pipeline.codec.codec import _sign_frame
from schemas.update import ModelUpdate, json_schema
from tests.pipeline.codec.conftest import NODE, STAMP, UpdateFactory, expected_of, small_delta

KeyPair = tuple[bytes, bytes]


def _split_frame(data: bytes) -> tuple[dict[str, object], bytes]:
    """Return (header dict, payload) of a frame, for building hostile frames in tests."""
    node_len = struct.unpack(">H", data[4:6])[0]
    pos = 6 + node_len
    header_len = struct.unpack(">I", data[pos : pos + 4])[0]
    header = json.loads(data[pos + 4 : pos + 4 + header_len])
    pos += 4 + header_len
    payload_len = struct.unpack(">I", data[pos : pos + 4])[0]
    return header, data[pos + 4 : pos + 4 + payload_len]


def _assert_same_header(a: ModelUpdate, b: ModelUpdate) -> None:
    for field in (
        "node_id",
        "task",
        "round",
        "base_version",
        "num_examples",
        "schema_version",
        "created_at",
    ):
        assert getattr(a, field) == getattr(b, field), field
    assert dict(a.metrics) == dict(b.metrics)
    assert a.privacy == b.privacy
    assert list(a.delta) == list(b.delta)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("compression", list(Compression))
def test_round_trip_keeps_header_and_order(
    compression: Compression, make_update: UpdateFactory, keypair: KeyPair, registry: KeyRegistry
) -> None:
    # Prepare
    update = make_update()
    # Execute
    back = decode_update(
        encode_update(update, private_key=keypair[0], compression=compression),
        keys=registry,
        expected=expected_of(update.delta),
    )
    # Assert
    _assert_same_header(update, back)
    for name, arr in back.delta.items():
        assert (
            arr.dtype == np.float32
            and arr.shape == update.delta[name].shape
            and arr.flags.writeable
        )


def test_float32_small_case_is_exact(
    make_update: UpdateFactory, keypair: KeyPair, registry: KeyRegistry
) -> None:
    update = make_update()
    back = decode_update(
        encode_update(update, private_key=keypair[0], compression="float32"), keys=registry
    )
    for name, arr in update.delta.items():
        np.testing.assert_array_equal(back.delta[name], arr)


def test_int8_hand_case(
    make_update: UpdateFactory, keypair: KeyPair, registry: KeyRegistry
) -> None:
    # Prepare: max |x| = 2.0 -> scale = 2/127; 0.5 -> round(31.75) = 32 -> 32*2/127
    update = make_update(delta={"w": np.array([2.0, -2.0, 0.5, 0.0], np.float32)})
    # Execute
    back = decode_update(
        encode_update(update, private_key=keypair[0], compression="int8"), keys=registry
    )
    # Assert
    np.testing.assert_allclose(back.delta["w"], [2.0, -2.0, 32 * 2.0 / 127, 0.0], rtol=1e-6)


def test_int8_all_zero_and_empty_tensors(
    make_update: UpdateFactory, keypair: KeyPair, registry: KeyRegistry
) -> None:
    update = make_update(
        delta={"z": np.zeros((2, 2), np.float32), "e": np.zeros((0, 3), np.float32)}
    )
    back = decode_update(encode_update(update, private_key=keypair[0]), keys=registry)
    np.testing.assert_array_equal(back.delta["z"], np.zeros((2, 2)))
    assert back.delta["e"].shape == (0, 3)


def test_error_bounds_on_random_delta(
    make_update: UpdateFactory, keypair: KeyPair, registry: KeyRegistry
) -> None:
    # Prepare
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.05, size=(64, 100)).astype(np.float32)
    update = make_update(delta={"w": x})
    # Execute
    q8 = decode_update(
        encode_update(update, private_key=keypair[0], compression="int8"), keys=registry
    ).delta["w"]
    f16 = decode_update(
        encode_update(update, private_key=keypair[0], compression="float16"), keys=registry
    ).delta["w"]
    # Assert: int8 error <= scale/2 = max|x|/254 (plus float32 rounding); float16 relative <= 2**-11
    peak = float(np.abs(x).max())
    assert float(np.abs(q8 - x).max()) <= peak / 254 * (1 + 1e-5)
    normal = np.abs(x) >= 2.0**-14
    assert float((np.abs(f16 - x)[normal] / np.abs(x)[normal]).max()) <= 2.0**-11
    assert float(np.abs(f16 - x)[~normal].max(initial=0.0)) <= 2.0**-25


finite_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@settings(max_examples=40, deadline=None)
@given(
    arr=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
        elements=finite_f32,
    )
)
def test_float32_round_trip_is_bit_exact(arr: np.ndarray) -> None:
    private, public = _HYP_KEYS
    update = ModelUpdate(
        node_id=NODE,
        task="t",
        round=0,
        base_version=0,
        num_examples=1,
        metrics={},
        privacy=STAMP,
        delta={"x": arr},
    )
    back = decode_update(
        encode_update(update, private_key=private, compression="float32"),
        keys=KeyRegistry({NODE: public}),
    )
    assert back.delta["x"].tobytes() == np.ascontiguousarray(arr, "<f4").tobytes()


@settings(max_examples=40, deadline=None)
@given(
    arr=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=1, max_dims=2, max_side=6),
        elements=st.floats(-(2.0**100), 2.0**100, width=32),
    )
)
def test_int8_error_never_exceeds_half_a_step(arr: np.ndarray) -> None:
    private, public = _HYP_KEYS
    update = ModelUpdate(
        node_id=NODE,
        task="t",
        round=0,
        base_version=0,
        num_examples=1,
        metrics={},
        privacy=STAMP,
        delta={"x": arr},
    )
    back = decode_update(
        encode_update(update, private_key=private, compression="int8"),
        keys=KeyRegistry({NODE: public}),
    )
    peak = float(np.abs(arr.astype(np.float64)).max())
    assert (
        float(np.abs(back.delta["x"].astype(np.float64) - arr).max())
        <= peak / 254 * (1 + 1e-5) + 1e-45
    )


_HYP_KEYS = generate_keypair()


def test_header_validates_against_committed_schema(
    make_update: UpdateFactory, keypair: KeyPair
) -> None:
    data = encode_update(make_update(), private_key=keypair[0], compression="int8")
    header, payload = _split_frame(data)
    doc = {
        "magic": "EVU",
        "format_version": 1,
        "node_id": NODE,
        "header": header,
        "payload": "AA==",
        "signature": "A" * 86 + "==",
    }
    schema = json.loads(
        (
            Path(__file__).resolve().parents[3] / "schemas/jsonschema/model_update.v1.schema.json"
        ).read_text()
    )
    jsonschema.validate(doc, schema, cls=jsonschema.Draft202012Validator)
    assert schema == json_schema()


# --------------------------------------------------------------------------- encode-side checks


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_encode_refuses_non_finite(
    bad: float, make_update: UpdateFactory, keypair: KeyPair
) -> None:
    with pytest.raises(ValueError, match="NaN or Inf"):
        encode_update(
            make_update(delta={"w": np.array([1.0, bad], np.float32)}), private_key=keypair[0]
        )


def test_encode_refuses_float16_overflow_and_int_dtypes(
    make_update: UpdateFactory, keypair: KeyPair
) -> None:
    with pytest.raises(ValueError, match="overflows float16"):
        encode_update(
            make_update(delta={"w": np.array([1e5], np.float32)}),
            private_key=keypair[0],
            compression="float16",
        )
    with pytest.raises(ValueError, match="floating point"):
        encode_update(make_update(delta={"w": np.array([1, 2])}), private_key=keypair[0])
    with pytest.raises(ValueError, match="level"):
        encode_update(make_update(), private_key=keypair[0], level=0)


# --------------------------------------------------------------------------- strict decoding


def test_every_tampered_byte_is_rejected(
    make_update: UpdateFactory, keypair: KeyPair, registry: KeyRegistry
) -> None:
    # Prepare
    data = encode_update(make_update(), private_key=keypair[0], compression="int8")
    decode_update(data, keys=registry)  # the untouched frame is fine
    reasons: set[str] = set()
    # Execute / Assert: every position, two flip patterns
    for pos in range(len(data)):
        for mask in (0x01, 0xFF):
            tampered = bytearray(data)
            tampered[pos] ^= mask
            with pytest.raises(CodecError) as info:
                decode_update(bytes(tampered), keys=registry)
            reasons.add(info.value.reason)
    assert "bad_signature" in reasons and "bad_magic" in reasons
    assert len(data) < 1024


@pytest.mark.parametrize("cut", [0, 1, 3, 4, 5, 10, 40, -65, -64, -1])
def test_truncated_input(
    cut: int, make_update: UpdateFactory, keypair: KeyPair, registry: KeyRegistry
) -> None:
    data = encode_update(make_update(), private_key=keypair[0])
    with pytest.raises(TruncatedError) as info:
        decode_update(data[:cut], keys=registry)
    assert info.value.reason == "truncated"


def test_trailing_bytes(
    make_update: UpdateFactory, keypair: KeyPair, registry: KeyRegistry
) -> None:
    data = encode_update(make_update(), private_key=keypair[0])
    with pytest.raises(TruncatedError) as info:
        decode_update(data + b"\0", keys=registry)
    assert info.value.reason == "trailing_bytes"


def test_oversize_rejected_before_anything_else(
    make_update: UpdateFactory, keypair: KeyPair, registry: KeyRegistry
) -> None:
    data = encode_update(make_update(), private_key=keypair[0])
    with pytest.raises(TooLargeError) as info:
        decode_update(data, keys=registry, max_bytes=len(data) - 1)
    assert info.value.reason == "too_large"
    with pytest.raises(TooLargeError):
        decode_update(b"X" * 100, keys=registry, max_bytes=99)  # even garbage: size first
    decode_update(data, keys=registry, max_bytes=len(data))


def test_bad_magic_and_version(
    make_update: UpdateFactory, keypair: KeyPair, registry: KeyRegistry
) -> None:
    data = encode_update(make_update(), private_key=keypair[0])
    with pytest.raises(BadMagicError):
        decode_update(b"PK\x03\x04" + data[4:], keys=registry)
    with pytest.raises(UnsupportedVersionError) as info:
        decode_update(data[:3] + b"\x02" + data[4:], keys=registry)
    assert info.value.reason == "unsupported_version"


def test_unknown_node(make_update: UpdateFactory, keypair: KeyPair) -> None:
    data = encode_update(make_update(), private_key=keypair[0])
    with pytest.raises(SignatureError) as info:
        decode_update(data, keys=KeyRegistry())
    assert info.value.reason == "unknown_node"


def test_signed_by_another_key(make_update: UpdateFactory, registry: KeyRegistry) -> None:
    impostor = generate_keypair()[0]
    with pytest.raises(SignatureError) as info:
        decode_update(encode_update(make_update(), private_key=impostor), keys=registry)
    assert info.value.reason == "bad_signature"


def test_unsigned(make_update: UpdateFactory, keypair: KeyPair, registry: KeyRegistry) -> None:
    data = encode_update(make_update(), private_key=keypair[0])
    with pytest.raises(SignatureError) as info:
        decode_update(data[:-64] + bytes(64), keys=registry)
    assert info.value.reason == "unsigned"


def _resign(header: dict[str, object], payload: bytes, keypair: KeyPair) -> bytes:
    return _sign_frame(NODE, header, payload, private_key=keypair[0])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("compression", ["float32", "float16"])
def test_signed_non_finite_payload_rejected(
    bad: float,
    compression: str,
    make_update: UpdateFactory,
    keypair: KeyPair,
    registry: KeyRegistry,
) -> None:
    # Prepare: a correctly signed frame whose payload holds NaN/Inf (a buggy or hostile node)
    data = encode_update(
        make_update(delta={"w": np.array([1.0, 2.0], np.float32)}),
        private_key=keypair[0],
        compression=compression,
    )
    header, _ = _split_frame(data)
    raw = np.array([1.0, bad], "<f4" if compression == "float32" else "<f2").tobytes()
    frame = _resign(header, zstandard.ZstdCompressor().compress(raw), keypair)
    # Execute / Assert
    with pytest.raises(NonFiniteError) as info:
        decode_update(frame, keys=registry)
    assert info.value.reason == "non_finite"


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), 1e300])
def test_signed_non_finite_int8_scale_rejected(
    scale: float, make_update: UpdateFactory, keypair: KeyPair, registry: KeyRegistry
) -> None:
    data = encode_update(
        make_update(delta={"w": np.array([1.0, 2.0], np.float32)}),
        private_key=keypair[0],
        compression="int8",
    )
    header, payload = _split_frame(data)
    header["tensors"][0]["scale"] = scale  # type: ignore[index]
    with pytest.raises(NonFiniteError):
        decode_update(_resign(header, payload, keypair), keys=registry)


def test_wrong_shapes_names_and_dtype(
    make_update: UpdateFactory, keypair: KeyPair, registry: KeyRegistry
) -> None:
    # Prepare
    data = encode_update(make_update(), private_key=keypair[0])
    expected = expected_of(small_delta())
    # Execute / Assert
    wrong_shape = {**expected, "fc.bias": ((3,), "float32")}
    with pytest.raises(ShapeMismatchError) as info:
        decode_update(data, keys=registry, expected=wrong_shape)
    assert info.value.reason == "shape_mismatch"
    missing = {**expected, "fc2.bias": ((1,), "float32")}
    with pytest.raises(ShapeMismatchError) as info:
        decode_update(data, keys=registry, expected=missing)
    assert info.value.reason == "tensor_names"
    wrong_dtype = {**expected, "fc.bias": ((2,), "float64")}
    with pytest.raises(ShapeMismatchError) as info:
        decode_update(data, keys=registry, expected=wrong_dtype)
    assert info.value.reason == "dtype_mismatch"


def test_decompression_bomb_rejected(
    make_update: UpdateFactory, keypair: KeyPair, registry: KeyRegistry
) -> None:
    # Prepare: header claims 8 bytes, payload inflates to 64 MiB (with and without content size)
    data = encode_update(
        make_update(delta={"w": np.zeros(2, np.float32)}),
        private_key=keypair[0],
        compression="float32",
    )
    header, _ = _split_frame(data)
    for ctx in (zstandard.ZstdCompressor(), zstandard.ZstdCompressor(write_content_size=False)):
        bomb = ctx.compress(bytes(64 * 2**20))
        assert len(bomb) < 10_000
        # Execute / Assert
        with pytest.raises(DecompressionError) as info:
            decode_update(_resign(header, bomb, keypair), keys=registry)
        assert info.value.reason == "bad_payload"


def test_declared_size_over_limit(
    make_update: UpdateFactory, keypair: KeyPair, registry: KeyRegistry
) -> None:
    data = encode_update(
        make_update(delta={"w": np.zeros(1000, np.float32)}),
        private_key=keypair[0],
        compression="float32",
    )
    with pytest.raises(TooLargeError):
        decode_update(data, keys=registry, max_decoded_bytes=3999)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda h: h.pop("round"),
        lambda h: h.update(round=-1),
        lambda h: h.update(round=True),
        lambda h: h.update(payload_size=h["payload_size"] + 1),
        lambda h: h.update(node_id="someone-else"),
        lambda h: h["tensors"][0].update(compression="bf16"),
        lambda h: h["tensors"].append(dict(h["tensors"][0])),
        lambda h: h["privacy"].update(accountant="gdp"),
        lambda h: h.update(extra=1),
        lambda h: h.update(created_at=-1.0),
        lambda h: h["tensors"][0].update(name="a b"),
    ],
)
def test_signed_malformed_header_rejected(
    mutate: object, make_update: UpdateFactory, keypair: KeyPair, registry: KeyRegistry
) -> None:
    data = encode_update(make_update(), private_key=keypair[0])
    header, payload = _split_frame(data)
    mutate(header)  # type: ignore[operator]
    with pytest.raises(HeaderError) as info:
        decode_update(_resign(header, payload, keypair), keys=registry)
    assert info.value.reason == "bad_header"


def test_signed_non_json_header(keypair: KeyPair, registry: KeyRegistry) -> None:
    frame = _sign_frame(NODE, {}, b"", private_key=keypair[0])
    with pytest.raises(HeaderError):
        decode_update(frame, keys=registry)


def test_signed_future_schema_version(
    make_update: UpdateFactory, keypair: KeyPair, registry: KeyRegistry
) -> None:
    header, payload = _split_frame(encode_update(make_update(), private_key=keypair[0]))
    header["schema_version"] = 2
    with pytest.raises(UnsupportedVersionError):
        decode_update(_resign(header, payload, keypair), keys=registry)


def test_peek_node_id(make_update: UpdateFactory, keypair: KeyPair) -> None:
    assert peek_node_id(encode_update(make_update(), private_key=keypair[0])) == NODE
    assert peek_node_id(b"EVU\x01") is None


def test_decode_accepts_bytearray_and_memoryview(
    make_update: UpdateFactory, keypair: KeyPair, registry: KeyRegistry
) -> None:
    data = encode_update(make_update(), private_key=keypair[0])
    assert decode_update(bytearray(data), keys=registry).round == 3
    assert decode_update(memoryview(data), keys=registry).round == 3
    with pytest.raises(TypeError):
        decode_update("text", keys=registry)  # type: ignore[arg-type]


def test_errors_carry_reason_and_are_codec_errors() -> None:
    err = SignatureError("unknown_node", "x")
    assert isinstance(err, CodecError) and err.reason == "unknown_node" and "x" in str(err)


@pytest.mark.parametrize("level", [-7, -1, 1, 19])
def test_zstd_levels_round_trip(
    level: int, make_update: UpdateFactory, keypair: KeyPair, registry: KeyRegistry
) -> None:
    update = make_update()
    data = encode_update(update, private_key=keypair[0], compression="float32", level=level)
    back = decode_update(data, keys=registry)
    np.testing.assert_array_equal(back.delta["fc.weight"], update.delta["fc.weight"])


def test_encode_refuses_bad_tensor_names(make_update: UpdateFactory, keypair: KeyPair) -> None:
    with pytest.raises(ValueError, match="does not match"):
        encode_update(make_update(delta={"a b": np.zeros(1, np.float32)}), private_key=keypair[0])


def test_updates_and_global_models_share_one_framing(keypair, registry):
    """Both codecs write magic | length-prefixed sections | signature with pipeline.codec.frame,
    and both refuse bytes smuggled between the last section and the signature."""
    import numpy as np

    from pipeline.codec import CodecError, sign
    from pipeline.codec.frame import U16, U32, FrameReader
    from pipeline.codec.global_model import decode_global_model, encode_global_model
    from schemas.messages import GlobalModel, GlobalModelHeader

    priv, pub = keypair
    h = GlobalModelHeader(task="t", version=1, round=1, participants=["a"], num_examples=1,
                          strategy="fedavg", metrics={}, epsilon_by_node={}, delta=1e-5,
                          created_at=0.0)
    blob = encode_global_model(GlobalModel(h, {"w": np.ones(2, np.float32)}, b"onnx"),
                               private_key=priv)
    r = FrameReader(memoryview(blob), start=4)
    header, _weights, onnx = (bytes(r.section(U32, w)) for w in ("header", "weights", "onnx"))
    assert onnx == b"onnx" and header.startswith(b"{")
    r.signature()
    # a correctly signed global model with junk before the signature is refused
    body = blob[:-64] + b"junk"
    with pytest.raises(CodecError) as err:
        decode_global_model(body + sign(body, private_key=priv), public_key=pub)
    assert err.value.reason == "trailing_bytes"
    # the update frame: node id (u16), header (u32), payload (u32)
    frame = _sign_frame(NODE, {"a": 1}, b"pay", private_key=priv)
    r = FrameReader(memoryview(frame), start=4)
    assert bytes(r.section(U16, "node id")) == NODE.encode()
    assert bytes(r.section(U32, "header")) == b'{"a":1}'
    assert bytes(r.section(U32, "payload")) == b"pay"
    body = frame[:-64] + b"x"
    with pytest.raises(CodecError) as err:
        decode_update(body + sign(body, private_key=priv), keys=registry)
    assert err.value.reason == "trailing_bytes"
