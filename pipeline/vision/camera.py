"""An edge node's live camera: frames → fail-closed anonymization → counts and previews.

:class:`CameraLoop` runs the vision pipeline (:mod:`pipeline.vision`) in a background thread and
hands the caller only what may leave the node: per-interval person counts, rate-limited JPEG
previews of *anonymized* frames, and throughput statistics. Raw frames live only inside the thread
(privacy invariant 1); a frame that failed detection, or that no single-image detector vouched for
recently (the release gate, :mod:`pipeline.vision.gate`), is released fully hidden or not at all
(invariant 2, :class:`pipeline.vision.FailClosedAnonymizer`). Previews are taken only from frames
that passed the gate, and counts only from such frames (a failed frame counts as failed).

The interval counts are also appended to a CSV (the node's durable local time series).

Examples
--------
>>> from pipeline.assets import locate
>>> cam = CameraLoop(locate("vtest.avi"), interval_s=2.0, target_fps=50, max_frames=20)
>>> cam.start(); cam.join(60)
>>> sum(iv.frames for iv in cam.drain_intervals()) > 0
True
>>> p = cam.drain_previews()[0]
>>> p.jpeg[:3], p.seq
(b'\xff\xd8\xff', 0)
"""

from __future__ import annotations

import csv
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.vision import (
    AnonymizeMode,
    CountRollup,
    FailClosedAnonymizer,
    Frame,
    FrameCounts,
    IntervalCounts,
    ObjectClass,
    SourceError,
    default_detector,
    default_gate,
    open_source,
)

log = logging.getLogger(__name__)

__all__ = ["CameraLoop", "CameraStats", "Preview"]


@dataclass(frozen=True)
class CameraStats:
    """Throughput of the camera loop since it started."""

    frames_in: int
    frames_out: int
    fail_closed: int
    fps: float
    restarts: int
    error: str | None = None


@dataclass(frozen=True)
class Preview:
    """One anonymized JPEG preview and where in the camera's stream its frame was.

    ``seq`` and ``loop`` (how many times a looping file restarted) let an auditor decode the very
    frame it came from; ``vouched`` is the release gate's record for it (class -> frames since a
    single-image detector looked).
    """

    jpeg: bytes
    seq: int
    timestamp: float
    loop: int
    vouched: dict[str, int]


class _PreviewSink:
    """Keeps one JPEG of an anonymized, gated frame every ``every_s`` seconds.

    Raw frames are refused (``ValueError``); fully hidden fail-closed frames are skipped (they
    show nothing, and a preview must come from a frame the release gate let through).
    """

    def __init__(self, every_s: float, keep: int, width: int) -> None:
        self.every_s = every_s
        self.width = width
        self.previews: deque[Preview] = deque(maxlen=keep)
        self._last = -1e18
        self.loop = 0

    def add(self, frame: Frame) -> None:
        if not frame.anonymized:
            raise ValueError("refusing a raw frame as a preview")
        if frame.metadata.get("fail_closed") or "vouched" not in frame.metadata:
            return
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        img = frame.image
        if img.shape[1] > self.width:
            h = int(img.shape[0] * self.width / img.shape[1])
            img = np.asarray(cv2.resize(img, (self.width, h), interpolation=cv2.INTER_AREA),
                             dtype=np.uint8)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 70])
        if ok:
            self.previews.append(Preview(buf.tobytes(), frame.seq, frame.timestamp, self.loop,
                                         dict(frame.metadata["vouched"])))

    def flush(self) -> None:
        return None


