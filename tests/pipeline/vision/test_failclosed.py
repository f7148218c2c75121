"""Fail closed: a detector that raises, hangs or is skipped never releases the raw frame."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from pipeline.vision import (
    AnonymizeMode,
    Detections,
    FailClosedAnonymizer,
    Frame,
    ListSink,
    ObjectClass,
    OnFailure,
    RawFrameError,
    run,
)


class RaisingDetector:
    name = "raising"

    def __call__(self, frame: Frame) -> Detections:
        raise RuntimeError("model crashed")


class HangingDetector:
    name = "hanging"

    def __init__(self) -> None:
        self.release = threading.Event()

    def __call__(self, frame: Frame) -> Detections:
        self.release.wait(10)
        return Detections.empty()


class FakeDetector:
    """A single-image detector that looked for every class and found one face."""

    name = "fake"

    def __init__(self, vouched: dict[ObjectClass, int] | None = None) -> None:
        self.vouched = {c: 0 for c in ObjectClass} if vouched is None else vouched

    def __call__(self, frame: Frame) -> Detections:
        return Detections.from_lists([[0, 0, 4, 4]], [0.9], ObjectClass.FACE).vouch_ages(
            self.vouched)


def _assert_not_raw(out: Frame | None, raw: np.ndarray) -> None:
    assert out is not None and out.anonymized
    assert out.image.tobytes() != raw.tobytes()
    assert out.metadata["fail_closed"] is True


def test_raising_detector_gives_fully_anonymized_frame(messi: np.ndarray) -> None:
    fc = FailClosedAnonymizer(RaisingDetector(), policy=AnonymizeMode.BLUR)
    out = fc(Frame(messi, seq=7, timestamp=0.7))
    _assert_not_raw(out, messi)
    assert "model crashed" in out.metadata["fail_reason"]  # type: ignore[union-attr]
    assert fc.stats.errors == 1 and fc.stats.fail_closed == 1


def test_hanging_detector_times_out_and_hides(messi: np.ndarray) -> None:
    det = HangingDetector()
    fc = FailClosedAnonymizer(det, policy=AnonymizeMode.BLUR, timeout_s=0.2)
    t0 = time.perf_counter()
    out = fc(Frame(messi, seq=0, timestamp=0.0))
    assert time.perf_counter() - t0 < 2.0
    _assert_not_raw(out, messi)
    assert fc.stats.timeouts == 1
    det.release.set()


def test_drop_policy_releases_nothing(messi: np.ndarray) -> None:
    fc = FailClosedAnonymizer(RaisingDetector(), policy=AnonymizeMode.BLUR,
                              on_failure=OnFailure.DROP)
    assert fc(Frame(messi, seq=0, timestamp=0.0)) is None
    assert fc.stats.dropped == 1


def test_skipped_frame_is_hidden(messi: np.ndarray) -> None:
    fc = FailClosedAnonymizer(FakeDetector(), policy=AnonymizeMode.BLUR)
    _assert_not_raw(fc.skip(Frame(messi, seq=0, timestamp=0.0)), messi)
    assert fc.stats.skipped == 1


@pytest.mark.parametrize("mode", list(AnonymizeMode))
def test_normal_frames_are_marked(messi: np.ndarray, mode: AnonymizeMode) -> None:
    fc = FailClosedAnonymizer(FakeDetector(), policy=mode, failure_mode=mode)
    out = fc(Frame(messi, seq=0, timestamp=0.0))
    assert out is not None and out.anonymized and out.metadata["fail_closed"] is False
    assert out.metadata["detections"] == {"face": 1}


def test_run_counts_fail_closed_frames_and_sinks_refuse_raw(messi: np.ndarray) -> None:
    frames = [Frame(messi, seq=i, timestamp=i / 10) for i in range(3)]
    sink = ListSink()
    summary = run(frames, FailClosedAnonymizer(RaisingDetector(), policy=AnonymizeMode.BLUR),
                  sink, interval_s=1.0)
    assert summary.frames_in == 3 and summary.frames_out == 3
    assert summary.fail_closed_frames == 3
    assert all(f.image.tobytes() != messi.tobytes() for f in sink.frames)
    assert summary.intervals[0].fail_closed_frames == 3
    with pytest.raises(RawFrameError):
        sink.add(frames[0])


def test_gate_hides_a_frame_no_single_image_detector_vouched_for(messi: np.ndarray) -> None:
    """A motion-style verdict (boxes, but no vouch) never releases the frame as if it were ok."""
    fc = FailClosedAnonymizer(FakeDetector(vouched={}), policy=AnonymizeMode.BLUR)
    out = fc(Frame(messi, seq=3, timestamp=0.3))
    _assert_not_raw(out, messi)
    assert out is not None and out.metadata["fail_reason"].startswith("unvouched: no single-image")
    assert fc.stats.unvouched == 1 and fc.stats.fail_closed == 1


def test_gate_hides_a_frame_whose_vouch_is_too_old(messi: np.ndarray) -> None:
    from pipeline.vision import ReleaseGate

    gate = ReleaseGate.for_classes([ObjectClass.PERSON, ObjectClass.FACE], max_age=4)
    ok = FailClosedAnonymizer(FakeDetector({ObjectClass.PERSON: 4, ObjectClass.FACE: 0}),
                              policy=AnonymizeMode.SOLID, gate=gate)
    out = ok(Frame(messi, seq=0, timestamp=0.0))
    assert out is not None and out.metadata["fail_closed"] is False
    assert out.metadata["vouched"] == {"person": 4, "face": 0}
    stale = FailClosedAnonymizer(FakeDetector({ObjectClass.PERSON: 5, ObjectClass.FACE: 0}),
                                 policy=AnonymizeMode.SOLID, gate=gate, on_failure=OnFailure.DROP)
    assert stale(Frame(messi, seq=0, timestamp=0.0)) is None
    assert stale.stats.unvouched == 1 and stale.stats.dropped == 1


def test_default_gate_covers_every_class_of_the_policy(messi: np.ndarray) -> None:
    """Vouching for faces only does not release a frame whose policy also hides people."""
    from pipeline.vision import default_policy

    policy = default_policy(AnonymizeMode.BLUR, frozenset({ObjectClass.FACE, ObjectClass.PERSON}))
    fc = FailClosedAnonymizer(FakeDetector({ObjectClass.FACE: 0}), policy=policy)
    out = fc(Frame(messi, seq=0, timestamp=0.0))
    assert out is not None and "person" in out.metadata["fail_reason"]
    faces_only = default_policy(AnonymizeMode.BLUR, frozenset({ObjectClass.FACE}))
    fc = FailClosedAnonymizer(FakeDetector({ObjectClass.FACE: 0}), policy=faces_only)
    out = fc(Frame(messi, seq=0, timestamp=0.0))
    assert out is not None and out.metadata["fail_closed"] is False
