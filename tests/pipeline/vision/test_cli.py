"""`edgeveil anonymize` end to end on real media (small frame counts)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import typer
from typer.testing import CliRunner

from agents.commands import anonymize as cmd


def _app() -> typer.Typer:
    app = typer.Typer()
    cmd.register(app)

    @app.callback()
    def _root() -> None:
        pass

    return app


def _summary(output: str) -> dict:  # type: ignore[type-arg]
    return json.loads(output[output.index("{"):])


def test_video_keeps_count_order_size_fps(tmp_path: Path, vtest_path: str) -> None:
    out = tmp_path / "out.avi"
    res = CliRunner().invoke(_app(), ["anonymize", vtest_path, "-o", str(out),
                                      "--max-frames", "12", "--no-progress"])
    assert res.exit_code == 0, res.output
    s = _summary(res.stdout)
    assert s["frames_in"] == 12 and s["frames_out"] == 12 and s["fail_closed_frames"] == 0
    assert s["detections"]["person"] > 0 and s["fps"] > 0
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    assert cap.get(cv2.CAP_PROP_FPS) == 10.0
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (768, 576)


def test_image_and_bad_input(tmp_path: Path) -> None:
    from pipeline.assets import locate

    out = tmp_path / "messi.png"
    res = CliRunner().invoke(_app(), ["anonymize", str(locate("messi5.jpg")), "-o", str(out),
                                      "--mode", "solid", "--no-progress"])
    assert res.exit_code == 0, res.output
    det = _summary(res.stdout)["detections"]
    # Messi's face (CenterFace) and Messi himself (NanoDet; plus spectators at the edges)
    assert det["face"] == 1 and det["person"] >= 1 and det["head"] == det["person"]
    assert out.is_file()
    res = CliRunner().invoke(_app(), ["anonymize", str(tmp_path / "none.avi"), "-o",
                                      str(tmp_path / "x.avi")])
    assert res.exit_code == 2 and "no such file" in res.output
    res = CliRunner().invoke(_app(), ["anonymize", str(out), "-o", str(tmp_path / "y.png"),
                                      "--classes", "cats"])
    assert res.exit_code == 2 and "valid classes" in res.output
