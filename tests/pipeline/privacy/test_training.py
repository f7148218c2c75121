"""DP training: ledger connected through the optimizer hook; calibration meets the budget."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pipeline.privacy import make_private, noise_multiplier_for_budget, train_steps
from pipeline.privacy.accounting import compute_epsilon
from pipeline.privacy.ledger import LedgerEntry, PrivacyLedger


def _setup(n: int = 200, bs: int = 20):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(n, 4), torch.randn(n))
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1), nn.Flatten(0))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, opt, DataLoader(data, batch_size=bs)


@pytest.mark.parametrize("mode", ["hooks", "ew"])
def test_every_step_lands_in_the_ledger(mode):  # type: ignore[no-untyped-def]
    model, opt, loader = _setup()
    ledger = PrivacyLedger(node_id="n", budget=10, delta=1e-5, mechanism="rdp")
    dp = make_private(module=model, optimizer=opt, data_loader=loader, ledger=ledger,
                      noise_multiplier=1.1, max_grad_norm=1.0, grad_sample_mode=mode)
    before = [p.detach().clone() for p in model.parameters()]
    train_steps(dp, loss_fn=nn.MSELoss(), steps=7)
    assert dp.sample_rate == pytest.approx(0.1)
    assert ledger.history == (LedgerEntry(1.1, 0.1, 7),)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_make_private_rejects_bad_arguments():  # type: ignore[no-untyped-def]
    model, opt, loader = _setup()
    ledger = PrivacyLedger(node_id="n", budget=10, delta=1e-5)
    with pytest.raises(ValueError):
        make_private(module=model, optimizer=opt, data_loader=loader, ledger=ledger,
                     noise_multiplier=0.0, max_grad_norm=1.0)
    with pytest.raises(ValueError):
        make_private(module=model, optimizer=opt, data_loader=loader, ledger=ledger,
                     noise_multiplier=1.0, max_grad_norm=-1.0)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_calibrated_noise_meets_budget(accountant):  # type: ignore[no-untyped-def]
    sigma = noise_multiplier_for_budget(epsilon=2.0, delta=1e-5, sample_rate=0.05, steps=100,
                                        accountant=accountant)
    eps = compute_epsilon([LedgerEntry(sigma, 0.05, 100)], delta=1e-5, mechanism=accountant)
    assert 1.97 <= eps <= 2.0


def test_calibration_rejects_bad_plan():  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        noise_multiplier_for_budget(epsilon=0, delta=1e-5, sample_rate=0.1, steps=10)
