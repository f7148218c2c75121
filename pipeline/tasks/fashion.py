"""``fashion-mnist``: Fashion-MNIST split over N nodes with Dirichlet(α) label skew.

Data comes from Debian ``dataset-fashion-mnist`` (:func:`pipeline.assets.locate`); nothing is
downloaded. Each class's training images are divided among the nodes in proportions drawn from
Dirichlet(α·1) with a fixed seed (Hsu et al. 2019, "Measuring the effects of non-identical data
distribution"), the usual label-skew benchmark.

Models see either ScatterNet features (default; Tramèr & Boneh 2021: a fixed kymatio
``Scattering2D`` front-end, J=2, L=8, computed once per split and cached on disk, then a
per-example GroupNorm and a linear layer or a small CNN) or normalised pixels (a small CNN). All
use GroupNorm and non-inplace activations, both required by Opacus per-sample gradients.

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
import hashlib
import logging
import os
import time
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from pipeline.assets import cache_dir, locate
from pipeline.tasks.base import Split, TrainConfig

__all__ = ["FashionCNN", "FashionMnistTask", "ScatterCNN", "ScatterLinear", "dirichlet_partition",
           "load_fashion_mnist", "scatter_features", "scatter_transform"]

logger = logging.getLogger(__name__)

_MEAN, _STD = 0.2860, 0.3530  # public constants of Fashion-MNIST, not re-estimated

SCATTER_J, SCATTER_L = 2, 8
#: channels × height × width of the scattering features of one 28×28 image (J=2, L=8, order 2:
#: 1 + J·L + L²·J(J-1)/2 = 81 channels, spatial size 28 / 2^J = 7)
SCATTER_SHAPE = (81, 7, 7)


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


class ScatterLinear(nn.Module):
    """ScatterNet + linear (Tramèr & Boneh 2021): GroupNorm over the 81 channels, then FC(10).

    Input: :func:`scatter_transform` features ``[N, 81, 7, 7]`` (not pixels). The GroupNorm has
    no parameters and normalises each example on its own (groups of 3 channels), so it uses no
    dataset statistics and costs no privacy. 39 700 parameters.
    """

    def __init__(self, *, groups: int = 27) -> None:
        super().__init__()
        c, h, w = SCATTER_SHAPE
        self.norm = nn.GroupNorm(groups, c, affine=False)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.norm(x))
        return out


class ScatterCNN(nn.Module):
    """ScatterNet + small CNN: the same parameter-free GroupNorm, then conv1×1(16)–GroupNorm–
    tanh–conv3×3(width)–GroupNorm–maxpool(7→3)–tanh–FC(10); ``width`` 32: 8 938 parameters.

    Input: :func:`scatter_transform` features ``[N, 81, 7, 7]``. The 1×1 convolution first
    shrinks the 81 channels to 16, which keeps the per-example gradients cheap.
    """

    def __init__(self, *, width: int = 32, groups: int = 27) -> None:
        super().__init__()
        c = SCATTER_SHAPE[0]
        self.norm = nn.GroupNorm(groups, c, affine=False)
        self.features = nn.Sequential(
            nn.Conv2d(c, 16, 1), nn.GroupNorm(4, 16), nn.Tanh(),
            nn.Conv2d(16, width, 3, padding=1), nn.GroupNorm(4, width), nn.MaxPool2d(2),
            nn.Tanh(),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(width * 9, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(self.norm(x)))
        return out


def _to_tensor(x: np.ndarray) -> torch.Tensor:
    return ((torch.from_numpy(x.astype(np.float32)) / 255.0 - _MEAN) / _STD).unsqueeze(1)


# ------------------------------------------------------------------ ScatterNet features
_SCATTER_BATCH = 128


@lru_cache(maxsize=1)
def _scattering() -> nn.Module:
    # the 2-D torch frontend directly: ``kymatio.torch`` also imports the 3-D scattering, which
    # needs ``scipy.special.sph_harm`` (removed in SciPy 1.15)
    from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D

    module: nn.Module = ScatteringTorch2D(J=SCATTER_J, shape=(28, 28), L=SCATTER_L)
    return module


def scatter_transform(images: np.ndarray) -> torch.Tensor:
    """Return the ScatterNet features ``float32 [N, 81, 7, 7]`` of ``uint8 [N, 28, 28]`` images.

    A fixed, parameter-free transform (kymatio ``Scattering2D``, J=2, L=8, Morlet wavelets whose
    filters are computed analytically) of the pixels scaled to [0, 1]: it uses no training data,
    so it costs no privacy (Tramèr & Boneh 2021, "Differentially private learning needs better
    features"). About 5 ms per image on one core of this CPU.

    Examples
    --------
    >>> x, _ = load_fashion_mnist("t10k")
    >>> tuple(scatter_transform(x[:3]).shape)
    (3, 81, 7, 7)
    """
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"need uint8 images [N, 28, 28], got shape {images.shape}")
    scat = _scattering()
    out = torch.empty((len(images), *SCATTER_SHAPE), dtype=torch.float32)
    with torch.no_grad():
        for i in range(0, len(images), _SCATTER_BATCH):
            chunk = torch.from_numpy(images[i: i + _SCATTER_BATCH].astype(np.float32) / 255.0)
            out[i: i + len(chunk)] = scat(chunk).reshape(len(chunk), *SCATTER_SHAPE)
    return out


@lru_cache(maxsize=2)
def _scatter_cache_path(split: str) -> Path:
    from kymatio.version import version

    digest = hashlib.sha256(load_fashion_mnist(split)[0].tobytes()).hexdigest()[:16]
    name = f"{split}-J{SCATTER_J}-L{SCATTER_L}-kymatio{version}-{digest}.npy"
    return cache_dir() / "fashion-scatter" / name


@lru_cache(maxsize=2)
def scatter_features(split: str = "train") -> np.ndarray:
    """Return the ScatterNet features ``float32 [N, 81, 7, 7]`` of a whole split (memory-mapped).

    Computed once per machine (:func:`scatter_transform` of every image, a few minutes for the
    60 000 training images) and cached as ``.npy`` under ``$EDGEVEIL_CACHE/fashion-scatter``
    (default ``~/.cache/edgeveil``), keyed by split, J, L, kymatio version and a hash of the images.
    """
    images, _ = load_fashion_mnist(split)
    path = _scatter_cache_path(split)
    if not path.exists():
        logger.warning("computing the ScatterNet features of the %d %s images once (a few "
                       "minutes on 2 CPU cores); later runs read them from %s",
                       len(images), split, path)
        t0 = time.perf_counter()
        feats = scatter_transform(images).numpy()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
        np.save(tmp, feats)
        os.replace(tmp, path)
        logger.info("scattered %d %s images in %.0f s -> %s", len(images), split,
                    time.perf_counter() - t0, path)
    arr: np.ndarray = np.load(path, mmap_mode="r")
    if arr.shape != (len(images), *SCATTER_SHAPE):
        raise ValueError(f"scatter cache {path} has shape {arr.shape}; delete it")
    return arr


Features = Literal["scatter", "pixels"]

#: measured local-training settings per input representation (docs/fl.md, fashion-mnist)
TRAIN_CONFIGS: dict[str, TrainConfig] = {
    "pixels": TrainConfig(lr=2.0, batch_size=256, local_steps=5, max_grad_norm=1.0,
                          grad_sample_mode="ew", momentum=0.0),
    "scatter": TrainConfig(lr=2.0, batch_size=256, local_steps=10, max_grad_norm=1.0,
                           grad_sample_mode="ew", momentum=0.0),
}
DEFAULT_FEATURES: Features = "scatter"


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
        Model width. ``"pixels"``: the CNN's FC layer (default 32: ~55 k parameters; 64 gives
        ~106 k, the size the aggregator benchmarks use). ``"scatter"`` with ``head="cnn"``: the
        3×3 convolution's channels. Unused by the linear head.
    features
        Model input (default ``"scatter"``). ``"scatter"``: ScatterNet features 81×7×7
        (:func:`scatter_transform`, a fixed transform applied to the images before training and
        before serving: an exported model takes these features, not pixels). Without caps the
        features of a whole split come from the disk cache of :func:`scatter_features`; with
        caps and no cache yet, only the selected images are transformed. ``"pixels"``:
        normalised 1×28×28 images and :class:`FashionCNN`.
    head
        Model on the ScatterNet features: ``"linear"`` (default, :class:`ScatterLinear`) or
        ``"cnn"`` (:class:`ScatterCNN`).
    """

    name = "fashion-mnist"
    primary_metric = "accuracy"
    higher_is_better = True
    train_config = TRAIN_CONFIGS[DEFAULT_FEATURES]

    def __init__(self, *, num_nodes: int = 10, alpha: float = 0.5, seed: int = 0,
                 max_train_per_node: int | None = None, max_test: int | None = None,
                 hidden: int = 32, features: Features = DEFAULT_FEATURES,
                 head: Literal["linear", "cnn"] = "linear") -> None:
        if not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be an int >= 1, got {hidden!r}")
        if features not in TRAIN_CONFIGS:
            raise ValueError(f"features must be one of {sorted(TRAIN_CONFIGS)}, got {features!r}")
        if head not in ("linear", "cnn"):
            raise ValueError(f"head must be 'linear' or 'cnn', got {head!r}")
        self._head = head
        self._hidden = hidden
        self.features: Features = features
        self.train_config = TRAIN_CONFIGS[features]
        x, y = load_fashion_mnist("train")
        parts = dirichlet_partition(y, num_nodes=num_nodes, alpha=alpha, seed=seed)
        rng = np.random.default_rng(seed + 1)
        if max_train_per_node is not None:
            parts = [np.sort(rng.permutation(p)[:max_train_per_node]) for p in parts]
        self._capped = {"train": max_train_per_node is not None, "t10k": max_test is not None}
        self._ids = [f"fmnist-{i:02d}" for i in range(num_nodes)]
        self._parts = dict(zip(self._ids, parts, strict=True))
        self._x, self._y = x, y
        xt, yt = load_fashion_mnist("t10k")
        self._test_idx = np.arange(len(yt))
        if max_test is not None:
            self._test_idx = np.sort(rng.permutation(len(yt))[:max_test])
        self._test: TensorDataset | None = None
        self._cache: dict[str, TensorDataset] = {}
        logger.info("fashion-mnist (%s): %d nodes, sizes %s", features, num_nodes,
                    [len(p) for p in parts])

    def _inputs(self, split: str, idx: np.ndarray) -> torch.Tensor:
        images = self._x if split == "train" else load_fashion_mnist("t10k")[0]
        if self.features == "pixels":
            return _to_tensor(images[idx])
        if self._capped[split] and not _scatter_cache_path(split).exists():
            return scatter_transform(images[idx])
        return torch.from_numpy(np.ascontiguousarray(scatter_features(split)[idx]))

    def _test_data(self) -> TensorDataset:
        if self._test is None:
            yt = load_fashion_mnist("t10k")[1][self._test_idx]
            self._test = TensorDataset(self._inputs("t10k", self._test_idx), torch.from_numpy(yt))
        return self._test

    def node_ids(self) -> list[str]:
        return list(self._ids)

    def build_model(self) -> nn.Module:
        if self.features == "scatter":
            return ScatterCNN(width=self._hidden) if self._head == "cnn" else ScatterLinear()
        return FashionCNN(hidden=self._hidden)

    def train_data(self, node_id: str) -> TensorDataset:
        if node_id not in self._parts:
            raise KeyError(f"unknown node {node_id!r}; known: {self._ids}")
        if node_id not in self._cache:
            idx = self._parts[node_id]
            self._cache[node_id] = TensorDataset(self._inputs("train", idx),
                                                 torch.from_numpy(self._y[idx]))
        return self._cache[node_id]

    def centralized_train_data(self) -> TensorDataset:
        idx = np.sort(np.concatenate(list(self._parts.values())))
        return TensorDataset(self._inputs("train", idx), torch.from_numpy(self._y[idx]))

    def label_histogram(self) -> dict[str, list[int]]:
        """Return each node's per-class example counts (to show the skew)."""
        return {n: np.bincount(self._y[p], minlength=10).tolist() for n, p in self._parts.items()}

    def loss_fn(self) -> nn.Module:
        return nn.CrossEntropyLoss()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, *, split: Split = "test",
                 node_id: str | None = None) -> dict[str, float]:
        if split == "test":
            data = self._test_data()
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
