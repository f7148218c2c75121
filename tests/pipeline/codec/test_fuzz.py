"""Hostile input never escapes as anything but a CodecError (hypothesis)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.codec import CodecError, KeyRegistry, decode_update, encode_update, generate_keypair
from pipeline.codec.codec import _sign_frame
from schemas.update import ModelUpdate
from tests.pipeline.codec.conftest import NODE, STAMP, small_delta
from tests.pipeline.codec.test_codec import _split_frame

_PRIVATE, _PUBLIC = generate_keypair()
_KEYS = KeyRegistry({NODE: _PUBLIC})
_UPDATE = ModelUpdate(
    node_id=NODE,
    task="t",
    round=1,
    base_version=0,
    num_examples=3,
    metrics={"loss": 1.0},
    privacy=STAMP,
    delta=small_delta(),
)
_FRAME = encode_update(_UPDATE, private_key=_PRIVATE, compression="int8")
_HEADER, _PAYLOAD = _split_frame(_FRAME)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)


def _decode_or_codec_error(data: bytes) -> None:
    try:
        decode_update(data, keys=_KEYS)
    except CodecError as err:
        assert err.reason and isinstance(err.reason, str)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    _decode_or_codec_error(data)
    _decode_or_codec_error(b"EVU\x01" + data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(sorted(_HEADER)), value=json_values)
def test_signed_header_with_any_json_value(key: str, value: Any) -> None:
    header = json.loads(json.dumps(_HEADER))
    header[key] = value
    _decode_or_codec_error(_sign_frame(NODE, header, _PAYLOAD, private_key=_PRIVATE))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    index=st.integers(0, 1),
    field=st.sampled_from(["name", "shape", "dtype", "compression", "scale"]),
    value=json_values,
)
def test_signed_tensor_spec_with_any_json_value(index: int, field: str, value: Any) -> None:
    header = json.loads(json.dumps(_HEADER))
    header["tensors"][index][field] = value
    _decode_or_codec_error(_sign_frame(NODE, header, _PAYLOAD, private_key=_PRIVATE))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.binary(max_size=200))
def test_signed_random_payload(payload: bytes) -> None:
    _decode_or_codec_error(_sign_frame(NODE, _HEADER, payload, private_key=_PRIVATE))


@pytest.mark.parametrize("compression", ["float32", "float16", "int8"])
def test_header_of_every_compression_is_schema_valid(compression: str) -> None:
    import jsonschema

    from schemas.update import json_schema

    header, _ = _split_frame(encode_update(_UPDATE, private_key=_PRIVATE, compression=compression))
    doc = {
        "magic": "EVU",
        "format_version": 1,
        "node_id": NODE,
        "header": header,
        "payload": "",
        "signature": "A" * 86 + "==",
    }
    jsonschema.validate(doc, json_schema(), cls=jsonschema.Draft202012Validator)
    assert header["payload_size"] == 4 * 8 // {"float32": 1, "float16": 2, "int8": 4}[compression]
