"""OnnxTemplate: one export, new weights written into the initializers, same output as PyTorch."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from pipeline.serving.onnx_export import OnnxTemplate, export_onnx
from pipeline.tasks import get_task
from pipeline.weights import get_weights, set_weights


def _run(onnx_bytes: bytes, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _random_weights(model: torch.nn.Module, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(0.0, 0.3, size=v.shape).astype(np.float32)
            for k, v in get_weights(model).items()}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_filled_template_matches_pytorch_on_random_weights(seed: int) -> None:
    # the aggregator's task model: conv + group norm + linear layers
    task = get_task("fashion-mnist", num_nodes=2, max_train_per_node=8, max_test=8, hidden=16,
                    features="pixels")
    torch.manual_seed(0)
    model = task.build_model().eval()
    template = OnnxTemplate(model, example=torch.zeros(1, 1, 28, 28))
    weights = _random_weights(model, seed)
    set_weights(model, weights)
    x = np.random.default_rng(100 + seed).normal(size=(4, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    got = _run(template.fill(weights), x)
    np.testing.assert_allclose(got, want, atol=1e-4)
    # the same weights through a full export agree too
    np.testing.assert_allclose(_run(export_onnx(model, example=torch.zeros(1, 1, 28, 28)), x),
                               got, atol=1e-5)


def test_fills_are_independent_and_leave_the_model_alone() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2))
    before = get_weights(model)
    template = OnnxTemplate(model, example=torch.zeros(1, 5))
    for k, v in get_weights(model).items():  # the check at creation ran on a copy
        np.testing.assert_array_equal(v, before[k])
    a, b = _random_weights(model, 1), _random_weights(model, 2)
    onnx_a, onnx_b = template.fill(a), template.fill(b)
    x = np.ones((3, 5), np.float32)
    for weights, blob in ((a, onnx_a), (b, onnx_b)):
        set_weights(model, weights)
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(_run(blob, x), want, atol=1e-5)
    assert template.fill(a) == onnx_a  # deterministic bytes


def test_fill_rejects_other_names_shapes_and_dtypes() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    template = OnnxTemplate(model, example=torch.zeros(1, 3))
    good = get_weights(model)
    assert set(template.names) == set(good)
    with pytest.raises(ValueError, match="missing"):
        template.fill({"0.weight": good["0.weight"]})
    with pytest.raises(ValueError, match="unexpected"):
        template.fill({**good, "extra": np.zeros(1, np.float32)})
    with pytest.raises(ValueError, match="wants"):
        template.fill({**good, "0.weight": np.zeros((3, 2), np.float32)})
    with pytest.raises(ValueError, match="wants"):
        template.fill({**good, "0.bias": good["0.bias"].astype(np.float64)})
