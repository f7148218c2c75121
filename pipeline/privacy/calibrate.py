"""Noise multiplier from a privacy budget and the planned training.

Examples
--------
>>> sigma = noise_multiplier_for_budget(epsilon=3.0, delta=1e-5, sample_rate=0.04, steps=200,
...                                     accountant="rdp")
>>> 0.5 < sigma < 2.0
True
"""

from __future__ import annotations

from functools import lru_cache

from opacus.accountants.utils import get_noise_multiplier

from pipeline.privacy.accounting import Mechanism

__all__ = ["noise_multiplier_for_budget"]


@lru_cache(maxsize=256)
def _sigma(epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str,
           tolerance: float) -> float:
    return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta,
                                      sample_rate=sample_rate, steps=steps, accountant=accountant,
                                      epsilon_tolerance=tolerance))


def noise_multiplier_for_budget(*, epsilon: float, delta: float, sample_rate: float, steps: int,
                                accountant: Mechanism = "prv", tolerance: float = 0.01) -> float:
    """Smallest σ (within ``tolerance`` in ε) so that ``steps`` steps at ``sample_rate`` spend ≤ ε.

    ``steps`` is the whole plan: rounds × local steps per round. Calls
    ``opacus.accountants.utils.get_noise_multiplier``.

    Raises
    ------
    ValueError
        non-positive budget, δ outside (0, 1), sample rate outside (0, 1] or steps < 1.
    """
    if not epsilon > 0 or not 0 < delta < 1 or not 0 < sample_rate <= 1 or steps < 1:
        raise ValueError(f"bad plan: epsilon={epsilon}, delta={delta}, "
                         f"sample_rate={sample_rate}, steps={steps}")
    return _sigma(float(epsilon), float(delta), float(sample_rate), int(steps), accountant,
                  float(tolerance))
