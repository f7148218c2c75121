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
    kw = {"num_nodes": 2, "max_train_per_node": 8, "max_test": 8, "features": "pixels"}
    small = get_task("fashion-mnist", **kw)
    wide = get_task("fashion-mnist", **kw, hidden=64)
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


# ------------------------------------------------------------------ ScatterNet features


def test_scatter_features_shape_and_no_parameters():  # type: ignore[no-untyped-def]
    import torch

    from pipeline.tasks.fashion import (
        SCATTER_SHAPE,
        _scattering,
        load_fashion_mnist,
        scatter_transform,
    )

    x, _ = load_fashion_mnist("t10k")
    feats = scatter_transform(x[:5])
    assert SCATTER_SHAPE == (81, 7, 7)
    assert feats.shape == (5, 81, 7, 7) and feats.dtype == torch.float32
    # low-pass averages of the image and of wavelet moduli: non-negative up to FFT round-off
    assert torch.isfinite(feats).all() and feats.min() > -1e-3 * feats.max()
    # a fixed transform: nothing to learn, and each image's features depend on that image only
    assert sum(p.numel() for p in _scattering().parameters()) == 0
    torch.testing.assert_close(scatter_transform(x[2:3]), feats[2:3], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        scatter_transform(x[:2, :14])


@pytest.fixture(scope="module")
def scatter_task():  # type: ignore[no-untyped-def]
    return get_task("fashion-mnist", num_nodes=3, seed=0, max_train_per_node=150, max_test=200,
                    features="scatter")


def test_scatter_task_data_and_models_are_opacus_compatible(scatter_task):  # type: ignore[no-untyped-def]
    import torch

    from pipeline.tasks.fashion import ScatterCNN, ScatterLinear

    x, y = scatter_task.train_data("fmnist-00").tensors
    assert x.shape == (150, 81, 7, 7) and y.shape == (150,)
    assert scatter_task.features == "scatter" and scatter_task.train_config.local_steps == 10
    linear = scatter_task.build_model()
    assert isinstance(linear, ScatterLinear)
    assert sum(p.numel() for p in linear.parameters()) == 39_700
    cnn = get_task("fashion-mnist", num_nodes=2, max_train_per_node=8, max_test=8,
                   head="cnn").build_model()
    assert isinstance(cnn, ScatterCNN) and sum(p.numel() for p in cnn.parameters()) == 8_938
    for model in (linear, cnn):
        ModuleValidator.validate(model, strict=True)  # no BatchNorm, no inplace ops
        assert model(x[:4]).shape == (4, 10)
        # the per-sample normalisation makes each output independent of the rest of the batch
        with torch.no_grad():
            torch.testing.assert_close(model(x[:4])[1:2], model(x[1:2]), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError):
        get_task("fashion-mnist", num_nodes=2, features="jpeg")


@pytest.mark.parametrize("head", ["linear", "cnn"])
def test_scatter_dp_simulation_improves(scatter_task, head):  # type: ignore[no-untyped-def]
    import torch

    from pipeline.sim import simulate

    torch.set_num_threads(1)
    task = scatter_task
    if head == "cnn":
        task = get_task("fashion-mnist", num_nodes=3, seed=0, max_train_per_node=150,
                        max_test=200, features="scatter", head="cnn")
    from pipeline.plan import FederationPlan

    plan = FederationPlan(task="fashion-mnist", rounds=3, epsilon=3.0, accountant="rdp",
                          local_steps=5, batch_size=50)
    res = simulate(plan, task=task, workers=1)
    assert max(res.epsilons.values()) <= 3.0
    assert res.final_metrics["accuracy"] > res.initial_metrics["accuracy"] + 0.2
    if head == "linear":  # int8 target; the 9 k-parameter CNN's update is mostly per-tensor overhead
        assert res.rounds[-1].bytes_per_update <= 0.25 * res.rounds[-1].raw_float32_bytes


def test_scatter_model_exports_to_onnx(scatter_task):  # type: ignore[no-untyped-def]
    import numpy as np
    import onnxruntime as ort
    import torch

    from pipeline.serving.onnx_export import OnnxTemplate
    from pipeline.weights import get_weights

    torch.manual_seed(0)
    model = scatter_task.build_model().eval()
    example = torch.zeros(1, 81, 7, 7)  # an exported model takes ScatterNet features
    template = OnnxTemplate(model, example=example)
    x = scatter_task.train_data("fmnist-01").tensors[0][:6]
    sess = ort.InferenceSession(template.fill(get_weights(model)),
                                providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4)
