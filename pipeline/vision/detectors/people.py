"""People on fixed cameras, where faces are too small for a face detector.

:class:`MotionPeopleDetector` keeps a MOG2 background model of a downscaled frame; foreground
blobs (shadows removed, morphology, connected components) become person boxes and the top of each
box becomes an estimated head box. Short tracks keep a person covered for ``hold_frames`` after
their blob disappears (people who stop walking fade into the background model, a blob can split
or flicker), and an optional periodic HOG pass (:class:`HogPeopleDetector`) adds people the
motion model cannot see (still from the start).

Costs on vtest.avi (768x576) are in ``docs/vision.md``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np
import numpy.typing as npt

from pipeline.vision.detectors.base import Detections, ObjectClass

if TYPE_CHECKING:
    from pipeline.vision.frames import Frame

__all__ = ["MotionPeopleDetector", "HogPeopleDetector", "head_boxes"]

log = logging.getLogger(__name__)


def head_boxes(person_boxes: npt.NDArray[np.float32], *, fraction: float = 0.25,
               min_width_ratio: float = 0.35) -> npt.NDArray[np.float32]:
    """Estimated head regions: the top ``fraction`` of each person box.

    The head box keeps the person box's width, but never less than ``min_width_ratio`` of the
    box height (wide blobs keep their width; thin ones get room for the head).

    Examples
    --------
    >>> head_boxes(np.array([[10, 20, 40, 120]], np.float32)).tolist()
    [[7.5, 20.0, 42.5, 45.0]]
    """
    b = person_boxes.astype(np.float32).reshape(-1, 4)
    h = b[:, 3] - b[:, 1]
    cx = (b[:, 0] + b[:, 2]) / 2
    half = np.maximum(b[:, 2] - b[:, 0], min_width_ratio * h) / 2
    return np.stack([cx - half, b[:, 1], cx + half, b[:, 1] + fraction * h], axis=1).astype(
        np.float32)


class HogPeopleDetector:
    """OpenCV's HOG + linear SVM pedestrian detector (Dalal-Triggs, 64x128 window).

    Parameters
    ----------
    upscale
        Resize factor before detection; people below ~100 px tall need ``> 1``.
    hit_threshold
        SVM margin threshold (higher = fewer, surer boxes).

    Examples
    --------
    >>> det = HogPeopleDetector()
    >>> det.name
    'hog'
    """

    name = "hog"

    def __init__(self, *, upscale: float = 1.0, hit_threshold: float = 0.0,
                 win_stride: int = 8, scale: float = 1.05) -> None:
        if upscale <= 0:
            raise ValueError(f"upscale must be > 0, got {upscale}")
        self.upscale = upscale
        self.hit_threshold = hit_threshold
        self.win_stride = win_stride
        self.scale = scale
        self._hog = cv2.HOGDescriptor()
        self._hog.setSVMDetector(
            np.asarray(cv2.HOGDescriptor.getDefaultPeopleDetector(), np.float32))

    def detect_image(self, image: npt.NDArray[np.uint8]) -> Detections:
        """Person boxes in a BGR image (no frame bookkeeping)."""
        img = image if self.upscale == 1.0 else cv2.resize(
            image, None, fx=self.upscale, fy=self.upscale, interpolation=cv2.INTER_LINEAR)
        rects, weights = self._hog.detectMultiScale(
            img, hitThreshold=self.hit_threshold, winStride=(self.win_stride, self.win_stride),
            padding=(8, 8), scale=self.scale)
        if len(rects) == 0:
            return Detections.empty()
        r = np.asarray(rects, np.float32).reshape(-1, 4) / self.upscale
        boxes = np.concatenate([r[:, :2], r[:, :2] + r[:, 2:]], axis=1)
        # HOG's box has ~1/8 margin around the person; shrink it a bit horizontally only.
        w = boxes[:, 2] - boxes[:, 0]
        boxes[:, 0] += 0.1 * w
        boxes[:, 2] -= 0.1 * w
        scores = 1.0 / (1.0 + np.exp(-np.asarray(weights, np.float32).reshape(-1)))
        return Detections.from_lists(boxes, scores, ObjectClass.PERSON)

    def __call__(self, frame: Frame) -> Detections:
        """Person boxes in ``frame``."""
        return self.detect_image(frame.image)


@dataclass
class _Track:
    box: npt.NDArray[np.float32]
    last_seen: int
    hits: int
    velocity: npt.NDArray[np.float32]


def _iou(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Pairwise IoU of (N,4) and (M,4) boxes."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    iou: npt.NDArray[np.float32] = (
        inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-6)).astype(np.float32)
    return iou


class MotionPeopleDetector:
    """Person and head boxes from background subtraction, with short-lived tracks.

    Stateful: feed it the frames of one fixed camera in order.

    Parameters
    ----------
    work_scale
        The background model runs on the frame resized by this factor (0.5 = half size).
    history, var_threshold
        MOG2 parameters (frames of history, squared Mahalanobis threshold).
    min_area
        Smallest blob kept, in full-resolution pixels.
    pad, pad_top
        Fraction of the blob box size added on the sides/bottom, and on top.
    hold_frames
        Frames a track stays (and is reported) after its last blob.
    head_fraction
        Top fraction of a person box reported as its ``HEAD`` box.
    hog, hog_every
        Optional :class:`HogPeopleDetector` run every ``hog_every`` frames (and on the first);
        its boxes start or refresh tracks.

    Examples
    --------
    >>> det = MotionPeopleDetector()
    >>> det.name
    'motion-people'
    """

    name = "motion-people"

    def __init__(self, *, work_scale: float = 0.5, history: int = 500,
                 var_threshold: float = 16.0, min_area: int = 120, pad: float = 0.12,
                 pad_top: float = 0.12,
                 hold_frames: int = 25, head_fraction: float = 0.25,
                 hog: HogPeopleDetector | None = None, hog_every: int = 0) -> None:
        if not 0.05 <= work_scale <= 1.0:
            raise ValueError(f"work_scale must be in [0.05, 1], got {work_scale}")
        if hog_every < 0 or hold_frames < 0:
            raise ValueError("hog_every and hold_frames must be >= 0")
        self.work_scale = work_scale
        self.min_area = min_area
        self.pad = pad
        self.pad_top = pad_top
        self.hold_frames = hold_frames
        self.head_fraction = head_fraction
        self.hog = hog
        self.hog_every = hog_every
        self._mog = cv2.createBackgroundSubtractorMOG2(
            history=history, varThreshold=var_threshold, detectShadows=True)
        self._open = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
        self._close = cv2.getStructuringElement(cv2.MORPH_RECT, (5, 9))
        self._tracks: list[_Track] = []
        self._n = 0
        self.last_blobs: npt.NDArray[np.float32] = np.zeros((0, 4), np.float32)

    def reset(self) -> None:
        """Forget the background model and tracks (e.g. after the camera moved)."""
        self._mog = cv2.createBackgroundSubtractorMOG2(
            history=self._mog.getHistory(), varThreshold=self._mog.getVarThreshold(),
            detectShadows=True)
        self._tracks = []
        self._n = 0

    def foreground(self, image: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        """Update the background model with ``image``; return the cleaned binary mask (work size)."""
        h, w = image.shape[:2]
        small = image if self.work_scale == 1.0 else cv2.resize(
            image, (max(1, round(w * self.work_scale)), max(1, round(h * self.work_scale))),
            interpolation=cv2.INTER_AREA)
        raw = self._mog.apply(small)
        _, mask = cv2.threshold(raw, 200, 255, cv2.THRESH_BINARY)  # drop shadows (127)
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, self._open)
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, self._close)
        return np.asarray(mask, np.uint8)

    def _blobs(self, mask: npt.NDArray[np.uint8], shape: tuple[int, int]) -> npt.NDArray[
            np.float32]:
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        if n <= 1:
            return np.zeros((0, 4), np.float32)
        st = stats[1:].astype(np.float32)
        s = self.work_scale
        keep = st[:, cv2.CC_STAT_AREA] >= self.min_area * s * s
        st = st[keep]
        x, y = st[:, cv2.CC_STAT_LEFT] / s, st[:, cv2.CC_STAT_TOP] / s
        bw, bh = st[:, cv2.CC_STAT_WIDTH] / s, st[:, cv2.CC_STAT_HEIGHT] / s
        px, py = bw * self.pad + 2, bh * self.pad + 2
        top = bh * self.pad_top + 2  # blob tops often miss hair that matches the background
        boxes = np.stack([x - px, y - top, x + bw + px, y + bh + py], axis=1)
        hgt, wid = shape
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, wid)
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, hgt)
        return boxes.astype(np.float32)

    def _update_tracks(self, boxes: npt.NDArray[np.float32]) -> None:
        n = self._n
        tracks = self._tracks
        matched_t: set[int] = set()
        if tracks and len(boxes):
            prev = np.stack([t.box + np.tile(t.velocity, 2) for t in tracks])
            iou = _iou(boxes, prev)
            for bi in np.argsort(-iou.max(axis=1)):
                ti = int(np.argmax(iou[bi]))
                if iou[bi, ti] > 0.05 and ti not in matched_t:
                    t = tracks[ti]
                    c_new = (boxes[bi, :2] + boxes[bi, 2:]) / 2
                    c_old = (t.box[:2] + t.box[2:]) / 2
                    t.velocity = (0.5 * t.velocity + 0.5 * (c_new - c_old)).astype(np.float32)
                    t.box, t.last_seen, t.hits = boxes[bi], n, t.hits + 1
                    matched_t.add(ti)
                    iou[:, ti] = -1
                else:
                    tracks.append(_Track(boxes[bi], n, 1, np.zeros(2, np.float32)))
        else:
            tracks.extend(_Track(b, n, 1, np.zeros(2, np.float32)) for b in boxes)
        for i, t in enumerate(tracks):
            if i not in matched_t and t.last_seen < n:
                t.box = (t.box + np.tile(t.velocity, 2)).astype(np.float32)
        self._tracks = [t for t in tracks if n - t.last_seen <= self.hold_frames]

    def detect_image(self, image: npt.NDArray[np.uint8], *, update: bool = True) -> Detections:
        """Person + head boxes for the next image of the stream.

        ``update=False`` skips the background model on this image (to save time on a busy
        stream): the tracks coast on their velocity and no new blob is found.
        """
        h, w = image.shape[:2]
        if update:
            boxes = self._blobs(self.foreground(image), (h, w))
        else:
            boxes = np.zeros((0, 4), np.float32)
        self.last_blobs = boxes
        if update and self.hog is not None and self.hog_every and self._n % self.hog_every == 0:
            extra = self.hog.detect_image(image)
            if len(extra):
                boxes = np.concatenate([boxes, extra.boxes]) if len(boxes) else extra.boxes
        self._update_tracks(boxes)
        self._n += 1
        if not self._tracks:
            return Detections.empty()
        person = np.stack([t.box for t in self._tracks]).astype(np.float32)
        person[:, 0::2] = np.clip(person[:, 0::2], 0, w)
        person[:, 1::2] = np.clip(person[:, 1::2], 0, h)
        fresh = np.asarray([t.last_seen == self._n - 1 for t in self._tracks])
        scores = np.where(fresh, 0.9, 0.5).astype(np.float32)
        heads = head_boxes(person, fraction=self.head_fraction)
        heads[:, 0::2] = np.clip(heads[:, 0::2], 0, w)
        return Detections.concat([
            Detections.from_lists(person, scores, ObjectClass.PERSON),
            Detections.from_lists(heads, scores, ObjectClass.HEAD),
        ])

    def __call__(self, frame: Frame) -> Detections:
        """Person and head boxes in ``frame`` (updates the background model)."""
        return self.detect_image(frame.image)
