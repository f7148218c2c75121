"""Benchmark EdgeVeil's edge anonymizer against deface on vtest.avi, in one run; prints JSON.

Measured, all on the same first ``--frames`` frames of vtest.avi at native size (768x576):

* ``decode_only_fps``: OpenCV decoding alone (the ceiling);
* ``edgeveil``: decode -> detect -> anonymize (blur) -> encode (MJPG .avi), end to end;
* ``deface``: the real deface 1.5.0 package (its ``CenterFace`` + ``anonymize_frame``, default
  threshold 0.2, mask scale 1.3, ellipse blur) with the same decoder and encoder, once per
  backend (``onnxrt``, ``opencv``); the faster one is the anchor;
* head coverage on the hand-annotated frames of ``tests/data/vision/vtest_heads.json`` (see
  ``pipeline.vision.evaluation``), both methods in solid-mask mode on black-lifted frames,
  detection on the original frames.

Usage: ``python bench/anonymize.py [--frames 300]``
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np

from pipeline.assets import locate
from pipeline.vision import (
    AnonymizeMode,
    FailClosedAnonymizer,
    VideoFileSink,
    VideoFileSource,
    anonymize,
    default_detector,
    default_policy,
    parse_classes,
    run,
)
from pipeline.vision.evaluation import lift_black, load_head_annotations, score_frames

ANNOTATIONS = Path(__file__).resolve().parents[1] / "tests/data/vision/vtest_heads.json"


def decode_only(path: str, n: int) -> float:
    cap = cv2.VideoCapture(path)
    t0 = time.perf_counter()
    k = 0
    while k < n:
        ok, _ = cap.read()
        if not ok:
            break
        k += 1
    return k / (time.perf_counter() - t0)


def edgeveil(path: str, n: int, out: Path, classes: str) -> dict[str, object]:
    cls = parse_classes(classes)
    det = default_detector(cls)
    fc = FailClosedAnonymizer(det, policy=default_policy(AnonymizeMode.BLUR, cls), timeout_s=5.0)
    summary = run(VideoFileSource(path, max_frames=n), fc, VideoFileSink(out, fps=10.0))
    return {"fps": summary.fps, "frames": summary.frames_out, "seconds": summary.seconds,
            "detections": summary.detections, "fail_closed_frames": summary.fail_closed_frames,
            "detector_seconds": {k: round(v[0], 2) for k, v in det.timings.items()},
            "classes": classes}


def deface_run(path: str, n: int, out: Path, backend: str) -> dict[str, object]:
    from deface.centerface import CenterFace
    from deface.deface import anonymize_frame

    with contextlib.redirect_stdout(io.StringIO()):
        cf = CenterFace(backend=backend)
    cap = cv2.VideoCapture(path)
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (768, 576))
    t0 = time.perf_counter()
    k = 0
    faces = 0
    while k < n:
        ok, bgr = cap.read()
        if not ok:
            break
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        dets, _ = cf(rgb, threshold=0.2)
        faces += len(dets)
        anonymize_frame(dets, rgb, mask_scale=1.3, replacewith="blur", ellipse=True,
                        draw_scores=False, replaceimg=None, mosaicsize=20)
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        k += 1
    writer.release()
    dt = time.perf_counter() - t0
    return {"fps": round(k / dt, 2), "frames": k, "seconds": round(dt, 3), "faces": faces,
            "backend": backend}


def coverage(path: str, classes: str) -> dict[str, object]:
    from deface.centerface import CenterFace
    from deface.deface import anonymize_frame

    ann = load_head_annotations(ANNOTATIONS)
    cls = parse_classes(classes)
    det = default_detector(cls)
    pol = default_policy(AnonymizeMode.SOLID, cls)
    ours: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    raw: dict[int, np.ndarray] = {}
    for f in VideoFileSource(path, max_frames=max(ann.frames) + 1):
        d = det(f)
        if f.seq in ann.frames:
            lifted = lift_black(f.image)
            ours[f.seq] = (lifted, anonymize(f.with_image(lifted, anonymized=False), d, pol).image)
            raw[f.seq] = f.image
    with contextlib.redirect_stdout(io.StringIO()):
        cf = CenterFace(backend="onnxrt")
    theirs = {}
    for i, bgr in raw.items():
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        dets, _ = cf(rgb, threshold=0.2)
        rgb = lift_black(rgb)
        out = rgb.copy()
        anonymize_frame(dets, out, mask_scale=1.3, replacewith="solid", ellipse=True,
                        draw_scores=False, replaceimg=None, mosaicsize=20)
        theirs[i] = (rgb, out)
    return {"annotated_frames": sorted(ann.frames), "edgeveil": asdict(score_frames(ours, ann)),
            "deface": asdict(score_frames(theirs, ann))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--classes", default="person,head,face")
    ap.add_argument("--skip-coverage", action="store_true")
    args = ap.parse_args()
    path = str(locate("vtest.avi"))
    cv2.setNumThreads(2)
    with tempfile.TemporaryDirectory() as tmp:
        result: dict[str, object] = {"video": "vtest.avi 768x576", "frames": args.frames,
                                     "cpu_count": __import__("os").cpu_count()}
        result["decode_only_fps"] = round(decode_only(path, args.frames), 1)
        ours = edgeveil(path, args.frames, Path(tmp) / "ours.avi", args.classes)
        result["edgeveil"] = ours
        people = edgeveil(path, args.frames, Path(tmp) / "people.avi", "person,head")
        result["edgeveil_people_only"] = people
        d_ort = deface_run(path, args.frames, Path(tmp) / "deface_ort.avi", "onnxrt")
        d_cv = deface_run(path, args.frames, Path(tmp) / "deface_cv.avi", "opencv")
        result["deface"] = {"onnxrt": d_ort, "opencv": d_cv}
        anchor = max(float(d_ort["fps"]), float(d_cv["fps"]))  # type: ignore[arg-type]
        result["deface_anchor_fps"] = anchor
        result["speedup_vs_deface"] = round(float(ours["fps"]) / anchor, 2)  # type: ignore[arg-type]
        result["speedup_vs_deface_people_only"] = round(
            float(people["fps"]) / anchor, 2)  # type: ignore[arg-type]
        load = __import__("os").getloadavg()
        result["load_average_at_end"] = [round(x, 2) for x in load]
        if not args.skip_coverage:
            result["head_coverage"] = coverage(path, args.classes)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
