"""NanoDet, the appearance person detector, on real vtest.avi frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.vision import ModelLoadError, ObjectClass
from pipeline.vision.detectors.nanodet import NanoDetPersonDetector
from pipeline.vision.detectors.people import _iou


@pytest.fixture(scope="module")
def nanodet() -> NanoDetPersonDetector:
    return NanoDetPersonDetector()


def test_finds_walking_and_standing_people_on_a_single_frame(nanodet, vtest_frames) -> None:
    d = nanodet.detect_image(vtest_frames[0])
    person = d.select([ObjectClass.PERSON])
    heads = d.select([ObjectClass.HEAD])
    assert len(person) >= 3 and len(heads) == len(person)  # frame 0: 3 people, two walking
    assert d.vouched == {ObjectClass.PERSON: 0, ObjectClass.HEAD: 0, ObjectClass.FACE: 0}
    h, w = vtest_frames[0].shape[:2]
    assert (person.boxes[:, 0::2] >= 0).all() and (person.boxes[:, 0::2] <= w).all()
    assert (person.boxes[:, 1::2] >= 0).all() and (person.boxes[:, 1::2] <= h).all()
    # each head box sits at the top of its person box, within its top third
    tall = person.boxes[:, 3] - person.boxes[:, 1]
    assert np.allclose(heads.boxes[:, 1], person.boxes[:, 1])
    assert (heads.boxes[:, 3] - heads.boxes[:, 1] <= tall / 3 + 1).all()


def test_boxes_are_grown_upward_over_the_head(nanodet, vtest_frames) -> None:
    raw, _ = nanodet.raw_people(vtest_frames[0])
    grown = nanodet.detect_image(vtest_frames[0]).select([ObjectClass.PERSON]).boxes
    assert len(raw) == len(grown) >= 3
    for b in raw:  # the same person: same bottom and centre; 15 % of its height added on top
        g = grown[np.argmin(np.abs(grown[:, 3] - b[3]) + np.abs(grown[:, 0] + grown[:, 2]
                                                                 - b[0] - b[2]))]
        assert g[3] == pytest.approx(b[3], abs=0.5)
        assert g[1] == pytest.approx(max(0.0, b[1] - 0.15 * (b[3] - b[1])), abs=0.5)


def test_an_empty_scene_gives_empty_fixed_shape_results(nanodet) -> None:
    d = nanodet.detect_image(np.full((576, 768, 3), 128, np.uint8))
    assert len(d) == 0 and d.boxes.shape == (0, 4)
    assert d.vouched[ObjectClass.PERSON] == 0  # it looked: an empty scene is vouched for


def test_int8_finds_the_same_people(nanodet, vtest_frames) -> None:
    q = NanoDetPersonDetector(int8=True)
    found = total = 0
    for img in vtest_frames[::20]:
        a, _ = nanodet.raw_people(img)
        b, _ = q.raw_people(img)
        total += len(a)
        if len(a) and len(b):
            found += int((_iou(a, b).max(axis=1) > 0.5).sum())
    assert total >= 20 and found / total >= 0.9, (found, total)


def test_bad_model_and_provider_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="file not found"):
        NanoDetPersonDetector(model_path=tmp_path / "none.onnx")
    with pytest.raises(ValueError, match="valid providers"):
        NanoDetPersonDetector(providers=["NoSuchExecutionProvider"])
    with pytest.raises(ValueError, match="score_threshold"):
        NanoDetPersonDetector(score_threshold=1.5)
