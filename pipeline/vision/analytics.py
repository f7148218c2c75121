"""Counts of what the camera saw: per frame, and rolled up per time interval.

The interval series (one row per interval: start time, frames, mean and max count per class) is
the local time series the forecasting task trains on. Only counts leave this module -- no boxes,
no pixels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from pipeline.vision.detectors.base import Detections, ObjectClass

__all__ = ["FrameCounts", "IntervalCounts", "CountRollup", "frame_counts"]


@dataclass(frozen=True)
class FrameCounts:
    """Detections per class in one frame."""

    seq: int
    timestamp: float
    counts: dict[str, int]
    fail_closed: bool = False


def frame_counts(seq: int, timestamp: float, detections: Detections | None) -> FrameCounts:
    """Counts for one frame; ``None`` detections (failed frame) count as fail-closed.

    Examples
    --------
    >>> d = Detections.from_lists([[0, 0, 1, 1]] * 2, [1, 1], ObjectClass.PERSON)
    >>> frame_counts(3, 0.3, d).counts
    {'face': 0, 'person': 2, 'head': 0, 'text': 0}
    """
    counts = {c.name.lower(): 0 for c in ObjectClass}
    if detections is None:
        return FrameCounts(seq, timestamp, counts, fail_closed=True)
    counts.update(detections.count_by_class())
    return FrameCounts(seq, timestamp, counts)


@dataclass(frozen=True)
class IntervalCounts:
    """One interval of the time series."""

    start: float
    seconds: float
    frames: int
    fail_closed_frames: int
    mean: dict[str, float]
    max: dict[str, int]


@dataclass
class CountRollup:
    """Rolls :class:`FrameCounts` up into fixed intervals of ``seconds``.

    Examples
    --------
    >>> r = CountRollup(seconds=1.0)
    >>> for i in range(25):
    ...     _ = list(r.add(FrameCounts(i, i / 10, {"person": i % 3})))
    >>> [iv.frames for iv in r.close()]
    [10, 10, 5]
    """

    seconds: float = 60.0
    _start: float | None = None
    _rows: list[FrameCounts] = field(default_factory=list)
    done: list[IntervalCounts] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.seconds <= 0:
            raise ValueError(f"seconds must be > 0, got {self.seconds}")

    def _emit(self) -> IntervalCounts:
        assert self._start is not None
        ok = [r for r in self._rows if not r.fail_closed]
        keys = sorted({k for r in self._rows for k in r.counts})
        n = max(len(ok), 1)
        iv = IntervalCounts(
            start=self._start, seconds=self.seconds, frames=len(self._rows),
            fail_closed_frames=len(self._rows) - len(ok),
            mean={k: sum(r.counts.get(k, 0) for r in ok) / n for k in keys},
            max={k: max((r.counts.get(k, 0) for r in ok), default=0) for k in keys},
        )
        self.done.append(iv)
        self._rows = []
        return iv

    def add(self, row: FrameCounts) -> Iterator[IntervalCounts]:
        """Add one frame; yields the intervals it closes."""
        start = math.floor(row.timestamp / self.seconds) * self.seconds
        if self._start is None:
            self._start = start
        while start >= self._start + self.seconds - 1e-9:
            if self._rows:
                yield self._emit()
            self._start += self.seconds
        self._rows.append(row)

    def extend(self, rows: Iterable[FrameCounts]) -> list[IntervalCounts]:
        """Add many frames; return the intervals they closed."""
        return [iv for r in rows for iv in self.add(r)]

    def close(self) -> list[IntervalCounts]:
        """Emit the open interval; return every interval so far."""
        if self._rows:
            self._emit()
        return list(self.done)
