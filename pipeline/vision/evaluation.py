"""Privacy/utility measures of an anonymizer against hand-annotated head and person boxes.

Two annotation sets: ``tests/data/vision/vtest_heads.json`` (33 heads on 6 frames, the older
measure below) and ``tests/data/vision/vtest_people.json`` (person + head boxes on many frames,
scored by :func:`score_privacy` in ``bench/privacy.py`` and the stress tests).

* **head coverage**: for each annotated head box, the fraction of its pixels the anonymizer
  changed; a head counts as *hidden* when that fraction is at least ``threshold``. Run the
  anonymizer in :attr:`~pipeline.vision.anonymize.AnonymizeMode.SOLID` mode so "changed" is exact.
* **background changed**: the fraction of pixels *far from every person* that were changed. A
  person's extent is estimated from the head box (3 head-widths wide, 8 head-heights tall from the
  top of the head), grown by ``margin`` pixels; everything outside these regions is "far".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = ["lift_black", "HeadAnnotations", "load_head_annotations", "changed_mask", "head_coverage",
           "far_from_people_mask", "CoverageScore", "score_frames", "AnnotatedPerson",
           "PeopleAnnotations", "load_people_annotations", "box_coverage", "near_people_mask",
           "PrivacyScore", "score_privacy", "detail_removed"]


@dataclass(frozen=True)
class HeadAnnotations:
    """Head boxes per frame index of one video."""

    video: str
    frames: dict[int, npt.NDArray[np.int32]]


def load_head_annotations(path: str | Path) -> HeadAnnotations:
    """Read a ``{"video": ..., "frames": {"30": [[x1, y1, x2, y2], ...]}}`` JSON file."""
    raw = json.loads(Path(path).read_text())
    return HeadAnnotations(
        video=str(raw["video"]),
        frames={int(k): np.asarray(v, np.int32).reshape(-1, 4) for k, v in raw["frames"].items()},
    )


def lift_black(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """A copy with every channel value 0 raised to 1, so a black fill always changes a pixel."""
    return np.maximum(image, 1)


def changed_mask(original: npt.NDArray[np.uint8],
                 output: npt.NDArray[np.uint8]) -> npt.NDArray[np.bool_]:
    """``(H, W)`` True where any channel differs."""
    return np.asarray((original != output).any(axis=2))


def head_coverage(changed: npt.NDArray[np.bool_],
                  heads: npt.NDArray[np.int32]) -> npt.NDArray[np.float64]:
    """Fraction of each head box's pixels that changed."""
    out = []
    for x1, y1, x2, y2 in heads:
        region = changed[y1:y2, x1:x2]
        out.append(float(region.mean()) if region.size else 0.0)
    return np.asarray(out, np.float64)


def far_from_people_mask(shape: tuple[int, int], heads: npt.NDArray[np.int32], *,
                         margin: int = 16) -> npt.NDArray[np.bool_]:
    """True for pixels outside every estimated person region (grown by ``margin``)."""
    h, w = shape
    far = np.ones((h, w), bool)
    for x1, y1, x2, y2 in heads:
        hw, hh = x2 - x1, y2 - y1
        cx = (x1 + x2) / 2
        xa, xb = int(cx - 1.5 * hw) - margin, int(cx + 1.5 * hw) + margin
        ya, yb = int(y1) - margin, int(y1 + 8 * hh) + margin
        far[max(0, ya):max(0, yb), max(0, xa):max(0, xb)] = False
    return far


@dataclass(frozen=True)
class CoverageScore:
    """Scores over all annotated frames."""

    heads: int
    hidden_fraction: float  # heads with coverage >= threshold
    hidden_fraction_50: float  # heads with coverage >= 0.5
    mean_coverage: float
    background_changed: float  # fraction of far-from-people pixels changed
    threshold: float


