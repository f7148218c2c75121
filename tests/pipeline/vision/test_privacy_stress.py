"""Small versions of the privacy stress cases (``bench/privacy.py`` runs the full ones).

Each case feeds a fresh anonymizer -- the detector and gate ``edgeveil anonymize`` uses -- with
clips cut from vtest.avi and checks every hand-annotated head on the scored frames is hidden.
On the motion-only pipeline these fail: a clip's first frames (the background model has learned
nothing), a frame held long enough for MOG2 to absorb the people, a still camera from the first
frame on, and single photos all released visible heads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.vision import (
    AnonymizeMode,
    FailClosedAnonymizer,
    Frame,
    ListSink,
    ObjectClass,
    default_detector,
    default_policy,
    run,
)
from pipeline.vision.evaluation import load_people_annotations, score_privacy
from pipeline.vision.stress import StressCase, build_cases

DATA = Path(__file__).resolve().parents[2] / "data" / "vision"
CLASSES = frozenset({ObjectClass.PERSON, ObjectClass.HEAD, ObjectClass.FACE})


@pytest.fixture(scope="module")
def annotations():
    return load_people_annotations(DATA / "vtest_people.json")


@pytest.fixture(scope="module")
def all_frames(vtest_path: str) -> list[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(vtest_path)
    out = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        out.append(img)
    return out


@pytest.fixture(scope="module")
def cases(all_frames, annotations) -> dict[str, StressCase]:
    return {c.name: c for c in build_cases(all_frames, annotations, small=True)}


def _anonymize_clip(frames: list[np.ndarray], fps: float, still: bool) -> list[np.ndarray]:
    """What ``edgeveil anonymize CLIP --mode solid`` writes: a fresh detector and gate."""
    det = default_detector(CLASSES, still_image=still)
    fc = FailClosedAnonymizer(det, policy=default_policy(AnonymizeMode.SOLID, CLASSES),
                              timeout_s=30.0)
    sink = ListSink()
    src = [Frame(np.maximum(img, 1), seq=i, timestamp=i / fps) for i, img in enumerate(frames)]
    if still:
        for f in src:
            det.reset()
            out = fc(f)
            assert out is not None
            sink.add(out)
    else:
        run(src, fc, sink, threaded=False)
    assert len(sink.frames) == len(frames)
    return [f.image for f in sink.frames]


@pytest.mark.parametrize("name", ["warmup", "freeze", "cold", "photos", "fps5"])
def test_every_annotated_head_is_hidden(name: str, cases, annotations) -> None:
    case = cases[name]
    pairs = []
    for clip in case.clips:
        outs = _anonymize_clip(list(clip.frames), clip.fps, clip.still)
        pairs += [(a, np.maximum(clip.frames[pos], 1), outs[pos]) for pos, a in clip.scored.items()]
    score = score_privacy(pairs, annotations)
    assert score.heads >= 10, f"{name}: too few annotated heads scored ({score.heads})"
    assert score.head_coverage >= 0.95, (name, score.heads_hidden, score.heads, score.leaks)
    assert score.background_kept >= 0.85, (name, score.background_kept)


def test_small_cases_are_what_the_bench_runs_in_miniature(cases) -> None:
    """The freeze case really holds a frame for seconds after people walked; cold repeats one
    frame from the start; warm-up scores the first frame of a mid-video clip."""
    freeze = cases["freeze"].clips[0]
    held = [p for p in freeze.scored]
    assert max(held) - min(held) >= 50 and freeze.frames[max(held)] is freeze.frames[min(held)]
    assert freeze.frames[0] is not freeze.frames[min(held)]
    cold = cases["cold"].clips[0]
    assert all(f is cold.frames[0] for f in cold.frames) and 0 in cold.scored
    assert all(0 in c.scored for c in cases["warmup"].clips)
    assert cases["photos"].clips[0].still
