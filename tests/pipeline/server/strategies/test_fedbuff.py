"""FedBuff: buffer K, staleness weight 1/sqrt(1+τ), divide by K."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.server.strategies import make_strategy, staleness_weight
from pipeline.server.strategies.fedbuff import FedBuff
from tests.pipeline.server.strategies.conftest import results, zeros


def test_staleness_weight_values() -> None:
    assert staleness_weight(0) == 1.0
    assert staleness_weight(3) == 0.5
    assert staleness_weight(8) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        staleness_weight(-1)


def test_fedbuff_waits_for_k_then_applies_hand_case() -> None:
    # Prepare: K=3, η=1; deltas 3 (τ=0), 6 (τ=3 -> ½), 9 (τ=8 -> ⅓)
    s = FedBuff(buffer_size=3)
    rs = results([3.0], [6.0], [9.0], staleness=[0, 3, 8])
    # Execute
    w = s.aggregate(zeros(1), rs[:2])
    assert (s.last_steps, s.pending, w["w"].tolist()) == (0, 2, [0.0])
    w = s.aggregate(w, rs[2:])
    # Assert: (3 + 3 + 3) / 3 = 3
    assert (s.last_steps, s.pending) == (1, 0)
    np.testing.assert_allclose(w["w"], [3.0])


def test_fedbuff_multiple_steps_in_one_call_and_leftover() -> None:
    s = make_strategy("fedbuff", buffer_size=2, server_lr=0.5)
    w = s.aggregate(zeros(1), results([2.0], [4.0], [8.0], [8.0], [100.0]))
    # steps: 0.5*(2+4)/2 = 1.5; 0.5*(8+8)/2 = 4 -> 5.5; 100 waits
    np.testing.assert_allclose(w["w"], [5.5])
    assert (s.last_steps, s.pending) == (2, 1)  # type: ignore[attr-defined]


def test_fedbuff_ignores_num_examples() -> None:
    s = FedBuff(buffer_size=2)
    np.testing.assert_allclose(
        s.aggregate(zeros(1), results([2.0], [4.0], examples=[1, 1000]))["w"], [3.0]
    )


def test_fedbuff_state_survives_restart() -> None:
    a = FedBuff(buffer_size=2)
    a.aggregate(zeros(1), results([2.0]))
    b = FedBuff(buffer_size=2)
    b.load_state_dict(a.state_dict())
    np.testing.assert_allclose(b.aggregate(zeros(1), results([4.0]))["w"], [3.0])
    assert b.total_steps == 1
