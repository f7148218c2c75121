"""Export a task model to ONNX bytes, checked against PyTorch on the same input.

Edges serve global models through onnxruntime (:mod:`pipeline.serving.hotswap`), so the aggregator ships
an ONNX export beside the raw weights. The legacy TorchScript exporter is used: it needs no extra
package and handles the small MLP/CNN task models.

An aggregator publishes a new version of the same model many times, and ``torch.onnx.export``
costs far more than the aggregation itself. :class:`OnnxTemplate` exports the graph once, without
constant folding so every weight stays an initializer under its ``state_dict`` name, checks at
creation that the graph follows its initializers (random weights give PyTorch's output through
onnxruntime), and then makes each new version by writing the new weights' bytes into the
initializers.

Examples
--------
>>> import torch
>>> m = torch.nn.Sequential(torch.nn.Linear(4, 2))
>>> onnx_bytes = export_onnx(m, example=torch.zeros(1, 4))
>>> onnx_bytes[:2] != b""
True
>>> template = OnnxTemplate(m, example=torch.zeros(1, 4))
>>> from pipeline.weights import get_weights
>>> template.fill(get_weights(m))[:2] != b""
True
"""

from __future__ import annotations

import copy
import io
import threading
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["OnnxTemplate", "export_onnx"]


def export_onnx(model: nn.Module, *, example: torch.Tensor, atol: float = 1e-4) -> bytes:
    """Return ``model`` as ONNX bytes with a dynamic batch axis (input ``x``, output ``y``).

    Raises
    ------
    ValueError
        onnxruntime's output differs from PyTorch's by more than ``atol`` on ``example``.
    """
    model = model.eval()
    data = _export(model, example, constant_folding=True)
    _check_against_torch(data, model, example, atol=atol)
    return data


def _export(model: nn.Module, example: torch.Tensor, *, constant_folding: bool) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # torch accepts a file-like object here; its stubs only name paths
        torch.onnx.export(
            model, (example,), buf,  # type: ignore[arg-type]
            dynamo=False, input_names=["x"], output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=17,
            do_constant_folding=constant_folding,
        )
    return buf.getvalue()


def _check_against_torch(data: bytes, model: nn.Module, example: torch.Tensor, *,
                         atol: float) -> None:
    """``ValueError`` unless onnxruntime on ``data`` gives ``model``'s output on ``example``."""
    import onnxruntime as ort

    with torch.no_grad():
        want = model(example).numpy()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    got = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"]).run(
        None, {"x": example.numpy().astype(np.float32)}
    )[0]
    if got.shape != want.shape or not np.allclose(got, want, atol=atol):
        diff = np.abs(got - want).max() if got.shape == want.shape else float("nan")
        raise ValueError(f"ONNX export differs from PyTorch by {diff:.3g}")


class OnnxTemplate:
    """One ONNX export of ``model``'s graph; :meth:`fill` makes the ONNX bytes for new weights.

    The weights are the model's floating-point ``state_dict`` entries (as
    :func:`pipeline.weights.get_weights` returns them); each must be a float32 initializer of
    the exported graph under the same name and shape.

    Parameters
    ----------
    model
        The task model; it is not modified (the check at creation runs on a copy).
    example
        An input batch, as for :func:`export_onnx`.
    atol
        Tolerance of the check against PyTorch.
    seed
        Seed of the random weights of the check at creation.

    Raises
    ------
    ValueError
        A weight is not an initializer of the graph (e.g. the exporter turned it into a
        constant), or onnxruntime on the template filled with random weights differs from
        PyTorch with the same weights: use :func:`export_onnx` per version instead.
    """

    def __init__(self, model: nn.Module, *, example: torch.Tensor, atol: float = 1e-4,
                 seed: int = 0) -> None:
        import onnx

        self.atol = atol
        self._example = example.detach().clone()
        model = copy.deepcopy(model).eval()
        state = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
        self._proto = onnx.load_from_string(_export(model, self._example, constant_folding=False))
        inits = {t.name: t for t in self._proto.graph.initializer}
        graph_inputs = {i.name for i in self._proto.graph.input}
        self._specs: dict[str, tuple[int, ...]] = {}
        self._tensors: dict[str, Any] = {}
        for name, tensor in state.items():
            init = inits.get(name)
            if init is None or name in graph_inputs:
                raise ValueError(f"weight {name!r} is not an initializer of the exported graph")
            if init.data_type != onnx.TensorProto.FLOAT or tuple(init.dims) != tuple(tensor.shape):
                raise ValueError(f"initializer {name!r} is {tuple(init.dims)} of ONNX type "
                                 f"{init.data_type}, the weight {tuple(tensor.shape)} float32")
            self._specs[name] = tuple(int(d) for d in tensor.shape)
            self._tensors[name] = init
        self._lock = threading.Lock()
        # the graph must follow its initializers: random weights (not the model's own, which an
        # export could have baked in as constants) through the template and through PyTorch
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for tensor in state.values():
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.5)
        weights = {k: v.detach().numpy().astype(np.float32) for k, v in state.items()}
        _check_against_torch(self.fill(weights), model, self._example, atol=atol)

    @property
    def names(self) -> tuple[str, ...]:
        """The weight names :meth:`fill` expects."""
        return tuple(self._specs)

    def fill(self, weights: Mapping[str, Any]) -> bytes:
        """Return the ONNX bytes of the graph with ``weights``.

        Raises
        ------
        ValueError
            ``weights`` has other names than the model's, or an array of another shape or a
            dtype other than float32.
        """
        if set(weights) != set(self._specs):
            missing = sorted(set(self._specs) - set(weights))
            extra = sorted(set(weights) - set(self._specs))
            raise ValueError(f"weights differ from the template: missing {missing}, "
                             f"unexpected {extra}")
        raw: dict[str, bytes] = {}
        for name, shape in self._specs.items():
            arr = np.asarray(weights[name])
            if arr.dtype != np.float32 or arr.shape != shape:
                raise ValueError(f"weight {name!r} is {arr.shape} {arr.dtype}, the template "
                                 f"wants {shape} float32")
            raw[name] = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        with self._lock:
            for name, data in raw.items():
                self._tensors[name].raw_data = data
            data_out: bytes = self._proto.SerializeToString()
            return data_out
