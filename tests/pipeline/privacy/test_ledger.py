"""Privacy ledger: pinned ε, monotonicity, durability across crashes, budget gate, corruption."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant, RDPAccountant

from pipeline.privacy.accounting import compute_epsilon
from pipeline.privacy.ledger import (
    BudgetExceededError,
    LedgerCorruptError,
    LedgerEntry,
    PrivacyLedger,
    ledger_path,
    load_ledgers,
)

DELTA = 1e-5


def _open(path: Path, budget: float = 10.0, mechanism: str = "prv") -> PrivacyLedger:
    return PrivacyLedger.open(path, node_id="n1", budget=budget, delta=DELTA,
                              mechanism=mechanism)  # type: ignore[arg-type]


@pytest.mark.parametrize("mechanism, accountant_cls, pinned", [
    ("rdp", RDPAccountant, 1.2141),
    ("prv", PRVAccountant, 0.7281),
])
def test_epsilon_pinned_against_opacus(mechanism, accountant_cls, pinned):  # type: ignore[no-untyped-def]
    # Prepare
    ledger = PrivacyLedger(node_id="n1", budget=10, delta=DELTA, mechanism=mechanism)
    acc = accountant_cls()
    # Execute: 100 steps through the ledger one by one, and directly in Opacus
    for _ in range(100):
        ledger.step(noise_multiplier=1.0, sample_rate=0.01)
    acc.history = [(1.0, 0.01, 100)]
    # Assert
    assert ledger.epsilon() == pytest.approx(acc.get_epsilon(delta=DELTA), rel=1e-9)
    assert ledger.epsilon() == pytest.approx(pinned, abs=2e-4)


def test_heterogeneous_history_matches_opacus():  # type: ignore[no-untyped-def]
    ledger = PrivacyLedger(node_id="n1", budget=10, delta=DELTA, mechanism="rdp")
    for nm, q, s in [(1.0, 0.02, 10), (1.5, 0.01, 20), (1.0, 0.02, 5)]:
        ledger.step(noise_multiplier=nm, sample_rate=q, steps=s)
        ledger.flush()
    acc = RDPAccountant()
    acc.history = [(1.0, 0.02, 10), (1.5, 0.01, 20), (1.0, 0.02, 5)]
    assert ledger.epsilon() == pytest.approx(acc.get_epsilon(delta=DELTA), rel=1e-9)


@settings(max_examples=10, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1.0, 1.3, 2.0]),
                          st.sampled_from([0.005, 0.01, 0.05]),
                          st.integers(1, 50)), min_size=1, max_size=4))
def test_epsilon_monotone_as_entries_are_appended(entries):  # type: ignore[no-untyped-def]
    history: list[LedgerEntry] = []
    previous = 0.0
    for nm, q, s in entries:
        history.append(LedgerEntry(nm, q, s))
        eps = compute_epsilon(history, delta=DELTA, mechanism="rdp")
        assert eps >= previous - 1e-12
        previous = eps


@settings(max_examples=5, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=2, max_size=4))
def test_prv_epsilon_monotone(steps):  # type: ignore[no-untyped-def]
    history: list[LedgerEntry] = []
    previous = 0.0
    for s in steps:
        history.append(LedgerEntry(1.0, 0.02, s))
        eps = compute_epsilon(history, delta=DELTA, mechanism="prv")
        assert eps >= previous - 1e-9
        previous = eps


def test_epsilon_never_decreases_across_crash_and_restart(tmp_path):  # type: ignore[no-untyped-def]
    path = tmp_path / "n1.ledger.json"
    ledger = _open(path)
    ledger.step(noise_multiplier=1.0, sample_rate=0.02, steps=30)
    published = ledger.check_publish()  # flushes before "publishing"
    # crash: unflushed steps of an update that was never published are lost, nothing else
    ledger.step(noise_multiplier=1.0, sample_rate=0.02, steps=30)
    del ledger
    restarted = _open(path)
    assert restarted.epsilon() == pytest.approx(published)
    restarted.step(noise_multiplier=1.0, sample_rate=0.02, steps=30)
    assert restarted.check_publish() > published
    again = _open(path)
    assert again.epsilon() >= published
    assert again.total_steps == 60


def test_flush_is_atomic_and_leaves_no_temp_files(tmp_path):  # type: ignore[no-untyped-def]
    path = tmp_path / "n1.ledger.json"
    ledger = _open(path)
    for _ in range(3):
        ledger.step(noise_multiplier=1.0, sample_rate=0.02, steps=1)
        ledger.flush()
    assert [p.name for p in tmp_path.iterdir()] == ["n1.ledger.json"]
    assert json.loads(path.read_text())["history"] == [[1.0, 0.02, 1]] * 3


def test_durable_entries_are_never_rewritten(tmp_path):  # type: ignore[no-untyped-def]
    ledger = _open(tmp_path / "l.json")
    ledger.step(noise_multiplier=1.0, sample_rate=0.02, steps=5)
    ledger.step(noise_multiplier=1.0, sample_rate=0.02, steps=5)  # merged: not durable yet
    assert len(ledger.history) == 1
    ledger.flush()
    ledger.step(noise_multiplier=1.0, sample_rate=0.02, steps=5)
    assert len(ledger.history) == 2 and not ledger.is_durable


def test_budget_exhaustion_blocks_training(tmp_path):  # type: ignore[no-untyped-def]
    ledger = _open(tmp_path / "l.json", budget=0.8)
    ok = ledger.check_round(noise_multiplier=1.0, sample_rate=0.01, steps=100)
    assert ok < 1.0
    ledger.step(noise_multiplier=1.0, sample_rate=0.01, steps=100)
    with pytest.raises(BudgetExceededError) as err:
        ledger.check_round(noise_multiplier=1.0, sample_rate=0.01, steps=100)
    assert err.value.epsilon_after > err.value.budget == 0.8
    assert "budget" in str(err.value) and "n1" in str(err.value)
    assert ledger.total_steps == 100  # the refused round recorded nothing


def test_budget_exhaustion_blocks_publishing(tmp_path):  # type: ignore[no-untyped-def]
    path = tmp_path / "l.json"
    ledger = _open(path, budget=0.5)
    ledger.step(noise_multiplier=1.0, sample_rate=0.01, steps=200)
    with pytest.raises(BudgetExceededError):
        ledger.check_publish()
    assert _open(path, budget=0.5).total_steps == 200  # the spend is still recorded durably


@pytest.mark.parametrize("content", [
    b"", b"{", b"\x00\xff garbage", b"[]", b'{"format": "something-else"}',
])
def test_corrupt_file_raises_never_resets(tmp_path, content):  # type: ignore[no-untyped-def]
    path = tmp_path / "l.json"
    path.write_bytes(content)
    with pytest.raises(LedgerCorruptError) as err:
        _open(path)
    assert err.value.path == path


def test_tampered_history_fails_checksum(tmp_path):  # type: ignore[no-untyped-def]
    path = tmp_path / "l.json"
    ledger = _open(path)
    ledger.step(noise_multiplier=1.0, sample_rate=0.02, steps=50)
    ledger.flush()
    doc = json.loads(path.read_text())
    doc["history"] = [[1.0, 0.02, 1]]  # someone tries to lower the spend
    path.write_text(json.dumps(doc))
    with pytest.raises(LedgerCorruptError, match="checksum"):
        _open(path)


def test_truncated_file_raises(tmp_path):  # type: ignore[no-untyped-def]
    path = tmp_path / "l.json"
    ledger = _open(path)
    ledger.step(noise_multiplier=1.0, sample_rate=0.02, steps=50)
    ledger.flush()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(LedgerCorruptError):
        _open(path)


def test_state_dict_round_trip_and_mismatches():  # type: ignore[no-untyped-def]
    a = PrivacyLedger(node_id="n1", budget=3, delta=DELTA, mechanism="rdp")
    a.step(noise_multiplier=1.0, sample_rate=0.02, steps=7)
    b = PrivacyLedger(node_id="n1", budget=3, delta=DELTA, mechanism="rdp")
    b.load_state_dict(a.state_dict())
    assert b.history == a.history
    bad_keys = dict(a.state_dict(), extra=1)
    with pytest.raises(ValueError, match="keys"):
        b.load_state_dict(bad_keys)
    with pytest.raises(ValueError, match="mechanism"):
        PrivacyLedger(node_id="n1", budget=3, delta=DELTA, mechanism="prv").load_state_dict(
            a.state_dict())
    with pytest.raises(ValueError, match="node"):
        PrivacyLedger(node_id="n2", budget=3, delta=DELTA, mechanism="rdp").load_state_dict(
            a.state_dict())
    a.step(noise_multiplier=2.0, sample_rate=0.02, steps=1)
    older = b.state_dict()
    a_longer = PrivacyLedger(node_id="n1", budget=3, delta=DELTA, mechanism="rdp")
    a_longer.load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="extension"):
        a_longer.load_state_dict(older)  # would lower ε


def test_mechanism_mismatch_on_open(tmp_path):  # type: ignore[no-untyped-def]
    path = tmp_path / "l.json"
    ledger = _open(path, mechanism="rdp")
    ledger.step(noise_multiplier=1.0, sample_rate=0.02, steps=5)
    ledger.flush()
    with pytest.raises(ValueError, match="mechanism"):
        _open(path, mechanism="prv")


def test_invalid_arguments():  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        PrivacyLedger(node_id="n", budget=0, delta=DELTA)
    with pytest.raises(ValueError):
        PrivacyLedger(node_id="n", budget=1, delta=DELTA, mechanism="gdp")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        LedgerEntry(1.0, 1.5, 1)


def test_load_ledgers_reads_folder(tmp_path):  # type: ignore[no-untyped-def]
    for node in ("a", "b"):
        ledger = PrivacyLedger.open(ledger_path(tmp_path, node), node_id=node, budget=2,
                                    delta=DELTA, mechanism="rdp")
        ledger.step(noise_multiplier=1.0, sample_rate=0.02, steps=3)
        ledger.flush()
    ledgers = load_ledgers(tmp_path)
    assert [x.node_id for x in ledgers] == ["a", "b"]
    assert all(x.total_steps == 3 for x in ledgers)
    assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path))


def test_ledger_errors_are_edgeveil_errors_and_keep_their_old_bases():
    from pipeline.exceptions import EdgeVeilError
    from pipeline.privacy.ledger import BudgetExceededError, LedgerCorruptError

    err = BudgetExceededError(node_id="n", epsilon_after=2.5, budget=2.0, delta=1e-5)
    assert isinstance(err, EdgeVeilError) and isinstance(err, RuntimeError)
    assert "2.500" in str(err) and "'n'" in str(err)
    assert issubclass(LedgerCorruptError, EdgeVeilError)
    assert issubclass(LedgerCorruptError, RuntimeError)
