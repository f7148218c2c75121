"""Median, trimmed mean and Multi-Krum: hand cases and one poisoned client out of ten."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.server.strategies import ClientResult, NotEnoughResultsError, Strategy, make_strategy
from pipeline.server.strategies.aggregate import krum_scores, multi_krum, trimmed_mean
from tests.pipeline.server.strategies.conftest import results, zeros


def test_median_hand_case_odd_and_even() -> None:
    median = make_strategy("median")
    np.testing.assert_allclose(
        median.aggregate(zeros(2), results([1.0, 9.0], [2.0, -1.0], [100.0, 0.0]))["w"], [2.0, 0.0]
    )
    np.testing.assert_allclose(
        median.aggregate(zeros(1), results([1.0], [2.0], [4.0], [100.0]))["w"], [3.0]
    )


def test_median_ignores_num_examples() -> None:
    out = make_strategy("median").aggregate(
        zeros(1), results([1.0], [2.0], [50.0], examples=[1, 1, 10_000])
    )
    np.testing.assert_allclose(out["w"], [2.0])


def test_trimmed_mean_hand_case() -> None:
    # Prepare: n=10, β=0.2 -> drop 2 each end per coordinate
    vals = [-100.0, -3.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 50.0, 90.0]
    rs = results(*[[v, -v] for v in vals])
    # Execute
    out = make_strategy("trimmed_mean", beta=0.2).aggregate(zeros(2), rs)
    # Assert: mean of 1..6 = 3.5 (and its mirror)
    np.testing.assert_allclose(out["w"], [3.5, -3.5])


def test_trimmed_mean_beta_zero_is_plain_mean_and_floor() -> None:
    rs = [({"w": np.array([v])}, 1) for v in (1.0, 2.0, 6.0)]
    np.testing.assert_allclose(trimmed_mean(rs, beta=0.0)["w"], [3.0])
    np.testing.assert_allclose(trimmed_mean(rs, beta=0.3)["w"], [3.0])  # floor(0.9) = 0 trimmed
    with pytest.raises(ValueError):
        make_strategy("trimmed_mean", beta=0.5)


def test_krum_scores_hand_case() -> None:
    # Prepare: 1-D points 0, 1, 3, 10; f=0 -> n-f-2 = 2 nearest neighbours
    rs = [({"w": np.array([v])}, 1) for v in (0.0, 1.0, 3.0, 10.0)]
    # Execute
    scores = krum_scores(rs, num_byzantine=0)
    # Assert: 0: 1+9=10; 1: 1+4=5; 3: 4+9=13; 10: 49+81=130
    np.testing.assert_allclose(scores, [10.0, 5.0, 13.0, 130.0])
    avg, chosen = multi_krum(rs, num_byzantine=0, num_selected=1)
    assert chosen == [1] and avg["w"].tolist() == [1.0]


def test_multi_krum_strategy_hand_case() -> None:
    # Prepare: f=1, n=5 (> 2f+2), m defaults to n - f = 4; the 99 is dropped
    s = make_strategy("krum", num_byzantine=1)
    # Execute
    out = s.aggregate(
        zeros(2), results([0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [1.0, 4.0], [99.0, 99.0])
    )
    # Assert
    np.testing.assert_allclose(out["w"], [1.0, 1.0])
    assert sorted(s.last_selected) == ["n0", "n1", "n2", "n3"]  # type: ignore[attr-defined]


def test_multi_krum_needs_enough_results() -> None:
    with pytest.raises(NotEnoughResultsError) as info:
        make_strategy("krum", num_byzantine=1).aggregate(
            zeros(1), results([1.0], [2.0], [3.0], [4.0])
        )
    assert info.value.needed == 5
    assert make_strategy("krum").aggregate(zeros(1), [])["w"].tolist() == [0.0]


def _poisoned_round(seed: int = 0) -> tuple[list[ClientResult], np.ndarray]:
    rng = np.random.default_rng(seed)
    true = rng.normal(0.0, 1.0, size=40)
    honest = [true + rng.normal(0.0, 0.1, size=40) for _ in range(10)]
    reference = np.mean(honest, axis=0)  # what the round should produce without the attack
    deltas = list(honest)
    deltas[3] = honest[3] * 100.0  # one of ten poisoned
    rs = [
        ClientResult(node_id=f"n{i}", delta={"w": d.astype(np.float32)}, num_examples=100)
        for i, d in enumerate(deltas)
    ]
    return rs, reference


@pytest.mark.parametrize(
    "name,kwargs", [("median", {}), ("trimmed_mean", {"beta": 0.1}), ("krum", {"num_byzantine": 1})]
)
def test_robust_rules_resist_one_poisoned_update(name: str, kwargs: dict[str, object]) -> None:
    # Prepare
    rs, reference = _poisoned_round()
    strategy: Strategy = make_strategy(name, **kwargs)
    # Execute
    out = strategy.aggregate(zeros(40), rs)["w"]
    # Assert: within 10 % of the honest aggregate's norm
    assert np.linalg.norm(out - reference) < 0.1 * np.linalg.norm(reference)


def test_fedavg_is_dragged_by_the_poisoned_update() -> None:
    # Shows the robustness test can fail: the plain mean moves by ~10x the honest norm.
    rs, reference = _poisoned_round()
    out = make_strategy("fedavg").aggregate(zeros(40), rs)["w"]
    assert np.linalg.norm(out - reference) > 5.0 * np.linalg.norm(reference)