class CameraLoop(threading.Thread):
    """Anonymize a camera (file, URL or device index) in a thread; loop files like a live feed.

    Parameters
    ----------
    uri
        What :func:`pipeline.vision.open_source` opens.
    interval_s
        Length of one count interval, in media seconds.
    target_fps
        Frames processed per second (the rest are skipped by the source); bounds the CPU taken
        from training on a small edge box.
    series_csv
        Where interval counts are appended (the node's local time series); ``None`` keeps none.
    preview_every_s
        One anonymized JPEG preview per this many seconds (0 disables previews).
    loop
        Restart a file source when it ends (a recorded camera standing in for a live one).
    max_frames
        Stop after this many frames (tests).
    """

    def __init__(self, uri: str | int | Path, *, interval_s: float = 10.0, target_fps: float = 10.0,
                 series_csv: Path | None = None, preview_every_s: float = 5.0,
                 preview_width: int = 384, loop: bool = True, max_frames: int | None = None,
                 mode: AnonymizeMode = AnonymizeMode.BLUR) -> None:
        super().__init__(name="edge-camera", daemon=True)
        self.uri = uri
        self.interval_s = interval_s
        self.target_fps = target_fps
        self.series_csv = series_csv
        self.loop = loop
        self.max_frames = max_frames
        self.detector = default_detector()
        self.processor = FailClosedAnonymizer(self.detector, policy=mode, timeout_s=5.0,
                                              gate=default_gate())
        self._sink = _PreviewSink(preview_every_s, keep=8, width=preview_width)
        self._rollup = CountRollup(seconds=interval_s)
        self._intervals: deque[IntervalCounts] = deque(maxlen=10_000)
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._frames_in = self._frames_out = self._restarts = 0
        self._t0 = time.monotonic()
        self._error: str | None = None
        self._offset = 0.0  # media-time offset so a looped file keeps counting forward
        self.previews_enabled = preview_every_s > 0

    # ------------------------------------------------------------------ thread
    def run(self) -> None:
        while not self._halt.is_set():
            try:
                source = open_source(self.uri, target_fps=self.target_fps)
                last_ts = 0.0
                for frame in source:
                    if self._halt.is_set() or self._done():
                        break
                    t_start = time.monotonic()
                    self._process(frame, self._offset + frame.timestamp)
                    last_ts = frame.timestamp
                    # pace to target_fps so the camera leaves CPU for training
                    spare = 1.0 / self.target_fps - (time.monotonic() - t_start)
                    if spare > 0:
                        self._halt.wait(spare)
                self._offset += last_ts + 1.0 / max(self.target_fps, 1e-6)
            except SourceError as exc:
                self._error = str(exc)
                log.warning("camera %s: %s; retrying in 2 s", self.uri, exc)
                self._halt.wait(2.0)
            if self._done() or not self.loop:
                break
            self._restarts += 1
            self._sink.loop = self._restarts
            self.detector.reset()  # the file starts over: a new stream for every detector
        with self._lock:
            already = len(self._rollup.done)
            for iv in self._rollup.close()[already:]:  # only the interval still open
                self._publish_interval(iv)

    def _done(self) -> bool:
        return self.max_frames is not None and self._frames_in >= self.max_frames

    def _process(self, frame: Frame, ts: float) -> None:
        out = self.processor(frame)
        with self._lock:
            self._frames_in += 1
            if out is not None:
                self._frames_out += 1
                if self.previews_enabled:
                    self._sink.add(out)
            failed = out is None or bool(out.metadata.get("fail_closed"))
            counts = {c.name.lower(): 0 for c in ObjectClass}
            if out is not None and not failed:
                counts.update(dict(out.metadata.get("detections", {})))
            for iv in self._rollup.add(FrameCounts(frame.seq, ts, counts, failed)):
                self._publish_interval(iv)
            self._rollup.done.clear()  # published above; a camera runs for months

    def _publish_interval(self, iv: IntervalCounts) -> None:
        self._intervals.append(iv)
        if self.series_csv is None:
            return
        new = not self.series_csv.exists()
        self.series_csv.parent.mkdir(parents=True, exist_ok=True)
        with self.series_csv.open("a", newline="") as fh:
            w = csv.writer(fh)
            if new:
                w.writerow(["start", "seconds", "frames", "fail_closed_frames", "person_mean",
                            "person_max"])
            w.writerow([f"{iv.start:.3f}", iv.seconds, iv.frames, iv.fail_closed_frames,
                        f"{iv.mean.get('person', 0.0):.3f}", iv.max.get("person", 0)])

    # ------------------------------------------------------------------ caller side
    def stop(self, timeout: float = 10.0) -> None:
        self._halt.set()
        self.join(timeout)

    def drain_intervals(self) -> list[IntervalCounts]:
        """Interval counts closed since the last call."""
        with self._lock:
            out = list(self._intervals)
            self._intervals.clear()
        return out

    def drain_previews(self) -> list[Preview]:
        """Anonymized JPEG previews taken since the last call."""
        with self._lock:
            out = list(self._sink.previews)
            self._sink.previews.clear()
        return out

    def stats(self) -> CameraStats:
        with self._lock:
            elapsed = max(time.monotonic() - self._t0, 1e-6)
            return CameraStats(self._frames_in, self._frames_out,
                               self.processor.stats.fail_closed,
                               round(self._frames_in / elapsed, 2), self._restarts, self._error)
