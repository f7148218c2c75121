"""Run several detectors as one, the expensive ones only every k-th frame.

Between two runs of a slow detector its last boxes are carried forward and grown a little per
frame of age, so a walking person stays inside them. Every frame still gets a full
:class:`Detections`; if any part raises, the whole call raises (and the fail-closed wrapper hides
the frame).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from pipeline.vision.detectors.base import Detections, Detector

if TYPE_CHECKING:
    from pipeline.vision.frames import Frame

__all__ = ["Every", "EnsembleDetector"]

log = logging.getLogger(__name__)


@dataclass
class Every:
    """Schedule ``detector`` on every ``k``-th frame, starting at frame ``offset``.

    ``grow_per_frame`` is the fraction of its size a carried-forward box grows on each side per
    frame of age.
    """

    detector: Detector
    k: int = 1
    offset: int = 0
    grow_per_frame: float = 0.05
    _last: Detections = field(default_factory=Detections.empty, repr=False)
    _age: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        if self.k < 1 or not 0 <= self.offset < self.k:
            raise ValueError(f"need k >= 1 and 0 <= offset < k, got k={self.k}, "
                             f"offset={self.offset}")


def _grown(d: Detections, frac: float) -> Detections:
    if not len(d) or frac <= 0:
        return d
    b = d.boxes.copy()
    dw = (b[:, 2] - b[:, 0]) * frac
    dh = (b[:, 3] - b[:, 1]) * frac
    b[:, 0] -= dw
    b[:, 2] += dw
    b[:, 1] -= dh
    b[:, 3] += dh
    return Detections(b, d.scores, d.classes)


class EnsembleDetector:
    """Union of the boxes of several detectors, each on its own schedule.

    Parameters
    ----------
    parts
        Detectors (run on every frame) or :class:`Every` schedules.

    Attributes
    ----------
    timings
        Cumulative seconds and call counts per part name, for benchmarks.

    Examples
    --------
    >>> from pipeline.vision.detectors import MotionPeopleDetector
    >>> det = EnsembleDetector([MotionPeopleDetector()])
    >>> det.name
    'ensemble(motion-people)'
    """

    def __init__(self, parts: Sequence[Detector | Every]) -> None:
        if not parts:
            raise ValueError("EnsembleDetector needs at least one detector")
        self.parts = [p if isinstance(p, Every) else Every(p) for p in parts]
        self.name = "ensemble(" + ",".join(p.detector.name for p in self.parts) + ")"
        self.timings: dict[str, list[float]] = {p.detector.name: [0.0, 0] for p in self.parts}
        self._n = 0

    def __call__(self, frame: Frame) -> Detections:
        """All parts' boxes for ``frame`` (fresh or carried forward)."""
        out = []
        for p in self.parts:
            if self._n % p.k == p.offset or self._n == 0:
                t0 = time.perf_counter()
                p._last = p.detector(frame)
                tm = self.timings[p.detector.name]
                tm[0] += time.perf_counter() - t0
                tm[1] += 1
                p._age = 0
                out.append(p._last)
            else:
                p._age += 1
                out.append(_grown(p._last, p.grow_per_frame * p._age))
        self._n += 1
        d = Detections.concat(out)
        if len(d):
            w, h = frame.size
            b = d.boxes
            np.clip(b[:, 0::2], 0, w, out=b[:, 0::2])
            np.clip(b[:, 1::2], 0, h, out=b[:, 1::2])
        return d
