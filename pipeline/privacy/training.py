"""DP-SGD local training: one keyword-only entry point in the style of Opacus ``make_private``.

:func:`make_private` wraps the caller's model, optimizer and data loader with Opacus (per-sample
gradients, flat clipping, Gaussian noise, Poisson sampling) and connects the node's
:class:`~pipeline.privacy.ledger.PrivacyLedger` through the optimizer's step hook: every noisy step is
recorded in the ledger automatically, and nobody calls ``ledger.step()`` by hand.

Examples
--------
>>> import torch
>>> from torch import nn
>>> from torch.utils.data import DataLoader, TensorDataset
>>> from pipeline.privacy.ledger import PrivacyLedger
>>> data = TensorDataset(torch.randn(64, 3), torch.randn(64))
>>> model = nn.Sequential(nn.Linear(3, 1), nn.Flatten(0))
>>> ledger = PrivacyLedger(node_id="n", budget=10.0, delta=1e-5)
>>> dp = make_private(module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
...                   data_loader=DataLoader(data, batch_size=16), ledger=ledger,
...                   noise_multiplier=1.0, max_grad_norm=1.0)
>>> _ = train_steps(dp, loss_fn=nn.MSELoss(), steps=3)
>>> ledger.total_steps
3
"""

from __future__ import annotations

import itertools
import logging
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader

from pipeline.privacy.ledger import PrivacyLedger
from pipeline.tasks.base import GradSampleMode

__all__ = ["PrivateTraining", "make_private", "train_steps"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrivateTraining:
    """The wrapped training objects returned by :func:`make_private`.

    Attributes
    ----------
    module
        Opacus ``GradSampleModule`` around the caller's model (which is trained in place).
    optimizer
        Opacus ``DPOptimizer`` (clip + noise); its step hook records into ``ledger``.
    data_loader
        Poisson-sampling loader over the same dataset.
    sample_rate
        Sampling probability q = 1 / len(data_loader).
    noise_multiplier, max_grad_norm
        The DP-SGD parameters.
    ledger
        The ledger every step is recorded in.
    """

    module: nn.Module
    optimizer: Any
    data_loader: DataLoader[Any]
    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float
    ledger: PrivacyLedger


def make_private(
    *,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: DataLoader[Any],
    ledger: PrivacyLedger,
    noise_multiplier: float,
    max_grad_norm: float,
    grad_sample_mode: GradSampleMode = "hooks",
    poisson_sampling: bool = True,
    noise_generator: torch.Generator | None = None,
) -> PrivateTraining:
    """Make ``module``/``optimizer``/``data_loader`` differentially private, accounted in ``ledger``.

    Parameters
    ----------
    module, optimizer, data_loader
        The caller's plain PyTorch objects; ``optimizer`` must hold ``module``'s parameters and
        ``data_loader.batch_size`` is the expected batch size.
    ledger
        Receives one entry per noisy step through the optimizer step hook.
    noise_multiplier, max_grad_norm
        DP-SGD σ (relative to the clip) and per-example L2 clipping norm.
    grad_sample_mode
        Opacus per-sample gradient engine (``"hooks"``, ``"ew"``, ``"functorch"``).
    poisson_sampling
        Keep ``True``: the accountants assume Poisson sampling.
    noise_generator
        Optional generator for the noise (reproducible runs).

    Raises
    ------
    ValueError
        non-positive ``noise_multiplier`` or ``max_grad_norm``, or an incompatible module.
    """
    if not noise_multiplier > 0:
        raise ValueError(f"noise_multiplier must be > 0, got {noise_multiplier}")
    if not max_grad_norm > 0:
        raise ValueError(f"max_grad_norm must be > 0, got {max_grad_norm}")
    if not poisson_sampling:
        logger.warning("poisson_sampling=False: the ledger's ε assumes Poisson sampling")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
        engine = PrivacyEngine(accountant=ledger.mechanism)
        dp_module, dp_optimizer, dp_loader = engine.make_private(
            module=module, optimizer=optimizer, data_loader=data_loader,
            noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
            poisson_sampling=poisson_sampling, grad_sample_mode=grad_sample_mode,
            noise_generator=noise_generator,
        )
    sample_rate = 1.0 / len(dp_loader)
    # replace the engine's own accountant hook: the ledger is the only accountant
    dp_optimizer.attach_step_hook(ledger.optimizer_hook(sample_rate=sample_rate))
    return PrivateTraining(dp_module, dp_optimizer, dp_loader, sample_rate,
                           float(noise_multiplier), float(max_grad_norm), ledger)


def train_steps(dp: PrivateTraining, *, loss_fn: nn.Module, steps: int) -> float:
    """Run exactly ``steps`` DP-SGD steps (cycling the Poisson loader); return the mean loss.

    Examples
    --------
    See the module docstring.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    dp.module.train()
    total, n = 0.0, 0
    batches = itertools.chain.from_iterable(itertools.repeat(dp.data_loader))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ff]ull backward hook.*")
        for _, (x, y) in zip(range(steps), batches, strict=False):
            total += _one_step(dp, loss_fn, x, y)
            n += 1
    return total / max(n, 1)


def _one_step(dp: PrivateTraining, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    dp.optimizer.zero_grad(set_to_none=True)
    if len(y) == 0:  # empty Poisson batch: still a (pure-noise) step for the accountant
        loss = dp.module(x).sum() * 0.0
    else:
        loss = loss_fn(dp.module(x), y)
    loss.backward()
    dp.optimizer.step()
    return float(loss.detach())
