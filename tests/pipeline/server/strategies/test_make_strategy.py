"""The strategy factory and the Protocol every strategy satisfies."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.server.strategies import STRATEGIES, Strategy, make_strategy
from tests.pipeline.server.strategies.conftest import results, zeros

CHEAP = sorted(set(STRATEGIES) - {"dp_fedavg"})


def test_unknown_name_lists_valid_ones() -> None:
    with pytest.raises(ValueError) as info:
        make_strategy("fedprox")
    for name in ("fedavg", "fedavgm", "fedadam", "median", "trimmed_mean", "krum", "fedbuff"):
        assert name in str(info.value)


@pytest.mark.parametrize("name", CHEAP)
def test_every_strategy_follows_the_protocol(name: str) -> None:
    # Prepare
    s = make_strategy(name)
    g = {"w": np.array([1.0, 2.0], np.float32)}
    # Execute
    out = s.aggregate(g, [])
    # Assert: Protocol, name, empty round -> unchanged copy
    assert isinstance(s, Strategy) and s.name == name
    np.testing.assert_array_equal(out["w"], g["w"])
    assert out["w"] is not g["w"]


@pytest.mark.parametrize("name", CHEAP)
def test_identical_updates_move_every_strategy_the_same_way(name: str) -> None:
    kwargs = {"buffer_size": 5} if name == "fedbuff" else {}
    out = make_strategy(name, **kwargs).aggregate(zeros(2), results(*[[1.0, -1.0]] * 5))
    direction = np.sign(out["w"])
    assert direction.tolist() == [1.0, -1.0]


def test_options_are_keyword_only() -> None:
    from pipeline.server.strategies.fedavg import FedAvg

    with pytest.raises(TypeError):
        FedAvg(0.5)  # type: ignore[misc]
