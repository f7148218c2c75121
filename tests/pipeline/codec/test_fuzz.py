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


def _assert_update_or_codec_error(data: bytes) -> None:
    """``data`` decodes to a ModelUpdate or raises a CodecError with a reason; nothing else."""
    try:
        update = decode_update(data, keys=_KEYS)
    except CodecError as err:
        assert err.reason and isinstance(err.reason, str)
    else:
        assert isinstance(update, ModelUpdate) and update.node_id == NODE


def _assert_codec_error(data: bytes) -> None:
    with pytest.raises(CodecError) as info:
        decode_update(data, keys=_KEYS)
    assert info.value.reason and isinstance(info.value.reason, str)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    # unsigned garbage never decodes, with or without a valid magic and version
    _assert_codec_error(data)
    _assert_codec_error(b"EVU\x01" + data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(sorted(_HEADER)), value=json_values)
def test_signed_header_with_any_json_value(key: str, value: Any) -> None:
    header = json.loads(json.dumps(_HEADER))
    header[key] = value
    _assert_update_or_codec_error(_sign_frame(NODE, header, _PAYLOAD, private_key=_PRIVATE))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    index=st.integers(0, 1),
    field=st.sampled_from(["name", "shape", "dtype", "compression", "scale"]),
    value=json_values,
)
def test_signed_tensor_spec_with_any_json_value(index: int, field: str, value: Any) -> None:
    header = json.loads(json.dumps(_HEADER))
    header["tensors"][index][field] = value
    _assert_update_or_codec_error(_sign_frame(NODE, header, _PAYLOAD, private_key=_PRIVATE))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.binary(max_size=200))
def test_signed_random_payload(payload: bytes) -> None:
    _assert_update_or_codec_error(_sign_frame(NODE, _HEADER, payload, private_key=_PRIVATE))


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


# --------------------------------------------------------------------------- every consumer
# At least FUZZ_MESSAGES generated or mutated messages per decoder the agents run on what they
# consume: updates (the aggregator's RoundCoordinator.check), global models (the edges'
# decode_global_model), telemetry (Telemetry.decode). Each must decode or be rejected with a
# typed error whose reason is one of the decoder's stable strings; anything else fails.
# Hypothesis draws the mutations; every example fuzzes a batch, so the count holds under the
# default profile in ~10 s per decoder (HYPOTHESIS_PROFILE=deep runs 10x as many).

import random  # noqa: E402

from hypothesis import settings as hsettings  # noqa: E402

from pipeline.codec import sign  # noqa: E402
from pipeline.codec.global_model import encode_global_model  # noqa: E402
from schemas.messages import (  # noqa: E402
    GlobalModel,
    GlobalModelHeader,
    MessageError,
    Telemetry,
)

FUZZ_MESSAGES = 10_000
_BATCH = 25
hsettings.register_profile("fuzz", max_examples=FUZZ_MESSAGES // _BATCH, deadline=None,
                           suppress_health_check=[HealthCheck.too_slow])
hsettings.register_profile("deep", max_examples=10 * FUZZ_MESSAGES // _BATCH, deadline=None,
                           suppress_health_check=[HealthCheck.too_slow])
_PROFILE = "deep" if __import__("os").environ.get("HYPOTHESIS_PROFILE") == "deep" else "fuzz"

UPDATE_REASONS = {"too_large", "bad_magic", "unsupported_version", "truncated", "trailing_bytes",
                  "bad_header", "bad_signature", "unknown_node", "revoked", "unsigned",
                  "bad_payload",
                  "shape_mismatch", "dtype_mismatch", "tensor_names", "non_finite", "wrong_task"}
MODEL_REASONS = {"too_large", "truncated", "bad_magic", "bad_signature", "bad_header",
                 "bad_payload", "trailing_bytes"}
MESSAGE_REASONS = {"malformed_json", "unsupported_schema", "bad_fields"}


def _mutate(rnd: random.Random, data: bytes) -> bytes:
    """One to three byte-level mutations: bit flips, truncation, insertion, deletion,
    duplication, boundary bytes."""
    b = bytearray(data)
    for _ in range(rnd.randint(1, 3)):
        op = rnd.randrange(6)
        i = rnd.randrange(len(b) + 1)
        if op == 0 and b:
            j = min(i, len(b) - 1)
            b[j] ^= 1 << rnd.randrange(8)
        elif op == 1:
            del b[i:]
        elif op == 2:
            b[i:i] = rnd.randbytes(rnd.randint(1, 16))
        elif op == 3:
            del b[i:i + rnd.randint(1, 32)]
        elif op == 4:
            b[i:i] = b[i:i + rnd.randint(1, 64)]
        elif b:
            b[min(i, len(b) - 1)] = rnd.choice([0x00, 0xFF, 0x7F, 0x80, 0x22, 0x5C, 0x7B])
    return bytes(b)


