"""Errors raised by :mod:`pipeline.vision`. Each carries the fields a caller needs to act on it."""

from __future__ import annotations

from pipeline.exceptions import EdgeVeilError

__all__ = [
    "VisionError",
    "SourceError",
    "SourceOpenError",
    "SourceTruncatedError",
    "SourceExhaustedError",
    "DetectorError",
    "DetectorTimeoutError",
    "ModelLoadError",
]


class VisionError(EdgeVeilError):
    """Base class of every error raised on purpose by :mod:`pipeline.vision`."""


class SourceError(VisionError):
    """A frame source could not deliver frames.

    Parameters
    ----------
    uri
        The source as the caller named it (path, URL or camera index).
    reason
        Human-readable cause.
    frames_read
        How many frames the source had already delivered before failing.
    """

    def __init__(self, uri: str, reason: str, frames_read: int = 0) -> None:
        self.uri = uri
        self.reason = reason
        self.frames_read = frames_read
        super().__init__(f"{uri}: {reason} (after {frames_read} frames)")


class SourceOpenError(SourceError):
    """The input cannot be opened at all (missing file, not a video, no camera, bad URL)."""


class SourceTruncatedError(SourceError):
    """A video file ended before the frame count its container announced (truncated/corrupt).

    ``frames_read`` frames were delivered and are valid; ``expected`` is the announced count.
    """

    def __init__(self, uri: str, frames_read: int, expected: int) -> None:
        self.expected = expected
        super().__init__(
            uri,
            f"video is truncated or corrupt: decoding stopped at frame {frames_read} of {expected}",
            frames_read,
        )


class SourceExhaustedError(SourceError):
    """A live source died and did not come back within the reconnect budget."""

    def __init__(self, uri: str, attempts: int, frames_read: int) -> None:
        self.attempts = attempts
        super().__init__(uri, f"live source lost; gave up after {attempts} reconnect attempts",
                         frames_read)


class DetectorError(VisionError):
    """A detector failed on one frame.

    Parameters
    ----------
    detector
        Name of the detector that failed.
    seq
        Sequence number of the frame it failed on (-1 if unknown).
    reason
        Human-readable cause (the original exception is chained as ``__cause__``).
    """

    def __init__(self, detector: str, seq: int, reason: str) -> None:
        self.detector = detector
        self.seq = seq
        self.reason = reason
        super().__init__(f"detector {detector!r} failed on frame {seq}: {reason}")


class DetectorTimeoutError(DetectorError):
    """A detector did not answer within ``timeout_s`` seconds."""

    def __init__(self, detector: str, seq: int, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        super().__init__(detector, seq, f"no answer within {timeout_s:.3f} s")


class ModelLoadError(VisionError):
    """An ONNX model could not be loaded or prepared.

    Parameters
    ----------
    path
        The model file.
    reason
        Human-readable cause.
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"cannot load model {path}: {reason}")
