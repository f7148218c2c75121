"""Where anonymized frames go. A sink needs only ``add(frame)`` and ``flush()``.

Sinks refuse raw frames (:class:`RawFrameError`): the privacy invariant is enforced at the last
step, not only trusted from the steps before.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2

from pipeline.vision.exceptions import VisionError
from pipeline.vision.frames import Frame

__all__ = ["FrameSink", "ListSink", "VideoFileSink", "ImageFolderSink", "RawFrameError"]

log = logging.getLogger(__name__)


class RawFrameError(VisionError):
    """A frame that was not anonymized reached a sink (``seq`` names it)."""

    def __init__(self, seq: int) -> None:
        self.seq = seq
        super().__init__(f"refusing to write raw (not anonymized) frame {seq}")


@runtime_checkable
class FrameSink(Protocol):
    """Receives anonymized frames in order."""

    def add(self, frame: Frame) -> None:
        """Take one anonymized frame (raise :class:`RawFrameError` for a raw one)."""
        ...

    def flush(self) -> None:
        """Make everything added so far durable; the sink stays usable."""
        ...


def _check(frame: Frame) -> None:
    if not frame.anonymized:
        raise RawFrameError(frame.seq)


class ListSink:
    """Keeps frames in memory (tests, notebooks).

    Examples
    --------
    >>> import numpy as np
    >>> s = ListSink()
    >>> s.add(Frame(np.zeros((2, 2, 3), np.uint8), 0, 0.0, anonymized=True))
    >>> len(s.frames)
    1
    """

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.flushes = 0

    def add(self, frame: Frame) -> None:
        """Append ``frame``."""
        _check(frame)
        self.frames.append(frame)

    def flush(self) -> None:
        """Count the flush (nothing to write)."""
        self.flushes += 1


_FOURCC = {".avi": "MJPG", ".mkv": "FFV1"}


class VideoFileSink:
    """Writes frames to a video file with ``cv2.VideoWriter``: MJPG for .avi, lossless FFV1 for
    .mkv (every pixel kept, e.g. to measure what an anonymizer changed), mp4v otherwise.

    The writer opens on the first frame, taking its size; ``fps`` should be the input's so that
    frame ``i`` of the output is frame ``i`` of the input. ``flush()`` closes the file (a later
    ``add`` would reopen and overwrite it), so call it once at the end.
    """

    def __init__(self, path: str | Path, *, fps: float, fourcc: str | None = None) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.path = Path(path)
        self.fps = fps
        self.fourcc = fourcc or _FOURCC.get(self.path.suffix.lower(), "mp4v")
        self._writer: cv2.VideoWriter | None = None
        self.count = 0

    def add(self, frame: Frame) -> None:
        """Encode ``frame``."""
        _check(frame)
        if self._writer is None:
            w, h = frame.size
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter.fourcc(*self.fourcc),
                                           self.fps, (w, h))
            if not self._writer.isOpened():
                raise VisionError(f"cannot open video writer for {self.path} ({self.fourcc})")
        self._writer.write(frame.image)
        self.count += 1

    def flush(self) -> None:
        """Finish the file."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None


class ImageFolderSink:
    """Writes each frame as ``<folder>/<name or seq>.<ext>``."""

    def __init__(self, folder: str | Path, *, ext: str = ".png") -> None:
        self.folder = Path(folder)
        self.ext = ext if ext.startswith(".") else "." + ext
        self.count = 0

    def add(self, frame: Frame) -> None:
        """Write ``frame`` (named after ``metadata['name']`` if present)."""
        _check(frame)
        self.folder.mkdir(parents=True, exist_ok=True)
        stem = Path(str(frame.metadata.get("name", f"{frame.seq:06d}"))).stem
        path = self.folder / f"{stem}{self.ext}"
        if not cv2.imwrite(str(path), frame.image):
            raise VisionError(f"cannot write {path}")
        self.count += 1

    def flush(self) -> None:
        """Nothing buffered."""
