"""Edge vision: frames -> on-device ONNX detection -> fail-closed anonymization -> counts.

Broker-free. Raw frames stay in memory; sinks refuse frames that were not anonymized.

Examples
--------
>>> from pipeline.assets import locate
>>> from pipeline.vision import (AnonymizeMode, FailClosedAnonymizer, ListSink, VideoFileSource,
...                              default_detector, run)
>>> det = default_detector()
>>> fc = FailClosedAnonymizer(det, policy=AnonymizeMode.BLUR, timeout_s=5.0)
>>> sink = ListSink()
>>> summary = run(VideoFileSource(locate("vtest.avi"), max_frames=3), fc, sink)
>>> summary.frames_out
3
"""

from pipeline.vision.analytics import CountRollup, FrameCounts, IntervalCounts, frame_counts
from pipeline.vision.anonymize import (
    AnonymizeMode,
    ClassPolicy,
    Policy,
    Shape,
    anonymize,
    anonymize_full,
    anonymize_image,
    default_policy,
)
from pipeline.vision.detectors import (
    Background,
    CenterFaceDetector,
    Detections,
    Detector,
    EnsembleDetector,
    Every,
    HogPeopleDetector,
    MotionPeopleDetector,
    ObjectClass,
    TextDetector,
    available_providers,
    head_boxes,
    load_centerface_model,
    parse_classes,
)
from pipeline.vision.detectors.nanodet import NanoDetPersonDetector
from pipeline.vision.detectors.tracking import PeopleTracker
from pipeline.vision.exceptions import (
    DetectorError,
    DetectorTimeoutError,
    ModelLoadError,
    SourceError,
    SourceExhaustedError,
    SourceOpenError,
    SourceTruncatedError,
    VisionError,
)
from pipeline.vision.failclosed import FailClosedAnonymizer, FailClosedStats, OnFailure
from pipeline.vision.frames import Frame
from pipeline.vision.gate import ReleaseGate, default_gate
from pipeline.vision.runner import RunSummary, default_detector, run
from pipeline.vision.sinks import FrameSink, ImageFolderSink, ListSink, RawFrameError, VideoFileSink
from pipeline.vision.sources import (
    FrameSource,
    ImageFolderSource,
    LiveSource,
    VideoFileSource,
    open_source,
)

__all__ = [
    "AnonymizeMode", "Background", "CenterFaceDetector", "ClassPolicy", "CountRollup", "Detections", "Detector",
    "DetectorError", "DetectorTimeoutError", "EnsembleDetector", "Every", "FailClosedAnonymizer",
    "FailClosedStats", "Frame", "FrameCounts", "FrameSink", "FrameSource", "HogPeopleDetector",
    "ImageFolderSink", "ImageFolderSource", "IntervalCounts", "ListSink", "LiveSource",
    "ModelLoadError", "MotionPeopleDetector", "NanoDetPersonDetector", "ObjectClass", "OnFailure",
    "PeopleTracker", "Policy", "ReleaseGate", "default_gate",
    "RawFrameError", "RunSummary", "Shape", "SourceError", "SourceExhaustedError",
    "SourceOpenError", "SourceTruncatedError", "TextDetector", "VideoFileSink", "VideoFileSource",
    "VisionError", "anonymize", "anonymize_full", "anonymize_image", "available_providers",
    "default_detector", "default_policy", "frame_counts", "head_boxes", "load_centerface_model",
    "open_source", "parse_classes", "run",
]
