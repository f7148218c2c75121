"""Anonymizer on real media: detail is gone where hidden, untouched elsewhere, input unchanged."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.vision import (
    AnonymizeMode,
    CenterFaceDetector,
    ClassPolicy,
    Detections,
    Frame,
    ObjectClass,
    Shape,
    anonymize,
    anonymize_full,
    default_detector,
    default_policy,
    parse_classes,
)
from pipeline.vision.evaluation import (
    changed_mask,
)

from .conftest import DATA


def _detail(img: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())


@pytest.mark.parametrize("mode", list(AnonymizeMode))
def test_messi_face_loses_detail(messi: np.ndarray, mode: AnonymizeMode) -> None:
    frame = Frame(messi, seq=0, timestamp=0.0)
    before = messi.copy()
    d = CenterFaceDetector()(frame)
    out = anonymize(frame, d, mode)
    x1, y1, x2, y2 = d.boxes[int(np.argmax(d.scores))].astype(int)
    face_in, face_out = messi[y1:y2, x1:x2], out.image[y1:y2, x1:x2]
    if mode is AnonymizeMode.PIXELATE:
        # a few flat cells: the face is reduced to a handful of colours
        n_colours = len(np.unique(face_out.reshape(-1, 3), axis=0))
        assert n_colours <= 20 < len(np.unique(face_in.reshape(-1, 3), axis=0))
    else:
        assert _detail(face_out) < 0.1 * _detail(face_in)
    assert np.array_equal(messi, before), "anonymize must not mutate its input"
    assert out.anonymized and not frame.anonymized
    # far from the face nothing changed
    assert np.array_equal(out.image[250:, :], messi[250:, :])


def test_ellipse_leaves_box_corners() -> None:
    img = np.random.default_rng(1).integers(0, 255, (60, 60, 3), np.uint8)
    d = Detections.from_lists([[10, 10, 50, 50]], [1.0], ObjectClass.FACE)
    pol = {ObjectClass.FACE: ClassPolicy(AnonymizeMode.SOLID, 0.0, Shape.ELLIPSE)}
    out = anonymize(Frame(img, 0, 0.0), d, pol).image
    assert np.all(out[30, 30] == 0) and np.array_equal(out[10, 10], img[10, 10])


def test_policy_skips_classes_not_named() -> None:
    img = np.full((40, 40, 3), 100, np.uint8)
    d = Detections.from_lists([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1],
                              [ObjectClass.FACE, ObjectClass.TEXT])
    out = anonymize(Frame(img, 0, 0.0), d, default_policy(AnonymizeMode.SOLID,
                                                          frozenset({ObjectClass.TEXT}))).image
    assert out[5, 5, 0] == 100 and out[25, 25, 0] == 0


def test_full_anonymization_removes_detail(messi: np.ndarray) -> None:
    out = anonymize_full(Frame(messi, 0, 0.0), AnonymizeMode.BLUR)
    assert _detail(out.image) < 0.05 * _detail(messi)


def test_vtest_background_away_from_people_unchanged(vtest_frames: list[np.ndarray]) -> None:
    """Away from every hand-annotated person (box + 25 % + 4 px), at least 90 % of the pixels
    are left untouched on each annotated frame of the first 113 (warm-up included)."""
    from pipeline.vision.evaluation import load_people_annotations, near_people_mask

    ann = load_people_annotations(DATA / "vtest_people.json")
    cls = parse_classes("person,head")
    det = default_detector(cls)
    pol = default_policy(AnonymizeMode.BLUR, cls)
    kept = []
    for i, img in enumerate(vtest_frames[:113]):
        f = Frame(img, seq=i, timestamp=i / 10)
        d = det(f)
        if i in ann.frames:
            far = ~near_people_mask((576, 768), ann.frames[i])
            changed = changed_mask(img, anonymize(f, d, pol).image)
            kept.append(1 - (changed & far).sum() / far.sum())
    assert len(kept) >= 8
    assert min(kept) >= 0.9 and float(np.mean(kept)) >= 0.93, kept
