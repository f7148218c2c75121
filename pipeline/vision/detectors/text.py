"""Licence plates and other text with the PP-OCRv4 text *detection* model (DB head).

Uses only ``ch_PP-OCRv4_det_infer.onnx`` from the ``rapidocr-onnxruntime`` wheel (installed
``--no-deps``; no recognition, nothing is read). Post-processing follows DBNet: binarize the
probability map, take connected regions, score each by its mean probability, and grow ("unclip")
each box by ``area * unclip_ratio / perimeter``.
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
from pipeline.vision.exceptions import ModelLoadError

if TYPE_CHECKING:
    from pipeline.vision.frames import Frame

__all__ = ["TextDetector"]

log = logging.getLogger(__name__)


class TextDetector:
    """Text regions (plates, signs) with PP-OCR detection on ONNX Runtime.

    Parameters
    ----------
    model_path
        PP-OCR det ONNX; default ``pipeline.assets.locate("ppocr-det.onnx")``.
    max_side
        The image is resized so its longer side is at most this (rounded to multiples of 32).
    bin_threshold, box_threshold, unclip_ratio
        DBNet post-processing parameters (PaddleOCR defaults 0.3, 0.5, 1.6).
    min_size
        Boxes shorter than this (in model-input pixels) are dropped.
    providers, threads
        Passed to :func:`~pipeline.vision.detectors.base.make_session`.

    Examples
    --------
    >>> import cv2
    >>> from pipeline.assets import locate
    >>> from pipeline.vision import Frame
    >>> det = TextDetector()
    >>> img = cv2.imread(str(locate("licenseplate_motion.jpg")))
    >>> len(det(Frame(img, seq=0, timestamp=0.0))) >= 1
    True
    """

    name = "ppocr-text"

    def __init__(self, *, model_path: str | Path | None = None, max_side: int = 640,
                 bin_threshold: float = 0.3, box_threshold: float = 0.5,
                 unclip_ratio: float = 1.6, min_size: int = 3,
                 providers: Sequence[str] | None = ("CPUExecutionProvider",),
                 threads: int | None = None) -> None:
        if max_side < 32:
            raise ValueError(f"max_side must be >= 32, got {max_side}")
        if model_path is None:
            from pipeline.assets import locate

            model_path = locate("ppocr-det.onnx")
        if not Path(model_path).is_file():
            raise ModelLoadError(str(model_path), "file not found")
        self.max_side = max_side
        self.bin_threshold = bin_threshold
        self.box_threshold = box_threshold
        self.unclip_ratio = unclip_ratio
        self.min_size = min_size
        self._sess = make_session(str(model_path), providers=providers, threads=threads)
        self._input = self._sess.get_inputs()[0].name

    def detect_image(self, image: npt.NDArray[np.uint8]) -> Detections:
        """Text boxes in a BGR image."""
        h0, w0 = image.shape[:2]
        r = min(1.0, self.max_side / max(h0, w0))
        w_in = max(32, int(round(w0 * r / 32)) * 32)
        h_in = max(32, int(round(h0 * r / 32)) * 32)
        blob = cv2.dnn.blobFromImage(image, scalefactor=1 / 127.5, size=(w_in, h_in),
                                     mean=(127.5, 127.5, 127.5), swapRB=False, crop=False)
        prob = self._sess.run(None, {self._input: blob})[0][0, 0]
        mask = (prob > self.bin_threshold).astype(np.uint8)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
        boxes: list[list[float]] = []
        scores: list[float] = []
        for i in range(1, n):
            x, y, w, h, area = (int(v) for v in stats[i])
            if min(w, h) < self.min_size:
                continue
            score = float(prob[y:y + h, x:x + w][labels[y:y + h, x:x + w] == i].mean())
            if score < self.box_threshold:
                continue
            d = area * self.unclip_ratio / max(2 * (w + h), 1)
            boxes.append([x - d, y - d, x + w + d, y + h + d])
            scores.append(score)
        if not boxes:
            return Detections.empty().vouch((ObjectClass.TEXT,))
        b = np.asarray(boxes, np.float32)
        b[:, 0::2] = np.clip(b[:, 0::2] * (w0 / w_in), 0, w0)
        b[:, 1::2] = np.clip(b[:, 1::2] * (h0 / h_in), 0, h0)
        return Detections.from_lists(b, scores, ObjectClass.TEXT).vouch((ObjectClass.TEXT,))

    def __call__(self, frame: Frame) -> Detections:
        """Text boxes in ``frame``."""
        return self.detect_image(frame.image)
