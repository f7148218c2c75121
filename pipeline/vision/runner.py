"""Run a source through detection, fail-closed anonymization and a sink; summarize the run.

:func:`run` overlaps decoding, detection and hiding+encoding in three threads (OpenCV and ONNX
Runtime release the GIL) connected by small blocking queues, so nothing is dropped for files and
order is kept: frame ``i`` out is frame ``i`` in. The detecting thread decides each frame
(:meth:`~pipeline.vision.failclosed.FailClosedAnonymizer.decide`); the writing thread hides it
(:meth:`~pipeline.vision.failclosed.FailClosedAnonymizer.release`) and hands it to the sink.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.vision.analytics import CountRollup, FrameCounts, IntervalCounts
from pipeline.vision.detectors.base import Detector, ObjectClass
from pipeline.vision.detectors.centerface import CenterFaceDetector
from pipeline.vision.detectors.ensemble import Background, EnsembleDetector, Every
from pipeline.vision.detectors.people import MotionPeopleDetector
from pipeline.vision.detectors.text import TextDetector
from pipeline.vision.exceptions import SourceError
from pipeline.vision.failclosed import Decision, FailClosedAnonymizer, OnFailure
from pipeline.vision.frames import Frame
from pipeline.vision.gate import DEFAULT_MAX_AGE, TEXT_MAX_AGE
from pipeline.vision.sinks import FrameSink

__all__ = ["RunSummary", "run", "default_detector"]

log = logging.getLogger(__name__)

_END = object()


def default_detector(classes: Iterable[ObjectClass] | None = None, *,
                     providers: Sequence[str] | None = ("CPUExecutionProvider",),
                     threads: int | None = None, face_every: int = 30,
                     text_every: int = 10, still_image: bool = False,
                     background: bool = True, key_every: int = DEFAULT_MAX_AGE,
                     text_max_age: int = TEXT_MAX_AGE, motion: bool = True,
                     int8: bool | None = None, motion_hold: int = 8,
                     motion_every: int = 1) -> EnsembleDetector:
    """The detector EdgeVeil uses for ``classes`` (all by default).

    PERSON/HEAD: on streams, :class:`~pipeline.vision.detectors.tracking.PeopleTracker` --
    NanoDet on the first frame and every ``key_every`` frames (earlier when motion shows
    something unexplained), its people tracked in between, plus the MOG2 motion detector on
    every frame (``motion=False`` leaves it out); on still images, NanoDet on every image, on the
    whole image and on 3x3 overlapping tiles (small people: 300 of 306 annotated vtest heads
    hidden as single photos vs 296 without tiles, at ~0.25 s a 768x576 image).
    FACE: CenterFace at half resolution, in a background thread on the newest frame whenever it
    is idle (``background=True``), else every ``face_every`` frames; when no person classes are
    asked for, CenterFace alone vouches for faces, so it never runs more than ``key_every``
    frames behind. TEXT: PP-OCR det likewise (background, never more than ``text_max_age`` frames
    behind, else every ``text_every`` frames). For ``still_image`` every detector runs on every
    image at full resolution. ``int8`` picks the int8 NanoDet (:mod:`pipeline.vision.quantize`;
    it found the same people in ``bench/privacy.py`` at ~2x the speed); ``None`` uses it on
    streams and the float model on still images. The motion model updates on every
    ``motion_every``-th frame (its tracks coast in between) and holds a track ``motion_hold``
    frames after its blob vanishes: appearance tracks keep people who stop; motion is for movers
    between key frames and for raising doubt.
    NanoDet runs with one intra-op thread on streams unless ``threads`` says otherwise (decoding,
    motion and encoding keep the other core busy). Pair it with :func:`~pipeline.vision.gate.default_gate` for the
    same ``classes`` (what :class:`~pipeline.vision.failclosed.FailClosedAnonymizer` does by default).

    Examples
    --------
    >>> det = default_detector([ObjectClass.PERSON, ObjectClass.HEAD])
    >>> det.name
    'ensemble(people(nanodet+motion-people))'
    """
    from pipeline.vision.detectors.nanodet import NanoDetPersonDetector
    from pipeline.vision.detectors.tracking import PeopleTracker

    cls = frozenset(ObjectClass) if classes is None else frozenset(classes)
    parts: list[Detector | Every | Background] = []
    people = bool(cls & {ObjectClass.PERSON, ObjectClass.HEAD})
    if people:
        nano = NanoDetPersonDetector(providers=providers, tiles=3 if still_image else 1,
                                     int8=(not still_image) if int8 is None else int8,
                                     threads=threads if threads is not None or still_image else 1)
        if still_image:
            parts.append(nano)
        else:
            moving = MotionPeopleDetector(hold_frames=motion_hold) if motion else None
            parts.append(PeopleTracker(nano, motion=moving, key_every=key_every,
                                       motion_every=motion_every))
    if ObjectClass.FACE in cls:
        face = CenterFaceDetector(providers=providers,
                                  threads=threads if threads is not None or still_image else 1,
                                  input_size=None if still_image else (384, 288))
        if still_image:
            parts.append(face)
        elif background:
            parts.append(Background(face, min_every=face_every,
                                    max_age=None if people else key_every))
        else:
            k = face_every if people else min(face_every, key_every)
            parts.append(Every(face, k=k, offset=min(1, k - 1)))
    if ObjectClass.TEXT in cls:
        text = TextDetector(providers=providers,
                            threads=threads if threads is not None or still_image else 1)
        if still_image:
            parts.append(text)
        elif background:
            parts.append(Background(text, min_every=text_every, max_age=text_max_age))
        else:
            k = min(text_every, text_max_age)
            parts.append(Every(text, k=k, offset=min(3, k - 1)))
    if not parts:
        raise ValueError(f"no detector for classes {sorted(c.name for c in cls)}")
    return EnsembleDetector(parts)


@dataclass
class RunSummary:
    """What a run did (printed as JSON by the CLI)."""

    input: str
    output: str
    frames_in: int = 0
    frames_out: int = 0
    detections: dict[str, int] = field(default_factory=dict)
    fail_closed_frames: int = 0
    unvouched_frames: int = 0
    dropped_frames: int = 0
    seconds: float = 0.0
    fps: float = 0.0
    error: str | None = None
    intervals: list[IntervalCounts] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def _pump(it: Iterable[Any], q: queue.Queue[Any], stop: threading.Event) -> None:
    try:
        for item in it:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.2)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                return
        q.put(_END)
    except BaseException as exc:  # re-raised in the consumer
        q.put(exc)


def run(source: Iterable[Frame], processor: FailClosedAnonymizer, sink: FrameSink, *,
        input_name: str = "", output_name: str = "", interval_s: float = 60.0,
        on_frame: Callable[[Frame | None], None] | None = None,
        threaded: bool = True) -> RunSummary:
    """Anonymize every frame of ``source`` into ``sink``.

    The sink is always flushed, also when the source fails midway: frames already processed are
    kept, and the error is recorded in the summary and re-raised.

    Parameters
    ----------
    source
        Frames in order (a :class:`~pipeline.vision.sources.FrameSource`).
    processor
        Detector + policy, failing closed.
    sink
        Receives the anonymized frames.
    interval_s
        Length of the analytics intervals.
    on_frame
        Called with each released frame (``None`` if dropped) once the sink has it, e.g. to
        advance a progress bar; from the writing thread when ``threaded``.
    threaded
        Decode, and hide + encode, in helper threads.

    Raises
    ------
    SourceError
        The source failed; ``summary`` is attached as ``exc.summary``.
    """
    summary = RunSummary(input=input_name, output=output_name)
    rollup = CountRollup(seconds=interval_s)
    det_counts: Counter[str] = Counter()
    stop = threading.Event()
    t0 = time.perf_counter()
    out_q: queue.Queue[Any] = queue.Queue(maxsize=8)
    writer_error: list[BaseException] = []

    def _emit(decision: Decision) -> None:
        out = processor.release(decision)  # hide (pure), then encode
        if out is not None:
            sink.add(out)
        if on_frame is not None:
            on_frame(out)

    def _write() -> None:
        while True:
            item = out_q.get()
            if item is _END:
                return
            if writer_error:
                continue  # keep draining so the detecting thread never blocks on a full queue
            try:
                _emit(item)
            except BaseException as exc:  # surfaced after the loop
                writer_error.append(exc)
                stop.set()

    if threaded:
        in_q: queue.Queue[Any] = queue.Queue(maxsize=8)
        reader = threading.Thread(target=_pump, args=(source, in_q, stop), daemon=True,
                                  name="decode")
        reader.start()
        writer = threading.Thread(target=_write, daemon=True, name="encode")
        writer.start()

        def frames() -> Iterable[Frame]:
            while True:
                item = in_q.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        it: Iterable[Frame] = frames()
    else:
        it = source
    try:
        for frame in it:
            if stop.is_set():
                break
            summary.frames_in += 1
            decision = processor.decide(frame)
            if threaded:
                out_q.put(decision)
            else:
                _emit(decision)
            if not (decision.failed and processor.on_failure is OnFailure.DROP):
                summary.frames_out += 1
            counts = decision.counts()
            det_counts.update(counts)
            base = {c.name.lower(): 0 for c in ObjectClass}
            base.update(counts)
            for _ in rollup.add(FrameCounts(frame.seq, frame.timestamp, base, decision.failed)):
                pass
    except SourceError as exc:
        summary.error = str(exc)
        exc.summary = summary  # type: ignore[attr-defined]
        raise
    finally:
        stop.set()
        if threaded:
            out_q.put(_END)
            writer.join()
        sink.flush()
        summary.detections = dict(det_counts)
        summary.fail_closed_frames = processor.stats.fail_closed
        summary.unvouched_frames = processor.stats.unvouched
        summary.dropped_frames = int(getattr(source, "dropped", 0))
        summary.seconds = round(time.perf_counter() - t0, 3)
        summary.fps = round(summary.frames_in / summary.seconds, 2) if summary.seconds else 0.0
        summary.intervals = rollup.close()
    if writer_error:
        raise writer_error[0]
    return summary
