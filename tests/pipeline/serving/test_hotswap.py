"""ONNX export parity and hot swap under concurrent inference."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from pipeline.serving.hotswap import ModelLoadError, NoModelError, OnnxModelSlot
from pipeline.serving.onnx_export import export_onnx


def _model(bias: float) -> torch.nn.Module:
    m = torch.nn.Sequential(torch.nn.Linear(3, 1))
    with torch.no_grad():
        m[0].weight.fill_(1.0)
        m[0].bias.fill_(bias)
    return m


def test_export_matches_torch_and_serves_batches() -> None:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    slot = OnnxModelSlot()
    assert slot.swap(export_onnx(m, example=torch.zeros(1, 8)), version=1)
    x = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    y, version = slot.predict(x)
    assert version == 1
    np.testing.assert_allclose(y, m(torch.from_numpy(x)).detach().numpy(), atol=1e-5)


def test_swap_is_monotone_and_a_bad_model_keeps_the_old_one() -> None:
    slot = OnnxModelSlot()
    with pytest.raises(NoModelError):
        slot.predict(np.zeros((1, 3), np.float32))
    assert slot.swap(export_onnx(_model(1.0), example=torch.zeros(1, 3)), version=2)
    assert not slot.swap(export_onnx(_model(5.0), example=torch.zeros(1, 3)), version=1)
    with pytest.raises(ModelLoadError):
        slot.swap(b"not an onnx model", version=3)
    y, version = slot.predict(np.zeros((1, 3), np.float32))
    assert (version, float(y[0, 0])) == (2, 1.0)


def test_predictions_never_fail_while_models_are_swapped() -> None:
    blobs = [export_onnx(_model(float(v)), example=torch.zeros(1, 3)) for v in range(1, 21)]
    slot = OnnxModelSlot()
    slot.swap(blobs[0], version=1)
    errors: list[BaseException] = []
    seen: list[tuple[int, float]] = []
    stop = threading.Event()

    def serve() -> None:
        x = np.zeros((1, 3), np.float32)
        while not stop.is_set():
            try:
                y, v = slot.predict(x)
                seen.append((v, float(y[0, 0])))
            except BaseException as exc:  # noqa: BLE001 - the test collects every failure
                errors.append(exc)

    t = threading.Thread(target=serve)
    t.start()
    for v, blob in enumerate(blobs[1:], start=2):
        assert slot.swap(blob, version=v)
    stop.set()
    t.join(10)
    assert not errors
    assert slot.version == 20 and slot.swaps == 20
    # every answer came from the model whose version it reports (bias == version)
    assert seen and all(out == float(v) for v, out in seen)
    versions = [v for v, _ in seen]
    assert versions == sorted(versions)
