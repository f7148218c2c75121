"""Sanity checks of the hand-checked person/head annotation set of vtest.avi.

These do not prove the boxes are right (that was done by eye, see the file's description and
``scripts/annotation_sheets.py``); they catch the mistakes that creep in while editing by hand:
a wrong schema, swapped corners, boxes outside the frame, a head box that wandered away from its
person, the same person entered twice, or the set shrinking below what the scoring relies on.
"""

from __future__ import annotations

import json
from itertools import combinations

import pytest

from .conftest import DATA

PATH = DATA / "vtest_people.json"
W, H = 768, 576
HEAD_SLACK = 3  # px a head box may stick out of its person box (hair vs. a tight body box)


@pytest.fixture(scope="module")
def data() -> dict:
    return json.loads(PATH.read_text())


def _iou(a: list[int], b: list[int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def _is_box(v: object) -> bool:
    return isinstance(v, list) and len(v) == 4 and all(type(c) is int for c in v)


def test_schema(data: dict) -> None:
    assert set(data) == {"video", "size", "description", "frames"}
    assert data["video"] == "vtest.avi" and data["size"] == [W, H]
    assert isinstance(data["description"], str) and len(data["description"]) > 200
    assert isinstance(data["frames"], dict)
    for key, anns in data["frames"].items():
        assert key.isdigit() and str(int(key)) == key and 0 <= int(key) < 795, key
        assert isinstance(anns, list)
        for a in anns:
            assert set(a) == {"person", "head", "occluded", "truncated"}, (key, a)
            assert _is_box(a["person"]), (key, a)
            assert a["head"] is None or _is_box(a["head"]), (key, a)
            assert type(a["occluded"]) is bool and type(a["truncated"]) is bool, (key, a)


def test_size_and_spread(data: dict) -> None:
    frames = {int(k): v for k, v in data["frames"].items()}
    boxes = sum(len(v) for v in frames.values())
    assert boxes >= 150, boxes
    assert len(frames) >= 30, len(frames)
    assert {0, 1, 2, 5, 10} <= set(frames)
    # spread over the whole video: no gap between annotated frames longer than 3 s
    idx = sorted(frames)
    assert idx[-1] >= 780 and max(b - a for a, b in zip(idx, idx[1:], strict=False)) <= 30
    # almost every person has a head box (heads hidden behind the sign are the exception)
    heads = sum(a["head"] is not None for v in frames.values() for a in v)
    assert heads >= 0.9 * boxes


def test_boxes_inside_image_with_positive_area(data: dict) -> None:
    for key, anns in data["frames"].items():
        for a in anns:
            for box in (a["person"], a["head"]):
                if box is None:
                    continue
                x1, y1, x2, y2 = box
                assert 0 <= x1 < x2 <= W and 0 <= y1 < y2 <= H, (key, box)


def test_plausible_sizes(data: dict) -> None:
    # pedestrians in vtest are ~25 px (the far path at the top) to ~150 px tall, heads ~5-30 px;
    # anything outside that is a typo
    for key, anns in data["frames"].items():
        for a in anns:
            x1, y1, x2, y2 = a["person"]
            if not a["truncated"] and not a["occluded"]:
                assert 20 <= y2 - y1 <= 200 and 8 <= x2 - x1 <= 120, (key, a)
            if a["head"] is not None:
                hx1, hy1, hx2, hy2 = a["head"]
                assert 3 <= hx2 - hx1 <= 30 and 3 <= hy2 - hy1 <= 30, (key, a)


def test_head_inside_its_person(data: dict) -> None:
    s = HEAD_SLACK
    for key, anns in data["frames"].items():
        for a in anns:
            if a["head"] is None:
                continue
            px1, py1, px2, py2 = a["person"]
            hx1, hy1, hx2, hy2 = a["head"]
            assert hx1 >= px1 - s and hy1 >= py1 - s and hx2 <= px2 + s and hy2 <= py2 + s, (key, a)
            # the head is at the top of the body unless the body is cut at the top
            assert hy1 - py1 <= 0.35 * (py2 - py1), (key, a)


def test_flags_consistent(data: dict) -> None:
    for key, anns in data["frames"].items():
        for a in anns:
            x1, y1, x2, y2 = a["person"]
            if a["truncated"]:  # cut by the frame edge: must touch an edge
                assert x1 <= 2 or y1 <= 2 or x2 >= W - 2 or y2 >= H - 2, (key, a)
            if a["head"] is None:  # a missing head must be explained
                assert a["occluded"] or a["truncated"], (key, a)


def test_no_duplicates(data: dict) -> None:
    for key, anns in data["frames"].items():
        for a, b in combinations(anns, 2):
            assert _iou(a["person"], b["person"]) <= 0.9, (key, a, b)
            if a["head"] is not None and b["head"] is not None:
                assert _iou(a["head"], b["head"]) <= 0.5, (key, a, b)


def test_a_second_annotator_finds_the_same_people(data: dict) -> None:
    """Two people annotating the same 24 frames independently agree: how precise the ground
    truth is (and a check that the primary set is not missing anyone the second one saw)."""
    second = json.loads((DATA / "vtest_people_second.json").read_text())
    assert len(second["frames"]) == 24
    person_iou, head_dist, unmatched = [], [], []
    for k, people in second["frames"].items():
        primary = data["frames"][k]
        for p in people:
            best = max(primary, key=lambda q: _iou(p["person"], q["person"]))
            iou = _iou(p["person"], best["person"])
            person_iou.append(iou)
            if iou < 0.3:
                unmatched.append((k, p["person"]))
            elif p["head"] and best["head"]:
                ca = [(p["head"][0] + p["head"][2]) / 2, (p["head"][1] + p["head"][3]) / 2]
                cb = [(best["head"][0] + best["head"][2]) / 2, (best["head"][1] + best["head"][3]) / 2]
                head_dist.append(max(abs(ca[0] - cb[0]), abs(ca[1] - cb[1])))
    person_iou.sort()
    head_dist.sort()
    assert len(unmatched) <= 2, unmatched  # slivers at the frame edge
    assert person_iou[len(person_iou) // 2] >= 0.85
    assert head_dist[int(0.9 * len(head_dist))] <= 4.0, head_dist[-10:]
