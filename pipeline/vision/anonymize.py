"""Hide detected regions: blur, pixelate or solid mask, per class, as rectangles or ellipses.

All functions are pure: they never modify the input frame or its pixels; they return a new
:class:`~pipeline.vision.frames.Frame` with ``anonymized=True`` whose image is a copy.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

import cv2
import numpy as np
import numpy.typing as npt

from pipeline.vision.detectors.base import Detections, ObjectClass
from pipeline.vision.frames import Frame

__all__ = [
    "AnonymizeMode",
    "Shape",
    "ClassPolicy",
    "Policy",
    "default_policy",
    "anonymize",
    "anonymize_full",
    "anonymize_image",
]

log = logging.getLogger(__name__)


class AnonymizeMode(Enum):
    """How a region is hidden."""

    BLUR = "blur"
    PIXELATE = "pixelate"
    SOLID = "solid"


class Shape(Enum):
    """Region shape drawn inside a (margin-grown) box."""

    RECT = "rect"
    ELLIPSE = "ellipse"


@dataclass(frozen=True)
class ClassPolicy:
    """How boxes of one class are hidden.

    Parameters
    ----------
    mode
        Blur, pixelate or solid fill.
    margin
        Fraction of the box width/height added on each side before hiding.
    shape
        Rectangle or the ellipse inscribed in the grown box.
    """

    mode: AnonymizeMode = AnonymizeMode.BLUR
    margin: float = 0.1
    shape: Shape = Shape.RECT

    def __post_init__(self) -> None:
        if not 0.0 <= self.margin <= 2.0:
            raise ValueError(f"margin must be in [0, 2], got {self.margin}")


Policy = Mapping[ObjectClass, ClassPolicy]

_DEFAULT_MARGIN = {ObjectClass.FACE: 0.3, ObjectClass.HEAD: 0.4, ObjectClass.PERSON: 0.08,
                   ObjectClass.TEXT: 0.2}


def default_policy(mode: AnonymizeMode = AnonymizeMode.BLUR,
                   classes: frozenset[ObjectClass] | None = None,
                   shape: Shape = Shape.RECT) -> dict[ObjectClass, ClassPolicy]:
    """One :class:`ClassPolicy` per class in ``classes`` (all classes by default).

    Examples
    --------
    >>> p = default_policy(AnonymizeMode.PIXELATE, frozenset({ObjectClass.FACE}))
    >>> p[ObjectClass.FACE].margin
    0.3
    """
    chosen = frozenset(ObjectClass) if classes is None else classes
    return {c: ClassPolicy(mode, _DEFAULT_MARGIN[c], shape) for c in chosen}


def _hide(roi: npt.NDArray[np.uint8], mode: AnonymizeMode) -> npt.NDArray[np.uint8]:
    """A hidden version of ``roi`` (same shape)."""
    h, w = roi.shape[:2]
    if mode is AnonymizeMode.SOLID:
        return np.zeros_like(roi)
    if mode is AnonymizeMode.PIXELATE:
        # about 4 cells across the long side: a 10-px head becomes 2-3 flat cells
        cell = max(2, max(h, w) // 4)
        small = cv2.resize(roi, (max(1, w // cell), max(1, h // cell)),
                           interpolation=cv2.INTER_AREA)
        return np.asarray(cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST), np.uint8)
    k = max(3, max(h, w) // 2) | 1
    # two box blurs of width k (a triangle of width 2k), computed on the ROI shrunk so that the
    # kernel is ~8 px there: the same smear for a fraction of the work on big boxes
    f = max(1, k // 8)
    if f > 1:
        sw, sh = max(1, round(w / f)), max(1, round(h / f))
        small = cv2.resize(roi, (sw, sh), interpolation=cv2.INTER_AREA)
        ks = max(3, k // f) | 1
        small = cv2.blur(cv2.blur(small, (ks, ks), borderType=cv2.BORDER_REFLECT), (ks, ks),
                         borderType=cv2.BORDER_REFLECT)
        return np.asarray(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR), np.uint8)
    out = cv2.blur(roi, (k, k), borderType=cv2.BORDER_REFLECT)
    return np.asarray(cv2.blur(out, (k, k), borderType=cv2.BORDER_REFLECT), np.uint8)


def anonymize_image(image: npt.NDArray[np.uint8], detections: Detections, policy: Policy,
                    *, inplace: bool = False) -> npt.NDArray[np.uint8]:
    """Hide the boxes of ``detections`` whose class ``policy`` names.

    Parameters
    ----------
    image
        ``(H, W, 3)`` uint8 image.
    detections
        Boxes in ``image`` pixels.
    policy
        Per-class :class:`ClassPolicy`; classes not in it are left visible.
    inplace
        Write into ``image`` (it is mutated) instead of a copy. Default ``False``: no mutation.

    Returns
    -------
    The anonymized image (``image`` itself when ``inplace``).
    """
    out = image if inplace else image.copy()
    H, W = out.shape[:2]
    # hide bigger boxes first so a head drawn inside a blurred person is hidden again on top;
    # a box that lies inside a rectangle already hidden the same way is skipped (a bigger box
    # hides at least as strongly: its blur kernel or pixel cells scale with its size)
    order = np.argsort(-(detections.boxes[:, 2] - detections.boxes[:, 0])
                       * (detections.boxes[:, 3] - detections.boxes[:, 1]))
    done: dict[AnonymizeMode, list[tuple[int, int, int, int]]] = {}
    for i in order:
        cls = ObjectClass(int(detections.classes[i]))
        pol = policy.get(cls)
        if pol is None:
            continue
        x1, y1, x2, y2 = (float(v) for v in detections.boxes[i])
        mw, mh = (x2 - x1) * pol.margin, (y2 - y1) * pol.margin
        xa, ya = max(0, int(np.floor(x1 - mw))), max(0, int(np.floor(y1 - mh)))
        xb, yb = min(W, int(np.ceil(x2 + mw))), min(H, int(np.ceil(y2 + mh)))
        if xb - xa < 1 or yb - ya < 1:
            continue
        rects = done.setdefault(pol.mode, [])
        if any(pa <= xa and pb <= ya and xb <= pc and yb <= pd for pa, pb, pc, pd in rects):
            continue
        roi = out[ya:yb, xa:xb]
        hidden = _hide(roi, pol.mode)
        if pol.shape is Shape.ELLIPSE:
            m = np.zeros(roi.shape[:2], np.uint8)
            cv2.ellipse(m, (((xb - xa) / 2 - 0.5, (yb - ya) / 2 - 0.5), (xb - xa, yb - ya), 0),
                        255, -1)
            np.copyto(roi, hidden, where=m[:, :, None].astype(bool))
        else:
            roi[...] = hidden
            rects.append((xa, ya, xb, yb))
    return out


def anonymize(frame: Frame, detections: Detections, policy: Policy | AnonymizeMode) -> Frame:
    """A new frame with the boxes ``policy`` names hidden. Does not mutate ``frame``.

    Parameters
    ----------
    frame
        Input frame (raw or already anonymized).
    detections
        Boxes found in ``frame``.
    policy
        Per-class policy, or a mode applied to every class with default margins.

    Examples
    --------
    >>> import numpy as np
    >>> from pipeline.vision.detectors import Detections, ObjectClass
    >>> f = Frame(np.full((20, 20, 3), 200, np.uint8), seq=0, timestamp=0.0)
    >>> d = Detections.from_lists([[5, 5, 15, 15]], [1.0], ObjectClass.FACE)
    >>> out = anonymize(f, d, AnonymizeMode.SOLID)
    >>> int(out.image[10, 10, 0]), int(f.image[10, 10, 0]), out.anonymized
    (0, 200, True)
    """
    pol = default_policy(policy) if isinstance(policy, AnonymizeMode) else policy
    img = anonymize_image(frame.image, detections, pol)
    return frame.with_image(img, anonymized=True, detections=detections.count_by_class())


def anonymize_full(frame: Frame, mode: AnonymizeMode = AnonymizeMode.PIXELATE,
                   **metadata: object) -> Frame:
    """The whole frame hidden (fail-closed output). Does not mutate ``frame``.

    BLUR and PIXELATE reduce the frame to ~1/32 of its size first, so nothing the size of a
    face survives; SOLID returns black.

    Examples
    --------
    >>> import numpy as np
    >>> f = Frame(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8), 0, 0.0)
    >>> float(anonymize_full(f).image.std()) < float(f.image.std())
    True
    """
    img = frame.image
    h, w = img.shape[:2]
    if mode is AnonymizeMode.SOLID:
        out = np.zeros_like(img)
    else:
        small = cv2.resize(img, (max(1, w // 32), max(1, h // 32)), interpolation=cv2.INTER_AREA)
        interp = cv2.INTER_NEAREST if mode is AnonymizeMode.PIXELATE else cv2.INTER_LINEAR
        out = np.asarray(cv2.resize(small, (w, h), interpolation=interp), np.uint8)
    return frame.with_image(out, anonymized=True, **metadata)
