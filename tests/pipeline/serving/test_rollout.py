"""Staged-rollout rules and the signed control codec (pipeline.serving.rollout)."""

from __future__ import annotations

import doctest
import importlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.codec import generate_keypair
from pipeline.serving.rollout import (
    ControlError,
    canary_group,
    check_sequence,
    decode_control,
    encode_control,
    promote,
    resolve_target,
    rollback,
    served_version,
)
from schemas.control import RolloutControl

NODES = [f"akl-{i:02d}" for i in range(21)]


def test_signed_command_round_trips_and_anything_else_is_refused() -> None:
    priv, pub = generate_keypair()
    other_priv, _ = generate_keypair()
    c = promote(None, task="t", version=3, nodes=NODES, target=["10%"], issued_at=1.0)
    blob = encode_control(c, private_key=priv)
    assert decode_control(blob, public_key=pub) == c
    # forged: the same command signed by a key the edges do not trust
    with pytest.raises(ControlError) as err:
        decode_control(encode_control(c, private_key=other_priv), public_key=pub)
    assert err.value.reason == "bad_signature"
    # every flipped bit is caught
    for pos in range(0, len(blob), 7):
        bad = bytearray(blob)
        bad[pos] ^= 0x10
        with pytest.raises(ControlError):
            decode_control(bytes(bad), public_key=pub)
    with pytest.raises(ControlError, match="truncated"):
        decode_control(blob[:20], public_key=pub)
    with pytest.raises(ControlError, match="bad_magic"):
        decode_control(b"XXXX" + blob[4:], public_key=pub)


def test_canary_group_size_and_stability() -> None:
    # ceil(10 % of 21) = 3, at least one node, all of them at 100 %
    assert len(canary_group(NODES, 10, task="t")) == 3
    assert len(canary_group(NODES, 0.1, task="t")) == 1
    assert canary_group(NODES, 100, task="t") == NODES
    # the same nodes whatever order the federation lists them in (membership by hash)
    assert set(canary_group(NODES, 30, task="t")) == set(canary_group(NODES[::-1], 30, task="t"))
    # another task draws another group
    assert canary_group(NODES, 30, task="t") != canary_group(NODES, 30, task="u")
    for bad in (0, -5, 101):
        with pytest.raises(ValueError):
            canary_group(NODES, bad, task="t")


@given(st.floats(min_value=0.01, max_value=100), st.floats(min_value=0.01, max_value=100))
def test_a_wider_percentage_keeps_the_narrower_group(p: float, q: float) -> None:
    lo, hi = sorted((p, q))
    assert set(canary_group(NODES, lo, task="t")) <= set(canary_group(NODES, hi, task="t"))


def test_resolve_target_accepts_percent_all_ids_and_positions() -> None:
    nodes = ["a", "b", "c"]
    assert resolve_target(["34%"], nodes, task="t") == (canary_group(nodes, 34, task="t"), 34.0)
    assert resolve_target(["c", "1"], nodes, task="t") == (["a", "c"], None)  # federation order
    assert resolve_target(["a,a"], nodes, task="t") == (["a"], None)
    for bad in (["zz"], ["4"], [""], ["ten%"]):
        with pytest.raises(ValueError):
            resolve_target(bad, nodes, task="t")


def test_promote_then_widen_then_everyone_then_rollback() -> None:
    c1 = promote(None, task="t", version=5, nodes=NODES, target=["10%"], issued_at=1.0)
    assert (c1.seq, c1.action, c1.stable_version, c1.canary_version) == (1, "promote", 4, 5)
    canary = set(c1.canary_nodes)
    assert all(served_version(c1, n, latest=9) == (5 if n in canary else 4) for n in NODES)
    c2 = promote(c1, task="t", version=5, nodes=NODES, target=["50%"], issued_at=2.0)
    assert c2.seq == 2 and c2.stable_version == 4 and canary < set(c2.canary_nodes)
    c3 = promote(c2, task="t", version=5, nodes=NODES, target=["all"], issued_at=3.0)
    assert (c3.stable_version, c3.canary_version, c3.canary_nodes) == (5, None, [])
    c4 = rollback(c3, task="t", version=4, issued_at=4.0)
    assert (c4.seq, c4.action, c4.stable_version, c4.canary_nodes) == (4, "rollback", 4, [])
    assert {served_version(c4, n, latest=9) for n in NODES} == {4}
    # naming every node is the same as 'all'
    assert promote(None, task="t", version=2, nodes=["a", "b"], target=["a,b"],
                   issued_at=0.0).canary_version is None


def test_promote_refuses_what_makes_no_sense() -> None:
    with pytest.raises(ValueError, match="below 0"):
        promote(None, task="t", version=0, nodes=NODES, target=["10%"], issued_at=0.0)
    pinned = rollback(None, task="t", version=3, issued_at=0.0)
    with pytest.raises(ValueError, match="already the stable"):
        promote(pinned, task="t", version=3, nodes=NODES, target=["10%"], issued_at=0.0)
    with pytest.raises(ValueError):
        rollback(None, task="t", version=-1, issued_at=0.0)


def test_without_a_command_every_node_follows_the_newest_model() -> None:
    assert served_version(None, "a", latest=7) == 7
    assert served_version(None, "a", latest=None) is None


def test_sequence_refuses_replays_and_other_tasks() -> None:
    c1 = rollback(None, task="t", version=1, issued_at=0.0)
    c2 = rollback(c1, task="t", version=2, issued_at=1.0)
    check_sequence(c1, c2, task="t")
    with pytest.raises(ControlError) as err:
        check_sequence(c2, c1, task="t")  # an old command written again
    assert err.value.reason == "stale_control"
    with pytest.raises(ControlError) as err:
        check_sequence(None, RolloutControl(task="u", seq=1, action="rollback",
                                            stable_version=0), task="t")
    assert err.value.reason == "wrong_task"


@pytest.mark.parametrize("module", ["pipeline.serving.rollout", "pipeline.serving.models", "pipeline.server.fleet",
                                    "pipeline.serving.hotswap", "schemas.control"])
def test_examples(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module),
                             optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0
