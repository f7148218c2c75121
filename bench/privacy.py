"""Privacy stress benchmark: EdgeVeil vs deface on the hard cases, in one run; prints JSON.

Cases (``pipeline.vision.stress``), all cut from vtest.avi and scored on the hand-annotated
people of ``tests/data/vision/vtest_people.json``: normal, warm-up, freeze, cold start, photos,
5 fps. Each clip goes through the real CLI, ``edgeveil anonymize CLIP -o OUT.mkv --mode solid``
(lossless in and out, black-lifted input so that every masked pixel is a changed pixel), as a
fresh process. deface (the real package: its CenterFace at threshold 0.2 and ``anonymize_frame``
with ``replacewith="solid"``, mask scale 1.3) runs on the same scored frames; it is stateless, so
that is exactly what it would output inside the clip.

Scores (``pipeline.vision.evaluation.score_privacy``; the normal case is also scored against a
second annotator's boxes for 24 of the frames, ``vtest_people_second.json``): head coverage = visible annotated heads
with >= 90 % of their pixels hidden; person coverage = mean hidden fraction of each person box;
background kept = untouched pixels away from every person (box + 25 % + 4 px).

Speed: ``edgeveil anonymize vtest.avi -o out.avi`` (every frame, default blur, MJPG) end to end
vs deface (same decoder/encoder, its faster backend) on the first ``--deface-frames`` frames.

Targets: head coverage >= 0.95 in every case, background kept >= 0.90, EdgeVeil >= 100 fps and
>= 10x deface. The default is what the CLI does (int8 NanoDet on video, fp32 on photos);
``--fp32`` repeats the cases and the speed run with the float model on video too;
``--motion-every N`` with the motion model updated on every N-th frame only.

Usage: ``python bench/privacy.py [--out bench/results/privacy.json] [--fp32]``
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.assets import locate
from pipeline.vision.evaluation import load_people_annotations, score_privacy
from pipeline.vision.stress import build_cases, read_output, write_clip

ROOT = Path(__file__).resolve().parents[1]
ANNOTATIONS = ROOT / "tests" / "data" / "vision" / "vtest_people.json"
SECOND = ROOT / "tests" / "data" / "vision" / "vtest_people_second.json"  # 24 frames, re-annotated
TARGETS = {"head_coverage": 0.95, "background_kept": 0.90, "fps": 100.0, "speedup": 10.0}


def _log(msg: str) -> None:
    print(f"[privacy] {msg}", file=sys.stderr, flush=True)


def _edgeveil(args: list[str]) -> dict[str, Any]:
    exe = Path(sys.executable).with_name("edgeveil")
    res = subprocess.run([str(exe), "anonymize", *args, "--no-progress"], capture_output=True,
                         text=True, timeout=3600)
    if res.returncode != 0:
        raise RuntimeError(f"edgeveil anonymize {' '.join(args)} failed:\n{res.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(res.stdout[res.stdout.index("{"):])
    return out


def _deface_model() -> Any:
    from deface.centerface import CenterFace

    with contextlib.redirect_stdout(io.StringIO()):
        return CenterFace(backend="onnxrt")


def _deface_solid(cf: Any, bgr: np.ndarray) -> np.ndarray:
    from deface.deface import anonymize_frame

    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    dets, _ = cf(rgb, threshold=0.2)
    anonymize_frame(dets, rgb, mask_scale=1.3, replacewith="solid", ellipse=True,
                    draw_scores=False, replaceimg=None, mosaicsize=20)
    return np.asarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), np.uint8)


def _deface_speed(path: str, n: int, out: Path) -> dict[str, Any]:
    from deface.centerface import CenterFace
    from deface.deface import anonymize_frame

    best: dict[str, Any] = {}
    for backend in ("onnxrt", "opencv"):
        with contextlib.redirect_stdout(io.StringIO()):
            cf = CenterFace(backend=backend)
        cap = cv2.VideoCapture(path)
        writer = cv2.VideoWriter(str(out), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (768, 576))
        t0 = time.perf_counter()
        k = 0
        while k < n:
            ok, bgr = cap.read()
            if not ok:
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            dets, _ = cf(rgb, threshold=0.2)
            anonymize_frame(dets, rgb, mask_scale=1.3, replacewith="blur", ellipse=True,
                            draw_scores=False, replaceimg=None, mosaicsize=20)
            writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            k += 1
        writer.release()
        fps = k / (time.perf_counter() - t0)
        _log(f"deface {backend}: {fps:.2f} fps over {k} frames")
        if fps > best.get("fps", 0.0):
            best = {"fps": round(fps, 2), "frames": k, "backend": backend}
    return best


def _summary(score: Any) -> dict[str, Any]:
    d = asdict(score)
    d["leaks"] = d["leaks"][:20]
    return d


def run_cases(frames: list[np.ndarray], tmp: Path, extra: list[str], *, deface: bool
              ) -> dict[str, Any]:
    ann = load_people_annotations(ANNOTATIONS)
    cf = _deface_model() if deface else None
    out: dict[str, Any] = {}
    for case in build_cases(frames, ann, fps=10.0):
        pairs_ours: list[tuple[int, np.ndarray, np.ndarray]] = []
        pairs_theirs: list[tuple[int, np.ndarray, np.ndarray]] = []
        fps: list[float] = []
        t0 = time.perf_counter()
        for clip in case.clips:
            src = write_clip(clip, tmp / "in")
            dst = tmp / "out" / (clip.name if clip.still else f"{clip.name}.mkv")
            summary = _edgeveil([str(src), "-o", str(dst), "--mode", "solid", *extra])
            if summary["fail_closed_frames"]:
                _log(f"{clip.name}: {summary['fail_closed_frames']} frames failed closed")
            fps.append(float(summary["fps"]))
            outputs = read_output(dst, len(clip.frames))
            for pos, a in clip.scored.items():
                lifted = np.maximum(clip.frames[pos], 1)
                pairs_ours.append((a, lifted, outputs[pos]))
                if cf is not None:
                    pairs_theirs.append((a, lifted, _deface_solid(cf, lifted)))
        ours = score_privacy(pairs_ours, ann)
        res: dict[str, Any] = {"description": case.description, "clips": len(case.clips),
                               "frames_processed": case.frames, "scored_frames": len(pairs_ours),
                               "edgeveil": _summary(ours),
                               "edgeveil_mean_fps": round(float(np.mean(fps)), 1)}
        if cf is not None:
            res["deface"] = _summary(score_privacy(pairs_theirs, ann))
        if case.name == "normal":  # the same outputs against the second annotator's boxes
            second = load_people_annotations(SECOND)
            res["edgeveil_second_annotator"] = _summary(score_privacy(
                [p for p in pairs_ours if p[0] in second.frames], second))
        res["meets_targets"] = (ours.head_coverage >= TARGETS["head_coverage"]
                                and ours.background_kept >= TARGETS["background_kept"])
        out[case.name] = res
        _log(f"{case.name}: heads {ours.heads_hidden}/{ours.heads} hidden "
             f"({ours.head_coverage:.3f}), persons {ours.person_coverage:.3f}, background kept "
             f"{ours.background_kept:.3f} ({time.perf_counter() - t0:.0f} s)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    ap.add_argument("--deface-frames", type=int, default=300)
    ap.add_argument("--fp32", action="store_true", help="also run everything with fp32 NanoDet")
    ap.add_argument("--skip-deface", action="store_true")
    ap.add_argument("--motion-every", type=int, default=0,
                    help="also run everything with the motion model updated every N frames")
    args = ap.parse_args()
    path = str(locate("vtest.avi"))
    ann = load_people_annotations(ANNOTATIONS)
    cap = cv2.VideoCapture(path)
    frames: list[np.ndarray] = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(img)
    result: dict[str, Any] = {
        "video": f"vtest.avi {frames[0].shape[1]}x{frames[0].shape[0]}, {len(frames)} frames",
        "annotations": {"frames": len(ann.frames), "people": ann.boxes,
                        "heads": sum(p.head is not None for v in ann.frames.values() for p in v)},
        "cpu_count": os.cpu_count(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "targets": TARGETS}
    variants = [("default", [])] + ([("fp32", ["--fp32"])] if args.fp32 else [])
    if args.motion_every > 1:
        variants.append((f"motion_every_{args.motion_every}",
                         ["--motion-every", str(args.motion_every)]))
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        speed: dict[str, Any] = {}
        for name, extra in variants:
            s = _edgeveil([path, "-o", str(tmp / f"speed-{name}.avi"), *extra])
            speed[f"edgeveil_{name}"] = {"fps": s["fps"], "frames": s["frames_out"],
                                         "fail_closed_frames": s["fail_closed_frames"]}
            _log(f"edgeveil {name}: {s['fps']} fps end to end over {s['frames_out']} frames")
        if not args.skip_deface:
            speed["deface"] = _deface_speed(path, args.deface_frames, tmp / "deface.avi")
            for name, _ in variants:
                speed[f"speedup_{name}"] = round(
                    speed[f"edgeveil_{name}"]["fps"] / speed["deface"]["fps"], 2)
        result["speed"] = speed
        for name, extra in variants:
            result[f"cases_{name}"] = run_cases(frames, tmp / name, extra,
                                                deface=name == "default" and not args.skip_deface)
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    cases = result["cases_default"]
    checks = {f"{c}_head_coverage": v["edgeveil"]["head_coverage"] >= TARGETS["head_coverage"]
              for c, v in cases.items()}
    checks.update({f"{c}_background_kept": v["edgeveil"]["background_kept"]
                   >= TARGETS["background_kept"] for c, v in cases.items()})
    checks["fps"] = result["speed"]["edgeveil_default"]["fps"] >= TARGETS["fps"]
    if "speedup_default" in result["speed"]:
        checks["speedup"] = result["speed"]["speedup_default"] >= TARGETS["speedup"]
    result["checks"] = checks
    result["all_targets_met"] = all(checks.values())
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
