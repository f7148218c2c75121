"""Work sheets for hand-checking the person/head annotations of vtest.avi.

This is the tool that ``tests/data/vision/vtest_people.json`` was made and reviewed with. It never
detects anything: it only draws boxes that a human placed (or accepted and corrected) back onto
the frame, with a pixel grid, so that they can be checked by eye and their coordinates read off.

Sub-commands (sheets go to ``--out``, default ``/tmp/sheets``; keep them out of the repository):

``frames``      extract the annotated frame indices of the video as PNGs.
``overview``    one frame (or a region of it, ``--region x,y,w,h``) upscaled ``--scale`` times,
                with a 10 px / 50 px grid labelled in full-resolution pixels, every person box
                (green) and head box (magenta) drawn with its index.
``crops``       a montage for one frame: for every person a 4x crop of the person box with a
                10 px grid, and a 10x crop around the head box with a 1 px grid (labels every
                5 px), so head boxes can be read to a pixel or two.
``heads``       only the 10x head crops of one frame, five to a row (one compact sheet).
``import-txt``  merge per-frame work files (``NNN.txt``) into the JSON (see ``parse_txt``).
``export-txt``  the inverse: write the JSON's frames as work files for editing.

Boxes are ``[x1, y1, x2, y2]`` in full-resolution pixels with x2/y2 exclusive; the drawn edges lie
on pixel boundaries (a box covers the pixels x1..x2-1), so on the zoomed crops the box encloses
exactly the pixels it claims.

How vtest_people.json was made with it: per frame a 2x ``overview`` of the whole frame to find
everybody, ``overview --region ... --scale 3..6`` of the parts with people to read the person-box
edges, and the ``heads`` sheet to read the head boxes to a pixel or two; edit the work file
(``/tmp/sheets/work/NNN.txt``, see ``parse_txt``), re-render, look again; finally ``import-txt``.
(The ``crops`` montage is downscaled by the image viewer when many people are in a frame, which
made it easy to misread; the region overviews were used instead.)

Run: ``PYTHONPATH=. python scripts/annotation_sheets.py overview --frame 27``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / "tests/data/vision/vtest_people.json"
DEFAULT_VIDEO = "/usr/share/doc/opencv-doc/examples/data/vtest.avi"
FRAMES = [0, 1, 2, 5, 10, *range(27, 795, 17)]

PERSON = (0, 220, 0)
HEAD = (255, 0, 255)
GRID_MINOR = (90, 90, 90)
GRID_MAJOR = (0, 200, 255)


# ----------------------------------------------------------------------------- data


def load(path: Path) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    return {"video": "vtest.avi", "size": [768, 576], "description": "", "frames": {}}


def save(path: Path, data: dict) -> None:
    frames = {str(k): data["frames"][k] for k in sorted(data["frames"], key=int)}
    lines = ["{"]
    lines.append(f' "video": {json.dumps(data["video"])},')
    lines.append(f' "size": {json.dumps(data["size"])},')
    lines.append(f' "description": {json.dumps(data["description"])},')
    lines.append(' "frames": {')
    keys = list(frames)
    for i, k in enumerate(keys):
        lines.append(f'  "{k}": [')
        anns = frames[k]
        for j, a in enumerate(anns):
            comma = "," if j < len(anns) - 1 else ""
            lines.append("   " + json.dumps(a, separators=(", ", ": ")) + comma)
        lines.append("  ]" + ("," if i < len(keys) - 1 else ""))
    lines.append(" }")
    lines.append("}")
    path.write_text("\n".join(lines) + "\n")


def parse_txt(text: str) -> list[dict]:
    """One person a line: ``x1 y1 x2 y2 | hx1 hy1 hx2 hy2 | flags``.

    The head part may be ``-`` (head not visible); flags is any of ``o`` (occluded), ``t``
    (truncated by the frame edge), or empty. ``#`` starts a comment.
    """
    out = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = [p.strip() for p in line.split("|")]
        while len(parts) < 3:
            parts.append("")
        person = [int(v) for v in parts[0].split()]
        head = None if parts[1] in ("", "-") else [int(v) for v in parts[1].split()]
        if len(person) != 4 or (head is not None and len(head) != 4):
            raise ValueError(f"bad line: {raw!r}")
        out.append(
            {
                "person": person,
                "head": head,
                "occluded": "o" in parts[2],
                "truncated": "t" in parts[2],
            }
        )
    return out


def format_txt(anns: list[dict]) -> str:
    lines = []
    for a in anns:
        head = "-" if a["head"] is None else " ".join(str(v) for v in a["head"])
        flags = ("o" if a["occluded"] else "") + ("t" if a["truncated"] else "")
        lines.append(f"{' '.join(str(v) for v in a['person'])} | {head} | {flags}")
    return "\n".join(lines) + "\n"


def read_frame(video: str, index: int, cache: Path) -> np.ndarray:
    png = cache / "frames" / f"{index:03d}.png"
    if png.exists():
        return cv2.imread(str(png))
    cap = cv2.VideoCapture(video)
    cap.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, img = cap.read()
    if not ok:
        raise SystemExit(f"cannot read frame {index}")
    return img


# ----------------------------------------------------------------------------- drawing


def _label(img: np.ndarray, text: str, org: tuple[int, int], color, scale: float = 0.4) -> None:
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)


def zoom(
    img: np.ndarray,
    x0: int,
    y0: int,
    w: int,
    h: int,
    s: int,
    *,
    nearest: bool = False,
    minor: int = 10,
    major: int = 50,
    label_every: int = 50,
) -> np.ndarray:
    """Crop [x0, x0+w) x [y0, y0+h) (padded grey outside the image), upscale by s, draw a grid."""
    H, W = img.shape[:2]
    canvas = np.full((h, w, 3), 127, np.uint8)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + w, W), min(y0 + h, H)
    if sx1 > sx0 and sy1 > sy0:
        canvas[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = img[sy0:sy1, sx0:sx1]
    out = cv2.resize(
        canvas, (w * s, h * s), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_CUBIC
    )
    for v in range(x0 - x0 % minor, x0 + w + 1, minor):
        if v < x0:
            continue
        p = (v - x0) * s
        cv2.line(out, (p, 0), (p, h * s), GRID_MAJOR if v % major == 0 else GRID_MINOR, 1)
        if v % label_every == 0:
            _label(out, str(v), (p + 2, 12), GRID_MAJOR)
    for v in range(y0 - y0 % minor, y0 + h + 1, minor):
        if v < y0:
            continue
        p = (v - y0) * s
        cv2.line(out, (0, p), (w * s, p), GRID_MAJOR if v % major == 0 else GRID_MINOR, 1)
        if v % label_every == 0:
            _label(out, str(v), (2, p - 3 if p > 14 else p + 12), GRID_MAJOR)
    return out


def draw_box(
    out: np.ndarray, box, x0: int, y0: int, s: int, color, text: str | None = None
) -> None:
    x1, y1, x2, y2 = box
    p1 = ((x1 - x0) * s, (y1 - y0) * s)
    p2 = ((x2 - x0) * s - 1, (y2 - y0) * s - 1)
    cv2.rectangle(out, p1, p2, color, 1)
    if text is not None:
        _label(out, text, (p1[0] + 1, max(p1[1] - 3, 10)), color, 0.5)


def overview(img, anns, region, s) -> np.ndarray:
    x0, y0, w, h = region
    out = zoom(img, x0, y0, w, h, s)
    for i, a in enumerate(anns):
        draw_box(out, a["person"], x0, y0, s, PERSON, str(i))
        if a["head"] is not None:
            draw_box(out, a["head"], x0, y0, s, HEAD)
    return out


def crops(img, anns, *, max_width: int = 1400) -> np.ndarray:
    tiles = []
    for i, a in enumerate(anns):
        x1, y1, x2, y2 = a["person"]
        m = 8
        bx0, by0 = x1 - m - (x1 - m) % 10, y1 - m - (y1 - m) % 10
        bw, bh = x2 + m - bx0, y2 + m - by0
        body = zoom(img, bx0, by0, bw, bh, 4, minor=10, major=50, label_every=10)
        for j, b in enumerate(anns):  # neighbours, thin, to see overlaps
            if j != i:
                draw_box(body, b["person"], bx0, by0, 4, (0, 120, 0))
        draw_box(body, a["person"], bx0, by0, 4, PERSON)
        if a["head"] is not None:
            draw_box(body, a["head"], bx0, by0, 4, HEAD)
        _label(body, f"#{i}", (4, body.shape[0] - 6), (255, 255, 255), 0.6)
        parts = [body]
        if a["head"] is not None:
            hx1, hy1, hx2, hy2 = a["head"]
            cx, cy = (hx1 + hx2) // 2, (hy1 + hy2) // 2
            hz = zoom(
                img, cx - 13, cy - 13, 26, 26, 10, nearest=True, minor=1, major=5, label_every=5
            )
            draw_box(hz, a["person"], cx - 13, cy - 13, 10, PERSON)
            draw_box(hz, a["head"], cx - 13, cy - 13, 10, HEAD)
            parts.append(hz)
        hmax = max(p.shape[0] for p in parts)
        parts = [np.pad(p, ((0, hmax - p.shape[0]), (0, 6), (0, 0))) for p in parts]
        tiles.append(np.hstack(parts))
    if not tiles:
        return np.zeros((40, 200, 3), np.uint8)
    rows, row, width = [], [], 0
    for t in tiles:
        if row and width + t.shape[1] > max_width:
            rows.append(row)
            row, width = [], 0
        row.append(t)
        width += t.shape[1]
    rows.append(row)
    out_rows = []
    for r in rows:
        hmax = max(t.shape[0] for t in r)
        line = np.hstack([np.pad(t, ((0, hmax - t.shape[0]), (0, 0), (0, 0))) for t in r])
        out_rows.append(
            np.pad(line, ((0, 6), (0, max_width - line.shape[1]), (0, 0)))
            if line.shape[1] < max_width
            else np.pad(line, ((0, 6), (0, 0), (0, 0)))
        )
    wmax = max(r.shape[1] for r in out_rows)
    return np.vstack([np.pad(r, ((0, 0), (0, wmax - r.shape[1]), (0, 0))) for r in out_rows])


def heads(img, anns, *, per_row: int = 5) -> np.ndarray:
    """10x crops (26 px windows, 1 px grid) around every head box, in a grid of ``per_row``."""
    tiles = []
    for i, a in enumerate(anns):
        box = a["head"]
        if box is None:  # show where the head would be: the top of the person box
            x1, y1, x2, _ = a["person"]
            cx, cy = (x1 + x2) // 2, y1 + 6
        else:
            cx, cy = (box[0] + box[2]) // 2, (box[1] + box[3]) // 2
        hz = zoom(img, cx - 13, cy - 13, 26, 26, 10, nearest=True, minor=1, major=5, label_every=5)
        draw_box(hz, a["person"], cx - 13, cy - 13, 10, PERSON)
        if box is not None:
            draw_box(hz, box, cx - 13, cy - 13, 10, HEAD)
        _label(hz, f"#{i}", (200, 250), (255, 255, 255), 0.7)
        tiles.append(np.pad(hz, ((0, 6), (0, 6), (0, 0))))
    if not tiles:
        return np.zeros((40, 200, 3), np.uint8)
    while len(tiles) % per_row:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[i : i + per_row]) for i in range(0, len(tiles), per_row)]
    return np.vstack(rows)


# ----------------------------------------------------------------------------- CLI


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "command", choices=["frames", "overview", "crops", "heads", "import-txt", "export-txt"]
    )
    ap.add_argument("--frame", type=int, nargs="*", default=None)
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    ap.add_argument("--txt", type=Path, default=None, help="read boxes from this work file instead")
    ap.add_argument("--video", default=DEFAULT_VIDEO)
    ap.add_argument("--out", type=Path, default=Path("/tmp/sheets"))
    ap.add_argument("--region", default="0,0,768,576", help="x,y,w,h (overview)")
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/sheets/work"))
    args = ap.parse_args()
    data = load(args.json)
    frames = args.frame if args.frame else FRAMES

    if args.command == "frames":
        (args.out / "frames").mkdir(parents=True, exist_ok=True)
        cap = cv2.VideoCapture(args.video)
        i = 0
        while True:
            ok, img = cap.read()
            if not ok:
                break
            if i in frames:
                cv2.imwrite(str(args.out / "frames" / f"{i:03d}.png"), img)
            i += 1
        return
    if args.command == "import-txt":
        for f in frames:
            p = args.workdir / f"{f:03d}.txt"
            if p.exists():
                data["frames"][str(f)] = parse_txt(p.read_text())
        save(args.json, data)
        return
    if args.command == "export-txt":
        args.workdir.mkdir(parents=True, exist_ok=True)
        for f in frames:
            if str(f) in data["frames"]:
                (args.workdir / f"{f:03d}.txt").write_text(format_txt(data["frames"][str(f)]))
        return

    args.out.mkdir(parents=True, exist_ok=True)
    for f in frames:
        img = read_frame(args.video, f, args.out)
        if args.txt is not None:
            anns = parse_txt(args.txt.read_text())
        elif (args.workdir / f"{f:03d}.txt").exists():
            anns = parse_txt((args.workdir / f"{f:03d}.txt").read_text())
        else:
            anns = data["frames"].get(str(f), [])
        if args.command == "overview":
            region = tuple(int(v) for v in args.region.split(","))
            tag = "" if args.region == "0,0,768,576" else "_" + args.region.replace(",", "_")
            cv2.imwrite(
                str(args.out / f"ov_{f:03d}{tag}.png"), overview(img, anns, region, args.scale)
            )
        elif args.command == "heads":
            cv2.imwrite(str(args.out / f"hd_{f:03d}.png"), heads(img, anns))
        else:
            cv2.imwrite(str(args.out / f"cr_{f:03d}.png"), crops(img, anns))


if __name__ == "__main__":
    main()
