"""Client-level DP at the aggregator (DP-FedAvg)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.server.strategies import make_strategy
from pipeline.server.strategies.client_dp import ClientDP
from pipeline.server.strategies.fedadam import FedAdam
from tests.pipeline.server.strategies.conftest import results, zeros


def test_clipping_without_noise_hand_case() -> None:
    # Prepare: C=1; [3,4] -> [0.6,0.8]; [0.3,0] unchanged; mean over 2 clients
    s = ClientDP(noise_multiplier=0.0, clip_norm=1.0, sample_rate=1.0)
    # Execute
    out = s.aggregate(zeros(2), results([3.0, 4.0], [0.3, 0.0], examples=[100, 1]))
    # Assert: uniform weights, num_examples ignored
    np.testing.assert_allclose(out["w"], [0.45, 0.4], rtol=1e-6)
    assert s.last_clipped == 1


def test_noise_std_matches_sigma_c_over_denominator() -> None:
    # Prepare: zero deltas, σ=2, C=0.5, fixed denominator 4 -> std 0.25 per coordinate
    s = ClientDP(noise_multiplier=2.0, clip_norm=0.5, sample_rate=0.1, expected_clients=4.0, seed=0)
    # Execute
    out = s.aggregate(zeros(20_000), results(*[[0.0] * 20_000] * 3))
    # Assert
    assert float(np.std(out["w"])) == pytest.approx(0.25, rel=0.03)
    assert abs(float(np.mean(out["w"]))) < 0.01


def test_accountant_tracks_rounds_and_epsilon_grows() -> None:
    # Prepare
    s = make_strategy("dp_fedavg", noise_multiplier=1.0, clip_norm=1.0, sample_rate=0.1, seed=0)
    assert s.epsilon() == 0.0  # type: ignore[attr-defined]
    # Execute
    w = s.aggregate(zeros(3), results([1.0, 0.0, 0.0]))
    eps1 = s.epsilon()  # type: ignore[attr-defined]
    s.aggregate(w, results([1.0, 0.0, 0.0]))
    s.aggregate(w, [])  # empty round spends nothing
    # Assert: matches a fresh Opacus RDP accountant for 2 steps of (σ=1, q=0.1)
    from opacus.accountants import RDPAccountant

    ref = RDPAccountant()
    ref.step(noise_multiplier=1.0, sample_rate=0.1)
    ref.step(noise_multiplier=1.0, sample_rate=0.1)
    assert s.rounds == 2  # type: ignore[attr-defined]
    assert 0 < eps1 < s.epsilon() == pytest.approx(ref.get_epsilon(delta=1e-5))  # type: ignore[attr-defined]


def test_inner_server_optimizer_and_state_round_trip() -> None:
    a = ClientDP(
        noise_multiplier=0.0,
        clip_norm=10.0,
        sample_rate=0.5,
        inner=FedAdam(server_lr=1.0, beta1=0.0, beta2=0.0, tau=1.0),
    )
    assert a.name == "dp_fedadam"
    np.testing.assert_allclose(a.aggregate(zeros(1), results([1.0]))["w"], [0.5])
    b = ClientDP(
        noise_multiplier=0.0,
        clip_norm=10.0,
        sample_rate=0.5,
        inner=FedAdam(server_lr=1.0, beta1=0.0, beta2=0.0, tau=1.0),
    )
    b.load_state_dict(a.state_dict())
    assert b.rounds == 1 and b.epsilon() == float("inf")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        ClientDP(noise_multiplier=1.0, clip_norm=0.0, sample_rate=0.1)
    with pytest.raises(ValueError):
        ClientDP(noise_multiplier=1.0, clip_norm=1.0, sample_rate=0.0)
    with pytest.raises(ValueError):
        ClientDP(noise_multiplier=1.0, clip_norm=1.0, sample_rate=0.1, accountant="gdp")  # type: ignore[arg-type]
