"""The detector interface: :class:`Detector` protocol, :class:`Detections` value, ONNX sessions.

Every detector is a callable ``detector(frame) -> Detections``. It always returns fixed-shape
arrays -- ``boxes`` ``(N, 4)`` float32 ``x1, y1, x2, y2`` in frame pixels, ``scores`` ``(N,)``
float32, ``classes`` ``(N,)`` int16 values of :class:`ObjectClass` -- and an empty result rather
than ``None``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import onnxruntime

    from pipeline.vision.frames import Frame

__all__ = [
    "ObjectClass",
    "Detections",
    "Detector",
    "available_providers",
    "make_session",
    "parse_classes",
]

log = logging.getLogger(__name__)


class ObjectClass(IntEnum):
    """What a box contains. The anonymization policy is chosen per class."""

    FACE = 0
    PERSON = 1
    HEAD = 2
    TEXT = 3


def parse_classes(names: str | Iterable[str | ObjectClass]) -> frozenset[ObjectClass]:
    """Parse ``"face,head"`` or an iterable of names/classes into a set of :class:`ObjectClass`.

    Raises
    ------
    ValueError
        A name is not a class; the message lists the valid ones.

    Examples
    --------
    >>> sorted(c.name for c in parse_classes("face, head"))
    ['FACE', 'HEAD']
    """
    items = names.split(",") if isinstance(names, str) else list(names)
    out: set[ObjectClass] = set()
    for item in items:
        if isinstance(item, ObjectClass):
            out.add(item)
            continue
        key = item.strip().upper()
        if not key:
            continue
        if key in ("PLATE", "PLATES"):
            key = "TEXT"
        try:
            out.add(ObjectClass[key])
        except KeyError:
            valid = ", ".join(c.name.lower() for c in ObjectClass)
            raise ValueError(f"unknown class {item!r}; valid classes: {valid}") from None
    return frozenset(out)


def _f32(a: npt.ArrayLike, shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
    arr = np.asarray(a, dtype=np.float32)
    return arr.reshape(shape)


@dataclass(frozen=True, eq=False)
class Detections:
    """Boxes found in one frame.

    Parameters
    ----------
    boxes
        ``(N, 4)`` float32, ``x1, y1, x2, y2`` in pixels of the frame they were found in.
    scores
        ``(N,)`` float32 confidences in ``[0, 1]``.
    classes
        ``(N,)`` int16 :class:`ObjectClass` values.
    vouched
        For each class, how many frames ago a detector that works on a *single image* looked for
        it on this stream (0 = on this very frame). A class that is missing was not looked for by
        such a detector: a motion model alone never vouches, since it cannot see people who
        stand still or anyone before it has learned the background. The release gate
        (:class:`~pipeline.vision.gate.ReleaseGate`) reads this.

    Examples
    --------
    >>> d = Detections.from_lists([[0, 0, 10, 10]], [0.9], [ObjectClass.FACE])
    >>> len(d), d.count_by_class()
    (1, {'face': 1})
    >>> d.vouch([ObjectClass.FACE]).aged(3).vouched[ObjectClass.FACE]
    3
    """

    boxes: npt.NDArray[np.float32]
    scores: npt.NDArray[np.float32]
    classes: npt.NDArray[np.int16]
    vouched: Mapping[ObjectClass, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.boxes)
        if self.boxes.shape != (n, 4) or self.scores.shape != (n,) or self.classes.shape != (n,):
            raise ValueError(
                f"Detections arrays disagree: boxes {self.boxes.shape}, scores "
                f"{self.scores.shape}, classes {self.classes.shape}"
            )
        if any(int(a) < 0 for a in self.vouched.values()):
            raise ValueError(f"vouched ages must be >= 0, got {dict(self.vouched)}")
        object.__setattr__(self, "vouched", MappingProxyType(
            {ObjectClass(c): int(a) for c, a in self.vouched.items()}))

    @classmethod
    def empty(cls) -> Detections:
        """No detections (fixed shapes, length 0)."""
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32),
                   np.zeros((0,), np.int16))

    @classmethod
    def from_lists(cls, boxes: npt.ArrayLike, scores: npt.ArrayLike,
                   classes: npt.ArrayLike | ObjectClass) -> Detections:
        """Build from array-likes; ``classes`` may be one class for all boxes."""
        b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        n = len(b)
        s = _f32(scores, (n,))
        if isinstance(classes, ObjectClass):
            c = np.full((n,), int(classes), np.int16)
        else:
            c = np.asarray(classes, dtype=np.int16).reshape(n)
        return cls(b, s, c)

    @classmethod
    def concat(cls, parts: Sequence[Detections]) -> Detections:
        """All boxes of ``parts``, in order; a class is vouched for as freshly as any part did."""
        vouched: dict[ObjectClass, int] = {}
        for p in parts:
            for c, a in p.vouched.items():
                vouched[c] = min(a, vouched.get(c, a))
        boxed = [p for p in parts if len(p)]
        if not boxed:
            return cls.empty().vouch_ages(vouched)
        return cls(np.concatenate([p.boxes for p in boxed]),
                   np.concatenate([p.scores for p in boxed]),
                   np.concatenate([p.classes for p in boxed]), vouched)

    def vouch(self, classes: Iterable[ObjectClass], age: int = 0) -> Detections:
        """The same boxes, vouched for ``classes`` ``age`` frames ago (kept if fresher)."""
        ages = dict(self.vouched)
        for c in classes:
            ages[c] = min(age, ages.get(c, age))
        return self.vouch_ages(ages)

    def vouch_ages(self, ages: Mapping[ObjectClass, int]) -> Detections:
        """The same boxes with ``vouched`` replaced by ``ages``."""
        return Detections(self.boxes, self.scores, self.classes, ages)

    def aged(self, frames: int) -> Detections:
        """The same boxes carried ``frames`` frames forward: every vouch is that much older."""
        if frames < 0:
            raise ValueError(f"frames must be >= 0, got {frames}")
        return self.vouch_ages({c: a + frames for c, a in self.vouched.items()})

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def select(self, classes: Iterable[ObjectClass]) -> Detections:
        """Only the boxes whose class is in ``classes``."""
        wanted = {ObjectClass(c) for c in classes}
        keep = np.isin(self.classes, np.asarray([int(c) for c in wanted], np.int16))
        return Detections(self.boxes[keep], self.scores[keep], self.classes[keep],
                          {c: a for c, a in self.vouched.items() if c in wanted})

    def scaled(self, sx: float, sy: float) -> Detections:
        """Boxes multiplied by ``(sx, sy)`` (e.g. from a downscaled frame back to full size)."""
        k = np.asarray([sx, sy, sx, sy], np.float32)
        return Detections(self.boxes * k, self.scores.copy(), self.classes.copy(), self.vouched)

    def count_by_class(self) -> dict[str, int]:
        """``{"face": 2, ...}`` for the classes present."""
        vals, counts = np.unique(self.classes, return_counts=True)
        return {ObjectClass(int(v)).name.lower(): int(c) for v, c in zip(vals, counts, strict=True)}


@runtime_checkable
class Detector(Protocol):
    """Anything that turns a frame into :class:`Detections`.

    Contract: never returns ``None`` (an empty :class:`Detections` instead); raises an exception
    (preferably :class:`~pipeline.vision.exceptions.DetectorError`) when it cannot tell -- the
    fail-closed wrapper then hides the whole frame. Stateful detectors (background models,
    trackers) expect frames of one stream in order.
    """

    name: str

    def __call__(self, frame: Frame) -> Detections:
        """Detect objects in ``frame``."""
        ...


def available_providers() -> list[str]:
    """ONNX Runtime execution providers usable on this machine (fastest first)."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


_PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider",
              "OpenVINOExecutionProvider", "CPUExecutionProvider")


def make_session(model: bytes | str, *, providers: Sequence[str] | None = None,
                 threads: int | None = None) -> onnxruntime.InferenceSession:
    """Create an ONNX Runtime session with checked providers and thread settings.

    Parameters
    ----------
    model
        Serialized model bytes or a file path.
    providers
        Execution providers in priority order. ``None`` picks the accelerated ones present
        (TensorRT, CUDA, OpenVINO) before CPU.
    threads
        Intra-op threads; ``None`` uses ``min(2, os.cpu_count())``.

    Raises
    ------
    ValueError
        A requested provider is not available; the message lists the valid ones.
    """
    import onnxruntime as ort

    valid = available_providers()
    if providers is None:
        chosen = [p for p in _PREFERRED if p in valid] or valid
    else:
        chosen = list(providers)
        bad = [p for p in chosen if p not in valid]
        if bad or not chosen:
            raise ValueError(f"execution provider(s) {bad or chosen} not available; "
                             f"valid providers here: {valid}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads if threads is not None else min(2, os.cpu_count() or 1)
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model, sess_options=opts, providers=chosen)
    log.debug("onnxruntime session on %s", sess.get_providers())
    return sess
