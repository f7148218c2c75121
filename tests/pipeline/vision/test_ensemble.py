"""Ensemble scheduling: every-k parts carry boxes forward; background errors fail closed."""

from __future__ import annotations

import numpy as np

from pipeline.vision import (
    AnonymizeMode,
    Background,
    Detections,
    EnsembleDetector,
    Every,
    FailClosedAnonymizer,
    Frame,
    ObjectClass,
)


class CountingDetector:
    name = "counting"

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, frame: Frame) -> Detections:
        self.calls += 1
        return Detections.from_lists([[10, 10, 20, 20]], [1.0], ObjectClass.FACE)


class FailsLater:
    name = "fails-later"

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, frame: Frame) -> Detections:
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("gpu lost")
        return Detections.empty().vouch(ObjectClass)


def _frames(n: int) -> list[Frame]:
    img = np.full((40, 40, 3), 128, np.uint8)
    return [Frame(img, seq=i, timestamp=i / 10) for i in range(n)]


def test_every_k_carries_boxes_forward_and_grows_them() -> None:
    det = CountingDetector()
    ens = EnsembleDetector([Every(det, k=4, offset=0, grow_per_frame=0.1)])
    outs = [ens(f) for f in _frames(8)]
    assert det.calls == 2 and all(len(o) == 1 for o in outs)
    w0 = outs[0].boxes[0, 2] - outs[0].boxes[0, 0]
    w3 = outs[3].boxes[0, 2] - outs[3].boxes[0, 0]
    assert w3 > w0


def test_background_error_fails_the_frame_closed() -> None:
    det = FailsLater()
    bg = Background(det)
    fc = FailClosedAnonymizer(EnsembleDetector([bg]), policy=AnonymizeMode.BLUR)
    outs = []
    for f in _frames(6):
        outs.append(fc(f))
        # the run this frame started is over (it set the idle event), so the next frame sees it
        assert bg._idle.wait(timeout=10), "the background run did not finish"
    assert det.calls >= 2
    assert fc.stats.errors >= 1
    failed = [o for o in outs if o is not None and o.metadata["fail_closed"]]
    assert failed and all("gpu lost" in o.metadata["fail_reason"] for o in failed)
