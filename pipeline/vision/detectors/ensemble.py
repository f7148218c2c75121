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

__all__ = ["Every", "Background", "EnsembleDetector", "carried"]

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

    A new run starts at most every ``min_every`` frames. The ensemble does not wait for it: each
    frame gets the latest finished result, grown by ``grow_per_frame`` per frame of age (and its
    vouches aged by as many frames). ONNX Runtime releases the GIL, so on a 2-core CPU a slow face
    or text model runs beside the per-frame work instead of stalling it. An exception in the
    thread is re-raised on the next call (and the frame fails closed).

    Two cases do wait, so a stream never runs on results that are too old: the very first frame
    (run inline), and any frame whose latest result would be more than ``max_age`` frames old
    (the caller waits for the run in flight, and runs the detector inline on this frame if that
    is still too old). ``max_age=None`` never waits after the first frame.
    """

    def __init__(self, detector: Detector, *, min_every: int = 1,
                 grow_per_frame: float = 0.05, max_age: int | None = None) -> None:
        if min_every < 1:
            raise ValueError(f"min_every must be >= 1, got {min_every}")
        if max_age is not None and max_age < 0:
            raise ValueError(f"max_age must be >= 0 or None, got {max_age}")
        self.detector = detector
        self.min_every = min_every
        self.max_age = max_age
        self._started_n = 0
        self.name = detector.name
        self.grow_per_frame = grow_per_frame
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()
        self._last = Detections.empty()
        self._last_n = 0
        self._error: BaseException | None = None
        self.runs = 0
        self.waits = 0
        self.seconds = 0.0

    def _work(self, frame: Frame, n: int) -> None:
        t0 = time.perf_counter()
        try:
            d = self.detector(frame)
            with self._lock:
                if n >= self._last_n or self.runs == 0:
                    self._last, self._last_n = d, n
        except BaseException as exc:  # re-raised in the caller's thread
            with self._lock:
                self._error = exc
        finally:
            with self._lock:
                self.runs += 1
                self.seconds += time.perf_counter() - t0
            self._idle.set()

    def result(self, frame: Frame, n: int) -> Detections:
        """Boxes for frame number ``n``; starts a new run if the thread is idle."""
        if n == 0:
            self._idle.wait()
            self._idle.clear()
            self._work(frame, 0)
        with self._lock:
            self._raise_pending()
            start = self._idle.is_set() and n > 0 and n - self._started_n >= self.min_every
            if start:
                self._idle.clear()
                self._started_n = n
            last, last_n = self._last, self._last_n
        if start:
            threading.Thread(target=self._work, args=(frame, n), daemon=True,
                             name=f"bg-{self.name}").start()
        if self.max_age is not None and n - last_n > self.max_age:
            self.waits += 1
            self._idle.wait()  # the run in flight (if any) may be recent enough
            with self._lock:
                self._raise_pending()
                last, last_n = self._last, self._last_n
            if n - last_n > self.max_age:
                self._idle.clear()
                self._started_n = n
                self._work(frame, n)
                with self._lock:
                    self._raise_pending()
                    last, last_n = self._last, self._last_n
        return carried(last, n - last_n, self.grow_per_frame)

    def reset(self) -> None:
        """Forget the last result (a new stream starts at frame 0); waits for a run in flight."""
        self._idle.wait()
        with self._lock:
            self._last, self._last_n, self._started_n = Detections.empty(), 0, 0
            self._error = None
        reset = getattr(self.detector, "reset", None)
        if callable(reset):
            reset()

    def _raise_pending(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err


def carried(d: Detections, age: int, grow_per_frame: float) -> Detections:
    """``d`` carried ``age`` frames forward: each box grown by ``grow_per_frame * age`` of its
    size on every side, every vouch ``age`` frames older.

    Examples
    --------
    >>> from pipeline.vision.detectors.base import ObjectClass
    >>> d = Detections.from_lists([[10, 10, 20, 20]], [1.0], ObjectClass.FACE).vouch(
    ...     [ObjectClass.FACE])
    >>> c = carried(d, 2, 0.1)
    >>> c.boxes.tolist(), c.vouched[ObjectClass.FACE]
    ([[8.0, 8.0, 22.0, 22.0]], 2)
    """
    frac = grow_per_frame * age
    if age <= 0:
        return d
    if not len(d) or frac <= 0:
        return d.aged(age)
    b = d.boxes.copy()
    dw = (b[:, 2] - b[:, 0]) * frac
    dh = (b[:, 3] - b[:, 1]) * frac
    b[:, 0] -= dw
    b[:, 2] += dw
    b[:, 1] -= dh
    b[:, 3] += dh
    return Detections(b, d.scores, d.classes, d.vouched).aged(age)


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

    def reset(self) -> None:
        """Start over as on a new stream: parts that keep state (``reset()``) forget it, and
        every scheduled part runs on the next frame."""
        for p in self.parts:
            reset = getattr(p.detector, "reset", None)
            if callable(reset):
                reset()
        for b in self.background:
            b.reset()
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
                out.append(carried(p._last, p._age, p.grow_per_frame))
        out.extend(b.result(frame, self._n) for b in self.background)
        self._n += 1
        d = Detections.concat(out)
        if len(d):
            w, h = frame.size
            b = d.boxes.copy()
            np.clip(b[:, 0::2], 0, w, out=b[:, 0::2])
            np.clip(b[:, 1::2], 0, h, out=b[:, 1::2])
            d = Detections(b, d.scores, d.classes, d.vouched)
        return d
