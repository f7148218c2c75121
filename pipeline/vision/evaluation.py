"""Privacy/utility measures of an anonymizer against hand-annotated head boxes.

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
           "far_from_people_mask", "CoverageScore", "score_frames"]


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
