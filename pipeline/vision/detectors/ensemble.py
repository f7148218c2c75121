"""Run several detectors as one, the expensive ones only every k-th frame.

Between two runs of a slow detector its last boxes are carried forward and grown a little per
frame of age, so a walking person stays inside them. Every frame still gets a full
:class:`Detections`; if any part raises, the whole call raises (and the fail-closed wrapper hides
the frame).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from pipeline.vision.detectors.base import Detections, Detector

if TYPE_CHECKING:
    from pipeline.vision.frames import Frame

__all__ = ["Every", "Background", "EnsembleDetector"]

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


class Background:
    """Run ``detector`` in its own thread on the newest frame whenever it is idle.

    A new run starts at most every ``min_every`` frames. The ensemble never waits for it (except on the very first frame, so the stream never starts
    without its boxes): each frame gets its latest finished result, grown by
    ``grow_per_frame`` per frame of age. ONNX Runtime releases the GIL, so on a 2-core CPU a slow
    face or text model runs beside the per-frame work instead of stalling it. An exception in
    the thread is re-raised on the next call (and the frame fails closed).
    """

    def __init__(self, detector: Detector, *, min_every: int = 1,
                 grow_per_frame: float = 0.05) -> None:
        if min_every < 1:
            raise ValueError(f"min_every must be >= 1, got {min_every}")
        self.detector = detector
        self.min_every = min_every
        self._started_n = 0
        self.name = detector.name
        self.grow_per_frame = grow_per_frame
        self._lock = threading.Lock()
        self._busy = False
        self._last = Detections.empty()
        self._last_n = 0
        self._error: BaseException | None = None
        self.runs = 0
        self.seconds = 0.0

    def _work(self, frame: Frame, n: int) -> None:
        t0 = time.perf_counter()
        try:
            d = self.detector(frame)
            with self._lock:
                self._last, self._last_n = d, n
        except BaseException as exc:  # re-raised in the caller's thread
            with self._lock:
                self._error = exc
        finally:
            with self._lock:
                self._busy = False
                self.runs += 1
                self.seconds += time.perf_counter() - t0

    def result(self, frame: Frame, n: int) -> Detections:
        """Boxes for frame number ``n``; starts a new run if the thread is idle."""
        if n == 0:
            self._work(frame, 0)
        with self._lock:
            if self._error is not None:
                err, self._error = self._error, None
                raise err
            start = not self._busy and n > 0 and n - self._started_n >= self.min_every
            if start:
                self._busy = True
                self._started_n = n
            last, age = self._last, n - self._last_n
        if start:
            threading.Thread(target=self._work, args=(frame, n), daemon=True,
                             name=f"bg-{self.name}").start()
        return _grown(last, self.grow_per_frame * age)


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

    def __init__(self, parts: Sequence[Detector | Every | Background]) -> None:
        if not parts:
            raise ValueError("EnsembleDetector needs at least one detector")
        self.background = [p for p in parts if isinstance(p, Background)]
        self.parts = [p if isinstance(p, Every) else Every(p) for p in parts
                      if not isinstance(p, Background)]
        names = [p.detector.name for p in self.parts] + [b.name for b in self.background]
        self.name = "ensemble(" + ",".join(names) + ")"
        self._timings: dict[str, list[float]] = {p.detector.name: [0.0, 0] for p in self.parts}
        self._n = 0

    @property
    def timings(self) -> dict[str, list[float]]:
        """Cumulative ``[seconds, calls]`` per part (background parts run in their thread)."""
        t = dict(self._timings)
        for b in self.background:
            t[b.name] = [b.seconds, b.runs]
        return t

    def __call__(self, frame: Frame) -> Detections:
        """All parts' boxes for ``frame`` (fresh or carried forward)."""
        out = []
        for p in self.parts:
            if self._n % p.k == p.offset or self._n == 0:
                t0 = time.perf_counter()
                p._last = p.detector(frame)
                tm = self._timings[p.detector.name]
                tm[0] += time.perf_counter() - t0
                tm[1] += 1
                p._age = 0
                out.append(p._last)
            else:
                p._age += 1
                out.append(_grown(p._last, p.grow_per_frame * p._age))
        out.extend(b.result(frame, self._n) for b in self.background)
        self._n += 1
        d = Detections.concat(out)
        if len(d):
            w, h = frame.size
            b = d.boxes
            np.clip(b[:, 0::2], 0, w, out=b[:, 0::2])
            np.clip(b[:, 1::2], 0, h, out=b[:, 1::2])
        return d
