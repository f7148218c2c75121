"""The release gate: no frame leaves unless a single-image detector has recently looked at it.

A frame may leave the node -- as an output file frame, a preview, or a count -- only after, for
every class the policy hides, a detector that works on one image alone (NanoDet for people and
heads, CenterFace for faces, PP-OCR for text) has looked for that class *on this frame or on one
of the last* ``max_age`` *frames of the stream*, with tracking carrying its boxes in between.
A motion model never vouches: it cannot see someone who stands still, nor anyone while it is
still learning the background, so a motion-only verdict -- including every frame of its warm-up
-- is never enough.

A frame that fails the gate is treated like one whose detection failed: it is released fully
hidden, or not at all (:class:`~pipeline.vision.failclosed.FailClosedAnonymizer`).

Examples
--------
>>> from pipeline.vision.detectors.base import Detections, ObjectClass
>>> gate = ReleaseGate(frozenset({ObjectClass.PERSON}), max_age=5)
>>> gate.check(Detections.empty()) is None
False
>>> gate.check(Detections.empty().vouch([ObjectClass.PERSON], age=5)) is None
True
>>> print(gate.check(Detections.empty().vouch([ObjectClass.PERSON], age=6)))
person last looked for 6 frames ago (limit 5)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pipeline.vision.detectors.base import Detections, ObjectClass

__all__ = ["ReleaseGate", "DEFAULT_MAX_AGE", "TEXT_MAX_AGE", "default_gate"]

#: Frames an appearance vouch stays valid on a stream (the key-frame period of the trackers).
DEFAULT_MAX_AGE = 5
#: Frames a text (licence plate) vouch stays valid: PP-OCR takes ~0.5 s a frame on one core.
TEXT_MAX_AGE = 10


@dataclass(frozen=True)
class ReleaseGate:
    """Which classes must have been vouched for, and how recently.

    Parameters
    ----------
    classes
        Classes that must be vouched for (normally every class the policy hides).
    max_age
        Largest allowed age in frames, for every class not in ``max_age_by_class``.
    max_age_by_class
        Per-class limits, e.g. a slower text detector.
    """

    classes: frozenset[ObjectClass]
    max_age: int = DEFAULT_MAX_AGE
    max_age_by_class: Mapping[ObjectClass, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_age < 0 or any(a < 0 for a in self.max_age_by_class.values()):
            raise ValueError("max_age values must be >= 0")

    @classmethod
    def for_classes(cls, classes: Iterable[ObjectClass], *, max_age: int = DEFAULT_MAX_AGE,
                    max_age_by_class: Mapping[ObjectClass, int] | None = None) -> ReleaseGate:
        """A gate for ``classes`` (e.g. the keys of a policy)."""
        return cls(frozenset(classes), max_age, dict(max_age_by_class or {}))

    def limit(self, c: ObjectClass) -> int:
        """The largest allowed vouch age for class ``c``."""
        return self.max_age_by_class.get(c, self.max_age)

    def check(self, detections: Detections) -> str | None:
        """``None`` when ``detections`` may release their frame, else the reason it may not."""
        for c in sorted(self.classes):
            age = detections.vouched.get(c)
            name = c.name.lower()
            if age is None:
                return f"no single-image detector looked for {name} (motion alone never vouches)"
            if age > self.limit(c):
                return f"{name} last looked for {age} frames ago (limit {self.limit(c)})"
        return None


def default_gate(classes: Iterable[ObjectClass] | None = None, *,
                 key_every: int = DEFAULT_MAX_AGE, text_max_age: int = TEXT_MAX_AGE
                 ) -> ReleaseGate:
    """The gate that matches :func:`pipeline.vision.default_detector` with the same arguments.

    Examples
    --------
    >>> g = default_gate()
    >>> g.limit(ObjectClass.PERSON), g.limit(ObjectClass.TEXT)
    (5, 10)
    """
    cls = frozenset(ObjectClass) if classes is None else frozenset(classes)
    return ReleaseGate.for_classes(cls, max_age=key_every,
                                   max_age_by_class={ObjectClass.TEXT: text_max_age})
