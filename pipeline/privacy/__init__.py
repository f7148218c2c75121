"""Differentially private local training (Opacus DP-SGD) connected to the privacy ledger.

Examples
--------
>>> from pipeline.privacy import make_private, noise_multiplier_for_budget, train_steps
>>> plan = dict(delta=1e-5, sample_rate=0.01, steps=100, accountant="rdp")
>>> sigma = noise_multiplier_for_budget(epsilon=1.0, **plan)
>>> 0.5 < sigma < 5  # some noise is needed for ε = 1 over 100 steps
True
>>> sigma > noise_multiplier_for_budget(epsilon=8.0, **plan)  # a larger budget needs less
True
"""

from pipeline.privacy.calibrate import noise_multiplier_for_budget
from pipeline.privacy.training import PrivateTraining, make_private, train_steps

__all__ = ["PrivateTraining", "make_private", "noise_multiplier_for_budget", "train_steps"]
