"""People on video: an appearance detector on key frames, tracked between them, plus motion.

:class:`PeopleTracker` is the person detector EdgeVeil uses on streams. It fuses two views:

* **appearance** (:class:`~pipeline.vision.detectors.nanodet.NanoDetPersonDetector`): sees
  people in one image, walking or standing, from the first frame on. It runs on *key frames*:
  always the first frame of a stream, then every ``key_every`` frames, and early whenever the
  tracker is unsure (motion shows something that no appearance track explains). Its people
  are tracked between key frames (constant velocity from the last two sightings, boxes grown
  with the frames since they were seen), and kept for ``hold_keys`` key frames after the
  detector last saw them, so a person it misses once, or who stops behind a post, stays hidden.
* **motion** (:class:`~pipeline.vision.detectors.people.MotionPeopleDetector`, optional): the
  MOG2 foreground on every frame, which covers fast movers between key frames.

Each frame's :class:`~pipeline.vision.detectors.base.Detections` carries the appearance
detector's vouch aged by the frames since the last key frame, which the release gate
(:class:`~pipeline.vision.gate.ReleaseGate`) checks; motion never vouches.

Examples
--------
>>> from pipeline.assets import locate
>>> from pipeline.vision import VideoFileSource
>>> from pipeline.vision.detectors.nanodet import NanoDetPersonDetector
>>> tracker = PeopleTracker(NanoDetPersonDetector(), key_every=4)
>>> ages = [tracker(f).vouched[ObjectClass.PERSON]
...         for f in VideoFileSource(locate("vtest.avi"), max_frames=6)]
>>> ages
[0, 1, 2, 3, 0, 1]
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from pipeline.vision.detectors.base import Detections, Detector, ObjectClass
from pipeline.vision.detectors.people import MotionPeopleDetector, _iou, head_boxes

if TYPE_CHECKING:
    from pipeline.vision.frames import Frame

__all__ = ["PeopleTracker", "TrackerStats"]

log = logging.getLogger(__name__)


@dataclass
class _Track:
    box: npt.NDArray[np.float32]  # last seen, full-frame pixels
    seen_n: int  # frame number of the last sighting
    velocity: npt.NDArray[np.float32]  # (dx, dy) per frame
    score: float
    misses: int = 0  # key frames since the last sighting


@dataclass
class TrackerStats:
    """Counters of one :class:`PeopleTracker`."""

    frames: int = 0
    key_frames: int = 0
    unsure_key_frames: int = 0
    appearance_seconds: float = 0.0
    motion_seconds: float = 0.0


class PeopleTracker:
    """Person and head boxes for a stream: appearance on key frames, tracks, and motion.

    Stateful: feed it the frames of one camera in order.

    Parameters
    ----------
    appearance
        A single-image person detector whose results vouch for PERSON/HEAD (NanoDet).
    motion
        A motion detector run on every frame; ``None`` for none.
    key_every
        Frames between scheduled appearance passes (1 = every frame).
    hold_keys
        Key frames a track survives without a new sighting.
    grow_per_frame
        Fraction of its size a tracked box grows on each side per frame since its sighting.
    unsure_min_gap
        Fewest frames between two appearance passes triggered by doubt (not by schedule).
    unsure_frames
        Consecutive frames motion must show something unexplained before it counts as doubt
        (blob fragments flicker for a frame; a person walking in stays).
    unsure_min_area
        Smallest motion box (full-frame pixels) that can raise doubt.
    motion_every
        Run the motion model's background update on every n-th frame only; in between its
        tracks coast on their velocity (appearance tracks cover whoever stands still).
    max_gap_s
        A frame more than this many seconds after the previous one (a low frame rate, a camera
        that reconnected) is always a key frame: tracking across such a gap means nothing. A
        frame whose timestamp goes back (a new source, a looped file) also resets the tracks and
        the motion model.

    Raises
    ------
    ValueError
        An option is out of range.
    """

    def __init__(self, appearance: Detector, *, motion: MotionPeopleDetector | None = None,
                 key_every: int = 5, hold_keys: int = 2, grow_per_frame: float = 0.02,
                 unsure_min_gap: int = 2, unsure_frames: int = 2,
                 unsure_min_area: float = 400.0,
                 head_fraction: float = 0.25, max_gap_s: float = 1.0,
                 motion_every: int = 1) -> None:
        if key_every < 1 or motion_every < 1:
            raise ValueError(f"key_every and motion_every must be >= 1, got {key_every}, "
                             f"{motion_every}")
        if hold_keys < 0 or unsure_min_gap < 1 or grow_per_frame < 0:
            raise ValueError("need hold_keys >= 0, unsure_min_gap >= 1, grow_per_frame >= 0")
        self.appearance = appearance
        self.motion = motion
        self.key_every = key_every
        self.hold_keys = hold_keys
        self.grow_per_frame = grow_per_frame
        self.unsure_min_gap = unsure_min_gap
        self.unsure_frames = unsure_frames
        self._doubt = 0
        self.unsure_min_area = unsure_min_area
        self.head_fraction = head_fraction
        self.max_gap_s = max_gap_s
        self.motion_every = motion_every
        self.name = f"people({appearance.name}" + (f"+{motion.name})" if motion else ")")
        self.stats = TrackerStats()
        self._tracks: list[_Track] = []
        self._n = 0
        self._last_key = -1
        self._vouched: dict[ObjectClass, int] = {}
        self._last_ts: float | None = None

    def reset(self) -> None:
        """Forget tracks and the motion model (e.g. after the camera moved)."""
        self._tracks = []
        self._n = 0
        self._last_key = -1
        self._vouched = {}
        self._last_ts = None
        self._doubt = 0
        if self.motion is not None:
            self.motion.reset()

    # ------------------------------------------------------------------ tracks
    def _predicted(self, n: int) -> npt.NDArray[np.float32]:
        if not self._tracks:
            return np.zeros((0, 4), np.float32)
        out = []
        for t in self._tracks:
            age = n - t.seen_n
            b = t.box + np.tile(t.velocity * age, 2)
            g = self.grow_per_frame * age
            w, h = b[2] - b[0], b[3] - b[1]
            out.append([b[0] - g * w, b[1] - g * h, b[2] + g * w, b[3] + g * h])
        return np.asarray(out, np.float32)

    def _update(self, boxes: npt.NDArray[np.float32], scores: npt.NDArray[np.float32],
                n: int) -> None:
        pred = self._predicted(n)
        iou = _iou(boxes, pred)
        matched: set[int] = set()
        new: list[_Track] = []
        for bi in np.argsort(-iou.max(axis=1)) if len(pred) else range(len(boxes)):
            ti = int(np.argmax(iou[bi])) if len(pred) else -1
            if ti >= 0 and iou[bi, ti] > 0.1 and ti not in matched:
                t = self._tracks[ti]
                dt = max(1, n - t.seen_n)
                c_new = (boxes[bi, :2] + boxes[bi, 2:]) / 2
                c_old = (t.box[:2] + t.box[2:]) / 2
                v = (c_new - c_old) / dt
                t.velocity = (v if t.misses == 0 and not t.velocity.any() else
                              0.5 * t.velocity + 0.5 * v).astype(np.float32)
                t.box, t.seen_n, t.score, t.misses = boxes[bi], n, float(scores[bi]), 0
                matched.add(ti)
                iou[:, ti] = -1
            else:
                new.append(_Track(boxes[bi], n, np.zeros(2, np.float32), float(scores[bi])))
        kept = []
        for i, t in enumerate(self._tracks):
            if i not in matched:
                t.misses += 1
                if t.misses > self.hold_keys:
                    continue
            kept.append(t)
        self._tracks = kept + new

    def _unsure(self, n: int) -> bool:
        """Motion has shown a person-sized region no appearance track explains for
        ``unsure_frames`` frames in a row."""
        self._doubt = self._doubt + 1 if self._unexplained(n) else 0
        return self._doubt >= self.unsure_frames and n - self._last_key >= self.unsure_min_gap

    def _unexplained(self, n: int) -> bool:
        if self.motion is None:
            return False
        m = self.motion.last_blobs  # this frame's blobs, not the motion tracks held from before
        if not len(m):
            return False
        area = (m[:, 2] - m[:, 0]) * (m[:, 3] - m[:, 1])
        m = m[area >= self.unsure_min_area]
        if not len(m):
            return False
        pred = self._predicted(n)
        if not len(pred):
            return True
        # the fraction of each motion box covered by its best track
        x1 = np.maximum(m[:, None, 0], pred[None, :, 0])
        y1 = np.maximum(m[:, None, 1], pred[None, :, 1])
        x2 = np.minimum(m[:, None, 2], pred[None, :, 2])
        y2 = np.minimum(m[:, None, 3], pred[None, :, 3])
        inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
        covered = inter.max(axis=1) / np.maximum(area[area >= self.unsure_min_area], 1.0)
        return bool((covered < 0.3).any())

    # ------------------------------------------------------------------ per frame
    def __call__(self, frame: Frame) -> Detections:
        """Person and head boxes for the next frame of the stream."""
        gap = None if self._last_ts is None else frame.timestamp - self._last_ts
        if gap is not None and gap < 0:
            log.info("frame %d goes back in time (%.2f s): new stream, tracks reset", frame.seq, gap)
            self.reset()
            gap = None
        self._last_ts = frame.timestamp
        n = self._n
        self._n += 1
        self.stats.frames += 1
        parts: list[Detections] = []
        motion_updated = False
        if self.motion is not None:
            t0 = time.perf_counter()
            # skip the background update only on closely spaced frames (>= ~8 fps)
            motion_updated = (n % self.motion_every == 0
                              or (gap is not None and gap > 0.12))
            motion = (self.motion(frame) if motion_updated
                      else self.motion.detect_image(frame.image, update=False))
            self.stats.motion_seconds += time.perf_counter() - t0
            parts.append(motion)
        scheduled = (self._last_key < 0 or n - self._last_key >= self.key_every
                     or (gap is not None and gap > self.max_gap_s))
        unsure = motion_updated and self._unsure(n) and not scheduled
        if scheduled or unsure:
            t0 = time.perf_counter()
            seen = self.appearance(frame)
            self.stats.appearance_seconds += time.perf_counter() - t0
            self.stats.key_frames += 1
            self.stats.unsure_key_frames += int(unsure)
            people = seen.select([ObjectClass.PERSON])
            self._update(people.boxes, people.scores, n)
            self._vouched = dict(seen.vouched)
            self._last_key = n
            self._doubt = 0
        boxes = self._predicted(n)
        if len(boxes):
            w, h = frame.size
            boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, w)
            boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, h)
            scores = np.asarray([t.score for t in self._tracks], np.float32)
            heads = head_boxes(boxes, fraction=self.head_fraction)
            heads[:, 0::2] = np.clip(heads[:, 0::2], 0, w)
            parts += [Detections.from_lists(boxes, scores, ObjectClass.PERSON),
                      Detections.from_lists(heads, scores, ObjectClass.HEAD)]
        age = n - self._last_key
        return Detections.concat(parts).vouch_ages(
            {c: a + age for c, a in self._vouched.items()})
