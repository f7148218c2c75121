"""Frame sources on real media: files, folders, truncated/corrupt files, a dropping MJPEG stream."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.vision import (
    AnonymizeMode,
    FailClosedAnonymizer,
    ImageFolderSource,
    ListSink,
    LiveSource,
    SourceExhaustedError,
    SourceOpenError,
    SourceTruncatedError,
    VideoFileSource,
    default_detector,
    open_source,
    parse_classes,
    run,
)


def test_video_file_in_order_with_timestamps(vtest_path: str) -> None:
    frames = list(VideoFileSource(vtest_path, max_frames=5))
    assert [f.seq for f in frames] == [0, 1, 2, 3, 4]
    assert [f.timestamp for f in frames] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert frames[0].size == (768, 576) and not frames[0].anonymized


def test_target_fps_sampling_keeps_file_positions(vtest_path: str) -> None:
    frames = list(VideoFileSource(vtest_path, target_fps=2.5, max_frames=4))
    assert [f.seq for f in frames] == [0, 4, 8, 12]


def _write_avi(path: Path, frames: list[np.ndarray]) -> None:
    h, w = frames[0].shape[:2]
    wr = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (w, h))
    for f in frames:
        wr.write(f)
    wr.release()


def test_truncated_video_raises_after_keeping_processed_frames(
        tmp_path: Path, vtest_frames: list[np.ndarray]) -> None:
    # Prepare: a 20-frame video cut in half
    good = tmp_path / "good.avi"
    _write_avi(good, [cv2.resize(f, (192, 144)) for f in vtest_frames[:20]])
    data = good.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    cls = parse_classes("person,head")
    fc = FailClosedAnonymizer(default_detector(cls), policy=AnonymizeMode.BLUR)
    sink = ListSink()
    # Execute
    with pytest.raises(SourceTruncatedError) as info:
        run(VideoFileSource(cut), fc, sink)
    # Assert: a clear error naming the position, and the good frames kept and flushed
    err = info.value
    assert err.expected == 20 and 0 < err.frames_read < 20
    assert "truncated" in str(err)
    assert len(sink.frames) == err.frames_read and sink.flushes == 1
    assert [f.seq for f in sink.frames] == list(range(err.frames_read))
    assert err.summary.frames_out == err.frames_read  # type: ignore[attr-defined]


def test_corrupt_and_missing_inputs_give_clear_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.avi"
    junk.write_bytes(np.random.default_rng(0).integers(0, 255, 4000, np.uint8).tobytes())
    with pytest.raises(SourceOpenError, match="cannot open|no frame"):
        list(VideoFileSource(junk))
    with pytest.raises(SourceOpenError, match="no such file"):
        open_source(tmp_path / "missing.mp4")
    bad_img = tmp_path / "imgs"
    bad_img.mkdir()
    (bad_img / "a.png").write_bytes(b"not a png")
    with pytest.raises(SourceOpenError, match="a.png"):
        list(ImageFolderSource(bad_img))


def test_image_folder_sorted_with_names(tmp_path: Path, messi: np.ndarray) -> None:
    for name in ("b.png", "a.jpg"):
        cv2.imwrite(str(tmp_path / name), messi)
    frames = list(open_source(tmp_path))
    assert [f.metadata["name"] for f in frames] == ["a.jpg", "b.png"]


def test_live_mjpeg_stream_reconnects_after_drop(mjpeg_server) -> None:  # type: ignore[no-untyped-def]
    src = LiveSource(mjpeg_server.url, max_frames=12, backoff_s=0.05, max_reconnects=20,
                     buffer_size=64)
    frames = list(src)
    assert len(frames) == 12
    assert src.reconnects >= 1 and mjpeg_server.connections >= 2
    assert frames[0].size == (192, 144)
    assert all(a.seq < b.seq for a, b in zip(frames, frames[1:], strict=False))


def test_live_source_drops_oldest_when_consumer_is_slow(mjpeg_server) -> None:  # type: ignore[no-untyped-def]
    mjpeg_server.drop_after = 0
    src = LiveSource(mjpeg_server.url, buffer_size=2, max_frames=3)
    deadline = time.monotonic() + 30
    while src.captured < 15 and time.monotonic() < deadline:  # frames arrive, nobody reads
        time.sleep(0.02)
    assert src.captured >= 15, f"the camera delivered {src.captured} frames in 30 s"
    frames = list(src)
    assert src.dropped >= 5
    assert frames[0].seq >= 5  # the oldest were dropped, the newest kept


def test_live_source_gives_up_with_clear_error(mjpeg_server) -> None:  # type: ignore[no-untyped-def]
    src = LiveSource(mjpeg_server.url, backoff_s=0.02, max_reconnects=2)
    mjpeg_server.__exit__(None, None, None)  # the camera goes away for good
    with pytest.raises(SourceExhaustedError) as info:
        list(src)
    assert info.value.attempts == 2


def test_unreachable_stream_is_an_open_error() -> None:
    with pytest.raises(SourceOpenError):
        LiveSource("http://127.0.0.1:9/none.mjpg")
