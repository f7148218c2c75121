"""The edge camera loop on real vtest.avi frames: counts, anonymized previews, local series."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from pipeline.assets import locate
from pipeline.vision import Frame
from pipeline.vision.camera import CameraLoop, _PreviewSink


def test_camera_counts_people_and_keeps_a_series(tmp_path: Path) -> None:
    series = tmp_path / "series.csv"
    cam = CameraLoop(locate("vtest.avi"), interval_s=1.0, target_fps=100, max_frames=40,
                     series_csv=series, preview_every_s=0.5)
    cam.start()
    cam.join(120)
    assert not cam.is_alive()
    stats = cam.stats()
    assert stats.frames_in == 40 and stats.frames_out == 40
    intervals = cam.drain_intervals()
    assert sum(iv.frames for iv in intervals) == 40
    assert max(iv.mean.get("person", 0) for iv in intervals) >= 1  # vtest always shows people
    rows = list(csv.DictReader(series.open()))
    assert len(rows) == len(intervals) and float(rows[0]["person_mean"]) >= 0
    previews = cam.drain_previews()
    assert previews and all(p.jpeg[:3] == b"\xff\xd8\xff" for p in previews)
    # the first frame of the stream got an appearance pass: it vouched for people at age 0
    assert previews[0].seq == 0 and previews[0].vouched["person"] == 0
    assert all(p.vouched["person"] <= 5 for p in previews)
    assert cam.drain_previews() == []  # drained


def test_preview_sink_refuses_raw_frames() -> None:
    sink = _PreviewSink(every_s=0.0, keep=2, width=64)
    raw = Frame(np.zeros((8, 8, 3), np.uint8), seq=0, timestamp=0.0)
    with pytest.raises(ValueError, match="raw"):
        sink.add(raw)
    assert not sink.previews


def test_unreadable_camera_reports_the_error() -> None:
    cam = CameraLoop("/nonexistent/camera.avi", loop=False, max_frames=1)
    cam.start()
    cam.join(30)
    assert cam.stats().error and "camera.avi" in cam.stats().error


def test_stop_flushes_the_open_interval_once(tmp_path: Path) -> None:
    """A worker shutting down mid-interval keeps that interval; drained ones are not rewritten."""
    import time

    series = tmp_path / "series.csv"
    cam = CameraLoop(locate("vtest.avi"), interval_s=0.5, target_fps=20, series_csv=series,
                     preview_every_s=0)
    cam.start()
    deadline = time.monotonic() + 60
    while cam.stats().frames_in < 12 and time.monotonic() < deadline:
        time.sleep(0.05)
    first = cam.drain_intervals()
    assert first, "0.5 s intervals at 10 fps media must have closed after 12 frames"
    cam.stop()
    assert not cam.is_alive()
    rest = cam.drain_intervals()
    assert rest, "stop() must close the open interval"
    rows = list(csv.DictReader(series.open()))
    starts = [r["start"] for r in rows]
    assert len(starts) == len(set(starts)) == len(first) + len(rest)
    assert sum(int(r["frames"]) for r in rows) == cam.stats().frames_in
