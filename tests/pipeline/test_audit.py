"""The egress audit flags raw frames and unblurred people, and passes anonymized ones."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.assets import locate
from pipeline.audit import audit_payload


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


def test_raw_vtest_frame_as_jpeg_is_flagged() -> None:
    cap = cv2.VideoCapture(str(locate("vtest.avi")))
    cap.set(cv2.CAP_PROP_POS_FRAMES, 240)
    ok, frame = cap.read()
    cap.release()
    assert ok
    res = audit_payload(_jpeg(frame))
    assert any("person" in f for f in res.findings), res.findings
