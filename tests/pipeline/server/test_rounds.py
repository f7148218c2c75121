"""RoundCoordinator: admission, idempotence, closing rules and restart equivalence."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.codec import CodecError, KeyRegistry, encode_update, generate_keypair
from pipeline.server.rounds import RoundCoordinator, RoundPolicy
from pipeline.server.strategies import make_strategy
from schemas.update import ModelUpdate, PrivacyStamp

EXPECTED = {"w": ((2,), "float32")}
GLOBAL = {"w": np.zeros(2, np.float32)}


@pytest.fixture(scope="module")
def nodes() -> dict[str, bytes]:
    return {f"n{i}": generate_keypair()[0] for i in range(4)}


def _keys(nodes: dict[str, bytes]) -> KeyRegistry:
    from pipeline.codec import public_key_of

    return KeyRegistry({n: public_key_of(k) for n, k in nodes.items()})


def _update(nodes, node: str, *, rnd: int = 1, base: int = 0, value: float = 1.0, n: int = 10,
            task: str = "t") -> bytes:
    stamp = PrivacyStamp(epsilon=0.5, delta=1e-5, noise_multiplier=1.0, sample_rate=0.1,
                         steps=5, accountant="rdp")
    u = ModelUpdate(node_id=node, task=task, round=rnd, base_version=base, num_examples=n,
                    metrics={}, privacy=stamp, delta={"w": np.full(2, value, np.float32)})
    return encode_update(u, private_key=nodes[node], compression="float32")


def _coord(nodes, **policy) -> RoundCoordinator:
    return RoundCoordinator(task="t", keys=_keys(nodes), expected=EXPECTED,
                            strategy=make_strategy("fedavg"), policy=RoundPolicy(**policy))


def test_sync_round_closes_at_quorum_with_weighted_average(nodes) -> None:
    c = _coord(nodes, quorum=2)
    stored = {}
    a = c.offer(_update(nodes, "n0", value=1.0, n=10), now=0.0)
    stored[a.key] = _update(nodes, "n0", value=1.0, n=10)
    assert not c.due(now=0.0)
    b = c.offer(_update(nodes, "n1", value=4.0, n=30), now=1.0)
    stored[b.key] = _update(nodes, "n1", value=4.0, n=30)
    assert c.due(now=1.0)
    out = c.aggregate(GLOBAL, stored)
    # (10*1 + 30*4) / 40 = 3.25
    np.testing.assert_allclose(out.weights["w"], [3.25, 3.25])
    assert out.version == 1 and out.participants == ("n0", "n1") and out.num_examples == 40
    assert sorted(c.commit(out)) == sorted(stored)
    assert c.version == 1 and not c.buffer
    # a redelivery after the round closed is a silent duplicate, not a replay
    assert c.offer(_update(nodes, "n0", value=1.0, n=10), now=2.0).duplicate
    assert not c.buffer


def test_duplicate_is_dropped_and_conflicting_replay_rejected(nodes) -> None:
    c = _coord(nodes, quorum=3)
    data = _update(nodes, "n0")
    assert not c.offer(data, now=0).duplicate
    assert c.offer(data, now=0).duplicate
    assert len(c.buffer) == 1
    with pytest.raises(CodecError) as err:
        c.offer(_update(nodes, "n0", value=9.0), now=0)
    assert err.value.reason == "replay"


def test_stale_and_wrong_task_and_tampered_are_rejected_with_reasons(nodes) -> None:
    c = _coord(nodes, quorum=1)
    c.version = 3
    with pytest.raises(CodecError) as err:
        c.offer(_update(nodes, "n0", base=2), now=0)
    assert err.value.reason == "stale"
    with pytest.raises(CodecError) as err:
        c.offer(_update(nodes, "n0", base=3, task="other"), now=0)
    assert err.value.reason == "wrong_task"
    bad = bytearray(_update(nodes, "n0", base=3))
    bad[-10] ^= 1
    with pytest.raises(CodecError) as err:
        c.offer(bytes(bad), now=0)
    assert err.value.reason == "bad_signature"
    assert not c.buffer


def test_deadline_closes_a_partial_round(nodes) -> None:
    c = _coord(nodes, quorum=4, min_quorum=2, deadline_s=10)
    c.offer(_update(nodes, "n0"), now=100.0)
    assert not c.due(now=200.0)  # below min_quorum
    c.offer(_update(nodes, "n1"), now=101.0)
    assert not c.due(now=105.0)
    assert c.due(now=110.0)


def test_order_and_restart_do_not_change_the_aggregate(nodes) -> None:
    blobs = {n: _update(nodes, n, value=float(i) + 0.25, n=5 + i) for i, n in enumerate(nodes)}
    c1 = _coord(nodes, quorum=4)
    stored1 = {c1.offer(b, now=0).key: b for b in blobs.values()}
    ref = c1.aggregate(GLOBAL, stored1)

    c2 = _coord(nodes, quorum=4)
    stored2 = {}
    for n in reversed(list(blobs)[2:]):
        stored2[c2.offer(blobs[n], now=0).key] = blobs[n]
    state = json.loads(json.dumps(c2.state_dict()))  # through JSON, as a table stores it
    c3 = _coord(nodes, quorum=4)
    c3.load_state_dict(state)
    for n in list(blobs)[:2] + list(blobs)[2:]:  # redelivery of the first half included
        off = c3.offer(blobs[n], now=0)
        stored2[off.key] = blobs[n]
    out = c3.aggregate(GLOBAL, stored2)
    assert out.participants == ref.participants
    np.testing.assert_array_equal(out.weights["w"], ref.weights["w"])


def test_async_mode_admits_stale_updates_and_closes_every_k(nodes) -> None:
    c = RoundCoordinator(task="t", keys=_keys(nodes), expected=EXPECTED,
                         strategy=make_strategy("fedbuff", buffer_size=2),
                         policy=RoundPolicy(mode="async", buffer_size=2, max_staleness=2))
    c.version = 2
    stored = {}
    off = c.offer(_update(nodes, "n0", base=0, value=1.0), now=0)
    assert off.staleness == 2
    stored[off.key] = _update(nodes, "n0", base=0, value=1.0)
    assert not c.due(now=0)
    off = c.offer(_update(nodes, "n1", base=2, value=1.0), now=0)
    stored[off.key] = _update(nodes, "n1", base=2, value=1.0)
    assert c.due(now=0)
    out = c.aggregate(GLOBAL, stored)
    assert out.version == 3
    assert np.all(out.weights["w"] > 0)
    c.commit(out)
    with pytest.raises(CodecError) as err:
        c.offer(_update(nodes, "n2", base=0), now=0)  # staleness 3 > 2
    assert err.value.reason == "stale"


def test_policy_validates() -> None:
    with pytest.raises(ValueError):
        RoundPolicy(mode="eventually")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RoundPolicy(quorum=2, min_quorum=3)


def test_resume_from_the_opening_state_and_stored_bytes_is_exact(nodes) -> None:
    blobs = {n: _update(nodes, n, value=float(i) + 0.5, n=5 + i) for i, n in enumerate(nodes)}
    ref = _coord(nodes, quorum=4)
    ref_stored = {ref.offer(b, now=0).key: b for b in blobs.values()}
    want = ref.aggregate(GLOBAL, ref_stored)

    c1 = _coord(nodes, quorum=4)
    stored = {}
    first = c1.offer(blobs["n0"], now=5.0)
    stored[first.key] = blobs["n0"]
    opened = json.loads(json.dumps(c1.state_dict()))  # saved when the round opened
    for n in ("n1", "n2"):
        stored[c1.offer(blobs[n], now=6.0).key] = blobs[n]
    # crash: only the opening state and the bytes survive
    c2 = _coord(nodes, quorum=4)
    c2.load_state_dict(opened)
    assert c2.resume(stored, now=99.0) == []
    assert c2.buffer == c1.buffer and c2.opened_at == 5.0
    assert c2.offer(blobs["n1"], now=99.0).duplicate  # redelivery after the restart
    with pytest.raises(CodecError) as err:
        c2.offer(_update(nodes, "n2", value=7.0), now=99.0)
    assert err.value.reason == "replay"
    stored[c2.offer(blobs["n3"], now=99.0).key] = blobs["n3"]
    out = c2.aggregate(GLOBAL, stored)
    np.testing.assert_array_equal(out.weights["w"], want.weights["w"])
    assert out.participants == want.participants

    # closed and saved, but the stored bytes were not deleted: resume says to delete them
    c2.commit(out)
    closed = json.loads(json.dumps(c2.state_dict()))
    c3 = _coord(nodes, quorum=4)
    c3.load_state_dict(closed)
    assert sorted(c3.resume(stored, now=0)) == sorted(stored)
    assert not c3.buffer


def test_aggregate_verifies_bytes_that_differ_from_the_offered_ones(nodes) -> None:
    c = _coord(nodes, quorum=1)
    data = _update(nodes, "n0", value=2.0)
    key = c.offer(data, now=0).key
    bad = bytearray(data)
    bad[-10] ^= 1  # not what was admitted: must be decoded and verified, not taken from cache
    with pytest.raises(CodecError) as err:
        c.aggregate(GLOBAL, {key: bytes(bad)})
    assert err.value.reason == "bad_signature"
    np.testing.assert_array_equal(c.aggregate(GLOBAL, {key: data}).weights["w"], [2.0, 2.0])


def test_strategy_state_is_saved_after_aggregate_changes_it(nodes) -> None:
    c = RoundCoordinator(task="t", keys=_keys(nodes), expected=EXPECTED,
                         strategy=make_strategy("fedavgm", momentum=0.9),
                         policy=RoundPolicy(quorum=1))
    before = json.dumps(c.state_dict()["strategy"])
    data = _update(nodes, "n0", value=1.0)
    key = c.offer(data, now=0).key
    assert json.dumps(c.state_dict()["strategy"]) == before  # offers leave the strategy alone
    out = c.aggregate(GLOBAL, {key: data})
    c.commit(out)
    after = c.state_dict()["strategy"]
    assert after != json.loads(before) and after["velocity"] is not None


@pytest.mark.parametrize("dtype", ["float64", "float32", ">f8", "int64"])
def test_state_arrays_survive_json_exactly(dtype: str) -> None:
    from pipeline.server.rounds import _from_jsonable, _jsonable

    rng = np.random.default_rng(0)
    arr = (rng.normal(size=(3, 5)) * 1e3).astype(dtype)
    state = {"sum": {"a": arr, "zeros": np.zeros((4, 2))}, "n": np.int64(3), "l": [arr[0]]}
    back = _from_jsonable(json.loads(json.dumps(_jsonable(state))))
    np.testing.assert_array_equal(back["sum"]["a"], arr)
    assert back["sum"]["a"].shape == (3, 5) and back["sum"]["a"].flags.writeable
    np.testing.assert_array_equal(back["sum"]["zeros"], np.zeros((4, 2)))
    np.testing.assert_array_equal(back["l"][0], arr[0])
    assert back["n"] == 3


def test_state_in_the_earlier_list_form_still_loads() -> None:
    from pipeline.server.rounds import _from_jsonable

    old = {"__ndarray__": [[1.5, 2.0]], "dtype": "float64", "shape": [1, 2]}
    np.testing.assert_array_equal(_from_jsonable(old), np.array([[1.5, 2.0]]))


def test_fedbuff_state_round_trips_through_json(nodes) -> None:
    c1 = RoundCoordinator(task="t", keys=_keys(nodes), expected=EXPECTED,
                          strategy=make_strategy("fedbuff", buffer_size=3),
                          policy=RoundPolicy(mode="async", buffer_size=2))
    stored = {}
    for i, node in enumerate(["n0", "n1"]):
        data = _update(nodes, node, value=float(i + 1))
        stored[c1.offer(data, now=0).key] = data
    c1.commit(c1.aggregate(GLOBAL, stored))  # 2 of the strategy's 3 buffered: a partial sum
    state = json.loads(json.dumps(c1.state_dict()))
    c2 = RoundCoordinator(task="t", keys=_keys(nodes), expected=EXPECTED,
                          strategy=make_strategy("fedbuff", buffer_size=3),
                          policy=RoundPolicy(mode="async", buffer_size=2))
    c2.load_state_dict(state)
    assert c2.state_dict()["strategy"] == c1.state_dict()["strategy"]
    data = _update(nodes, "n2", value=3.0)
    outs = []
    for c in (c1, c2):
        key = c.offer(data, now=0).key
        outs.append(c.aggregate(GLOBAL, {key: data}).weights["w"])
    np.testing.assert_array_equal(outs[0], outs[1])


def test_bytes_mutated_after_offer_are_verified_again(nodes) -> None:
    c = _coord(nodes, quorum=1)
    data = bytearray(_update(nodes, "n0", value=1.0))
    key = c.offer(data, now=0).key
    data[-10] ^= 1  # the same (mutable) object, other bytes: must not pass as the offered update
    with pytest.raises(CodecError) as err:
        c.aggregate(GLOBAL, {key: data})
    assert err.value.reason == "bad_signature"


def test_decoded_tensors_are_independent_writable_float32(nodes) -> None:
    from pipeline.codec import decode_update

    stamp = PrivacyStamp(epsilon=0.5, delta=1e-5, noise_multiplier=1.0, sample_rate=0.1,
                         steps=5, accountant="rdp")
    delta = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.full(3, -2.5, np.float32)}
    for comp in ("int8", "float16", "float32"):
        u = ModelUpdate(node_id="n0", task="t", round=1, base_version=0, num_examples=1,
                        metrics={}, privacy=stamp, delta=delta)
        back = decode_update(encode_update(u, private_key=nodes["n0"], compression=comp),
                             keys=_keys(nodes)).delta
        assert [back[k].shape for k in back] == [(2, 3), (3,)]
        assert all(v.dtype == np.float32 and v.flags.writeable for v in back.values())
        np.testing.assert_allclose(back["a"], delta["a"], atol=5 / 254)
        back["a"][...] = 7.0  # writing one tensor leaves the other alone
        np.testing.assert_allclose(back["b"], delta["b"], atol=2.5 / 254)


def test_check_in_another_thread_then_offer_equals_offer(nodes) -> None:
    """The aggregator checks updates in a thread ahead of admitting them: same decisions, same
    aggregate, and check() alone changes nothing."""
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.server.rounds import Checked

    frames = [_update(nodes, f"n{i}", value=float(i + 1), n=10 * (i + 1)) for i in range(3)]
    plain, piped = _coord(nodes, quorum=3), _coord(nodes, quorum=3)
    for data in frames:
        plain.offer(data, now=0.0)
    with ThreadPoolExecutor(1) as pool:
        checked = list(pool.map(piped.check, frames))
    assert not piped.buffer and piped.opened_at is None  # checking admits nothing
    assert all(isinstance(c, Checked) for c in checked)
    offers = [piped.offer(c, now=0.0) for c in checked]
    assert [o.key for o in offers] == sorted(plain.buffer) and piped.buffer == plain.buffer
    assert piped.offer(checked[0], now=0.0).duplicate  # the same bytes again: a duplicate
    stored = dict(zip(plain.buffer, frames, strict=True))
    np.testing.assert_array_equal(piped.aggregate(GLOBAL, stored).weights["w"],
                                  plain.aggregate(GLOBAL, stored).weights["w"])
    with pytest.raises(ValueError, match="this coordinator"):
        plain.offer(checked[1], now=0.0)
    with pytest.raises(CodecError) as err:
        piped.check(_update(nodes, "n3", task="other"))
    assert err.value.reason == "wrong_task"
    with pytest.raises(CodecError) as err:
        piped.check(frames[0][:-1] + bytes([frames[0][-1] ^ 1]))
    assert err.value.reason == "bad_signature"
