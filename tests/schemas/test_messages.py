"""JSON messages, DLQ headers and the signed global-model codec."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.codec import CodecError, generate_keypair
from pipeline.codec.global_model import decode_global_model, encode_global_model
from schemas.messages import (
    AnalyticsRecord,
    DlqEntry,
    GlobalModel,
    GlobalModelHeader,
    MessageError,
    Telemetry,
    write_message_schemas,
)

JSONSCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas" / "jsonschema"


def _header(version: int = 3) -> GlobalModelHeader:
    return GlobalModelHeader(task="pedestrian-forecast", version=version, round=version,
                             participants=["a", "b"], num_examples=120, strategy="fedavg",
                             metrics={"mae": 12.5}, epsilon_by_node={"a": 0.4, "b": 0.5},
                             delta=1e-5, created_at=1.0, update_bytes={"a": 900, "b": 901})


def test_json_messages_round_trip_and_reject_wrong_kinds() -> None:
    t = Telemetry(node_id="n1", fps=30.0, frames_in=10, fail_closed=1, epsilon=0.5,
                  cpu_percent=40.0, rss_bytes=1000, model_version=2, ts=5.0)
    assert Telemetry.decode(t.encode()) == t
    a = AnalyticsRecord(node_id="n1", interval_start=0.0, interval_seconds=60.0,
                        counts={"person": 3}, forecast=4.5, model_version=2)
    assert AnalyticsRecord.decode(a.encode()) == a
    with pytest.raises(MessageError) as err:
        Telemetry.decode(a.encode())
    assert err.value.reason == "unsupported_schema"
    with pytest.raises(MessageError, match="malformed_json"):
        Telemetry.decode(b"\xff{")
    doc = json.loads(t.encode())
    doc["surprise"] = 1
    with pytest.raises(MessageError, match="bad_fields"):
        Telemetry.decode(json.dumps(doc))


def test_dlq_entry_travels_as_headers() -> None:
    e = DlqEntry(reason="replay", detail="node n1 round 3 seen", source_topic="edgeveil.updates",
                 partition=2, offset=41, agent="aggregator", ts=9.0)
    headers = e.to_headers()
    assert all(isinstance(v, bytes) for _, v in headers)
    assert DlqEntry.from_headers(headers) == e
    with pytest.raises(MessageError):
        DlqEntry.from_headers([("edgeveil-reason", b"x")])


def test_global_model_round_trip_and_signature() -> None:
    priv, pub = generate_keypair()
    weights = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([0.5], np.float32)}
    blob = encode_global_model(GlobalModel(_header(), weights, onnx=b"onnx-bytes"), private_key=priv)
    got = decode_global_model(blob, public_key=pub)
    assert got.header == _header()
    assert got.onnx == b"onnx-bytes"
    for k in weights:
        np.testing.assert_array_equal(got.weights[k], weights[k])
    _, other_pub = generate_keypair()
    with pytest.raises(CodecError):
        decode_global_model(blob, public_key=other_pub)
    for pos in range(0, len(blob), max(1, len(blob) // 97)):
        bad = bytearray(blob)
        bad[pos] ^= 0x01
        with pytest.raises(CodecError):
            decode_global_model(bytes(bad), public_key=pub)
    with pytest.raises(CodecError):
        decode_global_model(blob[:40], public_key=pub)


def test_global_model_refuses_non_finite_weights() -> None:
    priv, _ = generate_keypair()
    with pytest.raises(ValueError, match="non-finite"):
        encode_global_model(GlobalModel(_header(), {"w": np.array([np.nan], np.float32)}),
                            private_key=priv)


def test_committed_message_schemas_are_current(tmp_path: Path) -> None:
    for path in write_message_schemas(tmp_path):
        committed = JSONSCHEMA_DIR / path.name
        assert committed.exists(), f"run `python -m schemas.generate` ({path.name} missing)"
        assert json.loads(committed.read_text()) == json.loads(path.read_text())


def test_message_schema_validates_a_real_message(tmp_path: Path) -> None:
    import jsonschema

    (path,) = [p for p in write_message_schemas(tmp_path) if p.name.startswith("telemetry")]
    schema = json.loads(path.read_text())
    good = json.loads(Telemetry(node_id="n", fps=1.0, frames_in=1, fail_closed=0, epsilon=0.1,
                                cpu_percent=1.0, rss_bytes=1, model_version=0).encode())
    jsonschema.validate(good, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**good, "fps": "fast"}, schema)
