"""fashion-mnist task: Dirichlet partitions and an Opacus-compatible CNN."""

from __future__ import annotations

import numpy as np
import pytest
from opacus.validators import ModuleValidator

from pipeline.tasks import get_task
from pipeline.tasks.fashion import dirichlet_partition


def test_partition_is_deterministic_disjoint_and_complete():  # type: ignore[no-untyped-def]
    labels = np.repeat(np.arange(10), 300)
    a = dirichlet_partition(labels, num_nodes=10, alpha=0.5, seed=3)
    b = dirichlet_partition(labels, num_nodes=10, alpha=0.5, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    allidx = np.concatenate(a)
    assert len(allidx) == len(labels) == len(np.unique(allidx))


def test_small_alpha_skews_labels():  # type: ignore[no-untyped-def]
    labels = np.repeat(np.arange(10), 500)
    skewed = dirichlet_partition(labels, num_nodes=5, alpha=0.1, seed=0)
    flat = dirichlet_partition(labels, num_nodes=5, alpha=100.0, seed=0)

    def top_share(parts):  # type: ignore[no-untyped-def]
        return np.mean([np.bincount(labels[p], minlength=10).max() / len(p) for p in parts])

    assert top_share(skewed) > 2 * top_share(flat)


def test_task_nodes_model_and_metrics():  # type: ignore[no-untyped-def]
    task = get_task("fashion-mnist", num_nodes=4, max_train_per_node=50, max_test=100)
    assert task.node_ids() == [f"fmnist-{i:02d}" for i in range(4)]
    assert all(len(task.train_data(n)) == 50 for n in task.node_ids())
    model = task.build_model()
    ModuleValidator.validate(model, strict=True)  # no BatchNorm, no inplace ops
    metrics = task.evaluate(model)
    assert 0 <= metrics["accuracy"] <= 1 and metrics["loss"] > 0
    with pytest.raises(KeyError):
        task.train_data("nope")


def test_hidden_option_sets_model_size():  # type: ignore[no-untyped-def]
    small = get_task("fashion-mnist", num_nodes=2, max_train_per_node=8, max_test=8)
    wide = get_task("fashion-mnist", num_nodes=2, max_train_per_node=8, max_test=8, hidden=64)
    count = lambda t: sum(p.numel() for p in t.build_model().parameters())  # noqa: E731
    assert count(small) == 55_434
    assert count(wide) == 105_962  # ~100 k: the aggregator benchmarks' model
    with pytest.raises(ValueError):
        get_task("fashion-mnist", num_nodes=2, hidden=0)


def test_pooling_before_tanh_is_exact():  # type: ignore[no-untyped-def]
    import torch
    from torch import nn

    from pipeline.tasks.fashion import FashionCNN

    torch.manual_seed(0)
    model = FashionCNN().eval()
    f = model.features
    # the textbook order (tanh, then pool) on the same modules gives bit-identical outputs
    textbook = nn.Sequential(f[0], f[1], f[3], f[2], f[4], f[5], f[7], f[6], model.head)
    assert [type(m) for m in f] == [nn.Conv2d, nn.GroupNorm, nn.MaxPool2d, nn.Tanh] * 2
    x = torch.randn(64, 1, 28, 28) * 3
    with torch.no_grad():
        assert torch.equal(model(x), textbook(x))
