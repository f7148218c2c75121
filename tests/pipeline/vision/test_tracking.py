"""PeopleTracker schedules appearance passes, tracks people between them, and vouches honestly.

Fakes stand in for NanoDet and the motion model here; the real models run in
test_privacy_stress.py and test_detectors_nanodet.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.vision import Background, Detections, EnsembleDetector, Frame, ObjectClass
from pipeline.vision.detectors.nanodet import VOUCHES
from pipeline.vision.detectors.tracking import PeopleTracker


class FakeAppearance:
    """Sees the people it is told about, on every call; counts calls."""

    name = "fake-appearance"

    def __init__(self, boxes_by_frame: dict[int, list[list[float]]] | None = None) -> None:
        self.boxes_by_frame = boxes_by_frame or {}
        self.calls: list[int] = []

    def __call__(self, frame: Frame) -> Detections:
        self.calls.append(frame.seq)
        boxes = self.boxes_by_frame.get(frame.seq, self.boxes_by_frame.get(-1, []))
        return Detections.from_lists(np.asarray(boxes, np.float32).reshape(-1, 4),
                                     [0.9] * len(boxes), ObjectClass.PERSON).vouch(VOUCHES)


class FakeMotion:
    """A motion model whose blobs are given per frame (no boxes reported, only blobs)."""

    name = "fake-motion"

    def __init__(self, blobs_by_frame: dict[int, list[list[float]]]) -> None:
        self.blobs_by_frame = blobs_by_frame
        self.last_blobs = np.zeros((0, 4), np.float32)
        self.resets = 0

    def __call__(self, frame: Frame) -> Detections:
        self.last_blobs = np.asarray(self.blobs_by_frame.get(frame.seq, []),
                                     np.float32).reshape(-1, 4)
        return Detections.empty()

    def reset(self) -> None:
        self.resets += 1


def _frames(n: int, fps: float = 10.0, start: int = 0) -> list[Frame]:
    img = np.zeros((240, 320, 3), np.uint8)
    return [Frame(img, seq=i, timestamp=i / fps) for i in range(start, start + n)]


def test_key_frames_on_schedule_and_vouch_ages() -> None:
    app = FakeAppearance({-1: [[10, 10, 40, 100]]})
    tr = PeopleTracker(app, key_every=4)
    ages = [tr(f).vouched[ObjectClass.PERSON] for f in _frames(9)]
    assert app.calls == [0, 4, 8]
    assert ages == [0, 1, 2, 3, 0, 1, 2, 3, 0]


def test_a_walker_is_tracked_between_key_frames() -> None:
    """Seen at x=10 on frame 0 and x=30 on frame 4: on frame 6 the box has moved on (~x=40)."""
    app = FakeAppearance({0: [[10, 10, 40, 100]], 4: [[30, 10, 60, 100]]})
    tr = PeopleTracker(app, key_every=4, grow_per_frame=0.0)
    out = [tr(f) for f in _frames(7)]
    person = out[6].select([ObjectClass.PERSON]).boxes
    assert len(person) == 1
    np.testing.assert_allclose(person[0], [40, 10, 70, 100], atol=1e-4)
    heads = out[6].select([ObjectClass.HEAD]).boxes
    assert len(heads) == 1 and heads[0, 1] == person[0, 1]  # the head box is the top


def test_a_person_missed_once_stays_hidden_for_hold_keys() -> None:
    app = FakeAppearance({0: [[10, 10, 40, 100]], 2: [], 4: [], 6: []})
    tr = PeopleTracker(app, key_every=2, hold_keys=2)
    counts = [len(tr(f).select([ObjectClass.PERSON])) for f in _frames(8)]
    # seen on 0; missed on 2 and 4 (held, grown); dropped on the third miss (frame 6)
    assert counts == [1, 1, 1, 1, 1, 1, 0, 0]


def test_unexplained_motion_triggers_an_early_pass() -> None:
    app = FakeAppearance({-1: []})
    walker = [[200, 50, 240, 150]]
    motion = FakeMotion({2: walker, 3: walker, 4: walker})  # someone walks in on frame 2
    tr = PeopleTracker(app, motion=motion, key_every=10, unsure_min_gap=2)  # type: ignore[arg-type]
    for f in _frames(6):
        tr(f)
    assert app.calls == [0, 3]  # doubt from two frames in a row
    assert tr.stats.unsure_key_frames == 1


def test_a_one_frame_flicker_raises_no_doubt() -> None:
    app = FakeAppearance({-1: []})
    motion = FakeMotion({2: [[200, 50, 240, 150]], 4: [[20, 50, 60, 150]]})
    tr = PeopleTracker(app, motion=motion, key_every=10)  # type: ignore[arg-type]
    for f in _frames(6):
        tr(f)
    assert app.calls == [0]


def test_motion_a_track_explains_raises_no_doubt() -> None:
    app = FakeAppearance({-1: [[195, 45, 245, 155]]})
    motion = FakeMotion({2: [[200, 50, 240, 150]], 3: [[202, 50, 242, 150]]})
    tr = PeopleTracker(app, motion=motion, key_every=10)  # type: ignore[arg-type]
    for f in _frames(5):
        tr(f)
    assert app.calls == [0]


def test_a_gap_in_time_forces_a_key_frame_and_going_back_resets() -> None:
    app = FakeAppearance({-1: [[10, 10, 40, 100]]})
    motion = FakeMotion({})
    tr = PeopleTracker(app, motion=motion, key_every=50, max_gap_s=1.0)  # type: ignore[arg-type]
    frames = _frames(3) + _frames(2, start=30)  # 0, 1, 2 then 30, 31 (2.8 s later)
    for f in frames:
        tr(f)
    assert app.calls == [0, 30]
    out = tr(Frame(frames[0].image, seq=0, timestamp=0.0))  # a new stream (file looped)
    assert app.calls[-1] == 0 and motion.resets == 1
    assert out.vouched[ObjectClass.PERSON] == 0


def test_low_frame_rate_means_every_frame_is_a_key_frame() -> None:
    app = FakeAppearance({-1: []})
    tr = PeopleTracker(app, key_every=5, max_gap_s=1.0)
    for f in _frames(4, fps=0.5):  # one frame every 2 s
        tr(f)
    assert app.calls == [0, 1, 2, 3]


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="key_every"):
        PeopleTracker(FakeAppearance(), key_every=0)


class SlowVoucher:
    name = "slow"

    def __init__(self) -> None:
        import threading

        self.calls: list[int] = []
        self.gate = threading.Event()

    def __call__(self, frame: Frame) -> Detections:
        if frame.seq > 0:
            self.gate.wait(5)
        self.calls.append(frame.seq)
        return Detections.empty().vouch([ObjectClass.TEXT])


def test_background_never_serves_results_older_than_max_age() -> None:
    """A slow background detector: frames wait (or run it inline) rather than exceed max_age."""
    import threading

    det = SlowVoucher()
    ens = EnsembleDetector([Background(det, min_every=1, max_age=3)])
    frames = _frames(10)
    ages = []
    threading.Timer(0.3, det.gate.set).start()  # the first background run is slow
    for f in frames:
        ages.append(ens(f).vouched[ObjectClass.TEXT])
    assert max(ages) <= 3, ages
    assert ens.background[0].waits >= 1
