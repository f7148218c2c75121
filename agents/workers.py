"""Start and stop real ``faust worker`` processes (used by the demo and the Kafka tests)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

log = logging.getLogger(__name__)


class WorkerError(RuntimeError):
    """A faust worker failed to start or died; ``output`` holds its last log lines."""

    def __init__(self, message: str, output: str) -> None:
        self.output = output
        super().__init__(f"{message}\n--- worker output ---\n{output}")


class FaustWorker:
    """One ``faust -A <app> worker`` child process with its output captured.

    Parameters
    ----------
    app
        The faust app in ``module`` or ``module:attribute`` form, e.g. ``"agents.app"``.
    env
        Extra environment (``EDGEVEIL_BOOTSTRAP_SERVERS`` …) on top of this process's.
    log_file
        Also append the worker's output to this file.
    web
        Run faust's web server (the aggregator's fleet page and /metrics, on
        ``EDGEVEIL_WEB_PORT``); off by default.

    Examples
    --------
    >>> with FaustWorker("agents.app", env={"EDGEVEIL_BOOTSTRAP_SERVERS": "127.0.0.1:9092"}) as w:
    ...     pass                                          # doctest: +SKIP
    """

    def __init__(
        self,
        app: str,
        *,
        env: dict[str, str] | None = None,
        log_level: str = "info",
        log_file: Path | None = None,
        cwd: Path | None = None,
        web: bool = False,
    ) -> None:
        self.app = app
        self.web = web
        self.env = {**os.environ, **(env or {})}
        self.log_level = log_level
        self.log_file = log_file
        self.cwd = cwd or Path(__file__).resolve().parent.parent
        self.proc: subprocess.Popen[str] | None = None
        self._lines: deque[str] = deque(maxlen=400)
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    def start(self, *, wait_ready: bool = True, timeout: float = 120.0) -> FaustWorker:
        cmd = [sys.executable, "-m", "faust", "-A", self.app, "worker", "-l", self.log_level]
        if not self.web:
            cmd.append("--without-web")
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env,
            cwd=self.cwd, start_new_session=True,
        )
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def _pump(self) -> None:
        assert self.proc and self.proc.stdout
        sink = open(self.log_file, "a") if self.log_file else None  # noqa: SIM115
        try:
            for line in self.proc.stdout:
                self._lines.append(line.rstrip("\n"))
                if sink:
                    sink.write(line)
                    sink.flush()
                # faust prints "[^Worker]: Ready" once every service, agent and consumer started
                if "Worker]: Ready" in line:
                    self._ready.set()
        finally:
            if sink:
                sink.close()

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._ready.wait(0.2):
                return
            if self.proc and self.proc.poll() is not None:
                raise WorkerError(f"faust worker {self.app} exited with {self.proc.returncode}",
                                  self.output)
        raise WorkerError(f"faust worker {self.app} not ready after {timeout:.0f}s", self.output)

    @property
    def output(self) -> str:
        return "\n".join(self._lines)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the worker, as a crash would."""
        if self.running and self.proc:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (faust shuts down cleanly, committing offsets); SIGKILL after ``timeout``."""
        if not self.proc:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("faust worker %s ignored SIGTERM; killing", self.app)
                self.kill()
        if self._reader:
            self._reader.join(5)
        return self.proc.returncode

    def __enter__(self) -> FaustWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