def _run(fuzz_one, corpus: list[bytes]) -> int:  # type: ignore[no-untyped-def]
    """Run ``fuzz_one(message)`` on FUZZ_MESSAGES (or more) mutants of ``corpus``; the count."""
    seen = [0]

    @hsettings(hsettings.get_profile(_PROFILE))
    @given(rnd=st.randoms(use_true_random=False), extra=json_values)
    def batch(rnd: random.Random, extra: Any) -> None:
        for _ in range(_BATCH):
            fuzz_one(_mutate(rnd, rnd.choice(corpus)), rnd, extra)
            seen[0] += 1

    batch()
    return seen[0]


def test_update_consumer_fuzz() -> None:
    from pipeline.server.rounds import RoundCoordinator, RoundPolicy
    from pipeline.server.strategies import make_strategy
    from tests.pipeline.codec.conftest import expected_of

    coord = RoundCoordinator(task="t", keys=_KEYS, expected=expected_of(small_delta()),
                             strategy=make_strategy("fedavg"), policy=RoundPolicy())
    corpus = [_FRAME, encode_update(_UPDATE, private_key=_PRIVATE, compression="float16")]

    def one(data: bytes, rnd: random.Random, extra: Any) -> None:
        candidates = [data]
        if rnd.random() < 0.5:  # re-signed: past the signature, into the parser
            header = json.loads(json.dumps(_HEADER))
            header[rnd.choice(sorted(header))] = extra
            candidates.append(_sign_frame(NODE, header, _mutate(rnd, _PAYLOAD) if rnd.random()
                                          < 0.5 else _PAYLOAD, private_key=_PRIVATE))
        for msg in candidates:
            try:
                coord.check(msg)
            except CodecError as err:
                assert err.reason in UPDATE_REASONS, err.reason

    assert _run(one, corpus) >= FUZZ_MESSAGES


def test_model_consumer_fuzz() -> None:
    import numpy as np

    from pipeline.codec.global_model import decode_global_model

    header = GlobalModelHeader(task="t", version=1, round=1, participants=["a"], num_examples=10,
                               strategy="fedavg", metrics={"mae": 1.0},
                               epsilon_by_node={"a": 0.5}, delta=1e-5, created_at=0.0)
    model = GlobalModel(header, {"w": np.ones((2, 3), np.float32), "b": np.zeros(2, np.float32)},
                        b"onnx-bytes")
    blob = encode_global_model(model, private_key=_PRIVATE)
    body = blob[:-64]
    hlen = int.from_bytes(body[4:8], "big")
    doc = json.loads(body[8:8 + hlen])

    def one(data: bytes, rnd: random.Random, extra: Any) -> None:
        candidates = [data]
        roll = rnd.random()
        if roll < 0.3:  # a mutated body, re-signed: the parser sees it
            mutated = _mutate(rnd, body)
            candidates.append(mutated + sign(mutated, private_key=_PRIVATE))
        elif roll < 0.6:  # a signed header with any JSON value in one place
            d = json.loads(json.dumps(doc))
            where = d["header"] if rnd.random() < 0.6 else rnd.choice(d["tensors"])
            where[rnd.choice(sorted(where))] = extra
            h = json.dumps(d).encode()
            forged = body[:4] + len(h).to_bytes(4, "big") + h + body[8 + hlen:]
            candidates.append(forged + sign(forged, private_key=_PRIVATE))
        for msg in candidates:
            try:
                m = decode_global_model(msg, public_key=_PUBLIC)
            except CodecError as err:
                assert err.reason in MODEL_REASONS, err.reason
            else:  # what decodes is what an edge can use
                assert isinstance(m.header.version, int) and isinstance(m.onnx, bytes)

    assert _run(one, [blob]) >= FUZZ_MESSAGES


def test_telemetry_consumer_fuzz() -> None:
    good = Telemetry(node_id="akl-01", fps=5.0, frames_in=10, fail_closed=0, epsilon=0.4,
                     cpu_percent=50.0, rss_bytes=2**20, model_version=3, ts=1.0)
    raw = good.encode()
    doc = json.loads(raw)

    def one(data: bytes, rnd: random.Random, extra: Any) -> None:
        d = json.loads(json.dumps(doc))
        d[rnd.choice([*sorted(d), "extra"])] = extra
        for msg in (data, json.dumps(d).encode()):
            try:
                t = Telemetry.decode(msg)
            except MessageError as err:
                assert err.reason in MESSAGE_REASONS, err.reason
            else:  # what decodes has the declared types (a monitor can add and compare them)
                assert isinstance(t.node_id, str) and isinstance(t.model_version, int)
                assert isinstance(t.epsilon, float | int) and not isinstance(t.epsilon, bool)

    assert _run(one, [raw]) >= FUZZ_MESSAGES
