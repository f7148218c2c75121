"""Export a task model to ONNX bytes, checked against PyTorch on the same input.

Edges serve global models through onnxruntime (:mod:`pipeline.hotswap`), so the aggregator ships
an ONNX export beside the raw weights. The legacy TorchScript exporter is used: it needs no extra
package and handles the small MLP/CNN task models.

Examples
--------
>>> import torch
>>> m = torch.nn.Sequential(torch.nn.Linear(4, 2))
>>> onnx_bytes = export_onnx(m, example=torch.zeros(1, 4))
>>> onnx_bytes[:2] != b""
True
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from torch import nn

__all__ = ["export_onnx"]


def export_onnx(model: nn.Module, *, example: torch.Tensor, atol: float = 1e-4) -> bytes:
    """Return ``model`` as ONNX bytes with a dynamic batch axis (input ``x``, output ``y``).

    Raises
    ------
    ValueError
        onnxruntime's output differs from PyTorch's by more than ``atol`` on ``example``.
    """
    import onnxruntime as ort

    model = model.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example,), buf, dynamo=False, input_names=["x"], output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=17,
        )
    data = buf.getvalue()
    with torch.no_grad():
        want = model(example).numpy()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    got = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"]).run(
        None, {"x": example.numpy().astype(np.float32)}
    )[0]
    if not np.allclose(got, want, atol=atol):
        raise ValueError(f"ONNX export differs from PyTorch by {np.abs(got - want).max():.3g}")
    return data
