"""Privacy stress cases built from an annotated video: where motion alone fails.

Averages over a walk-through hide the frames that leak. Each case here is a set of clips cut
from one annotated video (vtest.avi), each clip fed to an anonymizer from its *first* frame as a
fresh stream, and scored only on frames whose people are annotated:

=============  =================================================================================
``normal``     the whole video, in order
``warmup``     short clips that start mid-video: the annotated frame is frame 0, 1, 2, ... 29 of
               its clip (a camera that just started, a motion model still learning)
``freeze``     people who stop: a few frames of walking, then one annotated frame held for
               ``freeze_seconds`` (a crossing where everyone waits); scored across the hold
``cold``       a camera that starts while people stand still: one annotated frame repeated from
               the very first frame on
``photos``     every annotated frame as a single image (a folder of photos)
``fps5``       5 fps sampling: the video at half its frame rate (two clips, even and odd frames,
               so that every annotated frame is in one of them)
=============  =================================================================================

``bench/privacy.py`` runs the full-size cases through ``edgeveil anonymize`` and deface;
``tests/pipeline/vision/test_privacy_stress.py`` runs small versions of each.

Examples
--------
>>> import numpy as np
>>> from pipeline.vision.evaluation import AnnotatedPerson, PeopleAnnotations
>>> frames = [np.zeros((8, 8, 3), np.uint8)] * 100
>>> ann = PeopleAnnotations("v", (8, 8), {40: [AnnotatedPerson(np.array([1, 1, 4, 7]), None)]})
>>> cases = {c.name: c for c in build_cases(frames, ann, small=True)}
>>> sorted(cases)
['cold', 'fps5', 'freeze', 'normal', 'photos', 'warmup']
>>> [clip.scored for clip in cases["warmup"].clips]
[{0: 40}]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from pipeline.vision.evaluation import PeopleAnnotations

__all__ = ["Clip", "StressCase", "build_cases", "write_clip", "read_output"]

Image = npt.NDArray[np.uint8]

_WARMUP_OFFSETS = (0, 1, 2, 3, 5, 8, 12, 18, 24, 29)


@dataclass(frozen=True)
class Clip:
    """One input an anonymizer sees as a fresh stream (or, if ``still``, a folder of photos).

    ``scored`` maps a position in the clip to the annotated frame of the source video it shows.
    """

    name: str
    frames: Sequence[Image]
    fps: float
    scored: dict[int, int]
    still: bool = False


@dataclass(frozen=True)
class StressCase:
    """A named set of clips, scored together."""

    name: str
    description: str
    clips: list[Clip]

    @property
    def frames(self) -> int:
        """Frames an anonymizer processes for this case."""
        return sum(len(c.frames) for c in self.clips)


def _spread(items: Sequence[int], n: int) -> list[int]:
    """``n`` items spread evenly over ``items`` (all of them if there are fewer)."""
    if n >= len(items):
        return list(items)
    idx = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in idx]


def build_cases(frames: Sequence[Image], annotations: PeopleAnnotations, *, fps: float = 10.0,
                small: bool = False, freeze_seconds: float = 30.0,
                cold_seconds: float = 6.0) -> list[StressCase]:
    """The stress cases for ``frames`` (the decoded video) and its ``annotations``.

    ``small`` keeps one or two clips per case and shorter holds (for tests). Clips reference the
    frames in ``frames``; nothing is copied until :func:`write_clip`.
    """
    annotated = sorted(i for i in annotations.frames if i < len(frames))
    if not annotated:
        raise ValueError("no annotated frame lies within the video")
    n = len(frames)
    cases: list[StressCase] = []

    normal_end = n if not small else min(n, annotated[min(5, len(annotated) - 1)] + 1)
    cases.append(StressCase("normal", "the video in order from its first frame", [
        Clip("normal", frames[:normal_end], fps,
             {i: i for i in annotated if i < normal_end})]))

    mid = [a for a in annotated if a >= 1]
    warm = []
    for j, a in enumerate(_spread(mid, 4 if small else 12)):
        d = min(_WARMUP_OFFSETS[j % len(_WARMUP_OFFSETS)], a - 1) if not small else 0
        start = a - d
        clip_frames = frames[start:start + 30] if not small else frames[start:start + 3]
        scored = {i - start: i for i in annotated if start <= i < start + len(clip_frames)}
        warm.append(Clip(f"warmup-{start}", clip_frames, fps, scored))
    cases.append(StressCase("warmup", "clips starting mid-video; annotated frames among "
                            "their first 30", warm))

    hold = int(round((freeze_seconds if not small else 6.0) * fps))
    freeze = []
    for a in _spread([a for a in annotated if a >= 20], 1 if small else 3):
        walk = list(frames[a - 20:a])
        clip_frames = walk + [frames[a]] * hold
        at = [0, 1, 5, 10, 20, 50, 100, 150, 200, 250, hold - 1]
        scored = {len(walk) + t: a for t in sorted({t for t in at if t < hold})}
        freeze.append(Clip(f"freeze-{a}", clip_frames, fps, scored))
    cases.append(StressCase("freeze", f"2 s of walking, then one frame held for {hold / fps:.0f} s",
                            freeze))

    cold_len = int(round((cold_seconds if not small else 2.0) * fps))
    cold = []
    for a in _spread(annotated, 2 if small else 4):
        at = [0, 1, 2, 5, 10, 20, 40, cold_len - 1]
        cold.append(Clip(f"cold-{a}", [frames[a]] * cold_len, fps,
                         {t: a for t in sorted({t for t in at if t < cold_len})}))
    cases.append(StressCase("cold", f"one frame repeated for {cold_len / fps:.0f} s from the "
                            "first frame on", cold))

    photo_frames = _spread(annotated, 6 if small else len(annotated))
    cases.append(StressCase("photos", "each annotated frame as a single image", [
        Clip("photos", [frames[a] for a in photo_frames], fps,
             {i: a for i, a in enumerate(photo_frames)}, still=True)]))

    half = []
    for parity in (0, 1):
        idx = list(range(parity, normal_end, 2))
        half.append(Clip(f"fps5-{'even' if parity == 0 else 'odd'}", [frames[i] for i in idx],
                         fps / 2, {k: i for k, i in enumerate(idx) if i in annotations.frames}))
    cases.append(StressCase("fps5", "the video at half its frame rate (even and odd frames)",
                            [c for c in half if c.scored]))
    return cases


def write_clip(clip: Clip, folder: Path, *, lift: bool = True) -> Path:
    """Write ``clip`` losslessly under ``folder``: an FFV1 ``.mkv`` video, or PNG images for a
    still clip. ``lift`` raises every 0 channel value to 1 first, so that a solid black mask
    always changes a pixel (see :func:`~pipeline.vision.evaluation.lift_black`).

    Returns the path to give the anonymizer (video file or image folder).
    """
    folder.mkdir(parents=True, exist_ok=True)
    if clip.still:
        out = folder / clip.name
        out.mkdir(exist_ok=True)
        for i, img in enumerate(clip.frames):
            cv2.imwrite(str(out / f"{i:05d}.png"), np.maximum(img, 1) if lift else img)
        return out
    path = folder / f"{clip.name}.mkv"
    h, w = clip.frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"FFV1"), clip.fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"cannot write {path} (FFV1)")
    for img in clip.frames:
        writer.write(np.maximum(img, 1) if lift else img)
    writer.release()
    return path


def read_output(path: Path, count: int) -> list[Image]:
    """Read back ``count`` frames of an anonymizer's output (video file or image folder)."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".png", ".jpg"))
        imgs = [cv2.imread(str(p)) for p in files[:count]]
    else:
        cap = cv2.VideoCapture(str(path))
        imgs = []
        for _ in range(count):
            ok, img = cap.read()
            if not ok:
                break
            imgs.append(img)
        cap.release()
    if len(imgs) != count or any(i is None for i in imgs):
        raise RuntimeError(f"{path}: expected {count} frames, read {len(imgs)}")
    return [np.asarray(i, np.uint8) for i in imgs]
