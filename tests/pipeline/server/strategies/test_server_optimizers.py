"""FedAvgM and FedAdam on hand-computed steps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.server.strategies import make_strategy
from pipeline.server.strategies.fedadam import FedAdam
from pipeline.server.strategies.fedavgm import FedAvgM
from tests.pipeline.server.strategies.conftest import results, zeros


def test_fedavgm_two_rounds_by_hand() -> None:
    # Prepare: β=0.5, η=2; round 1 Δ̄=(1*2+1*4)/2=3 -> v=3, w=6; round 2 Δ̄=1 -> v=2.5, w=11
    s = FedAvgM(server_lr=2.0, momentum=0.5)
    # Execute
    w1 = s.aggregate(zeros(1), results([2.0], [4.0]))
    w2 = s.aggregate(w1, results([1.0]))
    # Assert
    np.testing.assert_allclose(w1["w"], [6.0])
    np.testing.assert_allclose(w2["w"], [11.0])


def test_fedavgm_zero_momentum_is_fedavg() -> None:
    s = FedAvgM(momentum=0.0)
    np.testing.assert_allclose(
        s.aggregate(zeros(2), results([1.0, 3.0], [3.0, 5.0], examples=[3, 1]))["w"], [1.5, 3.5]
    )


def test_fedavgm_empty_round_keeps_velocity() -> None:
    s = FedAvgM(momentum=0.5)
    w = s.aggregate(zeros(1), results([2.0]))
    w = s.aggregate(w, [])
    np.testing.assert_allclose(w["w"], [2.0])
    np.testing.assert_allclose(s.aggregate(w, results([0.0]))["w"], [3.0])  # v = 0.5*2 + 0


def test_fedavgm_state_round_trip() -> None:
    a, b = FedAvgM(momentum=0.5), FedAvgM(momentum=0.5)
    w = a.aggregate(zeros(1), results([2.0]))
    b.load_state_dict(a.state_dict())
    np.testing.assert_allclose(
        a.aggregate(w, results([1.0]))["w"], b.aggregate(w, results([1.0]))["w"]
    )
    with pytest.raises(ValueError):
        b.load_state_dict({"name": "fedadam", "velocity": None})


def test_fedadam_first_two_steps_by_hand() -> None:
    # Prepare: η=0.1, β1=0.5, β2=0.75, τ=0.5; v starts at τ² = 0.25
    s = FedAdam(server_lr=0.1, beta1=0.5, beta2=0.75, tau=0.5)
    # Execute
    w1 = s.aggregate(zeros(1), results([2.0]))
    w2 = s.aggregate(w1, results([-2.0]))
    # Assert
    # step 1: m = 0.5*2 = 1; v = 0.75*0.25 + 0.25*4 = 1.1875; w = 0.1 * 1/(sqrt(1.1875)+0.5)
    m1, v1 = 1.0, 1.1875
    x1 = 0.1 * m1 / (math.sqrt(v1) + 0.5)
    np.testing.assert_allclose(w1["w"], [x1], rtol=1e-6)
    # step 2: m = 0.5*1 + 0.5*(-2) = -0.5; v = 0.75*1.1875 + 0.25*4 = 1.890625
    m2, v2 = -0.5, 0.75 * 1.1875 + 1.0
    np.testing.assert_allclose(w2["w"], [x1 + 0.1 * m2 / (math.sqrt(v2) + 0.5)], rtol=1e-6)


def test_fedadam_is_per_coordinate() -> None:
    s = FedAdam(server_lr=1.0, beta1=0.0, beta2=0.0, tau=1.0)
    np.testing.assert_allclose(
        s.aggregate(zeros(3), results([0.0, 1.0, -3.0]))["w"], [0.0, 0.5, -0.75]
    )


def test_fedadam_state_round_trip_and_validation() -> None:
    a = make_strategy("fedadam", server_lr=0.1)
    w = a.aggregate(zeros(2), results([1.0, -1.0]))
    b = FedAdam(server_lr=0.1)
    b.load_state_dict(a.state_dict())  # type: ignore[attr-defined]
    np.testing.assert_allclose(
        a.aggregate(w, results([1.0, 2.0]))["w"], b.aggregate(w, results([1.0, 2.0]))["w"]
    )
    with pytest.raises(ValueError):
        FedAdam(tau=0.0)
    with pytest.raises(ValueError):
        FedAdam(beta1=1.0)


def test_fedadam_lr_decay_by_hand() -> None:
    # β1=β2=0, τ=1: every step is η_t · d/(|d|+1) = η_t / 2 for d = 1; η_t = 0.4 · 0.5ᵗ
    s = FedAdam(server_lr=0.4, beta1=0.0, beta2=0.0, tau=1.0, lr_decay=0.5)
    w = zeros(1)
    seen = []
    for _ in range(3):
        w = s.aggregate(w, results([1.0]))
        seen.append(float(w["w"][0]))
    np.testing.assert_allclose(seen, [0.2, 0.3, 0.35], rtol=1e-6)
    s.aggregate(w, [])  # an empty round takes no step and does not decay
    assert s.state_dict()["steps"] == 3
    # the step count survives a restart, so the schedule continues where it was
    b = FedAdam(server_lr=0.4, beta1=0.0, beta2=0.0, tau=1.0, lr_decay=0.5)
    b.load_state_dict(s.state_dict())
    np.testing.assert_allclose(b.aggregate(w, results([1.0]))["w"], [0.375], rtol=1e-6)
    # a state written before the step count existed restarts the schedule at step 0
    old = {k: v for k, v in s.state_dict().items() if k != "steps"}
    c = FedAdam(server_lr=0.4, beta1=0.0, beta2=0.0, tau=1.0, lr_decay=0.5)
    c.load_state_dict(old)
    np.testing.assert_allclose(c.aggregate(w, results([1.0]))["w"], [0.55], rtol=1e-6)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="lr_decay"):
            FedAdam(lr_decay=bad)
    with pytest.raises(ValueError, match="steps"):
        b.load_state_dict({**s.state_dict(), "steps": -1})
