"""Replay and staleness gate."""

from __future__ import annotations

import json

import pytest

from pipeline.codec import ReplayError, StaleUpdateError
from pipeline.server.admission import UpdateAdmission
from tests.pipeline.codec.conftest import UpdateFactory


def test_admit_returns_staleness(make_update: UpdateFactory) -> None:
    gate = UpdateAdmission(max_staleness=3)
    assert gate.admit(make_update(round=1, base_version=7), current_version=7) == 0
    assert gate.admit(make_update(round=2, base_version=5), current_version=7) == 2


def test_replay_rejected_with_reason(make_update: UpdateFactory) -> None:
    # Prepare
    gate = UpdateAdmission()
    gate.admit(make_update(round=3, base_version=7), current_version=7)
    # Execute / Assert: the same (node, round) again, even with other content
    with pytest.raises(ReplayError) as info:
        gate.admit(make_update(round=3, base_version=7, num_examples=1), current_version=7)
    assert info.value.reason == "replay"


def test_same_round_other_node_or_task_is_not_a_replay(make_update: UpdateFactory) -> None:
    gate = UpdateAdmission()
    assert gate.admit(make_update(round=3, base_version=7), current_version=7) == 0
    assert gate.admit(make_update(round=3, base_version=7, node_id="node-2"),
                      current_version=7) == 0
    assert gate.admit(make_update(round=3, base_version=7, task="other"), current_version=7) == 0
    assert gate.seen("node-1", task="akl-ped") == (3,)
    assert gate.seen("node-2", task="akl-ped") == (3,)
    assert gate.seen("node-1", task="other") == (3,)


def test_stale_rejected_with_reason(make_update: UpdateFactory) -> None:
    gate = UpdateAdmission(max_staleness=2)
    with pytest.raises(StaleUpdateError) as info:
        gate.admit(make_update(base_version=4), current_version=7)
    assert info.value.reason == "stale"
    with pytest.raises(StaleUpdateError) as info:
        gate.admit(make_update(base_version=8), current_version=7)
    assert info.value.reason == "future_version"


def test_synchronous_default_admits_only_current_version(make_update: UpdateFactory) -> None:
    gate = UpdateAdmission()
    with pytest.raises(StaleUpdateError):
        gate.admit(make_update(base_version=6), current_version=7)


def test_rejected_update_is_not_recorded(make_update: UpdateFactory) -> None:
    # A stale delivery must not block the node's fresh retry of the same round.
    gate = UpdateAdmission()
    with pytest.raises(StaleUpdateError):
        gate.admit(make_update(round=3, base_version=6), current_version=7)
    assert gate.admit(make_update(round=3, base_version=7), current_version=7) == 0


def test_check_does_not_record(make_update: UpdateFactory) -> None:
    gate = UpdateAdmission()
    assert gate.check(make_update(), current_version=7) == 0
    assert gate.seen("node-1", task="akl-ped") == ()
    assert gate.admit(make_update(), current_version=7) == 0  # not a replay of the check
    assert gate.seen("node-1", task="akl-ped") != ()


def test_out_of_order_rounds_within_window_are_admitted(make_update: UpdateFactory) -> None:
    gate = UpdateAdmission(max_staleness=10)
    for r in (5, 3, 4):
        gate.admit(make_update(round=r), current_version=7)
    assert gate.seen("node-1", task="akl-ped") == (3, 4, 5)


def test_window_bounds_memory_and_rejects_older_rounds(make_update: UpdateFactory) -> None:
    # Prepare
    gate = UpdateAdmission(max_staleness=0, replay_window=3)
    for r in range(10, 16):
        gate.admit(make_update(round=r), current_version=7)
    # Assert
    assert gate.seen("node-1", task="akl-ped") == (13, 14, 15)
    with pytest.raises(ReplayError) as info:
        gate.admit(make_update(round=12), current_version=7)
    assert info.value.reason == "replay_window"
    with pytest.raises(ReplayError) as info:
        gate.admit(make_update(round=14), current_version=7)
    assert info.value.reason == "replay"


def test_state_round_trips_through_json(make_update: UpdateFactory) -> None:
    # Prepare
    gate = UpdateAdmission(max_staleness=1)
    gate.admit(make_update(round=1), current_version=7)
    # Execute
    restored = UpdateAdmission(max_staleness=1)
    restored.load_state_dict(json.loads(json.dumps(gate.state_dict())))
    # Assert
    with pytest.raises(ReplayError):
        restored.admit(make_update(round=1), current_version=7)


def test_load_state_dict_rejects_foreign_state() -> None:
    gate = UpdateAdmission()
    with pytest.raises(ValueError):
        gate.load_state_dict({"kind": "other", "max_staleness": 0, "replay_window": 1, "seen": []})
    with pytest.raises(ValueError):
        gate.load_state_dict({"seen": []})


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        UpdateAdmission(max_staleness=-1)
    with pytest.raises(ValueError):
        UpdateAdmission(replay_window=0)
