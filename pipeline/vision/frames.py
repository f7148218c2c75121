"""The :class:`Frame` value that flows from sources through detectors, anonymizer and sinks.

A frame's pixels are raw (identifying) until :func:`pipeline.vision.anonymize.anonymize` has
returned a new frame with ``anonymized=True``. Raw frames live only in process memory: nothing in
:mod:`pipeline.vision` writes, logs or serializes a frame whose ``anonymized`` flag is false.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Frame"]

@dataclass(frozen=True, eq=False)
class Frame:
    """One decoded image with its place in the stream.

    Parameters
    ----------
    image
        ``(H, W, 3)`` uint8 BGR pixels (OpenCV order).
    seq
        0-based position in the source: frame ``seq`` of a video file is its ``seq``-th frame.
    timestamp
        Media time in seconds (file position for videos, wall clock for live sources).
    source
        Name of the source it came from.
    anonymized
        True once the pixels went through the anonymizer (or fail-closed masking).
    metadata
        Read-only extra facts, e.g. ``{"fail_closed": True, "fail_reason": "..."}``.

    Examples
    --------
    >>> import numpy as np
    >>> f = Frame(np.zeros((4, 6, 3), np.uint8), seq=0, timestamp=0.0)
    >>> f.size
    (6, 4)
    """

    image: npt.NDArray[np.uint8]
    seq: int
    timestamp: float
    source: str = ""
    anonymized: bool = False
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        img = self.image
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 \
                or img.shape[2] != 3:
            raise ValueError(
                f"Frame.image must be an (H, W, 3) uint8 array, got "
                f"{getattr(img, 'shape', None)} {getattr(img, 'dtype', type(img).__name__)}"
            )
        if not isinstance(self.metadata, MappingProxyType):
            object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` in pixels."""
        return int(self.image.shape[1]), int(self.image.shape[0])

    def with_image(self, image: npt.NDArray[np.uint8], *, anonymized: bool,
                   **metadata: Any) -> Frame:
        """A copy with new pixels and extra metadata (existing keys are kept unless overridden)."""
        merged = dict(self.metadata)
        merged.update(metadata)
        return dataclasses.replace(self, image=image, anonymized=anonymized, metadata=merged)
