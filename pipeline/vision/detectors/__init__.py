"""Detectors: faces (CenterFace), people (motion + HOG), text (PP-OCR det), and their ensemble."""

from pipeline.vision.detectors.base import (
    Detections,
    Detector,
    ObjectClass,
    available_providers,
    make_session,
    parse_classes,
)
from pipeline.vision.detectors.centerface import CenterFaceDetector, load_centerface_model
from pipeline.vision.detectors.ensemble import Background, EnsembleDetector, Every
from pipeline.vision.detectors.people import HogPeopleDetector, MotionPeopleDetector, head_boxes
from pipeline.vision.detectors.text import TextDetector

__all__ = [
    "Background",
    "CenterFaceDetector",
    "Detections",
    "Detector",
    "EnsembleDetector",
    "Every",
    "HogPeopleDetector",
    "MotionPeopleDetector",
    "ObjectClass",
    "TextDetector",
    "available_providers",
    "head_boxes",
    "load_centerface_model",
    "make_session",
    "parse_classes",
]
