"""``fashion-mnist``: Fashion-MNIST split over N nodes with Dirichlet(α) label skew.

Data comes from Debian ``dataset-fashion-mnist`` (:func:`pipeline.assets.locate`); nothing is
downloaded. Each class's training images are divided among the nodes in proportions drawn from
Dirichlet(α·1) with a fixed seed (Hsu et al. 2019, "Measuring the effects of non-identical data
distribution"), the usual label-skew benchmark. The model is a small CNN with GroupNorm and
non-inplace activations, both required by Opacus per-sample gradients.

Examples
--------
>>> task = FashionMnistTask(num_nodes=4, alpha=0.5, seed=0, max_train_per_node=100, max_test=100)
>>> len(task.node_ids())
4
>>> sorted(task.evaluate(task.build_model()))
['accuracy', 'loss']
"""

from __future__ import annotations

import gzip
import logging
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from pipeline.assets import locate
from pipeline.tasks.base import Split, TrainConfig

__all__ = ["FashionCNN", "FashionMnistTask", "dirichlet_partition", "load_fashion_mnist"]

logger = logging.getLogger(__name__)

_MEAN, _STD = 0.2860, 0.3530


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@lru_cache(maxsize=2)
def load_fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images uint8 [N, 28, 28], labels int64 [N])`` of ``"train"`` or ``"t10k"``.

    Examples
    --------
    >>> x, y = load_fashion_mnist("t10k")
    >>> x.shape, int(y.max())
    ((10000, 28, 28), 9)
    """
    root = locate("fashion-mnist")
    x = _read_idx(root / f"{split}-images-idx3-ubyte.gz")
    y = _read_idx(root / f"{split}-labels-idx1-ubyte.gz").astype(np.int64)
    return x, y


def dirichlet_partition(labels: np.ndarray, *, num_nodes: int, alpha: float, seed: int,
                        min_size: int = 10) -> list[np.ndarray]:
    """Split example indices among ``num_nodes`` with Dirichlet(α) label skew.

    Redraws (with the same generator) until every node holds at least ``min_size`` examples.

    Examples
    --------
    >>> parts = dirichlet_partition(np.repeat(np.arange(10), 100), num_nodes=5, alpha=0.5, seed=1)
    >>> sum(len(p) for p in parts)
    1000
    """
    if num_nodes < 1 or alpha <= 0:
        raise ValueError(f"need num_nodes >= 1 and alpha > 0, got {num_nodes}, {alpha}")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(1000):
        parts: list[list[int]] = [[] for _ in range(num_nodes)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            props = rng.dirichlet(np.full(num_nodes, alpha))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
            for node, chunk in enumerate(np.split(idx, cuts)):
                parts[node].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise ValueError(f"could not give every node {min_size} examples with alpha={alpha}")


class FashionCNN(nn.Module):
    """Two 3×3 conv blocks (GroupNorm, tanh) and a two-layer head; ~55 k parameters.

    tanh rather than ReLU: bounded activations train better under DP-SGD
    (Papernot et al. 2021, "Tempered sigmoid activations for deep learning with DP").
    """

    def __init__(self, *, width: int = 16, hidden: int = 32) -> None:
        super().__init__()
        # pool before tanh: tanh is monotonic, so max-pooling first gives the same values while
        # computing tanh (forward and backward) on a quarter of the activations
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.GroupNorm(4, width), nn.MaxPool2d(2),
            nn.Tanh(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.GroupNorm(4, 2 * width),
            nn.MaxPool2d(2), nn.Tanh(),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * 49, hidden), nn.Tanh(), nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x))
        return out


def _to_tensor(x: np.ndarray) -> torch.Tensor:
    return ((torch.from_numpy(x.astype(np.float32)) / 255.0 - _MEAN) / _STD).unsqueeze(1)


class FashionMnistTask:
    """Fashion-MNIST over ``num_nodes`` label-skewed nodes.

    Parameters
    ----------
    num_nodes
        Number of edge nodes (default 10).
    alpha
        Dirichlet concentration; smaller is more skewed (default 0.5).
    seed
        Partition seed.
    max_train_per_node, max_test
        Optional caps for fast tests (a seeded subset, not a prefix).
    hidden
        Width of the CNN's hidden layer (default 32: ~55 k parameters; 64 gives ~106 k, the
        size the aggregator benchmarks use).
    """

    name = "fashion-mnist"
    primary_metric = "accuracy"
    higher_is_better = True
    train_config = TrainConfig(lr=2.0, batch_size=256, local_steps=5, max_grad_norm=1.0,
                               grad_sample_mode="ew", momentum=0.0)

    def __init__(self, *, num_nodes: int = 10, alpha: float = 0.5, seed: int = 0,
                 max_train_per_node: int | None = None, max_test: int | None = None,
                 hidden: int = 32) -> None:
        if not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be an int >= 1, got {hidden!r}")
        self._hidden = hidden
        x, y = load_fashion_mnist("train")
        parts = dirichlet_partition(y, num_nodes=num_nodes, alpha=alpha, seed=seed)
        rng = np.random.default_rng(seed + 1)
        if max_train_per_node is not None:
            parts = [np.sort(rng.permutation(p)[:max_train_per_node]) for p in parts]
        self._ids = [f"fmnist-{i:02d}" for i in range(num_nodes)]
        self._parts = dict(zip(self._ids, parts, strict=True))
        self._x, self._y = x, y
        xt, yt = load_fashion_mnist("t10k")
        if max_test is not None:
            keep = np.sort(rng.permutation(len(yt))[:max_test])
            xt, yt = xt[keep], yt[keep]
        self._test = TensorDataset(_to_tensor(xt), torch.from_numpy(yt))
        self._cache: dict[str, TensorDataset] = {}
        logger.info("fashion-mnist: %d nodes, sizes %s", num_nodes, [len(p) for p in parts])

    def node_ids(self) -> list[str]:
        return list(self._ids)

    def build_model(self) -> nn.Module:
        return FashionCNN(hidden=self._hidden)

    def train_data(self, node_id: str) -> TensorDataset:
        if node_id not in self._parts:
            raise KeyError(f"unknown node {node_id!r}; known: {self._ids}")
        if node_id not in self._cache:
            idx = self._parts[node_id]
            self._cache[node_id] = TensorDataset(_to_tensor(self._x[idx]),
                                                 torch.from_numpy(self._y[idx]))
        return self._cache[node_id]

    def centralized_train_data(self) -> TensorDataset:
        idx = np.sort(np.concatenate(list(self._parts.values())))
        return TensorDataset(_to_tensor(self._x[idx]), torch.from_numpy(self._y[idx]))

    def label_histogram(self) -> dict[str, list[int]]:
        """Return each node's per-class example counts (to show the skew)."""
        return {n: np.bincount(self._y[p], minlength=10).tolist() for n, p in self._parts.items()}

    def loss_fn(self) -> nn.Module:
        return nn.CrossEntropyLoss()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, *, split: Split = "test",
                 node_id: str | None = None) -> dict[str, float]:
        if split == "test":
            data = self._test
        elif split == "train":
            data = self.train_data(node_id) if node_id else self.centralized_train_data()
        else:
            raise ValueError("fashion-mnist has splits 'train' and 'test' (no validation split)")
        x, y = data.tensors
        was_training = model.training
        model.eval()
        correct, loss = 0, 0.0
        for i in range(0, len(y), 1000):
            out = model(x[i: i + 1000])
            loss += float(nn.functional.cross_entropy(out, y[i: i + 1000], reduction="sum"))
            correct += int((out.argmax(1) == y[i: i + 1000]).sum())
        model.train(was_training)
        return {"accuracy": correct / len(y), "loss": loss / len(y)}
