"""The Task protocol: what federated training needs to know about one learning problem.

A task owns the model architecture, each node's local data, the loss, the metrics and the
partitioning. Everything else (DP training, the ledger, codec, strategies, simulation) is generic.

Examples
--------
>>> from pipeline.tasks import get_task
>>> task = get_task("fashion-mnist", num_nodes=3, max_train_per_node=64, max_test=64)
>>> task.node_ids()
['fmnist-00', 'fmnist-01', 'fmnist-02']
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import nn
from torch.utils.data import TensorDataset

__all__ = ["GradSampleMode", "Split", "Task", "TrainConfig"]

Split = Literal["train", "val", "test"]
GradSampleMode = Literal["hooks", "ew", "functorch"]


@dataclass(frozen=True)
class TrainConfig:
    """Local-training hyper-parameters a task recommends (measured, see ``docs/fl.md``).

    Parameters
    ----------
    lr
        Learning rate of the local optimizer.
    batch_size
        Expected (Poisson) batch size; sample rate = ``batch_size / len(local data)``.
    local_steps
        Optimizer steps per round.
    max_grad_norm
        Per-example clipping norm.
    grad_sample_mode
        Opacus per-sample gradient engine picked for this model.
    momentum
        SGD momentum (0 = plain SGD).
    optimizer
        Local optimizer, ``"sgd"`` or ``"adam"`` (its state starts fresh every round).
    """

    lr: float = 0.1
    batch_size: int = 64
    local_steps: int = 10
    max_grad_norm: float = 1.0
    grad_sample_mode: GradSampleMode = "hooks"
    momentum: float = 0.0
    optimizer: Literal["sgd", "adam"] = "sgd"

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")

    def make_optimizer(self, params: Iterable[nn.Parameter], *, lr: float | None = None
                       ) -> torch.optim.Optimizer:
        """Return the local optimizer over ``params``."""
        lr = self.lr if lr is None else lr
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=lr)
        return torch.optim.SGD(params, lr=lr, momentum=self.momentum)


@runtime_checkable
class Task(Protocol):
    """A federated learning problem.

    Contract
    --------
    * ``node_ids()`` is stable for given constructor arguments (same seed → same partitions).
    * ``build_model()`` returns a fresh Opacus-compatible ``nn.Module`` (no BatchNorm, no inplace
      activations); its initial weights depend only on the global torch seed.
    * ``train_data(node_id)`` is that node's local training set only; no node sees another's.
    * ``evaluate(model, split=...)`` returns plain floats; ``primary_metric`` names the key the
      simulation reports, and ``higher_is_better`` says which way it improves.
    """

    name: str
    primary_metric: str
    higher_is_better: bool
    train_config: TrainConfig

    def node_ids(self) -> list[str]:
        """Return the node ids, one per partition."""
        ...

    def build_model(self) -> nn.Module:
        """Return a freshly initialised model."""
        ...

    def train_data(self, node_id: str) -> TensorDataset:
        """Return the local training set of ``node_id``."""
        ...

    def centralized_train_data(self) -> TensorDataset:
        """Return the union of every node's training data (anchors only)."""
        ...

    def loss_fn(self) -> nn.Module:
        """Return the training loss (``reduction="mean"``)."""
        ...

    def evaluate(self, model: nn.Module, *, split: Split = "test",
                 node_id: str | None = None) -> dict[str, float]:
        """Return metrics of ``model`` on ``split`` (one node's data, or all pooled)."""
        ...
