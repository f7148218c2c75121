"""FedAvg and the running weighted sum."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pipeline.server.strategies import ClientResult, FedAvg, IncompatibleUpdateError, RunningFedAvg
from tests.pipeline.server.strategies.conftest import results, zeros


def test_sample_weighted_hand_case() -> None:
    # Prepare: (1*[1,2] + 3*[5,-2]) / 4 = [4, -1]
    g = {"w": np.array([10.0, 20.0], np.float32)}
    rs = results([1.0, 2.0], [5.0, -2.0], examples=[1, 3])
    # Execute
    out = FedAvg().aggregate(g, rs)
    # Assert
    np.testing.assert_allclose(out["w"], [14.0, 19.0])
    assert out["w"].dtype == np.float32


def test_server_lr_scales_the_step() -> None:
    out = FedAvg(server_lr=0.5).aggregate(zeros(1), results([4.0], [8.0]))
    np.testing.assert_allclose(out["w"], [3.0])


def test_multiple_tensors() -> None:
    g = {"a": np.zeros((2, 2), np.float32), "b": np.ones(1, np.float32)}
    rs = [
        ClientResult(
            node_id="x",
            delta={"a": np.eye(2, dtype=np.float32), "b": np.array([2.0], np.float32)},
            num_examples=1,
        ),
        ClientResult(
            node_id="y",
            delta={"a": np.zeros((2, 2), np.float32), "b": np.array([0.0], np.float32)},
            num_examples=1,
        ),
    ]
    out = FedAvg().aggregate(g, rs)
    np.testing.assert_allclose(out["a"], [[0.5, 0.0], [0.0, 0.5]])
    np.testing.assert_allclose(out["b"], [2.0])


def test_empty_round_returns_unchanged_copy() -> None:
    g = {"w": np.array([1.0, 2.0], np.float32)}
    out = FedAvg().aggregate(g, [])
    np.testing.assert_array_equal(out["w"], g["w"])
    assert out["w"] is not g["w"]


def test_zero_examples_leaves_model_unchanged() -> None:
    out = FedAvg().aggregate(zeros(1), results([5.0], examples=[0]))
    np.testing.assert_array_equal(out["w"], [0.0])


def test_inputs_not_mutated() -> None:
    g = {"w": np.array([1.0], np.float32)}
    rs = results([2.0])
    FedAvg().aggregate(g, rs)
    assert g["w"][0] == 1.0 and rs[0].delta["w"][0] == 2.0


def test_mismatched_update_names_the_node() -> None:
    with pytest.raises(IncompatibleUpdateError) as info:
        FedAvg().aggregate(zeros(2), results([1.0, 2.0], [1.0, 2.0, 3.0]))
    assert info.value.node_id == "n1"
    with pytest.raises(IncompatibleUpdateError):
        FedAvg().aggregate({"v": np.zeros(2)}, results([1.0, 2.0]))


def test_running_fedavg_memory_is_constant() -> None:
    # Prepare
    avg = RunningFedAvg()
    rng = np.random.default_rng(0)
    deltas = [rng.normal(size=50).astype(np.float32) for _ in range(200)]
    # Execute
    for i, d in enumerate(deltas):
        avg.add(ClientResult(node_id=str(i), delta={"w": d}, num_examples=i % 5 + 1))
    # Assert: state is one float64 array per tensor no matter how many were added
    state = avg.state_dict()
    assert avg.count == 200 and list(state["sum"]) == ["w"] and state["sum"]["w"].shape == (50,)
    want = sum((i % 5 + 1) * d.astype(np.float64) for i, d in enumerate(deltas)) / sum(
        i % 5 + 1 for i in range(200)
    )
    np.testing.assert_allclose(avg.result()["w"], want, rtol=1e-5, atol=1e-6)


def test_running_fedavg_rejects_mismatch_without_side_effects() -> None:
    avg = RunningFedAvg(like=zeros(2))
    avg.add(results([1.0, 1.0])[0])
    with pytest.raises(IncompatibleUpdateError):
        avg.add(results([1.0])[0])
    assert avg.count == 1
    np.testing.assert_allclose(avg.result()["w"], [1.0, 1.0])


def test_running_fedavg_empty_result_raises_and_state_round_trip() -> None:
    with pytest.raises(ValueError):
        RunningFedAvg().result()
    a = RunningFedAvg()
    a.add(results([2.0])[0])
    b = RunningFedAvg()
    b.load_state_dict(a.state_dict())
    b.add(results([4.0])[0])
    assert b.count == 2
    np.testing.assert_allclose(b.result()["w"], [3.0])


vec = hnp.arrays(np.float32, st.integers(1, 6), elements=st.floats(-1e3, 1e3, width=32))


@settings(max_examples=50, deadline=None)
@given(
    delta=vec,
    copies=st.integers(1, 6),
    examples=st.lists(st.integers(1, 1000), min_size=6, max_size=6),
)
def test_fedavg_of_identical_updates_is_that_update(
    delta: np.ndarray, copies: int, examples: list[int]
) -> None:
    g = {"w": np.zeros_like(delta)}
    rs = [
        ClientResult(node_id=str(i), delta={"w": delta}, num_examples=examples[i])
        for i in range(copies)
    ]
    out = FedAvg().aggregate(g, rs)
    np.testing.assert_allclose(out["w"], delta, rtol=1e-6, atol=1e-6)


@settings(max_examples=50, deadline=None)
@given(a=vec, perm_seed=st.integers(0, 2**16))
def test_fedavg_is_order_independent(a: np.ndarray, perm_seed: int) -> None:
    rs = [
        ClientResult(node_id=str(i), delta={"w": a * (i + 1)}, num_examples=i + 1) for i in range(4)
    ]
    order = np.random.default_rng(perm_seed).permutation(4)
    g = {"w": np.zeros_like(a)}
    np.testing.assert_allclose(
        FedAvg().aggregate(g, rs)["w"],
        FedAvg().aggregate(g, [rs[i] for i in order])["w"],
        rtol=1e-5,
        atol=1e-3,
    )
