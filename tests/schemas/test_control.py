"""The rollout control message: round trip, validation, committed JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from schemas.control import RolloutControl, write_control_schema
from schemas.messages import MessageError

JSONSCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas" / "jsonschema"


def _canary() -> RolloutControl:
    return RolloutControl(task="pedestrian-forecast", seq=3, action="promote", stable_version=4,
                          canary_version=5, canary_nodes=["a", "b"], canary_percent=10.0,
                          issued_at=12.5, issuer="ops@host")


def test_round_trip_and_version_for_each_role() -> None:
    c = _canary()
    assert RolloutControl.decode(c.encode()) == c
    assert [c.version_for(n) for n in ("a", "b", "c")] == [5, 5, 4]
    everyone = RolloutControl(task="t", seq=1, action="rollback", stable_version=2)
    assert everyone.version_for("anyone") == 2
    newest = RolloutControl(task="t", seq=1, action="promote", stable_version=None)
    assert newest.version_for("a") is None


@pytest.mark.parametrize("change", [
    {"seq": 0}, {"seq": True}, {"action": "delete"}, {"stable_version": -1},
    {"canary_version": None},  # canary nodes without a canary version
    {"canary_nodes": []},  # a canary version without nodes
    {"canary_nodes": ["a", ""]}, {"task": ""},
])
def test_invalid_commands_are_refused(change: dict) -> None:
    doc = {**json.loads(_canary().encode()), **change}
    with pytest.raises(MessageError) as err:
        RolloutControl.decode(json.dumps(doc))
    assert err.value.reason == "bad_fields"


def test_wrong_kind_and_malformed_json() -> None:
    doc = json.loads(_canary().encode())
    with pytest.raises(MessageError, match="unsupported_schema"):
        RolloutControl.decode(json.dumps({**doc, "schema": "telemetry.v1"}))
    with pytest.raises(MessageError, match="malformed_json"):
        RolloutControl.decode(b"\xff")
    with pytest.raises(MessageError, match="bad_fields"):
        RolloutControl.decode(json.dumps({**doc, "extra": 1}))


def test_committed_schema_is_current_and_validates_a_real_message(tmp_path: Path) -> None:
    import jsonschema

    path = write_control_schema(tmp_path)
    committed = JSONSCHEMA_DIR / path.name
    assert committed.exists(), "run `python -m schemas.generate`"
    assert json.loads(committed.read_text()) == json.loads(path.read_text())
    schema = json.loads(path.read_text())
    jsonschema.validate(json.loads(_canary().encode()), schema)
    for bad in ({"action": "delete"}, {"seq": 0}, {"schema": "rollout.v2"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**json.loads(_canary().encode()), **bad}, schema)
