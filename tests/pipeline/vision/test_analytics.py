"""Per-frame counts rolled up per interval."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pipeline.vision import CountRollup, Detections, FrameCounts, ObjectClass, frame_counts


def test_frame_counts_by_class() -> None:
    d = Detections.from_lists([[0, 0, 1, 1]] * 3, [1, 1, 1],
                              [ObjectClass.PERSON, ObjectClass.PERSON, ObjectClass.TEXT])
    c = frame_counts(0, 0.0, d)
    assert c.counts["person"] == 2 and c.counts["text"] == 1 and c.counts["face"] == 0
    assert frame_counts(1, 0.1, None).fail_closed


def test_rollup_intervals() -> None:
    r = CountRollup(seconds=1.0)
    rows = [FrameCounts(i, i * 0.25, {"person": i}) for i in range(8)]
    closed = r.extend(rows)
    assert [iv.start for iv in closed] == [0.0]
    ivs = r.close()
    assert [iv.frames for iv in ivs] == [4, 4]
    assert ivs[0].mean["person"] == 1.5 and ivs[1].max["person"] == 7


@given(st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=50))
def test_rollup_keeps_every_frame(ts: list[float]) -> None:
    r = CountRollup(seconds=7.0)
    for i, t in enumerate(sorted(ts)):
        list(r.add(FrameCounts(i, t, {"person": 1})))
    ivs = r.close()
    assert sum(iv.frames for iv in ivs) == len(ts)
    assert all(a.start < b.start for a, b in zip(ivs, ivs[1:], strict=False))
