"""Egress audit: does anything that left a node carry pixels it should not?

Privacy invariants 1 and 5 say raw frames never reach a topic and only anonymized images (previews)
may. :func:`audit_payload` classifies one message payload:

* every embedded JPEG/PNG image is decoded and searched, at its own scale, for a visible person
  (the NanoDet appearance detector, the same model that vouches for frames on the node; it finds
  7.4 people per 384-px raw vtest preview and 0 with score >= 0.5 on 80 anonymized ones) and for
  an unblurred frontal face (Haar cascade); an image where either is found is a finding;
* a payload of a known EdgeVeil kind (signed update ``EVU``, global model ``EVM``, JSON message)
  that embeds no image passes;
* anything else large enough to hold a frame (default: one 160×120 BGR image) is a finding, since
  raw pixel buffers have no header to recognise them by.

Examples
--------
>>> audit_payload(b'{"schema": "telemetry.v1", "node_id": "n"}').ok
True
>>> audit_payload(bytes(200_000)).ok
False
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["AuditResult", "audit_payload", "find_images", "image_findings", "visible_people"]

_JPEG = b"\xff\xd8\xff"
_PNG = b"\x89PNG\r\n\x1a\n"
_KNOWN_PREFIXES = (b"EVU", b"EVM")
_RAW_LIMIT = 160 * 120 * 3


@dataclass(frozen=True)
class AuditResult:
    """What :func:`audit_payload` found in one payload."""

    kind: str  # update | global_model | json | image | unknown
    images: int = 0
    findings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.findings


def find_images(payload: bytes) -> list[tuple[int, np.ndarray]]:
    """Decode every JPEG/PNG embedded in ``payload``; returns (offset, BGR image) pairs."""
    import cv2

    found: list[tuple[int, np.ndarray]] = []
    for magic in (_JPEG, _PNG):
        start = payload.find(magic)
        while start != -1:
            img = cv2.imdecode(np.frombuffer(payload[start:], np.uint8), cv2.IMREAD_COLOR)
            if img is not None and img.size:
                found.append((start, img))
            start = payload.find(magic, start + 1)
    return found


@lru_cache(maxsize=1)
def _detectors() -> tuple[Any, Any]:
    import cv2

    from pipeline.assets import locate
    from pipeline.vision.detectors.nanodet import NanoDetPersonDetector

    face = cv2.CascadeClassifier(str(locate("haarcascade_frontalface_default.xml")))
    return face, NanoDetPersonDetector(score_threshold=0.3)


def visible_people(img: np.ndarray, *, min_score: float = 0.5) -> np.ndarray:
    """``(N, 4)`` boxes of the people the appearance detector sees in ``img`` (at its scale)."""
    _, people = _detectors()
    boxes, scores = people.raw_people(img)
    return np.asarray(boxes[scores >= min_score], np.float32)


def image_findings(img: np.ndarray, *, min_face: int = 12, min_person_score: float = 0.5
                   ) -> list[str]:
    """Faces or people detectable in ``img`` (an anonymized image should have none)."""
    import cv2

    face, _ = _detectors()
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    out: list[str] = []
    faces = face.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5,
                                  minSize=(min_face, min_face))
    if len(faces):
        out.append(f"{len(faces)} unblurred face(s)")
    people = visible_people(img, min_score=min_person_score)
    if len(people):
        where = ", ".join(f"({x1:.0f},{y1:.0f})-({x2:.0f},{y2:.0f})" for x1, y1, x2, y2 in people[:4])
        out.append(f"{len(people)} visible person(s) at {where}")
    return out


def audit_payload(payload: bytes, *, raw_limit: int = _RAW_LIMIT) -> AuditResult:
    """Classify ``payload`` and list what should not be there (empty findings = passes)."""
    images = find_images(payload)
    findings: list[str] = []
    for offset, img in images:
        for f in image_findings(img):
            findings.append(f"image at byte {offset} ({img.shape[1]}x{img.shape[0]}): {f}")
    if payload.startswith(b"EVU"):
        kind = "update"
    elif payload.startswith(b"EVM"):
        kind = "global_model"
    elif payload[:1] in (b"{", b"["):
        kind = "json"
    elif images and images[0][0] == 0:
        kind = "image"
    else:
        kind = "unknown"
    if kind == "unknown" and len(payload) >= raw_limit:
        findings.append(f"{len(payload)} bytes of unrecognised data (could hold raw pixels)")
    return AuditResult(kind=kind, images=len(images), findings=tuple(findings))