def score_frames(pairs: dict[int, tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]],
                 annotations: HeadAnnotations, *, threshold: float = 0.9) -> CoverageScore:
    """Score ``{frame_index: (original, anonymized)}`` against ``annotations``.

    Examples
    --------
    >>> import numpy as np
    >>> a = HeadAnnotations("x", {0: np.array([[2, 2, 4, 4]], np.int32)})
    >>> orig = np.full((40, 40, 3), 9, np.uint8); out = orig.copy(); out[2:4, 2:4] = 0
    >>> score_frames({0: (orig, out)}, a).hidden_fraction
    1.0
    """
    covs: list[float] = []
    bg_changed = 0
    bg_total = 0
    for idx, heads in annotations.frames.items():
        orig, out = pairs[idx]
        ch = changed_mask(orig, out)
        covs.extend(head_coverage(ch, heads).tolist())
        far = far_from_people_mask(ch.shape, heads)
        bg_changed += int((ch & far).sum())
        bg_total += int(far.sum())
    c = np.asarray(covs)
    return CoverageScore(
        heads=len(c), hidden_fraction=float((c >= threshold).mean()),
        hidden_fraction_50=float((c >= 0.5).mean()), mean_coverage=float(c.mean()),
        background_changed=bg_changed / max(bg_total, 1), threshold=threshold)


# ---------------------------------------------------------------------------------------------
# People annotations (person + head boxes) and the privacy score the stress benchmark prints.

@dataclass(frozen=True)
class AnnotatedPerson:
    """One hand-annotated person: body box, head box (``None`` when the head is not visible)."""

    person: npt.NDArray[np.int32]
    head: npt.NDArray[np.int32] | None
    occluded: bool = False
    truncated: bool = False


@dataclass(frozen=True)
class PeopleAnnotations:
    """Hand-annotated people per frame index of one video."""

    video: str
    size: tuple[int, int]
    frames: dict[int, list[AnnotatedPerson]]

    @property
    def boxes(self) -> int:
        """Number of annotated people over all frames."""
        return sum(len(v) for v in self.frames.values())


def load_people_annotations(path: str | Path) -> PeopleAnnotations:
    """Read ``{"video", "size", "frames": {"0": [{"person": [...], "head": [...]|null}]}}``.

    Raises
    ------
    ValueError
        A box is malformed (not 4 numbers with x1 < x2, y1 < y2).
    """
    raw = json.loads(Path(path).read_text())

    def box(v: list[int] | None) -> npt.NDArray[np.int32] | None:
        if v is None:
            return None
        b = np.asarray(v, np.int32).reshape(4)
        if not (b[0] < b[2] and b[1] < b[3]):
            raise ValueError(f"{path}: box {v} is empty or inverted")
        return b

    frames: dict[int, list[AnnotatedPerson]] = {}
    for k, people in raw["frames"].items():
        out = []
        for p in people:
            person = box(p["person"])
            assert person is not None
            out.append(AnnotatedPerson(person, box(p.get("head")), bool(p.get("occluded", False)),
                                       bool(p.get("truncated", False))))
        frames[int(k)] = out
    w, h = raw.get("size", [0, 0])
    return PeopleAnnotations(str(raw["video"]), (int(w), int(h)), frames)


def box_coverage(changed: npt.NDArray[np.bool_], box: npt.NDArray[np.int32]) -> float:
    """Fraction of the pixels of ``box`` (x1, y1, x2, y2; clipped to the image) that changed."""
    h, w = changed.shape
    x1, y1, x2, y2 = (int(v) for v in box)
    region = changed[max(0, y1):min(h, y2), max(0, x1):min(w, x2)]
    return float(region.mean()) if region.size else 1.0


def near_people_mask(shape: tuple[int, int], people: list[AnnotatedPerson], *,
                     margin: float = 0.25, pad: int = 4) -> npt.NDArray[np.bool_]:
    """True near any annotated person: the body box grown by ``margin`` of its size + ``pad`` px."""
    h, w = shape
    near = np.zeros((h, w), bool)
    for p in people:
        x1, y1, x2, y2 = (int(v) for v in p.person)
        mx, my = int(margin * (x2 - x1)) + pad, int(margin * (y2 - y1)) + pad
        near[max(0, y1 - my):min(h, y2 + my), max(0, x1 - mx):min(w, x2 + mx)] = True
    return near


@dataclass(frozen=True)
class PrivacyScore:
    """How well an anonymizer hid annotated people, and how much of the rest it kept.

    ``head_coverage`` is the fraction of visible annotated heads with at least ``threshold`` of
    their pixels changed (hidden); ``person_coverage`` the mean fraction of each person box
    changed; ``background_kept`` the fraction of pixels away from every person (see
    :func:`near_people_mask`) left untouched. ``leaks`` lists ``(frame, head box, coverage)`` of
    the heads that were not hidden, so a reader can go and look at them.
    """

    frames: int
    heads: int
    heads_hidden: int
    head_coverage: float
    persons: int
    person_coverage: float
    persons_hidden: float
    background_kept: float
    threshold: float
    leaks: list[tuple[int, list[int], float]]


