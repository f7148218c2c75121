"""Swap the ONNX model an edge serves without stopping its stream.

:class:`OnnxModelSlot` holds one onnxruntime session. :meth:`OnnxModelSlot.swap` builds the new
session first (the slow part, outside any lock) and then replaces the reference in one assignment,
so a prediction running on another thread finishes on the model it started with and the next one
uses the new model. A model that fails to load leaves the old one serving.

Examples
--------
>>> slot = OnnxModelSlot()
>>> slot.version is None
True
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np

from pipeline.exceptions import EdgeVeilError

log = logging.getLogger(__name__)

__all__ = ["ModelLoadError", "NoModelError", "OnnxModelSlot"]


class ModelLoadError(EdgeVeilError):
    """An ONNX model could not be loaded; the old model (if any) keeps serving."""

    def __init__(self, version: int, detail: str) -> None:
        self.version = version
        self.detail = detail
        super().__init__(f"global model v{version} could not be loaded: {detail}")


class NoModelError(EdgeVeilError):
    """Prediction was asked for before any model was loaded."""


@dataclass(frozen=True)
class _Loaded:
    version: int
    session: object  # onnxruntime.InferenceSession
    input_name: str


class OnnxModelSlot:
    """A thread-safe, hot-swappable onnxruntime model.

    Parameters
    ----------
    providers
        onnxruntime execution providers, CPU by default.
    intra_op_threads
        Threads per inference (1 suits a small forecaster beside a video pipeline).
    """

    def __init__(self, *, providers: list[str] | None = None, intra_op_threads: int = 1) -> None:
        self._providers = providers or ["CPUExecutionProvider"]
        self._threads = intra_op_threads
        self._current: _Loaded | None = None
        self._swap_lock = threading.Lock()  # serializes swaps only; predictions never take it
        self.swaps = 0

    @property
    def version(self) -> int | None:
        cur = self._current
        return cur.version if cur else None

    def swap(self, onnx_bytes: bytes, *, version: int) -> bool:
        """Load ``onnx_bytes`` and make it current; False if ``version`` is not newer.

        Raises
        ------
        ModelLoadError
            the bytes are not a loadable ONNX model (the old model stays current).
        """
        import onnxruntime as ort

        cur = self._current
        if cur is not None and version <= cur.version:
            return False
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self._threads
        opts.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(onnx_bytes, sess_options=opts, providers=self._providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
            raise ModelLoadError(version, str(exc)) from exc
        loaded = _Loaded(version, session, session.get_inputs()[0].name)
        with self._swap_lock:
            if self._current is not None and version <= self._current.version:
                return False
            self._current = loaded  # one reference assignment: atomic for readers
            self.swaps += 1
        log.info("serving global model v%d", version)
        return True

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, int]:
        """Run the current model on ``x`` (float32); returns (output, model version)."""
        cur = self._current
        if cur is None:
            raise NoModelError("no global model loaded yet")
        out = cur.session.run(None, {cur.input_name: np.asarray(x, dtype=np.float32)})  # type: ignore[attr-defined]
        return out[0], cur.version
