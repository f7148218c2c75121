"""Frame sources: video files, image folders, RTSP/HTTP(MJPEG) URLs and V4L2 cameras via OpenCV.

Files are read completely and in order (never dropped); a file that ends before the frame count
its container announced raises :class:`~pipeline.vision.exceptions.SourceTruncatedError` *after*
the good frames were delivered. Live sources read in a background thread into a bounded buffer
that drops the *oldest* frame when the consumer falls behind, and reconnect with exponential
backoff when the stream dies.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import numpy.typing as npt

from pipeline.vision.exceptions import (
    SourceExhaustedError,
    SourceOpenError,
    SourceTruncatedError,
)
from pipeline.vision.frames import Frame

__all__ = [
    "FrameSource",
    "VideoFileSource",
    "ImageFolderSource",
    "LiveSource",
    "open_source",
    "IMAGE_EXTENSIONS",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
_LIVE_PREFIXES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://")


class FrameSource(Protocol):
    """An iterator of :class:`Frame` with a few facts about the stream."""

    uri: str
    fps: float
    frame_count: int | None
    live: bool

    def __iter__(self) -> Iterator[Frame]:
        """Frames in order."""
        ...

    def close(self) -> None:
        """Release the device/file."""
        ...


def _as_bgr(img: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(img, dtype=np.uint8)


class _Sampler:
    """Keeps frames so that at most ``target_fps`` per second of media time pass."""

    def __init__(self, target_fps: float | None) -> None:
        if target_fps is not None and target_fps <= 0:
            raise ValueError(f"target_fps must be > 0, got {target_fps}")
        self.target = target_fps
        self._last_slot = -1

    def keep(self, t: float) -> bool:
        if self.target is None:
            return True
        slot = math.floor(t * self.target + 1e-6)
        if slot > self._last_slot:
            self._last_slot = slot
            return True
        return False


class VideoFileSource:
    """Frames of a video file, in order, none dropped (except by ``target_fps`` sampling).

    Parameters
    ----------
    path
        The video file.
    target_fps
        Keep at most this many frames per second of video (``seq`` keeps the file position).
    max_frames
        Stop after delivering this many frames.
    strict
        Raise :class:`SourceTruncatedError` when decoding stops before the announced count.

    Raises
    ------
    SourceOpenError
        The file is missing or OpenCV cannot decode it.

    Examples
    --------
    >>> from pipeline.assets import locate
    >>> src = VideoFileSource(locate("vtest.avi"), max_frames=2)
    >>> [f.seq for f in src]
    [0, 1]
    """

    live = False

    def __init__(self, path: str | Path, *, target_fps: float | None = None,
                 max_frames: int | None = None, strict: bool = True) -> None:
        self.uri = str(path)
        if not Path(path).is_file():
            raise SourceOpenError(self.uri, "no such file")
        self._cap = cv2.VideoCapture(self.uri)
        if not self._cap.isOpened():
            raise SourceOpenError(self.uri, "OpenCV cannot open it as a video")
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 0 < fps < 1000 else 25.0
        n = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count: int | None = n if n > 0 else None
        self.width = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self._sampler = _Sampler(target_fps)
        self.max_frames = max_frames
        self.strict = strict
        self.decoded = 0

    def __iter__(self) -> Iterator[Frame]:
        delivered = 0
        try:
            while self.max_frames is None or delivered < self.max_frames:
                ok, img = self._cap.read()
                if not ok or img is None:
                    if self.decoded == 0:
                        raise SourceOpenError(self.uri, "no frame could be decoded")
                    if self.strict and self.frame_count and self.decoded < self.frame_count:
                        raise SourceTruncatedError(self.uri, self.decoded, self.frame_count)
                    return
                seq = self.decoded
                self.decoded += 1
                t = seq / self.fps
                if not self._sampler.keep(t):
                    continue
                delivered += 1
                yield Frame(_as_bgr(img), seq=seq, timestamp=t, source=self.uri)
        finally:
            self.close()

    def close(self) -> None:
        """Release the file."""
        self._cap.release()


class ImageFolderSource:
    """Images of a folder (sorted by name) or a single image file, as frames.

    ``metadata["name"]`` holds each file's name; ``timestamp`` is ``seq / fps``.

    Raises
    ------
    SourceOpenError
        Missing path, an empty folder, or an image OpenCV cannot read (the file is named).
    """

    live = False

    def __init__(self, path: str | Path, *, fps: float = 1.0,
                 max_frames: int | None = None) -> None:
        p = Path(path)
        self.uri = str(p)
        if p.is_dir():
            self.files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
            if not self.files:
                raise SourceOpenError(self.uri, "folder holds no images "
                                      f"({', '.join(sorted(IMAGE_EXTENSIONS))})")
        elif p.is_file():
            self.files = [p]
        else:
            raise SourceOpenError(self.uri, "no such file or folder")
        self.fps = fps
        self.frame_count: int | None = len(self.files)
        self.max_frames = max_frames

    def __iter__(self) -> Iterator[Frame]:
        for seq, f in enumerate(self.files):
            if self.max_frames is not None and seq >= self.max_frames:
                return
            img = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if img is None:
                raise SourceOpenError(str(f), "not a readable image", frames_read=seq)
            yield Frame(_as_bgr(img), seq=seq, timestamp=seq / self.fps, source=self.uri,
                        metadata={"name": f.name})

    def close(self) -> None:
        """Nothing to release."""


class LiveSource:
    """A camera or stream URL read in a background thread.

    Parameters
    ----------
    uri
        ``rtsp://``/``http://`` URL (MJPEG, H.264 ...) or a V4L2 camera index (``0``).
    target_fps
        Keep at most this many frames per second (wall clock).
    buffer_size
        Frames held for the consumer; when full the oldest is dropped (``dropped`` counts them).
    max_reconnects
        Reconnect attempts after the stream dies before :class:`SourceExhaustedError`
        (``None`` = forever). The counter resets once frames flow again.
    backoff_s, max_backoff_s
        First wait before reconnecting, doubled each failed attempt up to the maximum.
    max_frames
        Stop after delivering this many frames.
    open_timeout_s
        How long the first connection may take before :class:`SourceOpenError`.
    """

    live = True

    def __init__(self, uri: str | int, *, target_fps: float | None = None, buffer_size: int = 4,
                 max_reconnects: int | None = 10, backoff_s: float = 0.25,
                 max_backoff_s: float = 8.0, max_frames: int | None = None,
                 open_timeout_s: float = 10.0) -> None:
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        self.uri = str(uri)
        self._target: str | int = int(uri) if isinstance(uri, int) or str(uri).isdigit() \
            else str(uri)
        self._sampler = _Sampler(target_fps)
        self._buf: collections.deque[Frame] = collections.deque(maxlen=buffer_size)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self.max_reconnects = max_reconnects
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_frames = max_frames
        self.fps = 0.0
        self.frame_count: int | None = None
        self.dropped = 0
        self.reconnects = 0
        self.captured = 0
        self._error: Exception | None = None
        self._done = False
        cap = self._open()
        if cap is None:
            raise SourceOpenError(self.uri, "cannot open stream/camera")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 0 < fps < 1000 else 25.0
        self._thread = threading.Thread(target=self._run, args=(cap,), name="live-source",
                                        daemon=True)
        self._thread.start()
        self._open_timeout_s = open_timeout_s

    def _open(self) -> cv2.VideoCapture | None:
        cap = cv2.VideoCapture(self._target)
        if not cap.isOpened():
            cap.release()
            return None
        return cap

    def _run(self, cap: cv2.VideoCapture | None) -> None:
        attempts = 0
        delay = self.backoff_s
        try:
            while not self._stop.is_set():
                if cap is None:
                    if self.max_reconnects is not None and attempts >= self.max_reconnects:
                        raise SourceExhaustedError(self.uri, attempts, self.captured)
                    log.warning("live source %s lost; reconnect attempt %d in %.2f s",
                                self.uri, attempts + 1, delay)
                    if self._stop.wait(delay):
                        return
                    delay = min(delay * 2, self.max_backoff_s)
                    attempts += 1
                    cap = self._open()
                    if cap is not None:
                        self.reconnects += 1
                    continue
                ok, img = cap.read()
                if not ok or img is None:
                    cap.release()
                    cap = None
                    continue
                attempts, delay = 0, self.backoff_s
                seq = self.captured
                self.captured += 1
                t = time.time()
                if not self._sampler.keep(t):
                    continue
                frame = Frame(_as_bgr(img), seq=seq, timestamp=t, source=self.uri)
                with self._cond:
                    if len(self._buf) == self._buf.maxlen:
                        self.dropped += 1
                    self._buf.append(frame)
                    self._cond.notify()
        except Exception as exc:  # handed to the consumer
            self._error = exc
        finally:
            if cap is not None:
                cap.release()
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def __iter__(self) -> Iterator[Frame]:
        delivered = 0
        try:
            while self.max_frames is None or delivered < self.max_frames:
                with self._cond:
                    while not self._buf and not self._done:
                        self._cond.wait(0.5)
                    if self._buf:
                        frame = self._buf.popleft()
                    else:
                        if self._error is not None:
                            raise self._error
                        return
                delivered += 1
                yield frame
        finally:
            self.close()

    def close(self) -> None:
        """Stop the reader thread."""
        self._stop.set()


def open_source(uri: str | int | Path, *, target_fps: float | None = None,
                max_frames: int | None = None, buffer_size: int = 4,
                max_reconnects: int | None = 10) -> VideoFileSource | ImageFolderSource | \
        LiveSource:
    """Open ``uri`` as the right kind of source.

    An ``int`` or digit string is a V4L2 camera index, a URL is a live stream, a folder or an
    image file is an image source, anything else a video file.

    Raises
    ------
    SourceOpenError
        The input does not exist or cannot be decoded.

    Examples
    --------
    >>> from pipeline.assets import locate
    >>> type(open_source(locate("messi5.jpg"))).__name__
    'ImageFolderSource'
    """
    s = str(uri)
    if isinstance(uri, int) or s.isdigit() or s.lower().startswith(_LIVE_PREFIXES):
        return LiveSource(uri if isinstance(uri, int) else s, target_fps=target_fps,
                          buffer_size=buffer_size, max_reconnects=max_reconnects,
                          max_frames=max_frames)
    p = Path(s)
    if p.is_dir() or p.suffix.lower() in IMAGE_EXTENSIONS:
        return ImageFolderSource(p, max_frames=max_frames)
    return VideoFileSource(p, target_fps=target_fps, max_frames=max_frames)