def score_privacy(pairs: list[tuple[int, npt.NDArray[np.uint8], npt.NDArray[np.uint8]]],
                  annotations: PeopleAnnotations, *, threshold: float = 0.9) -> PrivacyScore:
    """Score ``[(annotated frame index, original, anonymized), ...]`` against ``annotations``.

    Run the anonymizer in SOLID mode on black-lifted frames (:func:`lift_black`) so that
    "changed" means "hidden" exactly. A frame index may appear several times (the same frame
    held in a clip, seen at different times).

    Examples
    --------
    >>> import numpy as np
    >>> ann = PeopleAnnotations("x", (40, 40), {0: [AnnotatedPerson(
    ...     np.array([10, 10, 20, 30], np.int32), np.array([12, 10, 18, 15], np.int32))]})
    >>> orig = np.full((40, 40, 3), 9, np.uint8); out = orig.copy(); out[10:15, 12:18] = 0
    >>> s = score_privacy([(0, orig, out)], ann)
    >>> s.head_coverage, round(s.person_coverage, 2), s.background_kept
    (1.0, 0.15, 1.0)
    """
    head_cov: list[float] = []
    person_cov: list[float] = []
    leaks: list[tuple[int, list[int], float]] = []
    bg_kept = 0
    bg_total = 0
    for idx, orig, out in pairs:
        people = annotations.frames[idx]
        ch = changed_mask(orig, out)
        for p in people:
            person_cov.append(box_coverage(ch, p.person))
            if p.head is not None:
                c = box_coverage(ch, p.head)
                head_cov.append(c)
                if c < threshold:
                    leaks.append((idx, [int(v) for v in p.head], round(c, 3)))
        far = ~near_people_mask(ch.shape, people)
        bg_kept += int((far & ~ch).sum())
        bg_total += int(far.sum())
    hc = np.asarray(head_cov)
    pc = np.asarray(person_cov)
    return PrivacyScore(
        frames=len(pairs), heads=len(hc), heads_hidden=int((hc >= threshold).sum()),
        head_coverage=float((hc >= threshold).mean()) if len(hc) else 1.0,
        persons=len(pc), person_coverage=float(pc.mean()) if len(pc) else 1.0,
        persons_hidden=float((pc >= threshold).mean()) if len(pc) else 1.0,
        background_kept=bg_kept / max(bg_total, 1), threshold=threshold, leaks=leaks)


def detail_removed(original: npt.NDArray[np.uint8], output: npt.NDArray[np.uint8],
                   box: npt.ArrayLike) -> float:
    """How much of the fine detail inside ``box`` the output no longer has, in ``[0, 1]``.

    Detail is the high-frequency part of the grey image (the image minus its Gaussian blur,
    sigma 1 px), summed in absolute value over the box: 0 = all detail still there, 1 = none
    left. Works for blur and pixelation, where "changed pixels" says little, and for images that
    were recompressed or rescaled, if ``original`` went through the same steps.

    Examples
    --------
    >>> import numpy as np, cv2
    >>> img = np.random.default_rng(0).integers(0, 255, (40, 40, 3)).astype(np.uint8)
    >>> blurred = cv2.blur(img, (15, 15))
    >>> detail_removed(img, blurred, [10, 10, 30, 30]) > 0.8, detail_removed(img, img, [0, 0, 9, 9])
    (True, 0.0)
    """
    import cv2

    h, w = original.shape[:2]
    x1, y1, x2, y2 = (int(round(float(v))) for v in np.asarray(box).reshape(4))
    x1, y1, x2, y2 = max(0, x1), max(0, y1), min(w, x2), min(h, y2)
    if x2 - x1 < 2 or y2 - y1 < 2:
        return 1.0

    def hf(img: npt.NDArray[np.uint8]) -> float:
        g = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32)
        band = np.abs(g - cv2.GaussianBlur(g, (0, 0), 1.0))[y1:y2, x1:x2]
        return float(band.sum())

    before = hf(original)
    if before <= 0:
        return 1.0
    return float(np.clip(1.0 - hf(output) / before, 0.0, 1.0))
