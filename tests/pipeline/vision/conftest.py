"""Shared fixtures for the vision tests: real media, small frame counts, a local MJPEG server."""

from __future__ import annotations

import http.server
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.assets import locate

DATA = Path(__file__).resolve().parents[2] / "data" / "vision"


@pytest.fixture(scope="session")
def vtest_path() -> str:
    return str(locate("vtest.avi"))


@pytest.fixture(scope="session")
def vtest_frames(vtest_path: str) -> list[np.ndarray]:
    """The first 120 frames of vtest.avi (BGR)."""
    cap = cv2.VideoCapture(vtest_path)
    out = []
    for _ in range(120):
        ok, f = cap.read()
        assert ok
        out.append(f)
    cap.release()
    return out


@pytest.fixture(scope="session")
def messi() -> np.ndarray:
    img = cv2.imread(str(locate("messi5.jpg")))
    assert img is not None
    return img


class MjpegServer:
    """Serves JPEG frames as multipart/x-mixed-replace on 127.0.0.1.

    The first ``drop_after`` connections are cut after ``frames_before_drop`` frames, to simulate
    a camera that dies; later connections stream until the server stops.
    """

    def __init__(self, frames: list[np.ndarray], *, frames_before_drop: int = 5,
                 drop_after: int = 1, fps: float = 25.0) -> None:
        self.jpegs = [cv2.imencode(".jpg", f)[1].tobytes() for f in frames]
        self.frames_before_drop = frames_before_drop
        self.drop_after = drop_after
        self.fps = fps
        self.connections = 0
        self._stop = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                server.connections += 1
                n_conn = server.connections
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                i = 0
                try:
                    while not server._stop.is_set():
                        if n_conn <= server.drop_after and i >= server.frames_before_drop:
                            return  # connection dropped
                        jpg = server.jpegs[i % len(server.jpegs)]
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n"
                                         + f"Content-Length: {len(jpg)}\r\n\r\n".encode()
                                         + jpg + b"\r\n")
                        i += 1
                        time.sleep(1 / server.fps)
                except (BrokenPipeError, ConnectionResetError):
                    return

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/stream.mjpg"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> MjpegServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def mjpeg_server(vtest_frames: list[np.ndarray]) -> Iterator[MjpegServer]:
    small = [cv2.resize(f, (192, 144)) for f in vtest_frames[:10]]
    with MjpegServer(small) as srv:
        yield srv
