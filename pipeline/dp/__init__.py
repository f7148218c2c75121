"""Differentially private local training (Opacus DP-SGD) connected to the privacy ledger.

Examples
--------
>>> from pipeline.dp import make_private, noise_multiplier_for_budget, train_steps
"""

from pipeline.dp.calibrate import noise_multiplier_for_budget
from pipeline.dp.training import PrivateTraining, make_private, train_steps

__all__ = ["PrivateTraining", "make_private", "noise_multiplier_for_budget", "train_steps"]
