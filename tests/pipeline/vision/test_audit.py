"""The egress audit flags raw frames and unblurred people, and passes anonymized ones."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.assets import locate
from pipeline.vision.audit import audit_payload


@pytest.fixture(scope="module")
def messi() -> np.ndarray:
    return cv2.imread(str(locate("messi5.jpg")))


def _jpeg(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


def test_raw_face_image_is_flagged(messi) -> None:
    res = audit_payload(_jpeg(messi))
    assert res.kind == "image" and not res.ok
    assert any("face" in f for f in res.findings)


def test_image_hidden_inside_a_json_message_is_found(messi) -> None:
    payload = b'{"schema":"analytics.v1","blob":"' + _jpeg(messi) + b'"}'
    res = audit_payload(payload)
    assert res.images == 1 and not res.ok


def test_blurred_image_passes(messi) -> None:
    blurred = cv2.GaussianBlur(messi, (0, 0), 25)
    res = audit_payload(_jpeg(blurred))
    assert res.ok, res.findings


def test_raw_frame_bytes_are_flagged() -> None:
    cap = cv2.VideoCapture(str(locate("vtest.avi")))
    ok, frame = cap.read()
    cap.release()
    assert ok
    res = audit_payload(frame.tobytes())
    assert res.kind == "unknown" and not res.ok


def test_known_messages_pass() -> None:
    assert audit_payload(b"EVU\x01" + bytes(5000)).ok
    assert audit_payload(b'{"schema":"telemetry.v1"}').ok
    assert audit_payload(b"small").ok


def _vtest(index: int) -> np.ndarray:
    cap = cv2.VideoCapture(str(locate("vtest.avi")))
    for _ in range(index + 1):
        ok, frame = cap.read()
        assert ok
    cap.release()
    return frame


def _preview(img: np.ndarray) -> bytes:
    """What the edge publishes: 384 px wide, JPEG quality 70."""
    small = cv2.resize(img, (384, 288), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 70])
    assert ok
    return buf.tobytes()


def test_raw_vtest_frame_as_jpeg_is_flagged() -> None:
    res = audit_payload(_jpeg(_vtest(240)))
    assert any("person" in f for f in res.findings), res.findings


@pytest.mark.parametrize("index", [0, 240, 600])
def test_raw_frame_at_preview_scale_is_flagged(index: int) -> None:
    """People 30-60 px tall in a 384-px preview: the leak the HOG audit (64x128) let through."""
    res = audit_payload(_preview(_vtest(index)))
    assert res.kind == "image" and any("visible person" in f for f in res.findings), res.findings


def test_one_person_left_visible_in_an_anonymized_preview_is_flagged() -> None:
    """A planted leak: every person hidden but one. The audit names that one's place."""
    from pipeline.vision import (
        AnonymizeMode,
        Detections,
        ObjectClass,
        anonymize_image,
        default_policy,
    )
    from pipeline.vision.detectors.nanodet import NanoDetPersonDetector

    frame = _vtest(300)
    people = NanoDetPersonDetector().detect_image(frame)
    person = people.select([ObjectClass.PERSON])
    assert len(person) >= 4
    heights = person.boxes[:, 3] - person.boxes[:, 1]
    keep = int(np.argmax(heights))  # leave the tallest person visible
    others = np.delete(np.arange(len(person)), keep)
    policy = default_policy(AnonymizeMode.BLUR, frozenset({ObjectClass.PERSON}))
    everyone = anonymize_image(frame, person, policy)
    leaky = anonymize_image(frame, Detections(person.boxes[others], person.scores[others],
                                              person.classes[others]), policy)
    assert audit_payload(_preview(everyone)).ok
    res = audit_payload(_preview(leaky))
    assert not res.ok, "one visible person must be found"
    assert "1 visible person" in res.findings[0], res.findings
    from pipeline.vision.audit import visible_people

    seen = visible_people(cv2.imdecode(np.frombuffer(_preview(leaky), np.uint8), cv2.IMREAD_COLOR))
    planted = person.boxes[keep] * 0.5  # preview scale
    ix = np.clip(np.minimum(seen[:, 2], planted[2]) - np.maximum(seen[:, 0], planted[0]), 0, None)
    iy = np.clip(np.minimum(seen[:, 3], planted[3]) - np.maximum(seen[:, 1], planted[1]), 0, None)
    area = (seen[:, 2] - seen[:, 0]) * (seen[:, 3] - seen[:, 1])
    assert len(seen) == 1 and (ix * iy / area)[0] > 0.8, (seen, planted)
