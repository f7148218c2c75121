"""Fail closed: a frame whose detection failed, timed out or was skipped is never released raw.

:class:`FailClosedAnonymizer` runs the detector (in a watchdog worker thread when a timeout is
set), checks the release gate (:class:`~pipeline.vision.gate.ReleaseGate`: a single-image
detector must have looked at the frame recently), and returns either the anonymized frame, a
fully hidden frame, or ``None`` (when configured to drop) -- never the input pixels. The outcome
is written to the frame's metadata: ``fail_closed`` (bool), ``fail_reason`` (str) and, for a
released frame, ``vouched`` (class -> frames since a single-image detector looked).
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

from pipeline.vision.anonymize import AnonymizeMode, Policy, anonymize, anonymize_full
from pipeline.vision.detectors.base import Detections, Detector
from pipeline.vision.exceptions import DetectorError, DetectorTimeoutError
from pipeline.vision.frames import Frame
from pipeline.vision.gate import ReleaseGate, default_gate

__all__ = ["OnFailure", "FailClosedAnonymizer", "FailClosedStats", "Decision"]

log = logging.getLogger(__name__)


class OnFailure(Enum):
    """What to release for a frame whose detection failed."""

    HIDE = "hide"  # the whole frame anonymized
    DROP = "drop"  # no frame at all


@dataclass
class FailClosedStats:
    """Counters of one :class:`FailClosedAnonymizer`."""

    frames: int = 0
    fail_closed: int = 0
    dropped: int = 0
    errors: int = 0
    timeouts: int = 0
    skipped: int = 0
    unvouched: int = 0


class _Worker:
    """A daemon thread that runs detector calls; abandoned (not joined) if a call hangs."""

    def __init__(self, detector: Detector) -> None:
        self._detector = detector
        self._jobs: queue.Queue[Frame] = queue.Queue(maxsize=1)
        self._results: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=1)
        self._thread = threading.Thread(target=self._run, name=f"detector-{detector.name}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            frame = self._jobs.get()
            try:
                self._results.put((True, self._detector(frame)))
            except BaseException as exc:  # handed to the caller, which fails closed
                self._results.put((False, exc))

    def call(self, frame: Frame, timeout_s: float) -> Detections:
        self._jobs.put(frame)
        try:
            ok, value = self._results.get(timeout=timeout_s)
        except queue.Empty:
            raise DetectorTimeoutError(self._detector.name, frame.seq, timeout_s) from None
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]


class FailClosedAnonymizer:
    """Detect + anonymize one frame at a time, failing closed.

    Parameters
    ----------
    detector
        Any :class:`~pipeline.vision.detectors.base.Detector`.
    policy
        Per-class policy (or one mode for every class) for normal frames.
    timeout_s
        Seconds a detector call may take; ``None`` runs it inline without a watchdog. After a
        timeout the hung call is abandoned to its daemon thread and a fresh worker is started.
    on_failure
        :attr:`OnFailure.HIDE` (release the whole frame hidden) or :attr:`OnFailure.DROP`.
    failure_mode
        How a failed frame is hidden.
    gate
        The release gate; by default every class of ``policy`` must have been vouched for by a
        single-image detector recently enough (:func:`~pipeline.vision.gate.default_gate`).
        ``None`` switches the gate off (tests of other parts only: a motion-only detector then
        releases frames on its own verdict).

    Examples
    --------
    >>> import numpy as np
    >>> class Broken:  # a detector that always fails
    ...     name = "broken"
    ...     def __call__(self, frame):
    ...         raise RuntimeError("boom")
    >>> fc = FailClosedAnonymizer(Broken(), policy=AnonymizeMode.BLUR)
    >>> out = fc(Frame(np.zeros((8, 8, 3), np.uint8), seq=0, timestamp=0.0))
    >>> out.metadata["fail_closed"], fc.stats.fail_closed
    (True, 1)
    """

    def __init__(self, detector: Detector, *, policy: Policy | AnonymizeMode,
                 timeout_s: float | None = None, on_failure: OnFailure = OnFailure.HIDE,
                 failure_mode: AnonymizeMode = AnonymizeMode.PIXELATE,
                 gate: ReleaseGate | None | Literal["default"] = "default") -> None:
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0 or None, got {timeout_s}")
        self.detector = detector
        self.policy = policy
        if gate == "default":
            gate = default_gate(None if isinstance(policy, AnonymizeMode) else policy.keys())
        self.gate: ReleaseGate | None = gate
        self.timeout_s = timeout_s
        self.on_failure = on_failure
        self.failure_mode = failure_mode
        self.stats = FailClosedStats()
        self._worker: _Worker | None = _Worker(detector) if timeout_s is not None else None

    def _detect(self, frame: Frame) -> Detections:
        if self._worker is None:
            return self.detector(frame)
        assert self.timeout_s is not None
        try:
            return self._worker.call(frame, self.timeout_s)
        except DetectorTimeoutError:
            self._worker = _Worker(self.detector)  # the old one may hang forever
            raise

    def fail(self, frame: Frame, reason: str) -> Frame | None:
        """The fail-closed output for ``frame`` (hidden frame or ``None``), counted."""
        return self.release(self._failed(frame, reason))

    def _failed(self, frame: Frame, reason: str) -> Decision:
        self.stats.fail_closed += 1
        log.warning("frame %d fails closed: %s", frame.seq, reason)
        if self.on_failure is OnFailure.DROP:
            self.stats.dropped += 1
        return Decision(frame, None, reason)

    def skip(self, frame: Frame, reason: str = "skipped") -> Frame | None:
        """Release a frame that was not sent through detection (counted as skipped)."""
        self.stats.frames += 1
        self.stats.skipped += 1
        return self.fail(frame, reason)

    def decide(self, frame: Frame) -> Decision:
        """Detect and check the gate: what :meth:`release` will make of ``frame``.

        Split from :meth:`release` so that a pipeline can hide and encode frame ``i`` in one
        thread while it detects in frame ``i + 1`` in another. A :class:`Decision` holds the raw
        frame: it never leaves the process; only :meth:`release`'s output may.
        """
        self.stats.frames += 1
        try:
            dets = self._detect(frame)
            if not isinstance(dets, Detections):
                raise DetectorError(self.detector.name, frame.seq,
                                    f"returned {type(dets).__name__}, not Detections")
            if self.gate is not None:
                reason = self.gate.check(dets)
                if reason is not None:
                    self.stats.unvouched += 1
                    return self._failed(frame, f"unvouched: {reason}")
            return Decision(frame, dets, None)
        except DetectorTimeoutError as exc:
            self.stats.timeouts += 1
            return self._failed(frame, str(exc))
        except Exception as exc:  # any detector error fails closed
            self.stats.errors += 1
            return self._failed(frame, f"{type(exc).__name__}: {exc}")

    def release(self, decision: Decision) -> Frame | None:
        """The frame that may leave: anonymized, fully hidden, or ``None`` (dropped)."""
        frame = decision.frame
        if decision.detections is not None:
            try:
                return _mark_ok(anonymize(frame, decision.detections, self.policy),
                                decision.detections)
            except Exception as exc:  # an anonymizer error fails closed too
                self.stats.errors += 1
                decision = self._failed(frame, f"{type(exc).__name__}: {exc}")
        if self.on_failure is OnFailure.DROP:
            return None
        return anonymize_full(frame, self.failure_mode, fail_closed=True,
                              fail_reason=decision.reason)

    def __call__(self, frame: Frame) -> Frame | None:
        """Anonymized ``frame``, or its fail-closed replacement."""
        return self.release(self.decide(frame))


@dataclass(frozen=True, eq=False)
class Decision:
    """The outcome of :meth:`FailClosedAnonymizer.decide` for one frame.

    ``detections`` is ``None`` when the frame fails closed (``reason`` says why). ``frame`` is
    the raw input: a decision stays inside the process.
    """

    frame: Frame
    detections: Detections | None
    reason: str | None

    @property
    def failed(self) -> bool:
        """True when the frame fails closed."""
        return self.detections is None

    def counts(self) -> dict[str, int]:
        """Boxes per class name (empty for a failed frame)."""
        return {} if self.detections is None else self.detections.count_by_class()


def _mark_ok(frame: Frame, dets: Detections) -> Frame:
    return frame.with_image(frame.image, anonymized=True, fail_closed=False,
                            vouched={c.name.lower(): a for c, a in dets.vouched.items()})
